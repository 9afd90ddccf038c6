//! Equivocation evidence (DESIGN section 5): two different votes, or two different proposals, for
//! one (epoch, round) by one signer. The record holds both signed messages as the signed digests
//! need them (DESIGN section 6: epoch, round, block id, 65-byte signature), so a verifier (the
//! contract, later) can rebuild both digests and check both signatures against the signer.

use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};
use crate::types::{Address, BlockId, Signature};

/// Which kind of message was signed twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EquivocationKind {
    /// Two votes (digest tag `DSTACK_NFT_CLUSTER_VOTE`).
    Vote,
    /// Two proposals (digest tag `DSTACK_NFT_CLUSTER_PROPOSAL`).
    Proposal,
}

/// Proof that `signer` signed two different block ids for one (epoch, round) and kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Evidence {
    /// Vote or proposal.
    pub kind: EquivocationKind,
    /// The equivocating member.
    pub signer: Address,
    /// Epoch of both messages.
    pub epoch: u64,
    /// Round of both messages.
    pub round: u64,
    /// First block id and signature seen.
    pub first: (BlockId, Signature),
    /// Second block id and signature seen.
    pub second: (BlockId, Signature),
}

impl Encode for Evidence {
    fn encode_to(&self, w: &mut Writer) {
        w.u8(match self.kind {
            EquivocationKind::Vote => 1,
            EquivocationKind::Proposal => 2,
        });
        self.signer.encode_to(w);
        w.u64(self.epoch);
        w.u64(self.round);
        self.first.0.encode_to(w);
        self.first.1.encode_to(w);
        self.second.0.encode_to(w);
        self.second.1.encode_to(w);
    }
}

impl Decode for Evidence {
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let kind = match r.u8("evidence kind")? {
            1 => EquivocationKind::Vote,
            2 => EquivocationKind::Proposal,
            tag => {
                return Err(DecodeError::InvalidTag {
                    what: "evidence kind",
                    tag,
                });
            }
        };
        Ok(Self {
            kind,
            signer: Address::decode_from(r)?,
            epoch: r.u64("evidence epoch")?,
            round: r.u64("evidence round")?,
            first: (BlockId::decode_from(r)?, Signature::decode_from(r)?),
            second: (BlockId::decode_from(r)?, Signature::decode_from(r)?),
        })
    }
}
