//! The `hostile` scenario: while the load runs, a non-member and a power-1 member attack the
//! cluster ([`crate::hostile`]) for most of the phase, and the checks hold the honest nodes to
//! bounds measured over the attack window:
//!
//! - every node (the hostile member's too: it runs a real core) is still running and logged no
//!   panic;
//! - the longest commit gap of the honest cluster is below [`GAP_TIMEOUTS`] base round timeouts;
//! - each honest node used at most [`CPU_SHARE_BOUND`] of one core, its resident memory stayed
//!   at most [`RSS_BOUND_BYTES`] and its home directory grew by at most [`disk_growth_bound`];
//! - every honest node graylisted each hostile peer that sent it gossip to refuse (its log names
//!   the peer) or, for the outsider, no longer has a connection to it when the attack ends;
//! - `dstack_messages_rejected_total{reason}` on the honest nodes grew for reasons naming each
//!   outsider attack that sends something a node must refuse (rounds, records, oversized
//!   frames), and `dstack_evidence_total` names the member when it equivocated;
//! - the attacks really ran (what the outsider published and the member's logged totals).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use super::{Ctx, Fault, lock, parse_labeled, sleep_s};
use crate::error::Error;
use crate::hostile::{self, Attack};
use crate::paths;
use crate::procs::{self, Proc, Spawn};

/// The hostile binary's override variable.
pub const HOSTILE_BIN_ENV: &str = "DSTACK_HOSTILE_BIN";
/// The longest commit gap during the attack, in base round timeouts: a hostile leader's round
/// may time out (one), the next leader's may need the TC first (two); a third is slack for
/// this 2-core machine.
pub const GAP_TIMEOUTS: u64 = 3;
/// Most CPU an honest node may use during the attack, as a share of one core. Four nodes, two
/// attackers, the load and anvil share two cores here, so a node that spends what the attackers
/// ask of it (seconds of leader schedule per forged record, a signature check per junk message,
/// 16 MiB re-encoded per request) is pinned near what it can get (~0.6-0.7); under the same
/// load without attackers a node uses well under a quarter.
pub const CPU_SHARE_BOUND: f64 = 0.5;
/// Most resident memory an honest node may have during the attack: its mempool's 64 MiB of
/// pending bytes, a few in-flight 16 MiB responses, the stores' caches, and room to spare; a
/// node that keeps every pushed batch or every equivocating block in memory passes it in
/// seconds.
pub const RSS_BOUND_BYTES: u64 = 1 << 30;
/// Most an honest node's home directory (data and log) may grow during the attack, besides
/// what the hostile member's share of the batch intake lets in (see [`disk_growth_bound`]):
/// what the load and the committed blocks write meanwhile, the intake's one-second burst, and
/// slack.
pub const DISK_GROWTH_BOUND: u64 = 128 << 20;

/// Most an honest node's home may grow over `secs` of attack by a member whose share of every
/// node's batch intake is `share` bytes per second (`mempool.peer_batch_bytes_per_sec` × its
/// power over the total): what it pushes to this node, and as much again for its batches that
/// other nodes took in and this one fetches when a block names them, plus
/// [`DISK_GROWTH_BOUND`]. The member pushes up to 3 GiB, so a node that stores every valid
/// batch it is pushed goes far past it.
pub fn disk_growth_bound(secs: f64, share: f64) -> u64 {
    DISK_GROWTH_BOUND.saturating_add((2.0 * share * secs.max(0.0)) as u64)
}
/// Seconds measured before the attack (the CPU baseline) and after it (before disarming is
/// checked).
const BASELINE: f64 = 3.0;
const TAIL: f64 = 2.0;
/// The shortest attack.
const MIN_ATTACK: f64 = 10.0;
/// The log line a node writes when gossipsub graylists a peer (`node::net`).
const GRAYLISTED: &str = "peer graylisted";

/// What one process looked like at one moment.
#[derive(Clone, Copy, Debug, Default)]
struct Usage {
    ticks: Option<u64>,
    disk: u64,
}

/// Bytes a directory tree occupies on disk (allocated blocks).
fn disk_usage(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(path) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => disk_usage(&e.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The text of `path` from byte `from` on.
fn log_since(path: &Path, from: u64) -> String {
    let mut out = String::new();
    if let Ok(mut f) = std::fs::File::open(path)
        && f.seek(SeekFrom::Start(from)).is_ok()
    {
        let mut bytes = Vec::new();
        let _ = f.read_to_end(&mut bytes);
        out = String::from_utf8_lossy(&bytes).into_owned();
    }
    out
}

/// The longest time without a new honest commit in `[from, to]`, from the monitor's samples.
fn longest_gap(ctx: &Ctx, honest: &[usize], from: f64, to: f64) -> (f64, u64) {
    let samples = lock(&ctx.samples);
    let mut best = samples
        .iter()
        .filter(|s| honest.contains(&s.node) && s.t <= from)
        .map(|s| s.height)
        .max()
        .unwrap_or(0);
    let start_height = best;
    let mut last = from;
    let mut gap: f64 = 0.0;
    for s in samples
        .iter()
        .filter(|s| honest.contains(&s.node) && s.t > from && s.t <= to)
    {
        if s.height > best {
            best = s.height;
            gap = gap.max(s.t - last);
            last = s.t;
        }
    }
    (gap.max(to - last), best.saturating_sub(start_height))
}

/// The member's totals from its disarm line (`rounds, proposals, batches, bytes`).
fn member_totals(log: &str) -> Option<[u64; 4]> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("hostile member: ") && l.contains("; totals: "))?;
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .filter_map(|s| s.parse().ok())
        .collect();
    let n = nums.len();
    (n >= 4).then(|| [nums[n - 4], nums[n - 3], nums[n - 2], nums[n - 1]])
}

/// Whether a rejection reason (the metric's label) names what an attack sent.
pub fn reason_names(attack: Attack, reason: &str) -> bool {
    let any = |words: &[&str]| words.iter().any(|w| reason.contains(w));
    match attack {
        Attack::Rounds => any(&["proposal", "timeout", "tc", "vote", "round"]),
        Attack::Records => any(&["record", "epoch"]),
        Attack::Oversized => any(&["oversized", "too_large", "size"]),
        Attack::Requests | Attack::Equivocate | Attack::Batches => false,
    }
}

/// The sum over `texts` of each labeled counter of `name`.
fn sum_counters(texts: &[String], name: &str, label: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for t in texts {
        for (k, v) in parse_labeled(t, name, label) {
            *out.entry(k).or_insert(0) += v;
        }
    }
    out
}

fn delta(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| {
            (
                k.clone(),
                v.saturating_sub(before.get(k).copied().unwrap_or(0)),
            )
        })
        .filter(|(_, v)| *v > 0)
        .collect()
}

/// Each honest node's metrics text (a node that does not answer is left out).
async fn scrape(ctx: &Ctx, honest: &[usize]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    for &i in honest {
        out.push(ctx.client.text(&ctx.nodes[i].metrics_url).await.ok());
    }
    out
}

/// Runs the phase: baseline, attack, checks. The report's `hostile` section gets the figures.
pub(super) async fn scenario_hostile(ctx: &Ctx, budget: f64) -> Result<(), Error> {
    let attacks = hostile::attacks_from_env().map_err(Error::Invalid)?;
    let attack_secs = (budget - BASELINE - TAIL).max(MIN_ATTACK);
    let genesis: Vec<usize> = (0..ctx.initial).collect();
    let honest: Vec<usize> = genesis
        .iter()
        .copied()
        .filter(|&i| Some(i) != ctx.byz)
        .collect();
    let (procs_now, homes, p2p, chain, base_timeout_ms) = {
        let tn = ctx.tn.lock().await;
        let procs_now: Vec<Option<Proc>> = genesis
            .iter()
            .map(|&i| tn.state.nodes[i].process.clone())
            .collect();
        let homes: Vec<std::path::PathBuf> = genesis
            .iter()
            .map(|&i| tn.state.nodes[i].home.clone())
            .collect();
        let p2p: Vec<String> = genesis
            .iter()
            .map(|&i| tn.state.nodes[i].p2p_url.clone())
            .collect();
        let chain = tn
            .state
            .chain
            .clone()
            .ok_or_else(|| Error::State("no chain recorded".into()))?;
        let base = chain
            .genesis_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            .and_then(|g| g["base_timeout_ms"].as_u64())
            .unwrap_or(1000);
        (procs_now, homes, p2p, chain, base)
    };
    let member_peer = match ctx.byz {
        Some(b) => ctx
            .client
            .status(&ctx.nodes[b].http_url)
            .await
            .ok()
            .map(|s| s.peer_id),
        None => None,
    };
    let usage = |k: usize| Usage {
        ticks: procs_now[k].as_ref().and_then(procs::cpu_ticks),
        disk: disk_usage(&homes[k]),
    };

    // Baseline.
    let b0: Vec<Usage> = (0..genesis.len()).map(usage).collect();
    let tb0 = Instant::now();
    sleep_s(BASELINE).await;
    let b1: Vec<Usage> = (0..genesis.len()).map(usage).collect();
    let baseline_secs = tb0.elapsed().as_secs_f64();
    let metrics_before = scrape(ctx, &honest).await;
    let log_offsets: Vec<u64> = homes
        .iter()
        .map(|h| std::fs::metadata(h.join("node.log")).map_or(0, |m| m.len()))
        .collect();

    // The attack.
    let member_attacks = attacks.iter().any(|a| !a.by_outsider()) && ctx.byz.is_some();
    let outsider_attacks = attacks.iter().any(|a| a.by_outsider());
    // Graylisting follows rejected gossip: it is required when the outsider sent junk consensus
    // gossip or the member flooded equivocations (requests, frames and batch pushes do not go
    // through gossipsub's score).
    let gossip_attacks = attacks.contains(&Attack::Rounds) || attacks.contains(&Attack::Records);
    let equivocating = member_attacks && attacks.contains(&Attack::Equivocate);
    let start = ctx.now();
    let ta = Instant::now();
    let u0: Vec<Usage> = (0..genesis.len()).map(usage).collect();
    ctx.say(&format!(
        "hostile peers attack for {attack_secs:.0} s ({})",
        attacks
            .iter()
            .map(|a| a.name())
            .collect::<Vec<_>>()
            .join(",")
    ));
    if member_attacks && let Some(b) = ctx.byz {
        ctx.signal(b, Signal::SIGUSR1).await?;
    }
    let outsider_report_path = ctx.opts.dir.join("hostile-outsider.json");
    let _ = std::fs::remove_file(&outsider_report_path);
    let mut outsider = None;
    if outsider_attacks {
        outsider = Some(spawn_outsider(
            ctx,
            &chain,
            (&genesis, &p2p),
            attack_secs,
            &outsider_report_path,
        )?);
    }
    // Sample memory while the attack runs; CPU and disk are read at both ends.
    let mut rss_peak = vec![0u64; genesis.len()];
    while ta.elapsed().as_secs_f64() < attack_secs {
        for (k, p) in procs_now.iter().enumerate() {
            if let Some(r) = p.as_ref().and_then(procs::rss_bytes) {
                rss_peak[k] = rss_peak[k].max(r);
            }
        }
        sleep_s(0.25).await;
    }
    let u1: Vec<Usage> = (0..genesis.len()).map(usage).collect();
    let attack_wall = ta.elapsed().as_secs_f64();
    // The member's share of each node's batch intake (the nodes run the default rate).
    let intake_share = if member_attacks {
        member_intake_share(ctx, &genesis)
    } else {
        0.0
    };
    let disk_bound = disk_growth_bound(attack_wall, intake_share);
    let end = ctx.now();
    if member_attacks && let Some(b) = ctx.byz {
        // The member may have died of the outsider's messages: that is reported below.
        let _ = ctx.signal(b, Signal::SIGUSR2).await;
    }
    let outsider_exit = match outsider.take() {
        Some(o) => Some(reap_outsider(o).await),
        None => None,
    };
    sleep_s(TAIL).await;
    let metrics_after = scrape(ctx, &honest).await;
    ctx.record(Fault {
        kind: "hostile".into(),
        targets: ctx.names(&honest),
        start,
        end,
        detail: format!(
            "outsider and power-1 member: {}",
            attacks
                .iter()
                .map(|a| a.name())
                .collect::<Vec<_>>()
                .join(",")
        ),
        strength: json!({ "seconds": end - start }),
        breaks_quorum: false,
        heals: true,
        cluster_resumed_after: None,
        targets_resumed_after: None,
    });

    // Checks.
    let mut problems = Vec::new();
    let mut nodes = BTreeMap::new();
    let outsider_report: serde_json::Value = std::fs::read_to_string(&outsider_report_path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or(serde_json::Value::Null);
    let outsider_peer = outsider_report["peer_id"].as_str().unwrap_or_default();
    if outsider_attacks && outsider_report.is_null() {
        problems.push(format!(
            "the outsider wrote no report (exit {outsider_exit:?}; see {})",
            ctx.opts.dir.join("hostile-outsider.log").display()
        ));
    }
    let logs: Vec<String> = homes
        .iter()
        .zip(&log_offsets)
        .map(|(h, &o)| log_since(&h.join("node.log"), o))
        .collect();
    for (k, &i) in genesis.iter().enumerate() {
        let name = &ctx.nodes[i].name;
        let role = if Some(i) == ctx.byz {
            "the hostile member"
        } else {
            "honest"
        };
        let alive = procs_now[k].as_ref().is_some_and(procs::is_running);
        if !alive {
            problems.push(format!(
                "{name} ({role}) exited during the hostile attack (log: {})",
                homes[k].join("node.log").display()
            ));
        }
        // The panic line and the message after it ("attempt to add with overflow").
        let mut lines = logs[k].lines();
        let panic = lines
            .by_ref()
            .find(|l| l.contains("panicked"))
            .map(|l| format!("{l} {}", lines.next().unwrap_or_default()));
        if let Some(line) = &panic {
            problems.push(format!("{name} ({role}) panicked: {line}"));
        }
        let mut entry =
            json!({ "role": role, "alive": alive, "panicked": panic.is_some(), "panic": panic });
        if Some(i) != ctx.byz {
            let usage = NodeUsage {
                before: (&b0[k], &b1[k], baseline_secs),
                during: (&u0[k], &u1[k], attack_wall),
                rss_peak: rss_peak[k],
            };
            merge(
                &mut entry,
                check_resources(name, &usage, disk_bound, &mut problems),
            );
            let seen = outsider_report["nodes"]
                .as_array()
                .and_then(|a| a.get(k))
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            let required = Required {
                outsider: gossip_attacks && alive,
                member: equivocating && alive,
            };
            merge(
                &mut entry,
                check_graylisting(
                    name,
                    &logs[k],
                    (outsider_peer, &seen),
                    member_peer.as_deref(),
                    required,
                    &mut problems,
                ),
            );
        }
        nodes.insert(name.clone(), entry);
    }
    let bound = (GAP_TIMEOUTS * base_timeout_ms) as f64 / 1000.0;
    let (gap, commits) = longest_gap(ctx, &honest, start, end);
    if gap >= bound {
        problems.push(format!(
            "the longest commit gap during the attack was {gap:.1} s (bound {bound:.1} s: \
             {GAP_TIMEOUTS} base timeouts of {base_timeout_ms} ms)"
        ));
    }
    // What the honest nodes counted (those that answered both times).
    let (before, answered): (Vec<String>, Vec<String>) = metrics_before
        .into_iter()
        .zip(metrics_after)
        .filter_map(|(b, a)| b.zip(a))
        .unzip();
    let rejected = delta(
        &sum_counters(&answered, "dstack_messages_rejected_total", "reason"),
        &sum_counters(&before, "dstack_messages_rejected_total", "reason"),
    );
    let ignored = delta(
        &sum_counters(&answered, "dstack_messages_ignored_total", "reason"),
        &sum_counters(&before, "dstack_messages_ignored_total", "reason"),
    );
    if !answered.is_empty() {
        problems.extend(unnamed_attacks(&attacks, &rejected));
    }
    let member_addr = ctx.byz.map(|b| ctx.nodes[b].address.to_lowercase());
    let evidence = member_addr.as_ref().map(|a| {
        let after = sum_counters(&answered, "dstack_evidence_total", "signer");
        let before = sum_counters(&before, "dstack_evidence_total", "signer");
        after
            .get(a)
            .copied()
            .unwrap_or(0)
            .saturating_sub(before.get(a).copied().unwrap_or(0))
    });
    // The attacks ran.
    let member_log = ctx
        .byz
        .and_then(|b| genesis.iter().position(|&i| i == b))
        .map(|k| logs[k].clone())
        .unwrap_or_default();
    let totals = member_totals(&member_log);
    let unmet = unmet_strengths(&attacks, member_attacks, totals, &outsider_report);
    if member_attacks
        && attacks.contains(&Attack::Equivocate)
        && evidence == Some(0)
        && !answered.is_empty()
    {
        problems.push(
            "dstack_evidence_total does not name the hostile member although it equivocated".into(),
        );
    }
    for u in &unmet {
        problems.push(format!("minimum hostile strength not met: {u}"));
    }
    for p in &problems {
        ctx.violation(format!("hostile: {p}"));
    }
    *lock(&ctx.hostile) = json!({
        "attacks": attacks.iter().map(|a| a.name()).collect::<Vec<_>>(),
        "attack_seconds": end - start,
        "bounds": {
            "longest_commit_gap_seconds": bound,
            "cpu_share_of_one_core": CPU_SHARE_BOUND,
            "rss_bytes": RSS_BOUND_BYTES,
            "disk_growth_bytes": disk_bound,
            "member_intake_share_bytes_per_sec": intake_share,
        },
        "longest_commit_gap_seconds": gap,
        "commits_during_attack": commits,
        "nodes": nodes,
        "rejected": rejected,
        "ignored": ignored,
        "evidence_against_member": evidence,
        "member": totals.map(|[rounds, proposals, batches, bytes]| json!({
            "peer_id": member_peer,
            "rounds_flooded": rounds,
            "conflicting_proposals": proposals,
            "batches_pushed": batches,
            "batch_bytes_queued": bytes,
        })),
        "outsider": outsider_report,
        "outsider_exit": outsider_exit,
        "violations": problems,
    });
    Ok(())
}

/// One honest node's usage: (start, end, seconds) of the baseline and of the attack, and its
/// peak resident memory during the attack.
struct NodeUsage<'a> {
    before: (&'a Usage, &'a Usage, f64),
    during: (&'a Usage, &'a Usage, f64),
    rss_peak: u64,
}

/// Holds one honest node's CPU, memory and disk growth to their bounds; its figures for the
/// report.
fn check_resources(
    name: &str,
    u: &NodeUsage<'_>,
    disk_bound: u64,
    problems: &mut Vec<String>,
) -> serde_json::Value {
    let cpu = |(a, b, secs): (&Usage, &Usage, f64)| {
        a.ticks
            .zip(b.ticks)
            .map(|(x, y)| y.saturating_sub(x) as f64 / procs::TICKS_PER_SECOND as f64 / secs)
    };
    let share = cpu(u.during);
    let baseline = cpu(u.before);
    let growth = u.during.1.disk.saturating_sub(u.during.0.disk);
    if let Some(s) = share
        && s > CPU_SHARE_BOUND
    {
        problems.push(format!(
            "{name} used {:.0} % of a core during the attack (bound {:.0} %, {:.0} % before it)",
            s * 100.0,
            CPU_SHARE_BOUND * 100.0,
            baseline.unwrap_or(0.0) * 100.0
        ));
    }
    if u.rss_peak > RSS_BOUND_BYTES {
        problems.push(format!(
            "{name}'s resident memory reached {} MiB during the attack (bound {} MiB)",
            u.rss_peak >> 20,
            RSS_BOUND_BYTES >> 20
        ));
    }
    if growth > disk_bound {
        problems.push(format!(
            "{name}'s home grew by {} MiB during the attack (bound {} MiB)",
            growth >> 20,
            disk_bound >> 20
        ));
    }
    json!({
        "cpu_share": share,
        "baseline_cpu_share": baseline,
        "rss_peak_bytes": u.rss_peak,
        "disk_growth_bytes": growth,
    })
}

/// Which hostile peer a node must have graylisted (it sent the node gossip to refuse, and the
/// node was alive to see it).
struct Required {
    outsider: bool,
    member: bool,
}

/// Holds one honest node to graylisting the hostile peers (or, for the outsider, having
/// dropped its connection), by its log since the attack and what the outsider saw of it
/// (`seen`); the figures for the report.
fn check_graylisting(
    name: &str,
    log: &str,
    (outsider_peer, seen): (&str, &serde_json::Value),
    member_peer: Option<&str>,
    required: Required,
    problems: &mut Vec<String>,
) -> serde_json::Value {
    let graylisted = |peer: &str| {
        !peer.is_empty()
            && log
                .lines()
                .any(|l| l.contains(GRAYLISTED) && l.contains(peer))
    };
    let outsider_gray = graylisted(outsider_peer);
    let outsider_gone = seen["ever_connected"] == true && seen["connected_at_end"] == false;
    if required.outsider && !outsider_gray && !outsider_gone {
        problems.push(format!(
            "{name} neither graylisted the outsider {outsider_peer} nor dropped its connection"
        ));
    }
    let member_gray = member_peer.is_some_and(graylisted);
    if required.member && !member_gray {
        problems.push(format!(
            "{name} never graylisted the hostile member {}",
            member_peer.unwrap_or("(unknown PeerId)")
        ));
    }
    json!({
        "graylisted_outsider": outsider_gray,
        "outsider_connected_at_end": seen["connected_at_end"].clone(),
        "gossip_to_outsider": seen["gossip_received"].clone(),
        "graylisted_member": member_gray,
    })
}

/// Adds the fields of `more` (an object) to `entry` (an object).
fn merge(entry: &mut serde_json::Value, more: serde_json::Value) {
    if let (Some(e), serde_json::Value::Object(m)) = (entry.as_object_mut(), more) {
        e.extend(m);
    }
}

/// Starts the outsider against the genesis nodes (`p2p` their connection URLs) for `secs`,
/// writing its report to `report`.
fn spawn_outsider(
    ctx: &Ctx,
    chain: &crate::state::ChainInfo,
    (genesis, p2p): (&[usize], &[String]),
    secs: f64,
    report: &Path,
) -> Result<(std::process::Child, Proc), Error> {
    let bin = paths::sibling_bin(
        "dstack-node-hostile",
        HOSTILE_BIN_ENV,
        "cargo build --release -p testnet --bins",
    )?;
    let mut args = vec![
        "outsider".to_string(),
        "--chain-id".into(),
        chain.chain_id.to_string(),
        "--contract".into(),
        chain.contract.to_string(),
        "--seconds".into(),
        format!("{secs}"),
        "--report".into(),
        report.display().to_string(),
    ];
    for (k, &i) in genesis.iter().enumerate() {
        args.push("--node".into());
        args.push(format!("{},{}", p2p[k], ctx.nodes[i].http_url));
    }
    procs::spawn(Spawn {
        name: "hostile-outsider",
        program: &bin,
        args,
        env: Vec::new(),
        clear_env_prefixes: &[],
        log: ctx.opts.dir.join("hostile-outsider.log"),
        netns: None,
    })
}

/// Waits (at most 15 s) for the outsider to exit after its attack, stopping it otherwise;
/// its exit status, if it exited by itself.
async fn reap_outsider((mut child, proc): (std::process::Child, Proc)) -> Option<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return Some(st.to_string()),
            Ok(None) if Instant::now() < deadline => sleep_s(0.1).await,
            _ => {
                let _ = procs::stop(&proc, Duration::from_secs(2));
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// The hostile member's share of each node's batch intake in bytes per second: the nodes'
/// default `mempool.peer_batch_bytes_per_sec` times its power over the genesis set's.
fn member_intake_share(ctx: &Ctx, genesis: &[usize]) -> f64 {
    let Some(b) = ctx.byz else {
        return 0.0;
    };
    let total: u64 = genesis.iter().map(|&i| ctx.nodes[i].power).sum();
    node::config::Config::default()
        .mempool
        .peer_batch_bytes_per_sec as f64
        * ctx.nodes[b].power as f64
        / total.max(1) as f64
}

/// The outsider's attacks that send something a node must refuse, but that no rejection
/// reason the honest nodes counted names.
fn unnamed_attacks(attacks: &BTreeSet<Attack>, rejected: &BTreeMap<String, u64>) -> Vec<String> {
    attacks
        .iter()
        .filter(|a| a.by_outsider() && !matches!(a, Attack::Requests))
        .filter(|a| !rejected.keys().any(|r| reason_names(**a, r)))
        .map(|a| {
            format!(
                "no honest node counted a rejection naming the outsider's `{}` attack \
                 (dstack_messages_rejected_total grew for {rejected:?})",
                a.name()
            )
        })
        .collect()
}

/// What of the attacks did not run: the member's logged `totals` and the outsider's report.
fn unmet_strengths(
    attacks: &BTreeSet<Attack>,
    member_attacks: bool,
    totals: Option<[u64; 4]>,
    outsider_report: &serde_json::Value,
) -> Vec<String> {
    let mut unmet = Vec::new();
    if member_attacks {
        match totals {
            None => unmet.push("the hostile member logged no totals (did it run?)".to_string()),
            Some([rounds, proposals, _, bytes]) => {
                if attacks.contains(&Attack::Equivocate) && (rounds == 0 || proposals == 0) {
                    unmet.push("the hostile member never flooded a round it led".into());
                }
                if attacks.contains(&Attack::Batches) && bytes == 0 {
                    unmet.push("the hostile member pushed no batch".into());
                }
            }
        }
    }
    if !outsider_report.is_null() {
        let published = |k: &str| outsider_report["published"][k].as_u64().unwrap_or(0);
        let need: &[(Attack, &str)] = &[
            (Attack::Rounds, "tc"),
            (Attack::Records, "record_huge_set"),
            (Attack::Oversized, "oversized_gossip"),
        ];
        for (a, kind) in need {
            if attacks.contains(a) && published(kind) == 0 {
                unmet.push(format!("the outsider published no {kind}"));
            }
        }
        let sent: u64 = outsider_report["requests"]["sent"]
            .as_object()
            .map(|o| o.values().filter_map(|v| v.as_u64()).sum())
            .unwrap_or(0);
        if attacks.contains(&Attack::Requests) && sent == 0 {
            unmet.push("the outsider sent no request".into());
        }
    }
    unmet
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_name_attacks() {
        assert!(reason_names(Attack::Rounds, "invalid_tc"));
        assert!(reason_names(Attack::Rounds, "invalid_proposal"));
        assert!(reason_names(Attack::Records, "invalid_epoch_change_record"));
        assert!(reason_names(Attack::Oversized, "oversized"));
        assert!(!reason_names(Attack::Oversized, "malformed"));
        assert!(!reason_names(Attack::Records, "oversized"));
    }

    #[test]
    fn member_totals_parse() {
        let log = "x\nhostile member: armed; totals: 1 rounds flooded, 2 conflicting proposals, 3 \
                   batches (4 bytes) queued\nhostile member: disarmed; totals: 3 rounds flooded, 6000 conflicting \
                   proposals, 812 batches (2436000000 bytes) queued\n";
        assert_eq!(member_totals(log), Some([3, 6000, 812, 2_436_000_000]));
        assert_eq!(member_totals("nothing"), None);
    }
}
