//! The plain-data types of the protocol (DESIGN section 5): blocks, proposals, votes, timeouts and
//! the two certificates, with their canonical encodings and ids. No logic beyond structure lives
//! here: validity against a validator set is in `verify`, the rules in `safety` and `core`.

use crate::codec::{Decode, DecodeError, Encode, Reader, Writer};
use crate::hash::keccak256;
use std::fmt;

/// The most validators a set (and so a signer bitmap) may have. Bounds every certificate.
pub const MAX_VALIDATORS: usize = 16_384;
/// The most batch digests one block may carry (a hard bound of the encoding; `Config` may set a
/// smaller one).
pub const MAX_BATCHES_PER_BLOCK: usize = 4_096;

fn fmt_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8], max: usize) -> fmt::Result {
    f.write_str("0x")?;
    for b in bytes.iter().take(max) {
        write!(f, "{b:02x}")?;
    }
    if bytes.len() > max {
        f.write_str("..")?;
    }
    Ok(())
}

macro_rules! bytes_newtype {
    ($(#[$doc:meta])* $name:ident, $n:expr, $show:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub [u8; $n]);
        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt_hex(f, &self.0, $show)
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt_hex(f, &self.0, $n)
            }
        }
        impl Encode for $name {
            fn encode_to(&self, w: &mut Writer) {
                w.raw(&self.0);
            }
        }
        impl Decode for $name {
            fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
                Ok(Self(r.array(stringify!($name))?))
            }
        }
    };
}

bytes_newtype!(
    /// A 20-byte Ethereum address: the last 20 bytes of keccak256 of the 64-byte public key.
    #[derive(Default)]
    Address, 20, 20
);
bytes_newtype!(
    /// A block id: keccak256 of the canonical encoding of the block header.
    BlockId, 32, 6
);
bytes_newtype!(
    /// A batch digest: the host mempool's name of a batch (BLAKE3-256); opaque to consensus.
    BatchDigest, 32, 6
);
bytes_newtype!(
    /// An uncompressed secp256k1 public key without the 0x04 prefix (64 bytes), as the contract
    /// stores it.
    PublicKey, 64, 6
);
bytes_newtype!(
    /// A 65-byte signature `r ‖ s ‖ v` with v in {0, 1} and low s.
    Signature, 65, 6
);

/// Which validators of a set signed a certificate: bit `i` (LSB-first within each byte) stands for
/// the validator at index `i` of the address-sorted set.
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct SignerBitmap {
    bytes: Vec<u8>,
}

impl fmt::Debug for SignerBitmap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl SignerBitmap {
    /// An empty bitmap sized for a set of `n` validators.
    pub fn new(n: usize) -> Self {
        Self {
            bytes: vec![0; n.div_ceil(8)],
        }
    }
    /// Marks index `i`; indices beyond the size are ignored (callers index a known set).
    pub fn set(&mut self, i: usize) {
        if let Some(b) = self.bytes.get_mut(i / 8) {
            *b |= 1 << (i % 8);
        }
    }
    /// Whether index `i` is marked.
    pub fn get(&self, i: usize) -> bool {
        self.bytes
            .get(i / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }
    /// How many indices are marked.
    pub fn count(&self) -> usize {
        self.bytes.iter().map(|b| b.count_ones() as usize).sum()
    }
    /// The marked indices, ascending.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.bytes.iter().enumerate().flat_map(|(j, b)| {
            (0..8)
                .filter(move |k| b & (1 << k) != 0)
                .map(move |k| j * 8 + k)
        })
    }
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// Whether this bitmap is exactly sized for a set of `n` (right byte count, no bit >= n).
    pub fn fits(&self, n: usize) -> bool {
        self.bytes.len() == n.div_ceil(8) && self.iter().all(|i| i < n)
    }
}

impl Encode for SignerBitmap {
    fn encode_to(&self, w: &mut Writer) {
        w.len(self.bytes.len());
        w.raw(&self.bytes);
    }
}

impl Decode for SignerBitmap {
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let n = r.len(MAX_VALIDATORS.div_ceil(8), "signer bitmap")?;
        Ok(Self {
            bytes: r.take(n, "signer bitmap")?.to_vec(),
        })
    }
}

fn encode_vec<T: Encode>(w: &mut Writer, v: &[T]) {
    w.len(v.len());
    for x in v {
        x.encode_to(w);
    }
}

fn decode_vec<T: Decode>(
    r: &mut Reader<'_>,
    max: usize,
    what: &'static str,
) -> Result<Vec<T>, DecodeError> {
    let n = r.len(max, what)?;
    let mut v = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        v.push(T::decode_from(r)?);
    }
    Ok(v)
}

/// A quorum certificate: signatures of power at least Q over the vote digest of
/// `(epoch, round, block_id)`. Round 0 is the epoch's genesis QC, without signatures.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct QuorumCert {
    /// Epoch of the certified block.
    pub epoch: u64,
    /// Round of the certified block.
    pub round: u64,
    /// The certified block.
    pub block_id: BlockId,
    /// Who signed.
    pub signers: SignerBitmap,
    /// One signature per marked signer, in ascending index order.
    pub signatures: Vec<Signature>,
}

impl QuorumCert {
    /// The genesis QC of an epoch: round 0, certifying the epoch's genesis block, no signatures.
    pub fn genesis(epoch: u64, genesis_block: BlockId) -> Self {
        Self {
            epoch,
            round: 0,
            block_id: genesis_block,
            signers: SignerBitmap::default(),
            signatures: Vec::new(),
        }
    }
}

impl Encode for QuorumCert {
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.epoch);
        w.u64(self.round);
        self.block_id.encode_to(w);
        self.signers.encode_to(w);
        encode_vec(w, &self.signatures);
    }
}

impl Decode for QuorumCert {
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let qc = Self {
            epoch: r.u64("qc epoch")?,
            round: r.u64("qc round")?,
            block_id: BlockId::decode_from(r)?,
            signers: SignerBitmap::decode_from(r)?,
            signatures: decode_vec(r, MAX_VALIDATORS, "qc signatures")?,
        };
        if qc.signatures.len() != qc.signers.count() {
            return Err(DecodeError::Invalid {
                what: "quorum certificate",
                reason: "signature count differs from signer count",
            });
        }
        Ok(qc)
    }
}

/// A timeout certificate: timeouts of power at least Q for one round, each signed over its own
/// high-QC round; `high_qc` is the highest of the QCs they carried.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TimeoutCert {
    /// Epoch.
    pub epoch: u64,
    /// The round that timed out.
    pub round: u64,
    /// The highest QC among the timeouts; its round is the largest of `high_qc_rounds`.
    pub high_qc: QuorumCert,
    /// Who signed.
    pub signers: SignerBitmap,
    /// Each signer's high-QC round, in ascending signer index order.
    pub high_qc_rounds: Vec<u64>,
    /// Each signer's signature, in ascending signer index order.
    pub signatures: Vec<Signature>,
}

impl TimeoutCert {
    /// The largest high-QC round among the signers (0 if none, which is never valid).
    pub fn max_high_qc_round(&self) -> u64 {
        self.high_qc_rounds.iter().copied().max().unwrap_or(0)
    }
}

impl Encode for TimeoutCert {
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.epoch);
        w.u64(self.round);
        self.high_qc.encode_to(w);
        self.signers.encode_to(w);
        w.len(self.high_qc_rounds.len());
        for r in &self.high_qc_rounds {
            w.u64(*r);
        }
        encode_vec(w, &self.signatures);
    }
}

impl Decode for TimeoutCert {
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let epoch = r.u64("tc epoch")?;
        let round = r.u64("tc round")?;
        let high_qc = QuorumCert::decode_from(r)?;
        let signers = SignerBitmap::decode_from(r)?;
        let n = r.len(MAX_VALIDATORS, "tc high-qc rounds")?;
        let mut high_qc_rounds = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            high_qc_rounds.push(r.u64("tc high-qc round")?);
        }
        let signatures = decode_vec(r, MAX_VALIDATORS, "tc signatures")?;
        let count = signers.count();
        if signatures.len() != count || high_qc_rounds.len() != count {
            return Err(DecodeError::Invalid {
                what: "timeout certificate",
                reason: "signature or round count differs from signer count",
            });
        }
        Ok(Self {
            epoch,
            round,
            high_qc,
            signers,
            high_qc_rounds,
            signatures,
        })
    }
}

/// One member of a validator set as a `Reconfigure` carries it (the contract's view).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MemberInfo {
    /// Address (derived from the key).
    pub address: Address,
    /// Public key.
    pub public_key: PublicKey,
    /// Voting power: the number of tokens authorizing the node.
    pub power: u64,
}

impl Encode for MemberInfo {
    fn encode_to(&self, w: &mut Writer) {
        self.address.encode_to(w);
        self.public_key.encode_to(w);
        w.u64(self.power);
    }
}

impl Decode for MemberInfo {
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            address: Address::decode_from(r)?,
            public_key: PublicKey::decode_from(r)?,
            power: r.u64("member power")?,
        })
    }
}

/// An epoch change proposed in a block (DESIGN section 4). Carried by the types now so the encoding
/// is stable; the state machine does not vote for it yet (companion issue).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reconfigure {
    /// The pinned chain block the new set was read at.
    pub chain_block_number: u64,
    /// Its hash.
    pub chain_block_hash: [u8; 32],
    /// keccak256 of the ABI encoding of `members`.
    pub validator_set_hash: [u8; 32],
    /// The new set, sorted by address.
    pub members: Vec<MemberInfo>,
}

impl Encode for Reconfigure {
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.chain_block_number);
        w.raw(&self.chain_block_hash);
        w.raw(&self.validator_set_hash);
        encode_vec(w, &self.members);
    }
}

impl Decode for Reconfigure {
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            chain_block_number: r.u64("chain block number")?,
            chain_block_hash: r.array("chain block hash")?,
            validator_set_hash: r.array("validator set hash")?,
            members: decode_vec(r, MAX_VALIDATORS, "reconfigure members")?,
        })
    }
}

/// A block header; the block id is keccak256 of its canonical encoding.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct BlockHeader {
    /// Epoch.
    pub epoch: u64,
    /// Round (> 0; round 0 is the genesis block).
    pub round: u64,
    /// Parent block; equals `qc.block_id`.
    pub parent_id: BlockId,
    /// The QC this block extends.
    pub qc: QuorumCert,
    /// keccak256 of the concatenated batch digests of the payload.
    pub payload_digest: [u8; 32],
    /// The leader that proposed it.
    pub proposer: Address,
    /// An epoch change, if this block proposes one.
    pub reconfigure: Option<Reconfigure>,
}

impl BlockHeader {
    /// The block id: keccak256 of the canonical encoding.
    pub fn id(&self) -> BlockId {
        BlockId(keccak256(&self.encode()))
    }
}

impl Encode for BlockHeader {
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.epoch);
        w.u64(self.round);
        self.parent_id.encode_to(w);
        self.qc.encode_to(w);
        w.raw(&self.payload_digest);
        self.proposer.encode_to(w);
        self.reconfigure.encode_to(w);
    }
}

impl Decode for BlockHeader {
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            epoch: r.u64("block epoch")?,
            round: r.u64("block round")?,
            parent_id: BlockId::decode_from(r)?,
            qc: QuorumCert::decode_from(r)?,
            payload_digest: r.array("payload digest")?,
            proposer: Address::decode_from(r)?,
            reconfigure: Option::<Reconfigure>::decode_from(r)?,
        })
    }
}

/// The digest a header commits to for a payload: keccak256 of the concatenated batch digests.
pub fn payload_digest(payload: &[BatchDigest]) -> [u8; 32] {
    let mut bytes = Vec::with_capacity(payload.len() * 32);
    for d in payload {
        bytes.extend_from_slice(&d.0);
    }
    keccak256(&bytes)
}

/// A block: header plus the ordered list of batch digests it commits to. Built only through
/// constructors that keep `id` and `payload_digest` consistent with the content.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Block {
    header: BlockHeader,
    payload: Vec<BatchDigest>,
    id: BlockId,
}

impl Block {
    /// A new block extending `qc`; parent and payload digest are derived, so they are always right.
    pub fn new(
        epoch: u64,
        round: u64,
        qc: QuorumCert,
        proposer: Address,
        payload: Vec<BatchDigest>,
        reconfigure: Option<Reconfigure>,
    ) -> Self {
        let header = BlockHeader {
            epoch,
            round,
            parent_id: qc.block_id,
            payload_digest: payload_digest(&payload),
            qc,
            proposer,
            reconfigure,
        };
        let id = header.id();
        Self {
            header,
            payload,
            id,
        }
    }
    /// A block from a received header and payload; refuses a payload that does not match.
    pub fn from_parts(header: BlockHeader, payload: Vec<BatchDigest>) -> Result<Self, DecodeError> {
        if payload.len() > MAX_BATCHES_PER_BLOCK {
            return Err(DecodeError::TooLong {
                what: "payload",
                len: payload.len() as u64,
                max: MAX_BATCHES_PER_BLOCK as u64,
            });
        }
        if payload_digest(&payload) != header.payload_digest {
            return Err(DecodeError::Invalid {
                what: "block",
                reason: "payload digest does not match the payload",
            });
        }
        let id = header.id();
        Ok(Self {
            header,
            payload,
            id,
        })
    }
    /// The id (cached keccak256 of the header encoding).
    pub fn id(&self) -> BlockId {
        self.id
    }
    /// The header.
    pub fn header(&self) -> &BlockHeader {
        &self.header
    }
    /// The ordered batch digests.
    pub fn payload(&self) -> &[BatchDigest] {
        &self.payload
    }
    /// Shorthand for the header's epoch.
    pub fn epoch(&self) -> u64 {
        self.header.epoch
    }
    /// Shorthand for the header's round.
    pub fn round(&self) -> u64 {
        self.header.round
    }
    /// Shorthand for the header's parent id.
    pub fn parent_id(&self) -> BlockId {
        self.header.parent_id
    }
    /// Shorthand for the header's QC.
    pub fn qc(&self) -> &QuorumCert {
        &self.header.qc
    }
    /// Shorthand for the header's proposer.
    pub fn proposer(&self) -> Address {
        self.header.proposer
    }
}

impl Encode for Block {
    fn encode_to(&self, w: &mut Writer) {
        self.header.encode_to(w);
        encode_vec(w, &self.payload);
    }
}

impl Decode for Block {
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let header = BlockHeader::decode_from(r)?;
        let payload = decode_vec(r, MAX_BATCHES_PER_BLOCK, "payload")?;
        Self::from_parts(header, payload)
    }
}

/// A leader's proposal: the block, the TC of the previous round when the block does not extend a
/// QC of the previous round, and the proposer's signature over the proposal digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Proposal {
    /// The proposed block (its proposer is the signer).
    pub block: Block,
    /// Required when `block.qc.round + 1 != block.round`.
    pub tc: Option<TimeoutCert>,
    /// Over `proposal_digest(epoch, round, block id)`.
    pub signature: Signature,
}

impl Proposal {
    /// The round.
    pub fn round(&self) -> u64 {
        self.block.round()
    }
}

impl Encode for Proposal {
    fn encode_to(&self, w: &mut Writer) {
        self.block.encode_to(w);
        self.tc.encode_to(w);
        self.signature.encode_to(w);
    }
}

impl Decode for Proposal {
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            block: Block::decode_from(r)?,
            tc: Option::<TimeoutCert>::decode_from(r)?,
            signature: Signature::decode_from(r)?,
        })
    }
}

/// A vote for a block, sent to the leader of the next round.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Vote {
    /// Epoch.
    pub epoch: u64,
    /// Round of the block.
    pub round: u64,
    /// The block voted for.
    pub block_id: BlockId,
    /// The voter.
    pub signer: Address,
    /// Over `vote_digest(epoch, round, block_id)`.
    pub signature: Signature,
}

impl Encode for Vote {
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.epoch);
        w.u64(self.round);
        self.block_id.encode_to(w);
        self.signer.encode_to(w);
        self.signature.encode_to(w);
    }
}

impl Decode for Vote {
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            epoch: r.u64("vote epoch")?,
            round: r.u64("vote round")?,
            block_id: BlockId::decode_from(r)?,
            signer: Address::decode_from(r)?,
            signature: Signature::decode_from(r)?,
        })
    }
}

/// A timeout for a round, broadcast to all; signed over `(epoch, round, high_qc.round)`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Timeout {
    /// Epoch.
    pub epoch: u64,
    /// The round that timed out.
    pub round: u64,
    /// The signer's highest QC.
    pub high_qc: QuorumCert,
    /// The signer's TC of the previous round, when its high QC is not of the previous round.
    pub high_tc: Option<TimeoutCert>,
    /// The signer.
    pub signer: Address,
    /// Over `timeout_digest(epoch, round, high_qc.round)`.
    pub signature: Signature,
}

impl Encode for Timeout {
    fn encode_to(&self, w: &mut Writer) {
        w.u64(self.epoch);
        w.u64(self.round);
        self.high_qc.encode_to(w);
        self.high_tc.encode_to(w);
        self.signer.encode_to(w);
        self.signature.encode_to(w);
    }
}

impl Decode for Timeout {
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        Ok(Self {
            epoch: r.u64("timeout epoch")?,
            round: r.u64("timeout round")?,
            high_qc: QuorumCert::decode_from(r)?,
            high_tc: Option::<TimeoutCert>::decode_from(r)?,
            signer: Address::decode_from(r)?,
            signature: Signature::decode_from(r)?,
        })
    }
}

/// Every message validators exchange.
#[allow(clippy::large_enum_variant)] // proposals dominate traffic; boxing would not save copies
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Message {
    /// A leader's proposal (broadcast).
    Proposal(Proposal),
    /// A vote (to every validator: each one aggregates votes into QCs).
    Vote(Vote),
    /// A timeout (broadcast).
    Timeout(Timeout),
    /// A timeout certificate (broadcast by whoever formed it).
    TimeoutCert(TimeoutCert),
}

impl Message {
    /// Epoch and round the message is about.
    pub fn epoch_round(&self) -> (u64, u64) {
        match self {
            Message::Proposal(p) => (p.block.epoch(), p.block.round()),
            Message::Vote(v) => (v.epoch, v.round),
            Message::Timeout(t) => (t.epoch, t.round),
            Message::TimeoutCert(tc) => (tc.epoch, tc.round),
        }
    }
}

impl Encode for Message {
    fn encode_to(&self, w: &mut Writer) {
        match self {
            Message::Proposal(p) => {
                w.u8(1);
                p.encode_to(w);
            }
            Message::Vote(v) => {
                w.u8(2);
                v.encode_to(w);
            }
            Message::Timeout(t) => {
                w.u8(3);
                t.encode_to(w);
            }
            Message::TimeoutCert(tc) => {
                w.u8(4);
                tc.encode_to(w);
            }
        }
    }
}

impl Decode for Message {
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        match r.u8("message kind")? {
            1 => Ok(Message::Proposal(Proposal::decode_from(r)?)),
            2 => Ok(Message::Vote(Vote::decode_from(r)?)),
            3 => Ok(Message::Timeout(Timeout::decode_from(r)?)),
            4 => Ok(Message::TimeoutCert(TimeoutCert::decode_from(r)?)),
            tag => Err(DecodeError::InvalidTag {
                what: "message kind",
                tag,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_set_get_count_iter() {
        let mut b = SignerBitmap::new(10);
        assert_eq!(b.as_bytes().len(), 2);
        b.set(0);
        b.set(9);
        b.set(10); // beyond size in the second byte: allowed by storage, refused by `fits`
        assert!(b.get(0) && b.get(9) && !b.get(1));
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 9, 10]);
        assert!(!b.fits(10));
        assert!(b.fits(11));
    }

    #[test]
    fn block_id_binds_every_header_field() {
        let qc = QuorumCert::genesis(0, BlockId([7; 32]));
        let b = Block::new(0, 1, qc.clone(), Address([1; 20]), vec![], None);
        let other = Block::new(0, 2, qc.clone(), Address([1; 20]), vec![], None);
        let other2 = Block::new(0, 1, qc, Address([2; 20]), vec![BatchDigest([3; 32])], None);
        assert_ne!(b.id(), other.id());
        assert_ne!(b.id(), other2.id());
        assert_eq!(Block::decode(&b.encode()).expect("decodes"), b);
    }

    #[test]
    fn decode_refuses_mismatched_payload_and_trailing_bytes() {
        let qc = QuorumCert::genesis(0, BlockId([7; 32]));
        let b = Block::new(0, 1, qc, Address([1; 20]), vec![BatchDigest([3; 32])], None);
        let mut bytes = b.encode();
        let n = bytes.len();
        bytes[n - 1] ^= 1; // flip a bit of the payload
        assert!(matches!(
            Block::decode(&bytes),
            Err(DecodeError::Invalid { .. })
        ));
        let mut bytes = b.encode();
        bytes.push(0);
        assert_eq!(Block::decode(&bytes), Err(DecodeError::TrailingBytes(1)));
    }

    #[test]
    fn decode_bounds_lengths_before_allocating() {
        // A QC announcing 2^31 signatures must fail on the bound, not try to allocate.
        let mut w = Writer::new();
        w.u64(0);
        w.u64(1);
        w.raw(&[0; 32]);
        w.u32(0); // empty bitmap
        w.u32(1 << 31);
        assert!(matches!(
            QuorumCert::decode(&w.into_bytes()),
            Err(DecodeError::TooLong { .. })
        ));
    }
}
