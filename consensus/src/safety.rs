//! Safety rules (DESIGN section 5), a small component over the persisted [`SafetyState`], in the
//! manner of Aptos' safety rules: the only code that signs votes, timeouts and proposals. It
//! re-checks every certificate it relies on, so a bug elsewhere in the core cannot make it sign
//! something unsafe. The host must make the state durable (see [`SafetyRules::take_dirty`])
//! before anything it signed leaves the node; after a restart the same state makes it re-sign the
//! same message for a round, never a new one.

use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};
use crate::crypto::Signer;
use crate::types::{Address, Block, Proposal, QuorumCert, Timeout, TimeoutCert, Vote};
use crate::verify::{CertError, EpochContext, MessageError};
use thiserror::Error;

/// The persisted safety state (DESIGN section 5), per epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SafetyState {
    /// The epoch this state belongs to.
    pub epoch: u64,
    /// Highest round voted in or timed out in.
    pub last_voted_round: u64,
    /// Highest QC round among the blocks voted for (their parents' certificates).
    pub one_chain_round: u64,
    /// Highest round timed out in.
    pub highest_timeout_round: u64,
    /// The last vote signed (re-sent after a restart).
    pub last_vote: Option<Vote>,
    /// The last timeout signed (re-broadcast after a restart).
    pub last_timeout: Option<Timeout>,
    /// The last proposal signed, in full (re-broadcast after a restart).
    pub last_proposal: Option<Proposal>,
}

impl SafetyState {
    /// The state of a node that never signed anything in `epoch`.
    pub fn new(epoch: u64) -> Self {
        Self {
            epoch,
            ..Self::default()
        }
    }

    /// The round of the last proposal signed (0: none).
    pub fn last_proposal_round(&self) -> u64 {
        self.last_proposal.as_ref().map_or(0, |p| p.block.round())
    }

    /// Names the first counter in which `self` is behind `stored`, if any: writing such a state
    /// over `stored` would let the node sign again what it already signed (two votes, timeouts
    /// or proposals for one round). A later epoch supersedes every counter of an earlier one.
    pub fn behind(&self, stored: &SafetyState) -> Option<&'static str> {
        if self.epoch != stored.epoch {
            return (self.epoch < stored.epoch).then_some("epoch");
        }
        let counters = [
            (
                "last_voted_round",
                self.last_voted_round,
                stored.last_voted_round,
            ),
            (
                "one_chain_round",
                self.one_chain_round,
                stored.one_chain_round,
            ),
            (
                "highest_timeout_round",
                self.highest_timeout_round,
                stored.highest_timeout_round,
            ),
            (
                "last_proposal_round",
                self.last_proposal_round(),
                stored.last_proposal_round(),
            ),
        ];
        counters
            .into_iter()
            .find(|(_, mine, theirs)| mine < theirs)
            .map(|(name, _, _)| name)
    }
}

impl Encode for SafetyState {
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.epoch);
        w.u64(self.last_voted_round);
        w.u64(self.one_chain_round);
        w.u64(self.highest_timeout_round);
        self.last_vote.encode_to(w);
        self.last_timeout.encode_to(w);
        self.last_proposal.encode_to(w);
    }
}

impl Decode for SafetyState {
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            epoch: r.u64("safety epoch")?,
            last_voted_round: r.u64("last voted round")?,
            one_chain_round: r.u64("one-chain round")?,
            highest_timeout_round: r.u64("highest timeout round")?,
            last_vote: Option::<Vote>::decode_from(r)?,
            last_timeout: Option::<Timeout>::decode_from(r)?,
            last_proposal: Option::<Proposal>::decode_from(r)?,
        })
    }
}

/// Why the safety rules refused to sign.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SafetyError {
    /// The state is of another epoch than the context.
    #[error("safety state is of epoch {state}, context of epoch {ctx}")]
    EpochMismatch {
        /// State's epoch.
        state: u64,
        /// Context's epoch.
        ctx: u64,
    },
    /// The proposal is invalid (epoch, leader, signature, structure, certificates).
    #[error("invalid proposal: {0}")]
    InvalidProposal(#[from] MessageError),
    /// Already voted (or timed out) at this round or above.
    #[error("round {round} is not above the last voted round {last}")]
    RoundNotAboveLastVoted {
        /// The proposal's round.
        round: u64,
        /// `last_voted_round`.
        last: u64,
    },
    /// Already voted for another block at this round.
    #[error("already voted for another block in round {0}")]
    AlreadyVotedOther(u64),
    /// Neither a QC nor a TC of the previous round justifies the round (or the QC is below the
    /// TC's highest QC).
    #[error("no valid certificate of the previous round justifies round {0}")]
    NotJustified(u64),
    /// Timeout for a round below the last voted round.
    #[error("timeout round {round} is below the last voted round {last}")]
    TimeoutBelowLastVoted {
        /// Timeout round.
        round: u64,
        /// `last_voted_round`.
        last: u64,
    },
    /// Timeout with a high QC below `one_chain_round`.
    #[error("high QC round {qc} is below the one-chain round {one_chain}")]
    HighQcBelowOneChain {
        /// High QC round.
        qc: u64,
        /// `one_chain_round`.
        one_chain: u64,
    },
    /// A certificate in a timeout is invalid.
    #[error("invalid certificate: {0}")]
    InvalidCert(#[from] CertError),
    /// Already proposed another block at this round, or a round above.
    #[error("already proposed in round {0} or above")]
    AlreadyProposed(u64),
    /// Asked to propose as someone else.
    #[error("the block's proposer is not this signer")]
    NotOwnBlock,
}

/// The vote rule's TC condition: the block extends a QC at least as high as the highest QC the
/// TC's signers reported.
fn tc_allows(qc_round: u64, tc: &TimeoutCert) -> bool {
    #[cfg(feature = "mutant-tc-ignores-high-qc")]
    {
        // Mutant: any TC of the previous round justifies the block, whatever QC it extends.
        let _ = (qc_round, tc);
        return true;
    }
    #[allow(unreachable_code)]
    {
        qc_round >= tc.max_high_qc_round()
    }
}

/// The safety rules of one node: the persisted state and the key.
pub struct SafetyRules {
    state: SafetyState,
    signer: Box<dyn Signer>,
    dirty: bool,
}

impl std::fmt::Debug for SafetyRules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SafetyRules")
            .field("address", &self.signer.address())
            .field("state", &self.state)
            .finish()
    }
}

impl SafetyRules {
    /// Safety rules over a restored (or fresh) state.
    pub fn new(state: SafetyState, signer: Box<dyn Signer>) -> Self {
        Self {
            state,
            signer,
            dirty: false,
        }
    }
    /// The current state.
    pub fn state(&self) -> &SafetyState {
        &self.state
    }
    /// The signer's address.
    pub fn address(&self) -> Address {
        self.signer.address()
    }
    /// The state if it changed since the last call: the caller must make it durable before
    /// sending what was signed.
    pub fn take_dirty(&mut self) -> Option<SafetyState> {
        if std::mem::take(&mut self.dirty) {
            Some(self.state.clone())
        } else {
            None
        }
    }
    /// Moves the state to a later epoch (a fresh state: rounds restart at 0 in a new epoch).
    pub fn enter_epoch(&mut self, epoch: u64) {
        if epoch > self.state.epoch {
            self.state = SafetyState::new(epoch);
            self.dirty = true;
        }
    }

    fn check_epoch(&self, ctx: &EpochContext) -> Result<(), SafetyError> {
        if self.state.epoch != ctx.epoch() {
            return Err(SafetyError::EpochMismatch {
                state: self.state.epoch,
                ctx: ctx.epoch(),
            });
        }
        Ok(())
    }

    /// The vote rule. For a proposal of block B at round r: valid proposal (epochs, leader,
    /// signature, parent == QC's block, r > QC round, certificates valid in this epoch);
    /// r > last_voted_round; and B.qc.round == r − 1, or tc.round == r − 1 with B.qc.round at
    /// least the TC's largest high-QC round. Then last_voted_round = r and one_chain_round =
    /// max(one_chain_round, B.qc.round). Asked again for the same block at round r, returns the
    /// same vote.
    pub fn make_vote(&mut self, ctx: &EpochContext, p: &Proposal) -> Result<Vote, SafetyError> {
        self.check_epoch(ctx)?;
        let b = &p.block;
        let r = b.round();
        if let Some(v) = &self.state.last_vote
            && v.epoch == b.epoch()
            && v.round == r
        {
            return if v.block_id == b.id() {
                Ok(v.clone())
            } else {
                Err(SafetyError::AlreadyVotedOther(r))
            };
        }
        ctx.verify_proposal(p)?;
        if r <= self.state.last_voted_round {
            return Err(SafetyError::RoundNotAboveLastVoted {
                round: r,
                last: self.state.last_voted_round,
            });
        }
        let qc_round = b.qc().round;
        let justified = qc_round.checked_add(1) == Some(r)
            || p.tc
                .as_ref()
                .is_some_and(|tc| tc.round.checked_add(1) == Some(r) && tc_allows(qc_round, tc));
        if !justified {
            return Err(SafetyError::NotJustified(r));
        }
        let digest = ctx.domain().vote_digest(b.epoch(), r, &b.id());
        let vote = Vote {
            epoch: b.epoch(),
            round: r,
            block_id: b.id(),
            signer: self.signer.address(),
            signature: self.signer.sign(&digest),
        };
        self.state.last_voted_round = r;
        self.state.one_chain_round = self.state.one_chain_round.max(qc_round);
        self.state.last_vote = Some(vote.clone());
        self.dirty = true;
        Ok(vote)
    }

    /// The timeout rule, round r: r ≥ last_voted_round; high_qc.round == r − 1 or
    /// high_tc.round == r − 1; high_qc.round ≥ one_chain_round; certificates valid. Then
    /// last_voted_round = max(last_voted_round, r), so the node never votes in a round it timed
    /// out. One timeout per round: asked again, returns the same one.
    pub fn make_timeout(
        &mut self,
        ctx: &EpochContext,
        round: u64,
        high_qc: &QuorumCert,
        high_tc: Option<&TimeoutCert>,
    ) -> Result<Timeout, SafetyError> {
        self.check_epoch(ctx)?;
        if let Some(t) = &self.state.last_timeout
            && t.epoch == ctx.epoch()
            && t.round == round
        {
            return Ok(t.clone());
        }
        if round < self.state.last_voted_round || round <= self.state.highest_timeout_round {
            return Err(SafetyError::TimeoutBelowLastVoted {
                round,
                last: self
                    .state
                    .last_voted_round
                    .max(self.state.highest_timeout_round),
            });
        }
        let prev = round.saturating_sub(1);
        let justified = round > 0
            && high_qc.round < round
            && (high_qc.round == prev || high_tc.is_some_and(|tc| tc.round == prev));
        if !justified {
            return Err(SafetyError::NotJustified(round));
        }
        if high_qc.round < self.state.one_chain_round {
            return Err(SafetyError::HighQcBelowOneChain {
                qc: high_qc.round,
                one_chain: self.state.one_chain_round,
            });
        }
        ctx.verify_qc(high_qc)?;
        if let Some(tc) = high_tc {
            ctx.verify_tc(tc)?;
        }
        let digest = ctx
            .domain()
            .timeout_digest(ctx.epoch(), round, high_qc.round);
        let timeout = Timeout {
            epoch: ctx.epoch(),
            round,
            high_qc: high_qc.clone(),
            high_tc: high_tc.cloned(),
            signer: self.signer.address(),
            signature: self.signer.sign(&digest),
        };
        #[cfg(not(feature = "mutant-vote-after-timeout"))]
        {
            self.state.last_voted_round = self.state.last_voted_round.max(round);
        }
        self.state.highest_timeout_round = round;
        self.state.last_timeout = Some(timeout.clone());
        self.dirty = true;
        Ok(timeout)
    }

    /// Signs the proposal of `block` (this node's, for a round it leads), with the TC of the
    /// previous round when required. One proposal per round: asked again for the same block,
    /// returns the same proposal; never a different block for a round already proposed in.
    pub fn make_proposal(
        &mut self,
        ctx: &EpochContext,
        block: Block,
        tc: Option<TimeoutCert>,
    ) -> Result<Proposal, SafetyError> {
        self.check_epoch(ctx)?;
        if block.proposer() != self.signer.address() {
            return Err(SafetyError::NotOwnBlock);
        }
        if let Some(p) = &self.state.last_proposal
            && p.block.epoch() == block.epoch()
            && p.round() >= block.round()
        {
            return if p.block == block {
                Ok(p.clone())
            } else {
                Err(SafetyError::AlreadyProposed(p.round()))
            };
        }
        let digest = ctx
            .domain()
            .proposal_digest(block.epoch(), block.round(), &block.id());
        let proposal = Proposal {
            signature: self.signer.sign(&digest),
            block,
            tc,
        };
        ctx.verify_proposal(&proposal)?;
        self.state.last_proposal = Some(proposal.clone());
        self.dirty = true;
        Ok(proposal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Scheme;
    use crate::testkit::Cluster;
    use crate::types::BlockId;

    fn rules(c: &Cluster, i: usize) -> SafetyRules {
        SafetyRules::new(SafetyState::new(c.ctx.epoch()), c.signer_of(i))
    }

    /// A cluster of 4 equal validators and blocks B1 (round 1, genesis QC), B2 (round 2, QC(B1)).
    fn setup() -> (Cluster, Block, Block) {
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 100);
        let b1 = c.block(1, c.ctx.genesis_qc(), vec![]);
        let b2 = c.block(2, c.full_qc(1, b1.id()), vec![]);
        (c, b1, b2)
    }

    #[test]
    fn a_state_is_behind_when_any_counter_of_its_epoch_went_back() {
        let (c, b1, _) = setup();
        let mut s = rules(&c, c.leader(1));
        let before = s.state().clone();
        let p = s.make_proposal(&c.ctx, b1, None).expect("propose b1");
        let after = s.state().clone();
        assert_eq!(after.last_proposal_round(), p.block.round());
        assert_eq!(after.behind(&before), None);
        assert_eq!(before.behind(&after), Some("last_proposal_round"));
        assert_eq!(before.behind(&before), None);
        let mut voted = before.clone();
        voted.last_voted_round = 3;
        assert_eq!(before.behind(&voted), Some("last_voted_round"));
        let next_epoch = SafetyState::new(before.epoch + 1);
        assert_eq!(next_epoch.behind(&voted), None);
        assert_eq!(voted.behind(&next_epoch), Some("epoch"));
    }

    #[test]
    fn votes_with_qc_of_previous_round() {
        let (c, b1, b2) = setup();
        let mut s = rules(&c, 0);
        let v1 = s
            .make_vote(&c.ctx, &c.proposal(b1.clone(), None))
            .expect("vote b1");
        assert_eq!(v1.round, 1);
        assert_eq!(c.ctx.verify_vote(&v1), Ok(0));
        let v2 = s.make_vote(&c.ctx, &c.proposal(b2, None)).expect("vote b2");
        assert_eq!(s.state().last_voted_round, 2);
        assert_eq!(s.state().one_chain_round, 1);
        assert_eq!(s.state().last_vote.as_ref(), Some(&v2));
        assert!(s.take_dirty().is_some());
        assert!(s.take_dirty().is_none());
    }

    #[test]
    fn votes_with_tc_and_refuses_qc_below_tc_high_qc() {
        let (c, b1, _) = setup();
        let qc1 = c.full_qc(1, b1.id());
        // Round 2 timed out; everyone's high QC was QC(B1) of round 1.
        let tc2 = c.tc(2, qc1.clone(), &[(0, 1), (1, 1), (2, 1)]);
        let b3 = c.block(3, qc1.clone(), vec![]);
        let mut s = rules(&c, 0);
        s.make_vote(&c.ctx, &c.proposal(b3, Some(tc2.clone())))
            .expect("vote with TC");
        // A block at round 3 extending the genesis QC, below the TC's high QC: refused.
        let (c, _, _) = setup();
        let b3_low = c.block(3, c.ctx.genesis_qc(), vec![]);
        let mut s = rules(&c, 1);
        assert_eq!(
            s.make_vote(&c.ctx, &c.proposal(b3_low, Some(tc2))),
            Err(SafetyError::NotJustified(3))
        );
    }

    #[test]
    fn refuses_every_bad_proposal() {
        let (c, b1, b2) = setup();
        let mut s = rules(&c, 0);
        // Not the leader: a block of round 1 proposed by round 2's leader.
        let wrong = crate::types::Block::new(
            0,
            1,
            c.ctx.genesis_qc(),
            c.signers[c.leader(2)].address(),
            vec![],
            None,
        );
        if c.leader(1) != c.leader(2) {
            let d = c.ctx.domain().proposal_digest(0, 1, &wrong.id());
            let p = Proposal {
                signature: c.signers[c.leader(2)].sign(&d),
                block: wrong,
                tc: None,
            };
            assert_eq!(
                s.make_vote(&c.ctx, &p),
                Err(SafetyError::InvalidProposal(MessageError::NotLeader))
            );
        }
        // Bad signature.
        let mut p = c.proposal(b1.clone(), None);
        p.signature.0[0] ^= 1;
        assert_eq!(
            s.make_vote(&c.ctx, &p),
            Err(SafetyError::InvalidProposal(MessageError::BadSignature))
        );
        // A forged genesis QC (round 0, another block id).
        let forged = c.block(
            1,
            crate::types::QuorumCert::genesis(0, BlockId([9; 32])),
            vec![],
        );
        assert!(matches!(
            s.make_vote(&c.ctx, &c.proposal(forged, None)),
            Err(SafetyError::InvalidProposal(MessageError::Cert(
                CertError::ForgedGenesis
            )))
        ));
        // A QC of another epoch.
        let other = Cluster::with_epoch(Scheme::Fast, &[1, 1, 1, 1], 100, 1);
        let qc_e1 = other.full_qc(1, b1.id());
        let b2_bad = c.block(2, qc_e1, vec![]);
        assert!(matches!(
            s.make_vote(&c.ctx, &c.proposal(b2_bad, None)),
            Err(SafetyError::InvalidProposal(MessageError::Cert(
                CertError::WrongEpoch { .. }
            )))
        ));
        // A QC without quorum.
        let weak = c.qc(1, b1.id(), &[0, 1]);
        let b2_weak = c.block(2, weak, vec![]);
        assert!(matches!(
            s.make_vote(&c.ctx, &c.proposal(b2_weak, None)),
            Err(SafetyError::InvalidProposal(MessageError::Cert(
                CertError::NoQuorum
            )))
        ));
        // An invalid TC: its high QC is not the largest reported round.
        let qc1 = c.full_qc(1, b1.id());
        let bad_tc = c.tc(2, qc1.clone(), &[(0, 1), (1, 1), (2, 0)]);
        let mut lying = bad_tc.clone();
        lying.high_qc_rounds = vec![1, 1, 2];
        let b3 = c.block(3, qc1.clone(), vec![]);
        assert!(matches!(
            s.make_vote(&c.ctx, &c.proposal(b3.clone(), Some(lying))),
            Err(SafetyError::InvalidProposal(MessageError::Cert(_)))
        ));
        // A TC whose high QC is not below its round.
        let qc2 = c.full_qc(2, b2.id());
        let tc_high = c.tc(2, qc2, &[(0, 2), (1, 2), (2, 2)]);
        assert!(matches!(
            s.make_vote(&c.ctx, &c.proposal(b3.clone(), Some(tc_high))),
            Err(SafetyError::InvalidProposal(MessageError::Cert(
                CertError::HighQcNotBelowRound { .. }
            )))
        ));
        // Missing TC when the QC is not of the previous round.
        assert!(matches!(
            s.make_vote(&c.ctx, &c.proposal(b3, None)),
            Err(SafetyError::InvalidProposal(MessageError::Malformed(_)))
        ));
        // Nothing above was signed.
        assert_eq!(s.state().last_voted_round, 0);
        assert!(s.take_dirty().is_none());
    }

    #[test]
    fn never_votes_twice_in_a_round_and_replays_the_same_vote() {
        let (c, b1, _) = setup();
        let mut s = rules(&c, 0);
        let v = s
            .make_vote(&c.ctx, &c.proposal(b1.clone(), None))
            .expect("vote");
        // Same block again (e.g. re-delivered): the same vote.
        assert_eq!(s.make_vote(&c.ctx, &c.proposal(b1, None)), Ok(v.clone()));
        // Another block for the same round (equivocating leader): refused.
        let other = c.block(
            1,
            c.ctx.genesis_qc(),
            vec![crate::types::BatchDigest([1; 32])],
        );
        assert_eq!(
            s.make_vote(&c.ctx, &c.proposal(other, None)),
            Err(SafetyError::AlreadyVotedOther(1))
        );
        // After a restart with the persisted state: the same vote, byte for byte.
        let state = s.state().clone();
        let mut restarted = SafetyRules::new(
            SafetyState::decode(&state.encode()).expect("decodes"),
            c.signer_of(0),
        );
        let (c2, b1_again, _) = setup();
        assert_eq!(
            restarted.make_vote(&c2.ctx, &c2.proposal(b1_again, None)),
            Ok(v)
        );
    }

    #[test]
    fn timeout_rule_and_its_effect_on_voting() {
        let (c, b1, b2) = setup();
        let mut s = rules(&c, 0);
        let qc1 = c.full_qc(1, b1.id());
        // Time out in round 2 holding QC(B1).
        let t = s.make_timeout(&c.ctx, 2, &qc1, None).expect("timeout");
        assert_eq!(c.ctx.verify_timeout(&t), Ok(0));
        #[cfg(not(feature = "mutant-vote-after-timeout"))]
        {
            assert_eq!(s.state().last_voted_round, 2);
            // Then the round-2 proposal arrives late: no vote.
            assert!(matches!(
                s.make_vote(&c.ctx, &c.proposal(b2, None)),
                Err(SafetyError::RoundNotAboveLastVoted { .. })
            ));
        }
        let _ = b2;
        // Asked again for round 2: the same timeout.
        assert_eq!(s.make_timeout(&c.ctx, 2, &qc1, None), Ok(t));
        // Round 4 without a certificate of round 3: refused.
        assert_eq!(
            s.make_timeout(&c.ctx, 4, &qc1, None),
            Err(SafetyError::NotJustified(4))
        );
        // With the TC of round 3: fine.
        let tc3 = c.tc(3, qc1.clone(), &[(0, 1), (1, 1), (2, 1)]);
        s.make_timeout(&c.ctx, 4, &qc1, Some(&tc3))
            .expect("timeout 4");
        // Below the last voted round: refused.
        assert!(matches!(
            s.make_timeout(&c.ctx, 3, &qc1, None),
            Err(SafetyError::TimeoutBelowLastVoted { .. })
        ));
    }

    #[test]
    fn timeout_refuses_high_qc_below_one_chain() {
        let (c, b1, b2) = setup();
        let mut s = rules(&c, 0);
        s.make_vote(&c.ctx, &c.proposal(b1, None)).expect("vote 1");
        s.make_vote(&c.ctx, &c.proposal(b2, None)).expect("vote 2");
        assert_eq!(s.state().one_chain_round, 1);
        // A timeout for round 3 must carry a QC of round >= 1; here a TC of round 2 with the
        // genesis QC would justify the round but the QC is below one_chain_round.
        let tc2 = c.tc(2, c.ctx.genesis_qc(), &[(1, 0), (2, 0), (3, 0)]);
        assert_eq!(
            s.make_timeout(&c.ctx, 3, &c.ctx.genesis_qc(), Some(&tc2)),
            Err(SafetyError::HighQcBelowOneChain {
                qc: 0,
                one_chain: 1
            })
        );
    }

    #[test]
    fn one_proposal_per_round_replayed_after_restart() {
        let (c, b1, _) = setup();
        let leader = c.leader(1);
        let mut s = rules(&c, leader);
        let p = s.make_proposal(&c.ctx, b1.clone(), None).expect("propose");
        assert_eq!(s.make_proposal(&c.ctx, b1.clone(), None), Ok(p.clone()));
        let other = c.block(
            1,
            c.ctx.genesis_qc(),
            vec![crate::types::BatchDigest([1; 32])],
        );
        assert_eq!(
            s.make_proposal(&c.ctx, other, None),
            Err(SafetyError::AlreadyProposed(1))
        );
        let mut restarted = SafetyRules::new(s.state().clone(), c.signer_of(leader));
        assert_eq!(restarted.make_proposal(&c.ctx, b1, None), Ok(p));
    }

    #[test]
    fn refuses_other_epoch_state() {
        let (c, b1, _) = setup();
        let mut s = SafetyRules::new(SafetyState::new(3), c.signer_of(0));
        assert!(matches!(
            s.make_vote(&c.ctx, &c.proposal(b1, None)),
            Err(SafetyError::EpochMismatch { .. })
        ));
    }
}
