//! The network task: the swarm's events (gossip checked before it reaches the driver, requests
//! handed to the serve workers) and the driver's commands.

use super::*;

pub(super) struct Task {
    pub(super) push: BatchPush,
    pub(super) swarm: Swarm<Behaviour>,
    pub(super) topics: Topics,
    pub(super) members: HashSet<PeerId>,
    pub(super) pending:
        HashMap<OutboundRequestId, (PeerId, oneshot::Sender<Result<ResponseBody, NetError>>)>,
    /// Where batch, block and sync requests go.
    pub(super) serve: Gate,
    /// The permits of served requests whose response is on its way (released when it is sent
    /// or fails: libp2p reports one or the other for every response it accepted).
    pub(super) sending: HashMap<InboundRequestId, Permit>,
    pub(super) events: mpsc::Sender<NetEvent>,
    pub(super) metrics: Arc<Metrics>,
    /// Connected peers whose gossipsub score is below the graylist threshold (logged once each
    /// time a peer crosses it, so an operator or a test can name who misbehaved).
    pub(super) graylisted: HashSet<PeerId>,
    /// Each member's places for votes handed to the driver and not yet answered.
    pub(super) vote_places: HashMap<PeerId, Arc<tokio::sync::Semaphore>>,
}

/// Votes of one member the driver holds unanswered, at most; one more is refused at once. An
/// honest member has one vote per round in flight (two across a round change), so this only
/// binds a member flooding votes, and keeps its votes from queuing ahead of everyone's messages.
pub const VOTES_IN_FLIGHT: usize = 4;

/// How often peer scores are compared with the graylist threshold.
pub(super) const GRAYLIST_CHECK: Duration = Duration::from_secs(1);

impl Task {
    pub(super) async fn run(mut self, mut cmds: mpsc::Receiver<Command>) {
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
    pub(super) fn check_graylist(&mut self) {
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

    pub(super) fn command(&mut self, c: Command) {
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
                // A vote's place is released here, once its answer is on its way.
                let Responder {
                    channel,
                    id,
                    permit,
                    slot: _,
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
                self.vote_places.retain(|p, _| m.contains_key(p));
                self.members = m.into_keys().collect();
            }
            Command::Peers(tx) => {
                let _ = tx.send(self.swarm.connected_peers().copied().collect());
            }
            Command::PeerScore(p, tx) => {
                let _ = tx.send(self.swarm.behaviour().gossipsub.peer_score(&p));
            }
        }
    }

    pub(super) fn reject_gossip(&mut self, id: &MessageId, from: &PeerId, reason: &str) {
        self.metrics.reject(reason);
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, from, MessageAcceptance::Reject);
    }

    pub(super) fn ignore_gossip(&mut self, id: &MessageId, from: &PeerId, reason: &str) {
        self.metrics.ignore(reason);
        self.swarm
            .behaviour_mut()
            .gossipsub
            .report_message_validation_result(id, from, MessageAcceptance::Ignore);
    }

    pub(super) async fn emit(&mut self, ev: NetEvent) {
        // Back-pressure: the driver is the bottleneck; a full queue waits rather than drops.
        if self.events.send(ev).await.is_err() {
            tracing::debug!("event receiver dropped");
        }
    }

    pub(super) async fn swarm_event(&mut self, ev: SwarmEvent<BehaviourEvent>) {
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

    pub(super) async fn gossip_event(&mut self, ev: gossipsub::Event) {
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
                                slot: None,
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
    pub(super) fn answer_error(&mut self, responder: Responder, message: String) {
        let resp = proto::v1::Response::new(ResponseBody::Error(message));
        let _ = self
            .swarm
            .behaviour_mut()
            .rr
            .send_response(responder.channel, resp.encode_to_vec());
    }

    /// A request: votes (members only) go to the driver, everything else to the server's gate,
    /// which queues it within the requester's budget or refuses it here.
    pub(super) async fn inbound_request(
        &mut self,
        peer: PeerId,
        request: &[u8],
        responder: Responder,
    ) {
        let from_member = self.members.contains(&peer);
        let ask = match proto::v1::Request::decode_checked(request) {
            Ok(RequestBody::Vote(vote)) => {
                if !from_member {
                    self.metrics.ignore("non_member");
                    self.answer_error(responder, "votes are accepted from members only".into());
                    return;
                }
                let place = self
                    .vote_places
                    .entry(peer)
                    .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(VOTES_IN_FLIGHT)))
                    .clone();
                let Ok(slot) = place.try_acquire_owned() else {
                    self.metrics.reject("votes_in_flight");
                    self.answer_error(
                        responder,
                        format!("more than {VOTES_IN_FLIGHT} votes unanswered; retry later"),
                    );
                    return;
                };
                let mut responder = responder;
                responder.slot = Some(slot);
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

    pub(super) async fn rr_event(&mut self, ev: request_response::Event<Vec<u8>, Vec<u8>>) {
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
                        slot: None,
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
