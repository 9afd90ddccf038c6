//! The consensus state machine: `Core::handle(Event) -> Vec<Action>`.
//!
//! The host feeds events (messages, timer expiries, payloads, fetched blocks) and executes the
//! returned actions **in order**. Durability contract (DESIGN section 5): an `Action::Persist*`
//! must be durable (fsync) before the host executes any later action of the same list; sends may
//! be asynchronous after that. The core orders its actions so that a block (and the QC in it) is
//! persisted before the node votes for or proposes it, the highest QC/TC before a timeout carrying
//! them, and the safety state before anything signed leaves. On restart the host rebuilds a
//! [`DurableState`] from what it persisted and the committed ledger, and the core re-sends what it
//! had signed, never something new for the same round.

use crate::block_tree::{BlockTree, Root};
use crate::crypto::Signer;
use crate::epoch::EpochChangeRecord;
use crate::evidence::{EquivocationKind, Evidence};
use crate::pacemaker::{Entry, Pacemaker};
use crate::safety::{SafetyRules, SafetyState};
use crate::types::{
    Address, BatchDigest, Block, BlockId, MAX_BATCHES_PER_BLOCK, MemberInfo, Message, Proposal,
    QuorumCert, Reconfigure, Signature, SignerBitmap, Timeout, TimeoutCert, Vote,
};
use crate::validators::bounded_members;
use crate::verify::EpochContext;
use std::collections::{BTreeMap, HashMap, HashSet};

mod epochs;
mod fetch;
mod io;
mod timeouts;
mod votes;

pub use io::{Action, Config, CoreError, CoreStats, Discard, DurableState, Event};

#[derive(Debug, Default)]
struct RoundVotes {
    voted: BTreeMap<usize, (BlockId, Signature)>,
    equivocators: Vec<usize>,
    by_block: HashMap<BlockId, (SignerBitmap, BTreeMap<usize, Signature>)>,
    qc_formed: bool,
}

#[derive(Debug)]
struct Want {
    qc: Option<QuorumCert>,
}

/// What the epoch rules say about voting for a proposal.
enum Verdict {
    Ok,
    Wait,
    Refuse(&'static str),
}

/// The oracle's last view: pinned head number, hash, set (sorted by address).
type HeadView = (u64, [u8; 32], Vec<MemberInfo>);

/// Most chain-set answers remembered.
const MAX_CHAIN_SETS: usize = 32;
/// Most records taken from one `EpochChanges` event (a catch-up answer spans this many epochs at
/// most; the rest are fetched again from the new epoch).
const MAX_RECORDS_PER_EVENT: usize = 32;

/// The state machine of one validator (or observer), epoch after epoch.
pub struct Core {
    config: Config,
    ctx: EpochContext,
    safety: SafetyRules,
    tree: BlockTree,
    pm: Pacemaker,
    me: Address,
    votes: BTreeMap<u64, RoundVotes>,
    pending: BTreeMap<u64, (Proposal, Address)>,
    proposals_seen: BTreeMap<u64, (BlockId, Signature, bool)>,
    awaiting_batches: Option<Proposal>,
    wanted: BTreeMap<BlockId, Want>,
    orphans: BTreeMap<BlockId, Block>,
    proposed_round: u64,
    persisted_certs: (u64, u64),
    now_ms: u64,
    out: Vec<Action>,
    startup: Vec<Action>,
    head: Option<HeadView>,
    chain_sets: BTreeMap<(u64, [u8; 32]), Option<Vec<MemberInfo>>>,
    awaiting_reconfig: Option<Proposal>,
    reconfig_deadline: Option<(BlockId, u64, bool)>,
    /// A peer that showed a later epoch than ours (nothing of that epoch can be verified yet):
    /// after the next epoch change, its records are fetched from there.
    later_epoch_hint: Option<(u64, Option<Address>)>,
    /// The previous epoch's context: a message of that epoch is verified before its signer is
    /// answered with records.
    prev_ctx: Option<EpochContext>,
    answered: HashSet<Address>,
    /// One answer per timer to a message of an epoch older than the previous one (its signature
    /// cannot be checked, so its named signer is not trusted).
    old_epoch_answer_armed: bool,
    records_fetch_armed: bool,
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core")
            .field("me", &self.me)
            .field("round", &self.pm.round())
            .field("root", self.tree.root())
            .finish()
    }
}

impl Core {
    /// A core for the epoch of `ctx`, signing with `signer`, over the restored `durable` state
    /// (use `DurableState::default()` with `safety.epoch = ctx.epoch()` on first start).
    pub fn new(
        config: Config,
        ctx: EpochContext,
        signer: Box<dyn Signer>,
        durable: DurableState,
    ) -> Result<Self, CoreError> {
        if durable.safety.epoch > ctx.epoch() {
            return Err(CoreError::EpochAhead {
                state: durable.safety.epoch,
                ctx: ctx.epoch(),
            });
        }
        if config.max_payload_batches > MAX_BATCHES_PER_BLOCK {
            return Err(CoreError::Config(
                "max_payload_batches above MAX_BATCHES_PER_BLOCK",
            ));
        }
        if config.base_timeout_ms == 0 || config.max_timeout_ms < config.base_timeout_ms {
            return Err(CoreError::Config("timeouts must satisfy 0 < base <= max"));
        }
        let me = signer.address();
        let mut safety = SafetyRules::new(durable.safety, signer);
        safety.enter_epoch(ctx.epoch());
        let _ = safety.take_dirty();
        let root = durable.root.unwrap_or(Root {
            id: ctx.genesis_block(),
            round: 0,
            height: 0,
        });
        let mut high_qc = ctx.genesis_qc();
        if let Some(qc) = durable.high_qc.filter(|q| ctx.verify_qc(q).is_ok()) {
            high_qc = qc;
        }
        let high_tc = durable.high_tc.filter(|t| ctx.verify_tc(t).is_ok());
        let persisted_certs = (high_qc.round, high_tc.as_ref().map_or(0, |t| t.round));
        let pm = Pacemaker::new(
            config.base_timeout_ms,
            config.max_timeout_ms,
            config.round_window,
            high_qc,
            high_tc,
        );
        let tree = BlockTree::new(root, config.max_pending_blocks);
        let proposed_round = safety
            .state()
            .last_proposal
            .as_ref()
            .map_or(0, |p| p.round());
        let mut core = Self {
            config,
            ctx,
            safety,
            tree,
            pm,
            me,
            votes: BTreeMap::new(),
            pending: BTreeMap::new(),
            proposals_seen: BTreeMap::new(),
            awaiting_batches: None,
            wanted: BTreeMap::new(),
            orphans: BTreeMap::new(),
            proposed_round,
            persisted_certs,
            now_ms: 0,
            out: Vec::new(),
            startup: Vec::new(),
            head: None,
            chain_sets: BTreeMap::new(),
            awaiting_reconfig: None,
            reconfig_deadline: None,
            later_epoch_hint: None,
            prev_ctx: None,
            answered: HashSet::new(),
            old_epoch_answer_armed: true,
            records_fetch_armed: true,
        };
        // Rebuild the tree from the persisted blocks, oldest first; their QCs may commit more
        // (the commits are emitted at Start) and raise the high QC.
        let mut blocks = durable.blocks;
        blocks.sort_by_key(Block::round);
        for b in blocks {
            if b.epoch() != core.ctx.epoch() || core.ctx.verify_qc(b.qc()).is_err() {
                continue;
            }
            if matches!(core.tree.insert_certified(b.clone()), Ok(true)) {
                core.pm.observe_qc(b.qc());
                core.try_commit(&b.qc().clone());
            }
        }
        // The pacemaker starts after the highest certificate it knows.
        let start_round = core
            .pm
            .high_qc()
            .round
            .max(core.pm.high_tc().map_or(0, |t| t.round))
            .saturating_add(1);
        core.pm.advance(start_round, Entry::Qc);
        core.startup = std::mem::take(&mut core.out);
        Ok(core)
    }

    /// This node's address.
    pub fn address(&self) -> Address {
        self.me
    }
    /// The current round.
    pub fn round(&self) -> u64 {
        self.pm.round()
    }
    /// The committed head.
    pub fn root(&self) -> Root {
        *self.tree.root()
    }
    /// The highest QC known.
    pub fn high_qc(&self) -> &QuorumCert {
        self.pm.high_qc()
    }
    /// The current epoch.
    pub fn epoch(&self) -> u64 {
        self.ctx.epoch()
    }
    /// The epoch context.
    pub fn context(&self) -> &EpochContext {
        &self.ctx
    }
    /// The safety state (as last handed out for persistence, or newer).
    pub fn safety_state(&self) -> &SafetyState {
        self.safety.state()
    }
    /// Buffer sizes.
    pub fn stats(&self) -> CoreStats {
        CoreStats {
            pending_blocks: self.tree.len(),
            buffered_proposals: self.pending.len(),
            vote_rounds: self.votes.len(),
            votes: self.votes.values().map(|r| r.voted.len()).sum(),
            wanted: self.wanted.len(),
            orphans: self.orphans.len(),
        }
    }
    /// Host time as last reported by an event.
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Handles one event and returns the actions to execute, in order.
    pub fn handle(&mut self, event: Event) -> Vec<Action> {
        match event {
            Event::Start { now_ms } => {
                self.now_ms = now_ms;
                self.on_start();
            }
            Event::Message { from, message } => match crate::bounds::check_message(&message) {
                Err(reason) => self.discard(true, reason),
                Ok(()) => self.on_message(message, from),
            },
            Event::TimerFired { round, now_ms } => {
                self.now_ms = now_ms;
                self.records_fetch_armed = true;
                self.old_epoch_answer_armed = true;
                self.answered.clear();
                self.on_timer(round);
            }
            Event::PayloadReady { round, batches } => self.on_payload(round, batches),
            Event::BatchesAvailable { block_id } => self.on_batches(block_id),
            Event::BlocksFetched { from, blocks } => self.on_fetched(from, blocks),
            Event::PinnedHead {
                number,
                hash,
                members,
                now_ms,
            } => {
                self.now_ms = self.now_ms.max(now_ms);
                self.head = Some((number, hash, bounded_members(members)));
                self.recheck_reconfig();
            }
            Event::ChainSet {
                number,
                hash,
                members,
            } => {
                let members = members.map(bounded_members);
                if self.chain_sets.len() >= MAX_CHAIN_SETS
                    && let Some(first) = self.chain_sets.keys().next().copied()
                {
                    self.chain_sets.remove(&first);
                }
                self.chain_sets.insert((number, hash), members);
                self.recheck_reconfig();
            }
            Event::EpochChanges { from, records } => self.on_records(from, records),
        }
        self.drain_pending();
        std::mem::take(&mut self.out)
    }

    /// A message whose rounds and epochs are in range.
    fn on_message(&mut self, message: Message, from: Address) {
        if message.epoch_round().0 != self.ctx.epoch() {
            return self.other_epoch(&message, from);
        }
        match message {
            Message::Proposal(p) => self.on_proposal(p, from),
            Message::Vote(v) => self.on_vote(v),
            Message::Timeout(t) => self.on_timeout(t, from),
            Message::TimeoutCert(tc) => self.on_tc(tc, from),
        }
    }

    fn discard(&mut self, reject: bool, reason: &'static str) {
        self.out.push(Action::Discarded(Discard {
            reject,
            reason,
            by_sender: false,
        }));
    }

    /// An equivocating proposal: ignored, and marked as the sender's own misbehaviour when the
    /// member that sent it is its proposer.
    fn discard_equivocation(&mut self, p: &Proposal, from: Address) {
        self.out.push(Action::Discarded(Discard {
            reject: false,
            reason: "equivocating proposal",
            by_sender: from == p.block.proposer(),
        }));
    }

    fn is_leader(&self, round: u64) -> bool {
        self.ctx.set().leader(round) == self.me
    }

    /// Emits a signed message after the safety state that covers it: the "persist before send"
    /// rule.
    fn emit_signed(&mut self, send: Action) {
        #[cfg(feature = "mutant-no-persist-before-send")]
        {
            // Mutant: the message leaves before the state that covers it is durable.
            self.out.push(send);
            if let Some(s) = self.safety.take_dirty() {
                self.out.push(Action::PersistSafety(s));
            }
            return;
        }
        #[allow(unreachable_code)]
        {
            if let Some(s) = self.safety.take_dirty() {
                self.out.push(Action::PersistSafety(s));
            }
            self.out.push(send);
        }
    }

    fn on_start(&mut self) {
        let startup = std::mem::take(&mut self.startup);
        self.out.extend(startup);
        let st = self.safety.state().clone();
        let epoch = self.ctx.epoch();
        // Re-send what was signed before a restart (already durable): same messages, same rounds.
        if let Some(p) = st.last_proposal.filter(|p| p.block.epoch() == epoch) {
            if self.tree.contains(&p.block.parent_id()) {
                let _ = self.tree.insert(p.block.clone());
            }
            self.out.push(Action::Broadcast(Message::Proposal(p)));
        }
        if let Some(v) = st.last_vote.filter(|v| v.epoch == epoch) {
            self.send_vote(v);
        }
        if let Some(t) = st.last_timeout.filter(|t| t.epoch == epoch) {
            self.out
                .push(Action::Broadcast(Message::Timeout(t.clone())));
            if let Some(i) = self.ctx.set().index_of(&self.me) {
                let _ = self.pm.add_timeout(self.ctx.set(), i, &t);
            }
        }
        self.on_round_entered();
    }

    fn on_round_entered(&mut self) {
        let r = self.pm.round();
        self.out.push(Action::SetTimer {
            round: r,
            duration_ms: self.pm.timer_duration(),
        });
        if self.is_leader(r) && self.proposed_round < r {
            self.out.push(Action::RequestPayload {
                round: r,
                max_batches: self.config.max_payload_batches,
            });
        }
    }

    fn enter_round(&mut self, round: u64, via: Entry) {
        if !self.pm.advance(round, via) {
            return;
        }
        let keep_from = round.saturating_sub(1);
        self.votes = self.votes.split_off(&keep_from);
        self.pending = self.pending.split_off(&round);
        self.proposals_seen = self.proposals_seen.split_off(&keep_from);
        if self
            .awaiting_batches
            .as_ref()
            .is_some_and(|p| p.round() < round)
        {
            self.awaiting_batches = None;
        }
        if self
            .awaiting_reconfig
            .as_ref()
            .is_some_and(|p| p.round() < round)
        {
            self.awaiting_reconfig = None;
        }
        self.on_round_entered();
    }

    /// Uses a verified QC: high QC, commit rule, fetch of its block, round entry.
    fn process_qc(&mut self, qc: &QuorumCert, hint: Option<Address>) {
        #[cfg(not(feature = "mutant-accept-old-epoch-qc"))]
        let other_epoch = qc.epoch != self.ctx.epoch();
        // Mutant: a QC of an earlier epoch is used like one of the current epoch.
        #[cfg(feature = "mutant-accept-old-epoch-qc")]
        let other_epoch = qc.epoch > self.ctx.epoch();
        if other_epoch {
            return; // of another epoch (the epoch ended while this message was being handled)
        }
        self.pm.observe_qc(qc);
        if qc.round > self.tree.root().round {
            if self.tree.contains(&qc.block_id) {
                self.try_commit(qc);
                if qc.epoch != self.ctx.epoch() {
                    return;
                }
            } else {
                self.want(qc.block_id, hint, Some(qc.clone()));
            }
        }
        let next = qc.round.saturating_add(1);
        if next > self.pm.round() {
            self.enter_round(next, Entry::Qc);
        }
    }

    fn try_commit(&mut self, qc: &QuorumCert) {
        let Some(mut c) = self.tree.commit_for(qc) else {
            return;
        };
        // Epoch e ends at the first Reconfigure block that commits: nothing after it in epoch e
        // is committed; the record carries the path to the certified block.
        if let Some(pos) = c
            .blocks
            .iter()
            .position(|cb| cb.block.header().reconfigure.is_some())
        {
            let mut path: Vec<Block> = c.blocks[pos..].iter().map(|cb| cb.block.clone()).collect();
            path.push(c.proof.certified.clone());
            c.blocks.truncate(pos + 1);
            let record = EpochChangeRecord {
                epoch: self.ctx.epoch(),
                path,
                qc: c.proof.qc.clone(),
            };
            // Only a quorum with more than f faulty can certify a branch whose record does not
            // verify (a second Reconfigure after B0): nothing of it is committed, so the tree,
            // the commits and the epoch stay consistent.
            let next = match record.next_context(&self.ctx) {
                Ok(next) => next,
                Err(_) => {
                    return self.discard(true, "certified branch ends its epoch without a record");
                }
            };
            self.tree.advance_root(&c.blocks);
            let height = c
                .blocks
                .last()
                .map_or(self.tree.root().height, |b| b.height);
            self.out.push(Action::Commit(c));
            self.enter_next_epoch(record, next, height);
            return;
        }
        self.tree.advance_root(&c.blocks);
        let root_round = self.tree.root().round;
        self.out.push(Action::Commit(c));
        self.orphans.retain(|_, b| b.round() > root_round);
    }

    /// Uses a verified TC: its high QC, high TC, round entry.
    fn process_tc(&mut self, tc: &TimeoutCert, hint: Option<Address>) {
        self.process_qc(&tc.high_qc, hint);
        if tc.epoch != self.ctx.epoch() {
            return;
        }
        self.pm.observe_tc(tc);
        let next = tc.round.saturating_add(1);
        if next > self.pm.round() {
            self.enter_round(next, Entry::Tc);
        }
    }

    fn on_proposal(&mut self, p: Proposal, from: Address) {
        let b = &p.block;
        if b.payload().len() > self.config.max_payload_batches {
            return self.discard(true, "proposal payload too large");
        }
        if b.round() <= self.tree.root().round {
            return self.discard(false, "proposal below the committed root");
        }
        // One block per round: what a leader signs beyond its first block of a round is evidence
        // at most, and costs no signature check once that evidence is held.
        let seen = self
            .proposals_seen
            .get(&b.round())
            .map(|(id, _, r)| (*id, *r));
        match seen {
            Some((id, true)) if id != b.id() => {
                return self.discard_equivocation(&p, from);
            }
            Some((id, _)) if id == b.id() && b.round() < self.pm.round() => {
                return self.discard(false, "stale duplicate proposal");
            }
            _ => {}
        }
        if seen.is_none()
            && b.round() < self.pm.round()
            && let Some(first) = self.tree.first_of_round(b.round())
        {
            // A past round outside the evidence window: the tree already holds its block.
            let reason = if first == b.id() {
                "stale duplicate proposal"
            } else {
                "second block for a past round"
            };
            return self.discard(false, reason);
        }
        if let Err(e) = self.ctx.verify_proposal(&p) {
            // DESIGN section 7: what a non-member signs is ignored, not rejected (the forwarder
            // may be an honest node relaying it).
            if matches!(e, crate::verify::MessageError::NotMember) {
                return self.discard(false, "proposal from a non-member");
            }
            return self.discard(true, "invalid proposal");
        }
        let equivocation = self.check_proposal_equivocation(&p);
        // Its certificates are valid whatever the block: they move the round on.
        self.process_qc(&p.block.qc().clone(), Some(from));
        if let Some(tc) = p.tc.clone() {
            self.process_tc(&tc, Some(from));
        }
        if p.block.epoch() != self.ctx.epoch() {
            return; // its certificates ended the epoch
        }
        if equivocation {
            // Not inserted, persisted, voted for or forwarded: if a quorum certifies this block
            // instead of the first, it is fetched as a certified block.
            return self.discard_equivocation(&p, from);
        }
        if p.round() < self.pm.round() {
            // Its block may still become an ancestor: keep it if it attaches.
            if self.tree.contains(&p.block.parent_id())
                && matches!(self.tree.insert(p.block.clone()), Ok(true))
            {
                self.out.push(Action::PersistBlock(p.block.clone()));
            }
            return self.discard(false, "stale proposal");
        }
        self.accept_current_proposal(p, from);
    }

    /// Remembers the first proposal of each recent round; a different one by the same leader is
    /// evidence (reported once per round). Returns whether `p` is not the round's first block
    /// (of the recent rounds, or the one the tree holds).
    fn check_proposal_equivocation(&mut self, p: &Proposal) -> bool {
        let r = p.round();
        if r.saturating_add(1) < self.pm.round()
            || r > self.pm.round().saturating_add(self.config.round_window)
        {
            return self
                .tree
                .first_of_round(r)
                .is_some_and(|first| first != p.block.id());
        }
        match self.proposals_seen.get_mut(&r) {
            None => {
                self.proposals_seen
                    .insert(r, (p.block.id(), p.signature, false));
                if self.proposals_seen.len() as u64 > self.config.round_window + 2
                    && let Some(first) = self.proposals_seen.keys().next().copied()
                {
                    self.proposals_seen.remove(&first);
                }
                // The round's block may have arrived by fetch (certified) before any proposal.
                self.tree
                    .first_of_round(r)
                    .is_some_and(|first| first != p.block.id())
            }
            Some((id, sig, reported)) if *id != p.block.id() && !*reported => {
                *reported = true;
                let first = (*id, *sig);
                self.out.push(Action::Evidence(Evidence {
                    kind: EquivocationKind::Proposal,
                    signer: p.block.proposer(),
                    epoch: p.block.epoch(),
                    round: r,
                    first,
                    second: (p.block.id(), p.signature),
                }));
                true
            }
            Some((id, _, _)) => *id != p.block.id(),
        }
    }

    /// A valid proposal of the current round whose certificates were processed.
    fn accept_current_proposal(&mut self, p: Proposal, from: Address) {
        let id = p.block.id();
        if !self.tree.contains(&id) {
            if !self.tree.contains(&p.block.parent_id()) {
                let parent = p.block.parent_id();
                if self.pending.len() >= self.config.max_buffered_proposals
                    && let Some(first) = self.pending.keys().next().copied()
                {
                    self.pending.remove(&first);
                }
                self.pending.insert(p.round(), (p, from));
                self.want(parent, Some(from), None);
                return;
            }
            match self.tree.insert(p.block.clone()) {
                Ok(_) => self.out.push(Action::PersistBlock(p.block.clone())),
                Err(_) => return self.discard(false, "block not inserted"),
            }
        }
        self.try_vote(p);
    }

    fn on_payload(&mut self, round: u64, mut batches: Vec<BatchDigest>) {
        if round != self.pm.round() || !self.is_leader(round) || self.proposed_round >= round {
            return;
        }
        batches.truncate(self.config.max_payload_batches);
        let qc = self.pm.high_qc().clone();
        let tc = if qc.round.checked_add(1) == Some(round) {
            None
        } else {
            match self
                .pm
                .high_tc()
                .filter(|tc| tc.round.checked_add(1) == Some(round))
            {
                Some(tc) => Some(tc.clone()),
                None => return, // cannot justify the round (never expected)
            }
        };
        // Blocks descending from an uncommitted Reconfigure carry empty payloads and no second
        // Reconfigure; otherwise the leader proposes its oracle's set when it differs.
        let limbo = self.branch_in_limbo(&qc.block_id);
        let mut reconfigure = None;
        if limbo {
            #[cfg(not(feature = "mutant-payload-in-limbo-epoch"))]
            batches.clear();
        } else {
            reconfigure = self.reconfigure_to_propose(round);
        }
        let block = Block::new(self.ctx.epoch(), round, qc, self.me, batches, reconfigure);
        let Ok(p) = self.safety.make_proposal(&self.ctx, block.clone(), tc) else {
            return;
        };
        self.proposed_round = round;
        // The block is durable before the proposal leaves; inserted now if its parent is known
        // (otherwise it waits with the proposal for the parent to be fetched).
        if self.tree.contains(&block.parent_id()) {
            let _ = self.tree.insert(block.clone());
        }
        self.out.push(Action::PersistBlock(block.clone()));
        self.emit_signed(Action::Broadcast(Message::Proposal(p.clone())));
        let me = self.me;
        self.accept_current_proposal(p, me);
    }
}
