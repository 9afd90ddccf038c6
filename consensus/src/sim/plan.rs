//! The disturbances of a run: the plan each scenario draws from its seed (partitions, crashes,
//! delays, membership changes, Byzantine nodes) and the director that applies it in phases.

use super::*;

#[derive(Clone, Debug)]
pub(super) enum Disturbance {
    Partition {
        groups: Vec<usize>,
        duration: u64,
    },
    Crash {
        node: usize,
        down_for: u64,
    },
    /// Write a new set to the chain; a flicker reverts it after `revert_after` blocks.
    SetChange {
        members: Vec<MemberInfo>,
        revert_after: Option<u64>,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Phase {
    Idle,
    Scheduled,
    Partitioned,
    CrashedWaiting { node: usize, down_for: u64 },
    AwaitEpoch { target: Vec<MemberInfo>, since: u64 },
}

pub(super) struct Window {
    pub(super) label: &'static str,
    pub(super) start_round: u64,
    pub(super) heights: BTreeMap<usize, u64>,
}

impl Sim {
    pub(super) fn make_plan(&mut self, powers: &[u64]) -> VecDeque<Disturbance> {
        let n = powers.len();
        let mut plan = VecDeque::new();
        let k = self.rng.gen_range(1..=3);
        if self.cfg.scenario.has_epochs() {
            return self.make_epoch_plan(powers);
        }
        match self.cfg.scenario {
            Scenario::Honest | Scenario::Byzantine | Scenario::Reconfig | Scenario::Mixed => {}
            Scenario::Twins => {
                // Partitions that put the twins on different sides (set after the hosts exist).
                for _ in 0..k + 1 {
                    let groups: Vec<usize> = (0..n + 1).map(|_| self.rng.gen_range(0..2)).collect();
                    let duration = self.rng.gen_range(500..6_000);
                    plan.push_back(Disturbance::Partition { groups, duration });
                }
            }
            Scenario::Partition => {
                for _ in 0..k {
                    let parts = self.rng.gen_range(2..=3.min(n.max(2)));
                    let groups: Vec<usize> = if self.rng.gen_bool(0.3) {
                        // Isolate one node.
                        let x = self.rng.gen_range(0..n);
                        (0..n).map(|i| usize::from(i == x)).collect()
                    } else {
                        (0..n).map(|_| self.rng.gen_range(0..parts)).collect()
                    };
                    let duration = self.rng.gen_range(200..10_000);
                    plan.push_back(Disturbance::Partition { groups, duration });
                }
            }
            Scenario::Crash => {
                let p: u64 = powers.iter().sum();
                let q = 2 * p / 3 + 1;
                let crashable: Vec<usize> = (0..n).filter(|&i| powers[i] <= p - q).collect();
                if !crashable.is_empty() {
                    for _ in 0..k {
                        let node = crashable[self.rng.gen_range(0..crashable.len())];
                        let down_for = self.rng.gen_range(0..8_000);
                        plan.push_back(Disturbance::Crash { node, down_for });
                    }
                }
            }
        }
        plan
    }

    /// Set changes (and, in `mixed`, partitions and crashes between them), each keeping the
    /// Byzantine power at most P − Q of its set.
    pub(super) fn make_epoch_plan(&mut self, powers: &[u64]) -> VecDeque<Disturbance> {
        let n = powers.len();
        let mut plan = VecDeque::new();
        let mut cur = self.set.member_infos();
        let infos: Vec<MemberInfo> = self
            .hosts
            .iter()
            .enumerate()
            .filter(|(i, h)| *i >= n && !h.twin)
            .map(|(_, h)| {
                let s = testkit::signer(self.cfg.scheme, h.seed);
                MemberInfo {
                    address: s.address(),
                    public_key: s.public_key(),
                    power: 1,
                }
            })
            .collect();
        let byz: Vec<Address> = self
            .hosts
            .iter()
            .filter(|h| h.byz.is_some())
            .map(|h| h.address)
            .collect();
        let ok = |m: &[MemberInfo]| {
            let p: u64 = m.iter().map(|x| x.power).sum();
            let b: u64 = m
                .iter()
                .filter(|x| byz.contains(&x.address))
                .map(|x| x.power)
                .sum();
            m.len() >= 2 && p > 0 && b <= p - (2 * p / 3 + 1)
        };
        let changes = self.rng.gen_range(2..=4);
        for c in 0..changes {
            let mut next = cur.clone();
            let kind = if c == 0 { 3 } else { self.rng.gen_range(0..4) };
            let mut removed = None;
            match kind {
                0 => {
                    let i = self.rng.gen_range(0..next.len());
                    next[i].power = next[i].power % 3 + 1;
                }
                1 if next.len() > 2 => {
                    let i = self.rng.gen_range(0..next.len());
                    removed = Some(next.remove(i).address);
                }
                2 | 1 => {
                    if let Some(add) = infos
                        .iter()
                        .find(|x| !next.iter().any(|m| m.address == x.address))
                    {
                        let mut add = add.clone();
                        add.power = self.rng.gen_range(1..=3);
                        next.push(add);
                        next.sort_by_key(|m| m.address);
                    } else {
                        let i = self.rng.gen_range(0..next.len());
                        next[i].power = next[i].power % 3 + 1;
                    }
                }
                _ => {
                    // Flicker: a power change that the chain reverts after 1-4 blocks.
                    let i = self.rng.gen_range(0..next.len());
                    next[i].power = next[i].power % 3 + 1;
                    if ok(&next) {
                        let revert_after = Some(self.rng.gen_range(1..=4));
                        plan.push_back(Disturbance::SetChange {
                            members: next,
                            revert_after,
                        });
                    }
                    continue;
                }
            }
            if next == cur || !ok(&next) {
                continue;
            }
            if let Some(a) = removed
                && let Some(j) = self.hosts.iter().position(|h| h.address == a)
                && self.hosts[j].byz.is_none()
                && self.rng.gen_bool(0.5)
            {
                // The removed node goes silent at the change, if the old epoch can do without
                // it (its power plus the Byzantine power at most P − Q of the old set).
                let p: u64 = cur.iter().map(|x| x.power).sum();
                let b: u64 = cur
                    .iter()
                    .filter(|x| byz.contains(&x.address) || x.address == a)
                    .map(|x| x.power)
                    .sum();
                if b <= p - (2 * p / 3 + 1) {
                    self.hosts[j].silent_on_removal = true;
                }
            }
            plan.push_back(Disturbance::SetChange {
                members: next.clone(),
                revert_after: None,
            });
            cur = next;
            if self.cfg.scenario == Scenario::Mixed {
                let k = self.rng.gen_range(0..=1);
                for _ in 0..k {
                    if self.rng.gen_bool(0.5) {
                        let groups: Vec<usize> = (0..self.hosts.len())
                            .map(|_| self.rng.gen_range(0..2))
                            .collect();
                        let duration = self.rng.gen_range(200..6_000);
                        plan.push_back(Disturbance::Partition { groups, duration });
                    } else {
                        // Crash a node of power ≤ P − Q of the current set (or an observer).
                        let p: u64 = cur.iter().map(|x| x.power).sum();
                        let bp: u64 = cur
                            .iter()
                            .filter(|x| byz.contains(&x.address))
                            .map(|x| x.power)
                            .sum();
                        let budget = (p - (2 * p / 3 + 1)).saturating_sub(bp);
                        let cands: Vec<usize> = (0..self.hosts.len())
                            .filter(|&j| {
                                self.hosts[j].byz.is_none() && !self.hosts[j].silent_on_removal
                            })
                            .filter(|&j| {
                                cur.iter()
                                    .find(|m| m.address == self.hosts[j].address)
                                    .is_none_or(|m| m.power <= budget)
                            })
                            .collect();
                        if !cands.is_empty() {
                            let node = cands[self.rng.gen_range(0..cands.len())];
                            let down_for = self.rng.gen_range(0..6_000);
                            plan.push_back(Disturbance::Crash { node, down_for });
                        }
                    }
                }
            }
        }
        plan
    }

    /// Picks Byzantine nodes of total power at most P − Q.
    pub(super) fn make_byzantine(&mut self, powers: &[u64]) {
        // A third of the epoch runs have no Byzantine node, so removed members can go silent
        // (the old epoch must do without them).
        if self.cfg.scenario.has_epochs() && self.rng.gen_bool(0.33) {
            return;
        }
        let p: u64 = powers.iter().sum();
        let budget = p - (2 * p / 3 + 1);
        let mut order: Vec<usize> = (0..powers.len()).collect();
        for k in (1..order.len()).rev() {
            order.swap(k, self.rng.gen_range(0..=k));
        }
        let mut used = 0;
        for i in order {
            if used + powers[i] <= budget {
                used += powers[i];
                let signer = testkit::signer(self.cfg.scheme, self.hosts[i].seed);
                let outsider =
                    testkit::signer(self.cfg.scheme, self.cfg.seed ^ 0xbad0_0000 ^ i as u64);
                let mut b = Byzantine::draw(&mut self.rng, signer, outsider);
                if self.cfg.scenario.has_epochs() {
                    b.stale_reconfigure = self.rng.gen_bool(0.7);
                    b.old_epoch_qc = self.rng.gen_bool(0.5);
                }
                self.hosts[i].byz = Some(b);
                let d = self.rng.gen_range(50..500);
                self.push(d, Ev::Attack { node: i });
            }
        }
    }

    /// A Reconfigure a Byzantine leader can propose to test the voters: a stale one (a set the
    /// chain held after the epoch's chain block but more than W blocks below the pinned head)
    /// or, failing that, a rolled-back one (an invented block hash at the pinned head).
    pub(super) fn bad_reconfigure(&mut self, i: usize) -> Option<Reconfigure> {
        let chain = self.chain.as_ref()?;
        let core = self.hosts[i].core.as_ref()?;
        let ctx = core.context();
        let cur = ctx.set().member_infos();
        let pinned = chain.pinned(self.now);
        let limit = pinned.saturating_sub(LAG_W + 1);
        let mut stale = None;
        for (k, (start, m)) in chain.changes.iter().enumerate() {
            let end = chain.changes.get(k + 1).map_or(u64::MAX, |c| c.0 - 1);
            let top = end.min(limit);
            if *m != cur && top >= *start && top > ctx.chain_block() {
                stale = Some((top, m.clone()));
            }
        }
        let (number, members, hash) = match stale {
            Some((n, m)) => (n, m, chain.hash(n)),
            None => {
                let mut m = cur.clone();
                let k = self.rng.gen_range(0..m.len());
                m[k].power += 1;
                let mut h = chain.hash(pinned);
                h[0] ^= 0xff;
                (pinned, m, h)
            }
        };
        Some(Reconfigure {
            chain_block_number: number,
            chain_block_hash: hash,
            validator_set_hash: crate::domain::validator_set_hash(&members),
            members,
        })
    }

    pub(super) fn open_window(&mut self, label: &'static str) {
        let start_round = self.max_round();
        let heights = (0..self.hosts.len())
            .filter(|&i| {
                self.hosts[i].up
                    && !self.hosts[i].crash_pending
                    && !self.hosts[i].silent_on_removal
                    && self.honest(i)
            })
            .map(|i| (i, self.checker.node_height(i)))
            .collect();
        self.window = Some(Window {
            label,
            start_round,
            heights,
        });
        self.last_progress = (self.now, start_round);
    }

    /// Liveness bookkeeping and the next disturbance, after every event.
    pub(super) fn direct(&mut self) {
        let n = self.hosts.len() as u64;
        let max_round = self.max_round();
        if max_round > self.last_progress.1 {
            self.last_progress = (self.now, max_round);
        }
        let summary = if self.window.is_some()
            && self.now > self.last_progress.0 + 30 * self.config.max_timeout_ms
        {
            self.node_summary()
        } else {
            String::new()
        };
        if let Some(w) = &mut self.window {
            let checker = &self.checker;
            w.heights.retain(|&i, h| checker.node_height(i) <= *h);
            if w.heights.is_empty() {
                self.window = None;
            } else if max_round > w.start_round + 10 + 2 * n {
                let lagging: Vec<usize> = w.heights.keys().copied().collect();
                self.liveness.push(format!(
                    "nodes {lagging:?} did not commit within 10 + 2n = {} rounds of the {} at round {} (now round {max_round})",
                    10 + 2 * n,
                    w.label,
                    w.start_round
                ));
                self.done = true;
                return;
            } else if self.now > self.last_progress.0 + 30 * self.config.max_timeout_ms {
                self.liveness.push(format!(
                    "no round progress for {} ms after the {} at round {}; {}",
                    self.now - self.last_progress.0,
                    w.label,
                    w.start_round,
                    summary
                ));
                self.done = true;
                return;
            }
        }
        if self.window.is_some() {
            return;
        }
        match self.phase.clone() {
            Phase::Idle => {
                if let Some(d) = self.plan.pop_front() {
                    let gap = self.rng.gen_range(0..1_500);
                    match d {
                        Disturbance::Partition { groups, duration } => {
                            self.push(gap, Ev::Partition { groups, duration })
                        }
                        Disturbance::Crash { node, down_for } => {
                            if self.hosts[node].dead {
                                return;
                            }
                            self.phase = Phase::CrashedWaiting { node, down_for };
                            self.push(gap, Ev::Crash { node });
                            return;
                        }
                        Disturbance::SetChange {
                            members,
                            revert_after,
                        } => {
                            let now = self.now;
                            let mut target = members.clone();
                            if let Some(c) = self.chain.as_mut() {
                                let at = c.head(now) + 1;
                                let prev = c.set_at(at).to_vec();
                                c.changes.push((at, members));
                                if let Some(k) = revert_after {
                                    c.changes.push((at + k, prev.clone()));
                                    target = prev;
                                }
                            }
                            self.phase = Phase::AwaitEpoch { target, since: now };
                            return;
                        }
                    }
                    self.phase = Phase::Scheduled;
                } else if max_round >= self.cfg.rounds {
                    self.done = true;
                } else {
                    self.open_window("steady state");
                }
            }
            Phase::CrashedWaiting { node, down_for } if !self.hosts[node].up => {
                self.push(down_for, Ev::Restart { node });
                self.phase = Phase::Scheduled;
            }
            Phase::AwaitEpoch { target, since } => {
                let reached = (0..self.hosts.len()).all(|i| {
                    let h = &self.hosts[i];
                    !self.honest(i)
                        || h.dead
                        || h.core
                            .as_ref()
                            .is_none_or(|c| c.context().set().member_infos() == target)
                });
                if reached {
                    self.phase = Phase::Idle;
                    self.open_window("epoch change");
                } else if self.now > since + 120_000 {
                    let summary = self.node_summary();
                    self.liveness.push(format!(
                        "the set change at {since} ms did not become an epoch on every honest node \
                         within 120 s; {summary}"
                    ));
                    self.done = true;
                }
            }
            _ => {}
        }
    }
}
