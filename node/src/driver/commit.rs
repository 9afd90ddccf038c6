//! The commit pipeline: committed blocks wait in height order for their batches, then are
//! applied to the ledger and executed; local transactions are sealed into batches.

use super::*;

impl Driver {
    pub(super) fn enqueue_commit(&mut self, c: Commit) {
        let n = c.blocks.len();
        for (i, cb) in c.blocks.into_iter().enumerate() {
            let proof = (i + 1 == n).then(|| c.proof.clone());
            self.commit_queue.push_back((cb, proof));
        }
    }

    /// Executes the committed heights whose effects a crash lost (they were waiting to be
    /// written in a group, see [`crate::exec_overlay`]), from the stored blocks and batches.
    pub(super) fn execute_unexecuted(&mut self) -> Result<(), DriverError> {
        let committed = self.store.committed_height()?;
        let from = self.store.executed_height() + 1;
        if from > committed {
            return Ok(());
        }
        tracing::info!(
            from,
            to = committed,
            "executing committed blocks again after a restart"
        );
        for height in from..=committed {
            let block = self
                .store
                .committed_id(height)?
                .and_then(|id| self.store.get_block(&id).transpose())
                .transpose()?
                .as_deref()
                .and_then(decode_block)
                .ok_or(DriverError::Corrupt("committed block"))?;
            let digests: Vec<[u8; 32]> = block.payload().iter().map(|d| d.0).collect();
            app::execute_committed(&self.store, height, &digests)?;
        }
        self.store.flush_executed()?;
        Ok(())
    }

    /// Queues blocks a restart found committed by the core but not yet applied to the ledger.
    pub(super) fn enqueue_commit_blocks(&mut self, blocks: Vec<CommittedBlock>) {
        for cb in blocks {
            self.commit_queue.push_back((cb, None));
        }
    }

    /// Applies queued commits in height order, fetching missing batches first.
    pub(super) fn process_commits(&mut self) -> Result<(), DriverError> {
        while let Some((cb, proof)) = self.commit_queue.front() {
            let committed = self.store.committed_height()?;
            if cb.height <= committed {
                self.commit_queue.pop_front();
                continue;
            }
            if cb.height != committed + 1 {
                // A gap (a sync page applied meanwhile moved the ledger): the rest is stale.
                tracing::warn!(
                    height = cb.height,
                    committed,
                    "commit out of order; dropping queued commits"
                );
                self.commit_queue.clear();
                break;
            }
            let missing = self.missing_batches(cb.block.payload())?;
            if !missing.is_empty() {
                if !self.commit_fetch_inflight {
                    self.commit_fetch_inflight = true;
                    let peers = self.peers_preferring(Some(cb.block.proposer()));
                    let store = self.store.clone();
                    let cfg = lock(&self.mempool).config().clone();
                    self.outbox.push(Outgoing::Fetch(Box::new(move |net, done| {
                        Box::pin(async move {
                            let _ =
                                fetch_batches(&net, &store, &cfg, (&peers, None), missing).await;
                            let _ = done.send(Completion::CommitBatchesReady).await;
                        })
                    })));
                }
                break;
            }
            let block = cb.block.clone();
            let height = cb.height;
            let proof_bytes = proof
                .as_ref()
                .map(|p| wire::proof_to_wire(p).encode_to_vec())
                .unwrap_or_default();
            self.apply_committed(height, &block, &proof_bytes)?;
            self.commit_queue.pop_front();
        }
        Ok(())
    }

    pub(super) fn apply_committed(
        &mut self,
        height: u64,
        block: &Block,
        proof_bytes: &[u8],
    ) -> Result<(), DriverError> {
        let digests: Vec<[u8; 32]> = block.payload().iter().map(|d| d.0).collect();
        let known_hashes: Vec<Option<Vec<TxHash>>> = {
            let pool = lock(&self.mempool);
            digests.iter().map(|d| pool.batch_tx_hashes(d)).collect()
        };
        let block_bytes = wire::block_to_wire(block).encode_to_vec();
        let result = app::commit_block(
            &self.store,
            CommitInput {
                height,
                id: &block.id().0,
                block: &block_bytes,
                proof: proof_bytes,
                batch_digests: &digests,
                known_hashes: &known_hashes,
                prune_round: Some(block.round()),
            },
        )?;
        let root_round = block.round();
        self.uncommitted.retain(|_, (r, _)| *r > root_round);
        let uncommitted = &self.uncommitted;
        self.uncommitted_reconfigure
            .retain(|id| uncommitted.contains_key(id));
        let now = Instant::now();
        let latencies = lock(&self.mempool).on_committed(&digests, &result.committed, now);
        for l in latencies {
            self.metrics.commit_latency.observe(l.as_secs_f64());
        }
        self.metrics
            .block_interval
            .observe(now.duration_since(self.last_commit).as_secs_f64());
        self.last_commit = now;
        tracing::debug!(
            height,
            round = block.round(),
            txs = result.committed.len(),
            "committed"
        );
        Ok(())
    }

    /// Seals due batches, stores them and gossips them to the validators.
    pub(super) fn seal_batches(&mut self, by_time: bool) -> Result<(), DriverError> {
        let (sealed, last_seq) = {
            let mut pool = lock(&self.mempool);
            if by_time {
                pool.tick(Instant::now());
            }
            (pool.take_sealed(), pool.sealed_seq())
        };
        if sealed.is_empty() {
            return Ok(());
        }
        // Durable before the clients hear 202: an acknowledged transaction survives a crash.
        let first_seq = last_seq + 1 - sealed.len() as u64;
        self.store.write(|w| {
            for (k, b) in sealed.iter().enumerate() {
                w.put_batch(&b.digest, &b.encoded)?;
                w.put_local_batch(&b.digest, first_seq + k as u64)?;
            }
            Ok(())
        })?;
        self.durable.send_replace(last_seq);
        for b in sealed {
            // The canonical bytes go out as they are (no decode and re-encode per transaction).
            self.outbox
                .push(Outgoing::PushBatch(proto::batch_gossip(&b.encoded)));
        }
        Ok(())
    }
}
