//! Byzantine behaviours for the simulator's `byzantine` scenario. A Byzantine node runs an honest
//! core, and its host tampers with what the core sends and adds attacks of its own:
//! equivocating proposals (a second block to half the cluster), double votes, withheld votes,
//! badly signed copies, replays of old messages, messages signed by non-members, and floods of
//! far-future rounds and unknown epochs, fork proposals with a TC, TCs built from a
//! cherry-picked quorum that under-reports the signers' high-QC rounds, and, with epochs, stale
//! or rolled-back Reconfigures and timeouts carrying QCs of an earlier epoch. Total Byzantine
//! power stays at most P − Q.

use crate::crypto::Signer;
use crate::domain::Domain;
use crate::types::{
    Address, BatchDigest, Block, BlockId, Message, Proposal, QuorumCert, Reconfigure, Signature,
    SignerBitmap, Timeout, TimeoutCert, Vote,
};
use crate::validators::ValidatorSet;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, VecDeque};

/// What one Byzantine node does.
pub struct Byzantine {
    /// Sends a second, different proposal to part of the cluster.
    pub equivocate: bool,
    /// Sends a second vote for another block with each vote.
    pub double_vote: bool,
    /// Never sends its votes.
    pub withhold: bool,
    /// Adds badly signed copies of what it sends.
    pub bad_signatures: bool,
    /// Re-sends old messages it received.
    pub replay: bool,
    /// Sends far-future and other-epoch messages, and messages signed by a non-member.
    pub flood: bool,
    /// As a leader entered by TC, proposes a fork: a block extending a QC older than the TC's
    /// high QC, with the (valid) TC. Honest voters must refuse it.
    pub fork: bool,
    /// QCs seen, for forks (bounded).
    pub qcs: VecDeque<QuorumCert>,
    /// Its own key (the same as its core's).
    pub signer: Box<dyn Signer>,
    /// A key that is not a member.
    pub outsider: Box<dyn Signer>,
    /// Messages received, for replays (bounded).
    pub seen: VecDeque<Message>,
    /// Builds TCs from the quorum of timeouts with the lowest high-QC rounds (its own claiming
    /// round 0) and broadcasts them.
    pub tc_underreport: bool,
    /// Timeouts received, by (epoch, round) (bounded), for the TC builder.
    pub timeouts: BTreeMap<(u64, u64), Vec<Timeout>>,
    /// As a leader, proposes a stale or rolled-back Reconfigure (`bad_reconfigure`, set by the
    /// simulator) instead of its core's block.
    pub stale_reconfigure: bool,
    /// The Reconfigure to propose when `stale_reconfigure`.
    pub bad_reconfigure: Option<Reconfigure>,
    /// Sends timeouts of its current epoch carrying QCs of an earlier epoch.
    pub old_epoch_qc: bool,
    /// QCs seen, by epoch (bounded), for `old_epoch_qc`.
    pub old_qcs: VecDeque<QuorumCert>,
    /// Its core's current set (set by the simulator).
    pub set: Option<ValidatorSet>,
}

impl Byzantine {
    /// Random behaviours (at least one).
    pub fn draw(rng: &mut ChaCha8Rng, signer: Box<dyn Signer>, outsider: Box<dyn Signer>) -> Self {
        let mut b = Self {
            equivocate: rng.gen_bool(0.5),
            double_vote: rng.gen_bool(0.5),
            withhold: rng.gen_bool(0.3),
            bad_signatures: rng.gen_bool(0.5),
            replay: rng.gen_bool(0.5),
            flood: rng.gen_bool(0.5),
            fork: rng.gen_bool(0.5),
            qcs: VecDeque::new(),
            signer,
            outsider,
            seen: VecDeque::new(),
            tc_underreport: rng.gen_bool(0.5),
            timeouts: BTreeMap::new(),
            stale_reconfigure: false,
            bad_reconfigure: None,
            old_epoch_qc: false,
            old_qcs: VecDeque::new(),
            set: None,
        };
        if !(b.equivocate
            || b.double_vote
            || b.withhold
            || b.bad_signatures
            || b.replay
            || b.flood
            || b.fork)
        {
            b.equivocate = true;
        }
        b
    }

    /// Remembers a received message for later replay.
    pub fn observe(&mut self, m: &Message) {
        if self.old_epoch_qc {
            let qc = match m {
                Message::Proposal(p) => Some(p.block.qc()),
                Message::Timeout(t) => Some(&t.high_qc),
                _ => None,
            };
            if let Some(qc) = qc
                && qc.round > 0
                && self
                    .old_qcs
                    .back()
                    .is_none_or(|q| q.epoch != qc.epoch || q.round < qc.round)
            {
                if self.old_qcs.len() >= 16 {
                    self.old_qcs.pop_front();
                }
                self.old_qcs.push_back(qc.clone());
            }
        }
        if self.tc_underreport
            && let Message::Timeout(t) = m
        {
            let v = self.timeouts.entry((t.epoch, t.round)).or_default();
            if v.len() < 64 && !v.iter().any(|x| x.signer == t.signer) {
                v.push(t.clone());
            }
            while self.timeouts.len() > 8 {
                self.timeouts.pop_first();
            }
        }
        if self.fork {
            let qc = match m {
                Message::Proposal(p) => Some(p.block.qc()),
                Message::Timeout(t) => Some(&t.high_qc),
                _ => None,
            };
            if let Some(qc) = qc
                && qc.round > 0
                && !self.qcs.iter().any(|q| q.block_id == qc.block_id)
            {
                if self.qcs.len() >= 32 {
                    self.qcs.pop_front();
                }
                self.qcs.push_back(qc.clone());
            }
        }
        if self.replay {
            if self.seen.len() >= 64 {
                self.seen.pop_front();
            }
            self.seen.push_back(m.clone());
        }
    }

    /// Tampers with one message the core wants to send to `targets`: returns (target, message)
    /// pairs to put on the network.
    pub fn tamper(
        &self,
        rng: &mut ChaCha8Rng,
        domain: &Domain,
        targets: &[usize],
        m: Message,
    ) -> Vec<(usize, Message)> {
        let me = self.signer.address();
        let mut out = Vec::new();
        match &m {
            Message::Vote(v) if v.signer == me && self.withhold => {}
            Message::Vote(v) if v.signer == me && self.double_vote => {
                let other = BlockId(rng.r#gen());
                let d = domain.vote_digest(v.epoch, v.round, &other);
                let v2 = Vote {
                    block_id: other,
                    signature: self.signer.sign(&d),
                    ..v.clone()
                };
                for &t in targets {
                    out.push((t, m.clone()));
                    out.push((t, Message::Vote(v2.clone())));
                }
            }
            Message::Proposal(p)
                if p.block.proposer() == me
                    && self.fork
                    && p.tc
                        .as_ref()
                        .is_some_and(|tc| self.qcs.iter().any(|q| q.round < tc.high_qc.round)) =>
            {
                let tc = p.tc.clone();
                let limit = tc.as_ref().map_or(0, |t| t.high_qc.round);
                let old = self
                    .qcs
                    .iter()
                    // The highest QC below the TC's: above the committed root, so only the
                    // vote rule's TC condition stops honest nodes from voting for it.
                    .filter(|q| q.round < limit)
                    .max_by_key(|q| q.round)
                    .cloned();
                if let Some(old) = old {
                    let b = &p.block;
                    let f = Block::new(b.epoch(), b.round(), old, me, vec![], None);
                    let d = domain.proposal_digest(f.epoch(), f.round(), &f.id());
                    let fp = Proposal {
                        signature: self.signer.sign(&d),
                        block: f,
                        tc,
                    };
                    for &t in targets {
                        out.push((t, Message::Proposal(fp.clone())));
                    }
                }
            }
            Message::Proposal(p)
                if p.block.proposer() == me
                    && self.stale_reconfigure
                    && self.bad_reconfigure.is_some()
                    && p.block.header().reconfigure.is_none() =>
            {
                let b = &p.block;
                let f = Block::new(
                    b.epoch(),
                    b.round(),
                    b.qc().clone(),
                    me,
                    vec![],
                    self.bad_reconfigure.clone(),
                );
                let d = domain.proposal_digest(f.epoch(), f.round(), &f.id());
                let fp = Proposal {
                    signature: self.signer.sign(&d),
                    block: f,
                    tc: p.tc.clone(),
                };
                for &t in targets {
                    out.push((t, Message::Proposal(fp.clone())));
                }
            }
            Message::Proposal(p) if p.block.proposer() == me && self.equivocate => {
                let b = &p.block;
                let mut payload = b.payload().to_vec();
                payload.push(BatchDigest(rng.r#gen()));
                let b2 = Block::new(b.epoch(), b.round(), b.qc().clone(), me, payload, None);
                let d = domain.proposal_digest(b2.epoch(), b2.round(), &b2.id());
                let p2 = Proposal {
                    signature: self.signer.sign(&d),
                    block: b2,
                    tc: p.tc.clone(),
                };
                for &t in targets {
                    let pick = if rng.gen_bool(0.5) {
                        m.clone()
                    } else {
                        Message::Proposal(p2.clone())
                    };
                    out.push((t, pick));
                }
            }
            _ => {
                for &t in targets {
                    out.push((t, m.clone()));
                }
            }
        }
        if self.bad_signatures {
            let mut bad = m;
            match &mut bad {
                Message::Vote(v) => v.signature.0[7] ^= 0x5a,
                Message::Proposal(p) => p.signature.0[7] ^= 0x5a,
                Message::Timeout(t) => t.signature.0[7] ^= 0x5a,
                Message::TimeoutCert(tc) => {
                    if let Some(s) = tc.signatures.first_mut() {
                        s.0[7] ^= 0x5a;
                    }
                }
            }
            for &t in targets {
                out.push((t, bad.clone()));
            }
        }
        out
    }

    /// A TC for the latest round it holds a quorum of timeouts for, from the signers with the
    /// lowest high-QC rounds, its own entry claiming round 0: valid, but as low as it can be.
    fn underreported_tc(
        &mut self,
        domain: &Domain,
        genesis_qc: &QuorumCert,
    ) -> Option<TimeoutCert> {
        let set = self.set.as_ref()?;
        let me = self.signer.address();
        let my_index = set.index_of(&me)?;
        for ((epoch, round), ts) in self.timeouts.iter().rev() {
            if *epoch != genesis_qc.epoch {
                continue;
            }
            let mut entries: Vec<(u64, usize, Signature, QuorumCert)> = ts
                .iter()
                .filter(|t| t.signer != me)
                .filter_map(|t| {
                    set.index_of(&t.signer)
                        .map(|i| (t.high_qc.round, i, t.signature, t.high_qc.clone()))
                })
                .collect();
            entries.sort_by_key(|e| (e.0, e.1));
            let own = self.signer.sign(&domain.timeout_digest(*epoch, *round, 0));
            let mut chosen = vec![(0u64, my_index, own, genesis_qc.clone())];
            let mut bits = SignerBitmap::new(set.len());
            bits.set(my_index);
            for e in entries {
                if set.is_quorum(&bits) {
                    break;
                }
                bits.set(e.1);
                chosen.push(e);
            }
            if !set.is_quorum(&bits) {
                continue;
            }
            chosen.sort_by_key(|e| e.1);
            let high_qc = chosen
                .iter()
                .max_by_key(|e| e.0)
                .map(|e| e.3.clone())
                .unwrap_or_else(|| genesis_qc.clone());
            return Some(TimeoutCert {
                epoch: *epoch,
                round: *round,
                high_qc,
                signers: bits,
                high_qc_rounds: chosen.iter().map(|e| e.0).collect(),
                signatures: chosen.iter().map(|e| e.2).collect(),
            });
        }
        None
    }

    /// Attacks of its own, made in `epoch` at `round` with the epoch's genesis QC at hand.
    pub fn attack(
        &mut self,
        rng: &mut ChaCha8Rng,
        domain: &Domain,
        epoch: u64,
        round: u64,
        genesis_qc: &QuorumCert,
    ) -> Vec<Message> {
        let mut out = Vec::new();
        if self.tc_underreport
            && let Some(tc) = self.underreported_tc(domain, genesis_qc)
        {
            out.push(Message::TimeoutCert(tc));
        }
        if self.old_epoch_qc
            && let Some(old) = self.old_qcs.iter().rev().find(|q| q.epoch < epoch).cloned()
        {
            // A timeout of the current epoch carrying a QC of an earlier one (its round chosen
            // so the QC looks like the previous round's): honest nodes must refuse it.
            let r = old.round + 1;
            let d = domain.timeout_digest(epoch, r, old.round);
            out.push(Message::Timeout(Timeout {
                epoch,
                round: r,
                high_qc: old,
                high_tc: None,
                signer: self.signer.address(),
                signature: self.signer.sign(&d),
            }));
        }
        if self.replay && !self.seen.is_empty() {
            let i = rng.gen_range(0..self.seen.len());
            out.push(self.seen[i].clone());
        }
        if self.flood {
            let far = round + 1_000_000 + rng.gen_range(0..1_000);
            // A far-future timeout without a certificate of the previous round (invalid).
            let d = domain.timeout_digest(epoch, far, 0);
            out.push(Message::Timeout(Timeout {
                epoch,
                round: far,
                high_qc: genesis_qc.clone(),
                high_tc: None,
                signer: self.signer.address(),
                signature: self.signer.sign(&d),
            }));
            // A validly signed vote for a far-future round.
            let id = BlockId(rng.r#gen());
            let d = domain.vote_digest(epoch, far, &id);
            out.push(Message::Vote(Vote {
                epoch,
                round: far,
                block_id: id,
                signer: self.signer.address(),
                signature: self.signer.sign(&d),
            }));
            // A vote of an unknown epoch.
            let d = domain.vote_digest(epoch + 7, round, &id);
            out.push(Message::Vote(Vote {
                epoch: epoch + 7,
                round,
                block_id: id,
                signer: self.signer.address(),
                signature: self.signer.sign(&d),
            }));
            // Messages signed by a non-member.
            let d = domain.vote_digest(epoch, round, &id);
            out.push(Message::Vote(Vote {
                epoch,
                round,
                block_id: id,
                signer: self.outsider.address(),
                signature: self.outsider.sign(&d),
            }));
            let d = domain.timeout_digest(epoch, 1, 0);
            out.push(Message::Timeout(Timeout {
                epoch,
                round: 1,
                high_qc: genesis_qc.clone(),
                high_tc: None,
                signer: self.outsider.address(),
                signature: self.outsider.sign(&d),
            }));
        }
        out
    }
}

/// A node address that is not a member, for messages "from" nowhere.
pub fn nobody() -> Address {
    Address([0xee; 20])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Scheme;
    use crate::testkit::Cluster;
    use crate::types::BlockId;
    use rand::SeedableRng;

    /// The under-reporting builder makes a valid TC from the quorum with the lowest high-QC
    /// rounds, lower than the one honest collectors would form from all timeouts.
    #[test]
    fn underreported_tc_is_valid_and_lower() {
        let c = Cluster::new(Scheme::Fast, &[1; 10], 90); // P = 10, Q = 7
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let byz = 0;
        let mut b = Byzantine::draw(&mut rng, c.signer_of(byz), c.signer_of(byz));
        b.tc_underreport = true;
        b.set = Some(c.ctx.set().clone());
        let q = |r: u64| c.full_qc(r, BlockId([r as u8; 32]));
        // Honest timeouts of round 6 (a TC of round 5 justifies the lower ones).
        let tc5 = c.tc(
            5,
            q(4),
            &[(1, 4), (2, 4), (3, 4), (4, 4), (5, 4), (6, 4), (7, 4)],
        );
        for (i, hq) in [
            (1, 5),
            (2, 5),
            (3, 5),
            (4, 4),
            (5, 3),
            (6, 3),
            (7, 2),
            (8, 2),
            (9, 2),
        ] {
            let t = c.timeout(i, 6, q(hq), (hq != 5).then(|| tc5.clone()));
            b.observe(&Message::Timeout(t));
        }
        let tc = b
            .underreported_tc(c.ctx.domain(), &c.ctx.genesis_qc())
            .expect("a quorum of timeouts");
        assert_eq!(c.ctx.verify_tc(&tc), Ok(()));
        // Its own entry (0) and the six lowest honest ones: the highest reported QC is 4, below
        // the 5 that three honest signers hold.
        assert_eq!(tc.signers.count(), 7);
        let mut rounds = tc.high_qc_rounds.clone();
        rounds.sort_unstable();
        assert_eq!(rounds, vec![0, 2, 2, 2, 3, 3, 4]);
        assert_eq!(tc.max_high_qc_round(), 4);
        assert_eq!(tc.high_qc.round, 4);
    }
}
