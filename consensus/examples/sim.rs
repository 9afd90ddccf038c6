//! The simulator's command line (exact; other tools depend on it):
//!
//! ```text
//! cargo run --release -p consensus --example sim -- --seeds <from>..<to> --nodes <n>
//!     [--powers 1,1,2,3] --scenario <honest|partition|crash|twins|byzantine|reconfig|mixed>
//!     [--rounds <r>] [--crypto real|fast] [--host deferred|immediate] [--stop-on-failure]
//!     [--report-memory]
//! ```
//!
//! Seeds run from `from` (inclusive) to `to` (exclusive). The last line is
//! `runs=<k> safety_violations=<v> liveness_failures=<l> commits=<c>`; the exit code is 0 only
//! when both counts are 0. Each failure prints its seed and the command that replays it;
//! `--stop-on-failure` ends the range at the first failing seed (the mutant tests use it). The
//! epoch scenarios print `epoch_changes=<e> ancestor_commits_seen=<a> silenced_removed=<s>` before the last lines;
//! `--report-memory` prints `peak_rss_kib=<k>` (the process's peak resident set) just before the
//! last line.

use consensus::crypto::Scheme;
use consensus::sim::{self, HostMode, Scenario, SimConfig};
use std::process::ExitCode;

struct Args {
    from: u64,
    to: u64,
    nodes: usize,
    powers: Option<Vec<u64>>,
    scenario: String,
    host: String,
    rounds: u64,
    crypto: String,
    stop_on_failure: bool,
    report_memory: bool,
}

fn usage() -> &'static str {
    "usage: sim --seeds <from>..<to> --nodes <n> [--powers 1,1,2,3] \
     --scenario <honest|partition|crash|twins|byzantine|reconfig|mixed> [--rounds <r>] \
     [--crypto real|fast] [--host deferred|immediate] [--stop-on-failure] [--report-memory]"
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut seeds = None;
    let mut nodes = None;
    let mut powers = None;
    let mut scenario = None;
    let mut host = "deferred".to_string();
    let mut rounds = 60;
    let mut crypto = "fast".to_string();
    let mut stop_on_failure = false;
    let mut report_memory = false;
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--seeds" => {
                let v = value()?;
                let (a, b) = v
                    .split_once("..")
                    .ok_or("--seeds takes <from>..<to>".to_string())?;
                let a: u64 = a.parse().map_err(|_| format!("bad seed {a}"))?;
                let b: u64 = b.parse().map_err(|_| format!("bad seed {b}"))?;
                if b <= a {
                    return Err("--seeds <from>..<to> needs to > from".into());
                }
                seeds = Some((a, b));
            }
            "--nodes" => {
                let v = value()?;
                nodes = Some(v.parse().map_err(|_| format!("bad --nodes {v}"))?);
            }
            "--powers" => {
                let v = value()?;
                let p: Result<Vec<u64>, _> = v.split(',').map(str::parse).collect();
                powers = Some(p.map_err(|_| format!("bad --powers {v}"))?);
            }
            "--scenario" => scenario = Some(value()?),
            "--rounds" => {
                let v = value()?;
                rounds = v.parse().map_err(|_| format!("bad --rounds {v}"))?;
            }
            "--crypto" => crypto = value()?,
            "--host" => host = value()?,
            "--stop-on-failure" => stop_on_failure = true,
            "--report-memory" => report_memory = true,
            "-h" | "--help" => return Err(usage().into()),
            other => return Err(format!("unknown argument {other}\n{}", usage())),
        }
    }
    let (from, to) = seeds.ok_or(format!("--seeds is required\n{}", usage()))?;
    let nodes: usize = nodes.ok_or(format!("--nodes is required\n{}", usage()))?;
    if nodes == 0 || nodes > 1000 {
        return Err("--nodes must be in 1..=1000".into());
    }
    if let Some(p) = &powers
        && (p.len() != nodes || p.contains(&0))
    {
        return Err("--powers needs one positive power per node".into());
    }
    Ok(Args {
        from,
        to,
        nodes,
        powers,
        scenario: scenario.ok_or(format!("--scenario is required\n{}", usage()))?,
        rounds,
        crypto,
        host,
        stop_on_failure,
        report_memory,
    })
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let scenario = match args.scenario.as_str() {
        "honest" => Scenario::Honest,
        "partition" => Scenario::Partition,
        "crash" => Scenario::Crash,
        "byzantine" => Scenario::Byzantine,
        "twins" => Scenario::Twins,
        "reconfig" => Scenario::Reconfig,
        "mixed" => Scenario::Mixed,
        other => {
            eprintln!("unknown scenario {other}\n{}", usage());
            return ExitCode::from(2);
        }
    };
    let scheme = match args.crypto.as_str() {
        "fast" => Scheme::Fast,
        "real" => Scheme::Secp256k1,
        other => {
            eprintln!("unknown --crypto {other} (real|fast)");
            return ExitCode::from(2);
        }
    };
    let host = match args.host.as_str() {
        "deferred" => HostMode::Deferred,
        "immediate" => HostMode::Immediate,
        other => {
            eprintln!("unknown --host {other} (deferred|immediate)");
            return ExitCode::from(2);
        }
    };
    let powers_arg = args
        .powers
        .as_ref()
        .map(|p| {
            let s: Vec<String> = p.iter().map(u64::to_string).collect();
            format!(" --powers {}", s.join(","))
        })
        .unwrap_or_default();
    let (mut runs, mut safety, mut liveness, mut commits) = (0u64, 0u64, 0u64, 0u64);
    let mut evidence = 0u64;
    let (mut epochs, mut ancestor, mut silenced) = (0u64, 0u64, 0u64);
    for seed in args.from..args.to {
        let cfg = SimConfig {
            seed,
            nodes: args.nodes,
            powers: args.powers.clone(),
            scenario,
            rounds: args.rounds,
            scheme,
            host,
        };
        let out = sim::run(&cfg);
        runs += 1;
        commits += out.commits;
        evidence += out.evidence;
        epochs += out.epochs.saturating_sub(1);
        ancestor += out.ancestor_epoch_changes;
        silenced += out.silenced;
        if !out.safety.is_empty() || !out.liveness.is_empty() {
            println!(
                "FAILED seed={seed} scenario={} nodes={} powers={:?}",
                scenario.name(),
                args.nodes,
                out.powers
            );
            for v in &out.safety {
                println!("  safety violation: {v}");
            }
            for l in &out.liveness {
                println!("  liveness failure: {l}");
            }
            println!(
                "  replay: cargo run --release -p consensus --example sim -- --seeds {seed}..{} \
                 --nodes {}{powers_arg} --scenario {} --rounds {} --crypto {} --host {}",
                seed + 1,
                args.nodes,
                scenario.name(),
                args.rounds,
                args.crypto,
                host.name()
            );
        }
        if !out.safety.is_empty() {
            safety += 1;
        }
        if !out.liveness.is_empty() {
            liveness += 1;
        }
        if args.stop_on_failure && (safety > 0 || liveness > 0) {
            break;
        }
    }
    if scenario.has_epochs() {
        println!(
            "epoch_changes={epochs} ancestor_commits_seen={ancestor} silenced_removed={silenced}"
        );
    }
    if matches!(
        scenario,
        Scenario::Byzantine | Scenario::Twins | Scenario::Reconfig | Scenario::Mixed
    ) {
        println!("evidence_records={evidence}");
    }
    if args.report_memory {
        // Linux only: the process's peak resident set (VmHWM), for the memory bound test.
        let peak = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|st| {
                st.lines()
                    .find_map(|l| l.strip_prefix("VmHWM:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            });
        match peak {
            Some(kib) => println!("peak_rss_kib={kib}"),
            None => eprintln!("--report-memory: /proc/self/status has no VmHWM"),
        }
    }
    println!(
        "runs={runs} safety_violations={safety} liveness_failures={liveness} commits={commits}"
    );
    if safety == 0 && liveness == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
