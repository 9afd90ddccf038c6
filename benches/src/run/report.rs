//! What a run reports: per node, the failover, the timeline, the whole run, and its summary.

use super::*;

/// One node's resource use during the load.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NodeReport {
    /// `node0`, ...
    pub name: String,
    /// Voting power.
    pub power: u64,
    /// Crashed before the load (`--dead`).
    pub dead: bool,
    /// SIGKILLed as the leader during the load.
    pub killed: bool,
    /// CPU used during the load window, percent of one core.
    pub cpu_percent: f64,
    /// Peak RSS (`VmHWM`), MiB.
    pub peak_rss_mib: f64,
    /// CPU seconds it used from the load start until the backlog was committed.
    #[serde(default)]
    pub cpu_seconds: f64,
    /// Round timeouts it signed during the window.
    pub timeouts: u64,
    /// Its committed height at the end.
    pub height: u64,
}

/// The leader-kill measurement.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Failover {
    /// Seconds into the load when the leader was killed.
    pub kill_at_s: f64,
    /// The node killed.
    pub node: String,
    /// From the kill to the first commit after it (ms).
    pub first_commit_after_kill_ms: f64,
    /// The longest gap between consecutive commits in the 10 s after the kill, counted from
    /// the kill for the first one (ms): how long commits stopped at worst.
    pub max_commit_gap_ms: f64,
}

/// One second of the run's timeline (from the start of the load).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TimelinePoint {
    /// Seconds since the load started (bin start).
    pub t_s: f64,
    /// Highest committed height at the end of the bin.
    pub height: u64,
    /// Transactions committed in the bin.
    pub tps: f64,
}

/// The result of a run (the JSON `--json` writes).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunReport {
    /// Validators.
    pub nodes: usize,
    /// Powers.
    pub powers: Vec<u64>,
    /// Crashed validators.
    pub dead: usize,
    /// Transaction size.
    pub tx_size: usize,
    /// Offered load (tx/s).
    pub input_rate: f64,
    /// Load duration (s).
    pub duration_s: f64,
    /// Base round timeout (ms).
    pub base_timeout_ms: u64,
    /// Committed transactions / (last commit − first proposal after the load started).
    pub consensus_tps: f64,
    /// Committed transactions / (last commit − the clients' start).
    pub end_to_end_tps: f64,
    /// Committed bytes per second, end to end.
    pub end_to_end_bps: f64,
    /// Mean of (commit time − proposal time) over the blocks committed in the window (ms).
    pub consensus_latency_ms_mean: f64,
    /// Median consensus latency (ms).
    pub consensus_latency_ms_p50: f64,
    /// 99th percentile consensus latency (ms).
    pub consensus_latency_ms_p99: f64,
    /// Mean of (commit time − client send time) over sampled transactions (ms).
    pub e2e_latency_ms_mean: f64,
    /// Median end-to-end latency (ms).
    pub e2e_latency_ms_p50: f64,
    /// 99th percentile end-to-end latency (ms).
    pub e2e_latency_ms_p99: f64,
    /// Median time from a sample's send to its node's answer (stored with fsync), ms: the
    /// ingest part of the end-to-end latency.
    pub ack_latency_ms_p50: f64,
    /// Median time a batch waited at its leader, from proposable (sealed or received) to its
    /// first proposal, ms.
    pub batch_wait_ms_p50: f64,
    /// Mean of the same, ms.
    pub batch_wait_ms_mean: f64,
    /// Sampled transactions found committed.
    pub samples: usize,
    /// Sampled transactions not found committed.
    pub samples_uncommitted: usize,
    /// Transactions committed in the window.
    pub committed_txs: u64,
    /// CPU a node spent per committed transaction, µs: its CPU time from the load start until
    /// the backlog was committed over the transactions committed, averaged over the nodes that
    /// ran throughout. Unlike TPS it barely moves when other processes share the machine, so it
    /// compares builds on a busy machine.
    #[serde(default)]
    pub node_cpu_us_per_tx: f64,
    /// Blocks committed in the window.
    pub blocks: u64,
    /// Blocks per second in the window.
    pub blocks_per_sec: f64,
    /// Round timeouts signed in the window (sum over nodes).
    pub timeouts: u64,
    /// Timed-out rounds in the window (the largest count of one node).
    pub timeout_rounds: u64,
    /// Transactions the clients sent.
    pub sent: u64,
    /// Transactions accepted by the nodes.
    pub accepted: u64,
    /// Refusals by reason.
    pub rejected: BTreeMap<String, u64>,
    /// Transactions the clients could not send on time (open loop missed).
    pub client_missed: u64,
    /// Client ticks that started late.
    pub client_late_ticks: u64,
    /// Worst client tick lateness (ms).
    pub client_max_lag_ms: f64,
    /// The whole machine's busy CPU during the load, percent of one core (all processes,
    /// other users' too: a figure well above the nodes' and clients' sum means the run shared
    /// the machine).
    pub machine_cpu_percent: f64,
    /// The machine's logical CPUs.
    pub machine_cores: usize,
    /// Per node.
    pub node_stats: Vec<NodeReport>,
    /// The leader kill, when asked for.
    pub failover: Option<Failover>,
    /// Height and TPS per second from the load start.
    pub timeline: Vec<TimelinePoint>,
    /// The run directory (logs).
    pub dir: String,
}

/// A human summary of a report.
pub fn summary(r: &RunReport) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "n={} dead={} tx={} B input={:.0} tx/s duration={} s base timeout={} ms\n",
        r.nodes, r.dead, r.tx_size, r.input_rate, r.duration_s, r.base_timeout_ms
    ));
    s.push_str(&format!(
        " consensus TPS {:>9.0}   latency mean {:.1} ms p50 {:.1} ms p99 {:.1} ms\n",
        r.consensus_tps,
        r.consensus_latency_ms_mean,
        r.consensus_latency_ms_p50,
        r.consensus_latency_ms_p99
    ));
    s.push_str(&format!(
        " end-to-end TPS {:>8.0}   latency mean {:.1} ms p50 {:.1} ms p99 {:.1} ms ({} samples, {} uncommitted)\n",
        r.end_to_end_tps,
        r.e2e_latency_ms_mean,
        r.e2e_latency_ms_p50,
        r.e2e_latency_ms_p99,
        r.samples,
        r.samples_uncommitted
    ));
    s.push_str(&format!(
        " ingest answer (stored with fsync) p50 {:.1} ms; batches wait for a proposal p50 {:.1} ms, mean {:.1} ms\n",
        r.ack_latency_ms_p50, r.batch_wait_ms_p50, r.batch_wait_ms_mean
    ));
    s.push_str(&format!(
        " committed {} txs in {} blocks ({:.1} blocks/s), timeouts {} (rounds {}); node CPU {:.1} µs per tx\n",
        r.committed_txs, r.blocks, r.blocks_per_sec, r.timeouts, r.timeout_rounds, r.node_cpu_us_per_tx
    ));
    s.push_str(&format!(
        " clients: sent {} accepted {} rejected {:?} missed {} late ticks {} max lag {:.1} ms\n",
        r.sent, r.accepted, r.rejected, r.client_missed, r.client_late_ticks, r.client_max_lag_ms
    ));
    s.push_str(&format!(
        " machine CPU during the load: {:.0}% of {} cores x 100%\n",
        r.machine_cpu_percent, r.machine_cores
    ));
    for nd in &r.node_stats {
        s.push_str(&format!(
            "  {:<7} power {} {:<7} cpu {:>5.1}% peak RSS {:>6.1} MiB timeouts {} height {}\n",
            nd.name,
            nd.power,
            if nd.dead {
                "dead"
            } else if nd.killed {
                "killed"
            } else {
                "live"
            },
            nd.cpu_percent,
            nd.peak_rss_mib,
            nd.timeouts,
            nd.height
        ));
    }
    if let Some(f) = &r.failover {
        s.push_str(&format!(
            " failover: killed {} at {:.1} s; first commit after {:.0} ms; longest commit gap {:.0} ms\n",
            f.node, f.kill_at_s, f.first_commit_after_kill_ms, f.max_commit_gap_ms
        ));
    }
    s
}
