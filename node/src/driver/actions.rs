//! Applying the core's actions: the order (`consensus::host::Pump`), persistence batched into
//! one durable write before anything leaves, the answers the driver has at once, and the fetches
//! it starts for the rest.

use super::*;

impl Driver {
    /// Feeds one event to the core and applies its actions in the [`Pump`]'s order: an answer
    /// the driver has at once (a payload, batches already stored, no chain to ask) reaches the
    /// core only after the rest of the list, so no older safety record is written after a newer
    /// one. Consecutive persist actions are written in one durable transaction, before the next
    /// action that could let something leave the node.
    pub(super) fn feed(&mut self, ev: Event) -> Result<(), DriverError> {
        let mut pump = Pump::new(ev);
        let mut persist = Vec::new();
        while let Some(step) = pump.next_step() {
            match step {
                Step::Handle(ev) => pump.push_actions(self.core.handle(ev)),
                Step::Apply(
                    a @ (Action::PersistBlock(_)
                    | Action::PersistCertificates { .. }
                    | Action::PersistSafety(_)
                    | Action::PersistEpochChange(_)),
                ) => persist.push(a),
                Step::Apply(a) => {
                    self.persist(&mut persist)?;
                    if let Some(answer) = self.act(a)? {
                        pump.answer(answer);
                    }
                }
                Step::EndOfActions => self.persist(&mut persist)?,
            }
        }
        Ok(())
    }

    /// Writes every queued persist action in one durable transaction.
    pub(super) fn persist(&mut self, queue: &mut Vec<Action>) -> Result<(), DriverError> {
        if queue.is_empty() {
            return Ok(());
        }
        let items = std::mem::take(queue);
        for a in &items {
            match a {
                Action::PersistBlock(b) => self.note_uncommitted(b),
                // Blocks of the ended epoch past B0 never commit: their batches are free to be
                // proposed again in the new epoch.
                Action::PersistEpochChange(_) => {
                    self.uncommitted.clear();
                    self.uncommitted_reconfigure.clear();
                }
                _ => {}
            }
        }
        self.store.write(|w| {
            for a in &items {
                match a {
                    Action::PersistEpochChange(r) => {
                        w.prune_pending(u64::MAX)?;
                        w.put_epoch_change(r.epoch, &r.encode())?;
                    }
                    Action::PersistBlock(b) => {
                        let bytes = wire::block_to_wire(b).encode_to_vec();
                        w.put_pending_block(&b.id().0, b.round(), &bytes)?;
                        // The QC in a block certifies its parent.
                        w.put_qc(&b.qc().block_id.0, &b.qc().encode())?;
                    }
                    Action::PersistCertificates { high_qc, high_tc } => {
                        w.put_meta(meta::HIGH_QC, &high_qc.encode())?;
                        if let Some(tc) = high_tc {
                            w.put_meta(meta::HIGH_TC, &tc.encode())?;
                        }
                    }
                    Action::PersistSafety(s) => w.put_safety(s)?,
                    _ => {}
                }
            }
            Ok(())
        })?;
        for a in &items {
            if let Action::PersistEpochChange(r) = a {
                self.on_epoch_changed(r);
            }
        }
        Ok(())
    }

    pub(super) fn note_uncommitted(&mut self, b: &Block) {
        self.uncommitted
            .insert(b.id(), (b.round(), b.payload().to_vec()));
        if b.header().reconfigure.is_some() {
            self.uncommitted_reconfigure.insert(b.id());
        }
    }

    /// Answers the core's payload request with the oldest proposable batches, or holds it back
    /// for `empty_block_interval` when the block would be empty and nothing uncommitted waits
    /// for the blocks after it (transactions or an epoch change): an idle cluster then runs a
    /// few rounds a second instead of as many as its CPU and fsyncs allow. `now`: answer even
    /// if empty. Returns the answer for the core, if there is one now.
    pub(super) fn answer_payload(
        &mut self,
        round: u64,
        max_batches: usize,
        now: bool,
    ) -> Option<Event> {
        self.idle_payload = None;
        let exclude: HashSet<[u8; 32]> = self
            .uncommitted
            .values()
            .flat_map(|(_, ds)| ds.iter().map(|d| d.0))
            .collect();
        let batches: Vec<BatchDigest> = lock(&self.mempool)
            .payload(max_batches, &exclude)
            .into_iter()
            .map(BatchDigest)
            .collect();
        let idle = batches.is_empty()
            && exclude.is_empty()
            && self.uncommitted_reconfigure.is_empty()
            && !self.cfg.empty_block_interval.is_zero();
        if idle && !now {
            let at = tokio::time::Instant::now() + self.cfg.empty_block_interval;
            self.idle_payload = Some((round, max_batches, at));
            return None;
        }
        Some(Event::PayloadReady { round, batches })
    }

    /// Answers a held-back payload request once transactions can be proposed, or when its
    /// interval is over (`due`), or drops it when the core has left its round.
    pub(super) fn poll_idle_payload(&mut self, due: bool) -> Result<(), DriverError> {
        let Some((round, max_batches, _)) = self.idle_payload else {
            return Ok(());
        };
        if round != self.core.round() {
            self.idle_payload = None;
            return Ok(());
        }
        if (due || lock(&self.mempool).has_proposable())
            && let Some(answer) = self.answer_payload(round, max_batches, true)
        {
            self.feed(answer)?;
        }
        Ok(())
    }

    /// Applies one non-persist action; returns the core's answer when the driver has it now.
    pub(super) fn act(&mut self, a: Action) -> Result<Option<Event>, DriverError> {
        match a {
            Action::Broadcast(message) => self.send_message(&message),
            Action::SetTimer { round, duration_ms } => {
                let at = tokio::time::Instant::now() + Duration::from_millis(duration_ms);
                self.timer = Some((round, at));
            }
            Action::RequestPayload { round, max_batches } => {
                return Ok(self.answer_payload(round, max_batches, false));
            }
            Action::FetchBatches {
                block_id,
                digests,
                from,
            } => return self.fetch_block_batches(block_id, &digests, from),
            Action::FetchBlocks {
                block_id,
                stop_at_round,
                max_blocks,
                from,
            } => self.fetch_blocks(block_id, stop_at_round, max_blocks, from),
            Action::Commit(c) => self.enqueue_commit(c),
            Action::Discarded(d) => {
                if d.reject {
                    self.metrics.reject(d.reason);
                } else {
                    self.metrics.ignore(d.reason);
                }
                self.discards.push(d);
            }
            Action::Evidence(e) => {
                let signer = hex0x(&e.signer.0);
                tracing::warn!(%signer, epoch = e.epoch, round = e.round, kind = ?e.kind, "equivocation");
                self.metrics
                    .evidence
                    .get_or_create(&crate::metrics::SignerLabel { signer })
                    .inc();
            }
            Action::PersistBlock(_)
            | Action::PersistCertificates { .. }
            | Action::PersistSafety(_)
            | Action::PersistEpochChange(_) => {}
            Action::ReadChainSet { number, hash } => return Ok(self.read_chain_set(number, hash)),
            Action::BroadcastEpochChange(r) => {
                self.outbox
                    .push(Outgoing::Gossip(Box::new(GossipBody::EpochChange(
                        wire::record_to_wire(&r),
                    ))));
            }
            Action::SendEpochChanges { to, since_epoch } => {
                // Best effort on the cluster topic (gossip drops a repeat it still remembers);
                // the lagging node also fetches the records itself once it hears a later epoch.
                tracing::debug!(to = %hex0x(&to.0), since_epoch, "re-broadcasting epoch-change records for a lagging member");
                for r in self.stored_records(since_epoch)? {
                    self.outbox
                        .push(Outgoing::Gossip(Box::new(GossipBody::EpochChange(r))));
                }
            }
            Action::FetchEpochChanges { since_epoch, from } => {
                self.fetch_epoch_changes(since_epoch, from)
            }
        }
        Ok(None)
    }

    /// Answers `FetchBatches` at once when every batch is stored, else fetches the missing ones
    /// (the core hears `BatchesAvailable` when they are in).
    fn fetch_block_batches(
        &mut self,
        block_id: BlockId,
        digests: &[BatchDigest],
        from: Address,
    ) -> Result<Option<Event>, DriverError> {
        let missing = self.missing_batches(digests)?;
        if missing.is_empty() {
            return Ok(Some(Event::BatchesAvailable { block_id }));
        }
        let peers = self.peers_preferring(Some(from));
        let proposer = self.by_addr.get(&from).copied();
        let store = self.store.clone();
        let cfg = lock(&self.mempool).config().clone();
        self.outbox.push(Outgoing::Fetch(Box::new(move |net, done| {
            Box::pin(async move {
                if fetch_batches(&net, &store, &cfg, (&peers, proposer), missing).await {
                    let _ = done.send(Completion::BatchesAvailable(block_id)).await;
                }
            })
        })));
        Ok(None)
    }

    /// Fetches a block and its ancestors from the peers, the hinted one first.
    fn fetch_blocks(
        &mut self,
        block_id: BlockId,
        stop_at_round: u64,
        max_blocks: usize,
        from: Option<Address>,
    ) {
        let peers = self.peers_preferring(from);
        let by_peer = self.by_peer.clone();
        self.outbox.push(Outgoing::Fetch(Box::new(move |net, done| {
            Box::pin(async move {
                let req = v1::BlockRequest {
                    block_id: block_id.0.to_vec(),
                    stop_at_round,
                    max_blocks: u32::try_from(max_blocks).unwrap_or(u32::MAX),
                };
                for peer in peers {
                    match net.request(peer, RequestBody::Blocks(req.clone())).await {
                        Ok(ResponseBody::Blocks(resp)) => {
                            let blocks: Result<Vec<Block>, _> =
                                resp.blocks.iter().map(wire::block_from_wire).collect();
                            if let Ok(blocks) = blocks
                                && !blocks.is_empty()
                            {
                                let from = by_peer.get(&peer).copied();
                                let _ = done.send(Completion::Blocks { from, blocks }).await;
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(e) => tracing::debug!(%peer, error = %e, "block fetch failed"),
                    }
                }
            })
        })));
    }

    /// Fetches the epoch-change records from `since_epoch` on from up to four peers.
    fn fetch_epoch_changes(&mut self, since_epoch: u64, from: Option<Address>) {
        let peers = self.peers_preferring(from);
        let by_peer = self.by_peer.clone();
        self.outbox.push(Outgoing::Fetch(Box::new(move |net, done| {
            Box::pin(async move {
                let req = v1::SyncRequest {
                    from_height: u64::MAX,
                    max_blocks: 0,
                    known_epoch: since_epoch,
                };
                for peer in peers.into_iter().take(4) {
                    if let Ok(ResponseBody::Sync(resp)) =
                        net.request(peer, RequestBody::Sync(req)).await
                        && !resp.records.is_empty()
                    {
                        let from = by_peer.get(&peer).copied();
                        let _ = done
                            .send(Completion::Records {
                                from,
                                records: resp.records,
                            })
                            .await;
                        return;
                    }
                }
            })
        })));
    }

    /// Answers the core's `ReadChainSet` from the chain (no chain: nothing can be checked, and
    /// that answer is given at once).
    pub(super) fn read_chain_set(&mut self, number: u64, hash: [u8; 32]) -> Option<Event> {
        let Some(chain) = self.chain.clone() else {
            return Some(Event::ChainSet {
                number,
                hash,
                members: None,
            });
        };
        self.outbox.push(Outgoing::Fetch(Box::new(move |_net, done| {
            Box::pin(async move {
                let members = match chain.set_at(number, hash).await {
                    Ok(Some(set)) => Some(set.members.into_iter().map(|m| m.info).collect()),
                    Ok(None) => None,
                    Err(e) => {
                        tracing::warn!(number, error = %e, "cannot read the validator set a Reconfigure names");
                        None
                    }
                };
                let _ = done
                    .send(Completion::ChainSet {
                        number,
                        hash,
                        members,
                    })
                    .await;
            })
        })));
        None
    }

    /// The stored epoch-change records of epochs `since..`, as wire messages (bounded).
    pub(super) fn stored_records(
        &self,
        since: u64,
    ) -> Result<Vec<v1::EpochChangeRecord>, DriverError> {
        serve::answer::stored_records(&self.store, since).map_err(|e| match e {
            ServeError::Storage(e) => DriverError::Storage(e),
            ServeError::Corrupt(what) => DriverError::Corrupt(what),
        })
    }

    /// Members to ask, the hinted one first, then connected ones, then the rest.
    pub(super) fn peers_preferring(&self, hint: Option<Address>) -> Vec<PeerId> {
        let mut out = Vec::new();
        if let Some(p) = hint.and_then(|a| self.by_addr.get(&a))
            && hint != Some(self.me)
        {
            out.push(*p);
        }
        let mut rest: Vec<PeerId> = self
            .by_peer
            .iter()
            .filter(|(_, a)| **a != self.me)
            .map(|(p, _)| *p)
            .filter(|p| !out.contains(p))
            .collect();
        rest.sort_by_key(|p| !self.connected.contains(p));
        out.extend(rest);
        out
    }

    pub(super) fn missing_batches(
        &self,
        digests: &[BatchDigest],
    ) -> Result<Vec<[u8; 32]>, DriverError> {
        let mut missing = Vec::new();
        for d in digests {
            if !self.store.has_batch(&d.0)? {
                missing.push(d.0);
            }
        }
        Ok(missing)
    }
}

/// Fetches batches from the peers in turn, stores the ones that hash to a wanted digest.
/// Returns true when every wanted batch is stored. `charge_to`: the member whose proposal named
/// them; their bytes wait for its share of the batch intake before they are stored.
pub(super) async fn fetch_batches(
    net: &NetHandle,
    store: &Store,
    cfg: &crate::mempool::MempoolConfig,
    (peers, charge_to): (&[PeerId], Option<PeerId>),
    wanted: Vec<[u8; 32]>,
) -> bool {
    let mut missing: HashSet<[u8; 32]> = wanted.into_iter().collect();
    for peer in peers {
        if missing.is_empty() {
            break;
        }
        let req = v1::BatchRequest {
            digests: missing.iter().map(|d| d.to_vec()).collect(),
        };
        match net.request(*peer, RequestBody::Batches(req)).await {
            Ok(ResponseBody::Batches(resp)) => {
                let got: Vec<SealedBatch> = resp
                    .batches
                    .into_iter()
                    .filter_map(|b| SealedBatch::from_wire(b, cfg).ok())
                    .filter(|b| missing.contains(&b.digest))
                    .collect();
                if let Some(proposer) = charge_to {
                    let bytes = got.iter().map(|b| b.encoded.len()).sum();
                    net.intake_wait(proposer, bytes).await;
                }
                for batch in got {
                    if store.put_batch_lazy(&batch.digest, &batch.encoded).is_ok() {
                        missing.remove(&batch.digest);
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::debug!(%peer, error = %e, "batch fetch failed"),
        }
    }
    missing.is_empty()
}
