//! What each peer may still ask of this node: a token bucket of requests, a count of requests in
//! flight (queued or being answered) and a token bucket of response bytes, per peer and, for
//! non-members, once more for all of them together. Members and non-members are tracked apart,
//! so a crowd of non-member PeerIds (free to make) shares one fixed pool and never eats into what
//! members get.
//!
//! Byte costs are only known once a response is built, so admission asks for a positive byte
//! balance and the response's size is charged afterwards: the balance may go negative by one
//! response, and the peer waits until the refill pays the debt back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// The bounds of one budget (a peer, or the pool of every non-member).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Allowance {
    /// Requests refilled per second.
    pub requests_per_sec: u32,
    /// Requests that may come at once after a quiet spell (the bucket's size).
    pub request_burst: u32,
    /// Requests admitted and not yet answered, at most.
    pub in_flight: u32,
    /// Response bytes refilled per second (also the bucket's size: one second's worth).
    pub bytes_per_sec: u64,
}

/// Every bound the server applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Each member's own budget.
    pub member: Allowance,
    /// Each non-member's own budget.
    pub non_member: Allowance,
    /// What all non-members together may take.
    pub non_member_pool: Allowance,
    /// Non-member peers tracked at most (idle ones are forgotten first); beyond it new
    /// non-members are refused.
    pub max_non_member_peers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        super::ServeConfig::default().limits
    }
}

/// Which budget a request was charged to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Class {
    /// A member of the current set.
    Member,
    /// Anyone else.
    NonMember,
}

/// Which bound refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The peer asked too often.
    Rate(Scope),
    /// The peer has too many requests waiting for an answer.
    InFlight(Scope),
    /// The peer was sent too many bytes lately.
    Bytes(Scope),
    /// Too many non-member peers are tracked already.
    TooManyPeers,
    /// The server's queue is full, or it is not running.
    Busy,
}

/// Whose budget ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// A member's own.
    Member,
    /// A non-member's own.
    NonMember,
    /// The pool every non-member shares.
    NonMemberPool,
}

impl Refusal {
    /// The `reason` label it is counted under in `dstack_messages_rejected_total`.
    pub fn reason(self) -> &'static str {
        use Scope::*;
        match self {
            Refusal::Rate(Member) => "member_over_request_rate",
            Refusal::Rate(NonMember) => "non_member_over_request_rate",
            Refusal::Rate(NonMemberPool) => "non_member_pool_over_request_rate",
            Refusal::InFlight(Member) => "member_over_in_flight",
            Refusal::InFlight(NonMember) => "non_member_over_in_flight",
            Refusal::InFlight(NonMemberPool) => "non_member_pool_over_in_flight",
            Refusal::Bytes(Member) => "member_over_bytes",
            Refusal::Bytes(NonMember) => "non_member_over_bytes",
            Refusal::Bytes(NonMemberPool) => "non_member_pool_over_bytes",
            Refusal::TooManyPeers => "non_member_peers_full",
            Refusal::Busy => "server_busy",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "request refused: {} (retry later)", self.reason())
    }
}

/// A token bucket in thousandths of a unit, so integer refill stays exact at any rate.
#[derive(Clone, Debug)]
struct Bucket {
    level: i64,
    capacity: i64,
    per_sec: i64,
    last: Instant,
}

impl Bucket {
    fn new(capacity: u64, per_sec: u64, now: Instant) -> Self {
        let capacity = i64::try_from(capacity)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        Self {
            level: capacity,
            capacity,
            // Units per second are thousandths per millisecond.
            per_sec: i64::try_from(per_sec).unwrap_or(i64::MAX),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        let ms = now.saturating_duration_since(self.last).as_millis();
        self.last = self.last.max(now);
        let add = i64::try_from(ms)
            .unwrap_or(i64::MAX)
            .saturating_mul(self.per_sec);
        self.level = self.level.saturating_add(add).min(self.capacity);
    }

    /// Whether `units` whole units are available (without taking them).
    fn has(&self, units: u64) -> bool {
        self.level
            >= i64::try_from(units)
                .unwrap_or(i64::MAX)
                .saturating_mul(1000)
    }

    fn take(&mut self, units: u64) {
        let cost = i64::try_from(units)
            .unwrap_or(i64::MAX)
            .saturating_mul(1000);
        self.level = self.level.saturating_sub(cost);
    }

    fn full(&self) -> bool {
        self.level >= self.capacity
    }
}

/// One budget's state.
#[derive(Clone, Debug)]
struct Account {
    requests: Bucket,
    bytes: Bucket,
    in_flight: u32,
    max_in_flight: u32,
}

impl Account {
    fn new(a: &Allowance, now: Instant) -> Self {
        Self {
            requests: Bucket::new(
                u64::from(a.request_burst.max(1)),
                u64::from(a.requests_per_sec),
                now,
            ),
            bytes: Bucket::new(a.bytes_per_sec.max(1), a.bytes_per_sec, now),
            in_flight: 0,
            max_in_flight: a.in_flight,
        }
    }

    /// Why this account cannot take one more request now, if it cannot.
    fn check(&mut self, scope: Scope, now: Instant) -> Result<(), Refusal> {
        self.requests.refill(now);
        self.bytes.refill(now);
        if self.in_flight >= self.max_in_flight {
            return Err(Refusal::InFlight(scope));
        }
        if !self.requests.has(1) {
            return Err(Refusal::Rate(scope));
        }
        // A positive balance: the response's size is charged once it is known.
        if self.bytes.level <= 0 {
            return Err(Refusal::Bytes(scope));
        }
        Ok(())
    }

    fn admit(&mut self) {
        self.requests.take(1);
        self.in_flight += 1;
    }

    fn finish(&mut self, bytes: u64, now: Instant) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.bytes.refill(now);
        self.bytes.take(bytes);
    }

    /// Nothing in flight and both buckets full again: forgetting it loses nothing.
    fn idle(&mut self, now: Instant) -> bool {
        self.requests.refill(now);
        self.bytes.refill(now);
        self.in_flight == 0 && self.requests.full() && self.bytes.full()
    }
}

/// How often a full table of non-members is swept for idle entries, at most.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// The budgets of every peer the server has heard from.
#[derive(Debug)]
pub struct Budgets {
    limits: Limits,
    members: HashMap<PeerId, Account>,
    non_members: HashMap<PeerId, Account>,
    pool: Account,
    last_sweep: Option<Instant>,
}

impl Budgets {
    /// Fresh budgets under `limits`.
    pub fn new(limits: Limits, now: Instant) -> Self {
        Self {
            pool: Account::new(&limits.non_member_pool, now),
            limits,
            members: HashMap::new(),
            non_members: HashMap::new(),
            last_sweep: None,
        }
    }

    /// Admits one request of `peer` (counted in flight until [`Budgets::finish`]) or says which
    /// bound refuses it. Nothing is charged when it is refused.
    pub fn admit(&mut self, peer: PeerId, class: Class, now: Instant) -> Result<(), Refusal> {
        match class {
            Class::Member => {
                let member = &self.limits.member;
                let account = self
                    .members
                    .entry(peer)
                    .or_insert_with(|| Account::new(member, now));
                account.check(Scope::Member, now)?;
                account.admit();
            }
            Class::NonMember => {
                if !self.non_members.contains_key(&peer) {
                    self.make_room(now)?;
                }
                let own = &self.limits.non_member;
                let account = self
                    .non_members
                    .entry(peer)
                    .or_insert_with(|| Account::new(own, now));
                account.check(Scope::NonMember, now)?;
                self.pool.check(Scope::NonMemberPool, now)?;
                account.admit();
                self.pool.admit();
            }
        }
        Ok(())
    }

    /// Ends an admitted request: it is no longer in flight, and its response's `bytes` are
    /// charged (0 when nothing was sent).
    pub fn finish(&mut self, peer: &PeerId, class: Class, bytes: u64, now: Instant) {
        match class {
            Class::Member => {
                if let Some(a) = self.members.get_mut(peer) {
                    a.finish(bytes, now);
                }
            }
            Class::NonMember => {
                if let Some(a) = self.non_members.get_mut(peer) {
                    a.finish(bytes, now);
                }
                self.pool.finish(bytes, now);
            }
        }
    }

    /// Room for one more non-member: forgets idle ones when the table is full (at most once a
    /// second, so a stream of new PeerIds cannot make every request sweep the table).
    fn make_room(&mut self, now: Instant) -> Result<(), Refusal> {
        if self.non_members.len() < self.limits.max_non_member_peers {
            return Ok(());
        }
        let due = self
            .last_sweep
            .is_none_or(|t| now.saturating_duration_since(t) >= SWEEP_EVERY);
        if due {
            self.last_sweep = Some(now);
            self.non_members.retain(|_, a| !a.idle(now));
            self.members.retain(|_, a| !a.idle(now));
        }
        if self.non_members.len() < self.limits.max_non_member_peers {
            Ok(())
        } else {
            Err(Refusal::TooManyPeers)
        }
    }

    /// Peers tracked (members, non-members): for tests and diagnostics.
    pub fn tracked(&self) -> (usize, usize) {
        (self.members.len(), self.non_members.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            member: Allowance {
                requests_per_sec: 10,
                request_burst: 5,
                in_flight: 3,
                bytes_per_sec: 1000,
            },
            non_member: Allowance {
                requests_per_sec: 1,
                request_burst: 2,
                in_flight: 1,
                bytes_per_sec: 100,
            },
            non_member_pool: Allowance {
                requests_per_sec: 2,
                request_burst: 3,
                in_flight: 2,
                bytes_per_sec: 150,
            },
            max_non_member_peers: 4,
        }
    }

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn the_request_rate_refills_over_time() {
        let t0 = Instant::now();
        let mut b = Budgets::new(limits(), t0);
        let p = peer();
        for _ in 0..5 {
            b.admit(p, Class::Member, t0).expect("within the burst");
            b.finish(&p, Class::Member, 0, t0);
        }
        assert_eq!(
            b.admit(p, Class::Member, t0),
            Err(Refusal::Rate(Scope::Member))
        );
        // 10 per second: one more after 100 ms, not after 99.
        let t = t0 + Duration::from_millis(99);
        assert_eq!(
            b.admit(p, Class::Member, t),
            Err(Refusal::Rate(Scope::Member))
        );
        b.admit(p, Class::Member, t0 + Duration::from_millis(100))
            .expect("refilled");
    }

    #[test]
    fn requests_in_flight_are_bounded_until_answered() {
        let t0 = Instant::now();
        let mut b = Budgets::new(limits(), t0);
        let p = peer();
        for _ in 0..3 {
            b.admit(p, Class::Member, t0).expect("in flight");
        }
        assert_eq!(
            b.admit(p, Class::Member, t0),
            Err(Refusal::InFlight(Scope::Member))
        );
        b.finish(&p, Class::Member, 10, t0);
        b.admit(p, Class::Member, t0).expect("one answered");
    }

    #[test]
    fn bytes_are_charged_after_the_response_and_repaid_by_the_refill() {
        let t0 = Instant::now();
        let mut b = Budgets::new(limits(), t0);
        let p = peer();
        b.admit(p, Class::Member, t0).expect("first");
        // A response far above the balance is sent once, then the peer owes it.
        b.finish(&p, Class::Member, 2500, t0);
        assert_eq!(
            b.admit(p, Class::Member, t0 + Duration::from_millis(1400)),
            Err(Refusal::Bytes(Scope::Member))
        );
        b.admit(p, Class::Member, t0 + Duration::from_millis(1600))
            .expect("the debt of 1,500 bytes is repaid at 1,000 per second");
    }

    #[test]
    fn non_members_share_one_pool_and_never_touch_members() {
        let t0 = Instant::now();
        let mut b = Budgets::new(limits(), t0);
        // Many PeerIds, one request each: the pool's burst of 3 is all they get together.
        let mut served = 0;
        let mut refusals = Vec::new();
        for _ in 0..4 {
            let p = peer();
            match b.admit(p, Class::NonMember, t0) {
                Ok(()) => {
                    served += 1;
                    b.finish(&p, Class::NonMember, 0, t0);
                }
                Err(r) => refusals.push(r),
            }
        }
        assert_eq!(served, 3);
        assert_eq!(refusals, vec![Refusal::Rate(Scope::NonMemberPool)]);
        // A member is served as if nobody else had asked.
        let m = peer();
        for _ in 0..5 {
            b.admit(m, Class::Member, t0)
                .expect("member budget untouched");
            b.finish(&m, Class::Member, 0, t0);
        }
    }

    #[test]
    fn a_refused_request_costs_nothing() {
        let t0 = Instant::now();
        let mut b = Budgets::new(limits(), t0);
        let p = peer();
        b.admit(p, Class::NonMember, t0).expect("first");
        // In flight already (limit 1): refused, and the pool is not charged for it.
        assert_eq!(
            b.admit(p, Class::NonMember, t0),
            Err(Refusal::InFlight(Scope::NonMember))
        );
        b.finish(&p, Class::NonMember, 0, t0);
        let q = peer();
        b.admit(q, Class::NonMember, t0).expect("pool token 2");
        b.finish(&q, Class::NonMember, 0, t0);
        let r = peer();
        b.admit(r, Class::NonMember, t0).expect("pool token 3");
    }

    #[test]
    fn the_non_member_table_is_bounded_and_forgets_idle_peers() {
        let t0 = Instant::now();
        let mut lim = limits();
        lim.non_member_pool.request_burst = 100;
        lim.non_member_pool.requests_per_sec = 100;
        lim.non_member_pool.in_flight = 100;
        let mut b = Budgets::new(lim, t0);
        let busy: Vec<PeerId> = (0..4).map(|_| peer()).collect();
        for p in &busy {
            b.admit(*p, Class::NonMember, t0).expect("tracked");
        }
        assert_eq!(
            b.admit(peer(), Class::NonMember, t0),
            Err(Refusal::TooManyPeers)
        );
        assert_eq!(b.tracked(), (0, 4));
        // Once their requests are answered and their buckets refilled, they are forgotten.
        for p in &busy {
            b.finish(p, Class::NonMember, 0, t0);
        }
        let later = t0 + Duration::from_secs(5);
        b.admit(peer(), Class::NonMember, later)
            .expect("room again");
        assert_eq!(b.tracked(), (0, 1));
    }

    #[test]
    fn refusals_name_their_bound() {
        assert_eq!(
            Refusal::Rate(Scope::NonMemberPool).reason(),
            "non_member_pool_over_request_rate"
        );
        assert!(
            Refusal::Busy
                .to_string()
                .contains("request refused: server_busy")
        );
    }
}
