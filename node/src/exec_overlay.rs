//! Executed effects not yet written to the database: the group commit of execution.
//!
//! A committed block's record (its id, proof and bytes) is durable before the block executes,
//! and execution is a deterministic function of the committed blocks, so the effects of
//! execution need not reach the disk block by block. They collect here and are written in one
//! sorted transaction every few thousand transactions ([`FlushPolicy`]). This matters because
//! the transaction index is keyed by hash: written per block, nearly every entry dirtied a
//! B-tree page of its own that was copied, checksummed and written again at every commit.
//!
//! Readers (the API, the ingest de-duplication) look here before the database, so a block's
//! effects are visible as soon as it executes. A crash loses only this overlay; the store keeps
//! the highest height whose effects are durable, and a restart executes the heights above it
//! again from the stored blocks and batches.
//!
//! The transaction index stays here longer, a two-level log-structured merge: a random-key
//! B-tree costs about one page write per entry unless many entries land in each page, so
//! the index entries of recent heights stay in memory (they are durable already, as each
//! height's transaction list) until [`FlushPolicy::max_index`] of them wait; then they are
//! frozen into one sorted run that a background thread merges into the index file, while
//! reads still find them here.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Hash32;

/// When the overlay is written to the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushPolicy {
    /// Write once this many transactions wait.
    pub max_txs: usize,
    /// Write once this many blocks wait (empty blocks too: their height must become durable).
    pub max_blocks: usize,
    /// Write once the oldest waiting block executed this long ago.
    pub max_age: Duration,
    /// Merge the in-memory index into the index file once it holds this many entries.
    pub max_index: usize,
}

impl Default for FlushPolicy {
    fn default() -> Self {
        Self {
            max_txs: 24_000,
            max_blocks: 256,
            max_age: Duration::from_millis(1_000),
            max_index: 1 << 19,
        }
    }
}

/// One executed block's effects, as [`ExecOverlay::apply`] takes them.
#[derive(Debug, Default)]
pub struct Executed {
    /// The transactions committed at this height, in block order.
    pub committed: Vec<Hash32>,
    /// The last write of each key (`None`: deleted).
    pub writes: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct ExecOverlay {
    kv: BTreeMap<Vec<u8>, Option<Vec<u8>>>,
    /// Index entries not in the index file (nor in `frozen`).
    index: HashMap<Hash32, u64>,
    /// A sorted run of index entries being merged into the index file (empty when none).
    frozen: Arc<Vec<(Hash32, u64)>>,
    /// Transactions executed since the last write.
    txs: usize,
    block_txs: BTreeMap<u64, Vec<Hash32>>,
    /// The highest executed height (durable or not).
    executed: u64,
    /// When the oldest block here executed.
    since: Option<Instant>,
}

impl ExecOverlay {
    /// An empty overlay over a database whose effects are durable up to `executed`.
    pub fn new(executed: u64) -> Self {
        Self {
            kv: BTreeMap::new(),
            index: HashMap::new(),
            frozen: Arc::new(Vec::new()),
            txs: 0,
            block_txs: BTreeMap::new(),
            executed,
            since: None,
        }
    }

    /// The highest executed height.
    pub fn executed(&self) -> u64 {
        self.executed
    }

    /// Whether nothing waits to be written.
    pub fn is_empty(&self) -> bool {
        self.block_txs.is_empty()
    }

    /// The value of `key` if a waiting block wrote it: `Some(None)` when it was deleted, `None`
    /// when the database has the answer.
    pub fn kv(&self, key: &[u8]) -> Option<Option<&[u8]>> {
        self.kv.get(key).map(|v| v.as_deref())
    }

    /// The height of a committed transaction not in the index file yet.
    pub fn tx_height(&self, hash: &Hash32) -> Option<u64> {
        self.index.get(hash).copied().or_else(|| {
            self.frozen
                .binary_search_by(|(h, _)| h.cmp(hash))
                .ok()
                .map(|i| self.frozen[i].1)
        })
    }

    /// Adds index entries of heights whose effects are durable but not in the index file
    /// (rebuilt from the stored transaction lists at open).
    pub fn restore_index(&mut self, height: u64, hashes: &[Hash32]) {
        for h in hashes {
            self.index.entry(*h).or_insert(height);
        }
    }

    /// Calls `f` with every hash of the in-memory index.
    pub fn for_each_indexed(&self, mut f: impl FnMut(&Hash32)) {
        self.index.keys().for_each(&mut f);
        self.frozen.iter().for_each(|(h, _)| f(h));
    }

    /// Index entries held in memory (waiting or being merged).
    #[cfg(test)]
    fn index_len(&self) -> usize {
        self.index.len() + self.frozen.len()
    }

    /// Freezes the in-memory index into a sorted run to merge, if `policy` asks for it and no
    /// merge is running. Call only when nothing waits to be written: every frozen entry's
    /// height must be durable, or a crash could leave an index entry for a height a restart
    /// executes again (and then skips as a duplicate).
    pub fn freeze_index(&mut self, policy: &FlushPolicy) -> Option<Arc<Vec<(Hash32, u64)>>> {
        if !self.is_empty() || !self.frozen.is_empty() || self.index.len() < policy.max_index {
            return None;
        }
        let mut run: Vec<(Hash32, u64)> = self.index.drain().collect();
        run.sort_unstable_by_key(|e| e.0);
        self.frozen = Arc::new(run);
        Some(self.frozen.clone())
    }

    /// Forgets a frozen run once the index file holds it.
    pub fn merged(&mut self, run: &Arc<Vec<(Hash32, u64)>>) {
        if Arc::ptr_eq(&self.frozen, run) {
            self.frozen = Arc::new(Vec::new());
        }
    }

    /// The frozen run, if one was frozen and is not merged yet.
    pub fn frozen(&self) -> Option<Arc<Vec<(Hash32, u64)>>> {
        (!self.frozen.is_empty()).then(|| self.frozen.clone())
    }

    /// The transactions of a waiting height.
    pub fn block_txs(&self, height: u64) -> Option<&[Hash32]> {
        self.block_txs.get(&height).map(Vec::as_slice)
    }

    /// Adds the effects of `height`, which must follow the executed height.
    pub fn apply(&mut self, height: u64, block: Executed, now: Instant) -> Result<(), u64> {
        let expected = self.executed + 1;
        if height != expected {
            return Err(expected);
        }
        for h in &block.committed {
            self.index.entry(*h).or_insert(height);
        }
        self.txs += block.committed.len();
        self.kv.extend(block.writes);
        self.block_txs.insert(height, block.committed);
        self.executed = height;
        self.since.get_or_insert(now);
        Ok(())
    }

    /// Whether `policy` asks for a write now.
    pub fn is_due(&self, policy: &FlushPolicy, now: Instant) -> bool {
        !self.is_empty()
            && (self.txs >= policy.max_txs
                || self.block_txs.len() >= policy.max_blocks
                || self
                    .since
                    .is_some_and(|t| now.duration_since(t) >= policy.max_age))
    }

    /// The waiting state writes, sorted by key.
    pub fn writes(&self) -> impl Iterator<Item = (&[u8], Option<&[u8]>)> {
        self.kv.iter().map(|(k, v)| (k.as_slice(), v.as_deref()))
    }

    /// The waiting heights with their transactions, in order.
    pub fn heights(&self) -> impl Iterator<Item = (u64, &[Hash32])> {
        self.block_txs.iter().map(|(h, t)| (*h, t.as_slice()))
    }

    /// Forgets the waiting state writes and transaction lists once they are durable in the
    /// database (the index entries stay, see the module documentation).
    pub fn clear(&mut self) {
        self.kv.clear();
        self.block_txs.clear();
        self.txs = 0;
        self.since = None;
    }
}

/// Test effects: transaction hashes `[b; 32]` for each byte `b`, and text key-value writes.
#[cfg(test)]
pub(crate) fn test_block(hashes: &[u8], writes: &[(&str, Option<&str>)]) -> Executed {
    Executed {
        committed: hashes.iter().map(|b| [*b; 32]).collect(),
        writes: writes
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.map(|v| v.as_bytes().to_vec())))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::test_block as block;

    #[test]
    fn later_heights_win_and_the_first_height_of_a_hash_stays() {
        let now = Instant::now();
        let mut o = ExecOverlay::new(4);
        o.apply(
            5,
            block(&[1, 2], &[("a", Some("1")), ("b", Some("2"))]),
            now,
        )
        .expect("5");
        o.apply(6, block(&[3], &[("a", None)]), now).expect("6");
        assert_eq!(o.executed(), 6);
        assert_eq!(o.kv(b"a"), Some(None));
        assert_eq!(o.kv(b"b"), Some(Some(&b"2"[..])));
        assert_eq!(o.kv(b"c"), None);
        assert_eq!(o.tx_height(&[3; 32]), Some(6));
        assert_eq!(o.block_txs(5), Some(&[[1; 32], [2; 32]][..]));
        o.clear();
        assert!(o.is_empty());
        assert_eq!(o.executed(), 6, "clearing keeps the executed height");
        assert_eq!(o.kv(b"a"), None);
        assert_eq!(o.tx_height(&[1; 32]), Some(5), "the index stays");
    }

    #[test]
    fn the_index_freezes_only_when_nothing_waits_and_stays_readable_until_merged() {
        let policy = FlushPolicy {
            max_index: 3,
            ..FlushPolicy::default()
        };
        let now = Instant::now();
        let mut o = ExecOverlay::new(0);
        o.apply(1, block(&[9, 1, 5], &[]), now).expect("1");
        assert!(
            o.freeze_index(&policy).is_none(),
            "height 1 is not written yet"
        );
        o.clear();
        let run = o.freeze_index(&policy).expect("frozen");
        assert!(run.windows(2).all(|w| w[0].0 < w[1].0), "sorted");
        assert_eq!(run.len(), 3);
        o.apply(2, block(&[2, 3, 4], &[]), now).expect("2");
        o.clear();
        assert!(o.freeze_index(&policy).is_none(), "one merge at a time");
        assert_eq!(o.tx_height(&[5; 32]), Some(1));
        assert_eq!(o.tx_height(&[4; 32]), Some(2));
        assert_eq!(o.index_len(), 6);
        o.merged(&run);
        assert_eq!(o.tx_height(&[5; 32]), None, "the index file has it now");
        assert!(o.freeze_index(&policy).is_some());
    }

    #[test]
    fn heights_must_follow_each_other() {
        let mut o = ExecOverlay::new(0);
        assert_eq!(o.apply(2, Executed::default(), Instant::now()), Err(1));
        o.apply(1, Executed::default(), Instant::now()).expect("1");
        assert_eq!(o.apply(1, Executed::default(), Instant::now()), Err(2));
    }

    #[test]
    fn due_by_count_blocks_or_age() {
        let t0 = Instant::now();
        let policy = FlushPolicy {
            max_txs: 3,
            max_blocks: 2,
            max_age: Duration::from_millis(100),
            max_index: 10,
        };
        let mut o = ExecOverlay::new(0);
        assert!(!o.is_due(&policy, t0 + Duration::from_secs(9)), "empty");
        o.apply(1, block(&[1, 2], &[]), t0).expect("1");
        assert!(!o.is_due(&policy, t0));
        assert!(o.is_due(&policy, t0 + Duration::from_millis(100)), "age");
        o.apply(2, block(&[], &[]), t0).expect("2");
        assert!(o.is_due(&policy, t0), "blocks");
        let mut o = ExecOverlay::new(0);
        o.apply(1, block(&[1, 2, 3], &[]), t0).expect("1");
        assert!(o.is_due(&policy, t0), "transactions");
    }
}
