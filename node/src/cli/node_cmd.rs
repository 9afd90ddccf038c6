//! `dstack-node init` and `dstack-node start`: thin wrappers over the library (`node::config`,
//! `node::launch`), so the same code runs in the binary and in tests.

use std::path::PathBuf;
use std::process::ExitCode;

/// `dstack-node init --home DIR [--genesis FILE]`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The node's home directory (config.toml, genesis.json, data/).
    #[arg(long, env = "DSTACK_NODE_HOME")]
    pub home: PathBuf,
    /// The cluster's genesis file, copied beside config.toml. Without it the config targets a
    /// local anvil at 127.0.0.1:8545 and expects genesis.json in the home directory.
    #[arg(long)]
    pub genesis: Option<PathBuf>,
}

/// `dstack-node start --home DIR [--set section.key=value]...`.
#[derive(Debug, clap::Args)]
pub struct StartArgs {
    /// The node's home directory.
    #[arg(long, env = "DSTACK_NODE_HOME")]
    pub home: PathBuf,
    /// Overrides any config.toml key (`section.key=value`); wins over DSTACK_NODE_<SECTION>_<KEY>.
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub set: Vec<String>,
}

/// Runs `init`.
pub fn init(a: InitArgs) -> anyhow::Result<ExitCode> {
    let out = node::config::init(&a.home, a.genesis.as_deref())?;
    println!("wrote {}", out.config.display());
    match out.genesis {
        Some(g) => println!("copied the genesis file to {}", g.display()),
        None => println!(
            "no --genesis: put the cluster's genesis.json in {}",
            a.home.display()
        ),
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `start` until SIGTERM/SIGINT.
pub async fn start(a: StartArgs) -> anyhow::Result<ExitCode> {
    node::launch::run_start(&a.home, &a.set).await?;
    Ok(ExitCode::SUCCESS)
}
