//! The report: its JSON shape, the metrics it parses, the files it writes and the summary.

use super::*;

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

pub(super) fn write_outputs(ctx: &Ctx, report: &ChaosReport) -> Result<(), Error> {
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
