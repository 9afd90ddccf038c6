//! The core's epoch rules (DESIGN section 4): what a leader proposes as a `Reconfigure`, the
//! vote-time checks of one, messages and records of other epochs, and the handoff to the next
//! epoch when a `Reconfigure` commits.

use super::*;

impl Core {
    /// Whether the branch ending at `id` (inclusive) holds an uncommitted Reconfigure. A block the
    /// tree does not hold (other than the root) counts as in limbo, conservatively.
    pub(super) fn branch_in_limbo(&self, id: &BlockId) -> bool {
        let mut cur = *id;
        loop {
            if cur == self.tree.root().id {
                return false;
            }
            match self.tree.get(&cur) {
                Some(b) if b.header().reconfigure.is_some() => return true,
                Some(b) => cur = b.parent_id(),
                None => return true,
            }
        }
    }

    /// The Reconfigure a leader proposes at `round`, if its oracle's set differs from the current
    /// one and may be proposed now.
    pub(super) fn reconfigure_to_propose(&self, round: u64) -> Option<Reconfigure> {
        let (number, hash, members) = self.head.as_ref()?;
        if round < self.config.epoch_min_rounds
            || *number <= self.ctx.chain_block()
            || *members == self.ctx.set().member_infos()
        {
            return None;
        }
        let rc = Reconfigure {
            chain_block_number: *number,
            chain_block_hash: *hash,
            validator_set_hash: crate::domain::validator_set_hash(members),
            members: members.clone(),
        };
        crate::epoch::check_reconfigure_shape(&rc).ok()?;
        Some(rc)
    }

    /// The vote-time epoch rules (DESIGN section 4) for a proposal of the current round whose
    /// block is in the tree.
    pub(super) fn epoch_rules(&mut self, p: &Proposal) -> Verdict {
        let b = &p.block;
        if self.branch_in_limbo(&b.parent_id()) {
            #[cfg(not(feature = "mutant-payload-in-limbo-epoch"))]
            if !b.payload().is_empty() {
                return Verdict::Refuse("payload in a block descending from a reconfigure");
            }
            if b.header().reconfigure.is_some() {
                return Verdict::Refuse("second reconfigure in flight on the branch");
            }
            return Verdict::Ok;
        }
        let Some(rc) = b.header().reconfigure.clone() else {
            return Verdict::Ok;
        };
        if rc.members == self.ctx.set().member_infos() {
            return Verdict::Refuse("reconfigure does not change the set");
        }
        if rc.chain_block_number <= self.ctx.chain_block() {
            return Verdict::Refuse("reconfigure not above the epoch's chain block");
        }
        if b.round() < self.config.epoch_min_rounds {
            return Verdict::Refuse("reconfigure before epoch_min_rounds");
        }
        // Wait (at most reconfig_wait) for the pinned head to reach the block.
        let (deadline, waited) = match self.reconfig_deadline {
            Some((id, d, w)) if id == b.id() => (d, w),
            _ => {
                let d = self.now_ms.saturating_add(self.config.reconfig_wait_ms);
                self.reconfig_deadline = Some((b.id(), d, false));
                (d, false)
            }
        };
        let head = self.head.as_ref().map(|h| (h.0, h.1));
        match head {
            Some(_) if waited && self.now_ms > deadline => {
                return Verdict::Refuse("pinned head did not reach the reconfigure's block");
            }
            Some((number, _)) if number >= rc.chain_block_number => {
                #[cfg(not(feature = "mutant-accept-stale-reconfigure"))]
                if rc
                    .chain_block_number
                    .saturating_add(self.config.reconfig_max_lag_blocks)
                    < number
                {
                    return Verdict::Refuse("stale reconfigure: chain block older than head - W");
                }
            }
            _ if self.now_ms > deadline => {
                return Verdict::Refuse("pinned head did not reach the reconfigure's block");
            }
            _ => {
                self.reconfig_deadline = Some((b.id(), deadline, true));
                return Verdict::Wait;
            }
        }
        // The set at that hash, read by the host (the pinned head's own set needs no read).
        let key = (rc.chain_block_number, rc.chain_block_hash);
        let known = match &self.head {
            Some((n, h, m)) if (*n, *h) == key => Some(Some(m.clone())),
            _ => self.chain_sets.get(&key).cloned(),
        };
        match known {
            None => {
                self.out.push(Action::ReadChainSet {
                    number: key.0,
                    hash: key.1,
                });
                Verdict::Wait
            }
            Some(None) => Verdict::Refuse("reconfigure names a block that is not the chain's"),
            Some(Some(m)) if m != rc.members => {
                Verdict::Refuse("reconfigure members differ from the chain's set")
            }
            Some(Some(_)) => Verdict::Ok,
        }
    }

    /// A pinned head or chain-set answer arrived: re-evaluate the proposal waiting on it.
    pub(super) fn recheck_reconfig(&mut self) {
        if let Some(p) = self.awaiting_reconfig.take()
            && p.round() == self.pm.round()
        {
            self.try_vote(p);
        }
    }

    /// A message of another epoch: answer a lagging member with records, or fetch the records
    /// of a later epoch. Rate-limited: once per signer (answers) or once (fetches) per timer.
    /// A message of the previous epoch is verified with that epoch's context before its signer
    /// is answered; one of an older epoch (whose set this node no longer holds) gets at most one
    /// answer per timer in all, so forged signers cannot make the node send records around.
    pub(super) fn other_epoch(&mut self, m: &Message, from: Address) {
        let cur = self.ctx.epoch();
        let epoch = m.epoch_round().0;
        if epoch > cur {
            self.later_epoch_seen(epoch, Some(from));
            return self.discard(false, "message of a later epoch");
        }
        let signer = match m {
            Message::Proposal(p) => p.block.proposer(),
            Message::Vote(v) => v.signer,
            Message::Timeout(t) => t.signer,
            Message::TimeoutCert(_) => from,
        };
        if signer == self.me || self.answered.contains(&signer) {
            return self.discard(false, "message of an earlier epoch");
        }
        let authentic = match &self.prev_ctx {
            Some(prev) if prev.epoch() == epoch => {
                let known = prev.set().index_of(&signer).is_some();
                known
                    && match m {
                        Message::Proposal(p) => prev.verify_proposal(p).is_ok(),
                        Message::Vote(v) => prev.verify_vote(v).is_ok(),
                        Message::Timeout(t) => prev.verify_timeout(t).is_ok(),
                        Message::TimeoutCert(tc) => prev.verify_tc(tc).is_ok(),
                    }
            }
            _ => std::mem::replace(&mut self.old_epoch_answer_armed, false),
        };
        if authentic {
            self.answered.insert(signer);
            self.out.push(Action::SendEpochChanges {
                to: signer,
                since_epoch: epoch,
            });
        }
        self.discard(false, "message of an earlier epoch")
    }

    /// Something of epoch `epoch` > ours arrived: fetch the records from our epoch on (once per
    /// timer), and remember who had it for after the next epoch change.
    pub(super) fn later_epoch_seen(&mut self, epoch: u64, from: Option<Address>) {
        if self.later_epoch_hint.is_none_or(|(e, _)| e < epoch) {
            self.later_epoch_hint = Some((epoch, from));
        }
        if self.records_fetch_armed {
            self.records_fetch_armed = false;
            self.out.push(Action::FetchEpochChanges {
                since_epoch: self.ctx.epoch(),
                from,
            });
        }
    }

    /// Records received, oldest first: the one of the current epoch is used (its path and QC
    /// commit B0, which ends the epoch), after which the next one may be of the new epoch. A
    /// record of a later epoch cannot be verified yet: it is not kept, only fetched again in
    /// order once this node reaches its epoch.
    pub(super) fn on_records(&mut self, from: Option<Address>, records: Vec<EpochChangeRecord>) {
        for r in records.into_iter().take(MAX_RECORDS_PER_EVENT) {
            if let Err(reason) = crate::bounds::check_record(&r) {
                self.discard(true, reason);
                continue;
            }
            let cur = self.ctx.epoch();
            if r.epoch > cur {
                // It shows that epoch r.epoch + 1 exists.
                self.later_epoch_seen(r.next_epoch(), from);
                self.discard(false, "record of a later epoch");
            } else if r.epoch == cur {
                self.apply_record(from, r);
            } else {
                match &self.prev_ctx {
                    // The record that started this epoch: relaying it helps laggers.
                    Some(prev) if prev.epoch() == r.epoch => {
                        if r.verify(prev).is_err() {
                            self.discard(true, "invalid epoch-change record");
                        }
                    }
                    _ => self.discard(false, "record of an old epoch"),
                }
            }
        }
    }

    pub(super) fn apply_record(&mut self, from: Option<Address>, r: EpochChangeRecord) {
        if r.verify(&self.ctx).is_err() {
            return self.discard(true, "invalid epoch-change record");
        }
        let Some(b0) = r.b0().cloned() else {
            return;
        };
        if b0.id() == self.tree.root().id {
            // B0 is committed here already (the record was lost before it was durable).
            let height = self.tree.root().height;
            return self.end_epoch(r, height);
        }
        if b0.round() <= self.tree.root().round {
            return self.discard(false, "record below the committed root");
        }
        // Its blocks join the tree (fetching any missing ancestors); its QC commits B0.
        for b in &r.path {
            if !self.tree.contains(&b.id()) && self.orphans.len() < self.config.max_orphans {
                self.orphans.insert(b.id(), b.clone());
            }
        }
        let epoch = self.ctx.epoch();
        self.attach_orphans(from);
        if self.ctx.epoch() == epoch {
            self.process_qc(&r.qc, from);
        }
    }

    /// Ends the current epoch at the committed B0 of `record` (at height `height`) and starts
    /// the next one from its genesis block and genesis QC, with a fresh safety state.
    pub(super) fn end_epoch(&mut self, record: EpochChangeRecord, height: u64) {
        match record.next_context(&self.ctx) {
            Ok(next) => self.enter_next_epoch(record, next, height),
            Err(_) => self.discard(true, "epoch-change record does not verify"),
        }
    }

    /// Ends the current epoch with `record`, already checked: `next` is the context it builds.
    pub(super) fn enter_next_epoch(
        &mut self,
        record: EpochChangeRecord,
        next: EpochContext,
        height: u64,
    ) {
        self.out.push(Action::PersistEpochChange(record.clone()));
        let root = Root {
            id: next.genesis_block(),
            round: 0,
            height,
        };
        let genesis_qc = next.genesis_qc();
        self.prev_ctx = Some(std::mem::replace(&mut self.ctx, next));
        self.safety.enter_epoch(self.ctx.epoch());
        self.tree = BlockTree::new(root, self.config.max_pending_blocks);
        self.pm = Pacemaker::new(
            self.config.base_timeout_ms,
            self.config.max_timeout_ms,
            self.config.round_window,
            genesis_qc,
            None,
        );
        self.votes.clear();
        self.pending.clear();
        self.proposals_seen.clear();
        self.awaiting_batches = None;
        self.awaiting_reconfig = None;
        self.reconfig_deadline = None;
        self.wanted.clear();
        self.orphans.clear();
        self.proposed_round = 0;
        self.persisted_certs = (0, 0);
        self.answered.clear();
        self.records_fetch_armed = true;
        self.out.push(Action::BroadcastEpochChange(record));
        self.on_round_entered();
        let e = self.ctx.epoch();
        match self.later_epoch_hint.take() {
            Some((later, from)) if later > e => self.later_epoch_seen(later, from),
            _ => {}
        }
    }
}
