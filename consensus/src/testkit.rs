//! Builders of valid (and deliberately invalid) consensus objects for tests, benchmarks and the
//! simulator: a cluster of deterministic signers, and QCs, TCs, proposals and timeouts signed by
//! any subset of it. Public so the benchmark crate can measure real verification paths.

use crate::crypto::{FastSigner, K256Signer, Scheme, Signer};
use crate::domain::Domain;
use crate::types::{
    Address, BatchDigest, Block, BlockId, Proposal, QuorumCert, SignerBitmap, Timeout, TimeoutCert,
    Vote,
};
use crate::validators::ValidatorSet;
use crate::verify::EpochContext;

/// A test cluster: signers in validator-set index order and the epoch context of their set.
pub struct Cluster {
    /// Signers, `signers[i]` is validator `i` of the set.
    pub signers: Vec<Box<dyn Signer>>,
    /// `seeds[i]` recreates `signers[i]` with [`signer`].
    pub seeds: Vec<u64>,
    /// The epoch context (epoch 0 unless built otherwise).
    pub ctx: EpochContext,
}

/// A deterministic signer of `scheme` for `seed`.
pub fn signer(scheme: Scheme, seed: u64) -> Box<dyn Signer> {
    match scheme {
        Scheme::Secp256k1 => Box::new(K256Signer::from_seed(seed)),
        Scheme::Fast => Box::new(FastSigner::from_seed(seed)),
    }
}

/// The test domain (chain 31337, contract 0x11..11, genesis id 0x22..22).
pub fn test_domain() -> Domain {
    Domain::new(31337, Address([0x11; 20]), [0x22; 32])
}

impl Cluster {
    /// A cluster with the given powers; signer seeds are `seed_base + i`.
    pub fn new(scheme: Scheme, powers: &[u64], seed_base: u64) -> Self {
        Self::with_epoch(scheme, powers, seed_base, 0)
    }

    /// Same, in epoch `epoch`.
    pub fn with_epoch(scheme: Scheme, powers: &[u64], seed_base: u64, epoch: u64) -> Self {
        let mut pairs: Vec<(u64, Box<dyn Signer>)> = powers
            .iter()
            .enumerate()
            .map(|(i, _)| (seed_base + i as u64, signer(scheme, seed_base + i as u64)))
            .collect();
        let members: Vec<_> = pairs
            .iter()
            .zip(powers)
            .map(|((_, s), &p)| (s.public_key(), p))
            .collect();
        let set = ValidatorSet::new(members).expect("valid test set");
        // Order signers as the set orders members (by address).
        pairs.sort_by_key(|(_, s)| s.address());
        let seeds = pairs.iter().map(|(seed, _)| *seed).collect();
        let signers = pairs.into_iter().map(|(_, s)| s).collect();
        let domain = test_domain();
        let genesis = domain.genesis_block_id(epoch, &[0x33; 32], &set.hash());
        Self {
            signers,
            seeds,
            ctx: EpochContext::new(epoch, genesis, set, domain, scheme),
        }
    }

    /// A new context equal to the cluster's (a core takes its own: contexts hold a verification
    /// cache and are not cloned).
    pub fn fresh_context(&self) -> EpochContext {
        EpochContext::new(
            self.ctx.epoch(),
            self.ctx.genesis_block(),
            self.ctx.set().clone(),
            self.ctx.domain().clone(),
            self.ctx.scheme(),
        )
    }

    /// A fresh copy of signer `i` (to hand to a core or safety rules).
    pub fn signer_of(&self, i: usize) -> Box<dyn Signer> {
        signer(self.ctx.scheme(), self.seeds[i])
    }

    /// The signer of the leader of `round`.
    pub fn leader(&self, round: u64) -> usize {
        let a = self.ctx.set().leader(round);
        self.ctx.set().index_of(&a).expect("leader is a member")
    }

    /// A vote by validator `i`.
    pub fn vote(&self, i: usize, round: u64, block: BlockId) -> Vote {
        let d = self
            .ctx
            .domain()
            .vote_digest(self.ctx.epoch(), round, &block);
        Vote {
            epoch: self.ctx.epoch(),
            round,
            block_id: block,
            signer: self.signers[i].address(),
            signature: self.signers[i].sign(&d),
        }
    }

    /// A QC on `block` at `round` signed by `who`.
    pub fn qc(&self, round: u64, block: BlockId, who: &[usize]) -> QuorumCert {
        let d = self
            .ctx
            .domain()
            .vote_digest(self.ctx.epoch(), round, &block);
        let mut signers = SignerBitmap::new(self.signers.len());
        let mut sorted = who.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        for &i in &sorted {
            signers.set(i);
        }
        QuorumCert {
            epoch: self.ctx.epoch(),
            round,
            block_id: block,
            signers,
            signatures: sorted.iter().map(|&i| self.signers[i].sign(&d)).collect(),
        }
    }

    /// A QC signed by everyone.
    pub fn full_qc(&self, round: u64, block: BlockId) -> QuorumCert {
        let all: Vec<usize> = (0..self.signers.len()).collect();
        self.qc(round, block, &all)
    }

    /// A timeout by `i` at `round` carrying `high_qc` (and `high_tc`).
    pub fn timeout(
        &self,
        i: usize,
        round: u64,
        high_qc: QuorumCert,
        high_tc: Option<TimeoutCert>,
    ) -> Timeout {
        let d = self
            .ctx
            .domain()
            .timeout_digest(self.ctx.epoch(), round, high_qc.round);
        Timeout {
            epoch: self.ctx.epoch(),
            round,
            high_qc,
            high_tc,
            signer: self.signers[i].address(),
            signature: self.signers[i].sign(&d),
        }
    }

    /// A TC at `round` from `(signer, high QC round)` pairs, carrying `high_qc`.
    pub fn tc(&self, round: u64, high_qc: QuorumCert, who: &[(usize, u64)]) -> TimeoutCert {
        let mut sorted = who.to_vec();
        sorted.sort_unstable();
        let mut signers = SignerBitmap::new(self.signers.len());
        for &(i, _) in &sorted {
            signers.set(i);
        }
        TimeoutCert {
            epoch: self.ctx.epoch(),
            round,
            high_qc,
            signers,
            high_qc_rounds: sorted.iter().map(|&(_, r)| r).collect(),
            signatures: sorted
                .iter()
                .map(|&(i, r)| {
                    let d = self.ctx.domain().timeout_digest(self.ctx.epoch(), round, r);
                    self.signers[i].sign(&d)
                })
                .collect(),
        }
    }

    /// A block of `round` by its leader extending `qc`.
    pub fn block(&self, round: u64, qc: QuorumCert, payload: Vec<BatchDigest>) -> Block {
        let leader = self.signers[self.leader(round)].address();
        Block::new(self.ctx.epoch(), round, qc, leader, payload, None)
    }

    /// The leader's signed proposal of `block`.
    pub fn proposal(&self, block: Block, tc: Option<TimeoutCert>) -> Proposal {
        let i = self
            .ctx
            .set()
            .index_of(&block.proposer())
            .expect("proposer is a member");
        let d = self
            .ctx
            .domain()
            .proposal_digest(block.epoch(), block.round(), &block.id());
        Proposal {
            signature: self.signers[i].sign(&d),
            block,
            tc,
        }
    }
}
