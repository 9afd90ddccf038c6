//! What the test-only faulty node binaries share (`dstack-node-equivocator`,
//! `dstack-node-liar`, `dstack-node-hostile`): the same `start --home DIR [--set k=v]...` as `dstack-node`, the
//! refusal to run on any chain but anvil's, and the run itself with the binary's fault hooks.
//! The faults live in crate `testnet`, never in crate `node`, so no operator build has them.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use node::driver::DriverConfig;
use node::launch::FaultHooks;

/// The only chain id a faulty node runs on (anvil's default).
pub const LOCAL_CHAIN_ID: u64 = 31337;

/// Command line: the same `start` as `dstack-node`.
#[derive(Debug, Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the node from its home (see `dstack-node start`), with the binary's fault.
    Start(StartArgs),
}

/// The arguments of `start`, as `dstack-node start` takes them.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The node's home directory (config.toml, genesis.json, data).
    #[arg(long)]
    pub home: PathBuf,
    /// Overrides `section.key=value`.
    #[arg(long = "set")]
    pub set: Vec<String>,
}

/// Exits (code 3) unless the node is configured for anvil's chain id: a faulty binary must never
/// touch a real chain.
pub fn refuse_unless_local(name: &str, cfg: &DriverConfig) {
    if cfg.chain_id != LOCAL_CHAIN_ID {
        eprintln!(
            "{name}: refusing chain id {} (test-only binary: chain id {LOCAL_CHAIN_ID} only)",
            cfg.chain_id
        );
        std::process::exit(3);
    }
}

/// Parses the command line as `name` (with `about` as its help) and runs the node with `hooks`
/// until a signal.
pub fn main_with(name: &'static str, about: &'static str, hooks: FaultHooks) -> ExitCode {
    let matches = Cli::command().name(name).about(about).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    let Cmd::Start(a) = cli.command;
    run_node(&a.home, &a.set, hooks)
}

/// Runs the node of `home` (with `--set` overrides `set`) and the fault `hooks` until a signal.
pub fn run_node(home: &Path, set: &[String], hooks: FaultHooks) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(node::launch::run_start_hooked(home, set, hooks)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
