//! In-process clusters of real nodes: real libp2p on loopback, real redb files, real k256
//! signatures, the HTTP API over sockets. The validator set is given directly (the chain oracle
//! is exercised by the membership crate's tests); powers 1, 1, 2, 3 (the testnet's).

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{POWERS, free_port, get_json, http, node_params, put};
use node::chain::Member;
use node::node::{RunningNode, start};

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    ports: Vec<u16>,
    members: Vec<Member>,
    nodes: Vec<Option<RunningNode>>,
}

impl Cluster {
    fn new() -> Self {
        let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
        Self {
            dirs: (0..4)
                .map(|_| tempfile::tempdir().expect("tempdir"))
                .collect(),
            members: common::members(&ports),
            ports,
            nodes: (0..4).map(|_| None).collect(),
        }
    }

    async fn start(&mut self, i: usize) {
        let (dir, ports) = (self.dirs[i].path(), &self.ports);
        self.nodes[i] = Some(common::start_retrying(i, || node_params(i, dir, ports, 0)).await);
    }

    fn api(&self, i: usize) -> std::net::SocketAddr {
        self.nodes[i].as_ref().expect("running").api_addr
    }

    fn height(&self, i: usize) -> u64 {
        let n = self.nodes[i].as_ref().expect("running");
        n.status.read().expect("status").committed_height
    }

    async fn wait_height(&self, nodes: &[usize], h: u64, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            if nodes.iter().all(|&i| self.height(i) >= h) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "height {h} not reached in {limit:?}: {:?}",
                nodes.iter().map(|&i| self.height(i)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Block ids of heights 1..=h on node i.
    async fn chain(&self, i: usize, h: u64) -> Vec<serde_json::Value> {
        let mut out = Vec::new();
        for height in 1..=h {
            let (code, b) = get_json(self.api(i), &format!("/blocks/{height}")).await;
            assert_eq!(code, 200, "node {i} block {height}");
            out.push(b);
        }
        out
    }

    async fn stop_all(&mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(n) = n.take() {
                n.stop().await.expect("clean stop");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_weighted_nodes_commit_agree_and_execute_once() {
    let started = Instant::now();
    let mut c = Cluster::new();
    for i in 0..4 {
        c.start(i).await;
    }
    // Load: transactions spread over every node's API.
    let mut hashes = Vec::new();
    for t in 0..60 {
        let (code, body) = http(c.api(t % 4), "POST", "/txs", &put(t)).await;
        assert_eq!(code, 202, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        hashes.push(v["hash"].as_str().expect("hash").to_owned());
    }
    c.wait_height(&[0, 1, 2, 3], 100, Duration::from_secs(90))
        .await;
    // Every accepted transaction commits (wait for the last ones), once, everywhere.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last_tx_height = 0;
    for h in &hashes {
        loop {
            let (_, v) = get_json(c.api(0), &format!("/txs/{h}")).await;
            if v["status"] == "committed" {
                last_tx_height = last_tx_height.max(v["height"].as_u64().expect("height"));
                break;
            }
            assert!(Instant::now() < deadline, "tx {h} not committed: {v}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Node 0 may be ahead of the others: compare chains up to a height every node has.
    c.wait_height(&[0, 1, 2, 3], last_tx_height, Duration::from_secs(30))
        .await;
    eprintln!("last transaction committed at height {last_tx_height}");
    let top = (0..4).map(|i| c.height(i)).min().expect("heights");
    let chains = [
        c.chain(0, top).await,
        c.chain(1, top).await,
        c.chain(2, top).await,
        c.chain(3, top).await,
    ];
    for i in 1..4 {
        for (h, (a, b)) in chains[0].iter().zip(&chains[i]).enumerate() {
            assert_eq!(a["id"], b["id"], "node {i} differs at height {}", h + 1);
            assert_eq!(a["transactions"], b["transactions"]);
        }
    }
    let mut seen: HashMap<String, u64> = HashMap::new();
    let mut proposers: HashMap<String, u64> = HashMap::new();
    for b in &chains[0] {
        *proposers
            .entry(b["proposer"].as_str().expect("proposer").to_owned())
            .or_default() += 1;
        for t in b["transactions"].as_array().expect("txs") {
            *seen
                .entry(t.as_str().expect("hash").to_owned())
                .or_default() += 1;
        }
    }
    for h in &hashes {
        assert_eq!(seen.get(h), Some(&1), "tx {h} committed exactly once");
    }
    for (i, h) in hashes.iter().enumerate() {
        let _ = h;
        let (code, v) = get_json(c.api(3), &format!("/kv/k{i}")).await;
        assert_eq!(code, 200);
        assert_eq!(v["value"], format!("v{i}"));
    }
    // Proposers in proportion to power (1:1:2:3 over P = 7): with a fault-free run every
    // committed block's proposer is the scheduled leader, so shares track powers closely.
    let share = |i: usize| {
        let addr = format!("0x{}", hex::encode(c.members[i].info.address.0));
        *proposers.get(&addr).unwrap_or(&0) as f64 / top as f64
    };
    for (i, p) in POWERS.iter().enumerate() {
        let want = *p as f64 / 7.0;
        assert!(
            (share(i) - want).abs() < 0.08,
            "node {i} (power {p}) proposed {:.3} of blocks, expected ~{want:.3}",
            share(i)
        );
    }
    let (_, st) = get_json(c.api(2), "/status").await;
    assert!(st["committed_height"].as_u64().expect("h") >= 100);
    assert_eq!(st["peers"], 3);
    let (_, metrics) = http(c.api(1), "GET", "/metrics", b"").await;
    assert!(metrics.contains("dstack_validators_power 7"), "{metrics}");
    c.stop_all().await;
    eprintln!(
        "4 nodes: {top} blocks, {} txs in {:.1} s",
        hashes.len(),
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashed_and_late_nodes_catch_up() {
    let mut c = Cluster::new();
    // Node 0 (power 1) starts late: the others hold 6 of 7, above Q = 5.
    for i in 1..4 {
        c.start(i).await;
    }
    c.wait_height(&[1, 2, 3], 40, Duration::from_secs(60)).await;
    c.start(0).await;
    let target = c.height(1) + 10;
    c.wait_height(&[0], target, Duration::from_secs(60)).await;
    // Crash node 1 (power 1, at most P - Q = 2) repeatedly at arbitrary moments; commits go on
    // and it catches up each time.
    for round in 0..3 {
        let n = c.nodes[1].take().expect("running");
        n.kill();
        let h = c.height(2);
        c.wait_height(&[2], h + 5, Duration::from_secs(30)).await;
        c.start(1).await;
        let target = c.height(2) + 5;
        c.wait_height(&[1], target, Duration::from_secs(60)).await;
        eprintln!("restart {round}: node 1 caught up to {}", c.height(1));
    }
    let top = (0..4).map(|i| c.height(i)).min().expect("h");
    let a = c.chain(0, top).await;
    let b = c.chain(1, top).await;
    let d = c.chain(3, top).await;
    for h in 0..top as usize {
        assert_eq!(a[h]["id"], d[h]["id"], "late node differs at {}", h + 1);
        assert_eq!(
            b[h]["id"],
            d[h]["id"],
            "restarted node differs at {}",
            h + 1
        );
    }
    c.stop_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_cluster_paces_its_empty_blocks_and_a_transaction_still_commits_at_once() {
    let c = Cluster::new();
    let interval = Duration::from_millis(250);
    let mut nodes = Vec::new();
    for i in 0..4 {
        let mut params = node_params(i, c.dirs[i].path(), &c.ports, 0);
        params.driver.empty_block_interval = interval;
        nodes.push(start(params).await.expect("start"));
    }
    let height = |i: usize| nodes[i].status.read().expect("status").committed_height;
    let deadline = Instant::now() + Duration::from_secs(30);
    while height(0) < 3 {
        assert!(Instant::now() < deadline, "no commits: {}", height(0));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Idle: each round waits `interval` before its empty block, so 3 s hold at most ~12
    // rounds (without pacing this loopback cluster ran 569 in 3 s).
    let (h0, t0) = (height(0), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle_rounds = height(0) - h0;
    let elapsed = t0.elapsed();
    assert!(
        (2..=18).contains(&idle_rounds),
        "{idle_rounds} heights in {elapsed:?} with an idle cluster pacing at {interval:?}"
    );
    // A transaction wakes the waiting leader: it commits well within the round timeout.
    let sent = Instant::now();
    let (code, body) = http(nodes[1].api_addr, "POST", "/txs", &put(7)).await;
    assert_eq!(code, 202, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    let hash = v["hash"].as_str().expect("hash").to_owned();
    loop {
        let (_, v) = get_json(nodes[0].api_addr, &format!("/txs/{hash}")).await;
        if v["status"] == "committed" {
            break;
        }
        assert!(
            sent.elapsed() < Duration::from_secs(2),
            "transaction not committed within 2 s of an idle cluster: {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let latency = sent.elapsed();
    eprintln!("idle: {idle_rounds} heights in {elapsed:?}; a transaction committed in {latency:?}");
    for n in nodes {
        n.stop().await.expect("clean stop");
    }
}
