//! Reading the running nodes: each node's `GET /status`, the exact `testnet status --json`
//! shape, and the table of the live view.

use std::time::Duration;

use alloy::transports::http::reqwest;
use serde::{Deserialize, Serialize};

use crate::procs;
use crate::state::State;

/// The fields of a node's `GET /status` a testnet reads (others are ignored).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct NodeStatus {
    /// Current epoch.
    pub epoch: u64,
    /// Current round.
    pub round: u64,
    /// Highest committed height.
    pub committed_height: u64,
    /// Leader of the current round (0x address).
    pub leader: Option<String>,
    /// Connected peers.
    pub peers: u64,
    /// Whether block sync runs.
    pub syncing: bool,
    /// The node's address.
    pub node_address: String,
    /// The node's libp2p PeerId.
    pub peer_id: String,
    /// The chain block the current epoch's set was read at.
    pub epoch_chain_block: u64,
    /// `validator`, `observer` (never a member) or `removed` (no longer authorized).
    pub role: String,
}

/// One member in a node's `GET /validators`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ValidatorView {
    /// 0x address.
    pub address: String,
    /// Its power in the epoch.
    pub power: u64,
}

/// A node's `GET /validators`: the set of its current epoch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct ValidatorsView {
    /// The epoch.
    pub epoch: u64,
    /// The chain block its set was read at.
    pub epoch_chain_block: u64,
    /// Total power.
    pub total_power: u64,
    /// The members, sorted by address.
    pub validators: Vec<ValidatorView>,
}

impl ValidatorsView {
    /// The power of `address` in this set (0 when it is not a member).
    pub fn power_of(&self, address: &str) -> u64 {
        self.validators
            .iter()
            .filter(|v| v.address.eq_ignore_ascii_case(address))
            .map(|v| v.power)
            .sum()
    }
}

/// The fields of a committed block (`GET /blocks/{height}`) the checks use.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(default)]
pub struct BlockInfo {
    /// Committed height.
    pub height: u64,
    /// Block id (0x hex).
    pub id: String,
    /// Parent block id (0x hex).
    pub parent: String,
    /// Its round.
    pub round: u64,
    /// Its epoch.
    pub epoch: u64,
    /// Transaction hashes committed at this height (0x hex).
    pub transactions: Vec<String>,
}

/// A short-timeout HTTP client for the nodes' APIs.
#[derive(Clone, Debug)]
pub struct Client {
    http: reqwest::Client,
}

impl Client {
    /// A client whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Self {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        Self { http }
    }

    async fn get_json(&self, url: &str) -> Result<serde_json::Value, String> {
        let resp = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        let code = resp.status();
        let body = resp.bytes().await.map_err(|e| e.to_string())?;
        if !code.is_success() {
            return Err(format!("{url}: HTTP {code}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
    }

    /// `GET <http_url>/status`.
    pub async fn status(&self, http_url: &str) -> Result<NodeStatus, String> {
        let v = self.get_json(&format!("{http_url}/status")).await?;
        serde_json::from_value(v).map_err(|e| format!("{http_url}/status: {e}"))
    }

    /// `GET <http_url>/validators`.
    pub async fn validators(&self, http_url: &str) -> Result<ValidatorsView, String> {
        let v = self.get_json(&format!("{http_url}/validators")).await?;
        serde_json::from_value(v).map_err(|e| format!("{http_url}/validators: {e}"))
    }

    /// `POST <http_url>/txs` with `body`: the HTTP status and the JSON answer (`{"hash"}` when
    /// accepted, `{"error"}` otherwise).
    pub async fn post_tx(
        &self,
        http_url: &str,
        body: Vec<u8>,
    ) -> Result<(u16, serde_json::Value), String> {
        let resp = self
            .http
            .post(format!("{http_url}/txs"))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let code = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((code, v))
    }

    /// `GET <http_url>/txs/<hash>`: the committed height, `None` while pending or unknown.
    pub async fn tx_height(&self, http_url: &str, hash: &str) -> Result<Option<u64>, String> {
        let resp = self
            .http
            .get(format!("{http_url}/txs/{hash}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        if v.get("status").and_then(|s| s.as_str()) == Some("committed") {
            return Ok(v.get("height").and_then(|h| h.as_u64()));
        }
        Ok(None)
    }

    /// The committed block at `height`: its id, parent and transaction hashes (`None` when
    /// the node has not committed that height).
    pub async fn block(&self, http_url: &str, height: u64) -> Result<Option<BlockInfo>, String> {
        let resp = self
            .http
            .get(format!("{http_url}/blocks/{height}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(format!(
                "{http_url}/blocks/{height}: HTTP {}",
                resp.status()
            ));
        }
        let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
        let b: BlockInfo = serde_json::from_slice(&bytes)
            .map_err(|e| format!("{http_url}/blocks/{height}: {e}"))?;
        Ok(Some(b))
    }

    /// The text of a URL (Prometheus metrics).
    pub async fn text(&self, url: &str) -> Result<String, String> {
        let resp = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        resp.text().await.map_err(|e| e.to_string())
    }

    /// The number of transactions in the committed block at `height`.
    pub async fn block_txs(&self, http_url: &str, height: u64) -> Result<usize, String> {
        let v = self
            .get_json(&format!("{http_url}/blocks/{height}"))
            .await?;
        Ok(v.get("transactions")
            .and_then(|t| t.as_array())
            .map(|a| a.len())
            .unwrap_or(0))
    }
}

/// One entry of `testnet status --json` (exactly these keys; `height` is the committed height;
/// `power` is the registered power (tokens authorizing the node, as the run recorded them);
/// `epoch_power` is the node's power in its current epoch by its own `/validators` (0 for a
/// node that is not, or not yet, a member); `role` is the node's own `validator`, `observer` or
/// `removed`; `height`, `round`, `epoch`, `epoch_power` and `role` are null while the node's API
/// does not answer).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusEntry {
    /// Node name.
    pub name: String,
    /// Base URL of its HTTP API.
    pub http_url: String,
    /// Its metrics URL.
    pub metrics_url: String,
    /// Its pid.
    pub pid: u32,
    /// Its registered voting power.
    pub power: u64,
    /// Its power in the current epoch, by its own `/validators`.
    pub epoch_power: Option<u64>,
    /// Committed height.
    pub height: Option<u64>,
    /// Current round.
    pub round: Option<u64>,
    /// Current epoch.
    pub epoch: Option<u64>,
    /// The node's role by its `/status`: `validator`, `observer` (not, or not yet, a member)
    /// or `removed`.
    pub role: Option<String>,
}

/// `testnet status --json`: one entry per running node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The running nodes.
    pub nodes: Vec<StatusEntry>,
}

/// A running node with its full status (the live view's row).
#[derive(Clone, Debug)]
pub struct Row {
    /// The JSON entry.
    pub entry: StatusEntry,
    /// The whole `/status`, when it answered.
    pub status: Option<NodeStatus>,
}

/// Reads every running node of `state`.
pub async fn rows(state: &State, client: &Client) -> Vec<Row> {
    let mut out = Vec::new();
    for n in &state.nodes {
        let Some(p) = n.process.as_ref().filter(|p| procs::is_running(p)) else {
            continue;
        };
        let status = client.status(&n.http_url).await.ok();
        let epoch_power = match (&status, n.address) {
            (Some(_), Some(a)) => client
                .validators(&n.http_url)
                .await
                .ok()
                .map(|v| v.power_of(&a.to_string())),
            _ => None,
        };
        out.push(Row {
            entry: StatusEntry {
                name: n.name.clone(),
                http_url: n.http_url.clone(),
                metrics_url: n.metrics_url.clone(),
                pid: p.pid,
                power: n.power,
                epoch_power,
                height: status.as_ref().map(|s| s.committed_height),
                round: status.as_ref().map(|s| s.round),
                epoch: status.as_ref().map(|s| s.epoch),
                role: status
                    .as_ref()
                    .map(|s| s.role.clone())
                    .filter(|r| !r.is_empty()),
            },
            status,
        });
    }
    out
}

/// The `--json` report.
pub async fn report(state: &State, client: &Client) -> StatusReport {
    StatusReport {
        nodes: rows(state, client)
            .await
            .into_iter()
            .map(|r| r.entry)
            .collect(),
    }
}

fn opt(v: Option<u64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".into())
}

fn short(addr: &str) -> String {
    if addr.len() > 10 {
        format!("{}…{}", &addr[..6], &addr[addr.len() - 4..])
    } else {
        addr.to_string()
    }
}

/// The status table: per node height, round, epoch, leader, peers, power and TPS (`tps` gives
/// each node's committed transactions per second, by name). POWER is the registered power,
/// followed by the power in the node's current epoch in parentheses when the two differ (a node
/// waiting to join shows `2(0)`).
pub fn table(state: &State, rows: &[Row], tps: &dyn Fn(&str) -> Option<f64>) -> String {
    let mut out = format!(
        "{:<8} {:>7} {:>8} {:>8} {:>5} {:<13} {:>5} {:>7} {:<9} {:>8}  {}\n",
        "NODE", "PID", "HEIGHT", "ROUND", "EPOCH", "LEADER", "PEERS", "POWER", "ROLE", "TPS", "API"
    );
    for n in &state.nodes {
        let row = rows.iter().find(|r| r.entry.name == n.name);
        match row {
            Some(r) => {
                let leader = r
                    .status
                    .as_ref()
                    .and_then(|s| s.leader.as_deref())
                    .map(|l| {
                        let who = state
                            .nodes
                            .iter()
                            .find(|m| {
                                m.address
                                    .map(|a| a.to_string().eq_ignore_ascii_case(l))
                                    .unwrap_or(false)
                            })
                            .map(|m| m.name.clone());
                        who.unwrap_or_else(|| short(l))
                    })
                    .unwrap_or_else(|| "-".into());
                let peers = r
                    .status
                    .as_ref()
                    .map(|s| s.peers.to_string())
                    .unwrap_or_else(|| "-".into());
                let tps = tps(&n.name)
                    .map(|t| format!("{t:.1}"))
                    .unwrap_or_else(|| "-".into());
                let power = match r.entry.epoch_power {
                    Some(e) if e != n.power => format!("{}({e})", n.power),
                    _ => n.power.to_string(),
                };
                out.push_str(&format!(
                    "{:<8} {:>7} {:>8} {:>8} {:>5} {:<13} {:>5} {:>7} {:<9} {:>8}  {}\n",
                    n.name,
                    r.entry.pid,
                    opt(r.entry.height),
                    opt(r.entry.round),
                    opt(r.entry.epoch),
                    leader,
                    peers,
                    power,
                    r.entry.role.as_deref().unwrap_or("-"),
                    tps,
                    n.http_url
                ));
            }
            None => out.push_str(&format!(
                "{:<8} {:>7} {:>8}  (not running)\n",
                n.name, "-", "-"
            )),
        }
    }
    out
}
