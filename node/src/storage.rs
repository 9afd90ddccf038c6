//! Crash-safe storage of a node, on redb (embedded, ACID).
//!
//! Everything consensus needs to find again after a crash lives here: blocks and the QCs that
//! certify them, the committed chain (height index, commit proofs), batches, the safety state and
//! the highest certificates, epoch-change records and the application state. Values are opaque
//! bytes (the prost wire encoding or the consensus crate's canonical encoding): this module knows
//! nothing of consensus types, so the protocol can evolve without a storage migration.
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
//! commit. Batches of stores written before the log are still read from the database.
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
/// Batches of stores written before the batch log (read only).
const BATCHES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("batches");
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
    /// Whether the main file still holds index entries of an older layout.
    legacy_index: bool,
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
        let mut store = Self {
            db: Arc::new(db),
            batches: Arc::new(batches),
            seen: Arc::new(RwLock::new(SeenFilter::new())),
            exec: Arc::new(RwLock::new(ExecOverlay::new(0))),
            flush_policy: FlushPolicy::default(),
            index_db: Arc::new(index_db),
            legacy_index: false,
            merge: Arc::new(Mutex::new(None)),
            _lock: Arc::new(lock),
        };
        let executed = store.init_schema().map_err(|e| match e {
            StorageError::Malformed(what) => corrupt(format!("bad {what}")),
            other => other,
        })?;
        store.legacy_index = {
            let txn = store.db.begin_read()?;
            txn.open_table(TX_INDEX)?.first()?.is_some()
        };
        // A new index file holds nothing: everything executed before it is in the main file's
        // old index, or, when there is none (a new store, or a lost index file), is rebuilt
        // from the stored transaction lists below.
        let start = if store.legacy_index { executed } else { 0 };
        let pruned = store.pruned_height()?;
        if pruned > 1 && !store.legacy_index && store.index_height()?.is_none() && executed > 0 {
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

    /// How far the index file holds every entry, if it was ever written.
    fn index_height(&self) -> Result<Option<u64>, StorageError> {
        let txn = self.index_db.begin_read()?;
        match txn.open_table(INDEX_META) {
            Ok(t) => Ok(t.get(INDEXED)?.map(|v| v.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the index file's tables, starting at height `start`, or reads how far it holds
    /// every entry (never above `executed`).
    fn init_index(&self, start: u64, executed: u64) -> Result<u64, StorageError> {
        {
            let txn = self.index_db.begin_read()?;
            if let Ok(t) = txn.open_table(INDEX_META)
                && let Some(h) = t.get(INDEXED)?
            {
                let h = h.value();
                if h > executed {
                    return Err(StorageError::Malformed(format!(
                        "index height {h} above the executed height {executed}"
                    )));
                }
                return Ok(h);
            }
        }
        let mut txn = self.index_db.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.open_table(TX_INDEX)?;
        txn.open_table(INDEX_META)?.insert(INDEXED, start)?;
        txn.commit()?;
        Ok(start)
    }

    /// The same store writing executed effects under `policy` instead of the default.
    pub fn with_flush_policy(mut self, policy: FlushPolicy) -> Self {
        self.flush_policy = policy;
        self
    }

    /// Fills the filter from the transaction index (sequential scans at open) and from the
    /// entries the overlay restored.
    fn load_seen_filter(&self) -> Result<(), StorageError> {
        let mut restored = Vec::new();
        self.overlay().for_each_indexed(|h| restored.push(*h));
        // Never the overlay's lock inside the filter's: readers take them the other way round.
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        for h in &restored {
            seen.insert(h);
        }
        for db in [&self.db, &self.index_db] {
            let txn = db.begin_read()?;
            let t = txn.open_table(TX_INDEX)?;
            for entry in t.iter()? {
                let (k, _) = entry?;
                seen.insert(k.value());
            }
        }
        Ok(())
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
                        None => {
                            // Written before execution was grouped: every committed block
                            // executed in its own commit.
                            let h = w.committed_height()?;
                            w.put_meta(meta::EXECUTED, &h.to_be_bytes())?;
                            Ok(h)
                        }
                    }
                })
            }
            None => self.write(|w| {
                for t in [BLOCKS, QCS, BATCHES] {
                    w.txn.open_table(t)?;
                }
                w.txn.open_table(HEIGHT_IDS)?;
                w.txn.open_table(ID_HEIGHTS)?;
                w.txn.open_table(COMMIT_PROOFS)?;
                w.txn.open_table(BLOCK_TXS)?;
                w.txn.open_table(TX_INDEX)?;
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
        if self.batches.contains(digest) {
            return Ok(true);
        }
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BATCHES)?;
        Ok(t.get(digest)?.is_some())
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

    /// [`Store::tx_height`] of many transactions in one read transaction (the ingest path checks
    /// a whole request at once), in the order given.
    pub fn tx_heights(&self, hashes: &[Hash32]) -> Result<Vec<Option<u64>>, StorageError> {
        // Answered by the overlay, or certainly absent by the filter, or to look up.
        let mut out: Vec<Option<u64>> = vec![None; hashes.len()];
        let mut lookup = Vec::new();
        {
            let overlay = self.overlay();
            let seen = self.seen.read().unwrap_or_else(PoisonError::into_inner);
            for (i, h) in hashes.iter().enumerate() {
                match overlay.tx_height(h) {
                    Some(height) => out[i] = Some(height),
                    None if seen.may_contain(h) => lookup.push(i),
                    None => {}
                }
            }
        }
        if lookup.is_empty() {
            return Ok(out);
        }
        let dbs: &[&Arc<Database>] = if self.legacy_index {
            &[&self.index_db, &self.db]
        } else {
            &[&self.index_db]
        };
        for db in dbs {
            let txn = db.begin_read()?;
            let t = txn.open_table(TX_INDEX)?;
            for &i in &lookup {
                if out[i].is_none() {
                    out[i] = t.get(&hashes[i])?.map(|v| v.value());
                }
            }
        }
        Ok(out)
    }

    /// The height at which the transaction `hash` was committed, if it was.
    pub fn tx_height(&self, hash: &Hash32) -> Result<Option<u64>, StorageError> {
        Ok(self.tx_heights(std::slice::from_ref(hash))?[0])
    }

    /// Many batches by digest, in one read transaction, in the order given.
    pub fn get_batches(&self, digests: &[Hash32]) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let mut out = Vec::with_capacity(digests.len());
        let mut legacy = None;
        for d in digests {
            let mut b = self.batches.get(d)?;
            if b.is_none() {
                if legacy.is_none() {
                    legacy = Some(self.db.begin_read()?);
                }
                if let Some(txn) = &legacy {
                    b = txn.open_table(BATCHES)?.get(d)?.map(|v| v.value().to_vec());
                }
            }
            out.push(b);
        }
        Ok(out)
    }

    /// The lowest height history may hold (1 when nothing was pruned): see [`meta::PRUNED`].
    pub fn pruned_height(&self) -> Result<u64, StorageError> {
        match self.get_meta(meta::PRUNED)? {
            Some(v) => decode_height(&v),
            None => Ok(1),
        }
    }

    /// How far the retention horizon may reach now: (history, transaction lists). History
    /// stays for every height whose execution effects are not durable (a restart executes them
    /// again from their blocks and batches); transaction lists also for every height whose
    /// index entries are not in the index file yet (a restart rebuilds them from the lists).
    pub fn prunable_below(&self) -> Result<(u64, u64), StorageError> {
        let executed = match self.get_meta(meta::EXECUTED)? {
            Some(v) => decode_height(&v)?,
            None => 0,
        };
        let indexed = if self.legacy_index {
            executed
        } else {
            self.index_height()?.unwrap_or(0)
        };
        Ok((
            executed.saturating_add(1),
            executed.min(indexed).saturating_add(1),
        ))
    }

    /// Deletes committed history below `horizon` (clamped to [`Store::prunable_below`]): at
    /// most `max_heights` heights, in transactions of `chunk` heights, each moving
    /// [`meta::PRUNED`] with what it deleted. Blocks in `keep` (those that ended an epoch) stay
    /// with their height, proof and QC. Dropped uncommitted blocks older than the horizon go too.
    /// Returns how many heights were pruned.
    pub fn prune_history(
        &self,
        horizon: u64,
        keep: &HashSet<Hash32>,
        chunk: u64,
        max_heights: u64,
    ) -> Result<u64, StorageError> {
        let (history, lists) = self.prunable_below()?;
        let horizon = horizon.min(history);
        let chunk = chunk.max(1);
        let mut done = 0u64;
        loop {
            let from = self.pruned_height()?;
            if from >= horizon || done >= max_heights {
                return Ok(done);
            }
            let to = from
                .saturating_add(chunk.min(max_heights - done))
                .min(horizon);
            self.write(|w| {
                let heights: Vec<(u64, Hash32)> = {
                    let t = w.txn.open_table(HEIGHT_IDS)?;
                    let mut v = Vec::new();
                    for item in t.range(from..to)? {
                        let (h, id) = item?;
                        v.push((h.value(), *id.value()));
                    }
                    v
                };
                for (h, id) in &heights {
                    if keep.contains(id) {
                        continue;
                    }
                    w.txn.open_table(HEIGHT_IDS)?.remove(h)?;
                    w.txn.open_table(ID_HEIGHTS)?.remove(id)?;
                    w.txn.open_table(COMMIT_PROOFS)?.remove(h)?;
                    w.txn.open_table(BLOCKS)?.remove(id)?;
                    w.txn.open_table(QCS)?.remove(id)?;
                }
                {
                    // Behind the index file, and at most a chunk of rows per transaction.
                    let mut t = w.txn.open_table(BLOCK_TXS)?;
                    for _ in 0..chunk {
                        let low = t.first()?.map(|(h, _)| h.value());
                        if low.is_none_or(|h| h >= to.min(lists)) {
                            break;
                        }
                        t.pop_first()?;
                    }
                }
                w.txn
                    .open_table(BLOCK_BATCHES)?
                    .retain_in(from..to, |_, _| false)?;
                let gone: Vec<Hash32> = w
                    .txn
                    .open_table(DROPPED)?
                    .extract_if(|_, at| at < to)?
                    .map(|e| e.map(|(id, _)| *id.value()))
                    .collect::<Result<_, _>>()?;
                for id in &gone {
                    // Committed after all (a new epoch's B0 and its ancestors), or pending again.
                    if w.txn.open_table(ID_HEIGHTS)?.get(id)?.is_none()
                        && w.txn.open_table(UNCOMMITTED)?.get(id)?.is_none()
                    {
                        w.txn.open_table(BLOCKS)?.remove(id)?;
                        w.txn.open_table(QCS)?.remove(id)?;
                    }
                }
                w.put_meta(meta::PRUNED, &to.to_be_bytes())
            })?;
            done += to - from;
        }
    }

    /// Deletes the batches dead below `horizon` that the set `pins` returns does not name (see
    /// [`crate::batch_log`]); call after [`Store::prune_history`] moved past it. `pins` is
    /// asked after the log's append counter is read, so a batch stored meanwhile is kept.
    pub fn compact_batches(
        &self,
        horizon: u64,
        pins: impl FnOnce() -> Result<HashSet<Hash32>, StorageError>,
    ) -> Result<Compaction, StorageError> {
        let since = self.batches.touches();
        let pinned = pins()?;
        Ok(self.batches.compact(horizon, &pinned, since)?)
    }

    /// The bytes each part of the store takes on disk: (name, bytes), for the storage gauges
    /// and the disk quota.
    pub fn disk_usage(&self, dir: &Path) -> Vec<(&'static str, u64)> {
        let size = |name: &str| std::fs::metadata(dir.join(name)).map_or(0, |m| m.len());
        vec![
            (DB_FILE, size(DB_FILE)),
            (INDEX_FILE, size(INDEX_FILE)),
            (BATCH_DIR, self.batches.bytes()),
        ]
    }

    /// Batches in the batch log (its in-memory index).
    pub fn batch_count(&self) -> usize {
        self.batches.len()
    }

    fn overlay(&self) -> std::sync::RwLockReadGuard<'_, ExecOverlay> {
        self.exec.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// The highest executed height (its effects are visible to every read, durable or not).
    pub fn executed_height(&self) -> u64 {
        self.overlay().executed()
    }

    /// Records the effects of executing the committed block at `height`, which must follow the
    /// executed height. They are visible at once and written to the database in a group, now if
    /// the flush policy says so (see [`crate::exec_overlay`]).
    pub fn apply_executed(&self, height: u64, block: Executed) -> Result<(), StorageError> {
        {
            let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
            for h in &block.committed {
                seen.insert(h);
            }
        }
        let now = Instant::now();
        let due = {
            let mut overlay = self.exec.write().unwrap_or_else(PoisonError::into_inner);
            overlay
                .apply(height, block, now)
                .map_err(|expected| StorageError::HeightGap {
                    got: height,
                    expected,
                })?;
            overlay.is_due(&self.flush_policy, now)
        };
        if due {
            self.flush_executed()?;
        }
        Ok(())
    }

    /// Writes the waiting executed effects if the flush policy's age limit has passed.
    pub fn flush_executed_if_due(&self) -> Result<(), StorageError> {
        if self.overlay().is_due(&self.flush_policy, Instant::now()) {
            self.flush_executed()?;
        }
        Ok(())
    }

    /// Writes every waiting executed effect in one durable transaction, index entries sorted by
    /// hash and state writes by key, with the new executed height. One caller at a time (the
    /// driver): readers keep reading the overlay until the write is visible.
    pub fn flush_executed(&self) -> Result<(), StorageError> {
        let overlay = self.overlay();
        if overlay.is_empty() {
            return Ok(());
        }
        self.write(|w| {
            {
                let mut kv = w.txn.open_table(APP_KV)?;
                for (k, v) in overlay.writes() {
                    match v {
                        Some(v) => kv.insert(k, v)?,
                        None => kv.remove(k)?,
                    };
                }
            }
            for (height, txs) in overlay.heights() {
                w.put_block_txs(height, txs)?;
            }
            w.put_meta(meta::EXECUTED, &overlay.executed().to_be_bytes())
        })?;
        drop(overlay);
        let run = {
            let mut overlay = self.exec.write().unwrap_or_else(PoisonError::into_inner);
            overlay.clear();
            let executed = overlay.executed();
            let retry = overlay.frozen().filter(|_| self.merge_failed());
            overlay
                .freeze_index(&self.flush_policy)
                .or(retry)
                .map(|run| (run, executed))
        };
        if let Some((run, upto)) = run {
            self.start_merge(run, upto);
        }
        Ok(())
    }

    /// Merges a frozen run of index entries (every entry up to height `upto`) into the index
    /// file on a thread of its own; the overlay forgets the run once the file holds it.
    fn start_merge(&self, run: Arc<Vec<(Hash32, u64)>>, upto: u64) {
        let mut slot = self.merge.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(previous) = slot.take() {
            // At most one at a time: freezing waits for the previous run to be merged.
            let _ = previous.join();
        }
        let db = self.index_db.clone();
        let exec = self.exec.clone();
        *slot = Some(std::thread::spawn(move || {
            let started = Instant::now();
            match merge_run(&db, &run, upto) {
                Ok(()) => {
                    exec.write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .merged(&run);
                    tracing::debug!(
                        entries = run.len(),
                        upto,
                        ms = started.elapsed().as_millis() as u64,
                        "merged a run into the transaction index"
                    );
                }
                // The run stays in memory and readable; a restart rebuilds it from the stored
                // transaction lists.
                Err(e) => tracing::error!(error = %e, "merging into the transaction index failed"),
            }
        }));
    }

    /// Whether the last merge thread ended while its run is still frozen (it failed).
    fn merge_failed(&self) -> bool {
        self.merge
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .is_some_and(std::thread::JoinHandle::is_finished)
    }

    /// Waits for a running index merge to finish (at shutdown).
    pub fn wait_index_merge(&self) {
        if let Some(handle) = self
            .merge
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = handle.join();
        }
    }
}

/// Writes a sorted run into the index file with its new height, durably, in one transaction.
fn merge_run(db: &Database, run: &[(Hash32, u64)], upto: u64) -> Result<(), StorageError> {
    let mut txn = db.begin_write()?;
    txn.set_durability(Durability::Immediate)?;
    {
        let mut t = txn.open_table(TX_INDEX)?;
        for (h, height) in run {
            t.insert(h, *height)?;
        }
        txn.open_table(INDEX_META)?.insert(INDEXED, upto)?;
    }
    txn.commit()?;
    Ok(())
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

/// The handle a [`Store::write`] closure writes through; everything it writes commits together.
pub struct Writer<'a> {
    txn: &'a redb::WriteTransaction,
    batches: &'a BatchLog,
}

impl Writer<'_> {
    /// Stores a block under its id.
    pub fn put_block(&mut self, id: &Hash32, bytes: &[u8]) -> Result<(), StorageError> {
        self.txn.open_table(BLOCKS)?.insert(id, bytes)?;
        Ok(())
    }

    /// Stores a block that is not committed yet (handed back to consensus after a restart).
    pub fn put_pending_block(
        &mut self,
        id: &Hash32,
        round: u64,
        bytes: &[u8],
    ) -> Result<(), StorageError> {
        self.put_block(id, bytes)?;
        self.txn.open_table(UNCOMMITTED)?.insert(id, round)?;
        Ok(())
    }

    /// Forgets pending blocks at or below the committed root's round (committed or abandoned).
    pub fn prune_pending(&mut self, root_round: u64) -> Result<(), StorageError> {
        let dropped: Vec<Hash32> = self
            .txn
            .open_table(UNCOMMITTED)?
            .extract_if(|_, round| round <= root_round)?
            .map(|e| e.map(|(id, _)| *id.value()))
            .collect::<Result<_, _>>()?;
        let at = self.committed_height()?;
        let committed = self.txn.open_table(ID_HEIGHTS)?;
        let mut t = self.txn.open_table(DROPPED)?;
        for id in &dropped {
            if committed.get(id)?.is_none() {
                t.insert(id, at)?;
            }
        }
        Ok(())
    }

    /// Stores the QC certifying block `block_id`.
    pub fn put_qc(&mut self, block_id: &Hash32, bytes: &[u8]) -> Result<(), StorageError> {
        self.txn.open_table(QCS)?.insert(block_id, bytes)?;
        Ok(())
    }

    /// Stores a batch under its digest (in the batch log, synced before this write commits
    /// when it is durable). Named by its content, it stays stored even if the write fails.
    pub fn put_batch(&mut self, digest: &Hash32, bytes: &[u8]) -> Result<(), StorageError> {
        self.batches.append(digest, bytes)?;
        Ok(())
    }

    /// Marks a stored batch as sealed here from client transactions (`seq`: seal order).
    pub fn put_local_batch(&mut self, digest: &Hash32, seq: u64) -> Result<(), StorageError> {
        self.txn.open_table(LOCAL_BATCHES)?.insert(digest, seq)?;
        Ok(())
    }

    /// Forgets a local batch once a committed block carried it.
    pub fn forget_local_batch(&mut self, digest: &Hash32) -> Result<(), StorageError> {
        self.txn.open_table(LOCAL_BATCHES)?.remove(digest)?;
        Ok(())
    }

    /// A value of the `meta` table, as seen inside this transaction.
    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let t = self.txn.open_table(META)?;
        let v = t.get(key)?.map(|v| v.value().to_vec());
        Ok(v)
    }

    /// Stores a value of the `meta` table (see [`meta`]).
    pub fn put_meta(&mut self, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
        self.txn.open_table(META)?.insert(key, bytes)?;
        Ok(())
    }

    /// Stores the consensus safety state, refusing one behind the stored state (in epoch, last
    /// voted, one-chain, timeout or proposal round): a second guard, after the order in which the
    /// driver applies actions, against signing twice after a restart.
    pub fn put_safety(&mut self, state: &SafetyState) -> Result<(), StorageError> {
        if let Some(bytes) = self.get_meta(meta::SAFETY)? {
            let stored = SafetyState::decode(&bytes)
                .map_err(|_| StorageError::Malformed(meta::SAFETY.to_string()))?;
            if let Some(counter) = state.behind(&stored) {
                return Err(StorageError::SafetyRegression(counter));
            }
        }
        self.put_meta(meta::SAFETY, &state.encode())
    }

    /// Stores the record that ended `epoch`.
    pub fn put_epoch_change(&mut self, epoch: u64, bytes: &[u8]) -> Result<(), StorageError> {
        self.txn.open_table(EPOCH_CHANGES)?.insert(epoch, bytes)?;
        Ok(())
    }

    /// The highest committed height as seen inside this transaction.
    pub fn committed_height(&self) -> Result<u64, StorageError> {
        let t = self.txn.open_table(HEIGHT_IDS)?;
        let h = t.last()?.map(|(k, _)| k.value()).unwrap_or(0);
        Ok(h)
    }

    /// Records block `id` as committed at `height` with its proof. Heights must follow each
    /// other without gaps, so a crash can never leave a hole in the committed chain.
    pub fn commit_block(
        &mut self,
        height: u64,
        id: &Hash32,
        proof: &[u8],
    ) -> Result<(), StorageError> {
        let expected = self.committed_height()? + 1;
        if height != expected {
            return Err(StorageError::HeightGap {
                got: height,
                expected,
            });
        }
        self.txn.open_table(HEIGHT_IDS)?.insert(height, id)?;
        self.txn.open_table(ID_HEIGHTS)?.insert(id, height)?;
        self.txn.open_table(COMMIT_PROOFS)?.insert(height, proof)?;
        self.batches.set_height(height);
        Ok(())
    }

    /// Records the batches the block committed at `height` orders (kept in the batch log while
    /// the height is retained).
    pub fn put_block_batches(
        &mut self,
        height: u64,
        digests: &[Hash32],
    ) -> Result<(), StorageError> {
        self.txn
            .open_table(BLOCK_BATCHES)?
            .insert(height, digests.concat().as_slice())?;
        self.batches.mark_committed(digests, height);
        Ok(())
    }

    /// Records the list of transactions executed at `height` (the overlay's flush writes it).
    fn put_block_txs(&mut self, height: u64, hashes: &[Hash32]) -> Result<(), StorageError> {
        let mut all = Vec::with_capacity(hashes.len() * 32);
        for h in hashes {
            all.extend_from_slice(h);
        }
        self.txn
            .open_table(BLOCK_TXS)?
            .insert(height, all.as_slice())?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exec_overlay::test_block as executed;

    #[test]
    fn an_older_safety_state_never_overwrites_a_newer_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let newer = SafetyState {
            last_voted_round: 7,
            highest_timeout_round: 6,
            ..SafetyState::new(2)
        };
        s.write(|w| w.put_safety(&newer)).expect("first write");
        let older_round = SafetyState {
            last_voted_round: 6,
            ..newer.clone()
        };
        let older_epoch = SafetyState {
            last_voted_round: 99,
            ..SafetyState::new(1)
        };
        for (older, counter) in [(older_round, "last_voted_round"), (older_epoch, "epoch")] {
            let e = s.write(|w| w.put_safety(&older)).expect_err("older state");
            assert!(
                matches!(e, StorageError::SafetyRegression(c) if c == counter),
                "{e}"
            );
        }
        let stored = s.get_meta(meta::SAFETY).expect("read").expect("stored");
        assert_eq!(SafetyState::decode(&stored).expect("decode"), newer);
        // Equal or later states are written; a later epoch supersedes the rounds.
        let later_epoch = SafetyState::new(3);
        s.write(|w| {
            w.put_safety(&newer)?;
            w.put_safety(&later_epoch)
        })
        .expect("equal, then later");
        let stored = s.get_meta(meta::SAFETY).expect("read").expect("stored");
        assert_eq!(SafetyState::decode(&stored).expect("decode"), later_epoch);
    }

    #[test]
    fn writes_survive_reopen() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path()).expect("open");
            s.write(|w| {
                w.put_block(&[1; 32], b"block")?;
                w.put_qc(&[1; 32], b"qc")?;
                w.put_meta(meta::SAFETY, b"safe")?;
                w.commit_block(1, &[1; 32], b"proof")?;
                w.put_epoch_change(0, b"rec0")?;
                w.put_epoch_change(1, b"rec1")
            })
            .expect("write");
            s.apply_executed(1, executed(&[7, 8], &[("k", Some("v"))]))
                .expect("execute");
            s.flush_executed().expect("flush");
        }
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.executed_height(), 1);
        assert_eq!(s.kv_get(b"k").expect("kv"), Some(b"v".to_vec()));
        assert_eq!(s.get_block(&[1; 32]).expect("get"), Some(b"block".to_vec()));
        assert_eq!(s.get_qc(&[1; 32]).expect("get"), Some(b"qc".to_vec()));
        assert_eq!(
            s.get_meta(meta::SAFETY).expect("get"),
            Some(b"safe".to_vec())
        );
        assert_eq!(s.committed_height().expect("h"), 1);
        assert_eq!(s.committed_id(1).expect("id"), Some([1; 32]));
        assert_eq!(s.height_of(&[1; 32]).expect("h"), Some(1));
        assert_eq!(s.commit_proof(1).expect("p"), Some(b"proof".to_vec()));
        assert_eq!(s.block_txs(1).expect("txs"), vec![[7; 32], [8; 32]]);
        assert_eq!(s.tx_height(&[8; 32]).expect("tx"), Some(1));
        assert_eq!(s.tx_height(&[9; 32]).expect("tx"), None);
        assert_eq!(
            s.tx_heights(&[[9; 32], [7; 32]]).expect("txs"),
            vec![None, Some(1)]
        );
        let recs = s.epoch_changes_since(1, 10).expect("recs");
        assert_eq!(recs, vec![(1, b"rec1".to_vec())]);
    }

    #[test]
    fn failed_closure_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let r: Result<(), _> = s.write(|w| {
            w.put_block(&[2; 32], b"b")?;
            Err(StorageError::Malformed("test".into()))
        });
        assert!(r.is_err());
        assert_eq!(s.get_block(&[2; 32]).expect("get"), None);
    }

    #[test]
    fn heights_have_no_gaps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        let r = s.write(|w| w.commit_block(2, &[1; 32], b"p"));
        assert!(matches!(
            r,
            Err(StorageError::HeightGap {
                got: 2,
                expected: 1
            })
        ));
        s.write(|w| {
            w.commit_block(1, &[1; 32], b"p")?;
            w.commit_block(2, &[2; 32], b"p")
        })
        .expect("in order");
        assert_eq!(s.committed_height().expect("h"), 2);
    }

    #[test]
    fn second_open_of_a_dir_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _s = Store::open(dir.path()).expect("open");
        match Store::open(dir.path()) {
            Err(StorageError::Locked(p)) => assert_eq!(p, dir.path()),
            other => panic!("expected Locked, got {other:?}"),
        }
    }

    #[test]
    fn lock_is_released_on_drop() {
        let dir = tempfile::tempdir().expect("tempdir");
        drop(Store::open(dir.path()).expect("open"));
        Store::open(dir.path()).expect("reopen after drop");
    }

    #[test]
    fn corrupt_db_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(DB_FILE), vec![0xAB; 8192]).expect("write garbage");
        match Store::open(dir.path()) {
            Err(e @ StorageError::Corrupt { .. }) => {
                assert!(e.to_string().contains("corrupt"), "{e}");
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
    }

    #[test]
    fn pending_blocks_come_back_in_round_order_until_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path()).expect("open");
            s.write(|w| {
                w.put_pending_block(&[3; 32], 7, b"r7")?;
                w.put_pending_block(&[1; 32], 5, b"r5")?;
                w.put_pending_block(&[2; 32], 6, b"r6")
            })
            .expect("write");
        }
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            s.uncommitted_blocks().expect("list"),
            vec![b"r5".to_vec(), b"r6".to_vec(), b"r7".to_vec()]
        );
        s.write(|w| w.prune_pending(6)).expect("prune");
        assert_eq!(s.uncommitted_blocks().expect("list"), vec![b"r7".to_vec()]);
        assert_eq!(s.get_block(&[1; 32]).expect("get"), Some(b"r5".to_vec()));
    }

    #[test]
    fn executed_effects_are_read_at_once_and_lost_in_a_crash_only_above_the_flush() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path()).expect("open");
            assert_eq!(s.executed_height(), 0);
            s.apply_executed(1, executed(&[1], &[("a", Some("1")), ("b", Some("1"))]))
                .expect("1");
            s.flush_executed().expect("flush");
            s.apply_executed(2, executed(&[2], &[("a", None), ("c", Some("2"))]))
                .expect("2");
            // Waiting effects read like durable ones.
            assert_eq!(s.kv_get(b"a").expect("a"), None);
            assert_eq!(s.kv_get(b"b").expect("b"), Some(b"1".to_vec()));
            assert_eq!(s.kv_get(b"c").expect("c"), Some(b"2".to_vec()));
            assert_eq!(
                s.tx_heights(&[[1; 32], [2; 32], [3; 32]]).expect("idx"),
                vec![Some(1), Some(2), None]
            );
            assert_eq!(s.block_txs(2).expect("txs"), vec![[2; 32]]);
            assert!(matches!(
                s.apply_executed(4, Executed::default()),
                Err(StorageError::HeightGap {
                    got: 4,
                    expected: 3
                })
            ));
            // Dropped without a flush: a crash.
        }
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.executed_height(), 1, "height 2 was never written");
        assert_eq!(s.kv_get(b"a").expect("a"), Some(b"1".to_vec()));
        assert_eq!(s.kv_get(b"c").expect("c"), None);
        assert_eq!(s.tx_height(&[2; 32]).expect("idx"), None);
        assert_eq!(s.tx_height(&[1; 32]).expect("idx"), Some(1));
    }

    #[test]
    fn a_store_from_before_grouped_execution_counts_its_commits_as_executed() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path()).expect("open");
            s.write(|w| {
                w.commit_block(1, &[1; 32], b"p")?;
                w.commit_block(2, &[2; 32], b"p")?;
                w.txn.open_table(META)?.remove(meta::EXECUTED)?;
                w.txn.open_table(TX_INDEX)?.insert(&[7; 32], 2)?;
                Ok(())
            })
            .expect("old layout");
        }
        std::fs::remove_file(dir.path().join(INDEX_FILE)).expect("no index file then");
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(s.executed_height(), 2);
        assert_eq!(s.tx_height(&[7; 32]).expect("old index"), Some(2));
        assert_eq!(s.tx_height(&[8; 32]).expect("absent"), None);
    }

    #[test]
    fn index_runs_merge_into_the_index_file_and_a_crash_rebuilds_the_rest() {
        let dir = tempfile::tempdir().expect("tempdir");
        let policy = FlushPolicy {
            max_txs: 1,
            max_blocks: 1,
            max_age: std::time::Duration::from_secs(60),
            max_index: 3,
        };
        {
            let s = Store::open(dir.path())
                .expect("open")
                .with_flush_policy(policy);
            s.apply_executed(1, executed(&[1, 2], &[])).expect("1");
            s.apply_executed(2, executed(&[3], &[]))
                .expect("2: flushes and freezes 1..=2");
            s.wait_index_merge();
            s.apply_executed(3, executed(&[4], &[])).expect("3");
            assert_eq!(
                s.tx_heights(&[[1; 32], [3; 32], [4; 32], [5; 32]])
                    .expect("idx"),
                vec![Some(1), Some(2), Some(3), None]
            );
            let txn = s.index_db.begin_read().expect("read");
            assert_eq!(
                txn.open_table(INDEX_META)
                    .expect("meta")
                    .get(INDEXED)
                    .expect("get")
                    .map(|v| v.value()),
                Some(2)
            );
            assert!(
                txn.open_table(TX_INDEX)
                    .expect("t")
                    .get(&[4; 32])
                    .expect("get")
                    .is_none(),
                "height 3 is not merged"
            );
        }
        {
            let s = Store::open(dir.path()).expect("reopen");
            assert_eq!(s.executed_height(), 3);
            assert_eq!(
                s.tx_heights(&[[2; 32], [4; 32], [5; 32]]).expect("idx"),
                vec![Some(1), Some(3), None],
                "height 3's entry comes back from its stored transaction list"
            );
        }
        std::fs::remove_file(dir.path().join(INDEX_FILE)).expect("lose the index file");
        let s = Store::open(dir.path()).expect("reopen without the index file");
        assert_eq!(
            s.tx_heights(&[[1; 32], [3; 32], [4; 32]]).expect("idx"),
            vec![Some(1), Some(2), Some(3)],
            "rebuilt from every stored transaction list"
        );
    }

    #[test]
    fn lazy_writes_are_visible() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        s.write_lazy(|w| w.put_batch(&[3; 32], b"batch"))
            .expect("lazy");
        assert!(s.has_batch(&[3; 32]).expect("has"));
        assert_eq!(s.get_batch(&[3; 32]).expect("get"), Some(b"batch".to_vec()));
    }

    #[test]
    fn batches_of_an_older_store_are_read_beside_the_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let s = Store::open(dir.path()).expect("open");
            // Where a store written before the batch log kept its batches.
            s.write(|w| {
                w.txn.open_table(BATCHES)?.insert(&[1; 32], &b"old"[..])?;
                w.put_local_batch(&[1; 32], 0)?;
                w.put_batch(&[2; 32], b"new")?;
                w.put_local_batch(&[2; 32], 1)
            })
            .expect("write");
            s.put_batch_lazy(&[3; 32], b"lazy").expect("lazy");
        }
        let s = Store::open(dir.path()).expect("reopen");
        assert_eq!(
            s.get_batches(&[[2; 32], [1; 32], [3; 32], [4; 32]])
                .expect("get"),
            vec![
                Some(b"new".to_vec()),
                Some(b"old".to_vec()),
                Some(b"lazy".to_vec()),
                None
            ]
        );
        assert!(s.has_batch(&[1; 32]).expect("has") && !s.has_batch(&[4; 32]).expect("has"));
        assert_eq!(
            s.local_batches().expect("local"),
            vec![(0, [1; 32], b"old".to_vec()), (1, [2; 32], b"new".to_vec())]
        );
        assert!(
            dir.path().join(BATCH_DIR).join("seg-00000000.log").exists(),
            "new batches go to the log"
        );
    }
}
