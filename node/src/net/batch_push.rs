//! Batch dissemination by direct push over long-lived libp2p streams, one per pair of members.
//!
//! Why not gossipsub: batches are the only large messages, and gossipsub's `publish` clones and
//! re-measures the whole message for every recipient (about three copies per peer); at n = 16
//! that was ~10 % of each node's CPU. Batches are never forwarded anyway (their publisher sends
//! them to every member itself), so a stream per member carries the same traffic with one shared
//! buffer and no per-peer copy.
//!
//! Sending: one writer task per member with a bounded queue. A full queue drops the frame for
//! that peer (counted): a node lacking a batch fetches it before voting, so a drop costs latency,
//! never safety. Receiving: streams from non-members are dropped at once, each member has at
//! most one live inbound stream (a new one replaces the old) and at most [`FRAMES_IN_FLIGHT`]
//! frames handed to the driver and not yet handled, every frame is bounded by
//! [`MAX_GOSSIP_BYTES`], membership is checked again per frame, and anything that is not a batch
//! envelope closes the stream. Frames are the request-response codec's: a 4-byte big-endian
//! length, then the bytes (here: a batch's gossip envelope, [`proto::batch_gossip`]).

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use libp2p::futures::{AsyncReadExt, AsyncWriteExt, FutureExt, StreamExt};
use libp2p::{PeerId, Stream, StreamProtocol};
use libp2p_stream::{Control, IncomingStreams};
use proto::limits::MAX_GOSSIP_BYTES;
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::intake::{self, Intakes};
use super::{BatchSlot, NetError, NetEvent};
use crate::frames::{Refusal, canonical_batch, read_frame, write_frame_open};
use crate::metrics::Metrics;

/// Frames waiting for one peer's writer; beyond this the newest frame is dropped for that peer.
pub const QUEUE_FRAMES: usize = 64;
/// Frames of one member the driver has been handed and not yet handled; its reader waits for a
/// free place (and so stops reading its stream) beyond this. The driver's event queue is shared
/// with consensus messages, so without this one member pushing at line rate would queue
/// thousands of large frames ahead of every vote and proposal (and hold them in memory).
pub const FRAMES_IN_FLIGHT: usize = 16;
/// How long opening a stream (and dialing, if needed) may take.
const OPEN_TIMEOUT: Duration = Duration::from_secs(5);
/// How long writing one frame may take (a peer that stops reading must not stall its writer).
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause after a failed open before the writer tries again.
const BACKOFF: Duration = Duration::from_millis(500);
/// How long closing a refused stream may take.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// The members as every reader sees them (replaced wholesale on each change).
type Members = Arc<intake::Members>;

/// The sending half and the membership shared with the receiving half. Owned by the network
/// task; the accept loop and the readers run in their own tasks.
pub(crate) struct BatchPush {
    control: Control,
    protocol: StreamProtocol,
    local: PeerId,
    members: watch::Sender<Members>,
    writers: HashMap<PeerId, mpsc::Sender<Arc<[u8]>>>,
    dropped: Arc<AtomicU64>,
    intakes: Arc<Intakes>,
}

impl BatchPush {
    /// Registers the protocol for inbound streams and starts accepting them.
    pub(crate) fn start(
        mut control: Control,
        protocol: StreamProtocol,
        local: PeerId,
        events: mpsc::Sender<NetEvent>,
        metrics: Arc<Metrics>,
        dropped: Arc<AtomicU64>,
        bytes_per_sec: u64,
    ) -> Result<Self, NetError> {
        let incoming = control
            .accept(protocol.clone())
            .map_err(|e| NetError::Transport(format!("{protocol}: {e}")))?;
        let (members, members_rx) = watch::channel(Members::default());
        let intakes = Arc::new(Intakes::new(
            bytes_per_sec,
            members_rx.clone(),
            metrics.clone(),
        ));
        tokio::spawn(accept_loop(
            incoming,
            members_rx,
            events,
            metrics,
            intakes.clone(),
        ));
        Ok(Self {
            control,
            protocol,
            local,
            members,
            writers: HashMap::new(),
            dropped,
            intakes,
        })
    }

    /// The members' intakes (the driver's batch fetches are charged to them too).
    pub(crate) fn intakes(&self) -> Arc<Intakes> {
        self.intakes.clone()
    }

    /// Replaces the member set: readers see it at their next frame, writers for peers that left
    /// stop (their queue closes), members that joined get a writer.
    pub(crate) fn set_members(&mut self, members: &HashMap<PeerId, u64>) {
        self.members
            .send_replace(Arc::new(intake::Members::new(members.clone())));
        self.writers.retain(|p, _| members.contains_key(p));
        for &peer in members.keys() {
            if peer == self.local || self.writers.contains_key(&peer) {
                continue;
            }
            let (tx, rx) = mpsc::channel(QUEUE_FRAMES);
            tokio::spawn(write_loop(
                self.control.clone(),
                peer,
                self.protocol.clone(),
                rx,
            ));
            self.writers.insert(peer, tx);
        }
    }

    /// Queues one frame for every other member; a full queue drops it for that peer.
    pub(crate) fn push(&self, frame: &Arc<[u8]>) {
        for (peer, queue) in &self.writers {
            if let Err(e) = queue.try_send(frame.clone()) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, error = %e, "batch push dropped");
            }
        }
    }
}

/// Whether a stream we only write to was closed or reset by the remote (it never sends data, so
/// a ready read means EOF, an error, or a protocol violation: in every case the stream is done).
fn remote_closed(stream: &mut Stream) -> bool {
    let mut byte = [0u8; 1];
    stream.read(&mut byte).now_or_never().is_some()
}

/// Keeps one stream to `peer` open and writes each queued frame on it; reopens the stream when
/// it failed or the remote closed it. Ends when the queue closes (the peer left the set or the
/// network stopped).
async fn write_loop(
    mut control: Control,
    peer: PeerId,
    protocol: StreamProtocol,
    mut queue: mpsc::Receiver<Arc<[u8]>>,
) {
    let mut stream: Option<Stream> = None;
    while let Some(frame) = queue.recv().await {
        if stream.as_mut().is_some_and(remote_closed) {
            tracing::debug!(%peer, "batch stream closed by the remote; reopening");
            stream = None;
        }
        let s = match stream.as_mut() {
            Some(s) => s,
            None => {
                match tokio::time::timeout(
                    OPEN_TIMEOUT,
                    control.open_stream(peer, protocol.clone()),
                )
                .await
                {
                    Ok(Ok(s)) => stream.insert(s),
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "batch stream not opened; frame dropped");
                        tokio::time::sleep(BACKOFF).await;
                        continue;
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "batch stream open timed out; frame dropped");
                        tokio::time::sleep(BACKOFF).await;
                        continue;
                    }
                }
            }
        };
        let written =
            tokio::time::timeout(WRITE_TIMEOUT, write_frame_open(s, &frame, MAX_GOSSIP_BYTES))
                .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "batch write failed; frame dropped");
                stream = None;
            }
            Err(_) => {
                tracing::debug!(%peer, "batch write timed out; frame dropped");
                stream = None;
            }
        }
    }
}

/// Takes inbound batch streams: a non-member's is dropped at once, a member's replaces the
/// member's previous one (at most one live reader per member).
async fn accept_loop(
    mut incoming: IncomingStreams,
    members: watch::Receiver<Members>,
    events: mpsc::Sender<NetEvent>,
    metrics: Arc<Metrics>,
    intakes: Arc<Intakes>,
) {
    let mut readers: HashMap<PeerId, AbortHandle> = HashMap::new();
    while let Some((peer, stream)) = incoming.next().await {
        if !members.borrow().contains(&peer) {
            metrics.ignore("non_member");
            tracing::debug!(%peer, "batch stream from a non-member refused");
            continue;
        }
        readers.retain(|_, r| !r.is_finished());
        let reader = tokio::spawn(read_loop(
            peer,
            stream,
            intakes.clone(),
            members.clone(),
            events.clone(),
            metrics.clone(),
        ));
        if let Some(old) = readers.insert(peer, reader.abort_handle()) {
            old.abort();
        }
    }
}

/// Reads frames from one member until the stream ends, the member leaves the set, or a frame
/// is oversized or not a batch (then the stream is closed). Waits when the driver is busy.
async fn read_loop(
    peer: PeerId,
    mut stream: Stream,
    intakes: Arc<Intakes>,
    members: watch::Receiver<Members>,
    events: mpsc::Sender<NetEvent>,
    metrics: Arc<Metrics>,
) {
    loop {
        // A place first: while the driver holds this member's frames, its stream is not read.
        // Kept across a member's streams: a new stream brings no new places or allowance.
        let places = intakes.of(&peer, FRAMES_IN_FLIGHT).places.clone();
        let Ok(slot) = places.acquire_owned().await else {
            return;
        };
        let frame = match read_frame(&mut stream, MAX_GOSSIP_BYTES).await {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                metrics.reject("oversized");
                tracing::debug!(%peer, error = %e, "oversized batch frame; stream closed");
                break;
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "batch stream ended");
                return;
            }
        };
        if !members.borrow().contains(&peer) {
            metrics.ignore("non_member");
            break;
        }
        // Over its share of the intake, the member waits (its stream unread) for the bytes.
        let wait = intakes.charge(&peer, frame.len(), FRAMES_IN_FLIGHT);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let canonical = match canonical_batch(frame) {
            Ok(c) => c,
            Err(Refusal::Reject(reason)) => {
                metrics.reject(reason);
                break;
            }
            Err(Refusal::Ignore(reason)) => {
                metrics.ignore(reason);
                break;
            }
        };
        let ev = NetEvent::Batch {
            from: peer,
            gossip_id: None,
            canonical,
            slot: Some(BatchSlot { _permit: slot }),
        };
        // Back-pressure: the driver is the bottleneck; a full queue waits rather than drops.
        if events.send(ev).await.is_err() {
            return;
        }
    }
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, stream.close()).await;
}
