//! The core's votes: when it votes for a proposal (after its batches are stored), and how the
//! votes it receives are counted by power into QCs.

use super::*;

impl Core {
    pub(super) fn try_vote(&mut self, p: Proposal) {
        if p.round() != self.pm.round() {
            return;
        }
        let voted = self.safety.state().last_voted_round >= p.round();
        let replay = self
            .safety
            .state()
            .last_vote
            .as_ref()
            .is_some_and(|v| v.round == p.round() && v.block_id == p.block.id());
        if voted && !replay {
            return;
        }
        if replay {
            return; // already sent for this round; re-sent only at restart
        }
        match self.epoch_rules(&p) {
            Verdict::Ok => {}
            Verdict::Wait => {
                self.awaiting_reconfig = Some(p);
                return;
            }
            Verdict::Refuse(reason) => return self.discard(false, reason),
        }
        if !p.block.payload().is_empty() && p.block.proposer() != self.me {
            self.out.push(Action::FetchBatches {
                block_id: p.block.id(),
                digests: p.block.payload().to_vec(),
                from: p.block.proposer(),
            });
            self.awaiting_batches = Some(p);
            return;
        }
        self.vote(&p);
    }

    pub(super) fn vote(&mut self, p: &Proposal) {
        if self.ctx.set().index_of(&self.me).is_none() {
            return; // an observer (or a removed member) does not vote
        }
        if let Ok(v) = self.safety.make_vote(&self.ctx, p) {
            self.send_vote_signed(v);
        }
    }

    /// Sends a freshly signed vote to every other validator (after its safety state is durable)
    /// and counts it locally: every validator aggregates the votes of a round, so a QC forms even
    /// when the next leader is down (one timeout per crashed leader, not two).
    pub(super) fn send_vote_signed(&mut self, v: Vote) {
        self.emit_signed(Action::Broadcast(Message::Vote(v.clone())));
        self.on_vote(v);
    }

    /// Re-sends a vote signed before a restart (already durable) and counts it locally.
    pub(super) fn send_vote(&mut self, v: Vote) {
        self.out.push(Action::Broadcast(Message::Vote(v.clone())));
        self.on_vote(v);
    }

    pub(super) fn on_batches(&mut self, block_id: BlockId) {
        if self
            .awaiting_batches
            .as_ref()
            .is_some_and(|p| p.block.id() == block_id)
            && let Some(p) = self.awaiting_batches.take()
            && p.round() == self.pm.round()
        {
            self.vote(&p);
        }
    }

    pub(super) fn on_vote(&mut self, v: Vote) {
        if v.epoch != self.ctx.epoch() {
            return self.discard(false, "vote of another epoch");
        }
        let r = self.pm.round();
        if v.round.saturating_add(1) < r || v.round > r.saturating_add(self.config.round_window) {
            return self.discard(false, "vote outside the round window");
        }
        let Some(i) = self.ctx.set().index_of(&v.signer) else {
            return self.discard(false, "vote from a non-member");
        };
        let first = self
            .votes
            .get(&v.round)
            .and_then(|rv| rv.voted.get(&i).map(|f| (*f, rv.equivocators.contains(&i))));
        match first {
            Some(((id, _), _)) if id == v.block_id => {
                return self.discard(false, "duplicate vote");
            }
            Some((_, true)) => return self.discard(false, "duplicate equivocating vote"),
            Some((first, false)) => {
                // A different vote by the same signer for the same round: evidence if it is
                // really signed by them.
                if self.ctx.verify_vote(&v).is_err() {
                    return self.discard(true, "badly signed vote");
                }
                if let Some(rv) = self.votes.get_mut(&v.round) {
                    rv.equivocators.push(i);
                }
                self.out.push(Action::Evidence(Evidence {
                    kind: EquivocationKind::Vote,
                    signer: v.signer,
                    epoch: v.epoch,
                    round: v.round,
                    first,
                    second: (v.block_id, v.signature),
                }));
                return;
            }
            None => {}
        }
        if self.ctx.verify_vote(&v).is_err() {
            return self.discard(true, "badly signed vote");
        }
        let n = self.ctx.set().len();
        let rv = self.votes.entry(v.round).or_default();
        // Late votes are still remembered (at most one per member and round) so that a later
        // conflicting vote is caught as evidence.
        rv.voted.insert(i, (v.block_id, v.signature));
        if rv.qc_formed {
            return;
        }
        let entry = rv
            .by_block
            .entry(v.block_id)
            .or_insert_with(|| (SignerBitmap::new(n), BTreeMap::new()));
        entry.0.set(i);
        entry.1.insert(i, v.signature);
        if self.ctx.set().is_quorum(&entry.0) {
            let qc = QuorumCert {
                epoch: v.epoch,
                round: v.round,
                block_id: v.block_id,
                signers: entry.0.clone(),
                signatures: entry.1.values().copied().collect(),
            };
            rv.qc_formed = true;
            // The last signer voted for the block, so it holds it (if this node does not yet).
            let hint = (v.signer != self.me).then_some(v.signer);
            self.process_qc(&qc, hint);
        }
    }
}
