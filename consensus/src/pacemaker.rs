//! The pacemaker (DESIGN section 5): the current round, the highest QC and TC seen, the round
//! timer with exponential backoff over consecutive rounds entered by TC, and the collection of
//! timeouts into TCs, with the amplification threshold P − Q + 1. Timeouts are only collected for
//! rounds in `[round, round + window]`, so the buffer is bounded by `window × n`.

use crate::types::{QuorumCert, Signature, SignerBitmap, Timeout, TimeoutCert};
use crate::validators::ValidatorSet;
use std::collections::BTreeMap;

/// How a round was entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// By a QC of the previous round.
    Qc,
    /// By a TC of the previous round.
    Tc,
}

#[derive(Clone, Debug)]
struct Collector {
    signers: SignerBitmap,
    by_signer: BTreeMap<usize, (Signature, u64)>,
    best_qc: QuorumCert,
    tc_formed: bool,
}

/// What adding a timeout produced.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TimeoutOutcome {
    /// The round's timeouts now hold at least P − Q + 1 (someone honest timed out).
    pub honest_reached: bool,
    /// A TC formed (once per round).
    pub tc: Option<TimeoutCert>,
}

/// Round state and timeout collection of one node.
#[derive(Clone, Debug)]
pub struct Pacemaker {
    round: u64,
    high_qc: QuorumCert,
    high_tc: Option<TimeoutCert>,
    tc_streak: u32,
    base_ms: u64,
    cap_ms: u64,
    window: u64,
    timeouts: BTreeMap<u64, Collector>,
}

impl Pacemaker {
    /// A pacemaker at the round after its highest certificate.
    pub fn new(
        base_ms: u64,
        cap_ms: u64,
        window: u64,
        high_qc: QuorumCert,
        high_tc: Option<TimeoutCert>,
    ) -> Self {
        let round = high_qc
            .round
            .max(high_tc.as_ref().map_or(0, |t| t.round))
            .saturating_add(1);
        Self {
            round,
            high_qc,
            high_tc,
            tc_streak: 0,
            base_ms,
            cap_ms,
            window,
            timeouts: BTreeMap::new(),
        }
    }
    /// The current round.
    pub fn round(&self) -> u64 {
        self.round
    }
    /// The highest QC seen.
    pub fn high_qc(&self) -> &QuorumCert {
        &self.high_qc
    }
    /// The highest TC seen.
    pub fn high_tc(&self) -> Option<&TimeoutCert> {
        self.high_tc.as_ref()
    }
    /// Keeps `qc` if it is the highest; returns whether it was.
    pub fn observe_qc(&mut self, qc: &QuorumCert) -> bool {
        if qc.round > self.high_qc.round {
            self.high_qc = qc.clone();
            true
        } else {
            false
        }
    }
    /// Keeps `tc` if it is the highest; returns whether it was.
    pub fn observe_tc(&mut self, tc: &TimeoutCert) -> bool {
        if self.high_tc.as_ref().is_none_or(|h| tc.round > h.round) {
            self.high_tc = Some(tc.clone());
            true
        } else {
            false
        }
    }
    /// Enters `round` (if above the current one): backoff bookkeeping and pruning of timeouts of
    /// earlier rounds. Returns whether the round changed.
    pub fn advance(&mut self, round: u64, via: Entry) -> bool {
        if round <= self.round {
            return false;
        }
        self.round = round;
        self.tc_streak = match via {
            Entry::Qc => 0,
            Entry::Tc => self.tc_streak.saturating_add(1),
        };
        self.timeouts = self.timeouts.split_off(&round);
        true
    }
    /// The round timer: base × 2^k, k = max(0, consecutive rounds entered by TC − 1), capped.
    pub fn timer_duration(&self) -> u64 {
        let k = self.tc_streak.saturating_sub(1).min(63);
        self.base_ms.saturating_mul(1u64 << k).min(self.cap_ms)
    }
    /// Whether `round` is one whose timeouts are collected.
    pub fn in_window(&self, round: u64) -> bool {
        round >= self.round && round <= self.round.saturating_add(self.window)
    }
    /// Whether a timeout of `signer` for `round` is already held (deduplication before any
    /// signature check is spent).
    pub fn has_timeout(&self, round: u64, signer: usize) -> bool {
        self.timeouts
            .get(&round)
            .is_some_and(|c| c.by_signer.contains_key(&signer))
    }
    /// Adds a verified timeout of the member at `index`. Out-of-window or duplicate timeouts are
    /// ignored.
    pub fn add_timeout(&mut self, set: &ValidatorSet, index: usize, t: &Timeout) -> TimeoutOutcome {
        if !self.in_window(t.round) {
            return TimeoutOutcome::default();
        }
        let c = self.timeouts.entry(t.round).or_insert_with(|| Collector {
            signers: SignerBitmap::new(set.len()),
            by_signer: BTreeMap::new(),
            best_qc: t.high_qc.clone(),
            tc_formed: false,
        });
        if c.by_signer.contains_key(&index) {
            return TimeoutOutcome::default();
        }
        c.signers.set(index);
        c.by_signer.insert(index, (t.signature, t.high_qc.round));
        if t.high_qc.round > c.best_qc.round {
            c.best_qc = t.high_qc.clone();
        }
        let mut out = TimeoutOutcome {
            honest_reached: set.has_honest(&c.signers),
            tc: None,
        };
        if !c.tc_formed && set.is_quorum(&c.signers) {
            c.tc_formed = true;
            out.tc = Some(TimeoutCert {
                epoch: t.epoch,
                round: t.round,
                high_qc: c.best_qc.clone(),
                signers: c.signers.clone(),
                high_qc_rounds: c.by_signer.values().map(|(_, r)| *r).collect(),
                signatures: c.by_signer.values().map(|(s, _)| *s).collect(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Scheme;
    use crate::testkit::Cluster;

    #[test]
    fn backoff_only_over_consecutive_tc_rounds_and_capped() {
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 1);
        let mut pm = Pacemaker::new(1000, 4000, 10, c.ctx.genesis_qc(), None);
        assert_eq!(pm.round(), 1);
        assert_eq!(pm.timer_duration(), 1000);
        pm.advance(2, Entry::Tc);
        assert_eq!(pm.timer_duration(), 1000, "first TC round: k = 0");
        pm.advance(3, Entry::Tc);
        assert_eq!(pm.timer_duration(), 2000);
        pm.advance(4, Entry::Tc);
        assert_eq!(pm.timer_duration(), 4000);
        pm.advance(5, Entry::Tc);
        assert_eq!(pm.timer_duration(), 4000, "capped");
        pm.advance(6, Entry::Qc);
        assert_eq!(pm.timer_duration(), 1000, "a QC resets");
        assert!(!pm.advance(6, Entry::Qc));
    }

    #[test]
    fn forms_valid_tc_with_highest_qc_and_amplifies_at_p_minus_q_plus_1() {
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 1);
        let b1 = c.block(1, c.ctx.genesis_qc(), vec![]);
        let q1 = c.full_qc(1, b1.id());
        let mut pm = Pacemaker::new(1000, 4000, 10, q1.clone(), None);
        pm.advance(2, Entry::Qc);
        let t0 = c.timeout(0, 2, q1.clone(), None);
        let out = pm.add_timeout(c.ctx.set(), 0, &t0);
        assert_eq!(out, TimeoutOutcome::default(), "power 1 < P - Q + 1 = 2");
        let out = pm.add_timeout(c.ctx.set(), 0, &t0);
        assert!(!out.honest_reached, "duplicates add nothing");
        let tc1 = c.tc(1, c.ctx.genesis_qc(), &[(0, 0), (1, 0), (3, 0)]);
        let t1 = c.timeout(1, 2, q1.clone(), None);
        let out = pm.add_timeout(c.ctx.set(), 1, &t1);
        assert!(out.honest_reached && out.tc.is_none());
        let t2 = c.timeout(2, 2, c.ctx.genesis_qc(), Some(tc1));
        let tc = pm.add_timeout(c.ctx.set(), 2, &t2).tc.expect("quorum of 3");
        assert_eq!(tc.high_qc, q1);
        assert_eq!(tc.high_qc_rounds, vec![1, 1, 0]);
        assert_eq!(c.ctx.verify_tc(&tc), Ok(()));
        let t3 = c.timeout(3, 2, q1, None);
        assert!(
            pm.add_timeout(c.ctx.set(), 3, &t3).tc.is_none(),
            "one TC per round"
        );
    }
}
