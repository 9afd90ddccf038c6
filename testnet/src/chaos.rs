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
//!
//! Layout: this module holds the scenarios' names, the options and the run; `ctx` the state a
//! run shares, `scenarios` the faults, `monitor` the sampler and follower, `checks` the checks
//! after the run, `report` the report, `hostile` the hostile phase's checks.

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

mod checks;
mod ctx;
mod hostile;
mod monitor;
mod report;
mod scenarios;

use checks::*;
use ctx::*;
use monitor::*;
use report::write_outputs;
pub use report::{ChaosReport, parse_evidence, parse_labeled, summary};
use scenarios::*;

pub use hostile::{
    CPU_SHARE_BOUND, DISK_GROWTH_BOUND, GAP_TIMEOUTS, HOSTILE_BIN_ENV, RSS_BOUND_BYTES,
    disk_growth_bound,
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
const PHASES: [Scenario; 7] = [
    Scenario::Kill,
    Scenario::Pause,
    Scenario::Partition,
    Scenario::Loss,
    Scenario::RestartAll,
    Scenario::Hostile,
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
        assert_eq!(
            Scenario::All.min_seconds(),
            30 + 16 + 34 + 12 + 14 + 20 + 10
        );
        assert!(PHASES.contains(&Scenario::Hostile));
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
