//! The network side: messages queued for sending and flushed after their persists, and what
//! arrives (gossip, batches, votes, requests), verified before it reaches the core.

use super::*;

impl Driver {
    /// Queues a consensus message: a vote to every other current member's peer (request-response),
    /// anything else by gossip; then whatever the tap adds, the same way.
    pub(super) fn send_message(&mut self, message: &Message) {
        self.queue_one(message);
        if let Some(tap) = self.tap.clone() {
            for extra in tap.extra(message) {
                self.queue_one(&extra);
            }
        }
    }

    pub(super) fn queue_one(&mut self, message: &Message) {
        let out = match message {
            Message::Vote(v) => {
                // Every member aggregates votes into QCs (so one forms even when the next leader
                // is down): the vote goes to each other current member directly.
                let vote = wire::vote_to_wire(v);
                for m in &self.members {
                    if m.info.address == self.me {
                        continue;
                    }
                    if let Some(peer) = self.by_addr.get(&m.info.address) {
                        self.outbox.push(Outgoing::Vote(*peer, vote.clone()));
                    }
                }
                return;
            }
            Message::Proposal(p) => {
                Outgoing::Gossip(Box::new(GossipBody::Proposal(wire::proposal_to_wire(p))))
            }
            Message::Timeout(t) => {
                Outgoing::Gossip(Box::new(GossipBody::Timeout(wire::timeout_to_wire(t))))
            }
            Message::TimeoutCert(tc) => {
                Outgoing::Gossip(Box::new(GossipBody::Tc(wire::tc_to_wire(tc))))
            }
        };
        self.outbox.push(out);
    }

    /// Collects the tasks that ended; one that panicked stops the driver.
    pub(super) fn reap_tasks(&mut self) -> Result<(), DriverError> {
        while let Some(done) = self.tasks.try_join_next() {
            if let Err(e) = done
                && e.is_panic()
            {
                return Err(DriverError::TaskPanicked(e.to_string()));
            }
        }
        Ok(())
    }

    /// Sends what the executed actions queued (after their persistence).
    pub(super) async fn flush(&mut self) {
        for o in std::mem::take(&mut self.outbox) {
            match o {
                Outgoing::SetMembers(m) => {
                    let _ = self.net.set_member_powers(m).await;
                }
                Outgoing::Dial(addr) => {
                    let _ = self.net.dial(addr).await;
                }
                Outgoing::Vote(peer, vote) => {
                    let net = self.net.clone();
                    self.tasks.spawn(async move {
                        if let Err(e) = net.request(peer, RequestBody::Vote(vote)).await {
                            tracing::debug!(%peer, error = %e, "vote not delivered");
                        }
                    });
                }
                Outgoing::Gossip(body) => {
                    if let Err(e) = self.net.publish(*body).await {
                        tracing::debug!(error = %e, "publish failed");
                    }
                }
                Outgoing::PushBatch(bytes) => {
                    if let Err(e) = self.net.push_batch(bytes).await {
                        tracing::debug!(error = %e, "batch push failed");
                    }
                }
                Outgoing::Fetch(f) => {
                    self.tasks.spawn(f(self.net.clone(), self.done_tx.clone()));
                }
            }
        }
    }

    pub(super) fn on_done(&mut self, done: Completion) -> Result<(), DriverError> {
        match done {
            Completion::Blocks { from, blocks } => self.feed(Event::BlocksFetched { from, blocks }),
            Completion::BatchesAvailable(block_id) => {
                self.feed(Event::BatchesAvailable { block_id })
            }
            Completion::CommitBatchesReady => {
                self.commit_fetch_inflight = false;
                Ok(())
            }
            Completion::SyncPage(page) => {
                self.sync_inflight = false;
                self.apply_sync_page(page)
            }
            Completion::Pinned(view) => self.on_pinned(view),
            Completion::ChainSet {
                number,
                hash,
                members,
            } => self.feed(Event::ChainSet {
                number,
                hash,
                members,
            }),
            Completion::Records { from, records } => {
                let records: Vec<EpochChangeRecord> = records
                    .iter()
                    .filter_map(|r| wire::record_from_wire(r).ok())
                    .collect();
                if records.is_empty() {
                    return Ok(());
                }
                self.feed(Event::EpochChanges { from, records })
            }
        }
    }

    /// The gossip verdict on the message just handled. `direct`: its publisher forwarded it
    /// itself, so its own signed misbehaviour (an equivocation) is penalized too.
    pub(super) fn verdict(&mut self, direct: bool) -> MessageAcceptance {
        let d = std::mem::take(&mut self.discards);
        if d.iter().any(|x| x.reject || (direct && x.by_sender)) {
            MessageAcceptance::Reject
        } else if d.is_empty() {
            MessageAcceptance::Accept
        } else {
            MessageAcceptance::Ignore
        }
    }

    pub(super) fn on_net(&mut self, ev: NetEvent) -> Result<(), DriverError> {
        match ev {
            NetEvent::PeerConnected(p) => {
                self.connected.insert(p);
            }
            NetEvent::PeerDisconnected(p) => {
                self.connected.remove(&p);
            }
            NetEvent::PeerSubscribed(..) => {}
            NetEvent::Gossip {
                id,
                propagation_source,
                source,
                from_member,
                body,
            } => {
                let from = source
                    .and_then(|s| self.by_peer.get(&s).copied())
                    .unwrap_or_default();
                let direct = source == Some(propagation_source);
                let verdict = self.on_gossip(*body, from, direct)?;
                let verdict = match verdict {
                    MessageAcceptance::Accept if !from_member => {
                        self.metrics.ignore("non_member");
                        MessageAcceptance::Ignore
                    }
                    v => v,
                };
                self.report(id, propagation_source, verdict);
            }
            NetEvent::Batch {
                from,
                gossip_id,
                canonical,
                slot,
            } => {
                // Held until the batch is handled: its sender's place in the queue.
                let _slot = slot;
                let origin = self.by_peer.get(&from).copied();
                let verdict = self.on_batch(canonical, origin)?;
                if let Some(id) = gossip_id {
                    self.report(id, from, verdict);
                }
            }
            NetEvent::Vote {
                peer,
                vote,
                responder,
            } => self.on_vote(peer, vote, responder)?,
        }
        Ok(())
    }

    pub(super) fn report(&mut self, id: MessageId, source: PeerId, acceptance: MessageAcceptance) {
        let net = self.net.clone();
        self.tasks.spawn(async move {
            let _ = net.report(id, source, acceptance).await;
        });
    }

    /// A member's batch, as canonical bytes: refused unless the mempool has room for it and
    /// the member is within its share (before it is hashed or written), checked against the
    /// batch limits, stored (lazily: it can be fetched again) and offered to the mempool.
    pub(super) fn on_batch(
        &mut self,
        canonical: Vec<u8>,
        origin: Option<Address>,
    ) -> Result<MessageAcceptance, DriverError> {
        let Some(origin) = origin else {
            self.metrics.ignore("batch_from_unknown_member");
            return Ok(MessageAcceptance::Ignore);
        };
        let members = self.members.len();
        let cfg = {
            let pool = lock(&self.mempool);
            if let Err(refusal) = pool.admit_remote(origin, members) {
                self.metrics.ignore(refusal.reason());
                return Ok(MessageAcceptance::Ignore);
            }
            pool.config().clone()
        };
        Ok(match SealedBatch::from_canonical(canonical, &cfg) {
            Ok(batch) => {
                if lock(&self.mempool).knows_batch(&batch.digest).is_ok() {
                    self.store.put_batch_lazy(&batch.digest, &batch.encoded)?;
                    if let Err(refusal) =
                        lock(&self.mempool).add_remote_from(&batch, origin, members)
                    {
                        self.metrics.ignore(refusal.reason());
                    }
                }
                // Kept, but not forwarded: its publisher pushes it to every member directly
                // (a stream per member; older nodes flood-publish it on the batch topic), so a
                // forwarded copy would only make each node receive, decrypt and hash every batch
                // once per member. A node that missed one fetches it before voting. The verdict
                // only matters for a batch that came by gossip.
                MessageAcceptance::Ignore
            }
            Err(_) => {
                self.metrics.reject("bad_batch");
                MessageAcceptance::Reject
            }
        })
    }

    pub(super) fn on_gossip(
        &mut self,
        body: GossipBody,
        from: Address,
        direct: bool,
    ) -> Result<MessageAcceptance, DriverError> {
        self.discards.clear();
        let message = match body {
            GossipBody::Proposal(p) => wire::proposal_from_wire(&p).map(Message::Proposal),
            GossipBody::Timeout(t) => wire::timeout_from_wire(&t).map(Message::Timeout),
            GossipBody::Tc(tc) => wire::tc_from_wire(&tc).map(Message::TimeoutCert),
            GossipBody::Batch(b) => {
                // An envelope the network could not take apart as canonical bytes (another
                // encoder's field order, say): re-encode and check it the same way.
                let origin = (from != Address::default()).then_some(from);
                return self.on_batch(mempool::encode_batch(&b.transactions), origin);
            }
            GossipBody::EpochChange(r) => {
                return Ok(match wire::record_from_wire(&r) {
                    Ok(record) => {
                        self.feed(Event::EpochChanges {
                            from: (from != Address::default()).then_some(from),
                            records: vec![record],
                        })?;
                        self.verdict(direct)
                    }
                    Err(_) => {
                        self.metrics.reject("malformed");
                        MessageAcceptance::Reject
                    }
                });
            }
            GossipBody::Evidence(_) => {
                // Evidence is recorded locally by each node's core; relayed copies are not used.
                self.metrics.ignore("unsupported");
                return Ok(MessageAcceptance::Ignore);
            }
        };
        match message {
            Ok(m) => {
                self.feed(Event::Message { from, message: m })?;
                Ok(self.verdict(direct))
            }
            Err(_) => {
                self.metrics.reject("malformed");
                Ok(MessageAcceptance::Reject)
            }
        }
    }

    pub(super) fn respond(&mut self, responder: Responder, body: ResponseBody) {
        let net = self.net.clone();
        self.tasks.spawn(async move {
            let _ = net.respond(responder, body).await;
        });
    }

    /// A member's vote (the network refuses others'); batch, block and sync requests are
    /// answered by [`crate::serve`], off this task.
    pub(super) fn on_vote(
        &mut self,
        peer: PeerId,
        vote: v1::Vote,
        responder: Responder,
    ) -> Result<(), DriverError> {
        match wire::vote_from_wire(&vote) {
            Ok(v) => {
                let from = self.by_peer.get(&peer).copied().unwrap_or_default();
                self.discards.clear();
                self.feed(Event::Message {
                    from,
                    message: Message::Vote(v),
                })?;
                self.discards.clear();
                self.respond(responder, ResponseBody::Ack(v1::Ack {}));
            }
            Err(e) => {
                self.metrics.reject("malformed");
                self.respond(responder, ResponseBody::Error(e.to_string()));
            }
        }
        Ok(())
    }
}
