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

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use consensus::crypto::{K256Signer, Signer};
use consensus::types::Address;
use node::chain::{ChainFuture, ChainSet, ChainView};
use node::driver::DriverConfig;
use node::launch::{ChainWrap, FaultHooks};
use testnet::faulty;

/// How far past the real pinned head the future lie points.
const FUTURE_BLOCKS: u64 = 1_000;

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
            faulty::refuse_unless_local("dstack-node-liar", cfg);
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
    faulty::main_with(
        "dstack-node-liar",
        "TEST-ONLY dstack-node whose oracle reports stale and future chain blocks (chain id 31337 only)",
        FaultHooks {
            chain: Some(wrap()),
            ..FaultHooks::default()
        },
    )
}
