//! The CI share of the seeded simulations: 3,000+ runs across the honest, partition, crash,
//! byzantine, twins, reconfig and mixed scenarios (some with real secp256k1 signatures), bounded by count and by time. Every failure
//! prints its seed and the command that replays it. `consensus/README.md` documents the 100,000+
//! seed local run.

use consensus::crypto::Scheme;
use consensus::sim::{self, HostMode, Scenario, SimConfig};
use std::time::{Duration, Instant};

/// Wall-clock bound of one group (the runs take a few seconds on 2 cores; the bound only stops a
/// pathological slowdown from hanging CI).
const GROUP_BOUND: Duration = Duration::from_secs(240);

fn run_group(scenario: Scenario, scheme: Scheme, nodes: &[usize], seeds_per_size: u64) -> u64 {
    run_hosted(scenario, scheme, HostMode::Deferred, nodes, seeds_per_size)
}

/// [`run_group`] with the host answering requests as `host` says.
fn run_hosted(
    scenario: Scenario,
    scheme: Scheme,
    host: HostMode,
    nodes: &[usize],
    seeds_per_size: u64,
) -> u64 {
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut runs = 0;
    for &n in nodes {
        for seed in 0..seeds_per_size {
            assert!(
                started.elapsed() < GROUP_BOUND,
                "{} group exceeded {GROUP_BOUND:?} after {runs} runs",
                scenario.name()
            );
            let cfg = SimConfig {
                seed,
                nodes: n,
                powers: None,
                scenario,
                rounds: 60,
                scheme,
                host,
            };
            let out = sim::run(&cfg);
            runs += 1;
            if !out.safety.is_empty() || !out.liveness.is_empty() {
                let crypto = if scheme == Scheme::Fast {
                    "fast"
                } else {
                    "real"
                };
                failures.push(format!(
                    "seed={seed} nodes={n} scenario={} safety={:?} liveness={:?}\n  replay: cargo \
                     run --release -p consensus --example sim -- --seeds {seed}..{} --nodes {n} \
                     --scenario {} --rounds 60 --crypto {crypto} --host {}",
                    scenario.name(),
                    out.safety,
                    out.liveness,
                    seed + 1,
                    scenario.name(),
                    host.name()
                ));
            }
            assert!(out.commits > 0, "seed {seed} n={n}: nothing committed");
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    eprintln!(
        "{} ({scheme:?}): {runs} runs in {:?}",
        scenario.name(),
        started.elapsed()
    );
    runs
}

#[test]
fn honest_fast() {
    assert_eq!(
        run_group(Scenario::Honest, Scheme::Fast, &[1, 3, 4, 7], 100),
        400
    );
}

#[test]
fn partition_fast() {
    assert_eq!(
        run_group(Scenario::Partition, Scheme::Fast, &[3, 4, 5, 7], 200),
        800
    );
}

#[test]
fn crash_fast() {
    assert_eq!(
        run_group(Scenario::Crash, Scheme::Fast, &[3, 4, 5, 7], 200),
        800
    );
}

#[test]
fn byzantine_fast() {
    assert_eq!(
        run_group(Scenario::Byzantine, Scheme::Fast, &[4, 5, 7], 100),
        300
    );
    // The equivocations are real: some seeds make honest nodes produce evidence.
    let evidence: u64 = (0..50)
        .map(|seed| {
            sim::run(&SimConfig {
                seed,
                nodes: 4,
                powers: None,
                scenario: Scenario::Byzantine,
                rounds: 60,
                scheme: Scheme::Fast,
                host: HostMode::Deferred,
            })
            .evidence
        })
        .sum();
    assert!(evidence > 0, "no evidence in 50 Byzantine runs");
}

#[test]
fn twins_fast() {
    assert_eq!(
        run_group(Scenario::Twins, Scheme::Fast, &[4, 5, 7], 100),
        300
    );
}

#[test]
fn reconfig_fast() {
    assert_eq!(
        run_group(Scenario::Reconfig, Scheme::Fast, &[4, 5], 100),
        200
    );
}

#[test]
fn mixed_fast() {
    assert_eq!(run_group(Scenario::Mixed, Scheme::Fast, &[4, 5], 100), 200);
    // The epoch scenarios really change epochs, some B0s commit only as ancestors, and the
    // Byzantine nodes' equivocations are reported.
    let outs: Vec<_> = (0..20)
        .map(|seed| {
            sim::run(&SimConfig {
                seed,
                nodes: 4,
                powers: None,
                scenario: Scenario::Mixed,
                rounds: 60,
                scheme: Scheme::Fast,
                host: HostMode::Deferred,
            })
        })
        .collect();
    let epochs: u64 = outs.iter().map(|o| o.epochs - 1).sum();
    let ancestor: u64 = outs.iter().map(|o| o.ancestor_epoch_changes).sum();
    assert!(epochs >= 20, "only {epochs} epoch changes in 20 runs");
    assert!(ancestor > 0, "no Reconfigure committed only as an ancestor");
}

/// The host answers payload, batch and chain-set requests at once, as the node's mempool and
/// store can; the answers must wait for the rest of their action list (safety records never go
/// back).
#[test]
fn immediate_host_fast() {
    let runs = run_hosted(
        Scenario::Partition,
        Scheme::Fast,
        HostMode::Immediate,
        &[3, 4, 5],
        100,
    ) + run_hosted(
        Scenario::Crash,
        Scheme::Fast,
        HostMode::Immediate,
        &[3, 4, 5],
        100,
    ) + run_hosted(Scenario::Mixed, Scheme::Fast, HostMode::Immediate, &[4], 50);
    assert_eq!(runs, 650);
}

#[test]
fn all_scenarios_real_crypto() {
    let runs = run_group(Scenario::Honest, Scheme::Secp256k1, &[4], 10)
        + run_group(Scenario::Partition, Scheme::Secp256k1, &[4], 10)
        + run_group(Scenario::Crash, Scheme::Secp256k1, &[4], 10)
        + run_group(Scenario::Byzantine, Scheme::Secp256k1, &[4], 5)
        + run_group(Scenario::Twins, Scheme::Secp256k1, &[4], 5)
        + run_group(Scenario::Reconfig, Scheme::Secp256k1, &[4], 3)
        + run_group(Scenario::Mixed, Scheme::Secp256k1, &[4], 2);
    assert_eq!(runs, 45);
}

#[test]
fn same_seed_same_outcome() {
    let cfg = SimConfig {
        seed: 42,
        nodes: 5,
        powers: Some(vec![1, 2, 3, 1, 1]),
        scenario: Scenario::Crash,
        rounds: 60,
        scheme: Scheme::Fast,
        host: HostMode::Immediate,
    };
    let a = sim::run(&cfg);
    let b = sim::run(&cfg);
    assert_eq!(
        (a.commits, a.max_round, a.events, a.time_ms),
        (b.commits, b.max_round, b.events, b.time_ms)
    );
}
