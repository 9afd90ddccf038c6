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

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consensus::block_tree::{Commit, CommitProof, CommittedBlock, Root};
use consensus::codec::{Decode, Encode};
use consensus::core::{Action, Config as CoreConfig, Core, DurableState, Event};
use consensus::crypto::{K256Signer, Scheme};
use consensus::domain::Domain;
use consensus::epoch::EpochChangeRecord;
use consensus::safety::SafetyState;
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
use crate::chain::{ChainSet, ChainView};
use crate::mempool::{self, Mempool, SealedBatch, TxHash};
use crate::metrics::Metrics;
use crate::net::{NetEvent, NetHandle, Responder, peer_id_from_public_key};
use crate::serve::{self, MAX_SYNC_BLOCKS, answer::ServeError};
use crate::storage::{StorageError, Store, meta};
use crate::tap::OutboundTap;
use crate::wire;

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
}

/// A validator with its registered connection URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Address, public key, power.
    pub info: MemberInfo,
    /// The connection URL (a multiaddr) registered on chain.
    pub url: String,
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
    heard: HashSet<PeerId>,
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
    discards: Vec<(bool, &'static str)>,
    done_tx: mpsc::Sender<Completion>,
    done_rx: mpsc::Receiver<Completion>,
    started: Instant,
    last_commit: Instant,
    syncing: bool,
    sync_inflight: bool,
    sync_peer_turn: usize,
}

enum Outgoing {
    SetMembers(HashSet<PeerId>),
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
            members,
            prev_members: Vec::new(),
            registered: cfg.members.clone(),
            epoch_b0: restored.epoch_b0,
            ever_member,
            heard: HashSet::new(),
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
            syncing: false,
            sync_inflight: false,
            sync_peer_turn: 0,
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
        let height = self.store.committed_height().unwrap_or(0);
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
        self.store.flush_executed()?;
        self.store.wait_index_merge();
        tracing::info!("driver stopped");
        Ok(())
    }

    /// Polls the chain's pinned head beside consensus; each reading comes back as a completion.
    fn spawn_oracle(&mut self) {
        let Some(chain) = self.chain.clone() else {
            return;
        };
        let done = self.done_tx.clone();
        let poll = self.cfg.oracle_poll.max(Duration::from_millis(50));
        self.oracle_task = Some(tokio::spawn(async move {
            let mut last_error: Option<String> = None;
            loop {
                match chain.pinned().await {
                    Ok(view) => {
                        if last_error.take().is_some() {
                            tracing::info!("oracle reads the chain again");
                        }
                        if done.send(Completion::Pinned(view)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        if last_error.as_deref() != Some(e.as_str()) {
                            tracing::warn!(error = %e, "oracle: cannot read the pinned head; epoch changes wait");
                        }
                        last_error = Some(e);
                    }
                }
                tokio::time::sleep(poll).await;
            }
        }));
    }

    /// A reading of the pinned head: URLs update at once (no epoch change needed), then the core
    /// hears the head and the set read there.
    fn on_pinned(&mut self, view: ChainSet) -> Result<(), DriverError> {
        let urls: HashMap<Address, String> = view
            .members
            .iter()
            .map(|m| (m.info.address, m.url.clone()))
            .collect();
        let mut changed_urls = Vec::new();
        for m in self.members.iter_mut().chain(self.prev_members.iter_mut()) {
            if let Some(u) = urls.get(&m.info.address)
                && *u != m.url
            {
                tracing::info!(member = %hex0x(&m.info.address.0), old = %m.url, new = %u, "connection URL changed");
                m.url = u.clone();
                changed_urls.push(u.clone());
            }
        }
        self.registered = view.members.clone();
        self.refresh_peers();
        if !changed_urls.is_empty() {
            for u in changed_urls {
                if let Ok(addr) = u.parse() {
                    self.outbox.push(Outgoing::Dial(addr));
                }
            }
            self.publish_static_status();
        }
        let now = self.now_ms();
        self.feed(Event::PinnedHead {
            number: view.number,
            hash: view.hash,
            members: view.members.into_iter().map(|m| m.info).collect(),
            now_ms: now,
        })
    }

    /// Rebuilds the address <-> PeerId maps (current and previous members, and every registered
    /// node) and tells the network who counts as a member for gossip and votes.
    fn refresh_peers(&mut self) {
        self.by_addr.clear();
        self.by_peer.clear();
        for m in self
            .registered
            .iter()
            .chain(self.prev_members.iter())
            .chain(self.members.iter())
        {
            if let Ok(p) = peer_id_from_public_key(&m.info.public_key.0) {
                self.by_addr.insert(m.info.address, p);
                self.by_peer.insert(p, m.info.address);
            }
        }
        let heard: HashSet<PeerId> = self
            .members
            .iter()
            .chain(self.prev_members.iter())
            .filter_map(|m| self.by_addr.get(&m.info.address).copied())
            .collect();
        // Every oracle poll lands here; the network hears of the set only when it changed.
        if heard != self.heard {
            self.heard = heard.clone();
            self.outbox.push(Outgoing::SetMembers(heard));
        }
    }

    /// The epoch ended at the record's B0 (already durable): the new set, schedule and peers
    /// apply now. Called in action order, so with several records the last one wins.
    fn on_epoch_changed(&mut self, r: &EpochChangeRecord) {
        let urls: HashMap<Address, String> = self
            .registered
            .iter()
            .chain(self.members.iter())
            .map(|m| (m.info.address, m.url.clone()))
            .collect();
        let was = self.is_member();
        self.prev_members = std::mem::take(&mut self.members);
        self.members = with_urls(r.members(), &urls);
        self.epoch_b0 = r.b0().map(Block::id);
        let is = self.is_member();
        self.ever_member |= is;
        self.metrics.epoch_changes.inc();
        let total: u64 = self.members.iter().map(|m| m.info.power).sum();
        tracing::info!(
            epoch = r.next_epoch(),
            chain_block = r.reconfigure().map_or(0, |rc| rc.chain_block_number),
            members = self.members.len(),
            total_power = total,
            "epoch change: new validator set applies"
        );
        if was && !is {
            tracing::warn!(
                epoch = r.next_epoch(),
                "this node was removed from the validator set: it no longer votes or proposes, it follows the chain as an observer"
            );
        } else if !was && is {
            tracing::info!(epoch = r.next_epoch(), "this node joined the validator set");
        }
        self.refresh_peers();
        self.publish_static_status();
    }

    async fn dial_members(&mut self) {
        for m in &self.members {
            if m.info.address == self.me {
                continue;
            }
            let Some(peer) = self.by_addr.get(&m.info.address) else {
                continue;
            };
            if self.connected.contains(peer) {
                continue;
            }
            if let Ok(addr) = m.url.parse() {
                let _ = self.net.dial(addr).await;
            }
        }
    }

    /// Feeds one event to the core and executes its actions.
    fn feed(&mut self, ev: Event) -> Result<(), DriverError> {
        let actions = self.core.handle(ev);
        self.execute(actions)
    }

    fn execute(&mut self, actions: Vec<Action>) -> Result<(), DriverError> {
        let mut persist = Vec::new();
        for a in actions {
            match a {
                Action::PersistBlock(_)
                | Action::PersistCertificates { .. }
                | Action::PersistSafety(_)
                | Action::PersistEpochChange(_) => persist.push(a),
                other => {
                    self.persist(&mut persist)?;
                    self.act(other)?;
                }
            }
        }
        self.persist(&mut persist)
    }

    /// Writes every queued persist action in one durable transaction.
    fn persist(&mut self, queue: &mut Vec<Action>) -> Result<(), DriverError> {
        if queue.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(queue);
        for a in &items {
            match a {
                Action::PersistBlock(b) => self.note_uncommitted(b),
                // Blocks of the ended epoch past B0 never commit: their batches are free to be
                // proposed again in the new epoch.
                Action::PersistEpochChange(_) => {
                    self.uncommitted.clear();
                    self.uncommitted_reconfigure.clear();
                }
                _ => {}
            }
        }
        self.store.write(|w| {
            for a in &items {
                match a {
                    Action::PersistEpochChange(r) => {
                        w.prune_pending(u64::MAX)?;
                        w.put_epoch_change(r.epoch, &r.encode())?;
                    }
                    Action::PersistBlock(b) => {
                        let bytes = wire::block_to_wire(b).encode_to_vec();
                        w.put_pending_block(&b.id().0, b.round(), &bytes)?;
                        // The QC in a block certifies its parent.
                        w.put_qc(&b.qc().block_id.0, &b.qc().encode())?;
                    }
                    Action::PersistCertificates { high_qc, high_tc } => {
                        w.put_meta(meta::HIGH_QC, &high_qc.encode())?;
                        if let Some(tc) = high_tc {
                            w.put_meta(meta::HIGH_TC, &tc.encode())?;
                        }
                    }
                    Action::PersistSafety(s) => w.put_meta(meta::SAFETY, &s.encode())?,
                    _ => {}
                }
            }
            Ok(())
        })?;
        for a in &items {
            if let Action::PersistEpochChange(r) = a {
                self.on_epoch_changed(r);
            }
        }
        Ok(())
    }

    fn note_uncommitted(&mut self, b: &Block) {
        self.uncommitted
            .insert(b.id(), (b.round(), b.payload().to_vec()));
        if b.header().reconfigure.is_some() {
            self.uncommitted_reconfigure.insert(b.id());
        }
    }

    /// Answers the core's payload request with the oldest proposable batches, or holds it back
    /// for `empty_block_interval` when the block would be empty and nothing uncommitted waits
    /// for the blocks after it (transactions or an epoch change): an idle cluster then runs a
    /// few rounds a second instead of as many as its CPU and fsyncs allow. `now`: answer even
    /// if empty.
    fn answer_payload(
        &mut self,
        round: u64,
        max_batches: usize,
        now: bool,
    ) -> Result<(), DriverError> {
        self.idle_payload = None;
        let exclude: HashSet<[u8; 32]> = self
            .uncommitted
            .values()
            .flat_map(|(_, ds)| ds.iter().map(|d| d.0))
            .collect();
        let batches: Vec<BatchDigest> = lock(&self.mempool)
            .payload(max_batches, &exclude)
            .into_iter()
            .map(BatchDigest)
            .collect();
        let idle = batches.is_empty()
            && exclude.is_empty()
            && self.uncommitted_reconfigure.is_empty()
            && !self.cfg.empty_block_interval.is_zero();
        if idle && !now {
            let at = tokio::time::Instant::now() + self.cfg.empty_block_interval;
            self.idle_payload = Some((round, max_batches, at));
            return Ok(());
        }
        self.feed(Event::PayloadReady { round, batches })
    }

    /// Answers a held-back payload request once transactions can be proposed, or when its
    /// interval is over (`due`), or drops it when the core has left its round.
    fn poll_idle_payload(&mut self, due: bool) -> Result<(), DriverError> {
        let Some((round, max_batches, _)) = self.idle_payload else {
            return Ok(());
        };
        if round != self.core.round() {
            self.idle_payload = None;
            return Ok(());
        }
        if due || lock(&self.mempool).has_proposable() {
            self.answer_payload(round, max_batches, true)?;
        }
        Ok(())
    }

    fn act(&mut self, a: Action) -> Result<(), DriverError> {
        match a {
            Action::Broadcast(message) => self.send_message(&message),
            Action::SetTimer { round, duration_ms } => {
                let at = tokio::time::Instant::now() + Duration::from_millis(duration_ms);
                self.timer = Some((round, at));
            }
            Action::RequestPayload { round, max_batches } => {
                self.answer_payload(round, max_batches, false)?;
            }
            Action::FetchBatches {
                block_id,
                digests,
                from,
            } => {
                let missing = self.missing_batches(&digests)?;
                if missing.is_empty() {
                    self.feed(Event::BatchesAvailable { block_id })?;
                } else {
                    let peers = self.peers_preferring(Some(from));
                    let store = self.store.clone();
                    let cfg = lock(&self.mempool).config().clone();
                    self.outbox.push(Outgoing::Fetch(Box::new(move |net, done| {
                        Box::pin(async move {
                            if fetch_batches(&net, &store, &cfg, &peers, missing).await {
                                let _ = done.send(Completion::BatchesAvailable(block_id)).await;
                            }
                        })
                    })));
                }
            }
            Action::FetchBlocks {
                block_id,
                stop_at_round,
                max_blocks,
                from,
            } => {
                let peers = self.peers_preferring(from);
                let by_peer = self.by_peer.clone();
                self.outbox.push(Outgoing::Fetch(Box::new(move |net, done| {
                    Box::pin(async move {
                        let req = v1::BlockRequest {
                            block_id: block_id.0.to_vec(),
                            stop_at_round,
                            max_blocks: u32::try_from(max_blocks).unwrap_or(u32::MAX),
                        };
                        for peer in peers {
                            match net.request(peer, RequestBody::Blocks(req.clone())).await {
                                Ok(ResponseBody::Blocks(resp)) => {
                                    let blocks: Result<Vec<Block>, _> =
                                        resp.blocks.iter().map(wire::block_from_wire).collect();
                                    if let Ok(blocks) = blocks
                                        && !blocks.is_empty()
                                    {
                                        let from = by_peer.get(&peer).copied();
                                        let _ =
                                            done.send(Completion::Blocks { from, blocks }).await;
                                        return;
                                    }
                                }
                                Ok(_) => {}
                                Err(e) => tracing::debug!(%peer, error = %e, "block fetch failed"),
                            }
                        }
                    })
                })));
            }
            Action::Commit(c) => self.enqueue_commit(c),
            Action::Discarded(d) => {
                if d.reject {
                    self.metrics.reject(d.reason);
                } else {
                    self.metrics.ignore(d.reason);
                }
                self.discards.push((d.reject, d.reason));
            }
            Action::Evidence(e) => {
                let signer = hex0x(&e.signer.0);
                tracing::warn!(%signer, epoch = e.epoch, round = e.round, kind = ?e.kind, "equivocation");
                self.metrics
                    .evidence
                    .get_or_create(&crate::metrics::SignerLabel { signer })
                    .inc();
            }
            Action::PersistBlock(_)
            | Action::PersistCertificates { .. }
            | Action::PersistSafety(_)
            | Action::PersistEpochChange(_) => {}
            Action::ReadChainSet { number, hash } => self.read_chain_set(number, hash)?,
            Action::BroadcastEpochChange(r) => {
                self.outbox
                    .push(Outgoing::Gossip(Box::new(GossipBody::EpochChange(
                        wire::record_to_wire(&r),
                    ))));
            }
            Action::SendEpochChanges { to, since_epoch } => {
                // Best effort on the cluster topic (gossip drops a repeat it still remembers);
                // the lagging node also fetches the records itself once it hears a later epoch.
                tracing::debug!(to = %hex0x(&to.0), since_epoch, "re-broadcasting epoch-change records for a lagging member");
                for r in self.stored_records(since_epoch)? {
                    self.outbox
                        .push(Outgoing::Gossip(Box::new(GossipBody::EpochChange(r))));
                }
            }
            Action::FetchEpochChanges { since_epoch, from } => {
                let peers = self.peers_preferring(from);
                let by_peer = self.by_peer.clone();
                self.outbox.push(Outgoing::Fetch(Box::new(move |net, done| {
                    Box::pin(async move {
                        let req = v1::SyncRequest {
                            from_height: u64::MAX,
                            max_blocks: 0,
                            known_epoch: since_epoch,
                        };
                        for peer in peers.into_iter().take(4) {
                            if let Ok(ResponseBody::Sync(resp)) =
                                net.request(peer, RequestBody::Sync(req)).await
                                && !resp.records.is_empty()
                            {
                                let from = by_peer.get(&peer).copied();
                                let _ = done
                                    .send(Completion::Records {
                                        from,
                                        records: resp.records,
                                    })
                                    .await;
                                return;
                            }
                        }
                    })
                })));
            }
        }
        Ok(())
    }

    /// Answers the core's `ReadChainSet` from the chain (no chain: nothing can be checked).
    fn read_chain_set(&mut self, number: u64, hash: [u8; 32]) -> Result<(), DriverError> {
        let Some(chain) = self.chain.clone() else {
            return self.feed(Event::ChainSet {
                number,
                hash,
                members: None,
            });
        };
        self.outbox.push(Outgoing::Fetch(Box::new(move |_net, done| {
            Box::pin(async move {
                let members = match chain.set_at(number, hash).await {
                    Ok(Some(set)) => Some(set.members.into_iter().map(|m| m.info).collect()),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(number, error = %e, "cannot read the validator set a Reconfigure names");
                        None
                    }
                };
                let _ = done
                    .send(Completion::ChainSet {
                        number,
                        hash,
                        members,
                    })
                    .await;
            })
        })));
        Ok(())
    }

    /// The stored epoch-change records of epochs `since..`, as wire messages (bounded).
    fn stored_records(&self, since: u64) -> Result<Vec<v1::EpochChangeRecord>, DriverError> {
        serve::answer::stored_records(&self.store, since).map_err(|e| match e {
            ServeError::Storage(e) => DriverError::Storage(e),
            ServeError::Corrupt(what) => DriverError::Corrupt(what),
        })
    }

    /// Members to ask, the hinted one first, then connected ones, then the rest.
    fn peers_preferring(&self, hint: Option<Address>) -> Vec<PeerId> {
        let mut out = Vec::new();
        if let Some(p) = hint.and_then(|a| self.by_addr.get(&a))
            && hint != Some(self.me)
        {
            out.push(*p);
        }
        let mut rest: Vec<PeerId> = self
            .by_peer
            .iter()
            .filter(|(_, a)| **a != self.me)
            .map(|(p, _)| *p)
            .filter(|p| !out.contains(p))
            .collect();
        rest.sort_by_key(|p| !self.connected.contains(p));
        out.extend(rest);
        out
    }

    fn missing_batches(&self, digests: &[BatchDigest]) -> Result<Vec<[u8; 32]>, DriverError> {
        let mut missing = Vec::new();
        for d in digests {
            if !self.store.has_batch(&d.0)? {
                missing.push(d.0);
            }
        }
        Ok(missing)
    }

    fn enqueue_commit(&mut self, c: Commit) {
        let n = c.blocks.len();
        for (i, cb) in c.blocks.into_iter().enumerate() {
            let proof = (i + 1 == n).then(|| c.proof.clone());
            self.commit_queue.push_back((cb, proof));
        }
    }

    /// Executes the committed heights whose effects a crash lost (they were waiting to be
    /// written in a group, see [`crate::exec_overlay`]), from the stored blocks and batches.
    fn execute_unexecuted(&mut self) -> Result<(), DriverError> {
        let committed = self.store.committed_height()?;
        let from = self.store.executed_height() + 1;
        if from > committed {
            return Ok(());
        }
        tracing::info!(
            from,
            to = committed,
            "executing committed blocks again after a restart"
        );
        for height in from..=committed {
            let block = self
                .store
                .committed_id(height)?
                .and_then(|id| self.store.get_block(&id).transpose())
                .transpose()?
                .as_deref()
                .and_then(decode_block)
                .ok_or(DriverError::Corrupt("committed block"))?;
            let digests: Vec<[u8; 32]> = block.payload().iter().map(|d| d.0).collect();
            app::execute_committed(&self.store, height, &digests)?;
        }
        self.store.flush_executed()?;
        Ok(())
    }

    /// Queues blocks a restart found committed by the core but not yet applied to the ledger.
    fn enqueue_commit_blocks(&mut self, blocks: Vec<CommittedBlock>) {
        for cb in blocks {
            self.commit_queue.push_back((cb, None));
        }
    }

    /// Applies queued commits in height order, fetching missing batches first.
    fn process_commits(&mut self) -> Result<(), DriverError> {
        while let Some((cb, proof)) = self.commit_queue.front() {
            let committed = self.store.committed_height()?;
            if cb.height <= committed {
                self.commit_queue.pop_front();
                continue;
            }
            if cb.height != committed + 1 {
                // A gap (a sync page applied meanwhile moved the ledger): the rest is stale.
                tracing::warn!(
                    height = cb.height,
                    committed,
                    "commit out of order; dropping queued commits"
                );
                self.commit_queue.clear();
                break;
            }
            let missing = self.missing_batches(cb.block.payload())?;
            if !missing.is_empty() {
                if !self.commit_fetch_inflight {
                    self.commit_fetch_inflight = true;
                    let peers = self.peers_preferring(Some(cb.block.proposer()));
                    let store = self.store.clone();
                    let cfg = lock(&self.mempool).config().clone();
                    self.outbox.push(Outgoing::Fetch(Box::new(move |net, done| {
                        Box::pin(async move {
                            let _ = fetch_batches(&net, &store, &cfg, &peers, missing).await;
                            let _ = done.send(Completion::CommitBatchesReady).await;
                        })
                    })));
                }
                break;
            }
            let block = cb.block.clone();
            let height = cb.height;
            let proof_bytes = proof
                .as_ref()
                .map(|p| wire::proof_to_wire(p).encode_to_vec())
                .unwrap_or_default();
            self.apply_committed(height, &block, &proof_bytes)?;
            self.commit_queue.pop_front();
        }
        Ok(())
    }

    fn apply_committed(
        &mut self,
        height: u64,
        block: &Block,
        proof_bytes: &[u8],
    ) -> Result<(), DriverError> {
        let digests: Vec<[u8; 32]> = block.payload().iter().map(|d| d.0).collect();
        let known_hashes: Vec<Option<Vec<TxHash>>> = {
            let pool = lock(&self.mempool);
            digests.iter().map(|d| pool.batch_tx_hashes(d)).collect()
        };
        let block_bytes = wire::block_to_wire(block).encode_to_vec();
        let result = app::commit_block(
            &self.store,
            CommitInput {
                height,
                id: &block.id().0,
                block: &block_bytes,
                proof: proof_bytes,
                batch_digests: &digests,
                known_hashes: &known_hashes,
                prune_round: Some(block.round()),
            },
        )?;
        let root_round = block.round();
        self.uncommitted.retain(|_, (r, _)| *r > root_round);
        let uncommitted = &self.uncommitted;
        self.uncommitted_reconfigure
            .retain(|id| uncommitted.contains_key(id));
        let now = Instant::now();
        let latencies = lock(&self.mempool).on_committed(&digests, &result.committed, now);
        for l in latencies {
            self.metrics.commit_latency.observe(l.as_secs_f64());
        }
        self.metrics
            .block_interval
            .observe(now.duration_since(self.last_commit).as_secs_f64());
        self.last_commit = now;
        tracing::debug!(
            height,
            round = block.round(),
            txs = result.committed.len(),
            "committed"
        );
        Ok(())
    }

    /// Seals due batches, stores them and gossips them to the validators.
    fn seal_batches(&mut self, by_time: bool) -> Result<(), DriverError> {
        let (sealed, last_seq) = {
            let mut pool = lock(&self.mempool);
            if by_time {
                pool.tick(Instant::now());
            }
            (pool.take_sealed(), pool.sealed_seq())
        };
        if sealed.is_empty() {
            return Ok(());
        }
        // Durable before the clients hear 202: an acknowledged transaction survives a crash.
        let first_seq = last_seq + 1 - sealed.len() as u64;
        self.store.write(|w| {
            for (k, b) in sealed.iter().enumerate() {
                w.put_batch(&b.digest, &b.encoded)?;
                w.put_local_batch(&b.digest, first_seq + k as u64)?;
            }
            Ok(())
        })?;
        self.durable.send_replace(last_seq);
        for b in sealed {
            // The canonical bytes go out as they are (no decode and re-encode per transaction).
            self.outbox
                .push(Outgoing::PushBatch(proto::batch_gossip(&b.encoded)));
        }
        Ok(())
    }

    /// Queues a consensus message: a vote to every other current member's peer (request-response),
    /// anything else by gossip; then whatever the tap adds, the same way.
    fn send_message(&mut self, message: &Message) {
        self.queue_one(message);
        if let Some(tap) = self.tap.clone() {
            for extra in tap.extra(message) {
                self.queue_one(&extra);
            }
        }
    }

    fn queue_one(&mut self, message: &Message) {
        let out = match message {
            Message::Vote(v) => {
                // Every member aggregates votes into QCs (so one forms even when the next leader
                // is down): the vote goes to each other current member directly.
                let vote = wire::vote_to_wire(v);
                for m in &self.members {
                    if m.info.address == self.me {
                        continue;
                    }
                    if let Some(peer) = self.by_addr.get(&m.info.address) {
                        self.outbox.push(Outgoing::Vote(*peer, vote.clone()));
                    }
                }
                return;
            }
            Message::Proposal(p) => {
                Outgoing::Gossip(Box::new(GossipBody::Proposal(wire::proposal_to_wire(p))))
            }
            Message::Timeout(t) => {
                Outgoing::Gossip(Box::new(GossipBody::Timeout(wire::timeout_to_wire(t))))
            }
            Message::TimeoutCert(tc) => {
                Outgoing::Gossip(Box::new(GossipBody::Tc(wire::tc_to_wire(tc))))
            }
        };
        self.outbox.push(out);
    }

    /// Sends what the executed actions queued (after their persistence).
    async fn flush(&mut self) {
        for o in std::mem::take(&mut self.outbox) {
            match o {
                Outgoing::SetMembers(m) => {
                    let _ = self.net.set_members(m).await;
                }
                Outgoing::Dial(addr) => {
                    let _ = self.net.dial(addr).await;
                }
                Outgoing::Vote(peer, vote) => {
                    let net = self.net.clone();
                    tokio::spawn(async move {
                        if let Err(e) = net.request(peer, RequestBody::Vote(vote)).await {
                            tracing::debug!(%peer, error = %e, "vote not delivered");
                        }
                    });
                }
                Outgoing::Gossip(body) => {
                    if let Err(e) = self.net.publish(*body).await {
                        tracing::debug!(error = %e, "publish failed");
                    }
                }
                Outgoing::PushBatch(bytes) => {
                    if let Err(e) = self.net.push_batch(bytes).await {
                        tracing::debug!(error = %e, "batch push failed");
                    }
                }
                Outgoing::Fetch(f) => {
                    tokio::spawn(f(self.net.clone(), self.done_tx.clone()));
                }
            }
        }
    }

    fn on_done(&mut self, done: Completion) -> Result<(), DriverError> {
        match done {
            Completion::Blocks { from, blocks } => self.feed(Event::BlocksFetched { from, blocks }),
            Completion::BatchesAvailable(block_id) => {
                self.feed(Event::BatchesAvailable { block_id })
            }
            Completion::CommitBatchesReady => {
                self.commit_fetch_inflight = false;
                Ok(())
            }
            Completion::SyncPage(page) => {
                self.sync_inflight = false;
                self.apply_sync_page(page)
            }
            Completion::Pinned(view) => self.on_pinned(view),
            Completion::ChainSet {
                number,
                hash,
                members,
            } => self.feed(Event::ChainSet {
                number,
                hash,
                members,
            }),
            Completion::Records { from, records } => {
                let records: Vec<EpochChangeRecord> = records
                    .iter()
                    .filter_map(|r| wire::record_from_wire(r).ok())
                    .collect();
                if records.is_empty() {
                    return Ok(());
                }
                self.feed(Event::EpochChanges { from, records })
            }
        }
    }

    fn verdict(&mut self) -> MessageAcceptance {
        let d = std::mem::take(&mut self.discards);
        if d.iter().any(|(reject, _)| *reject) {
            MessageAcceptance::Reject
        } else if d.is_empty() {
            MessageAcceptance::Accept
        } else {
            MessageAcceptance::Ignore
        }
    }

    fn on_net(&mut self, ev: NetEvent) -> Result<(), DriverError> {
        match ev {
            NetEvent::PeerConnected(p) => {
                self.connected.insert(p);
            }
            NetEvent::PeerDisconnected(p) => {
                self.connected.remove(&p);
            }
            NetEvent::PeerSubscribed(..) => {}
            NetEvent::Gossip {
                id,
                propagation_source,
                source,
                from_member,
                body,
            } => {
                let from = source
                    .and_then(|s| self.by_peer.get(&s).copied())
                    .unwrap_or_default();
                let verdict = self.on_gossip(*body, from)?;
                let verdict = match verdict {
                    MessageAcceptance::Accept if !from_member => {
                        self.metrics.ignore("non_member");
                        MessageAcceptance::Ignore
                    }
                    v => v,
                };
                self.report(id, propagation_source, verdict);
            }
            NetEvent::Batch {
                from,
                gossip_id,
                canonical,
            } => {
                let origin = self.by_peer.get(&from).copied();
                let verdict = self.on_batch(canonical, origin)?;
                if let Some(id) = gossip_id {
                    self.report(id, from, verdict);
                }
            }
            NetEvent::Vote {
                peer,
                vote,
                responder,
            } => self.on_vote(peer, vote, responder)?,
        }
        Ok(())
    }

    fn report(&self, id: MessageId, source: PeerId, acceptance: MessageAcceptance) {
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net.report(id, source, acceptance).await;
        });
    }

    /// A member's batch, as canonical bytes: refused unless the mempool has room for it and
    /// the member is within its share (before it is hashed or written), checked against the
    /// batch limits, stored (lazily: it can be fetched again) and offered to the mempool.
    fn on_batch(
        &mut self,
        canonical: Vec<u8>,
        origin: Option<Address>,
    ) -> Result<MessageAcceptance, DriverError> {
        let Some(origin) = origin else {
            self.metrics.ignore("batch_from_unknown_member");
            return Ok(MessageAcceptance::Ignore);
        };
        let members = self.members.len();
        let cfg = {
            let pool = lock(&self.mempool);
            if let Err(refusal) = pool.admit_remote(origin, members) {
                self.metrics.ignore(refusal.reason());
                return Ok(MessageAcceptance::Ignore);
            }
            pool.config().clone()
        };
        Ok(match SealedBatch::from_canonical(canonical, &cfg) {
            Ok(batch) => {
                if lock(&self.mempool).knows_batch(&batch.digest).is_ok() {
                    self.store.put_batch_lazy(&batch.digest, &batch.encoded)?;
                    if let Err(refusal) =
                        lock(&self.mempool).add_remote_from(&batch, origin, members)
                    {
                        self.metrics.ignore(refusal.reason());
                    }
                }
                // Kept, but not forwarded: its publisher pushes it to every member directly
                // (a stream per member; older nodes flood-publish it on the batch topic), so a
                // forwarded copy would only make each node receive, decrypt and hash every batch
                // once per member. A node that missed one fetches it before voting. The verdict
                // only matters for a batch that came by gossip.
                MessageAcceptance::Ignore
            }
            Err(_) => {
                self.metrics.reject("bad_batch");
                MessageAcceptance::Reject
            }
        })
    }

    fn on_gossip(
        &mut self,
        body: GossipBody,
        from: Address,
    ) -> Result<MessageAcceptance, DriverError> {
        self.discards.clear();
        let message = match body {
            GossipBody::Proposal(p) => wire::proposal_from_wire(&p).map(Message::Proposal),
            GossipBody::Timeout(t) => wire::timeout_from_wire(&t).map(Message::Timeout),
            GossipBody::Tc(tc) => wire::tc_from_wire(&tc).map(Message::TimeoutCert),
            GossipBody::Batch(b) => {
                // An envelope the network could not take apart as canonical bytes (another
                // encoder's field order, say): re-encode and check it the same way.
                let origin = (from != Address::default()).then_some(from);
                return self.on_batch(mempool::encode_batch(&b.transactions), origin);
            }
            GossipBody::EpochChange(r) => {
                return Ok(match wire::record_from_wire(&r) {
                    Ok(record) => {
                        self.feed(Event::EpochChanges {
                            from: (from != Address::default()).then_some(from),
                            records: vec![record],
                        })?;
                        self.verdict()
                    }
                    Err(_) => {
                        self.metrics.reject("malformed");
                        MessageAcceptance::Reject
                    }
                });
            }
            GossipBody::Evidence(_) => {
                // Evidence is recorded locally by each node's core; relayed copies are not used.
                self.metrics.ignore("unsupported");
                return Ok(MessageAcceptance::Ignore);
            }
        };
        match message {
            Ok(m) => {
                self.feed(Event::Message { from, message: m })?;
                Ok(self.verdict())
            }
            Err(_) => {
                self.metrics.reject("malformed");
                Ok(MessageAcceptance::Reject)
            }
        }
    }

    fn respond(&self, responder: Responder, body: ResponseBody) {
        let net = self.net.clone();
        tokio::spawn(async move {
            let _ = net.respond(responder, body).await;
        });
    }

    /// A member's vote (the network refuses others'); batch, block and sync requests are
    /// answered by [`crate::serve`], off this task.
    fn on_vote(
        &mut self,
        peer: PeerId,
        vote: v1::Vote,
        responder: Responder,
    ) -> Result<(), DriverError> {
        match wire::vote_from_wire(&vote) {
            Ok(v) => {
                let from = self.by_peer.get(&peer).copied().unwrap_or_default();
                self.discards.clear();
                self.feed(Event::Message {
                    from,
                    message: Message::Vote(v),
                })?;
                self.discards.clear();
                self.respond(responder, ResponseBody::Ack(v1::Ack {}));
            }
            Err(e) => {
                self.metrics.reject("malformed");
                self.respond(responder, ResponseBody::Error(e.to_string()));
            }
        }
        Ok(())
    }

    /// Starts a sync round when no block was committed for a while.
    fn maybe_sync(&mut self) {
        if self.sync_inflight || self.last_commit.elapsed() < self.cfg.stall_after {
            return;
        }
        let peers: Vec<PeerId> = self
            .by_peer
            .iter()
            .filter(|(p, a)| **a != self.me && self.connected.contains(p))
            .map(|(p, _)| *p)
            .collect();
        if peers.is_empty() {
            return;
        }
        let mut peers = peers;
        peers.sort();
        let peer = peers[self.sync_peer_turn % peers.len()];
        self.sync_peer_turn = self.sync_peer_turn.wrapping_add(1);
        let from = self.store.committed_height().unwrap_or(0) + 1;
        let known_epoch = self.core.epoch();
        self.sync_inflight = true;
        self.outbox.push(Outgoing::Fetch(Box::new(move |net, done| {
            Box::pin(async move {
                let req = v1::SyncRequest {
                    from_height: from,
                    max_blocks: MAX_SYNC_BLOCKS,
                    known_epoch,
                };
                let page = match net.request(peer, RequestBody::Sync(req)).await {
                    Ok(ResponseBody::Sync(s)) => Some(Box::new(s)),
                    _ => None,
                };
                let _ = done.send(Completion::SyncPage(page)).await;
            })
        })));
    }

    /// Verifies a sync page and applies it, then restarts the core from the new root. Blocks
    /// are checked by hash links from the committed root, each epoch's blocks against that
    /// epoch's set: a block is proved by its commit proof (QC verified), or, for the block that
    /// ended an epoch, by that epoch's record, which also yields the next epoch's context.
    fn apply_sync_page(&mut self, page: Option<Box<v1::SyncResponse>>) -> Result<(), DriverError> {
        let Some(page) = page else {
            return Ok(());
        };
        let records: HashMap<u64, EpochChangeRecord> = page
            .records
            .iter()
            .filter_map(|r| wire::record_from_wire(r).ok())
            .map(|r| (r.epoch, r))
            .collect();
        let committed = self.store.committed_height()?;
        let core_ctx = self.core.context();
        // The context of the epoch being verified: the core's, then each next one a record yields.
        let mut next_ctx: Option<EpochContext> = None;
        let tip = self.store.committed_id(committed)?.map(BlockId);
        let mut expect_parent = match tip {
            Some(id) if Some(id) != self.epoch_b0 => id,
            _ => core_ctx.genesis_block(),
        };
        // The ledger may end at B0 with its record lost (crash): the page's record ends the epoch.
        let mut new_records: Vec<(u64, EpochChangeRecord)> = Vec::new();
        if let Some(id) = tip
            && Some(id) != self.epoch_b0
            && let Some(r) = records.get(&core_ctx.epoch())
            && r.b0().map(Block::id) == Some(id)
            && let Ok(next) = r.next_context(core_ctx)
        {
            new_records.push((committed, r.clone()));
            expect_parent = next.genesis_block();
            next_ctx = Some(next);
        }
        let mut verified: Vec<(u64, Block, Option<CommitProof>)> = Vec::new();
        let mut last_proved: Option<usize> = None;
        for (next_height, cb) in (committed + 1..).zip(page.blocks.iter()) {
            if cb.height != next_height {
                break;
            }
            let Some(b) = cb
                .block
                .as_ref()
                .and_then(|b| wire::block_from_wire(b).ok())
            else {
                break;
            };
            let ctx = next_ctx.as_ref().unwrap_or(core_ctx);
            if b.parent_id() != expect_parent || b.epoch() != ctx.epoch() {
                break;
            }
            let proof = cb
                .proof
                .as_ref()
                .and_then(|p| wire::proof_from_wire(p).ok());
            let direct = proof.as_ref().is_some_and(|p| proves_directly(&b, p, ctx));
            let id = b.id();
            let ends_epoch = b.header().reconfigure.is_some();
            verified.push((cb.height, b, proof));
            if direct {
                last_proved = Some(verified.len() - 1);
            }
            if !ends_epoch {
                expect_parent = id;
                continue;
            }
            // A committed Reconfigure block is the epoch's B0: nothing after it in this epoch.
            let Some(r) = records
                .get(&ctx.epoch())
                .filter(|r| r.b0().map(Block::id) == Some(id))
            else {
                break;
            };
            match r.next_context(ctx) {
                Ok(next) => {
                    last_proved = Some(verified.len() - 1);
                    new_records.push((cb.height, r.clone()));
                    expect_parent = next.genesis_block();
                    next_ctx = Some(next);
                }
                Err(e) => {
                    tracing::warn!(epoch = r.epoch, error = %e, "sync: epoch-change record does not verify");
                    break;
                }
            }
        }
        let reached_epoch = next_ctx.as_ref().unwrap_or(core_ctx).epoch();
        let keep = last_proved.map_or(0, |i| i + 1);
        verified.truncate(keep);
        new_records.retain(|(h, _)| *h <= committed + keep as u64);
        if verified.is_empty() && new_records.is_empty() {
            self.syncing = false;
            return Ok(());
        }
        let mut missing = Vec::new();
        for (_, b, _) in &verified {
            missing.extend(self.missing_batches(b.payload())?);
        }
        if !missing.is_empty() {
            // Fetch the batches first; the next sync round applies the page.
            self.syncing = true;
            let peers = self.peers_preferring(None);
            let store = self.store.clone();
            let cfg = lock(&self.mempool).config().clone();
            self.outbox
                .push(Outgoing::Fetch(Box::new(move |net, _done| {
                    Box::pin(async move {
                        let _ = fetch_batches(&net, &store, &cfg, &peers, missing).await;
                    })
                })));
            return Ok(());
        }
        self.syncing = true;
        let n = verified.len();
        let mut pending_records = new_records.into_iter().peekable();
        // A record whose B0 is already the ledger's tip.
        while let Some((_, r)) = pending_records.next_if(|(h, _)| *h <= committed) {
            self.store_synced_record(&r)?;
        }
        for (height, b, proof) in verified {
            let proof_bytes = proof
                .as_ref()
                .map(|p| wire::proof_to_wire(p).encode_to_vec())
                .unwrap_or_default();
            self.apply_committed(height, &b, &proof_bytes)?;
            while let Some((_, r)) = pending_records.next_if(|(h, _)| *h == height) {
                self.store_synced_record(&r)?;
            }
        }
        tracing::info!(
            blocks = n,
            epoch = reached_epoch,
            "applied a sync page; restarting consensus from the new root"
        );
        self.commit_queue.clear();
        let (core, restored) = build_core(&self.cfg, &self.store)?;
        self.core = core;
        self.epoch_b0 = restored.epoch_b0;
        self.enqueue_commit_blocks(restored.unapplied);
        let now = self.now_ms();
        self.feed(Event::Start { now_ms: now })?;
        // Keep syncing while pages come full; the stall timer triggers the next page.
        self.last_commit = Instant::now() - self.cfg.stall_after;
        if n < MAX_SYNC_BLOCKS as usize / 2 {
            self.syncing = false;
            self.last_commit = Instant::now();
        }
        Ok(())
    }

    /// Stores a record verified during sync (its B0 is in the ledger) and applies the epoch.
    fn store_synced_record(&mut self, r: &EpochChangeRecord) -> Result<(), DriverError> {
        self.store.write(|w| {
            w.prune_pending(u64::MAX)?;
            w.put_epoch_change(r.epoch, &r.encode())
        })?;
        self.uncommitted.clear();
        self.uncommitted_reconfigure.clear();
        self.on_epoch_changed(r);
        Ok(())
    }
}

/// Members with the URLs known for them (empty until the chain shows one).
fn with_urls(infos: &[MemberInfo], urls: &HashMap<Address, String>) -> Vec<Member> {
    infos
        .iter()
        .map(|i| Member {
            info: i.clone(),
            url: urls.get(&i.address).cloned().unwrap_or_default(),
        })
        .collect()
}

/// What a restart learned besides the core.
struct Restored {
    /// The B0 that started the current epoch (None in epoch 0).
    epoch_b0: Option<BlockId>,
    /// Blocks the core counts as committed but the ledger does not hold yet (a crash between
    /// an epoch change and applying B0 and its ancestors), oldest first.
    unapplied: Vec<CommittedBlock>,
}

/// Epoch 0's context, from the genesis file's set.
fn base_context(cfg: &DriverConfig) -> Result<EpochContext, DriverError> {
    let infos: Vec<MemberInfo> = cfg.members.iter().map(|m| m.info.clone()).collect();
    // The same reduction every node applies to a chain view beyond the set bounds.
    let set = ValidatorSet::from_members(consensus::validators::bounded_members(infos))
        .map_err(|e| DriverError::Set(e.to_string()))?;
    let domain = Domain::new(cfg.chain_id, Address(cfg.contract), cfg.genesis_id);
    let genesis = domain.genesis_block_id(0, &cfg.genesis_chain_block_hash, &set.hash());
    Ok(
        EpochContext::new(0, genesis, set, domain, Scheme::Secp256k1)
            .with_chain_block(cfg.genesis_chain_block_number),
    )
}

/// Whether a sync page's proof shows `b` committed by a direct 2-chain: its child one round
/// later, certified by a QC valid in `ctx`. The peer's rounds are compared without arithmetic that
/// could overflow, and the QC is checked last.
fn proves_directly(b: &Block, p: &CommitProof, ctx: &EpochContext) -> bool {
    p.certified.parent_id() == b.id()
        && b.round().checked_add(1) == Some(p.certified.round())
        && p.qc.block_id == p.certified.id()
        && ctx.verify_qc(&p.qc).is_ok()
}

fn decode_block(bytes: &[u8]) -> Option<Block> {
    v1::Block::decode(bytes)
        .ok()
        .and_then(|w| wire::block_from_wire(&w).ok())
}

/// The blocks from the ledger's tip (excluded) up to `b0` (included), oldest first, from the
/// block store; `None` if one is missing.
fn blocks_up_to(
    store: &Store,
    b0: BlockId,
    tip: Option<BlockId>,
) -> Result<Option<Vec<Block>>, DriverError> {
    let mut out = Vec::new();
    let mut id = b0;
    while Some(id) != tip {
        let Some(b) = store.get_block(&id.0)?.as_deref().and_then(decode_block) else {
            return Ok(None);
        };
        id = b.parent_id();
        out.push(b);
        if out.len() > consensus::epoch::MAX_RECORD_PATH * 16 {
            return Ok(None);
        }
    }
    out.reverse();
    Ok(Some(out))
}

/// Builds the core from what the store holds: epoch 0 from the genesis file, then every stored
/// epoch-change record in order, then the safety state, certificates and blocks.
fn build_core(cfg: &DriverConfig, store: &Store) -> Result<(Core, Restored), DriverError> {
    let mut ctx = base_context(cfg)?;
    let mut epoch_b0 = None;
    let mut unapplied = Vec::new();
    let mut height = store.committed_height()?;
    let tip = store.committed_id(height)?.map(BlockId);
    for (_, bytes) in store.epoch_changes_since(0, usize::MAX)? {
        let r = EpochChangeRecord::decode(&bytes)
            .map_err(|_| DriverError::Corrupt("epoch-change record"))?;
        if r.epoch != ctx.epoch() || !unapplied.is_empty() {
            break;
        }
        let Some(b0) = r.b0().map(Block::id) else {
            break;
        };
        if store.height_of(&b0.0)?.is_none() {
            // B0 was committed by the core but not applied yet: queue it with its ancestors.
            match blocks_up_to(store, b0, tip)? {
                Some(blocks) => {
                    for b in blocks {
                        height += 1;
                        unapplied.push(CommittedBlock { height, block: b });
                    }
                }
                None => break,
            }
        }
        ctx = r
            .next_context(&ctx)
            .map_err(|e| DriverError::Core(format!("stored record of epoch {}: {e}", r.epoch)))?;
        epoch_b0 = Some(b0);
    }
    let signer =
        K256Signer::from_secret(&cfg.secret).map_err(|e| DriverError::Core(e.to_string()))?;
    let safety = match store.get_meta(meta::SAFETY)? {
        Some(b) => SafetyState::decode(&b).map_err(|_| DriverError::Corrupt("safety state"))?,
        None => SafetyState::new(0),
    };
    let high_qc = match store.get_meta(meta::HIGH_QC)? {
        Some(b) => Some(QuorumCert::decode(&b).map_err(|_| DriverError::Corrupt("high QC"))?),
        None => None,
    };
    let high_tc = match store.get_meta(meta::HIGH_TC)? {
        Some(b) => Some(TimeoutCert::decode(&b).map_err(|_| DriverError::Corrupt("high TC"))?),
        None => None,
    };
    let root = if height == 0 {
        None
    } else if !unapplied.is_empty() {
        Some(Root {
            id: ctx.genesis_block(),
            round: 0,
            height,
        })
    } else {
        let id = tip.ok_or(DriverError::Corrupt("committed index"))?;
        if Some(id) == epoch_b0 {
            Some(Root {
                id: ctx.genesis_block(),
                round: 0,
                height,
            })
        } else {
            let bytes = store
                .get_block(&id.0)?
                .ok_or(DriverError::Corrupt("committed block"))?;
            let b = decode_block(&bytes).ok_or(DriverError::Corrupt("committed block"))?;
            Some(Root {
                id,
                round: b.round(),
                height,
            })
        }
    };
    let blocks = store
        .uncommitted_blocks()?
        .into_iter()
        .filter_map(|bytes| decode_block(&bytes))
        .filter(|b| b.epoch() == ctx.epoch())
        .collect();
    let durable = DurableState {
        safety,
        root,
        blocks,
        high_qc,
        high_tc,
    };
    let core = Core::new(cfg.core.clone(), ctx, Box::new(signer), durable)
        .map_err(|e| DriverError::Core(e.to_string()))?;
    Ok((
        core,
        Restored {
            epoch_b0,
            unapplied,
        },
    ))
}

/// Fetches batches from the peers in turn, stores the ones that hash to a wanted digest.
/// Returns true when every wanted batch is stored.
async fn fetch_batches(
    net: &NetHandle,
    store: &Store,
    cfg: &crate::mempool::MempoolConfig,
    peers: &[PeerId],
    wanted: Vec<[u8; 32]>,
) -> bool {
    let mut missing: HashSet<[u8; 32]> = wanted.into_iter().collect();
    for peer in peers {
        if missing.is_empty() {
            break;
        }
        let req = v1::BatchRequest {
            digests: missing.iter().map(|d| d.to_vec()).collect(),
        };
        match net.request(*peer, RequestBody::Batches(req)).await {
            Ok(ResponseBody::Batches(resp)) => {
                for b in resp.batches {
                    let Ok(batch) = SealedBatch::from_wire(b, cfg) else {
                        continue;
                    };
                    if missing.contains(&batch.digest)
                        && store.put_batch_lazy(&batch.digest, &batch.encoded).is_ok()
                    {
                        missing.remove(&batch.digest);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(%peer, error = %e, "batch fetch failed"),
        }
    }
    missing.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::testkit::Cluster;

    #[test]
    fn a_sync_proof_with_a_last_round_block_is_refused_without_overflow() {
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 5);
        let b1 = c.block(1, c.ctx.genesis_qc(), vec![]);
        let b2 = c.block(2, c.full_qc(1, b1.id()), vec![]);
        let proof = CommitProof {
            qc: c.full_qc(2, b2.id()),
            certified: b2,
        };
        assert!(proves_directly(&b1, &proof, &c.ctx));
        // A peer's page naming the last round: no `round + 1` may overflow on it.
        let far = Block::new(0, u64::MAX, c.ctx.genesis_qc(), b1.proposer(), vec![], None);
        let child = Block::new(0, 3, c.full_qc(2, far.id()), b1.proposer(), vec![], None);
        let bad = CommitProof {
            qc: c.full_qc(3, child.id()),
            certified: child,
        };
        assert!(!proves_directly(&far, &bad, &c.ctx));
    }
}
