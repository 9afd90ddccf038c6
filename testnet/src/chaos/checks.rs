//! The checks after the run: chains are prefixes of one another, every accepted transaction
//! committed once, evidence names only the equivocator, epochs follow membership, the faults
//! were strong enough and the cluster recovered in time.

use super::*;

/// After the last membership change: waits (at most [`EPOCH_BOUND`], only with epoch checks)
/// until every honest node is in an epoch that includes it.
pub(super) async fn wait_all_epochs(ctx: &Ctx) {
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
pub(super) async fn check_membership(ctx: &Ctx) -> serde_json::Value {
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
pub(super) async fn converge_and_check_txs(ctx: &Ctx, run: &LoadRun) -> serde_json::Value {
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
pub(super) async fn check_chains(ctx: &Ctx) -> serde_json::Value {
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

pub(super) async fn check_evidence(ctx: &Ctx) -> BTreeMap<String, u64> {
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

pub(super) fn check_strengths_and_recovery(
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
