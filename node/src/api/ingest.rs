//! The bulk transaction-ingest endpoint `POST /txs/bulk`: many transactions in one request, for
//! load clients and gateways that would otherwise pay one HTTP round trip per transaction.
//!
//! Body: a sequence of frames, each a 4-byte big-endian length followed by that many bytes of
//! one transaction (the same bytes `POST /txs` takes). Every transaction goes through the same
//! checks as `POST /txs` (a valid KV transaction, size limits, de-duplication, the bounded
//! mempool) and the same durability rule: the answer comes only once every accepted
//! transaction's batch is stored with fsync.
//!
//! Answer (JSON): `{"accepted": n, "rejected": m, "errors": {reason: count},
//! "rejected_indices": [[index, reason], ...]}` (at most [`MAX_LISTED_REJECTS`] listed, in frame
//! order). HTTP 202 when at least one transaction was accepted (or the body was empty), 503 when
//! every transaction was refused because the mempool is full or when this node is not a member
//! of the current validator set (as `POST /txs`), 400 for a malformed frame
//! sequence or when every transaction was refused otherwise. Transaction hashes are BLAKE3-256
//! of each transaction's bytes (see [`crate::mempool::tx_hash`]); clients compute them
//! themselves.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::ApiState;
use crate::app::KvTx;
use crate::mempool::{MempoolError, TxHash, tx_hash};

pub use crate::frames::{FrameError, push_frame, split_frames};

/// Most rejected transactions listed by index in an answer.
pub const MAX_LISTED_REJECTS: usize = 100;

/// How long the endpoint waits for the accepted transactions to be stored.
const DURABLE_WAIT: Duration = Duration::from_secs(10);

fn reason(e: &MempoolError) -> &'static str {
    match e {
        MempoolError::Full { .. } => "mempool_full",
        MempoolError::TxTooLarge { .. } => "too_large",
        MempoolError::EmptyTx => "empty",
        MempoolError::AlreadyCommitted(_) => "already_committed",
        MempoolError::AlreadyPending => "already_pending",
        MempoolError::BatchTooLarge | MempoolError::MalformedBatch => "invalid",
        MempoolError::DiskFull { .. } => "disk_full",
    }
}

/// `POST /txs/bulk`.
pub async fn submit_bulk(State(s): State<ApiState>, body: Bytes) -> Response {
    let frames = match split_frames(&body) {
        Ok(f) => f,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(json!({ "error": e.to_string() })),
            )
                .into_response();
        }
    };
    if let Some(refusal) = super::not_a_member(&s) {
        return refusal;
    }
    let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut listed: Vec<(usize, &'static str)> = Vec::new();
    let mut reject = |i: usize, why: &'static str| {
        *errors.entry(why).or_default() += 1;
        if listed.len() < MAX_LISTED_REJECTS {
            listed.push((i, why));
        }
    };
    // Application checks outside the mempool lock.
    let valid: Vec<bool> = frames.iter().map(|tx| KvTx::decode(tx).is_ok()).collect();
    let hashes: Vec<TxHash> = frames.iter().map(|tx| tx_hash(tx)).collect();
    // One read transaction for the whole request; a failed lookup is treated as "not
    // committed" (execution de-duplicates again, so nothing runs twice).
    let committed = s
        .store
        .tx_heights(&hashes)
        .unwrap_or_else(|_| vec![None; hashes.len()]);
    let mut accepted = 0u64;
    let mut need_seq = 0u64;
    {
        let mut pool = match s.mempool.lock() {
            Ok(p) => p,
            Err(p) => p.into_inner(),
        };
        let now = Instant::now();
        for (i, tx) in frames.iter().enumerate() {
            if !valid[i] {
                reject(i, "invalid_transaction");
                continue;
            }
            let seq = pool.open_batch_seq();
            match pool.submit_hashed(tx.to_vec(), hashes[i], committed[i], now) {
                Ok(_) => {
                    accepted += 1;
                    need_seq = need_seq.max(seq);
                }
                Err(e) => reject(i, reason(&e)),
            }
        }
        s.metrics
            .mempool_transactions
            .set(pool.pending_len() as i64);
    }
    let rejected = frames.len() as u64 - accepted;
    if accepted > 0 {
        s.mempool_wake.notify_one();
        if let Some(mut durable) = s.durable.clone() {
            let stored =
                tokio::time::timeout(DURABLE_WAIT, durable.wait_for(|d| *d >= need_seq)).await;
            if !matches!(stored, Ok(Ok(_))) {
                return (
                    StatusCode::SERVICE_UNAVAILABLE,
                    Json(json!({
                        "error": format!(
                            "{accepted} transactions queued but not stored within {} s; do not \
                             resend them, poll GET /txs/{{hash}}",
                            DURABLE_WAIT.as_secs()
                        ),
                        "accepted": accepted,
                        "rejected": rejected,
                        "stored": false,
                    })),
                )
                    .into_response();
            }
        }
    }
    let code = if accepted > 0 || frames.is_empty() {
        StatusCode::ACCEPTED
    } else if errors.contains_key("mempool_full") || errors.contains_key("disk_full") {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::BAD_REQUEST
    };
    (
        code,
        Json(json!({
            "accepted": accepted,
            "rejected": rejected,
            "errors": errors,
            "rejected_indices": listed,
        })),
    )
        .into_response()
}
