//! A `consensus::core::Core` of a real 4-member cluster driven by arbitrary event sequences
//! (see `fuzz::core_harness`): it must never panic, and its safety state must never go back.
#![no_main]
use consensus::testkit::Cluster;
use libfuzzer_sys::fuzz_target;

thread_local! {
    static CLUSTERS: Vec<Cluster> = fuzz::core_harness::clusters();
}

fuzz_target!(|input: fuzz::core_harness::Input| {
    CLUSTERS.with(|clusters| {
        if let Err(v) = fuzz::core_harness::run(clusters, input) {
            panic!("invariant broken: {}", v.0);
        }
    });
});
