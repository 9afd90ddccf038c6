//! The handle a write transaction writes through.

use super::*;

/// The handle a [`Store::write`] closure writes through; everything it writes commits together.
pub struct Writer<'a> {
    pub(super) txn: &'a redb::WriteTransaction,
    pub(super) batches: &'a BatchLog,
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
    pub(super) fn put_block_txs(
        &mut self,
        height: u64,
        hashes: &[Hash32],
    ) -> Result<(), StorageError> {
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
