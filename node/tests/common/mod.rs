//! What the node's integration tests share: a tiny HTTP client for the API, the four-member
//! test cluster (powers 1, 1, 2, 3, the testnet's) and the node parameters every test starts
//! its nodes with. Each test binary uses a different part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use consensus::core::Config as CoreConfig;
use consensus::crypto::{K256Signer, Signer};
use consensus::types::MemberInfo;
use node::app::KvTx;
use node::chain::Member;
use node::driver::DriverConfig;
use node::mempool::MempoolConfig;
use node::node::{NodeParams, RunningNode, start};
use node::serve::ServeConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Powers of the four test members: P = 7, Q = 5, so any one of the first three may fail.
pub const POWERS: [u64; 4] = [1, 1, 2, 3];
/// The test cluster's chain id (anvil's).
pub const CHAIN_ID: u64 = 31337;
/// The test cluster's contract.
pub const CONTRACT: [u8; 20] = [0xaa; 20];
/// The test cluster's genesis id.
pub const GENESIS_ID: [u8; 32] = [7; 32];
/// The test cluster's genesis chain block hash.
pub const GENESIS_CHAIN_BLOCK: [u8; 32] = [9; 32];

/// A minimal HTTP/1.1 client: one request per connection, `Connection: close`.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, String) {
    try_http(addr, method, path, body)
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"))
}

/// [`http`] that reports a refused or dropped connection instead of panicking (for nodes that
/// may be down).
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &[u8],
) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(body).await.map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .map_err(|_| "no response within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let code: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let body_start = text.find("\r\n\r\n").map(|i| i + 4).unwrap_or(text.len());
    let mut body = text[body_start..].to_string();
    // Undo chunked encoding when the server used it.
    if text[..body_start]
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut plain = String::new();
        let mut rest = body.as_str();
        while let Some((size, after)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            plain.push_str(&after[..n]);
            rest = &after[n + 2..];
        }
        body = plain;
    }
    Ok((code, body))
}

/// GET `path` as JSON from a node that may be down (None then).
pub async fn try_get_json(addr: SocketAddr, path: &str) -> Option<serde_json::Value> {
    match try_http(addr, "GET", path, b"").await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// GET `path` and parse the body as JSON (`Null` when it is not JSON).
pub async fn get_json(addr: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    let (code, body) = http(addr, "GET", path, b"").await;
    (
        code,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
    )
}

/// A loopback port free right now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// Member `i`'s secret key.
pub fn secret(i: usize) -> [u8; 32] {
    [i as u8 + 1; 32]
}

/// The four members, reachable on loopback at `p2p_ports`.
pub fn members(p2p_ports: &[u16]) -> Vec<Member> {
    (0..POWERS.len())
        .map(|i| {
            let s = K256Signer::from_secret(&secret(i)).expect("key");
            Member {
                info: MemberInfo {
                    address: s.address(),
                    public_key: s.public_key(),
                    power: POWERS[i],
                },
                url: format!("/ip4/127.0.0.1/tcp/{}", p2p_ports[i]),
            }
        })
        .collect()
}

/// The parameters of member `i` with short timeouts (a loopback cluster needs no more).
pub fn node_params(i: usize, data_dir: &Path, p2p_ports: &[u16], api_port: u16) -> NodeParams {
    NodeParams {
        driver: DriverConfig {
            secret: secret(i),
            chain_id: CHAIN_ID,
            contract: CONTRACT,
            genesis_id: GENESIS_ID,
            genesis_chain_block_hash: GENESIS_CHAIN_BLOCK,
            genesis_chain_block_number: 12,
            members: members(p2p_ports),
            core: CoreConfig {
                base_timeout_ms: 600,
                max_timeout_ms: 2_400,
                ..CoreConfig::default()
            },
            sync_check: Duration::from_millis(500),
            empty_block_interval: Duration::from_millis(100),
            stall_after: Duration::from_secs(2),
            oracle_poll: Duration::from_millis(500),
        },
        data_dir: data_dir.to_path_buf(),
        p2p_listen: vec![
            format!("/ip4/127.0.0.1/tcp/{}", p2p_ports[i])
                .parse()
                .expect("addr"),
        ],
        bootstrap: Vec::new(),
        api_listen: SocketAddr::from(([127, 0, 0, 1], api_port)),
        metrics_listen: None,
        mempool: MempoolConfig::default(),
        retain_heights: 0,
        max_disk_bytes: 0,
        batch_intake_bytes_per_sec: 0,
        serve: ServeConfig::default(),
        registration: None,
        tap: None,
        chain: None,
    }
}

/// A KV put transaction, distinct per `i`.
pub fn put(i: usize) -> Vec<u8> {
    KvTx::Put {
        key: format!("k{i}"),
        value: format!("v{i}"),
        nonce: None,
    }
    .encode()
}

/// The value of the counter or gauge `name` (summed over its labels) in a metrics text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Starts node `i` from `params()`, retrying for up to 10 s: a killed node's store may take a
/// moment to release its lock (tasks winding down).
pub async fn start_retrying(i: usize, params: impl Fn() -> NodeParams) -> RunningNode {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match start(params()).await {
            Ok(n) => return n,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("start of node {i} retried: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("node {i} did not start: {e}"),
        }
    }
}
