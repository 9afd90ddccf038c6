//! `testnet`: a local multi-node cluster on one machine (anvil, the contract, simulated TEEs,
//! node processes). `up` brings it up, `status` reads it, `down` stops it; every subcommand takes
//! `--dir DIR` (default `<project>/.run/testnet`) and every duration is in seconds.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use testnet::state::State;
use testnet::status::{self, Client};
use testnet::up::{self, Outcome, UpOptions};

mod cli_chaos;
use cli_chaos::{ChaosArgs, chaos_inner, chaos_outer};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "testnet",
    version,
    about = "A local dstack-nft-cluster on one machine"
)]
struct Cli {
    /// The run directory (logs, data, genesis.json, state.json); default <project>/.run/testnet.
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start anvil, deploy and configure the contract, mint, start the simulated TEEs, register
    /// every node, write genesis.json, start the nodes and wait for their first commits.
    Up(UpArgs),
    /// Show the running nodes (height, round, epoch, ...).
    Status {
        /// Print {"nodes":[{"name","http_url","metrics_url","pid","power","epoch_power","height","round","epoch"}]}.
        #[arg(long)]
        json: bool,
    },
    /// Stop every process the run recorded (idempotent).
    Down,
    /// Add a node to the running cluster: mint tokens to a new owner, start a simulated TEE and
    /// a dstack-node with the cluster's genesis.json, register the node for its tokens. It
    /// starts as a non-member and joins at the cluster's next epoch.
    AddNode {
        /// Tokens to mint to the new owner (the node's voting power).
        #[arg(long, default_value_t = 1)]
        power: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        /// The node's log filter (RUST_LOG syntax).
        #[arg(long, default_value = "info")]
        node_log: String,
    },
    /// Transfer a token from its current owner (whose key the run recorded) to an address, or
    /// to a fresh funded account (`--to new`); the transfer ends the token's authorization.
    Transfer {
        /// The token.
        #[arg(long)]
        token_id: u64,
        /// `new` or a 0x address.
        #[arg(long)]
        to: testnet::live::Recipient,
        /// Also register the token for the node the recipient owns (the power moves).
        #[arg(long)]
        register: bool,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Burn a token with its owner's recorded key (its node loses that power).
    Burn {
        /// The token.
        #[arg(long)]
        token_id: u64,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Drive an open-loop transaction load (KV puts via POST /txs) at the running cluster.
    Load(LoadArgs),
    /// Run a chaos scenario on a cluster of its own, each node in its own network namespace
    /// (needs root); default run directory <project>/.run/chaos.
    Chaos(ChaosArgs),
    /// The part of `chaos` that runs inside the hub namespace (started by `chaos`).
    #[command(hide = true)]
    ChaosInner {
        #[command(flatten)]
        args: ChaosArgs,
        /// The namespace tag `chaos` created.
        #[arg(long)]
        tag: String,
    },
}

#[derive(Debug, Clone, clap::Args)]
struct LoadArgs {
    /// Offered transactions per second (open loop: sent on schedule whatever the answers).
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Size of each transaction's JSON in bytes.
    #[arg(long, default_value_t = 256)]
    tx_size: usize,
    /// Seconds to send for.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Seconds to wait after the load for accepted transactions to commit.
    #[arg(long, default_value_t = 30)]
    grace: u64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    /// Number of validators (default 4).
    #[arg(long)]
    validators: Option<usize>,
    /// Voting power of each validator, comma-separated (default 1,1,2,3 for 4 validators).
    #[arg(long, value_delimiter = ',')]
    powers: Option<Vec<u64>>,
    /// anvil's block time in seconds.
    #[arg(long, default_value_t = 1)]
    chain_block_time: u64,
    /// Return once every node has committed, leaving the cluster running.
    #[arg(long)]
    detach: bool,
    /// anvil's port (default: a free port).
    #[arg(long)]
    anvil_port: Option<u16>,
    /// Seconds to wait for every node's first commit.
    #[arg(long, default_value_t = 60)]
    wait: u64,
    /// The nodes' log filter (RUST_LOG syntax).
    #[arg(long, default_value = "info")]
    node_log: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("testnet: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("testnet: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn progress(line: &str) {
    eprintln!("==> {line}");
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let dir = cli
        .dir
        .clone()
        .unwrap_or_else(testnet::paths::default_run_dir);
    match cli.command {
        Cmd::Load(args) => cmd_load(dir, args).await,
        Cmd::Chaos(args) => {
            let dir = cli
                .dir
                .clone()
                .unwrap_or_else(|| testnet::paths::project_root().join(".run").join("chaos"));
            chaos_outer(dir, args).await
        }
        Cmd::ChaosInner { args, tag } => {
            let dir = cli
                .dir
                .clone()
                .unwrap_or_else(|| testnet::paths::project_root().join(".run").join("chaos"));
            chaos_inner(dir, args, tag).await
        }
        Cmd::Up(args) => cmd_up(dir, args).await,
        Cmd::Status { json } => cmd_status(dir, json).await,
        Cmd::AddNode {
            power,
            json,
            node_log,
        } => {
            cmd_live(&dir, json, async |tn| {
                let a = tn.add_node(power, None, &node_log).await?;
                let human = format!(
                    "added {} (address {}, owner {}, tokens {:?}, power {}) at {}\n\
                     registration txs {:?} in blocks {:?}; it joins at the next epoch",
                    a.name,
                    a.address,
                    a.owner,
                    a.tokens,
                    a.power,
                    a.http_url,
                    a.registration_txs,
                    a.registered_in_blocks
                );
                Ok((serde_json::to_value(&a)?, human))
            })
            .await
        }
        Cmd::Transfer {
            token_id,
            to,
            register,
            json,
        } => {
            cmd_live(&dir, json, async |tn| {
                let t = tn.transfer(token_id, to, register).await?;
                let mut human = format!(
                    "token {} transferred from {} to {}{} in tx {} (block {})",
                    t.token_id,
                    t.from,
                    t.to,
                    if t.new_account {
                        " (a new account)"
                    } else {
                        ""
                    },
                    t.tx_hash,
                    t.block
                );
                if let Some(n) = &t.unregistered_from {
                    human.push_str(&format!("; it no longer authorizes {n}"));
                }
                if let (Some(n), Some(tx)) = (&t.registered_for, &t.registration_tx) {
                    human.push_str(&format!("; registered for {n} in tx {tx}"));
                }
                Ok((serde_json::to_value(&t)?, human))
            })
            .await
        }
        Cmd::Burn { token_id, json } => {
            cmd_live(&dir, json, async |tn| {
                let b = tn.burn(token_id).await?;
                let mut human = format!(
                    "token {} of {} burned in tx {} (block {})",
                    b.token_id, b.owner, b.tx_hash, b.block
                );
                if let Some(n) = &b.unregistered_from {
                    human.push_str(&format!("; it no longer authorizes {n}"));
                }
                Ok((serde_json::to_value(&b)?, human))
            })
            .await
        }
        Cmd::Down => {
            let lines = up::down(&dir)
                .with_context(|| format!("stopping the testnet in {}", dir.display()))?;
            if lines.is_empty() {
                println!("no running testnet recorded in {}", dir.display());
            }
            for l in lines {
                println!("{l}");
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs one membership change against the run recorded in `dir` (its state locked meanwhile),
/// then prints the JSON or the human line `op` returned.
async fn cmd_live(
    dir: &std::path::Path,
    json: bool,
    op: impl AsyncFnOnce(&mut up::Testnet) -> Result<(serde_json::Value, String)>,
) -> Result<ExitCode> {
    let _lock = testnet::state::StateLock::acquire(dir)
        .with_context(|| format!("locking the run in {}", dir.display()))?;
    let Some(state) = State::load(dir)? else {
        anyhow::bail!(
            "no testnet recorded in {}: start one with `testnet up --detach`",
            dir.display()
        );
    };
    let mut tn = up::Testnet::attach(state);
    let (value, human) = op(&mut tn).await?;
    if json {
        println!("{}", serde_json::to_string(&value)?);
    } else {
        println!("{human}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGINT, SIGTERM or SIGHUP.
async fn interrupted() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
        _ = hup.recv() => {}
    }
}

async fn cmd_up(dir: PathBuf, args: UpArgs) -> Result<ExitCode> {
    let powers = UpOptions::powers_from(args.validators, args.powers)?;
    let opts = UpOptions {
        dir: dir.clone(),
        powers,
        block_time: args.chain_block_time,
        anvil_port: args.anvil_port,
        commit_wait: Duration::from_secs(args.wait),
        node_log_level: args.node_log,
        net: None,
        node_programs: Vec::new(),
    };
    let started = tokio::select! {
        r = up::up(&opts, &progress) => r,
        _ = interrupted() => {
            progress("interrupted during start-up; stopping what was started");
            for l in up::down(&dir)? { progress(&l); }
            return Ok(ExitCode::from(130));
        }
    };
    let (tn, outcome) = started?;
    print_summary(&tn.state, &outcome);
    if args.detach {
        println!("running detached; `testnet status` shows it, `testnet down` stops it");
        return Ok(ExitCode::SUCCESS);
    }
    match &outcome {
        Outcome::Running => live_view(&tn.state).await,
        Outcome::ChainOnly(_) => {
            println!("chain and simulated TEEs keep running; Ctrl-C stops them");
            interrupted().await;
        }
    }
    println!();
    progress("stopping the testnet");
    for l in tn.stop()? {
        progress(&l);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_summary(state: &State, outcome: &Outcome) {
    let Some(ch) = &state.chain else { return };
    println!();
    println!("dstack-nft-cluster testnet in {}", state.dir.display());
    println!(
        "  rpc url     {}   (anvil, {} s blocks, chain id {})",
        ch.rpc_url, ch.block_time, ch.chain_id
    );
    println!("  contract    {}   (owner {})", ch.contract, ch.deployer);
    println!(
        "  kms root    {}   (key in {})",
        ch.kms_root,
        ch.kms_root_key_file.display()
    );
    println!("  app id      {}   purpose {:?}", ch.app_id, ch.purpose);
    if let Some(g) = &ch.genesis_file {
        println!(
            "  genesis     {} (chain block {})",
            g.display(),
            ch.genesis_block.unwrap_or(0)
        );
    }
    for n in &state.nodes {
        println!(
            "  {:<6} power {} tokens {:?} owner {} node {} api {}",
            n.name,
            n.power,
            n.tokens,
            n.owner,
            n.address.map(|a| a.to_string()).unwrap_or_default(),
            n.http_url
        );
    }
    if let Outcome::ChainOnly(reason) = outcome {
        println!();
        println!("NODES NOT STARTED: {reason}.");
        println!("The chain is ready for them: anvil, the contract with every node registered,");
        println!("one simulated TEE per node and genesis.json. Build a dstack-node with `start`");
        println!("(`cargo build --release -p node`) and run `testnet up` again.");
    }
    println!();
}

async fn cmd_status(dir: PathBuf, json: bool) -> Result<ExitCode> {
    let state = State::load(&dir)?;
    let client = Client::new(Duration::from_secs(2));
    let Some(state) = state else {
        if json {
            println!(
                "{}",
                serde_json::to_string(&status::StatusReport::default())?
            );
        } else {
            println!("no testnet recorded in {}", dir.display());
        }
        return Ok(ExitCode::SUCCESS);
    };
    if json {
        let report = status::report(&state, &client).await;
        println!("{}", serde_json::to_string(&report)?);
        return Ok(ExitCode::SUCCESS);
    }
    let rows = status::rows(&state, &client).await;
    if let Some(ch) = &state.chain {
        println!(
            "chain {} (id {}), contract {}, phase {:?}",
            ch.rpc_url, ch.chain_id, ch.contract, state.phase
        );
    }
    if let Some(note) = &state.note {
        println!("note: {note}");
    }
    let anvil = match &state.anvil {
        Some(p) if testnet::procs::is_running(p) => format!("running (pid {})", p.pid),
        _ => "not running".into(),
    };
    let tees = state
        .nodes
        .iter()
        .filter(|n| n.simulator.as_ref().is_some_and(testnet::procs::is_running))
        .count();
    println!(
        "anvil {anvil}; simulated TEEs running: {tees} of {}",
        state.nodes.len()
    );
    print!("{}", status::table(&state, &rows, &|_| None));
    Ok(ExitCode::SUCCESS)
}

/// Committed-transaction rate per node, from the blocks committed since the last refresh.
#[derive(Default)]
struct Tps {
    last: HashMap<String, (u64, Instant)>,
    rate: HashMap<String, f64>,
}

impl Tps {
    /// Most blocks read per node and refresh; beyond it the rate is extrapolated.
    const MAX_BLOCKS: u64 = 20;

    async fn update(&mut self, client: &Client, rows: &[status::Row]) {
        for r in rows {
            let Some(h) = r.entry.height else { continue };
            let now = Instant::now();
            let Some(&(prev, at)) = self.last.get(&r.entry.name) else {
                self.last.insert(r.entry.name.clone(), (h, now));
                continue;
            };
            if h <= prev {
                if at.elapsed() > Duration::from_secs(5) {
                    self.rate.insert(r.entry.name.clone(), 0.0);
                }
                continue;
            }
            let span = h - prev;
            let read = span.min(Self::MAX_BLOCKS);
            let mut txs = 0usize;
            for height in (h - read + 1)..=h {
                txs += client
                    .block_txs(&r.entry.http_url, height)
                    .await
                    .unwrap_or(0);
            }
            let total = txs as f64 * span as f64 / read as f64;
            let secs = now.duration_since(at).as_secs_f64().max(1e-3);
            self.rate.insert(r.entry.name.clone(), total / secs);
            self.last.insert(r.entry.name.clone(), (h, now));
        }
    }
}

async fn live_view(state: &State) {
    let client = Client::new(Duration::from_millis(800));
    let tty = std::io::stdout().is_terminal();
    let mut tps = Tps::default();
    let stop = interrupted();
    tokio::pin!(stop);
    loop {
        // Nodes added by `testnet add-node` appear in the recorded state.
        let current = State::load(&state.dir).ok().flatten();
        let state = current.as_ref().unwrap_or(state);
        let rows = status::rows(state, &client).await;
        tps.update(&client, &rows).await;
        let table = status::table(state, &rows, &|name| tps.rate.get(name).copied());
        let mut out = std::io::stdout().lock();
        if tty {
            let _ = write!(out, "\x1b[2J\x1b[H");
        }
        let _ = writeln!(
            out,
            "dstack-nft-cluster testnet ({}), refreshed every second; Ctrl-C stops everything",
            state.dir.display()
        );
        let _ = write!(out, "{table}");
        if !tty {
            let _ = writeln!(out);
        }
        let _ = out.flush();
        drop(out);
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

async fn cmd_load(dir: PathBuf, args: LoadArgs) -> Result<ExitCode> {
    let Some(state) = State::load(&dir)? else {
        anyhow::bail!(
            "no testnet recorded in {}: start one with `testnet up --detach`",
            dir.display()
        );
    };
    let targets: Vec<String> = state
        .nodes
        .iter()
        .filter(|n| n.process.as_ref().is_some_and(testnet::procs::is_running))
        .map(|n| n.http_url.clone())
        .collect();
    let cfg = testnet::load::LoadConfig {
        targets,
        rate: args.rate,
        tx_size: args.tx_size,
        duration: Duration::from_secs(args.duration),
        key_prefix: format!("load-{}-{}", std::process::id(), rand::random::<u32>()),
        request_timeout: Duration::from_secs(5),
        max_in_flight: 5000,
    };
    cfg.validate()?;
    progress(&format!(
        "sending {} tx/s of {} bytes for {} s to {} nodes (open loop)",
        args.rate,
        args.tx_size,
        args.duration,
        cfg.targets.len()
    ));
    let report = tokio::select! {
        r = testnet::load::load_and_report(&cfg, Duration::from_secs(args.grace)) => r?,
        _ = interrupted() => return Ok(ExitCode::from(130)),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "submitted {} in {:.1} s ({:.1} tx/s offered)",
            report.submitted,
            report.seconds,
            report.submitted as f64 / report.seconds.max(1e-9)
        );
        println!("accepted  {}", report.accepted);
        println!(
            "rejected  {} {:?}",
            report.rejected.values().sum::<u64>(),
            report.rejected
        );
        println!(
            "committed {} of the accepted ({:.1} tx/s over the run)",
            report.committed, report.committed_tps
        );
        println!(
            "answer time p50 {:.1} ms, p99 {:.1} ms",
            report.answer_ms_p50, report.answer_ms_p99
        );
    }
    if report.committed < report.accepted {
        eprintln!(
            "testnet load: {} accepted transactions were not committed within {} s",
            report.accepted - report.committed,
            args.grace
        );
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}
