//! The simulated host of each node: its store (records, blocks, ledger, safety), its boot
//! through `restore`, the order it applies the core's actions in (`host::Pump`), and the requests
//! it answers.

use super::*;

#[derive(Default)]
pub(super) struct Store {
    pub(super) safety: SafetyState,
    pub(super) blocks: HashMap<BlockId, Block>,
    pub(super) high_qc: Option<QuorumCert>,
    pub(super) high_tc: Option<TimeoutCert>,
    pub(super) ledger: Vec<(BlockId, u64)>,
    /// Committed blocks not applied to the ledger yet (their batches still missing): in
    /// memory, lost in a crash, found again from the blocks at start.
    pub(super) unapplied: Vec<CommittedBlock>,
    pub(super) view: DurableView,
    pub(super) records: Vec<EpochChangeRecord>,
}

impl StoredBlocks for Store {
    type Error = std::convert::Infallible;
    fn is_applied(&self, id: &BlockId) -> Result<bool, Self::Error> {
        Ok(self.ledger.iter().any(|(l, _)| l == id))
    }
    fn block(&self, id: &BlockId) -> Result<Option<Block>, Self::Error> {
        Ok(self.blocks.get(id).cloned())
    }
}

pub(super) struct Host {
    pub(super) core: Option<Core>,
    pub(super) seed: u64,
    pub(super) address: Address,
    pub(super) inc: u64,
    pub(super) timer_gen: u64,
    pub(super) store: Store,
    pub(super) crash_pending: bool,
    pub(super) up: bool,
    pub(super) byz: Option<Byzantine>,
    pub(super) twin: bool,
    /// Rounds of the epochs it left, so progress is monotone across epochs.
    pub(super) round_base: u64,
    pub(super) seen_epoch: u64,
    pub(super) last_round: u64,
    /// Goes silent for good when an epoch change removes it.
    pub(super) silent_on_removal: bool,
    /// Until then (ms) committed blocks wait to be applied to the ledger, as when their batches
    /// cannot be fetched.
    pub(super) ledger_lag_until: u64,
    pub(super) kill_now: bool,
    pub(super) dead: bool,
}

impl Sim {
    pub(super) fn boot(&mut self, i: usize) {
        if self.hosts[i].dead {
            return;
        }
        let base = EpochContext::new(
            0,
            self.genesis,
            self.set.clone(),
            self.domain.clone(),
            self.cfg.scheme,
        );
        if self.cfg.scenario == Scenario::Mixed && self.rng.gen_bool(0.3) {
            // The node's ledger falls behind what it commits, across epoch changes at times.
            self.hosts[i].ledger_lag_until = self.now + self.rng.gen_range(2_000..40_000);
        }
        let h = &mut self.hosts[i];
        let ledger = Ledger {
            height: h.store.ledger.len() as u64,
            tip: h.store.ledger.last().map(|&(id, _)| id),
        };
        let restored = match restore(base, &h.store.records, ledger, &h.store) {
            Ok(r) => r,
            Err(e) => {
                self.checker
                    .violations
                    .push(format!("node {i}: cannot restore its epoch: {e}"));
                return;
            }
        };
        let ctx = restored.ctx;
        let root = restored.root;
        h.store.unapplied = restored.unapplied;
        let root_round = root.map_or(0, |r| r.round);
        let mut blocks: Vec<Block> = h
            .store
            .blocks
            .values()
            .filter(|b| b.round() > root_round)
            .cloned()
            .collect();
        blocks.sort_by_key(|b| (b.round(), b.id()));
        let durable = DurableState {
            safety: h.store.safety.clone(),
            root,
            blocks,
            high_qc: h.store.high_qc.clone(),
            high_tc: h.store.high_tc.clone(),
        };
        let signer = testkit::signer(self.cfg.scheme, h.seed);
        h.inc += 1;
        h.up = true;
        h.crash_pending = false;
        match Core::new(self.config.clone(), ctx, signer, durable) {
            Ok(core) => h.core = Some(core),
            Err(e) => {
                self.checker
                    .violations
                    .push(format!("node {i}: core refused to start: {e}"));
                return;
            }
        }
        self.apply_ledger(i);
        let now = self.now;
        self.handle(i, Event::Start { now_ms: now });
    }

    /// Applies node `i`'s committed blocks to its ledger unless its ledger lags now.
    pub(super) fn apply_ledger(&mut self, i: usize) {
        if self.now >= self.hosts[i].ledger_lag_until {
            let s = &mut self.hosts[i].store;
            let applied = std::mem::take(&mut s.unapplied);
            s.ledger
                .extend(applied.iter().map(|c| (c.block.id(), c.block.round())));
        }
    }

    pub(super) fn crash(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        h.store.unapplied.clear();
        h.core = None;
        h.up = false;
        h.inc += 1;
        h.crash_pending = false;
    }

    /// Feeds `event` to node `i` and applies its actions in the node's order ([`Pump`]): an
    /// answer the host gives at once is handled after the rest of the list.
    pub(super) fn handle(&mut self, i: usize, event: Event) {
        let mut pump = Pump::new(event);
        let mut crash_after = false;
        while let Some(step) = pump.next_step() {
            match step {
                Step::Handle(event) => {
                    let Some((actions, crash)) = self.core_step(i, event) else {
                        return;
                    };
                    crash_after |= crash;
                    pump.push_actions(actions);
                }
                Step::Apply(a) => {
                    if let Some(answer) = self.apply(i, a) {
                        pump.answer(answer);
                    }
                    if self.hosts[i].kill_now {
                        // Silent for good: the rest of its actions never happen.
                        self.crash(i);
                        self.hosts[i].dead = true;
                        return;
                    }
                }
                Step::EndOfActions => {
                    if crash_after {
                        self.crash(i);
                        return;
                    }
                }
            }
        }
    }

    /// One event into node `i`'s core: its actions (cut short at random when a crash is due,
    /// with `true`), or `None` when the node is down.
    pub(super) fn core_step(&mut self, i: usize, event: Event) -> Option<(Vec<Action>, bool)> {
        // No honest node accepts a message of its epoch signed by a member that an epoch change
        // removed: such a message may only be discarded.
        let removed_signer = match (&event, self.hosts[i].core.as_ref()) {
            (Event::Message { message, .. }, Some(core)) if self.honest(i) => {
                let signer = match message {
                    Message::Proposal(p) => Some(p.block.proposer()),
                    Message::Vote(v) => Some(v.signer),
                    Message::Timeout(t) => Some(t.signer),
                    Message::TimeoutCert(_) => None,
                };
                let e = core.epoch();
                signer.filter(|s| {
                    message.epoch_round().0 == e
                        && core.context().set().index_of(s).is_none()
                        && self.checker.was_member_before(s, e)
                })
            }
            _ => None,
        };
        let core = self.hosts[i].core.as_mut()?;
        let trace_ev = if self.trace {
            format!("{event:?}")
        } else {
            String::new()
        };
        let mut actions = core.handle(event);
        if self.trace {
            let ev: String = trace_ev.chars().take(300).collect();
            eprintln!("t={} node {i} round {} <- {ev}", self.now, core.round());
            for a in &actions {
                let s: String = format!("{a:?}").chars().take(300).collect();
                eprintln!("    -> {s}");
            }
        }
        let (epoch, round) = (core.epoch(), core.round());
        if let Some(s) = removed_signer
            && let Some(a) = actions.iter().find(|a| !matches!(a, Action::Discarded(_)))
        {
            self.checker.violations.push(format!(
                "node {i}: accepted a message of removed member {s} in epoch {epoch}: {:.200}",
                format!("{a:?}")
            ));
        }
        {
            let h = &mut self.hosts[i];
            if epoch > h.seen_epoch {
                h.round_base += h.last_round;
                h.seen_epoch = epoch;
            }
            h.last_round = round;
        }
        let crash_after = self.hosts[i].crash_pending;
        if crash_after {
            let k = self.rng.gen_range(0..=actions.len());
            actions.truncate(k);
        }
        Some((actions, crash_after))
    }

    pub(super) fn send(&mut self, from: usize, to: usize, msg: Message) {
        if from == to {
            return;
        }
        match self.net.fate(&mut self.rng, from, to) {
            Fate::Deliver(d) => self.push(d, Ev::Deliver { to, from, msg }),
            Fate::Drop => {}
            Fate::Hold => {
                if self.held.len() < 100_000 {
                    self.held.push((from, to, msg));
                }
            }
        }
    }

    /// Applies one action of node `i`; returns the answer to a request when this host answers
    /// at once ([`HostMode::Immediate`]).
    pub(super) fn apply(&mut self, i: usize, a: Action) -> Option<Event> {
        match a {
            Action::PersistBlock(b) => {
                let s = &mut self.hosts[i].store;
                s.view.qc_round = s.view.qc_round.max(b.qc().round);
                s.blocks.insert(b.id(), b);
            }
            Action::PersistCertificates { high_qc, high_tc } => {
                let s = &mut self.hosts[i].store;
                s.view.qc_round = s.view.qc_round.max(high_qc.round);
                s.view.tc_round = s.view.tc_round.max(high_tc.as_ref().map_or(0, |t| t.round));
                s.high_qc = Some(high_qc);
                s.high_tc = high_tc;
            }
            Action::PersistSafety(st) => {
                if self.honest(i) {
                    self.checker
                        .on_persist_safety(i, &st, &self.hosts[i].store.safety);
                }
                let s = &mut self.hosts[i].store;
                s.view.last_voted_round = st.last_voted_round;
                s.view.highest_timeout_round = st.highest_timeout_round;
                s.view.last_proposal_round = st.last_proposal.as_ref().map_or(0, |p| p.round());
                s.safety = st;
            }
            Action::Broadcast(message) => {
                let all = (0..self.hosts.len()).filter(|&j| j != i).collect();
                self.send_out(i, all, message);
            }
            Action::SetTimer { round, duration_ms } => {
                let h = &mut self.hosts[i];
                h.timer_gen += 1;
                let (inc, gen_) = (h.inc, h.timer_gen);
                self.push(
                    duration_ms,
                    Ev::Timer {
                        node: i,
                        inc,
                        gen_,
                        round,
                    },
                );
            }
            Action::RequestPayload { round, max_batches } => {
                let k = self.rng.gen_range(0..=3usize).min(max_batches);
                let batches = (0..k)
                    .map(|_| BatchDigest(self.rng.r#gen::<[u8; 32]>()))
                    .collect();
                return self.answer_request(i, 1, Event::PayloadReady { round, batches });
            }
            Action::FetchBatches { block_id, .. } => {
                let d = self.rng.gen_range(0..20);
                return self.answer_request(i, d, Event::BatchesAvailable { block_id });
            }
            Action::FetchBlocks {
                block_id,
                stop_at_round,
                max_blocks,
                from,
            } => {
                self.serve_fetch(i, block_id, stop_at_round, max_blocks, from);
            }
            Action::Commit(c) => {
                if self.honest(i) {
                    self.checker.on_commit(i, &c);
                }
                let s = &mut self.hosts[i].store;
                for cb in c.blocks {
                    if cb.height == (s.ledger.len() + s.unapplied.len()) as u64 + 1 {
                        s.unapplied.push(cb);
                    }
                }
                self.apply_ledger(i);
                self.last_progress = (self.now, self.last_progress.1);
            }
            Action::Evidence(e) => {
                let kind = match e.kind {
                    crate::evidence::EquivocationKind::Vote => 1u8,
                    crate::evidence::EquivocationKind::Proposal => 2u8,
                };
                self.evidence_made
                    .insert((i, kind, e.signer, (e.epoch << 40) | e.round));
                self.checker.on_evidence(i, &e);
            }
            Action::Discarded(_) => {}
            Action::ReadChainSet { number, hash } => {
                let members = self.chain.as_ref().and_then(|c| {
                    (number <= c.head(self.now) && c.hash(number) == hash)
                        .then(|| c.set_at(number).to_vec())
                });
                let d = self.rng.gen_range(1..30);
                let answer = Event::ChainSet {
                    number,
                    hash,
                    members,
                };
                return self.answer_request(i, d, answer);
            }
            Action::PersistEpochChange(r) => {
                let set = self.hosts[i]
                    .core
                    .as_ref()
                    .filter(|c| c.epoch() == r.next_epoch())
                    .map_or_else(
                        || r.members().to_vec(),
                        |c| c.context().set().member_infos(),
                    );
                if self.honest(i) {
                    self.checker.on_epoch_change(i, &r, &set);
                }
                // Silent only if the ending epoch can do without it: its power plus the Byzantine
                // power at most P − Q of that epoch's set (flickers may have changed powers since
                // the plan was drawn).
                let me = self.hosts[i].address;
                let byz: Vec<Address> = self
                    .hosts
                    .iter()
                    .filter(|h| h.byz.is_some())
                    .map(|h| h.address)
                    .collect();
                let was_member = self.checker.epoch_members(r.epoch).is_some_and(|m| {
                    let p: u64 = m.iter().map(|x| x.power).sum();
                    let f: u64 = m
                        .iter()
                        .filter(|x| x.address == me || byz.contains(&x.address))
                        .map(|x| x.power)
                        .sum();
                    m.iter().any(|x| x.address == me) && f <= p - (2 * p / 3 + 1)
                });
                let h = &mut self.hosts[i];
                if h.store.records.last().is_none_or(|x| x.epoch < r.epoch) {
                    h.store.records.push(r.clone());
                }
                if h.silent_on_removal
                    && was_member
                    && !r.members().iter().any(|m| m.address == h.address)
                {
                    h.kill_now = true;
                }
            }
            Action::BroadcastEpochChange(r) => {
                for j in 0..self.hosts.len() {
                    if j != i {
                        self.send_records(i, j, vec![r.clone()]);
                    }
                }
            }
            Action::SendEpochChanges { to, since_epoch } => {
                let recs: Vec<EpochChangeRecord> = self.hosts[i]
                    .store
                    .records
                    .iter()
                    .filter(|r| r.epoch >= since_epoch)
                    .cloned()
                    .collect();
                if !recs.is_empty()
                    && let Some(js) = self.by_address.get(&to).cloned()
                {
                    for j in js {
                        if j != i {
                            self.send_records(i, j, recs.clone());
                        }
                    }
                }
            }
            Action::FetchEpochChanges { since_epoch, from } => {
                let hinted = from
                    .and_then(|a| self.by_address.get(&a).and_then(|v| v.first().copied()))
                    .filter(|&j| j != i && self.hosts[j].up && self.net.connected(i, j));
                let peer = hinted.or_else(|| {
                    let c: Vec<usize> = (0..self.hosts.len())
                        .filter(|&j| j != i && self.hosts[j].up && self.net.connected(i, j))
                        .collect();
                    (!c.is_empty()).then(|| c[self.rng.gen_range(0..c.len())])
                });
                if let Some(j) = peer {
                    let recs: Vec<EpochChangeRecord> = self.hosts[j]
                        .store
                        .records
                        .iter()
                        .filter(|r| r.epoch >= since_epoch)
                        .cloned()
                        .collect();
                    if !recs.is_empty() {
                        let d = self.net.delay(&mut self.rng) + self.net.delay(&mut self.rng);
                        let inc = self.hosts[i].inc;
                        let from = Some(self.hosts[j].address);
                        self.push(
                            d,
                            Ev::Host {
                                node: i,
                                inc,
                                event: Event::EpochChanges {
                                    from,
                                    records: recs,
                                },
                            },
                        );
                    }
                }
            }
        }
        None
    }

    /// Answers a request of node `i` now ([`HostMode::Immediate`]) or `delay` ms later.
    pub(super) fn answer_request(&mut self, i: usize, delay: u64, event: Event) -> Option<Event> {
        if self.cfg.host == HostMode::Immediate {
            return Some(event);
        }
        let inc = self.hosts[i].inc;
        self.push(
            delay,
            Ev::Host {
                node: i,
                inc,
                event,
            },
        );
        None
    }

    pub(super) fn send_records(&mut self, from: usize, to: usize, records: Vec<EpochChangeRecord>) {
        match self.net.fate(&mut self.rng, from, to) {
            Fate::Deliver(d) => self.push(d, Ev::Records { to, from, records }),
            Fate::Drop | Fate::Hold => {}
        }
    }

    pub(super) fn send_out(&mut self, i: usize, targets: Vec<usize>, message: Message) {
        if let Message::Proposal(p) = &message {
            self.checker.observe_proposal(p);
        }
        if let Some(mut b) = self.hosts[i].byz.take() {
            if b.stale_reconfigure {
                b.bad_reconfigure = self.bad_reconfigure(i);
            }
            if let Some(core) = self.hosts[i].core.as_ref() {
                b.set = Some(core.context().set().clone());
            }
            let pairs = b.tamper(&mut self.rng, &self.domain, &targets, message);
            self.hosts[i].byz = Some(b);
            for (j, m) in pairs {
                if let Message::Proposal(p) = &m {
                    self.checker.observe_proposal(p);
                }
                self.send(i, j, m);
            }
            return;
        }
        if self.honest(i) {
            self.check_send(i, &message);
        }
        for j in targets {
            self.send(i, j, message.clone());
        }
    }

    pub(super) fn check_send(&mut self, i: usize, m: &Message) {
        let h = &self.hosts[i];
        let blocks = &h.store.blocks;
        let has = |id: &BlockId| blocks.contains_key(id);
        self.checker.on_send(i, h.address, m, &h.store.view, &has);
    }

    pub(super) fn serve_fetch(
        &mut self,
        i: usize,
        block_id: BlockId,
        stop_at_round: u64,
        max_blocks: usize,
        from: Option<Address>,
    ) {
        let ok = |s: &Sim, j: usize| {
            j != i
                && s.hosts[j].up
                && s.net.connected(i, j)
                && s.hosts[j].store.blocks.contains_key(&block_id)
        };
        let hinted = from
            .and_then(|a| self.by_address.get(&a).and_then(|v| v.first().copied()))
            .filter(|&j| ok(self, j));
        let peer = match hinted {
            Some(j) => j,
            None => {
                let c: Vec<usize> = (0..self.hosts.len()).filter(|&j| ok(self, j)).collect();
                if c.is_empty() {
                    return;
                }
                c[self.rng.gen_range(0..c.len())]
            }
        };
        let store = &self.hosts[peer].store.blocks;
        let mut out = Vec::new();
        let mut cur = block_id;
        while let Some(b) = store.get(&cur) {
            if b.round() <= stop_at_round || out.len() >= max_blocks {
                break;
            }
            cur = b.parent_id();
            out.push(b.clone());
        }
        let from = Some(self.hosts[peer].address);
        let d = self.net.delay(&mut self.rng) + self.net.delay(&mut self.rng);
        let inc = self.hosts[i].inc;
        self.push(
            d,
            Ev::Host {
                node: i,
                inc,
                event: Event::BlocksFetched { from, blocks: out },
            },
        );
    }

    /// Records what an honest node receives, to know which equivocations it saw (and so must
    /// report): both messages validly signed and within the window the core checks.
    pub(super) fn observe_equivocation(&mut self, to: usize, m: &Message) {
        let Some(core) = self.hosts[to].core.as_ref() else {
            return;
        };
        let r = core.round();
        let ctx = core.context();
        let e = ctx.epoch();
        let key = match m {
            Message::Vote(v)
                if v.epoch == e
                    && v.round + 1 >= r
                    && v.round <= r + self.config.round_window
                    && ctx.verify_vote(v).is_ok() =>
            {
                ((to, 1u8, v.signer, (e << 40) | v.round), v.block_id)
            }
            Message::Proposal(p)
                if p.block.epoch() == e
                    && p.round() + 1 >= r
                    && p.round() <= r + self.config.round_window
                    && ctx.verify_proposal(p).is_ok() =>
            {
                (
                    (to, 2u8, p.block.proposer(), (e << 40) | p.round()),
                    p.block.id(),
                )
            }
            _ => return,
        };
        match self.evidence_seen.get(&key.0) {
            None => {
                self.evidence_seen.insert(key.0, key.1);
            }
            Some(first) if *first != key.1 => {
                self.evidence_expected.insert(key.0);
            }
            Some(_) => {}
        }
    }
}
