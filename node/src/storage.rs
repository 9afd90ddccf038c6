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
//! The data directory is locked by an exclusive lock on `<dir>/LOCK` for the life of the store,
//! so two nodes can never share one directory.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::seen_filter::SeenFilter;

/// A 32-byte identifier: block ids, batch digests, transaction hashes.
pub type Hash32 = [u8; 32];

const BLOCKS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("blocks");
const QCS: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("qcs");
const HEIGHT_IDS: TableDefinition<u64, &[u8; 32]> = TableDefinition::new("height_ids");
const ID_HEIGHTS: TableDefinition<&[u8; 32], u64> = TableDefinition::new("id_heights");
const COMMIT_PROOFS: TableDefinition<u64, &[u8]> = TableDefinition::new("commit_proofs");
const BLOCK_TXS: TableDefinition<u64, &[u8]> = TableDefinition::new("block_txs");
const BATCHES: TableDefinition<&[u8; 32], &[u8]> = TableDefinition::new("batches");
const TX_INDEX: TableDefinition<&[u8; 32], u64> = TableDefinition::new("tx_index");
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
}

/// The on-disk layout this build reads and writes.
pub const SCHEMA_VERSION: u32 = 1;

/// The file name of the database inside the data directory.
pub const DB_FILE: &str = "node.redb";
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
    /// A stored value has the wrong shape (a torn or foreign value).
    #[error("stored value under {0} is malformed")]
    Malformed(String),
    /// Any other redb error.
    #[error("storage error: {0}")]
    Db(#[from] redb::Error),
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
    /// Every hash of the transaction index, as a Bloom filter (see [`SeenFilter`]).
    seen: Arc<RwLock<SeenFilter>>,
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
        let db = match Database::create(&path) {
            Ok(db) => db,
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => {
                return Err(StorageError::Locked(dir.to_path_buf()));
            }
            Err(redb::DatabaseError::Storage(redb::StorageError::Io(source))) => {
                // redb reports a foreign or damaged header as InvalidData.
                if source.kind() == std::io::ErrorKind::InvalidData {
                    return Err(corrupt(source.to_string()));
                }
                return Err(StorageError::Io { path, source });
            }
            Err(e) => return Err(corrupt(e.to_string())),
        };
        let store = Self {
            db: Arc::new(db),
            seen: Arc::new(RwLock::new(SeenFilter::new())),
            _lock: Arc::new(lock),
        };
        store.init_schema().map_err(|e| match e {
            StorageError::Malformed(what) => corrupt(format!("bad {what}")),
            other => other,
        })?;
        store.load_seen_filter()?;
        Ok(store)
    }

    /// Fills the filter from the transaction index (one sequential scan at open).
    fn load_seen_filter(&self) -> Result<(), StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(TX_INDEX)?;
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        for entry in t.iter()? {
            let (k, _) = entry?;
            seen.insert(k.value());
        }
        Ok(())
    }

    /// Creates every table and stamps or checks the layout version.
    fn init_schema(&self) -> Result<(), StorageError> {
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
                    Ok(())
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
                w.put_meta(meta::SCHEMA, &SCHEMA_VERSION.to_be_bytes())
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
                seen: &self.seen,
            };
            f(&mut w)?
        };
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
        self.get_h(BATCHES, digest)
    }

    /// Whether a batch is stored.
    pub fn has_batch(&self, digest: &Hash32) -> Result<bool, StorageError> {
        let txn = self.db.begin_read()?;
        let t = txn.open_table(BATCHES)?;
        Ok(t.get(digest)?.is_some())
    }

    /// The commit proof of the block at `height`.
    pub fn commit_proof(&self, height: u64) -> Result<Option<Vec<u8>>, StorageError> {
        self.get_n(COMMIT_PROOFS, height)
    }

    /// The application's value of `key`.
    pub fn kv_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StorageError> {
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
        let Some(bytes) = self.get_n(BLOCK_TXS, height)? else {
            return Ok(Vec::new());
        };
        if bytes.len() % 32 != 0 {
            return Err(StorageError::Malformed(format!("block_txs[{height}]")));
        }
        Ok(bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                h
            })
            .collect())
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
        let txn = self.db.begin_read()?;
        let local = txn.open_table(LOCAL_BATCHES)?;
        let batches = txn.open_table(BATCHES)?;
        let mut digests = Vec::new();
        for item in local.iter()? {
            let (k, v) = item?;
            digests.push((v.value(), *k.value()));
        }
        digests.sort_unstable();
        let mut out = Vec::with_capacity(digests.len());
        for (seq, d) in digests {
            if let Some(b) = batches.get(&d)? {
                out.push((seq, d, b.value().to_vec()));
            }
        }
        Ok(out)
    }

    /// [`Store::tx_height`] of many transactions in one read transaction (the ingest path checks
    /// a whole request at once), in the order given.
    pub fn tx_heights(&self, hashes: &[Hash32]) -> Result<Vec<Option<u64>>, StorageError> {
        let maybe: Vec<bool> = {
            let seen = self.seen.read().unwrap_or_else(PoisonError::into_inner);
            hashes.iter().map(|h| seen.may_contain(h)).collect()
        };
        if !maybe.contains(&true) {
            return Ok(vec![None; hashes.len()]);
        }
        let txn = self.db.begin_read()?;
        let t = txn.open_table(TX_INDEX)?;
        hashes
            .iter()
            .zip(maybe)
            .map(|(h, maybe)| match maybe {
                true => Ok(t.get(h)?.map(|v| v.value())),
                false => Ok(None),
            })
            .collect()
    }

    /// The height at which the transaction `hash` was committed, if it was.
    pub fn tx_height(&self, hash: &Hash32) -> Result<Option<u64>, StorageError> {
        if !self
            .seen
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .may_contain(hash)
        {
            return Ok(None);
        }
        let txn = self.db.begin_read()?;
        let t = txn.open_table(TX_INDEX)?;
        Ok(t.get(hash)?.map(|v| v.value()))
    }
}

/// The handle a [`Store::write`] closure writes through; everything it writes commits together.
pub struct Writer<'a> {
    txn: &'a redb::WriteTransaction,
    seen: &'a RwLock<SeenFilter>,
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
        let mut t = self.txn.open_table(UNCOMMITTED)?;
        t.retain(|_, round| round > root_round)?;
        Ok(())
    }

    /// Stores the QC certifying block `block_id`.
    pub fn put_qc(&mut self, block_id: &Hash32, bytes: &[u8]) -> Result<(), StorageError> {
        self.txn.open_table(QCS)?.insert(block_id, bytes)?;
        Ok(())
    }

    /// Stores a batch under its digest.
    pub fn put_batch(&mut self, digest: &Hash32, bytes: &[u8]) -> Result<(), StorageError> {
        self.txn.open_table(BATCHES)?.insert(digest, bytes)?;
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

    /// Stores a value of the `meta` table (see [`meta`]).
    pub fn put_meta(&mut self, key: &str, bytes: &[u8]) -> Result<(), StorageError> {
        self.txn.open_table(META)?.insert(key, bytes)?;
        Ok(())
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
        Ok(())
    }

    /// A batch by digest, as seen inside this transaction.
    pub fn get_batch(&self, digest: &Hash32) -> Result<Option<Vec<u8>>, StorageError> {
        let t = self.txn.open_table(BATCHES)?;
        let v = t.get(digest)?.map(|v| v.value().to_vec());
        Ok(v)
    }

    /// The tables executing a block writes, opened once for the whole block rather than once
    /// per transaction (opening a table is a B-tree lookup of its own).
    pub fn exec_tables(&self) -> Result<ExecTables<'_>, StorageError> {
        Ok(ExecTables {
            index: self.txn.open_table(TX_INDEX)?,
            kv: self.txn.open_table(APP_KV)?,
            seen: self.seen,
            fresh: Vec::new(),
        })
    }

    /// Records the list of transactions executed at `height` (the index entries themselves are
    /// written by [`ExecTables::index_new`]).
    pub fn put_block_txs(&mut self, height: u64, hashes: &[Hash32]) -> Result<(), StorageError> {
        let mut all = Vec::with_capacity(hashes.len() * 32);
        for h in hashes {
            all.extend_from_slice(h);
        }
        self.txn
            .open_table(BLOCK_TXS)?
            .insert(height, all.as_slice())?;
        Ok(())
    }

    /// Sets an application key.
    pub fn kv_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.txn.open_table(APP_KV)?.insert(key, value)?;
        Ok(())
    }

    /// Deletes an application key (a no-op when absent).
    pub fn kv_delete(&mut self, key: &[u8]) -> Result<(), StorageError> {
        self.txn.open_table(APP_KV)?.remove(key)?;
        Ok(())
    }
}

/// The transaction index and the application state of one write transaction, open together
/// while a block executes.
pub struct ExecTables<'t> {
    index: redb::Table<'t, &'static [u8; 32], u64>,
    kv: redb::Table<'t, &'static [u8], &'static [u8]>,
    seen: &'t RwLock<SeenFilter>,
    /// Hashes new to the index, added to the filter together when the tables close.
    fresh: Vec<Hash32>,
}

impl Drop for ExecTables<'_> {
    /// Fills the filter with this block's new hashes under one lock, before the write
    /// transaction commits (the tables close first), so the filter never misses a durable hash;
    /// an aborted write only leaves harmless false positives.
    fn drop(&mut self) {
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        for h in &self.fresh {
            seen.insert(h);
        }
    }
}

impl ExecTables<'_> {
    /// Records transaction `hash` as committed at `height` unless it was committed before
    /// (earlier, or earlier in this transaction); returns whether it is new. One insert instead
    /// of a lookup followed by an insert: a duplicate, which is rare, puts the old height back.
    pub fn index_new(&mut self, hash: &Hash32, height: u64) -> Result<bool, StorageError> {
        let old = self.index.insert(hash, height)?.map(|v| v.value());
        match old {
            None => {
                self.fresh.push(*hash);
                Ok(true)
            }
            Some(first) => {
                self.index.insert(hash, first)?;
                Ok(false)
            }
        }
    }

    /// Sets an application key.
    pub fn kv_put(&mut self, key: &[u8], value: &[u8]) -> Result<(), StorageError> {
        self.kv.insert(key, value)?;
        Ok(())
    }

    /// Deletes an application key (a no-op when absent).
    pub fn kv_delete(&mut self, key: &[u8]) -> Result<(), StorageError> {
        self.kv.remove(key)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                let mut t = w.exec_tables()?;
                assert!(t.index_new(&[7; 32], 1)?);
                assert!(t.index_new(&[8; 32], 1)?);
                assert!(!t.index_new(&[8; 32], 1)?, "second time is a duplicate");
                drop(t);
                w.put_block_txs(1, &[[7; 32], [8; 32]])?;
                w.put_epoch_change(0, b"rec0")?;
                w.put_epoch_change(1, b"rec1")
            })
            .expect("write");
        }
        let s = Store::open(dir.path()).expect("reopen");
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
    fn kv_put_and_delete() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = Store::open(dir.path()).expect("open");
        s.write(|w| w.kv_put(b"k", b"v")).expect("put");
        assert_eq!(s.kv_get(b"k").expect("get"), Some(b"v".to_vec()));
        s.write(|w| w.kv_delete(b"k")).expect("del");
        assert_eq!(s.kv_get(b"k").expect("get"), None);
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
}
