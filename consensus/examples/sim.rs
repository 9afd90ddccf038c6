//! The simulator's command line (exact; other tools depend on it):
//!
//! ```text
//! cargo run --release -p consensus --example sim -- --seeds <from>..<to> --nodes <n>
//!     [--powers 1,1,2,3] --scenario <honest|partition|crash|twins|byzantine|reconfig|mixed>
//!     [--rounds <r>] [--crypto real|fast]
//! ```
//!
//! Seeds run from `from` (inclusive) to `to` (exclusive). The last line is
//! `runs=<k> safety_violations=<v> liveness_failures=<l> commits=<c>`; the exit code is 0 only
//! when both counts are 0. Each failure prints its seed and the command that replays it.

use consensus::crypto::Scheme;
use consensus::sim::{self, Scenario, SimConfig};
use std::process::ExitCode;

struct Args {
    from: u64,
    to: u64,
    nodes: usize,
    powers: Option<Vec<u64>>,
    scenario: String,
    rounds: u64,
    crypto: String,
}

fn usage() -> &'static str {
    "usage: sim --seeds <from>..<to> --nodes <n> [--powers 1,1,2,3] \
     --scenario <honest|partition|crash|twins|byzantine|reconfig|mixed> [--rounds <r>] \
     [--crypto real|fast]"
}

fn parse() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut seeds = None;
    let mut nodes = None;
    let mut powers = None;
    let mut scenario = None;
    let mut rounds = 60;
    let mut crypto = "fast".to_string();
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
        "reconfig" | "mixed" => {
            eprintln!(
                "scenario {} is not built yet (companion issue: Byzantine, twins, epochs)",
                args.scenario
            );
            return ExitCode::from(3);
        }
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
    for seed in args.from..args.to {
        let cfg = SimConfig {
            seed,
            nodes: args.nodes,
            powers: args.powers.clone(),
            scenario,
            rounds: args.rounds,
            scheme,
        };
        let out = sim::run(&cfg);
        runs += 1;
        commits += out.commits;
        evidence += out.evidence;
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
                 --nodes {}{powers_arg} --scenario {} --rounds {} --crypto {}",
                seed + 1,
                args.nodes,
                scenario.name(),
                args.rounds,
                args.crypto
            );
        }
        if !out.safety.is_empty() {
            safety += 1;
        }
        if !out.liveness.is_empty() {
            liveness += 1;
        }
    }
    if matches!(scenario, Scenario::Byzantine | Scenario::Twins) {
        println!("evidence_records={evidence}");
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
