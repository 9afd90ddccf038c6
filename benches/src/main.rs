//! `bench`: the load harness that drives a local cluster and reports throughput and latency the
//! way the field measures them (see the crate docs of `benches`). Criterion micro-benchmarks
//! live beside it in `benches/`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use benches::client::{self, ClientConfig};
use benches::run::{self, RunOptions};
use benches::sweep::{self, SweepOptions};
use benches::timed;
use clap::{Args, Parser, Subcommand};

/// Command line.
#[derive(Debug, Parser)]
#[command(
    name = "bench",
    about = "Load harness: a local dstack-nft-cluster under open-loop load",
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// Validators.
    #[arg(long, default_value_t = 4)]
    nodes: usize,
    /// Transaction size in bytes.
    #[arg(long, default_value_t = 512)]
    tx_size: usize,
    /// Offered load over all clients, tx/s.
    #[arg(long, default_value_t = 10_000.0)]
    rate: f64,
    /// Load duration, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Crash the K lowest-power validators before the load.
    #[arg(long, default_value_t = 0)]
    dead: usize,
    /// Voting powers, comma-separated (default 1 each).
    #[arg(long, value_delimiter = ',')]
    powers: Option<Vec<u64>>,
    /// Base round timeout (ms).
    #[arg(long, default_value_t = 1000)]
    base_timeout_ms: u64,
    /// SIGKILL the current leader this many seconds into the load.
    #[arg(long)]
    kill_leader_at: Option<f64>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Draw the run's timeline into this directory.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// The run directory (cluster state and logs).
    #[arg(long, default_value = ".run/bench")]
    dir: PathBuf,
    /// Seconds to wait for the backlog to commit after the load.
    #[arg(long, default_value_t = 30.0)]
    grace: f64,
    /// `section.key=value` overrides for every node's config.toml.
    #[arg(long = "node-set")]
    node_set: Vec<String>,
    /// Diagnostic: keep the nodes' databases under this directory (e.g. on tmpfs, where fsync
    /// is free) instead of their homes.
    #[arg(long)]
    data_root: Option<PathBuf>,
    /// `key=value` numeric cluster parameters for genesis.json (e.g. max_block_batches=16).
    #[arg(long = "genesis-set", value_parser = parse_kv)]
    genesis_set: Vec<(String, u64)>,
}

fn parse_kv(s: &str) -> Result<(String, u64), String> {
    let (k, v) = s.split_once('=').ok_or("expected key=value")?;
    let v = v.parse().map_err(|_| format!("{v} is not a number"))?;
    Ok((k.to_string(), v))
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a grid of committee sizes and rates plus a leader kill, and draw SVG plots.
    Sweep {
        /// Committee sizes.
        #[arg(long, value_delimiter = ',', default_value = "4,7,10,16")]
        nodes: Vec<usize>,
        /// Input rates, tx/s.
        #[arg(long, value_delimiter = ',', default_value = "5000,10000,20000,40000")]
        rates: Vec<f64>,
        /// Transaction size in bytes.
        #[arg(long, default_value_t = 512)]
        tx_size: usize,
        /// Seconds per run.
        #[arg(long, default_value_t = 10.0)]
        duration: f64,
        /// Input rate of the leader-kill run (0: none).
        #[arg(long, default_value_t = 5000.0)]
        failover_rate: f64,
        /// Base round timeout (ms).
        #[arg(long, default_value_t = 1000)]
        base_timeout_ms: u64,
        /// Output directory (runs, sweep.json, SVGs).
        #[arg(long, default_value = ".run/bench-sweep")]
        out: PathBuf,
    },
    /// (internal) One load client; the harness starts these as child processes.
    #[command(hide = true)]
    Client {
        /// The client's configuration (JSON).
        #[arg(long)]
        config: String,
        /// Where to write its report (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// (internal) `dstack-node start` with the proposal-timing tap; the harness runs nodes so.
    #[command(hide = true)]
    Start {
        /// The node's home directory.
        #[arg(long)]
        home: PathBuf,
        /// Overrides `section.key=value`.
        #[arg(long = "set")]
        set: Vec<String>,
    },
}

fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(t) = threads {
        b.worker_threads(t);
    }
    b.enable_all().build().context("starting the async runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        None => {
            let a = cli.run;
            let mut o = RunOptions::new(a.dir);
            o.nodes = a.nodes;
            o.powers = a.powers.unwrap_or_else(|| vec![1; a.nodes]);
            o.tx_size = a.tx_size;
            o.rate = a.rate;
            o.duration_s = a.duration;
            o.dead = a.dead;
            o.base_timeout_ms = a.base_timeout_ms;
            o.kill_leader_at_s = a.kill_leader_at;
            o.grace_s = a.grace;
            o.node_sets.extend(a.node_set);
            o.data_root = a.data_root;
            o.genesis = a.genesis_set;
            let report = runtime(None)?.block_on(run::run(&o))?;
            print!("{}", run::summary(&report));
            if let Some(path) = a.json {
                std::fs::write(&path, serde_json::to_string_pretty(&report)?)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Some(dir) = a.plot {
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                benches::plot::failover_timeline(&report, &dir.join("timeline.svg"))?;
            }
            Ok(())
        }
        Some(Cmd::Sweep {
            nodes,
            rates,
            tx_size,
            duration,
            failover_rate,
            base_timeout_ms,
            out,
        }) => {
            let opts = SweepOptions {
                nodes,
                rates,
                tx_size,
                duration_s: duration,
                out,
                failover_rate: (failover_rate > 0.0).then_some(failover_rate),
                base_timeout_ms,
            };
            let reports = runtime(None)?.block_on(sweep::sweep(&opts))?;
            println!(
                "{} runs; sweep.json and SVG plots in {}",
                reports.len(),
                opts.out.display()
            );
            Ok(())
        }
        Some(Cmd::Client { config, out }) => {
            let cfg: ClientConfig = serde_json::from_str(&config).context("--config")?;
            let report = runtime(Some(1))?.block_on(client::run(cfg))?;
            std::fs::write(&out, serde_json::to_vec(&report)?)
                .with_context(|| format!("writing {}", out.display()))?;
            Ok(())
        }
        Some(Cmd::Start { home, mut set }) => {
            let settings = timed::load_settings(&home)?;
            if let Some(ms) = settings.base_timeout_ms {
                timed::apply_base_timeout(&home, ms)?;
            }
            timed::apply_genesis(&home, &settings.genesis)?;
            set.extend(timed::node_sets(&home, &settings));
            let tap = timed::tap_factory(&home)?;
            runtime(None)?
                .block_on(node::launch::run_start_with(&home, &set, Some(tap)))
                .map_err(|e| anyhow::anyhow!("{e}"))
        }
    }
}
