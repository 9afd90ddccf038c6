//! A deterministic, seeded simulator of a cluster of cores: a network with latency
//! distributions, drops and partitions of any shape; crash and restart (memory lost, everything
//! the node made durable kept, including its block store; a crash may cut a node's action list
//! anywhere); a trivial host (mempool, batch availability, block fetch from peers' stores); and a
//! [`checker::Checker`] of safety. Liveness: every node commits within 10 + 2n rounds of the start
//! and of each heal or restart, and keeps committing until the end (a liveness failure otherwise).
//!
//! Disturbances are scheduled adaptively: the next one starts only once every node has committed
//! after the previous one, so each liveness window is measured on its own.

pub mod byzantine;
pub mod checker;
pub mod network;

use crate::block_tree::Root;
use crate::core::{Action, Config, Core, DurableState, Event};
use crate::crypto::{PreparedKey, Scheme, Signer};
use crate::safety::SafetyState;
use crate::testkit;
use crate::types::{Address, BatchDigest, Block, BlockId, Message, QuorumCert, TimeoutCert};
use crate::validators::ValidatorSet;
use crate::verify::EpochContext;
use byzantine::Byzantine;
use checker::{Checker, DurableView};
use network::{Fate, NetParams, Network};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, VecDeque};

/// The scenarios this simulator runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// No faults beyond latency variation.
    Honest,
    /// Partitions of random shapes (some without any quorum), healed, plus drops.
    Partition,
    /// Crash-restarts (at most P − Q power down at once), plus drops.
    Crash,
    /// Byzantine nodes of total power at most P − Q (see [`byzantine`]); no drops.
    Byzantine,
    /// Twins: a second instance of one validator (power at most P − Q) with the same key and its
    /// own honest core and store, and partitions that put the twins on different sides.
    Twins,
}

impl Scenario {
    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Honest => "honest",
            Scenario::Partition => "partition",
            Scenario::Crash => "crash",
            Scenario::Byzantine => "byzantine",
            Scenario::Twins => "twins",
        }
    }
}

/// One simulation.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed: everything random derives from it.
    pub seed: u64,
    /// Number of validators.
    pub nodes: usize,
    /// Powers; `None` draws powers in 1..=3 from the seed.
    pub powers: Option<Vec<u64>>,
    /// Scenario.
    pub scenario: Scenario,
    /// The run ends once all disturbances are done and the highest round reaches this.
    pub rounds: u64,
    /// Signature scheme.
    pub scheme: Scheme,
}

/// The result of one simulation.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// Safety violations (empty if none).
    pub safety: Vec<String>,
    /// Liveness failures (empty if none).
    pub liveness: Vec<String>,
    /// Blocks committed (the chain's height).
    pub commits: u64,
    /// Highest round reached.
    pub max_round: u64,
    /// Events processed.
    pub events: u64,
    /// Simulated time (ms).
    pub time_ms: u64,
    /// Valid evidence records produced by honest nodes.
    pub evidence: u64,
    /// The powers used.
    pub powers: Vec<u64>,
}

#[derive(Debug)]
enum Ev {
    Deliver {
        to: usize,
        from: usize,
        msg: Message,
    },
    Timer {
        node: usize,
        inc: u64,
        gen_: u64,
        round: u64,
    },
    Host {
        node: usize,
        inc: u64,
        event: Event,
    },
    Partition {
        groups: Vec<usize>,
        duration: u64,
    },
    Heal,
    Crash {
        node: usize,
    },
    Restart {
        node: usize,
    },
    Attack {
        node: usize,
    },
}

struct Queued {
    time: u64,
    seq: u64,
    ev: Ev,
}
impl PartialEq for Queued {
    fn eq(&self, o: &Self) -> bool {
        (self.time, self.seq) == (o.time, o.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.time, self.seq).cmp(&(o.time, o.seq))
    }
}

#[derive(Default)]
struct Store {
    safety: SafetyState,
    blocks: HashMap<BlockId, Block>,
    high_qc: Option<QuorumCert>,
    high_tc: Option<TimeoutCert>,
    ledger: Vec<(BlockId, u64)>,
    view: DurableView,
}

struct Host {
    core: Option<Core>,
    seed: u64,
    address: Address,
    inc: u64,
    timer_gen: u64,
    store: Store,
    crash_pending: bool,
    up: bool,
    byz: Option<Byzantine>,
    twin: bool,
}

#[derive(Clone, Debug)]
enum Disturbance {
    Partition { groups: Vec<usize>, duration: u64 },
    Crash { node: usize, down_for: u64 },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Scheduled,
    Partitioned,
    CrashedWaiting { node: usize, down_for: u64 },
}

struct Window {
    label: &'static str,
    start_round: u64,
    heights: BTreeMap<usize, u64>,
}

struct Sim {
    cfg: SimConfig,
    rng: ChaCha8Rng,
    net: Network,
    queue: BinaryHeap<Reverse<Queued>>,
    seq: u64,
    now: u64,
    hosts: Vec<Host>,
    by_address: HashMap<Address, Vec<usize>>,
    set: ValidatorSet,
    domain: crate::domain::Domain,
    genesis: BlockId,
    config: Config,
    checker: Checker,
    held: Vec<(usize, usize, Message)>,
    plan: VecDeque<Disturbance>,
    phase: Phase,
    window: Option<Window>,
    last_progress: (u64, u64),
    liveness: Vec<String>,
    events: u64,
    done: bool,
    trace: bool,
    epoch_ctx: EpochContext,
    evidence_seen: HashMap<(usize, u8, Address, u64), BlockId>,
    evidence_expected: std::collections::BTreeSet<(usize, u8, Address, u64)>,
    evidence_made: std::collections::BTreeSet<(usize, u8, Address, u64)>,
}

const MAX_EVENTS: u64 = 3_000_000;
const MAX_TIME_MS: u64 = 4 * 3_600_000;

/// Runs one simulation.
pub fn run(cfg: &SimConfig) -> Outcome {
    let mut sim = Sim::new(cfg.clone());
    sim.run();
    sim.outcome()
}

impl Sim {
    fn new(cfg: SimConfig) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ 0x5eed_0000_c0de);
        let n = cfg.nodes.max(1);
        let powers = cfg
            .powers
            .clone()
            .unwrap_or_else(|| (0..n).map(|_| rng.gen_range(1..=3)).collect());
        let seeds: Vec<u64> = (0..n as u64)
            .map(|i| cfg.seed.wrapping_mul(1000) + i)
            .collect();
        let signers: Vec<Box<dyn Signer>> = seeds
            .iter()
            .map(|&s| testkit::signer(cfg.scheme, s))
            .collect();
        let set = ValidatorSet::new(
            signers
                .iter()
                .zip(&powers)
                .map(|(s, &p)| (s.public_key(), p))
                .collect(),
        )
        .expect("simulated set is valid");
        let mut genesis_id = [0u8; 32];
        genesis_id[..8].copy_from_slice(&cfg.seed.to_be_bytes());
        let domain = crate::domain::Domain::new(31337, Address([0x42; 20]), genesis_id);
        let genesis = domain.genesis_block_id(0, &[0x01; 32], &set.hash());
        let lossy = matches!(cfg.scenario, Scenario::Partition | Scenario::Crash);
        let hosts_n = n + usize::from(cfg.scenario == Scenario::Twins);
        let net = Network::new(hosts_n, NetParams::draw(&mut rng, lossy));
        let config = Config::default();
        let members = set
            .members()
            .iter()
            .map(|v| (v.address, v.power, PreparedKey::new(*v.key.public())))
            .collect();
        // Twins: one more host with the key of a member of power at most P − Q.
        let mut seeds = seeds;
        let mut signers = signers;
        let mut twin_of = None;
        if cfg.scenario == Scenario::Twins {
            let p: u64 = powers.iter().sum();
            let budget = p - (2 * p / 3 + 1);
            let candidates: Vec<usize> = (0..n).filter(|&i| powers[i] <= budget).collect();
            if !candidates.is_empty() {
                let k = candidates[rng.gen_range(0..candidates.len())];
                seeds.push(seeds[k]);
                signers.push(testkit::signer(cfg.scheme, seeds[k]));
                twin_of = Some(k);
            }
        }
        let checker = Checker::new(cfg.scheme, domain.clone(), 0, genesis, members, seeds.len());
        let hosts: Vec<Host> = seeds
            .iter()
            .zip(&signers)
            .enumerate()
            .map(|(i, (&seed, s))| Host {
                twin: twin_of.is_some_and(|k| i == k || i == n),
                core: None,
                seed,
                address: s.address(),
                inc: 0,
                timer_gen: 0,
                store: Store::default(),
                crash_pending: false,
                up: true,
                byz: None,
            })
            .collect();
        let mut by_address: HashMap<Address, Vec<usize>> = HashMap::new();
        for (i, h) in hosts.iter().enumerate() {
            by_address.entry(h.address).or_default().push(i);
        }
        let set_for_ctx = set.clone();
        let domain_for_ctx = domain.clone();
        let scheme_for_ctx = cfg.scheme;
        let mut sim = Self {
            plan: VecDeque::new(),
            cfg,
            rng,
            net,
            queue: BinaryHeap::new(),
            seq: 0,
            now: 0,
            hosts,
            by_address,
            set,
            domain,
            genesis,
            config,
            checker,
            held: Vec::new(),
            phase: Phase::Idle,
            window: None,
            last_progress: (0, 0),
            liveness: Vec::new(),
            events: 0,
            done: false,
            trace: std::env::var_os("SIM_TRACE").is_some(),
            epoch_ctx: EpochContext::new(0, genesis, set_for_ctx, domain_for_ctx, scheme_for_ctx),
            evidence_seen: HashMap::new(),
            evidence_expected: std::collections::BTreeSet::new(),
            evidence_made: std::collections::BTreeSet::new(),
        };
        sim.plan = sim.make_plan(&powers);
        if sim.cfg.scenario == Scenario::Byzantine {
            sim.make_byzantine(&powers);
        }
        sim
    }

    fn make_plan(&mut self, powers: &[u64]) -> VecDeque<Disturbance> {
        let n = powers.len();
        let mut plan = VecDeque::new();
        let k = self.rng.gen_range(1..=3);
        match self.cfg.scenario {
            Scenario::Honest | Scenario::Byzantine => {}
            Scenario::Twins => {
                // Partitions that put the twins on different sides (set after the hosts exist).
                for _ in 0..k + 1 {
                    let groups: Vec<usize> = (0..n + 1).map(|_| self.rng.gen_range(0..2)).collect();
                    let duration = self.rng.gen_range(500..6_000);
                    plan.push_back(Disturbance::Partition { groups, duration });
                }
            }
            Scenario::Partition => {
                for _ in 0..k {
                    let parts = self.rng.gen_range(2..=3.min(n.max(2)));
                    let groups: Vec<usize> = if self.rng.gen_bool(0.3) {
                        // Isolate one node.
                        let x = self.rng.gen_range(0..n);
                        (0..n).map(|i| usize::from(i == x)).collect()
                    } else {
                        (0..n).map(|_| self.rng.gen_range(0..parts)).collect()
                    };
                    let duration = self.rng.gen_range(200..10_000);
                    plan.push_back(Disturbance::Partition { groups, duration });
                }
            }
            Scenario::Crash => {
                let p: u64 = powers.iter().sum();
                let q = 2 * p / 3 + 1;
                let crashable: Vec<usize> = (0..n).filter(|&i| powers[i] <= p - q).collect();
                if !crashable.is_empty() {
                    for _ in 0..k {
                        let node = crashable[self.rng.gen_range(0..crashable.len())];
                        let down_for = self.rng.gen_range(0..8_000);
                        plan.push_back(Disturbance::Crash { node, down_for });
                    }
                }
            }
        }
        plan
    }

    /// Picks Byzantine nodes of total power at most P − Q.
    fn make_byzantine(&mut self, powers: &[u64]) {
        let p: u64 = powers.iter().sum();
        let budget = p - (2 * p / 3 + 1);
        let mut order: Vec<usize> = (0..powers.len()).collect();
        for k in (1..order.len()).rev() {
            order.swap(k, self.rng.gen_range(0..=k));
        }
        let mut used = 0;
        for i in order {
            if used + powers[i] <= budget {
                used += powers[i];
                let signer = testkit::signer(self.cfg.scheme, self.hosts[i].seed);
                let outsider =
                    testkit::signer(self.cfg.scheme, self.cfg.seed ^ 0xbad0_0000 ^ i as u64);
                self.hosts[i].byz = Some(Byzantine::draw(&mut self.rng, signer, outsider));
                let d = self.rng.gen_range(50..500);
                self.push(d, Ev::Attack { node: i });
            }
        }
    }

    fn honest(&self, i: usize) -> bool {
        self.hosts[i].byz.is_none() && !self.hosts[i].twin
    }

    /// Records what an honest node receives, to know which equivocations it saw (and so must
    /// report): both messages validly signed and within the window the core checks.
    fn observe_equivocation(&mut self, to: usize, m: &Message) {
        let Some(core) = self.hosts[to].core.as_ref() else {
            return;
        };
        let r = core.round();
        let me = self.hosts[to].address;
        let key = match m {
            Message::Vote(v)
                if v.epoch == 0
                    && v.round + 1 >= r
                    && v.round <= r + self.config.round_window
                    && self.set.leader(v.round + 1) == me
                    && self.epoch_ctx.verify_vote(v).is_ok() =>
            {
                ((to, 1u8, v.signer, v.round), v.block_id)
            }
            Message::Proposal(p)
                if p.block.epoch() == 0
                    && p.round() + 1 >= r
                    && p.round() <= r + self.config.round_window
                    && self.epoch_ctx.verify_proposal(p).is_ok() =>
            {
                ((to, 2u8, p.block.proposer(), p.round()), p.block.id())
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

    fn push(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            time: self.now + delay,
            seq: self.seq,
            ev,
        }));
    }

    fn boot(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        let root = h.store.ledger.last().map(|&(id, round)| Root {
            id,
            round,
            height: h.store.ledger.len() as u64,
        });
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
        let ctx = EpochContext::new(
            0,
            self.genesis,
            self.set.clone(),
            self.domain.clone(),
            self.cfg.scheme,
        );
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
        let now = self.now;
        self.handle(i, Event::Start { now_ms: now });
    }

    fn crash(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        h.core = None;
        h.up = false;
        h.inc += 1;
        h.crash_pending = false;
    }

    fn handle(&mut self, i: usize, event: Event) {
        let Some(core) = self.hosts[i].core.as_mut() else {
            return;
        };
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
        let crash_after = if self.hosts[i].crash_pending {
            let k = self.rng.gen_range(0..=actions.len());
            actions.truncate(k);
            true
        } else {
            false
        };
        for a in actions {
            self.apply(i, a);
        }
        if crash_after {
            self.crash(i);
        }
    }

    fn send(&mut self, from: usize, to: usize, msg: Message) {
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

    fn apply(&mut self, i: usize, a: Action) {
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
                    self.checker.on_persist_safety(i, &st);
                }
                let s = &mut self.hosts[i].store;
                s.view.last_voted_round = st.last_voted_round;
                s.view.highest_timeout_round = st.highest_timeout_round;
                s.view.last_proposal_round = st.last_proposal.as_ref().map_or(0, |p| p.round());
                s.safety = st;
            }
            Action::SendTo { to, message } => {
                if let Some(js) = self.by_address.get(&to) {
                    let js: Vec<usize> = js.iter().copied().filter(|&j| j != i).collect();
                    self.send_out(i, js, message);
                }
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
                let inc = self.hosts[i].inc;
                self.push(
                    1,
                    Ev::Host {
                        node: i,
                        inc,
                        event: Event::PayloadReady { round, batches },
                    },
                );
            }
            Action::FetchBatches { block_id, .. } => {
                let inc = self.hosts[i].inc;
                let d = self.rng.gen_range(0..20);
                self.push(
                    d,
                    Ev::Host {
                        node: i,
                        inc,
                        event: Event::BatchesAvailable { block_id },
                    },
                );
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
                for cb in &c.blocks {
                    if cb.height == s.ledger.len() as u64 + 1 {
                        s.ledger.push((cb.block.id(), cb.block.round()));
                    }
                }
                self.last_progress = (self.now, self.last_progress.1);
            }
            Action::Evidence(e) => {
                let kind = match e.kind {
                    crate::evidence::EquivocationKind::Vote => 1u8,
                    crate::evidence::EquivocationKind::Proposal => 2u8,
                };
                self.evidence_made.insert((i, kind, e.signer, e.round));
                self.checker.on_evidence(i, &e);
            }
            Action::Discarded(_) => {}
        }
    }

    fn send_out(&mut self, i: usize, targets: Vec<usize>, message: Message) {
        if let Some(b) = self.hosts[i].byz.take() {
            let pairs = b.tamper(&mut self.rng, &self.domain, &targets, message);
            self.hosts[i].byz = Some(b);
            for (j, m) in pairs {
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

    fn check_send(&mut self, i: usize, m: &Message) {
        let h = &self.hosts[i];
        let blocks = &h.store.blocks;
        let has = |id: &BlockId| blocks.contains_key(id);
        self.checker.on_send(i, h.address, m, &h.store.view, &has);
    }

    fn serve_fetch(
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

    fn node_summary(&self) -> String {
        let mut out = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            match &h.core {
                None => out.push(format!("node {i} down")),
                Some(c) => {
                    let st = c.safety_state();
                    out.push(format!(
                        "node {i} round {} high_qc {} root {} lvr {} hto {} height {}",
                        c.round(),
                        c.high_qc().round,
                        c.root().round,
                        st.last_voted_round,
                        st.highest_timeout_round,
                        self.checker.node_height(i)
                    ));
                }
            }
        }
        out.join("; ")
    }

    fn max_round(&self) -> u64 {
        self.hosts
            .iter()
            .filter_map(|h| h.core.as_ref().map(Core::round))
            .max()
            .unwrap_or(0)
    }

    fn open_window(&mut self, label: &'static str) {
        let start_round = self.max_round();
        let heights = (0..self.hosts.len())
            .filter(|&i| self.hosts[i].up && !self.hosts[i].crash_pending && self.honest(i))
            .map(|i| (i, self.checker.node_height(i)))
            .collect();
        self.window = Some(Window {
            label,
            start_round,
            heights,
        });
        self.last_progress = (self.now, start_round);
    }

    /// Liveness bookkeeping and the next disturbance, after every event.
    fn direct(&mut self) {
        let n = self.hosts.len() as u64;
        let max_round = self.max_round();
        if max_round > self.last_progress.1 {
            self.last_progress = (self.now, max_round);
        }
        let summary = if self.window.is_some()
            && self.now > self.last_progress.0 + 30 * self.config.max_timeout_ms
        {
            self.node_summary()
        } else {
            String::new()
        };
        if let Some(w) = &mut self.window {
            let checker = &self.checker;
            w.heights.retain(|&i, h| checker.node_height(i) <= *h);
            if w.heights.is_empty() {
                self.window = None;
            } else if max_round > w.start_round + 10 + 2 * n {
                let lagging: Vec<usize> = w.heights.keys().copied().collect();
                self.liveness.push(format!(
                    "nodes {lagging:?} did not commit within 10 + 2n = {} rounds of the {} at round {} (now round {max_round})",
                    10 + 2 * n,
                    w.label,
                    w.start_round
                ));
                self.done = true;
                return;
            } else if self.now > self.last_progress.0 + 30 * self.config.max_timeout_ms {
                self.liveness.push(format!(
                    "no round progress for {} ms after the {} at round {}; {}",
                    self.now - self.last_progress.0,
                    w.label,
                    w.start_round,
                    summary
                ));
                self.done = true;
                return;
            }
        }
        if self.window.is_some() {
            return;
        }
        match self.phase {
            Phase::Idle => {
                if let Some(d) = self.plan.pop_front() {
                    let gap = self.rng.gen_range(0..1_500);
                    match d {
                        Disturbance::Partition { groups, duration } => {
                            self.push(gap, Ev::Partition { groups, duration })
                        }
                        Disturbance::Crash { node, down_for } => {
                            self.phase = Phase::CrashedWaiting { node, down_for };
                            self.push(gap, Ev::Crash { node });
                            return;
                        }
                    }
                    self.phase = Phase::Scheduled;
                } else if max_round >= self.cfg.rounds {
                    self.done = true;
                } else {
                    self.open_window("steady state");
                }
            }
            Phase::CrashedWaiting { node, down_for } if !self.hosts[node].up => {
                self.push(down_for, Ev::Restart { node });
                self.phase = Phase::Scheduled;
            }
            _ => {}
        }
    }

    fn run(&mut self) {
        for i in 0..self.hosts.len() {
            self.boot(i);
        }
        self.open_window("start");
        while !self.done {
            let Some(Reverse(q)) = self.queue.pop() else {
                self.liveness.push("event queue ran dry".into());
                break;
            };
            self.now = q.time;
            self.events += 1;
            if self.events > MAX_EVENTS || self.now > MAX_TIME_MS {
                self.liveness.push(format!(
                    "budget exceeded: {} events, {} ms simulated",
                    self.events, self.now
                ));
                break;
            }
            match q.ev {
                Ev::Deliver { to, from, msg } => {
                    if let Some(b) = self.hosts[to].byz.as_mut() {
                        b.observe(&msg);
                    } else if matches!(self.cfg.scenario, Scenario::Byzantine | Scenario::Twins)
                        && self.honest(to)
                    {
                        self.observe_equivocation(to, &msg);
                    }
                    if self.hosts[to].up {
                        let from = self.hosts[from].address;
                        self.handle(to, Event::Message { from, message: msg });
                    }
                }
                Ev::Timer {
                    node,
                    inc,
                    gen_,
                    round,
                } => {
                    let h = &self.hosts[node];
                    if h.up && h.inc == inc && h.timer_gen == gen_ {
                        let now = self.now;
                        self.handle(node, Event::TimerFired { round, now_ms: now });
                    }
                }
                Ev::Host { node, inc, event } => {
                    if self.hosts[node].up && self.hosts[node].inc == inc {
                        self.handle(node, event);
                    }
                }
                Ev::Partition {
                    mut groups,
                    duration,
                } => {
                    let twins: Vec<usize> = (0..self.hosts.len())
                        .filter(|&i| self.hosts[i].twin)
                        .collect();
                    if let [a, b] = twins[..] {
                        groups.resize(self.hosts.len(), 0);
                        groups[b] = 1 - groups[a].min(1);
                    }
                    self.net.partition(groups);
                    self.phase = Phase::Partitioned;
                    self.push(duration, Ev::Heal);
                }
                Ev::Heal => {
                    self.net.heal();
                    for (from, to, msg) in std::mem::take(&mut self.held) {
                        let d = self.net.delay(&mut self.rng);
                        self.push(d, Ev::Deliver { to, from, msg });
                    }
                    self.phase = Phase::Idle;
                    self.open_window("heal");
                }
                Ev::Crash { node } => {
                    if self.rng.gen_bool(0.5) {
                        self.crash(node);
                    } else {
                        // Crash in the middle of the node's next action list.
                        self.hosts[node].crash_pending = true;
                    }
                    // No liveness window while a node is down (the bound counts from the start and
                    // from each heal or restart); the stall check still applies.
                    self.window = None;
                }
                Ev::Attack { node } => {
                    let round = self.hosts[node].core.as_ref().map_or(1, Core::round);
                    let gqc = self.epoch_ctx.genesis_qc();
                    if let Some(mut b) = self.hosts[node].byz.take() {
                        let msgs = b.attack(&mut self.rng, &self.domain, round, &gqc);
                        self.hosts[node].byz = Some(b);
                        for m in msgs {
                            let j = self.rng.gen_range(0..self.hosts.len());
                            self.send(node, j, m);
                        }
                    }
                    let d = self.rng.gen_range(100..600);
                    self.push(d, Ev::Attack { node });
                }
                Ev::Restart { node } => {
                    self.boot(node);
                    self.phase = Phase::Idle;
                    self.open_window("restart");
                }
            }
            self.direct();
        }
    }

    fn outcome(&self) -> Outcome {
        let mut safety = self.checker.violations.clone();
        for k in self
            .evidence_expected
            .difference(&self.evidence_made)
            .take(5)
        {
            let kind = if k.1 == 1 { "votes" } else { "proposals" };
            safety.push(format!(
                "node {}: saw two {kind} by {} in round {} but produced no evidence",
                k.0, k.2, k.3
            ));
        }
        Outcome {
            safety,
            liveness: self.liveness.clone(),
            commits: self.checker.height(),
            max_round: self.max_round(),
            events: self.events,
            time_ms: self.now,
            evidence: self.checker.evidence,
            powers: self.set_powers_in_node_order(),
        }
    }

    fn set_powers_in_node_order(&self) -> Vec<u64> {
        self.hosts
            .iter()
            .map(|h| {
                self.set
                    .index_of(&h.address)
                    .and_then(|i| self.set.get(i))
                    .map_or(0, |v| v.power)
            })
            .collect()
    }
}

/// Helper for the CLI and tests: the nodes' powers given or drawn, for messages.
pub fn describe(cfg: &SimConfig) -> String {
    format!(
        "seed={} nodes={} scenario={} rounds={}",
        cfg.seed,
        cfg.nodes,
        cfg.scenario.name(),
        cfg.rounds
    )
}
