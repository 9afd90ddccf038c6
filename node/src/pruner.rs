//! Bounded storage: a background thread that keeps the store within its retention horizon and
//! measures it against its disk quota, off the consensus task.
//!
//! Each pass: the horizon is the committed height + 1 − `storage.retain_heights` (never above
//! what a restart still needs, see [`Store::prunable_below`]); committed history below it goes
//! ([`Store::prune_history`]), except the blocks that ended an epoch; then the batch log drops
//! the batches only pruned heights referenced and the old ones nothing references, keeping
//! what the mempool holds and what uncommitted blocks name ([`Store::compact_batches`]); then
//! the data directory is measured, for the `dstack_storage_bytes{file}` gauges and the
//! [`DiskQuota`] the mempool checks. Every step is a sequence of atomic writes whose every
//! prefix is a store that opens, so a crash anywhere in a pass is harmless.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use consensus::codec::Decode;
use consensus::epoch::EpochChangeRecord;
use consensus::types::Block;
use prost::Message as _;

use crate::disk_quota::DiskQuota;
use crate::mempool::Mempool;
use crate::metrics::{FileLabel, KindLabel, Metrics};
use crate::storage::{Hash32, StorageError, Store};

/// Heights deleted per write transaction: small, so the consensus task's writes (redb has one
/// writer) never wait long behind a prune.
pub const PRUNE_CHUNK: u64 = 256;
/// Heights deleted per pass at most: a node that starts with a long backlog (retention just
/// lowered) works it off over several passes and stops promptly.
pub const MAX_HEIGHTS_PER_PASS: u64 = 16 * PRUNE_CHUNK;

/// How the pruner runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PrunerConfig {
    /// Committed heights kept (0: keep everything).
    pub retain_heights: u64,
    /// Time between passes.
    pub interval: Duration,
}

/// What one pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// The horizon asked for (0: no pruning).
    pub horizon: u64,
    /// Heights deleted.
    pub heights: u64,
    /// Batches deleted.
    pub batches: u64,
    /// Bytes the data directory takes afterwards.
    pub bytes: u64,
}

/// The retention horizon for a committed height: the lowest height kept (0: nothing pruned).
pub fn horizon(committed: u64, retain: u64) -> u64 {
    if retain == 0 {
        return 0;
    }
    committed.saturating_add(1).saturating_sub(retain)
}

/// The ids of the blocks that ended an epoch (each stored record's B0): never pruned.
fn epoch_ends(store: &Store) -> Result<HashSet<Hash32>, StorageError> {
    let mut out = HashSet::new();
    for (epoch, bytes) in store.epoch_changes_since(0, usize::MAX)? {
        let r = EpochChangeRecord::decode(&bytes)
            .map_err(|_| StorageError::Malformed(format!("epoch_changes[{epoch}]")))?;
        if let Some(b0) = r.b0().map(Block::id) {
            out.insert(b0.0);
        }
    }
    Ok(out)
}

/// The batches the store must keep whatever their age: the mempool's and those the persisted
/// uncommitted blocks name.
fn pinned_batches(
    store: &Store,
    mempool: &Mutex<Mempool>,
) -> Result<HashSet<Hash32>, StorageError> {
    let mut pins = mempool
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .batch_digests();
    for bytes in store.uncommitted_blocks()? {
        let Ok(b) = proto::v1::Block::decode(bytes.as_slice()) else {
            continue;
        };
        pins.extend(
            b.batch_digests
                .iter()
                .filter_map(|d| <Hash32>::try_from(d.as_slice()).ok()),
        );
    }
    Ok(pins)
}

/// Runs one pass (see the module documentation).
pub fn prune_once(
    store: &Store,
    data_dir: &std::path::Path,
    mempool: &Mutex<Mempool>,
    cfg: &PrunerConfig,
    quota: &DiskQuota,
    metrics: &Metrics,
) -> Result<Pass, StorageError> {
    let mut pass = Pass {
        horizon: horizon(store.committed_height()?, cfg.retain_heights),
        ..Pass::default()
    };
    if pass.horizon > 1 {
        let keep = epoch_ends(store)?;
        pass.heights =
            store.prune_history(pass.horizon, &keep, PRUNE_CHUNK, MAX_HEIGHTS_PER_PASS)?;
        // Only what history no longer holds: the pruned height, not the horizon asked for.
        let below = store.pruned_height()?;
        if below > 1 {
            pass.batches = store
                .compact_batches(below, || pinned_batches(store, mempool))?
                .values;
        }
    }
    let count = |kind: &str, n: u64| {
        if n > 0 {
            metrics
                .storage_pruned
                .get_or_create(&KindLabel { kind: kind.into() })
                .inc_by(n);
        }
    };
    count("heights", pass.heights);
    count("batches", pass.batches);
    for (file, bytes) in store.disk_usage(data_dir) {
        metrics
            .storage_bytes
            .get_or_create(&FileLabel { file: file.into() })
            .set(bytes);
        pass.bytes = pass.bytes.saturating_add(bytes);
    }
    quota.set_used(pass.bytes);
    let over = quota.exceeded();
    if over.is_some() != (metrics.storage_over_quota.get() == 1) {
        match over {
            Some((used, max)) => tracing::warn!(
                used,
                max,
                "the store is above its disk quota (storage.max_disk_bytes): new transactions \
                 and batches are refused until pruning frees space"
            ),
            None => tracing::info!(
                used = pass.bytes,
                "the store is within its disk quota again"
            ),
        }
    }
    metrics.storage_over_quota.set(u64::from(over.is_some()));
    Ok(pass)
}

/// The background thread; stopped (and joined) when dropped.
pub struct Pruner {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: Option<JoinHandle<()>>,
}

impl Pruner {
    /// Starts the thread: a pass at once, then one every `cfg.interval`.
    pub fn spawn(
        store: Store,
        data_dir: PathBuf,
        mempool: Arc<Mutex<Mempool>>,
        cfg: PrunerConfig,
        quota: Arc<DiskQuota>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name("pruner".into())
            .spawn(move || {
                loop {
                    match prune_once(&store, &data_dir, &mempool, &cfg, &quota, &metrics) {
                        Ok(p) if p.heights > 0 || p.batches > 0 => tracing::debug!(
                            horizon = p.horizon,
                            heights = p.heights,
                            batches = p.batches,
                            bytes = p.bytes,
                            "pruned"
                        ),
                        Ok(_) => {}
                        // Nothing is lost by skipping a pass; the next one tries again.
                        Err(e) => tracing::warn!(error = %e, "pruning pass failed"),
                    }
                    let (lock, wake) = &*flag;
                    let stopped = lock.lock().unwrap_or_else(PoisonError::into_inner);
                    let (stopped, _) = wake
                        .wait_timeout_while(stopped, cfg.interval, |s| !*s)
                        .unwrap_or_else(PoisonError::into_inner);
                    if *stopped {
                        return;
                    }
                }
            })
            .ok();
        if handle.is_none() {
            tracing::error!("could not start the pruner thread: history is not pruned");
        }
        Self { stop, handle }
    }
}

impl Drop for Pruner {
    fn drop(&mut self) {
        let (lock, wake) = &*self.stop;
        *lock.lock().unwrap_or_else(PoisonError::into_inner) = true;
        wake.notify_all();
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::{self, CommitInput, KvTx};
    use crate::exec_overlay::FlushPolicy;
    use crate::mempool::{MempoolConfig, SealedBatch};

    #[test]
    fn the_horizon_keeps_exactly_retain_heights() {
        assert_eq!(horizon(1_000, 100), 901, "heights 901..=1000 are 100");
        assert_eq!(horizon(50, 100), 0);
        assert_eq!(horizon(100, 100), 1);
        assert_eq!(horizon(1_000, 0), 0, "0 keeps everything");
    }

    /// Segments of about eight test batches.
    const SEGMENT: u64 = 8 * 1_100;

    fn open(dir: &std::path::Path) -> Store {
        Store::open_with_segments(dir, SEGMENT)
            .expect("open")
            .with_flush_policy(FlushPolicy {
                max_txs: 1,
                max_blocks: 1,
                max_age: Duration::from_secs(60),
                max_index: 1,
            })
    }

    fn block_id(h: u64) -> Hash32 {
        *blake3::hash(&h.to_be_bytes()).as_bytes()
    }

    /// One batch of one ~1 kB transaction per height, committed and executed.
    fn commit(store: &Store, h: u64) -> Hash32 {
        let tx = KvTx::Put {
            key: format!("k{h}"),
            value: "v".repeat(1_000),
            nonce: Some(h),
        }
        .encode();
        let b = SealedBatch::from_txs(&[tx]);
        store.put_batch_lazy(&b.digest, &b.encoded).expect("batch");
        app::commit_block(
            store,
            CommitInput {
                height: h,
                id: &block_id(h),
                block: format!("block {h}").as_bytes(),
                proof: b"proof",
                batch_digests: &[b.digest],
                known_hashes: &[None],
                prune_round: None,
            },
        )
        .expect("commit");
        store.wait_index_merge();
        b.digest
    }

    fn pass(store: &Store, dir: &std::path::Path, retain: u64) -> Pass {
        let cfg = PrunerConfig {
            retain_heights: retain,
            interval: Duration::from_secs(1),
        };
        let mempool = Mutex::new(Mempool::new(MempoolConfig::default()));
        prune_once(
            store,
            dir,
            &mempool,
            &cfg,
            &DiskQuota::new(0),
            &Metrics::new(),
        )
        .expect("pass")
    }

    #[test]
    fn after_n_commits_with_retention_r_the_store_holds_r_heights_of_blocks_and_batches() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = open(dir.path());
        let (n, r) = (400u64, 100u64);
        let mut digests = Vec::new();
        for h in 1..=n {
            digests.push(commit(&store, h));
            if h % 50 == 0 {
                pass(&store, dir.path(), r);
            }
        }
        let p = pass(&store, dir.path(), r);
        assert_eq!(p.horizon, n + 1 - r);
        assert_eq!(store.pruned_height().expect("pruned"), n + 1 - r);
        for h in 1..=n {
            let kept = h > n - r;
            assert_eq!(store.committed_id(h).expect("id").is_some(), kept, "{h}");
            assert_eq!(store.get_block(&block_id(h)).expect("b").is_some(), kept);
            assert_eq!(store.commit_proof(h).expect("p").is_some(), kept);
            assert_eq!(store.block_txs(h).expect("txs").is_empty(), !kept);
            if kept {
                assert!(store.has_batch(&digests[h as usize - 1]).expect("has"));
            }
        }
        // What is left of the log: the retained heights' batches and at most the rest of the
        // segment that holds the oldest of them.
        assert!(
            store.batch_count() <= (r + 8) as usize,
            "{} batches stored",
            store.batch_count()
        );
        let batches = store
            .disk_usage(dir.path())
            .into_iter()
            .find(|(f, _)| *f == crate::storage::BATCH_DIR)
            .expect("batches")
            .1;
        assert!(batches <= (r + 8) * 1_100, "{batches} bytes of batches");
        // The application state and the de-duplication index stay whole.
        assert!(store.kv_get(b"k1").expect("kv").is_some());
        assert_eq!(store.committed_height().expect("h"), n);
    }

    #[test]
    fn retention_zero_keeps_everything_and_epoch_ends_are_never_pruned() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = open(dir.path());
        for h in 1..=60 {
            commit(&store, h);
        }
        assert_eq!(pass(&store, dir.path(), 0).heights, 0);
        assert!(store.committed_id(1).expect("id").is_some());
        let keep: HashSet<Hash32> = [block_id(7)].into_iter().collect();
        let pruned = store.prune_history(51, &keep, 16, u64::MAX).expect("prune");
        assert_eq!(pruned, 50);
        assert_eq!(store.height_of(&block_id(7)).expect("h"), Some(7));
        assert_eq!(store.committed_id(7).expect("id"), Some(block_id(7)));
        assert!(store.get_block(&block_id(7)).expect("b").is_some());
        assert!(store.committed_id(8).expect("id").is_none());
    }

    #[test]
    fn blocks_that_never_committed_go_once_their_drop_is_below_the_horizon() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = open(dir.path());
        let (fork, pending) = ([0xf0; 32], [0xf1; 32]);
        store
            .write(|w| {
                w.put_pending_block(&fork, 1, b"fork")?;
                w.put_pending_block(&pending, 9, b"pending")
            })
            .expect("persist");
        for h in 1..=3 {
            commit(&store, h);
        }
        // The root moved past round 5: the fork is abandoned at height 3.
        store.write(|w| w.prune_pending(5)).expect("prune pending");
        for h in 4..=10 {
            commit(&store, h);
        }
        store
            .prune_history(3, &HashSet::new(), 8, u64::MAX)
            .expect("prune");
        assert!(store.get_block(&fork).expect("b").is_some(), "dropped at 3");
        store
            .prune_history(4, &HashSet::new(), 8, u64::MAX)
            .expect("prune");
        assert_eq!(store.get_block(&fork).expect("b"), None);
        assert_eq!(
            store.get_block(&pending).expect("b"),
            Some(b"pending".to_vec())
        );
        assert_eq!(
            store.uncommitted_blocks().expect("u"),
            vec![b"pending".to_vec()]
        );
    }

    /// Copies a data directory as a crash right now would leave it (every write so far durable).
    fn crash_image(from: &std::path::Path, to: &std::path::Path) {
        for entry in std::fs::read_dir(from).expect("dir") {
            let entry = entry.expect("entry");
            let target = to.join(entry.file_name());
            if entry.file_type().expect("type").is_dir() {
                std::fs::create_dir_all(&target).expect("mkdir");
                crash_image(&entry.path(), &target);
            } else {
                std::fs::copy(entry.path(), &target).expect("copy");
            }
        }
    }

    #[test]
    fn a_crash_after_any_prune_step_leaves_a_store_that_opens_with_a_contiguous_suffix() {
        let dir = tempfile::tempdir().expect("tmp");
        let n = 120u64;
        let store = open(dir.path());
        let digests: Vec<Hash32> = (1..=n).map(|h| commit(&store, h)).collect();
        let mut freed = 0;
        // Each step: one chunk of heights pruned, then the batch log compacted; after each
        // write, the directory as a crash would leave it must open with every height from its
        // pruned height up, each with its block and batch.
        for step in 0..24u64 {
            if step % 2 == 0 {
                store
                    .prune_history(n + 1 - 20, &HashSet::new(), 8, 8)
                    .expect("prune");
            } else {
                let below = store.pruned_height().expect("pruned");
                freed += store
                    .compact_batches(below, || Ok(HashSet::new()))
                    .expect("compact")
                    .values;
            }
            let image = tempfile::tempdir().expect("tmp");
            crash_image(dir.path(), image.path());
            let after = open(image.path());
            let low = after.pruned_height().expect("pruned");
            assert_eq!(low, (1 + 8 * (step / 2 + 1)).min(n + 1 - 20), "step {step}");
            assert_eq!(after.committed_height().expect("h"), n);
            for h in low..=n {
                assert!(after.committed_id(h).expect("id").is_some(), "{h}");
                assert!(after.get_block(&block_id(h)).expect("b").is_some(), "{h}");
                assert!(after.has_batch(&digests[h as usize - 1]).expect("b"), "{h}");
            }
            assert!(after.committed_id(low - 1).expect("id").is_none());
        }
        assert!(freed >= 80, "only {freed} batches freed");
    }
}
