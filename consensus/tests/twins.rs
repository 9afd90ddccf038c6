//! Twins (Bano et al.): a Byzantine validator is modelled as two honest instances sharing one
//! key. For n = 4 equal validators plus one twin, every combination of partitions that separate
//! the twins (or connect everyone) over the first rounds is executed round by round; then the
//! network heals. Honest nodes must never commit different blocks at one height, and must all
//! commit after the heal.

use consensus::core::{Action, Config, Core, DurableState, Event};
use consensus::crypto::Scheme;
use consensus::testkit::Cluster;
use consensus::types::{Address, BatchDigest, Block, BlockId};
use consensus::verify::EpochContext;
use std::collections::{HashMap, VecDeque};

struct Node {
    core: Core,
    addr: Address,
    store: HashMap<BlockId, Block>,
    ledger: Vec<BlockId>,
    evidence: u64,
}

/// Node 4 is the twin of node `TWIN`.
const TWIN: usize = 0;
const HOSTS: usize = 5;

fn cluster() -> Cluster {
    Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 4242)
}

fn boot(c: &Cluster) -> Vec<Node> {
    (0..HOSTS)
        .map(|h| {
            let i = if h == 4 { TWIN } else { h };
            let ctx = EpochContext::new(
                0,
                c.ctx.genesis_block(),
                c.ctx.set().clone(),
                c.ctx.domain().clone(),
                Scheme::Fast,
            );
            let core = Core::new(
                Config::default(),
                ctx,
                c.signer_of(i),
                DurableState::default(),
            )
            .expect("core");
            Node {
                core,
                addr: c.signers[i].address(),
                store: HashMap::new(),
                ledger: Vec::new(),
                evidence: 0,
            }
        })
        .collect()
}

/// Runs one schedule of partitions (`groups[h]` per host per step), then `heal` connected steps.
fn execute(schedule: &[[u8; HOSTS]], heal: usize) -> Result<u64, String> {
    let c = cluster();
    let mut nodes = boot(&c);
    let mut queue: VecDeque<(usize, Event)> = VecDeque::new();
    let mut later: Vec<(usize, Event)> = Vec::new();
    for h in 0..HOSTS {
        queue.push_back((h, Event::Start { now_ms: 0 }));
    }
    let connected = [0u8; HOSTS];
    let steps: Vec<[u8; HOSTS]> = schedule
        .iter()
        .copied()
        .chain(std::iter::repeat_n(connected, heal))
        .collect();
    let mut heights_at_heal = None;
    for (step, groups) in steps.iter().enumerate() {
        // Step k runs protocol round k + 1: messages of later rounds wait for their step.
        let limit = step as u64 + 1;
        if step == schedule.len() {
            heights_at_heal = Some(nodes.iter().map(|n| n.ledger.len()).collect::<Vec<_>>());
        }
        queue.extend(later.drain(..));
        for phase in 0..2 {
            if phase == 1 {
                // The step's round ends: whoever is still in it (or behind) times out. A node
                // that already entered a later round (by a QC it formed from this round's votes,
                // which every validator collects) has not spent any time there yet.
                for (h, n) in nodes.iter().enumerate() {
                    let round = n.core.round();
                    if round <= limit {
                        queue.push_back((h, Event::TimerFired { round, now_ms: 0 }));
                    }
                }
            }
            let mut budget = 100_000;
            while let Some((h, ev)) = queue.pop_front() {
                if let Event::Message { message, .. } = &ev
                    && message.epoch_round().1 > limit
                {
                    later.push((h, ev));
                    continue;
                }
                budget -= 1;
                if budget == 0 {
                    return Err("event budget exceeded".into());
                }
                let actions = nodes[h].core.handle(ev);
                for a in actions {
                    apply(&mut nodes, &mut queue, groups, h, a)?;
                }
            }
        }
    }
    // Liveness after the heal: every honest host committed something new.
    let before = heights_at_heal.unwrap_or_default();
    for (h, n) in nodes.iter().enumerate().take(4).skip(1) {
        if n.ledger.len() <= before.get(h).copied().unwrap_or(0) {
            return Err(format!("honest node {h} did not commit after the heal"));
        }
    }
    Ok(nodes[1..4].iter().map(|n| n.evidence).sum())
}

fn apply(
    nodes: &mut [Node],
    queue: &mut VecDeque<(usize, Event)>,
    groups: &[u8; HOSTS],
    h: usize,
    a: Action,
) -> Result<(), String> {
    let from = nodes[h].addr;
    match a {
        Action::PersistBlock(b) => {
            nodes[h].store.insert(b.id(), b);
        }
        Action::Broadcast(message) => {
            for j in 0..HOSTS {
                if j != h && groups[j] == groups[h] {
                    queue.push_back((
                        j,
                        Event::Message {
                            from,
                            message: message.clone(),
                        },
                    ));
                }
            }
        }
        Action::RequestPayload { round, .. } => {
            // Each host orders its own batch, so the twins propose different blocks.
            let batches = vec![BatchDigest([h as u8 + 1; 32])];
            queue.push_back((h, Event::PayloadReady { round, batches }));
        }
        Action::FetchBatches { block_id, .. } => {
            queue.push_back((h, Event::BatchesAvailable { block_id }));
        }
        Action::FetchBlocks {
            block_id,
            stop_at_round,
            max_blocks,
            ..
        } => {
            let peer = (0..HOSTS).find(|&j| {
                j != h && groups[j] == groups[h] && nodes[j].store.contains_key(&block_id)
            });
            if let Some(j) = peer {
                let mut blocks = Vec::new();
                let mut cur = block_id;
                while let Some(b) = nodes[j].store.get(&cur) {
                    if b.round() <= stop_at_round || blocks.len() >= max_blocks {
                        break;
                    }
                    cur = b.parent_id();
                    blocks.push(b.clone());
                }
                let from = Some(nodes[j].addr);
                queue.push_back((h, Event::BlocksFetched { from, blocks }));
            }
        }
        Action::Commit(commit) => {
            for cb in commit.blocks {
                if cb.height as usize == nodes[h].ledger.len() + 1 {
                    nodes[h].ledger.push(cb.block.id());
                }
            }
            // Honest hosts (1..4) must agree at every height with every other honest host.
            if (1..4).contains(&h) {
                for o in 1..4 {
                    let (a, b) = (&nodes[h].ledger, &nodes[o].ledger);
                    let common = a.len().min(b.len());
                    if a[..common] != b[..common] {
                        return Err(format!(
                            "honest nodes {h} and {o} committed different blocks"
                        ));
                    }
                }
            }
        }
        Action::Evidence(e) => {
            if e.signer != nodes[TWIN].addr {
                return Err(format!("evidence against an honest member: {e:?}"));
            }
            nodes[h].evidence += 1;
        }
        _ => {}
    }
    Ok(())
}

/// Partition shapes: everyone connected, or the twins apart with the three others on either side.
fn shapes() -> Vec<[u8; HOSTS]> {
    let mut out = vec![[0; HOSTS]];
    for mask in 0..8u8 {
        let mut g = [0u8; HOSTS];
        g[TWIN] = 0;
        g[4] = 1;
        let mut k = 0;
        for (h, slot) in g.iter_mut().enumerate() {
            if h != TWIN && h != 4 {
                *slot = (mask >> k) & 1;
                k += 1;
            }
        }
        out.push(g);
    }
    out
}

#[test]
fn twins_enumerated_partitions_over_four_rounds() {
    let shapes = shapes();
    assert_eq!(shapes.len(), 9);
    let mut executions = 0;
    let mut with_evidence = 0;
    let mut failures = Vec::new();
    for a in &shapes {
        for b in &shapes {
            for c in &shapes {
                for d in &shapes {
                    let schedule = [*a, *b, *c, *d];
                    executions += 1;
                    match execute(&schedule, 10) {
                        Ok(evidence) => with_evidence += u64::from(evidence > 0),
                        Err(e) => failures.push(format!("{schedule:?}: {e}")),
                    }
                }
            }
        }
    }
    assert_eq!(executions, 6561);
    eprintln!("twins: {executions} executions, evidence in {with_evidence}");
    // The twins really equivocate: honest nodes catch them in many schedules.
    assert!(
        with_evidence > 100,
        "evidence in only {with_evidence} executions"
    );
    assert!(
        failures.is_empty(),
        "{} of {executions} failed, e.g. {:?}",
        failures.len(),
        failures.iter().take(3).collect::<Vec<_>>()
    );
}

#[test]
fn the_twin_key_leads_one_of_the_enumerated_rounds() {
    // Otherwise the enumeration would never make the twins propose conflicting blocks.
    let c = cluster();
    assert!((1..=4).any(|r| c.leader(r) == TWIN));
}

#[test]
fn single_schedules_run_fast() {
    let t = std::time::Instant::now();
    for s in shapes() {
        execute(&[s, s, s, s], 10).expect("schedule passes");
    }
    assert!(t.elapsed().as_secs() < 30, "{:?}", t.elapsed());
}
