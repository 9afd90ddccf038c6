//! Blocks the core lacks: fetching a certified block and its ancestors, checking what comes
//! back, attaching fetched blocks once their parents are known, and proposals that waited for
//! their parent.

use super::*;

impl Core {
    pub(super) fn want(&mut self, id: BlockId, hint: Option<Address>, qc: Option<QuorumCert>) {
        if self.tree.contains(&id) {
            return;
        }
        if let Some(w) = self.wanted.get_mut(&id) {
            if w.qc.is_none() {
                w.qc = qc;
            }
            return;
        }
        if self.wanted.len() >= self.config.max_wanted {
            // Drop the oldest want (it is retried from later certificates if still needed).
            if let Some(first) = self.wanted.keys().next().copied() {
                self.wanted.remove(&first);
            }
        }
        self.wanted.insert(id, Want { qc });
        self.out.push(Action::FetchBlocks {
            block_id: id,
            stop_at_round: self.tree.root().round,
            max_blocks: self.config.max_fetch_blocks,
            from: hint,
        });
    }

    pub(super) fn on_fetched(&mut self, from: Option<Address>, blocks: Vec<Block>) {
        let mut expect: Option<BlockId> = None;
        let mut accepted = 0usize;
        for b in blocks.into_iter().take(self.config.max_fetch_blocks) {
            if let Err(reason) = crate::bounds::check_block(&b) {
                self.discard(true, reason);
                break;
            }
            let wanted = match expect {
                None => self.wanted.contains_key(&b.id()),
                Some(id) => id == b.id(),
            };
            if !wanted || b.epoch() != self.ctx.epoch() {
                break;
            }
            // Cheapest checks first; the set check of a `Reconfigure` after the QC.
            if b.parent_id() != b.qc().block_id
                || b.round() <= b.qc().round
                || b.payload().len() > self.config.max_payload_batches
                || self.ctx.set().leader(b.round()) != b.proposer()
                || self.ctx.verify_qc(b.qc()).is_err()
                || b.header()
                    .reconfigure
                    .as_ref()
                    .is_some_and(|rc| crate::epoch::check_reconfigure_shape(rc).is_err())
            {
                self.discard(true, "invalid fetched block");
                break;
            }
            expect = Some(b.parent_id());
            let stop = self.tree.contains(&b.parent_id()) || b.round() <= self.tree.root().round;
            if b.round() > self.tree.root().round && self.orphans.len() < self.config.max_orphans {
                self.orphans.insert(b.id(), b);
                accepted += 1;
            }
            if stop {
                break;
            }
        }
        if accepted == 0 {
            return;
        }
        self.attach_orphans(from);
    }

    /// Inserts fetched blocks whose parents are now known, oldest first, using their QCs.
    pub(super) fn attach_orphans(&mut self, hint: Option<Address>) {
        loop {
            let mut ready: Vec<Block> = self
                .orphans
                .values()
                .filter(|b| self.tree.contains(&b.parent_id()))
                .cloned()
                .collect();
            if ready.is_empty() {
                break;
            }
            ready.sort_by_key(|b| (b.round(), b.id()));
            let epoch = self.ctx.epoch();
            for b in ready {
                if self.ctx.epoch() != epoch {
                    return; // the epoch ended: its orphans are gone
                }
                self.orphans.remove(&b.id());
                if !matches!(self.tree.insert_certified(b.clone()), Ok(true)) {
                    continue;
                }
                self.out.push(Action::PersistBlock(b.clone()));
                self.process_qc(&b.qc().clone(), hint);
                if let Some(w) = self.wanted.remove(&b.id())
                    && let Some(qc) = w.qc
                {
                    self.process_qc(&qc, hint);
                }
                let high = self.pm.high_qc().clone();
                if high.block_id == b.id() {
                    self.try_commit(&high);
                }
            }
        }
        // Ancestors still missing: ask for the oldest orphan's parent.
        let oldest = self
            .orphans
            .values()
            .min_by_key(|b| (b.round(), b.id()))
            .map(|b| b.parent_id());
        if let Some(parent) = oldest {
            self.want(parent, hint, None);
        }
    }

    /// Proposals of the current round whose parent arrived.
    pub(super) fn drain_pending(&mut self) {
        loop {
            let r = self.pm.round();
            let ready = self
                .pending
                .get(&r)
                .is_some_and(|(p, _)| self.tree.contains(&p.block.parent_id()));
            if !ready {
                break;
            }
            if let Some((p, from)) = self.pending.remove(&r) {
                self.accept_current_proposal(p, from);
            }
        }
    }
}
