//! Request budgets on a real node (real libp2p on loopback, a real store): a non-member flooding
//! sync and block requests is refused past its budget, a crowd of fresh non-member PeerIds shares
//! one pool, and a member is served all along.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{free_port, node_params, secret};
use libp2p::{Multiaddr, PeerId};
use node::metrics::Metrics;
use node::net::{NetConfig, NetError, NetEvent, NetHandle, spawn};
use node::serve::budget::{Allowance, Limits};
use node::serve::{Gate, ServeConfig};
use proto::{RequestBody, ResponseBody};

/// Small budgets, so a test reaches them in a few requests; the member's is large.
fn limits() -> ServeConfig {
    let generous = Allowance {
        requests_per_sec: 10_000,
        request_burst: 10_000,
        in_flight: 64,
        bytes_per_sec: 1 << 30,
    };
    ServeConfig {
        workers: 2,
        limits: Limits {
            member: generous,
            non_member: Allowance {
                requests_per_sec: 1,
                request_burst: 3,
                ..generous
            },
            non_member_pool: Allowance {
                requests_per_sec: 1,
                request_burst: 6,
                ..generous
            },
            max_non_member_peers: 1024,
        },
    }
}

/// A client network with the key `key`, connected to `target`.
async fn client(key: [u8; 32], target: &Multiaddr, target_id: PeerId) -> NetHandle {
    let mut cfg = NetConfig::new(key, common::CHAIN_ID, &hex::encode(common::CONTRACT));
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")];
    cfg.bootstrap = vec![target.clone()];
    let gate = Gate::new(&ServeConfig::default());
    let (net, mut events) = spawn(cfg, Arc::new(Metrics::new()), gate)
        .await
        .expect("client network");
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(ev) = events.recv().await {
            if matches!(ev, NetEvent::PeerConnected(p) if p == target_id) {
                return;
            }
        }
    })
    .await
    .expect("connected within 20 s");
    tokio::spawn(async move { while events.recv().await.is_some() {} });
    net
}

fn sync() -> RequestBody {
    RequestBody::Sync(proto::v1::SyncRequest {
        from_height: 1,
        max_blocks: 16,
        known_epoch: 0,
    })
}

fn blocks() -> RequestBody {
    RequestBody::Blocks(proto::v1::BlockRequest {
        block_id: vec![1; 32],
        stop_at_round: 0,
        max_blocks: 16,
    })
}

/// Sends `n` requests one after the other (sync and block requests in turn); returns how many
/// were answered and the refusals' texts.
async fn flood(net: &NetHandle, to: PeerId, n: usize) -> (usize, Vec<String>) {
    let mut served = 0;
    let mut refused = Vec::new();
    for i in 0..n {
        let body = if i % 2 == 0 { sync() } else { blocks() };
        match net.request(to, body).await {
            Ok(ResponseBody::Sync(_) | ResponseBody::Blocks(_)) => served += 1,
            Ok(other) => panic!("unexpected answer {other:?}"),
            Err(NetError::Remote { message, .. }) => refused.push(message),
            Err(e) => panic!("request failed: {e}"),
        }
    }
    (served, refused)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_are_refused_past_their_budget_while_a_member_is_served() {
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut params = node_params(0, dir.path(), &ports, 0);
    params.serve = limits();
    let server = node::node::start(params).await.expect("node");
    let addr = server.listen_addrs[0].clone();
    let id = server.peer_id;
    let started = Instant::now();

    // One non-member, twenty requests: its burst of 3 (plus one a second) and no more.
    let outsider = client([0x51; 32], &addr, id).await;
    let (served, refused) = flood(&outsider, id, 20).await;
    let secs = started.elapsed().as_secs() as usize;
    assert!(
        served <= 3 + secs + 1,
        "{served} served in {secs} s past a burst of 3 at 1/s"
    );
    assert!(served >= 1, "the first requests are within budget");
    assert!(
        refused
            .iter()
            .all(|m| m.contains("non_member_over_request_rate")),
        "{refused:?}"
    );

    // Fresh PeerIds do not get fresh budgets: together they draw on one pool of 6.
    let mut crowd_served = 0;
    let mut pool_refusals = 0;
    for k in 0..6u8 {
        let sybil = client([0x60 + k; 32], &addr, id).await;
        let (s, r) = flood(&sybil, id, 3).await;
        crowd_served += s;
        pool_refusals += r
            .iter()
            .filter(|m| m.contains("non_member_pool_over_request_rate"))
            .count();
    }
    let secs = started.elapsed().as_secs() as usize;
    assert!(
        served + crowd_served <= 6 + secs + 1,
        "non-members got {} answers in {secs} s from a pool of 6 at 1/s",
        served + crowd_served
    );
    assert!(pool_refusals >= 1, "the pool refused nobody");

    // A member (key of member 1) is served every time, the pool being spent.
    let member = client(secret(1), &addr, id).await;
    let (served, refused) = flood(&member, id, 40).await;
    assert_eq!((served, refused.len()), (40, 0), "{refused:?}");

    let text = server.metrics.encode();
    for reason in [
        "non_member_over_request_rate",
        "non_member_pool_over_request_rate",
    ] {
        let line = format!("dstack_messages_rejected_total{{reason=\"{reason}\"}}");
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }
    server.stop().await.expect("stop");
}
