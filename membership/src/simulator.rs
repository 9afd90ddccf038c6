//! The dstack guest-agent simulator: the same HTTP API (`GetKey`, `Info`, `GetQuote`,
//! `Version`) on a Unix socket and optionally TCP, for local clusters and tests.
//!
//! Two sources of keys: dstack's own `appkeys.json` (then `GetKey` returns byte for byte what
//! the real guest agent returns with those keys), or a KMS root key (then the app key and its
//! KMS signature are derived as dstack's KMS does, so chains verify against that root).

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use k256::ecdsa::SigningKey;
use serde_json::json;

use crate::appkeys::{AppKeys, AppKeysError, AppKeysFile};
use crate::dstack::{GetKeyRequest, GetKeyResponse, QuoteResponse, VersionResponse};
use crate::identity::compress;
use crate::kdf::{app_signature, derive_path_key};

/// The largest request body the simulator reads.
const MAX_REQUEST_BYTES: usize = 64 << 10;

/// The marker every simulated quote starts with, so nothing mistakes it for a TDX quote.
pub const SIMULATED_QUOTE_MARKER: &[u8] = b"DSTACK-SIMULATOR-QUOTE-NOT-A-TDX-QUOTE:";

/// What the simulator serves.
#[derive(Debug, Clone)]
pub struct Simulator {
    keys: Arc<AppKeys>,
    app_id: [u8; 20],
    instance_id: String,
    kms_root_public: Option<[u8; 33]>,
}

impl Simulator {
    /// A simulator answering with dstack app keys (from `appkeys.json`).
    pub fn from_app_keys(keys: AppKeys, app_id: [u8; 20], instance_id: &str) -> Self {
        Self {
            keys: Arc::new(keys),
            app_id,
            instance_id: crate::hexfmt::strip_0x(instance_id).to_ascii_lowercase(),
            kms_root_public: None,
        }
    }

    /// A simulator acting as a full KMS with root `kms_root`.
    pub fn from_kms_root(
        kms_root: &SigningKey,
        app_id: [u8; 20],
        instance_id: &str,
    ) -> Result<Self, AppKeysError> {
        let keys = AppKeysFile::issue(kms_root, &app_id)?.keys()?;
        let mut sim = Self::from_app_keys(keys, app_id, instance_id);
        sim.kms_root_public = Some(compress(kms_root.verifying_key()));
        Ok(sim)
    }

    /// The `GetKey` answer, exactly as dstack's guest agent computes it.
    pub fn get_key(&self, req: &GetKeyRequest) -> Result<GetKeyResponse, String> {
        match req.algorithm.as_deref().unwrap_or("") {
            "" | "secp256k1" | "k256" => {}
            other => return Err(format!("Unsupported algorithm: {other}")),
        }
        let derived = derive_path_key(&self.keys.app_key, &req.path).map_err(|e| e.to_string())?;
        let app_sig = app_signature(&self.keys.app_key, &req.purpose, derived.verifying_key());
        Ok(GetKeyResponse {
            key: hex::encode(derived.to_bytes()),
            signature_chain: vec![hex::encode(app_sig), hex::encode(&self.keys.k256_signature)],
        })
    }

    /// The `Info` answer.
    pub fn info(&self) -> serde_json::Value {
        let tcb = json!({
            "mrtd": "", "rtmr0": "", "rtmr1": "", "rtmr2": "", "rtmr3": "",
            "os_image_hash": "", "compose_hash": "", "device_id": "",
            "app_compose": "", "event_log": [], "simulated": true,
        });
        let key_provider = match &self.kms_root_public {
            Some(pk) => json!({ "name": "kms", "id": hex::encode(pk) }).to_string(),
            None => json!({ "name": "kms", "id": "" }).to_string(),
        };
        json!({
            "app_id": hex::encode(self.app_id),
            "instance_id": self.instance_id,
            "app_cert": "",
            "tcb_info": tcb.to_string(),
            "app_name": "dstack-simulator",
            "device_id": "",
            "mr_aggregated": "",
            "os_image_hash": "",
            "key_provider_info": key_provider,
            "compose_hash": "",
            "vm_config": "",
            "cloud_vendor": "simulated",
            "cloud_product": "dstack-simulator",
        })
    }

    /// A quote clearly marked as simulated: marker ‖ report data (padded to 64 bytes).
    pub fn quote(&self, report_data_hex: &str) -> Result<QuoteResponse, String> {
        let data =
            crate::hexfmt::decode("report_data", report_data_hex).map_err(|e| e.to_string())?;
        if data.len() > 64 {
            return Err("Report data is too long".into());
        }
        let mut quote = SIMULATED_QUOTE_MARKER.to_vec();
        let mut padded = [0u8; 64];
        padded[..data.len()].copy_from_slice(&data);
        quote.extend_from_slice(&padded);
        Ok(QuoteResponse {
            quote: hex::encode(quote),
            event_log: "[]".into(),
            simulated: Some(true),
        })
    }

    async fn handle(self, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
        let path = req.uri().path().trim_start_matches("/prpc").to_string();
        let method = req.method().clone();
        let body = match Limited::new(req.into_body(), MAX_REQUEST_BYTES)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                return Ok(reply(
                    StatusCode::BAD_REQUEST,
                    json!({ "error": e.to_string() }),
                ));
            }
        };
        if method != Method::POST && method != Method::GET {
            return Ok(reply(
                StatusCode::METHOD_NOT_ALLOWED,
                json!({ "error": "use POST" }),
            ));
        }
        let json_body = || -> Result<serde_json::Value, String> {
            if body.is_empty() {
                Ok(json!({}))
            } else {
                serde_json::from_slice(&body).map_err(|e| format!("invalid JSON body: {e}"))
            }
        };
        let result: Result<serde_json::Value, String> = match path.trim_end_matches('/') {
            "/GetKey" => json_body()
                .and_then(|v| serde_json::from_value::<GetKeyRequest>(v).map_err(|e| e.to_string()))
                .and_then(|r| self.get_key(&r))
                .and_then(|r| serde_json::to_value(r).map_err(|e| e.to_string())),
            "/Info" => Ok(self.info()),
            "/GetQuote" => json_body()
                .and_then(|v| {
                    self.quote(v.get("report_data").and_then(|d| d.as_str()).unwrap_or(""))
                })
                .and_then(|r| serde_json::to_value(r).map_err(|e| e.to_string())),
            "/Version" => serde_json::to_value(VersionResponse {
                version: format!("dstack-simulator {}", env!("CARGO_PKG_VERSION")),
                rev: "simulated".into(),
            })
            .map_err(|e| e.to_string()),
            other => {
                return Ok(reply(
                    StatusCode::NOT_FOUND,
                    json!({ "error": format!("no such method {other}") }),
                ));
            }
        };
        Ok(match result {
            Ok(v) => reply(StatusCode::OK, v),
            Err(e) => reply(StatusCode::BAD_REQUEST, json!({ "error": e })),
        })
    }

    async fn serve_conn<I>(self, io: I)
    where
        I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    {
        let service = hyper::service::service_fn(move |req| self.clone().handle(req));
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await
        {
            tracing::debug!("simulator connection ended: {e}");
        }
    }

    /// Serves on a bound Unix listener until the task is dropped.
    pub async fn serve_unix(self, listener: tokio::net::UnixListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(self.clone().serve_conn(TokioIo::new(stream)));
                }
                Err(e) => tracing::warn!("simulator accept failed: {e}"),
            }
        }
    }

    /// Serves on a bound TCP listener until the task is dropped.
    pub async fn serve_tcp(self, listener: tokio::net::TcpListener) {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    tokio::spawn(self.clone().serve_conn(TokioIo::new(stream)));
                }
                Err(e) => tracing::warn!("simulator accept failed: {e}"),
            }
        }
    }

    /// Binds `path` (removing a stale socket file first) and serves on a spawned task.
    pub fn spawn_unix(self, path: &Path) -> std::io::Result<tokio::task::JoinHandle<()>> {
        if path.exists() {
            std::fs::remove_file(path)?;
        }
        let listener = tokio::net::UnixListener::bind(path)?;
        Ok(tokio::spawn(self.serve_unix(listener)))
    }
}

fn reply(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}
