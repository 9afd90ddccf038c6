//! The libp2p network of a node (DESIGN section 7): TCP + Noise + Yamux, identify, gossipsub
//! (with `validate_messages()` and peer scoring), request-response (votes to every member,
//! batch fetch, block sync) with a size-bounded codec, and a direct push of batches to every
//! member over long-lived streams ([`crate::batch_push`]).
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

use crate::batch_push::BatchPush;
use crate::frames::{read_frame, write_frame_open};
use crate::metrics::Metrics;
use crate::serve::{Ask, Gate, Permit};
use crate::wire::wire_reason;

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

/// Which pubsub topic a message travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// Proposals, timeouts, TCs, epoch-change records, evidence.
    Consensus,
    /// Batches of transactions.
    Batches,
}

impl TopicKind {
    /// The topic a gossip body belongs on.
    pub fn of(body: &GossipBody) -> Self {
        match body {
            GossipBody::Batch(_) => TopicKind::Batches,
            _ => TopicKind::Consensus,
        }
    }
}

/// The cluster's topics, namespaced by chain id and contract (so clusters never mix).
#[derive(Clone, Debug)]
pub struct Topics {
    /// The consensus topic.
    pub consensus: IdentTopic,
    /// The batch topic.
    pub batches: IdentTopic,
}

/// The namespace of a cluster's topics and protocols: chain id and contract (lowercase, 0x).
fn namespace(chain_id: u64, contract: &str) -> String {
    let c = contract.trim_start_matches("0x").to_lowercase();
    format!("/dstack-nft-cluster/{chain_id}/0x{c}")
}

/// The stream protocol batches are pushed on, namespaced like the topics (so clusters never
/// mix): `/dstack-nft-cluster/{chain_id}/0x{contract}/batches/1`.
pub fn batch_protocol(chain_id: u64, contract: &str) -> Result<StreamProtocol, NetError> {
    StreamProtocol::try_from_owned(format!("{}/batches/1", namespace(chain_id, contract)))
        .map_err(|e| NetError::Transport(format!("batch protocol name: {e}")))
}

impl Topics {
    /// Topics for the cluster of `contract` (any case, with or without 0x) on `chain_id`.
    pub fn new(chain_id: u64, contract: &str) -> Self {
        let base = namespace(chain_id, contract);
        Self {
            consensus: IdentTopic::new(format!("{base}/consensus/1")),
            batches: IdentTopic::new(format!("{base}/batches/1")),
        }
    }

    fn topic(&self, kind: TopicKind) -> &IdentTopic {
        match kind {
            TopicKind::Consensus => &self.consensus,
            TopicKind::Batches => &self.batches,
        }
    }

    fn kind(&self, hash: &gossipsub::TopicHash) -> Option<TopicKind> {
        if *hash == self.consensus.hash() {
            Some(TopicKind::Consensus)
        } else if *hash == self.batches.hash() {
            Some(TopicKind::Batches)
        } else {
            None
        }
    }
}

/// The request-response codec: a 4-byte big-endian length, then that many bytes of a prost
/// envelope. Lengths above the channel's limit are refused before any allocation.
#[derive(Clone, Copy, Debug, Default)]
pub struct WireCodec;

async fn write_frame<T: libp2p::futures::AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> io::Result<()> {
    write_frame_open(io, bytes, max).await?;
    io.close().await
}

impl request_response::Codec for WireCodec {
    type Protocol = StreamProtocol;
    type Request = Vec<u8>;
    type Response = Vec<u8>;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: libp2p::futures::AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_REQUEST_BYTES).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Vec<u8>>
    where
        T: libp2p::futures::AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_RESPONSE_BYTES).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Vec<u8>,
    ) -> io::Result<()>
    where
        T: libp2p::futures::AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, MAX_REQUEST_BYTES).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Vec<u8>,
    ) -> io::Result<()>
    where
        T: libp2p::futures::AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res, MAX_RESPONSE_BYTES).await
    }
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
        }
    }
}

/// The responder of an inbound request; answer it with [`NetHandle::respond`]. A served request
/// carries its budget [`Permit`] until its response is sent or fails.
pub struct Responder {
    channel: ResponseChannel<Vec<u8>>,
    id: InboundRequestId,
    permit: Option<Permit>,
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

enum Command {
    Publish {
        kind: TopicKind,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<(), NetError>>,
    },
    Report {
        id: MessageId,
        source: PeerId,
        acceptance: MessageAcceptance,
    },
    Request {
        peer: PeerId,
        bytes: Vec<u8>,
        reply: oneshot::Sender<Result<ResponseBody, NetError>>,
    },
    Respond {
        responder: Responder,
        bytes: Vec<u8>,
    },
    PushBatch(Arc<[u8]>),
    Dial(Multiaddr),
    SetMembers(HashSet<PeerId>),
    Peers(oneshot::Sender<Vec<PeerId>>),
    PeerScore(PeerId, oneshot::Sender<Option<f64>>),
}

/// The driver's handle on the network task. Cheap to clone; the task stops when every handle is
/// dropped.
#[derive(Clone)]
pub struct NetHandle {
    cmd: mpsc::Sender<Command>,
    /// This node's PeerId.
    pub local_peer_id: PeerId,
    /// The addresses the node listens on (ports resolved).
    pub listen_addrs: Vec<Multiaddr>,
    control: libp2p_stream::Control,
    pushes_dropped: Arc<AtomicU64>,
}

impl NetHandle {
    async fn send(&self, c: Command) -> Result<(), NetError> {
        self.cmd.send(c).await.map_err(|_| NetError::Stopped)
    }

    /// Publishes a gossip body on its topic.
    pub async fn publish(&self, body: GossipBody) -> Result<(), NetError> {
        let kind = TopicKind::of(&body);
        let bytes = proto::v1::GossipMessage::new(body).encode_to_vec();
        self.publish_raw(kind, bytes).await
    }

    /// Publishes raw bytes on a topic: an envelope built elsewhere (a batch's, around its
    /// canonical bytes), or malformed input in tests.
    pub async fn publish_raw(&self, kind: TopicKind, bytes: Vec<u8>) -> Result<(), NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Publish { kind, bytes, reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Pushes a batch's gossip envelope ([`proto::batch_gossip`]) to every other current member
    /// on its batch stream: one shared buffer, queued per peer (a full queue drops the frame for
    /// that peer; it fetches the batch before voting). Returns once queued, not once delivered.
    pub async fn push_batch(&self, bytes: Vec<u8>) -> Result<(), NetError> {
        if bytes.len() > MAX_GOSSIP_BYTES {
            return Err(NetError::Publish(format!(
                "batch envelope of {} bytes exceeds the limit of {MAX_GOSSIP_BYTES}",
                bytes.len()
            )));
        }
        self.send(Command::PushBatch(bytes.into())).await
    }

    /// Frames [`NetHandle::push_batch`] dropped because a peer's queue was full (diagnostics).
    pub fn batch_pushes_dropped(&self) -> u64 {
        self.pushes_dropped.load(Ordering::Relaxed)
    }

    /// A control to open raw streams on this node's swarm (tools and tests, for example to
    /// write frames the node itself would never send).
    pub fn stream_control(&self) -> libp2p_stream::Control {
        self.control.clone()
    }

    /// Reports the driver's verdict on a gossip message (exactly once per message).
    pub async fn report(
        &self,
        id: MessageId,
        propagation_source: PeerId,
        acceptance: MessageAcceptance,
    ) -> Result<(), NetError> {
        self.send(Command::Report {
            id,
            source: propagation_source,
            acceptance,
        })
        .await
    }

    /// Sends a request and waits for the answer (bounded by the configured timeout).
    pub async fn request(&self, peer: PeerId, body: RequestBody) -> Result<ResponseBody, NetError> {
        let bytes = proto::v1::Request::new(body).encode_to_vec();
        self.request_raw(peer, bytes).await
    }

    /// Sends raw request bytes (tools and tests).
    pub async fn request_raw(
        &self,
        peer: PeerId,
        bytes: Vec<u8>,
    ) -> Result<ResponseBody, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request { peer, bytes, reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Answers an inbound request.
    pub async fn respond(&self, responder: Responder, body: ResponseBody) -> Result<(), NetError> {
        let bytes = proto::v1::Response::new(body).encode_to_vec();
        self.send(Command::Respond { responder, bytes }).await
    }

    /// [`NetHandle::respond`] from a plain thread (the server's workers): encodes there, then
    /// waits for room in the network task's queue. Never call it from async code.
    pub fn respond_blocking(
        &self,
        responder: Responder,
        body: ResponseBody,
    ) -> Result<(), NetError> {
        let bytes = proto::v1::Response::new(body).encode_to_vec();
        self.cmd
            .blocking_send(Command::Respond { responder, bytes })
            .map_err(|_| NetError::Stopped)
    }

    /// Dials an address (a member's connection URL or a bootstrap peer).
    pub async fn dial(&self, addr: Multiaddr) -> Result<(), NetError> {
        self.send(Command::Dial(addr)).await
    }

    /// Replaces the set of member PeerIds (at start and on every epoch change).
    pub async fn set_members(&self, members: HashSet<PeerId>) -> Result<(), NetError> {
        self.send(Command::SetMembers(members)).await
    }

    /// The connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerId>, NetError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Peers(tx)).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Gossipsub's score of a peer (for tests and diagnostics).
    pub async fn peer_score(&self, peer: PeerId) -> Result<Option<f64>, NetError> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::PeerScore(peer, tx)).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }
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
    )?;
    let handle = NetHandle {
        cmd: cmd_tx,
        local_peer_id,
        listen_addrs,
        control,
        pushes_dropped,
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
    };
    tokio::spawn(task.run(cmd_rx));
    Ok((handle, ev_rx))
}

struct Task {
    push: BatchPush,
    swarm: Swarm<Behaviour>,
    topics: Topics,
    members: HashSet<PeerId>,
    pending: HashMap<OutboundRequestId, (PeerId, oneshot::Sender<Result<ResponseBody, NetError>>)>,
    /// Where batch, block and sync requests go.
    serve: Gate,
    /// The permits of served requests whose response is on its way (released when it is sent
    /// or fails: libp2p reports one or the other for every response it accepted).
    sending: HashMap<InboundRequestId, Permit>,
    events: mpsc::Sender<NetEvent>,
    metrics: Arc<Metrics>,
    /// Connected peers whose gossipsub score is below the graylist threshold (logged once each
    /// time a peer crosses it, so an operator or a test can name who misbehaved).
    graylisted: HashSet<PeerId>,
}

/// How often peer scores are compared with the graylist threshold.
const GRAYLIST_CHECK: Duration = Duration::from_secs(1);

impl Task {
    async fn run(mut self, mut cmds: mpsc::Receiver<Command>) {
        let mut graylist_check = tokio::time::interval(GRAYLIST_CHECK);
        graylist_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = cmds.recv() => match cmd {
                    Some(c) => self.command(c),
                    None => break,
                },
                ev = self.swarm.select_next_some() => self.swarm_event(ev).await,
                _ = graylist_check.tick() => self.check_graylist(),
            }
        }
        tracing::debug!("network task stopped");
    }

    /// Logs each connected peer whose gossipsub score fell below the graylist threshold (from
    /// then on gossipsub ignores everything it sends) and each that recovered.
    fn check_graylist(&mut self) {
        let threshold = score_thresholds().graylist_threshold;
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let Some(score) = self.swarm.behaviour().gossipsub.peer_score(&peer) else {
                continue;
            };
            if score < threshold {
                if self.graylisted.insert(peer) {
                    tracing::warn!(%peer, score, "peer graylisted");
                }
            } else if self.graylisted.remove(&peer) {
                tracing::info!(%peer, score, "peer no longer graylisted");
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Publish { kind, bytes, reply } => {
                let topic = self.topics.topic(kind).clone();
                let r = self
                    .swarm
                    .behaviour_mut()
                    .gossipsub
                    .publish(topic, bytes)
                    .map(|_| ())
                    .map_err(|e| NetError::Publish(e.to_string()));
                let _ = reply.send(r);
            }
            Command::Report {
                id,
                source,
                acceptance,
            } => {
                self.swarm
                    .behaviour_mut()
                    .gossipsub
                    .report_message_validation_result(&id, &source, acceptance);
            }
            Command::Request { peer, bytes, reply } => {
                let id = self.swarm.behaviour_mut().rr.send_request(&peer, bytes);
                self.pending.insert(id, (peer, reply));
            }
            Command::Respond { responder, bytes } => {
                let Responder {
                    channel,
                    id,
                    permit,
                } = responder;
                let len = bytes.len();
                if self
                    .swarm
                    .behaviour_mut()
                    .rr
                    .send_response(channel, bytes)
                    .is_err()
                {
                    tracing::debug!("response not sent: connection gone");
                } else if let Some(mut permit) = permit {
                    permit.charge(len);
                    self.sending.insert(id, permit);
                }
            }
            Command::Dial(addr) => {
                if let Err(e) = self.swarm.dial(addr.clone()) {
                    tracing::debug!(%addr, error = %e, "dial failed");
                }
            }
            Command::PushBatch(frame) => self.push.push(&frame),
            Command::SetMembers(m) => {
                self.push.set_members(&m);
                self.members = m;
            }
            Command::Peers(tx) => {
                let _ = tx.send(self.swarm.connected_peers().copied().collect());
            }
            Command::PeerScore(p, tx) => {
                let _ = tx.send(self.swarm.behaviour().gossipsub.peer_score(&p));
            }
        }
    }

    fn reject_gossip(&mut self, id: &MessageId, from: &PeerId, reason: &str) {
        self.metrics.reject(reason);
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, from, MessageAcceptance::Reject);
    }

    fn ignore_gossip(&mut self, id: &MessageId, from: &PeerId, reason: &str) {
        self.metrics.ignore(reason);
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, from, MessageAcceptance::Ignore);
    }

    async fn emit(&mut self, ev: NetEvent) {
        // Back-pressure: the driver is the bottleneck; a full queue waits rather than drops.
        if self.events.send(ev).await.is_err() {
            tracing::debug!("event receiver dropped");
        }
    }

    async fn swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
        match ev {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } => {
                self.metrics
                    .p2p_peers
                    .set(self.swarm.connected_peers().count() as i64);
                if num_established.get() == 1 {
                    self.emit(NetEvent::PeerConnected(peer_id)).await;
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established,
                ..
            } => {
                self.metrics
                    .p2p_peers
                    .set(self.swarm.connected_peers().count() as i64);
                if num_established == 0 {
                    if self.graylisted.remove(&peer_id) {
                        tracing::info!(peer = %peer_id, "graylisted peer disconnected");
                    }
                    self.emit(NetEvent::PeerDisconnected(peer_id)).await;
                }
            }
            SwarmEvent::Behaviour(BehaviourEvent::Gossipsub(ev)) => self.gossip_event(ev).await,
            SwarmEvent::Behaviour(BehaviourEvent::Rr(ev)) => self.rr_event(ev).await,
            SwarmEvent::Behaviour(BehaviourEvent::Identify(identify::Event::Received {
                peer_id,
                info,
                ..
            })) => {
                tracing::trace!(%peer_id, agent = %info.agent_version, "identified");
            }
            _ => {}
        }
    }

    async fn gossip_event(&mut self, ev: gossipsub::Event) {
        match ev {
            gossipsub::Event::Message {
                propagation_source,
                message_id,
                message,
            } => {
                let Some(kind) = self.topics.kind(&message.topic) else {
                    self.ignore_gossip(&message_id, &propagation_source, "unknown_topic");
                    return;
                };
                let mut message = message;
                if kind == TopicKind::Batches {
                    match proto::take_batch_in_gossip(std::mem::take(&mut message.data)) {
                        Ok(canonical) => {
                            let from_member =
                                message.source.is_some_and(|s| self.members.contains(&s));
                            if !(from_member && message.source == Some(propagation_source)) {
                                self.ignore_gossip(&message_id, &propagation_source, "non_member");
                                return;
                            }
                            self.emit(NetEvent::Batch {
                                from: propagation_source,
                                gossip_id: Some(message_id),
                                canonical,
                            })
                            .await;
                            return;
                        }
                        Err(data) => message.data = data,
                    }
                }
                let body = match proto::v1::GossipMessage::decode_checked(&message.data) {
                    Ok(b) => b,
                    Err(e @ WireError::Version(_)) => {
                        // Another version is not an attack: do not penalize, do not forward.
                        let reason = wire_reason(&e);
                        self.ignore_gossip(&message_id, &propagation_source, reason);
                        return;
                    }
                    Err(e) => {
                        let reason = wire_reason(&e);
                        self.reject_gossip(&message_id, &propagation_source, reason);
                        return;
                    }
                };
                if TopicKind::of(&body) != kind {
                    self.reject_gossip(&message_id, &propagation_source, "wrong_topic");
                    return;
                }
                let from_member = message.source.is_some_and(|s| self.members.contains(&s));
                // A batch must come straight from its publisher, a member (batches are never
                // forwarded).
                let direct = message.source == Some(propagation_source);
                if kind == TopicKind::Batches && !(from_member && direct) {
                    self.ignore_gossip(&message_id, &propagation_source, "non_member");
                    return;
                }
                self.emit(NetEvent::Gossip {
                    id: message_id,
                    propagation_source,
                    source: message.source,
                    from_member,
                    body: Box::new(body),
                })
                .await;
            }
            gossipsub::Event::Subscribed { peer_id, topic, .. } => {
                if let Some(kind) = self.topics.kind(&topic) {
                    self.emit(NetEvent::PeerSubscribed(peer_id, kind)).await;
                }
            }
            _ => {}
        }
    }

    /// An error answer, sent from this task (refusals and malformed requests).
    fn answer_error(&mut self, responder: Responder, message: String) {
        let resp = proto::v1::Response::new(ResponseBody::Error(message));
        let _ = self
            .swarm
            .behaviour_mut()
            .rr
            .send_response(responder.channel, resp.encode_to_vec());
    }

    /// A request: votes (members only) go to the driver, everything else to the server's gate,
    /// which queues it within the requester's budget or refuses it here.
    async fn inbound_request(&mut self, peer: PeerId, request: &[u8], responder: Responder) {
        let from_member = self.members.contains(&peer);
        let ask = match proto::v1::Request::decode_checked(request) {
            Ok(RequestBody::Vote(vote)) => {
                if !from_member {
                    self.metrics.ignore("non_member");
                    self.answer_error(responder, "votes are accepted from members only".into());
                    return;
                }
                self.emit(NetEvent::Vote {
                    peer,
                    vote,
                    responder,
                })
                .await;
                return;
            }
            Ok(RequestBody::Batches(r)) => Ask::Batches(r),
            Ok(RequestBody::Blocks(r)) => Ask::Blocks(r),
            Ok(RequestBody::Sync(r)) => Ask::Sync(r),
            Err(e) => {
                self.metrics.reject(wire_reason(&e));
                self.answer_error(responder, e.to_string());
                return;
            }
        };
        if let Err(refused) = self.serve.offer(peer, from_member, ask, responder) {
            let (refusal, responder) = *refused;
            self.metrics.reject(refusal.reason());
            tracing::debug!(%peer, from_member, %refusal, "request refused");
            self.answer_error(responder, refusal.to_string());
        }
    }

    async fn rr_event(&mut self, ev: request_response::Event<Vec<u8>, Vec<u8>>) {
        match ev {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request_id,
                    request,
                    channel,
                } => {
                    let responder = Responder {
                        channel,
                        id: request_id,
                        permit: None,
                    };
                    self.inbound_request(peer, &request, responder).await;
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some((peer, reply)) = self.pending.remove(&request_id) {
                        let r = match proto::v1::Response::decode_checked(&response) {
                            Ok(ResponseBody::Error(message)) => {
                                Err(NetError::Remote { peer, message })
                            }
                            Ok(b) => Ok(b),
                            Err(source) => {
                                self.metrics.reject(wire_reason(&source));
                                Err(NetError::BadResponse { peer, source })
                            }
                        };
                        let _ = reply.send(r);
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                if let Some((_, reply)) = self.pending.remove(&request_id) {
                    let _ = reply.send(Err(NetError::Request {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure {
                error,
                peer,
                request_id,
                ..
            } => {
                self.sending.remove(&request_id);
                if let request_response::InboundFailure::Io(e) = &error
                    && e.kind() == io::ErrorKind::InvalidData
                {
                    self.metrics.reject("oversized");
                }
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { request_id, .. } => {
                self.sending.remove(&request_id);
            }
        }
    }
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
