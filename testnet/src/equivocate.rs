//! The chaos suite's equivocation: next to every vote and every payload-carrying proposal a
//! faulty node signs, a conflicting one signed with the same key (a vote for another block id;
//! the same proposal with an empty payload). Shared by the test-only binaries
//! `dstack-node-equivocator` and `dstack-node-hostile`; crate `node` never contains it.

use std::sync::atomic::{AtomicU64, Ordering};

use consensus::crypto::K256Signer;
use consensus::domain::Domain;
use consensus::types::{Address, Block, BlockId, Message, Proposal, Vote};
use node::driver::DriverConfig;

/// Signs a conflicting twin of each vote and payload-carrying proposal.
pub struct Equivocator {
    signer: K256Signer,
    domain: Domain,
    votes: AtomicU64,
    proposals: AtomicU64,
}

impl Equivocator {
    /// The equivocator of the node configured by `cfg` (its key and signing domain).
    pub fn new(cfg: &DriverConfig) -> Result<Self, consensus::crypto::CryptoError> {
        Ok(Self {
            signer: K256Signer::from_secret(&cfg.secret)?,
            domain: Domain::new(cfg.chain_id, Address(cfg.contract), cfg.genesis_id),
            votes: AtomicU64::new(0),
            proposals: AtomicU64::new(0),
        })
    }

    /// The conflicting twin of `message`, if it has one.
    pub fn twin(&self, message: &Message) -> Option<Message> {
        match message {
            Message::Vote(v) => self.twin_vote(v),
            Message::Proposal(p) => self.twin_proposal(p),
            Message::Timeout(_) | Message::TimeoutCert(_) => None,
        }
    }

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
