//! The simulator's checker: it watches every action a node executes and flags
//! - safety: two nodes committing different blocks at one height; a node's commits not extending
//!   its previous ones; a commit without a valid proof (B1 one round above the last committed
//!   block, QC(B1) of power ≥ Q); a certificate of power < Q in anything a node sent or
//!   committed; a node signing two conflicting messages (two votes or proposals for one round,
//!   a vote in a round it timed out in, two different timeouts for one round); a signed message
//!   leaving before the state covering it (safety state, voted block, carried certificates) was
//!   durable;
//! - epochs: every certificate in a message or committed block is of that message's (block's)
//!   epoch and valid with that epoch's set; epoch e's ledger ends at its first committed
//!   Reconfigure B0 and epoch e+1 continues from its genesis block; each epoch's set is the one
//!   its Reconfigure carried; a committed Reconfigure's chain block is no older than the highest
//!   honest pinned head minus W (when it was first voted for);
//! - the rules behind each vote and proposal an honest node signs, from the proposals seen: a
//!   vote justified by a TC extends a QC at least as high as the TC's highest reported QC; no
//!   payload in a block descending from an uncommitted Reconfigure; no vote for a Reconfigure
//!   older than the highest honest pinned head minus W; and every signature matches the digest
//!   of DESIGN section 6, computed here independently;
//! - liveness (driven by the simulator): see `sim::run`.
//!
//! It computes power from its own copy of the powers, never through `ValidatorSet`, so a broken
//! quorum rule in the core cannot hide from it.

use crate::block_tree::Commit;
use crate::crypto::{PreparedKey, Scheme, Verifier};
use crate::domain::{Domain, keccak256, validator_set_hash, word_address, word_u64};
use crate::epoch::EpochChangeRecord;
use crate::types::{
    Address, BlockId, MemberInfo, Message, Proposal, QuorumCert, SignerBitmap, TimeoutCert,
};
use std::collections::{BTreeMap, HashMap};

/// One epoch's set as the checker knows it (its own copy).
struct EpochSet {
    genesis: BlockId,
    members: Vec<(Address, u64, PreparedKey)>,
    infos: Vec<MemberInfo>,
    quorum: u128,
}

/// What the checker remembers of a proposed block.
#[derive(Clone, Debug)]
struct SeenBlock {
    epoch: u64,
    round: u64,
    parent: BlockId,
    qc_round: u64,
    /// The lowest "largest high-QC round" among the TCs it was proposed with.
    tc_max: Option<u64>,
    payload: bool,
    reconfigure: Option<u64>,
}

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
    epochs: Vec<EpochSet>,
    chain: Vec<BlockId>,
    /// Per node: (block id, epoch, carries a Reconfigure).
    ledgers: Vec<Vec<(BlockId, u64, bool)>>,
    signed: Vec<BTreeMap<(u64, u64), Signed>>,
    seen: HashMap<BlockId, SeenBlock>,
    /// The highest pinned head of any honest node, and W.
    head: u64,
    lag_w: u64,
    first_vote_head: HashMap<BlockId, u64>,
    /// Epoch changes whose B0 committed only as an ancestor (path longer than B0, B1).
    pub ancestor_epoch_changes: u64,
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
        genesis: BlockId,
        members: Vec<(Address, u64, PreparedKey)>,
        n_nodes: usize,
    ) -> Self {
        let mut c = Self {
            scheme,
            domain,
            epochs: Vec::new(),
            chain: Vec::new(),
            ledgers: vec![Vec::new(); n_nodes],
            signed: vec![BTreeMap::new(); n_nodes],
            seen: HashMap::new(),
            head: 0,
            lag_w: u64::MAX,
            first_vote_head: HashMap::new(),
            ancestor_epoch_changes: 0,
            violations: Vec::new(),
            evidence: 0,
        };
        c.push_epoch(genesis, members);
        c
    }

    fn push_epoch(&mut self, genesis: BlockId, mut members: Vec<(Address, u64, PreparedKey)>) {
        members.sort_by_key(|m| m.0);
        let p: u128 = members.iter().map(|m| u128::from(m.1)).sum();
        let infos = members
            .iter()
            .map(|m| MemberInfo {
                address: m.0,
                public_key: *m.2.public(),
                power: m.1,
            })
            .collect();
        self.epochs.push(EpochSet {
            genesis,
            members,
            infos,
            quorum: 2 * p / 3 + 1,
        });
    }

    /// The number of epochs the cluster reached (by commits).
    pub fn epochs(&self) -> u64 {
        self.epochs.len() as u64
    }

    /// The set of `epoch` (once its Reconfigure committed).
    pub fn epoch_members(&self, epoch: u64) -> Option<&[MemberInfo]> {
        self.epochs.get(epoch as usize).map(|e| e.infos.as_slice())
    }

    /// Whether `a` was a member of an epoch before `epoch`.
    pub fn was_member_before(&self, a: &Address, epoch: u64) -> bool {
        self.epochs
            .iter()
            .take(epoch as usize)
            .any(|e| e.members.iter().any(|m| m.0 == *a))
    }

    /// The highest honest pinned head is now `head`; W is `lag_w`.
    pub fn set_head(&mut self, head: u64, lag_w: u64) {
        self.head = self.head.max(head);
        self.lag_w = lag_w;
    }

    /// The DESIGN section 6 digest, computed independently of `Domain`.
    fn spec_digest(&self, tag: &str, epoch: u64, round: u64, x: &[u8; 32]) -> [u8; 32] {
        let mut bytes = Vec::with_capacity(7 * 32);
        bytes.extend_from_slice(&keccak256(tag.as_bytes()));
        bytes.extend_from_slice(&word_u64(self.domain.chain_id()));
        bytes.extend_from_slice(&word_address(&self.domain.contract()));
        bytes.extend_from_slice(&self.domain.genesis_id());
        bytes.extend_from_slice(&word_u64(epoch));
        bytes.extend_from_slice(&word_u64(round));
        bytes.extend_from_slice(x);
        keccak256(&bytes)
    }

    fn member_key(&self, epoch: u64, a: &Address) -> Option<&PreparedKey> {
        self.epochs
            .get(epoch as usize)?
            .members
            .iter()
            .find(|m| m.0 == *a)
            .map(|m| &m.2)
    }

    /// Remembers a proposal seen on the network (anyone's), for the rule checks of votes.
    pub fn observe_proposal(&mut self, p: &Proposal) {
        let b = &p.block;
        let tc_max = p.tc.as_ref().map(TimeoutCert::max_high_qc_round);
        let e = self.seen.entry(b.id()).or_insert(SeenBlock {
            epoch: b.epoch(),
            round: b.round(),
            parent: b.parent_id(),
            qc_round: b.qc().round,
            tc_max,
            payload: !b.payload().is_empty(),
            reconfigure: b
                .header()
                .reconfigure
                .as_ref()
                .map(|r| r.chain_block_number),
        });
        e.tc_max = match (e.tc_max, tc_max) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }

    /// Whether the block descends (in its epoch) from a block carrying a Reconfigure.
    fn in_limbo(&self, id: &BlockId) -> bool {
        let Some(b) = self.seen.get(id) else {
            return false;
        };
        let mut cur = b.parent;
        for _ in 0..10_000 {
            match self.seen.get(&cur) {
                Some(a) if a.epoch == b.epoch => {
                    if a.reconfigure.is_some() {
                        return true;
                    }
                    cur = a.parent;
                }
                _ => return false,
            }
        }
        false
    }

    /// The rules behind a vote (or own proposal) for `id`: TC condition, limbo payload, stale
    /// Reconfigure.
    fn check_block_rules(&mut self, id: &BlockId, voting: bool, errs: &mut Vec<String>) {
        let Some(b) = self.seen.get(id).cloned() else {
            return;
        };
        if voting && b.qc_round + 1 != b.round {
            match b.tc_max {
                Some(m) if b.qc_round >= m => {}
                Some(m) => errs.push(format!(
                    "voted in round {} for a block extending QC round {} below its TC's highest QC round {m}",
                    b.round, b.qc_round
                )),
                None => errs.push(format!(
                    "voted in round {} for a block without a certificate of the previous round",
                    b.round
                )),
            }
        }
        if b.payload && self.in_limbo(id) {
            errs.push(format!(
                "signed a block with a payload descending from an uncommitted reconfigure (epoch {}, round {})",
                b.epoch, b.round
            ));
        }
        if let Some(n) = b.reconfigure {
            if voting && n.saturating_add(self.lag_w) < self.head {
                errs.push(format!(
                    "voted for a stale reconfigure: chain block {n} below the highest honest pinned head {} minus W = {}",
                    self.head, self.lag_w
                ));
            }
            self.first_vote_head.entry(*id).or_insert(self.head);
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

    fn power_ok(&self, epoch: u64, signers: &SignerBitmap, n_sigs: usize) -> Result<(), String> {
        let Some(set) = self.epochs.get(epoch as usize) else {
            return Err(format!("certificate of unknown epoch {epoch}"));
        };
        if signers.count() != n_sigs {
            return Err("signature count differs from signers".into());
        }
        let mut power: u128 = 0;
        for i in signers.iter() {
            match set.members.get(i) {
                Some(m) => power += u128::from(m.1),
                None => return Err(format!("signer index {i} outside the set")),
            }
        }
        if power < set.quorum {
            return Err(format!("power {power} below the quorum {}", set.quorum));
        }
        Ok(())
    }

    fn key_at(&self, epoch: u64, i: usize) -> Option<&PreparedKey> {
        self.epochs
            .get(epoch as usize)
            .and_then(|e| e.members.get(i))
            .map(|m| &m.2)
    }

    /// Checks a QC independently: genesis, or power ≥ Q with every signature valid.
    pub fn check_qc(&self, qc: &QuorumCert) -> Result<(), String> {
        let Some(set) = self.epochs.get(qc.epoch as usize) else {
            return Err(format!("QC of unknown epoch {}", qc.epoch));
        };
        if qc.round == 0 {
            return if qc.block_id == set.genesis && qc.signatures.is_empty() {
                Ok(())
            } else {
                Err("forged genesis QC".into())
            };
        }
        self.power_ok(qc.epoch, &qc.signers, qc.signatures.len())
            .map_err(|e| format!("QC round {}: {e}", qc.round))?;
        let d = self.domain.vote_digest(qc.epoch, qc.round, &qc.block_id);
        for (i, s) in qc.signers.iter().zip(&qc.signatures) {
            if !self
                .key_at(qc.epoch, i)
                .is_some_and(|k| self.scheme.verify(k, &d, s))
            {
                return Err(format!("QC round {}: bad signature of {i}", qc.round));
            }
        }
        Ok(())
    }

    /// Checks a TC independently.
    pub fn check_tc(&self, tc: &TimeoutCert) -> Result<(), String> {
        self.power_ok(tc.epoch, &tc.signers, tc.signatures.len())
            .map_err(|e| format!("TC round {}: {e}", tc.round))?;
        if tc.high_qc.epoch != tc.epoch {
            return Err(format!(
                "TC of epoch {} carries a QC of epoch {}",
                tc.epoch, tc.high_qc.epoch
            ));
        }
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
            if !self
                .key_at(tc.epoch, i)
                .is_some_and(|k| self.scheme.verify(k, &d, s))
            {
                return Err(format!("TC round {}: bad signature of {i}", tc.round));
            }
        }
        self.check_qc(&tc.high_qc)
    }

    fn record_vote(&mut self, node: usize, epoch: u64, round: u64, block: BlockId) {
        let s = self.signed[node].entry((epoch, round)).or_default();
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
    fn record_timeout(&mut self, node: usize, epoch: u64, round: u64, high_qc_round: u64) {
        let s = self.signed[node].entry((epoch, round)).or_default();
        match s.timeout {
            Some(h) if h != high_qc_round => {
                self.violation(node, format!("two different timeouts in round {round}"));
            }
            _ => s.timeout = Some(high_qc_round),
        }
    }
    fn record_proposal(&mut self, node: usize, epoch: u64, round: u64, block: BlockId) {
        let s = self.signed[node].entry((epoch, round)).or_default();
        match s.proposal {
            Some(b) if b != block => {
                self.violation(node, format!("two proposals in round {round}"));
            }
            _ => s.proposal = Some(block),
        }
    }

    /// A safety state the node made durable over `stored`: it must not be behind it, and every
    /// signed message it names is recorded.
    pub fn on_persist_safety(
        &mut self,
        node: usize,
        st: &crate::safety::SafetyState,
        stored: &crate::safety::SafetyState,
    ) {
        // Persisted safety never goes back: an older record over a newer one lets the node sign
        // again, after a crash, what it already signed.
        if let Some(counter) = st.behind(stored) {
            self.violations.push(format!(
                "node {node}: persisted safety went back in {counter} (epoch {}: voted {}, \
                 timed out {}, proposed {} over voted {}, timed out {}, proposed {})",
                st.epoch,
                st.last_voted_round,
                st.highest_timeout_round,
                st.last_proposal_round(),
                stored.last_voted_round,
                stored.highest_timeout_round,
                stored.last_proposal_round()
            ));
        }
        if let Some(v) = &st.last_vote {
            self.record_vote(node, v.epoch, v.round, v.block_id);
        }
        if let Some(t) = &st.last_timeout {
            self.record_timeout(node, t.epoch, t.round, t.high_qc.round);
        }
        if let Some(p) = &st.last_proposal {
            self.record_proposal(node, p.block.epoch(), p.round(), p.block.id());
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
        let (epoch, _) = msg.epoch_round();
        let cert_epochs: Vec<u64> = match msg {
            Message::Proposal(p) => std::iter::once(p.block.qc().epoch)
                .chain(p.tc.as_ref().map(|t| t.epoch))
                .collect(),
            Message::Timeout(t) => std::iter::once(t.high_qc.epoch)
                .chain(t.high_tc.as_ref().map(|t| t.epoch))
                .collect(),
            Message::TimeoutCert(tc) => vec![tc.high_qc.epoch],
            Message::Vote(_) => vec![],
        };
        if let Some(e) = cert_epochs.iter().find(|&&e| e != epoch) {
            errs.push(format!(
                "message of epoch {epoch} carries a certificate of epoch {e}"
            ));
        }
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
                    self.record_proposal(node, p.block.epoch(), p.round(), p.block.id());
                    let d = self.spec_digest(
                        crate::domain::PROPOSAL_TAG,
                        p.block.epoch(),
                        p.round(),
                        &p.block.id().0,
                    );
                    self.check_own_signature(p.block.epoch(), &me, &d, &p.signature, &mut errs);
                    self.check_block_rules(&p.block.id(), false, &mut errs);
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
                    self.record_vote(node, v.epoch, v.round, v.block_id);
                    let d =
                        self.spec_digest(crate::domain::VOTE_TAG, v.epoch, v.round, &v.block_id.0);
                    self.check_own_signature(v.epoch, &me, &d, &v.signature, &mut errs);
                    self.check_block_rules(&v.block_id, true, &mut errs);
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
                    self.record_timeout(node, t.epoch, t.round, t.high_qc.round);
                    let d = self.spec_digest(
                        crate::domain::TIMEOUT_TAG,
                        t.epoch,
                        t.round,
                        &word_u64(t.high_qc.round),
                    );
                    self.check_own_signature(t.epoch, &me, &d, &t.signature, &mut errs);
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

    fn check_own_signature(
        &self,
        epoch: u64,
        me: &Address,
        digest: &[u8; 32],
        sig: &crate::types::Signature,
        errs: &mut Vec<String>,
    ) {
        if let Some(k) = self.member_key(epoch, me)
            && !self.scheme.verify(k, digest, sig)
        {
            errs.push(format!(
                "signature of epoch {epoch} does not match the DESIGN section 6 digest"
            ));
        }
    }

    /// Evidence reported by `node` must prove a real equivocation: two different block ids, both
    /// validly signed by the accused member. (Honest scenarios have none, so any is a violation
    /// there; the Byzantine scenarios of the companion issue will expect them.)
    pub fn on_evidence(&mut self, node: usize, e: &crate::evidence::Evidence) {
        use crate::evidence::EquivocationKind;
        let Some(key) = self.member_key(e.epoch, &e.signer).cloned() else {
            return self.violation(node, "evidence against a non-member".into());
        };
        let digest = |id: &BlockId| match e.kind {
            EquivocationKind::Vote => self.domain.vote_digest(e.epoch, e.round, id),
            EquivocationKind::Proposal => self.domain.proposal_digest(e.epoch, e.round, id),
        };
        let valid = e.first.0 != e.second.0
            && self.scheme.verify(&key, &digest(&e.first.0), &e.first.1)
            && self.scheme.verify(&key, &digest(&e.second.0), &e.second.1);
        if !valid {
            self.violation(node, format!("false evidence against {}", e.signer));
        } else {
            self.evidence += 1;
        }
    }

    /// A commit executed by `node`: extends its ledger across epochs, agrees with everyone's,
    /// has a valid proof, and ends its epoch at the first committed Reconfigure.
    pub fn on_commit(&mut self, node: usize, c: &Commit) {
        let mut errs = Vec::new();
        for cb in &c.blocks {
            let ledger = &self.ledgers[node];
            let h = cb.height;
            let b = &cb.block;
            if h <= ledger.len() as u64 {
                // Re-commit after a restart: must be the same block.
                if ledger.get((h - 1) as usize).map(|x| x.0) != Some(b.id()) {
                    errs.push(format!("re-committed a different block at height {h}"));
                }
                continue;
            }
            if h != ledger.len() as u64 + 1 {
                errs.push(format!("commit at height {h} skips heights"));
                break;
            }
            if b.qc().epoch != b.epoch() {
                errs.push(format!(
                    "committed block of epoch {} extends a certificate of epoch {}",
                    b.epoch(),
                    b.qc().epoch
                ));
            }
            let (parent, parent_epoch) = match ledger.last() {
                None => (self.epochs[0].genesis, 0),
                Some(&(id, e, false)) => (id, e),
                Some(&(_, e, true)) => {
                    match self.epochs.get(e as usize + 1) {
                        Some(next) => (next.genesis, e + 1),
                        None => {
                            errs.push(format!("commit at height {h} after B0 of epoch {e} before any node ended it"));
                            (BlockId([0; 32]), e + 1)
                        }
                    }
                }
            };
            if b.epoch() != parent_epoch {
                errs.push(format!(
                    "commit at height {h} is of epoch {} but the ledger is in epoch {parent_epoch}",
                    b.epoch()
                ));
            }
            if b.parent_id() != parent {
                errs.push(format!(
                    "commit at height {h} does not extend the previous one"
                ));
            }
            if let Err(e) = self.check_qc(b.qc()) {
                errs.push(format!(
                    "committed block at height {h} carries an invalid QC: {e}"
                ));
            }
            let is_b0 = b.header().reconfigure.is_some();
            self.ledgers[node].push((b.id(), b.epoch(), is_b0));
            match self.chain.get((h - 1) as usize) {
                Some(id) if *id != b.id() => {
                    errs.push(format!(
                        "SAFETY: conflicting blocks committed at height {h}"
                    ));
                }
                Some(_) => {}
                None => {
                    self.chain.push(b.id());
                    if let Some(rc) = &b.header().reconfigure {
                        // The next epoch's set: the checker's own copy of what B0 carried.
                        if let Some(&head) = self.first_vote_head.get(&b.id())
                            && rc.chain_block_number.saturating_add(self.lag_w) < head
                        {
                            errs.push(format!(
                                "committed a reconfigure of chain block {} below the highest \
                                 honest pinned head {head} minus W = {}",
                                rc.chain_block_number, self.lag_w
                            ));
                        }
                        let e = b.epoch() + 1;
                        let genesis = self.domain.genesis_block_id(
                            e,
                            &b.id().0,
                            &validator_set_hash(&rc.members),
                        );
                        let members = rc
                            .members
                            .iter()
                            .map(|m| (m.address, m.power, PreparedKey::new(m.public_key)))
                            .collect();
                        if self.epochs.len() as u64 == e {
                            self.push_epoch(genesis, members);
                        }
                    }
                }
            }
        }
        if let Some(last) = c.blocks.last() {
            let p = &c.proof;
            let ends_epoch = last.block.header().reconfigure.is_some();
            if !ends_epoch
                && (p.certified.parent_id() != last.block.id()
                    || p.certified.round() != last.block.round() + 1
                    || p.qc.block_id != p.certified.id()
                    || p.qc.round != p.certified.round())
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

    /// `node` ended an epoch with `record` and is now in the next one with `set`: the record
    /// proves the commit of the B0 its ledger ends with, and the new set is the one B0 carried.
    pub fn on_epoch_change(&mut self, node: usize, record: &EpochChangeRecord, set: &[MemberInfo]) {
        let mut errs = Vec::new();
        let b0 = record.b0().map(|b| b.id());
        if self.ledgers[node].last().map(|x| x.0) != b0 {
            errs.push(format!(
                "ended epoch {} without B0 as its last committed block",
                record.epoch
            ));
        }
        if record.path.len() > 2 {
            self.ancestor_epoch_changes += 1;
        }
        match self.epochs.get(record.epoch as usize + 1) {
            Some(next) if next.infos.as_slice() != set || record.members() != set => {
                errs.push(format!(
                    "epoch {}'s set differs from the one its reconfigure carried",
                    record.epoch + 1
                ));
            }
            Some(_) => {}
            None => errs.push(format!(
                "entered epoch {} before its reconfigure committed anywhere",
                record.epoch + 1
            )),
        }
        if let (Some(bk), Some(bk1)) = (
            record.path.get(record.path.len().wrapping_sub(2)),
            record.path.last(),
        ) && (bk1.round() != bk.round() + 1 || record.qc.block_id != bk1.id())
        {
            errs.push("epoch-change record without a 2-chain at its end".into());
        }
        if let Err(e) = self.check_qc(&record.qc) {
            errs.push(format!("epoch-change record QC invalid: {e}"));
        }
        for e in errs {
            self.violation(node, e);
        }
    }
}

/// Per-node durable views, kept by the simulator's host.
pub type DurableViews = HashMap<usize, DurableView>;
