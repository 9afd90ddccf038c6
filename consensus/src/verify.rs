//! Checks of certificates and signed messages against one epoch (DESIGN sections 5 and 6):
//! "certificates are checked against the current epoch". An [`EpochContext`] bundles what a check
//! needs (epoch number, genesis block, validator set, signing domain, scheme) and remembers the
//! certificates it already verified, so a QC seen in a proposal, then in a timeout, then in a
//! block costs its signature checks once. It also remembers single signatures of votes and
//! timeouts, so a certificate built from messages this node already checked costs no new
//! signature checks (at n = 16 a QC is 11 or more of them, each ~160 µs with secp256k1).

use crate::codec::Encode;
use crate::crypto::{PreparedKey, Scheme, Verifier};
use crate::domain::{Domain, keccak256};
use crate::types::{BlockId, Proposal, QuorumCert, Signature, Timeout, TimeoutCert, Vote};
use crate::validators::ValidatorSet;
use std::cell::RefCell;
use std::collections::{HashSet, VecDeque};
use thiserror::Error;

/// Why a certificate is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CertError {
    /// The certificate is of another epoch.
    #[error("certificate of epoch {got}, expected {expected}")]
    WrongEpoch {
        /// The current epoch.
        expected: u64,
        /// The certificate's.
        got: u64,
    },
    /// A round-0 QC that is not the genesis QC of this epoch.
    #[error("round-0 QC is not this epoch's genesis QC")]
    ForgedGenesis,
    /// The bitmap does not fit the set.
    #[error("signer bitmap does not fit the validator set")]
    BadBitmap,
    /// Signature (or round) count differs from the signer count.
    #[error("signature count differs from signer count")]
    CountMismatch,
    /// Signers hold less than Q.
    #[error("signers hold less than the quorum")]
    NoQuorum,
    /// A signature does not verify.
    #[error("signature of validator {0} does not verify")]
    BadSignature(usize),
    /// A TC's high QC is not the largest of its signers' high-QC rounds.
    #[error("TC's high QC round {qc} differs from its largest signer high-QC round {max}")]
    HighQcMismatch {
        /// The carried QC's round.
        qc: u64,
        /// The largest reported round.
        max: u64,
    },
    /// A TC (or timeout) whose high QC is not below its round.
    #[error("high QC round {qc} is not below round {round}")]
    HighQcNotBelowRound {
        /// High QC round.
        qc: u64,
        /// The certificate's round.
        round: u64,
    },
    /// A TC of round 0.
    #[error("timeout certificate of round 0")]
    RoundZero,
    /// The TC's high QC is invalid.
    #[error("TC's high QC: {0}")]
    HighQc(Box<CertError>),
}

/// Why a signed message is invalid.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MessageError {
    /// Another epoch.
    #[error("message of epoch {got}, expected {expected}")]
    WrongEpoch {
        /// Current epoch.
        expected: u64,
        /// The message's.
        got: u64,
    },
    /// The signer is not a member of the epoch's set.
    #[error("signer is not a member")]
    NotMember,
    /// The signature does not verify against the member's key.
    #[error("bad signature")]
    BadSignature,
    /// A proposal from someone who is not the round's leader.
    #[error("proposer is not the leader of the round")]
    NotLeader,
    /// Structurally wrong (see the text).
    #[error("malformed: {0}")]
    Malformed(&'static str),
    /// A carried certificate is invalid.
    #[error("certificate: {0}")]
    Cert(#[from] CertError),
}

/// Certificates and single signatures remembered as verified, at most (the oldest go first). A
/// round brings at most one signature per member and a few certificates: this holds several
/// rounds of a large committee.
const CACHE_SIZE: usize = 2_048;

/// Keys of certificates and signatures already verified, with their insertion order for
/// eviction.
type VerifiedSet = (HashSet<[u8; 32]>, VecDeque<[u8; 32]>);

/// Everything needed to check messages of one epoch.
#[derive(Debug)]
pub struct EpochContext {
    epoch: u64,
    genesis_block: BlockId,
    set: ValidatorSet,
    domain: Domain,
    scheme: Scheme,
    chain_block: u64,
    verified: RefCell<VerifiedSet>,
    /// Signature checks run (tests assert what the cache saves).
    #[cfg(test)]
    checks: std::cell::Cell<u64>,
}

impl EpochContext {
    /// The context of `epoch`, whose genesis block is `genesis_block` and set is `set`.
    pub fn new(
        epoch: u64,
        genesis_block: BlockId,
        set: ValidatorSet,
        domain: Domain,
        scheme: Scheme,
    ) -> Self {
        Self {
            epoch,
            genesis_block,
            set,
            domain,
            scheme,
            chain_block: 0,
            verified: RefCell::new((HashSet::new(), VecDeque::new())),
            #[cfg(test)]
            checks: std::cell::Cell::new(0),
        }
    }
    /// The same context with the number of the chain block its set was read at (epoch 0: the
    /// genesis chain block; later epochs: the `Reconfigure` that started them). A `Reconfigure`
    /// must name a later chain block.
    pub fn with_chain_block(mut self, number: u64) -> Self {
        self.chain_block = number;
        self
    }
    /// The chain block number the epoch's set was read at.
    pub fn chain_block(&self) -> u64 {
        self.chain_block
    }
    /// Epoch number.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }
    /// The epoch's genesis block id.
    pub fn genesis_block(&self) -> BlockId {
        self.genesis_block
    }
    /// The epoch's set.
    pub fn set(&self) -> &ValidatorSet {
        &self.set
    }
    /// The signing domain.
    pub fn domain(&self) -> &Domain {
        &self.domain
    }
    /// The signature scheme.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }
    /// The genesis QC of this epoch.
    pub fn genesis_qc(&self) -> QuorumCert {
        QuorumCert::genesis(self.epoch, self.genesis_block)
    }

    fn cached(&self, key: &[u8; 32]) -> bool {
        self.verified.borrow().0.contains(key)
    }
    fn remember(&self, key: [u8; 32]) {
        let mut c = self.verified.borrow_mut();
        if c.0.insert(key) {
            c.1.push_back(key);
            if c.1.len() > CACHE_SIZE
                && let Some(old) = c.1.pop_front()
            {
                c.0.remove(&old);
            }
        }
    }

    /// Whether member `i`, whose key is `key`, signed `digest` with `sig`: a signature verified
    /// before under this context is not checked again. Only valid signatures are remembered.
    fn signed_by(
        &self,
        i: usize,
        key: &PreparedKey,
        digest: &[u8; 32],
        sig: &Signature,
        cache: bool,
    ) -> bool {
        let check = || {
            #[cfg(test)]
            self.checks.set(self.checks.get() + 1);
            self.scheme.verify(key, digest, sig)
        };
        if !cache {
            return check();
        }
        let mut key_input = [0u8; 1 + 8 + 32 + 65];
        key_input[0] = b'S';
        key_input[1..9].copy_from_slice(&(i as u64).to_be_bytes());
        key_input[9..41].copy_from_slice(digest);
        key_input[41..].copy_from_slice(&sig.0);
        let key = keccak256(&key_input);
        if self.cached(&key) {
            return true;
        }
        let ok = check();
        if ok {
            self.remember(key);
        }
        ok
    }

    fn check_signers(
        &self,
        signers: &crate::types::SignerBitmap,
        n_sigs: usize,
    ) -> Result<(), CertError> {
        if !signers.fits(self.set.len()) {
            return Err(CertError::BadBitmap);
        }
        if n_sigs != signers.count() {
            return Err(CertError::CountMismatch);
        }
        if !self.set.is_quorum(signers) {
            return Err(CertError::NoQuorum);
        }
        Ok(())
    }

    /// Checks a QC: this epoch, and either this epoch's genesis QC (round 0, no signatures) or
    /// signatures of power at least Q over the vote digest.
    pub fn verify_qc(&self, qc: &QuorumCert) -> Result<(), CertError> {
        if qc.epoch != self.epoch || qc.round == 0 {
            // Decided without a signature check: nothing worth caching.
            return self.verify_qc_uncached(qc);
        }
        let mut key_input = vec![b'Q'];
        key_input.extend_from_slice(&qc.encode());
        let key = keccak256(&key_input);
        if self.cached(&key) {
            return Ok(());
        }
        self.check_qc(qc, true)?;
        self.remember(key);
        Ok(())
    }

    /// [`Self::verify_qc`] without the cache: every signature is checked (for benchmarks and
    /// one-off checks).
    pub fn verify_qc_uncached(&self, qc: &QuorumCert) -> Result<(), CertError> {
        self.check_qc(qc, false)
    }

    /// Checks a QC; with `cache`, signatures verified before (its votes, say) are not checked
    /// again and new valid ones are remembered.
    fn check_qc(&self, qc: &QuorumCert, cache: bool) -> Result<(), CertError> {
        #[cfg(feature = "mutant-accept-old-epoch-qc")]
        if qc.epoch < self.epoch {
            // Mutant: a certificate of an earlier epoch is taken on trust.
            return Ok(());
        }
        if qc.epoch != self.epoch {
            return Err(CertError::WrongEpoch {
                expected: self.epoch,
                got: qc.epoch,
            });
        }
        if qc.round == 0 {
            return if qc.block_id == self.genesis_block
                && qc.signers.count() == 0
                && qc.signatures.is_empty()
            {
                Ok(())
            } else {
                Err(CertError::ForgedGenesis)
            };
        }
        self.check_signers(&qc.signers, qc.signatures.len())?;
        let digest = self.domain.vote_digest(qc.epoch, qc.round, &qc.block_id);
        for (i, sig) in qc.signers.iter().zip(&qc.signatures) {
            let v = self.set.get(i).ok_or(CertError::BadBitmap)?;
            if !self.signed_by(i, &v.key, &digest, sig, cache) {
                return Err(CertError::BadSignature(i));
            }
        }
        Ok(())
    }

    /// Checks a TC: this epoch, round > 0, power at least Q, each signature over its signer's own
    /// high-QC round, the largest of those equal to `high_qc.round`, `high_qc` valid and below the
    /// TC's round.
    pub fn verify_tc(&self, tc: &TimeoutCert) -> Result<(), CertError> {
        if tc.epoch != self.epoch {
            return Err(CertError::WrongEpoch {
                expected: self.epoch,
                got: tc.epoch,
            });
        }
        if tc.round == 0 {
            return Err(CertError::RoundZero);
        }
        let mut key_input = vec![b'T'];
        key_input.extend_from_slice(&tc.encode());
        let key = keccak256(&key_input);
        if self.cached(&key) {
            return Ok(());
        }
        self.check_signers(&tc.signers, tc.signatures.len())?;
        if tc.high_qc_rounds.len() != tc.signatures.len() {
            return Err(CertError::CountMismatch);
        }
        if tc.high_qc.round >= tc.round {
            return Err(CertError::HighQcNotBelowRound {
                qc: tc.high_qc.round,
                round: tc.round,
            });
        }
        let max = tc.max_high_qc_round();
        if max != tc.high_qc.round {
            return Err(CertError::HighQcMismatch {
                qc: tc.high_qc.round,
                max,
            });
        }
        self.verify_qc(&tc.high_qc)
            .map_err(|e| CertError::HighQc(Box::new(e)))?;
        for ((i, sig), hqr) in tc
            .signers
            .iter()
            .zip(&tc.signatures)
            .zip(&tc.high_qc_rounds)
        {
            let v = self.set.get(i).ok_or(CertError::BadBitmap)?;
            let digest = self.domain.timeout_digest(tc.epoch, tc.round, *hqr);
            if !self.signed_by(i, &v.key, &digest, sig, true) {
                return Err(CertError::BadSignature(i));
            }
        }
        self.remember(key);
        Ok(())
    }

    fn member_index(
        &self,
        epoch: u64,
        signer: &crate::types::Address,
    ) -> Result<usize, MessageError> {
        if epoch != self.epoch {
            return Err(MessageError::WrongEpoch {
                expected: self.epoch,
                got: epoch,
            });
        }
        self.set.index_of(signer).ok_or(MessageError::NotMember)
    }

    /// Checks a vote's epoch, signer and signature; returns the signer's index.
    pub fn verify_vote(&self, v: &Vote) -> Result<usize, MessageError> {
        let i = self.member_index(v.epoch, &v.signer)?;
        if v.round == 0 {
            return Err(MessageError::Malformed("vote for round 0"));
        }
        let digest = self.domain.vote_digest(v.epoch, v.round, &v.block_id);
        match self.set.get(i) {
            Some(m) if self.signed_by(i, &m.key, &digest, &v.signature, true) => Ok(i),
            _ => Err(MessageError::BadSignature),
        }
    }

    /// Checks a timeout: epoch, signer, signature over its high-QC round, and its certificates:
    /// `high_qc` valid and below the round, `high_tc` (if any) valid and below the round, and one
    /// of them of the previous round (the timeout rule every honest node follows).
    pub fn verify_timeout(&self, t: &Timeout) -> Result<usize, MessageError> {
        let i = self.member_index(t.epoch, &t.signer)?;
        if t.round == 0 || t.high_qc.round >= t.round {
            return Err(MessageError::Malformed(
                "timeout's high QC is not below its round",
            ));
        }
        let prev = t.round.saturating_sub(1);
        let tc_prev = match &t.high_tc {
            Some(tc) if tc.round >= t.round => {
                return Err(MessageError::Malformed(
                    "timeout's high TC is not below its round",
                ));
            }
            Some(tc) => tc.round == prev,
            None => false,
        };
        if t.high_qc.round != prev && !tc_prev {
            return Err(MessageError::Malformed(
                "timeout carries no certificate of the previous round",
            ));
        }
        let digest = self
            .domain
            .timeout_digest(t.epoch, t.round, t.high_qc.round);
        match self.set.get(i) {
            Some(m) if self.signed_by(i, &m.key, &digest, &t.signature, true) => {}
            _ => return Err(MessageError::BadSignature),
        }
        self.verify_qc(&t.high_qc)?;
        if let Some(tc) = &t.high_tc {
            self.verify_tc(tc)?;
        }
        Ok(i)
    }

    /// Checks a proposal's epochs, leader, signature, structure and certificates (block epoch ==
    /// QC epoch == TC epoch == this epoch; parent is the QC's block; round above the QC's; the TC
    /// of the previous round present exactly when the QC is not of the previous round).
    pub fn verify_proposal(&self, p: &Proposal) -> Result<usize, MessageError> {
        let b = &p.block;
        let i = self.member_index(b.epoch(), &b.proposer())?;
        if b.round() == 0 {
            return Err(MessageError::Malformed("proposal for round 0"));
        }
        if self.set.leader(b.round()) != b.proposer() {
            return Err(MessageError::NotLeader);
        }
        let digest = self.domain.proposal_digest(b.epoch(), b.round(), &b.id());
        match self.set.get(i) {
            Some(m) if self.scheme.verify(&m.key, &digest, &p.signature) => {}
            _ => return Err(MessageError::BadSignature),
        }
        if b.parent_id() != b.qc().block_id {
            return Err(MessageError::Malformed("parent is not the QC's block"));
        }
        if b.round() <= b.qc().round {
            return Err(MessageError::Malformed("round is not above the QC's round"));
        }
        if let Some(rc) = &b.header().reconfigure {
            crate::validators::check_reconfigure_shape(rc).map_err(MessageError::Malformed)?;
        }
        self.verify_qc(b.qc())?;
        let needs_tc = b.qc().round.checked_add(1) != Some(b.round());
        match (&p.tc, needs_tc) {
            (None, true) => return Err(MessageError::Malformed("missing TC")),
            (Some(_), false) => return Err(MessageError::Malformed("unexpected TC")),
            (Some(tc), true) => {
                if tc.round.checked_add(1) != Some(b.round()) {
                    return Err(MessageError::Malformed("TC is not of the previous round"));
                }
                self.verify_tc(tc)?;
            }
            (None, false) => {}
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Scheme;
    use crate::testkit::Cluster;
    use crate::types::{Signature, SignerBitmap};

    fn cluster() -> Cluster {
        Cluster::new(Scheme::Secp256k1, &[1, 1, 1, 4], 11) // P = 7, Q = 5
    }

    fn big(c: &Cluster) -> usize {
        (0..4)
            .find(|&i| c.ctx.set().get(i).is_some_and(|v| v.power == 4))
            .expect("present")
    }

    #[test]
    fn qc_validity_by_power_bitmap_and_signatures() {
        let c = cluster();
        let b = BlockId([3; 32]);
        let small: Vec<usize> = (0..4).filter(|&i| i != big(&c)).collect();
        assert_eq!(
            c.ctx.verify_qc(&c.qc(5, b, &small)),
            Err(CertError::NoQuorum)
        );
        let ok = c.qc(5, b, &[big(&c), small[0]]);
        assert_eq!(c.ctx.verify_qc_uncached(&ok), Ok(()));
        assert_eq!(c.ctx.verify_qc(&ok), Ok(()));
        // Signatures swapped between signers.
        let mut swapped = ok.clone();
        swapped.signatures.swap(0, 1);
        assert!(matches!(
            c.ctx.verify_qc(&swapped),
            Err(CertError::BadSignature(_))
        ));
        // A valid QC for another block id or round does not verify.
        let mut moved = ok.clone();
        moved.round = 6;
        assert!(matches!(
            c.ctx.verify_qc(&moved),
            Err(CertError::BadSignature(_))
        ));
        // Bitmap sized for another set.
        let mut wide = ok.clone();
        let mut bits = SignerBitmap::new(16);
        for i in ok.signers.iter() {
            bits.set(i);
        }
        wide.signers = bits;
        assert_eq!(c.ctx.verify_qc(&wide), Err(CertError::BadBitmap));
        // Missing signature.
        let mut short = ok;
        short.signatures.pop();
        assert_eq!(c.ctx.verify_qc(&short), Err(CertError::CountMismatch));
        // Genesis QC: valid only for this epoch's genesis block, without signers.
        assert_eq!(c.ctx.verify_qc(&c.ctx.genesis_qc()), Ok(()));
        let mut forged = c.ctx.genesis_qc();
        forged.block_id = BlockId([1; 32]);
        assert_eq!(c.ctx.verify_qc(&forged), Err(CertError::ForgedGenesis));
        let mut other_epoch = c.ctx.genesis_qc();
        other_epoch.epoch = 1;
        assert!(matches!(
            c.ctx.verify_qc(&other_epoch),
            Err(CertError::WrongEpoch { .. })
        ));
    }

    #[test]
    fn a_qc_of_votes_already_checked_costs_no_new_signature_check() {
        let c = cluster();
        let b = BlockId([7; 32]);
        let small = (0..4).find(|&i| i != big(&c)).expect("a small member");
        let other = (0..4)
            .find(|&i| i != big(&c) && i != small)
            .expect("another");
        let who = [big(&c), small];
        for &i in &who {
            assert_eq!(c.ctx.verify_vote(&c.vote(i, 5, b)), Ok(i));
        }
        let qc = c.qc(5, b, &who);
        let before = c.ctx.checks.get();
        assert_eq!(c.ctx.verify_qc(&qc), Ok(()));
        assert_eq!(
            c.ctx.checks.get(),
            before,
            "every signature was a checked vote's"
        );
        // A remembered signature proves nothing for another digest or signer.
        let mut moved = qc.clone();
        moved.round = 6;
        assert!(matches!(
            c.ctx.verify_qc(&moved),
            Err(CertError::BadSignature(_))
        ));
        let mut swapped = qc.clone();
        swapped.signatures.swap(0, 1);
        assert!(matches!(
            c.ctx.verify_qc(&swapped),
            Err(CertError::BadSignature(_))
        ));
        // A QC with one signer whose vote was never seen: that signature alone is new.
        let wider = c.qc(5, b, &[big(&c), small, other]);
        let before = c.ctx.checks.get();
        assert_eq!(c.ctx.verify_qc(&wider), Ok(()));
        assert_eq!(c.ctx.checks.get(), before + 1, "one new signature");
        // The uncached check still checks every signature.
        let before = c.ctx.checks.get();
        assert_eq!(c.ctx.verify_qc_uncached(&wider), Ok(()));
        assert_eq!(c.ctx.checks.get(), before + 3);
    }

    #[test]
    fn tc_validity() {
        let c = cluster();
        let g = c.ctx.genesis_qc();
        let b1 = BlockId([1; 32]);
        let q1 = c.full_qc(1, b1);
        let all = |r: &[u64]| -> Vec<(usize, u64)> { (0..4).zip(r.iter().copied()).collect() };
        // Valid: largest reported high-QC round (1) equals the carried QC's round, below 3.
        let tc = c.tc(3, q1.clone(), &all(&[1, 0, 1, 0]));
        assert_eq!(c.ctx.verify_tc(&tc), Ok(()));
        // Carried QC below the largest reported round.
        let tc_low = c.tc(3, g.clone(), &all(&[1, 0, 0, 0]));
        assert!(matches!(
            c.ctx.verify_tc(&tc_low),
            Err(CertError::HighQcMismatch { qc: 0, max: 1 })
        ));
        // Carried QC not below the TC's round.
        let tc_same = c.tc(1, q1.clone(), &all(&[1, 1, 1, 1]));
        assert!(matches!(
            c.ctx.verify_tc(&tc_same),
            Err(CertError::HighQcNotBelowRound { .. })
        ));
        // A reported round changed after signing: the signature is over the original round.
        let mut lied = tc.clone();
        lied.high_qc_rounds[1] = 1;
        assert!(matches!(
            c.ctx.verify_tc(&lied),
            Err(CertError::BadSignature(_))
        ));
        // Without the big member: no quorum.
        let small: Vec<(usize, u64)> = (0..4).filter(|&i| i != big(&c)).map(|i| (i, 0)).collect();
        assert_eq!(
            c.ctx.verify_tc(&c.tc(3, g, &small)),
            Err(CertError::NoQuorum)
        );
        // An invalid carried QC.
        let mut bad_qc = q1;
        bad_qc.signatures[0] = Signature([0; 65]);
        let tc_bad = c.tc(3, bad_qc, &all(&[1, 1, 1, 1]));
        assert!(matches!(
            c.ctx.verify_tc(&tc_bad),
            Err(CertError::HighQc(_))
        ));
    }
}
