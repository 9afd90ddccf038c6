//! The faults, one function per scenario, each within its time budget; membership changes are
//! recorded as they are made.

use super::*;

pub(super) async fn sleep_s(s: f64) {
    tokio::time::sleep(Duration::from_secs_f64(s.max(0.0))).await;
}

// ---------------------------------------------------------------------------------------------
// Scenarios

pub(super) async fn scenario_kill(ctx: &Ctx, budget: f64) -> Result<(), Error> {
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

pub(super) async fn scenario_pause(ctx: &Ctx, budget: f64) -> Result<(), Error> {
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
pub(super) fn cut(ctx: &Ctx, a: &[usize], b: &[usize]) -> Result<(), Error> {
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

pub(super) async fn partition_once(
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

pub(super) async fn scenario_partition(ctx: &Ctx, budget: f64) -> Result<(), Error> {
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

pub(super) async fn scenario_loss(ctx: &Ctx, budget: f64) -> Result<(), Error> {
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

pub(super) async fn scenario_restart_all(ctx: &Ctx, budget: f64) -> Result<(), Error> {
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
pub(super) async fn wait_epoch_from(ctx: &Ctx, block: u64, secs: f64) {
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
pub(super) async fn scenario_transfer(ctx: &Ctx, budget: f64) -> Result<(), Error> {
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
pub(super) fn record_change(ctx: &Ctx, c: Change, start: f64) {
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

pub(super) async fn run_scenario(ctx: &Ctx, s: Scenario, budget: f64) -> Result<(), Error> {
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
