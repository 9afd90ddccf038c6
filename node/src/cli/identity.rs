//! `dstack-node identity verify|show`.

use std::process::ExitCode;

use alloy::primitives::{Address, U256};
use anyhow::{Context, bail};
use membership::dstack::{DstackClient, NodeKey};
use membership::hexfmt;
use membership::identity::{KmsRoot, TrustAnchor, verify_chain_hex};
use membership::sdk::Cluster;

/// The purpose used when no contract is reachable to ask (the contract's default).
pub const DEFAULT_PURPOSE: &str = "dstack-nft-cluster";

/// `dstack-node identity ...`.
#[derive(Debug, clap::Subcommand)]
pub enum IdentityCommand {
    /// Verify a dstack signature chain; exits 0 printing the verified addresses, 1 with the reason.
    Verify(VerifyArgs),
    /// Get this node's key from dstack (path built from Info.instance_id) and print its address
    /// and PeerId; with --owner and --token-id also the registration payload.
    Show(ShowArgs),
}

/// `identity verify`.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The pinned KMS root: 0x address or hex compressed public key (33 bytes).
    #[arg(long)]
    pub kms_root: String,
    /// The app id (hex, 20 bytes).
    #[arg(long)]
    pub app_id: String,
    /// The purpose the key was requested with.
    #[arg(long)]
    pub purpose: String,
    /// The derived public key: hex of 33, 64 or 65 bytes.
    #[arg(long)]
    pub derived_pubkey: String,
    /// `<app_sig_hex>,<kms_sig_hex>` as GetKey returns them.
    #[arg(long)]
    pub signature_chain: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `identity show`.
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// The dstack guest agent: socket path or http:// URL (default: the standard sockets).
    #[arg(long, env = "DSTACK_ENDPOINT")]
    pub dstack: Option<String>,
    /// Chain id of the cluster's chain.
    #[arg(long, env = "DSTACK_CHAIN_ID")]
    pub chain_id: u64,
    /// The cluster contract.
    #[arg(long, env = "DSTACK_CONTRACT")]
    pub contract: Address,
    /// The token owner the registration payload is for.
    #[arg(long, requires = "token_id")]
    pub owner: Option<Address>,
    /// The token id the registration payload is for.
    #[arg(long, requires = "owner")]
    pub token_id: Option<U256>,
    /// Chain RPC (needed for the payload: nonce, deadline, purpose, KMS root).
    #[arg(long, env = "DSTACK_RPC_URL")]
    pub rpc: Option<String>,
    /// The connection URL (multiaddr) to put in the registration payload.
    #[arg(long, env = "DSTACK_CONNECTION_URL", default_value = "")]
    pub connection_url: String,
    /// The purpose (default: the contract's with --rpc, else "dstack-nft-cluster").
    #[arg(long)]
    pub purpose: Option<String>,
}

/// Runs an identity subcommand.
pub async fn run(cmd: IdentityCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        IdentityCommand::Verify(a) => Ok(verify(&a)),
        IdentityCommand::Show(a) => show(a).await,
    }
}

fn verify(a: &VerifyArgs) -> ExitCode {
    let result = (|| {
        let anchor = TrustAnchor {
            kms_root: KmsRoot::parse(&a.kms_root)?,
            app_id: hexfmt::decode_fixed::<20>("app id", &a.app_id)?,
            purpose: a.purpose.clone(),
        };
        let parts: Vec<&str> = a.signature_chain.split(',').map(str::trim).collect();
        verify_chain_hex(&anchor, &a.derived_pubkey, &parts)
    })();
    match result {
        Ok(id) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "valid": true,
                        "derived_address": id.derived_address.to_string(),
                        "app_address": id.app_address.to_string(),
                        "kms_root": id.kms_root.to_string(),
                        "app_id": hexfmt::encode_0x(&id.app_id),
                    })
                );
            } else {
                println!("valid");
                println!("derived_address: {}", id.derived_address);
                println!("app_address: {}", id.app_address);
                println!("kms_root: {}", id.kms_root);
                println!("app_id: {}", hexfmt::encode_0x(&id.app_id));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({ "valid": false, "reason": e.to_string() })
                );
            } else {
                println!("invalid: {e}");
            }
            ExitCode::from(1)
        }
    }
}

/// The libp2p PeerId of a secp256k1 node key (the node's one identity).
pub fn peer_id(node: &NodeKey) -> anyhow::Result<libp2p::PeerId> {
    let sk = libp2p::identity::secp256k1::SecretKey::try_from_bytes(node.key.secret.to_bytes())
        .context("node key is not a valid libp2p secp256k1 key")?;
    let kp = libp2p::identity::Keypair::from(libp2p::identity::secp256k1::Keypair::from(sk));
    Ok(kp.public().to_peer_id())
}

async fn show(a: ShowArgs) -> anyhow::Result<ExitCode> {
    let dstack = DstackClient::new(a.dstack.as_deref())?;
    let cluster = match &a.rpc {
        Some(url) => Some(Cluster::connect(url, a.contract).await?),
        None => None,
    };
    if let Some(c) = &cluster
        && c.chain_id() != a.chain_id
    {
        bail!(
            "--chain-id {} but the RPC serves chain {}",
            a.chain_id,
            c.chain_id()
        );
    }
    let purpose = match (&a.purpose, &cluster) {
        (Some(p), _) => p.clone(),
        (None, Some(c)) => c.purpose().await?,
        (None, None) => DEFAULT_PURPOSE.to_string(),
    };
    let node = dstack.node_key(a.chain_id, a.contract, &purpose).await?;
    println!("address: {}", node.address());
    println!("peer_id: {}", peer_id(&node)?);
    println!("path: {}", node.path);
    println!("app_id: {}", hexfmt::encode_0x(&node.app_id));
    println!("instance_id: {}", node.instance_id);
    println!("purpose: {purpose}");
    if let (Some(owner), Some(token_id)) = (a.owner, a.token_id) {
        let Some(c) = &cluster else {
            bail!("the registration payload needs --rpc (nonce, deadline, KMS root, purpose)");
        };
        let payload = c
            .registration_for(&node, token_id, owner, &a.connection_url)
            .await?;
        println!(
            "registration: {}",
            serde_json::to_string_pretty(&payload.to_json())?
        );
    }
    Ok(ExitCode::SUCCESS)
}
