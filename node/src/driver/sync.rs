//! Block sync, the client side: a stalled node asks a member for pages of committed blocks,
//! checks them by hash links and commit proofs (across epochs by their records), applies them
//! and restarts its core from the new root.

use super::*;

impl Driver {
    /// Starts a sync round when no block was committed for a while.
    pub(super) fn maybe_sync(&mut self) {
        if self.sync_inflight || self.last_commit.elapsed() < self.cfg.stall_after {
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
        let from = match self.store.committed_height() {
            Ok(h) => h.saturating_add(1),
            Err(e) => {
                tracing::warn!(error = %e, "block sync: cannot read the committed height");
                return;
            }
        };
        let known_epoch = self.core.epoch();
        self.sync_inflight = true;
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

    /// Verifies a sync page and applies it, then restarts the core from the new root. Blocks
    /// are checked by hash links from the committed root, each epoch's blocks against that
    /// epoch's set: a block is proved by its commit proof (QC verified), or, for the block that
    /// ended an epoch, by that epoch's record, which also yields the next epoch's context.
    pub(super) fn apply_sync_page(
        &mut self,
        page: Option<Box<v1::SyncResponse>>,
    ) -> Result<(), DriverError> {
        let Some(page) = page else {
            return Ok(());
        };
        let records: HashMap<u64, EpochChangeRecord> = page
            .records
            .iter()
            .filter_map(|r| wire::record_from_wire(r).ok())
            .map(|r| (r.epoch, r))
            .collect();
        let committed = self.store.committed_height()?;
        let core_ctx = self.core.context();
        // The context of the epoch being verified: the core's, then each next one a record yields.
        let mut next_ctx: Option<EpochContext> = None;
        let tip = self.store.committed_id(committed)?.map(BlockId);
        let mut expect_parent = match tip {
            Some(id) if Some(id) != self.epoch_b0 => id,
            _ => core_ctx.genesis_block(),
        };
        // The ledger may end at B0 with its record lost (crash): the page's record ends the epoch.
        let mut new_records: Vec<(u64, EpochChangeRecord)> = Vec::new();
        if let Some(id) = tip
            && Some(id) != self.epoch_b0
            && let Some(r) = records.get(&core_ctx.epoch())
            && r.b0().map(Block::id) == Some(id)
            && let Ok(next) = r.next_context(core_ctx)
        {
            new_records.push((committed, r.clone()));
            expect_parent = next.genesis_block();
            next_ctx = Some(next);
        }
        let mut verified: Vec<(u64, Block, Option<CommitProof>)> = Vec::new();
        let mut last_proved: Option<usize> = None;
        for (next_height, cb) in (committed + 1..).zip(page.blocks.iter()) {
            if cb.height != next_height {
                break;
            }
            let Some(b) = cb
                .block
                .as_ref()
                .and_then(|b| wire::block_from_wire(b).ok())
            else {
                break;
            };
            let ctx = next_ctx.as_ref().unwrap_or(core_ctx);
            if b.parent_id() != expect_parent || b.epoch() != ctx.epoch() {
                break;
            }
            let proof = cb
                .proof
                .as_ref()
                .and_then(|p| wire::proof_from_wire(p).ok());
            let direct = proof.as_ref().is_some_and(|p| proves_directly(&b, p, ctx));
            let id = b.id();
            let ends_epoch = b.header().reconfigure.is_some();
            verified.push((cb.height, b, proof));
            if direct {
                last_proved = Some(verified.len() - 1);
            }
            if !ends_epoch {
                expect_parent = id;
                continue;
            }
            // A committed Reconfigure block is the epoch's B0: nothing after it in this epoch.
            let Some(r) = records
                .get(&ctx.epoch())
                .filter(|r| r.b0().map(Block::id) == Some(id))
            else {
                break;
            };
            match r.next_context(ctx) {
                Ok(next) => {
                    last_proved = Some(verified.len() - 1);
                    new_records.push((cb.height, r.clone()));
                    expect_parent = next.genesis_block();
                    next_ctx = Some(next);
                }
                Err(e) => {
                    tracing::warn!(epoch = r.epoch, error = %e, "sync: epoch-change record does not verify");
                    break;
                }
            }
        }
        let reached_epoch = next_ctx.as_ref().unwrap_or(core_ctx).epoch();
        let keep = last_proved.map_or(0, |i| i + 1);
        verified.truncate(keep);
        new_records.retain(|(h, _)| *h <= committed + keep as u64);
        if verified.is_empty() && new_records.is_empty() {
            self.syncing = false;
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
                        let _ = fetch_batches(&net, &store, &cfg, &peers, missing).await;
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
        self.commit_queue.clear();
        let (core, restored) = build_core(&self.cfg, &self.store)?;
        self.core = core;
        self.epoch_b0 = restored.epoch_b0;
        self.enqueue_commit_blocks(restored.unapplied);
        let now = self.now_ms();
        self.feed(Event::Start { now_ms: now })?;
        // Keep syncing while pages come full; the stall timer triggers the next page.
        self.last_commit = Instant::now() - self.cfg.stall_after;
        if n < MAX_SYNC_BLOCKS as usize / 2 {
            self.syncing = false;
            self.last_commit = Instant::now();
        }
        Ok(())
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

/// Whether a sync page's proof shows `b` committed by a direct 2-chain: its child one round
/// later, certified by a QC valid in `ctx`. The peer's rounds are compared without arithmetic that
/// could overflow, and the QC is checked last.
pub(super) fn proves_directly(b: &Block, p: &CommitProof, ctx: &EpochContext) -> bool {
    p.certified.parent_id() == b.id()
        && b.round().checked_add(1) == Some(p.certified.round())
        && p.qc.block_id == p.certified.id()
        && ctx.verify_qc(&p.qc).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use consensus::testkit::Cluster;

    #[test]
    fn a_sync_proof_with_a_last_round_block_is_refused_without_overflow() {
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 5);
        let b1 = c.block(1, c.ctx.genesis_qc(), vec![]);
        let b2 = c.block(2, c.full_qc(1, b1.id()), vec![]);
        let proof = CommitProof {
            qc: c.full_qc(2, b2.id()),
            certified: b2,
        };
        assert!(proves_directly(&b1, &proof, &c.ctx));
        // A peer's page naming the last round: no `round + 1` may overflow on it.
        let far = Block::new(0, u64::MAX, c.ctx.genesis_qc(), b1.proposer(), vec![], None);
        let child = Block::new(0, 3, c.full_qc(2, far.id()), b1.proposer(), vec![], None);
        let bad = CommitProof {
            qc: c.full_qc(3, child.id()),
            certified: child,
        };
        assert!(!proves_directly(&far, &bad, &c.ctx));
    }
}
