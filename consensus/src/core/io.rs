//! What crosses the core's boundary: its tunables, the durable state handed back at restart,
//! the events it takes, the actions it returns, and its errors.

use crate::block_tree::{Commit, Root};
use crate::epoch::EpochChangeRecord;
use crate::evidence::Evidence;
use crate::safety::SafetyState;
use crate::types::{
    Address, BatchDigest, Block, BlockId, MemberInfo, Message, QuorumCert, TimeoutCert,
};
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
    /// Signed misbehaviour by the member that sent it (a second proposal for a round, sent by
    /// its proposer): a network layer that knows this peer also forwarded it itself may
    /// penalize it, while an honest relay of the same message did nothing wrong.
    pub by_sender: bool,
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
