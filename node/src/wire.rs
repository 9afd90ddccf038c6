//! Conversions between the wire schema (`proto`, prost) and the consensus crate's types.
//!
//! Every field length is checked here (addresses 20 bytes, ids and digests 32, signatures 65,
//! public keys 64); a message that fails is malformed (a Reject on gossip). Block ids are never
//! taken from the wire: they are recomputed from the header by the consensus crate, and the
//! payload digest is checked against the batch digests.

use consensus::block_tree::CommitProof;
use consensus::epoch::{EpochChangeRecord, MAX_RECORD_PATH};
use consensus::types::{
    Address, BatchDigest, Block, BlockHeader, BlockId, MAX_VALIDATORS, MemberInfo, Proposal,
    PublicKey, QuorumCert, Reconfigure, Signature, SignerBitmap, Timeout, TimeoutCert, Vote,
};
use proto::v1;

/// Why a wire message does not convert to a consensus type.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    /// A required field is absent.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A fixed-length field has the wrong length.
    #[error("{what} has {len} bytes, expected {want}")]
    Length {
        /// The field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The expected length.
        want: usize,
    },
    /// A list exceeds its bound.
    #[error("{what} has {len} entries, more than {max}")]
    TooMany {
        /// The field.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The consensus crate refused the value (payload digest mismatch, sizes).
    #[error("invalid {0}")]
    Invalid(String),
}

fn arr<const N: usize>(b: &[u8], what: &'static str) -> Result<[u8; N], ConvertError> {
    b.try_into().map_err(|_| ConvertError::Length {
        what,
        len: b.len(),
        want: N,
    })
}

fn bounded<T>(v: &[T], max: usize, what: &'static str) -> Result<(), ConvertError> {
    if v.len() > max {
        return Err(ConvertError::TooMany {
            what,
            len: v.len(),
            max,
        });
    }
    Ok(())
}

fn bitmap_from(bytes: &[u8]) -> Result<SignerBitmap, ConvertError> {
    bounded(bytes, MAX_VALIDATORS.div_ceil(8), "signer bitmap")?;
    let mut b = SignerBitmap::new(bytes.len() * 8);
    for (i, byte) in bytes.iter().enumerate() {
        for bit in 0..8 {
            if byte & (1 << bit) != 0 {
                b.set(i * 8 + bit);
            }
        }
    }
    Ok(b)
}

fn sigs_from(v: &[Vec<u8>]) -> Result<Vec<Signature>, ConvertError> {
    bounded(v, MAX_VALIDATORS, "signatures")?;
    v.iter()
        .map(|s| Ok(Signature(arr(s, "signature")?)))
        .collect()
}

/// The metric reason of an envelope that does not decode.
pub fn wire_reason(e: &proto::WireError) -> &'static str {
    match e {
        proto::WireError::TooLarge { .. } => "oversized",
        proto::WireError::Malformed(_) | proto::WireError::Empty => "malformed",
        proto::WireError::Version(_) => "version",
    }
}

/// A QC to the wire.
pub fn qc_to_wire(qc: &QuorumCert) -> v1::QuorumCert {
    v1::QuorumCert {
        epoch: qc.epoch,
        round: qc.round,
        block_id: qc.block_id.0.to_vec(),
        signer_bitmap: qc.signers.as_bytes().to_vec(),
        signatures: qc.signatures.iter().map(|s| s.0.to_vec()).collect(),
    }
}

/// A QC from the wire.
pub fn qc_from_wire(p: &v1::QuorumCert) -> Result<QuorumCert, ConvertError> {
    Ok(QuorumCert {
        epoch: p.epoch,
        round: p.round,
        block_id: BlockId(arr(&p.block_id, "qc block id")?),
        signers: bitmap_from(&p.signer_bitmap)?,
        signatures: sigs_from(&p.signatures)?,
    })
}

/// A TC to the wire.
pub fn tc_to_wire(tc: &TimeoutCert) -> v1::TimeoutCert {
    v1::TimeoutCert {
        epoch: tc.epoch,
        round: tc.round,
        high_qc: Some(qc_to_wire(&tc.high_qc)),
        signer_bitmap: tc.signers.as_bytes().to_vec(),
        high_qc_rounds: tc.high_qc_rounds.clone(),
        signatures: tc.signatures.iter().map(|s| s.0.to_vec()).collect(),
    }
}

/// A TC from the wire.
pub fn tc_from_wire(p: &v1::TimeoutCert) -> Result<TimeoutCert, ConvertError> {
    bounded(&p.high_qc_rounds, MAX_VALIDATORS, "tc high-qc rounds")?;
    Ok(TimeoutCert {
        epoch: p.epoch,
        round: p.round,
        high_qc: qc_from_wire(
            p.high_qc
                .as_ref()
                .ok_or(ConvertError::Missing("tc high_qc"))?,
        )?,
        signers: bitmap_from(&p.signer_bitmap)?,
        high_qc_rounds: p.high_qc_rounds.clone(),
        signatures: sigs_from(&p.signatures)?,
    })
}

fn member_to_wire(m: &MemberInfo) -> v1::Member {
    v1::Member {
        address: m.address.0.to_vec(),
        public_key: m.public_key.0.to_vec(),
        power: m.power,
    }
}

fn member_from_wire(m: &v1::Member) -> Result<MemberInfo, ConvertError> {
    Ok(MemberInfo {
        address: Address(arr(&m.address, "member address")?),
        public_key: PublicKey(arr(&m.public_key, "member public key")?),
        power: m.power,
    })
}

/// A block to the wire.
pub fn block_to_wire(b: &Block) -> v1::Block {
    let h = b.header();
    v1::Block {
        header: Some(v1::BlockHeader {
            epoch: h.epoch,
            round: h.round,
            parent_id: h.parent_id.0.to_vec(),
            qc: Some(qc_to_wire(&h.qc)),
            payload_digest: h.payload_digest.to_vec(),
            proposer: h.proposer.0.to_vec(),
            reconfigure: h.reconfigure.as_ref().map(|r| v1::Reconfigure {
                chain_block_number: r.chain_block_number,
                chain_block_hash: r.chain_block_hash.to_vec(),
                validator_set_hash: r.validator_set_hash.to_vec(),
                members: r.members.iter().map(member_to_wire).collect(),
            }),
        }),
        batch_digests: b.payload().iter().map(|d| d.0.to_vec()).collect(),
    }
}

/// A block from the wire; its id is recomputed and its payload digest checked.
pub fn block_from_wire(p: &v1::Block) -> Result<Block, ConvertError> {
    let h = p
        .header
        .as_ref()
        .ok_or(ConvertError::Missing("block header"))?;
    let reconfigure = match &h.reconfigure {
        None => None,
        Some(r) => {
            bounded(&r.members, MAX_VALIDATORS, "reconfigure members")?;
            Some(Reconfigure {
                chain_block_number: r.chain_block_number,
                chain_block_hash: arr(&r.chain_block_hash, "chain block hash")?,
                validator_set_hash: arr(&r.validator_set_hash, "validator set hash")?,
                members: r
                    .members
                    .iter()
                    .map(member_from_wire)
                    .collect::<Result<_, _>>()?,
            })
        }
    };
    let header = BlockHeader {
        epoch: h.epoch,
        round: h.round,
        parent_id: BlockId(arr(&h.parent_id, "parent id")?),
        qc: qc_from_wire(h.qc.as_ref().ok_or(ConvertError::Missing("block qc"))?)?,
        payload_digest: arr(&h.payload_digest, "payload digest")?,
        proposer: Address(arr(&h.proposer, "proposer")?),
        reconfigure,
    };
    bounded(
        &p.batch_digests,
        consensus::types::MAX_BATCHES_PER_BLOCK,
        "batch digests",
    )?;
    let payload = p
        .batch_digests
        .iter()
        .map(|d| Ok(BatchDigest(arr(d, "batch digest")?)))
        .collect::<Result<Vec<_>, ConvertError>>()?;
    Block::from_parts(header, payload).map_err(|e| ConvertError::Invalid(e.to_string()))
}

/// A proposal to the wire.
pub fn proposal_to_wire(p: &Proposal) -> v1::Proposal {
    v1::Proposal {
        block: Some(block_to_wire(&p.block)),
        tc: p.tc.as_ref().map(tc_to_wire),
        signature: p.signature.0.to_vec(),
    }
}

/// A proposal from the wire.
pub fn proposal_from_wire(p: &v1::Proposal) -> Result<Proposal, ConvertError> {
    Ok(Proposal {
        block: block_from_wire(p.block.as_ref().ok_or(ConvertError::Missing("block"))?)?,
        tc: p.tc.as_ref().map(tc_from_wire).transpose()?,
        signature: Signature(arr(&p.signature, "proposal signature")?),
    })
}

/// A vote to the wire.
pub fn vote_to_wire(v: &Vote) -> v1::Vote {
    v1::Vote {
        epoch: v.epoch,
        round: v.round,
        block_id: v.block_id.0.to_vec(),
        signer: v.signer.0.to_vec(),
        signature: v.signature.0.to_vec(),
    }
}

/// A vote from the wire.
pub fn vote_from_wire(v: &v1::Vote) -> Result<Vote, ConvertError> {
    Ok(Vote {
        epoch: v.epoch,
        round: v.round,
        block_id: BlockId(arr(&v.block_id, "vote block id")?),
        signer: Address(arr(&v.signer, "vote signer")?),
        signature: Signature(arr(&v.signature, "vote signature")?),
    })
}

/// A timeout to the wire.
pub fn timeout_to_wire(t: &Timeout) -> v1::Timeout {
    v1::Timeout {
        epoch: t.epoch,
        round: t.round,
        high_qc: Some(qc_to_wire(&t.high_qc)),
        high_tc: t.high_tc.as_ref().map(tc_to_wire),
        signer: t.signer.0.to_vec(),
        signature: t.signature.0.to_vec(),
    }
}

/// A timeout from the wire.
pub fn timeout_from_wire(t: &v1::Timeout) -> Result<Timeout, ConvertError> {
    Ok(Timeout {
        epoch: t.epoch,
        round: t.round,
        high_qc: qc_from_wire(
            t.high_qc
                .as_ref()
                .ok_or(ConvertError::Missing("timeout high_qc"))?,
        )?,
        high_tc: t.high_tc.as_ref().map(tc_from_wire).transpose()?,
        signer: Address(arr(&t.signer, "timeout signer")?),
        signature: Signature(arr(&t.signature, "timeout signature")?),
    })
}

/// A commit proof to the wire (`path` empty: the proved block is `child`'s parent).
pub fn proof_to_wire(p: &CommitProof) -> v1::CommitProof {
    v1::CommitProof {
        path: Vec::new(),
        child: Some(block_to_wire(&p.certified)),
        child_qc: Some(qc_to_wire(&p.qc)),
    }
}

/// A commit proof from the wire.
pub fn proof_from_wire(p: &v1::CommitProof) -> Result<CommitProof, ConvertError> {
    Ok(CommitProof {
        certified: block_from_wire(
            p.child
                .as_ref()
                .ok_or(ConvertError::Missing("proof child"))?,
        )?,
        qc: qc_from_wire(
            p.child_qc
                .as_ref()
                .ok_or(ConvertError::Missing("proof child qc"))?,
        )?,
    })
}

/// An epoch-change record to the wire: `proof.path` = B0..Bk, `child` = Bk+1, `child_qc` =
/// QC(Bk+1); `members` repeats B0's set for readers that do not decode blocks.
pub fn record_to_wire(r: &EpochChangeRecord) -> v1::EpochChangeRecord {
    let (path, child) = match r.path.split_last() {
        Some((last, rest)) => (
            rest.iter().map(block_to_wire).collect(),
            Some(block_to_wire(last)),
        ),
        None => (Vec::new(), None),
    };
    v1::EpochChangeRecord {
        epoch: r.epoch,
        proof: Some(v1::CommitProof {
            path,
            child,
            child_qc: Some(qc_to_wire(&r.qc)),
        }),
        members: r
            .members()
            .iter()
            .map(|m| v1::Member {
                address: m.address.0.to_vec(),
                public_key: m.public_key.0.to_vec(),
                power: m.power,
            })
            .collect(),
    }
}

/// An epoch-change record from the wire (shape only: `EpochChangeRecord::verify` checks it
/// against the ending epoch).
pub fn record_from_wire(p: &v1::EpochChangeRecord) -> Result<EpochChangeRecord, ConvertError> {
    let proof = p
        .proof
        .as_ref()
        .ok_or(ConvertError::Missing("record proof"))?;
    bounded(&proof.path, MAX_RECORD_PATH - 1, "record path")?;
    let mut path = proof
        .path
        .iter()
        .map(block_from_wire)
        .collect::<Result<Vec<_>, _>>()?;
    path.push(block_from_wire(
        proof
            .child
            .as_ref()
            .ok_or(ConvertError::Missing("record child"))?,
    )?);
    let qc = qc_from_wire(
        proof
            .child_qc
            .as_ref()
            .ok_or(ConvertError::Missing("record child qc"))?,
    )?;
    Ok(EpochChangeRecord {
        epoch: p.epoch,
        path,
        qc,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn qc(round: u64) -> QuorumCert {
        let mut signers = SignerBitmap::new(4);
        signers.set(0);
        signers.set(3);
        QuorumCert {
            epoch: 2,
            round,
            block_id: BlockId([round as u8; 32]),
            signers,
            signatures: vec![Signature([1; 65]), Signature([2; 65])],
        }
    }

    fn block() -> Block {
        Block::new(
            2,
            8,
            qc(7),
            Address([5; 20]),
            vec![BatchDigest([6; 32]), BatchDigest([7; 32])],
            Some(Reconfigure {
                chain_block_number: 99,
                chain_block_hash: [8; 32],
                validator_set_hash: [9; 32],
                members: vec![MemberInfo {
                    address: Address([1; 20]),
                    public_key: PublicKey([2; 64]),
                    power: 3,
                }],
            }),
        )
    }

    #[test]
    fn everything_round_trips_through_prost_bytes() {
        let b = block();
        let bytes = block_to_wire(&b).encode_to_vec();
        let back = block_from_wire(&v1::Block::decode(bytes.as_slice()).expect("decode"))
            .expect("convert");
        assert_eq!(back, b);
        assert_eq!(back.id(), b.id());

        let tc = TimeoutCert {
            epoch: 2,
            round: 9,
            high_qc: qc(7),
            signers: qc(7).signers,
            high_qc_rounds: vec![7, 6],
            signatures: vec![Signature([3; 65]), Signature([4; 65])],
        };
        let p = Proposal {
            block: b.clone(),
            tc: Some(tc.clone()),
            signature: Signature([9; 65]),
        };
        assert_eq!(proposal_from_wire(&proposal_to_wire(&p)).expect("p"), p);
        let v = Vote {
            epoch: 2,
            round: 8,
            block_id: b.id(),
            signer: Address([4; 20]),
            signature: Signature([5; 65]),
        };
        assert_eq!(vote_from_wire(&vote_to_wire(&v)).expect("v"), v);
        let t = Timeout {
            epoch: 2,
            round: 9,
            high_qc: qc(7),
            high_tc: Some(tc),
            signer: Address([4; 20]),
            signature: Signature([5; 65]),
        };
        assert_eq!(timeout_from_wire(&timeout_to_wire(&t)).expect("t"), t);
        let proof = CommitProof {
            certified: b,
            qc: qc(8),
        };
        assert_eq!(
            proof_from_wire(&proof_to_wire(&proof)).expect("proof"),
            proof
        );
    }

    #[test]
    fn bad_lengths_and_payloads_are_refused() {
        let mut w = block_to_wire(&block());
        w.batch_digests.pop();
        assert!(matches!(block_from_wire(&w), Err(ConvertError::Invalid(_))));
        let mut w = block_to_wire(&block());
        if let Some(h) = w.header.as_mut() {
            h.proposer = vec![1; 19];
        }
        assert!(matches!(
            block_from_wire(&w),
            Err(ConvertError::Length { want: 20, .. })
        ));
        let mut v = vote_to_wire(&Vote {
            epoch: 0,
            round: 1,
            block_id: BlockId([0; 32]),
            signer: Address([0; 20]),
            signature: Signature([0; 65]),
        });
        v.signature.push(0);
        assert!(vote_from_wire(&v).is_err());
        let mut w = block_to_wire(&block());
        w.header = None;
        assert!(matches!(
            block_from_wire(&w),
            Err(ConvertError::Missing("block header"))
        ));
    }
}
