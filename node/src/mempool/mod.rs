//! The mempool (DESIGN section 8): transactions grouped into batches by size and time, batches
//! named by the BLAKE3-256 hash of their canonical encoding, proposals ordering batch digests.
//!
//! * A transaction's hash is BLAKE3-256 of its bytes; committed transactions are de-duplicated by
//!   it (the caller passes the committed-index lookup, normally [`crate::storage::Store`]).
//! * A batch's canonical encoding is the prost encoding of `proto::v1::Batch` with the
//!   transactions in order (and nothing else); its digest is BLAKE3-256 of those bytes. A batch
//!   received from a peer is re-encoded before hashing, so extra or reordered protobuf fields
//!   cannot give one batch two names.
//! * The mempool is bounded: local pending transactions by count and bytes (full is
//!   [`MempoolError::Full`], which the API turns into HTTP 503), batches from peers by count,
//!   and each member's batches by its share of that count ([`Mempool::admit_remote`], asked
//!   before the batch is written anywhere), so one member cannot fill it or the disk.
//! * While the store is above its disk quota ([`crate::disk_quota`]) nothing new is taken in.
//!
//! Time is an input (`now`), so the batching rules are testable without sleeping.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use consensus::types::Address;

use prost::Message;

use crate::Hash32;
use crate::disk_quota::DiskQuota;

/// A transaction's hash: BLAKE3-256 of its bytes.
pub type TxHash = Hash32;

/// Hashes a transaction (BLAKE3-256 of its bytes).
pub fn tx_hash(tx: &[u8]) -> TxHash {
    *blake3::hash(tx).as_bytes()
}

/// Refuses a peer's batch that exceeds what an honest node would seal under `cfg`.
fn check_peer_batch<T: AsRef<[u8]>>(txs: &[T], cfg: &MempoolConfig) -> Result<(), MempoolError> {
    if txs.len() > cfg.max_batch_txs {
        return Err(MempoolError::BatchTooLarge);
    }
    let mut total = 0usize;
    for tx in txs {
        let len = tx.as_ref().len();
        if len == 0 {
            return Err(MempoolError::EmptyTx);
        }
        if len > cfg.max_tx_bytes {
            return Err(MempoolError::TxTooLarge {
                len,
                max: cfg.max_tx_bytes,
            });
        }
        total = total.saturating_add(len);
    }
    if total > cfg.max_batch_bytes {
        return Err(MempoolError::BatchTooLarge);
    }
    Ok(())
}

/// The canonical encoding of a batch: prost `proto::v1::Batch` with the transactions in order.
///
/// Written directly (field 1, length-delimited, per transaction: `0x0a ‖ varint(len) ‖ bytes`,
/// exactly what prost emits for `repeated bytes transactions = 1`) so the transactions are not
/// copied into a temporary message first.
pub fn encode_batch<T: AsRef<[u8]>>(txs: &[T]) -> Vec<u8> {
    let len: usize = txs
        .iter()
        .map(|t| {
            let n = t.as_ref().len();
            1 + prost::encoding::encoded_len_varint(n as u64) + n
        })
        .sum();
    let mut out = Vec::with_capacity(len);
    for t in txs {
        let t = t.as_ref();
        out.push(0x0a);
        prost::encoding::encode_varint(t.len() as u64, &mut out);
        out.extend_from_slice(t);
    }
    out
}

/// A batch's digest: BLAKE3-256 of its canonical encoding.
pub fn batch_digest(canonical: &[u8]) -> Hash32 {
    *blake3::hash(canonical).as_bytes()
}

/// A batch with its name, its canonical bytes and its transactions' hashes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SealedBatch {
    /// BLAKE3-256 of `encoded`.
    pub digest: Hash32,
    /// The canonical encoding (what is stored, gossiped and served).
    pub encoded: Vec<u8>,
    /// The transactions' hashes, in batch order.
    pub tx_hashes: Vec<TxHash>,
}

impl SealedBatch {
    /// Builds a batch from transactions.
    pub fn from_txs(txs: &[Vec<u8>]) -> Self {
        Self::from_txs_hashed(txs, txs.iter().map(|t| tx_hash(t)).collect())
    }

    /// Builds a batch from transactions whose hashes are already known (`tx_hashes[i]` must be
    /// [`tx_hash`] of `txs[i]`).
    fn from_txs_hashed(txs: &[Vec<u8>], tx_hashes: Vec<TxHash>) -> Self {
        let encoded = encode_batch(txs);
        Self {
            digest: batch_digest(&encoded),
            tx_hashes,
            encoded,
        }
    }

    /// Builds a batch from a decoded wire batch, checking the limits of `cfg`: a peer's batch is
    /// refused when it exceeds what an honest node would seal.
    pub fn from_wire(batch: proto::v1::Batch, cfg: &MempoolConfig) -> Result<Self, MempoolError> {
        check_peer_batch(&batch.transactions, cfg)?;
        Ok(Self::from_txs(&batch.transactions))
    }

    /// Builds a batch from a peer's canonical bytes (as gossip carries them), checking the
    /// limits of `cfg` like [`SealedBatch::from_wire`] and refusing any other encoding: the
    /// bytes are kept as they are, hashed once, and no transaction is copied.
    pub fn from_canonical(encoded: Vec<u8>, cfg: &MempoolConfig) -> Result<Self, MempoolError> {
        let txs = Self::tx_slices(&encoded)?;
        check_peer_batch(&txs, cfg)?;
        let tx_hashes = txs.iter().map(|t| tx_hash(t)).collect();
        Ok(Self {
            digest: batch_digest(&encoded),
            encoded,
            tx_hashes,
        })
    }

    /// The transactions of canonical batch bytes, borrowed instead of copied (execution reads
    /// every committed byte once; this saves an allocation and a copy per transaction).
    /// Refuses anything that is not exactly the canonical encoding [`encode_batch`] writes.
    pub fn tx_slices(encoded: &[u8]) -> Result<Vec<&[u8]>, MempoolError> {
        let mut out = Vec::new();
        let mut rest = encoded;
        while let Some((&tag, after_tag)) = rest.split_first() {
            if tag != 0x0a {
                return Err(MempoolError::MalformedBatch);
            }
            let mut cursor = after_tag;
            let len = prost::encoding::decode_varint(&mut cursor)
                .map_err(|_| MempoolError::MalformedBatch)?;
            let len = usize::try_from(len).map_err(|_| MempoolError::MalformedBatch)?;
            let header = after_tag.len() - cursor.len();
            if prost::encoding::encoded_len_varint(len as u64) != header || cursor.len() < len {
                return Err(MempoolError::MalformedBatch);
            }
            let (tx, after) = cursor.split_at(len);
            out.push(tx);
            rest = after;
        }
        Ok(out)
    }

    /// Decodes stored or received canonical bytes back into transactions.
    pub fn decode_txs(encoded: &[u8]) -> Result<Vec<Vec<u8>>, MempoolError> {
        proto::v1::Batch::decode(encoded)
            .map(|b| b.transactions)
            .map_err(|_| MempoolError::MalformedBatch)
    }
}

/// Limits of the mempool. Every honest node of a cluster should use the same batch limits
/// (they come from the genesis file's cluster parameters).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MempoolConfig {
    /// Largest transaction accepted.
    pub max_tx_bytes: usize,
    /// A batch is sealed once its transactions reach this many bytes.
    pub max_batch_bytes: usize,
    /// A batch is sealed once it holds this many transactions.
    pub max_batch_txs: usize,
    /// A non-empty batch is sealed this long after its first transaction.
    pub batch_timeout: Duration,
    /// Local transactions not yet committed, at most.
    pub max_pending_txs: usize,
    /// Bytes of local transactions not yet committed, at most.
    pub max_pending_bytes: usize,
    /// Uncommitted batches (local and from peers) held for proposals, at most.
    pub max_batches: usize,
    /// Transactions one proposal orders, at most (a leader's local policy, not a validity
    /// rule): every node executes a committed block on its consensus task, so an unbounded
    /// block (64 full batches are 128,000 transactions) stalls rounds into timeouts. A single
    /// batch larger than this is still proposed on its own.
    pub max_block_txs: usize,
    /// Batch bytes one proposal orders, at most (a leader's local policy like
    /// `max_block_txs`): a member sending few large transactions would otherwise fill a block
    /// with `max_block_batches` full batches (64 MiB at the default batch limit), which every
    /// node reads and executes on its consensus task. A single larger batch still goes alone.
    pub max_block_bytes: usize,
}

impl Default for MempoolConfig {
    fn default() -> Self {
        Self {
            max_tx_bytes: 64 * 1024,
            max_batch_bytes: 512 * 1024,
            max_batch_txs: 2_000,
            batch_timeout: Duration::from_millis(50),
            max_pending_txs: 50_000,
            max_pending_bytes: 64 * 1024 * 1024,
            max_batches: 4_096,
            max_block_txs: 10_000,
            max_block_bytes: 8 * 1024 * 1024,
        }
    }
}

/// Why a transaction or batch was not accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MempoolError {
    /// The mempool holds as many transactions (or bytes) as it may; retry later.
    #[error("mempool full: {pending} transactions ({bytes} bytes) pending; retry later")]
    Full {
        /// Pending transactions.
        pending: usize,
        /// Pending bytes.
        bytes: usize,
    },
    /// The transaction exceeds the size limit.
    #[error("transaction of {len} bytes exceeds the limit of {max} bytes")]
    TxTooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Empty transactions are refused.
    #[error("empty transaction")]
    EmptyTx,
    /// The transaction was already committed.
    #[error("transaction already committed at height {0}")]
    AlreadyCommitted(u64),
    /// The transaction is already pending here.
    #[error("transaction already pending")]
    AlreadyPending,
    /// A peer's batch exceeds the batch limits.
    #[error("batch exceeds the batch limits")]
    BatchTooLarge,
    /// Stored or received bytes are not a batch.
    #[error("malformed batch")]
    MalformedBatch,
    /// The store is above its disk quota: nothing new is taken in until pruning frees space.
    #[error(
        "disk quota exceeded: the store takes {used} bytes of its {max} (storage.max_disk_bytes); \
         retry later"
    )]
    DiskFull {
        /// Bytes the store takes.
        used: u64,
        /// The quota.
        max: u64,
    },
}

/// Why a peer's batch is not taken in (before it is stored; each is a metric reason).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchRefusal {
    /// Already held: nothing to do.
    Known,
    /// The mempool holds its maximum of batches.
    Full,
    /// The sending member holds its share of the batch budget already.
    OverQuota,
    /// The store is above its disk quota.
    DiskFull,
}

impl BatchRefusal {
    /// The `dstack_messages_ignored_total` reason.
    pub fn reason(self) -> &'static str {
        match self {
            BatchRefusal::Known => "known_batch",
            BatchRefusal::Full => "mempool_full",
            BatchRefusal::OverQuota => "batch_quota",
            BatchRefusal::DiskFull => "disk_quota",
        }
    }
}

struct BatchInfo {
    tx_hashes: Vec<TxHash>,
    /// The length of its canonical encoding (for the block byte bound).
    bytes: usize,
    /// When it became proposable here (sealed, restored or received), for the debug line
    /// `batch proposed waited_ms=..` (target `node::mempool`) a leader logs the first time it
    /// proposes the batch: how long batches wait for a proposal.
    ready_at: Instant,
    /// Sealed by this node (not received from a peer).
    local: bool,
    /// The member that sent it (counted against its share), when it came from one.
    origin: Option<Address>,
    proposed: std::cell::Cell<bool>,
}

impl BatchInfo {
    fn new(batch: &SealedBatch, ready_at: Instant, local: bool) -> Self {
        Self {
            tx_hashes: batch.tx_hashes.clone(),
            bytes: batch.encoded.len(),
            ready_at,
            local,
            origin: None,
            proposed: std::cell::Cell::new(false),
        }
    }
}

/// The mempool of one node.
pub struct Mempool {
    cfg: MempoolConfig,
    open: Vec<Vec<u8>>,
    /// The hashes of `open`, in the same order.
    open_hashes: Vec<TxHash>,
    open_bytes: usize,
    open_since: Option<Instant>,
    /// Local pending transactions: their size, the batch they were sealed into, when accepted.
    pending: HashMap<TxHash, (usize, Option<Hash32>, Instant)>,
    pending_bytes: usize,
    batches: HashMap<Hash32, BatchInfo>,
    ready: VecDeque<Hash32>,
    sealed_out: Vec<SealedBatch>,
    /// How many local batches were sealed (the last one's sequence number).
    sealed_seq: u64,
    /// Batches held per sending member.
    held_by: HashMap<Address, usize>,
    /// The store's disk quota, when one is set.
    disk: Option<Arc<DiskQuota>>,
}

impl Mempool {
    /// An empty mempool with these limits.
    pub fn new(cfg: MempoolConfig) -> Self {
        Self {
            cfg,
            open: Vec::new(),
            open_hashes: Vec::new(),
            open_bytes: 0,
            open_since: None,
            pending: HashMap::new(),
            pending_bytes: 0,
            batches: HashMap::new(),
            ready: VecDeque::new(),
            sealed_out: Vec::new(),
            sealed_seq: 0,
            held_by: HashMap::new(),
            disk: None,
        }
    }

    /// The same mempool refusing new transactions and batches while `quota` is exceeded.
    pub fn with_disk_quota(mut self, quota: Arc<DiskQuota>) -> Self {
        self.disk = Some(quota);
        self
    }

    fn disk_full(&self) -> Option<(u64, u64)> {
        self.disk.as_ref().and_then(|d| d.exceeded())
    }

    /// How many batches one of `members` members may have held here at once: an equal share of
    /// [`MempoolConfig::max_batches`] (at least one).
    pub fn member_quota(&self, members: usize) -> usize {
        (self.cfg.max_batches / members.max(1)).max(1)
    }

    /// Whether a batch `origin` sent may be taken in, asked before it is hashed or stored: a
    /// full mempool, a member over its share or a store over its disk quota refuse it.
    pub fn admit_remote(&self, origin: Address, members: usize) -> Result<(), BatchRefusal> {
        if self.disk_full().is_some() {
            return Err(BatchRefusal::DiskFull);
        }
        if self.batches.len() >= self.cfg.max_batches {
            return Err(BatchRefusal::Full);
        }
        if self.held_by.get(&origin).copied().unwrap_or(0) >= self.member_quota(members) {
            return Err(BatchRefusal::OverQuota);
        }
        Ok(())
    }

    /// Whether a batch is known here already (then there is nothing to store).
    pub fn knows_batch(&self, digest: &Hash32) -> Result<(), BatchRefusal> {
        match self.batches.contains_key(digest) {
            true => Err(BatchRefusal::Known),
            false => Ok(()),
        }
    }

    /// Adds a batch `origin` sent, stored by the caller after [`Mempool::admit_remote`] (asked
    /// again here: the local API may have filled the mempool meanwhile).
    pub fn add_remote_from(
        &mut self,
        batch: &SealedBatch,
        origin: Address,
        members: usize,
    ) -> Result<(), BatchRefusal> {
        self.knows_batch(&batch.digest)?;
        self.admit_remote(origin, members)?;
        let mut info = BatchInfo::new(batch, Instant::now(), false);
        info.origin = Some(origin);
        self.batches.insert(batch.digest, info);
        *self.held_by.entry(origin).or_default() += 1;
        self.ready.push_back(batch.digest);
        Ok(())
    }

    /// The digests of every batch held (the store must keep their bytes).
    pub fn batch_digests(&self) -> HashSet<Hash32> {
        self.batches.keys().copied().collect()
    }

    /// The limits in force.
    pub fn config(&self) -> &MempoolConfig {
        &self.cfg
    }

    /// The sequence number the open batch will have when sealed: a transaction submitted now
    /// is durable once the driver reports this sequence stored.
    pub fn open_batch_seq(&self) -> u64 {
        self.sealed_seq + 1
    }

    /// The sequence number of the last local batch sealed.
    pub fn sealed_seq(&self) -> u64 {
        self.sealed_seq
    }

    /// Takes back a local batch stored before a restart (its transactions, in order): those
    /// `committed` does not know are pending again and the batch is proposed again. Limits do
    /// not apply (the transactions were acknowledged before). Returns the batch to disseminate
    /// again, or None when nothing of it was left to do.
    pub fn restore_local(
        &mut self,
        seq: u64,
        txs: &[Vec<u8>],
        now: Instant,
        committed: impl Fn(&TxHash) -> bool,
    ) -> Option<SealedBatch> {
        self.sealed_seq = self.sealed_seq.max(seq);
        let batch = SealedBatch::from_txs(txs);
        if self.batches.contains_key(&batch.digest) {
            return None;
        }
        let mut open = false;
        for (tx, h) in txs.iter().zip(&batch.tx_hashes) {
            if committed(h) || self.pending.contains_key(h) {
                continue;
            }
            open = true;
            self.pending.insert(*h, (tx.len(), Some(batch.digest), now));
            self.pending_bytes += tx.len();
        }
        if !open {
            return None;
        }
        self.batches
            .insert(batch.digest, BatchInfo::new(&batch, now, true));
        self.ready.push_back(batch.digest);
        Some(batch)
    }

    /// Accepts a transaction from a client. `committed` looks a hash up in the committed index.
    pub fn submit(
        &mut self,
        tx: Vec<u8>,
        now: Instant,
        committed: impl FnOnce(&TxHash) -> Option<u64>,
    ) -> Result<TxHash, MempoolError> {
        let hash = tx_hash(&tx);
        let height = committed(&hash);
        self.submit_hashed(tx, hash, height, now)
    }

    /// [`Mempool::submit`] with the hash and the committed-index answer computed by the caller,
    /// so a bulk request hashes and looks up outside the mempool lock. `hash` must be
    /// [`tx_hash`] of `tx`.
    pub fn submit_hashed(
        &mut self,
        tx: Vec<u8>,
        hash: TxHash,
        committed_at: Option<u64>,
        now: Instant,
    ) -> Result<TxHash, MempoolError> {
        if tx.is_empty() {
            return Err(MempoolError::EmptyTx);
        }
        if tx.len() > self.cfg.max_tx_bytes {
            return Err(MempoolError::TxTooLarge {
                len: tx.len(),
                max: self.cfg.max_tx_bytes,
            });
        }
        if self.pending.contains_key(&hash) {
            return Err(MempoolError::AlreadyPending);
        }
        if let Some(h) = committed_at {
            return Err(MempoolError::AlreadyCommitted(h));
        }
        if let Some((used, max)) = self.disk_full() {
            return Err(MempoolError::DiskFull { used, max });
        }
        if self.pending.len() >= self.cfg.max_pending_txs
            || self.pending_bytes + tx.len() > self.cfg.max_pending_bytes
            || self.batches.len() >= self.cfg.max_batches
        {
            return Err(MempoolError::Full {
                pending: self.pending.len(),
                bytes: self.pending_bytes,
            });
        }
        self.pending.insert(hash, (tx.len(), None, now));
        self.pending_bytes += tx.len();
        if self.open.is_empty() {
            self.open_since = Some(now);
        }
        self.open_bytes += tx.len();
        self.open.push(tx);
        self.open_hashes.push(hash);
        if self.open.len() >= self.cfg.max_batch_txs || self.open_bytes >= self.cfg.max_batch_bytes
        {
            self.seal(now);
        }
        Ok(hash)
    }

    /// Seals the open batch when its time is up; call it on a timer.
    pub fn tick(&mut self, now: Instant) {
        if let Some(since) = self.open_since
            && now.saturating_duration_since(since) >= self.cfg.batch_timeout
        {
            self.seal(now);
        }
    }

    /// When the open batch must be sealed by time (for the driver's timer).
    pub fn next_deadline(&self) -> Option<Instant> {
        self.open_since.map(|s| s + self.cfg.batch_timeout)
    }

    fn seal(&mut self, now: Instant) {
        if self.open.is_empty() {
            return;
        }
        let txs = std::mem::take(&mut self.open);
        let hashes = std::mem::take(&mut self.open_hashes);
        self.open_bytes = 0;
        self.open_since = None;
        let batch = SealedBatch::from_txs_hashed(&txs, hashes);
        self.sealed_seq += 1;
        for h in &batch.tx_hashes {
            if let Some(entry) = self.pending.get_mut(h) {
                entry.1 = Some(batch.digest);
            }
        }
        if let std::collections::hash_map::Entry::Vacant(e) = self.batches.entry(batch.digest) {
            e.insert(BatchInfo::new(&batch, now, true));
            self.ready.push_back(batch.digest);
        }
        self.sealed_out.push(batch);
    }

    /// The local batches sealed since the last call: the driver stores and disseminates them.
    pub fn take_sealed(&mut self) -> Vec<SealedBatch> {
        std::mem::take(&mut self.sealed_out)
    }

    /// Whether any held batch could be proposed (cheap: no payload is built).
    pub fn has_proposable(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Whether a batch is held (known, not yet committed).
    pub fn has_batch(&self, digest: &Hash32) -> bool {
        self.batches.contains_key(digest)
    }

    /// The digests a leader proposes: held batches not in `exclude` (the batches of the
    /// uncommitted blocks the proposal extends), at most `max`, together at most
    /// [`MempoolConfig::max_block_txs`] transactions and [`MempoolConfig::max_block_bytes`]
    /// bytes (the first batch always fits). Senders take turns (this node's own batches are one
    /// sender), each in the order its batches arrived, so one member's flood takes at most its
    /// turn of each block and cannot starve the others'.
    pub fn payload(&self, max: usize, exclude: &HashSet<Hash32>) -> Vec<Hash32> {
        // One queue per sender, senders in the order of their oldest batch.
        let mut queues: Vec<VecDeque<(Hash32, &BatchInfo)>> = Vec::new();
        let mut queue_of: HashMap<Option<Address>, usize> = HashMap::new();
        for d in self.ready.iter().filter(|d| !exclude.contains(*d)) {
            let Some(info) = self.batches.get(d) else {
                continue;
            };
            let i = *queue_of.entry(info.origin).or_insert_with(|| {
                queues.push(VecDeque::new());
                queues.len() - 1
            });
            queues[i].push_back((*d, info));
        }
        let mut out = Vec::new();
        let (mut txs, mut bytes) = (0usize, 0usize);
        while out.len() < max && queues.iter().any(|q| !q.is_empty()) {
            for q in queues.iter_mut() {
                let Some(&(d, info)) = q.front() else {
                    continue;
                };
                let (n, len) = (info.tx_hashes.len(), info.bytes);
                if out.len() >= max {
                    break;
                }
                if !out.is_empty()
                    && (txs + n > self.cfg.max_block_txs || bytes + len > self.cfg.max_block_bytes)
                {
                    // This sender's next batch does not fit: its turn is over for this block.
                    q.clear();
                    continue;
                }
                txs += n;
                bytes += len;
                out.push(d);
                q.pop_front();
            }
        }
        if tracing::enabled!(target: "node::mempool", tracing::Level::DEBUG) {
            let now = Instant::now();
            for d in &out {
                if let Some(b) = self.batches.get(d)
                    && !b.proposed.replace(true)
                {
                    tracing::debug!(
                        target: "node::mempool",
                        waited_ms = now.saturating_duration_since(b.ready_at).as_millis() as u64,
                        local = b.local,
                        txs = b.tx_hashes.len(),
                        "batch proposed"
                    );
                }
            }
        }
        out
    }

    /// Forgets what a committed block made final: its batches and the transactions executed.
    /// Returns how long each local transaction waited from acceptance to `now` (commit latency).
    pub fn on_committed(
        &mut self,
        batch_digests: &[Hash32],
        executed: &[TxHash],
        now: Instant,
    ) -> Vec<Duration> {
        let mut latencies = Vec::new();
        let gone: HashSet<Hash32> = batch_digests.iter().copied().collect();
        for d in &gone {
            if let Some(info) = self.batches.remove(d) {
                if let Some(origin) = info.origin
                    && let Some(n) = self.held_by.get_mut(&origin)
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.held_by.remove(&origin);
                    }
                }
                for h in info.tx_hashes {
                    latencies.extend(self.forget_tx(&h, now));
                }
            }
        }
        if !gone.is_empty() {
            self.ready.retain(|d| !gone.contains(d));
        }
        for h in executed {
            latencies.extend(self.forget_tx(h, now));
        }
        latencies
    }

    fn forget_tx(&mut self, h: &TxHash, now: Instant) -> Option<Duration> {
        let (len, batch, accepted) = self.pending.remove(h)?;
        self.pending_bytes -= len;
        if batch.is_none() {
            // Committed through another node's batch while still open here: drop it from the
            // open batch so it is not proposed again.
            if let Some(pos) = self.open_hashes.iter().position(|x| x == h) {
                self.open_hashes.remove(pos);
                let tx = self.open.remove(pos);
                self.open_bytes -= tx.len();
                if self.open.is_empty() {
                    self.open_since = None;
                }
            }
        }
        Some(now.saturating_duration_since(accepted))
    }

    /// The transaction hashes of a batch this mempool knows (sealed here or received), so a
    /// committed batch is not hashed again at execution.
    pub fn batch_tx_hashes(&self, digest: &Hash32) -> Option<Vec<TxHash>> {
        self.batches.get(digest).map(|b| b.tx_hashes.clone())
    }

    /// Whether a local transaction is pending (accepted, not yet committed).
    pub fn is_pending(&self, hash: &TxHash) -> bool {
        self.pending.contains_key(hash)
    }

    /// Local pending transactions (the `dstack_mempool_transactions` gauge).
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Uncommitted batches held.
    pub fn batches_len(&self) -> usize {
        self.batches.len()
    }
}

#[cfg(test)]
mod tests;
