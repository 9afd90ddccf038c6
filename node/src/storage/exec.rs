//! Execution effects: the overlay of executed blocks not yet written, its flush, and the
//! transaction index file (frozen runs merged in off the caller's thread, rebuilt at open).

use super::*;

impl Store {
    /// How far the index file holds every entry, if it was ever written.
    pub(super) fn index_height(&self) -> Result<Option<u64>, StorageError> {
        let txn = self.index_db.begin_read()?;
        match txn.open_table(INDEX_META) {
            Ok(t) => Ok(t.get(INDEXED)?.map(|v| v.value())),
            Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Creates the index file's tables, starting at height `start`, or reads how far it holds
    /// every entry (never above `executed`).
    pub(super) fn init_index(&self, start: u64, executed: u64) -> Result<u64, StorageError> {
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

    /// Fills the filter from the transaction index (sequential scans at open) and from the
    /// entries the overlay restored.
    pub(super) fn load_seen_filter(&self) -> Result<(), StorageError> {
        let mut restored = Vec::new();
        self.overlay().for_each_indexed(|h| restored.push(*h));
        // Never the overlay's lock inside the filter's: readers take them the other way round.
        let mut seen = self.seen.write().unwrap_or_else(PoisonError::into_inner);
        for h in &restored {
            seen.insert(h);
        }
        let txn = self.index_db.begin_read()?;
        let t = txn.open_table(TX_INDEX)?;
        for entry in t.iter()? {
            let (k, _) = entry?;
            seen.insert(k.value());
        }
        Ok(())
    }

    pub(super) fn overlay(&self) -> std::sync::RwLockReadGuard<'_, ExecOverlay> {
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
    pub(super) fn start_merge(&self, run: Arc<Vec<(Hash32, u64)>>, upto: u64) {
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
    pub(super) fn merge_failed(&self) -> bool {
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
        let txn = self.index_db.begin_read()?;
        let t = txn.open_table(TX_INDEX)?;
        for &i in &lookup {
            out[i] = t.get(&hashes[i])?.map(|v| v.value());
        }
        Ok(out)
    }

    /// The height at which the transaction `hash` was committed, if it was.
    pub fn tx_height(&self, hash: &Hash32) -> Result<Option<u64>, StorageError> {
        Ok(self.tx_heights(std::slice::from_ref(hash))?[0])
    }
}

/// Writes a sorted run into the index file with its new height, durably, in one transaction.
pub(super) fn merge_run(
    db: &Database,
    run: &[(Hash32, u64)],
    upto: u64,
) -> Result<(), StorageError> {
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
