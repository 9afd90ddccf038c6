//! `dstack-node-liar`: a TEST-ONLY byzantine validator whose oracle lies. It is
//! `dstack-node start` with its chain view wrapped: every pinned head it reports claims one more
//! unit of power for itself, at a chain block honest nodes must refuse, alternately a stale one
//! (the real pinned number with a hash the chain does not hold there, as after a reorg rolled
//! it back) and a future one (1,000 blocks past the real pinned head, with an invented hash).
//! When it leads a round its core proposes a
//! `Reconfigure` from that view; honest nodes must refuse to vote for it, and no epoch may start
//! from it. Its reads of other blocks (`ReadChainSet`) stay honest.
//!
//! Like the equivocator it lives in crate `testnet`, never in crate `node`, and refuses to run on
//! any chain but anvil's (chain id 31337).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use clap::{Parser, Subcommand};
use consensus::crypto::{K256Signer, Signer};
use consensus::types::Address;
use node::chain::{ChainFuture, ChainSet, ChainView};
use node::driver::DriverConfig;
use node::launch::{ChainWrap, FaultHooks};

/// The only chain id this binary runs on (anvil's default).
const LOCAL_CHAIN_ID: u64 = 31337;
/// How far past the real pinned head the future lie points.
const FUTURE_BLOCKS: u64 = 1_000;

/// Command line: the same `start` as `dstack-node`.
#[derive(Debug, Parser)]
#[command(
    name = "dstack-node-liar",
    about = "TEST-ONLY dstack-node whose oracle reports stale and future chain blocks (chain id 31337 only)"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the node from its home (see `dstack-node start`), lying about the pinned head.
    Start {
        /// The node's home directory (config.toml, genesis.json, data).
        #[arg(long)]
        home: PathBuf,
        /// Overrides `section.key=value`.
        #[arg(long = "set")]
        set: Vec<String>,
    },
}

/// The lying view over the real one.
struct Liar {
    real: Arc<dyn ChainView>,
    me: Option<Address>,
    polls: AtomicU64,
}

impl ChainView for Liar {
    fn pinned(&self) -> ChainFuture<'_, Result<ChainSet, String>> {
        Box::pin(async move {
            let mut view = self.real.pinned().await?;
            for m in &mut view.members {
                if Some(m.info.address) == self.me {
                    m.info.power += 1;
                }
            }
            if self.polls.fetch_add(1, Ordering::Relaxed) % 2 == 1 {
                view.number += FUTURE_BLOCKS;
            }
            view.hash = [0xee; 32];
            view.hash[..8].copy_from_slice(&view.number.to_be_bytes());
            Ok(view)
        })
    }

    fn set_at(
        &self,
        number: u64,
        hash: [u8; 32],
    ) -> ChainFuture<'_, Result<Option<ChainSet>, String>> {
        self.real.set_at(number, hash)
    }
}

fn wrap() -> ChainWrap {
    Arc::new(
        |cfg: &DriverConfig, real: Arc<dyn ChainView>| -> Arc<dyn ChainView> {
            if cfg.chain_id != LOCAL_CHAIN_ID {
                eprintln!(
                    "dstack-node-liar: refusing chain id {} (test-only binary: chain id \
                 {LOCAL_CHAIN_ID} only)",
                    cfg.chain_id
                );
                std::process::exit(3);
            }
            let me = K256Signer::from_secret(&cfg.secret)
                .ok()
                .map(|s| s.address());
            Arc::new(Liar {
                real,
                me,
                polls: AtomicU64::new(0),
            })
        },
    )
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Cmd::Start { home, set } = cli.command;
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
    let hooks = FaultHooks {
        chain: Some(wrap()),
        ..FaultHooks::default()
    };
    match runtime.block_on(node::launch::run_start_hooked(&home, &set, hooks)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
