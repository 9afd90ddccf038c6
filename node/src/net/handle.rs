//! The driver's handle on the network task: commands in, answers back.

use super::*;

pub(super) enum Command {
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
    SetMembers(HashMap<PeerId, u64>),
    Peers(oneshot::Sender<Vec<PeerId>>),
    PeerScore(PeerId, oneshot::Sender<Option<f64>>),
}

/// The driver's handle on the network task. Cheap to clone; the task stops when every handle is
/// dropped.
#[derive(Clone)]
pub struct NetHandle {
    pub(super) cmd: mpsc::Sender<Command>,
    /// This node's PeerId.
    pub local_peer_id: PeerId,
    /// The addresses the node listens on (ports resolved).
    pub listen_addrs: Vec<Multiaddr>,
    pub(super) control: libp2p_stream::Control,
    pub(super) pushes_dropped: Arc<AtomicU64>,
    pub(super) intakes: Arc<intake::Intakes>,
}

impl NetHandle {
    pub(super) async fn send(&self, c: Command) -> Result<(), NetError> {
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

    /// Waits until `bytes` fit `peer`'s share of the batch intake
    /// (`mempool.peer_batch_bytes_per_sec`): batches fetched because a member's proposal named
    /// them cost that member's share like the batches it pushes, so a low-power leader cannot
    /// make every node fetch and store at will.
    pub async fn intake_wait(&self, peer: PeerId, bytes: usize) {
        let wait = self
            .intakes
            .charge(&peer, bytes, batch_push::FRAMES_IN_FLIGHT);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Replaces the set of member PeerIds, all of equal power.
    pub async fn set_members(&self, members: HashSet<PeerId>) -> Result<(), NetError> {
        self.set_member_powers(members.into_iter().map(|p| (p, 1)).collect())
            .await
    }

    /// Replaces the members with their voting powers (at start and on every epoch change): the
    /// powers share the batch intake among them.
    pub async fn set_member_powers(&self, members: HashMap<PeerId, u64>) -> Result<(), NetError> {
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
