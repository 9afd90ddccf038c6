//! The simulator's checker: it watches every action a node executes and flags
//! - safety: two nodes committing different blocks at one height; a node's commits not extending
//!   its previous ones; a commit without a valid proof (B1 one round above the last committed
//!   block, QC(B1) of power ≥ Q); a certificate of power < Q in anything a node sent or
//!   committed; a node signing two conflicting messages (two votes or proposals for one round,
//!   a vote in a round it timed out in, two different timeouts for one round); a signed message
//!   leaving before the state covering it (safety state, voted block, carried certificates) was
//!   durable;
//! - liveness (driven by the simulator): see `sim::run`.
//!
//! It computes power from its own copy of the powers, never through `ValidatorSet`, so a broken
//! quorum rule in the core cannot hide from it.

use crate::block_tree::Commit;
use crate::crypto::{PreparedKey, Scheme, Verifier};
use crate::domain::Domain;
use crate::types::{Address, BlockId, Message, QuorumCert, SignerBitmap, TimeoutCert};
use std::collections::{BTreeMap, HashMap};

/// What one node signed in one round.
#[derive(Clone, Debug, Default)]
struct Signed {
    vote: Option<BlockId>,
    proposal: Option<BlockId>,
    timeout: Option<u64>,
}

/// What a node has made durable, as far as the checker needs it.
#[derive(Clone, Debug, Default)]
pub struct DurableView {
    /// Safety state: last voted round.
    pub last_voted_round: u64,
    /// Safety state: highest timeout round.
    pub highest_timeout_round: u64,
    /// Safety state: last proposal round.
    pub last_proposal_round: u64,
    /// Highest QC round durable (from certificates or block headers).
    pub qc_round: u64,
    /// Highest TC round durable.
    pub tc_round: u64,
}

/// The checker of one run.
pub struct Checker {
    scheme: Scheme,
    domain: Domain,
    epoch: u64,
    genesis: BlockId,
    /// Members in address order: (address, power, key).
    members: Vec<(Address, u64, PreparedKey)>,
    quorum: u128,
    chain: Vec<BlockId>,
    ledgers: Vec<Vec<(BlockId, u64)>>,
    signed: Vec<BTreeMap<u64, Signed>>,
    /// Violations found.
    pub violations: Vec<String>,
    /// Valid evidence records reported.
    pub evidence: u64,
}

impl Checker {
    /// A checker for members `(address, power, public key)`.
    pub fn new(
        scheme: Scheme,
        domain: Domain,
        epoch: u64,
        genesis: BlockId,
        mut members: Vec<(Address, u64, PreparedKey)>,
        n_nodes: usize,
    ) -> Self {
        members.sort_by_key(|m| m.0);
        let p: u128 = members.iter().map(|m| u128::from(m.1)).sum();
        Self {
            scheme,
            domain,
            epoch,
            genesis,
            members,
            quorum: 2 * p / 3 + 1,
            chain: Vec::new(),
            ledgers: vec![Vec::new(); n_nodes],
            signed: vec![BTreeMap::new(); n_nodes],
            violations: Vec::new(),
            evidence: 0,
        }
    }

    fn violation(&mut self, node: usize, msg: String) {
        if self.violations.len() < 20 {
            self.violations.push(format!("node {node}: {msg}"));
        }
    }

    /// Highest height committed by anyone.
    pub fn height(&self) -> u64 {
        self.chain.len() as u64
    }
    /// Height committed by `node`.
    pub fn node_height(&self, node: usize) -> u64 {
        self.ledgers[node].len() as u64
    }

    fn power_ok(&self, signers: &SignerBitmap, n_sigs: usize) -> Result<(), String> {
        if signers.count() != n_sigs {
            return Err("signature count differs from signers".into());
        }
        let mut power: u128 = 0;
        for i in signers.iter() {
            match self.members.get(i) {
                Some(m) => power += u128::from(m.1),
                None => return Err(format!("signer index {i} outside the set")),
            }
        }
        if power < self.quorum {
            return Err(format!("power {power} below the quorum {}", self.quorum));
        }
        Ok(())
    }

    /// Checks a QC independently: genesis, or power ≥ Q with every signature valid.
    pub fn check_qc(&self, qc: &QuorumCert) -> Result<(), String> {
        if qc.epoch != self.epoch {
            return Err(format!("QC of epoch {}", qc.epoch));
        }
        if qc.round == 0 {
            return if qc.block_id == self.genesis && qc.signatures.is_empty() {
                Ok(())
            } else {
                Err("forged genesis QC".into())
            };
        }
        self.power_ok(&qc.signers, qc.signatures.len())
            .map_err(|e| format!("QC round {}: {e}", qc.round))?;
        let d = self.domain.vote_digest(qc.epoch, qc.round, &qc.block_id);
        for (i, s) in qc.signers.iter().zip(&qc.signatures) {
            if !self.scheme.verify(&self.members[i].2, &d, s) {
                return Err(format!("QC round {}: bad signature of {i}", qc.round));
            }
        }
        Ok(())
    }

    /// Checks a TC independently.
    pub fn check_tc(&self, tc: &TimeoutCert) -> Result<(), String> {
        self.power_ok(&tc.signers, tc.signatures.len())
            .map_err(|e| format!("TC round {}: {e}", tc.round))?;
        if tc.high_qc_rounds.iter().copied().max() != Some(tc.high_qc.round)
            || tc.high_qc.round >= tc.round
        {
            return Err(format!("TC round {}: high QC inconsistent", tc.round));
        }
        for ((i, s), r) in tc
            .signers
            .iter()
            .zip(&tc.signatures)
            .zip(&tc.high_qc_rounds)
        {
            let d = self.domain.timeout_digest(tc.epoch, tc.round, *r);
            if !self.scheme.verify(&self.members[i].2, &d, s) {
                return Err(format!("TC round {}: bad signature of {i}", tc.round));
            }
        }
        self.check_qc(&tc.high_qc)
    }

    fn record_vote(&mut self, node: usize, round: u64, block: BlockId) {
        let s = self.signed[node].entry(round).or_default();
        let err = match s.vote {
            Some(b) if b == block => None,
            Some(_) => Some(format!("two votes in round {round}")),
            None => {
                s.vote = Some(block);
                s.timeout
                    .map(|_| format!("voted in round {round} after timing out in it"))
            }
        };
        if let Some(e) = err {
            self.violation(node, e);
        }
    }
    fn record_timeout(&mut self, node: usize, round: u64, high_qc_round: u64) {
        let s = self.signed[node].entry(round).or_default();
        match s.timeout {
            Some(h) if h != high_qc_round => {
                self.violation(node, format!("two different timeouts in round {round}"));
            }
            _ => s.timeout = Some(high_qc_round),
        }
    }
    fn record_proposal(&mut self, node: usize, round: u64, block: BlockId) {
        let s = self.signed[node].entry(round).or_default();
        match s.proposal {
            Some(b) if b != block => {
                self.violation(node, format!("two proposals in round {round}"));
            }
            _ => s.proposal = Some(block),
        }
    }

    /// A safety state the node made durable: every signed message it names is recorded.
    pub fn on_persist_safety(&mut self, node: usize, st: &crate::safety::SafetyState) {
        if let Some(v) = &st.last_vote {
            self.record_vote(node, v.round, v.block_id);
        }
        if let Some(t) = &st.last_timeout {
            self.record_timeout(node, t.round, t.high_qc.round);
        }
        if let Some(p) = &st.last_proposal {
            self.record_proposal(node, p.round(), p.block.id());
        }
    }

    /// A message node `node` (address `me`) sends: its certificates must carry Q, what it signed
    /// must not conflict, and must already be durable.
    pub fn on_send(
        &mut self,
        node: usize,
        me: Address,
        msg: &Message,
        durable: &DurableView,
        has_block: &dyn Fn(&BlockId) -> bool,
    ) {
        let mut errs = Vec::new();
        match msg {
            Message::Proposal(p) => {
                if let Err(e) = self.check_qc(p.block.qc()) {
                    errs.push(format!("proposal carries invalid QC: {e}"));
                }
                if let Some(tc) = &p.tc
                    && let Err(e) = self.check_tc(tc)
                {
                    errs.push(format!("proposal carries invalid TC: {e}"));
                }
                if p.block.proposer() == me {
                    self.record_proposal(node, p.round(), p.block.id());
                    if durable.last_proposal_round < p.round() {
                        errs.push(format!(
                            "proposal of round {} sent before durable",
                            p.round()
                        ));
                    }
                    if !has_block(&p.block.id()) {
                        errs.push("proposed block sent before durable".into());
                    }
                }
            }
            Message::Vote(v) => {
                if v.signer == me {
                    self.record_vote(node, v.round, v.block_id);
                    if durable.last_voted_round < v.round {
                        errs.push(format!("vote of round {} sent before durable", v.round));
                    }
                    if !has_block(&v.block_id) {
                        errs.push(format!("vote of round {} for a block not durable", v.round));
                    }
                }
            }
            Message::Timeout(t) => {
                if let Err(e) = self.check_qc(&t.high_qc) {
                    errs.push(format!("timeout carries invalid QC: {e}"));
                }
                if let Some(tc) = &t.high_tc
                    && let Err(e) = self.check_tc(tc)
                {
                    errs.push(format!("timeout carries invalid TC: {e}"));
                }
                if t.signer == me {
                    self.record_timeout(node, t.round, t.high_qc.round);
                    if durable.highest_timeout_round < t.round {
                        errs.push(format!("timeout of round {} sent before durable", t.round));
                    }
                    if durable.qc_round < t.high_qc.round
                        || t.high_tc
                            .as_ref()
                            .is_some_and(|tc| durable.tc_round < tc.round)
                    {
                        errs.push(format!(
                            "timeout of round {} carries certificates not durable",
                            t.round
                        ));
                    }
                }
            }
            Message::TimeoutCert(tc) => {
                if let Err(e) = self.check_tc(tc) {
                    errs.push(format!("sent invalid TC: {e}"));
                }
            }
        }
        for e in errs {
            self.violation(node, e);
        }
    }

    /// Evidence reported by `node` must prove a real equivocation: two different block ids, both
    /// validly signed by the accused member. (Honest scenarios have none, so any is a violation
    /// there; the Byzantine scenarios of the companion issue will expect them.)
    pub fn on_evidence(&mut self, node: usize, e: &crate::evidence::Evidence) {
        use crate::evidence::EquivocationKind;
        let Some(m) = self.members.iter().find(|m| m.0 == e.signer) else {
            return self.violation(node, "evidence against a non-member".into());
        };
        let digest = |id: &BlockId| match e.kind {
            EquivocationKind::Vote => self.domain.vote_digest(e.epoch, e.round, id),
            EquivocationKind::Proposal => self.domain.proposal_digest(e.epoch, e.round, id),
        };
        let valid = e.first.0 != e.second.0
            && self.scheme.verify(&m.2, &digest(&e.first.0), &e.first.1)
            && self.scheme.verify(&m.2, &digest(&e.second.0), &e.second.1);
        if !valid {
            self.violation(node, format!("false evidence against {}", e.signer));
        } else {
            self.evidence += 1;
        }
    }

    /// A commit executed by `node`: extends its ledger, agrees with everyone's, has a valid proof.
    pub fn on_commit(&mut self, node: usize, c: &Commit) {
        let mut errs = Vec::new();
        for cb in &c.blocks {
            let ledger = &self.ledgers[node];
            let h = cb.height;
            if h <= ledger.len() as u64 {
                // Re-commit after a restart: must be the same block.
                if ledger.get((h - 1) as usize).map(|x| x.0) != Some(cb.block.id()) {
                    errs.push(format!("re-committed a different block at height {h}"));
                }
                continue;
            }
            if h != ledger.len() as u64 + 1 {
                errs.push(format!("commit at height {h} skips heights"));
                break;
            }
            let parent = ledger.last().map_or(self.genesis, |x| x.0);
            if cb.block.parent_id() != parent {
                errs.push(format!(
                    "commit at height {h} does not extend the previous one"
                ));
            }
            self.ledgers[node].push((cb.block.id(), cb.block.round()));
            match self.chain.get((h - 1) as usize) {
                Some(id) if *id != cb.block.id() => {
                    errs.push(format!(
                        "SAFETY: conflicting blocks committed at height {h}"
                    ));
                }
                Some(_) => {}
                None => self.chain.push(cb.block.id()),
            }
        }
        if let Some(last) = c.blocks.last() {
            let p = &c.proof;
            if p.certified.parent_id() != last.block.id()
                || p.certified.round() != last.block.round() + 1
                || p.qc.block_id != p.certified.id()
                || p.qc.round != p.certified.round()
            {
                errs.push(format!(
                    "commit at height {} has no valid 2-chain proof (rounds {} -> {})",
                    last.height,
                    last.block.round(),
                    p.certified.round()
                ));
            }
            if let Err(e) = self.check_qc(&p.qc) {
                errs.push(format!("commit proof QC invalid: {e}"));
            }
        }
        for e in errs {
            self.violation(node, e);
        }
    }
}

/// Per-node durable views, kept by the simulator's host.
pub type DurableViews = HashMap<usize, DurableView>;
