//! The libp2p network of a node (DESIGN section 7): TCP + Noise + Yamux, identify, gossipsub
//! (with `validate_messages()` and peer scoring), request-response (votes to every member,
//! batch fetch, block sync) with a size-bounded codec, and a direct push of batches to every
//! member over long-lived streams ([`batch_push`]).
//!
//! The swarm runs in its own tokio task; the driver talks to it through a [`NetHandle`] and
//! receives [`NetEvent`]s. The network checks what it can without consensus: size, wire version
//! and envelope shape (malformed or oversized: **Reject**, which penalizes the forwarder in
//! gossipsub's score), the topic a body may travel on, and membership of the publisher. Everything
//! else (signatures, epochs, rounds) is judged by the driver, which reports the outcome with
//! [`NetHandle::report`]: Accept forwards, Ignore drops without penalty (stale, duplicate, unknown
//! epoch, non-member, too far ahead), Reject penalizes (malformed or badly signed by a known
//! member). A lagging honest node therefore never collects penalties.
//!
//! Identity: the node's 32-byte secp256k1 secret (derived from dstack) is its libp2p key, so a
//! PeerId names a validator; [`peer_id_from_public_key`] maps a member's registered public key to
//! its PeerId. Gossip is signed with that key and checked strictly, so a message's publisher is
//! authentic. Votes are accepted only from members' PeerIds; batch, block and sync requests are
//! served by [`crate::serve`] within a budget per peer (members ahead of non-members).
//!
//! Layout: this module holds the configuration, the events and `spawn`; `topics` names the gossip
//! topics, `codec` frames requests and responses, `handle` is the driver's side, `task` the
//! swarm's.

use std::collections::{HashMap, HashSet};
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libp2p::futures::{AsyncWriteExt, StreamExt};
use libp2p::gossipsub::{self, IdentTopic, MessageAcceptance, MessageId};
use libp2p::identity;
use libp2p::request_response::{
    self, InboundRequestId, OutboundRequestId, ProtocolSupport, ResponseChannel,
};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, noise, tcp, yamux};
use prost::Message as _;
use proto::limits::{MAX_GOSSIP_BYTES, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use proto::{GossipBody, RequestBody, ResponseBody, WireError};
use tokio::sync::{mpsc, oneshot};

use crate::frames::{read_frame, write_frame_open};
use crate::metrics::Metrics;
use crate::serve::{Ask, Gate, Permit};
use crate::wire::wire_reason;

pub mod batch_push;
mod codec;
mod handle;
mod intake;
mod task;
mod topics;

use batch_push::BatchPush;
pub use codec::WireCodec;
use handle::Command;
pub use handle::NetHandle;
use task::Task;
pub use task::VOTES_IN_FLIGHT;
pub use topics::{TopicKind, Topics, batch_protocol};

/// The request-response protocol name.
pub const RR_PROTOCOL: &str = "/dstack-nft-cluster/rr/1";

/// Why a network operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The 32-byte secret is not a valid secp256k1 key.
    #[error("invalid secp256k1 secret key: {0}")]
    BadKey(String),
    /// A public key is not a valid secp256k1 key.
    #[error("invalid secp256k1 public key: {0}")]
    BadPublicKey(String),
    /// The transport or a listen address failed.
    #[error("transport: {0}")]
    Transport(String),
    /// The network task has stopped.
    #[error("network task stopped")]
    Stopped,
    /// A request failed (dial, timeout, closed connection, protocol).
    #[error("request to {peer} failed: {reason}")]
    Request {
        /// The peer asked.
        peer: PeerId,
        /// Why.
        reason: String,
    },
    /// A response could not be decoded.
    #[error("bad response from {peer}: {source}")]
    BadResponse {
        /// The peer.
        peer: PeerId,
        /// The decode error.
        source: WireError,
    },
    /// The peer answered with an error.
    #[error("peer {peer} answered with an error: {message}")]
    Remote {
        /// The peer.
        peer: PeerId,
        /// Its error text.
        message: String,
    },
    /// Publishing failed (for example: no peer subscribed yet).
    #[error("publish failed: {0}")]
    Publish(String),
}

/// The libp2p keypair of a node: its secp256k1 secret.
pub fn keypair_from_secret(secret: &[u8; 32]) -> Result<identity::Keypair, NetError> {
    let mut bytes = *secret;
    let sk = identity::secp256k1::SecretKey::try_from_bytes(&mut bytes)
        .map_err(|e| NetError::BadKey(e.to_string()))?;
    Ok(identity::Keypair::from(identity::secp256k1::Keypair::from(
        sk,
    )))
}

/// The PeerId of a member from its registered public key: 64 bytes uncompressed without prefix
/// (the contract's form), or 33 compressed / 65 uncompressed SEC1 bytes.
pub fn peer_id_from_public_key(key: &[u8]) -> Result<PeerId, NetError> {
    let sec1: Vec<u8> = match key.len() {
        64 => [&[0x04][..], key].concat(),
        33 | 65 => key.to_vec(),
        n => return Err(NetError::BadPublicKey(format!("{n} bytes"))),
    };
    let pk = identity::secp256k1::PublicKey::try_from_bytes(&sec1)
        .map_err(|e| NetError::BadPublicKey(e.to_string()))?;
    Ok(identity::PublicKey::from(pk).to_peer_id())
}

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    gossipsub: gossipsub::Behaviour,
    rr: request_response::Behaviour<WireCodec>,
    stream: libp2p_stream::Behaviour,
}

/// Settings of the network.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The node's secp256k1 secret (its libp2p identity).
    pub secret: [u8; 32],
    /// Addresses to listen on (`/ip4/127.0.0.1/tcp/0` picks a free port).
    pub listen: Vec<Multiaddr>,
    /// Peers to dial at start.
    pub bootstrap: Vec<Multiaddr>,
    /// The chain id of the cluster (topic namespace).
    pub chain_id: u64,
    /// The contract of the cluster (topic namespace).
    pub contract: String,
    /// How long a request may take.
    pub request_timeout: Duration,
    /// Gossipsub heartbeat (mesh maintenance).
    pub heartbeat: Duration,
    /// Bytes per second read from all members' batch streams together, shared by power
    /// (`mempool.peer_batch_bytes_per_sec`; 0: unlimited).
    pub batch_bytes_per_sec: u64,
}

impl NetConfig {
    /// Settings with the defaults for everything but identity, addresses and namespace.
    pub fn new(secret: [u8; 32], chain_id: u64, contract: &str) -> Self {
        Self {
            secret,
            listen: Vec::new(),
            bootstrap: Vec::new(),
            chain_id,
            contract: contract.to_owned(),
            request_timeout: Duration::from_secs(10),
            heartbeat: Duration::from_millis(500),
            batch_bytes_per_sec: 0,
        }
    }
}

/// The responder of an inbound request; answer it with [`NetHandle::respond`]. A served request
/// carries its budget [`Permit`] until its response is sent or fails.
pub struct Responder {
    channel: ResponseChannel<Vec<u8>>,
    id: InboundRequestId,
    permit: Option<Permit>,
    /// A vote's place among its sender's unanswered votes (released with the responder).
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Responder {
    /// The same responder holding `permit` (released when the answer has left or failed).
    pub(crate) fn with_permit(mut self, permit: Permit) -> Self {
        self.permit = Some(permit);
        self
    }

    /// The same responder without its permit (released now).
    pub(crate) fn without_permit(mut self) -> Self {
        self.permit = None;
        self
    }
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Responder")
    }
}

/// A pushed batch's hold on one of its sender's [`batch_push::FRAMES_IN_FLIGHT`] places in
/// the driver's queue.
#[derive(Debug)]
pub struct BatchSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
}

/// What the network tells the driver.
#[derive(Debug)]
pub enum NetEvent {
    /// A well-formed gossip message awaiting the driver's verdict ([`NetHandle::report`]).
    Gossip {
        /// Gossipsub's id of the message (BLAKE3 of publisher, sequence number and data).
        id: MessageId,
        /// The peer that forwarded it (the one a Reject penalizes).
        propagation_source: PeerId,
        /// The peer that published it: authentic, gossipsub checked the publisher's signature
        /// (always `Some`; optional only as gossipsub types it).
        source: Option<PeerId>,
        /// Whether the (authenticated) publisher is a member of the current set.
        from_member: bool,
        /// The decoded body (boxed: proposals are large, other events small).
        body: Box<GossipBody>,
    },
    /// A batch from a member, straight from its publisher, as its canonical bytes (not decoded
    /// into transactions): pushed on a batch stream, or (older senders) published on the batch
    /// topic. The driver checks and stores it, and reports its verdict when it came by gossip.
    Batch {
        /// The member that published and sent it.
        from: PeerId,
        /// Gossipsub's id when it came by gossip (report the verdict with it); `None` when it
        /// was pushed on a stream (nothing to report).
        gossip_id: Option<MessageId>,
        /// The `v1::Batch` encoding.
        canonical: Vec<u8>,
        /// For a pushed batch, its place among the frames of its sender the driver has not
        /// handled yet (released when the event is dropped): each member has a few, so one
        /// member's flood cannot fill the driver's queue ahead of consensus messages.
        slot: Option<BatchSlot>,
    },
    /// A member's vote (votes from others are refused by the network); acknowledge it with
    /// [`NetHandle::respond`]. Other requests go to the [`Gate`] instead.
    Vote {
        /// The member that sent it.
        peer: PeerId,
        /// The vote.
        vote: proto::v1::Vote,
        /// Where the answer goes.
        responder: Responder,
    },
    /// A connection to a peer was established (its first one).
    PeerConnected(PeerId),
    /// The last connection to a peer closed.
    PeerDisconnected(PeerId),
    /// A peer subscribed to one of the cluster's topics.
    PeerSubscribed(PeerId, TopicKind),
}

/// Gossipsub's score thresholds (its defaults: gossip -10, publish -50, graylist -80).
fn score_thresholds() -> gossipsub::PeerScoreThresholds {
    gossipsub::PeerScoreThresholds::default()
}

fn gossipsub_behaviour(
    key: &identity::Keypair,
    cfg: &NetConfig,
    topics: &Topics,
) -> Result<gossipsub::Behaviour, NetError> {
    let gcfg = gossipsub::ConfigBuilder::default()
        .heartbeat_interval(cfg.heartbeat)
        // Every message is signed by its publisher's libp2p key (the node's secp256k1 key) and
        // a message without a valid signature is dropped before anything reads it, so `source`
        // names who published it: membership of the publisher (whether a message is forwarded)
        // and the fetch hint taken from it cannot be forged by a relay. The contents of
        // consensus messages carry their own member signatures besides.
        .validation_mode(gossipsub::ValidationMode::Strict)
        .validate_messages()
        // Room for the largest envelope plus the RPC framing and signature.
        .max_transmit_size(MAX_GOSSIP_BYTES + 64 * 1024)
        // No IDONTWANT (gossipsub 1.2) for any size. Batches, the only large messages, are never
        // forwarded, so announcing "do not send me this" to every mesh peer on each receipt only
        // cost control messages: at n = 16 each node sent about six per batch it received.
        .idontwant_message_size_threshold(usize::MAX)
        // The id covers the publisher and its sequence number with the content: a forwarded
        // copy keeps its id (gossip deduplicates it), but a deliberate re-broadcast (the same
        // timeout while a round is stuck, DESIGN section 5) is a new message, not a duplicate
        // gossipsub refuses to publish. Consensus deduplicates by signer, epoch, round and kind.
        .message_id_fn(|m: &gossipsub::Message| {
            let mut h = blake3::Hasher::new();
            if let Some(source) = &m.source {
                h.update(&source.to_bytes());
            }
            if let Some(seq) = m.sequence_number {
                h.update(&seq.to_be_bytes());
            }
            h.update(&m.data);
            MessageId::from(h.finalize().as_bytes().to_vec())
        })
        .build()
        .map_err(|e| NetError::Transport(format!("gossipsub config: {e}")))?;
    let mut gs =
        gossipsub::Behaviour::new(gossipsub::MessageAuthenticity::Signed(key.clone()), gcfg)
            .map_err(|e| NetError::Transport(format!("gossipsub: {e}")))?;
    // Scoring: only invalid deliveries (our Rejects) cost score. Mesh-delivery-rate penalties are
    // off: a quiet cluster or a lagging node must never look like a misbehaving one.
    let mut params = gossipsub::PeerScoreParams {
        // No penalty for many peers behind one IP address: membership is an NFT-authorised key,
        // not an address, and validators legitimately share one (a local testnet, a NAT, one
        // host running several TEEs). With the default, more than 10 peers on 127.0.0.1 pushed
        // every score below the graylist threshold and gossip among 16 nodes stopped.
        ip_colocation_factor_weight: 0.0,
        ..Default::default()
    };
    for t in [&topics.consensus, &topics.batches] {
        let tp = gossipsub::TopicScoreParams {
            topic_weight: 1.0,
            mesh_message_deliveries_weight: 0.0,
            mesh_failure_penalty_weight: 0.0,
            invalid_message_deliveries_weight: -20.0,
            invalid_message_deliveries_decay: 0.5,
            ..Default::default()
        };
        params.topics.insert(t.hash(), tp);
    }
    gs.with_peer_score(params, score_thresholds())
        .map_err(|e| NetError::Transport(format!("peer score: {e}")))?;
    gs.subscribe(&topics.consensus)
        .map_err(|e| NetError::Transport(format!("subscribe: {e}")))?;
    gs.subscribe(&topics.batches)
        .map_err(|e| NetError::Transport(format!("subscribe: {e}")))?;
    Ok(gs)
}

/// Starts the network task: listens on every configured address (waiting until each has a
/// port), dials the bootstrap peers, and returns the handle and the event stream.
pub async fn spawn(
    cfg: NetConfig,
    metrics: Arc<Metrics>,
    serve: Gate,
) -> Result<(NetHandle, mpsc::Receiver<NetEvent>), NetError> {
    let key = keypair_from_secret(&cfg.secret)?;
    let topics = Topics::new(cfg.chain_id, &cfg.contract);
    let gossipsub = gossipsub_behaviour(&key, &cfg, &topics)?;
    let identify = identify::Behaviour::new(identify::Config::new(
        "/dstack-nft-cluster/1".into(),
        key.public(),
    ));
    let rr = request_response::Behaviour::with_codec(
        WireCodec,
        [(StreamProtocol::new(RR_PROTOCOL), ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(cfg.request_timeout)
            .with_max_concurrent_streams(256),
    );
    let stream = libp2p_stream::Behaviour::new();
    let control = stream.new_control();
    let behaviour = Behaviour {
        identify,
        gossipsub,
        rr,
        stream,
    };
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    for addr in &cfg.listen {
        swarm
            .listen_on(addr.clone())
            .map_err(|e| NetError::Transport(format!("listen on {addr}: {e}")))?;
    }
    let mut listen_addrs = Vec::new();
    while listen_addrs.len() < cfg.listen.len() {
        let ev = tokio::time::timeout(Duration::from_secs(10), swarm.select_next_some())
            .await
            .map_err(|_| NetError::Transport("no listen address within 10 s".into()))?;
        match ev {
            SwarmEvent::NewListenAddr { address, .. } => listen_addrs.push(address),
            SwarmEvent::ListenerError { error, .. } => {
                return Err(NetError::Transport(format!("listener: {error}")));
            }
            SwarmEvent::ListenerClosed {
                reason: Err(error), ..
            } => return Err(NetError::Transport(format!("listener: {error}"))),
            _ => {}
        }
    }
    for addr in &cfg.bootstrap {
        if let Err(e) = swarm.dial(addr.clone()) {
            tracing::warn!(%addr, error = %e, "bootstrap dial failed");
        }
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(1024);
    let (ev_tx, ev_rx) = mpsc::channel(4096);
    let pushes_dropped = Arc::new(AtomicU64::new(0));
    let local_peer_id = *swarm.local_peer_id();
    let push = BatchPush::start(
        control.clone(),
        batch_protocol(cfg.chain_id, &cfg.contract)?,
        local_peer_id,
        ev_tx.clone(),
        metrics.clone(),
        pushes_dropped.clone(),
        cfg.batch_bytes_per_sec,
    )?;
    let handle = NetHandle {
        cmd: cmd_tx,
        local_peer_id,
        listen_addrs,
        control,
        pushes_dropped,
        intakes: push.intakes(),
    };
    let task = Task {
        push,
        swarm,
        topics,
        members: HashSet::new(),
        pending: HashMap::new(),
        serve,
        sending: HashMap::new(),
        events: ev_tx,
        metrics,
        graylisted: HashSet::new(),
        vote_places: HashMap::new(),
    };
    tokio::spawn(task.run(cmd_rx));
    Ok((handle, ev_rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_id_from_secret_matches_registered_key_forms() {
        let secret = [7u8; 32];
        let kp = keypair_from_secret(&secret).expect("key");
        let pid = kp.public().to_peer_id();
        let Ok(secp) = kp.clone().try_into_secp256k1() else {
            panic!("secp256k1 keypair expected");
        };
        let compressed = secp.public().to_bytes();
        let uncompressed = secp.public().to_bytes_uncompressed();
        assert_eq!(peer_id_from_public_key(&compressed).expect("33"), pid);
        assert_eq!(peer_id_from_public_key(&uncompressed).expect("65"), pid);
        assert_eq!(
            peer_id_from_public_key(&uncompressed[1..]).expect("64"),
            pid
        );
        assert!(peer_id_from_public_key(&[1; 10]).is_err());
        assert!(keypair_from_secret(&[0; 32]).is_err(), "zero is not a key");
    }

    #[test]
    fn topics_are_namespaced_by_chain_and_contract() {
        let a = Topics::new(1, "0xABCDEF");
        let b = Topics::new(1, "abcdef");
        let c = Topics::new(2, "0xabcdef");
        assert_eq!(a.consensus.hash(), b.consensus.hash());
        assert_ne!(a.consensus.hash(), c.consensus.hash());
        assert_ne!(a.consensus.hash(), a.batches.hash());
        assert_eq!(
            a.consensus.to_string(),
            "/dstack-nft-cluster/1/0xabcdef/consensus/1"
        );
    }
}
