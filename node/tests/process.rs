//! Nodes as real processes, so a crash is a real SIGKILL: the test binary re-runs itself as one
//! node per child process (the ignored `child_node` entry point), over real libp2p sockets on
//! loopback and real redb files: the crash, leader-kill, late-start, hostile-peer and flood
//! tests. A failing run prints the seed that reproduces its choices
//! (`DSTACK_TEST_SEED=<seed>`).

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{
    CHAIN_ID, CONTRACT, GENESIS_CHAIN_BLOCK, GENESIS_ID, free_port, get_json, http, metric_sum,
    node_params, secret, try_get_json, try_http,
};
use consensus::crypto::{K256Signer, Signer};
use consensus::domain::Domain;
use consensus::types::{Address, BlockId, QuorumCert, Timeout, Vote};
use consensus::validators::ValidatorSet;
use libp2p::PeerId;
use node::app::KvTx;
use node::net::{NetConfig, NetHandle, TopicKind, keypair_from_secret, spawn};
use proto::{GossipBody, RequestBody};
use tokio::sync::Mutex as AsyncMutex;

/// The child processes' spec: `index;data_dir;api_port;p2p ports (comma separated)`.
const CHILD_ENV: &str = "DSTACK_TEST_CHILD";

/// The process tests start up to four nodes each; running two at once on a 2-core machine
/// would only measure contention, so they take turns.
static ONE_AT_A_TIME: AsyncMutex<()> = AsyncMutex::const_new(());

/// The entry point of a child node process: starts member `index` and runs until its stdin
/// closes (the parent test ended or dropped it), then stops cleanly.
#[test]
#[ignore = "entry point of the child node processes the other tests start"]
fn child_node() {
    let spec = std::env::var(CHILD_ENV).expect("only the process tests start this entry point");
    let parts: Vec<&str> = spec.split(';').collect();
    assert_eq!(parts.len(), 4, "bad child spec {spec:?}");
    let index: usize = parts[0].parse().expect("index");
    let dir = std::path::PathBuf::from(parts[1]);
    let api_port: u16 = parts[2].parse().expect("api port");
    let ports: Vec<u16> = parts[3]
        .split(',')
        .map(|p| p.parse().expect("port"))
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        // A restarted node may find its ports in TIME_WAIT for a moment.
        let deadline = Instant::now() + Duration::from_secs(15);
        let node = loop {
            match node::node::start(node_params(index, &dir, &ports, api_port)).await {
                Ok(n) => break n,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("child {index}: start retried: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => panic!("child {index} did not start: {e}"),
            }
        };
        let _ = tokio::task::spawn_blocking(|| {
            let mut b = [0u8; 64];
            while matches!(std::io::stdin().read(&mut b), Ok(n) if n > 0) {}
        })
        .await;
        node.stop().await.expect("clean stop");
    });
}

/// A deterministic generator for the tests' random choices (SplitMix64).
struct Rng(u64);

impl Rng {
    fn from_env(test: &str) -> Self {
        let seed = std::env::var("DSTACK_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: seed {seed} (rerun with DSTACK_TEST_SEED={seed})");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Four member slots, each possibly running as a child process.
struct Procs {
    dirs: Vec<tempfile::TempDir>,
    p2p: Vec<u16>,
    api: Vec<u16>,
    children: Vec<Option<Child>>,
    addresses: Vec<String>,
}

impl Procs {
    fn new() -> Self {
        let p2p: Vec<u16> = (0..4).map(|_| free_port()).collect();
        let addresses = common::members(&p2p)
            .iter()
            .map(|m| format!("0x{}", hex::encode(m.info.address.0)))
            .collect();
        Self {
            dirs: (0..4)
                .map(|_| tempfile::tempdir().expect("tempdir"))
                .collect(),
            p2p,
            api: (0..4).map(|_| free_port()).collect(),
            children: (0..4).map(|_| None).collect(),
            addresses,
        }
    }

    fn api(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.api[i]))
    }

    fn pid(&self, i: usize) -> u32 {
        self.children[i].as_ref().expect("running").id()
    }

    /// Starts member `i` and waits (bounded) until its API answers.
    async fn start(&mut self, i: usize) {
        assert!(self.children[i].is_none(), "node {i} already runs");
        let ports: Vec<String> = self.p2p.iter().map(u16::to_string).collect();
        let spec = format!(
            "{i};{};{};{}",
            self.dirs[i].path().display(),
            self.api[i],
            ports.join(",")
        );
        let log = std::fs::File::create(self.dirs[i].path().join("child.log")).expect("log");
        let child = Command::new(std::env::current_exe().expect("test binary"))
            .args(["child_node", "--exact", "--ignored", "--nocapture"])
            .env(CHILD_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn child node");
        self.children[i] = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while try_get_json(self.api(i), "/health").await.is_none() {
            assert!(
                Instant::now() < deadline,
                "node {i} API not up within 30 s; log: {}",
                self.log_tail(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL: no shutdown step at all.
    fn kill(&mut self, i: usize) {
        let mut c = self.children[i].take().expect("running");
        c.kill().expect("SIGKILL");
        let _ = c.wait();
    }

    /// Closes the child's stdin (its signal to stop cleanly) and requires a zero exit.
    fn stop(&mut self, i: usize) {
        let mut c = self.children[i].take().expect("running");
        drop(c.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                assert!(
                    st.success(),
                    "node {i} exited with {st}: {}",
                    self.log_tail(i)
                );
                return;
            }
            assert!(Instant::now() < deadline, "node {i} did not stop in 20 s");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_tail(&self, i: usize) -> String {
        let text =
            std::fs::read_to_string(self.dirs[i].path().join("child.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn status(&self, i: usize) -> Option<serde_json::Value> {
        try_get_json(self.api(i), "/status").await
    }

    async fn height(&self, i: usize) -> u64 {
        self.status(i)
            .await
            .and_then(|s| s["committed_height"].as_u64())
            .unwrap_or(0)
    }

    /// Waits (bounded) until every node in `nodes` has committed height `h`.
    async fn wait_height(&self, nodes: &[usize], h: u64, limit: Duration, seed_note: &str) {
        let deadline = Instant::now() + limit;
        loop {
            let mut heights = Vec::new();
            for &i in nodes {
                heights.push(self.height(i).await);
            }
            if heights.iter().all(|&x| x >= h) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "height {h} not reached in {limit:?} by {nodes:?}: {heights:?} ({seed_note})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Block ids and transactions of heights 1..=h on node i.
    async fn chain(&self, i: usize, h: u64) -> Vec<(String, Vec<String>)> {
        let mut out = Vec::with_capacity(h as usize);
        for height in 1..=h {
            let (code, b) = get_json(self.api(i), &format!("/blocks/{height}")).await;
            assert_eq!(code, 200, "node {i} block {height}: {b}");
            let txs = b["transactions"]
                .as_array()
                .expect("transactions")
                .iter()
                .map(|t| t.as_str().expect("hash").to_owned())
                .collect();
            out.push((b["id"].as_str().expect("id").to_owned(), txs));
        }
        out
    }

    async fn metrics(&self, i: usize) -> String {
        http(self.api(i), "GET", "/metrics", b"").await.1
    }

    fn index_of(&self, address: &str) -> Option<usize> {
        self.addresses
            .iter()
            .position(|a| a.eq_ignore_ascii_case(address))
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in self.children.iter_mut().flatten() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Submits distinct transactions to the running nodes until told to stop; keeps the hash of
/// every one a node accepted (HTTP 202).
fn spawn_load(
    apis: Vec<SocketAddr>,
    stop: Arc<AtomicBool>,
    pause: Duration,
) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut accepted = Vec::new();
        let mut n = 0usize;
        while !stop.load(Ordering::Relaxed) {
            let tx = KvTx::Put {
                key: format!("load{n}"),
                value: format!("{n}"),
                nonce: None,
            }
            .encode();
            if let Ok((202, body)) = try_http(apis[n % apis.len()], "POST", "/txs", &tx).await
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&body)
                && let Some(h) = v["hash"].as_str()
            {
                accepted.push(h.to_owned());
            }
            n += 1;
            tokio::time::sleep(pause).await;
        }
        accepted
    })
}

/// Checks that the nodes' chains agree up to the lowest height, that every accepted
/// transaction committed exactly once, and that no node saw an equivocation.
async fn check_cluster(p: &Procs, nodes: &[usize], accepted: &[String], note: &str) -> u64 {
    // Every accepted transaction commits (bounded wait for the last ones).
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_tx_height = 0;
    for h in accepted {
        loop {
            let (_, v) = get_json(p.api(nodes[0]), &format!("/txs/{h}")).await;
            if v["status"] == "committed" {
                last_tx_height = last_tx_height.max(v["height"].as_u64().expect("height"));
                break;
            }
            assert!(
                Instant::now() < deadline,
                "accepted tx {h} not committed: {v} ({note})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // The first node may be ahead of the others: compare up to a height every node has.
    p.wait_height(nodes, last_tx_height, Duration::from_secs(30), note)
        .await;
    let mut top = u64::MAX;
    for &i in nodes {
        top = top.min(p.height(i).await);
    }
    let reference = p.chain(nodes[0], top).await;
    for &i in &nodes[1..] {
        let other = p.chain(i, top).await;
        for (h, (a, b)) in reference.iter().zip(&other).enumerate() {
            assert_eq!(a, b, "node {i} differs at height {} ({note})", h + 1);
        }
    }
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for (_, txs) in &reference {
        for t in txs {
            *seen.entry(t.as_str()).or_default() += 1;
        }
    }
    assert!(
        seen.values().all(|&c| c == 1),
        "a transaction committed twice ({note})"
    );
    let committed: HashSet<&str> = seen.keys().copied().collect();
    for h in accepted {
        assert!(
            committed.contains(h.as_str()),
            "accepted tx {h} is not in the chain up to {top} ({note})"
        );
    }
    for &i in nodes {
        let text = p.metrics(i).await;
        assert_eq!(
            metric_sum(&text, "dstack_evidence_total"),
            0.0,
            "node {i} saw an equivocation by an honest node ({note}):\n{text}"
        );
    }
    top
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_twenty_times_leader_kills_and_late_start_through_sync() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut rng = Rng::from_env("sigkill");
    let note = format!("seed {}", rng.0);
    let mut p = Procs::new();
    // Node 0 (power 1) starts late: the others hold 6 of 7, above Q = 5.
    for i in 1..4 {
        p.start(i).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let apis: Vec<SocketAddr> = (0..4).map(|i| p.api(i)).collect();
    let load = spawn_load(apis, stop.clone(), Duration::from_millis(15));
    // More than one sync page (256 blocks) behind.
    p.wait_height(&[1, 2, 3], 300, Duration::from_secs(180), &note)
        .await;
    let late_from = Instant::now();
    p.start(0).await;
    let target = p.height(3).await;
    p.wait_height(&[0], target, Duration::from_secs(60), &note)
        .await;
    eprintln!(
        "late node caught up {target} blocks in {:.1} s",
        late_from.elapsed().as_secs_f64()
    );

    // 20 SIGKILLs at random moments of nodes whose power is at most P - Q = 2; every third
    // one is the current leader.
    let mut leader_kills = 0;
    let mut resume_ms = Vec::new();
    for k in 0..20 {
        let victim = if k % 3 == 0 {
            // The leader as the power-3 node sees it; wait (bounded) for a round led by one
            // of the others.
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let st = p.status(3).await.expect("node 3 up");
                let leader = st["leader"].as_str().unwrap_or_default().to_owned();
                match p.index_of(&leader) {
                    Some(i) if i < 3 => break i,
                    _ => {}
                }
                assert!(
                    Instant::now() < deadline,
                    "no leader of power <= 2 ({note})"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        } else {
            rng.below(3) as usize
        };
        tokio::time::sleep(Duration::from_millis(rng.below(400))).await;
        let others: Vec<usize> = (0..4).filter(|&i| i != victim).collect();
        let mut h0 = 0;
        for &i in &others {
            h0 = h0.max(p.height(i).await);
        }
        let killed_at = Instant::now();
        p.kill(victim);
        if k % 3 == 0 {
            leader_kills += 1;
        }
        p.wait_height(&others, h0 + 2, Duration::from_secs(15), &note)
            .await;
        resume_ms.push(killed_at.elapsed().as_millis() as u64);
        p.start(victim).await;
        let target = p.height(3).await;
        p.wait_height(&[victim], target, Duration::from_secs(30), &note)
            .await;
    }
    stop.store(true, Ordering::Relaxed);
    let accepted = load.await.expect("load task");
    assert!(
        accepted.len() > 500,
        "only {} transactions accepted",
        accepted.len()
    );
    let top = check_cluster(&p, &[0, 1, 2, 3], &accepted, &note).await;
    resume_ms.sort_unstable();
    eprintln!(
        "20 SIGKILLs ({leader_kills} of the leader): {top} blocks agree, {} txs once each; \
         commits resumed after a kill in median {} ms, max {} ms",
        accepted.len(),
        resume_ms[resume_ms.len() / 2],
        resume_ms[resume_ms.len() - 1]
    );
    for i in 0..4 {
        p.stop(i);
    }
}

/// A key used from outside the cluster: member 0's (a peer that signs validly but misbehaves)
/// or a key no token authorizes (a non-member with a valid identity).
struct Rogue {
    net: NetHandle,
    signer: K256Signer,
    domain: Domain,
    genesis_qc: QuorumCert,
}

impl Rogue {
    async fn connect(p: &Procs, targets: &[usize]) -> Self {
        Self::connect_as(p, targets, 0).await
    }

    /// Connects with the key `secret(key)` (0..4 are the members).
    async fn connect_as(p: &Procs, targets: &[usize], key: usize) -> Self {
        let mut cfg = NetConfig::new(secret(key), CHAIN_ID, &hex::encode(CONTRACT));
        cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")];
        cfg.bootstrap = targets
            .iter()
            .map(|&i| {
                format!("/ip4/127.0.0.1/tcp/{}", p.p2p[i])
                    .parse()
                    .expect("addr")
            })
            .collect();
        cfg.heartbeat = Duration::from_millis(100);
        let metrics = Arc::new(node::metrics::Metrics::new());
        // It serves nothing: its gate has no server behind it.
        let gate = node::serve::Gate::new(&node::serve::ServeConfig::default());
        let (net, mut events) = spawn(cfg, metrics, gate).await.expect("rogue network");
        let members: HashSet<PeerId> = (0..4)
            .map(|i| {
                keypair_from_secret(&secret(i))
                    .expect("key")
                    .public()
                    .to_peer_id()
            })
            .collect();
        net.set_members(members).await.expect("members");
        // Drain events so the network task never blocks on us.
        tokio::spawn(async move { while events.recv().await.is_some() {} });
        let infos = common::members(&p.p2p)
            .into_iter()
            .map(|m| m.info)
            .collect();
        let set = ValidatorSet::from_members(infos).expect("set");
        let domain = Domain::new(CHAIN_ID, Address(CONTRACT), GENESIS_ID);
        let genesis = domain.genesis_block_id(0, &GENESIS_CHAIN_BLOCK, &set.hash());
        let rogue = Self {
            net,
            signer: K256Signer::from_secret(&secret(key)).expect("key"),
            domain,
            genesis_qc: QuorumCert::genesis(0, genesis),
        };
        // Wait (bounded) until it is connected to every target.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let peers = rogue.net.peers().await.expect("peers");
            if targets.iter().all(|&i| {
                let id = keypair_from_secret(&secret(i))
                    .expect("key")
                    .public()
                    .to_peer_id();
                peers.contains(&id)
            }) {
                break;
            }
            assert!(Instant::now() < deadline, "rogue peer did not connect");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Gossip needs the subscriptions exchanged too.
        tokio::time::sleep(Duration::from_secs(1)).await;
        rogue
    }

    /// A validly signed timeout (by the rogue's key).
    fn timeout(&self, epoch: u64, round: u64) -> GossipBody {
        let mut qc = self.genesis_qc.clone();
        qc.epoch = epoch;
        let t = Timeout {
            epoch,
            round,
            signature: self
                .signer
                .sign(&self.domain.timeout_digest(epoch, round, qc.round)),
            high_qc: qc,
            high_tc: None,
            signer: self.signer.address(),
        };
        GossipBody::Timeout(node::wire::timeout_to_wire(&t))
    }

    /// A validly signed vote (by the rogue's key) for a block nobody proposed.
    fn vote(&self, round: u64, salt: u64) -> RequestBody {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&salt.to_be_bytes());
        let block_id = BlockId(id);
        let v = Vote {
            epoch: 0,
            round,
            block_id,
            signer: self.signer.address(),
            signature: self
                .signer
                .sign(&self.domain.vote_digest(0, round, &block_id)),
        };
        RequestBody::Vote(node::wire::vote_to_wire(&v))
    }
}

fn peer_of(i: usize) -> PeerId {
    keypair_from_secret(&secret(i))
        .expect("key")
        .public()
        .to_peer_id()
}

fn labelled(text: &str, name: &str, reason: &str) -> f64 {
    metric_sum(text, &format!("{name}{{reason=\"{reason}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_messages_are_refused_by_reason_and_lag_is_not_punished() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut p = Procs::new();
    for i in 1..4 {
        p.start(i).await;
    }
    // Far enough that rounds 1..=50 are stale for everyone.
    p.wait_height(&[1, 2, 3], 150, Duration::from_secs(90), "no seed")
        .await;
    let rogue = Rogue::connect(&p, &[3]).await;
    let target = peer_of(3);
    let before = p.metrics(3).await;

    // Stale (replayed old-round) timeouts and votes, as a lagging honest member would send:
    // ignored, never penalized.
    for r in 1..=50 {
        rogue
            .net
            .publish(rogue.timeout(0, r))
            .await
            .expect("publish");
    }
    for r in 1..=20 {
        let _ = rogue.net.request(target, rogue.vote(r, r)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = p.metrics(3).await;
        let stale = labelled(&text, "dstack_messages_ignored_total", "stale_timeout")
            + labelled(
                &text,
                "dstack_messages_ignored_total",
                "timeout_outside_the_round_window",
            );
        // Every member collects votes (no "vote for another leader" any more): all stale.
        let votes = labelled(
            &text,
            "dstack_messages_ignored_total",
            "vote_outside_the_round_window",
        );
        if stale >= 50.0 && votes >= 20.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "stale messages not all counted as ignored (timeouts {stale}, votes {votes}):\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = p.metrics(3).await;
    assert_eq!(
        metric_sum(&before, "dstack_messages_rejected_total"),
        metric_sum(&after, "dstack_messages_rejected_total"),
        "stale messages must not be rejected:\n{after}"
    );
    // Still connected and still heard: a later stale message is delivered and counted.
    assert!(rogue.net.peers().await.expect("peers").contains(&target));
    rogue
        .net
        .publish(rogue.timeout(0, 51))
        .await
        .expect("publish after the stale burst");

    // A far-future epoch (ignored), then malformed gossip, a batch on the consensus topic and
    // an oversized message (rejected). The ignored one goes first: each Reject costs the
    // rogue gossip score, and after three it is graylisted, so a message sent after them may
    // be dropped before validation, depending on when the verdicts land.
    rogue
        .net
        .publish(rogue.timeout(1_000, 5))
        .await
        .expect("publish future epoch");
    rogue
        .net
        .publish_raw(TopicKind::Consensus, vec![0xff, 0xff, 0xff, 0x0f])
        .await
        .expect("publish garbage");
    let batch = proto::v1::GossipMessage::new(GossipBody::Batch(proto::v1::Batch {
        transactions: vec![b"x".to_vec()],
    }));
    rogue
        .net
        .publish_raw(TopicKind::Consensus, prost::Message::encode_to_vec(&batch))
        .await
        .expect("publish misplaced batch");
    // Over the message limit but under the transport's frame limit, so it reaches validation.
    rogue
        .net
        .publish_raw(
            TopicKind::Consensus,
            vec![0u8; proto::limits::MAX_GOSSIP_BYTES + 1024],
        )
        .await
        .expect("publish oversized");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = p.metrics(3).await;
        let malformed = labelled(&text, "dstack_messages_rejected_total", "malformed");
        let wrong_topic = labelled(&text, "dstack_messages_rejected_total", "wrong_topic");
        let oversized = labelled(&text, "dstack_messages_rejected_total", "oversized");
        let epoch = labelled(
            &text,
            "dstack_messages_ignored_total",
            "message_of_a_later_epoch",
        );
        if malformed >= 1.0 && wrong_topic >= 1.0 && oversized >= 1.0 && epoch >= 1.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "hostile messages not counted by reason (malformed {malformed}, wrong topic \
             {wrong_topic}, oversized {oversized}, other epoch {epoch}):\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The cluster never stopped.
    let h = p.height(3).await;
    p.wait_height(&[1, 2, 3], h + 10, Duration::from_secs(20), "no seed")
        .await;
    for i in 1..4 {
        p.stop(i);
    }
}

/// A node with a valid key that no token authorizes: every consensus message it signs is ignored
/// (never rejected, since an honest forwarder may relay it) and it never appears in a quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_key_is_ignored_and_never_in_a_quorum() {
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut p = Procs::new();
    for i in 0..4 {
        p.start(i).await;
    }
    p.wait_height(&[0, 1, 2, 3], 20, Duration::from_secs(60), "no seed")
        .await;
    let outsider = Rogue::connect_as(&p, &[3], 9).await;
    let outsider_address = format!("0x{}", hex::encode(outsider.signer.address().0));
    let target = peer_of(3);
    let before = p.metrics(3).await;
    let round = p
        .status(3)
        .await
        .and_then(|s| s["round"].as_u64())
        .expect("round of node 3");
    // Current-round timeouts (as if it wanted a TC) and votes for every nearby round.
    for r in round..round + 30 {
        outsider
            .net
            .publish(outsider.timeout(0, r))
            .await
            .expect("publish");
        let _ = outsider.net.request(target, outsider.vote(r, r)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = p.metrics(3).await;
        let timeouts = labelled(
            &text,
            "dstack_messages_ignored_total",
            "timeout_from_a_non_member",
        ) + labelled(&text, "dstack_messages_ignored_total", "stale_timeout");
        let votes = labelled(&text, "dstack_messages_ignored_total", "non_member")
            - labelled(&before, "dstack_messages_ignored_total", "non_member");
        if timeouts >= 30.0 && votes >= 30.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "non-member messages not all ignored (timeouts {timeouts}, votes {votes}):\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let after = p.metrics(3).await;
    assert_eq!(
        metric_sum(&before, "dstack_messages_rejected_total"),
        metric_sum(&after, "dstack_messages_rejected_total"),
        "a non-member's validly signed messages must be ignored, not rejected:\n{after}"
    );
    // Still connected (no penalty), the cluster keeps committing, and no QC names the outsider.
    assert!(outsider.net.peers().await.expect("peers").contains(&target));
    let h = p.height(3).await;
    p.wait_height(&[0, 1, 2, 3], h + 10, Duration::from_secs(20), "no seed")
        .await;
    let top = p.height(3).await;
    for height in top.saturating_sub(20).max(1)..=top {
        let (_, b) = get_json(p.api(3), &format!("/blocks/{height}")).await;
        let signers = b["qc_signers"].as_array().expect("qc_signers");
        assert!(
            !signers
                .iter()
                .any(|s| s.as_str() == Some(outsider_address.as_str())),
            "block {height}'s QC names the non-member: {b}"
        );
        assert!(!signers.is_empty(), "block {height} has no QC signers: {b}");
    }
    for i in 0..4 {
        p.stop(i);
    }
}

/// Peak resident memory of a process, from the kernel's own high-water mark.
fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rss_stays_under_1_gib_through_a_60_second_flood() {
    const FLOOD: Duration = Duration::from_secs(60);
    let _turn = ONE_AT_A_TIME.lock().await;
    let mut p = Procs::new();
    for i in 1..4 {
        p.start(i).await;
    }
    p.wait_height(&[1, 2, 3], 10, Duration::from_secs(60), "no seed")
        .await;
    let rogue = Arc::new(Rogue::connect(&p, &[3]).await);
    let pid = p.pid(3);
    let target = peer_of(3);
    let stop = Arc::new(AtomicBool::new(false));
    let sent_gossip = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let full = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // Transactions as fast as 32 concurrent clients can post them, 1 KiB each (each waits
    // for its batch to be stored before it sends the next).
    for c in 0..32u64 {
        let (stop, accepted, full, api) = (stop.clone(), accepted.clone(), full.clone(), p.api(3));
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let tx = KvTx::Put {
                    key: format!("flood{c}-{n}"),
                    value: "x".repeat(1000),
                    nonce: None,
                }
                .encode();
                match try_http(api, "POST", "/txs", &tx).await {
                    Ok((202, _)) => accepted.fetch_add(1, Ordering::Relaxed),
                    Ok((503, _)) => full.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                n += 1;
            }
        }));
    }
    // Far-future rounds and epochs, validly signed by a member, plus far-future votes.
    {
        let (stop, sent, rogue) = (stop.clone(), sent_gossip.clone(), rogue.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let body = if k.is_multiple_of(2) {
                    rogue.timeout(0, 1_000_000 + k)
                } else {
                    rogue.timeout(1_000 + k, 7)
                };
                if rogue.net.publish(body).await.is_ok() {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                k += 1;
                if k.is_multiple_of(100) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }));
    }
    {
        let (stop, sent, rogue) = (stop.clone(), sent_gossip.clone(), rogue.clone());
        tasks.push(tokio::spawn(async move {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                if rogue
                    .net
                    .request(target, rogue.vote(1_000_000 + k, k))
                    .await
                    .is_ok()
                {
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                k += 1;
            }
        }));
    }
    let h_start = p.height(3).await;
    let started = Instant::now();
    let mut rss_max = 0u64;
    while started.elapsed() < FLOOD {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss_max = rss_max.max(peak_rss_bytes(pid));
        assert!(
            rss_max < 1 << 30,
            "node RSS {} MiB over 1 GiB after {:?}",
            rss_max >> 20,
            started.elapsed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let h_end = p.height(3).await;
    let text = p.metrics(3).await;
    let ignored = metric_sum(&text, "dstack_messages_ignored_total");
    eprintln!(
        "60 s flood: peak RSS {} MiB; {} txs accepted, {} refused as full; {} far-future \
         messages sent, {ignored} ignored; {} blocks committed meanwhile",
        rss_max >> 20,
        accepted.load(Ordering::Relaxed),
        full.load(Ordering::Relaxed),
        sent_gossip.load(Ordering::Relaxed),
        h_end - h_start
    );
    assert!(
        sent_gossip.load(Ordering::Relaxed) > 20_000,
        "the flood was too weak"
    );
    assert!(
        ignored > 10_000.0,
        "the flood did not reach the node:\n{text}"
    );
    assert!(
        accepted.load(Ordering::Relaxed) > 10_000,
        "too few transactions accepted"
    );
    assert!(
        h_end > h_start + 20,
        "the cluster stalled under the flood: {h_start} -> {h_end}"
    );
    for i in 1..4 {
        p.stop(i);
    }
}
