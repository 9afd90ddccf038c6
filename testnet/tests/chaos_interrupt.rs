//! Ctrl-C during a chaos run: `testnet chaos` stops its cluster and removes every namespace it
//! created (with their veths and iptables rules), and the run directory records nothing left.
//! Bounded at 120 s. Needs root (fails with the suite's message otherwise).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{namespaces_with_prefix, processes_mentioning, run_testnet, show};

#[test]
fn sigint_during_chaos_cleans_up_namespaces_and_processes() {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("ci")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let state = dir.join("state.json");
    let plan = dir.join("netns.json");
    let seen: std::cell::RefCell<Vec<String>> = std::cell::RefCell::new(Vec::new());
    // Interrupt once the nodes run (the cluster is up and the faults are about to start).
    let when = || {
        if let Ok(t) = std::fs::read_to_string(&plan) {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap_or_default();
            if let Some(h) = v["hub"].as_str() {
                let mut s = seen.borrow_mut();
                if s.is_empty() {
                    s.push(h.to_string());
                }
            }
        }
        std::fs::read_to_string(&state)
            .map(|t| t.contains("\"phase\": \"running\""))
            .unwrap_or(false)
    };
    let out = run_testnet(
        &dir,
        &[
            "chaos",
            "--scenario",
            "byzantine",
            "--duration",
            "60",
            "--seed",
            "7",
        ],
        started + Duration::from_secs(120),
        Some(&when),
    );
    assert_eq!(
        out.status.code(),
        Some(130),
        "an interrupted chaos run exits 130:\n{}",
        show(&out)
    );
    let hub = seen
        .borrow()
        .first()
        .cloned()
        .expect("the run made namespaces");
    let tag = hub.trim_end_matches('h').to_string();
    let left = namespaces_with_prefix(&tag);
    assert!(left.is_empty(), "namespaces left: {left:?}\n{}", show(&out));
    assert!(!plan.exists(), "netns.json removed:\n{}", show(&out));
    assert!(!state.exists(), "state.json removed:\n{}", show(&out));
    let procs = processes_mentioning(dir.to_str().unwrap());
    assert!(procs.is_empty(), "processes left: {procs:?}");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("PASS"),
        "an interrupted run reports no result"
    );
}
