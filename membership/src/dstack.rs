//! A small client for the dstack guest agent (`GetKey`, `Info`, `GetQuote`, `Version`) over its
//! Unix socket or an `http://` URL, and the node identity built from it.
//!
//! Why not the `dstack-sdk` crate (0.1.3): it pulls alloy 1.x beside the workspace's alloy 2.5
//! (two copies of the whole alloy tree), reqwest 0.12 beside alloy's 0.13, x509-parser, and
//! exposes `anyhow` errors; the four calls we need are a few JSON POSTs, done here with hyper 1.

use std::path::PathBuf;
use std::time::Duration;

use alloy::primitives::Address;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;
use k256::ecdsa::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::hexfmt::{self, HexError};
use crate::identity::{self, TrustAnchor, VerifiedIdentity, VerifyError};
use crate::kdf::{self, KeyError};

/// The socket paths dstack's SDKs probe, in their order.
pub const STANDARD_SOCKET_PATHS: &[&str] = &[
    "/var/run/dstack.sock",
    "/run/dstack.sock",
    "/var/run/dstack/dstack.sock",
    "/run/dstack/dstack.sock",
];

/// The environment variable dstack's SDKs read for a simulator endpoint.
pub const SIMULATOR_ENDPOINT_ENV: &str = "DSTACK_SIMULATOR_ENDPOINT";

/// The largest reply accepted from the agent (quotes with event logs stay far below).
pub const MAX_REPLY_BYTES: usize = 4 << 20;

/// The default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Failures talking to the guest agent; each names the endpoint or the malformed field.
#[derive(Debug, Error)]
pub enum DstackError {
    /// The endpoint string is not a path or an `http://` URL.
    #[error("dstack endpoint {0:?}: expected a Unix socket path, unix:PATH or http://HOST:PORT")]
    BadEndpoint(String),
    /// Connecting failed.
    #[error("dstack endpoint {endpoint}: cannot connect: {source}")]
    Connect {
        /// The endpoint.
        endpoint: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The HTTP exchange failed.
    #[error("dstack endpoint {endpoint}: {call}: HTTP failure: {reason}")]
    Http {
        /// The endpoint.
        endpoint: String,
        /// The RPC name.
        call: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// The request took too long.
    #[error("dstack endpoint {endpoint}: {call}: no reply within {timeout:?}")]
    Timeout {
        /// The endpoint.
        endpoint: String,
        /// The RPC name.
        call: &'static str,
        /// The limit.
        timeout: Duration,
    },
    /// The agent answered with an error status.
    #[error("dstack endpoint {endpoint}: {call}: status {status}: {body}")]
    Status {
        /// The endpoint.
        endpoint: String,
        /// The RPC name.
        call: &'static str,
        /// The status.
        status: StatusCode,
        /// The start of the body.
        body: String,
    },
    /// The reply is not the JSON shape dstack defines.
    #[error("dstack endpoint {endpoint}: {call}: malformed reply: {reason}")]
    Malformed {
        /// The endpoint.
        endpoint: String,
        /// The RPC name.
        call: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A hex field of the reply is malformed.
    #[error("dstack reply: {0}")]
    Hex(#[from] HexError),
    /// Key derivation or the instance id was refused.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The returned chain does not verify.
    #[error("dstack key does not verify: {0}")]
    Verify(#[from] VerifyError),
}

/// Where the agent listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix socket path.
    Unix(PathBuf),
    /// An `http://host:port` base URL (no TLS: the agent is local).
    Http {
        /// `host:port`.
        authority: String,
        /// Path prefix without trailing slash.
        base: String,
    },
}

impl Endpoint {
    /// Parses `PATH`, `unix:PATH` or `http://HOST:PORT[/prefix]`.
    pub fn parse(s: &str) -> Result<Self, DstackError> {
        let s = s.trim();
        if let Some(rest) = s.strip_prefix("http://") {
            let (authority, base) = match rest.find('/') {
                Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
                None => (rest, ""),
            };
            if authority.is_empty() {
                return Err(DstackError::BadEndpoint(s.to_string()));
            }
            return Ok(Endpoint::Http {
                authority: authority.to_string(),
                base: base.to_string(),
            });
        }
        let path = s.strip_prefix("unix:").unwrap_or(s);
        if path.is_empty() || s.contains("://") {
            return Err(DstackError::BadEndpoint(s.to_string()));
        }
        Ok(Endpoint::Unix(PathBuf::from(path)))
    }

    /// The endpoint to use when none is given: `DSTACK_SIMULATOR_ENDPOINT`, else the first
    /// standard socket path that exists, else `/var/run/dstack.sock`.
    pub fn discover() -> Result<Self, DstackError> {
        if let Ok(v) = std::env::var(SIMULATOR_ENDPOINT_ENV)
            && !v.trim().is_empty()
        {
            return Self::parse(&v);
        }
        let path = STANDARD_SOCKET_PATHS
            .iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or(&STANDARD_SOCKET_PATHS[0]);
        Ok(Endpoint::Unix(PathBuf::from(path)))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
            Endpoint::Http { authority, base } => write!(f, "http://{authority}{base}"),
        }
    }
}

/// `POST /GetKey` request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GetKeyRequest {
    /// Derivation path.
    pub path: String,
    /// Purpose string the app key signs with the derived key.
    #[serde(default)]
    pub purpose: String,
    /// `secp256k1` (default when absent or empty) or `ed25519`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<String>,
}

/// `POST /GetKey` reply: hex key and hex signatures.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GetKeyResponse {
    /// The derived secret key (hex).
    pub key: String,
    /// `[app_sig, kms_sig]` (hex).
    pub signature_chain: Vec<String>,
}

/// The parts of `POST /Info` the cluster uses; the rest is kept in `raw`.
#[derive(Debug, Clone, PartialEq)]
pub struct Info {
    /// The app id (hex as the agent sent it).
    pub app_id: String,
    /// The instance id (hex as the agent sent it; may be empty).
    pub instance_id: String,
    /// The full reply.
    pub raw: serde_json::Value,
}

impl Info {
    /// Takes the ids out of an `Info` reply (`endpoint` names the agent in errors).
    pub fn from_reply(endpoint: &str, raw: serde_json::Value) -> Result<Self, DstackError> {
        let field = |name: &str| -> Result<String, DstackError> {
            raw.get(name)
                .and_then(|v| v.as_str())
                .map(str::to_string)
                .ok_or_else(|| DstackError::Malformed {
                    endpoint: endpoint.to_string(),
                    call: "Info",
                    reason: format!("missing string field {name:?}"),
                })
        };
        Ok(Info {
            app_id: field("app_id")?,
            instance_id: field("instance_id")?,
            raw: raw.clone(),
        })
    }

    /// The app id as 20 bytes.
    pub fn app_id_bytes(&self) -> Result<[u8; 20], HexError> {
        hexfmt::decode_fixed::<20>("Info.app_id", &self.app_id)
    }
}

/// `POST /GetQuote` reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QuoteResponse {
    /// The quote (hex).
    pub quote: String,
    /// The event log (JSON text).
    #[serde(default)]
    pub event_log: String,
    /// Set by the simulator: the quote is not a TDX quote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simulated: Option<bool>,
}

/// `POST /Version` reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VersionResponse {
    /// Agent version.
    pub version: String,
    /// Source revision.
    #[serde(default)]
    pub rev: String,
}

/// A derived key with its decoded chain.
#[derive(Debug, Clone)]
pub struct DerivedKey {
    /// The secret key.
    pub secret: SigningKey,
    /// `[app_sig, kms_sig]`, decoded.
    pub signature_chain: Vec<Vec<u8>>,
}

impl DerivedKey {
    /// Decodes a `GetKey` reply (`endpoint` names the agent in errors): a valid secp256k1
    /// secret and a two-entry chain of hex signatures.
    pub fn from_reply(endpoint: &str, raw: &GetKeyResponse) -> Result<Self, DstackError> {
        let malformed = |reason: String| DstackError::Malformed {
            endpoint: endpoint.to_string(),
            call: "GetKey",
            reason,
        };
        let key = hexfmt::decode_fixed::<32>("GetKey.key", &raw.key)?;
        let secret = SigningKey::from_slice(&key)
            .map_err(|_| malformed("key is not a valid secp256k1 secret key".into()))?;
        if raw.signature_chain.len() != 2 {
            return Err(malformed(format!(
                "signature_chain has {} entries, expected 2",
                raw.signature_chain.len()
            )));
        }
        let signature_chain = raw
            .signature_chain
            .iter()
            .map(|s| hexfmt::decode("GetKey.signature_chain", s))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(DerivedKey {
            secret,
            signature_chain,
        })
    }

    /// The public key.
    pub fn public(&self) -> VerifyingKey {
        *self.secret.verifying_key()
    }
}

/// The node's identity from dstack: its key at the DESIGN path, with the chain and the ids.
#[derive(Debug, Clone)]
pub struct NodeKey {
    /// The path the key was derived at.
    pub path: String,
    /// The app id from `/Info`.
    pub app_id: [u8; 20],
    /// The normalized instance id from `/Info`.
    pub instance_id: String,
    /// The purpose the chain was requested with.
    pub purpose: String,
    /// The key and chain.
    pub key: DerivedKey,
}

impl NodeKey {
    /// The node's Ethereum address.
    pub fn address(&self) -> Address {
        identity::address_of(self.key.secret.verifying_key())
    }

    /// Verifies the chain against a pinned KMS root.
    pub fn verify(&self, kms_root: identity::KmsRoot) -> Result<VerifiedIdentity, VerifyError> {
        identity::verify_chain(
            &TrustAnchor {
                kms_root,
                app_id: self.app_id,
                purpose: self.purpose.clone(),
            },
            self.key.secret.verifying_key(),
            &self.key.signature_chain,
        )
    }

    /// The instance id as the contract's `bytes20` (left-aligned, zero padded when shorter).
    pub fn instance_id_bytes20(&self) -> Result<[u8; 20], HexError> {
        let bytes = hexfmt::decode("Info.instance_id", &self.instance_id)?;
        if bytes.len() > 20 {
            return Err(HexError::Length {
                field: "Info.instance_id",
                expected: "at most 20".into(),
                got: bytes.len(),
            });
        }
        let mut out = [0u8; 20];
        out[..bytes.len()].copy_from_slice(&bytes);
        Ok(out)
    }
}

/// The guest-agent client.
#[derive(Debug, Clone)]
pub struct DstackClient {
    endpoint: Endpoint,
    timeout: Duration,
}

impl DstackClient {
    /// A client for an explicit endpoint, or the discovered one when `None`.
    pub fn new(endpoint: Option<&str>) -> Result<Self, DstackError> {
        let endpoint = match endpoint {
            Some(e) => Endpoint::parse(e)?,
            None => Endpoint::discover()?,
        };
        Ok(Self {
            endpoint,
            timeout: DEFAULT_TIMEOUT,
        })
    }

    /// Changes the per-request timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The endpoint in use.
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    async fn call<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
        &self,
        call: &'static str,
        req: &Req,
    ) -> Result<Resp, DstackError> {
        let fut = self.call_inner(call, req);
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(DstackError::Timeout {
                endpoint: self.endpoint.to_string(),
                call,
                timeout: self.timeout,
            }),
        }
    }

    async fn call_inner<Req: Serialize, Resp: for<'de> Deserialize<'de>>(
        &self,
        call: &'static str,
        req: &Req,
    ) -> Result<Resp, DstackError> {
        let endpoint = self.endpoint.to_string();
        let http_err = |reason: String| DstackError::Http {
            endpoint: endpoint.clone(),
            call,
            reason,
        };
        let body = serde_json::to_vec(req).map_err(|e| http_err(e.to_string()))?;
        let (uri, host) = match &self.endpoint {
            Endpoint::Unix(_) => (format!("/{call}"), "localhost".to_string()),
            Endpoint::Http { authority, base } => (format!("{base}/{call}"), authority.clone()),
        };
        let request = Request::post(uri)
            .header(hyper::header::HOST, host)
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| http_err(e.to_string()))?;
        let response = match &self.endpoint {
            Endpoint::Unix(path) => {
                let stream = tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(|source| DstackError::Connect {
                        endpoint: endpoint.clone(),
                        source,
                    })?;
                send(TokioIo::new(stream), request).await
            }
            Endpoint::Http { authority, .. } => {
                let stream = tokio::net::TcpStream::connect(authority.as_str())
                    .await
                    .map_err(|source| DstackError::Connect {
                        endpoint: endpoint.clone(),
                        source,
                    })?;
                send(TokioIo::new(stream), request).await
            }
        }
        .map_err(http_err)?;
        let (status, bytes) = response;
        if !status.is_success() {
            let text = String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned();
            return Err(DstackError::Status {
                endpoint,
                call,
                status,
                body: text,
            });
        }
        parse_reply(&endpoint, call, &bytes)
    }

    /// `GetKey(path, purpose)` with the default algorithm (secp256k1), as raw JSON.
    pub async fn get_key_raw(
        &self,
        path: &str,
        purpose: &str,
    ) -> Result<GetKeyResponse, DstackError> {
        self.call(
            "GetKey",
            &GetKeyRequest {
                path: path.to_string(),
                purpose: purpose.to_string(),
                algorithm: Some("secp256k1".into()),
            },
        )
        .await
    }

    /// `GetKey(path, purpose)`, decoded: a valid secp256k1 key and a two-entry chain.
    pub async fn get_key(&self, path: &str, purpose: &str) -> Result<DerivedKey, DstackError> {
        let raw = self.get_key_raw(path, purpose).await?;
        DerivedKey::from_reply(&self.endpoint.to_string(), &raw)
    }

    /// `Info`.
    pub async fn info(&self) -> Result<Info, DstackError> {
        let raw: serde_json::Value = self.call("Info", &serde_json::json!({})).await?;
        Info::from_reply(&self.endpoint.to_string(), raw)
    }

    /// `GetQuote(report_data)` (at most 64 bytes).
    pub async fn get_quote(&self, report_data: &[u8]) -> Result<QuoteResponse, DstackError> {
        if report_data.len() > 64 {
            return Err(DstackError::Http {
                endpoint: self.endpoint.to_string(),
                call: "GetQuote",
                reason: format!("report data is {} bytes, at most 64", report_data.len()),
            });
        }
        self.call(
            "GetQuote",
            &serde_json::json!({ "report_data": hex::encode(report_data) }),
        )
        .await
    }

    /// `Version`.
    pub async fn version(&self) -> Result<VersionResponse, DstackError> {
        self.call("Version", &serde_json::json!({})).await
    }

    /// The node key: `Info` for the app and instance ids, the path built from them (an empty
    /// instance id is refused), then `GetKey` at that path.
    pub async fn node_key(
        &self,
        chain_id: u64,
        contract: Address,
        purpose: &str,
    ) -> Result<NodeKey, DstackError> {
        let info = self.info().await?;
        let app_id = info.app_id_bytes()?;
        let instance_id = kdf::normalize_instance_id(&info.instance_id)?;
        let path = kdf::node_key_path(chain_id, contract, &instance_id)?;
        let key = self.get_key(&path, purpose).await?;
        Ok(NodeKey {
            path,
            app_id,
            instance_id,
            purpose: purpose.to_string(),
            key,
        })
    }
}

/// Decodes the JSON body of a successful reply to `call` (`endpoint` names the agent in errors).
pub fn parse_reply<Resp: for<'de> Deserialize<'de>>(
    endpoint: &str,
    call: &'static str,
    bytes: &[u8],
) -> Result<Resp, DstackError> {
    serde_json::from_slice(bytes).map_err(|e| DstackError::Malformed {
        endpoint: endpoint.to_string(),
        call,
        reason: e.to_string(),
    })
}

async fn send<I>(io: I, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let result = async {
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| e.to_string())?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("reading body: {e}"))?
            .to_bytes();
        Ok((status, body))
    }
    .await;
    driver.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENDPOINT: &str = "unix:/run/dstack.sock";

    #[test]
    fn replies_decode_or_are_refused_naming_the_call_and_field() {
        let e = parse_reply::<GetKeyResponse>(ENDPOINT, "GetKey", b"{").unwrap_err();
        assert!(
            matches!(e, DstackError::Malformed { call: "GetKey", .. }),
            "{e}"
        );
        let mut raw = GetKeyResponse {
            key: "11".repeat(32),
            signature_chain: vec!["00".into()],
        };
        let e = DerivedKey::from_reply(ENDPOINT, &raw).unwrap_err();
        assert!(
            e.to_string().contains("signature_chain has 1 entries"),
            "{e}"
        );
        raw.signature_chain.push("0x01".into());
        let key = DerivedKey::from_reply(ENDPOINT, &raw).unwrap();
        assert_eq!(key.signature_chain, vec![vec![0], vec![1]]);
        raw.key = "00".repeat(32);
        let e = DerivedKey::from_reply(ENDPOINT, &raw).unwrap_err();
        assert!(
            e.to_string().contains("not a valid secp256k1 secret"),
            "{e}"
        );
        let e = Info::from_reply(ENDPOINT, serde_json::json!({ "app_id": "00" })).unwrap_err();
        assert!(e.to_string().contains("instance_id"), "{e}");
    }
}
