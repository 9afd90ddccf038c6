//! The dstack signature chain: its exact messages and an off-chain verifier that is as strict as
//! the contract. A node is admitted only through this chain, so every check has its own error.
//!
//! Chain (dstack `guest-agent` `GetKey` and `kms/src/crypto.rs`):
//! - `app_sig`: the app key signs `keccak256(utf8(purpose + ":" + hex(derived_pub33)))`;
//! - `kms_sig`: the KMS root signs `keccak256(b"dstack-kms-issued:" ‖ app_id ‖ app_pub33)`;
//!
//! both 65 bytes `r ‖ s ‖ v` with `v` in {0, 1} (27/28 accepted), low `s`.

use alloy::primitives::{Address, keccak256};
use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::hexfmt::{self, HexError};

/// The prefix of the message the KMS root signs over an app key.
pub const KMS_MESSAGE_PREFIX: &[u8] = b"dstack-kms-issued:";

/// Which signature of the chain a check is about, so errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SigRole {
    /// The app key's signature over the derived key (`signature_chain[0]`).
    App,
    /// The KMS root's signature over the app key (`signature_chain[1]`).
    Kms,
    /// Any other signature parsed with the same rules (e.g. a node signature).
    Other,
}

impl std::fmt::Display for SigRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SigRole::App => "app signature (signature_chain[0])",
            SigRole::Kms => "kms signature (signature_chain[1])",
            SigRole::Other => "signature",
        })
    }
}

/// Every way a chain can fail; each variant is one check, named in its message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// Input text was not hex of the right size.
    #[error(transparent)]
    Hex(#[from] HexError),
    /// The chain does not have exactly two signatures.
    #[error("signature chain must have exactly 2 entries (app, kms), got {0}")]
    ChainLength(usize),
    /// The KMS signature is empty: a deployment without KMS cannot be verified.
    #[error("kms signature (signature_chain[1]) is empty: non-KMS deployments are refused")]
    KmsSignatureEmpty,
    /// A signature is not 65 bytes.
    #[error("{role}: must be 65 bytes r||s||v, got {got}")]
    SignatureLength {
        /// Which signature.
        role: SigRole,
        /// Its length.
        got: usize,
    },
    /// The recovery byte is not 0, 1, 27 or 28.
    #[error("{role}: recovery byte v = {v} is not 0, 1, 27 or 28")]
    BadV {
        /// Which signature.
        role: SigRole,
        /// The byte.
        v: u8,
    },
    /// `r` or `s` is zero or not below the curve order.
    #[error("{role}: r or s is zero or not below the curve order")]
    BadScalar {
        /// Which signature.
        role: SigRole,
    },
    /// `s` is in the upper half of the order (malleable form).
    #[error("{role}: high s (s > n/2) is refused")]
    HighS {
        /// Which signature.
        role: SigRole,
    },
    /// No public key can be recovered from the signature and message.
    #[error("{role}: no public key recovers from it")]
    Recovery {
        /// Which signature.
        role: SigRole,
    },
    /// A public key has a length other than 33, 64 or 65 bytes.
    #[error(
        "{field}: public key must be 33 (compressed), 64 (x||y) or 65 (04||x||y) bytes, got {got}"
    )]
    PublicKeyLength {
        /// Which input.
        field: &'static str,
        /// Its length.
        got: usize,
    },
    /// The bytes are not a point on secp256k1.
    #[error("{field}: not a valid secp256k1 public key")]
    PublicKeyInvalid {
        /// Which input.
        field: &'static str,
    },
    /// The KMS signature recovers to another key than the pinned KMS root. This is what a wrong
    /// app id, purpose, derived key, app signature or KMS root leads to.
    #[error(
        "kms signature recovers to {recovered}, not to the pinned KMS root {expected} \
         (wrong KMS root, app id, purpose, derived key or a forged signature)"
    )]
    KmsRootMismatch {
        /// The pinned root, as text.
        expected: String,
        /// The address the signature recovered to.
        recovered: Address,
    },
    /// The recovered app key differs from the app key the proof claims.
    #[error("app signature recovers to app key {recovered}, not to the claimed app key {claimed}")]
    AppKeyMismatch {
        /// The claimed app key address.
        claimed: Address,
        /// The recovered one.
        recovered: Address,
    },
}

/// The KMS root a cluster pins: its address (what the contract stores) or its public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KmsRoot {
    /// Pinned by Ethereum address.
    Address(Address),
    /// Pinned by public key (what dstack's `key_provider_info.id` shows, compressed).
    PublicKey(VerifyingKey),
}

impl KmsRoot {
    /// Parses `0x` + 40 hex digits as an address, or 33/64/65 hex bytes as a public key.
    pub fn parse(s: &str) -> Result<Self, VerifyError> {
        let bytes = hexfmt::decode("kms root", s)?;
        if bytes.len() == 20 {
            return Ok(KmsRoot::Address(Address::from_slice(&bytes)));
        }
        parse_public_key("kms root", &bytes).map(KmsRoot::PublicKey)
    }

    /// The root's Ethereum address.
    pub fn address(&self) -> Address {
        match self {
            KmsRoot::Address(a) => *a,
            KmsRoot::PublicKey(k) => address_of(k),
        }
    }
}

impl std::fmt::Display for KmsRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KmsRoot::Address(a) => write!(f, "{a}"),
            KmsRoot::PublicKey(k) => write!(f, "{} ({})", hex::encode(compress(k)), address_of(k)),
        }
    }
}

/// What a chain must be anchored in: the pinned KMS root, app id and purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustAnchor {
    /// The KMS root that must have signed the app key.
    pub kms_root: KmsRoot,
    /// The dstack app id (20 bytes) the KMS must have signed the app key for.
    pub app_id: [u8; 20],
    /// The purpose string the app key must have signed the derived key for.
    pub purpose: String,
}

/// A derived key whose chain verified: everything the contract and the node need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedIdentity {
    /// The node's derived public key.
    pub derived_key: VerifyingKey,
    /// Its Ethereum address (the node address on chain).
    pub derived_address: Address,
    /// The app key recovered from the app signature.
    pub app_key: VerifyingKey,
    /// Its address.
    pub app_address: Address,
    /// The KMS root address the chain ends in.
    pub kms_root: Address,
    /// The app id the KMS signed.
    pub app_id: [u8; 20],
}

/// A signature as dstack writes it: `r ‖ s ‖ v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoverableSig {
    /// The (low-s) ECDSA signature.
    pub signature: Signature,
    /// The recovery id (0 or 1).
    pub recovery_id: RecoveryId,
}

impl RecoverableSig {
    /// Parses 65 bytes `r ‖ s ‖ v` with the contract's rules: v in {0,1,27,28}, nonzero scalars
    /// below the order, low s.
    pub fn parse(role: SigRole, bytes: &[u8]) -> Result<Self, VerifyError> {
        if bytes.len() != 65 {
            return Err(VerifyError::SignatureLength {
                role,
                got: bytes.len(),
            });
        }
        let v = bytes[64];
        let recid = match v {
            0 | 27 => 0u8,
            1 | 28 => 1u8,
            _ => return Err(VerifyError::BadV { role, v }),
        };
        let signature =
            Signature::from_slice(&bytes[..64]).map_err(|_| VerifyError::BadScalar { role })?;
        if signature.normalize_s().is_some() {
            return Err(VerifyError::HighS { role });
        }
        let recovery_id = RecoveryId::from_byte(recid).ok_or(VerifyError::BadV { role, v })?;
        Ok(Self {
            signature,
            recovery_id,
        })
    }

    /// The 65-byte dstack encoding (v in {0,1}).
    pub fn to_bytes(&self) -> [u8; 65] {
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&self.signature.to_bytes());
        out[64] = self.recovery_id.to_byte();
        out
    }

    /// Recovers the signer of a 32-byte prehash.
    pub fn recover(&self, role: SigRole, prehash: &[u8; 32]) -> Result<VerifyingKey, VerifyError> {
        VerifyingKey::recover_from_prehash(prehash, &self.signature, self.recovery_id)
            .map_err(|_| VerifyError::Recovery { role })
    }
}

/// Signs a 32-byte prehash exactly as dstack does (RFC 6979, low s, `r ‖ s ‖ v`, v in {0,1}).
pub fn sign_prehash(key: &SigningKey, prehash: &[u8; 32]) -> [u8; 65] {
    // k256 signs deterministically and normalizes s; a failure means the prehash reduced to a
    // degenerate nonce, which cannot happen for keccak outputs in practice.
    match key.sign_prehash_recoverable(prehash) {
        Ok((signature, recovery_id)) => RecoverableSig {
            signature,
            recovery_id,
        }
        .to_bytes(),
        Err(_) => [0u8; 65],
    }
}

/// Parses a public key of 33 (compressed), 65 (`04 ‖ x ‖ y`) or 64 (`x ‖ y`) bytes.
pub fn parse_public_key(field: &'static str, bytes: &[u8]) -> Result<VerifyingKey, VerifyError> {
    // Only the SEC1 tags Ethereum tools use: sec1 also parses "compact" (0x05) and identity
    // tags, which would give one key several accepted encodings.
    let key = match bytes.len() {
        33 if bytes[0] == 2 || bytes[0] == 3 => VerifyingKey::from_sec1_bytes(bytes),
        65 if bytes[0] == 4 => VerifyingKey::from_sec1_bytes(bytes),
        33 | 65 => return Err(VerifyError::PublicKeyInvalid { field }),
        64 => {
            let mut full = [0u8; 65];
            full[0] = 4;
            full[1..].copy_from_slice(bytes);
            VerifyingKey::from_sec1_bytes(&full)
        }
        got => return Err(VerifyError::PublicKeyLength { field, got }),
    };
    key.map_err(|_| VerifyError::PublicKeyInvalid { field })
}

/// The 33-byte compressed form (what dstack hex-encodes into the app message).
pub fn compress(key: &VerifyingKey) -> [u8; 33] {
    let point = key.to_encoded_point(true);
    let mut out = [0u8; 33];
    out.copy_from_slice(point.as_bytes());
    out
}

/// The 64-byte `x ‖ y` form (what the contract takes).
pub fn uncompressed64(key: &VerifyingKey) -> [u8; 64] {
    let point = key.to_encoded_point(false);
    let mut out = [0u8; 64];
    out.copy_from_slice(&point.as_bytes()[1..]);
    out
}

/// The Ethereum address of a key: the last 20 bytes of keccak256(x ‖ y).
pub fn address_of(key: &VerifyingKey) -> Address {
    Address::from_raw_public_key(&uncompressed64(key))
}

/// The app message: `purpose ":" hex(derived_pub33)` (lowercase hex, no prefix).
pub fn app_message(purpose: &str, derived_key: &VerifyingKey) -> String {
    format!("{purpose}:{}", hex::encode(compress(derived_key)))
}

/// keccak256 of [`app_message`] (raw keccak, no EIP-191 prefix).
pub fn app_message_hash(purpose: &str, derived_key: &VerifyingKey) -> [u8; 32] {
    keccak256(app_message(purpose, derived_key).as_bytes()).0
}

/// The 71-byte KMS message `"dstack-kms-issued:" ‖ app_id ‖ app_pub33`.
pub fn kms_message(app_id: &[u8; 20], app_key: &VerifyingKey) -> [u8; 71] {
    let mut out = [0u8; 71];
    out[..18].copy_from_slice(KMS_MESSAGE_PREFIX);
    out[18..38].copy_from_slice(app_id);
    out[38..].copy_from_slice(&compress(app_key));
    out
}

/// keccak256 of [`kms_message`].
pub fn kms_message_hash(app_id: &[u8; 20], app_key: &VerifyingKey) -> [u8; 32] {
    keccak256(kms_message(app_id, app_key)).0
}

/// Verifies a signature chain for `derived_key` against the anchor.
///
/// `chain` is `[app_sig, kms_sig]` as `/GetKey` returns it (decoded bytes).
pub fn verify_chain<S: AsRef<[u8]>>(
    anchor: &TrustAnchor,
    derived_key: &VerifyingKey,
    chain: &[S],
) -> Result<VerifiedIdentity, VerifyError> {
    let [app_sig, kms_sig] = chain else {
        return Err(VerifyError::ChainLength(chain.len()));
    };
    let (app_sig, kms_sig) = (app_sig.as_ref(), kms_sig.as_ref());
    if kms_sig.is_empty() {
        return Err(VerifyError::KmsSignatureEmpty);
    }
    let app_sig = RecoverableSig::parse(SigRole::App, app_sig)?;
    let kms_sig = RecoverableSig::parse(SigRole::Kms, kms_sig)?;
    let app_key = app_sig.recover(
        SigRole::App,
        &app_message_hash(&anchor.purpose, derived_key),
    )?;
    let root = kms_sig.recover(SigRole::Kms, &kms_message_hash(&anchor.app_id, &app_key))?;
    let matches = match &anchor.kms_root {
        KmsRoot::Address(a) => address_of(&root) == *a,
        KmsRoot::PublicKey(k) => root == *k,
    };
    if !matches {
        return Err(VerifyError::KmsRootMismatch {
            expected: anchor.kms_root.to_string(),
            recovered: address_of(&root),
        });
    }
    Ok(VerifiedIdentity {
        derived_key: *derived_key,
        derived_address: address_of(derived_key),
        app_address: address_of(&app_key),
        app_key,
        kms_root: address_of(&root),
        app_id: anchor.app_id,
    })
}

/// Verifies a chain given as text, the way the CLI and `/GetKey` hand it over: hex public key
/// (33/64/65 bytes) and `[app_sig_hex, kms_sig_hex]`.
pub fn verify_chain_hex(
    anchor: &TrustAnchor,
    derived_pubkey_hex: &str,
    chain_hex: &[&str],
) -> Result<VerifiedIdentity, VerifyError> {
    let key_bytes = hexfmt::decode("derived public key", derived_pubkey_hex)?;
    let derived = parse_public_key("derived public key", &key_bytes)?;
    let mut chain = Vec::with_capacity(chain_hex.len());
    for (i, s) in chain_hex.iter().enumerate() {
        let field = if i == 0 {
            "app signature"
        } else {
            "kms signature"
        };
        chain.push(hexfmt::decode(field, s)?);
    }
    verify_chain(anchor, &derived, &chain)
}

/// Checks, as the contract does, that a proof's claimed app key is the one its app signature
/// recovers to (the old prototype skipped this and could be forged with any KMS-signed app key).
pub fn check_claimed_app_key(
    identity: &VerifiedIdentity,
    claimed_app_key: &VerifyingKey,
) -> Result<(), VerifyError> {
    if identity.app_key != *claimed_app_key {
        return Err(VerifyError::AppKeyMismatch {
            claimed: address_of(claimed_app_key),
            recovered: identity.app_address,
        });
    }
    Ok(())
}
