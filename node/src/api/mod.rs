//! The HTTP JSON API and the Prometheus endpoint (DESIGN section 9).
//!
//! Routes: `GET /health`, `GET /status`, `GET /validators`, `GET /blocks/latest`,
//! `GET /blocks/{height}`, `POST /txs`, `GET /txs/{hash}`, `GET /kv/{key}`,
//! `GET /registration?token_id=N`, `GET /metrics`.
//!
//! The consensus driver publishes what it knows in a [`SharedStatus`]; the API only reads it, the
//! store and the mempool, so it is testable without consensus.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::Json;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prost::Message;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{Notify, watch};

use crate::app::KvTx;
use crate::mempool::{Mempool, MempoolError};
use crate::metrics::Metrics;
use crate::storage::{Hash32, Store};

pub mod ingest;

/// A member of the current validator set, as the API shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidatorInfo {
    /// 0x-prefixed lowercase address.
    pub address: String,
    /// Voting power (NFTs authorizing the node).
    pub power: u64,
    /// Uncompressed public key, 64 bytes hex (no prefix).
    pub public_key: String,
    /// The connection URL registered on chain.
    pub connection_url: String,
}

/// What `/status` and `/validators` report; the driver keeps it current.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Current epoch.
    pub epoch: u64,
    /// Current round.
    pub round: u64,
    /// Highest committed height.
    pub committed_height: u64,
    /// Id of the block at `committed_height` (0x hex), if any.
    pub committed_block: Option<String>,
    /// Leader of the current round (0x address), if known.
    pub leader: Option<String>,
    /// Connected peers.
    pub peers: u64,
    /// Whether block sync is running.
    pub syncing: bool,
    /// This node's address (0x).
    pub node_address: String,
    /// This node's libp2p PeerId.
    pub peer_id: String,
    /// The chain block the current epoch's set was read at.
    pub epoch_chain_block: u64,
    /// Whether this node is a member of the current epoch's set (votes and proposes).
    pub member: bool,
    /// `validator`, `observer` (never a member) or `removed` (a member of an earlier epoch that
    /// the chain no longer authorizes).
    pub role: String,
    /// The current validator set, sorted by address (the signer-bitmap order).
    #[serde(skip)]
    pub validators: Vec<ValidatorInfo>,
}

/// The status shared between the driver (writer) and the API (reader).
pub type SharedStatus = Arc<RwLock<NodeStatus>>;

/// The future a [`RegistrationFn`] returns: a JSON payload or an error text.
pub type RegistrationFuture =
    Pin<Box<dyn Future<Output = Result<serde_json::Value, String>> + Send>>;

/// Builds the registration payload (proof and node signature for the configured owner) for a
/// token id given in decimal. Provided by the binary through the membership crate.
pub type RegistrationFn = Arc<dyn Fn(String) -> RegistrationFuture + Send + Sync>;

/// Everything a request handler may touch.
#[derive(Clone)]
pub struct ApiState {
    /// The driver's published status.
    pub status: SharedStatus,
    /// The node's store (committed blocks, transactions, KV state).
    pub store: Store,
    /// The mempool (shared with the driver).
    pub mempool: Arc<Mutex<Mempool>>,
    /// Woken when a transaction is accepted, so the driver seals and disseminates promptly.
    pub mempool_wake: Arc<Notify>,
    /// Metrics to serve.
    pub metrics: Arc<Metrics>,
    /// The registration endpoint's payload builder, when `owner_address` is configured.
    pub registration: Option<RegistrationFn>,
    /// The sequence number of the last local batch the driver stored durably: `POST /txs`
    /// answers 202 only once its transaction's batch is on disk, so an acknowledged
    /// transaction survives a crash. None acknowledges at once (an API without a driver).
    pub durable: Option<watch::Receiver<u64>>,
}

/// How long `POST /txs` waits for its transaction to be stored.
const DURABLE_WAIT: Duration = Duration::from_secs(10);

/// The router with every route of the API.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/status", get(status))
        .route("/validators", get(validators))
        .route("/blocks/latest", get(block_latest))
        .route("/blocks/{height}", get(block_at))
        .route("/txs", post(submit_tx))
        .route("/txs/bulk", post(ingest::submit_bulk))
        .route("/txs/{hash}", get(tx_status))
        .route("/kv/{key}", get(kv_get))
        .route("/registration", get(registration))
        .route("/metrics", get(metrics))
        .with_state(state)
}

/// A router with only `GET /metrics`, for a separate metrics listener.
pub fn metrics_router(state: ApiState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(state)
}

fn error(code: StatusCode, msg: impl std::fmt::Display) -> Response {
    (code, Json(json!({ "error": msg.to_string() }))).into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    error(StatusCode::INTERNAL_SERVER_ERROR, e)
}

fn boxed(e: impl std::fmt::Display) -> Box<Response> {
    Box::new(internal(e))
}

fn read_status(s: &ApiState) -> NodeStatus {
    match s.status.read() {
        Ok(g) => g.clone(),
        Err(poisoned) => poisoned.into_inner().clone(),
    }
}

async fn health() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

async fn status(State(s): State<ApiState>) -> Response {
    Json(read_status(&s)).into_response()
}

async fn validators(State(s): State<ApiState>) -> Response {
    let st = read_status(&s);
    let total: u64 = st.validators.iter().map(|v| v.power).sum();
    Json(json!({
        "epoch": st.epoch,
        "epoch_chain_block": st.epoch_chain_block,
        "total_power": total,
        "validators": st.validators,
    }))
    .into_response()
}

fn hex0x(b: &[u8]) -> String {
    format!("0x{}", hex::encode(b))
}

/// Indices of the set bits of a signer bitmap: bit i is byte i / 8, bit i % 8 (LSB first).
pub fn bitmap_indices(bitmap: &[u8]) -> Vec<usize> {
    let mut out = Vec::new();
    for (byte_i, b) in bitmap.iter().enumerate() {
        for bit in 0..8 {
            if b & (1 << bit) != 0 {
                out.push(byte_i * 8 + bit);
            }
        }
    }
    out
}

fn block_json(s: &ApiState, height: u64) -> Result<Option<serde_json::Value>, Box<Response>> {
    let Some(id) = s.store.committed_id(height).map_err(boxed)? else {
        return Ok(None);
    };
    // Pruned since the id was read (the height just fell below the retention horizon).
    let Some(bytes) = s.store.get_block(&id).map_err(boxed)? else {
        return Ok(None);
    };
    let block = proto::v1::Block::decode(bytes.as_slice()).map_err(boxed)?;
    let header = block.header.unwrap_or_default();
    let st = read_status(s);
    let qc = header.qc.unwrap_or_default();
    let signers: Vec<serde_json::Value> = bitmap_indices(&qc.signer_bitmap)
        .into_iter()
        .map(|i| match st.validators.get(i) {
            Some(v) if qc.epoch == st.epoch => json!(v.address),
            _ => json!(i),
        })
        .collect();
    let txs: Vec<String> = s
        .store
        .block_txs(height)
        .map_err(boxed)?
        .iter()
        .map(|h| hex0x(h))
        .collect();
    Ok(Some(json!({
        "height": height,
        "id": hex0x(&id),
        "parent": hex0x(&header.parent_id),
        "epoch": header.epoch,
        "round": header.round,
        "proposer": hex0x(&header.proposer),
        "qc_round": qc.round,
        "qc_signers": signers,
        "batches": block.batch_digests.iter().map(|d| hex0x(d)).collect::<Vec<_>>(),
        "transactions": txs,
    })))
}

async fn block_latest(State(s): State<ApiState>) -> Response {
    let h = match s.store.committed_height() {
        Ok(h) => h,
        Err(e) => return internal(e),
    };
    if h == 0 {
        return error(StatusCode::NOT_FOUND, "no block committed yet");
    }
    match block_json(&s, h) {
        Ok(Some(j)) => Json(j).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, "no block committed yet"),
        Err(r) => *r,
    }
}

async fn block_at(State(s): State<ApiState>, Path(height): Path<String>) -> Response {
    let Ok(height) = height.parse::<u64>() else {
        return error(StatusCode::BAD_REQUEST, "height must be a decimal number");
    };
    match block_json(&s, height) {
        Ok(Some(j)) => Json(j).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            format!("no block committed at height {height}"),
        ),
        Err(r) => *r,
    }
}

async fn submit_tx(State(s): State<ApiState>, body: Bytes) -> Response {
    if let Err(e) = KvTx::decode(&body) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    if let Some(refusal) = not_a_member(&s) {
        return refusal;
    }
    let store = s.store.clone();
    let (result, batch_seq) = {
        let mut pool = match s.mempool.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        };
        let seq = pool.open_batch_seq();
        let r = pool.submit(body.to_vec(), Instant::now(), |h| {
            store.tx_height(h).ok().flatten()
        });
        s.metrics
            .mempool_transactions
            .set(pool.pending_len() as i64);
        (r, seq)
    };
    match result {
        Ok(hash) => {
            s.mempool_wake.notify_one();
            if let Some(mut durable) = s.durable.clone() {
                let stored =
                    tokio::time::timeout(DURABLE_WAIT, durable.wait_for(|d| *d >= batch_seq)).await;
                if !matches!(stored, Ok(Ok(_))) {
                    return (
                        StatusCode::SERVICE_UNAVAILABLE,
                        Json(json!({
                            "error": format!(
                                "transaction queued but not stored within {} s; do not resend \
                                 it, poll GET /txs/{}",
                                DURABLE_WAIT.as_secs(),
                                hex0x(&hash)
                            ),
                            "hash": hex0x(&hash),
                        })),
                    )
                        .into_response();
                }
            }
            (
                StatusCode::ACCEPTED,
                Json(json!({ "hash": hex0x(&hash), "status": "pending" })),
            )
                .into_response()
        }
        Err(e @ (MempoolError::Full { .. } | MempoolError::DiskFull { .. })) => {
            error(StatusCode::SERVICE_UNAVAILABLE, e)
        }
        Err(e @ MempoolError::TxTooLarge { .. }) => error(StatusCode::PAYLOAD_TOO_LARGE, e),
        Err(e @ (MempoolError::AlreadyCommitted(_) | MempoolError::AlreadyPending)) => {
            let hash = crate::mempool::tx_hash(&body);
            (
                StatusCode::CONFLICT,
                Json(json!({ "error": e.to_string(), "hash": hex0x(&hash) })),
            )
                .into_response()
        }
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// Only members propose, and members hear batches from members only: a node outside the current
/// set (an observer, or a removed member) refuses transactions rather than hold them forever.
pub fn not_a_member(s: &ApiState) -> Option<Response> {
    let st = match s.status.read() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    };
    (!st.member).then(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "this node ({}) is not a validator of epoch {}; send transactions to a member \
                 (GET /validators)",
                st.role, st.epoch
            ),
        )
    })
}

fn parse_hash(text: &str) -> Option<Hash32> {
    let text = text.strip_prefix("0x").unwrap_or(text);
    let bytes = hex::decode(text).ok()?;
    bytes.try_into().ok()
}

async fn tx_status(State(s): State<ApiState>, Path(hash): Path<String>) -> Response {
    let Some(h) = parse_hash(&hash) else {
        return error(StatusCode::BAD_REQUEST, "hash must be 32 bytes of hex");
    };
    match s.store.tx_height(&h) {
        Ok(Some(height)) => {
            return Json(json!({ "hash": hex0x(&h), "status": "committed", "height": height }))
                .into_response();
        }
        Ok(None) => {}
        Err(e) => return internal(e),
    }
    let pending = match s.mempool.lock() {
        Ok(p) => p.is_pending(&h),
        Err(p) => p.into_inner().is_pending(&h),
    };
    if pending {
        Json(json!({ "hash": hex0x(&h), "status": "pending" })).into_response()
    } else {
        (
            StatusCode::NOT_FOUND,
            Json(json!({ "hash": hex0x(&h), "status": "unknown" })),
        )
            .into_response()
    }
}

async fn kv_get(State(s): State<ApiState>, Path(key): Path<String>) -> Response {
    match crate::app::get(&s.store, &key) {
        Ok(Some(value)) => Json(json!({ "key": key, "value": value })).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("key {key:?} not set")),
        Err(e) => internal(e),
    }
}

/// The query of `GET /registration`.
#[derive(Deserialize)]
struct RegistrationQuery {
    token_id: Option<String>,
}

async fn registration(State(s): State<ApiState>, Query(q): Query<RegistrationQuery>) -> Response {
    let Some(token_id) = q.token_id else {
        return error(StatusCode::BAD_REQUEST, "missing token_id query parameter");
    };
    if token_id.is_empty() || !token_id.bytes().all(|b| b.is_ascii_digit()) || token_id.len() > 78 {
        return error(StatusCode::BAD_REQUEST, "token_id must be a decimal number");
    }
    let Some(f) = s.registration.clone() else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "registration is not configured: set owner_address in config.toml",
        );
    };
    match f(token_id).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, e),
    }
}

async fn metrics(State(s): State<ApiState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_is_lsb_first() {
        assert_eq!(bitmap_indices(&[0b0000_0101, 0b1000_0000]), vec![0, 2, 15]);
        assert!(bitmap_indices(&[]).is_empty());
    }

    #[test]
    fn hashes_parse_with_or_without_prefix() {
        let h = [0xab; 32];
        assert_eq!(parse_hash(&hex::encode(h)), Some(h));
        assert_eq!(parse_hash(&format!("0x{}", hex::encode(h))), Some(h));
        assert_eq!(parse_hash("0x1234"), None);
        assert_eq!(parse_hash("zz"), None);
    }
}
