//! The `testnet chaos` subcommand: the outer run makes the network namespaces and re-runs
//! the binary inside them; the inner run is the chaos suite itself.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use testnet::up;

use crate::{interrupted, progress};

/// The flags of `testnet chaos` (and of the inner run it starts).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ChaosArgs {
    /// kill, pause, partition, loss, byzantine, restart-all, hostile, transfer or all.
    #[arg(long)]
    scenario: testnet::chaos::Scenario,
    /// Seconds of faults (for `all`, the total over the phases).
    #[arg(long, default_value_t = 180)]
    duration: u64,
    /// Seed of every random choice (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Validator powers (at least 4 validators).
    #[arg(long, value_delimiter = ',', default_value = "1,1,1,1")]
    powers: Vec<u64>,
    /// Background load, tx/s.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Background transaction size, bytes.
    #[arg(long, default_value_t = 200)]
    tx_size: usize,
    /// Packet-loss probability of the loss fault (at least 0.1).
    #[arg(long, default_value_t = 0.1)]
    loss: f64,
    /// The nodes' log filter.
    #[arg(long, default_value = "info")]
    node_log: String,
    /// Report the epochs that follow membership changes without counting a missing one as a
    /// violation (for a dstack-node without live membership).
    #[arg(long)]
    no_epoch_checks: bool,
}

fn chaos_args_vec(args: &ChaosArgs, seed: u64) -> Vec<String> {
    let mut v = vec![
        "--scenario".into(),
        args.scenario.name().into(),
        "--duration".into(),
        args.duration.to_string(),
        "--seed".into(),
        seed.to_string(),
        "--powers".into(),
        args.powers
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(","),
        "--rate".into(),
        args.rate.to_string(),
        "--tx-size".into(),
        args.tx_size.to_string(),
        "--loss".into(),
        args.loss.to_string(),
        "--node-log".into(),
        args.node_log.clone(),
    ];
    if args.no_epoch_checks {
        v.push("--no-epoch-checks".into());
    }
    v
}

/// The namespaces of a chaos run: one per genesis node and per node the scenario adds.
fn chaos_plan(tag: &str, args: &ChaosArgs) -> testnet::netns::NetPlan {
    testnet::netns::NetPlan::new(tag, args.powers.len() + args.scenario.added_nodes())
}

/// `testnet chaos`: checks privileges, removes a crashed run's leftovers, creates the
/// namespaces, runs `chaos-inner` inside the hub namespace, then removes everything it made, on
/// success, failure and Ctrl-C alike.
pub(crate) async fn chaos_outer(dir: PathBuf, args: ChaosArgs) -> Result<ExitCode> {
    use testnet::netns::{self, NetPlan};
    let seed = args.seed.unwrap_or_else(rand::random::<u64>);
    let tag = format!("tc{}", std::process::id());
    netns::preflight(&tag)?;
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = std::fs::canonicalize(&dir)?;
    if let Some(old) = NetPlan::load(&dir)? {
        progress(&format!(
            "removing the namespaces a previous run left in {} ({})",
            dir.display(),
            old.all().join(", ")
        ));
        let _ = up::down(&dir);
        for f in old.destroy() {
            progress(&format!("warning: {f}"));
        }
    }
    let plan = chaos_plan(&tag, &args);
    // Validate before creating anything.
    chaos_options(&dir, &args, seed, plan.clone()).validate()?;
    plan.save(&dir)?;
    progress(&format!(
        "creating network namespaces {} (bridge {} in {}, nodes {}..)",
        plan.all().join(", "),
        plan.hub_ip(),
        plan.hub,
        plan.node_ip(0)
    ));
    let created = plan.create();
    let code = match created {
        Err(e) => {
            progress(&format!("could not create the namespaces: {e}"));
            Err(anyhow::anyhow!(e))
        }
        Ok(()) => {
            let exe = std::env::current_exe()?;
            let mut cmd = std::process::Command::new("ip");
            cmd.args(["netns", "exec", &plan.hub])
                .arg(&exe)
                .arg("--dir")
                .arg(&dir)
                .arg("chaos-inner")
                .args(chaos_args_vec(&args, seed))
                .arg("--tag")
                .arg(&tag);
            let mut child = cmd
                .spawn()
                .context("starting chaos-inner in the hub namespace")?;
            let stop = interrupted();
            tokio::pin!(stop);
            let status = loop {
                if let Some(st) = child.try_wait()? {
                    break Some(st);
                }
                tokio::select! {
                    _ = &mut stop => {
                        progress("interrupted: stopping the chaos run and cleaning up");
                        if let Ok(pid) = i32::try_from(child.id()) {
                            let _ = nix::sys::signal::kill(
                                nix::unistd::Pid::from_raw(pid),
                                nix::sys::signal::Signal::SIGTERM,
                            );
                        }
                        // Give it a bounded time to stop its cluster.
                        let deadline = std::time::Instant::now() + Duration::from_secs(40);
                        let mut st = None;
                        while std::time::Instant::now() < deadline {
                            if let Some(s) = child.try_wait()? {
                                st = Some(s);
                                break;
                            }
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        if st.is_none() {
                            let _ = child.kill();
                            let _ = child.wait();
                        }
                        break None;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            };
            match status {
                Some(st) if st.success() => Ok(ExitCode::SUCCESS),
                Some(st) => Ok(ExitCode::from(st.code().unwrap_or(1).clamp(1, 255) as u8)),
                None => Ok(ExitCode::from(130)),
            }
        }
    };
    progress("removing the network namespaces (veths, bridge and iptables rules go with them)");
    let _ = up::down(&dir);
    let failures = plan.destroy();
    for f in &failures {
        progress(&format!("cleanup failure: {f}"));
    }
    if failures.is_empty() {
        let _ = std::fs::remove_file(dir.join(testnet::netns::NETNS_FILE));
    }
    code
}

/// The chaos run's options from the command line (the outer command validates them, the inner
/// one runs them).
fn chaos_options(
    dir: &std::path::Path,
    args: &ChaosArgs,
    seed: u64,
    plan: testnet::netns::NetPlan,
) -> testnet::chaos::ChaosOptions {
    testnet::chaos::ChaosOptions {
        dir: dir.to_path_buf(),
        scenario: args.scenario,
        duration: Duration::from_secs(args.duration),
        seed,
        powers: args.powers.clone(),
        rate: args.rate,
        tx_size: args.tx_size,
        loss: args.loss,
        node_log: args.node_log.clone(),
        epoch_checks: !args.no_epoch_checks,
        plan,
    }
}

/// `chaos-inner`: runs in the hub namespace; stops its cluster on SIGINT/SIGTERM.
pub(crate) async fn chaos_inner(dir: PathBuf, args: ChaosArgs, tag: String) -> Result<ExitCode> {
    let plan = chaos_plan(&tag, &args);
    let seed = args.seed.unwrap_or_else(rand::random::<u64>);
    let opts = chaos_options(&dir, &args, seed, plan);
    let report = tokio::select! {
        r = testnet::chaos::run(opts) => r,
        _ = interrupted() => {
            progress("interrupted; stopping the chaos cluster");
            let _ = up::down(&dir);
            return Ok(ExitCode::from(130));
        }
    };
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            let _ = up::down(&dir);
            anyhow::bail!("chaos run (seed {seed}) failed: {e}");
        }
    };
    println!("{}", testnet::chaos::summary(&report, &dir));
    if report.pass {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!(
            "testnet chaos: {} violation(s); seed {seed}",
            report.violations.len()
        );
        Ok(ExitCode::from(1))
    }
}
