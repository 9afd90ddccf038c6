//! dstack's key derivations, byte for byte (`ra-tls/src/kdf.rs`, `kms/src/crypto.rs`,
//! `guest-agent/src/rpc_service.rs`), and the node's key path (DESIGN section 2).
//!
//! - HKDF-SHA256 with salt `b"RATLS"`, 32-byte output, info = the concatenated context parts;
//!   the output is used as the secp256k1 scalar as is (an output of zero or not below the order
//!   is an error in dstack too, never reduced).
//! - App key = HKDF(KMS root scalar, info = app_id ‖ `b"app-key"`).
//! - Path key = HKDF(app key scalar, info = path bytes).

use alloy::primitives::Address;
use hkdf::Hkdf;
use k256::ecdsa::{SigningKey, VerifyingKey};
use sha2::Sha256;
use thiserror::Error;

use crate::identity::{app_message_hash, kms_message_hash, sign_prehash};

/// The HKDF salt dstack uses for every derivation.
pub const HKDF_SALT: &[u8] = b"RATLS";

/// The first component of every node key path.
pub const NODE_KEY_PATH_PREFIX: &str = "dstack-nft-cluster";

/// Derivation failures.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// The HKDF output is not a valid secp256k1 scalar (zero or not below the order); dstack
    /// refuses it the same way. Probability about 2^-128.
    #[error("derived bytes are not a valid secp256k1 secret key")]
    InvalidScalar,
    /// The instance id from `/Info` is empty: dstack's `no_instance_id` would give every
    /// instance of the app the same node key.
    #[error(
        "dstack Info.instance_id is empty (app deployed with no_instance_id): every instance \
         would derive the same node key; refusing"
    )]
    EmptyInstanceId,
    /// The instance id is not hex.
    #[error("dstack Info.instance_id {0:?} is not hex")]
    InstanceIdNotHex(String),
}

/// HKDF-SHA256(salt "RATLS") with the context parts concatenated as info; 32 bytes.
pub fn hkdf32(ikm: &[u8], context: &[&[u8]]) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(HKDF_SALT), ikm);
    let info: Vec<u8> = context.concat();
    let mut out = [0u8; 32];
    // 32 bytes is far below HKDF-SHA256's limit of 255 * 32, so expand cannot fail.
    if hk.expand(&info, &mut out).is_err() {
        out = [0u8; 32];
    }
    out
}

fn scalar(bytes: &[u8; 32]) -> Result<SigningKey, KeyError> {
    SigningKey::from_slice(bytes).map_err(|_| KeyError::InvalidScalar)
}

/// The app key the KMS derives for `app_id` from its root key, and the KMS signature over it
/// (`kms/src/crypto.rs::derive_k256_key`).
pub fn derive_app_key(
    kms_root: &SigningKey,
    app_id: &[u8; 20],
) -> Result<(SigningKey, [u8; 65]), KeyError> {
    let app = scalar(&hkdf32(&kms_root.to_bytes(), &[app_id, b"app-key"]))?;
    let sig = kms_signature(kms_root, app_id, app.verifying_key());
    Ok((app, sig))
}

/// The KMS root's signature over an app key.
pub fn kms_signature(kms_root: &SigningKey, app_id: &[u8; 20], app_key: &VerifyingKey) -> [u8; 65] {
    sign_prehash(kms_root, &kms_message_hash(app_id, app_key))
}

/// The key the guest agent derives for `path` from the app key (`GetKey`, secp256k1).
pub fn derive_path_key(app_key: &SigningKey, path: &str) -> Result<SigningKey, KeyError> {
    scalar(&hkdf32(&app_key.to_bytes(), &[path.as_bytes()]))
}

/// The app key's signature over a derived key for `purpose` (`GetKey`'s `signature_chain[0]`).
pub fn app_signature(app_key: &SigningKey, purpose: &str, derived: &VerifyingKey) -> [u8; 65] {
    sign_prehash(app_key, &app_message_hash(purpose, derived))
}

/// Normalizes `Info.instance_id` (lowercase hex, no prefix) and refuses an empty one.
pub fn normalize_instance_id(instance_id: &str) -> Result<String, KeyError> {
    let id = crate::hexfmt::strip_0x(instance_id).to_ascii_lowercase();
    if id.is_empty() {
        return Err(KeyError::EmptyInstanceId);
    }
    if !id.bytes().all(|b| b.is_ascii_hexdigit()) || !id.len().is_multiple_of(2) {
        return Err(KeyError::InstanceIdNotHex(instance_id.to_string()));
    }
    Ok(id)
}

/// The node key path, built in code and never configurable (DESIGN section 2):
/// `dstack-nft-cluster/<chain id>/<contract 0x lowercase>/<instance id lowercase hex>`.
pub fn node_key_path(
    chain_id: u64,
    contract: Address,
    instance_id: &str,
) -> Result<String, KeyError> {
    let id = normalize_instance_id(instance_id)?;
    Ok(format!(
        "{NODE_KEY_PATH_PREFIX}/{chain_id}/0x{}/{id}",
        hex::encode(contract.as_slice())
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_is_lowercase_and_refuses_empty_instance_id() {
        let c: Address = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
            .parse()
            .unwrap();
        assert_eq!(
            node_key_path(31337, c, "0xABCDEF").unwrap(),
            "dstack-nft-cluster/31337/0x5fbdb2315678afecb367f032d93f642f64180aa3/abcdef"
        );
        assert_eq!(node_key_path(1, c, ""), Err(KeyError::EmptyInstanceId));
        assert_eq!(node_key_path(1, c, "0x"), Err(KeyError::EmptyInstanceId));
        assert!(matches!(
            node_key_path(1, c, "xyz1"),
            Err(KeyError::InstanceIdNotHex(_))
        ));
    }

    #[test]
    fn hkdf_matches_rfc5869_structure() {
        // Different context splits with the same concatenation give the same key (ring's
        // expand concatenates the info parts, as dstack relies on).
        assert_eq!(hkdf32(b"k", &[b"ab", b"c"]), hkdf32(b"k", &[b"abc"]));
        assert_ne!(hkdf32(b"k", &[b"abc"]), hkdf32(b"k2", &[b"abc"]));
    }
}
