//! The hostile peer's messages: consensus gossip with maximal and far-future rounds and junk
//! signatures, unsigned certificates, and forged epoch-change records. Each is shaped to pass
//! every cheap check a node makes before the one it must fail (a signature, a QC), so a node
//! that computes before it verifies pays for it, and one that does arithmetic on unchecked
//! rounds overflows.

use consensus::crypto::{K256Signer, Signer};
use consensus::domain::validator_set_hash;
use consensus::epoch::EpochChangeRecord;
use consensus::types::{
    Address, BatchDigest, Block, BlockId, MemberInfo, Proposal, QuorumCert, Reconfigure, Signature,
    SignerBitmap, Timeout, TimeoutCert, Vote,
};
use consensus::validators::{MAX_TOTAL_POWER, ValidatorSet};
use rand::RngCore;

/// What the hostile peer knows of the cluster (all of it public: `/status`, `/validators`).
#[derive(Clone, Debug)]
pub struct ClusterView {
    /// The current epoch.
    pub epoch: u64,
    /// The highest current round a node reported.
    pub round: u64,
    /// The current set (its leader schedule names the proposer a proposal must have).
    pub set: ValidatorSet,
}

/// The rounds the hostile peer's consensus messages carry: the largest two (any `round + 1`
/// on them overflows), one far ahead (beyond any round window), and the next round (inside
/// every window, so only its signature can refuse it).
pub fn hostile_rounds(current: u64) -> [u64; 4] {
    [
        u64::MAX,
        u64::MAX - 1,
        current.saturating_add(1_000_000),
        current.saturating_add(1),
    ]
}

/// 65 random bytes: a signature no key made.
pub fn junk_signature() -> Signature {
    let mut s = [0u8; 65];
    rand::thread_rng().fill_bytes(&mut s);
    Signature(s)
}

/// 32 random bytes.
pub fn random_id() -> [u8; 32] {
    let mut b = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut b);
    b
}

/// A QC "signed" by all `n` members with junk signatures.
pub fn junk_qc(epoch: u64, round: u64, block_id: BlockId, n: usize) -> QuorumCert {
    let mut signers = SignerBitmap::new(n);
    for i in 0..n {
        signers.set(i);
    }
    QuorumCert {
        epoch,
        round,
        block_id,
        signers,
        signatures: (0..n).map(|_| junk_signature()).collect(),
    }
}

/// A TC of `round` without a single signer (free to make, and refused only by its quorum).
pub fn unsigned_tc(epoch: u64, round: u64) -> TimeoutCert {
    TimeoutCert {
        epoch,
        round,
        high_qc: QuorumCert::genesis(epoch, BlockId(random_id())),
        signers: SignerBitmap::default(),
        high_qc_rounds: Vec::new(),
        signatures: Vec::new(),
    }
}

/// A proposal of `round` naming that round's leader as proposer, extending a junk QC of the
/// round before, signed with junk; with `tc`, it also carries an unsigned TC of that round.
pub fn junk_proposal(view: &ClusterView, round: u64, tc: Option<u64>) -> Proposal {
    let epoch = view.epoch;
    let n = view.set.len();
    let qc = junk_qc(epoch, round.saturating_sub(1), BlockId(random_id()), n);
    let block = Block::new(
        epoch,
        round,
        qc,
        view.set.leader(round),
        vec![BatchDigest(random_id())],
        None,
    );
    Proposal {
        block,
        tc: tc.map(|r| unsigned_tc(epoch, r)),
        signature: junk_signature(),
    }
}

/// A timeout of `round` naming member `signer`, carrying a junk QC and an unsigned TC of the
/// largest round, signed with junk.
pub fn junk_timeout(view: &ClusterView, round: u64, signer: Address) -> Timeout {
    let epoch = view.epoch;
    Timeout {
        epoch,
        round,
        high_qc: junk_qc(
            epoch,
            round.saturating_sub(1),
            BlockId(random_id()),
            view.set.len(),
        ),
        high_tc: Some(unsigned_tc(epoch, u64::MAX)),
        signer,
        signature: junk_signature(),
    }
}

/// A vote of `round` naming member `signer`, signed with junk.
pub fn junk_vote(epoch: u64, round: u64, signer: Address) -> Vote {
    Vote {
        epoch,
        round,
        block_id: BlockId(random_id()),
        signer,
        signature: junk_signature(),
    }
}

/// The most members a valid set can have when every power is distinct: powers 1..=n with
/// n(n+1)/2 at most [`MAX_TOTAL_POWER`] (1,447 for 2^20), the costliest leader schedule a set
/// can ask for.
pub fn max_distinct_power_members() -> usize {
    let mut n: u64 = 0;
    while (n + 1) * (n + 2) / 2 <= MAX_TOTAL_POWER {
        n += 1;
    }
    usize::try_from(n).unwrap_or(usize::MAX)
}

/// `n` members with real keys (derived addresses), sorted by address, of powers 1..=n in that
/// order: a well-formed set, as a `Reconfigure` must carry.
pub fn distinct_power_members(n: usize, seed: u64) -> Vec<MemberInfo> {
    let mut keys: Vec<(Address, consensus::types::PublicKey)> = (0..n as u64)
        .map(|i| {
            let s = K256Signer::from_seed(seed.wrapping_add(i));
            (s.address(), s.public_key())
        })
        .collect();
    keys.sort_by_key(|(a, _)| *a);
    keys.dedup_by_key(|(a, _)| *a);
    keys.into_iter()
        .zip(1u64..)
        .map(|((address, public_key), power)| MemberInfo {
            address,
            public_key,
            power,
        })
        .collect()
}

fn reconfigure(members: Vec<MemberInfo>) -> Reconfigure {
    Reconfigure {
        chain_block_number: 1,
        chain_block_hash: random_id(),
        validator_set_hash: validator_set_hash(&members),
        members,
    }
}

/// A record of `view.epoch` ending at a B0 of round `b0_round` that carries `members`, with
/// B1 of the next round (when it has one), every QC junk-signed by the whole current set. Its
/// shape is right (linked path, consecutive last rounds, QC naming B1), so only the QC's
/// signatures are wrong.
fn record(
    view: &ClusterView,
    b0_round: u64,
    b1_round: u64,
    members: Vec<MemberInfo>,
) -> EpochChangeRecord {
    let (epoch, n) = (view.epoch, view.set.len());
    let proposer = view.set.leader(b0_round);
    let b0 = Block::new(
        epoch,
        b0_round,
        junk_qc(epoch, b0_round.saturating_sub(1), BlockId(random_id()), n),
        proposer,
        Vec::new(),
        Some(reconfigure(members)),
    );
    let b1 = Block::new(
        epoch,
        b1_round,
        junk_qc(epoch, b0_round.min(b1_round.saturating_sub(1)), b0.id(), n),
        view.set.leader(b1_round),
        Vec::new(),
        None,
    );
    let qc = junk_qc(epoch, b1.round(), b1.id(), n);
    EpochChangeRecord {
        epoch,
        path: vec![b0, b1],
        qc,
    }
}

/// A record of the current epoch whose `Reconfigure` names `members` (see
/// [`distinct_power_members`]): a node that builds the new set's leader schedule before it
/// checks the QC spends seconds on it.
pub fn huge_set_record(view: &ClusterView, members: Vec<MemberInfo>) -> EpochChangeRecord {
    let r = view.round.saturating_add(1);
    record(view, r, r.saturating_add(1), members)
}

/// A record of the current epoch whose B0 has round `u64::MAX` (so `B0.round + 1` overflows)
/// and B1 a small round with a QC below it, carrying a valid one-member set.
pub fn overflow_record(view: &ClusterView) -> EpochChangeRecord {
    record(view, u64::MAX, 5, distinct_power_members(1, 7))
}

/// A junk record of a later epoch (nodes may keep those until their epoch comes).
pub fn future_record(view: &ClusterView, ahead: u64) -> EpochChangeRecord {
    let mut later = view.clone();
    later.epoch = view.epoch.saturating_add(ahead);
    let r = view.round.saturating_add(1);
    record(
        &later,
        r,
        r.saturating_add(1),
        distinct_power_members(1, 11),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use consensus::crypto::Scheme;
    use consensus::domain::Domain;
    use consensus::epoch::RecordError;
    use consensus::verify::{CertError, EpochContext};

    fn view(round: u64) -> (ClusterView, EpochContext) {
        let members: Vec<(consensus::types::PublicKey, u64)> = (1..=4)
            .map(|i| (K256Signer::from_seed(i).public_key(), 1))
            .collect();
        let set = ValidatorSet::new(members).unwrap();
        let domain = Domain::new(31337, Address([7; 20]), [9; 32]);
        let ctx = EpochContext::new(0, BlockId([1; 32]), set.clone(), domain, Scheme::Secp256k1);
        (
            ClusterView {
                epoch: 0,
                round,
                set,
            },
            ctx,
        )
    }

    #[test]
    fn the_largest_distinct_power_set_fits_the_power_bound() {
        let n = max_distinct_power_members() as u64;
        assert_eq!(n, 1447);
        assert!(n * (n + 1) / 2 <= MAX_TOTAL_POWER);
        assert!((n + 1) * (n + 2) / 2 > MAX_TOTAL_POWER);
        let m = distinct_power_members(50, 1);
        assert_eq!(m.len(), 50);
        assert!(m.windows(2).all(|w| w[0].address < w[1].address));
        assert!(ValidatorSet::from_members(m).is_ok());
    }

    #[test]
    fn forged_records_fail_only_at_their_qc() {
        let (v, ctx) = view(40);
        let huge = huge_set_record(&v, distinct_power_members(64, 3));
        match huge.verify(&ctx) {
            Err(RecordError::Qc(CertError::BadSignature(_))) => {}
            other => panic!("huge record must fail at its QC signatures: {other:?}"),
        }
        let future = future_record(&v, 3);
        assert_eq!(future.epoch, 3);
        let over = overflow_record(&v);
        assert_eq!(over.path[0].round(), u64::MAX);
        assert_eq!(over.path[1].parent_id(), over.path[0].id());
        assert!(over.path[1].round() > over.path[1].qc().round);
    }

    #[test]
    fn junk_messages_name_the_leader_and_members_and_fail_their_signatures() {
        let (v, ctx) = view(10);
        for r in hostile_rounds(10) {
            let p = junk_proposal(&v, r, None);
            assert_eq!(p.block.proposer(), v.set.leader(r));
            assert!(ctx.verify_proposal(&p).is_err());
        }
        let signer = v.set.members()[0].address;
        let t = junk_timeout(&v, 11, signer);
        assert!(ctx.verify_timeout(&t).is_err());
        let tc = unsigned_tc(0, u64::MAX);
        assert!(tc.signers.count() == 0 && tc.signatures.is_empty());
        assert!(ctx.verify_vote(&junk_vote(0, 11, signer)).is_err());
    }
}
