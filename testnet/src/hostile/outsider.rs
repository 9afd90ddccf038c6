//! The outsider: a peer with a fresh libp2p key that is in no validator set. It joins the
//! cluster's network through the node's own network stack ([`node::net`], so its topics,
//! protocols and framing are the nodes' exactly) and, until its time is up, sends every node:
//!
//! - `rounds`: proposals (naming the round's leader), timeouts (naming a member), unsigned TCs
//!   and votes, of rounds `u64::MAX`, `u64::MAX - 1`, a million ahead and the next one, all with
//!   junk signatures; proposals of epoch `u64::MAX`; and each genuine proposal with a TC it
//!   relays, with the TC's round (which the proposer's signature does not cover) set to
//!   `u64::MAX`;
//! - `records`: every second a record of the current epoch naming the largest set of distinct
//!   powers a set may have (junk QC), one whose B0 has round `u64::MAX`, and junk records of the
//!   next three epochs;
//! - `requests`: sync requests from height 1 for `u32::MAX` blocks, block requests for the
//!   committed block's ancestry, and batch requests for the largest batch digests it learned
//!   from the sync answers, several in flight per node at all times;
//! - `oversized`: every second a gossip message just above `MAX_GOSSIP_BYTES`, and per node a
//!   request stream and a batch stream whose frame announces 4 GiB.
//!
//! It writes what it sent and saw to a JSON report: the nodes it was still connected to at the
//! end, how much gossip each node still sent it (a node that graylisted it sends nothing), and
//! what its requests got back.

use super::no_server;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use consensus::types::{MemberInfo, Message, PublicKey};
use consensus::validators::ValidatorSet;
use libp2p::futures::AsyncWriteExt;
use libp2p::gossipsub::MessageAcceptance;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use node::metrics::Metrics;
use node::net::{self, NetConfig, NetEvent, NetHandle, TopicKind};
use node::wire;
use proto::limits::MAX_GOSSIP_BYTES;
use proto::{GossipBody, RequestBody, ResponseBody, v1};
use serde::Serialize;
use tokio::sync::Semaphore;

use super::Attack;
use super::forge::{self, ClusterView};

/// One node the outsider attacks: its libp2p address and its HTTP API (where it reads the
/// public view: epoch, round, set, committed block).
#[derive(Clone, Debug)]
pub struct Target {
    /// The node's libp2p multiaddr.
    pub p2p: Multiaddr,
    /// Base URL of its HTTP API.
    pub http: String,
}

/// What the outsider is asked to do.
#[derive(Clone, Debug)]
pub struct OutsiderConfig {
    /// The cluster's chain id (topic namespace).
    pub chain_id: u64,
    /// The cluster's contract (topic namespace).
    pub contract: String,
    /// The nodes.
    pub targets: Vec<Target>,
    /// How long to attack.
    pub duration: Duration,
    /// Which of its attacks to run.
    pub attacks: BTreeSet<Attack>,
}

/// Requests sent and what came back.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RequestStats {
    /// Requests sent, by kind (`sync`, `blocks`, `batches`, `vote`).
    pub sent: BTreeMap<String, u64>,
    /// Answered with data (or an ack).
    pub answered: u64,
    /// Answered with an error (refused).
    pub refused: u64,
    /// Failed: timeout, closed connection, dial failure.
    pub failed: u64,
    /// Bytes of the data answers (their encoded size).
    pub answer_bytes: u64,
}

/// What the outsider saw of one node.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NodeSeen {
    /// The node's HTTP API.
    pub http: String,
    /// Its PeerId (from `/status`).
    pub peer_id: String,
    /// Whether a connection to it was ever established.
    pub ever_connected: bool,
    /// Whether it was connected when the attack ended.
    pub connected_at_end: bool,
    /// Gossip messages it forwarded to the outsider.
    pub gossip_received: u64,
    /// Seconds from the attack's start to the last gossip message it forwarded.
    pub last_gossip_at: Option<f64>,
}

/// The outsider's report.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OutsiderReport {
    /// Its PeerId.
    pub peer_id: String,
    /// The attacks it ran.
    pub attacks: Vec<String>,
    /// How long it attacked, seconds.
    pub seconds: f64,
    /// Gossip messages published, by kind.
    pub published: BTreeMap<String, u64>,
    /// Publications that failed (no subscribed peer, message too large for this peer).
    pub publish_failures: u64,
    /// Raw frames above a limit written on streams, by protocol (`request`, `batch`).
    pub oversized_frames: BTreeMap<String, u64>,
    /// The requests.
    pub requests: RequestStats,
    /// Per node.
    pub nodes: Vec<NodeSeen>,
    /// Reads of the nodes' HTTP API that failed.
    pub view_errors: u64,
}

/// Shared between the event drain, the request floods and the main loop.
#[derive(Default)]
struct Seen {
    connected: HashSet<PeerId>,
    ever: HashSet<PeerId>,
    subscribed: HashSet<PeerId>,
    gossip: HashMap<PeerId, (u64, f64)>,
    /// Genuine proposals with a TC, to relay with a changed TC round.
    relay: Vec<v1::Proposal>,
    /// Batch digests seen in sync answers (the largest answers a batch request can get).
    digests: Vec<Vec<u8>>,
    requests: RequestStats,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// Most relayable proposals and batch digests kept.
const MAX_RELAY: usize = 8;
const MAX_DIGESTS: usize = 4_096;
/// Requests in flight per node.
const IN_FLIGHT: usize = 8;
/// The pause after a request that failed without an answer.
const FAILED_BACKOFF: Duration = Duration::from_millis(50);
/// The main loop's period.
const TICK: Duration = Duration::from_millis(200);
/// Ticks between record and oversized waves (one second).
const WAVE_TICKS: u64 = 5;
/// How long a read of a node's HTTP API may take.
const HTTP_TIMEOUT: Duration = Duration::from_millis(800);

/// A fresh secp256k1 secret (a key in no set).
fn fresh_secret() -> [u8; 32] {
    loop {
        let s = forge::random_id();
        if net::keypair_from_secret(&s).is_ok() {
            return s;
        }
    }
}

/// The public view of the cluster from one node's API, with the node's PeerId and committed
/// block id.
async fn read_view(
    http: &alloy::transports::http::reqwest::Client,
    url: &str,
) -> Result<(ClusterView, String, Option<Vec<u8>>), String> {
    let get = |path: &'static str| async move {
        let r = http
            .get(format!("{url}{path}"))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        r.json::<serde_json::Value>()
            .await
            .map_err(|e| e.to_string())
    };
    let status = get("/status").await?;
    let vals = get("/validators").await?;
    let mut members = Vec::new();
    for v in vals["validators"].as_array().into_iter().flatten() {
        let key = hex::decode(v["public_key"].as_str().unwrap_or_default())
            .map_err(|e| format!("public key: {e}"))?;
        let key: [u8; 64] = key
            .try_into()
            .map_err(|_| "public key is not 64 bytes".to_string())?;
        members.push((PublicKey(key), v["power"].as_u64().unwrap_or(1)));
    }
    let set = ValidatorSet::new(members).map_err(|e| e.to_string())?;
    let view = ClusterView {
        epoch: status["epoch"].as_u64().unwrap_or(0),
        round: status["round"].as_u64().unwrap_or(0),
        set,
    };
    let committed = status["committed_block"]
        .as_str()
        .and_then(|s| hex::decode(s.trim_start_matches("0x")).ok());
    Ok((
        view,
        status["peer_id"].as_str().unwrap_or_default().to_string(),
        committed,
    ))
}

/// Takes the network's events: counts who forwards gossip, keeps genuine proposals with a TC
/// to relay, answers every request with an error and every gossip verdict with Ignore (the
/// outsider forwards nothing).
async fn drain(
    net: NetHandle,
    mut events: tokio::sync::mpsc::Receiver<NetEvent>,
    seen: Arc<Mutex<Seen>>,
    t0: Instant,
) {
    while let Some(ev) = events.recv().await {
        match ev {
            NetEvent::Gossip {
                id,
                propagation_source,
                body,
                ..
            } => {
                {
                    let mut s = lock(&seen);
                    let e = s.gossip.entry(propagation_source).or_insert((0, 0.0));
                    e.0 += 1;
                    e.1 = t0.elapsed().as_secs_f64();
                    if let GossipBody::Proposal(p) = *body
                        && p.tc.is_some()
                        && s.relay.len() < MAX_RELAY
                    {
                        s.relay.push(p);
                    }
                }
                let _ = net
                    .report(id, propagation_source, MessageAcceptance::Ignore)
                    .await;
            }
            NetEvent::Vote { responder, .. } => {
                let _ = net
                    .respond(responder, ResponseBody::Error("no".into()))
                    .await;
            }
            NetEvent::PeerConnected(p) => {
                let mut s = lock(&seen);
                s.connected.insert(p);
                s.ever.insert(p);
            }
            NetEvent::PeerDisconnected(p) => {
                lock(&seen).connected.remove(&p);
            }
            NetEvent::PeerSubscribed(p, TopicKind::Consensus) => {
                lock(&seen).subscribed.insert(p);
            }
            NetEvent::PeerSubscribed(..) | NetEvent::Batch { .. } => {}
        }
    }
}

/// Keeps [`IN_FLIGHT`] requests in flight to `peer` until `deadline`: sync from height 1, the
/// committed block's ancestry, and batches by the digests sync answers named.
async fn flood_requests(
    net: NetHandle,
    peer: PeerId,
    committed: Arc<Mutex<Option<Vec<u8>>>>,
    seen: Arc<Mutex<Seen>>,
    deadline: Instant,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut k = 0u64;
    while Instant::now() < deadline {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        k += 1;
        let (kind, body) = match k % 3 {
            0 => (
                "sync",
                RequestBody::Sync(v1::SyncRequest {
                    from_height: 1,
                    max_blocks: u32::MAX,
                    known_epoch: 0,
                }),
            ),
            1 => (
                "blocks",
                RequestBody::Blocks(v1::BlockRequest {
                    block_id: lock(&committed).clone().unwrap_or_else(|| vec![0; 32]),
                    stop_at_round: 0,
                    max_blocks: u32::MAX,
                }),
            ),
            _ => {
                let digests = {
                    let s = lock(&seen);
                    let n = s.digests.len();
                    s.digests[n.saturating_sub(256)..].to_vec()
                };
                if digests.is_empty() {
                    drop(permit);
                    continue;
                }
                (
                    "batches",
                    RequestBody::Batches(v1::BatchRequest { digests }),
                )
            }
        };
        *lock(&seen).requests.sent.entry(kind.into()).or_insert(0) += 1;
        let net = net.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let r = net.request(peer, body).await;
            if matches!(r, Err(ref e) if !matches!(e, net::NetError::Remote { .. })) {
                // Not connected (or timed out): try again a little later, not in a tight loop.
                tokio::time::sleep(FAILED_BACKOFF).await;
            }
            let mut s = lock(&seen);
            match r {
                Ok(answer) => {
                    s.requests.answered += 1;
                    s.requests.answer_bytes += answer.encoded_len() as u64;
                    if let ResponseBody::Sync(page) = answer {
                        for b in page.blocks.iter().filter_map(|c| c.block.as_ref()) {
                            for d in &b.batch_digests {
                                if s.digests.len() < MAX_DIGESTS && !s.digests.contains(d) {
                                    s.digests.push(d.clone());
                                }
                            }
                        }
                    }
                }
                Err(net::NetError::Remote { .. }) => s.requests.refused += 1,
                Err(_) => s.requests.failed += 1,
            }
            drop(permit);
        });
    }
}

/// Opens `protocol` to `peer` and writes a frame header announcing 4 GiB, then a little data.
async fn oversized_frame(net: &NetHandle, peer: PeerId, protocol: StreamProtocol) -> bool {
    let mut control = net.stream_control();
    let Ok(Ok(mut stream)) =
        tokio::time::timeout(Duration::from_secs(2), control.open_stream(peer, protocol)).await
    else {
        return false;
    };
    let ok = stream.write_all(&u32::MAX.to_be_bytes()).await.is_ok()
        && stream.write_all(&[0u8; 1024]).await.is_ok();
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.close()).await;
    ok
}

/// The outsider's state during a run.
struct Run {
    net: NetHandle,
    seen: Arc<Mutex<Seen>>,
    report: OutsiderReport,
    huge: Vec<MemberInfo>,
    attacks: BTreeSet<Attack>,
    batch_protocol: Option<StreamProtocol>,
}

impl Run {
    async fn publish(&mut self, kind: &str, body: GossipBody) {
        match self.net.publish(body).await {
            Ok(()) => *self.report.published.entry(kind.into()).or_insert(0) += 1,
            Err(_) => self.report.publish_failures += 1,
        }
    }

    async fn message(&mut self, kind: &str, m: Message) {
        let body = match &m {
            Message::Proposal(p) => GossipBody::Proposal(wire::proposal_to_wire(p)),
            Message::Timeout(t) => GossipBody::Timeout(wire::timeout_to_wire(t)),
            Message::TimeoutCert(tc) => GossipBody::Tc(wire::tc_to_wire(tc)),
            Message::Vote(v) => {
                // Votes travel by request, members only: a non-member's are refused at the door.
                let vote = wire::vote_to_wire(v);
                let peers: Vec<PeerId> = lock(&self.seen).connected.iter().copied().collect();
                for peer in peers {
                    *lock(&self.seen)
                        .requests
                        .sent
                        .entry("vote".into())
                        .or_insert(0) += 1;
                    let (net, seen) = (self.net.clone(), self.seen.clone());
                    let vote = vote.clone();
                    tokio::spawn(async move {
                        let r = net.request(peer, RequestBody::Vote(vote)).await;
                        let mut s = lock(&seen);
                        match r {
                            Ok(_) => s.requests.answered += 1,
                            Err(net::NetError::Remote { .. }) => s.requests.refused += 1,
                            Err(_) => s.requests.failed += 1,
                        }
                    });
                }
                return;
            }
        };
        self.publish(kind, body).await;
    }

    /// Proposals, timeouts, TCs and votes of the hostile rounds; a proposal of epoch
    /// `u64::MAX`; relayed genuine proposals with their TC's round set to `u64::MAX`.
    async fn rounds_wave(&mut self, view: &ClusterView, k: u64) {
        let members: Vec<_> = view.set.members().iter().map(|m| m.address).collect();
        let signer = members[(k as usize) % members.len().max(1)];
        for r in forge::hostile_rounds(view.round) {
            let p = forge::junk_proposal(view, r, None);
            self.message("proposal", Message::Proposal(p)).await;
            let p = forge::junk_proposal(view, r, Some(u64::MAX));
            self.message("proposal_with_tc", Message::Proposal(p)).await;
            let t = forge::junk_timeout(view, r, signer);
            self.message("timeout", Message::Timeout(t)).await;
            let tc = forge::unsigned_tc(view.epoch, r);
            self.message("tc", Message::TimeoutCert(tc)).await;
            let v = forge::junk_vote(view.epoch, r, signer);
            self.message("vote", Message::Vote(v)).await;
        }
        let mut later = view.clone();
        later.epoch = u64::MAX;
        let p = forge::junk_proposal(&later, u64::MAX, None);
        self.message("proposal_max_epoch", Message::Proposal(p))
            .await;
        let relay = std::mem::take(&mut lock(&self.seen).relay);
        for mut p in relay {
            if let Some(tc) = p.tc.as_mut() {
                tc.round = u64::MAX;
            }
            self.publish("relayed_proposal_tc_max", GossipBody::Proposal(p))
                .await;
        }
    }

    async fn records_wave(&mut self, view: &ClusterView) {
        let r = forge::huge_set_record(view, self.huge.clone());
        self.publish(
            "record_huge_set",
            GossipBody::EpochChange(wire::record_to_wire(&r)),
        )
        .await;
        let r = forge::overflow_record(view);
        self.publish(
            "record_round_max",
            GossipBody::EpochChange(wire::record_to_wire(&r)),
        )
        .await;
        for ahead in 1..=3 {
            let r = forge::future_record(view, ahead);
            self.publish(
                "record_later_epoch",
                GossipBody::EpochChange(wire::record_to_wire(&r)),
            )
            .await;
        }
    }

    async fn oversized_wave(&mut self) {
        let bytes = vec![0x0a; MAX_GOSSIP_BYTES + 1024];
        match self.net.publish_raw(TopicKind::Consensus, bytes).await {
            Ok(()) => {
                *self
                    .report
                    .published
                    .entry("oversized_gossip".into())
                    .or_insert(0) += 1
            }
            Err(_) => self.report.publish_failures += 1,
        }
        let peers: Vec<PeerId> = lock(&self.seen).connected.iter().copied().collect();
        for peer in peers {
            let mut protocols = vec![("request", StreamProtocol::new(net::RR_PROTOCOL))];
            if let Some(b) = &self.batch_protocol {
                protocols.push(("batch", b.clone()));
            }
            for (name, protocol) in protocols {
                if oversized_frame(&self.net, peer, protocol).await {
                    *self.report.oversized_frames.entry(name.into()).or_insert(0) += 1;
                }
            }
        }
    }
}

/// Runs the outsider until its time is up and returns its report.
pub async fn run(cfg: OutsiderConfig) -> Result<OutsiderReport, String> {
    let secret = fresh_secret();
    let mut ncfg = NetConfig::new(secret, cfg.chain_id, &cfg.contract);
    ncfg.bootstrap = cfg.targets.iter().map(|t| t.p2p.clone()).collect();
    ncfg.request_timeout = Duration::from_secs(5);
    let (net, events) = net::spawn(ncfg, Arc::new(Metrics::new()), no_server())
        .await
        .map_err(|e| format!("network: {e}"))?;
    let t0 = Instant::now();
    let seen = Arc::new(Mutex::new(Seen::default()));
    tokio::spawn(drain(net.clone(), events, seen.clone(), t0));
    let http = alloy::transports::http::reqwest::Client::builder()
        .timeout(HTTP_TIMEOUT)
        .build()
        .map_err(|e| e.to_string())?;
    let report = OutsiderReport {
        peer_id: net.local_peer_id.to_string(),
        attacks: cfg
            .attacks
            .iter()
            .filter(|a| a.by_outsider())
            .map(|a| a.name().to_string())
            .collect(),
        ..OutsiderReport::default()
    };
    // The nodes' PeerIds (from their `/status`) and the latest view.
    let mut node_peers: Vec<Option<PeerId>> = vec![None; cfg.targets.len()];
    let mut view = None;
    let committed = Arc::new(Mutex::new(None));
    let deadline = t0 + cfg.duration;
    let mut run = Run {
        net: net.clone(),
        seen: seen.clone(),
        report,
        huge: if cfg.attacks.contains(&Attack::Records) {
            forge::distinct_power_members(forge::max_distinct_power_members(), 1_000_000)
        } else {
            Vec::new()
        },
        attacks: cfg.attacks.clone(),
        batch_protocol: net::batch_protocol(cfg.chain_id, &cfg.contract).ok(),
    };
    // Wait (at most 10 s) for a node to subscribe to the consensus topic.
    let sub_deadline = Instant::now() + Duration::from_secs(10);
    while lock(&seen).subscribed.is_empty() && Instant::now() < sub_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut flooding: HashSet<PeerId> = HashSet::new();
    let mut tick = tokio::time::interval(TICK);
    let mut k = 0u64;
    while Instant::now() < deadline {
        tick.tick().await;
        if k.is_multiple_of(WAVE_TICKS) || view.is_none() {
            for (i, t) in cfg.targets.iter().enumerate() {
                match read_view(&http, &t.http).await {
                    Ok((v, pid, c)) => {
                        if let Ok(p) = pid.parse::<PeerId>() {
                            node_peers[i] = Some(p);
                        }
                        if c.is_some() {
                            *lock(&committed) = c;
                        }
                        if view
                            .as_ref()
                            .is_none_or(|w: &ClusterView| v.round >= w.round)
                        {
                            view = Some(v);
                        }
                    }
                    Err(_) => run.report.view_errors += 1,
                }
            }
        }
        let Some(v) = view.clone() else {
            k += 1;
            continue;
        };
        if run.attacks.contains(&Attack::Requests) {
            for p in node_peers.iter().flatten() {
                if !flooding.insert(*p) {
                    continue;
                }
                tokio::spawn(flood_requests(
                    net.clone(),
                    *p,
                    committed.clone(),
                    seen.clone(),
                    deadline,
                ));
            }
        }
        // Records first: the rounds' junk gets the outsider graylisted within a wave, and a
        // graylisted peer's gossip is dropped before any node looks at it, so the first wave's
        // records would otherwise never be seen.
        if k.is_multiple_of(WAVE_TICKS) {
            if run.attacks.contains(&Attack::Records) {
                run.records_wave(&v).await;
            }
            if run.attacks.contains(&Attack::Oversized) {
                run.oversized_wave().await;
            }
        }
        if run.attacks.contains(&Attack::Rounds) {
            run.rounds_wave(&v, k).await;
        }
        k += 1;
    }
    let mut report = run.report;
    report.seconds = t0.elapsed().as_secs_f64();
    let connected: HashSet<PeerId> = net.peers().await.unwrap_or_default().into_iter().collect();
    let s = lock(&seen);
    report.requests = s.requests.clone();
    report.nodes = cfg
        .targets
        .iter()
        .zip(&node_peers)
        .map(|(t, p)| {
            let g = p.and_then(|p| s.gossip.get(&p).copied());
            NodeSeen {
                http: t.http.clone(),
                peer_id: p.map(|p| p.to_string()).unwrap_or_default(),
                ever_connected: p.is_some_and(|p| s.ever.contains(&p)),
                connected_at_end: p.is_some_and(|p| connected.contains(&p)),
                gossip_received: g.map_or(0, |g| g.0),
                last_gossip_at: g.map(|g| g.1),
            }
        })
        .collect();
    Ok(report)
}
