//! `dstack-node register`: registers this node's dstack key for a token, signed by the token's
//! owner. Owner keys never come from the command line: a keystore file (password from the
//! environment or a prompt) or an environment variable holding the key.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use alloy::primitives::{Address, U256};
use alloy::signers::local::PrivateKeySigner;
use anyhow::{Context, bail};
use membership::dstack::DstackClient;
use membership::sdk::Cluster;

/// The environment variable the keystore password is read from before prompting.
pub const PASSWORD_ENV: &str = "DSTACK_OWNER_KEYSTORE_PASSWORD";

/// `register`.
#[derive(Debug, clap::Args)]
pub struct RegisterArgs {
    /// The token authorizing this node.
    #[arg(long)]
    pub token_id: U256,
    /// The owner's encrypted JSON keystore (password from DSTACK_OWNER_KEYSTORE_PASSWORD or a prompt).
    #[arg(
        long,
        conflicts_with = "owner_key_env",
        required_unless_present = "owner_key_env"
    )]
    pub owner_keystore: Option<PathBuf>,
    /// The name of an environment variable holding the owner's private key (hex).
    #[arg(long)]
    pub owner_key_env: Option<String>,
    /// Chain RPC URL.
    #[arg(long, env = "DSTACK_RPC_URL")]
    pub rpc: String,
    /// The cluster contract.
    #[arg(long, env = "DSTACK_CONTRACT")]
    pub contract: Address,
    /// The dstack guest agent: socket path or http:// URL (default: the standard sockets).
    #[arg(long, env = "DSTACK_ENDPOINT")]
    pub dstack: Option<String>,
    /// This node's connection URL (libp2p multiaddr) peers will dial.
    #[arg(long, env = "DSTACK_CONNECTION_URL")]
    pub connection_url: String,
}

fn read_password(path: &std::path::Path) -> anyhow::Result<String> {
    if let Ok(p) = std::env::var(PASSWORD_ENV) {
        return Ok(p);
    }
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .with_context(|| format!("no terminal to prompt for the password; set {PASSWORD_ENV}"))?;
    let mut out = tty.try_clone()?;
    write!(out, "password for {}: ", path.display())?;
    out.flush()?;
    let echo_off = std::process::Command::new("stty")
        .arg("-echo")
        .stdin(tty.try_clone()?)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let mut line = String::new();
    let read = std::io::BufReader::new(tty.try_clone()?).read_line(&mut line);
    if echo_off {
        let _ = std::process::Command::new("stty")
            .arg("echo")
            .stdin(tty.try_clone()?)
            .status();
    }
    writeln!(out)?;
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// The owner's signer from the keystore or the environment.
pub fn owner_signer(args: &RegisterArgs) -> anyhow::Result<PrivateKeySigner> {
    if let Some(var) = &args.owner_key_env {
        let key =
            std::env::var(var).with_context(|| format!("environment variable {var} is not set"))?;
        return key
            .trim()
            .parse::<PrivateKeySigner>()
            .with_context(|| format!("{var} does not hold a hex private key"));
    }
    let Some(path) = &args.owner_keystore else {
        bail!("give --owner-keystore FILE or --owner-key-env VAR");
    };
    let password = read_password(path)?;
    PrivateKeySigner::decrypt_keystore(path, password)
        .with_context(|| format!("decrypting keystore {}", path.display()))
}

/// Runs `register`.
pub async fn run(args: RegisterArgs) -> anyhow::Result<ExitCode> {
    let owner = owner_signer(&args)?;
    let dstack = DstackClient::new(args.dstack.as_deref())?;
    let cluster = Cluster::connect(&args.rpc, args.contract).await?;
    let r = cluster
        .register(&dstack, args.token_id, &owner, &args.connection_url)
        .await?;
    println!("registered node {} for token {}", r.node, args.token_id);
    println!("owner: {}", owner.address());
    println!("transaction: {}", r.tx_hash);
    if let Some(b) = r.block_number {
        println!("block: {b}");
    }
    Ok(ExitCode::SUCCESS)
}
