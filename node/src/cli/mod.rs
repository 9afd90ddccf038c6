//! The `dstack-node` command line: one clap subcommand per operator task. Each subcommand lives
//! in its own module; `init` and `start` are added beside `identity`, `register` and `version`.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub mod identity;
pub mod node_cmd;
pub mod register;

/// `dstack-node`: validator node of a dstack NFT cluster.
#[derive(Debug, Parser)]
#[command(
    name = "dstack-node",
    version,
    about = "Validator node of a dstack NFT cluster"
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The node's dstack identity: verify a signature chain, or show this node's key.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Register this node (its dstack key) on the cluster contract for a token you own.
    Register(register::RegisterArgs),
    /// Print the version (and the dstack guest agent's, with --dstack).
    Version(VersionArgs),
    /// Write a commented config.toml (and copy the cluster's genesis.json) into a home directory.
    Init(node_cmd::InitArgs),
    /// Run the validator node of a home directory until SIGTERM/SIGINT.
    Start(node_cmd::StartArgs),
}

/// `dstack-node version`.
#[derive(Debug, clap::Args)]
pub struct VersionArgs {
    /// Also query this dstack guest agent's version (socket path or http:// URL).
    #[arg(long)]
    pub dstack: Option<String>,
}

/// Runs the parsed command; the exit code is the command's verdict.
pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Identity(cmd) => identity::run(cmd).await,
        Command::Register(args) => register::run(args).await,
        Command::Init(args) => node_cmd::init(args),
        Command::Start(args) => node_cmd::start(args).await,
        Command::Version(args) => {
            println!("dstack-node {}", env!("CARGO_PKG_VERSION"));
            if let Some(ep) = args.dstack {
                let v = membership::dstack::DstackClient::new(Some(&ep))?
                    .version()
                    .await?;
                println!("dstack guest agent {} ({})", v.version, v.rev);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
