//! Open-loop transaction load (`testnet load`, and the chaos suite's background load): KV `put`
//! transactions of a fixed size sent by `POST /txs` on a fixed schedule, whatever the cluster
//! answers, so a slow or faulty cluster cannot slow the offered load down (a closed loop would
//! hide exactly the stalls the chaos suite looks for).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::error::Error;
use crate::status::Client;

/// What to send and where.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Base URLs of the nodes' HTTP APIs, used in turn.
    pub targets: Vec<String>,
    /// Transactions per second offered.
    pub rate: f64,
    /// Size of each transaction's JSON, in bytes.
    pub tx_size: usize,
    /// Longest run (the stop signal may end it earlier).
    pub duration: Duration,
    /// Key prefix (distinct per run, so runs never collide).
    pub key_prefix: String,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Most requests in flight; a tick beyond it counts as rejected by the generator.
    pub max_in_flight: usize,
}

impl LoadConfig {
    /// Checks the values a user gave.
    pub fn validate(&self) -> Result<(), Error> {
        if self.targets.is_empty() {
            return Err(Error::Invalid("no node to send transactions to".into()));
        }
        if !(self.rate > 0.0 && self.rate <= 20_000.0) {
            return Err(Error::Invalid(
                "--rate must be above 0 and at most 20000 tx/s".into(),
            ));
        }
        if self.tx_size < MIN_TX_SIZE || self.tx_size > MAX_TX_SIZE {
            return Err(Error::Invalid(format!(
                "--tx-size must be between {MIN_TX_SIZE} and {MAX_TX_SIZE} bytes"
            )));
        }
        Ok(())
    }
}

/// Smallest transaction size accepted (room for the JSON around a key with a long prefix and a
/// 20-digit sequence number).
pub const MIN_TX_SIZE: usize = 128;
/// Largest transaction (below the node's default 64 KiB value limit).
pub const MAX_TX_SIZE: usize = 60 * 1024;

/// One transaction the generator sent.
#[derive(Clone, Debug)]
pub struct Submission {
    /// Its sequence number.
    pub seq: u64,
    /// Its bytes.
    pub body: Vec<u8>,
    /// The target index it went to.
    pub target: usize,
    /// When it was sent.
    pub sent: Instant,
    /// When the answer came.
    pub answered: Instant,
    /// Its hash (0x hex) when accepted, else why it was rejected.
    pub result: Result<String, String>,
}

/// Everything a run sent, in sequence order.
#[derive(Clone, Debug, Default)]
pub struct LoadRun {
    /// Every submission.
    pub submissions: Vec<Submission>,
    /// How long the generator ran.
    pub elapsed: Duration,
}

impl LoadRun {
    /// Accepted submissions.
    pub fn accepted(&self) -> impl Iterator<Item = (&Submission, &str)> {
        self.submissions
            .iter()
            .filter_map(|s| s.result.as_ref().ok().map(|h| (s, h.as_str())))
    }

    /// Rejections counted by reason class.
    pub fn rejected_by_reason(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for s in &self.submissions {
            if let Err(e) = &s.result {
                *out.entry(reason_class(e)).or_insert(0) += 1;
            }
        }
        out
    }
}

/// A short class for a rejection text (HTTP code or transport failure).
fn reason_class(e: &str) -> String {
    if let Some(code) = e.strip_prefix("HTTP ") {
        return format!("http {}", code.split_whitespace().next().unwrap_or(code));
    }
    if e.contains("timed out") || e.contains("timeout") {
        return "timeout".into();
    }
    if e.contains("in flight") {
        return "generator limit".into();
    }
    "connection".into()
}

/// Builds transaction `seq`: a KV put whose JSON is exactly `size` bytes (at least
/// [`MIN_TX_SIZE`]).
pub fn make_tx(prefix: &str, seq: u64, size: usize) -> Vec<u8> {
    let key = format!("{prefix}-{seq}");
    let head = format!("{{\"op\":\"put\",\"key\":\"{key}\",\"value\":\"");
    let tail = format!("\",\"nonce\":{seq}}}");
    let fill = size.saturating_sub(head.len() + tail.len()).max(1);
    let mut out = Vec::with_capacity(head.len() + fill + tail.len());
    out.extend_from_slice(head.as_bytes());
    // Printable, varied filler (a cheap LCG over the sequence number).
    let mut x = seq
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    for _ in 0..fill {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        out.push(b'a' + ((x >> 59) as u8 % 26));
    }
    out.extend_from_slice(tail.as_bytes());
    out
}

/// Runs the open-loop generator until `duration` passes or `stop` turns true; returns every
/// submission once its answer (or timeout) is in.
pub async fn run(cfg: &LoadConfig, mut stop: watch::Receiver<bool>) -> Result<LoadRun, Error> {
    cfg.validate()?;
    let client = Client::new(cfg.request_timeout);
    let (tx, mut rx) = mpsc::unbounded_channel::<Submission>();
    let in_flight = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let end = start + cfg.duration;
    let period = Duration::from_secs_f64(1.0 / cfg.rate);
    let mut seq = 0u64;
    let mut collected = Vec::new();
    loop {
        let due = start + period.mul_f64(seq as f64);
        if due >= end || *stop.borrow() {
            break;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(due.into()) => {}
            _ = stop.changed() => continue,
        }
        let target = (seq as usize) % cfg.targets.len();
        let body = make_tx(&cfg.key_prefix, seq, cfg.tx_size);
        let sent = Instant::now();
        if in_flight.load(Ordering::Relaxed) >= cfg.max_in_flight {
            collected.push(Submission {
                seq,
                body,
                target,
                sent,
                answered: sent,
                result: Err("generator: too many requests in flight".into()),
            });
        } else {
            in_flight.fetch_add(1, Ordering::Relaxed);
            let client = client.clone();
            let url = cfg.targets[target].clone();
            let tx = tx.clone();
            let in_flight = in_flight.clone();
            tokio::spawn(async move {
                let result = match client.post_tx(&url, body.clone()).await {
                    Ok((202, v)) => match v.get("hash").and_then(|h| h.as_str()) {
                        Some(h) => Ok(h.to_string()),
                        None => Err("HTTP 202 without a hash".to_string()),
                    },
                    Ok((code, v)) => Err(format!(
                        "HTTP {code} {}",
                        v.get("error").and_then(|e| e.as_str()).unwrap_or("")
                    )),
                    Err(e) => Err(e),
                };
                in_flight.fetch_sub(1, Ordering::Relaxed);
                let _ = tx.send(Submission {
                    seq,
                    body,
                    target,
                    sent,
                    answered: Instant::now(),
                    result,
                });
            });
        }
        seq += 1;
        while let Ok(s) = rx.try_recv() {
            collected.push(s);
        }
    }
    let elapsed = start.elapsed();
    drop(tx);
    // Every spawned request ends within its timeout.
    let drain = tokio::time::timeout(cfg.request_timeout + Duration::from_secs(5), async {
        while let Some(s) = rx.recv().await {
            collected.push(s);
        }
    });
    let _ = drain.await;
    collected.sort_by_key(|s| s.seq);
    Ok(LoadRun {
        submissions: collected,
        elapsed,
    })
}

/// Waits (bounded by `within`) until every hash is committed according to one of `urls`;
/// returns the committed height of each hash found.
pub async fn wait_committed(
    client: &Client,
    urls: &[String],
    hashes: &[String],
    within: Duration,
) -> BTreeMap<String, u64> {
    let deadline = Instant::now() + within;
    let mut found = BTreeMap::new();
    loop {
        let missing: Vec<String> = hashes
            .iter()
            .filter(|h| !found.contains_key(*h))
            .cloned()
            .collect();
        if missing.is_empty() {
            return found;
        }
        for chunk in missing.chunks(64) {
            let mut set = tokio::task::JoinSet::new();
            for (i, h) in chunk.iter().enumerate() {
                let client = client.clone();
                let urls = urls.to_vec();
                let h = h.clone();
                set.spawn(async move {
                    for k in 0..urls.len() {
                        let url = &urls[(i + k) % urls.len()];
                        if let Ok(Some(height)) = client.tx_height(url, &h).await {
                            return (h, Some(height));
                        }
                    }
                    (h, None)
                });
            }
            while let Some(Ok((h, height))) = set.join_next().await {
                if let Some(height) = height {
                    found.insert(h, height);
                }
            }
        }
        if Instant::now() >= deadline {
            return found;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The `testnet load` summary.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// Offered rate (tx/s).
    pub rate: f64,
    /// Transaction size (bytes).
    pub tx_size: usize,
    /// Seconds the generator ran.
    pub seconds: f64,
    /// Transactions sent.
    pub submitted: u64,
    /// Accepted by a node (HTTP 202).
    pub accepted: u64,
    /// Rejected, by reason class.
    pub rejected: BTreeMap<String, u64>,
    /// Accepted transactions found committed.
    pub committed: u64,
    /// Committed transactions per second over the run (committed / seconds).
    pub committed_tps: f64,
    /// Median and 99th percentile of the HTTP answer time, milliseconds.
    pub answer_ms_p50: f64,
    /// See `answer_ms_p50`.
    pub answer_ms_p99: f64,
}

/// Runs `testnet load` against `targets`: the generator, then up to `grace` for the accepted
/// transactions to commit.
pub async fn load_and_report(cfg: &LoadConfig, grace: Duration) -> Result<LoadReport, Error> {
    let (_stop_tx, stop) = watch::channel(false);
    let run = run(cfg, stop).await?;
    let client = Client::new(Duration::from_secs(2));
    let hashes: Vec<String> = run.accepted().map(|(_, h)| h.to_string()).collect();
    let committed = wait_committed(&client, &cfg.targets, &hashes, grace).await;
    let mut answers: Vec<f64> = run
        .submissions
        .iter()
        .map(|s| s.answered.duration_since(s.sent).as_secs_f64() * 1e3)
        .collect();
    answers.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| -> f64 {
        if answers.is_empty() {
            return 0.0;
        }
        let i = ((answers.len() as f64 - 1.0) * p).round() as usize;
        answers[i.min(answers.len() - 1)]
    };
    let seconds = run.elapsed.as_secs_f64();
    Ok(LoadReport {
        rate: cfg.rate,
        tx_size: cfg.tx_size,
        seconds,
        submitted: run.submissions.len() as u64,
        accepted: hashes.len() as u64,
        rejected: run.rejected_by_reason(),
        committed: committed.len() as u64,
        committed_tps: committed.len() as f64 / seconds.max(1e-9),
        answer_ms_p50: pct(0.5),
        answer_ms_p99: pct(0.99),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transactions_have_the_exact_size_and_parse() {
        for size in [MIN_TX_SIZE, 200, 256, 4096] {
            for seq in [0u64, 7, 123_456_789] {
                let tx = make_tx("load-abc", seq, size);
                assert_eq!(tx.len(), size, "seq {seq} size {size}");
                let v: serde_json::Value = serde_json::from_slice(&tx).expect("json");
                assert_eq!(v["op"], "put");
                assert_eq!(v["key"], format!("load-abc-{seq}"));
                assert_eq!(v["nonce"], seq);
            }
        }
        assert_ne!(make_tx("p", 1, 100), make_tx("p", 2, 100));
    }

    #[test]
    fn rejection_reasons_are_classed() {
        assert_eq!(reason_class("HTTP 503 mempool full"), "http 503");
        assert_eq!(reason_class("operation timed out"), "timeout");
        assert_eq!(reason_class("error sending request"), "connection");
        assert_eq!(
            reason_class("generator: too many requests in flight"),
            "generator limit"
        );
    }

    #[test]
    fn validation_refuses_bad_values() {
        let mut c = LoadConfig {
            targets: vec!["http://127.0.0.1:1".into()],
            rate: 10.0,
            tx_size: 256,
            duration: Duration::from_secs(1),
            key_prefix: "x".into(),
            request_timeout: Duration::from_secs(1),
            max_in_flight: 10,
        };
        assert!(c.validate().is_ok());
        c.rate = 0.0;
        assert!(c.validate().is_err());
        c.rate = 10.0;
        c.tx_size = 10;
        assert!(c.validate().is_err());
        c.tx_size = 256;
        c.targets.clear();
        assert!(c.validate().is_err());
    }

    #[tokio::test]
    async fn an_unreachable_node_counts_as_rejected_and_the_schedule_holds() {
        // A port nothing listens on: every request fails fast, and the generator keeps its
        // schedule (open loop): 20 tx/s for 0.5 s is 10 submissions.
        let port = crate::procs::free_port().expect("port");
        let cfg = LoadConfig {
            targets: vec![format!("http://127.0.0.1:{port}")],
            rate: 20.0,
            tx_size: 128,
            duration: Duration::from_millis(500),
            key_prefix: "t".into(),
            request_timeout: Duration::from_secs(1),
            max_in_flight: 100,
        };
        let (_s, stop) = watch::channel(false);
        let run = run(&cfg, stop).await.expect("run");
        assert_eq!(run.submissions.len(), 10);
        assert_eq!(run.accepted().count(), 0);
        assert_eq!(run.rejected_by_reason().get("connection"), Some(&10));
    }
}
