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

use crate::block_tree::{BlockTree, Commit, Root};
use crate::crypto::Signer;
use crate::evidence::{EquivocationKind, Evidence};
use crate::pacemaker::{Entry, Pacemaker};
use crate::safety::{SafetyRules, SafetyState};
use crate::types::{
    Address, BatchDigest, Block, BlockId, MAX_BATCHES_PER_BLOCK, Message, Proposal, QuorumCert,
    Signature, SignerBitmap, Timeout, TimeoutCert, Vote,
};
use crate::verify::EpochContext;
use std::collections::{BTreeMap, HashMap};
use thiserror::Error;

/// Tunables of the core. Every buffer has a bound here.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Base round timeout (ms).
    pub base_timeout_ms: u64,
    /// Cap of the round timeout (ms).
    pub max_timeout_ms: u64,
    /// Most batch digests per proposed or accepted block (≤ `MAX_BATCHES_PER_BLOCK`).
    pub max_payload_batches: usize,
    /// Votes and timeouts are collected for rounds up to this far ahead of the current one.
    pub round_window: u64,
    /// Most uncommitted blocks held.
    pub max_pending_blocks: usize,
    /// Most proposals waiting for a missing parent.
    pub max_buffered_proposals: usize,
    /// Most blocks asked for in one fetch.
    pub max_fetch_blocks: usize,
    /// Most blocks being fetched at once.
    pub max_wanted: usize,
    /// Most fetched blocks held while their ancestors are fetched.
    pub max_orphans: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            base_timeout_ms: 1_000,
            max_timeout_ms: 4_000,
            max_payload_batches: 512,
            round_window: 100,
            max_pending_blocks: 10_000,
            max_buffered_proposals: 16,
            max_fetch_blocks: 1_024,
            max_wanted: 64,
            max_orphans: 2_048,
        }
    }
}

/// What the host kept durable, handed back after a restart (or a fresh state).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DurableState {
    /// The last persisted safety state.
    pub safety: SafetyState,
    /// The committed head (the last block of the ledger); `None` = the epoch's genesis block.
    pub root: Option<Root>,
    /// Persisted blocks (those not descending from the root are ignored).
    pub blocks: Vec<Block>,
    /// The last persisted highest QC.
    pub high_qc: Option<QuorumCert>,
    /// The last persisted highest TC.
    pub high_tc: Option<TimeoutCert>,
}

/// Inputs of the state machine.
#[allow(clippy::large_enum_variant)] // plain data moved once per event
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Once, first: enters the round, arms the timer, re-sends what was signed before a restart.
    Start {
        /// Host time (ms).
        now_ms: u64,
    },
    /// A message from the network; `from` is the peer that delivered it (a fetch hint only).
    Message {
        /// Delivering peer.
        from: Address,
        /// The message.
        message: Message,
    },
    /// The timer set by `Action::SetTimer` for `round` expired.
    TimerFired {
        /// The round it was set for.
        round: u64,
        /// Host time (ms).
        now_ms: u64,
    },
    /// The mempool's answer to `Action::RequestPayload`.
    PayloadReady {
        /// The round asked for.
        round: u64,
        /// Batch digests to order (possibly empty).
        batches: Vec<BatchDigest>,
    },
    /// The batches of `Action::FetchBatches` are available locally.
    BatchesAvailable {
        /// The block whose batches were asked for.
        block_id: BlockId,
    },
    /// The answer to `Action::FetchBlocks`: the asked block and its ancestors, newest first.
    BlocksFetched {
        /// Peer that answered.
        from: Option<Address>,
        /// Blocks, newest first.
        blocks: Vec<Block>,
    },
}

/// Why a message was not used; `reject` = malformed or badly signed by a member (the network
/// layer may penalize the forwarder), otherwise ignored (stale, duplicate, unknown epoch...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Discard {
    /// Reject (penalize) rather than ignore.
    pub reject: bool,
    /// Short reason, for metrics labels.
    pub reason: &'static str,
}

/// Outputs of the state machine, to execute in order.
#[allow(clippy::large_enum_variant)] // plain data moved once per action
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Make a block durable (before voting for or proposing it).
    PersistBlock(Block),
    /// Make the highest QC and TC durable (before a timeout carrying them leaves).
    PersistCertificates {
        /// Highest QC.
        high_qc: QuorumCert,
        /// Highest TC.
        high_tc: Option<TimeoutCert>,
    },
    /// Make the safety state durable (before anything signed leaves).
    PersistSafety(SafetyState),
    /// Send to one validator (a vote to the next leader).
    SendTo {
        /// Recipient.
        to: Address,
        /// Message.
        message: Message,
    },
    /// Send to every other validator (the core already processed it locally).
    Broadcast(Message),
    /// (Re)arm the round timer; replaces any earlier timer.
    SetTimer {
        /// Round.
        round: u64,
        /// Delay (ms) from now.
        duration_ms: u64,
    },
    /// Ask the mempool for a payload; answer with `Event::PayloadReady`.
    RequestPayload {
        /// Round to propose in.
        round: u64,
        /// Most batches.
        max_batches: usize,
    },
    /// Make sure these batches are available locally (fetch them from `from` if not); answer with
    /// `Event::BatchesAvailable`. The core votes only after the answer.
    FetchBatches {
        /// Block carrying them.
        block_id: BlockId,
        /// Digests.
        digests: Vec<BatchDigest>,
        /// The proposer (it has them).
        from: Address,
    },
    /// Fetch `block_id` and its ancestors down to (excluding) blocks of round ≤ `stop_at_round`,
    /// at most `max_blocks`, newest first; answer with `Event::BlocksFetched`.
    FetchBlocks {
        /// Block wanted.
        block_id: BlockId,
        /// The requester's committed round.
        stop_at_round: u64,
        /// Most blocks.
        max_blocks: usize,
        /// A peer that likely has it.
        from: Option<Address>,
    },
    /// Blocks committed, in order, with their proof; the host applies them to its ledger
    /// (idempotently by height).
    Commit(Commit),
    /// A member signed two different votes or proposals for one round: both signed messages.
    Evidence(Evidence),
    /// A message was not used (metrics and peer scoring only).
    Discarded(Discard),
}

/// Sizes of the core's buffers (all bounded by `Config`), for metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CoreStats {
    /// Uncommitted blocks in the tree.
    pub pending_blocks: usize,
    /// Proposals waiting for a parent.
    pub buffered_proposals: usize,
    /// Rounds with collected votes.
    pub vote_rounds: usize,
    /// Votes held in total.
    pub votes: usize,
    /// Blocks being fetched.
    pub wanted: usize,
    /// Fetched blocks waiting for ancestors.
    pub orphans: usize,
}

/// Why a core could not be built.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CoreError {
    /// The durable safety state is of a later epoch than the context.
    #[error("safety state of epoch {state} is ahead of the context's epoch {ctx}")]
    EpochAhead {
        /// State's epoch.
        state: u64,
        /// Context's epoch.
        ctx: u64,
    },
    /// Config out of bounds.
    #[error("invalid config: {0}")]
    Config(&'static str),
}

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

/// The state machine of one validator (or observer) in one epoch.
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
        };
        // Rebuild the tree from the persisted blocks, oldest first; their QCs may commit more
        // (the commits are emitted at Start) and raise the high QC.
        let mut blocks = durable.blocks;
        blocks.sort_by_key(Block::round);
        for b in blocks {
            if b.epoch() != core.ctx.epoch() || core.ctx.verify_qc(b.qc()).is_err() {
                continue;
            }
            if matches!(core.tree.insert(b.clone()), Ok(true)) {
                core.pm.observe_qc(b.qc());
                if let Some(c) = core.tree.on_qc(b.qc()) {
                    core.out.push(Action::Commit(c));
                }
            }
        }
        // The pacemaker starts after the highest certificate it knows.
        let start_round = core
            .pm
            .high_qc()
            .round
            .max(core.pm.high_tc().map_or(0, |t| t.round))
            + 1;
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
            Event::Message { from, message } => match message {
                Message::Proposal(p) => self.on_proposal(p, from),
                Message::Vote(v) => self.on_vote(v),
                Message::Timeout(t) => self.on_timeout(t, from),
                Message::TimeoutCert(tc) => self.on_tc(tc, from),
            },
            Event::TimerFired { round, now_ms } => {
                self.now_ms = now_ms;
                self.on_timer(round);
            }
            Event::PayloadReady { round, batches } => self.on_payload(round, batches),
            Event::BatchesAvailable { block_id } => self.on_batches(block_id),
            Event::BlocksFetched { from, blocks } => self.on_fetched(from, blocks),
        }
        self.drain_pending();
        std::mem::take(&mut self.out)
    }

    fn discard(&mut self, reject: bool, reason: &'static str) {
        self.out.push(Action::Discarded(Discard { reject, reason }));
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
        self.on_round_entered();
    }

    /// Uses a verified QC: high QC, commit rule, fetch of its block, round entry.
    fn process_qc(&mut self, qc: &QuorumCert, hint: Option<Address>) {
        self.pm.observe_qc(qc);
        if qc.round > self.tree.root().round {
            if self.tree.contains(&qc.block_id) {
                self.try_commit(qc);
            } else {
                self.want(qc.block_id, hint, Some(qc.clone()));
            }
        }
        if qc.round + 1 > self.pm.round() {
            self.enter_round(qc.round + 1, Entry::Qc);
        }
    }

    fn try_commit(&mut self, qc: &QuorumCert) {
        if let Some(c) = self.tree.on_qc(qc) {
            let root_round = self.tree.root().round;
            self.out.push(Action::Commit(c));
            self.orphans.retain(|_, b| b.round() > root_round);
        }
    }

    /// Uses a verified TC: its high QC, high TC, round entry.
    fn process_tc(&mut self, tc: &TimeoutCert, hint: Option<Address>) {
        self.process_qc(&tc.high_qc, hint);
        self.pm.observe_tc(tc);
        if tc.round + 1 > self.pm.round() {
            self.enter_round(tc.round + 1, Entry::Tc);
        }
    }

    fn want(&mut self, id: BlockId, hint: Option<Address>, qc: Option<QuorumCert>) {
        if self.tree.contains(&id) {
            return;
        }
        if let Some(w) = self.wanted.get_mut(&id) {
            if w.qc.is_none() {
                w.qc = qc;
            }
            return;
        }
        if self.wanted.len() >= self.config.max_wanted {
            // Drop the oldest want (it is retried from later certificates if still needed).
            if let Some(first) = self.wanted.keys().next().copied() {
                self.wanted.remove(&first);
            }
        }
        self.wanted.insert(id, Want { qc });
        self.out.push(Action::FetchBlocks {
            block_id: id,
            stop_at_round: self.tree.root().round,
            max_blocks: self.config.max_fetch_blocks,
            from: hint,
        });
    }

    fn on_proposal(&mut self, p: Proposal, from: Address) {
        let b = &p.block;
        if b.epoch() != self.ctx.epoch() {
            return self.discard(false, "proposal of another epoch");
        }
        if b.payload().len() > self.config.max_payload_batches {
            return self.discard(true, "proposal payload too large");
        }
        if b.round() <= self.tree.root().round {
            return self.discard(false, "proposal below the committed root");
        }
        // A block already held needs no second look, unless this proposal conflicts with the
        // first one seen for its round (the block may have arrived by fetch): then it is evidence.
        let conflicts = self
            .proposals_seen
            .get(&b.round())
            .is_some_and(|(id, _, reported)| *id != b.id() && !*reported);
        if b.round() < self.pm.round() && self.tree.contains(&b.id()) && !conflicts {
            // Remember it as the round's first proposal (once, if validly signed) so that a
            // conflicting one arriving later is still caught.
            if !self.proposals_seen.contains_key(&b.round()) && self.ctx.verify_proposal(&p).is_ok()
            {
                self.check_proposal_equivocation(&p);
            }
            return self.discard(false, "stale duplicate proposal");
        }
        if let Err(_e) = self.ctx.verify_proposal(&p) {
            return self.discard(true, "invalid proposal");
        }
        self.check_proposal_equivocation(&p);
        self.process_qc(&p.block.qc().clone(), Some(from));
        if let Some(tc) = p.tc.clone() {
            self.process_tc(&tc, Some(from));
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
    /// evidence (reported once per round).
    fn check_proposal_equivocation(&mut self, p: &Proposal) {
        let r = p.round();
        if r + 1 < self.pm.round() || r > self.pm.round().saturating_add(self.config.round_window) {
            return;
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
            }
            Some(_) => {}
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

    fn try_vote(&mut self, p: Proposal) {
        if p.round() != self.pm.round() {
            return;
        }
        let voted = self.safety.state().last_voted_round >= p.round();
        let replay = self
            .safety
            .state()
            .last_vote
            .as_ref()
            .is_some_and(|v| v.round == p.round() && v.block_id == p.block.id());
        if voted && !replay {
            return;
        }
        if replay {
            return; // already sent for this round; re-sent only at restart
        }
        if !p.block.payload().is_empty() && p.block.proposer() != self.me {
            self.out.push(Action::FetchBatches {
                block_id: p.block.id(),
                digests: p.block.payload().to_vec(),
                from: p.block.proposer(),
            });
            self.awaiting_batches = Some(p);
            return;
        }
        self.vote(&p);
    }

    fn vote(&mut self, p: &Proposal) {
        if let Ok(v) = self.safety.make_vote(&self.ctx, p) {
            self.send_vote_signed(v);
        }
    }

    fn send_vote_signed(&mut self, v: Vote) {
        let to = self.ctx.set().leader(v.round + 1);
        if to == self.me {
            if let Some(s) = self.safety.take_dirty() {
                self.out.push(Action::PersistSafety(s));
            }
            self.on_vote(v);
        } else {
            self.emit_signed(Action::SendTo {
                to,
                message: Message::Vote(v),
            });
        }
    }

    fn send_vote(&mut self, v: Vote) {
        let to = self.ctx.set().leader(v.round + 1);
        if to == self.me {
            self.on_vote(v);
        } else {
            self.out.push(Action::SendTo {
                to,
                message: Message::Vote(v),
            });
        }
    }

    fn on_batches(&mut self, block_id: BlockId) {
        if self
            .awaiting_batches
            .as_ref()
            .is_some_and(|p| p.block.id() == block_id)
            && let Some(p) = self.awaiting_batches.take()
            && p.round() == self.pm.round()
        {
            self.vote(&p);
        }
    }

    fn on_vote(&mut self, v: Vote) {
        if v.epoch != self.ctx.epoch() {
            return self.discard(false, "vote of another epoch");
        }
        let r = self.pm.round();
        if v.round + 1 < r || v.round > r.saturating_add(self.config.round_window) {
            return self.discard(false, "vote outside the round window");
        }
        if self.ctx.set().leader(v.round + 1) != self.me {
            return self.discard(false, "vote for another leader");
        }
        let Some(i) = self.ctx.set().index_of(&v.signer) else {
            return self.discard(true, "vote from a non-member");
        };
        let first = self
            .votes
            .get(&v.round)
            .and_then(|rv| rv.voted.get(&i).map(|f| (*f, rv.equivocators.contains(&i))));
        match first {
            Some(((id, _), _)) if id == v.block_id => {
                return self.discard(false, "duplicate vote");
            }
            Some((_, true)) => return self.discard(false, "duplicate equivocating vote"),
            Some((first, false)) => {
                // A different vote by the same signer for the same round: evidence if it is
                // really signed by them.
                if self.ctx.verify_vote(&v).is_err() {
                    return self.discard(true, "badly signed vote");
                }
                if let Some(rv) = self.votes.get_mut(&v.round) {
                    rv.equivocators.push(i);
                }
                self.out.push(Action::Evidence(Evidence {
                    kind: EquivocationKind::Vote,
                    signer: v.signer,
                    epoch: v.epoch,
                    round: v.round,
                    first,
                    second: (v.block_id, v.signature),
                }));
                return;
            }
            None => {}
        }
        if self.ctx.verify_vote(&v).is_err() {
            return self.discard(true, "badly signed vote");
        }
        let n = self.ctx.set().len();
        let rv = self.votes.entry(v.round).or_default();
        // Late votes are still remembered (at most one per member and round) so that a later
        // conflicting vote is caught as evidence.
        rv.voted.insert(i, (v.block_id, v.signature));
        if rv.qc_formed {
            return;
        }
        let entry = rv
            .by_block
            .entry(v.block_id)
            .or_insert_with(|| (SignerBitmap::new(n), BTreeMap::new()));
        entry.0.set(i);
        entry.1.insert(i, v.signature);
        if self.ctx.set().is_quorum(&entry.0) {
            let qc = QuorumCert {
                epoch: v.epoch,
                round: v.round,
                block_id: v.block_id,
                signers: entry.0.clone(),
                signatures: entry.1.values().copied().collect(),
            };
            rv.qc_formed = true;
            self.process_qc(&qc, None);
        }
    }

    fn on_timeout(&mut self, t: Timeout, from: Address) {
        if t.epoch != self.ctx.epoch() {
            return self.discard(false, "timeout of another epoch");
        }
        let Some(i) = self.ctx.set().index_of(&t.signer) else {
            return self.discard(true, "timeout from a non-member");
        };
        if self.pm.has_timeout(t.round, i) {
            return self.discard(false, "duplicate timeout");
        }
        if t.round + 1 < self.pm.round()
            && t.high_qc.round <= self.pm.high_qc().round
            && t.high_tc
                .as_ref()
                .is_none_or(|tc| tc.round + 1 < self.pm.round())
        {
            return self.discard(false, "stale timeout");
        }
        if self.ctx.verify_timeout(&t).is_err() {
            return self.discard(true, "invalid timeout");
        }
        // Any valid certificate it carries is used, even if the timeout itself is out of window.
        self.process_qc(&t.high_qc.clone(), Some(from));
        if let Some(tc) = t.high_tc.clone() {
            self.process_tc(&tc, Some(from));
        }
        if !self.pm.in_window(t.round) {
            return self.discard(false, "timeout outside the round window");
        }
        self.collect_timeout(i, &t);
    }

    fn collect_timeout(&mut self, i: usize, t: &Timeout) {
        let outcome = self.pm.add_timeout(self.ctx.set(), i, t);
        // Amplification: P − Q + 1 timed out at (or above) our round: time out too.
        if outcome.honest_reached
            && t.round == self.pm.round()
            && self.safety.state().highest_timeout_round < t.round
        {
            self.local_timeout();
        }
        if let Some(tc) = outcome.tc {
            self.out
                .push(Action::Broadcast(Message::TimeoutCert(tc.clone())));
            self.process_tc(&tc, None);
        }
    }

    fn on_tc(&mut self, tc: TimeoutCert, from: Address) {
        if tc.epoch != self.ctx.epoch() {
            return self.discard(false, "TC of another epoch");
        }
        if tc.round + 1 < self.pm.round() && tc.high_qc.round <= self.pm.high_qc().round {
            return self.discard(false, "stale TC");
        }
        if self.ctx.verify_tc(&tc).is_err() {
            return self.discard(true, "invalid TC");
        }
        self.process_tc(&tc, Some(from));
    }

    fn on_timer(&mut self, round: u64) {
        if round != self.pm.round() {
            return;
        }
        self.local_timeout();
        // Retry fetches that have not been answered (the request or answer may have been lost).
        let retry: Vec<BlockId> = self.wanted.keys().take(4).copied().collect();
        for id in retry {
            self.out.push(Action::FetchBlocks {
                block_id: id,
                stop_at_round: self.tree.root().round,
                max_blocks: self.config.max_fetch_blocks,
                from: None,
            });
        }
        // Re-arm (the timeout is re-broadcast until the round ends), unless the timeout itself
        // completed a TC and the next round's timer is already set.
        if self.pm.round() == round {
            self.out.push(Action::SetTimer {
                round,
                duration_ms: self.pm.timer_duration(),
            });
        }
    }

    /// Signs (or re-signs) the timeout of the current round and broadcasts it.
    fn local_timeout(&mut self) {
        let r = self.pm.round();
        let high_qc = self.pm.high_qc().clone();
        let high_tc = if high_qc.round + 1 == r {
            None
        } else {
            self.pm.high_tc().filter(|tc| tc.round + 1 == r).cloned()
        };
        let Ok(t) = self
            .safety
            .make_timeout(&self.ctx, r, &high_qc, high_tc.as_ref())
        else {
            return;
        };
        let certs = (high_qc.round, high_tc.as_ref().map_or(0, |t| t.round));
        if certs != self.persisted_certs {
            self.persisted_certs = certs;
            self.out
                .push(Action::PersistCertificates { high_qc, high_tc });
        }
        self.emit_signed(Action::Broadcast(Message::Timeout(t.clone())));
        if let Some(i) = self.ctx.set().index_of(&self.me)
            && !self.pm.has_timeout(r, i)
        {
            self.collect_timeout(i, &t);
        }
    }

    fn on_payload(&mut self, round: u64, mut batches: Vec<BatchDigest>) {
        if round != self.pm.round() || !self.is_leader(round) || self.proposed_round >= round {
            return;
        }
        batches.truncate(self.config.max_payload_batches);
        let qc = self.pm.high_qc().clone();
        let tc = if qc.round + 1 == round {
            None
        } else {
            match self.pm.high_tc().filter(|tc| tc.round + 1 == round) {
                Some(tc) => Some(tc.clone()),
                None => return, // cannot justify the round (never expected)
            }
        };
        let block = Block::new(self.ctx.epoch(), round, qc, self.me, batches, None);
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

    fn on_fetched(&mut self, from: Option<Address>, blocks: Vec<Block>) {
        let mut expect: Option<BlockId> = None;
        let mut accepted = 0usize;
        for b in blocks.into_iter().take(self.config.max_fetch_blocks) {
            let wanted = match expect {
                None => self.wanted.contains_key(&b.id()),
                Some(id) => id == b.id(),
            };
            if !wanted || b.epoch() != self.ctx.epoch() {
                break;
            }
            if b.parent_id() != b.qc().block_id
                || b.round() <= b.qc().round
                || b.payload().len() > self.config.max_payload_batches
                || b.header().reconfigure.is_some()
                || self.ctx.set().leader(b.round()) != b.proposer()
                || self.ctx.verify_qc(b.qc()).is_err()
            {
                self.discard(true, "invalid fetched block");
                break;
            }
            expect = Some(b.parent_id());
            let stop = self.tree.contains(&b.parent_id()) || b.round() <= self.tree.root().round;
            if b.round() > self.tree.root().round && self.orphans.len() < self.config.max_orphans {
                self.orphans.insert(b.id(), b);
                accepted += 1;
            }
            if stop {
                break;
            }
        }
        if accepted == 0 {
            return;
        }
        self.attach_orphans(from);
    }

    /// Inserts fetched blocks whose parents are now known, oldest first, using their QCs.
    fn attach_orphans(&mut self, hint: Option<Address>) {
        loop {
            let mut ready: Vec<Block> = self
                .orphans
                .values()
                .filter(|b| self.tree.contains(&b.parent_id()))
                .cloned()
                .collect();
            if ready.is_empty() {
                break;
            }
            ready.sort_by_key(|b| (b.round(), b.id()));
            for b in ready {
                self.orphans.remove(&b.id());
                if !matches!(self.tree.insert(b.clone()), Ok(true)) {
                    continue;
                }
                self.out.push(Action::PersistBlock(b.clone()));
                self.process_qc(&b.qc().clone(), hint);
                if let Some(w) = self.wanted.remove(&b.id())
                    && let Some(qc) = w.qc
                {
                    self.process_qc(&qc, hint);
                }
                let high = self.pm.high_qc().clone();
                if high.block_id == b.id() {
                    self.try_commit(&high);
                }
            }
        }
        // Ancestors still missing: ask for the oldest orphan's parent.
        let oldest = self
            .orphans
            .values()
            .min_by_key(|b| (b.round(), b.id()))
            .map(|b| b.parent_id());
        if let Some(parent) = oldest {
            self.want(parent, hint, None);
        }
    }

    /// Proposals of the current round whose parent arrived.
    fn drain_pending(&mut self) {
        loop {
            let r = self.pm.round();
            let ready = self
                .pending
                .get(&r)
                .is_some_and(|(p, _)| self.tree.contains(&p.block.parent_id()));
            if !ready {
                break;
            }
            if let Some((p, from)) = self.pending.remove(&r) {
                self.accept_current_proposal(p, from);
            }
        }
    }
}
