//! Timeouts and timeout certificates: collecting other members' timeouts into TCs, the round
//! timer, and this node's own timeout.

use super::*;

impl Core {
    pub(super) fn on_timeout(&mut self, t: Timeout, from: Address) {
        let Some(i) = self.ctx.set().index_of(&t.signer) else {
            return self.discard(false, "timeout from a non-member");
        };
        if self.pm.has_timeout(t.round, i) {
            return self.discard(false, "duplicate timeout");
        }
        if t.round.saturating_add(1) < self.pm.round()
            && t.high_qc.round <= self.pm.high_qc().round
            && t.high_tc
                .as_ref()
                .is_none_or(|tc| tc.round.saturating_add(1) < self.pm.round())
        {
            return self.discard(false, "stale timeout");
        }
        // Far ahead and carrying nothing newer than what this node holds: of no use even if
        // valid, so no signature is spent on it.
        let newer_certs = t.high_qc.round > self.pm.high_qc().round
            || t.high_tc
                .as_ref()
                .is_some_and(|tc| self.pm.high_tc().is_none_or(|held| tc.round > held.round));
        if !newer_certs && !self.pm.in_window(t.round) {
            return self.discard(false, "timeout outside the round window");
        }
        if self.ctx.verify_timeout(&t).is_err() {
            return self.discard(true, "invalid timeout");
        }
        // Any valid certificate it carries is used, even if the timeout itself is out of window.
        self.process_qc(&t.high_qc.clone(), Some(from));
        if let Some(tc) = t.high_tc.clone() {
            self.process_tc(&tc, Some(from));
        }
        if t.epoch != self.ctx.epoch() {
            return; // its certificates ended the epoch
        }
        if !self.pm.in_window(t.round) {
            return self.discard(false, "timeout outside the round window");
        }
        self.collect_timeout(i, &t);
    }

    pub(super) fn collect_timeout(&mut self, i: usize, t: &Timeout) {
        let outcome = self.pm.add_timeout(self.ctx.set(), i, t);
        // Amplification: P − Q + 1 timed out at (or above) our round: time out too.
        if outcome.honest_reached
            && t.round == self.pm.round()
            && self.safety.state().highest_timeout_round < t.round
        {
            self.local_timeout();
        }
        if let Some(tc) = outcome.tc {
            self.out
                .push(Action::Broadcast(Message::TimeoutCert(tc.clone())));
            self.process_tc(&tc, None);
        }
    }

    pub(super) fn on_tc(&mut self, tc: TimeoutCert, from: Address) {
        if tc.round.saturating_add(1) < self.pm.round()
            && tc.high_qc.round <= self.pm.high_qc().round
        {
            return self.discard(false, "stale TC");
        }
        if self.ctx.verify_tc(&tc).is_err() {
            return self.discard(true, "invalid TC");
        }
        self.process_tc(&tc, Some(from));
    }

    pub(super) fn on_timer(&mut self, round: u64) {
        if round != self.pm.round() {
            return;
        }
        self.local_timeout();
        // Retry fetches that have not been answered (the request or answer may have been lost).
        let retry: Vec<BlockId> = self.wanted.keys().take(4).copied().collect();
        for id in retry {
            self.out.push(Action::FetchBlocks {
                block_id: id,
                stop_at_round: self.tree.root().round,
                max_blocks: self.config.max_fetch_blocks,
                from: None,
            });
        }
        // Re-arm (the timeout is re-broadcast until the round ends), unless the timeout itself
        // completed a TC and the next round's timer is already set.
        if self.pm.round() == round {
            self.out.push(Action::SetTimer {
                round,
                duration_ms: self.pm.timer_duration(),
            });
        }
    }

    /// Signs (or re-signs) the timeout of the current round and broadcasts it.
    pub(super) fn local_timeout(&mut self) {
        if self.ctx.set().index_of(&self.me).is_none() {
            return;
        }
        let r = self.pm.round();
        let high_qc = self.pm.high_qc().clone();
        let high_tc = if high_qc.round.checked_add(1) == Some(r) {
            None
        } else {
            self.pm
                .high_tc()
                .filter(|tc| tc.round.checked_add(1) == Some(r))
                .cloned()
        };
        let Ok(t) = self
            .safety
            .make_timeout(&self.ctx, r, &high_qc, high_tc.as_ref())
        else {
            return;
        };
        let certs = (high_qc.round, high_tc.as_ref().map_or(0, |t| t.round));
        if certs != self.persisted_certs {
            self.persisted_certs = certs;
            self.out
                .push(Action::PersistCertificates { high_qc, high_tc });
        }
        self.emit_signed(Action::Broadcast(Message::Timeout(t.clone())));
        if let Some(i) = self.ctx.set().index_of(&self.me)
            && !self.pm.has_timeout(r, i)
        {
            self.collect_timeout(i, &t);
        }
    }
}
