//! Signing and verification. Consensus signs the exact digests of `domain` and verifies against
//! the known public key of each member (no key recovery in hot paths). Two schemes:
//! secp256k1 (k256: 65-byte `r ‖ s ‖ v`, v in {0,1}, low s only) for production, and a `Fast`
//! deterministic test scheme (a keyed hash of the exact digest per signer) so the simulator can run
//! hundreds of thousands of rounds while every binding the digest carries is still exercised.

use crate::hash::keccak256;
use crate::types::{Address, PublicKey, Signature};
use k256::ecdsa::{SigningKey, VerifyingKey};
use k256::elliptic_curve::scalar::IsHigh;
use thiserror::Error;

/// Key errors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CryptoError {
    /// The secret is zero or not below the curve order.
    #[error("invalid secp256k1 secret key")]
    InvalidSecret,
    /// Signing failed (never expected with a valid key).
    #[error("signing failed")]
    SigningFailed,
}

/// The address of a public key: the last 20 bytes of keccak256 of its 64 bytes.
pub fn address_of(public: &PublicKey) -> Address {
    let h = keccak256(&public.0);
    let mut a = [0u8; 20];
    a.copy_from_slice(&h[12..]);
    Address(a)
}

/// Something that signs consensus digests as one validator. `Send` so a host can move the core
/// between threads.
pub trait Signer: Send {
    /// The signer's address.
    fn address(&self) -> Address;
    /// The signer's public key.
    fn public_key(&self) -> PublicKey;
    /// Signs a 32-byte digest.
    fn sign(&self, digest: &[u8; 32]) -> Signature;
}

/// Something that checks a signature on a digest against a known member key.
pub trait Verifier {
    /// Whether `sig` is the signature of `key`'s holder on `digest`.
    fn verify(&self, key: &PreparedKey, digest: &[u8; 32], sig: &Signature) -> bool;
}

/// A member's public key, parsed once for the secp256k1 scheme.
#[derive(Clone, Debug)]
pub struct PreparedKey {
    public: PublicKey,
    k256: Option<VerifyingKey>,
}

impl PartialEq for PreparedKey {
    fn eq(&self, other: &Self) -> bool {
        self.public == other.public
    }
}
impl Eq for PreparedKey {}

impl PreparedKey {
    /// Parses `public` (an invalid curve point is kept: it can only fail secp256k1 verification).
    pub fn new(public: PublicKey) -> Self {
        let mut sec1 = [0u8; 65];
        sec1[0] = 4;
        sec1[1..].copy_from_slice(&public.0);
        Self {
            public,
            k256: VerifyingKey::from_sec1_bytes(&sec1).ok(),
        }
    }
    /// The raw key.
    pub fn public(&self) -> &PublicKey {
        &self.public
    }
}

/// The signature scheme of a cluster (real) or a simulation (fast).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// secp256k1 ECDSA via k256.
    Secp256k1,
    /// Deterministic keyed hash; for simulation only, never secure.
    Fast,
}

impl Verifier for Scheme {
    fn verify(&self, key: &PreparedKey, digest: &[u8; 32], sig: &Signature) -> bool {
        match self {
            Scheme::Secp256k1 => verify_k256(key, digest, sig),
            Scheme::Fast => fast_signature(&key.public, digest) == *sig,
        }
    }
}

fn verify_k256(key: &PreparedKey, digest: &[u8; 32], sig: &Signature) -> bool {
    let Some(vk) = &key.k256 else {
        return false;
    };
    if sig.0[64] > 1 {
        return false;
    }
    let Ok(s) = k256::ecdsa::Signature::from_slice(&sig.0[..64]) else {
        return false;
    };
    // k256 refuses high s too; checked here explicitly so the rule does not hang on a dependency.
    if bool::from(s.s().is_high()) {
        return false;
    }
    use k256::ecdsa::signature::hazmat::PrehashVerifier;
    vk.verify_prehash(digest, &s).is_ok()
}

/// The `Fast` scheme's signature of `public`'s holder on `digest`: keccak256 of a tag, the key and
/// the digest, in the first 32 bytes.
pub fn fast_signature(public: &PublicKey, digest: &[u8; 32]) -> Signature {
    let mut input = Vec::with_capacity(16 + 64 + 32);
    input.extend_from_slice(b"DSTACK_FAST_TEST");
    input.extend_from_slice(&public.0);
    input.extend_from_slice(digest);
    let mut s = [0u8; 65];
    s[..32].copy_from_slice(&keccak256(&input));
    Signature(s)
}

/// A secp256k1 signer over a secret key.
pub struct K256Signer {
    key: SigningKey,
    public: PublicKey,
    address: Address,
}

impl std::fmt::Debug for K256Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("K256Signer")
            .field("address", &self.address)
            .finish()
    }
}

impl K256Signer {
    /// A signer for a 32-byte secret.
    pub fn from_secret(secret: &[u8; 32]) -> Result<Self, CryptoError> {
        let key = SigningKey::from_slice(secret).map_err(|_| CryptoError::InvalidSecret)?;
        let point = key.verifying_key().to_encoded_point(false);
        let mut public = [0u8; 64];
        public.copy_from_slice(&point.as_bytes()[1..]);
        let public = PublicKey(public);
        Ok(Self {
            key,
            address: address_of(&public),
            public,
        })
    }
    /// A deterministic signer for tests and the simulator: the secret is keccak256 of the seed.
    pub fn from_seed(seed: u64) -> Self {
        let mut secret = keccak256(&seed.to_be_bytes());
        loop {
            if let Ok(s) = Self::from_secret(&secret) {
                return s;
            }
            secret = keccak256(&secret);
        }
    }
    /// Signs, returning an error only if k256 does (it never does for a valid key).
    pub fn try_sign(&self, digest: &[u8; 32]) -> Result<Signature, CryptoError> {
        let (sig, recid) = self
            .key
            .sign_prehash_recoverable(digest)
            .map_err(|_| CryptoError::SigningFailed)?;
        // k256 already returns low s (with the recovery id adjusted); normalize defensively.
        let (sig, odd) = match sig.normalize_s() {
            Some(low) => (low, !recid.is_y_odd()),
            None => (sig, recid.is_y_odd()),
        };
        let mut out = [0u8; 65];
        out[..64].copy_from_slice(&sig.to_bytes());
        out[64] = u8::from(odd);
        Ok(Signature(out))
    }
}

impl Signer for K256Signer {
    fn address(&self) -> Address {
        self.address
    }
    fn public_key(&self) -> PublicKey {
        self.public
    }
    fn sign(&self, digest: &[u8; 32]) -> Signature {
        // Only fails for an invalid key, which `from_secret` refuses; a zero signature then simply
        // fails verification everywhere.
        self.try_sign(digest).unwrap_or(Signature([0; 65]))
    }
}

/// The `Fast` test scheme's signer: its "public key" is 64 pseudo-random bytes.
#[derive(Clone, Debug)]
pub struct FastSigner {
    public: PublicKey,
    address: Address,
}

impl FastSigner {
    /// A deterministic fast signer for `seed`.
    pub fn from_seed(seed: u64) -> Self {
        let a = keccak256(&[b"fast-a".as_slice(), &seed.to_be_bytes()].concat());
        let b = keccak256(&[b"fast-b".as_slice(), &seed.to_be_bytes()].concat());
        let mut public = [0u8; 64];
        public[..32].copy_from_slice(&a);
        public[32..].copy_from_slice(&b);
        let public = PublicKey(public);
        Self {
            address: address_of(&public),
            public,
        }
    }
}

impl Signer for FastSigner {
    fn address(&self) -> Address {
        self.address
    }
    fn public_key(&self) -> PublicKey {
        self.public
    }
    fn sign(&self, digest: &[u8; 32]) -> Signature {
        fast_signature(&self.public, digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k256_sign_verify_low_s_and_v() {
        let s = K256Signer::from_seed(1);
        let key = PreparedKey::new(s.public_key());
        let d = keccak256(b"hello");
        let sig = s.sign(&d);
        assert!(sig.0[64] <= 1);
        assert!(Scheme::Secp256k1.verify(&key, &d, &sig));
        assert!(!Scheme::Secp256k1.verify(&key, &keccak256(b"other"), &sig));
        // Another member's key does not verify it.
        let other = PreparedKey::new(K256Signer::from_seed(2).public_key());
        assert!(!Scheme::Secp256k1.verify(&other, &d, &sig));
        // v outside {0,1} is refused.
        let mut bad_v = sig;
        bad_v.0[64] = 27;
        assert!(!Scheme::Secp256k1.verify(&key, &d, &bad_v));
    }

    #[test]
    fn k256_refuses_high_s() {
        let s = K256Signer::from_seed(3);
        let key = PreparedKey::new(s.public_key());
        let d = keccak256(b"msg");
        let sig = s.sign(&d);
        let parsed = k256::ecdsa::Signature::from_slice(&sig.0[..64]).expect("valid");
        // s' = n - s is the high-s twin of the same signature: valid ECDSA, refused by the rule.
        let high_s = -*parsed.s();
        let twin = k256::ecdsa::Signature::from_scalars(parsed.r().to_bytes(), high_s.to_bytes())
            .expect("valid scalars");
        let mut bytes = [0u8; 65];
        bytes[..64].copy_from_slice(&twin.to_bytes());
        bytes[64] = 1 - sig.0[64];
        assert!(!Scheme::Secp256k1.verify(&key, &d, &Signature(bytes)));
    }

    #[test]
    fn address_matches_known_vector() {
        // Private key 1: the generator point; its address is well known.
        let mut secret = [0u8; 32];
        secret[31] = 1;
        let s = K256Signer::from_secret(&secret).expect("valid");
        assert_eq!(
            format!("{}", s.address()),
            "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf"
        );
    }

    #[test]
    fn fast_scheme_binds_signer_and_digest() {
        let a = FastSigner::from_seed(1);
        let b = FastSigner::from_seed(2);
        let d = keccak256(b"x");
        let sig = a.sign(&d);
        assert!(Scheme::Fast.verify(&PreparedKey::new(a.public_key()), &d, &sig));
        assert!(!Scheme::Fast.verify(&PreparedKey::new(b.public_key()), &d, &sig));
        assert!(!Scheme::Fast.verify(&PreparedKey::new(a.public_key()), &[0; 32], &sig));
    }
}
