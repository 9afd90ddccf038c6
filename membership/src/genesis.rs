//! The cluster's genesis file (`genesis.json`, shared by its operators) and `genesis_id`.
//!
//! Format (JSON, unknown fields refused so a typo cannot silently change a parameter):
//! ```json
//! {
//!   "version": 1,
//!   "chain_id": 31337,
//!   "contract": "0x5fbdb2315678afecb367f032d93f642f64180aa3",
//!   "genesis_block": { "number": 12, "hash": "0x…32 bytes…" },
//!   "cluster_nonce": "0x…32 bytes…",
//!   "pin_rule": "finalized",            // or "head_minus_depth" with "pin_depth": N
//!   "pin_depth": 0,
//!   "reconfig_max_lag_blocks": 512,
//!   "reconfig_wait_ms": 500,
//!   "epoch_min_rounds": 10,
//!   "base_timeout_ms": 1000,
//!   "timeout_cap_ms": 4000,
//!   "max_batch_bytes": 1048576,
//!   "max_block_batches": 64,
//!   "max_tx_bytes": 65536,
//!   "oracle_poll_ms": 1000
//! }
//! ```
//! `genesis_id = keccak256(abi.encode(keccak256("DSTACK_NFT_CLUSTER_GENESIS_FILE"), uint64 version,
//! uint256 chain_id, address contract, uint64 genesis_block.number, bytes32 genesis_block.hash,
//! bytes32 cluster_nonce, uint8 pin_rule (0 = finalized, 1 = head_minus_depth), uint64 pin_depth,
//! uint64 reconfig_max_lag_blocks, uint64 reconfig_wait_ms, uint64 epoch_min_rounds,
//! uint64 base_timeout_ms, uint64 timeout_cap_ms, uint64 max_batch_bytes,
//! uint64 max_block_batches, uint64 max_tx_bytes, uint64 oracle_poll_ms))`: every field, in this
//! order, so the contract can rebuild it and no two different files share an id.

use std::path::Path;

use alloy::primitives::{Address, B256, U256, keccak256};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The domain tag hashed first into `genesis_id`.
pub const GENESIS_FILE_TAG: &str = "DSTACK_NFT_CLUSTER_GENESIS_FILE";

/// The only format version this code reads.
pub const GENESIS_VERSION: u64 = 1;

/// Why a genesis file was refused.
#[derive(Debug, Error)]
pub enum GenesisError {
    /// Reading the file failed.
    #[error("genesis file {path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not JSON of the documented shape.
    #[error("genesis file: {0}")]
    Json(#[from] serde_json::Error),
    /// A parameter is out of range.
    #[error("genesis file: {0}")]
    Invalid(String),
}

/// How the oracle picks the chain block it reads the validator set at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PinRule {
    /// The chain's `finalized` block.
    Finalized,
    /// `head - pin_depth`.
    HeadMinusDepth,
}

/// The genesis chain block: epoch 0's validator set is read there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenesisBlock {
    /// Block number.
    pub number: u64,
    /// Block hash.
    pub hash: B256,
}

/// The cluster definition every honest node shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Genesis {
    /// Format version (1).
    pub version: u64,
    /// Chain id of the chain holding the contract.
    pub chain_id: u64,
    /// The `DstackMembershipNFT` contract.
    pub contract: Address,
    /// The chain block epoch 0 is read at.
    pub genesis_block: GenesisBlock,
    /// Random 32 bytes: a restarted cluster on the same contract gets a new id.
    pub cluster_nonce: B256,
    /// Pin rule of the oracle.
    pub pin_rule: PinRule,
    /// Depth for `head_minus_depth` (0 with `finalized`).
    #[serde(default)]
    pub pin_depth: u64,
    /// W: how far a Reconfigure's chain block may lag a validator's own pinned head.
    pub reconfig_max_lag_blocks: u64,
    /// How long a validator waits for its pinned head to reach a proposed block (ms).
    pub reconfig_wait_ms: u64,
    /// The least round a Reconfigure block may have in an epoch.
    pub epoch_min_rounds: u64,
    /// Base round timeout (ms).
    pub base_timeout_ms: u64,
    /// Round timeout cap (ms).
    pub timeout_cap_ms: u64,
    /// Largest batch (bytes).
    pub max_batch_bytes: u64,
    /// Most batch digests in one block.
    pub max_block_batches: u64,
    /// Largest transaction (bytes).
    pub max_tx_bytes: u64,
    /// How often the oracle polls the chain (ms).
    pub oracle_poll_ms: u64,
}

impl Genesis {
    /// A genesis with the default parameters for the given chain anchor.
    pub fn new(
        chain_id: u64,
        contract: Address,
        genesis_block: GenesisBlock,
        cluster_nonce: B256,
    ) -> Self {
        Self {
            version: GENESIS_VERSION,
            chain_id,
            contract,
            genesis_block,
            cluster_nonce,
            pin_rule: PinRule::Finalized,
            pin_depth: 0,
            reconfig_max_lag_blocks: 512,
            reconfig_wait_ms: 500,
            epoch_min_rounds: 10,
            base_timeout_ms: 1000,
            timeout_cap_ms: 4000,
            max_batch_bytes: 1 << 20,
            max_block_batches: 64,
            max_tx_bytes: 64 << 10,
            oracle_poll_ms: 1000,
        }
    }

    /// Parses and validates JSON text.
    pub fn from_json(text: &str) -> Result<Self, GenesisError> {
        let g: Genesis = serde_json::from_str(text)?;
        g.validate()?;
        Ok(g)
    }

    /// Loads and validates a file.
    pub fn load(path: &Path) -> Result<Self, GenesisError> {
        let text = std::fs::read_to_string(path).map_err(|source| GenesisError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Pretty JSON (what `init` writes).
    pub fn to_json(&self) -> String {
        // Serializing plain fields cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks the parameter rules.
    pub fn validate(&self) -> Result<(), GenesisError> {
        let bad = |m: String| Err(GenesisError::Invalid(m));
        if self.version != GENESIS_VERSION {
            return bad(format!("version {} is not {GENESIS_VERSION}", self.version));
        }
        if self.contract == Address::ZERO {
            return bad("contract is the zero address".into());
        }
        match self.pin_rule {
            PinRule::Finalized if self.pin_depth != 0 => {
                return bad("pin_depth must be 0 with pin_rule finalized".into());
            }
            _ => {}
        }
        for (name, v) in [
            ("reconfig_max_lag_blocks", self.reconfig_max_lag_blocks),
            ("base_timeout_ms", self.base_timeout_ms),
            ("timeout_cap_ms", self.timeout_cap_ms),
            ("max_batch_bytes", self.max_batch_bytes),
            ("max_block_batches", self.max_block_batches),
            ("max_tx_bytes", self.max_tx_bytes),
            ("oracle_poll_ms", self.oracle_poll_ms),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if self.reconfig_wait_ms >= self.base_timeout_ms {
            return bad("reconfig_wait_ms must be shorter than base_timeout_ms".into());
        }
        if self.timeout_cap_ms < self.base_timeout_ms {
            return bad("timeout_cap_ms must be at least base_timeout_ms".into());
        }
        if self.max_tx_bytes > self.max_batch_bytes {
            return bad("max_tx_bytes must not exceed max_batch_bytes".into());
        }
        Ok(())
    }

    /// The canonical encoding (module docs).
    pub fn canonical_encoding(&self) -> Vec<u8> {
        let pin_rule: u64 = match self.pin_rule {
            PinRule::Finalized => 0,
            PinRule::HeadMinusDepth => 1,
        };
        // Every field is a static ABI type, so abi.encode is one 32-byte word per field:
        // numbers big-endian, the address right-aligned, bytes32 as is.
        let mut out = Vec::with_capacity(18 * 32);
        let mut word = |w: B256| out.extend_from_slice(w.as_slice());
        let num = |v: u64| B256::from(U256::from(v));
        word(keccak256(GENESIS_FILE_TAG.as_bytes()));
        word(num(self.version));
        word(num(self.chain_id));
        word(self.contract.into_word());
        word(num(self.genesis_block.number));
        word(self.genesis_block.hash);
        word(self.cluster_nonce);
        word(num(pin_rule));
        for v in [
            self.pin_depth,
            self.reconfig_max_lag_blocks,
            self.reconfig_wait_ms,
            self.epoch_min_rounds,
            self.base_timeout_ms,
            self.timeout_cap_ms,
            self.max_batch_bytes,
            self.max_block_batches,
            self.max_tx_bytes,
            self.oracle_poll_ms,
        ] {
            word(num(v));
        }
        out
    }

    /// `genesis_id`: keccak256 of the canonical encoding.
    pub fn genesis_id(&self) -> B256 {
        keccak256(self.canonical_encoding())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Genesis {
        Genesis::new(
            31337,
            "0x5FbDB2315678afecb367f032d93F642f64180aa3"
                .parse()
                .unwrap(),
            GenesisBlock {
                number: 5,
                hash: B256::repeat_byte(0x11),
            },
            B256::repeat_byte(0x22),
        )
    }

    #[test]
    fn round_trips_and_every_field_changes_the_id() {
        let g = sample();
        let back = Genesis::from_json(&g.to_json()).unwrap();
        assert_eq!(back, g);
        assert_eq!(back.genesis_id(), g.genesis_id());
        assert_eq!(g.canonical_encoding().len(), 18 * 32);
        let id = g.genesis_id();
        let muts: Vec<fn(&mut Genesis)> = vec![
            |g| g.chain_id += 1,
            |g| g.contract = Address::repeat_byte(1),
            |g| g.genesis_block.number += 1,
            |g| g.genesis_block.hash = B256::repeat_byte(3),
            |g| g.cluster_nonce = B256::repeat_byte(4),
            |g| {
                g.pin_rule = PinRule::HeadMinusDepth;
            },
            |g| {
                g.pin_rule = PinRule::HeadMinusDepth;
                g.pin_depth = 2;
            },
            |g| g.reconfig_max_lag_blocks += 1,
            |g| g.reconfig_wait_ms += 1,
            |g| g.epoch_min_rounds += 1,
            |g| g.base_timeout_ms += 1,
            |g| g.timeout_cap_ms += 1,
            |g| g.max_batch_bytes += 1,
            |g| g.max_block_batches += 1,
            |g| g.max_tx_bytes += 1,
            |g| g.oracle_poll_ms += 1,
        ];
        for m in muts {
            let mut h = g.clone();
            m(&mut h);
            assert_ne!(h.genesis_id(), id, "{h:?}");
        }
    }

    #[test]
    fn refuses_unknown_fields_and_bad_parameters() {
        let mut v: serde_json::Value = serde_json::from_str(&sample().to_json()).unwrap();
        v["typo_field"] = 1.into();
        assert!(Genesis::from_json(&v.to_string()).is_err());
        let mut g = sample();
        g.reconfig_wait_ms = g.base_timeout_ms;
        assert!(matches!(
            Genesis::from_json(&g.to_json()),
            Err(GenesisError::Invalid(_))
        ));
        let mut g = sample();
        g.pin_depth = 3;
        assert!(Genesis::from_json(&g.to_json()).is_err());
        let mut g = sample();
        g.version = 2;
        assert!(Genesis::from_json(&g.to_json()).is_err());
    }
}
