//! Crash-safe storage of a node, on redb (embedded, ACID).
//!
//! Everything consensus needs to find again after a crash lives here: blocks and the QCs that
//! certify them, the committed chain (height index, commit proofs), batches, the safety state and
//! the highest certificates, epoch-change records and the application state. Values are opaque
//! bytes (the prost wire encoding or the consensus crate's canonical encoding): this module knows
//! nothing of consensus types, so the protocol can evolve without a storage migration, except the
//! safety state, which it decodes to refuse writing one older than the stored one.
//!
//! Durability: [`Store::write`] runs its closure in one redb write transaction committed with
//! `Durability::Immediate` (fsync before it returns), so a caller that persists before it sends
//! gets exactly the order DESIGN section 5 asks for. [`Store::write_lazy`] is for data that may be
//! lost in a crash (batches received from peers, which can be fetched again): it becomes durable
//! with the next immediate commit.
//!
//! Batches are the other exception: they live in an append-only log beside the database
//! ([`crate::batch_log`], `<dir>/batches/`), because a B-tree copied each of them several times.
//! Every durable commit syncs the log first, so a batch stored before it is as durable as the
//! commit.
//!
//! Execution is the exception: its effects (the transaction index, the block transaction lists
//! and the application state) wait in an [`ExecOverlay`] and are written in groups, and the
//! `executed_height` meta value says how far they are durable (see [`crate::exec_overlay`]).
//!
//! History is bounded by a retention horizon ([`Store::prune_history`], run by
//! [`crate::pruner`] off the consensus task): committed blocks, their proofs, QCs, transaction
//! lists and batch references below it are deleted in small transactions from the bottom up,
//! each of which also moves the `pruned_height` meta value, so a crash leaves a contiguous
//! suffix of heights that opens and serves sync. The blocks that ended an epoch (named by the
//! caller) stay: a node replays the epoch-change records against them at every start. The
//! transaction index is not history but the set of committed transactions that execution
//! de-duplicates against (every node must agree on it), so it stays whole. Batches go with the
//! heights that referenced them, through the batch log's compaction.
//!
//! The data directory is locked by an exclusive lock on `<dir>/LOCK` for the life of the store,
//! so two nodes can never share one directory.

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Instant;

use consensus::codec::{Decode, Encode};
use consensus::safety::SafetyState;
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::batch_log::{BatchLog, BatchLogError, Compaction};
use crate::exec_overlay::{ExecOverlay, Executed, FlushPolicy};
use crate::seen_filter::SeenFilter;

pub use crate::Hash32;

mod exec;
mod prune;
mod writer;

pub use writer::Writer;

const BLOCKS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blocks");
const QCS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("qcs");
const HEIGHT_IDS: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("height_ids");
const ID_HEIGHTS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("id_heights");
const COMMIT_PROOFS: TableDefinition<u64, &[u8]> = TableDefinition::new("commit_proofs");
const BLOCK_TXS: TableDefinition<u64, &[u8]> = TableDefinition::new("block_txs");
/// The batch digests each committed height references (concatenated): what the batch log's
/// compaction needs to know which batches the retained heights still name.
const BLOCK_BATCHES: TableDefinition<u64, &[u8]> = TableDefinition::new("block_batches");
/// Blocks that left the pending table without being committed when they did (value: the
/// committed height then): deleted once that height is below the retention horizon, unless a
/// commit named them meanwhile.
const DROPPED: TableDefinition<&[u8; 32], u64> = TableDefinition::new("dropped_blocks");
/// Where batches were kept before the batch log: a store that still holds some is refused.
const OLD_BATCHES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("batches");
/// The transaction index: in the index file, and in the main file of stores written before the
/// index moved (read only there).
const TX_INDEX: TableDefinition<&[u8; 32], u64> = TableDefinition::new("tx_index");
/// The index file's own record: [`INDEXED`], the height up to which it holds every entry.
const INDEX_META: TableDefinition<&str, u64> = TableDefinition::new("index_meta");
const INDEXED: &str = "indexed_height";
const EPOCH_CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("epoch_changes");
const APP_KV: TableDefinition<&[u8], &[u8]> = TableDefinition::new("app_kv");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// Blocks persisted but not (yet) committed, with their round: what a restart hands back to
/// consensus. Pruned as the committed root advances.
const UNCOMMITTED: TableDefinition<&[u8; 32], u64> = TableDefinition::new("uncommitted");
/// Batches this node sealed from its clients' transactions and has not seen committed yet, by
/// digest (value: the local seal sequence number). A restart proposes them again, so a
/// transaction the API acknowledged is never lost.
const LOCAL_BATCHES: TableDefinition<&[u8; 32], u64> = TableDefinition::new("local_batches");

/// Keys of the `meta` table, named so that every writer and reader agree.
pub mod meta {
    /// The persisted safety state of consensus (DESIGN section 5).
    pub const SAFETY: &str = "safety";
    /// The highest QC this node has seen.
    pub const HIGH_QC: &str = "high_qc";
    /// The highest TC this node has seen.
    pub const HIGH_TC: &str = "high_tc";
    /// The on-disk layout version, checked at open.
    pub const SCHEMA: &str = "schema_version";
    /// The consensus core's own durable record (anything it asks to persist under its name).
    pub const CORE_STATE: &str = "core_state";
    /// The highest height whose execution effects are durable (8 bytes, big-endian).
    pub const EXECUTED: &str = "executed_height";
    /// The lowest height history may still hold (8 bytes, big-endian): everything below it is
    /// pruned, except the blocks that ended an epoch. Absent: nothing was pruned.
    pub const PRUNED: &str = "pruned_height";
}

/// The on-disk layout this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The file name of the database inside the data directory.
pub const DB_FILE: &str = "node.redb";
/// The file name of the transaction index inside the data directory: a database of its own so
/// that merging a run into it never holds the main database's single writer.
pub const INDEX_FILE: &str = "txindex.redb";
/// The directory of the batch log inside the data directory.
pub const BATCH_DIR: &str = "batches";
/// The file name of the directory lock inside the data directory.
pub const LOCK_FILE: &str = "LOCK";

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// Another process (or another store in this process) holds the data-dir lock.
    #[error("data directory {0} is locked by another dstack-node process")]
    Locked(PathBuf),
    /// The data directory or its lock file could not be created or opened.
    #[error("data directory {path}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The database file exists but cannot be read as a redb database of this layout.
    #[error("database {path} is corrupt or not a dstack-node database: {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What redb or the layout check reported.
        detail: String,
    },
    /// A committed height was written out of order.
    #[error("commit of height {got} but the next height is {expected}")]
    HeightGap {
        /// The height the caller tried to commit.
        got: u64,
        /// The height that must come next.
        expected: u64,
    },
    /// A safety state older than the stored one was about to overwrite it: writing it would
    /// let the node sign again what it signed before.
    #[error("refusing to write a safety state behind the stored one (older {0})")]
    SafetyRegression(&'static str),
    /// A stored value has the wrong shape (a torn or foreign value).
    #[error("stored value under {0} is malformed")]
    Malformed(String),
    /// Any other redb error.
    #[error("storage error: {0}")]
    Db(#[from] redb::Error),
    /// The batch log failed (I/O, or a segment that does not parse).
    #[error(transparent)]
    BatchLog(#[from] BatchLogError),
}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StorageError {
            fn from(e: $t) -> Self {
                StorageError::Db(e.into())
            }
        }
    )*};
}
from_redb!(
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError
);

/// The exclusive lock on a data directory, released when dropped (the OS releases it on crash).
#[derive(Debug)]
struct DirLock {
    _file: File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<Self, StorageError> {
        let path = dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| StorageError::Io {
                path: path.clone(),
                source,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Self { _file: file }),
            Err(TryLockError::WouldBlock) => Err(StorageError::Locked(dir.to_path_buf())),
            Err(TryLockError::Error(source)) => Err(StorageError::Io { path, source }),
        }
    }
}

/// A node's durable store. Cheap to clone: every clone shares the database and the dir lock.
#[derive(Clone)]
pub struct Store {
    db: Arc<Database>,
    /// The batches.
    batches: Arc<BatchLog>,
    /// Every hash of the transaction index, as a Bloom filter (see [`SeenFilter`]).
    seen: Arc<RwLock<SeenFilter>>,
    /// Executed effects not yet written.
    exec: Arc<RwLock<ExecOverlay>>,
    /// When the overlay is written.
    flush_policy: FlushPolicy,
    /// The transaction index file.
    index_db: Arc<Database>,
    /// The thread merging a frozen run into the index file, if one was started.
    merge: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    _lock: Arc<DirLock>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Store")
    }
}

impl Store {
    /// Opens (or creates) the store in `dir`, locking the directory first so no other process
    /// can open it at the same time.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        Self::open_with_segments(dir, crate::batch_log::SEGMENT_BYTES)
    }

    /// [`Store::open`] with batch-log segments of about `segment_bytes`: smaller ones give
    /// space back sooner, at more files (tests use small ones).
    pub fn open_with_segments(dir: &Path, segment_bytes: u64) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let lock = DirLock::acquire(dir)?;
        let path = dir.join(DB_FILE);
        let corrupt = |detail: String| StorageError::Corrupt {
            path: path.clone(),
            detail,
        };
        let db = open_db(dir, &path)?;
        let index_path = dir.join(INDEX_FILE);
        let index_db = open_db(dir, &index_path)?;
        let batches = BatchLog::open_with(
            &dir.join(BATCH_DIR),
            segment_bytes,
            stored_committed_height(&db)?,
        )?;
        let store = Self {
            db: Arc::new(db),
            batches: Arc::new(batches),
            seen: Arc::new(RwLock::new(SeenFilter::new())),
            exec: Arc::new(RwLock::new(ExecOverlay::new(0))),
            flush_policy: FlushPolicy::default(),
            index_db: Arc::new(index_db),
            merge: Arc::new(Mutex::new(None)),
            _lock: Arc::new(lock),
        };
        let executed = store.init_schema().map_err(|e| match e {
            StorageError::Malformed(what) => corrupt(format!("bad {what}")),
            other => other,
        })?;
        if let Some(table) = older_layout(&store.db)? {
            return Err(corrupt(format!(
                "it holds a `{table}` table of a layout older than version {SCHEMA_VERSION}; \
                 sync a new data directory"
            )));
        }
        // A new index file holds nothing: what was executed (a lost index file) is rebuilt from
        // the stored transaction lists below.
        let start = 0;
        let pruned = store.pruned_height()?;
        if pruned > 1 && store.index_height()?.is_none() && executed > 0 {
            return Err(StorageError::Corrupt {
                path: index_path,
                detail: format!(
                    "the transaction index is missing and history below height {pruned} is \
                     pruned, so it cannot be rebuilt; restore the file or sync a new data \
                     directory"
                ),
            });
        }
        let indexed = store.init_index(start, executed).map_err(|e| match e {
            StorageError::Malformed(what) => StorageError::Corrupt {
                path: index_path.clone(),
                detail: format!("bad {what}"),
            },
            other => other,
        })?;
        let mut overlay = ExecOverlay::new(executed);
        for height in indexed.saturating_add(1)..=executed {
            overlay.restore_index(height, &store.block_txs(height)?);
        }
        *store.exec.write().unwrap_or_else(PoisonError::into_inner) = overlay;
        store.load_seen_filter()?;
        store.load_batch_refs()?;
        Ok(store)
    }

    /// Tells the batch log which retained height references each of its batches.
    fn load_batch_refs(&self) -> Result<(), StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BLOCK_BATCHES)?;
        for item in t.iter()? {
            let (h, v) = item?;
            let digests = split_hashes(v.value())
                .ok_or_else(|| StorageError::Malformed(format!("block_batches[{}]", h.value())))?;
            self.batches.mark_committed(&digests, h.value());
        }
        Ok(())
    }

    /// The same store writing executed effects under `policy` instead of the default.
    pub fn with_flush_policy(mut self, policy: FlushPolicy) -> Self {
        self.flush_policy = policy;
        self
    }

    /// Creates every table and stamps or checks the layout version; returns the height whose
    /// execution effects are durable.
    fn init_schema(&self) -> Result<u64, StorageError> {
        let version = self.get_meta(meta::SCHEMA)?;
        match version {
            Some(v) => {
                let bytes: [u8; 4] = v
                    .as_slice()
                    .try_into()
                    .map_err(|_| StorageError::Malformed(meta::SCHEMA.into()))?;
                let found = u32::from_be_bytes(bytes);
                if found != SCHEMA_VERSION {
                    return Err(StorageError::Malformed(format!(
                        "schema version {found} (this build reads {SCHEMA_VERSION})"
                    )));
                }
                // Tables added since this layout version was stamped (no format change).
                self.write(|w| {
                    w.txn.open_table(LOCAL_BATCHES)?;
                    w.txn.open_table(BLOCK_BATCHES)?;
                    w.txn.open_table(DROPPED)?;
                    match w.get_meta(meta::EXECUTED)? {
                        Some(v) => decode_height(&v),
                        None => Err(StorageError::Malformed(meta::EXECUTED.into())),
                    }
                })
            }
            None => self.write(|w| {
                for t in [BLOCKS, QCS] {
                    w.txn.open_table(t)?;
                }
                w.txn.open_table(HEIGHT_IDS)?;
                w.txn.open_table(ID_HEIGHTS)?;
                w.txn.open_table(COMMIT_PROOFS)?;
                w.txn.open_table(BLOCK_TXS)?;
                w.txn.open_table(EPOCH_CHANGES)?;
                w.txn.open_table(APP_KV)?;
                w.txn.open_table(UNCOMMITTED)?;
                w.txn.open_table(LOCAL_BATCHES)?;
                w.txn.open_table(BLOCK_BATCHES)?;
                w.txn.open_table(DROPPED)?;
                w.put_meta(meta::EXECUTED, &0u64.to_be_bytes())?;
                w.put_meta(meta::SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
                Ok(0)
            }),
        }
    }

    /// Runs `f` in one write transaction and commits it durably (fsync) before returning: when
    /// this returns `Ok`, everything `f` wrote survives a crash.
    pub fn write<T>(
        &self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.write_with(Durability::Immediate, f)
    }

    /// Like [`Store::write`] but without fsync: for data that may be lost in a crash (it becomes
    /// durable with the next immediate commit).
    pub fn write_lazy<T>(
        &self,
        f: impl FnOnce(&mut Writer<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        self.write_with(Durability::None, f)
    }

    fn write_with<T>(
        &self,
        durability: Durability,
        f: impl FnOnce(&mut Writer<'_>) -> Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        let mut txn = self.db.begin_write()?;
        txn.set_durability(durability)?;
        let out = {
            let mut w = Writer {
                txn: &txn,
                batches: &self.batches,
            };
            f(&mut w)?
        };
        if matches!(durability, Durability::Immediate) {
            // Batches first: a durable record may name them (a local batch, a committed block).
            self.batches.sync()?;
        }
        txn.commit()?;
        Ok(out)
    }

    fn get_h(
        &self,
        table: TableDefinition<&[u8; 32], &[u8]>,
        key: &Hash32,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(table)?;
        let v = t.get(key)?.map(|v| v.value().to_vec());
        Ok(v)
    }

    fn get_n(
        &self,
        table: TableDefinition<u64, &[u8]>,
        key: u64,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(table)?;
        let v = t.get(key)?.map(|v| v.value().to_vec());
        Ok(v)
    }

    /// A value of the `meta` table (see [`meta`]).
    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let txn = self.db.begin_read()?;
        let t = match txn.open_table(META) {
            Ok(t) => t,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    /// A block by id.
    pub fn get_block(&self, id: &Hash32) -> Result<Option<Vec<u8>>, StorageError> {
        self.get_h(BLOCKS, id)
    }

    /// The QC certifying the block `id`, if one was stored.
    pub fn get_qc(&self, block_id: &Hash32) -> Result<Option<Vec<u8>>, StorageError> {
        self.get_h(QCS, block_id)
    }

    /// A batch by digest.
    pub fn get_batch(&self, digest: &Hash32) -> Result<Option<Vec<u8>>, StorageError> {
        Ok(self
            .get_batches(std::slice::from_ref(digest))?
            .pop()
            .flatten())
    }

    /// Whether a batch is stored.
    pub fn has_batch(&self, digest: &Hash32) -> Result<bool, StorageError> {
        Ok(self.batches.contains(digest))
    }

    /// Stores a batch that may be lost in a crash (one received from a peer: it can be fetched
    /// again): no database transaction, and durable with the next [`Store::write`].
    pub fn put_batch_lazy(&self, digest: &Hash32, bytes: &[u8]) -> Result<(), StorageError> {
        Ok(self.batches.append(digest, bytes)?)
    }

    /// The commit proof of the block at `height`.
    pub fn commit_proof(&self, height: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.get_n(COMMIT_PROOFS, height)
    }

    /// The application's value of `key`.
    pub fn kv_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
        // The overlay first, then the database: a flush clears the overlay only after its
        // write is visible, so this order never misses a value.
        if let Some(v) = self.overlay().kv(key) {
            return Ok(v.map(<[u8]>::to_vec));
        }
        let txn = self.db.begin_read()?;
        let t = txn.open_table(APP_KV)?;
        Ok(t.get(key)?.map(|v| v.value().to_vec()))
    }

    /// The epoch-change record that ended `epoch`.
    pub fn epoch_change(&self, epoch: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.get_n(EPOCH_CHANGES, epoch)
    }

    /// The epoch-change records of every epoch from `from` on, in order (at most `limit`).
    pub fn epoch_changes_since(
        &self,
        from: u64,
        limit: usize,
    ) -> Result<Vec<(u64, Vec<u8>)>, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(EPOCH_CHANGES)?;
        let mut out = Vec::new();
        for item in t.range(from..)?.take(limit) {
            let (k, v) = item?;
            out.push((k.value(), v.value().to_vec()));
        }
        Ok(out)
    }

    /// The highest committed height (0 before the first commit; heights start at 1).
    pub fn committed_height(&self) -> Result<u64, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(HEIGHT_IDS)?;
        Ok(t.last()?.map(|(k, _)| k.value()).unwrap_or(0))
    }

    /// The id of the block committed at `height`.
    pub fn committed_id(&self, height: u64) -> Result<Option<Hash32>, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(HEIGHT_IDS)?;
        Ok(t.get(height)?.map(|v| *v.value()))
    }

    /// The height at which block `id` was committed.
    pub fn height_of(&self, id: &Hash32) -> Result<Option<u64>, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(ID_HEIGHTS)?;
        Ok(t.get(id)?.map(|v| v.value()))
    }

    /// The hashes of the transactions executed at `height`, in order.
    pub fn block_txs(&self, height: u64) -> Result<Vec<Hash32>, StorageError> {
        if let Some(txs) = self.overlay().block_txs(height) {
            return Ok(txs.to_vec());
        }
        let Some(bytes) = self.get_n(BLOCK_TXS, height)? else {
            return Ok(Vec::new());
        };
        split_hashes(&bytes).ok_or_else(|| StorageError::Malformed(format!("block_txs[{height}]")))
    }

    /// The blocks persisted but not committed (their stored bytes), oldest round first.
    pub fn uncommitted_blocks(&self) -> Result<Vec<Vec<u8>>, StorageError> {
        let txn = self.db.begin_read()?;
        let pending = txn.open_table(UNCOMMITTED)?;
        let blocks = txn.open_table(BLOCKS)?;
        let mut ids = Vec::new();
        for item in pending.iter()? {
            let (k, v) = item?;
            ids.push((v.value(), *k.value()));
        }
        ids.sort_unstable();
        let mut out = Vec::with_capacity(ids.len());
        for (_, id) in ids {
            if let Some(b) = blocks.get(&id)? {
                out.push(b.value().to_vec());
            }
        }
        Ok(out)
    }

    /// The local batches not yet seen committed (seal sequence, digest, stored bytes), in seal
    /// order.
    pub fn local_batches(&self) -> Result<Vec<(u64, Hash32, Vec<u8>)>, StorageError> {
        let mut digests = Vec::new();
        {
            let txn = self.db.begin_read()?;
            let local = txn.open_table(LOCAL_BATCHES)?;
            for item in local.iter()? {
                let (k, v) = item?;
                digests.push((v.value(), *k.value()));
            }
        }
        digests.sort_unstable();
        let ds: Vec<Hash32> = digests.iter().map(|(_, d)| *d).collect();
        let bytes = self.get_batches(&ds)?;
        Ok(digests
            .into_iter()
            .zip(bytes)
            .filter_map(|((seq, d), b)| b.map(|b| (seq, d, b)))
            .collect())
    }

    /// Many batches by digest, in one read transaction, in the order given.
    pub fn get_batches(&self, digests: &[Hash32]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        digests.iter().map(|d| Ok(self.batches.get(d)?)).collect()
    }
}

/// redb's page cache per database file. Its default (1 GiB) made each node's memory grow by
/// about a gigabyte over a 30 s load, and touching that fresh memory cost more than the cache
/// saved: at 50,000 tx/s for 30 s, n = 4 went from 36,439 tx/s (1.6 GiB per node) to 45,618
/// tx/s (0.4 GiB) with 64 MiB; 16 MiB and 256 MiB measured the same within 3 %. The hot pages
/// (B-tree branches, the rightmost leaves) fit easily, and the OS page cache holds the rest.
const CACHE_BYTES: usize = 64 << 20;

/// Opens (or creates) one database file of the data directory `dir`.
fn open_db(dir: &Path, path: &Path) -> Result<Database, StorageError> {
    let corrupt = |detail: String| StorageError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    match redb::Builder::new()
        .set_cache_size(CACHE_BYTES)
        .create(path)
    {
        Ok(db) => Ok(db),
        Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
            Err(StorageError::Locked(dir.to_path_buf()))
        }
        Err(redb::DatabaseError::Storage(redb::StorageError::Io(source))) => {
            // redb reports a foreign or damaged header as InvalidData.
            if source.kind() == std::io::ErrorKind::InvalidData {
                return Err(corrupt(source.to_string()));
            }
            Err(StorageError::Io {
                path: path.to_path_buf(),
                source,
            })
        }
        Err(e) => Err(corrupt(e.to_string())),
    }
}

/// A height stored as 8 big-endian bytes.
/// The table of an older layout the main file still holds, if any: batches kept in the database
/// before the batch log, or the transaction index before its own file. Such a store is refused
/// rather than read as one that lost them.
fn older_layout(db: &Database) -> Result<Option<&'static str>, StorageError> {
    let txn = db.begin_read()?;
    let holds = |found: Result<bool, redb::Error>| -> Result<bool, StorageError> {
        match found {
            Ok(b) => Ok(b),
            Err(redb::Error::TableDoesNotExist(_)) => Ok(false),
            Err(e) => Err(e.into()),
        }
    };
    let batches = txn
        .open_table(OLD_BATCHES)
        .map_err(redb::Error::from)
        .and_then(|t| Ok(t.first()?.is_some()));
    if holds(batches)? {
        return Ok(Some("batches"));
    }
    let index = txn
        .open_table(TX_INDEX)
        .map_err(redb::Error::from)
        .and_then(|t| Ok(t.first()?.is_some()));
    if holds(index)? {
        return Ok(Some("tx_index"));
    }
    Ok(None)
}

fn decode_height(bytes: &[u8]) -> Result<u64, StorageError> {
    let b: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StorageError::Malformed(meta::EXECUTED.into()))?;
    Ok(u64::from_be_bytes(b))
}

/// 32-byte hashes stored back to back; None when the length is not a multiple of 32.
fn split_hashes(bytes: &[u8]) -> Option<Vec<Hash32>> {
    if !bytes.len().is_multiple_of(32) {
        return None;
    }
    Some(
        bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect(),
    )
}

/// The highest committed height of a database file (0 when it holds none yet).
fn stored_committed_height(db: &Database) -> Result<u64, StorageError> {
    let txn = db.begin_read()?;
    match txn.open_table(HEIGHT_IDS) {
        Ok(t) => Ok(t.last()?.map(|(k, _)| k.value()).unwrap_or(0)),
        Err(redb::TableError::TableDoesNotExist(_)) => Ok(0),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests;
