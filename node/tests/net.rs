//! The libp2p network on real loopback sockets: gossip between members with the driver's verdict,
//! signed gossip (a forged publisher is dropped), request-response (sync served from a real
//! store), malformed gossip rejected and counted, votes from non-members refused, the
//! lag-tolerant Ignore path that costs no score, and batches pushed on streams (members only,
//! size-bounded).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use libp2p::futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::gossipsub::MessageAcceptance;
use libp2p::{Multiaddr, PeerId};
use node::metrics::Metrics;
use node::net::{
    NetConfig, NetEvent, NetHandle, TopicKind, Topics, batch_protocol, keypair_from_secret, spawn,
};
use node::serve::{Gate, ServeConfig};
use proto::{GossipBody, RequestBody, ResponseBody};
use tokio::sync::mpsc;

const CONTRACT: &str = "0x00000000000000000000000000000000000000aa";

struct Peer {
    net: NetHandle,
    events: mpsc::Receiver<NetEvent>,
    metrics: Arc<Metrics>,
    /// Where its batch, block and sync requests go (no server behind it unless a test starts one).
    gate: Gate,
}

async fn node(seed: u8, bootstrap: Vec<Multiaddr>) -> Peer {
    node_with(seed, bootstrap, 0).await
}

/// A node reading members' batch streams at `batch_bytes_per_sec` together (0: unlimited).
async fn node_with(seed: u8, bootstrap: Vec<Multiaddr>, batch_bytes_per_sec: u64) -> Peer {
    let mut cfg = NetConfig::new([seed; 32], 31337, CONTRACT);
    cfg.batch_bytes_per_sec = batch_bytes_per_sec;
    cfg.listen = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")];
    cfg.bootstrap = bootstrap;
    cfg.heartbeat = Duration::from_millis(100);
    cfg.request_timeout = Duration::from_secs(5);
    let metrics = Arc::new(Metrics::new());
    let gate = Gate::new(&ServeConfig::default());
    let (net, events) = spawn(cfg, metrics.clone(), gate.clone())
        .await
        .expect("spawn");
    Peer {
        net,
        events,
        metrics,
        gate,
    }
}

fn peer_id(seed: u8) -> PeerId {
    keypair_from_secret(&[seed; 32])
        .expect("key")
        .public()
        .to_peer_id()
}

/// Waits (bounded) for the first event that `pick` accepts.
async fn wait_for<T>(
    events: &mut mpsc::Receiver<NetEvent>,
    mut pick: impl FnMut(NetEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let ev = events.recv().await.expect("network task alive");
            if let Some(t) = pick(ev) {
                return t;
            }
        }
    })
    .await
    .expect("event within 20 s")
}

fn timeout_msg(round: u64) -> GossipBody {
    GossipBody::Timeout(proto::v1::Timeout {
        epoch: 0,
        round,
        high_qc: None,
        high_tc: None,
        signer: vec![1; 20],
        signature: vec![2; 65],
    })
}

/// Two members connected and subscribed to each other's consensus topic.
async fn pair() -> (Peer, Peer) {
    let mut a = node(1, Vec::new()).await;
    let mut b = node(2, a.net.listen_addrs.clone()).await;
    let members: HashSet<PeerId> = [peer_id(1), peer_id(2)].into_iter().collect();
    a.net.set_members(members.clone()).await.expect("members");
    b.net.set_members(members).await.expect("members");
    let pb = b.net.local_peer_id;
    let pa = a.net.local_peer_id;
    wait_for(&mut a.events, |e| match e {
        NetEvent::PeerSubscribed(p, TopicKind::Consensus) if p == pb => Some(()),
        _ => None,
    })
    .await;
    wait_for(&mut b.events, |e| match e {
        NetEvent::PeerSubscribed(p, TopicKind::Consensus) if p == pa => Some(()),
        _ => None,
    })
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_reaches_members_and_rejects_garbage() {
    let (a, mut b) = pair().await;
    assert_eq!(a.net.local_peer_id, peer_id(1));

    a.net.publish(timeout_msg(3)).await.expect("publish");
    let (id, src, body, from_member) = wait_for(&mut b.events, |e| match e {
        NetEvent::Gossip {
            id,
            propagation_source,
            body,
            from_member,
            ..
        } => Some((id, propagation_source, body, from_member)),
        _ => None,
    })
    .await;
    assert!(from_member);
    assert_eq!(src, peer_id(1));
    assert!(matches!(*body, GossipBody::Timeout(ref t) if t.round == 3));
    b.net
        .report(id, src, MessageAcceptance::Accept)
        .await
        .expect("report");

    // A stale message the driver ignores costs the sender nothing.
    a.net.publish(timeout_msg(1)).await.expect("publish");
    let (id, src) = wait_for(&mut b.events, |e| match e {
        NetEvent::Gossip {
            id,
            propagation_source,
            ..
        } => Some((id, propagation_source)),
        _ => None,
    })
    .await;
    b.net
        .report(id, src, MessageAcceptance::Ignore)
        .await
        .expect("report");
    let before = b
        .net
        .peer_score(peer_id(1))
        .await
        .expect("score")
        .expect("scored peer");
    assert!(
        before >= 0.0,
        "ignored messages must not penalize: {before}"
    );

    // Garbage on the consensus topic: rejected by the network, counted, never handed over.
    a.net
        .publish_raw(TopicKind::Consensus, vec![0xff, 0xff, 0xff, 0x0f])
        .await
        .expect("publish garbage");
    // A batch on the consensus topic: wrong topic, rejected too.
    let batch = proto::v1::GossipMessage::new(GossipBody::Batch(proto::v1::Batch {
        transactions: vec![b"x".to_vec()],
    }));
    a.net
        .publish_raw(TopicKind::Consensus, prost::Message::encode_to_vec(&batch))
        .await
        .expect("publish misplaced batch");
    // Then a good message, so we know the earlier ones were processed.
    a.net.publish(timeout_msg(9)).await.expect("publish");
    let round = wait_for(&mut b.events, |e| match e {
        NetEvent::Gossip { body, .. } => match *body {
            GossipBody::Timeout(t) => Some(t.round),
            other => panic!("unexpected gossip {other:?}"),
        },
        _ => None,
    })
    .await;
    assert_eq!(round, 9);
    let text = b.metrics.encode();
    assert!(
        text.contains(r#"dstack_messages_rejected_total{reason="malformed"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"dstack_messages_rejected_total{reason="wrong_topic"} 1"#),
        "{text}"
    );
    let after = b
        .net
        .peer_score(peer_id(1))
        .await
        .expect("score")
        .expect("scored peer");
    assert!(
        after < before,
        "rejects must lower the score: {before} -> {after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_request_round_trip_and_member_only_votes() {
    let (a, b) = pair().await;
    let pb = b.net.local_peer_id;
    // B answers from a real (empty) store on its server's threads.
    let dir = tempfile::tempdir().expect("tempdir");
    let store = node::storage::Store::open(dir.path()).expect("store");
    let status = node::api::SharedStatus::default();
    let _server =
        node::serve::Server::start(&b.gate, store, status, b.net.clone()).expect("server");
    let r = a
        .net
        .request(
            pb,
            RequestBody::Sync(proto::v1::SyncRequest {
                from_height: 42,
                max_blocks: 10,
                known_epoch: 0,
            }),
        )
        .await
        .expect("sync response");
    match r {
        ResponseBody::Sync(s) => assert!(s.blocks.is_empty() && s.records.is_empty()),
        other => panic!("unexpected {other:?}"),
    }
    let r = a
        .net
        .request(
            pb,
            RequestBody::Blocks(proto::v1::BlockRequest {
                block_id: vec![3; 32],
                stop_at_round: 0,
                max_blocks: 4,
            }),
        )
        .await
        .expect("block response");
    assert!(
        matches!(r, ResponseBody::Blocks(ref b) if b.blocks.is_empty()),
        "{r:?}"
    );

    // A non-member's vote is refused by the network layer with a clear error.
    let mut c = node(3, a.net.listen_addrs.clone()).await;
    let pa = a.net.local_peer_id;
    wait_for(&mut c.events, |e| match e {
        NetEvent::PeerConnected(p) if p == pa => Some(()),
        _ => None,
    })
    .await;
    let vote = RequestBody::Vote(proto::v1::Vote {
        epoch: 0,
        round: 1,
        block_id: vec![0; 32],
        signer: vec![0; 20],
        signature: vec![0; 65],
    });
    let err = c.net.request(pa, vote).await.expect_err("refused");
    assert!(err.to_string().contains("members only"), "{err}");
    assert!(
        a.metrics
            .encode()
            .contains(r#"dstack_messages_ignored_total{reason="non_member"} 1"#)
    );

    // Garbage request bytes: an error answer, counted as malformed.
    let err = c
        .net
        .request_raw(pa, vec![0xff, 0xff, 0xff])
        .await
        .expect_err("garbage");
    assert!(err.to_string().contains("malformed"), "{err}");
}

/// A member's votes the driver has not answered are bounded: one more is refused at once, and
/// an answer frees a place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_votes_holds_few_places() {
    use node::net::VOTES_IN_FLIGHT;
    let (a, mut b) = pair().await;
    let pb = b.net.local_peer_id;
    let vote = |round: u64| {
        RequestBody::Vote(proto::v1::Vote {
            epoch: 0,
            round,
            block_id: vec![0; 32],
            signer: vec![0; 20],
            signature: vec![0; 65],
        })
    };
    let mut asks = Vec::new();
    for round in 0..VOTES_IN_FLIGHT as u64 {
        let net = a.net.clone();
        let body = vote(round + 1);
        asks.push(tokio::spawn(async move { net.request(pb, body).await }));
    }
    // B's driver (this test) holds every one unanswered.
    let mut held = Vec::new();
    while held.len() < VOTES_IN_FLIGHT {
        held.push(
            wait_for(&mut b.events, |e| match e {
                NetEvent::Vote { responder, .. } => Some(responder),
                _ => None,
            })
            .await,
        );
    }
    let err = a.net.request(pb, vote(99)).await.expect_err("refused");
    assert!(err.to_string().contains("votes unanswered"), "{err}");
    assert!(
        b.metrics
            .encode()
            .contains(r#"dstack_messages_rejected_total{reason="votes_in_flight"} 1"#)
    );
    // Answering one frees its place.
    let first = held.remove(0);
    b.net
        .respond(first, ResponseBody::Ack(proto::v1::Ack {}))
        .await
        .expect("respond");
    let next = a.net.clone();
    let again = tokio::spawn(async move { next.request(pb, vote(100)).await });
    wait_for(&mut b.events, |e| match e {
        NetEvent::Vote { vote, .. } if vote.round == 100 => Some(()),
        _ => None,
    })
    .await;
    drop(held);
    drop(again);
    drop(asks);
}

/// Without a server behind the gate, a sync request gets a clear refusal, counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_server_are_refused_as_busy() {
    let (a, b) = pair().await;
    let err = a
        .net
        .request(
            b.net.local_peer_id,
            RequestBody::Sync(proto::v1::SyncRequest {
                from_height: 1,
                max_blocks: 1,
                known_epoch: 0,
            }),
        )
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("server_busy"), "{err}");
    wait_for_metric(
        &b.metrics,
        r#"dstack_messages_rejected_total{reason="server_busy"} 1"#,
    )
    .await;
}

/// A gossip message whose `source` names a member but is not signed by it (a non-member's
/// gossipsub claiming to relay member 1's message) never reaches the driver as `from_member`:
/// B drops it for its missing signature and penalizes the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gossip_with_a_forged_source_is_dropped() {
    use libp2p::futures::StreamExt;
    use libp2p::gossipsub;
    use libp2p::swarm::SwarmEvent;

    let mut b = node(2, Vec::new()).await;
    let members: HashSet<PeerId> = [peer_id(1), peer_id(2)].into_iter().collect();
    b.net.set_members(members).await.expect("members");

    // The forger: plain gossipsub that stamps member 1's PeerId as the publisher, unsigned.
    let key = libp2p::identity::Keypair::generate_secp256k1();
    let forger = key.public().to_peer_id();
    let cfg = gossipsub::ConfigBuilder::default()
        .validation_mode(gossipsub::ValidationMode::Permissive)
        .heartbeat_interval(Duration::from_millis(100))
        .build()
        .expect("gossipsub config");
    let mut gs: gossipsub::Behaviour =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Author(peer_id(1)), cfg)
            .expect("gossipsub");
    let topic = Topics::new(31337, CONTRACT).consensus;
    gs.subscribe(&topic).expect("subscribe");
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            libp2p::tcp::Config::default(),
            libp2p::noise::Config::new,
            libp2p::yamux::Config::default,
        )
        .expect("transport")
        .with_behaviour(|_| gs)
        .expect("behaviour")
        .build();
    swarm.dial(b.net.listen_addrs[0].clone()).expect("dial");
    let pb = b.net.local_peer_id;
    tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if let SwarmEvent::Behaviour(gossipsub::Event::Subscribed { peer_id, .. }) =
                swarm.select_next_some().await
                && peer_id == pb
            {
                return;
            }
        }
    })
    .await
    .expect("B subscribed within 20 s");
    let forged = prost::Message::encode_to_vec(&proto::v1::GossipMessage::new(timeout_msg(5)));
    swarm
        .behaviour_mut()
        .publish(topic, forged)
        .expect("publish");
    let drive = tokio::spawn(async move {
        loop {
            swarm.select_next_some().await;
        }
    });

    // B must penalize the forger and never hand the message over.
    let verdict = tokio::time::timeout(Duration::from_secs(20), async {
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        loop {
            tokio::select! {
                ev = b.events.recv() => {
                    if let Some(NetEvent::Gossip { source, from_member, .. }) = ev {
                        return Err(format!(
                            "forged message accepted: source {source:?}, from_member {from_member}"
                        ));
                    }
                }
                _ = poll.tick() => {
                    let score = b.net.peer_score(forger).await.expect("score");
                    if score.is_some_and(|s| s < 0.0) {
                        return Ok(());
                    }
                }
            }
        }
    })
    .await;
    drive.abort();
    match verdict {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e}"),
        Err(_) => panic!("the forger was not penalized within 20 s"),
    }
}

/// Thirteen members on one IP address (as in a local testnet): the hub hears a timeout from each
/// of the other twelve and no peer's score drops. Gossipsub's default IP-colocation penalty
/// graylisted every peer beyond ten per address, which stalled a 16-node cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_members_on_one_address_are_not_penalized() {
    const N: u8 = 13;
    let mut hub = node(1, Vec::new()).await;
    let members: HashSet<PeerId> = (1..=N).map(peer_id).collect();
    hub.net.set_members(members.clone()).await.expect("members");
    let mut spokes = Vec::new();
    for seed in 2..=N {
        let s = node(seed, hub.net.listen_addrs.clone()).await;
        s.net.set_members(members.clone()).await.expect("members");
        spokes.push(s);
    }
    let mut subscribed = HashSet::new();
    while subscribed.len() < spokes.len() {
        let p = wait_for(&mut hub.events, |e| match e {
            NetEvent::PeerSubscribed(p, TopicKind::Consensus) => Some(p),
            _ => None,
        })
        .await;
        subscribed.insert(p);
    }
    // Let a few heartbeats (100 ms) apply the scores before anything is published.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for (k, s) in spokes.iter().enumerate() {
        s.net
            .publish(timeout_msg(10 + k as u64))
            .await
            .expect("publish");
    }
    let mut heard = HashSet::new();
    while heard.len() < spokes.len() {
        let (id, src, round) = wait_for(&mut hub.events, |e| match e {
            NetEvent::Gossip {
                id,
                propagation_source,
                body,
                ..
            } => match *body {
                GossipBody::Timeout(t) => Some((id, propagation_source, t.round)),
                _ => None,
            },
            _ => None,
        })
        .await;
        hub.net
            .report(id, src, MessageAcceptance::Accept)
            .await
            .expect("report");
        heard.insert(round);
    }
    for seed in 2..=N {
        let score = hub.net.peer_score(peer_id(seed)).await.expect("score");
        assert!(
            score.unwrap_or(0.0) >= 0.0,
            "peer {seed} penalized: score {score:?}"
        );
    }
}

/// Waits (bounded) until the metrics exposition contains `line`.
async fn wait_for_metric(metrics: &Metrics, line: &str) {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while !metrics.encode().contains(line) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "{line} not within 20 s:\n{}",
        metrics.encode()
    );
}

/// A batch's canonical bytes and the envelope pushed for it.
fn batch(tag: u8) -> (Vec<u8>, Vec<u8>) {
    let canonical = node::mempool::encode_batch(&[vec![tag; 3], vec![tag; 5000]]);
    let envelope = proto::batch_gossip(&canonical);
    (canonical, envelope)
}

/// The next batch `events` delivers: its sender, gossip id and canonical bytes.
async fn next_batch(
    events: &mut mpsc::Receiver<NetEvent>,
) -> (PeerId, Option<libp2p::gossipsub::MessageId>, Vec<u8>) {
    wait_for(events, |e| match e {
        NetEvent::Batch {
            from,
            gossip_id,
            canonical,
            ..
        } => Some((from, gossip_id, canonical)),
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_batches_reach_members_both_ways() {
    let (mut a, mut b) = pair().await;
    for tag in 1..=3u8 {
        let (canonical, envelope) = batch(tag);
        a.net.push_batch(envelope).await.expect("push");
        let (from, gossip_id, got) = next_batch(&mut b.events).await;
        assert_eq!(from, peer_id(1));
        assert_eq!(
            gossip_id, None,
            "a pushed batch has no gossip verdict to report"
        );
        assert_eq!(got, canonical);
    }
    // And the other way round.
    let (canonical, envelope) = batch(9);
    b.net.push_batch(envelope).await.expect("push");
    let (from, _, got) = next_batch(&mut a.events).await;
    assert_eq!((from, got), (peer_id(2), canonical));
    assert_eq!(a.net.batch_pushes_dropped(), 0);
    assert!(
        !b.metrics
            .encode()
            .contains("dstack_messages_rejected_total{")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_flooding_batches_holds_few_places_in_the_driver_queue() {
    use node::net::batch_push::FRAMES_IN_FLIGHT;
    let (a, mut b) = pair().await;
    let extra = 10;
    for i in 0..FRAMES_IN_FLIGHT + extra {
        let tag = u8::try_from(i % 250).expect("tag") + 1;
        a.net.push_batch(batch(tag).1).await.expect("push");
    }
    // The driver (this test) handles none of them: the reader stops at its places.
    let mut held = Vec::new();
    while held.len() < FRAMES_IN_FLIGHT {
        held.push(
            wait_for(&mut b.events, |e| {
                matches!(e, NetEvent::Batch { .. }).then_some(e)
            })
            .await,
        );
    }
    // A consensus message published after the flood is not queued behind it.
    a.net.publish(timeout_msg(5)).await.expect("publish");
    let seen = wait_for(&mut b.events, |e| match e {
        NetEvent::Batch { .. } => Some(false),
        NetEvent::Gossip { .. } => Some(true),
        _ => None,
    })
    .await;
    assert!(seen, "a batch beyond the member's places reached the queue");
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok(ev) = b.events.try_recv() {
        assert!(
            !matches!(ev, NetEvent::Batch { .. }),
            "more than {FRAMES_IN_FLIGHT} unhandled batches of one member"
        );
    }
    // Handled (dropped), they free the places, and the rest arrive.
    held.clear();
    for _ in 0..extra {
        next_batch(&mut b.events).await;
    }
    assert_eq!(
        a.net.batch_pushes_dropped(),
        0,
        "the sender's queue held the rest"
    );
}

/// A member over its share of the batch intake (the rate shared by power) is read at its
/// share: the burst passes at once, the rest no faster than the rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_pushes_batches_no_faster_than_its_share_of_the_intake() {
    let a = node(1, Vec::new()).await;
    // B takes 4 MiB/s from all members; A has power 1 of 4, so 1 MiB/s (burst: 4 MiB, one
    // largest frame).
    let mut b = node_with(2, a.net.listen_addrs.clone(), 4 << 20).await;
    let powers: std::collections::HashMap<PeerId, u64> =
        [(peer_id(1), 1), (peer_id(2), 3)].into_iter().collect();
    a.net
        .set_member_powers(powers.clone())
        .await
        .expect("members");
    b.net.set_member_powers(powers).await.expect("members");
    let pa = a.net.local_peer_id;
    wait_for(&mut b.events, |e| match e {
        NetEvent::PeerConnected(p) if p == pa => Some(()),
        _ => None,
    })
    .await;
    let tx = vec![7u8; 256 * 1024];
    let frames = 24; // 6 MiB: 4 at once, 2 at the rate
    for i in 0..frames {
        let mut t = tx.clone();
        t[0] = u8::try_from(i).expect("tag");
        let canonical = node::mempool::encode_batch(&[t]);
        a.net
            .push_batch(proto::batch_gossip(&canonical))
            .await
            .expect("push");
    }
    let first = std::time::Instant::now();
    next_batch(&mut b.events).await;
    for _ in 1..frames {
        next_batch(&mut b.events).await;
    }
    let took = first.elapsed().as_secs_f64();
    assert!(
        took >= 1.5,
        "6 MiB arrived in {took:.2} s at a 1 MiB/s share with a 4 MiB burst"
    );
    let waited: f64 = b
        .metrics
        .encode()
        .lines()
        .find_map(|l| l.strip_prefix("dstack_batch_intake_wait_seconds_total "))
        .and_then(|v| v.parse().ok())
        .expect("the wait metric");
    assert!(waited >= 1.5, "waited {waited} s");
    assert_eq!(a.net.batch_pushes_dropped(), 0);
}

/// Batches fetched for a member's proposal cost its share of the intake like pushed ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetched_batches_wait_for_the_proposers_share() {
    let b = node_with(2, Vec::new(), 4 << 20).await;
    let powers: std::collections::HashMap<PeerId, u64> =
        [(peer_id(1), 1), (peer_id(2), 3)].into_iter().collect();
    b.net.set_member_powers(powers).await.expect("members");
    // Commands run in order: once this one is answered, the set is in place.
    b.net.peers().await.expect("peers");
    let t = std::time::Instant::now();
    b.net.intake_wait(peer_id(1), 4 << 20).await;
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "the burst is free"
    );
    let t = std::time::Instant::now();
    b.net.intake_wait(peer_id(1), 1 << 20).await;
    let took = t.elapsed().as_secs_f64();
    assert!(took >= 0.9, "1 MiB at a 1 MiB/s share took {took:.2} s");
    let t = std::time::Instant::now();
    b.net.intake_wait(peer_id(2), 4 << 20).await;
    assert!(
        t.elapsed() < Duration::from_millis(500),
        "another member's share is its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_batches_from_non_members_are_refused() {
    let (a, mut b) = pair().await;
    // C is connected to B but not a member there; it believes B and itself are.
    let mut c = node(3, b.net.listen_addrs.clone()).await;
    let pb = b.net.local_peer_id;
    wait_for(&mut c.events, |e| match e {
        NetEvent::PeerConnected(p) if p == pb => Some(()),
        _ => None,
    })
    .await;
    c.net
        .set_members([peer_id(2), peer_id(3)].into_iter().collect())
        .await
        .expect("members");
    let (_, envelope) = batch(7);
    c.net.push_batch(envelope).await.expect("push");
    wait_for_metric(
        &b.metrics,
        r#"dstack_messages_ignored_total{reason="non_member"} 1"#,
    )
    .await;
    // A member's batch still arrives, and it is the only one B hands over.
    let (canonical, envelope) = batch(8);
    a.net.push_batch(envelope).await.expect("push");
    let (from, _, got) = next_batch(&mut b.events).await;
    assert_eq!((from, got), (peer_id(1), canonical));
    while let Ok(ev) = b.events.try_recv() {
        assert!(
            !matches!(ev, NetEvent::Batch { .. }),
            "unexpected batch: {ev:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_push_frames_close_the_stream() {
    let (a, mut b) = pair().await;
    let pb = b.net.local_peer_id;
    let protocol = batch_protocol(31337, CONTRACT).expect("protocol");
    let mut control = a.net.stream_control();
    let mut raw = tokio::time::timeout(Duration::from_secs(10), control.open_stream(pb, protocol))
        .await
        .expect("open within 10 s")
        .expect("stream");
    // A length one byte above the limit, then some bytes: refused on the length alone.
    let len = u32::try_from(proto::limits::MAX_GOSSIP_BYTES + 1).expect("fits");
    raw.write_all(&len.to_be_bytes()).await.expect("write");
    raw.write_all(&[0u8; 1024]).await.expect("write");
    raw.flush().await.expect("flush");
    wait_for_metric(
        &b.metrics,
        r#"dstack_messages_rejected_total{reason="oversized"} 1"#,
    )
    .await;
    // B closed the stream: reading ends (EOF or reset) instead of waiting.
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buf))
        .await
        .expect("stream closed within 10 s");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "stream still open: {read:?}"
    );
    // The node's own pushes still get through.
    let (canonical, envelope) = batch(5);
    a.net.push_batch(envelope).await.expect("push");
    let (from, _, got) = next_batch(&mut b.events).await;
    assert_eq!((from, got), (peer_id(1), canonical));
}
