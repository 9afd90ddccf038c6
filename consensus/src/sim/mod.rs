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
pub mod network;

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

#[derive(Default)]
struct Store {
    safety: SafetyState,
    blocks: HashMap<BlockId, Block>,
    high_qc: Option<QuorumCert>,
    high_tc: Option<TimeoutCert>,
    ledger: Vec<(BlockId, u64)>,
    /// Committed blocks not applied to the ledger yet (their batches still missing): in
    /// memory, lost in a crash, found again from the blocks at start.
    unapplied: Vec<CommittedBlock>,
    view: DurableView,
    records: Vec<EpochChangeRecord>,
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
    /// Rounds of the epochs it left, so progress is monotone across epochs.
    round_base: u64,
    seen_epoch: u64,
    last_round: u64,
    /// Goes silent for good when an epoch change removes it.
    silent_on_removal: bool,
    /// Until then (ms) committed blocks wait to be applied to the ledger, as when their batches
    /// cannot be fetched.
    ledger_lag_until: u64,
    kill_now: bool,
    dead: bool,
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

#[derive(Clone, Debug)]
enum Disturbance {
    Partition {
        groups: Vec<usize>,
        duration: u64,
    },
    Crash {
        node: usize,
        down_for: u64,
    },
    /// Write a new set to the chain; a flicker reverts it after `revert_after` blocks.
    SetChange {
        members: Vec<MemberInfo>,
        revert_after: Option<u64>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Scheduled,
    Partitioned,
    CrashedWaiting { node: usize, down_for: u64 },
    AwaitEpoch { target: Vec<MemberInfo>, since: u64 },
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

    fn make_plan(&mut self, powers: &[u64]) -> VecDeque<Disturbance> {
        let n = powers.len();
        let mut plan = VecDeque::new();
        let k = self.rng.gen_range(1..=3);
        if self.cfg.scenario.has_epochs() {
            return self.make_epoch_plan(powers);
        }
        match self.cfg.scenario {
            Scenario::Honest | Scenario::Byzantine | Scenario::Reconfig | Scenario::Mixed => {}
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

    /// Set changes (and, in `mixed`, partitions and crashes between them), each keeping the
    /// Byzantine power at most P − Q of its set.
    fn make_epoch_plan(&mut self, powers: &[u64]) -> VecDeque<Disturbance> {
        let n = powers.len();
        let mut plan = VecDeque::new();
        let mut cur = self.set.member_infos();
        let infos: Vec<MemberInfo> = self
            .hosts
            .iter()
            .enumerate()
            .filter(|(i, h)| *i >= n && !h.twin)
            .map(|(_, h)| {
                let s = testkit::signer(self.cfg.scheme, h.seed);
                MemberInfo {
                    address: s.address(),
                    public_key: s.public_key(),
                    power: 1,
                }
            })
            .collect();
        let byz: Vec<Address> = self
            .hosts
            .iter()
            .filter(|h| h.byz.is_some())
            .map(|h| h.address)
            .collect();
        let ok = |m: &[MemberInfo]| {
            let p: u64 = m.iter().map(|x| x.power).sum();
            let b: u64 = m
                .iter()
                .filter(|x| byz.contains(&x.address))
                .map(|x| x.power)
                .sum();
            m.len() >= 2 && p > 0 && b <= p - (2 * p / 3 + 1)
        };
        let changes = self.rng.gen_range(2..=4);
        for c in 0..changes {
            let mut next = cur.clone();
            let kind = if c == 0 { 3 } else { self.rng.gen_range(0..4) };
            let mut removed = None;
            match kind {
                0 => {
                    let i = self.rng.gen_range(0..next.len());
                    next[i].power = next[i].power % 3 + 1;
                }
                1 if next.len() > 2 => {
                    let i = self.rng.gen_range(0..next.len());
                    removed = Some(next.remove(i).address);
                }
                2 | 1 => {
                    if let Some(add) = infos
                        .iter()
                        .find(|x| !next.iter().any(|m| m.address == x.address))
                    {
                        let mut add = add.clone();
                        add.power = self.rng.gen_range(1..=3);
                        next.push(add);
                        next.sort_by_key(|m| m.address);
                    } else {
                        let i = self.rng.gen_range(0..next.len());
                        next[i].power = next[i].power % 3 + 1;
                    }
                }
                _ => {
                    // Flicker: a power change that the chain reverts after 1-4 blocks.
                    let i = self.rng.gen_range(0..next.len());
                    next[i].power = next[i].power % 3 + 1;
                    if ok(&next) {
                        let revert_after = Some(self.rng.gen_range(1..=4));
                        plan.push_back(Disturbance::SetChange {
                            members: next,
                            revert_after,
                        });
                    }
                    continue;
                }
            }
            if next == cur || !ok(&next) {
                continue;
            }
            if let Some(a) = removed
                && let Some(j) = self.hosts.iter().position(|h| h.address == a)
                && self.hosts[j].byz.is_none()
                && self.rng.gen_bool(0.5)
            {
                // The removed node goes silent at the change, if the old epoch can do without
                // it (its power plus the Byzantine power at most P − Q of the old set).
                let p: u64 = cur.iter().map(|x| x.power).sum();
                let b: u64 = cur
                    .iter()
                    .filter(|x| byz.contains(&x.address) || x.address == a)
                    .map(|x| x.power)
                    .sum();
                if b <= p - (2 * p / 3 + 1) {
                    self.hosts[j].silent_on_removal = true;
                }
            }
            plan.push_back(Disturbance::SetChange {
                members: next.clone(),
                revert_after: None,
            });
            cur = next;
            if self.cfg.scenario == Scenario::Mixed {
                let k = self.rng.gen_range(0..=1);
                for _ in 0..k {
                    if self.rng.gen_bool(0.5) {
                        let groups: Vec<usize> = (0..self.hosts.len())
                            .map(|_| self.rng.gen_range(0..2))
                            .collect();
                        let duration = self.rng.gen_range(200..6_000);
                        plan.push_back(Disturbance::Partition { groups, duration });
                    } else {
                        // Crash a node of power ≤ P − Q of the current set (or an observer).
                        let p: u64 = cur.iter().map(|x| x.power).sum();
                        let bp: u64 = cur
                            .iter()
                            .filter(|x| byz.contains(&x.address))
                            .map(|x| x.power)
                            .sum();
                        let budget = (p - (2 * p / 3 + 1)).saturating_sub(bp);
                        let cands: Vec<usize> = (0..self.hosts.len())
                            .filter(|&j| {
                                self.hosts[j].byz.is_none() && !self.hosts[j].silent_on_removal
                            })
                            .filter(|&j| {
                                cur.iter()
                                    .find(|m| m.address == self.hosts[j].address)
                                    .is_none_or(|m| m.power <= budget)
                            })
                            .collect();
                        if !cands.is_empty() {
                            let node = cands[self.rng.gen_range(0..cands.len())];
                            let down_for = self.rng.gen_range(0..6_000);
                            plan.push_back(Disturbance::Crash { node, down_for });
                        }
                    }
                }
            }
        }
        plan
    }

    /// Picks Byzantine nodes of total power at most P − Q.
    fn make_byzantine(&mut self, powers: &[u64]) {
        // A third of the epoch runs have no Byzantine node, so removed members can go silent
        // (the old epoch must do without them).
        if self.cfg.scenario.has_epochs() && self.rng.gen_bool(0.33) {
            return;
        }
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
                let mut b = Byzantine::draw(&mut self.rng, signer, outsider);
                if self.cfg.scenario.has_epochs() {
                    b.stale_reconfigure = self.rng.gen_bool(0.7);
                    b.old_epoch_qc = self.rng.gen_bool(0.5);
                }
                self.hosts[i].byz = Some(b);
                let d = self.rng.gen_range(50..500);
                self.push(d, Ev::Attack { node: i });
            }
        }
    }

    fn honest(&self, i: usize) -> bool {
        self.hosts[i].byz.is_none() && !self.hosts[i].twin
    }

    /// A Reconfigure a Byzantine leader can propose to test the voters: a stale one (a set the
    /// chain held after the epoch's chain block but more than W blocks below the pinned head)
    /// or, failing that, a rolled-back one (an invented block hash at the pinned head).
    fn bad_reconfigure(&mut self, i: usize) -> Option<Reconfigure> {
        let chain = self.chain.as_ref()?;
        let core = self.hosts[i].core.as_ref()?;
        let ctx = core.context();
        let cur = ctx.set().member_infos();
        let pinned = chain.pinned(self.now);
        let limit = pinned.saturating_sub(LAG_W + 1);
        let mut stale = None;
        for (k, (start, m)) in chain.changes.iter().enumerate() {
            let end = chain.changes.get(k + 1).map_or(u64::MAX, |c| c.0 - 1);
            let top = end.min(limit);
            if *m != cur && top >= *start && top > ctx.chain_block() {
                stale = Some((top, m.clone()));
            }
        }
        let (number, members, hash) = match stale {
            Some((n, m)) => (n, m, chain.hash(n)),
            None => {
                let mut m = cur.clone();
                let k = self.rng.gen_range(0..m.len());
                m[k].power += 1;
                let mut h = chain.hash(pinned);
                h[0] ^= 0xff;
                (pinned, m, h)
            }
        };
        Some(Reconfigure {
            chain_block_number: number,
            chain_block_hash: hash,
            validator_set_hash: crate::domain::validator_set_hash(&members),
            members,
        })
    }

    /// Records what an honest node receives, to know which equivocations it saw (and so must
    /// report): both messages validly signed and within the window the core checks.
    fn observe_equivocation(&mut self, to: usize, m: &Message) {
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

    fn push(&mut self, delay: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse(Queued {
            time: self.now + delay,
            seq: self.seq,
            ev,
        }));
    }

    fn boot(&mut self, i: usize) {
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
    fn apply_ledger(&mut self, i: usize) {
        if self.now >= self.hosts[i].ledger_lag_until {
            let s = &mut self.hosts[i].store;
            let applied = std::mem::take(&mut s.unapplied);
            s.ledger
                .extend(applied.iter().map(|c| (c.block.id(), c.block.round())));
        }
    }

    fn crash(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        h.store.unapplied.clear();
        h.core = None;
        h.up = false;
        h.inc += 1;
        h.crash_pending = false;
    }

    /// Feeds `event` to node `i` and applies its actions in the node's order ([`Pump`]): an
    /// answer the host gives at once is handled after the rest of the list.
    fn handle(&mut self, i: usize, event: Event) {
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
    fn core_step(&mut self, i: usize, event: Event) -> Option<(Vec<Action>, bool)> {
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

    /// Applies one action of node `i`; returns the answer to a request when this host answers
    /// at once ([`HostMode::Immediate`]).
    fn apply(&mut self, i: usize, a: Action) -> Option<Event> {
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
    fn answer_request(&mut self, i: usize, delay: u64, event: Event) -> Option<Event> {
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

    fn send_records(&mut self, from: usize, to: usize, records: Vec<EpochChangeRecord>) {
        match self.net.fate(&mut self.rng, from, to) {
            Fate::Deliver(d) => self.push(d, Ev::Records { to, from, records }),
            Fate::Drop | Fate::Hold => {}
        }
    }

    fn send_out(&mut self, i: usize, targets: Vec<usize>, message: Message) {
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

    fn open_window(&mut self, label: &'static str) {
        let start_round = self.max_round();
        let heights = (0..self.hosts.len())
            .filter(|&i| {
                self.hosts[i].up
                    && !self.hosts[i].crash_pending
                    && !self.hosts[i].silent_on_removal
                    && self.honest(i)
            })
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
        match self.phase.clone() {
            Phase::Idle => {
                if let Some(d) = self.plan.pop_front() {
                    let gap = self.rng.gen_range(0..1_500);
                    match d {
                        Disturbance::Partition { groups, duration } => {
                            self.push(gap, Ev::Partition { groups, duration })
                        }
                        Disturbance::Crash { node, down_for } => {
                            if self.hosts[node].dead {
                                return;
                            }
                            self.phase = Phase::CrashedWaiting { node, down_for };
                            self.push(gap, Ev::Crash { node });
                            return;
                        }
                        Disturbance::SetChange {
                            members,
                            revert_after,
                        } => {
                            let now = self.now;
                            let mut target = members.clone();
                            if let Some(c) = self.chain.as_mut() {
                                let at = c.head(now) + 1;
                                let prev = c.set_at(at).to_vec();
                                c.changes.push((at, members));
                                if let Some(k) = revert_after {
                                    c.changes.push((at + k, prev.clone()));
                                    target = prev;
                                }
                            }
                            self.phase = Phase::AwaitEpoch { target, since: now };
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
            Phase::AwaitEpoch { target, since } => {
                let reached = (0..self.hosts.len()).all(|i| {
                    let h = &self.hosts[i];
                    !self.honest(i)
                        || h.dead
                        || h.core
                            .as_ref()
                            .is_none_or(|c| c.context().set().member_infos() == target)
                });
                if reached {
                    self.phase = Phase::Idle;
                    self.open_window("epoch change");
                } else if self.now > since + 120_000 {
                    let summary = self.node_summary();
                    self.liveness.push(format!(
                        "the set change at {since} ms did not become an epoch on every honest node \
                         within 120 s; {summary}"
                    ));
                    self.done = true;
                }
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
