//! The retention horizon: how far history may be pruned, the pruning itself (bottom up, in
//! small transactions) and the batch log's compaction behind it.

use super::*;

impl Store {
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
        let indexed = self.index_height()?.unwrap_or(0);
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
}
