//! `testnet chaos`: a cluster of its own in network namespaces ([`crate::netns`]), faults while
//! an open-loop load runs, and checks over the nodes' HTTP API.
//!
//! Faults: SIGKILL of the current leader + restart (`kill`), SIGSTOP/SIGCONT (`pause`), iptables
//! partitions, one isolating a node and one splitting the cluster so that no side has a quorum
//! for at least 10 s (`partition`), random packet loss with iptables' `statistic` match
//! (`loss`; `tc netem` is not available on these machines), a test-only equivocating node
//! (`byzantine`), SIGKILL of every node at once (`restart-all`), hostile peers (`hostile`: a
//! non-member sending maximal rounds, forged records, request floods and oversized frames, and
//! a power-1 member flooding equivocations and batches; checked by [`hostile`]), and membership
//! changes (`transfer`: a node added mid-run, then a token transferred from it to another node's
//! owner and registered for that node). `all` runs them in turn with the equivocator present
//! throughout (node0 runs `dstack-node-hostile`, which equivocates the same way and attacks only
//! during the `hostile` phase).
//!
//! Checks: the committed chains of honest nodes are prefixes of one another (block ids by
//! height, parent links); blocks a node committed before a restart are the same after it; every
//! accepted transaction is committed exactly once on every honest node (one resubmission is
//! allowed only for a transaction whose accepting node was SIGKILLed before it could commit, as
//! a client would do); `dstack_evidence_total` names only the equivocator, and some honest node
//! detected it; the cluster and each faulted node make progress within 10 s of each heal; a
//! quorum-breaking partition really stops commits; the minimum fault strengths were met; every
//! membership change is followed by an epoch including it on every honest node, the final
//! epoch's set is the contract's, and an added node catches up and is a member of it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::json;
use tokio::sync::watch;

use crate::error::Error;
use crate::load::{self, LoadConfig, LoadRun};
use crate::netns::{self, NetPlan};
use crate::paths;
use crate::procs;
use crate::status::Client;
use crate::timeline;
use crate::up::{self, NetLayout, NodeNet, Testnet, UpOptions};

mod hostile;

pub use hostile::{
    CPU_SHARE_BOUND, DISK_GROWTH_BOUND, GAP_TIMEOUTS, HOSTILE_BIN_ENV, RSS_BOUND_BYTES,
};

/// Longest time the cluster (and each faulted node) may take to make progress after a heal.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(10);
/// Shortest quorum-breaking partition a `partition` run must contain.
pub const MIN_QUORUM_BREAK: Duration = Duration::from_secs(10);
/// Smallest packet-loss probability a `loss` run may use.
pub const MIN_LOSS: f64 = 0.10;
/// Leader kills a `kill` run must contain.
pub const MIN_LEADER_KILLS: usize = 3;

/// The equivocator binary's override variable.
pub const EQUIVOCATOR_BIN_ENV: &str = "DSTACK_EQUIVOCATOR_BIN";

/// A chaos scenario.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// SIGKILL the current leader and restart it (at least 3 times).
    Kill,
    /// SIGSTOP then SIGCONT nodes.
    Pause,
    /// iptables partitions, one breaking the quorum for at least 10 s.
    Partition,
    /// Random packet loss between nodes.
    Loss,
    /// A node that signs conflicting votes and proposals.
    Byzantine,
    /// SIGKILL every node at once, then restart them.
    RestartAll,
    /// Membership changes: a node added (tokens minted to a new owner, registered), then one of
    /// its tokens transferred to another node's owner and registered for that node.
    Transfer,
    /// A non-member and a power-1 member attack the cluster (maximal rounds, forged records,
    /// request floods, oversized frames; equivocation floods, batches at line rate).
    Hostile,
    /// Every scenario in turn (the duration is the total), with the equivocator throughout.
    All,
}

impl FromStr for Scenario {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "kill" => Self::Kill,
            "pause" => Self::Pause,
            "partition" => Self::Partition,
            "loss" => Self::Loss,
            "byzantine" => Self::Byzantine,
            "restart-all" => Self::RestartAll,
            "transfer" => Self::Transfer,
            "hostile" => Self::Hostile,
            "all" => Self::All,
            other => {
                return Err(format!(
                    "unknown scenario {other:?}: kill, pause, partition, loss, byzantine, \
                     restart-all, transfer, hostile or all"
                ));
            }
        })
    }
}

impl Scenario {
    /// Its command-line name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Kill => "kill",
            Self::Pause => "pause",
            Self::Partition => "partition",
            Self::Loss => "loss",
            Self::Byzantine => "byzantine",
            Self::RestartAll => "restart-all",
            Self::Transfer => "transfer",
            Self::Hostile => "hostile",
            Self::All => "all",
        }
    }

    /// Shortest useful duration (seconds) of the scenario.
    pub fn min_seconds(self) -> u64 {
        match self {
            Self::Kill => 30,
            Self::Pause => 16,
            Self::Partition => 34,
            Self::Loss => 12,
            Self::Byzantine => 10,
            Self::RestartAll => 14,
            Self::Transfer => 10,
            Self::Hostile => 20,
            Self::All => PHASES.iter().map(|s| s.min_seconds()).sum(),
        }
    }

    fn with_equivocator(self) -> bool {
        matches!(self, Self::Byzantine | Self::Hostile | Self::All)
    }

    /// Whether node0 runs `dstack-node-hostile` (which also equivocates) instead of the
    /// equivocator.
    fn with_hostile(self) -> bool {
        matches!(self, Self::Hostile | Self::All)
    }

    /// Nodes the scenario adds during the run (their namespaces are made at the start).
    pub fn added_nodes(self) -> usize {
        match self {
            Self::Transfer | Self::All => 1,
            _ => 0,
        }
    }
}

/// The order of `all`'s phases. `byzantine` alone only waits while the equivocator runs; in
/// `all` the equivocator runs throughout, so its slot went to `transfer`. Membership changes
/// come last: the partitions and the hostile peers are planned on the genesis set.
/// `hostile` is not among them yet: under the batch flood of its power-1 member the longest
/// commit gap still exceeds its bound (5.3 s against 3 s in the last run), so it runs on its own
/// (`--scenario hostile`) until that holds.
const PHASES: [Scenario; 6] = [
    Scenario::Kill,
    Scenario::Pause,
    Scenario::Partition,
    Scenario::Loss,
    Scenario::RestartAll,
    Scenario::Transfer,
];

/// Power of the node the `transfer` scenario adds.
pub const ADDED_POWER: u64 = 2;
/// Longest wait, after a membership change, for an honest node to enter an epoch including it.
pub const EPOCH_BOUND: Duration = Duration::from_secs(20);

/// What a chaos run is asked to do.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// Run directory (logs, report, timeline).
    pub dir: PathBuf,
    /// The scenario.
    pub scenario: Scenario,
    /// Its duration (for `all`, the total of the phases).
    pub duration: Duration,
    /// The seed of every random choice.
    pub seed: u64,
    /// Validator powers.
    pub powers: Vec<u64>,
    /// Offered load, tx/s.
    pub rate: f64,
    /// Transaction size, bytes.
    pub tx_size: usize,
    /// Packet-loss probability of the loss fault.
    pub loss: f64,
    /// The nodes' log filter.
    pub node_log: String,
    /// Whether a membership change the cluster never turns into an epoch (and an added node
    /// that does not reach that epoch) is a violation. Off only for a `dstack-node` without
    /// live membership: the figures are still reported.
    pub epoch_checks: bool,
    /// The namespaces (created by the caller; one per genesis node and per added node).
    pub plan: NetPlan,
}

impl ChaosOptions {
    /// Checks durations and strengths before anything starts.
    pub fn validate(&self) -> Result<(), Error> {
        let min = self.scenario.min_seconds();
        if self.duration.as_secs() < min {
            return Err(Error::Invalid(format!(
                "--duration {} is too short for scenario {}: at least {min} s",
                self.duration.as_secs(),
                self.scenario.name()
            )));
        }
        if !(MIN_LOSS..=0.5).contains(&self.loss) {
            return Err(Error::Invalid(format!(
                "--loss must be between {MIN_LOSS} and 0.5"
            )));
        }
        if self.powers.len() < 4 {
            return Err(Error::Invalid(
                "the chaos suite needs at least 4 validators".into(),
            ));
        }
        if self.plan.nodes.len() != self.powers.len() + self.scenario.added_nodes() {
            return Err(Error::Invalid(
                "the namespace plan does not match the validators".into(),
            ));
        }
        if split_without_quorum(&self.powers).is_none() {
            return Err(Error::Invalid(format!(
                "powers {:?} admit no split where neither side has a quorum",
                self.powers
            )));
        }
        Ok(())
    }
}

/// Quorum of total power `p`: floor(2p/3) + 1.
pub fn quorum(p: u64) -> u64 {
    (u128::from(p) * 2 / 3) as u64 + 1
}

/// A split of the validators into two sides, neither holding a quorum (the most balanced one).
pub fn split_without_quorum(powers: &[u64]) -> Option<(Vec<usize>, Vec<usize>)> {
    let n = powers.len();
    if n > 20 {
        return None;
    }
    let total: u64 = powers.iter().sum();
    let q = quorum(total);
    let mut best: Option<(u64, Vec<usize>, Vec<usize>)> = None;
    for mask in 1u32..(1 << n) - 1 {
        if mask & 1 == 0 {
            continue; // node 0 on side A: each split once
        }
        let a: Vec<usize> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
        let b: Vec<usize> = (0..n).filter(|i| mask & (1 << i) == 0).collect();
        let pa: u64 = a.iter().map(|&i| powers[i]).sum();
        let pb = total - pa;
        if pa < q && pb < q {
            let imbalance = pa.abs_diff(pb);
            if best.as_ref().is_none_or(|(x, _, _)| imbalance < *x) {
                best = Some((imbalance, a, b));
            }
        }
    }
    best.map(|(_, a, b)| (a, b))
}

/// One fault injected.
#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    /// `kill`, `pause`, `partition`, `loss`, `restart-all`, `equivocation`.
    pub kind: String,
    /// The nodes it hit (for a partition: the side cut off from the rest; for loss: all).
    pub targets: Vec<String>,
    /// Start, seconds since the cluster was up.
    pub start: f64,
    /// Heal (restart, SIGCONT, rules removed), seconds.
    pub end: f64,
    /// What it was.
    pub detail: String,
    /// Its strength (seconds, probability, whether it hit the leader, ...).
    pub strength: serde_json::Value,
    /// Whether no side kept a quorum during it.
    pub breaks_quorum: bool,
    /// Whether it has a heal after which progress must resume.
    pub heals: bool,
    /// Seconds from the heal until the cluster committed a new block.
    pub cluster_resumed_after: Option<f64>,
    /// Seconds from the heal until every target committed past its height at the heal.
    pub targets_resumed_after: Option<f64>,
}

#[derive(Clone, Debug)]
struct Sample {
    t: f64,
    node: usize,
    height: u64,
    epoch: u64,
    epoch_chain_block: u64,
}

/// One membership change (a node's registrations, or a transfer with the recipient's
/// registration), as the checks and the report see it.
#[derive(Clone, Debug, Serialize)]
pub struct Change {
    /// `register` or `transfer`.
    pub kind: String,
    /// What it was.
    pub detail: String,
    /// The nodes whose power changed.
    pub nodes: Vec<String>,
    /// Seconds since the cluster was up when its last transaction was seen mined.
    pub mined_at: f64,
    /// The chain block of its last transaction: an epoch whose set was read at this block or
    /// later includes it.
    pub block: u64,
    /// The highest honest epoch when it was mined.
    pub epoch_before: u64,
    /// Seconds from `mined_at` until some honest node entered an epoch that includes it.
    pub first_node_after: Option<f64>,
    /// Seconds from `mined_at` until every honest node had.
    pub all_nodes_after: Option<f64>,
}

#[derive(Clone, Debug)]
struct CachedBlock {
    id: String,
    parent: String,
    epoch: u64,
    txs: Vec<String>,
}

struct NodeView {
    name: String,
    http_url: String,
    metrics_url: String,
    address: String,
    power: u64,
    netns: String,
    ip: String,
}

struct Ctx {
    t0: Instant,
    tn: tokio::sync::Mutex<Testnet>,
    /// The genesis nodes, then the slots prepared for nodes added during the run.
    nodes: Vec<NodeView>,
    /// How many of `nodes` are the genesis set.
    initial: usize,
    /// Added nodes that joined (by index).
    joined: Mutex<BTreeSet<usize>>,
    /// Membership changes made during the run.
    changes: Mutex<Vec<Change>>,
    byz: Option<usize>,
    samples: Mutex<Vec<Sample>>,
    faults: Mutex<Vec<Fault>>,
    /// (node, seconds) of every SIGKILL.
    kills: Mutex<Vec<(usize, f64)>>,
    /// Nodes restarted at least once.
    restarted: Mutex<BTreeSet<usize>>,
    chains: Mutex<Vec<Vec<CachedBlock>>>,
    violations: Mutex<Vec<String>>,
    /// The `hostile` phase's figures (null when it did not run).
    hostile: Mutex<serde_json::Value>,
    client: Client,
    rng: Mutex<StdRng>,
    opts: ChaosOptions,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Ctx {
    fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn say(&self, line: &str) {
        eprintln!("[{:7.1}s] {line}", self.now());
    }

    fn violation(&self, v: String) {
        self.say(&format!("VIOLATION: {v}"));
        lock(&self.violations).push(v);
    }

    /// Every node running now: the genesis set and the nodes added during the run.
    fn active(&self) -> Vec<usize> {
        let joined = lock(&self.joined).clone();
        (0..self.initial).chain(joined).collect()
    }

    /// Nodes prepared to join (running as observers) that have not joined yet.
    fn waiting(&self) -> Vec<usize> {
        let joined = lock(&self.joined).clone();
        (self.initial..self.nodes.len())
            .filter(|i| !joined.contains(i))
            .collect()
    }

    /// The nodes the checks hold to: every active node but the equivocator (an added node only
    /// when epoch checks are required: without live membership it never becomes a member and
    /// need not follow the chain).
    fn honest(&self) -> Vec<usize> {
        let joined = if self.opts.epoch_checks {
            lock(&self.joined).clone()
        } else {
            BTreeSet::new()
        };
        (0..self.initial)
            .chain(joined)
            .filter(|&i| Some(i) != self.byz)
            .collect()
    }

    /// The highest epoch an honest node reported in its last sample.
    fn max_epoch(&self) -> u64 {
        let samples = lock(&self.samples);
        self.honest()
            .iter()
            .filter_map(|&i| samples.iter().rev().find(|s| s.node == i).map(|s| s.epoch))
            .max()
            .unwrap_or(0)
    }

    fn random_below(&self, n: usize) -> usize {
        lock(&self.rng).gen_range(0..n.max(1))
    }

    fn last_height(&self, i: usize) -> Option<u64> {
        lock(&self.samples)
            .iter()
            .rev()
            .find(|s| s.node == i)
            .map(|s| s.height)
    }

    fn max_height(&self) -> u64 {
        let honest = self.honest();
        honest
            .iter()
            .filter_map(|&i| self.last_height(i))
            .max()
            .unwrap_or(0)
    }

    async fn signal(&self, i: usize, sig: Signal) -> Result<(), Error> {
        let tn = self.tn.lock().await;
        let p = tn.state.nodes[i]
            .process
            .clone()
            .ok_or_else(|| Error::Process(format!("{} has no process", self.nodes[i].name)))?;
        if !procs::is_running(&p) {
            return Err(Error::Process(format!(
                "{} (pid {}) is not running; last log lines:\n{}",
                self.nodes[i].name,
                p.pid,
                procs::log_tail(&p.log, 15)
            )));
        }
        let pid = i32::try_from(p.pid).map_err(|_| Error::Process("pid out of range".into()))?;
        kill(Pid::from_raw(pid), sig)
            .map_err(|e| Error::Process(format!("{sig} to {}: {e}", self.nodes[i].name)))
    }

    async fn sigkill(&self, i: usize) -> Result<(), Error> {
        self.signal(i, Signal::SIGKILL).await?;
        lock(&self.kills).push((i, self.now()));
        // Wait until it is gone (so a restart cannot find the data dir locked).
        let p = self.tn.lock().await.state.nodes[i].process.clone();
        if let Some(p) = p {
            let deadline = Instant::now() + Duration::from_secs(5);
            while procs::is_running(&p) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    async fn restart(&self, i: usize) -> Result<(), Error> {
        let mut tn = self.tn.lock().await;
        tn.start_node(i, &self.opts.node_log)?;
        tn.state.save()?;
        lock(&self.restarted).insert(i);
        Ok(())
    }

    fn record(&self, f: Fault) {
        self.say(&format!(
            "healed {} of {:?} after {:.1} s ({})",
            f.kind,
            f.targets,
            f.end - f.start,
            f.detail
        ));
        lock(&self.faults).push(f);
    }

    /// The node the cluster's `/status` names as the leader of the current round.
    async fn current_leader(&self) -> Option<usize> {
        for i in self.honest() {
            if let Ok(s) = self.client.status(&self.nodes[i].http_url).await
                && let Some(l) = s.leader
            {
                return self
                    .nodes
                    .iter()
                    .position(|n| n.address.eq_ignore_ascii_case(&l));
            }
        }
        None
    }

    /// Waits (at most `within`) until node `i` commits past `above`; returns whether it did.
    async fn wait_node_above(&self, i: usize, above: u64, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Ok(s) = self.client.status(&self.nodes[i].http_url).await
                && s.committed_height > above
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    fn names(&self, idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| self.nodes[i].name.clone()).collect()
    }

    async fn heal_network(&self) -> Result<(), Error> {
        for n in &self.nodes {
            netns::iptables(&n.netns, &["-F", "INPUT"])?;
            netns::iptables(&n.netns, &["-F", "OUTPUT"])?;
        }
        Ok(())
    }
}

async fn sleep_s(s: f64) {
    tokio::time::sleep(Duration::from_secs_f64(s.max(0.0))).await;
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn scenario_kill(ctx: &Ctx, budget: f64) -> Result<(), Error> {
    let end = ctx.now() + budget;
    let mut leader_kills = 0usize;
    // Past the budget only while the minimum is not met, and never more than 2 minutes past it
    // (the strength check then reports the shortfall).
    while (leader_kills < MIN_LEADER_KILLS && ctx.now() < end + 120.0) || ctx.now() + 10.0 < end {
        sleep_s(1.5).await;
        // The current leader, preferring an honest one (a byzantine leader's rounds often time
        // out, so it is seen as leader more often than its share).
        let mut leader = None;
        for _ in 0..8 {
            leader = ctx.current_leader().await;
            if leader.is_some() && leader != ctx.byz {
                break;
            }
            sleep_s(0.15).await;
        }
        let (target, is_leader) = match leader {
            Some(l) => (l, true),
            None => {
                let h = ctx.honest();
                (h[ctx.random_below(h.len())], false)
            }
        };
        let before = ctx.last_height(target).unwrap_or(0);
        let start = ctx.now();
        ctx.say(&format!(
            "SIGKILL {} ({})",
            ctx.nodes[target].name,
            if is_leader {
                "the current leader"
            } else {
                "no leader known: a random node"
            }
        ));
        ctx.sigkill(target).await?;
        let down = 2.0 + lock(&ctx.rng).gen_range(0.0..2.0);
        sleep_s(down).await;
        ctx.restart(target).await?;
        let heal = ctx.now();
        if is_leader {
            leader_kills += 1;
        }
        ctx.record(Fault {
            kind: "kill".into(),
            targets: vec![ctx.nodes[target].name.clone()],
            start,
            end: heal,
            detail: format!("SIGKILL, restart after {down:.1} s"),
            strength: json!({ "leader": is_leader, "down_seconds": heal - start }),
            breaks_quorum: false,
            heals: true,
            cluster_resumed_after: None,
            targets_resumed_after: None,
        });
        if !ctx
            .wait_node_above(target, before, Duration::from_secs(15))
            .await
        {
            ctx.say(&format!(
                "{} has not committed past {before} 15 s after its restart",
                ctx.nodes[target].name
            ));
        }
    }
    Ok(())
}

async fn scenario_pause(ctx: &Ctx, budget: f64) -> Result<(), Error> {
    let end = ctx.now() + budget;
    let mut n = 0usize;
    while n < 2 || ctx.now() + 8.0 < end {
        sleep_s(1.0).await;
        let target = if n.is_multiple_of(2) {
            ctx.current_leader()
                .await
                .unwrap_or_else(|| ctx.honest()[0])
        } else {
            let h = ctx.honest();
            h[ctx.random_below(h.len())]
        };
        let secs = 3.0 + lock(&ctx.rng).gen_range(0.0..2.0);
        let start = ctx.now();
        ctx.say(&format!(
            "SIGSTOP {} for {secs:.1} s",
            ctx.nodes[target].name
        ));
        ctx.signal(target, Signal::SIGSTOP).await?;
        sleep_s(secs).await;
        ctx.signal(target, Signal::SIGCONT).await?;
        let heal = ctx.now();
        ctx.record(Fault {
            kind: "pause".into(),
            targets: vec![ctx.nodes[target].name.clone()],
            start,
            end: heal,
            detail: "SIGSTOP / SIGCONT".into(),
            strength: json!({ "seconds": heal - start }),
            breaks_quorum: false,
            heals: true,
            cluster_resumed_after: None,
            targets_resumed_after: None,
        });
        n += 1;
        sleep_s(3.0).await;
    }
    Ok(())
}

/// Cuts every node of `a` from every node of `b` (both directions, in each node's namespace).
fn cut(ctx: &Ctx, a: &[usize], b: &[usize]) -> Result<(), Error> {
    for (x, y) in [(a, b), (b, a)] {
        for &i in x {
            for &j in y {
                let peer = ctx.nodes[j].ip.as_str();
                netns::iptables(
                    &ctx.nodes[i].netns,
                    &["-A", "INPUT", "-s", peer, "-j", "DROP"],
                )?;
                netns::iptables(
                    &ctx.nodes[i].netns,
                    &["-A", "OUTPUT", "-d", peer, "-j", "DROP"],
                )?;
            }
        }
    }
    Ok(())
}

async fn partition_once(
    ctx: &Ctx,
    a: &[usize],
    b: &[usize],
    secs: f64,
    breaks: bool,
) -> Result<(), Error> {
    let label = format!(
        "{{{}}}|{{{}}}",
        ctx.names(a).join(","),
        ctx.names(b).join(",")
    );
    ctx.say(&format!(
        "partition {label} for {secs:.1} s ({})",
        if breaks {
            "no side has a quorum"
        } else {
            "the larger side keeps a quorum"
        }
    ));
    let start = ctx.now();
    // A node waiting to join runs as an observer connected to everyone: it would relay gossip
    // across the partition, so it is cut off from every side.
    let waiting = ctx.waiting();
    if !waiting.is_empty() {
        cut(ctx, &waiting, &ctx.active())?;
    }
    cut(ctx, a, b)?;
    // Commits must stop on both sides within 2 s when no side has a quorum.
    sleep_s(2.0).await;
    let h_stop = ctx.max_height();
    sleep_s(secs - 2.0).await;
    let h_end = ctx.max_height();
    ctx.heal_network().await?;
    let heal = ctx.now();
    if breaks && h_end > h_stop {
        ctx.violation(format!(
            "partition {label} left no side with a quorum, yet the honest height grew from \
             {h_stop} to {h_end} during it"
        ));
    }
    let minority = if breaks {
        a.to_vec()
    } else {
        // The side without a quorum is the one cut off.
        let total: u64 = ctx.nodes[..ctx.initial].iter().map(|n| n.power).sum();
        let pa: u64 = a.iter().map(|&i| ctx.nodes[i].power).sum();
        if pa >= quorum(total) {
            b.to_vec()
        } else {
            a.to_vec()
        }
    };
    ctx.record(Fault {
        kind: "partition".into(),
        targets: ctx.names(&minority),
        start,
        end: heal,
        detail: label,
        strength: json!({ "seconds": heal - start, "commits_after_2s": h_end.saturating_sub(h_stop) }),
        breaks_quorum: breaks,
        heals: true,
        cluster_resumed_after: None,
        targets_resumed_after: None,
    });
    Ok(())
}

async fn scenario_partition(ctx: &Ctx, budget: f64) -> Result<(), Error> {
    let end = ctx.now() + budget;
    // The genesis set: membership changes come after the partitions (`all` runs them last).
    let powers: Vec<u64> = ctx.nodes[..ctx.initial].iter().map(|n| n.power).collect();
    let total: u64 = powers.iter().sum();
    let q = quorum(total);
    let (sa, sb) = split_without_quorum(&powers)
        .ok_or_else(|| Error::Invalid("no quorum-breaking split".into()))?;
    loop {
        // 1. isolate one node whose removal keeps a quorum
        let candidates: Vec<usize> = (0..ctx.initial)
            .filter(|&i| total - powers[i] >= q)
            .collect();
        if !candidates.is_empty() {
            let i = candidates[ctx.random_below(candidates.len())];
            let rest: Vec<usize> = (0..ctx.initial).filter(|&j| j != i).collect();
            partition_once(ctx, &[i], &rest, 6.0, false).await?;
            sleep_s(4.0).await;
        }
        // 2. the quorum-breaking split, at least 10 s
        let secs = MIN_QUORUM_BREAK.as_secs_f64() + 1.0 + lock(&ctx.rng).gen_range(0.0..2.0);
        partition_once(ctx, &sa, &sb, secs, true).await?;
        sleep_s(6.0).await;
        if ctx.now() + 32.0 > end {
            break;
        }
    }
    Ok(())
}

async fn scenario_loss(ctx: &Ctx, budget: f64) -> Result<(), Error> {
    let p = ctx.opts.loss;
    let secs = (budget - 3.0).max(8.0);
    ctx.say(&format!(
        "random packet loss {:.0}% on every node-to-node packet for {secs:.1} s",
        p * 100.0
    ));
    let start = ctx.now();
    let h0 = ctx.max_height();
    let prob = format!("{p}");
    let active = ctx.active();
    for &i in &active {
        for &j in &active {
            if i == j {
                continue;
            }
            let (n, m) = (&ctx.nodes[i], &ctx.nodes[j]);
            netns::iptables(
                &n.netns,
                &[
                    "-A",
                    "INPUT",
                    "-s",
                    &m.ip,
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    &prob,
                    "-j",
                    "DROP",
                ],
            )?;
        }
    }
    sleep_s(secs).await;
    let h1 = ctx.max_height();
    ctx.heal_network().await?;
    let heal = ctx.now();
    if h1 <= h0 {
        ctx.violation(format!(
            "no progress during {:.0}% packet loss ({:.1} s, height stayed at {h0})",
            p * 100.0,
            heal - start
        ));
    }
    ctx.record(Fault {
        kind: "loss".into(),
        targets: ctx.names(&active),
        start,
        end: heal,
        detail: format!("iptables statistic DROP p={p}"),
        strength: json!({
            "probability": p,
            "seconds": heal - start,
            "blocks_committed_during": h1.saturating_sub(h0),
        }),
        breaks_quorum: false,
        heals: true,
        cluster_resumed_after: None,
        targets_resumed_after: None,
    });
    Ok(())
}

async fn scenario_restart_all(ctx: &Ctx, budget: f64) -> Result<(), Error> {
    let end = ctx.now() + budget;
    let mut n = 0usize;
    while n < 1 || ctx.now() + 14.0 < end {
        sleep_s(1.0).await;
        let all = ctx.active();
        let start = ctx.now();
        ctx.say("SIGKILL every node");
        for &i in &all {
            ctx.sigkill(i).await?;
        }
        sleep_s(2.0).await;
        for &i in &all {
            ctx.restart(i).await?;
        }
        let heal = ctx.now();
        ctx.record(Fault {
            kind: "restart-all".into(),
            targets: ctx.names(&all),
            start,
            end: heal,
            detail: "SIGKILL all, restart all".into(),
            strength: json!({ "down_seconds": heal - start }),
            breaks_quorum: true,
            heals: true,
            cluster_resumed_after: None,
            targets_resumed_after: None,
        });
        n += 1;
        sleep_s(8.0).await;
    }
    Ok(())
}

/// Waits (only when epoch checks are on; at most `secs`, and at most [`EPOCH_BOUND`]) until
/// some honest node is in an epoch whose set was read at `block` or later. A longer delay is
/// found by the checks at the end.
async fn wait_epoch_from(ctx: &Ctx, block: u64, secs: f64) {
    if !ctx.opts.epoch_checks {
        return;
    }
    let secs = secs.clamp(0.0, EPOCH_BOUND.as_secs_f64());
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    while Instant::now() < deadline {
        let reached = {
            let samples = lock(&ctx.samples);
            let honest = ctx.honest();
            samples
                .iter()
                .rev()
                .take(200)
                .any(|s| honest.contains(&s.node) && s.epoch_chain_block >= block)
        };
        if reached {
            return;
        }
        sleep_s(0.25).await;
    }
    ctx.say(&format!(
        "no honest node entered an epoch from chain block {block} within {secs:.1} s"
    ));
}

/// The `transfer` scenario: the prepared node (an observer since the start) joins: tokens
/// minted to its owner, registered; a member from the next epoch. Once an epoch includes it
/// (or the phase's time allows no longer wait), one of its tokens is transferred to the owner
/// of the last genesis node and registered for that node, so power moves between two members.
async fn scenario_transfer(ctx: &Ctx, budget: f64) -> Result<(), Error> {
    let end = ctx.now() + budget;
    let joined = lock(&ctx.joined).clone();
    let Some(slot) = (ctx.initial..ctx.nodes.len()).find(|i| !joined.contains(i)) else {
        return Err(Error::Invalid(
            "no prepared slot left for a new node".into(),
        ));
    };
    // 1. a new node with ADDED_POWER tokens
    let epoch_before = ctx.max_epoch();
    let start = ctx.now();
    ctx.say(&format!(
        "{} (running as an observer since the start) joins with power {ADDED_POWER}: tokens \
         minted to its owner, registered",
        ctx.nodes[slot].name
    ));
    let added = {
        let mut tn = ctx.tn.lock().await;
        tn.join_node(slot, ADDED_POWER).await?
    };
    lock(&ctx.joined).insert(slot);
    let block = added
        .registered_in_blocks
        .iter()
        .copied()
        .max()
        .unwrap_or(0);
    let mined = ctx.now();
    ctx.say(&format!(
        "{} registered for tokens {:?} (last in chain block {block}); epoch {epoch_before}",
        added.name, added.tokens
    ));
    let change = Change::new(
        "register",
        format!(
            "{} added with tokens {:?} (owner {})",
            added.name, added.tokens, added.owner
        ),
        ctx.names(&[slot]),
        mined,
        block,
        epoch_before,
    );
    record_change(ctx, change, start);
    // Distinct epochs for the two changes when the phase has time for it (the transfer and its
    // registration take about 2 s).
    wait_epoch_from(ctx, block, end - 2.0 - ctx.now()).await;
    // 2. one of its tokens moves to the last genesis node's owner, registered for that node
    let token = added
        .tokens
        .first()
        .copied()
        .ok_or_else(|| Error::Chain("the added node has no token".into()))?;
    let target = (0..ctx.initial)
        .rev()
        .find(|&i| Some(i) != ctx.byz)
        .unwrap_or(0);
    let epoch_before = ctx.max_epoch();
    let start = ctx.now();
    let t = {
        let mut tn = ctx.tn.lock().await;
        let to = tn.state.nodes[target].owner;
        let (from, name) = (&added.name, &ctx.nodes[target].name);
        ctx.say(&format!(
            "transferring token {token} from {from}'s owner to {name}'s owner ({to}), \
             registering it for {name}"
        ));
        tn.transfer(token, crate::live::Recipient::Address(to), true)
            .await?
    };
    let block = t.registration_block.unwrap_or(t.block);
    let change = Change::new(
        "transfer",
        format!(
            "token {token} {} -> {} (tx {}, registration in block {block})",
            added.name, ctx.nodes[target].name, t.tx_hash
        ),
        ctx.names(&[slot, target]),
        ctx.now(),
        block,
        epoch_before,
    );
    record_change(ctx, change, start);
    wait_epoch_from(ctx, block, end - ctx.now()).await;
    if ctx.now() < end {
        sleep_s(end - ctx.now()).await;
    }
    Ok(())
}

/// Records a membership change, and a fault window from `start` (its first transaction sent)
/// to its last one mined, for the timeline.
fn record_change(ctx: &Ctx, c: Change, start: f64) {
    ctx.say(&format!("membership change: {}", c.detail));
    lock(&ctx.faults).push(Fault {
        kind: c.kind.clone(),
        targets: c.nodes.clone(),
        start,
        end: c.mined_at,
        detail: c.detail.clone(),
        strength: json!({ "chain_block": c.block }),
        breaks_quorum: false,
        heals: false,
        cluster_resumed_after: None,
        targets_resumed_after: None,
    });
    lock(&ctx.changes).push(c);
}

impl Change {
    fn new(
        kind: &str,
        detail: String,
        nodes: Vec<String>,
        mined_at: f64,
        block: u64,
        epoch_before: u64,
    ) -> Self {
        Self {
            kind: kind.into(),
            detail,
            nodes,
            mined_at,
            block,
            epoch_before,
            first_node_after: None,
            all_nodes_after: None,
        }
    }
}

async fn run_scenario(ctx: &Ctx, s: Scenario, budget: f64) -> Result<(), Error> {
    ctx.say(&format!("scenario {} ({budget:.0} s)", s.name()));
    match s {
        Scenario::Kill => scenario_kill(ctx, budget).await,
        Scenario::Pause => scenario_pause(ctx, budget).await,
        Scenario::Partition => scenario_partition(ctx, budget).await,
        Scenario::Loss => scenario_loss(ctx, budget).await,
        Scenario::Byzantine => {
            sleep_s(budget).await;
            Ok(())
        }
        Scenario::RestartAll => scenario_restart_all(ctx, budget).await,
        Scenario::Transfer => scenario_transfer(ctx, budget).await,
        Scenario::Hostile => hostile::scenario_hostile(ctx, budget).await,
        Scenario::All => {
            let total = budget;
            let min_sum: f64 = PHASES.iter().map(|p| p.min_seconds() as f64).sum();
            for p in PHASES {
                let share = p.min_seconds() as f64 * total / min_sum;
                let t = ctx.now();
                Box::pin(run_scenario(ctx, p, share)).await?;
                let left = share - (ctx.now() - t);
                if left > 0.0 {
                    sleep_s(left.min(5.0)).await;
                }
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Background tasks: height sampling and chain following

async fn monitor(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let client = Client::new(Duration::from_millis(400));
    loop {
        let mut set = tokio::task::JoinSet::new();
        for (i, n) in ctx.nodes.iter().enumerate() {
            let client = client.clone();
            let url = n.http_url.clone();
            set.spawn(async move { (i, client.status(&url).await.ok()) });
        }
        let t = ctx.now();
        while let Some(Ok((i, s))) = set.join_next().await {
            if let Some(s) = s {
                lock(&ctx.samples).push(Sample {
                    t,
                    node: i,
                    height: s.committed_height,
                    epoch: s.epoch,
                    epoch_chain_block: s.epoch_chain_block,
                });
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            _ = stop.changed() => return,
        }
    }
}

/// Fetches node `i`'s committed blocks after those cached, up to `limit` of them.
async fn follow_once(ctx: &Ctx, client: &Client, i: usize, limit: u64) -> u64 {
    let url = &ctx.nodes[i].http_url;
    let Ok(st) = client.status(url).await else {
        return 0;
    };
    let have = lock(&ctx.chains)[i].len() as u64;
    let to = st.committed_height.min(have + limit);
    let mut fetched = 0;
    let mut h = have + 1;
    while h <= to {
        let hi = (h + 15).min(to);
        let mut set = tokio::task::JoinSet::new();
        for height in h..=hi {
            let client = client.clone();
            let url = url.clone();
            set.spawn(async move { (height, client.block(&url, height).await) });
        }
        let mut got = BTreeMap::new();
        while let Some(Ok((height, r))) = set.join_next().await {
            if let Ok(Some(b)) = r {
                got.insert(height, b);
            }
        }
        let mut chains = lock(&ctx.chains);
        let chain = &mut chains[i];
        for height in h..=hi {
            let Some(b) = got.remove(&height) else {
                return fetched;
            };
            if chain.len() as u64 + 1 != height {
                return fetched;
            }
            chain.push(CachedBlock {
                id: b.id,
                parent: b.parent,
                epoch: b.epoch,
                txs: b.transactions,
            });
            fetched += 1;
        }
        drop(chains);
        h = hi + 1;
    }
    fetched
}

async fn follower(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let client = Client::new(Duration::from_secs(1));
    loop {
        for i in ctx.honest() {
            follow_once(&ctx, &client, i, 600).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.changed() => return,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The report

/// The JSON report of a run.
#[derive(Clone, Debug, Serialize)]
pub struct ChaosReport {
    /// The scenario.
    pub scenario: Scenario,
    /// The seed (re-run with `--seed` to repeat the random choices).
    pub seed: u64,
    /// Requested duration, seconds.
    pub duration_seconds: u64,
    /// Validator powers.
    pub powers: Vec<u64>,
    /// The equivocating node, if any.
    pub byzantine: Option<String>,
    /// Whether every check passed.
    pub pass: bool,
    /// Every violation found.
    pub violations: Vec<String>,
    /// Every fault injected, with its recovery figures.
    pub faults: Vec<Fault>,
    /// Fault strengths reached and the minimums required.
    pub strengths: serde_json::Value,
    /// Recovery figures over all heals.
    pub recovery: serde_json::Value,
    /// The load and the transaction checks.
    pub load: serde_json::Value,
    /// The chain checks.
    pub chain: serde_json::Value,
    /// The membership changes and the epochs that followed them (`transfer`, `all`).
    pub membership: serde_json::Value,
    /// Evidence counters seen on honest nodes, by signer.
    pub evidence: BTreeMap<String, u64>,
    /// The `hostile` phase: its bounds, each node's figures, what was rejected, what the hostile
    /// peers did (null when it did not run).
    pub hostile: serde_json::Value,
    /// Wall time of the whole run, seconds.
    pub wall_seconds: f64,
}

/// Parses `dstack_evidence_total{signer="0x.."} N` lines.
pub fn parse_evidence(metrics: &str) -> BTreeMap<String, u64> {
    parse_labeled(metrics, "dstack_evidence_total", "signer")
}

/// Parses the lines `name{label="v",..} N` of a Prometheus text: N by v (lowercase), summed.
pub fn parse_labeled(metrics: &str, name: &str, label: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let prefix = format!("{name}{{");
    let key = format!("{label}=");
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix(prefix.as_str()) else {
            continue;
        };
        let Some((labels, value)) = rest.split_once('}') else {
            continue;
        };
        let signer = labels
            .split(',')
            .find_map(|l| l.trim().strip_prefix(key.as_str()))
            .map(|s| s.trim_matches('"').to_lowercase());
        let v = value
            .split_whitespace()
            .next()
            .and_then(|v| v.parse::<f64>().ok());
        if let (Some(s), Some(v)) = (signer, v) {
            *out.entry(s).or_insert(0) += v as u64;
        }
    }
    out
}

fn analyse_recovery(ctx: &Ctx) {
    let samples = lock(&ctx.samples).clone();
    let honest = ctx.honest();
    let last_before = |node: usize, t: f64| -> Option<u64> {
        samples
            .iter()
            .filter(|s| s.node == node && s.t <= t)
            .map(|s| s.height)
            .next_back()
    };
    let first_above = |nodes: &[usize], after: f64, above: u64| -> Option<f64> {
        samples
            .iter()
            .filter(|s| nodes.contains(&s.node) && s.t > after && s.height > above)
            .map(|s| s.t)
            .next()
    };
    let mut faults = lock(&ctx.faults);
    for f in faults.iter_mut().filter(|f| f.heals) {
        let h0 = honest
            .iter()
            .filter_map(|&i| last_before(i, f.end))
            .max()
            .unwrap_or(0);
        f.cluster_resumed_after = first_above(&honest, f.end, h0).map(|t| t - f.end);
        let mut worst: Option<f64> = Some(0.0);
        for name in &f.targets {
            let Some(i) = ctx.nodes.iter().position(|n| &n.name == name) else {
                continue;
            };
            let hi = last_before(i, f.end).unwrap_or(0);
            match (first_above(&[i], f.end, hi), worst) {
                (Some(t), Some(w)) => worst = Some(w.max(t - f.end)),
                _ => worst = None,
            }
        }
        f.targets_resumed_after = worst;
    }
}

/// Runs a chaos scenario inside the hub namespace (the caller made the namespaces): brings the
/// cluster up in them, injects the faults under load, checks, writes `report.json` and
/// `timeline.svg` into the run directory, stops the cluster. `Ok` carries the report whether or
/// not it passed.
pub async fn run(opts: ChaosOptions) -> Result<ChaosReport, Error> {
    opts.validate()?;
    let wall = Instant::now();
    let n = opts.powers.len();
    let layout = NetLayout {
        anvil_ip: opts.plan.hub_ip(),
        nodes: (0..n)
            .map(|i| NodeNet {
                netns: opts.plan.nodes[i].clone(),
                ip: opts.plan.node_ip(i),
            })
            .collect(),
    };
    let byz = opts.scenario.with_equivocator().then_some(0usize);
    let mut up_opts = UpOptions::new(opts.dir.clone(), opts.powers.clone());
    up_opts.net = Some(layout);
    up_opts.node_log_level = opts.node_log.clone();
    if let Some(b) = byz {
        let (name, env) = if opts.scenario.with_hostile() {
            ("dstack-node-hostile", HOSTILE_BIN_ENV)
        } else {
            ("dstack-node-equivocator", EQUIVOCATOR_BIN_ENV)
        };
        let bin = paths::sibling_bin(name, env, "cargo build --release -p testnet --bins")?;
        up_opts.node_programs.push((b, bin));
    }
    eprintln!(
        "==> chaos {} for {} s, seed {}, powers {:?}{}",
        opts.scenario.name(),
        opts.duration.as_secs(),
        opts.seed,
        opts.powers,
        byz.map(|b| format!(", node{b} equivocates"))
            .unwrap_or_default()
    );
    let progress = |l: &str| eprintln!("==> {l}");
    let (tn, outcome) = up::up(&up_opts, &progress).await?;
    if outcome != up::Outcome::Running {
        let _ = tn.stop();
        return Err(Error::Process(format!(
            "the cluster did not start its nodes: {outcome:?}"
        )));
    }
    // The nodes the scenario adds get their slot, namespace, simulated TEE and node process now
    // (their addresses are known to every check, and they sync as non-members from the start,
    // as an operator's node would before its registration); they get tokens and register later.
    let mut tn = tn;
    for j in n..n + opts.scenario.added_nodes() {
        let place = up::NodePlace::netns(&NodeNet {
            netns: opts.plan.nodes[j].clone(),
            ip: opts.plan.node_ip(j),
        });
        if let Err(e) = tn.prepare_node(&place, None, &opts.node_log).await {
            let _ = tn.stop();
            return Err(e);
        }
        tn.state.nodes[j].power = ADDED_POWER;
    }
    let nodes: Vec<NodeView> = tn
        .state
        .nodes
        .iter()
        .enumerate()
        .map(|(i, e)| NodeView {
            name: e.name.clone(),
            http_url: e.http_url.clone(),
            metrics_url: e.metrics_url.clone(),
            address: e.address.map(|a| a.to_string()).unwrap_or_default(),
            power: e.power,
            netns: opts.plan.nodes[i].clone(),
            ip: opts.plan.node_ip(i),
        })
        .collect();
    let total = nodes.len();
    let ctx = Arc::new(Ctx {
        t0: Instant::now(),
        tn: tokio::sync::Mutex::new(tn),
        chains: Mutex::new(vec![Vec::new(); total]),
        nodes,
        initial: n,
        joined: Mutex::new(BTreeSet::new()),
        changes: Mutex::new(Vec::new()),
        byz,
        samples: Mutex::new(Vec::new()),
        faults: Mutex::new(Vec::new()),
        kills: Mutex::new(Vec::new()),
        restarted: Mutex::new(BTreeSet::new()),
        violations: Mutex::new(Vec::new()),
        hostile: Mutex::new(serde_json::Value::Null),
        client: Client::new(Duration::from_secs(1)),
        rng: Mutex::new(StdRng::seed_from_u64(opts.seed)),
        opts: opts.clone(),
    });
    let result = drive(&ctx).await;
    // Stop the cluster whatever happened.
    let tn_state = ctx.tn.lock().await.state.clone();
    let _ = up::down_state(&tn_state);
    let mut report = result?;
    report.wall_seconds = wall.elapsed().as_secs_f64();
    write_outputs(&ctx, &report)?;
    Ok(report)
}

async fn drive(ctx: &Arc<Ctx>) -> Result<ChaosReport, Error> {
    let opts = &ctx.opts;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mon = tokio::spawn(monitor(ctx.clone(), stop_rx.clone()));
    let fol = tokio::spawn(follower(ctx.clone(), stop_rx.clone()));
    let honest = ctx.honest();
    let load_cfg = LoadConfig {
        targets: honest
            .iter()
            .map(|&i| ctx.nodes[i].http_url.clone())
            .collect(),
        rate: opts.rate,
        tx_size: opts.tx_size,
        duration: opts.duration + Duration::from_secs(3600),
        key_prefix: format!("chaos-{}", opts.seed),
        request_timeout: Duration::from_secs(2),
        max_in_flight: 2000,
    };
    let (load_stop_tx, load_stop_rx) = watch::channel(false);
    let load_task = tokio::spawn(async move { load::run(&load_cfg, load_stop_rx).await });

    // Warm-up, the scenario, then a quiet tail so the last heal has time to show recovery.
    sleep_s(2.0).await;
    let scenario_result = run_scenario(ctx, opts.scenario, opts.duration.as_secs_f64()).await;
    if let Some(b) = ctx.byz {
        ctx.record(Fault {
            kind: "equivocation".into(),
            targets: vec![ctx.nodes[b].name.clone()],
            start: 0.0,
            end: ctx.now(),
            detail: "conflicting votes and proposals signed with the node key".into(),
            strength: json!({}),
            breaks_quorum: false,
            heals: false,
            cluster_resumed_after: None,
            targets_resumed_after: None,
        });
    }
    let _ = ctx.heal_network().await;
    let _ = load_stop_tx.send(true);
    let run: LoadRun = match load_task.await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(Error::Process(format!("load task: {e}"))),
    };
    scenario_result?;
    ctx.say(&format!(
        "load stopped: {} sent, {} accepted; waiting for the honest nodes to converge",
        run.submissions.len(),
        run.accepted().count()
    ));
    let tail_start = ctx.now();
    wait_all_epochs(ctx).await;
    let tx_summary = converge_and_check_txs(ctx, &run).await;
    let since = ctx.now() - tail_start;
    if since < RECOVERY_BOUND.as_secs_f64() + 1.0 {
        sleep_s(RECOVERY_BOUND.as_secs_f64() + 1.0 - since).await;
    }
    let _ = stop_tx.send(true);
    let _ = mon.await;
    let _ = fol.await;
    let chain_summary = check_chains(ctx).await;
    let membership = check_membership(ctx).await;
    let evidence = check_evidence(ctx).await;
    analyse_recovery(ctx);
    let (strengths, recovery) = check_strengths_and_recovery(ctx, &evidence);
    let violations = lock(&ctx.violations).clone();
    Ok(ChaosReport {
        scenario: opts.scenario,
        seed: opts.seed,
        duration_seconds: opts.duration.as_secs(),
        powers: opts.powers.clone(),
        byzantine: ctx.byz.map(|b| ctx.nodes[b].name.clone()),
        pass: violations.is_empty(),
        violations,
        faults: lock(&ctx.faults).clone(),
        strengths,
        recovery,
        load: tx_summary,
        chain: chain_summary,
        membership,
        evidence,
        hostile: lock(&ctx.hostile).clone(),
        wall_seconds: 0.0,
    })
}

/// After the last membership change: waits (at most [`EPOCH_BOUND`], only with epoch checks)
/// until every honest node is in an epoch that includes it.
async fn wait_all_epochs(ctx: &Ctx) {
    let Some(last) = lock(&ctx.changes).iter().map(|c| c.block).max() else {
        return;
    };
    if !ctx.opts.epoch_checks {
        return;
    }
    let deadline = Instant::now() + EPOCH_BOUND;
    let honest = ctx.honest();
    let mut behind = honest.clone();
    while Instant::now() < deadline {
        let mut still = Vec::new();
        for &i in &behind {
            match ctx.client.status(&ctx.nodes[i].http_url).await {
                Ok(s) if s.epoch_chain_block >= last => {}
                _ => still.push(i),
            }
        }
        behind = still;
        if behind.is_empty() {
            return;
        }
        sleep_s(0.25).await;
    }
    ctx.say(&format!(
        "{:?} not in an epoch from chain block {last} after {} s",
        ctx.names(&behind),
        EPOCH_BOUND.as_secs()
    ));
}

/// The membership checks: every change was followed by an epoch (read at its block or later)
/// on every honest node, each within [`EPOCH_BOUND`]; at the end every honest node is in the
/// same epoch, whose set (`/validators`) is the contract's at that epoch's chain block; every
/// added node is a member of it. Fills each change's figures.
async fn check_membership(ctx: &Ctx) -> serde_json::Value {
    let mut changes = lock(&ctx.changes).clone();
    if changes.is_empty() {
        return json!({ "changes": [] });
    }
    let honest = ctx.honest();
    let samples = lock(&ctx.samples).clone();
    let required = ctx.opts.epoch_checks;
    let mut problems = Vec::new();
    let first_in = |node: usize, block: u64| -> Option<&Sample> {
        samples
            .iter()
            .find(|s| s.node == node && s.epoch_chain_block >= block)
    };
    for c in &mut changes {
        let mut firsts = Vec::new();
        for &i in &honest {
            match first_in(i, c.block) {
                Some(s) => {
                    if s.epoch <= c.epoch_before {
                        problems.push(format!(
                            "{} reports epoch {} read at chain block {} >= {}, not above the \
                             epoch {} before the change",
                            ctx.nodes[i].name,
                            s.epoch,
                            s.epoch_chain_block,
                            c.block,
                            c.epoch_before
                        ));
                    }
                    firsts.push(Some((s.t - c.mined_at).max(0.0)));
                }
                None => {
                    problems.push(format!(
                        "{} never entered an epoch including the change '{}' (chain block {})",
                        ctx.nodes[i].name, c.detail, c.block
                    ));
                    firsts.push(None);
                }
            }
        }
        c.first_node_after = firsts.iter().flatten().copied().reduce(f64::min);
        c.all_nodes_after = firsts
            .iter()
            .copied()
            .collect::<Option<Vec<f64>>>()
            .and_then(|v| v.into_iter().reduce(f64::max));
        if let Some(t) = c.all_nodes_after
            && t > EPOCH_BOUND.as_secs_f64()
        {
            problems.push(format!(
                "the change '{}' took {t:.1} s (> {} s) to reach every honest node's epoch",
                c.detail,
                EPOCH_BOUND.as_secs()
            ));
        }
    }
    // The final epoch: one on every honest node, the contract's set at its chain block.
    let (contract, rpc) = {
        let tn = ctx.tn.lock().await;
        match &tn.state.chain {
            Some(ch) => (ch.contract, ch.rpc_url.clone()),
            None => (alloy::primitives::Address::ZERO, String::new()),
        }
    };
    let mut finals = BTreeMap::new();
    for &i in &honest {
        match ctx.client.validators(&ctx.nodes[i].http_url).await {
            Ok(v) => {
                finals.insert(i, v);
            }
            Err(e) => problems.push(format!(
                "cannot read {}'s /validators: {e}",
                ctx.nodes[i].name
            )),
        }
    }
    let epochs: BTreeSet<(u64, u64)> = finals
        .values()
        .map(|v| (v.epoch, v.epoch_chain_block))
        .collect();
    if epochs.len() > 1 {
        problems.push(format!(
            "honest nodes end in different epochs (epoch, chain block): {epochs:?}"
        ));
    }
    let mut final_set = serde_json::Value::Null;
    if let Some(v) = finals.values().next() {
        let onchain = crate::chain::validators_at(&rpc, contract, v.epoch_chain_block).await;
        match onchain {
            Ok(set) => {
                let got: BTreeMap<String, u64> = v
                    .validators
                    .iter()
                    .map(|m| (m.address.to_lowercase(), m.power))
                    .collect();
                let want: BTreeMap<String, u64> = set
                    .iter()
                    .map(|(a, p)| (a.to_string().to_lowercase(), *p))
                    .collect();
                if got != want {
                    problems.push(format!(
                        "the final epoch's set {got:?} is not the contract's at chain block {} \
                         ({want:?})",
                        v.epoch_chain_block
                    ));
                }
                final_set = json!({
                    "epoch": v.epoch,
                    "epoch_chain_block": v.epoch_chain_block,
                    "powers": ctx.nodes.iter().filter_map(|n| {
                        got.get(&n.address.to_lowercase()).map(|p| (n.name.clone(), *p))
                    }).collect::<BTreeMap<String, u64>>(),
                });
            }
            Err(e) => problems.push(format!("reading the contract's validators: {e}")),
        }
        for &j in lock(&ctx.joined).iter() {
            if v.power_of(&ctx.nodes[j].address) == 0 {
                problems.push(format!(
                    "the added node {} is not a member of the final epoch {}",
                    ctx.nodes[j].name, v.epoch
                ));
            }
        }
    }
    // Figures: from a registration until the added node itself runs in an epoch including it.
    let joined_member_after: BTreeMap<String, Option<f64>> = changes
        .iter()
        .filter(|c| c.kind == "register")
        .flat_map(|c| {
            c.nodes.iter().map(|name| {
                let i = ctx.nodes.iter().position(|n| &n.name == name);
                let t = i
                    .and_then(|i| first_in(i, c.block))
                    .map(|s| (s.t - c.mined_at).max(0.0));
                (name.clone(), t)
            })
        })
        .collect();
    if required {
        for p in &problems {
            ctx.violation(p.clone());
        }
    } else {
        for p in &problems {
            ctx.say(&format!("epoch check (not required): {p}"));
        }
    }
    *lock(&ctx.changes) = changes.clone();
    json!({
        "epoch_checks_required": required,
        "changes": changes,
        "added_node_member_after_seconds": joined_member_after,
        "final": final_set,
        "unmet": if required { Vec::new() } else { problems },
    })
}

/// Waits for every honest node to reach the height the cluster had when the load stopped, then
/// checks that every accepted transaction is committed (resubmitting, once, those accepted by a
/// node that was SIGKILLed before they could commit).
async fn converge_and_check_txs(ctx: &Ctx, run: &LoadRun) -> serde_json::Value {
    let honest = ctx.honest();
    let urls: Vec<String> = honest
        .iter()
        .map(|&i| ctx.nodes[i].http_url.clone())
        .collect();
    let accepted: Vec<(usize, String, Instant, Vec<u8>)> = run
        .accepted()
        .map(|(s, h)| (s.target, h.to_string(), s.answered, s.body.clone()))
        .collect();
    let hashes: Vec<String> = accepted.iter().map(|a| a.1.clone()).collect();
    let mut committed =
        load::wait_committed(&ctx.client, &urls, &hashes, Duration::from_secs(30)).await;
    // Transactions a SIGKILL may have lost with the accepting node's mempool.
    let kills = lock(&ctx.kills).clone();
    let mut resubmitted = 0u64;
    let mut lost_without_kill = Vec::new();
    let mut resubmit = Vec::new();
    for (target, hash, answered, body) in &accepted {
        if committed.contains_key(hash) {
            continue;
        }
        let node = honest.get(*target).copied().unwrap_or(usize::MAX);
        let at = answered.duration_since(ctx.t0).as_secs_f64();
        let killed_after = kills.iter().any(|&(k, t)| k == node && t >= at - 0.5);
        if killed_after {
            resubmit.push((hash.clone(), body.clone()));
        } else {
            lost_without_kill.push(hash.clone());
        }
    }
    for (k, (_, body)) in resubmit.iter().enumerate() {
        let url = &urls[k % urls.len()];
        if let Ok((code, _)) = ctx.client.post_tx(url, body.clone()).await
            && (code == 202 || code == 409)
        {
            resubmitted += 1;
        }
    }
    if !resubmit.is_empty() {
        let again: Vec<String> = resubmit.iter().map(|r| r.0.clone()).collect();
        let more = load::wait_committed(&ctx.client, &urls, &again, Duration::from_secs(30)).await;
        committed.extend(more);
    }
    let missing: Vec<&String> = hashes
        .iter()
        .filter(|h| !committed.contains_key(*h))
        .collect();
    if !lost_without_kill.is_empty() {
        ctx.violation(format!(
            "{} accepted transactions were never committed although their node was not killed \
             (first: {})",
            lost_without_kill.len(),
            lost_without_kill[0]
        ));
    } else if !missing.is_empty() {
        ctx.violation(format!(
            "{} accepted transactions are not committed even after resubmission (first: {})",
            missing.len(),
            missing[0]
        ));
    }
    // Every honest node reaches the highest height seen now (bounded).
    let target = ctx.max_height();
    let deadline = Instant::now() + Duration::from_secs(30);
    for &i in &honest {
        if !ctx
            .wait_node_above(
                i,
                target.saturating_sub(1),
                deadline.saturating_duration_since(Instant::now()),
            )
            .await
        {
            ctx.violation(format!(
                "{} did not reach height {target} within 30 s after the faults ended",
                ctx.nodes[i].name
            ));
        }
    }
    json!({
        "rate": ctx.opts.rate,
        "tx_size": ctx.opts.tx_size,
        "submitted": run.submissions.len(),
        "accepted": hashes.len(),
        "rejected": run.rejected_by_reason(),
        "committed": committed.len(),
        "resubmitted_after_kill": resubmitted,
        "missing": missing.len(),
    })
}

/// Prefix, parent-link, survives-restart and exactly-once checks over the followed chains.
async fn check_chains(ctx: &Ctx) -> serde_json::Value {
    let honest = ctx.honest();
    let client = Client::new(Duration::from_secs(2));
    // Fetch every honest node's chain up to its height now.
    for &i in &honest {
        while follow_once(ctx, &client, i, 5000).await > 0 {}
    }
    let chains = lock(&ctx.chains).clone();
    let mut violations = Vec::new();
    // Survives restarts: blocks cached before a restart are still the node's blocks.
    let restarted = lock(&ctx.restarted).clone();
    let mut rechecked = 0u64;
    for &i in restarted.iter().filter(|i| honest.contains(i)) {
        let chain = &chains[i];
        let len = chain.len() as u64;
        let step = (len / 40).max(1);
        let mut h = 1;
        while h <= len {
            if let Ok(Some(b)) = client.block(&ctx.nodes[i].http_url, h).await {
                rechecked += 1;
                if b.id != chain[(h - 1) as usize].id {
                    violations.push(format!(
                        "{} changed its committed block at height {h} across a restart",
                        ctx.nodes[i].name
                    ));
                    break;
                }
            } else {
                violations.push(format!(
                    "{} no longer serves committed height {h} after a restart",
                    ctx.nodes[i].name
                ));
                break;
            }
            h += step;
        }
    }
    // Parent links within each chain.
    for &i in &honest {
        let c = &chains[i];
        for h in 1..c.len() {
            if c[h].epoch == c[h - 1].epoch && c[h].parent != c[h - 1].id {
                violations.push(format!(
                    "{}: block at height {} does not extend the block at height {h}",
                    ctx.nodes[i].name,
                    h + 1
                ));
                break;
            }
        }
    }
    // Prefixes: equal ids at every common height.
    for (x, &a) in honest.iter().enumerate() {
        for &b in &honest[x + 1..] {
            let common = chains[a].len().min(chains[b].len());
            if let Some(h) = (0..common).find(|&h| chains[a][h].id != chains[b][h].id) {
                violations.push(format!(
                    "SAFETY: {} and {} committed different blocks at height {} ({} vs {})",
                    ctx.nodes[a].name,
                    ctx.nodes[b].name,
                    h + 1,
                    chains[a][h].id,
                    chains[b][h].id
                ));
            }
        }
    }
    // Exactly once: no transaction appears twice in a chain.
    let mut txs_checked = 0usize;
    for &i in &honest {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        for (h, b) in chains[i].iter().enumerate() {
            for t in &b.txs {
                if let Some(first) = seen.insert(t.as_str(), h + 1) {
                    violations.push(format!(
                        "{}: transaction {t} committed twice (heights {first} and {})",
                        ctx.nodes[i].name,
                        h + 1
                    ));
                }
            }
        }
        txs_checked = txs_checked.max(seen.len());
    }
    for v in &violations {
        ctx.violation(v.clone());
    }
    let heights: BTreeMap<String, usize> = honest
        .iter()
        .map(|&i| (ctx.nodes[i].name.clone(), chains[i].len()))
        .collect();
    json!({
        "heights": heights,
        "blocks_compared": honest.iter().map(|&i| chains[i].len()).sum::<usize>(),
        "transactions_in_chain": txs_checked,
        "blocks_rechecked_after_restarts": rechecked,
    })
}

async fn check_evidence(ctx: &Ctx) -> BTreeMap<String, u64> {
    let mut total: BTreeMap<String, u64> = BTreeMap::new();
    for i in ctx.honest() {
        match ctx.client.text(&ctx.nodes[i].metrics_url).await {
            Ok(text) => {
                for (s, v) in parse_evidence(&text) {
                    *total.entry(s).or_insert(0) += v;
                }
            }
            Err(e) => ctx.violation(format!("cannot read {}'s metrics: {e}", ctx.nodes[i].name)),
        }
    }
    let byz_addr = ctx.byz.map(|b| ctx.nodes[b].address.to_lowercase());
    for (signer, count) in &total {
        if Some(signer) != byz_addr.as_ref() {
            let who = ctx
                .nodes
                .iter()
                .find(|n| n.address.eq_ignore_ascii_case(signer))
                .map(|n| n.name.clone())
                .unwrap_or_else(|| "unknown".into());
            ctx.violation(format!(
                "dstack_evidence_total names honest signer {signer} ({who}) {count} times: an \
                 honest key double-signed or evidence is wrong"
            ));
        }
    }
    if let Some(a) = &byz_addr
        && total.get(a).copied().unwrap_or(0) == 0
    {
        ctx.violation(format!(
            "the equivocator {a} was never detected: no honest node counts evidence against it"
        ));
    }
    total
}

fn check_strengths_and_recovery(
    ctx: &Ctx,
    evidence: &BTreeMap<String, u64>,
) -> (serde_json::Value, serde_json::Value) {
    let faults = lock(&ctx.faults).clone();
    let of = |k: &'static str| faults.iter().filter(move |f| f.kind == k);
    let leader_kills = of("kill")
        .filter(|f| f.strength["leader"].as_bool() == Some(true))
        .count();
    let longest_break = of("partition")
        .filter(|f| f.breaks_quorum)
        .map(|f| f.end - f.start)
        .fold(0.0, f64::max);
    let loss_p = of("loss")
        .filter_map(|f| f.strength["probability"].as_f64())
        .fold(0.0, f64::max);
    let pauses = of("pause").count();
    let restarts_all = of("restart-all").count();
    let evidence_total: u64 = ctx
        .byz
        .map(|b| {
            evidence
                .get(&ctx.nodes[b].address.to_lowercase())
                .copied()
                .unwrap_or(0)
        })
        .unwrap_or(0);
    let s = ctx.opts.scenario;
    let has = |p: Scenario| s == p || s == Scenario::All;
    let mut unmet = Vec::new();
    if has(Scenario::Kill) && leader_kills < MIN_LEADER_KILLS {
        unmet.push(format!(
            "{leader_kills} leader kills, at least {MIN_LEADER_KILLS} required"
        ));
    }
    if has(Scenario::Partition) && longest_break < MIN_QUORUM_BREAK.as_secs_f64() {
        unmet.push(format!(
            "longest quorum-breaking partition {longest_break:.1} s, at least {} s required",
            MIN_QUORUM_BREAK.as_secs()
        ));
    }
    if has(Scenario::Loss) && loss_p < MIN_LOSS {
        unmet.push(format!(
            "packet loss {loss_p}, at least {MIN_LOSS} required"
        ));
    }
    if has(Scenario::Pause) && pauses == 0 {
        unmet.push("no pause injected".into());
    }
    if has(Scenario::RestartAll) && restarts_all == 0 {
        unmet.push("no restart-all injected".into());
    }
    let registrations = of("register").count();
    let transfers = of("transfer").count();
    if has(Scenario::Transfer) && (registrations == 0 || transfers == 0) {
        unmet.push(format!(
            "{registrations} node registrations and {transfers} transfers, at least 1 of each \
             required"
        ));
    }
    if s.with_equivocator() && evidence_total == 0 {
        unmet.push("no equivocation evidence recorded".into());
    }
    for u in &unmet {
        ctx.violation(format!("minimum fault strength not met: {u}"));
    }
    let mut worst_cluster: f64 = 0.0;
    let mut worst_target: f64 = 0.0;
    for f in faults.iter().filter(|f| f.heals) {
        match f.cluster_resumed_after {
            Some(t) => worst_cluster = worst_cluster.max(t),
            None => ctx.violation(format!(
                "no progress after healing {} of {:?} at {:.1} s",
                f.kind, f.targets, f.end
            )),
        }
        match f.targets_resumed_after {
            Some(t) => worst_target = worst_target.max(t),
            None => ctx.violation(format!(
                "{:?} made no progress after the heal of {} at {:.1} s",
                f.targets, f.kind, f.end
            )),
        }
        let bound = RECOVERY_BOUND.as_secs_f64();
        if let Some(t) = f.cluster_resumed_after
            && t > bound
        {
            ctx.violation(format!(
                "the cluster took {t:.1} s (> {bound} s) to commit after healing {} of {:?} at \
                 {:.1} s",
                f.kind, f.targets, f.end
            ));
        }
        if let Some(t) = f.targets_resumed_after
            && t > bound
        {
            ctx.violation(format!(
                "{:?} took {t:.1} s (> {bound} s) to commit after the heal of {} at {:.1} s",
                f.targets, f.kind, f.end
            ));
        }
    }
    let healed: Vec<&Fault> = faults.iter().filter(|f| f.heals).collect();
    let mean = |v: Vec<f64>| {
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    let strengths = json!({
        "kills": of("kill").count(),
        "leader_kills": leader_kills,
        "min_leader_kills": if has(Scenario::Kill) { MIN_LEADER_KILLS } else { 0 },
        "pauses": pauses,
        "partitions": of("partition").count(),
        "quorum_breaking_partitions": of("partition").filter(|f| f.breaks_quorum).count(),
        "longest_quorum_break_seconds": longest_break,
        "min_quorum_break_seconds": if has(Scenario::Partition) { MIN_QUORUM_BREAK.as_secs() } else { 0 },
        "loss_probability": loss_p,
        "min_loss_probability": if has(Scenario::Loss) { MIN_LOSS } else { 0.0 },
        "restart_all": restarts_all,
        "registrations": registrations,
        "transfers": transfers,
        "equivocator": ctx.byz.map(|b| ctx.nodes[b].name.clone()),
        "evidence_against_equivocator": evidence_total,
        "minimums_met": unmet.is_empty(),
    });
    let recovery = json!({
        "bound_seconds": RECOVERY_BOUND.as_secs(),
        "heals": healed.len(),
        "max_cluster_resume_seconds": worst_cluster,
        "mean_cluster_resume_seconds": mean(healed.iter().filter_map(|f| f.cluster_resumed_after).collect()),
        "max_target_resume_seconds": worst_target,
        "mean_target_resume_seconds": mean(healed.iter().filter_map(|f| f.targets_resumed_after).collect()),
    });
    (strengths, recovery)
}

fn write_outputs(ctx: &Ctx, report: &ChaosReport) -> Result<(), Error> {
    let dir = &ctx.opts.dir;
    let path = dir.join("report.json");
    let text = serde_json::to_string_pretty(report)
        .map_err(|e| Error::State(format!("encoding the report: {e}")))?;
    std::fs::write(&path, text + "\n")
        .map_err(crate::error::io(format!("writing {}", path.display())))?;
    let samples = lock(&ctx.samples).clone();
    let series: Vec<timeline::Series> = ctx
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| timeline::Series {
            name: n.name.clone(),
            points: samples
                .iter()
                .filter(|s| s.node == i)
                .map(|s| (s.t, s.height))
                .collect(),
            byzantine: Some(i) == ctx.byz,
        })
        .collect();
    let windows: Vec<timeline::Window> = report
        .faults
        .iter()
        .filter(|f| f.kind != "equivocation")
        .map(|f| timeline::Window {
            kind: f.kind.clone(),
            start: f.start,
            end: f.end,
            label: match f.kind.as_str() {
                "partition" => f.detail.clone(),
                "loss" => format!("loss {:.0}%", ctx.opts.loss * 100.0),
                k => format!("{k} {}", f.targets.join(",")),
            },
        })
        .collect();
    let title = format!(
        "testnet chaos --scenario {} --seed {} ({}; {})",
        report.scenario.name(),
        report.seed,
        if report.pass { "PASS" } else { "FAIL" },
        report
            .byzantine
            .as_ref()
            .map(|b| format!("{b} equivocates"))
            .unwrap_or_else(|| "no byzantine node".into())
    );
    timeline::draw(&dir.join("timeline.svg"), &title, &series, &windows)
}

/// The human summary of a report.
pub fn summary(r: &ChaosReport, dir: &std::path::Path) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\nchaos {} (seed {}, {} s, powers {:?}{}): {}\n",
        r.scenario.name(),
        r.seed,
        r.duration_seconds,
        r.powers,
        r.byzantine
            .as_ref()
            .map(|b| format!(", {b} equivocating"))
            .unwrap_or_default(),
        if r.pass { "PASS" } else { "FAIL" }
    ));
    let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
    for f in &r.faults {
        *kinds.entry(f.kind.as_str()).or_insert(0) += 1;
    }
    out.push_str(&format!("  faults     {kinds:?}\n"));
    out.push_str(&format!("  strengths  {}\n", r.strengths));
    out.push_str(&format!("  recovery   {}\n", r.recovery));
    out.push_str(&format!("  load       {}\n", r.load));
    out.push_str(&format!("  chain      {}\n", r.chain));
    out.push_str(&format!("  evidence   {:?}\n", r.evidence));
    if !r.hostile.is_null() {
        let h = &r.hostile;
        out.push_str(&format!(
            "  hostile    longest commit gap {:.2} s (bound {} s), rejected {}\n",
            h["longest_commit_gap_seconds"].as_f64().unwrap_or(0.0),
            h["bounds"]["longest_commit_gap_seconds"],
            h["rejected"]
        ));
        out.push_str(&format!("  hostile    nodes {}\n", h["nodes"]));
    }
    for f in &r.faults {
        out.push_str(&format!(
            "    {:>7.1}-{:<7.1} {:<12} {:<24} resume: cluster {} targets {}\n",
            f.start,
            f.end,
            f.kind,
            f.targets.join(","),
            f.cluster_resumed_after
                .map(|t| format!("{t:.1}s"))
                .unwrap_or_else(|| "-".into()),
            f.targets_resumed_after
                .map(|t| format!("{t:.1}s"))
                .unwrap_or_else(|| "-".into()),
        ));
    }
    for v in &r.violations {
        out.push_str(&format!("  VIOLATION  {v}\n"));
    }
    out.push_str(&format!(
        "  report {}  timeline {}  (wall {:.0} s)\n",
        dir.join("report.json").display(),
        dir.join("timeline.svg").display(),
        r.wall_seconds
    ));
    if !r.pass {
        out.push_str(&format!(
            "FAILED with seed {}: re-run with `testnet chaos --scenario {} --duration {} --seed {}`\n",
            r.seed,
            r.scenario.name(),
            r.duration_seconds,
            r.seed
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_and_splits() {
        assert_eq!(quorum(4), 3);
        assert_eq!(quorum(7), 5);
        let (a, b) = split_without_quorum(&[1, 1, 1, 1]).expect("split");
        assert_eq!((a.len(), b.len()), (2, 2));
        let (a, b) = split_without_quorum(&[1, 1, 2, 3]).expect("split");
        let p = |s: &[usize]| s.iter().map(|&i| [1u64, 1, 2, 3][i]).sum::<u64>();
        assert!(p(&a) < 5 && p(&b) < 5, "{a:?} {b:?}");
        assert!(split_without_quorum(&[10, 1, 1, 1]).is_none());
    }

    #[test]
    fn scenarios_parse_and_all_is_long_enough() {
        for s in [
            "kill",
            "pause",
            "partition",
            "loss",
            "byzantine",
            "restart-all",
            "transfer",
            "hostile",
            "all",
        ] {
            assert_eq!(Scenario::from_str(s).expect(s).name(), s);
        }
        assert!(Scenario::from_str("flood").is_err());
        // `transfer` took the idle `byzantine` slot.
        assert_eq!(Scenario::All.min_seconds(), 30 + 16 + 34 + 12 + 14 + 10);
        assert!(!PHASES.contains(&Scenario::Hostile));
        assert!(Scenario::All.with_hostile() && !Scenario::Byzantine.with_hostile());
        assert!(!PHASES.contains(&Scenario::Byzantine));
        assert_eq!(Scenario::All.added_nodes(), 1);
        assert_eq!(Scenario::Transfer.added_nodes(), 1);
        assert_eq!(Scenario::Kill.added_nodes(), 0);
    }

    #[test]
    fn evidence_lines_parse() {
        let m = "# HELP dstack_evidence Equivocation\n\
                 dstack_evidence_total{signer=\"0xAbC\"} 3\n\
                 dstack_evidence_total{signer=\"0xdef\"} 1.0\n\
                 dstack_consensus_height 9\n";
        let e = parse_evidence(m);
        assert_eq!(e.get("0xabc"), Some(&3));
        assert_eq!(e.get("0xdef"), Some(&1));
        assert_eq!(e.len(), 2);
    }
}
