//! `bench client`: one open-loop load client (run as its own process by the harness).
//!
//! Every `tick` it sends the transactions due by then (`rate` per second, evenly spread) to one
//! node in one `POST /txs/bulk` request, whatever the answers to earlier requests were, so a
//! slow cluster cannot slow the offered load. Requests run concurrently up to `max_in_flight`;
//! transactions due while that many are outstanding are not sent and counted as missed, as are
//! ticks that start late (the client itself fell behind). The first transaction of every
//! `sample_every`-th tick is a sample: its hash and send time are recorded for end-to-end
//! latency.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use alloy::transports::http::reqwest;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, Semaphore};

use crate::error::BenchError;
use crate::timed::now_us;
use crate::txgen::TxGen;

/// What one client is asked to do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClientConfig {
    /// The node's API base URL.
    pub url: String,
    /// Transactions per second.
    pub rate: f64,
    /// Transaction size in bytes.
    pub tx_size: usize,
    /// How long to send (seconds).
    pub duration_s: f64,
    /// Unix µs at which to start (all clients start together).
    pub start_at_us: u64,
    /// Key prefix (unique per client).
    pub prefix: String,
    /// Send period (ms).
    pub tick_ms: u64,
    /// Every this many ticks, one sample.
    pub sample_every: u64,
    /// Requests outstanding at most.
    pub max_in_flight: usize,
}

/// A sampled transaction: its hash (0x hex) and client send time (Unix µs).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Sample {
    /// BLAKE3-256 of the transaction, 0x hex.
    pub hash: String,
    /// When the request carrying it left (Unix µs).
    pub sent_us: u64,
    /// When the node's answer (stored with fsync) came back (Unix µs).
    #[serde(default)]
    pub acked_us: u64,
}

/// What a client reports when done.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ClientReport {
    /// The node it loaded.
    pub url: String,
    /// When it started sending (Unix µs).
    pub start_us: u64,
    /// When it stopped sending (Unix µs).
    pub end_us: u64,
    /// Transactions sent.
    pub sent: u64,
    /// Transactions accepted (stored by the node).
    pub accepted: u64,
    /// Transactions refused, by reason (node reasons, `http_<code>`, `request_error`).
    pub rejected: BTreeMap<String, u64>,
    /// Transactions due but not sent (too many requests outstanding).
    pub missed: u64,
    /// Ticks that started more than one tick late.
    pub late_ticks: u64,
    /// The worst lateness of a tick (ms).
    pub max_lag_ms: f64,
    /// Requests sent.
    pub requests: u64,
    /// Accepted samples.
    pub samples: Vec<Sample>,
}

#[derive(Deserialize)]
struct BulkAnswer {
    accepted: u64,
    #[serde(default)]
    errors: BTreeMap<String, u64>,
    #[serde(default)]
    rejected_indices: Vec<(usize, String)>,
}

/// Runs the client to completion.
pub async fn run(cfg: ClientConfig) -> Result<ClientReport, BenchError> {
    if cfg.rate <= 0.0 || cfg.duration_s <= 0.0 || cfg.tick_ms == 0 {
        return Err(BenchError::Invalid(
            "rate, duration and tick must be positive".into(),
        ));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(cfg.max_in_flight)
        .build()
        .map_err(|e| BenchError::Client(format!("HTTP client: {e}")))?;
    let txgen = TxGen::new(&cfg.prefix, cfg.tx_size);
    let url = format!("{}/txs/bulk", cfg.url.trim_end_matches('/'));
    let report = Arc::new(Mutex::new(ClientReport {
        url: cfg.url.clone(),
        ..ClientReport::default()
    }));
    let permits = Arc::new(Semaphore::new(cfg.max_in_flight.max(1)));
    let tick_us = cfg.tick_ms * 1000;
    let ticks = ((cfg.duration_s * 1000.0) / cfg.tick_ms as f64).ceil() as u64;
    let per_us = cfg.rate / 1_000_000.0;
    let now = now_us();
    if cfg.start_at_us > now {
        tokio::time::sleep(Duration::from_micros(cfg.start_at_us - now)).await;
    }
    let start = cfg.start_at_us.max(now);
    report.lock().await.start_us = now_us();
    let mut seq = 0u64;
    let mut tasks = tokio::task::JoinSet::new();
    for k in 0..ticks {
        let due = start + k * tick_us;
        let now = now_us();
        if due > now {
            tokio::time::sleep(Duration::from_micros(due - now)).await;
        }
        let lag_us = now_us().saturating_sub(due);
        let until = ((k + 1) * tick_us) as f64;
        let target = (until * per_us).floor() as u64;
        let n = target.saturating_sub(seq);
        if n == 0 {
            continue;
        }
        {
            let mut r = report.lock().await;
            r.max_lag_ms = r.max_lag_ms.max(lag_us as f64 / 1000.0);
            if lag_us > tick_us {
                r.late_ticks += 1;
            }
        }
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            report.lock().await.missed += n;
            seq += n;
            continue;
        };
        let mut body = Vec::with_capacity(n as usize * (cfg.tx_size + 4));
        let mut sample_hash = None;
        for i in 0..n {
            let tx = txgen.make(seq + i);
            if i == 0 && k % cfg.sample_every.max(1) == 0 {
                sample_hash = Some(node::mempool::tx_hash(&tx));
            }
            node::frames::push_frame(&mut body, &tx);
        }
        seq += n;
        while tasks.try_join_next().is_some() {}
        let http = http.clone();
        let url = url.clone();
        let report = report.clone();
        tasks.spawn(async move {
            let sent_us = now_us();
            let result = http
                .post(&url)
                .header("content-type", "application/octet-stream")
                .body(body)
                .send()
                .await;
            let answer = match result {
                Ok(resp) => {
                    let code = resp.status().as_u16();
                    match resp.bytes().await {
                        Ok(b) => match serde_json::from_slice::<BulkAnswer>(&b) {
                            Ok(a) => Ok(a),
                            Err(_) => Err(format!("http_{code}")),
                        },
                        Err(_) => Err("request_error".to_string()),
                    }
                }
                Err(_) => Err("request_error".to_string()),
            };
            drop(permit);
            let acked_us = now_us();
            let mut r = report.lock().await;
            r.sent += n;
            r.requests += 1;
            match answer {
                Ok(a) => {
                    r.accepted += a.accepted;
                    for (why, c) in a.errors {
                        *r.rejected.entry(why).or_default() += c;
                    }
                    let sample_refused = a.rejected_indices.first().is_some_and(|(i, _)| *i == 0);
                    if let Some(h) = sample_hash
                        && a.accepted > 0
                        && !sample_refused
                    {
                        r.samples.push(Sample {
                            hash: format!("0x{}", hex::encode(h)),
                            sent_us,
                            acked_us,
                        });
                    }
                }
                Err(why) => *r.rejected.entry(why).or_default() += n,
            }
        });
    }
    report.lock().await.end_us = now_us();
    while tasks.join_next().await.is_some() {}
    let r = report.lock().await.clone();
    Ok(r)
}
