//! `bench sweep`: a grid of runs (committee sizes × input rates) plus a leader-kill run, with
//! every report in `sweep.json` and the SVG plots beside it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{BenchError, io};
use crate::plot;
use crate::run::{self, RunOptions, RunReport};

/// The grid.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SweepOptions {
    /// Committee sizes.
    pub nodes: Vec<usize>,
    /// Input rates (tx/s).
    pub rates: Vec<f64>,
    /// Transaction size.
    pub tx_size: usize,
    /// Duration of each run (s).
    pub duration_s: f64,
    /// Where the runs, `sweep.json` and the plots go.
    pub out: PathBuf,
    /// Input rate of the leader-kill run at n = 4 (None: no failover run).
    pub failover_rate: Option<f64>,
    /// Base round timeout (ms).
    pub base_timeout_ms: u64,
}

/// Runs the grid and draws the plots; a failed run is reported and skipped.
pub async fn sweep(opts: &SweepOptions) -> Result<Vec<RunReport>, BenchError> {
    std::fs::create_dir_all(&opts.out).map_err(io(format!("creating {}", opts.out.display())))?;
    let mut reports = Vec::new();
    let json = opts.out.join("sweep.json");
    for &n in &opts.nodes {
        for &rate in &opts.rates {
            let mut o = RunOptions::new(opts.out.join("run"));
            o.nodes = n;
            o.powers = vec![1; n];
            o.rate = rate;
            o.tx_size = opts.tx_size;
            o.duration_s = opts.duration_s;
            o.base_timeout_ms = opts.base_timeout_ms;
            o.grace_s = 20.0;
            eprintln!("[sweep] n = {n}, {rate} tx/s");
            match run::run(&o).await {
                Ok(r) => {
                    eprint!("{}", run::summary(&r));
                    reports.push(r);
                }
                Err(e) => eprintln!("[sweep] n = {n}, {rate} tx/s failed: {e}"),
            }
            write_json(&json, &reports)?;
        }
    }
    if let Some(rate) = opts.failover_rate {
        let mut o = RunOptions::new(opts.out.join("run"));
        o.rate = rate;
        o.tx_size = opts.tx_size;
        o.duration_s = opts.duration_s.max(8.0);
        o.kill_leader_at_s = Some(o.duration_s / 2.0);
        o.base_timeout_ms = opts.base_timeout_ms;
        eprintln!("[sweep] failover: n = 4, {rate} tx/s, leader SIGKILL");
        match run::run(&o).await {
            Ok(r) => {
                eprint!("{}", run::summary(&r));
                reports.push(r);
            }
            Err(e) => eprintln!("[sweep] failover run failed: {e}"),
        }
        write_json(&json, &reports)?;
    }
    draw(&reports, &opts.out)?;
    Ok(reports)
}

fn write_json(path: &Path, reports: &[RunReport]) -> Result<(), BenchError> {
    let text =
        serde_json::to_string_pretty(reports).map_err(|e| BenchError::Invalid(e.to_string()))?;
    std::fs::write(path, text).map_err(io(format!("writing {}", path.display())))
}

/// Draws the three plots of a sweep's reports into `dir`.
pub fn draw(reports: &[RunReport], dir: &Path) -> Result<(), BenchError> {
    plot::latency_vs_throughput(reports, &dir.join("latency_vs_throughput.svg"))?;
    plot::throughput_vs_committee(reports, &dir.join("throughput_vs_committee.svg"))?;
    if let Some(f) = reports.iter().find(|r| r.failover.is_some()) {
        plot::failover_timeline(f, &dir.join("failover_timeline.svg"))?;
    }
    Ok(())
}
