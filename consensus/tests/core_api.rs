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
    EpochContext::new(
        c.ctx.epoch(),
        c.ctx.genesis_block(),
        c.ctx.set().clone(),
        c.ctx.domain().clone(),
        c.ctx.scheme(),
    )
}

fn core(c: &Cluster, i: usize, durable: DurableState) -> Core {
    Core::new(Config::default(), ctx(c), c.signer_of(i), durable).expect("core starts")
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
fn voter_persists_then_sends_to_next_leader_and_resends_same_vote_after_restart() {
    let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 50);
    let p = c.proposal(c.block(1, c.ctx.genesis_qc(), vec![]), None);
    let voter = (0..4)
        .find(|&i| i != c.leader(1) && i != c.leader(2))
        .expect("a plain voter");
    let mut node = core(&c, voter, DurableState::default());
    let start = node.handle(Event::Start { now_ms: 0 });
    let from = c.signers[c.leader(1)].address();
    let acts = node.handle(Event::Message {
        from,
        message: Message::Proposal(p.clone()),
    });
    let pb = position(&acts, |a| matches!(a, Action::PersistBlock(_)));
    let ps = position(&acts, |a| matches!(a, Action::PersistSafety(_)));
    let send = position(&acts, |a| matches!(a, Action::SendTo { .. }));
    assert!(pb < send && ps < send, "{acts:?}");
    let Action::SendTo { to, message } = acts[send].clone() else {
        unreachable!()
    };
    assert_eq!(to, c.signers[c.leader(2)].address());
    let mut durable = DurableState::default();
    persisted(&start, &mut durable);
    persisted(&acts, &mut durable);
    let mut again = core(&c, voter, durable);
    let start2 = again.handle(Event::Start { now_ms: 1 });
    assert!(start2.contains(&Action::SendTo { to, message }));
    // The proposal arriving again does not produce a second, different vote.
    let acts2 = again.handle(Event::Message {
        from,
        message: Message::Proposal(p),
    });
    assert!(!acts2.iter().any(|a| matches!(a, Action::SendTo { .. })));
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
    // Votes within the window for rounds this node leads next are bounded by the window.
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
