//! The state a chaos run shares between its faults, its monitor and its checks: the testnet,
//! the samples of every node, the changes made and the faults applied.

use super::*;

#[derive(Clone, Debug)]
pub(super) struct Sample {
    pub(super) t: f64,
    pub(super) node: usize,
    pub(super) height: u64,
    pub(super) epoch: u64,
    pub(super) epoch_chain_block: u64,
}

#[derive(Clone, Debug)]
pub(super) struct CachedBlock {
    pub(super) id: String,
    pub(super) parent: String,
    pub(super) epoch: u64,
    pub(super) txs: Vec<String>,
}

pub(super) struct NodeView {
    pub(super) name: String,
    pub(super) http_url: String,
    pub(super) metrics_url: String,
    pub(super) address: String,
    pub(super) power: u64,
    pub(super) netns: String,
    pub(super) ip: String,
}

pub(super) struct Ctx {
    pub(super) t0: Instant,
    pub(super) tn: tokio::sync::Mutex<Testnet>,
    /// The genesis nodes, then the slots prepared for nodes added during the run.
    pub(super) nodes: Vec<NodeView>,
    /// How many of `nodes` are the genesis set.
    pub(super) initial: usize,
    /// Added nodes that joined (by index).
    pub(super) joined: Mutex<BTreeSet<usize>>,
    /// Membership changes made during the run.
    pub(super) changes: Mutex<Vec<Change>>,
    pub(super) byz: Option<usize>,
    pub(super) samples: Mutex<Vec<Sample>>,
    pub(super) faults: Mutex<Vec<Fault>>,
    /// (node, seconds) of every SIGKILL.
    pub(super) kills: Mutex<Vec<(usize, f64)>>,
    /// Nodes restarted at least once.
    pub(super) restarted: Mutex<BTreeSet<usize>>,
    pub(super) chains: Mutex<Vec<Vec<CachedBlock>>>,
    pub(super) violations: Mutex<Vec<String>>,
    /// The `hostile` phase's figures (null when it did not run).
    pub(super) hostile: Mutex<serde_json::Value>,
    pub(super) client: Client,
    pub(super) rng: Mutex<StdRng>,
    pub(super) opts: ChaosOptions,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Ctx {
    pub(super) fn now(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    pub(super) fn say(&self, line: &str) {
        eprintln!("[{:7.1}s] {line}", self.now());
    }

    pub(super) fn violation(&self, v: String) {
        self.say(&format!("VIOLATION: {v}"));
        lock(&self.violations).push(v);
    }

    /// Every node running now: the genesis set and the nodes added during the run.
    pub(super) fn active(&self) -> Vec<usize> {
        let joined = lock(&self.joined).clone();
        (0..self.initial).chain(joined).collect()
    }

    /// Nodes prepared to join (running as observers) that have not joined yet.
    pub(super) fn waiting(&self) -> Vec<usize> {
        let joined = lock(&self.joined).clone();
        (self.initial..self.nodes.len())
            .filter(|i| !joined.contains(i))
            .collect()
    }

    /// The nodes the checks hold to: every active node but the equivocator (an added node only
    /// when epoch checks are required: without live membership it never becomes a member and
    /// need not follow the chain).
    pub(super) fn honest(&self) -> Vec<usize> {
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
    pub(super) fn max_epoch(&self) -> u64 {
        let samples = lock(&self.samples);
        self.honest()
            .iter()
            .filter_map(|&i| samples.iter().rev().find(|s| s.node == i).map(|s| s.epoch))
            .max()
            .unwrap_or(0)
    }

    pub(super) fn random_below(&self, n: usize) -> usize {
        lock(&self.rng).gen_range(0..n.max(1))
    }

    pub(super) fn last_height(&self, i: usize) -> Option<u64> {
        lock(&self.samples)
            .iter()
            .rev()
            .find(|s| s.node == i)
            .map(|s| s.height)
    }

    pub(super) fn max_height(&self) -> u64 {
        let honest = self.honest();
        honest
            .iter()
            .filter_map(|&i| self.last_height(i))
            .max()
            .unwrap_or(0)
    }

    pub(super) async fn signal(&self, i: usize, sig: Signal) -> Result<(), Error> {
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

    pub(super) async fn sigkill(&self, i: usize) -> Result<(), Error> {
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

    pub(super) async fn restart(&self, i: usize) -> Result<(), Error> {
        let mut tn = self.tn.lock().await;
        tn.start_node(i, &self.opts.node_log)?;
        tn.state.save()?;
        lock(&self.restarted).insert(i);
        Ok(())
    }

    pub(super) fn record(&self, f: Fault) {
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
    pub(super) async fn current_leader(&self) -> Option<usize> {
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
    pub(super) async fn wait_node_above(&self, i: usize, above: u64, within: Duration) -> bool {
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

    pub(super) fn names(&self, idx: &[usize]) -> Vec<String> {
        idx.iter().map(|&i| self.nodes[i].name.clone()).collect()
    }

    pub(super) async fn heal_network(&self) -> Result<(), Error> {
        for n in &self.nodes {
            netns::iptables(&n.netns, &["-F", "INPUT"])?;
            netns::iptables(&n.netns, &["-F", "OUTPUT"])?;
        }
        Ok(())
    }
}
