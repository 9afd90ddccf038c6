//! The fuzz input: the cluster's shape, the core's member and bounds, and the steps, each a
//! choice `arbitrary` makes from the fuzzer's bytes.

use super::*;

/// One fuzz input.
#[derive(Arbitrary, Debug)]
pub struct Input {
    /// Index into [`SHAPES`] (modulo).
    pub shape: u8,
    /// Which member the core is (modulo 4).
    pub me: u8,
    /// Small buffers, so the bounds are reached.
    pub small: bool,
    /// What happens.
    pub steps: Vec<Step>,
}

/// A round, relative to the core's or absolute.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum RoundSel {
    /// The core's round plus a small offset.
    Current(i8),
    /// Far ahead of the core's round.
    Ahead(u16),
    /// `u64::MAX` minus a little.
    NearMax(u8),
    /// Any round.
    Exact(u64),
}

/// An epoch, relative to the harness's current one or absolute.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum EpochSel {
    /// The current epoch.
    Current,
    /// The one before.
    Previous,
    /// The next one.
    Next,
    /// Any epoch.
    Exact(u64),
}

/// Who signs (or claims to sign) a message.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Who {
    /// Member `i % n` of the current set, with its real key.
    Member(u8),
    /// A key that belongs to no member.
    Outsider,
    /// Names member `i % n` as signer but signs with another key.
    Forged(u8),
}

/// How a message the harness built or saw is changed before delivery.
#[derive(Arbitrary, Debug, Clone, Copy)]
pub enum Tamper {
    /// Delivered as it is.
    None,
    /// Another round (the signature no longer matches).
    Round(RoundSel),
    /// Another epoch.
    Epoch(EpochSel),
    /// One signature byte flipped.
    Signature(u8),
    /// The round of a certificate inside the message changed (unsigned by the outer signature).
    InnerRound(RoundSel),
}

/// A new validator set: each cluster member's power (0 leaves it out).
#[derive(Arbitrary, Debug, Clone, Copy)]
pub struct SetSpec {
    /// Powers, reduced modulo 4.
    pub powers: [u8; 4],
}

/// Which epoch-change record is delivered.
#[derive(Arbitrary, Debug, Clone)]
pub enum RecordSpec {
    /// A valid record for the current epoch, certified by the harness's keys.
    Valid {
        /// The new set.
        set: SetSpec,
        /// B0's round.
        round: RoundSel,
    },
    /// A record the core emitted or the harness delivered before, maybe changed.
    Replay {
        /// Which one.
        index: u8,
        /// How it is changed.
        tamper: Tamper,
    },
    /// A junk record: any epoch and B0 round, a path of junk blocks, an unsigned QC.
    Forged {
        /// Its epoch.
        epoch: EpochSel,
        /// B0's round.
        round: RoundSel,
        /// Blocks after B0.
        extra: u8,
        /// Members named by the Reconfigure.
        set: SetSpec,
        /// The blocks after B0 get small rounds and QC rounds (still above their QC's), so a
        /// huge B0 round meets the checks that come after the per-block ones.
        low_tail: bool,
    },
}

/// A QC given field by field (forged unless it happens to be right).
#[derive(Arbitrary, Debug, Clone)]
pub struct RawQc {
    /// Its epoch.
    pub epoch: EpochSel,
    /// Its round.
    pub round: RoundSel,
    /// A known block (index) or a random id.
    pub block: Result<u8, [u8; 32]>,
    /// Signer bitmap bytes.
    pub bitmap: Vec<u8>,
    /// Signatures.
    pub signatures: Vec<[u8; 65]>,
}

/// A message given field by field.
#[derive(Arbitrary, Debug, Clone)]
pub enum RawMessage {
    /// A vote.
    Vote {
        /// Its epoch.
        epoch: EpochSel,
        /// Its round.
        round: RoundSel,
        /// Block id.
        block: [u8; 32],
        /// Named signer.
        signer: Who,
        /// Signature bytes.
        signature: [u8; 65],
    },
    /// A timeout.
    Timeout {
        /// Its epoch.
        epoch: EpochSel,
        /// Its round.
        round: RoundSel,
        /// Its high QC.
        high_qc: RawQc,
        /// Named signer.
        signer: Who,
        /// Signature bytes.
        signature: [u8; 65],
    },
    /// A timeout certificate.
    Tc {
        /// Its epoch.
        epoch: EpochSel,
        /// Its round.
        round: RoundSel,
        /// Its high QC.
        high_qc: RawQc,
        /// Signer bitmap.
        bitmap: Vec<u8>,
        /// High-QC rounds.
        rounds: Vec<u64>,
        /// Signatures.
        signatures: Vec<[u8; 65]>,
    },
    /// A proposal.
    Proposal {
        /// Block epoch.
        epoch: EpochSel,
        /// Block round.
        round: RoundSel,
        /// Block QC.
        qc: RawQc,
        /// Proposer.
        proposer: Who,
        /// Payload digests.
        payload: Vec<[u8; 32]>,
        /// Signature bytes.
        signature: [u8; 65],
    },
}

/// One thing that happens to the core.
#[derive(Arbitrary, Debug, Clone)]
pub enum Step {
    /// A whole honest round: the leader proposes on the highest known QC (the core itself when it
    /// leads), its batches are available, every other member votes for the block.
    HonestRound {
        /// Batch digests in the block.
        batches: u8,
    },
    /// A signed proposal built by the harness.
    Propose {
        /// Its round.
        round: RoundSel,
        /// The QC it extends (index among the known ones).
        qc: u8,
        /// Its proposer; `None` is the round's leader.
        proposer: Option<Who>,
        /// Batch digests.
        batches: u8,
        /// A Reconfigure to the set (read at the last pinned head).
        reconfigure: Option<SetSpec>,
        /// A known TC it carries.
        tc: Option<u8>,
        /// A change after signing.
        tamper: Tamper,
    },
    /// A vote for a known block.
    Vote {
        /// The block (index among the known ones).
        block: u8,
        /// Its round instead of the block's.
        round: Option<RoundSel>,
        /// The voter.
        who: Who,
        /// A change after signing.
        tamper: Tamper,
    },
    /// A timeout.
    Timeout {
        /// Its round.
        round: RoundSel,
        /// Its signer.
        who: Who,
        /// The high QC it carries (index).
        qc: u8,
        /// A known TC it carries.
        tc: Option<u8>,
        /// A change after signing.
        tamper: Tamper,
    },
    /// A TC signed by the members of a bitmask, remembered and maybe delivered.
    Tc {
        /// Its round.
        round: RoundSel,
        /// Bitmask of signing members.
        signers: u8,
        /// The high QC it carries (index).
        qc: u8,
        /// Whether the core gets it now.
        deliver: bool,
        /// A change after signing.
        tamper: Tamper,
    },
    /// A QC on a known block signed by the members of a bitmask, remembered for later steps.
    Certify {
        /// The block (index).
        block: u8,
        /// Bitmask of signing members.
        signers: u8,
    },
    /// The round timer fires.
    Timer {
        /// The round it was set for; `None` is the core's round.
        round: Option<RoundSel>,
        /// Time that passed (ms).
        advance_ms: u16,
    },
    /// The mempool answers (the core's last request, or any round).
    Payload {
        /// The round; `None` answers the last request.
        round: Option<RoundSel>,
        /// Batch digests.
        batches: u8,
    },
    /// The batches of a block are available (the last one asked for, or any known block).
    BatchesAvailable {
        /// A known block (index); `None` answers the last request.
        block: Option<u8>,
    },
    /// Blocks arrive from a fetch: a known block and its known ancestors, newest first.
    Fetched {
        /// The newest block (index); `None` answers the last request.
        block: Option<u8>,
        /// How many ancestors at most.
        count: u8,
        /// Drop one block of the chain.
        gap: Option<u8>,
    },
    /// The oracle's pinned head, with the set read there.
    Pinned {
        /// Chain block number.
        number: u16,
        /// The set.
        set: SetSpec,
        /// Time that passed (ms).
        advance_ms: u16,
    },
    /// The answer to the core's last chain-set read.
    ChainSet {
        /// The set is the one asked about (else another, or none).
        agree: bool,
        /// No set (the hash is not the chain's).
        missing: bool,
    },
    /// Epoch-change records arrive.
    Record(RecordSpec),
    /// Something the core sent, back to it (maybe changed).
    Replay {
        /// Which message.
        index: u8,
        /// How it is changed.
        tamper: Tamper,
    },
    /// A message made of arbitrary fields.
    Raw(RawMessage),
}
