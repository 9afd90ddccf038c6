//! A short real `bench` run: 4 validators on real anvil with simulated TEEs, 400 tx/s of
//! 512-byte transactions for 4 s from client processes, then the JSON report's fields are
//! checked for presence and sanity (not for performance). Bounded: the run is killed after
//! 150 s. Needs the npm toolchain (`make setup`) and the workspace binaries built; it fails,
//! naming the fix, when one is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BENCH: &str = env!("CARGO_BIN_EXE_bench");
const BUDGET: Duration = Duration::from_secs(150);

fn num(v: &serde_json::Value, key: &str) -> f64 {
    v.get(key)
        .and_then(|x| x.as_f64())
        .unwrap_or_else(|| panic!("report has no numeric field {key}: {v:#}"))
}

#[test]
fn short_run_reports_sane_figures() {
    let tmp = tempfile::Builder::new()
        .prefix("bench")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let json = tmp.path().join("report.json");
    let plots = tmp.path().join("plots");
    let mut child = Command::new(BENCH)
        .args([
            "--nodes",
            "4",
            "--tx-size",
            "512",
            "--rate",
            "400",
            "--duration",
            "4",
            "--grace",
            "20",
        ])
        .arg("--dir")
        .arg(tmp.path().join("run"))
        .arg("--json")
        .arg(&json)
        .arg("--plot")
        .arg(&plots)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bench");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).ok();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).ok();
        s
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if start.elapsed() > BUDGET {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "bench did not finish within {} s:\n{}",
                BUDGET.as_secs(),
                t_err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = t_out.join().unwrap();
    let stderr = t_err.join().unwrap();
    assert!(
        status.success(),
        "bench failed ({status}); if anvil is missing run `make setup`:\n{stdout}\n{stderr}"
    );
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("report.json")).expect("json");
    for key in [
        "end_to_end_tps",
        "consensus_tps",
        "e2e_latency_ms_p50",
        "e2e_latency_ms_p99",
        "e2e_latency_ms_mean",
        "consensus_latency_ms_mean",
        "blocks_per_sec",
        "timeouts",
    ] {
        assert!(num(&r, key) >= 0.0, "{key}");
    }
    let committed = num(&r, "committed_txs");
    let accepted = num(&r, "accepted");
    assert!(committed > 0.0, "nothing committed: {stdout}");
    assert!(accepted > 0.0, "nothing accepted: {stdout}");
    assert_eq!(
        committed, accepted,
        "every accepted transaction commits once"
    );
    assert!(num(&r, "end_to_end_tps") > 0.0);
    assert!(num(&r, "consensus_tps") >= num(&r, "end_to_end_tps") * 0.99);
    assert!(num(&r, "e2e_latency_ms_p50") > 0.0);
    assert!(num(&r, "e2e_latency_ms_p50") <= num(&r, "e2e_latency_ms_p99"));
    assert!(num(&r, "consensus_latency_ms_mean") > 0.0);
    assert!(num(&r, "samples") > 0.0);
    assert_eq!(num(&r, "samples_uncommitted"), 0.0);
    assert!(num(&r, "blocks_per_sec") > 0.0);
    let nodes = r["node_stats"].as_array().expect("node_stats");
    assert_eq!(nodes.len(), 4);
    for n in nodes {
        assert!(num(n, "cpu_percent") > 0.0, "{n}");
        assert!(num(n, "peak_rss_mib") > 0.0, "{n}");
    }
    assert!(plots.join("timeline.svg").is_file());
    assert!(stdout.contains("end-to-end TPS"), "{stdout}");
}
