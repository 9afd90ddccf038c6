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
//! The conflicting proposals go out through the node's own network (the tap returns them; the
//! node's gossipsub publishes them): a second connection with the same PeerId gets no
//! subscriptions from gossipsub, so it could not publish. The batches go out on a second swarm
//! with the member's own key (built by [`node::net`]), which runs only while armed (the nodes
//! share each peer's traffic among its connections, so while it runs the member's own node
//! misses some of its votes and batches). SIGUSR1 arms, SIGUSR2 disarms; each arming and disarming, and each
//! flood, is logged (`hostile member: ...`) to the node's log, where the chaos suite reads the
//! totals.

use super::no_server;
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
use proto::ResponseBody;
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
    ctx: Arc<Ctx>,
}

struct Ctx {
    signer: K256Signer,
    domain: Domain,
    net_cfg: NetConfig,
    members: HashSet<PeerId>,
    attacks: BTreeSet<Attack>,
    armed: AtomicBool,
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
        let ctx = Arc::new(Ctx {
            signer,
            domain: Domain::new(cfg.chain_id, Address(cfg.contract), cfg.genesis_id),
            net_cfg,
            members,
            attacks,
            armed: AtomicBool::new(false),
            totals: Totals::default(),
            net: Mutex::new(None),
        });
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
        Some(Self { ctx })
    }

    /// Sees a proposal the node sends: while armed (and equivocating), returns
    /// [`EQUIVOCATIONS_PER_ROUND`] conflicting ones for the node to publish after it.
    pub fn on_proposal(&self, p: &Proposal) -> Vec<Proposal> {
        let c = &self.ctx;
        if !c.armed.load(Ordering::Relaxed) || !c.attacks.contains(&Attack::Equivocate) {
            return Vec::new();
        }
        let flood = conflicting(c, p, EQUIVOCATIONS_PER_ROUND);
        let t = &c.totals;
        t.rounds.fetch_add(1, Ordering::Relaxed);
        let n = flood.len() as u64;
        let total = t.proposals.fetch_add(n, Ordering::Relaxed) + n;
        eprintln!(
            "hostile member: {n} conflicting proposals for round {} (total {total})",
            p.round()
        );
        flood
    }
}

impl Ctx {
    async fn arm(self: &Arc<Self>) {
        if self.armed.swap(true, Ordering::Relaxed) {
            return;
        }
        let attacks: Vec<&str> = self.attacks.iter().map(|a| a.name()).collect();
        eprintln!("hostile member: armed ({})", attacks.join(","));
        match net::spawn(self.net_cfg.clone(), Arc::new(Metrics::new()), no_server()).await {
            Ok((net, events)) => {
                let _ = net.set_members(self.members.clone()).await;
                let (stop, stopped) = watch::channel(false);
                tokio::spawn(drain(net.clone(), events, stopped));
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
}

/// The totals every second while armed (so they are in the log even if the node dies).
async fn log_totals(ctx: Arc<Ctx>) {
    while ctx.armed.load(Ordering::Relaxed) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        eprintln!("{}", ctx.totals_line("armed"));
    }
}

/// Answers what reaches the attack swarm (gossip is ignored, requests refused) until `stop`.
async fn drain(
    net: NetHandle,
    mut events: mpsc::Receiver<NetEvent>,
    mut stop: watch::Receiver<bool>,
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
            NetEvent::Vote { responder, .. } => {
                let _ = net
                    .respond(responder, ResponseBody::Error("no".into()))
                    .await;
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
