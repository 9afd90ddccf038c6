//! `dstack-node-equivocator`: a TEST-ONLY byzantine validator for the chaos suite. It is
//! `dstack-node start` plus an outbound tap that, next to every vote and every proposal with a
//! payload the node signs, sends a conflicting one signed with the same key (a vote for another
//! block id; the same proposal with an empty payload). Honest nodes must record evidence against
//! it and stay safe.
//!
//! It lives in crate `testnet`, never in crate `node`, so no operator build contains it, and it
//! refuses to run on any chain but anvil's (chain id 31337).

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use consensus::crypto::K256Signer;
use consensus::domain::Domain;
use consensus::types::{Address, Block, BlockId, Message, Proposal, Vote};
use node::driver::DriverConfig;
use node::launch::FaultHooks;
use node::tap::{OutboundTap, TapFactory};
use testnet::faulty;

/// Signs a conflicting twin of each vote and payload-carrying proposal.
struct Equivocator {
    signer: K256Signer,
    domain: Domain,
    votes: AtomicU64,
    proposals: AtomicU64,
}

impl Equivocator {
    fn twin_vote(&self, v: &Vote) -> Option<Message> {
        let mut id = v.block_id.0;
        id[31] ^= 0x01;
        let block_id = BlockId(id);
        let signature = self
            .signer
            .try_sign(&self.domain.vote_digest(v.epoch, v.round, &block_id))
            .ok()?;
        let n = self.votes.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(round = v.round, twins = n, "equivocator: conflicting vote");
        Some(Message::Vote(Vote {
            block_id,
            signature,
            ..v.clone()
        }))
    }

    fn twin_proposal(&self, p: &Proposal) -> Option<Message> {
        let b = &p.block;
        if b.payload().is_empty() || b.header().reconfigure.is_some() {
            return None;
        }
        let block = Block::new(
            b.epoch(),
            b.round(),
            b.qc().clone(),
            b.proposer(),
            Vec::new(),
            None,
        );
        let signature = self
            .signer
            .try_sign(
                &self
                    .domain
                    .proposal_digest(block.epoch(), block.round(), &block.id()),
            )
            .ok()?;
        let n = self.proposals.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::warn!(
            round = b.round(),
            twins = n,
            "equivocator: conflicting proposal"
        );
        Some(Message::Proposal(Proposal {
            block,
            tc: p.tc.clone(),
            signature,
        }))
    }
}

impl OutboundTap for Equivocator {
    fn extra(&self, message: &Message) -> Vec<Message> {
        let twin = match message {
            Message::Vote(v) => self.twin_vote(v),
            Message::Proposal(p) => self.twin_proposal(p),
            Message::Timeout(_) | Message::TimeoutCert(_) => None,
        };
        twin.into_iter().collect()
    }
}

/// A tap that forwards nothing extra (used only to reach the refusal below without a panic).
struct Inert;

impl OutboundTap for Inert {
    fn extra(&self, _: &Message) -> Vec<Message> {
        Vec::new()
    }
}

fn factory() -> TapFactory {
    Arc::new(|cfg: &DriverConfig| -> Arc<dyn OutboundTap> {
        faulty::refuse_unless_local("dstack-node-equivocator", cfg);
        match K256Signer::from_secret(&cfg.secret) {
            Ok(signer) => Arc::new(Equivocator {
                signer,
                domain: Domain::new(cfg.chain_id, Address(cfg.contract), cfg.genesis_id),
                votes: AtomicU64::new(0),
                proposals: AtomicU64::new(0),
            }),
            Err(e) => {
                eprintln!("dstack-node-equivocator: node key: {e}");
                Arc::new(Inert)
            }
        }
    })
}

fn main() -> ExitCode {
    faulty::main_with(
        "dstack-node-equivocator",
        "TEST-ONLY equivocating dstack-node for the chaos suite (chain id 31337 only)",
        FaultHooks {
            tap: Some(factory()),
            ..FaultHooks::default()
        },
    )
}
