//! A deterministic, seeded simulator of a cluster of cores: a network with latency
//! distributions, drops and partitions of any shape; crash and restart (memory lost, everything
//! the node made durable kept, including its block store; a crash may cut a node's action list
//! anywhere); a trivial host (mempool, batch availability, block fetch from peers' stores); and a
//! [`checker::Checker`] of safety. Liveness: every node commits within 10 + 2n rounds of the start
//! and of each heal or restart, and keeps committing until the end (a liveness failure otherwise).
//!
//! `reconfig` and `mixed` add a chain: blocks every 250 ms, a pinned head 2 blocks below, polled
//! by every node's "oracle" every 500 ms (`Event::PinnedHead`), and validator-set changes written
//! to it (power changes, removals, additions of spare nodes that run as observers until they
//! join, and short-lived "flicker" sets that leave stale sets behind on the chain). Each change
//! must become an epoch on every honest node, after which commits must resume.
//!
//! Disturbances are scheduled adaptively: the next one starts only once every node has committed
//! after the previous one, so each liveness window is measured on its own.

pub mod byzantine;
pub mod checker;
mod host;
pub mod network;
mod plan;

use host::{Host, Store};
use plan::{Disturbance, Phase, Window};

use crate::block_tree::CommittedBlock;
use crate::core::{Action, Config, Core, DurableState, Event};
use crate::crypto::{PreparedKey, Scheme, Signer};
use crate::epoch::EpochChangeRecord;
use crate::host::{Pump, Step};
use crate::restore::{Ledger, StoredBlocks, restore};
use crate::safety::SafetyState;
use crate::testkit;
use crate::types::{
    Address, BatchDigest, Block, BlockId, MemberInfo, Message, QuorumCert, Reconfigure, TimeoutCert,
};
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
    /// Epoch changes: power changes, removals (some removed nodes go silent at the change),
    /// additions, several epochs in a row, flicker sets, and Byzantine nodes (power ≤ P − Q in
    /// every epoch) proposing stale or rolled-back Reconfigures and replaying old-epoch QCs.
    Reconfig,
    /// `reconfig` plus partitions, crash-restarts and drops.
    Mixed,
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
            Scenario::Reconfig => "reconfig",
            Scenario::Mixed => "mixed",
        }
    }

    /// Whether the scenario has a chain with validator-set changes.
    pub fn has_epochs(self) -> bool {
        matches!(self, Scenario::Reconfig | Scenario::Mixed)
    }

    /// Whether the scenario has Byzantine nodes.
    pub fn has_byzantine(self) -> bool {
        matches!(
            self,
            Scenario::Byzantine | Scenario::Reconfig | Scenario::Mixed
        )
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
    /// When the host answers the core's requests.
    pub host: HostMode,
}

/// When a simulated host answers the core's requests (payload, batches, chain sets).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostMode {
    /// As later events, after a short simulated delay.
    #[default]
    Deferred,
    /// At once, while the request's action list is being applied, as the node's mempool and
    /// batch store can: the answer is queued behind the rest of that list ([`Pump`]).
    Immediate,
}

impl HostMode {
    /// The CLI name.
    pub fn name(self) -> &'static str {
        match self {
            HostMode::Deferred => "deferred",
            HostMode::Immediate => "immediate",
        }
    }
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
    /// Epochs reached (1 = no epoch change).
    pub epochs: u64,
    /// Epoch changes whose Reconfigure committed only as an ancestor (some node's view).
    pub ancestor_epoch_changes: u64,
    /// Removed members that went silent for good at their epoch change.
    pub silenced: u64,
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
    Poll,
    Records {
        to: usize,
        from: usize,
        records: Vec<EpochChangeRecord>,
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

/// The simulated chain: block numbers from time, a pinned head, and the validator set by block.
struct ChainModel {
    block_ms: u64,
    pin_depth: u64,
    salt: u64,
    /// (first block number, set from there on), ascending.
    changes: Vec<(u64, Vec<MemberInfo>)>,
}

impl ChainModel {
    fn head(&self, now: u64) -> u64 {
        now / self.block_ms
    }
    fn pinned(&self, now: u64) -> u64 {
        self.head(now).saturating_sub(self.pin_depth)
    }
    fn hash(&self, number: u64) -> [u8; 32] {
        let mut b = self.salt.to_be_bytes().to_vec();
        b.extend_from_slice(&number.to_be_bytes());
        crate::domain::keccak256(&b)
    }
    fn set_at(&self, number: u64) -> &[MemberInfo] {
        self.changes
            .iter()
            .rev()
            .find(|(n, _)| *n <= number)
            .map_or(&[], |(_, m)| m.as_slice())
    }
}

/// Chain parameters of the epoch scenarios.
const BLOCK_MS: u64 = 250;
const PIN_DEPTH: u64 = 2;
const POLL_MS: u64 = 500;
const LAG_W: u64 = 16;
const EPOCH_MIN_ROUNDS: u64 = 8;

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
    chain: Option<ChainModel>,
    members0: usize,
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
        // Random drops only without Byzantine nodes: with Byzantine power at P − Q every honest
        // vote counts, and a lost one only costs a timeout (no retransmission in the simulator).
        let lossy = matches!(cfg.scenario, Scenario::Partition | Scenario::Crash);
        let spares = if cfg.scenario.has_epochs() {
            rng.gen_range(1..=2usize)
        } else {
            0
        };
        let hosts_n = n + usize::from(cfg.scenario == Scenario::Twins) + spares;
        let net = Network::new(hosts_n, NetParams::draw(&mut rng, lossy));
        let mut config = Config::default();
        if cfg.scenario.has_epochs() {
            config.reconfig_max_lag_blocks = LAG_W;
            config.reconfig_wait_ms = 400;
            config.epoch_min_rounds = EPOCH_MIN_ROUNDS;
        }
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
        // Spare nodes: observers until a set change adds them.
        for k in 0..spares {
            let seed = cfg.seed.wrapping_mul(1000) + (n + 10 + k) as u64;
            seeds.push(seed);
            signers.push(testkit::signer(cfg.scheme, seed));
        }
        let mut checker = Checker::new(cfg.scheme, domain.clone(), genesis, members, seeds.len());
        let chain = cfg.scenario.has_epochs().then(|| ChainModel {
            block_ms: BLOCK_MS,
            pin_depth: PIN_DEPTH,
            salt: cfg.seed,
            changes: vec![(0, set.member_infos())],
        });
        if chain.is_some() {
            checker.set_head(0, LAG_W);
        }
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
                round_base: 0,
                seen_epoch: 0,
                last_round: 0,
                silent_on_removal: false,
                ledger_lag_until: 0,
                kill_now: false,
                dead: false,
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
            chain,
            members0: n,
        };
        if sim.cfg.scenario.has_byzantine() {
            sim.make_byzantine(&powers);
        }
        sim.plan = sim.make_plan(&powers);
        if sim.chain.is_some() {
            sim.push(POLL_MS, Ev::Poll);
        }
        sim
    }

    fn honest(&self, i: usize) -> bool {
        self.hosts[i].byz.is_none() && !self.hosts[i].twin
    }

    fn push(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            time: self.now + delay,
            seq: self.seq,
            ev,
        }));
    }

    fn node_summary(&self) -> String {
        let mut out = Vec::new();
        for (i, h) in self.hosts.iter().enumerate() {
            match &h.core {
                None => out.push(format!("node {i} down")),
                Some(c) => {
                    let st = c.safety_state();
                    out.push(format!(
                        "node {i} epoch {} round {} high_qc {} root {} lvr {} hto {} height {}",
                        c.epoch(),
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

    /// The highest round reached, counted across epochs (each node's rounds of the epochs it
    /// left plus its current round), so it only grows.
    fn max_round(&self) -> u64 {
        self.hosts
            .iter()
            .filter_map(|h| h.core.as_ref().map(|c| h.round_base + c.round()))
            .max()
            .unwrap_or(0)
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
                Ev::Poll => {
                    if let Some(c) = self.chain.as_ref() {
                        let number = c.pinned(self.now);
                        let hash = c.hash(number);
                        let members = c.set_at(number).to_vec();
                        self.checker.set_head(number, LAG_W);
                        let now = self.now;
                        for i in 0..self.hosts.len() {
                            if self.hosts[i].up {
                                self.handle(
                                    i,
                                    Event::PinnedHead {
                                        number,
                                        hash,
                                        members: members.clone(),
                                        now_ms: now,
                                    },
                                );
                            }
                        }
                    }
                    self.push(POLL_MS, Ev::Poll);
                }
                Ev::Records { to, from, records } => {
                    if self.hosts[to].up {
                        let from = Some(self.hosts[from].address);
                        self.handle(to, Event::EpochChanges { from, records });
                    }
                }
                Ev::Deliver { to, from, msg } => {
                    if let Some(b) = self.hosts[to].byz.as_mut() {
                        b.observe(&msg);
                    } else if matches!(
                        self.cfg.scenario,
                        Scenario::Byzantine
                            | Scenario::Twins
                            | Scenario::Reconfig
                            | Scenario::Mixed
                    ) && self.honest(to)
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
                    let (epoch, gqc) = match self.hosts[node].core.as_ref() {
                        Some(c) => (c.epoch(), c.context().genesis_qc()),
                        None => (0, self.epoch_ctx.genesis_qc()),
                    };
                    if self.hosts[node].dead {
                        continue;
                    }
                    if let Some(mut b) = self.hosts[node].byz.take() {
                        let msgs = b.attack(&mut self.rng, &self.domain, epoch, round, &gqc);
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
                    if self.hosts[node].dead {
                        self.phase = Phase::Idle;
                        continue;
                    }
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
                "node {}: saw two {kind} by {} in epoch {} round {} but produced no evidence",
                k.0,
                k.2,
                k.3 >> 40,
                k.3 & ((1 << 40) - 1)
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
            epochs: self.checker.epochs(),
            ancestor_epoch_changes: self.checker.ancestor_epoch_changes,
            silenced: self.hosts.iter().filter(|h| h.dead).count() as u64,
        }
    }

    fn set_powers_in_node_order(&self) -> Vec<u64> {
        self.hosts
            .iter()
            .take(self.members0)
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
