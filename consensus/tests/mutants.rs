//! Proves the simulator's checker: each mutant feature breaks one rule of the core, and the sim
//! CLI built with it must exit non-zero reporting safety violations within a bounded seed range
//! (at most 1,000) of the partition, crash, byzantine, reconfig or mixed scenario. Each mutant is a separate (small) build of this crate
//! only, run sequentially, with the same `CARGO` and `CARGO_TARGET_DIR` as the test itself.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// One mutant and the simulation that must catch it.
struct Mutant {
    feature: &'static str,
    scenario: &'static str,
    /// At most 1,000 seeds; the run stops at the first failing one.
    seeds: &'static str,
    /// Uneven powers where power and count differ; their number is the node count.
    powers: &'static str,
    /// When the simulated host answers the core's requests.
    host: &'static str,
}

const fn mutant(
    feature: &'static str,
    scenario: &'static str,
    seeds: &'static str,
    powers: &'static str,
) -> Mutant {
    Mutant {
        feature,
        scenario,
        seeds,
        powers,
        host: "deferred",
    }
}

const MUTANTS: &[Mutant] = &[
    mutant(
        "mutant-vote-after-timeout",
        "partition",
        "0..300",
        "1,2,1,3",
    ),
    mutant("mutant-one-chain-commit", "partition", "0..300", "1,2,1,3"),
    mutant(
        "mutant-no-persist-before-send",
        "crash",
        "0..300",
        "1,2,1,3",
    ),
    mutant("mutant-quorum-by-count", "partition", "0..300", "1,1,1,4"),
    // Epochs and Byzantine behaviours.
    mutant(
        "mutant-tc-ignores-high-qc",
        "byzantine",
        "0..1000",
        "1,2,1,3",
    ),
    mutant(
        "mutant-accept-old-epoch-qc",
        "reconfig",
        "0..1000",
        "1,2,1,3",
    ),
    mutant(
        "mutant-accept-stale-reconfigure",
        "reconfig",
        "0..1000",
        "1,2,1,3",
    ),
    mutant(
        "mutant-payload-in-limbo-epoch",
        "reconfig",
        "0..1000",
        "1,2,1,3",
    ),
    mutant("mutant-no-epoch-in-digest", "mixed", "0..1000", "1,2,1,3"),
    // A host that answers at once and lets the answer re-enter the core mid-list: with powers
    // where one timeout makes every node join it, a leader's proposal record is overwritten by
    // the older timeout record of the same list.
    Mutant {
        host: "immediate",
        ..mutant("mutant-reentrant-answers", "partition", "0..300", "1,1,1")
    },
    // A restart whose ledger lags across an epoch change walks back past the epoch's genesis id
    // (never stored), cannot follow its records and refuses to start in the epoch it signed in.
    mutant("mutant-restore-past-genesis", "mixed", "0..1000", "1,2,1,3"),
];

/// Bound of one mutant (build + runs).
const MUTANT_BOUND: Duration = Duration::from_secs(600);

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string())
}

#[test]
fn every_mutant_is_caught() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root");
    let mut report = Vec::new();
    for Mutant {
        feature,
        scenario,
        seeds,
        powers,
        host,
    } in MUTANTS
    {
        let nodes = powers.split(',').count().to_string();
        let started = Instant::now();
        // Mutant builds use opt-level 1 without debuginfo (their own fingerprint in the same
        // target dir): each compiles in ~13 s instead of ~35 s, and the runs stop at the first
        // failing seed, so nine mutants stay within the crate's test-time budget.
        let mut child = Command::new(cargo())
            .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "1")
            .env("CARGO_PROFILE_RELEASE_DEBUG", "false")
            .current_dir(root)
            .args([
                "run",
                "--release",
                "-q",
                "-p",
                "consensus",
                "--features",
                feature,
                "--example",
                "sim",
                "--",
                "--seeds",
                seeds,
                "--nodes",
                &nodes,
                "--powers",
                powers,
                "--scenario",
                scenario,
                "--host",
                host,
                "--stop-on-failure",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo()));
        // Drain the pipes on threads (a full pipe would block the child), and wait with a bound.
        let mut so = child.stdout.take().expect("stdout");
        let mut se = child.stderr.take().expect("stderr");
        let out_t = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = so.read_to_string(&mut s);
            s
        });
        let err_t = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = se.read_to_string(&mut s);
            s
        });
        let status = loop {
            if let Some(s) = child.try_wait().expect("wait") {
                break s;
            }
            if started.elapsed() > MUTANT_BOUND {
                let _ = child.kill();
                panic!("{feature}: exceeded {MUTANT_BOUND:?}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let stdout = out_t.join().expect("stdout thread");
        let stderr = err_t.join().expect("stderr thread");
        let last = stdout.lines().last().unwrap_or_default().to_string();
        assert!(
            last.starts_with("runs="),
            "{feature}: the sim did not run (status {status}):\n{stderr}\n{stdout}"
        );
        assert!(!status.success(), "{feature} was NOT caught: {last}");
        let safety: u64 = last
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix("safety_violations="))
            .and_then(|v| v.parse().ok())
            .expect("safety count");
        assert!(
            safety > 0,
            "{feature}: no safety violation reported: {last}"
        );
        let first = stdout
            .lines()
            .find_map(|l| l.strip_prefix("FAILED seed="))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        let example = stdout
            .lines()
            .find(|l| l.contains("safety violation"))
            .unwrap_or_default()
            .trim()
            .to_string();
        report.push(format!(
            "{feature}: caught ({scenario}, seeds {seeds}, first failing seed {first}): {last} \
             [{example}] in {:?}",
            started.elapsed()
        ));
    }
    // Leave the clean example where `cargo build --example sim` puts it: the mutant builds
    // share the target dir, and nobody should run a mutant by accident afterwards.
    let restored = Command::new(cargo())
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-q",
            "-p",
            "consensus",
            "--example",
            "sim",
        ])
        .status()
        .expect("cargo build");
    assert!(
        restored.success(),
        "could not rebuild the clean sim example"
    );
    eprintln!("{}", report.join("\n"));
}
