//! What runs beside the faults: the sampler of every node's status and the follower of their
//! committed chains, and the recovery times read from them.

use super::*;

pub(super) async fn monitor(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
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
pub(super) async fn follow_once(ctx: &Ctx, client: &Client, i: usize, limit: u64) -> u64 {
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

pub(super) async fn follower(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
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

pub(super) fn analyse_recovery(ctx: &Ctx) {
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
