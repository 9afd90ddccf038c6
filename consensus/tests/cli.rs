//! The simulator CLI's contract: the exact last line, exit codes, replay lines, and the epoch
//! scenarios' extra line.

use std::path::PathBuf;
use std::process::{Command, Output};

/// The `sim` example that `cargo test` built beside this test binary (`<target>/release/examples`).
/// Running it directly keeps this test from rebuilding the crate with other features.
fn sim_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test binary");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary lives in <target>/<profile>/deps");
    let bin = profile_dir.join("examples").join("sim");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo test --release -p consensus` (examples are built with tests)",
        bin.display()
    );
    bin
}

fn sim(args: &[&str]) -> Output {
    let bin = sim_binary();
    Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", bin.display()))
}

#[test]
fn passing_run_prints_the_summary_line_and_exits_zero() {
    let out = sim(&[
        "--seeds",
        "0..5",
        "--nodes",
        "4",
        "--powers",
        "1,1,2,3",
        "--scenario",
        "partition",
        "--rounds",
        "40",
        "--crypto",
        "fast",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fields: Vec<&str> = last.split(' ').collect();
    assert_eq!(fields.len(), 4, "{last}");
    assert_eq!(fields[0], "runs=5");
    assert_eq!(fields[1], "safety_violations=0");
    assert_eq!(fields[2], "liveness_failures=0");
    let commits: u64 = fields[3]
        .strip_prefix("commits=")
        .and_then(|c| c.parse().ok())
        .expect("commits count");
    assert!(commits >= 5 * 30, "{last}");
}

#[test]
fn epoch_scenarios_run_and_bad_arguments_exit_non_zero() {
    for s in ["reconfig", "mixed"] {
        let out = sim(&["--seeds", "0..2", "--nodes", "4", "--scenario", s]);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{s}: {stdout}");
        let changes: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix("epoch_changes="))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("epoch_changes line");
        assert!(changes > 0, "{s}: no epoch change: {stdout}");
        assert!(
            stdout
                .lines()
                .last()
                .unwrap_or_default()
                .starts_with("runs=2 ")
        );
    }
    let out = sim(&["--seeds", "0..1", "--nodes", "4", "--scenario", "nonsense"]);
    assert_eq!(out.status.code(), Some(2));
    let out = sim(&["--seeds", "5..5", "--nodes", "4", "--scenario", "honest"]);
    assert!(!out.status.success());
    let out = sim(&[
        "--seeds",
        "0..1",
        "--nodes",
        "3",
        "--powers",
        "1,1",
        "--scenario",
        "honest",
    ]);
    assert!(!out.status.success());
}

/// The flood behaviours (far-future rounds and epochs, non-member messages, replays) run in the
/// `byzantine` scenario; over 300 seeds for n = 4 the simulator's peak resident memory must stay
/// under 512 MiB (it is a few MiB).
#[test]
fn flood_peak_memory_stays_under_512_mib() {
    let out = sim(&[
        "--seeds",
        "0..300",
        "--nodes",
        "4",
        "--scenario",
        "byzantine",
        "--report-memory",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let kib: u64 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kib="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no peak_rss_kib line (needs Linux /proc): {stdout}"));
    eprintln!("byzantine (flood) n = 4, 300 seeds: peak RSS {kib} KiB");
    assert!(kib > 0 && kib < 512 * 1024, "peak RSS {kib} KiB");
}
