//! The CI short form of the chaos suite: `testnet chaos --scenario all` with the shortest
//! duration `all` accepts, bounded to 5 minutes of wall time for the whole run (cluster start,
//! faults, checks, teardown). It asserts the report passed, the minimum fault strengths, the
//! recovery bound, the outputs (report, SVG timeline), and that nothing is left behind
//! (namespaces, processes). Needs root for network namespaces: as any other user it fails with
//! the suite's own message (never skips).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{namespaces_with_prefix, processes_mentioning, run_testnet, show};

/// The whole test's wall-time bound.
const BUDGET: Duration = Duration::from_secs(300);
/// `all`'s shortest duration (the sum of its phases' minimums).
const DURATION: &str = "136";
/// Whether the `dstack-node` under test turns membership changes into epochs (the node
/// side of live membership). While it does not, the run reports the epochs after its membership changes without
/// counting a missing one as a violation (`--no-epoch-checks`), and the epoch assertions below
/// are not made. Set to true once the node side is on main.
const NODE_HAS_LIVE_EPOCHS: bool = true;

#[test]
fn chaos_all_short_form_passes_with_minimum_fault_strengths() {
    let started = Instant::now();
    let tmp = tempfile::Builder::new()
        .prefix("ch")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let seed = format!("{}", 1000 + u64::from(std::process::id() % 1000));
    let mut args = vec![
        "chaos",
        "--scenario",
        "all",
        "--duration",
        DURATION,
        "--seed",
        &seed,
    ];
    if !NODE_HAS_LIVE_EPOCHS {
        args.push("--no-epoch-checks");
    }
    let out = run_testnet(&dir, &args, started + BUDGET, None);
    let secs = started.elapsed().as_secs_f64();
    let report_path = dir.join("report.json");
    assert!(
        out.status.success(),
        "testnet chaos --scenario all failed (seed {seed}):\n{}",
        show(&out)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report_path).unwrap_or_else(|e| {
            panic!(
                "no report at {} ({e}):\n{}",
                report_path.display(),
                show(&out)
            )
        }))
        .expect("report.json is JSON");
    let ctx = || format!("seed {seed}; report:\n{report:#}");
    assert_eq!(report["pass"], true, "{}", ctx());
    assert_eq!(
        report["violations"].as_array().unwrap().len(),
        0,
        "{}",
        ctx()
    );
    assert_eq!(report["seed"].as_u64().unwrap().to_string(), seed);

    // minimum fault strengths
    let s = &report["strengths"];
    assert!(s["leader_kills"].as_u64().unwrap() >= 3, "{}", ctx());
    assert!(
        s["longest_quorum_break_seconds"].as_f64().unwrap() >= 10.0,
        "{}",
        ctx()
    );
    assert!(s["quorum_breaking_partitions"].as_u64().unwrap() >= 1);
    assert!(s["loss_probability"].as_f64().unwrap() >= 0.1, "{}", ctx());
    assert!(s["pauses"].as_u64().unwrap() >= 1, "{}", ctx());
    assert!(s["restart_all"].as_u64().unwrap() >= 1, "{}", ctx());
    assert!(
        s["evidence_against_equivocator"].as_u64().unwrap() >= 1,
        "{}",
        ctx()
    );
    assert_eq!(s["minimums_met"], true);
    let kinds: std::collections::BTreeSet<&str> = report["faults"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap())
        .collect();
    for k in [
        "kill",
        "pause",
        "partition",
        "loss",
        "restart-all",
        "equivocation",
        "register",
        "transfer",
    ] {
        assert!(kinds.contains(k), "no {k} fault: {}", ctx());
    }
    assert_eq!(s["registrations"].as_u64(), Some(1), "{}", ctx());
    assert_eq!(s["transfers"].as_u64(), Some(1), "{}", ctx());

    // membership: every change reached every honest node's epoch, the added node4 is a
    // member of the final epoch, and the final powers are the contract's
    let m = &report["membership"];
    assert_eq!(m["changes"].as_array().unwrap().len(), 2, "{}", ctx());
    if NODE_HAS_LIVE_EPOCHS {
        assert_eq!(m["epoch_checks_required"], true);
        for c in m["changes"].as_array().unwrap() {
            let t = c["all_nodes_after"]
                .as_f64()
                .expect("epoch after the change");
            assert!(t <= 20.0, "slow epoch change {c}");
        }
        assert!(
            m["added_node_member_after_seconds"]["node4"].is_f64(),
            "{}",
            ctx()
        );
        let powers = &m["final"]["powers"];
        // powers 1,1,1,1 + node4 with 2, one of its tokens moved to node3
        for (n, p) in [
            ("node0", 1),
            ("node1", 1),
            ("node2", 1),
            ("node3", 2),
            ("node4", 1),
        ] {
            assert_eq!(powers[n].as_u64(), Some(p), "{n}: {}", ctx());
        }
    }

    // the evidence names only the equivocator
    let byz = report["byzantine"].as_str().unwrap();
    assert_eq!(byz, "node0");
    assert_eq!(
        report["evidence"].as_object().unwrap().len(),
        1,
        "{}",
        ctx()
    );

    // every heal was followed by progress within 10 s
    for f in report["faults"].as_array().unwrap() {
        if f["heals"] == true {
            let c = f["cluster_resumed_after"]
                .as_f64()
                .expect("cluster resumed");
            let t = f["targets_resumed_after"]
                .as_f64()
                .expect("targets resumed");
            assert!(c <= 10.0 && t <= 10.0, "slow recovery {f}");
        }
    }

    // the load: every accepted transaction committed
    let load = &report["load"];
    assert!(load["accepted"].as_u64().unwrap() > 100, "{}", ctx());
    assert_eq!(load["accepted"], load["committed"], "{}", ctx());
    assert_eq!(load["missing"], 0);

    // the chains were compared over real lengths
    assert!(report["chain"]["blocks_compared"].as_u64().unwrap() > 300);

    // outputs
    let svg = std::fs::read_to_string(dir.join("timeline.svg")).expect("timeline.svg");
    assert!(svg.starts_with("<svg") && svg.contains("<polyline") && svg.contains("<rect"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("PASS"), "{}", show(&out));

    // nothing left behind
    let tag_prefix = "tc";
    let left = namespaces_with_prefix(tag_prefix)
        .into_iter()
        .filter(|n| !n.is_empty())
        .collect::<Vec<_>>();
    let ours: Vec<&String> = left
        .iter()
        .filter(|n| {
            std::fs::read_to_string(dir.join("netns.json"))
                .map(|t| t.contains(n.as_str()))
                .unwrap_or(false)
        })
        .collect();
    assert!(ours.is_empty(), "namespaces left: {ours:?}");
    assert!(
        !dir.join("netns.json").exists(),
        "netns.json is removed after a clean teardown"
    );
    let procs = processes_mentioning(dir.to_str().unwrap());
    assert!(procs.is_empty(), "processes left: {procs:?}");
    eprintln!("chaos all (seed {seed}) passed in {secs:.0} s");
    assert!(started.elapsed() < BUDGET);
}
