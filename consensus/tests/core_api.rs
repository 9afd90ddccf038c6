//! The core's host-facing contract: action order (persist before send), restart replay of what
//! was signed, use of far-future certificates, bounded buffers.

use consensus::codec::{Decode, Encode};
use consensus::core::{Action, Config, Core, DurableState, Event};
use consensus::crypto::Scheme;
use consensus::safety::SafetyState;
use consensus::testkit::Cluster;
use consensus::types::{Address, BatchDigest, Message, Vote};
use consensus::verify::EpochContext;

fn ctx(c: &Cluster) -> EpochContext {
    c.fresh_context()
}

fn core(c: &Cluster, i: usize, durable: DurableState) -> Core {
    Core::new(Config::default(), ctx(c), c.signer_of(i), durable).expect("core starts")
}

/// A validator of a four-member cluster that leads neither round 1 nor round 2.
fn plain_voter(c: &Cluster) -> usize {
    (0..4)
        .find(|&i| i != c.leader(1) && i != c.leader(2))
        .expect("a plain voter")
}

/// What a host would have persisted from a list of actions.
fn persisted(actions: &[Action], into: &mut DurableState) {
    for a in actions {
        match a {
            Action::PersistBlock(b) => into.blocks.push(b.clone()),
            Action::PersistSafety(s) => into.safety = s.clone(),
            Action::PersistCertificates { high_qc, high_tc } => {
                into.high_qc = Some(high_qc.clone());
                into.high_tc = high_tc.clone();
            }
            _ => {}
        }
    }
}

fn position(actions: &[Action], f: impl Fn(&Action) -> bool) -> usize {
    actions.iter().position(f).expect("action present")
}

#[test]
fn leader_persists_block_and_safety_before_broadcast_and_replays_after_restart() {
    let c = Cluster::new(Scheme::Secp256k1, &[1, 2, 1, 3], 40);
    let l = c.leader(1);
    let mut node = core(&c, l, DurableState::default());
    let start = node.handle(Event::Start { now_ms: 0 });
    assert!(start.contains(&Action::RequestPayload {
        round: 1,
        max_batches: Config::default().max_payload_batches
    }));
    let acts = node.handle(Event::PayloadReady {
        round: 1,
        batches: vec![BatchDigest([5; 32])],
    });
    let pb = position(&acts, |a| matches!(a, Action::PersistBlock(_)));
    let ps = position(&acts, |a| matches!(a, Action::PersistSafety(_)));
    let bc = position(&acts, |a| {
        matches!(a, Action::Broadcast(Message::Proposal(_)))
    });
    assert!(pb < bc && ps < bc, "persist before send: {acts:?}");
    let Action::Broadcast(Message::Proposal(p)) = &acts[bc] else {
        unreachable!()
    };
    assert_eq!(c.ctx.verify_proposal(p), Ok(l));

    // Restart from what was persisted: the same proposal is re-broadcast, and a new payload for
    // round 1 does not produce a different one.
    let mut durable = DurableState::default();
    persisted(&start, &mut durable);
    persisted(&acts, &mut durable);
    let durable = DurableState {
        safety: SafetyState::decode(&durable.safety.encode()).expect("codec"),
        ..durable
    };
    let mut again = core(&c, l, durable);
    let start2 = again.handle(Event::Start { now_ms: 5 });
    assert!(start2.contains(&Action::Broadcast(Message::Proposal(p.clone()))));
    let acts2 = again.handle(Event::PayloadReady {
        round: 1,
        batches: vec![BatchDigest([6; 32])],
    });
    assert!(
        !acts2
            .iter()
            .any(|a| matches!(a, Action::Broadcast(Message::Proposal(_)))),
        "no second proposal for round 1: {acts2:?}"
    );
}

#[test]
fn voter_persists_then_broadcasts_vote_and_resends_same_vote_after_restart() {
    let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 50);
    let p = c.proposal(c.block(1, c.ctx.genesis_qc(), vec![]), None);
    let voter = plain_voter(&c);
    let mut node = core(&c, voter, DurableState::default());
    let start = node.handle(Event::Start { now_ms: 0 });
    let from = c.signers[c.leader(1)].address();
    let acts = node.handle(Event::Message {
        from,
        message: Message::Proposal(p.clone()),
    });
    let is_vote = |a: &Action| matches!(a, Action::Broadcast(Message::Vote(_)));
    let pb = position(&acts, |a| matches!(a, Action::PersistBlock(_)));
    let ps = position(&acts, |a| matches!(a, Action::PersistSafety(_)));
    let send = position(&acts, is_vote);
    assert!(pb < send && ps < send, "{acts:?}");
    // Every validator gets the vote (not only leader(2)), and it is counted locally too: the
    // node now holds one vote of round 1.
    let Action::Broadcast(Message::Vote(v)) = acts[send].clone() else {
        unreachable!()
    };
    assert_eq!(
        (v.round, v.block_id, v.signer),
        (1, p.block.id(), c.signers[voter].address())
    );
    assert_eq!(node.stats().votes, 1, "{:?}", node.stats());
    let mut durable = DurableState::default();
    persisted(&start, &mut durable);
    persisted(&acts, &mut durable);
    let mut again = core(&c, voter, durable);
    let start2 = again.handle(Event::Start { now_ms: 1 });
    assert!(start2.contains(&Action::Broadcast(Message::Vote(v))));
    // The proposal arriving again does not produce a second, different vote.
    let acts2 = again.handle(Event::Message {
        from,
        message: Message::Proposal(p),
    });
    assert!(!acts2.iter().any(is_vote));
}

#[test]
fn any_validator_forms_the_qc_from_broadcast_votes() {
    // A node that is not leader(2) collects the round-1 votes and enters round 2 by the QC it
    // formed itself.
    let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 55);
    let p = c.proposal(c.block(1, c.ctx.genesis_qc(), vec![]), None);
    let me = plain_voter(&c);
    let mut node = core(&c, me, DurableState::default());
    node.handle(Event::Start { now_ms: 0 });
    node.handle(Event::Message {
        from: c.signers[c.leader(1)].address(),
        message: Message::Proposal(p.clone()),
    });
    assert_eq!(node.round(), 1);
    let others: Vec<usize> = (0..4).filter(|&i| i != me).collect();
    node.handle(Event::Message {
        from: Address([9; 20]),
        message: Message::Vote(c.vote(others[0], 1, p.block.id())),
    });
    assert_eq!(node.round(), 1, "two votes of four are no quorum");
    node.handle(Event::Message {
        from: Address([9; 20]),
        message: Message::Vote(c.vote(others[1], 1, p.block.id())),
    });
    assert_eq!(
        node.round(),
        2,
        "QC(1) formed by a node that does not lead round 2"
    );
    // A late third vote is held (for equivocation evidence) but forms no second QC.
    let late = node.handle(Event::Message {
        from: Address([9; 20]),
        message: Message::Vote(c.vote(others[2], 1, p.block.id())),
    });
    assert!(
        !late.iter().any(|a| matches!(a, Action::SetTimer { .. })),
        "{late:?}"
    );
}

#[test]
fn far_future_certificates_are_used_and_buffers_stay_bounded() {
    let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 60);
    let me = 0;
    let mut node = core(&c, me, DurableState::default());
    node.handle(Event::Start { now_ms: 0 });
    // A TC of round 999 (everyone's high QC is the genesis QC) inside a timeout for round 1000.
    let tc = c.tc(999, c.ctx.genesis_qc(), &[(1, 0), (2, 0), (3, 0)]);
    let t = c.timeout(1, 1000, c.ctx.genesis_qc(), Some(tc));
    node.handle(Event::Message {
        from: c.signers[1].address(),
        message: Message::Timeout(t),
    });
    assert_eq!(
        node.round(),
        1000,
        "entered round 1000 by the far-future TC"
    );
    // A flood of votes for far-future rounds and from non-members is not buffered.
    for r in 0..5_000u64 {
        let v = c.vote(1, 1000 + 200 + r, consensus::types::BlockId([r as u8; 32]));
        node.handle(Event::Message {
            from: Address([9; 20]),
            message: Message::Vote(v),
        });
    }
    let s = node.stats();
    assert_eq!(s.votes, 0, "{s:?}");
    // Votes within the window (every node collects them) are bounded by the window.
    for r in 1000..1000 + 300u64 {
        for i in 0..4 {
            let v = c.vote(i, r, consensus::types::BlockId([7; 32]));
            node.handle(Event::Message {
                from: Address([9; 20]),
                message: Message::Vote(v),
            });
        }
    }
    let s = node.stats();
    assert!(
        s.vote_rounds as u64 <= Config::default().round_window + 2,
        "{s:?}"
    );
    assert!(s.wanted <= Config::default().max_wanted, "{s:?}");
}

#[test]
fn badly_signed_messages_are_rejected_not_used() {
    let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 70);
    let mut node = core(&c, 0, DurableState::default());
    node.handle(Event::Start { now_ms: 0 });
    let mut p = c.proposal(c.block(1, c.ctx.genesis_qc(), vec![]), None);
    p.signature.0[3] ^= 0xff;
    let acts = node.handle(Event::Message {
        from: Address([1; 20]),
        message: Message::Proposal(p),
    });
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Discarded(d) if d.reject)),
        "{acts:?}"
    );
    assert!(!acts.iter().any(|a| matches!(a, Action::PersistSafety(_))));
}

#[test]
fn double_votes_and_double_proposals_yield_evidence_with_both_signed_messages() {
    use consensus::evidence::{EquivocationKind, Evidence};
    let c = Cluster::new(Scheme::Secp256k1, &[1, 1, 1, 1], 80);
    // The leader of round 2 collects round-1 votes.
    let l2 = c.leader(2);
    let mut node = core(&c, l2, DurableState::default());
    node.handle(Event::Start { now_ms: 0 });
    let voter = (0..4).find(|&i| i != l2).expect("voter");
    let a = consensus::types::BlockId([1; 32]);
    let b = consensus::types::BlockId([2; 32]);
    let (va, vb) = (c.vote(voter, 1, a), c.vote(voter, 1, b));
    let from = Address([9; 20]);
    node.handle(Event::Message {
        from,
        message: Message::Vote(va.clone()),
    });
    let acts = node.handle(Event::Message {
        from,
        message: Message::Vote(vb.clone()),
    });
    let expected = Evidence {
        kind: EquivocationKind::Vote,
        signer: va.signer,
        epoch: 0,
        round: 1,
        first: (a, va.signature),
        second: (b, vb.signature),
    };
    assert!(
        acts.contains(&Action::Evidence(expected.clone())),
        "{acts:?}"
    );
    assert_eq!(
        Evidence::decode(&expected.encode()).expect("codec"),
        expected
    );
    // A forged second vote is rejected, not evidence.
    let mut forged = c.vote(voter, 1, consensus::types::BlockId([3; 32]));
    forged.signature.0[5] ^= 1;
    let other = (0..4).find(|&i| i != l2 && i != voter).expect("other");
    let mut node2 = core(&c, l2, DurableState::default());
    node2.handle(Event::Start { now_ms: 0 });
    node2.handle(Event::Message {
        from,
        message: Message::Vote(c.vote(other, 1, a)),
    });
    let acts = node2.handle(Event::Message {
        from,
        message: Message::Vote(Vote {
            signer: c.signers[other].address(),
            ..forged
        }),
    });
    assert!(!acts.iter().any(|a| matches!(a, Action::Evidence(_))));

    // Two different proposals by the round-1 leader.
    let p1 = c.proposal(c.block(1, c.ctx.genesis_qc(), vec![]), None);
    let p2 = c.proposal(
        c.block(1, c.ctx.genesis_qc(), vec![BatchDigest([1; 32])]),
        None,
    );
    let watcher = (0..4).find(|&i| i != c.leader(1)).expect("watcher");
    let mut node3 = core(&c, watcher, DurableState::default());
    node3.handle(Event::Start { now_ms: 0 });
    node3.handle(Event::Message {
        from,
        message: Message::Proposal(p1.clone()),
    });
    let acts = node3.handle(Event::Message {
        from,
        message: Message::Proposal(p2.clone()),
    });
    assert!(
        acts.iter().any(|a| matches!(a, Action::Evidence(e)
            if e.kind == EquivocationKind::Proposal
                && e.first == (p1.block.id(), p1.signature)
                && e.second == (p2.block.id(), p2.signature))),
        "{acts:?}"
    );
}

/// One seeded run of 4 equal validators where `dead` never starts (crashed from the start):
/// random message delays of 1..=30 ms, base timeout 1 s, `until_ms` of simulated time. Returns
/// (rounds some honest node timed out in, highest round reached, blocks committed by the node
/// that committed least).
fn crashed_leader_run(
    c: &Cluster,
    dead: usize,
    seed: u64,
    until_ms: u64,
) -> (std::collections::BTreeSet<u64>, u64, usize) {
    use consensus::types::{Block, BlockId};
    use std::collections::{BTreeSet, HashMap};
    let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut delay = move || {
        // xorshift64: deterministic per seed.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        1 + rng % 30
    };
    let mut nodes: Vec<Option<Core>> = (0..4)
        .map(|i| (i != dead).then(|| core(c, i, DurableState::default())))
        .collect();
    let addr: Vec<Address> = c.signers.iter().map(|s| s.address()).collect();
    let mut timer_gen = [0u64; 4];
    let mut store: HashMap<BlockId, Block> = HashMap::new();
    let mut committed = [0usize; 4];
    let mut timed_out: BTreeSet<u64> = BTreeSet::new();
    // (time, seq, node, timer generation or none, event)
    let mut queue: Vec<(u64, u64, usize, Option<u64>, Event)> = Vec::new();
    let mut seq = 0u64;
    for i in (0..4).filter(|&i| i != dead) {
        seq += 1;
        queue.push((0, seq, i, None, Event::Start { now_ms: 0 }));
    }
    while let Some(k) = (0..queue.len()).min_by_key(|&k| (queue[k].0, queue[k].1)) {
        let (now, _, i, gen_, event) = queue.swap_remove(k);
        if now > until_ms {
            break;
        }
        if gen_.is_some_and(|g| g != timer_gen[i]) {
            continue; // a replaced timer
        }
        let acts = nodes[i].as_mut().expect("honest node").handle(event);
        for a in acts {
            let mut push = |at: u64, to: usize, gen_: Option<u64>, e: Event| {
                seq += 1;
                queue.push((at, seq, to, gen_, e));
            };
            match a {
                Action::PersistBlock(b) => {
                    store.insert(b.id(), b);
                }
                Action::Broadcast(m) => {
                    if let Message::Timeout(t) = &m {
                        timed_out.insert(t.round);
                    }
                    for j in (0..4).filter(|&j| j != i && j != dead) {
                        let message = m.clone();
                        push(
                            now + delay(),
                            j,
                            None,
                            Event::Message {
                                from: addr[i],
                                message,
                            },
                        );
                    }
                }
                Action::SetTimer { round, duration_ms } => {
                    timer_gen[i] += 1;
                    let e = Event::TimerFired {
                        round,
                        now_ms: now + duration_ms,
                    };
                    push(now + duration_ms, i, Some(timer_gen[i]), e);
                }
                Action::RequestPayload { round, .. } => {
                    let e = Event::PayloadReady {
                        round,
                        batches: vec![],
                    };
                    push(now + 1, i, None, e);
                }
                Action::FetchBatches { block_id, .. } => {
                    push(now + 1, i, None, Event::BatchesAvailable { block_id });
                }
                Action::FetchBlocks {
                    block_id,
                    stop_at_round,
                    max_blocks,
                    ..
                } => {
                    let mut blocks = Vec::new();
                    let mut id = block_id;
                    while let Some(b) = store.get(&id) {
                        if b.round() <= stop_at_round || blocks.len() >= max_blocks {
                            break;
                        }
                        id = b.parent_id();
                        blocks.push(b.clone());
                    }
                    let e = Event::BlocksFetched { from: None, blocks };
                    push(now + delay(), i, None, e);
                }
                Action::Commit(cm) => committed[i] += cm.blocks.len(),
                _ => {}
            }
        }
    }
    let max_round = nodes.iter().flatten().map(|n| n.round()).max().unwrap_or(0);
    let least = (0..4)
        .filter(|&i| i != dead)
        .map(|i| committed[i])
        .min()
        .unwrap_or(0);
    (timed_out, max_round, least)
}

#[test]
fn one_timeout_per_round_of_a_crashed_leader() {
    // The leader of round 2 is crashed from the start. Votes of round r go to every validator, so
    // the honest nodes form QC(r) even when leader(r+1) is the dead node: only the dead node's own
    // rounds time out. (With votes sent only to leader(r+1), round r before each of its rounds
    // would time out too: two timeouts per schedule cycle.)
    let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 90);
    let dead = c.leader(2);
    for seed in 0..8u64 {
        let (timed_out, max_round, least) = crashed_leader_run(&c, dead, seed, 30_000);
        // Rounds the run went past (the last one may be in progress).
        let done = 1..max_round;
        let dead_rounds: Vec<u64> = done.clone().filter(|&r| c.leader(r) == dead).collect();
        let before_dead: Vec<u64> = done
            .clone()
            .filter(|&r| c.leader(r) != dead && c.leader(r + 1) == dead)
            .collect();
        let honest_timed_out: Vec<u64> = timed_out
            .iter()
            .copied()
            .filter(|r| done.contains(r) && c.leader(*r) != dead)
            .collect();
        let dead_timed_out = timed_out
            .iter()
            .filter(|r| done.contains(r) && c.leader(**r) == dead)
            .count();
        eprintln!(
            "seed {seed}: max round {max_round}, {} dead-leader rounds, {} timed-out rounds \
             (two timeouts per dead leader would be {}), least commits {least}",
            dead_rounds.len(),
            honest_timed_out.len() + dead_timed_out,
            dead_rounds.len() + before_dead.len()
        );
        assert!(
            honest_timed_out.is_empty(),
            "seed {seed}: rounds of honest leaders timed out: {honest_timed_out:?}"
        );
        assert_eq!(
            dead_timed_out,
            dead_rounds.len(),
            "seed {seed}: each round of the dead leader times out once"
        );
        // 30 s at one 1 s timeout per schedule cycle: well over 20 dead-leader rounds (two
        // timeouts per cycle, the second one doubled by the back-off, would allow about 10).
        assert!(
            dead_rounds.len() >= 20,
            "seed {seed}: only {} dead-leader rounds in 30 s",
            dead_rounds.len()
        );
        assert!(
            least >= 40,
            "seed {seed}: an honest node committed only {least} blocks"
        );
    }
}
