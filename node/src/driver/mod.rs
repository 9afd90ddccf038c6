//! The consensus driver: runs the pure consensus core (`consensus::core::Core`) against the real
//! world. It feeds the core events (gossip, requests, timers, payloads, fetched blocks and
//! batches) and executes its actions **in order**:
//!
//! * consecutive `Persist*` actions are written in one redb transaction, committed with fsync,
//!   before any later action of the list runs; sends are queued and leave only after that, so a
//!   block and its QC are durable before the node votes for or proposes it, the highest
//!   certificates before a timeout carrying them, the safety state before anything signed;
//! * commits are applied to the ledger in height order (idempotently), after the block's batches
//!   are stored (fetched from peers when missing), executing the KV application in the same
//!   transaction;
//! * a node that stalls (restart, partition, late start) runs block sync: pages of committed
//!   blocks from a member, checked by hash links from its committed root and the commit proof
//!   (QC verified with the epoch's set), then its core restarts from the new root.
//!
//! Live membership (DESIGN section 4): an oracle task polls the chain's pinned head and the set
//! read there and feeds it to the core (`PinnedHead`); the core's `ReadChainSet` is answered from
//! the chain by number and hash. When a `Reconfigure` block commits, its epoch-change record is
//! stored in the same durable write as the rest of that step, broadcast, and served in sync
//! answers; the new set, schedule and peer list apply at once. Sync crosses epochs by verifying
//! each epoch's end with its record.
//!
//! After a crash the driver rebuilds the core from what it persisted (epoch-change records,
//! safety state, highest certificates, uncommitted blocks, committed root), and the core re-sends
//! what it had signed.
//!
//! Layout: this module holds the driver's state and its loop; `actions` applies the core's
//! actions, `commit` runs the commit pipeline, `inbound` handles what arrives and what leaves,
//! `membership` follows the set and the epochs, `sync` is the block-sync client, `restore`
//! builds the core at start.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consensus::block_tree::{Commit, CommitProof, CommittedBlock};
use consensus::codec::{Decode, Encode};
use consensus::core::{Action, Config as CoreConfig, Core, Discard, DurableState, Event};
use consensus::crypto::{K256Signer, Scheme};
use consensus::domain::Domain;
use consensus::epoch::EpochChangeRecord;
use consensus::host::{Pump, Step};
use consensus::safety::SafetyState;
use consensus::sync::PageBlock;
use consensus::types::{
    Address, BatchDigest, Block, BlockId, MemberInfo, Message, QuorumCert, TimeoutCert,
};
use consensus::validators::ValidatorSet;
use consensus::verify::EpochContext;
use libp2p::PeerId;
use libp2p::gossipsub::{MessageAcceptance, MessageId};
use prost::Message as _;
use proto::{GossipBody, RequestBody, ResponseBody, v1};
use tokio::sync::{Notify, mpsc, watch};

use crate::api::{SharedStatus, ValidatorInfo};
use crate::app::{self, CommitInput};
use crate::chain::{ChainSet, ChainView, Member};
use crate::mempool::{self, Mempool, SealedBatch, TxHash};
use crate::metrics::Metrics;
use crate::net::{NetEvent, NetHandle, Responder, peer_id_from_public_key};
use crate::serve::{self, MAX_SYNC_BLOCKS, answer::ServeError};
use crate::storage::{StorageError, Store, meta};
use crate::tap::OutboundTap;
use crate::wire;

mod actions;
mod commit;
mod inbound;
mod membership;
mod restore;
mod sync;

use actions::fetch_batches;
use membership::with_urls;
use restore::{build_core, decode_block};

/// Why the driver stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// Storage failed: the node must stop rather than send anything not durable.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Executing a committed block failed.
    #[error(transparent)]
    App(#[from] app::AppError),
    /// The core could not be built.
    #[error("consensus core: {0}")]
    Core(String),
    /// The validator set is invalid.
    #[error("validator set: {0}")]
    Set(String),
    /// A stored record does not decode.
    #[error("stored {0} is corrupt")]
    Corrupt(&'static str),
    /// A task the driver started (a send, a fetch, a report) panicked: a bug, so the node stops.
    #[error("a driver task panicked: {0}")]
    TaskPanicked(String),
}

/// What the driver needs to run an epoch.
#[derive(Clone, Debug)]
pub struct DriverConfig {
    /// The node's secp256k1 secret (consensus and libp2p key).
    pub secret: [u8; 32],
    /// Chain id of the cluster.
    pub chain_id: u64,
    /// The membership contract.
    pub contract: [u8; 20],
    /// `genesis_id` of the cluster's genesis file.
    pub genesis_id: [u8; 32],
    /// The genesis chain block hash (epoch 0's `B0`).
    pub genesis_chain_block_hash: [u8; 32],
    /// The genesis chain block number (shown as `epoch_chain_block`).
    pub genesis_chain_block_number: u64,
    /// Epoch 0's members.
    pub members: Vec<Member>,
    /// Core tunables (timeouts from the genesis file).
    pub core: CoreConfig,
    /// How often the driver checks whether it is stalled and should sync.
    pub sync_check: Duration,
    /// How late a leader with nothing to propose or commit proposes its empty block (see
    /// `mempool.empty_block_interval_ms`); zero: at once.
    pub empty_block_interval: Duration,
    /// How long without a commit counts as stalled.
    pub stall_after: Duration,
    /// How often the oracle reads the pinned head (genesis `oracle_poll_ms`).
    pub oracle_poll: Duration,
}

enum Completion {
    Blocks {
        from: Option<Address>,
        blocks: Vec<Block>,
    },
    BatchesAvailable(BlockId),
    CommitBatchesReady,
    SyncPage(Option<Box<v1::SyncResponse>>),
    Pinned(ChainSet),
    ChainSet {
        number: u64,
        hash: [u8; 32],
        members: Option<Vec<MemberInfo>>,
    },
    Records {
        from: Option<Address>,
        records: Vec<v1::EpochChangeRecord>,
    },
}

/// The driver of one node.
pub struct Driver {
    cfg: DriverConfig,
    core: Core,
    store: Store,
    chain: Option<Arc<dyn ChainView>>,
    oracle_task: Option<tokio::task::JoinHandle<()>>,
    /// The sends, fetches and reports in flight: reaped as they end, aborted when the driver
    /// stops (dropping the set aborts them).
    tasks: tokio::task::JoinSet<()>,
    /// The current epoch's members (with the latest URLs the chain showed).
    members: Vec<Member>,
    /// The previous epoch's members: still heard (they may lag) and served.
    prev_members: Vec<Member>,
    /// Every node registered at the last pinned head (URLs included), members or not.
    registered: Vec<Member>,
    /// The B0 that started the current epoch (None in epoch 0).
    epoch_b0: Option<BlockId>,
    /// Whether this node was a member of any epoch it saw.
    ever_member: bool,
    /// The PeerIds last given to the network as members (sent again only when they change).
    heard: HashMap<PeerId, u64>,
    net: NetHandle,
    mempool: Arc<Mutex<Mempool>>,
    mempool_wake: Arc<Notify>,
    status: SharedStatus,
    metrics: Arc<Metrics>,
    tap: Option<Arc<dyn OutboundTap>>,
    durable: watch::Sender<u64>,
    me: Address,
    by_addr: HashMap<Address, PeerId>,
    by_peer: HashMap<PeerId, Address>,
    connected: HashSet<PeerId>,
    timer: Option<(u64, tokio::time::Instant)>,
    uncommitted: HashMap<BlockId, (u64, Vec<BatchDigest>)>,
    /// Uncommitted blocks that carry a `Reconfigure` (an epoch change waiting to commit).
    uncommitted_reconfigure: HashSet<BlockId>,
    /// A payload request held back because there was nothing to propose or commit: (round,
    /// max batches, when to answer it anyway). Answered early when transactions arrive.
    idle_payload: Option<(u64, usize, tokio::time::Instant)>,
    commit_queue: VecDeque<(CommittedBlock, Option<CommitProof>)>,
    commit_fetch_inflight: bool,
    outbox: Vec<Outgoing>,
    /// What the core discarded of the message being handled (for its gossip verdict).
    discards: Vec<Discard>,
    done_tx: mpsc::Sender<Completion>,
    done_rx: mpsc::Receiver<Completion>,
    started: Instant,
    last_commit: Instant,
    /// Ask for the next sync page without waiting for a stall (pages are coming full, or a held
    /// run waits for its proof).
    sync_next_now: bool,
    syncing: bool,
    sync_inflight: bool,
    sync_peer_turn: usize,
    /// Blocks a sync page linked but did not prove yet (a commit longer than a page), with their
    /// wire size: the next page, asked from after them, may prove them.
    sync_held: Vec<(PageBlock, usize)>,
}

enum Outgoing {
    SetMembers(HashMap<PeerId, u64>),
    Dial(libp2p::Multiaddr),
    Vote(PeerId, v1::Vote),
    Gossip(Box<GossipBody>),
    /// A batch's gossip envelope, already encoded ([`proto::batch_gossip`]), pushed to every
    /// other member on its batch stream.
    PushBatch(Vec<u8>),
    Fetch(Box<dyn FnOnce(NetHandle, mpsc::Sender<Completion>) -> FetchFuture + Send>),
}

type FetchFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The shared pieces the driver works with (the API reads the same ones).
pub struct DriverParts {
    /// The node's store.
    pub store: Store,
    /// The network handle.
    pub net: NetHandle,
    /// The mempool.
    pub mempool: Arc<Mutex<Mempool>>,
    /// Woken by the API on new transactions.
    pub mempool_wake: Arc<Notify>,
    /// The published status.
    pub status: SharedStatus,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// A fault-injection hook on sent messages (test binaries only; `None` in `dstack-node`).
    pub tap: Option<Arc<dyn OutboundTap>>,
    /// Told the sequence number of each local batch once it is durably stored (the API
    /// acknowledges transactions on it).
    pub durable: watch::Sender<u64>,
    /// The chain (pinned head, sets by block) for live membership; `None` keeps the genesis set
    /// for good (in-process tests without a chain).
    pub chain: Option<Arc<dyn ChainView>>,
}

fn lock(m: &Mutex<Mempool>) -> std::sync::MutexGuard<'_, Mempool> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

fn hex0x(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

impl Driver {
    /// Builds the driver and its core from what the store holds (fresh or after a crash).
    pub fn new(cfg: DriverConfig, parts: DriverParts) -> Result<Self, DriverError> {
        let signer =
            K256Signer::from_secret(&cfg.secret).map_err(|e| DriverError::Core(e.to_string()))?;
        let me = consensus::crypto::Signer::address(&signer);
        let (done_tx, done_rx) = mpsc::channel(1024);
        let (core, restored) = build_core(&cfg, &parts.store)?;
        let urls: HashMap<Address, String> = cfg
            .members
            .iter()
            .map(|m| (m.info.address, m.url.clone()))
            .collect();
        let members = with_urls(&core.context().set().member_infos(), &urls);
        let ever_member = cfg.members.iter().any(|m| m.info.address == me)
            || members.iter().any(|m| m.info.address == me);
        let mut d = Self {
            core,
            store: parts.store,
            chain: parts.chain,
            oracle_task: None,
            tasks: tokio::task::JoinSet::new(),
            members,
            prev_members: Vec::new(),
            registered: cfg.members.clone(),
            epoch_b0: restored.epoch_b0,
            ever_member,
            heard: HashMap::new(),
            net: parts.net,
            mempool: parts.mempool,
            mempool_wake: parts.mempool_wake,
            status: parts.status,
            metrics: parts.metrics,
            tap: parts.tap,
            durable: parts.durable,
            me,
            by_addr: HashMap::new(),
            by_peer: HashMap::new(),
            connected: HashSet::new(),
            timer: None,
            uncommitted: HashMap::new(),
            uncommitted_reconfigure: HashSet::new(),
            idle_payload: None,
            commit_queue: VecDeque::new(),
            commit_fetch_inflight: false,
            outbox: Vec::new(),
            discards: Vec::new(),
            done_tx,
            done_rx,
            started: Instant::now(),
            last_commit: Instant::now(),
            sync_next_now: false,
            syncing: false,
            sync_inflight: false,
            sync_peer_turn: 0,
            sync_held: Vec::new(),
            cfg,
        };
        for bytes in d.store.uncommitted_blocks()? {
            if let Some(b) = v1::Block::decode(bytes.as_slice())
                .ok()
                .and_then(|w| wire::block_from_wire(&w).ok())
            {
                d.note_uncommitted(&b);
            }
        }
        d.execute_unexecuted()?;
        d.enqueue_commit_blocks(restored.unapplied);
        d.restore_local_batches()?;
        d.refresh_peers();
        d.publish_static_status();
        Ok(d)
    }

    /// Takes back the batches this node sealed before a restart and did not see committed:
    /// pending again, proposed again and disseminated again.
    fn restore_local_batches(&mut self) -> Result<(), DriverError> {
        let now = Instant::now();
        let mut last_seq = 0;
        let mut finished = Vec::new();
        for (seq, digest, bytes) in self.store.local_batches()? {
            last_seq = last_seq.max(seq);
            let Ok(txs) = SealedBatch::decode_txs(&bytes) else {
                finished.push(digest);
                continue;
            };
            let store = self.store.clone();
            let restored = lock(&self.mempool).restore_local(seq, &txs, now, |h| {
                store.tx_height(h).ok().flatten().is_some()
            });
            match restored {
                Some(_) => self
                    .outbox
                    .push(Outgoing::Gossip(Box::new(GossipBody::Batch(v1::Batch {
                        transactions: txs,
                    })))),
                None => finished.push(digest),
            }
        }
        if !finished.is_empty() {
            self.store.write_lazy(|w| {
                for d in &finished {
                    w.forget_local_batch(d)?;
                }
                Ok(())
            })?;
        }
        self.durable.send_replace(last_seq);
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// The set, schedule and chain block of the current epoch, for `/status`, `/validators` and
    /// the power gauges (after start and after every epoch change or URL update).
    fn publish_static_status(&mut self) {
        let ctx = self.core.context();
        let mut sorted = self
            .members
            .iter()
            .map(|m| ValidatorInfo {
                address: hex0x(&m.info.address.0),
                power: m.info.power,
                public_key: hex::encode(m.info.public_key.0),
                connection_url: m.url.clone(),
            })
            .collect::<Vec<_>>();
        sorted.sort_by(|a, b| a.address.cmp(&b.address));
        self.metrics.validator_power.clear();
        self.metrics
            .validators_power
            .set(i64::try_from(ctx.set().total_power()).unwrap_or(i64::MAX));
        for v in &sorted {
            self.metrics
                .validator_power
                .get_or_create(&crate::metrics::AddressLabel {
                    address: v.address.clone(),
                })
                .set(i64::try_from(v.power).unwrap_or(i64::MAX));
        }
        let member = self.is_member();
        let role = self.role();
        let epoch = ctx.epoch();
        let chain_block = ctx.chain_block();
        let mut st = match self.status.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        st.node_address = hex0x(&self.me.0);
        st.peer_id = self.net.local_peer_id.to_string();
        st.epoch = epoch;
        st.epoch_chain_block = chain_block;
        st.validators = sorted;
        st.member = member;
        st.role = role.to_string();
    }

    fn is_member(&self) -> bool {
        self.members.iter().any(|m| m.info.address == self.me)
    }

    /// `validator` (a member of the current epoch), `removed` (a member of an earlier epoch, no
    /// longer), or `observer` (never a member).
    fn role(&self) -> &'static str {
        if self.is_member() {
            "validator"
        } else if self.ever_member {
            "removed"
        } else {
            "observer"
        }
    }

    fn refresh_status(&mut self) {
        let height = match self.store.committed_height() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "status: cannot read the committed height");
                return;
            }
        };
        let block = self
            .store
            .committed_id(height)
            .ok()
            .flatten()
            .map(|id| hex0x(&id));
        let round = self.core.round();
        let epoch = self.core.epoch();
        let leader = hex0x(&self.core.context().set().leader(round).0);
        self.metrics
            .height
            .set(i64::try_from(height).unwrap_or(i64::MAX));
        self.metrics
            .round
            .set(i64::try_from(round).unwrap_or(i64::MAX));
        self.metrics
            .epoch
            .set(i64::try_from(epoch).unwrap_or(i64::MAX));
        self.metrics.syncing.set(u64::from(self.syncing));
        self.metrics.p2p_peers.set(self.connected.len() as i64);
        self.metrics
            .mempool_transactions
            .set(lock(&self.mempool).pending_len() as i64);
        let mut st = match self.status.write() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        st.epoch = epoch;
        st.round = round;
        st.committed_height = height;
        st.committed_block = block;
        st.leader = Some(leader);
        st.peers = self.connected.len() as u64;
        st.syncing = self.syncing;
    }

    /// Runs until `shutdown` turns true or the network stops. Storage failures stop the node.
    pub async fn run(
        mut self,
        mut events: mpsc::Receiver<NetEvent>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Result<(), DriverError> {
        self.spawn_oracle();
        self.dial_members().await;
        let now = self.now_ms();
        self.feed(Event::Start { now_ms: now })?;
        self.process_commits()?;
        self.flush().await;
        self.refresh_status();
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut sync_check = tokio::time::interval(self.cfg.sync_check);
        sync_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut redial = tokio::time::interval(Duration::from_secs(2));
        loop {
            let timer = self.timer;
            let idle = self.idle_payload;
            tokio::select! {
                _ = shutdown.changed() => {
                    if *shutdown.borrow() { break; }
                }
                ev = events.recv() => match ev {
                    Some(ev) => self.on_net(ev)?,
                    None => break,
                },
                Some(done) = self.done_rx.recv() => self.on_done(done)?,
                _ = async {
                    match timer {
                        Some((_, at)) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    if let Some((round, _)) = self.timer.take() {
                        let now = self.now_ms();
                        if round >= self.core.round() {
                            self.metrics.timeouts.inc();
                        }
                        self.feed(Event::TimerFired { round, now_ms: now })?;
                    }
                }
                _ = async {
                    match idle {
                        Some((_, _, at)) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => self.poll_idle_payload(true)?,
                _ = self.mempool_wake.notified() => self.seal_batches(false)?,
                _ = tick.tick() => {
                    self.seal_batches(true)?;
                    self.store.flush_executed_if_due()?;
                    self.reap_tasks()?;
                }
                _ = sync_check.tick() => self.maybe_sync(),
                _ = redial.tick() => self.dial_members().await,
            }
            self.poll_idle_payload(false)?;
            self.process_commits()?;
            self.flush().await;
            self.refresh_status();
        }
        if let Some(t) = self.oracle_task.take() {
            t.abort();
        }
        self.tasks.abort_all();
        self.store.flush_executed()?;
        self.store.wait_index_merge();
        tracing::info!("driver stopped");
        Ok(())
    }
}
