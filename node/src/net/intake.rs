//! A member's share of this node's batch intake: a few places in the driver's queue and a byte
//! rate. The batch streams are the one way a member can make every node hash and store bytes at
//! will; the places keep its frames from queueing ahead of consensus messages, the rate bounds
//! the bytes (and so the disk) it can cost per second, in proportion to its voting power.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use tokio::sync::{Semaphore, watch};

use crate::metrics::Metrics;

/// Every member's intake, shared by the batch readers (what a member pushes) and the driver's
/// batch fetches (what a member's proposal makes this node fetch): both cost the member's
/// share.
pub(crate) struct Intakes {
    /// Bytes per second for all members together (0: unlimited).
    total_rate: u64,
    members: watch::Receiver<Arc<Members>>,
    each: Mutex<HashMap<PeerId, Arc<Intake>>>,
    metrics: Arc<Metrics>,
}

impl Intakes {
    /// The intakes of the members `members` names, sharing `total_rate` bytes per second.
    pub(crate) fn new(
        total_rate: u64,
        members: watch::Receiver<Arc<Members>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            total_rate,
            members,
            each: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// `peer`'s intake, the same one for each of its streams and fetches (members that left
    /// are forgotten here).
    pub(crate) fn of(&self, peer: &PeerId, places: usize) -> Arc<Intake> {
        let mut each = self.each.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(i) = each.get(peer) {
            return i.clone();
        }
        let members = self.members.borrow().clone();
        each.retain(|p, _| members.contains(p));
        let i = Arc::new(Intake::new(places));
        each.insert(*peer, i.clone());
        i
    }

    /// Charges `len` bytes to `peer`'s share and returns how long to wait for them (counted in
    /// `dstack_batch_intake_wait_seconds_total`).
    pub(crate) fn charge(&self, peer: &PeerId, len: usize, places: usize) -> Duration {
        let Some(rate) = self.members.borrow().rate_of(peer, self.total_rate) else {
            return Duration::ZERO;
        };
        let wait = self.of(peer, places).charge(len, rate, Instant::now());
        if !wait.is_zero() {
            self.metrics.batch_intake_waited(wait);
        }
        wait
    }
}

/// The members as the batch readers see them (replaced wholesale on each change).
#[derive(Debug, Default)]
pub(crate) struct Members {
    /// Each member's voting power.
    pub(crate) powers: HashMap<PeerId, u64>,
    /// Their sum.
    pub(crate) total: u64,
}

impl Members {
    /// The members with these powers.
    pub(crate) fn new(powers: HashMap<PeerId, u64>) -> Self {
        let total = powers.values().fold(0u64, |a, p| a.saturating_add(*p));
        Self { powers, total }
    }

    /// Whether `peer` is a member.
    pub(crate) fn contains(&self, peer: &PeerId) -> bool {
        self.powers.contains_key(peer)
    }

    /// The bytes per second `peer` may push of a `total_rate` shared by power (`None`:
    /// unlimited, when `total_rate` is 0). A member of power 0 still gets a sliver of it (one
    /// unit's worth), so a set of all-zero powers cannot stall dissemination.
    pub(crate) fn rate_of(&self, peer: &PeerId, total_rate: u64) -> Option<f64> {
        if total_rate == 0 {
            return None;
        }
        let power = self.powers.get(peer).copied().unwrap_or(0).max(1) as f64;
        let total = self.total.max(1) as f64;
        Some(total_rate as f64 * (power / total).min(1.0))
    }
}

/// One member's intake state, kept across its streams (a new stream brings no new allowance).
pub(crate) struct Intake {
    /// Its frames handed to the driver and not yet handled.
    pub(crate) places: Arc<Semaphore>,
    pace: Mutex<Pace>,
}

impl Intake {
    /// A fresh intake with `places` places and a full byte allowance.
    pub(crate) fn new(places: usize) -> Self {
        Self {
            places: Arc::new(Semaphore::new(places)),
            pace: Mutex::new(Pace::default()),
        }
    }

    /// Charges a frame of `len` bytes at `rate` bytes per second; returns how long to wait
    /// before reading on.
    pub(crate) fn charge(&self, len: usize, rate: f64, now: Instant) -> Duration {
        self.pace
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .charge(len, rate, now)
    }
}

/// A byte allowance refilled at a rate, allowed one second's worth of burst (at least one
/// largest frame), and allowed to go into debt by one frame: the debt is the wait.
#[derive(Debug, Default)]
struct Pace {
    /// Allowance in bytes (negative: debt); `None` before the first frame (then full).
    tokens: Option<f64>,
    at: Option<Instant>,
}

/// The burst a rate allows: one second of it, and always one largest gossip frame.
fn burst(rate: f64) -> f64 {
    rate.max(proto::limits::MAX_GOSSIP_BYTES as f64)
}

impl Pace {
    fn charge(&mut self, len: usize, rate: f64, now: Instant) -> Duration {
        if !(rate.is_finite() && rate > 0.0) {
            return Duration::ZERO;
        }
        let cap = burst(rate);
        let refill = self.at.map_or(0.0, |at| {
            now.saturating_duration_since(at).as_secs_f64() * rate
        });
        let tokens = self.tokens.map_or(cap, |t| (t + refill).min(cap)) - len as f64;
        self.tokens = Some(tokens);
        self.at = Some(now);
        if tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-tokens / rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: u8) -> PeerId {
        crate::net::keypair_from_secret(&[seed; 32])
            .expect("key")
            .public()
            .to_peer_id()
    }

    #[test]
    fn the_rate_is_shared_by_power() {
        let m = Members::new([(peer(1), 1), (peer(2), 3)].into_iter().collect());
        assert_eq!(m.rate_of(&peer(1), 400), Some(100.0));
        assert_eq!(m.rate_of(&peer(2), 400), Some(300.0));
        assert_eq!(m.rate_of(&peer(1), 0), None, "0 is unlimited");
        let zero = Members::new([(peer(1), 0), (peer(2), 0)].into_iter().collect());
        assert_eq!(zero.rate_of(&peer(1), 400), Some(400.0), "never stalled");
    }

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let rate = 8.0 * 1024.0 * 1024.0;
        let frame = 1 << 20;
        let mut p = Pace::default();
        let t0 = Instant::now();
        // One second of rate (at least one largest frame) goes through at once.
        for _ in 0..8 {
            assert_eq!(p.charge(frame, rate, t0), Duration::ZERO);
        }
        // The next one waits for its bytes at the rate.
        let wait = p.charge(frame, rate, t0);
        assert!(
            (wait.as_secs_f64() - 0.125).abs() < 1e-6,
            "waited {wait:?} for 1 MiB at 8 MiB/s"
        );
        // Paid for by waiting: after that time, one more frame owes one more frame's time.
        let wait = p.charge(frame, rate, t0 + Duration::from_millis(125));
        assert!((wait.as_secs_f64() - 0.125).abs() < 1e-6, "{wait:?}");
        // Idle time refills, but only up to the burst.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..8 {
            assert_eq!(p.charge(frame, rate, later), Duration::ZERO);
        }
        assert!(p.charge(frame, rate, later) > Duration::ZERO);
    }

    #[test]
    fn a_small_rate_still_takes_one_largest_frame_at_once() {
        let mut p = Pace::default();
        let t0 = Instant::now();
        let max = proto::limits::MAX_GOSSIP_BYTES;
        assert_eq!(p.charge(max, 1000.0, t0), Duration::ZERO);
        assert_eq!(p.charge(1000, 1000.0, t0), Duration::from_secs(1));
        assert_eq!(p.charge(10, 0.0, t0), Duration::ZERO, "no rate: no wait");
    }
}
