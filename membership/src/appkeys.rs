//! dstack's `appkeys.json` (`dstack-types` `AppKeys`): what the KMS hands a CVM at boot and the
//! guest agent reads. The simulator loads it so its `GetKey` answers exactly as a real guest
//! agent with those keys would.
//!
//! Fields: `disk_crypt_key` (hex), `env_crypt_key` (hex, optional), `k256_key` (hex, the app
//! key scalar), `k256_signature` (hex, the KMS signature over the app key, 65 bytes),
//! `gateway_app_id` (string), `ca_cert` (PEM), `key_provider` (externally tagged enum, e.g.
//! `{"Kms": {"url", "pubkey", "tmp_ca_key", "tmp_ca_cert"}}`). Unknown fields are kept.

use k256::ecdsa::SigningKey;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::hexfmt;
use crate::identity::compress;
use crate::kdf::{KeyError, derive_app_key};

/// Why an `appkeys.json` was refused.
#[derive(Debug, Error)]
pub enum AppKeysError {
    /// Not JSON of the expected shape.
    #[error("appkeys.json: {0}")]
    Json(#[from] serde_json::Error),
    /// A hex field is malformed.
    #[error("appkeys.json: {0}")]
    Hex(#[from] hexfmt::HexError),
    /// `k256_key` is not a valid secp256k1 scalar.
    #[error("appkeys.json: k256_key is not a valid secp256k1 secret key")]
    BadKey,
    /// Derivation failed.
    #[error("appkeys.json: {0}")]
    Derive(#[from] KeyError),
}

/// The file as dstack writes it (hex strings kept as text so the file round-trips).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AppKeysFile {
    /// Disk encryption key (hex).
    #[serde(default)]
    pub disk_crypt_key: String,
    /// Environment encryption key (hex).
    #[serde(default)]
    pub env_crypt_key: String,
    /// The app key scalar (hex, 32 bytes).
    pub k256_key: String,
    /// The KMS signature over the app key (hex, 65 bytes; empty without a KMS).
    pub k256_signature: String,
    /// The gateway app id.
    #[serde(default)]
    pub gateway_app_id: String,
    /// The app CA certificate (PEM).
    #[serde(default)]
    pub ca_cert: String,
    /// The key provider, as dstack's externally tagged enum.
    #[serde(default)]
    pub key_provider: serde_json::Value,
    /// Anything else a newer dstack writes.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// The decoded keys a guest agent works with.
#[derive(Debug, Clone)]
pub struct AppKeys {
    /// The app key.
    pub app_key: SigningKey,
    /// The KMS signature over it (`signature_chain[1]` of every `GetKey`).
    pub k256_signature: Vec<u8>,
}

impl AppKeysFile {
    /// Parses the JSON text.
    pub fn parse(text: &str) -> Result<Self, AppKeysError> {
        Ok(serde_json::from_str(text)?)
    }

    /// Decodes the keys.
    pub fn keys(&self) -> Result<AppKeys, AppKeysError> {
        let key = hexfmt::decode_fixed::<32>("appkeys.json k256_key", &self.k256_key)?;
        let app_key = SigningKey::from_slice(&key).map_err(|_| AppKeysError::BadKey)?;
        let k256_signature = hexfmt::decode("appkeys.json k256_signature", &self.k256_signature)?;
        Ok(AppKeys {
            app_key,
            k256_signature,
        })
    }

    /// What a KMS with root `kms_root` would issue to `app_id` (the k256 part is exact; the
    /// other keys are filled with labelled simulator values).
    pub fn issue(kms_root: &SigningKey, app_id: &[u8; 20]) -> Result<Self, AppKeysError> {
        let (app, sig) = derive_app_key(kms_root, app_id)?;
        let root_pub = compress(kms_root.verifying_key());
        Ok(Self {
            disk_crypt_key: hex::encode(crate::kdf::hkdf32(&app.to_bytes(), &[b"sim-disk"])),
            env_crypt_key: String::new(),
            k256_key: hex::encode(app.to_bytes()),
            k256_signature: hex::encode(sig),
            gateway_app_id: String::new(),
            ca_cert: String::new(),
            key_provider: serde_json::json!({
                "Kms": {
                    "url": "simulated",
                    "pubkey": hex::encode(root_pub),
                    "tmp_ca_key": "",
                    "tmp_ca_cert": "",
                }
            }),
            extra: serde_json::Map::new(),
        })
    }
}
