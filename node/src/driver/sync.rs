//! Block sync, the client side: a stalled node asks a member for pages of committed blocks,
//! checks them by hash links and commit proofs (across epochs by their records), applies them
//! and restarts its core from the new root.

use consensus::sync::{Anchor, Verified, verify_page};

use super::*;

/// Most bytes of unproved blocks held between sync pages: a commit up to about three pages long
/// can be proved by the page that ends it.
const MAX_HELD_SYNC_BYTES: usize = 2 * crate::serve::answer::RESPONSE_BUDGET;

impl Driver {
    /// Starts a sync round when no block was committed for a while.
    pub(super) fn maybe_sync(&mut self) {
        if self.sync_inflight
            || (!self.sync_next_now && self.last_commit.elapsed() < self.cfg.stall_after)
        {
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
        let committed = match self.store.committed_height() {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "block sync: cannot read the committed height");
                return;
            }
        };
        // Ask for what follows the held run, if it still starts right after the ledger.
        if self
            .sync_held
            .first()
            .is_some_and(|(b, _)| Some(b.height) != committed.checked_add(1))
        {
            self.sync_held.clear();
        }
        let from = committed
            .saturating_add(self.sync_held.len() as u64)
            .saturating_add(1);
        let known_epoch = self.core.epoch();
        self.sync_inflight = true;
        self.sync_next_now = false;
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

    /// Verifies a sync page ([`consensus::sync::verify_page`], after the run held from the page
    /// before) and applies what it proves, then restarts the core from the new root. What links
    /// but is not proved yet is held (bounded) for the next page.
    pub(super) fn apply_sync_page(
        &mut self,
        page: Option<Box<v1::SyncResponse>>,
    ) -> Result<(), DriverError> {
        let Some(page) = page else {
            // No answer: while syncing, ask the next peer at once.
            self.sync_next_now = self.syncing;
            return Ok(());
        };
        let committed = self.store.committed_height()?;
        let v = self.check_sync_page(&page)?;
        let reached_epoch = v
            .next_ctx
            .as_ref()
            .map_or(self.core.epoch(), EpochContext::epoch);
        let high_qc = page
            .high_qc
            .as_ref()
            .and_then(|q| wire::qc_from_wire(q).ok())
            .filter(|q| q.epoch == reached_epoch);
        let next_ctx = v.next_ctx;
        let new_records = v.records;
        let verified: Vec<(u64, Block, Option<CommitProof>)> = v
            .blocks
            .into_iter()
            .map(|b| (b.height, b.block, b.proof))
            .collect();
        if verified.is_empty() && new_records.is_empty() {
            // Keep asking while a run is held: the next page may prove it.
            self.syncing = !self.sync_held.is_empty();
            self.sync_next_now = self.syncing;
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
                        let _ = fetch_batches(&net, &store, &cfg, (&peers, None), missing).await;
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
        if let Some(qc) = high_qc
            && self.above_stored_high_qc(&qc)?
            && next_ctx
                .as_ref()
                .unwrap_or(self.core.context())
                .verify_qc(&qc)
                .is_ok()
        {
            // The responder's round: the restarted core enters it at once instead of waiting
            // for the cluster's next certificate.
            self.store
                .write(|w| w.put_meta(meta::HIGH_QC, &qc.encode()))?;
        }
        self.commit_queue.clear();
        let (core, restored) = build_core(&self.cfg, &self.store)?;
        self.core = core;
        self.epoch_b0 = restored.epoch_b0;
        self.enqueue_commit_blocks(restored.unapplied);
        let now = self.now_ms();
        self.feed(Event::Start { now_ms: now })?;
        // Keep syncing while pages come full; the stall timer triggers the next page.
        self.sync_next_now = true;
        if n < MAX_SYNC_BLOCKS as usize / 2 && self.sync_held.is_empty() {
            self.syncing = false;
            self.sync_next_now = false;
            self.last_commit = Instant::now();
        }
        Ok(())
    }

    /// Checks a page after the run held from the page before, and holds what links past its
    /// last proof (within [`MAX_HELD_SYNC_BYTES`]); returns what it proves.
    fn check_sync_page(&mut self, page: &v1::SyncResponse) -> Result<Verified, DriverError> {
        let records: Vec<EpochChangeRecord> = page
            .records
            .iter()
            .filter_map(|r| wire::record_from_wire(r).ok())
            .collect();
        let committed = self.store.committed_height()?;
        let anchor = Anchor {
            ctx: self.core.context(),
            height: committed,
            tip: self.store.committed_id(committed)?.map(BlockId),
            epoch_b0: self.epoch_b0,
        };
        let mut sizes: HashMap<u64, usize> = HashMap::new();
        let mut blocks: Vec<PageBlock> = Vec::with_capacity(self.sync_held.len());
        for (b, size) in self.sync_held.drain(..) {
            sizes.insert(b.height, size);
            blocks.push(b);
        }
        for cb in &page.blocks {
            let Some(block) = cb
                .block
                .as_ref()
                .and_then(|b| wire::block_from_wire(b).ok())
            else {
                break;
            };
            let proof = cb
                .proof
                .as_ref()
                .and_then(|p| wire::proof_from_wire(p).ok());
            sizes.insert(cb.height, cb.encoded_len());
            blocks.push(PageBlock {
                height: cb.height,
                block,
                proof,
            });
        }
        let mut v = verify_page(&anchor, blocks, &records);
        if let Some(why) = v.stopped {
            tracing::debug!(reason = why, "sync page: the check stopped before its end");
        }
        let held_bytes: usize = v
            .unproved
            .iter()
            .map(|b| sizes.get(&b.height).copied().unwrap_or(0))
            .sum();
        let unproved = std::mem::take(&mut v.unproved);
        if held_bytes <= MAX_HELD_SYNC_BYTES {
            self.sync_held = unproved
                .into_iter()
                .map(|b| {
                    let size = sizes.get(&b.height).copied().unwrap_or(0);
                    (b, size)
                })
                .collect();
        } else {
            tracing::warn!(
                bytes = held_bytes,
                "sync: an unproved run longer than the held bound is dropped"
            );
        }
        Ok(v)
    }

    /// Whether `qc` is above the stored high QC (by epoch, then round).
    fn above_stored_high_qc(&self, qc: &QuorumCert) -> Result<bool, DriverError> {
        let stored = match self.store.get_meta(meta::HIGH_QC)? {
            Some(b) => Some(QuorumCert::decode(&b).map_err(|_| DriverError::Corrupt("high QC"))?),
            None => None,
        };
        Ok(stored
            .as_ref()
            .is_none_or(|s| (s.epoch, s.round) < (qc.epoch, qc.round)))
    }

    /// Stores a record verified during sync (its B0 is in the ledger) and applies the epoch.
    pub(super) fn store_synced_record(&mut self, r: &EpochChangeRecord) -> Result<(), DriverError> {
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
