//! One benchmark run: bring a cluster up through the `testnet` library, crash the `--dead`
//! validators, drive open-loop load from client processes, optionally SIGKILL the leader, wait
//! for the backlog to commit, and compute the report from the nodes' logs and APIs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use testnet::state::State;
use testnet::status::Client;
use testnet::up::{Testnet, UpOptions};

use crate::client::{ClientConfig, ClientReport};
use crate::error::{BenchError, io};
use crate::logs;
use crate::procstat;
use crate::stats::{mean, quantile};
use crate::timed::{self, NodeSettings, now_us};

mod report;

pub use report::{Failover, NodeReport, RunReport, TimelinePoint, summary};

/// What to run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunOptions {
    /// Validators.
    pub nodes: usize,
    /// Voting power of each validator.
    pub powers: Vec<u64>,
    /// Transaction size (bytes).
    pub tx_size: usize,
    /// Offered load over all clients (tx/s).
    pub rate: f64,
    /// Load duration (s).
    pub duration_s: f64,
    /// Validators crashed before the load (the lowest-power ones).
    pub dead: usize,
    /// Base round timeout (ms).
    pub base_timeout_ms: u64,
    /// SIGKILL the current leader this many seconds into the load.
    pub kill_leader_at_s: Option<f64>,
    /// The run directory.
    pub dir: PathBuf,
    /// How long to wait for the backlog to commit after the load (s).
    pub grace_s: f64,
    /// Client send period (ms).
    pub tick_ms: u64,
    /// Extra `config.toml` overrides for every node.
    pub node_sets: Vec<String>,
    /// Diagnostic: the nodes' databases under this directory (see [`NodeSettings`]).
    pub data_root: Option<PathBuf>,
    /// Numeric cluster parameters for every node's `genesis.json`.
    pub genesis: Vec<(String, u64)>,
}

impl RunOptions {
    /// Defaults: 4 equal validators, 512-byte transactions, 10,000 tx/s for 10 s.
    pub fn new(dir: PathBuf) -> Self {
        Self {
            nodes: 4,
            powers: vec![1; 4],
            tx_size: 512,
            rate: 10_000.0,
            duration_s: 10.0,
            dead: 0,
            base_timeout_ms: 1000,
            kill_leader_at_s: None,
            dir,
            grace_s: 30.0,
            tick_ms: 10,
            node_sets: vec!["mempool.max_pending_txs=200000".into()],
            data_root: None,
            genesis: Vec::new(),
        }
    }

    fn validate(&self) -> Result<(), BenchError> {
        if self.powers.len() != self.nodes {
            return Err(BenchError::Invalid(format!(
                "--nodes {} but --powers lists {} values",
                self.nodes,
                self.powers.len()
            )));
        }
        if self.dead >= self.nodes {
            return Err(BenchError::Invalid(
                "--dead must leave at least one validator".into(),
            ));
        }
        if self.tx_size < crate::txgen::MIN_TX_SIZE {
            return Err(BenchError::Invalid(format!(
                "--tx-size must be at least {}",
                crate::txgen::MIN_TX_SIZE
            )));
        }
        if self.rate <= 0.0 || self.duration_s <= 0.0 {
            return Err(BenchError::Invalid(
                "--rate and --duration must be positive".into(),
            ));
        }
        Ok(())
    }
}

fn progress(line: &str) {
    eprintln!("[bench] {line}");
}

fn pid_of(state: &State, i: usize) -> Option<u32> {
    state.nodes.get(i)?.process.as_ref().map(|p| p.pid)
}

fn sigkill(pid: u32) {
    if let Ok(p) = i32::try_from(pid) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Reads `dstack_timeouts_total` from a node's metrics.
async fn timeouts_of(client: &Client, metrics_url: &str) -> Option<u64> {
    let text = client.text(metrics_url).await.ok()?;
    text.lines()
        .find(|l| l.starts_with("dstack_timeouts_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

async fn pending_of(client: &Client, metrics_url: &str) -> Option<u64> {
    let text = client.text(metrics_url).await.ok()?;
    text.lines()
        .find(|l| l.starts_with("dstack_mempool_transactions "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
}

/// The validators `--dead` crashes: the lowest powers, the highest index first among equals.
pub fn dead_set(powers: &[u64], dead: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..powers.len()).collect();
    idx.sort_by_key(|&i| (powers[i], std::cmp::Reverse(i)));
    idx.truncate(dead);
    idx.sort_unstable();
    idx
}

/// Runs one benchmark; the cluster is stopped at the end, whatever happened.
pub async fn run(opts: &RunOptions) -> Result<RunReport, BenchError> {
    opts.validate()?;
    testnet::paths::anvil_bin().map_err(|e| {
        BenchError::Missing(format!(
            "anvil is required for the load harness: {e} (run `make setup` in the repository)"
        ))
    })?;
    let exe = std::env::current_exe().map_err(io("locating the bench binary"))?;
    std::fs::create_dir_all(&opts.dir).map_err(io(format!("creating {}", opts.dir.display())))?;
    let dir = std::fs::canonicalize(&opts.dir)
        .map_err(io(format!("resolving {}", opts.dir.display())))?;
    let settings = NodeSettings {
        base_timeout_ms: Some(opts.base_timeout_ms),
        sets: opts.node_sets.clone(),
        data_root: opts.data_root.as_ref().map(|p| p.display().to_string()),
        genesis: opts.genesis.clone(),
    };
    if let Some(root) = &opts.data_root {
        for i in 0..opts.nodes {
            let d = root.join(format!("node{i}"));
            if d.exists() {
                std::fs::remove_dir_all(&d).map_err(io(format!("removing {}", d.display())))?;
            }
        }
    }
    let settings_path = dir.join(timed::SETTINGS_FILE);
    std::fs::write(
        &settings_path,
        serde_json::to_vec_pretty(&settings).map_err(|e| BenchError::Invalid(e.to_string()))?,
    )
    .map_err(io(format!("writing {}", settings_path.display())))?;
    let mut up = UpOptions::new(dir.clone(), opts.powers.clone());
    // The harness reads the driver's and the mempool's debug lines; BENCH_NODE_LOG adds to them
    // (RUST_LOG syntax, e.g. `libp2p_gossipsub=debug` to diagnose a run).
    up.node_log_level = match std::env::var("BENCH_NODE_LOG") {
        Ok(extra) if !extra.is_empty() => {
            format!("info,node::driver=debug,node::mempool=debug,{extra}")
        }
        _ => "info,node::driver=debug,node::mempool=debug".into(),
    };
    up.node_programs = (0..opts.nodes).map(|i| (i, exe.clone())).collect();
    progress(&format!(
        "bringing up {} validators (powers {:?}) in {}",
        opts.nodes,
        opts.powers,
        dir.display()
    ));
    let (tn, _) = testnet::up::up(&up, &|l| progress(l)).await?;
    let result = drive(opts, &tn, &dir, &exe).await;
    progress("stopping the cluster");
    if let Err(e) = tn.stop() {
        progress(&format!("stopping: {e}"));
    }
    result
}

async fn drive(
    opts: &RunOptions,
    tn: &Testnet,
    dir: &Path,
    exe: &Path,
) -> Result<RunReport, BenchError> {
    let state = &tn.state;
    let n = state.nodes.len();
    let http = Client::new(Duration::from_secs(5));
    let dead = dead_set(&opts.powers, opts.dead);
    for &i in &dead {
        if let Some(pid) = pid_of(state, i) {
            progress(&format!(
                "crashing {} (SIGKILL) before the load",
                state.nodes[i].name
            ));
            sigkill(pid);
        }
    }
    let live: Vec<usize> = (0..n).filter(|i| !dead.contains(i)).collect();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Baselines.
    let cpu0_at = now_us();
    let mut cpu0 = vec![None; n];
    let mut timeouts0 = vec![0u64; n];
    for &i in &live {
        cpu0[i] = pid_of(state, i).and_then(procstat::cpu_seconds);
        timeouts0[i] = timeouts_of(&http, &state.nodes[i].metrics_url)
            .await
            .unwrap_or(0);
    }

    let machine0 = procstat::machine_ticks();
    // Clients: one process per live node, the rate shared evenly.
    let start_at = now_us() + 1_000_000;
    let per_client = opts.rate / live.len() as f64;
    let ticks_per_s = 1000 / opts.tick_ms.max(1);
    let mut children = Vec::new();
    for (k, &i) in live.iter().enumerate() {
        let cfg = ClientConfig {
            url: state.nodes[i].http_url.clone(),
            rate: per_client,
            tx_size: opts.tx_size,
            duration_s: opts.duration_s,
            start_at_us: start_at,
            prefix: format!("b{start_at}c{k}"),
            tick_ms: opts.tick_ms,
            sample_every: (ticks_per_s / 20).max(1),
            max_in_flight: 256,
        };
        let out = dir.join(format!("client{k}.json"));
        let log = std::fs::File::create(dir.join(format!("client{k}.log")))
            .map_err(io("creating a client log"))?;
        let child = tokio::process::Command::new(exe)
            .arg("client")
            .arg("--config")
            .arg(serde_json::to_string(&cfg).map_err(|e| BenchError::Invalid(e.to_string()))?)
            .arg("--out")
            .arg(&out)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(io("starting a client process"))?;
        children.push((child, out));
    }
    progress(&format!(
        "{} client processes, {:.0} tx/s each, {} s",
        live.len(),
        per_client,
        opts.duration_s
    ));

    // The leader kill, if asked for.
    let mut failover = None;
    let mut killed = None;
    if let Some(at) = opts.kill_leader_at_s {
        let when = start_at + (at * 1e6) as u64;
        let now = now_us();
        if when > now {
            tokio::time::sleep(Duration::from_micros(when - now)).await;
        }
        let probe = live[0];
        if let Ok(s) = http.status(&state.nodes[probe].http_url).await
            && let Some(leader) = s.leader
        {
            let target = state.nodes.iter().position(|nd| {
                nd.address
                    .map(|a| a.to_string().eq_ignore_ascii_case(&leader))
                    .unwrap_or(false)
            });
            if let Some(t) = target.filter(|t| live.contains(t))
                && let Some(pid) = pid_of(state, t)
            {
                let kill_us = now_us();
                sigkill(pid);
                progress(&format!(
                    "SIGKILL of the leader {} at {:.1} s into the load",
                    state.nodes[t].name,
                    (kill_us.saturating_sub(start_at)) as f64 / 1e6
                ));
                killed = Some(t);
                failover = Some((kill_us, state.nodes[t].name.clone()));
            }
        }
    }

    // Clients finish.
    let mut reports: Vec<ClientReport> = Vec::new();
    for (mut child, out) in children {
        let status = child.wait().await.map_err(io("waiting for a client"))?;
        if !status.success() {
            return Err(BenchError::Client(format!(
                "a client process failed ({status}); see {}",
                dir.display()
            )));
        }
        let bytes = std::fs::read(&out).map_err(io(format!("reading {}", out.display())))?;
        reports.push(
            serde_json::from_slice(&bytes)
                .map_err(|e| BenchError::Client(format!("{}: {e}", out.display())))?,
        );
    }
    let load_end = now_us();
    let machine_cpu_percent = match (machine0, procstat::machine_ticks()) {
        (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
            100.0 * procstat::cores() as f64 * (b1 - b0) as f64 / (t1 - t0) as f64
        }
        _ => 0.0,
    };
    let mut cpu1 = vec![None; n];
    for &i in &live {
        cpu1[i] = pid_of(state, i).and_then(procstat::cpu_seconds);
    }
    let cpu1_at = now_us();
    progress("load done; waiting for the backlog to commit");
    let alive: Vec<usize> = live
        .iter()
        .copied()
        .filter(|i| Some(*i) != killed)
        .collect();
    let deadline = now_us() + (opts.grace_s * 1e6) as u64;
    loop {
        let mut pending = 0u64;
        for &i in &alive {
            pending += pending_of(&http, &state.nodes[i].metrics_url)
                .await
                .unwrap_or(0);
        }
        if pending == 0 || now_us() >= deadline {
            if pending > 0 {
                progress(&format!(
                    "{pending} accepted transactions still pending after the grace period"
                ));
            }
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut cpu2 = vec![None; n];
    for &i in &live {
        cpu2[i] = pid_of(state, i).and_then(procstat::cpu_seconds);
    }
    // Let the last commits reach every node's log.
    tokio::time::sleep(Duration::from_millis(1500)).await;

    // Node figures.
    let mut node_stats = Vec::new();
    // CPU is sampled from just before the clients start to just after they end.
    let window_s = (cpu1_at.saturating_sub(cpu0_at)) as f64 / 1e6;
    for (i, nd) in state.nodes.iter().enumerate() {
        let is_live = alive.contains(&i);
        let pid = pid_of(state, i);
        let cpu = match (cpu0[i], cpu1[i]) {
            (Some(a), Some(b)) if window_s > 0.0 => 100.0 * (b - a) / window_s,
            _ => 0.0,
        };
        let timeouts = if is_live {
            timeouts_of(&http, &nd.metrics_url)
                .await
                .unwrap_or(0)
                .saturating_sub(timeouts0[i])
        } else {
            0
        };
        let height = if is_live {
            http.status(&nd.http_url)
                .await
                .map(|s| s.committed_height)
                .unwrap_or(0)
        } else {
            0
        };
        node_stats.push(NodeReport {
            name: nd.name.clone(),
            power: nd.power,
            dead: dead.contains(&i),
            killed: killed == Some(i),
            cpu_percent: cpu,
            cpu_seconds: match (cpu0[i], cpu2[i]) {
                (Some(a), Some(b)) => b - a,
                _ => 0.0,
            },
            peak_rss_mib: if is_live {
                pid.and_then(procstat::peak_rss_mib).unwrap_or(0.0)
            } else {
                0.0
            },
            timeouts,
            height,
        });
    }

    // Logs.
    let commits_per_node: Vec<Vec<logs::CommitLine>> = state
        .nodes
        .iter()
        .map(|nd| logs::read_commits(&nd.home.join("node.log")))
        .collect();
    let proposals_per_node: Vec<Vec<logs::ProposalLine>> = state
        .nodes
        .iter()
        .map(|nd| logs::read_proposals(&nd.home.join(timed::PROPOSALS_FILE)))
        .collect();
    let commits = logs::merge_commits(&commits_per_node);
    let batch_waits: Vec<f64> = state
        .nodes
        .iter()
        .flat_map(|nd| logs::read_batch_waits(&nd.home.join("node.log")))
        .collect();
    let proposals = logs::merge_proposals(&proposals_per_node);

    // Samples: committed height by hash, then the height's commit time.
    let mut e2e = Vec::new();
    let mut uncommitted = 0usize;
    let acks: Vec<f64> = reports
        .iter()
        .flat_map(|r| &r.samples)
        .filter(|s| s.acked_us >= s.sent_us)
        .map(|s| (s.acked_us - s.sent_us) as f64 / 1000.0)
        .collect();
    for (k, r) in reports.iter().enumerate() {
        let url = &state.nodes[alive.get(k % alive.len()).copied().unwrap_or(0)].http_url;
        for s in &r.samples {
            match http.tx_height(url, &s.hash).await {
                Ok(Some(h)) => match commits.get(&h) {
                    Some(c) => e2e.push(c.at_us.saturating_sub(s.sent_us) as f64 / 1000.0),
                    None => uncommitted += 1,
                },
                _ => uncommitted += 1,
            }
        }
    }

    // The window: blocks committed after the load started.
    let in_window: Vec<&logs::CommitLine> =
        commits.values().filter(|c| c.at_us >= start_at).collect();
    let committed_txs: u64 = in_window.iter().map(|c| c.txs).sum();
    let last_tx_commit = in_window
        .iter()
        .filter(|c| c.txs > 0)
        .map(|c| c.at_us)
        .max()
        .unwrap_or(load_end);
    let client_start = reports.iter().map(|r| r.start_us).min().unwrap_or(start_at);
    let first_proposal = proposals
        .values()
        .copied()
        .filter(|&t| t >= client_start)
        .min()
        .unwrap_or(client_start);
    let e2e_dur = (last_tx_commit.saturating_sub(client_start)) as f64 / 1e6;
    let cons_dur = (last_tx_commit.saturating_sub(first_proposal)) as f64 / 1e6;
    let per = |d: f64| {
        if d > 0.0 {
            committed_txs as f64 / d
        } else {
            0.0
        }
    };
    let consensus_lat: Vec<f64> = in_window
        .iter()
        .filter_map(|c| {
            // Epoch 0 only while epochs are not wired into the node.
            let p = proposals.get(&(0, c.round))?;
            Some(c.at_us.saturating_sub(*p) as f64 / 1000.0)
        })
        .collect();
    let blocks = in_window.len() as u64;
    let block_window = in_window
        .last()
        .map(|c| (c.at_us.saturating_sub(start_at)) as f64 / 1e6)
        .unwrap_or(0.0);

    // Failover.
    let failover = failover.map(|(kill_us, name)| {
        let after: Vec<u64> = commits
            .values()
            .map(|c| c.at_us)
            .filter(|&t| t > kill_us && t <= kill_us + 10_000_000)
            .collect();
        let first = after.first().map(|t| (t - kill_us) as f64 / 1000.0);
        let mut max_gap = first.unwrap_or(10_000.0);
        for w in after.windows(2) {
            max_gap = max_gap.max((w[1] - w[0]) as f64 / 1000.0);
        }
        Failover {
            kill_at_s: (kill_us.saturating_sub(start_at)) as f64 / 1e6,
            node: name,
            first_commit_after_kill_ms: first.unwrap_or(f64::INFINITY),
            max_commit_gap_ms: max_gap,
        }
    });

    // Timeline per second from the load start.
    let span_end = commits.values().map(|c| c.at_us).max().unwrap_or(load_end);
    let bins = ((span_end.saturating_sub(start_at)) / 1_000_000 + 1) as usize;
    let mut timeline = Vec::new();
    for b in 0..bins.min(600) {
        let lo = start_at + b as u64 * 1_000_000;
        let hi = lo + 1_000_000;
        let height = commits
            .values()
            .filter(|c| c.at_us < hi)
            .map(|c| c.height)
            .max()
            .unwrap_or(0);
        let txs: u64 = commits
            .values()
            .filter(|c| c.at_us >= lo && c.at_us < hi)
            .map(|c| c.txs)
            .sum();
        timeline.push(TimelinePoint {
            t_s: b as f64,
            height,
            tps: txs as f64,
        });
    }

    let mut rejected = BTreeMap::new();
    for r in &reports {
        for (k, v) in &r.rejected {
            *rejected.entry(k.clone()).or_default() += v;
        }
    }
    let e2e_tps = per(e2e_dur);
    Ok(RunReport {
        nodes: opts.nodes,
        powers: opts.powers.clone(),
        dead: opts.dead,
        tx_size: opts.tx_size,
        input_rate: opts.rate,
        duration_s: opts.duration_s,
        base_timeout_ms: opts.base_timeout_ms,
        consensus_tps: per(cons_dur),
        end_to_end_tps: e2e_tps,
        end_to_end_bps: e2e_tps * opts.tx_size as f64,
        consensus_latency_ms_mean: mean(&consensus_lat),
        consensus_latency_ms_p50: quantile(&consensus_lat, 0.5),
        consensus_latency_ms_p99: quantile(&consensus_lat, 0.99),
        e2e_latency_ms_mean: mean(&e2e),
        e2e_latency_ms_p50: quantile(&e2e, 0.5),
        e2e_latency_ms_p99: quantile(&e2e, 0.99),
        ack_latency_ms_p50: quantile(&acks, 0.5),
        batch_wait_ms_p50: quantile(&batch_waits, 0.5),
        batch_wait_ms_mean: mean(&batch_waits),
        samples: e2e.len(),
        samples_uncommitted: uncommitted,
        committed_txs,
        node_cpu_us_per_tx: {
            let full: Vec<f64> = node_stats
                .iter()
                .filter(|nd| !nd.dead && !nd.killed && nd.cpu_seconds > 0.0)
                .map(|nd| nd.cpu_seconds)
                .collect();
            if full.is_empty() || committed_txs == 0 {
                0.0
            } else {
                1e6 * full.iter().sum::<f64>() / full.len() as f64 / committed_txs as f64
            }
        },
        blocks,
        blocks_per_sec: if block_window > 0.0 {
            blocks as f64 / block_window
        } else {
            0.0
        },
        timeouts: node_stats.iter().map(|s| s.timeouts).sum(),
        timeout_rounds: node_stats.iter().map(|s| s.timeouts).max().unwrap_or(0),
        sent: reports.iter().map(|r| r.sent).sum(),
        accepted: reports.iter().map(|r| r.accepted).sum(),
        rejected,
        client_missed: reports.iter().map(|r| r.missed).sum(),
        client_late_ticks: reports.iter().map(|r| r.late_ticks).sum(),
        client_max_lag_ms: reports.iter().map(|r| r.max_lag_ms).fold(0.0, f64::max),
        machine_cpu_percent,
        machine_cores: procstat::cores(),
        node_stats,
        failover,
        timeline,
        dir: dir.display().to_string(),
    })
}

#[cfg(test)]
mod tests;
