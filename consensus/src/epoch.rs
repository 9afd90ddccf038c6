//! Epoch changes (DESIGN section 4). Epoch e ends at the first block carrying a `Reconfigure`
//! that commits, by any proof: a direct 2-chain or as an ancestor of a later commit. The
//! [`EpochChangeRecord`] proves it: `B0 ← B1 ← … ← Bk ← Bk+1` by parent links, all of epoch e,
//! `Bk+1.round == Bk.round + 1`, and QC(Bk+1) valid in epoch e. From it anyone holding epoch e's
//! context derives epoch e+1's: its genesis block (id bound to B0 and the new set), its set and
//! leader schedule, and the chain block its set was read at. Certificates of another epoch only
//! ever enter through these records.

use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};
use crate::types::{Block, MemberInfo, QuorumCert, Reconfigure};
use crate::validators::{SetError, ValidatorSet};
use crate::verify::{CertError, EpochContext};
use thiserror::Error;

/// The most blocks a record's path may hold (B0 through Bk+1).
pub const MAX_RECORD_PATH: usize = 1_024;

/// Proof that epoch `epoch` ended at `path[0]` (B0, carrying the `Reconfigure`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct EpochChangeRecord {
    /// The epoch that ended.
    pub epoch: u64,
    /// B0, B1, …, Bk, Bk+1: each block the parent of the next, B0 carrying the `Reconfigure`.
    pub path: Vec<Block>,
    /// QC(Bk+1), of epoch `epoch`.
    pub qc: QuorumCert,
}

/// Why a record does not prove an epoch change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RecordError {
    /// The record is not of the context's epoch.
    #[error("record of epoch {got}, context of epoch {expected}")]
    WrongEpoch {
        /// The context's epoch.
        expected: u64,
        /// The record's.
        got: u64,
    },
    /// The path is structurally wrong.
    #[error("malformed record: {0}")]
    Malformed(&'static str),
    /// QC(Bk+1) is invalid in the epoch.
    #[error("record QC: {0}")]
    Qc(#[from] CertError),
    /// The new set is invalid.
    #[error("new validator set: {0}")]
    Set(#[from] SetError),
}

impl EpochChangeRecord {
    /// B0: the block that ended the epoch.
    pub fn b0(&self) -> Option<&Block> {
        self.path.first()
    }
    /// The `Reconfigure` B0 carries.
    pub fn reconfigure(&self) -> Option<&Reconfigure> {
        self.b0().and_then(|b| b.header().reconfigure.as_ref())
    }
    /// The new set's members (as B0's `Reconfigure` carries them).
    pub fn members(&self) -> &[MemberInfo] {
        self.reconfigure().map_or(&[], |r| r.members.as_slice())
    }
    /// The epoch this record starts (saturating: a record of an out-of-range epoch never
    /// verifies, see [`crate::bounds`]).
    pub fn next_epoch(&self) -> u64 {
        self.epoch.saturating_add(1)
    }

    /// Checks the record against epoch e's context: B0 carries a well-formed `Reconfigure`, the
    /// path is linked by parents and QCs, all of epoch e, the last two rounds consecutive, and
    /// QC(Bk+1) is valid in epoch e and certifies Bk+1.
    pub fn verify(&self, ctx: &EpochContext) -> Result<(), RecordError> {
        if self.epoch != ctx.epoch() {
            return Err(RecordError::WrongEpoch {
                expected: ctx.epoch(),
                got: self.epoch,
            });
        }
        if self.path.len() < 2 || self.path.len() > MAX_RECORD_PATH {
            return Err(RecordError::Malformed("path must hold B0 and Bk+1"));
        }
        let Some(rc) = self.reconfigure() else {
            return Err(RecordError::Malformed("B0 carries no reconfigure"));
        };
        for b in &self.path {
            if b.epoch() != self.epoch || b.qc().epoch != self.epoch {
                return Err(RecordError::Malformed("path block of another epoch"));
            }
            if b.parent_id() != b.qc().block_id || b.round() <= b.qc().round {
                return Err(RecordError::Malformed("block does not extend its QC"));
            }
        }
        for w in self.path.windows(2) {
            if w[1].parent_id() != w[0].id() {
                return Err(RecordError::Malformed("path is not linked by parents"));
            }
            if w[1].header().reconfigure.is_some() {
                return Err(RecordError::Malformed("second reconfigure on the path"));
            }
        }
        let n = self.path.len();
        let (bk, bk1) = (&self.path[n - 2], &self.path[n - 1]);
        if bk.round().checked_add(1) != Some(bk1.round()) {
            return Err(RecordError::Malformed(
                "last two rounds are not consecutive",
            ));
        }
        if self.qc.block_id != bk1.id() || self.qc.round != bk1.round() {
            return Err(RecordError::Malformed("QC does not certify the last block"));
        }
        // Linear in the members, but only once the QC shows a quorum signed the path.
        ctx.verify_qc(&self.qc)?;
        check_reconfigure_shape(rc).map_err(RecordError::Malformed)?;
        Ok(())
    }

    /// Verifies the record against epoch e's context and builds epoch e+1's context.
    pub fn next_context(&self, ctx: &EpochContext) -> Result<EpochContext, RecordError> {
        self.verify(ctx)?;
        let (Some(b0), Some(rc)) = (self.b0(), self.reconfigure()) else {
            return Err(RecordError::Malformed("B0 carries no reconfigure"));
        };
        let set = ValidatorSet::from_members(rc.members.clone())?;
        let next = self.next_epoch();
        let genesis = ctx
            .domain()
            .genesis_block_id(next, &b0.id().0, &rc.validator_set_hash);
        Ok(
            EpochContext::new(next, genesis, set, ctx.domain().clone(), ctx.scheme())
                .with_chain_block(rc.chain_block_number),
        )
    }
}

pub use crate::validators::check_reconfigure_shape;

impl Encode for EpochChangeRecord {
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.epoch);
        w.len(self.path.len());
        for b in &self.path {
            b.encode_to(w);
        }
        self.qc.encode_to(w);
    }
}

impl Decode for EpochChangeRecord {
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let epoch = r.u64("record epoch")?;
        let n = r.len(MAX_RECORD_PATH, "record path")?;
        let mut path = Vec::with_capacity(n.min(64));
        for _ in 0..n {
            path.push(Block::decode_from(r)?);
        }
        Ok(Self {
            epoch,
            path,
            qc: QuorumCert::decode_from(r)?,
        })
    }
}
