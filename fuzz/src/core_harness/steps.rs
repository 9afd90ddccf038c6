//! Playing a step: the messages, certificates, records, answers and timers the other parties
//! send, genuine or forged, tampered or replayed.

use super::*;

impl Harness<'_> {
    pub(super) fn step(&mut self, step: Step) -> Result<(), Violation> {
        match step {
            Step::HonestRound { batches } => self.honest_round(batches)?,
            Step::Propose {
                round,
                qc,
                proposer,
                batches,
                reconfigure,
                tc,
                tamper,
            } => {
                let round = self.round(round);
                let qc = self.known_qc(qc);
                let (addr, key) = match proposer {
                    Some(w) => self.who(w),
                    None => {
                        let a = self.ctx.set().leader(round);
                        (a, self.signer_of(&a).unwrap_or(self.outsider.as_ref()))
                    }
                };
                let rc = reconfigure.map(|s| self.reconfigure(self.members_of(s)));
                let block = Block::new(
                    self.ctx.epoch(),
                    round,
                    qc,
                    addr,
                    digests(batches, round),
                    rc,
                );
                let tc = tc.and_then(|i| pick(&self.tcs, i));
                let p = self.proposal(key, block.clone(), tc);
                self.learn_block(&block);
                let m = self.tampered(Message::Proposal(p), tamper);
                self.message(m)?;
            }
            Step::Vote {
                block,
                round,
                who,
                tamper,
            } => {
                let Some(b) = pick(&self.blocks, block) else {
                    return Ok(());
                };
                let r = round.map_or(b.round(), |r| self.round(r));
                let v = self.vote(self.who(who), b.epoch(), r, b.id());
                let m = self.tampered(Message::Vote(v), tamper);
                self.message(m)?;
            }
            Step::Timeout {
                round,
                who,
                qc,
                tc,
                tamper,
            } => {
                let round = self.round(round);
                let tc = tc.and_then(|i| pick(&self.tcs, i));
                let t = self.timeout(self.who(who), round, self.known_qc(qc), tc);
                let m = self.tampered(Message::Timeout(t), tamper);
                self.message(m)?;
            }
            Step::Tc {
                round,
                signers,
                qc,
                deliver,
                tamper,
            } => {
                let round = self.round(round);
                let tc = self.tc(round, self.known_qc(qc), &self.indices(signers));
                push_bounded(&mut self.tcs, tc.clone());
                if deliver {
                    let m = self.tampered(Message::TimeoutCert(tc), tamper);
                    self.message(m)?;
                }
            }
            Step::Certify { block, signers } => {
                if let Some(b) = pick(&self.blocks, block) {
                    let qc = self.qc(b.round(), b.id(), &self.indices(signers));
                    push_bounded(&mut self.qcs, qc);
                }
            }
            Step::Timer { round, advance_ms } => {
                self.now_ms = self.now_ms.saturating_add(u64::from(advance_ms));
                let round = round.map_or(self.core.round(), |r| self.round(r));
                self.deliver(Event::TimerFired {
                    round,
                    now_ms: self.now_ms,
                })?;
            }
            Step::Payload { round, batches } => {
                let round = match round {
                    Some(r) => self.round(r),
                    None => self.last_payload_round.unwrap_or(self.core.round()),
                };
                self.deliver(Event::PayloadReady {
                    round,
                    batches: digests(batches, round),
                })?;
            }
            Step::BatchesAvailable { block } => {
                let id = match block {
                    Some(i) => pick(&self.blocks, i).map(|b| b.id()),
                    None => self.last_batches,
                };
                if let Some(block_id) = id {
                    self.deliver(Event::BatchesAvailable { block_id })?;
                }
            }
            Step::Fetched { block, count, gap } => {
                let id = match block {
                    Some(i) => pick(&self.blocks, i).map(|b| b.id()),
                    None => self.last_fetch,
                };
                let Some(mut id) = id else {
                    return Ok(());
                };
                let mut chain = Vec::new();
                while chain.len() < usize::from(count % 16) + 1 {
                    let Some(b) = self.blocks.iter().find(|b| b.id() == id) else {
                        break;
                    };
                    id = b.parent_id();
                    chain.push(b.clone());
                }
                if let Some(g) = gap
                    && !chain.is_empty()
                {
                    chain.remove(usize::from(g) % chain.len());
                }
                self.deliver(Event::BlocksFetched {
                    from: None,
                    blocks: chain,
                })?;
            }
            Step::Pinned {
                number,
                set,
                advance_ms,
            } => {
                self.now_ms = self.now_ms.saturating_add(u64::from(advance_ms));
                let number = u64::from(number);
                let mut hash = [0u8; 32];
                hash[..8].copy_from_slice(&number.to_le_bytes());
                let members = self.members_of(set);
                self.pinned = Some((number, hash, members.clone()));
                self.deliver(Event::PinnedHead {
                    number,
                    hash,
                    members,
                    now_ms: self.now_ms,
                })?;
            }
            Step::ChainSet { agree, missing } => {
                let Some((number, hash)) = self.last_chain_read else {
                    return Ok(());
                };
                let members = if missing {
                    None
                } else if agree {
                    self.pinned
                        .as_ref()
                        .filter(|(n, h, _)| (*n, *h) == (number, hash))
                        .map(|(_, _, m)| m.clone())
                        .or_else(|| Some(self.ctx.set().member_infos()))
                } else {
                    Some(self.members_of(SetSpec {
                        powers: [1, 2, 3, 0],
                    }))
                };
                self.deliver(Event::ChainSet {
                    number,
                    hash,
                    members,
                })?;
            }
            Step::Record(spec) => {
                let Some(record) = self.record(spec) else {
                    return Ok(());
                };
                push_bounded(&mut self.records, record.clone());
                self.deliver(Event::EpochChanges {
                    from: Some(self.member(1)),
                    records: vec![record],
                })?;
            }
            Step::Replay { index, tamper } => {
                if let Some(m) = pick(&self.sent, index) {
                    let m = self.tampered(m, tamper);
                    self.message(m)?;
                }
            }
            Step::Raw(raw) => {
                let m = self.raw(raw);
                self.message(m)?;
            }
        }
        Ok(())
    }

    /// One honest round on the highest known QC of the current epoch.
    pub(super) fn honest_round(&mut self, batches: u8) -> Result<(), Violation> {
        let round = self.core.round();
        let epoch = self.ctx.epoch();
        let leader = self.ctx.set().leader(round);
        let mut block = None;
        if leader == self.me {
            let acts = self.deliver(Event::PayloadReady {
                round,
                batches: digests(batches, round),
            })?;
            block = acts.iter().find_map(|a| match a {
                Action::Broadcast(Message::Proposal(p)) if p.block.round() == round => {
                    Some(p.block.clone())
                }
                _ => None,
            });
            // It may have proposed already (an earlier payload answer).
            block = block.or_else(|| {
                self.blocks
                    .iter()
                    .find(|b| b.epoch() == epoch && b.round() == round && b.proposer() == self.me)
                    .cloned()
            });
        } else if let Some(key) = self.signer_of(&leader) {
            let b = Block::new(
                epoch,
                round,
                self.highest_qc(),
                leader,
                digests(batches, round),
                None,
            );
            let p = self.proposal(key, b.clone(), None);
            self.learn_block(&b);
            let acts = self.message(Message::Proposal(p))?;
            if acts
                .iter()
                .any(|a| matches!(a, Action::FetchBatches { block_id, .. } if *block_id == b.id()))
            {
                self.deliver(Event::BatchesAvailable { block_id: b.id() })?;
            }
            block = Some(b);
        }
        let Some(b) = block else {
            return Ok(());
        };
        let others: Vec<Address> = self
            .ctx
            .set()
            .members()
            .iter()
            .map(|m| m.address)
            .filter(|a| *a != self.me)
            .collect();
        for a in others {
            let Some(key) = self.signer_of(&a) else {
                continue;
            };
            let v = self.vote((a, key), epoch, round, b.id());
            self.message(Message::Vote(v))?;
        }
        let all: Vec<usize> = (0..self.ctx.set().len()).collect();
        let qc = self.qc(round, b.id(), &all);
        push_bounded(&mut self.qcs, qc);
        Ok(())
    }

    pub(super) fn record(&self, spec: RecordSpec) -> Option<EpochChangeRecord> {
        match spec {
            RecordSpec::Valid { set, round } => {
                let members = self.members_of(set);
                if members.is_empty() {
                    return None;
                }
                let epoch = self.ctx.epoch();
                let parent = self.highest_qc();
                let r0 = self.round(round).max(parent.round.saturating_add(1));
                let r1 = r0.checked_add(1)?;
                let all: Vec<usize> = (0..self.ctx.set().len()).collect();
                let leader0 = self.ctx.set().leader(r0);
                let b0 = Block::new(
                    epoch,
                    r0,
                    parent,
                    leader0,
                    Vec::new(),
                    Some(self.reconfigure(members)),
                );
                let qc0 = self.qc(r0, b0.id(), &all);
                let b1 = Block::new(epoch, r1, qc0, self.ctx.set().leader(r1), Vec::new(), None);
                let qc1 = self.qc(r1, b1.id(), &all);
                Some(EpochChangeRecord {
                    epoch,
                    path: vec![b0, b1],
                    qc: qc1,
                })
            }
            RecordSpec::Replay { index, tamper } => {
                let mut r = pick(&self.records, index)?;
                match tamper {
                    Tamper::None => {}
                    Tamper::Epoch(e) => r.epoch = self.epoch_of(e),
                    Tamper::Round(x) | Tamper::InnerRound(x) => r.qc.round = self.round(x),
                    Tamper::Signature(i) => {
                        if let Some(s) = r.qc.signatures.first_mut() {
                            s.0[usize::from(i) % 65] ^= 1;
                        }
                    }
                }
                Some(r)
            }
            RecordSpec::Forged {
                epoch,
                round,
                extra,
                set,
                low_tail,
            } => {
                let epoch = self.epoch_of(epoch);
                let round = self.round(round);
                let qc = QuorumCert {
                    epoch,
                    round: round.saturating_sub(1),
                    block_id: BlockId([3; 32]),
                    signers: SignerBitmap::new(4),
                    signatures: Vec::new(),
                };
                let mut prev = Block::new(
                    epoch,
                    round,
                    qc,
                    self.member(0),
                    Vec::new(),
                    Some(self.reconfigure(self.members_of(set))),
                );
                let mut path = vec![prev.clone()];
                for k in 0..=u64::from(extra % 4) {
                    let q = QuorumCert {
                        epoch,
                        round: if low_tail { k } else { prev.round() },
                        block_id: prev.id(),
                        signers: SignerBitmap::new(4),
                        signatures: Vec::new(),
                    };
                    prev = Block::new(
                        epoch,
                        if low_tail {
                            k + 1
                        } else {
                            round.wrapping_add(k + 1)
                        },
                        q,
                        self.member(1),
                        Vec::new(),
                        None,
                    );
                    path.push(prev.clone());
                }
                let qc = QuorumCert {
                    epoch,
                    round: prev.round(),
                    block_id: prev.id(),
                    signers: SignerBitmap::new(4),
                    signatures: vec![Signature([1; 65]); 3],
                };
                Some(EpochChangeRecord { epoch, path, qc })
            }
        }
    }

    pub(super) fn tampered(&self, m: Message, t: Tamper) -> Message {
        match (m, t) {
            (m, Tamper::None) => m,
            (Message::Vote(mut v), Tamper::Round(r)) => {
                v.round = self.round(r);
                Message::Vote(v)
            }
            (Message::Vote(mut v), Tamper::Epoch(e)) => {
                v.epoch = self.epoch_of(e);
                Message::Vote(v)
            }
            (Message::Vote(mut v), Tamper::Signature(i)) => {
                v.signature.0[usize::from(i) % 65] ^= 1;
                Message::Vote(v)
            }
            (Message::Timeout(mut t), Tamper::Round(r)) => {
                t.round = self.round(r);
                Message::Timeout(t)
            }
            (Message::Timeout(mut t), Tamper::Epoch(e)) => {
                t.epoch = self.epoch_of(e);
                Message::Timeout(t)
            }
            (Message::Timeout(mut t), Tamper::Signature(i)) => {
                t.signature.0[usize::from(i) % 65] ^= 1;
                Message::Timeout(t)
            }
            (Message::Timeout(mut t), Tamper::InnerRound(r)) => {
                match t.high_tc.as_mut() {
                    Some(tc) => tc.round = self.round(r),
                    None => t.high_qc.round = self.round(r),
                }
                Message::Timeout(t)
            }
            (Message::TimeoutCert(mut tc), Tamper::Round(r) | Tamper::InnerRound(r)) => {
                tc.round = self.round(r);
                Message::TimeoutCert(tc)
            }
            (Message::TimeoutCert(mut tc), Tamper::Epoch(e)) => {
                tc.epoch = self.epoch_of(e);
                Message::TimeoutCert(tc)
            }
            (Message::TimeoutCert(mut tc), Tamper::Signature(i)) => {
                if let Some(s) = tc.signatures.first_mut() {
                    s.0[usize::from(i) % 65] ^= 1;
                }
                Message::TimeoutCert(tc)
            }
            (Message::Proposal(mut p), Tamper::Signature(i)) => {
                p.signature.0[usize::from(i) % 65] ^= 1;
                Message::Proposal(p)
            }
            (Message::Proposal(mut p), Tamper::InnerRound(r)) => {
                let round = self.round(r);
                match p.tc.as_mut() {
                    Some(tc) => tc.round = round,
                    None => {
                        p.tc = Some(self.tc(round, p.block.qc().clone(), &self.indices(0)));
                    }
                }
                Message::Proposal(p)
            }
            (Message::Proposal(p), Tamper::Round(r)) => {
                // A relay rebuilds the block at another round and keeps the signature.
                let h = p.block.header();
                let b = Block::new(
                    h.epoch,
                    self.round(r),
                    h.qc.clone(),
                    h.proposer,
                    p.block.payload().to_vec(),
                    h.reconfigure.clone(),
                );
                Message::Proposal(Proposal { block: b, ..p })
            }
            (Message::Proposal(p), Tamper::Epoch(e)) => {
                let h = p.block.header();
                let b = Block::new(
                    self.epoch_of(e),
                    h.round,
                    h.qc.clone(),
                    h.proposer,
                    p.block.payload().to_vec(),
                    h.reconfigure.clone(),
                );
                Message::Proposal(Proposal { block: b, ..p })
            }
            (m, _) => m,
        }
    }

    pub(super) fn raw_qc(&self, q: RawQc) -> QuorumCert {
        let block_id = match q.block {
            Ok(i) => pick(&self.blocks, i).map_or(BlockId([0; 32]), |b| b.id()),
            Err(id) => BlockId(id),
        };
        let signers = bitmap(&q.bitmap);
        QuorumCert {
            epoch: self.epoch_of(q.epoch),
            round: self.round(q.round),
            block_id,
            signers,
            signatures: q.signatures.into_iter().take(16).map(Signature).collect(),
        }
    }

    pub(super) fn raw(&self, raw: RawMessage) -> Message {
        match raw {
            RawMessage::Vote {
                epoch,
                round,
                block,
                signer,
                signature,
            } => Message::Vote(Vote {
                epoch: self.epoch_of(epoch),
                round: self.round(round),
                block_id: BlockId(block),
                signer: self.who(signer).0,
                signature: Signature(signature),
            }),
            RawMessage::Timeout {
                epoch,
                round,
                high_qc,
                signer,
                signature,
            } => Message::Timeout(Timeout {
                epoch: self.epoch_of(epoch),
                round: self.round(round),
                high_qc: self.raw_qc(high_qc),
                high_tc: None,
                signer: self.who(signer).0,
                signature: Signature(signature),
            }),
            RawMessage::Tc {
                epoch,
                round,
                high_qc,
                bitmap,
                rounds,
                signatures,
            } => {
                let signers = self::bitmap(&bitmap);
                Message::TimeoutCert(TimeoutCert {
                    epoch: self.epoch_of(epoch),
                    round: self.round(round),
                    high_qc: self.raw_qc(high_qc),
                    signers,
                    high_qc_rounds: rounds.into_iter().take(16).collect(),
                    signatures: signatures.into_iter().take(16).map(Signature).collect(),
                })
            }
            RawMessage::Proposal {
                epoch,
                round,
                qc,
                proposer,
                payload,
                signature,
            } => {
                let block = Block::new(
                    self.epoch_of(epoch),
                    self.round(round),
                    self.raw_qc(qc),
                    self.who(proposer).0,
                    payload.into_iter().take(16).map(BatchDigest).collect(),
                    None,
                );
                Message::Proposal(Proposal {
                    block,
                    tc: None,
                    signature: Signature(signature),
                })
            }
        }
    }
}
