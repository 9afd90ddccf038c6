//! The signing domain of one cluster (DESIGN section 6) and the epoch genesis block id (section 4).
//! Every signed digest is `keccak256(abi.encode(keccak256(TAG), uint256 chainId, address contract,
//! bytes32 genesis_id, uint64 epoch, uint64 round, X))`, built here by hand from 32-byte ABI words
//! so the contract can rebuild the same bytes for on-chain evidence.

use crate::types::{Address, BlockId, MemberInfo};
use sha3::{Digest, Keccak256};

/// Tag of vote digests.
pub const VOTE_TAG: &str = "DSTACK_NFT_CLUSTER_VOTE";
/// Tag of proposal digests.
pub const PROPOSAL_TAG: &str = "DSTACK_NFT_CLUSTER_PROPOSAL";
/// Tag of timeout digests.
pub const TIMEOUT_TAG: &str = "DSTACK_NFT_CLUSTER_TIMEOUT";
/// Tag of epoch genesis block ids.
pub const GENESIS_TAG: &str = "DSTACK_NFT_CLUSTER_GENESIS";

pub use crate::hash::keccak256;

/// The ABI word of a `uint64`/`uint256` value below 2^64 (left-padded big-endian).
pub fn word_u64(v: u64) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[24..].copy_from_slice(&v.to_be_bytes());
    w
}

/// The ABI word of an `address` (left-padded).
pub fn word_address(a: &Address) -> [u8; 32] {
    let mut w = [0u8; 32];
    w[12..].copy_from_slice(&a.0);
    w
}

/// The cluster's signing domain: chain id, contract and genesis id, plus the pre-hashed tags.
/// Built once per node; every digest is a single keccak over 7 words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Domain {
    chain_id: u64,
    contract: Address,
    genesis_id: [u8; 32],
    vote_tag: [u8; 32],
    proposal_tag: [u8; 32],
    timeout_tag: [u8; 32],
}

impl Domain {
    /// The domain of the cluster of `genesis_id` on `contract` at `chain_id` (a `uint256` on chain;
    /// every EVM chain id in use fits in 64 bits).
    pub fn new(chain_id: u64, contract: Address, genesis_id: [u8; 32]) -> Self {
        Self {
            chain_id,
            contract,
            genesis_id,
            vote_tag: keccak256(VOTE_TAG.as_bytes()),
            proposal_tag: keccak256(PROPOSAL_TAG.as_bytes()),
            timeout_tag: keccak256(TIMEOUT_TAG.as_bytes()),
        }
    }
    /// Chain id.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }
    /// Contract address.
    pub fn contract(&self) -> Address {
        self.contract
    }
    /// Genesis id (keccak256 of the genesis file's canonical encoding).
    pub fn genesis_id(&self) -> [u8; 32] {
        self.genesis_id
    }

    fn digest(&self, tag: &[u8; 32], epoch: u64, round: u64, x: &[u8; 32]) -> [u8; 32] {
        let mut h = Keccak256::new();
        h.update(tag);
        h.update(word_u64(self.chain_id));
        h.update(word_address(&self.contract));
        h.update(self.genesis_id);
        #[cfg(feature = "mutant-no-epoch-in-digest")]
        let epoch = {
            // Mutant: signatures do not bind the epoch (replayable across epochs).
            let _ = epoch;
            0
        };
        h.update(word_u64(epoch));
        h.update(word_u64(round));
        h.update(x);
        h.finalize().into()
    }
    /// The digest a vote for `block_id` at `(epoch, round)` signs.
    pub fn vote_digest(&self, epoch: u64, round: u64, block_id: &BlockId) -> [u8; 32] {
        self.digest(&self.vote_tag, epoch, round, &block_id.0)
    }
    /// The digest a proposal of `block_id` at `(epoch, round)` signs.
    pub fn proposal_digest(&self, epoch: u64, round: u64, block_id: &BlockId) -> [u8; 32] {
        self.digest(&self.proposal_tag, epoch, round, &block_id.0)
    }
    /// The digest a timeout of `(epoch, round)` with the given high-QC round signs.
    pub fn timeout_digest(&self, epoch: u64, round: u64, high_qc_round: u64) -> [u8; 32] {
        self.digest(&self.timeout_tag, epoch, round, &word_u64(high_qc_round))
    }
    /// The id of epoch `epoch`'s genesis block: keccak256(abi.encode(keccak256(GENESIS_TAG),
    /// chainId, contract, genesis_id, epoch, b0, validator_set_hash)), where `b0` is the committed
    /// Reconfigure block that ended the previous epoch (for epoch 0, the genesis chain block hash).
    pub fn genesis_block_id(&self, epoch: u64, b0: &[u8; 32], set_hash: &[u8; 32]) -> BlockId {
        let mut h = Keccak256::new();
        h.update(keccak256(GENESIS_TAG.as_bytes()));
        h.update(word_u64(self.chain_id));
        h.update(word_address(&self.contract));
        h.update(self.genesis_id);
        h.update(word_u64(epoch));
        h.update(b0);
        h.update(set_hash);
        BlockId(h.finalize().into())
    }
}

/// `validator_set_hash = keccak256(abi.encode(members as (address, bytes pubkey, uint256 power)[]))`
/// (DESIGN section 4), for members sorted by address with 64-byte public keys.
pub fn validator_set_hash(members: &[MemberInfo]) -> [u8; 32] {
    // abi.encode of one dynamic array of dynamic tuples:
    //   word 0: offset of the array (0x20); then its length n; then n offsets (relative to the
    //   start of that offset area); then each tuple: address, offset of the bytes (0x60), power,
    //   bytes length (64), the 64 key bytes (two words).
    const TUPLE_LEN: u64 = 6 * 32;
    let n = members.len() as u64;
    let mut h = Keccak256::new();
    h.update(word_u64(0x20));
    h.update(word_u64(n));
    for i in 0..n {
        h.update(word_u64(32 * n + i * TUPLE_LEN));
    }
    for m in members {
        h.update(word_address(&m.address));
        h.update(word_u64(0x60));
        h.update(word_u64(m.power));
        h.update(word_u64(64));
        h.update(m.public_key.0);
    }
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PublicKey;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn keccak_of_empty_is_the_known_constant() {
        assert_eq!(
            hex(&keccak256(b"")),
            "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"
        );
    }

    #[test]
    fn digest_is_keccak_of_seven_abi_words() {
        let d = Domain::new(8453, Address([0xab; 20]), [0x11; 32]);
        let block = BlockId([0x22; 32]);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&keccak256(VOTE_TAG.as_bytes()));
        bytes.extend_from_slice(&word_u64(8453));
        bytes.extend_from_slice(&[0u8; 12]);
        bytes.extend_from_slice(&[0xab; 20]);
        bytes.extend_from_slice(&[0x11; 32]);
        bytes.extend_from_slice(&word_u64(3));
        bytes.extend_from_slice(&word_u64(9));
        bytes.extend_from_slice(&[0x22; 32]);
        assert_eq!(bytes.len(), 7 * 32);
        assert_eq!(d.vote_digest(3, 9, &block), keccak256(&bytes));
        // Kinds, epochs, rounds and domains never share a digest.
        assert_ne!(d.vote_digest(3, 9, &block), d.proposal_digest(3, 9, &block));
        assert_ne!(d.vote_digest(3, 9, &block), d.vote_digest(4, 9, &block));
        assert_ne!(d.vote_digest(3, 9, &block), d.vote_digest(3, 10, &block));
        let other = Domain::new(8453, Address([0xab; 20]), [0x12; 32]);
        assert_ne!(d.vote_digest(3, 9, &block), other.vote_digest(3, 9, &block));
        assert_ne!(d.timeout_digest(3, 9, 7), d.timeout_digest(3, 9, 8));
    }

    #[test]
    fn validator_set_hash_layout() {
        let m = MemberInfo {
            address: Address([1; 20]),
            public_key: PublicKey([2; 64]),
            power: 5,
        };
        let mut bytes = Vec::new();
        for w in [word_u64(0x20), word_u64(1), word_u64(0x20)] {
            bytes.extend_from_slice(&w);
        }
        bytes.extend_from_slice(&word_address(&m.address));
        bytes.extend_from_slice(&word_u64(0x60));
        bytes.extend_from_slice(&word_u64(5));
        bytes.extend_from_slice(&word_u64(64));
        bytes.extend_from_slice(&[2; 64]);
        assert_eq!(validator_set_hash(&[m]), keccak256(&bytes));
    }
}
