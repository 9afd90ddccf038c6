//! The hostile member: a real validator (its node runs as usual, with the equivocator's twins)
//! that, while armed, also
//!
//! - `equivocate`: for each proposal its node makes (each round it leads), signs
//!   [`EQUIVOCATIONS_PER_ROUND`] distinct blocks of that round with its real key (each carrying
//!   one more, made-up batch digest) and publishes them all;
//! - `batches`: pushes valid batches of [`BATCH_TXS`] transactions of [`TX_BYTES`] each to every
//!   other member on the nodes' batch streams, as fast as the streams take them (a full queue
//!   backs off 1 ms), up to [`PUSH_CAP_BYTES`] in all (so a node that keeps them all cannot
//!   fill this machine's disk).
//!
//! Both go out on a second libp2p swarm with the member's own key (built by [`node::net`]), so
//! the node's own consensus keeps its pace; it runs only while armed (the nodes share each
//! peer's traffic among its connections, so while it runs the member's own node misses some of
//! its gossip and votes). SIGUSR1 arms, SIGUSR2 disarms; each arming and disarming, and each
//! flood, is logged (`hostile member: ...`) to the node's log, where the chaos suite reads the
//! totals.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use consensus::crypto::K256Signer;
use consensus::domain::Domain;
use consensus::types::{Address, BatchDigest, Block, Proposal};
use libp2p::{Multiaddr, PeerId};
use node::driver::DriverConfig;
use node::metrics::Metrics;
use node::net::{self, NetConfig, NetEvent, NetHandle};
use proto::{GossipBody, ResponseBody};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Mutex, mpsc, watch};

use super::Attack;
use super::forge;

/// Distinct signed proposals per round the member leads.
pub const EQUIVOCATIONS_PER_ROUND: usize = 2_000;
/// Transactions per pushed batch.
pub const BATCH_TXS: usize = 15;
/// Bytes per pushed transaction (under the default 64 KiB transaction limit; a batch stays
/// under the default 1 MiB batch limit).
pub const TX_BYTES: usize = 64 * 1024 - 256;
/// Most bytes of batches queued for all peers together over the member's life.
pub const PUSH_CAP_BYTES: u64 = 3 << 30;

/// How long arming waits for a peer to subscribe to the attack swarm's consensus topic.
const SUBSCRIBE_WAIT: Duration = Duration::from_secs(5);

/// Totals, logged every second while armed and when disarmed.
#[derive(Default)]
struct Totals {
    rounds: AtomicU64,
    proposals: AtomicU64,
    batches: AtomicU64,
    batch_bytes: AtomicU64,
}

/// The member's attacks, armed and disarmed by signals.
pub struct MemberAttack {
    armed: Arc<AtomicBool>,
    proposals: mpsc::Sender<Proposal>,
}

struct Ctx {
    signer: K256Signer,
    domain: Domain,
    net_cfg: NetConfig,
    members: HashSet<PeerId>,
    attacks: BTreeSet<Attack>,
    armed: Arc<AtomicBool>,
    totals: Totals,
    /// The attack swarm while armed, and the switch that stops its event drain.
    net: Mutex<Option<(NetHandle, watch::Sender<bool>)>>,
}

impl MemberAttack {
    /// Starts the (disarmed) attacks of the node configured by `cfg`; `None` when no tokio
    /// runtime is current or the key or signals are unusable (the node then runs as the plain
    /// equivocator).
    pub fn start(cfg: &DriverConfig, attacks: BTreeSet<Attack>) -> Option<Self> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        let signer = K256Signer::from_secret(&cfg.secret).ok()?;
        let me = net::keypair_from_secret(&cfg.secret)
            .ok()?
            .public()
            .to_peer_id();
        let members: HashSet<PeerId> = cfg
            .members
            .iter()
            .filter_map(|m| net::peer_id_from_public_key(&m.info.public_key.0).ok())
            .collect();
        let mut net_cfg = NetConfig::new(
            cfg.secret,
            cfg.chain_id,
            &format!("0x{}", hex::encode(cfg.contract)),
        );
        net_cfg.bootstrap = cfg
            .members
            .iter()
            .filter(|m| net::peer_id_from_public_key(&m.info.public_key.0).ok() != Some(me))
            .filter_map(|m| m.url.parse::<Multiaddr>().ok())
            .collect();
        let armed = Arc::new(AtomicBool::new(false));
        let ctx = Arc::new(Ctx {
            signer,
            domain: Domain::new(cfg.chain_id, Address(cfg.contract), cfg.genesis_id),
            net_cfg,
            members,
            attacks,
            armed: armed.clone(),
            totals: Totals::default(),
            net: Mutex::new(None),
        });
        let (tx, rx) = mpsc::channel(4);
        let mut arm = signal(SignalKind::user_defined1()).ok()?;
        let mut disarm = signal(SignalKind::user_defined2()).ok()?;
        let c = ctx.clone();
        rt.spawn(async move {
            loop {
                tokio::select! {
                    Some(()) = arm.recv() => c.arm().await,
                    Some(()) = disarm.recv() => c.disarm().await,
                    else => return,
                }
            }
        });
        rt.spawn(equivocate(ctx, rx));
        Some(Self {
            armed,
            proposals: tx,
        })
    }

    /// Sees a proposal the node sends: while armed, it is the seed of a flood.
    pub fn on_proposal(&self, p: &Proposal) {
        if self.armed.load(Ordering::Relaxed) {
            let _ = self.proposals.try_send(p.clone());
        }
    }
}

impl Ctx {
    async fn arm(self: &Arc<Self>) {
        if self.armed.swap(true, Ordering::Relaxed) {
            return;
        }
        let attacks: Vec<&str> = self.attacks.iter().map(|a| a.name()).collect();
        eprintln!("hostile member: armed ({})", attacks.join(","));
        match net::spawn(self.net_cfg.clone(), Arc::new(Metrics::new())).await {
            Ok((net, events)) => {
                let _ = net.set_members(self.members.clone()).await;
                let (stop, stopped) = watch::channel(false);
                let (subscribed, mut first) = watch::channel(false);
                tokio::spawn(drain(net.clone(), events, stopped, subscribed));
                // Publishing needs a subscribed peer: wait (a little) for the first one.
                let _ = tokio::time::timeout(SUBSCRIBE_WAIT, first.wait_for(|s| *s)).await;
                if self.attacks.contains(&Attack::Batches) {
                    tokio::spawn(push_batches(self.clone(), net.clone()));
                }
                tokio::spawn(log_totals(self.clone()));
                *self.net.lock().await = Some((net, stop));
            }
            Err(e) => eprintln!("hostile member: attack swarm: {e}"),
        }
    }

    fn totals_line(&self, state: &str) -> String {
        let t = &self.totals;
        format!(
            "hostile member: {state}; totals: {} rounds flooded, {} conflicting proposals, {} \
             batches ({} bytes) queued",
            t.rounds.load(Ordering::Relaxed),
            t.proposals.load(Ordering::Relaxed),
            t.batches.load(Ordering::Relaxed),
            t.batch_bytes.load(Ordering::Relaxed),
        )
    }

    async fn disarm(&self) {
        if !self.armed.swap(false, Ordering::Relaxed) {
            return;
        }
        // Dropping every handle stops the attack swarm (the drain lets go of its own).
        if let Some((_, stop)) = self.net.lock().await.take() {
            let _ = stop.send(true);
        }
        eprintln!("{}", self.totals_line("disarmed"));
    }

    /// The attack swarm, while armed.
    async fn net(&self) -> Option<NetHandle> {
        self.net.lock().await.as_ref().map(|(n, _)| n.clone())
    }
}

/// The totals every second while armed (so they are in the log even if the node dies).
async fn log_totals(ctx: Arc<Ctx>) {
    while ctx.armed.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!("{}", ctx.totals_line("armed"));
    }
}

/// Answers what reaches the attack swarm (gossip is ignored, requests refused) until `stop`;
/// `subscribed` turns true once a peer subscribed to the consensus topic.
async fn drain(
    net: NetHandle,
    mut events: mpsc::Receiver<NetEvent>,
    mut stop: watch::Receiver<bool>,
    subscribed: watch::Sender<bool>,
) {
    loop {
        let ev = tokio::select! {
            ev = events.recv() => ev,
            _ = stop.changed() => None,
        };
        let Some(ev) = ev else {
            return;
        };
        match ev {
            NetEvent::Gossip {
                id,
                propagation_source,
                ..
            } => {
                let _ = net
                    .report(
                        id,
                        propagation_source,
                        libp2p::gossipsub::MessageAcceptance::Ignore,
                    )
                    .await;
            }
            NetEvent::Request { responder, .. } => {
                let _ = net
                    .respond(responder, ResponseBody::Error("no".into()))
                    .await;
            }
            NetEvent::PeerSubscribed(_, net::TopicKind::Consensus) => {
                subscribed.send_replace(true);
            }
            _ => {}
        }
    }
}

/// `n` distinct blocks of `p`'s round, each with one more made-up digest, signed as proposals.
fn conflicting(ctx: &Ctx, p: &Proposal, n: usize) -> Vec<Proposal> {
    let b = &p.block;
    (0..n)
        .filter_map(|_| {
            let mut payload = b.payload().to_vec();
            payload.push(BatchDigest(forge::random_id()));
            let block = Block::new(
                b.epoch(),
                b.round(),
                b.qc().clone(),
                b.proposer(),
                payload,
                None,
            );
            let digest = ctx
                .domain
                .proposal_digest(block.epoch(), block.round(), &block.id());
            let signature = ctx.signer.try_sign(&digest).ok()?;
            Some(Proposal {
                block,
                tc: p.tc.clone(),
                signature,
            })
        })
        .collect()
}

async fn equivocate(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<Proposal>) {
    while let Some(p) = rx.recv().await {
        if !ctx.armed.load(Ordering::Relaxed) || !ctx.attacks.contains(&Attack::Equivocate) {
            continue;
        }
        let Some(net) = ctx.net().await else {
            continue;
        };
        let c = ctx.clone();
        let round = p.round();
        let Ok(flood) =
            tokio::task::spawn_blocking(move || conflicting(&c, &p, EQUIVOCATIONS_PER_ROUND)).await
        else {
            continue;
        };
        let mut sent = 0u64;
        for q in &flood {
            let body = GossipBody::Proposal(node::wire::proposal_to_wire(q));
            if net.publish(body).await.is_ok() {
                sent += 1;
            }
        }
        let t = &ctx.totals;
        if sent > 0 {
            t.rounds.fetch_add(1, Ordering::Relaxed);
        }
        let total = t.proposals.fetch_add(sent, Ordering::Relaxed) + sent;
        eprintln!("hostile member: {sent} conflicting proposals for round {round} (total {total})");
    }
}

/// One batch's gossip envelope: distinct transactions (a counter in each one's first bytes).
fn batch_frame(fill: &[u8], counter: &mut u64) -> Vec<u8> {
    let txs: Vec<Vec<u8>> = (0..BATCH_TXS)
        .map(|_| {
            *counter += 1;
            let mut tx = fill.to_vec();
            tx[..8].copy_from_slice(&counter.to_be_bytes());
            tx
        })
        .collect();
    proto::batch_gossip(&node::mempool::encode_batch(&txs))
}

async fn push_batches(ctx: Arc<Ctx>, net: NetHandle) {
    let mut fill = vec![0u8; TX_BYTES];
    for (i, b) in fill.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let mut counter = u64::from_be_bytes(forge::random_id()[..8].try_into().unwrap_or([0; 8]));
    let peers = ctx.members.len().saturating_sub(1) as u64;
    while ctx.armed.load(Ordering::Relaxed)
        && ctx.totals.batch_bytes.load(Ordering::Relaxed) < PUSH_CAP_BYTES
    {
        let frame = batch_frame(&fill, &mut counter);
        let len = frame.len() as u64;
        let dropped_before = net.batch_pushes_dropped();
        if net.push_batch(frame).await.is_err() {
            return;
        }
        // A barrier: the network task answers in order, so once it answers, the frame is queued
        // for each peer or dropped (and the command queue never holds more than one frame).
        if net.peers().await.is_err() {
            return;
        }
        let dropped = net.batch_pushes_dropped().saturating_sub(dropped_before);
        let queued = peers.saturating_sub(dropped);
        let t = &ctx.totals;
        t.batches.fetch_add(1, Ordering::Relaxed);
        t.batch_bytes.fetch_add(queued * len, Ordering::Relaxed);
        if dropped > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}
