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
    /// W (genesis `reconfig_max_lag_blocks`): a `Reconfigure`'s chain block must be at most this
    /// many blocks below the voter's pinned head.
    pub reconfig_max_lag_blocks: u64,
    /// Genesis `reconfig_wait` (ms): how long a voter waits for its pinned head to reach a
    /// `Reconfigure`'s chain block before refusing it (shorter than the base timeout).
    pub reconfig_wait_ms: u64,
    /// Genesis `epoch_min_rounds`: a `Reconfigure` is proposed and voted for only in rounds at
    /// least this high, so every epoch lasts a while.
    pub epoch_min_rounds: u64,
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
            reconfig_max_lag_blocks: 256,
            reconfig_wait_ms: 500,
            epoch_min_rounds: 10,
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
    /// The oracle's view (DESIGN section 4), sent whenever it polled: its pinned head and the
    /// validator set it read there by block hash. A leader proposes a `Reconfigure` from it when
    /// it differs from the current set; a voter checks a `Reconfigure` against it.
    PinnedHead {
        /// Pinned chain block number.
        number: u64,
        /// Its hash.
        hash: [u8; 32],
        /// The set read at that hash (any order; the core sorts by address).
        members: Vec<MemberInfo>,
        /// Host time (ms).
        now_ms: u64,
    },
    /// The answer to `Action::ReadChainSet`.
    ChainSet {
        /// Chain block number asked.
        number: u64,
        /// Block hash asked.
        hash: [u8; 32],
        /// The set read at `hash`; `None` if `hash` is not the chain's block at `number` (a
        /// rolled-back or invented block) or the read failed.
        members: Option<Vec<MemberInfo>>,
    },
    /// Epoch-change records received (broadcast by a committer, or the answer to
    /// `Action::FetchEpochChanges` / a peer's `Action::SendEpochChanges`), oldest first.
    EpochChanges {
        /// Peer that sent them.
        from: Option<Address>,
        /// Records, oldest first.
        records: Vec<EpochChangeRecord>,
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
    /// Send to every other validator (the core already processed it locally). Proposals,
    /// timeouts and TCs go by gossip; votes go to every current member directly, since every
    /// validator aggregates them into QCs.
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
    /// Read the validator set at chain block `hash` (by hash, EIP-1898) after checking that
    /// `hash` is the chain's block at `number`; answer with `Event::ChainSet`. The core votes for
    /// the `Reconfigure` naming this block only after the answer.
    ReadChainSet {
        /// Chain block number.
        number: u64,
        /// Chain block hash.
        hash: [u8; 32],
    },
    /// The epoch ended: make the record durable (like the other `Persist*` actions, before any
    /// later action of the list). The core is now in epoch `record.epoch + 1` with the set
    /// `record.members()`; after a restart, build the core's `EpochContext` with
    /// `record.next_context(&previous)` and `DurableState::root` = `Root { id: new genesis block,
    /// round: 0, height: B0's height }` until the new epoch commits.
    PersistEpochChange(EpochChangeRecord),
    /// Broadcast the record on the cluster topic (old and new members, observers).
    BroadcastEpochChange(EpochChangeRecord),
    /// A member of an earlier epoch sent a message of epoch `since_epoch`: send it the stored
    /// records of epochs `since_epoch..` (rate-limited by the core: once per peer and timer).
    SendEpochChanges {
        /// The lagging peer.
        to: Address,
        /// First epoch whose record it needs.
        since_epoch: u64,
    },
    /// A message of a later epoch arrived: fetch the records of epochs `since_epoch..` from
    /// `from` (or any peer) and answer with `Event::EpochChanges` (rate-limited by the core).
    FetchEpochChanges {
        /// First epoch whose record this node needs (its current epoch).
        since_epoch: u64,
        /// A peer that has them.
        from: Option<Address>,
    },
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
        if let Some(mut c) = self.tree.on_qc(qc) {
            // Epoch e ends at the first Reconfigure block that commits: nothing after it in
            // epoch e is committed; the record carries the path to the certified block.
            if let Some(pos) = c
                .blocks
                .iter()
                .position(|cb| cb.block.header().reconfigure.is_some())
            {
                let mut path: Vec<Block> =
                    c.blocks[pos..].iter().map(|cb| cb.block.clone()).collect();
                path.push(c.proof.certified.clone());
                c.blocks.truncate(pos + 1);
                let record = EpochChangeRecord {
                    epoch: self.ctx.epoch(),
                    path,
                    qc: c.proof.qc.clone(),
                };
                let height = c
                    .blocks
                    .last()
                    .map_or(self.tree.root().height, |b| b.height);
                self.out.push(Action::Commit(c));
                self.end_epoch(record, height);
                return;
            }
            let root_round = self.tree.root().round;
            self.out.push(Action::Commit(c));
            self.orphans.retain(|_, b| b.round() > root_round);
        }
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
                return self.discard(false, "equivocating proposal");
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
            return self.discard(false, "equivocating proposal");
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
        match self.epoch_rules(&p) {
            Verdict::Ok => {}
            Verdict::Wait => {
                self.awaiting_reconfig = Some(p);
                return;
            }
            Verdict::Refuse(reason) => return self.discard(false, reason),
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
        if self.ctx.set().index_of(&self.me).is_none() {
            return; // an observer (or a removed member) does not vote
        }
        if let Ok(v) = self.safety.make_vote(&self.ctx, p) {
            self.send_vote_signed(v);
        }
    }

    /// Sends a freshly signed vote to every other validator (after its safety state is durable)
    /// and counts it locally: every validator aggregates the votes of a round, so a QC forms even
    /// when the next leader is down (one timeout per crashed leader, not two).
    fn send_vote_signed(&mut self, v: Vote) {
        self.emit_signed(Action::Broadcast(Message::Vote(v.clone())));
        self.on_vote(v);
    }

    /// Re-sends a vote signed before a restart (already durable) and counts it locally.
    fn send_vote(&mut self, v: Vote) {
        self.out.push(Action::Broadcast(Message::Vote(v.clone())));
        self.on_vote(v);
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
        if v.round.saturating_add(1) < r || v.round > r.saturating_add(self.config.round_window) {
            return self.discard(false, "vote outside the round window");
        }
        let Some(i) = self.ctx.set().index_of(&v.signer) else {
            return self.discard(false, "vote from a non-member");
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
            // The last signer voted for the block, so it holds it (if this node does not yet).
            let hint = (v.signer != self.me).then_some(v.signer);
            self.process_qc(&qc, hint);
        }
    }

    fn on_timeout(&mut self, t: Timeout, from: Address) {
        let Some(i) = self.ctx.set().index_of(&t.signer) else {
            return self.discard(false, "timeout from a non-member");
        };
        if self.pm.has_timeout(t.round, i) {
            return self.discard(false, "duplicate timeout");
        }
        if t.round.saturating_add(1) < self.pm.round()
            && t.high_qc.round <= self.pm.high_qc().round
            && t.high_tc
                .as_ref()
                .is_none_or(|tc| tc.round.saturating_add(1) < self.pm.round())
        {
            return self.discard(false, "stale timeout");
        }
        // Far ahead and carrying nothing newer than what this node holds: of no use even if
        // valid, so no signature is spent on it.
        let newer_certs = t.high_qc.round > self.pm.high_qc().round
            || t.high_tc
                .as_ref()
                .is_some_and(|tc| self.pm.high_tc().is_none_or(|held| tc.round > held.round));
        if !newer_certs && !self.pm.in_window(t.round) {
            return self.discard(false, "timeout outside the round window");
        }
        if self.ctx.verify_timeout(&t).is_err() {
            return self.discard(true, "invalid timeout");
        }
        // Any valid certificate it carries is used, even if the timeout itself is out of window.
        self.process_qc(&t.high_qc.clone(), Some(from));
        if let Some(tc) = t.high_tc.clone() {
            self.process_tc(&tc, Some(from));
        }
        if t.epoch != self.ctx.epoch() {
            return; // its certificates ended the epoch
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
        if tc.round.saturating_add(1) < self.pm.round()
            && tc.high_qc.round <= self.pm.high_qc().round
        {
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
        if self.ctx.set().index_of(&self.me).is_none() {
            return;
        }
        let r = self.pm.round();
        let high_qc = self.pm.high_qc().clone();
        let high_tc = if high_qc.round.checked_add(1) == Some(r) {
            None
        } else {
            self.pm
                .high_tc()
                .filter(|tc| tc.round.checked_add(1) == Some(r))
                .cloned()
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

    fn on_fetched(&mut self, from: Option<Address>, blocks: Vec<Block>) {
        let mut expect: Option<BlockId> = None;
        let mut accepted = 0usize;
        for b in blocks.into_iter().take(self.config.max_fetch_blocks) {
            if let Err(reason) = crate::bounds::check_block(&b) {
                self.discard(true, reason);
                break;
            }
            let wanted = match expect {
                None => self.wanted.contains_key(&b.id()),
                Some(id) => id == b.id(),
            };
            if !wanted || b.epoch() != self.ctx.epoch() {
                break;
            }
            // Cheapest checks first; the set check of a `Reconfigure` after the QC.
            if b.parent_id() != b.qc().block_id
                || b.round() <= b.qc().round
                || b.payload().len() > self.config.max_payload_batches
                || self.ctx.set().leader(b.round()) != b.proposer()
                || self.ctx.verify_qc(b.qc()).is_err()
                || b.header()
                    .reconfigure
                    .as_ref()
                    .is_some_and(|rc| crate::epoch::check_reconfigure_shape(rc).is_err())
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
            let epoch = self.ctx.epoch();
            for b in ready {
                if self.ctx.epoch() != epoch {
                    return; // the epoch ended: its orphans are gone
                }
                self.orphans.remove(&b.id());
                if !matches!(self.tree.insert_certified(b.clone()), Ok(true)) {
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

impl Core {
    /// Whether the branch ending at `id` (inclusive) holds an uncommitted Reconfigure. A block the
    /// tree does not hold (other than the root) counts as in limbo, conservatively.
    fn branch_in_limbo(&self, id: &BlockId) -> bool {
        let mut cur = *id;
        loop {
            if cur == self.tree.root().id {
                return false;
            }
            match self.tree.get(&cur) {
                Some(b) if b.header().reconfigure.is_some() => return true,
                Some(b) => cur = b.parent_id(),
                None => return true,
            }
        }
    }

    /// The Reconfigure a leader proposes at `round`, if its oracle's set differs from the current
    /// one and may be proposed now.
    fn reconfigure_to_propose(&self, round: u64) -> Option<Reconfigure> {
        let (number, hash, members) = self.head.as_ref()?;
        if round < self.config.epoch_min_rounds
            || *number <= self.ctx.chain_block()
            || *members == self.ctx.set().member_infos()
        {
            return None;
        }
        let rc = Reconfigure {
            chain_block_number: *number,
            chain_block_hash: *hash,
            validator_set_hash: crate::domain::validator_set_hash(members),
            members: members.clone(),
        };
        crate::epoch::check_reconfigure_shape(&rc).ok()?;
        Some(rc)
    }

    /// The vote-time epoch rules (DESIGN section 4) for a proposal of the current round whose
    /// block is in the tree.
    fn epoch_rules(&mut self, p: &Proposal) -> Verdict {
        let b = &p.block;
        if self.branch_in_limbo(&b.parent_id()) {
            #[cfg(not(feature = "mutant-payload-in-limbo-epoch"))]
            if !b.payload().is_empty() {
                return Verdict::Refuse("payload in a block descending from a reconfigure");
            }
            if b.header().reconfigure.is_some() {
                return Verdict::Refuse("second reconfigure in flight on the branch");
            }
            return Verdict::Ok;
        }
        let Some(rc) = b.header().reconfigure.clone() else {
            return Verdict::Ok;
        };
        if rc.members == self.ctx.set().member_infos() {
            return Verdict::Refuse("reconfigure does not change the set");
        }
        if rc.chain_block_number <= self.ctx.chain_block() {
            return Verdict::Refuse("reconfigure not above the epoch's chain block");
        }
        if b.round() < self.config.epoch_min_rounds {
            return Verdict::Refuse("reconfigure before epoch_min_rounds");
        }
        // Wait (at most reconfig_wait) for the pinned head to reach the block.
        let (deadline, waited) = match self.reconfig_deadline {
            Some((id, d, w)) if id == b.id() => (d, w),
            _ => {
                let d = self.now_ms.saturating_add(self.config.reconfig_wait_ms);
                self.reconfig_deadline = Some((b.id(), d, false));
                (d, false)
            }
        };
        let head = self.head.as_ref().map(|h| (h.0, h.1));
        match head {
            Some(_) if waited && self.now_ms > deadline => {
                return Verdict::Refuse("pinned head did not reach the reconfigure's block");
            }
            Some((number, _)) if number >= rc.chain_block_number => {
                #[cfg(not(feature = "mutant-accept-stale-reconfigure"))]
                if rc
                    .chain_block_number
                    .saturating_add(self.config.reconfig_max_lag_blocks)
                    < number
                {
                    return Verdict::Refuse("stale reconfigure: chain block older than head - W");
                }
            }
            _ if self.now_ms > deadline => {
                return Verdict::Refuse("pinned head did not reach the reconfigure's block");
            }
            _ => {
                self.reconfig_deadline = Some((b.id(), deadline, true));
                return Verdict::Wait;
            }
        }
        // The set at that hash, read by the host (the pinned head's own set needs no read).
        let key = (rc.chain_block_number, rc.chain_block_hash);
        let known = match &self.head {
            Some((n, h, m)) if (*n, *h) == key => Some(Some(m.clone())),
            _ => self.chain_sets.get(&key).cloned(),
        };
        match known {
            None => {
                self.out.push(Action::ReadChainSet {
                    number: key.0,
                    hash: key.1,
                });
                Verdict::Wait
            }
            Some(None) => Verdict::Refuse("reconfigure names a block that is not the chain's"),
            Some(Some(m)) if m != rc.members => {
                Verdict::Refuse("reconfigure members differ from the chain's set")
            }
            Some(Some(_)) => Verdict::Ok,
        }
    }

    /// A pinned head or chain-set answer arrived: re-evaluate the proposal waiting on it.
    fn recheck_reconfig(&mut self) {
        if let Some(p) = self.awaiting_reconfig.take()
            && p.round() == self.pm.round()
        {
            self.try_vote(p);
        }
    }

    /// A message of another epoch: answer a lagging member with records, or fetch the records
    /// of a later epoch. Rate-limited: once per signer (answers) or once (fetches) per timer.
    /// A message of the previous epoch is verified with that epoch's context before its signer
    /// is answered; one of an older epoch (whose set this node no longer holds) gets at most one
    /// answer per timer in all, so forged signers cannot make the node send records around.
    fn other_epoch(&mut self, m: &Message, from: Address) {
        let cur = self.ctx.epoch();
        let epoch = m.epoch_round().0;
        if epoch > cur {
            self.later_epoch_seen(epoch, Some(from));
            return self.discard(false, "message of a later epoch");
        }
        let signer = match m {
            Message::Proposal(p) => p.block.proposer(),
            Message::Vote(v) => v.signer,
            Message::Timeout(t) => t.signer,
            Message::TimeoutCert(_) => from,
        };
        if signer == self.me || self.answered.contains(&signer) {
            return self.discard(false, "message of an earlier epoch");
        }
        let authentic = match &self.prev_ctx {
            Some(prev) if prev.epoch() == epoch => {
                let known = prev.set().index_of(&signer).is_some();
                known
                    && match m {
                        Message::Proposal(p) => prev.verify_proposal(p).is_ok(),
                        Message::Vote(v) => prev.verify_vote(v).is_ok(),
                        Message::Timeout(t) => prev.verify_timeout(t).is_ok(),
                        Message::TimeoutCert(tc) => prev.verify_tc(tc).is_ok(),
                    }
            }
            _ => std::mem::replace(&mut self.old_epoch_answer_armed, false),
        };
        if authentic {
            self.answered.insert(signer);
            self.out.push(Action::SendEpochChanges {
                to: signer,
                since_epoch: epoch,
            });
        }
        self.discard(false, "message of an earlier epoch")
    }

    /// Something of epoch `epoch` > ours arrived: fetch the records from our epoch on (once per
    /// timer), and remember who had it for after the next epoch change.
    fn later_epoch_seen(&mut self, epoch: u64, from: Option<Address>) {
        if self.later_epoch_hint.is_none_or(|(e, _)| e < epoch) {
            self.later_epoch_hint = Some((epoch, from));
        }
        if self.records_fetch_armed {
            self.records_fetch_armed = false;
            self.out.push(Action::FetchEpochChanges {
                since_epoch: self.ctx.epoch(),
                from,
            });
        }
    }

    /// Records received, oldest first: the one of the current epoch is used (its path and QC
    /// commit B0, which ends the epoch), after which the next one may be of the new epoch. A
    /// record of a later epoch cannot be verified yet: it is not kept, only fetched again in
    /// order once this node reaches its epoch.
    fn on_records(&mut self, from: Option<Address>, records: Vec<EpochChangeRecord>) {
        for r in records.into_iter().take(MAX_RECORDS_PER_EVENT) {
            if let Err(reason) = crate::bounds::check_record(&r) {
                self.discard(true, reason);
                continue;
            }
            let cur = self.ctx.epoch();
            if r.epoch > cur {
                // It shows that epoch r.epoch + 1 exists.
                self.later_epoch_seen(r.next_epoch(), from);
                self.discard(false, "record of a later epoch");
            } else if r.epoch == cur {
                self.apply_record(from, r);
            } else {
                match &self.prev_ctx {
                    // The record that started this epoch: relaying it helps laggers.
                    Some(prev) if prev.epoch() == r.epoch => {
                        if r.verify(prev).is_err() {
                            self.discard(true, "invalid epoch-change record");
                        }
                    }
                    _ => self.discard(false, "record of an old epoch"),
                }
            }
        }
    }

    fn apply_record(&mut self, from: Option<Address>, r: EpochChangeRecord) {
        if r.verify(&self.ctx).is_err() {
            return self.discard(true, "invalid epoch-change record");
        }
        let Some(b0) = r.b0().cloned() else {
            return;
        };
        if b0.id() == self.tree.root().id {
            // B0 is committed here already (the record was lost before it was durable).
            let height = self.tree.root().height;
            return self.end_epoch(r, height);
        }
        if b0.round() <= self.tree.root().round {
            return self.discard(false, "record below the committed root");
        }
        // Its blocks join the tree (fetching any missing ancestors); its QC commits B0.
        for b in &r.path {
            if !self.tree.contains(&b.id()) && self.orphans.len() < self.config.max_orphans {
                self.orphans.insert(b.id(), b.clone());
            }
        }
        let epoch = self.ctx.epoch();
        self.attach_orphans(from);
        if self.ctx.epoch() == epoch {
            self.process_qc(&r.qc, from);
        }
    }

    /// Ends the current epoch at the committed B0 of `record` (at height `height`) and starts
    /// the next one from its genesis block and genesis QC, with a fresh safety state.
    fn end_epoch(&mut self, record: EpochChangeRecord, height: u64) {
        let next = match record.next_context(&self.ctx) {
            Ok(c) => c,
            Err(_) => return self.discard(true, "epoch-change record does not verify"),
        };
        self.out.push(Action::PersistEpochChange(record.clone()));
        let root = Root {
            id: next.genesis_block(),
            round: 0,
            height,
        };
        let genesis_qc = next.genesis_qc();
        self.prev_ctx = Some(std::mem::replace(&mut self.ctx, next));
        self.safety.enter_epoch(self.ctx.epoch());
        self.tree = BlockTree::new(root, self.config.max_pending_blocks);
        self.pm = Pacemaker::new(
            self.config.base_timeout_ms,
            self.config.max_timeout_ms,
            self.config.round_window,
            genesis_qc,
            None,
        );
        self.votes.clear();
        self.pending.clear();
        self.proposals_seen.clear();
        self.awaiting_batches = None;
        self.awaiting_reconfig = None;
        self.reconfig_deadline = None;
        self.wanted.clear();
        self.orphans.clear();
        self.proposed_round = 0;
        self.persisted_certs = (0, 0);
        self.answered.clear();
        self.records_fetch_armed = true;
        self.out.push(Action::BroadcastEpochChange(record));
        self.on_round_entered();
        let e = self.ctx.epoch();
        match self.later_epoch_hint.take() {
            Some((later, from)) if later > e => self.later_epoch_seen(later, from),
            _ => {}
        }
    }
}
