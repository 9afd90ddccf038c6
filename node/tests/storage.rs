//! Bounded storage on real nodes: a member pushing batches at line rate is held to its share
//! before anything reaches the disk, and a cluster that prunes below its retention horizon keeps
//! committing, restarts from a pruned store and serves block sync from its horizon.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::{free_port, http, metric_sum, node_params, put, secret};
use libp2p::PeerId;
use node::metrics::Metrics;
use node::net::{NetConfig, NetEvent, keypair_from_secret, spawn};
use node::node::{NodeParams, RunningNode, start};

fn peer_id(i: usize) -> PeerId {
    keypair_from_secret(&secret(i))
        .expect("key")
        .public()
        .to_peer_id()
}

/// Waits (bounded) until `ok` holds for node `n`'s metrics text.
async fn wait_metrics(n: &RunningNode, what: &str, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = n.metrics.encode();
        if ok(&text) {
            return text;
        }
        assert!(Instant::now() < deadline, "{what} not within 60 s:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn batches_bytes(text: &str) -> f64 {
    metric_sum(text, r#"dstack_storage_bytes{file="batches"}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_pushing_more_batches_than_its_share_leaves_the_log_bounded() {
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let dir = tempfile::tempdir().expect("tmp");
    // Node 1 alone: no quorum, so nothing commits and nothing leaves its mempool.
    let n1 = start(node_params(1, dir.path(), &ports, 0))
        .await
        .expect("node 1");
    // Member 0's key on member 0's address, pushing batches as fast as its streams take them.
    let mut cfg = NetConfig::new(secret(0), common::CHAIN_ID, &hex::encode(common::CONTRACT));
    cfg.listen = vec![
        format!("/ip4/127.0.0.1/tcp/{}", ports[0])
            .parse()
            .expect("addr"),
    ];
    cfg.heartbeat = Duration::from_millis(100);
    let gate = node::serve::Gate::new(&node::serve::ServeConfig::default());
    let (net, mut events) = spawn(cfg, std::sync::Arc::new(Metrics::new()), gate)
        .await
        .expect("spawn");
    net.set_members([peer_id(0), peer_id(1)].into_iter().collect::<HashSet<_>>())
        .await
        .expect("members");
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if let Some(NetEvent::PeerConnected(p)) = events.recv().await
                && p == n1.peer_id
            {
                return;
            }
        }
    })
    .await
    .expect("node 1 dials member 0");
    // The share of one of four members: 4,096 / 4 batches.
    let share = 1_024u64;
    let pushed = 1_600u64;
    let tx_bytes = 2_000usize;
    for i in 0..pushed {
        let tx = [i.to_be_bytes().as_slice(), &vec![7u8; tx_bytes]].concat();
        let canonical = node::mempool::encode_batch(&[tx]);
        net.push_batch(proto::batch_gossip(&canonical))
            .await
            .expect("push");
        if i % 64 == 63 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let delivered = pushed - net.batch_pushes_dropped();
    assert!(
        delivered > share + 100,
        "only {delivered} pushes left member 0"
    );
    let over = (delivered - share) as f64;
    let text = wait_metrics(&n1, "the share refusals", |t| {
        metric_sum(t, r#"dstack_messages_ignored_total{reason="batch_quota"}"#) >= over
    })
    .await;
    assert_eq!(
        metric_sum(
            &text,
            r#"dstack_messages_ignored_total{reason="batch_quota"}"#
        ),
        over,
        "every batch beyond the share is dropped and counted"
    );
    // The log holds the share, measured by the pruner (a second at most after the last write).
    let record = (tx_bytes + 8 + 3 + 44) as f64;
    let text = wait_metrics(&n1, "the batch log measured", |t| {
        batches_bytes(t) >= share as f64 * record * 0.99
    })
    .await;
    let bytes = batches_bytes(&text);
    assert!(
        bytes <= share as f64 * record,
        "{bytes} bytes of batches for a share of {share} ({record} bytes each)"
    );
    n1.stop().await.expect("stop");
}

struct Cluster {
    dirs: Vec<tempfile::TempDir>,
    ports: Vec<u16>,
    nodes: Vec<Option<RunningNode>>,
}

/// Heights each node keeps in the pruning cluster.
const RETAIN: u64 = 150;

impl Cluster {
    fn params(&self, i: usize) -> NodeParams {
        let mut p = node_params(i, self.dirs[i].path(), &self.ports, 0);
        p.retain_heights = RETAIN;
        p
    }

    async fn start(&mut self, i: usize) {
        self.nodes[i] = Some(common::start_retrying(i, || self.params(i)).await);
    }

    fn node(&self, i: usize) -> &RunningNode {
        self.nodes[i].as_ref().expect("running")
    }

    fn height(&self, i: usize) -> u64 {
        self.node(i).status.read().expect("status").committed_height
    }

    async fn wait_height(&self, nodes: &[usize], h: u64) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !nodes.iter().all(|&i| self.height(i) >= h) {
            assert!(
                Instant::now() < deadline,
                "height {h} not reached: {:?}",
                nodes.iter().map(|&i| self.height(i)).collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn block_code(&self, i: usize, h: u64) -> u16 {
        http(self.node(i).api_addr, "GET", &format!("/blocks/{h}"), b"")
            .await
            .0
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pruning_cluster_restarts_from_its_horizon_and_serves_sync_from_it() {
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let mut c = Cluster {
        dirs: (0..4).map(|_| tempfile::tempdir().expect("tmp")).collect(),
        ports,
        nodes: (0..4).map(|_| None).collect(),
    };
    for i in 0..4 {
        c.start(i).await;
    }
    // Transactions, so that heights carry batches to prune too.
    for i in 0..20 {
        let (code, _) = http(c.node(3).api_addr, "POST", "/txs", &put(i)).await;
        assert_eq!(code, 202);
    }
    let first = 2 * RETAIN + 50;
    c.wait_height(&[0, 1, 2, 3], first).await;
    // Every node pruned below its horizon (the pruner runs each second).
    for i in 0..4 {
        wait_metrics(c.node(i), "pruning", |t| {
            metric_sum(t, r#"dstack_storage_pruned_total{kind="heights"}"#) >= RETAIN as f64
        })
        .await;
        assert_eq!(
            c.block_code(i, 1).await,
            404,
            "node {i} still holds height 1"
        );
        let top = c.height(i);
        assert_eq!(c.block_code(i, top - RETAIN / 2).await, 200);
    }
    // Node 0 (power 1) crashes and comes back a few dozen heights behind, less than the
    // horizon: it opens its own pruned store and the others serve it sync from theirs.
    c.nodes[0].take().expect("running").kill();
    let behind = c.height(1);
    c.wait_height(&[1, 2, 3], behind + 40).await;
    c.start(0).await;
    let target = c.height(1) + 10;
    c.wait_height(&[0], target).await;
    let text = c.node(0).metrics.encode();
    assert!(
        metric_sum(&text, "dstack_storage_bytes") > 0.0,
        "measured after the restart:\n{text}"
    );
    for n in c.nodes.iter_mut() {
        if let Some(n) = n.take() {
            n.stop().await.expect("clean stop");
        }
    }
}
