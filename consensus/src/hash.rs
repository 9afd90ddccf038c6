//! The protocol's one hash: block ids, signed digests and the validator-set hash are keccak256,
//! as the contract computes them on chain.

use sha3::{Digest, Keccak256};

/// keccak256 of `data`.
pub fn keccak256(data: &[u8]) -> [u8; 32] {
    Keccak256::digest(data).into()
}
