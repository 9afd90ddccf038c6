//! A weighted validator set (DESIGN section 5): members sorted by address with u64 powers, the
//! quorum Q = floor(2P/3) + 1 and the "someone honest" threshold P − Q + 1 (computed in u128), and
//! the leader schedule `leader(r) = schedule[r mod P]` built by smooth weighted round-robin
//! (CometBFT proposer priority, ties to the lower address).

use crate::crypto::{PreparedKey, address_of};
use crate::domain::validator_set_hash;
use crate::types::{Address, MAX_VALIDATORS, MemberInfo, PublicKey, Reconfigure, SignerBitmap};
use std::collections::{HashMap, VecDeque};
use thiserror::Error;

/// The largest total power a set may have: the schedule has one entry per unit of power.
pub const MAX_TOTAL_POWER: u64 = 1 << 20;

/// Why a validator set was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SetError {
    /// No members.
    #[error("a validator set needs at least one member")]
    Empty,
    /// More members than `MAX_VALIDATORS`.
    #[error("{0} members, more than the bound {MAX_VALIDATORS}")]
    TooMany(usize),
    /// A member with power 0.
    #[error("member {0} has power 0")]
    ZeroPower(Address),
    /// Two members with one address.
    #[error("member {0} appears twice")]
    Duplicate(Address),
    /// Total power above `MAX_TOTAL_POWER`.
    #[error("total power {0} is above the bound {MAX_TOTAL_POWER}")]
    TooMuchPower(u128),
    /// A member whose address is not derived from its key.
    #[error("member {0} has an address that is not derived from its public key")]
    AddressMismatch(Address),
}

/// One member of a set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validator {
    /// Address (keccak of the key, last 20 bytes).
    pub address: Address,
    /// Voting power (> 0).
    pub power: u64,
    /// The public key, parsed for verification.
    pub key: PreparedKey,
}

/// An epoch's validator set with its thresholds and leader schedule, immutable once built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatorSet {
    members: Vec<Validator>,
    index: HashMap<Address, usize>,
    total: u64,
    quorum: u64,
    honest: u64,
    schedule: Vec<u32>,
    hash: [u8; 32],
}

impl ValidatorSet {
    /// Builds a set from `(public key, power)` pairs; addresses are derived and members sorted.
    pub fn new(members: Vec<(PublicKey, u64)>) -> Result<Self, SetError> {
        let infos = members
            .into_iter()
            .map(|(public_key, power)| MemberInfo {
                address: address_of(&public_key),
                public_key,
                power,
            })
            .collect();
        Self::from_members(infos)
    }

    /// Builds a set from contract-view members (the form a `Reconfigure` carries); each address
    /// must be derived from its key.
    pub fn from_members(mut members: Vec<MemberInfo>) -> Result<Self, SetError> {
        members.sort_by_key(|m| m.address);
        let total = check_members(&members)?;
        let index = members
            .iter()
            .enumerate()
            .map(|(i, m)| (m.address, i))
            .collect();
        let p = total;
        let quorum = 2 * p / 3 + 1;
        let honest = p - quorum + 1;
        let hash = validator_set_hash(&members);
        let validators: Vec<Validator> = members
            .into_iter()
            .map(|m| Validator {
                address: m.address,
                power: m.power,
                key: PreparedKey::new(m.public_key),
            })
            .collect();
        let powers: Vec<u64> = validators.iter().map(|v| v.power).collect();
        // Bounded above by MAX_TOTAL_POWER, so these conversions cannot fail.
        let to_u64 = |x: u128| u64::try_from(x).unwrap_or(u64::MAX);
        Ok(Self {
            schedule: build_schedule(&powers),
            members: validators,
            index,
            total: to_u64(p),
            quorum: to_u64(quorum),
            honest: to_u64(honest),
            hash,
        })
    }

    /// Number of members.
    pub fn len(&self) -> usize {
        self.members.len()
    }
    /// Never true (sets are not empty); here for clippy's `len` convention.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
    /// Members in address order.
    pub fn members(&self) -> &[Validator] {
        &self.members
    }
    /// The member at `i`.
    pub fn get(&self, i: usize) -> Option<&Validator> {
        self.members.get(i)
    }
    /// The index of `address`.
    pub fn index_of(&self, address: &Address) -> Option<usize> {
        self.index.get(address).copied()
    }
    /// Total power P.
    pub fn total_power(&self) -> u64 {
        self.total
    }
    /// Q = floor(2P/3) + 1.
    pub fn quorum_power(&self) -> u64 {
        self.quorum
    }
    /// P − Q + 1: any set of this power holds at least one honest member.
    pub fn honest_power(&self) -> u64 {
        self.honest
    }
    /// keccak256 of the ABI encoding of the members (DESIGN section 4).
    pub fn hash(&self) -> [u8; 32] {
        self.hash
    }
    /// The members as the contract lists them.
    pub fn member_infos(&self) -> Vec<MemberInfo> {
        self.members
            .iter()
            .map(|v| MemberInfo {
                address: v.address,
                public_key: *v.key.public(),
                power: v.power,
            })
            .collect()
    }

    /// Summed power of the marked members (indices outside the set count nothing).
    pub fn power_of(&self, signers: &SignerBitmap) -> u128 {
        signers
            .iter()
            .filter_map(|i| self.members.get(i))
            .map(|v| u128::from(v.power))
            .sum()
    }

    /// Whether `signers` form a quorum: power at least Q. Every quorum decision (forming and
    /// verifying QCs and TCs) goes through here.
    pub fn is_quorum(&self, signers: &SignerBitmap) -> bool {
        #[cfg(feature = "mutant-quorum-by-count")]
        {
            // Mutant: counts members instead of power.
            return (signers.count() as u128) * 3 > 2 * (self.members.len() as u128);
        }
        #[allow(unreachable_code)]
        {
            self.power_of(signers) >= u128::from(self.quorum)
        }
    }

    /// Whether `signers` hold at least P − Q + 1 (so at least one honest member).
    pub fn has_honest(&self, signers: &SignerBitmap) -> bool {
        self.power_of(signers) >= u128::from(self.honest)
    }

    /// The leader of `round`: `schedule[round mod P]`.
    pub fn leader(&self, round: u64) -> Address {
        let slot = (round % self.total) as usize;
        let i = self.schedule.get(slot).copied().unwrap_or(0) as usize;
        self.members.get(i).map(|v| v.address).unwrap_or_default()
    }

    /// The schedule as member indices (length P).
    pub fn schedule(&self) -> &[u32] {
        &self.schedule
    }
}

/// Checks members sorted by address without building anything: at least one, at most
/// `MAX_VALIDATORS`, positive powers, addresses derived from keys, no duplicates, total power at
/// most `MAX_TOTAL_POWER`. Linear in the members, so it is safe to run on outside data; the leader
/// schedule (linear in the power) is built only for a set that is used. Returns the total power.
pub fn check_members(members: &[MemberInfo]) -> Result<u128, SetError> {
    if members.is_empty() {
        return Err(SetError::Empty);
    }
    if members.len() > MAX_VALIDATORS {
        return Err(SetError::TooMany(members.len()));
    }
    let mut total: u128 = 0;
    for (i, m) in members.iter().enumerate() {
        if m.power == 0 {
            return Err(SetError::ZeroPower(m.address));
        }
        if i > 0 && members[i - 1].address >= m.address {
            return Err(SetError::Duplicate(m.address));
        }
        total += u128::from(m.power);
        if total > u128::from(MAX_TOTAL_POWER) {
            return Err(SetError::TooMuchPower(total));
        }
    }
    // Key hashing last: the cheap checks above bound how much of it an outsider can cause.
    for m in members {
        if address_of(&m.public_key) != m.address {
            return Err(SetError::AddressMismatch(m.address));
        }
    }
    Ok(total)
}

/// The consensus set of a chain view (DESIGN section 4, with the bounds): the chain may hold
/// more members or power than a set may have (public minting makes that cheap), and a set that
/// could not be built would freeze the cluster on its old members. So every node reduces the
/// chain's members the same deterministic way before comparing or proposing: members sorted by
/// address, power-0 entries dropped, then the `MAX_VALIDATORS` of highest power kept (ties to the
/// lower address), then, if the total is above `MAX_TOTAL_POWER`, every power divided by
/// `d = ceil(total / (MAX_TOTAL_POWER - MAX_VALIDATORS))` and rounded up (so each member keeps at
/// least 1 and the sum stays within the bound). A view within the bounds is returned unchanged.
pub fn bounded_members(mut members: Vec<MemberInfo>) -> Vec<MemberInfo> {
    members.retain(|m| m.power > 0);
    if members.len() > MAX_VALIDATORS {
        members.sort_by(|a, b| b.power.cmp(&a.power).then(a.address.cmp(&b.address)));
        members.truncate(MAX_VALIDATORS);
    }
    members.sort_by_key(|m| m.address);
    let total: u128 = members.iter().map(|m| u128::from(m.power)).sum();
    let cap = u128::from(MAX_TOTAL_POWER);
    if total > cap {
        let room = cap - MAX_VALIDATORS as u128;
        let d = total.div_ceil(room);
        for m in &mut members {
            let scaled = u128::from(m.power).div_ceil(d);
            m.power = u64::try_from(scaled).unwrap_or(MAX_TOTAL_POWER);
        }
    }
    members
}

/// Smooth weighted round-robin of length P over powers given in address order: each step adds
/// every power to its priority, picks the highest (ties to the lower index, i.e. address) and
/// subtracts P from it. Members of equal power differ only in how often they were picked, so
/// each power class is a queue rotating in address order and a step costs O(distinct powers),
/// at most O(sqrt P): P = 10,000 with equal powers takes microseconds.
pub fn build_schedule(powers: &[u64]) -> Vec<u32> {
    let p: u64 = powers.iter().sum();
    // Classes keyed by power; each holds a queue of (index) in (picks, address) order and each
    // member's pick count.
    let mut class_of: Vec<u64> = powers.to_vec();
    class_of.sort_unstable();
    class_of.dedup();
    let mut queues: Vec<VecDeque<u32>> = vec![VecDeque::new(); class_of.len()];
    for (i, w) in powers.iter().enumerate() {
        if let Ok(c) = class_of.binary_search(w) {
            queues[c].push_back(i as u32);
        }
    }
    let mut picks = vec![0u64; powers.len()];
    let mut out = Vec::with_capacity(p as usize);
    for t in 1..=p {
        // Priority of member i after t additions: t*w_i - P*picks_i.
        let mut best: Option<(i128, u32, usize)> = None;
        for (c, q) in queues.iter().enumerate() {
            let Some(&i) = q.front() else { continue };
            let prio = i128::from(t) * i128::from(class_of[c])
                - i128::from(p) * i128::from(picks[i as usize]);
            let better = match best {
                None => true,
                Some((bp, bi, _)) => prio > bp || (prio == bp && i < bi),
            };
            if better {
                best = Some((prio, i, c));
            }
        }
        let Some((_, i, c)) = best else { break };
        picks[i as usize] += 1;
        queues[c].rotate_left(1);
        out.push(i);
    }
    out
}

/// The textbook O(n·P) smooth weighted round-robin, kept as the reference `build_schedule` is
/// tested against.
pub fn build_schedule_naive(powers: &[u64]) -> Vec<u32> {
    let p: i128 = powers.iter().map(|&w| i128::from(w)).sum();
    let mut prio = vec![0i128; powers.len()];
    let mut out = Vec::new();
    for _ in 0..p {
        for (x, w) in prio.iter_mut().zip(powers) {
            *x += i128::from(*w);
        }
        let mut best = 0;
        for i in 1..prio.len() {
            if prio[i] > prio[best] {
                best = i;
            }
        }
        prio[best] -= p;
        out.push(best as u32);
    }
    out
}

/// Checks of a `Reconfigure` that need no outside view: members sorted by address without
/// duplicates, positive powers, addresses derived from keys (a valid set), and
/// `validator_set_hash` equal to the hash of `members`.
pub fn check_reconfigure_shape(rc: &Reconfigure) -> Result<(), &'static str> {
    if rc.members.windows(2).any(|w| w[0].address >= w[1].address) {
        return Err("reconfigure members are not sorted by address");
    }
    if check_members(&rc.members).is_err() {
        return Err("reconfigure members are not a valid set");
    }
    if validator_set_hash(&rc.members) != rc.validator_set_hash {
        return Err("reconfigure validator_set_hash does not match its members");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{FastSigner, Signer};

    fn set(powers: &[u64]) -> ValidatorSet {
        ValidatorSet::new(
            powers
                .iter()
                .enumerate()
                .map(|(i, &w)| (FastSigner::from_seed(i as u64).public_key(), w))
                .collect(),
        )
        .expect("valid set")
    }

    #[test]
    fn thresholds() {
        for (powers, q, h) in [
            (vec![1, 1, 1, 1], 3, 2),
            (vec![1, 1, 1], 3, 1),
            (vec![1], 1, 1),
            (vec![1, 1, 1, 4], 5, 3),
            (vec![3, 3, 3], 7, 3),
            (vec![100, 1, 1, 1], 69, 35),
        ] {
            let s = set(&powers);
            let p: u64 = powers.iter().sum();
            assert_eq!(s.total_power(), p);
            assert_eq!(s.quorum_power(), q, "{powers:?}");
            assert_eq!(s.honest_power(), h, "{powers:?}");
            // Two quorums always intersect in more than the Byzantine bound P - Q.
            assert!(2 * q - p > p - q);
        }
    }

    #[test]
    fn quorum_edges_with_uneven_powers() {
        let s = set(&[1, 1, 1, 4]); // P = 7, Q = 5
        let big = s
            .members()
            .iter()
            .position(|v| v.power == 4)
            .expect("present");
        let mut small = SignerBitmap::new(4);
        for i in (0..4).filter(|&i| i != big) {
            small.set(i);
        }
        // Three of four members, but only power 3 < 5: not a quorum.
        assert_eq!(s.power_of(&small), 3);
        #[cfg(not(feature = "mutant-quorum-by-count"))]
        assert!(!s.is_quorum(&small));
        assert!(s.has_honest(&small));
        let mut with_big = SignerBitmap::new(4);
        with_big.set(big);
        with_big.set((big + 1) % 4);
        assert_eq!(s.power_of(&with_big), 5);
        assert!(s.is_quorum(&with_big));
        let mut only_big = SignerBitmap::new(4);
        only_big.set(big);
        assert!(!s.is_quorum(&only_big));
    }

    #[test]
    fn refuses_bad_sets() {
        assert_eq!(ValidatorSet::new(vec![]), Err(SetError::Empty));
        let k = FastSigner::from_seed(1).public_key();
        assert!(matches!(
            ValidatorSet::new(vec![(k, 0)]),
            Err(SetError::ZeroPower(_))
        ));
        assert!(matches!(
            ValidatorSet::new(vec![(k, 1), (k, 2)]),
            Err(SetError::Duplicate(_))
        ));
        assert!(matches!(
            ValidatorSet::new(vec![(k, u64::MAX)]),
            Err(SetError::TooMuchPower(_))
        ));
    }

    #[test]
    fn schedule_matches_naive_reference() {
        let cases: Vec<Vec<u64>> = vec![
            vec![1],
            vec![1, 1, 1, 1],
            vec![1, 2, 3],
            vec![3, 2, 1],
            vec![5, 1, 1, 7, 2, 2],
            vec![10, 10, 1],
            vec![1, 1, 1, 4],
        ];
        for powers in cases {
            assert_eq!(
                build_schedule(&powers),
                build_schedule_naive(&powers),
                "{powers:?}"
            );
        }
        // Pseudo-random cases.
        let mut x: u64 = 12345;
        for _ in 0..200 {
            let n = (x % 9 + 1) as usize;
            let mut powers = Vec::new();
            for _ in 0..n {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                powers.push((x >> 33) % 6 + 1);
            }
            assert_eq!(
                build_schedule(&powers),
                build_schedule_naive(&powers),
                "{powers:?}"
            );
        }
    }

    #[test]
    fn schedule_is_proportional_in_every_window_of_p() {
        let s = set(&[1, 2, 3, 5, 1]);
        let p = s.total_power();
        for start in 0..3 * p {
            let mut count: HashMap<Address, u64> = HashMap::new();
            for r in start..start + p {
                *count.entry(s.leader(r)).or_default() += 1;
            }
            for v in s.members() {
                assert_eq!(count.get(&v.address).copied().unwrap_or(0), v.power);
            }
        }
    }

    #[test]
    fn schedule_ties_go_to_lower_address() {
        let s = set(&[1, 1, 1]);
        let addrs: Vec<Address> = s.members().iter().map(|v| v.address).collect();
        assert!(addrs.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(
            (0..3).map(|r| s.leader(r)).collect::<Vec<_>>(),
            addrs,
            "equal powers rotate in address order"
        );
    }

    #[test]
    fn schedule_for_ten_thousand_power_is_fast() {
        let powers: Vec<u64> = (0..10_000).map(|_| 1).collect();
        let t = std::time::Instant::now();
        let s = build_schedule(&powers);
        assert_eq!(s.len(), 10_000);
        let mixed: Vec<u64> = (0..2_000).map(|i| i % 9 + 1).collect();
        let s2 = build_schedule(&mixed);
        assert_eq!(s2.len() as u64, mixed.iter().sum::<u64>());
        assert!(t.elapsed().as_secs() < 2, "took {:?}", t.elapsed());
    }
}
