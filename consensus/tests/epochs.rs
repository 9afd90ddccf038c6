//! Epoch changes in the core (DESIGN section 4): each vote-time check of a `Reconfigure`, the
//! empty payloads of the limbo epoch, and the handoff to the next epoch (commit of B0 truncates
//! the epoch, record, genesis block and QC of the next epoch, fresh safety state, old- and
//! newer-epoch messages answered with records or fetches).

use consensus::codec::{Decode, Encode};
use consensus::core::{Action, Config, Core, DurableState, Event};
use consensus::crypto::Scheme;
use consensus::domain::validator_set_hash;
use consensus::epoch::EpochChangeRecord;
use consensus::testkit::Cluster;
use consensus::types::{
    BatchDigest, Block, MemberInfo, Message, Proposal, QuorumCert, Reconfigure,
};
use consensus::verify::EpochContext;

const CHAIN_BLOCK: [u8; 32] = [0xcb; 32];

fn config() -> Config {
    Config {
        epoch_min_rounds: 1,
        reconfig_max_lag_blocks: 10,
        reconfig_wait_ms: 300,
        ..Config::default()
    }
}

fn ctx(c: &Cluster) -> EpochContext {
    c.fresh_context().with_chain_block(5)
}

fn cluster() -> Cluster {
    Cluster::new(Scheme::Fast, &[1, 2, 1, 3], 70)
}

/// The current set with member 0's power raised by one.
fn changed_members(c: &Cluster) -> Vec<MemberInfo> {
    let mut m = c.ctx.set().member_infos();
    m[0].power += 1;
    m
}

fn reconfigure(number: u64, members: Vec<MemberInfo>) -> Reconfigure {
    Reconfigure {
        chain_block_number: number,
        chain_block_hash: CHAIN_BLOCK,
        validator_set_hash: validator_set_hash(&members),
        members,
    }
}

fn block_with(
    c: &Cluster,
    round: u64,
    qc: QuorumCert,
    payload: Vec<BatchDigest>,
    rc: Option<Reconfigure>,
) -> Block {
    let leader = c.signers[c.leader(round)].address();
    Block::new(c.ctx.epoch(), round, qc, leader, payload, rc)
}

/// A node that is neither the leader of round 1 nor of round 2, started, with a pinned head.
fn voter(c: &Cluster, cfg: Config, head: Option<(u64, Vec<MemberInfo>)>) -> (Core, usize) {
    let i = (0..4)
        .find(|&i| i != c.leader(1) && i != c.leader(2) && i != c.leader(3))
        .unwrap_or_else(|| (0..4).find(|&i| i != c.leader(1)).expect("a non-leader"));
    let mut core = Core::new(cfg, ctx(c), c.signer_of(i), DurableState::default()).expect("core");
    core.handle(Event::Start { now_ms: 0 });
    if let Some((number, members)) = head {
        core.handle(Event::PinnedHead {
            number,
            hash: CHAIN_BLOCK,
            members,
            now_ms: 0,
        });
    }
    (core, i)
}

fn deliver(core: &mut Core, p: Proposal) -> Vec<Action> {
    let from = p.block.proposer();
    core.handle(Event::Message {
        from,
        message: Message::Proposal(p),
    })
}

fn discarded(acts: &[Action], reason: &str) -> bool {
    acts.iter()
        .any(|a| matches!(a, Action::Discarded(d) if d.reason.contains(reason)))
}

fn voted(core: &Core, round: u64) -> bool {
    core.safety_state().last_voted_round == round
}

#[test]
fn reconfigure_with_a_fresh_matching_set_gets_a_vote() {
    let c = cluster();
    let m = changed_members(&c);
    let (mut node, _) = voter(&c, config(), Some((20, m.clone())));
    let b = block_with(&c, 1, c.ctx.genesis_qc(), vec![], Some(reconfigure(20, m)));
    deliver(&mut node, c.proposal(b, None));
    assert!(voted(&node, 1));
}

#[test]
fn reconfigure_that_does_not_change_the_set_is_refused() {
    let c = cluster();
    let same = c.ctx.set().member_infos();
    let (mut node, _) = voter(&c, config(), Some((20, same.clone())));
    let b = block_with(
        &c,
        1,
        c.ctx.genesis_qc(),
        vec![],
        Some(reconfigure(20, same)),
    );
    let acts = deliver(&mut node, c.proposal(b, None));
    assert!(discarded(&acts, "does not change the set"), "{acts:?}");
    assert!(!voted(&node, 1));
}

#[test]
fn reconfigure_not_above_the_epoch_chain_block_is_refused() {
    let c = cluster();
    let m = changed_members(&c);
    let (mut node, _) = voter(&c, config(), Some((5, m.clone())));
    let b = block_with(&c, 1, c.ctx.genesis_qc(), vec![], Some(reconfigure(5, m)));
    let acts = deliver(&mut node, c.proposal(b, None));
    assert!(
        discarded(&acts, "not above the epoch's chain block"),
        "{acts:?}"
    );
    assert!(!voted(&node, 1));
}

#[test]
fn reconfigure_before_epoch_min_rounds_is_refused() {
    let c = cluster();
    let m = changed_members(&c);
    let cfg = Config {
        epoch_min_rounds: 2,
        ..config()
    };
    let (mut node, _) = voter(&c, cfg, Some((20, m.clone())));
    let b = block_with(&c, 1, c.ctx.genesis_qc(), vec![], Some(reconfigure(20, m)));
    let acts = deliver(&mut node, c.proposal(b, None));
    assert!(discarded(&acts, "epoch_min_rounds"), "{acts:?}");
    assert!(!voted(&node, 1));
}

#[test]
fn stale_reconfigure_older_than_head_minus_w_is_refused() {
    let c = cluster();
    let m = changed_members(&c);
    // Head 40, W = 10: block 29 is stale, block 30 is not.
    let (mut node, _) = voter(&c, config(), Some((40, m.clone())));
    let b = block_with(
        &c,
        1,
        c.ctx.genesis_qc(),
        vec![],
        Some(reconfigure(29, m.clone())),
    );
    let acts = deliver(&mut node, c.proposal(b, None));
    assert!(discarded(&acts, "stale reconfigure"), "{acts:?}");
    assert!(!voted(&node, 1));

    let (mut node, _) = voter(&c, config(), Some((40, m.clone())));
    let b = block_with(
        &c,
        1,
        c.ctx.genesis_qc(),
        vec![],
        Some(reconfigure(30, m.clone())),
    );
    let acts = deliver(&mut node, c.proposal(b, None));
    // Block 30 is not the head: the set there is read first.
    assert!(
        acts.contains(&Action::ReadChainSet {
            number: 30,
            hash: CHAIN_BLOCK
        }),
        "{acts:?}"
    );
    assert!(!voted(&node, 1));
    node.handle(Event::ChainSet {
        number: 30,
        hash: CHAIN_BLOCK,
        members: Some(m),
    });
    assert!(voted(&node, 1));
}

#[test]
fn rolled_back_or_different_chain_set_is_refused() {
    let c = cluster();
    let m = changed_members(&c);
    for answer in [None, Some(c.ctx.set().member_infos())] {
        let (mut node, _) = voter(&c, config(), Some((40, m.clone())));
        let b = block_with(
            &c,
            1,
            c.ctx.genesis_qc(),
            vec![],
            Some(reconfigure(35, m.clone())),
        );
        deliver(&mut node, c.proposal(b, None));
        let acts = node.handle(Event::ChainSet {
            number: 35,
            hash: CHAIN_BLOCK,
            members: answer.clone(),
        });
        let reason = if answer.is_none() {
            "not the chain's"
        } else {
            "differ from the chain's set"
        };
        assert!(discarded(&acts, reason), "{acts:?}");
        assert!(!voted(&node, 1));
    }
}

#[test]
fn voter_waits_for_its_pinned_head_at_most_reconfig_wait() {
    let c = cluster();
    let m = changed_members(&c);
    // Head 18 below block 20: wait; the head reaches 20 in time: vote.
    let (mut node, _) = voter(&c, config(), Some((18, m.clone())));
    let b = block_with(
        &c,
        1,
        c.ctx.genesis_qc(),
        vec![],
        Some(reconfigure(20, m.clone())),
    );
    deliver(&mut node, c.proposal(b.clone(), None));
    assert!(!voted(&node, 1));
    node.handle(Event::PinnedHead {
        number: 20,
        hash: CHAIN_BLOCK,
        members: m.clone(),
        now_ms: 200,
    });
    assert!(voted(&node, 1));
    // Too late (after reconfig_wait = 300 ms): refused.
    let (mut node, _) = voter(&c, config(), Some((18, m.clone())));
    deliver(&mut node, c.proposal(b, None));
    let acts = node.handle(Event::PinnedHead {
        number: 20,
        hash: CHAIN_BLOCK,
        members: m,
        now_ms: 301,
    });
    assert!(discarded(&acts, "did not reach"), "{acts:?}");
    assert!(!voted(&node, 1));
}

#[test]
fn blocks_after_an_uncommitted_reconfigure_are_empty_and_carry_no_second_one() {
    let c = cluster();
    let m = changed_members(&c);
    let b1 = block_with(
        &c,
        1,
        c.ctx.genesis_qc(),
        vec![],
        Some(reconfigure(20, m.clone())),
    );
    let q1 = c.full_qc(1, b1.id());
    let cases = [
        (
            vec![BatchDigest([9; 32])],
            None,
            Some("payload in a block descending"),
        ),
        (
            vec![],
            Some(reconfigure(21, m.clone())),
            Some("second reconfigure"),
        ),
        (vec![], None, None),
    ];
    for (payload, rc, refusal) in cases {
        let (mut node, _) = voter(&c, config(), Some((20, m.clone())));
        deliver(&mut node, c.proposal(b1.clone(), None));
        assert!(voted(&node, 1));
        let b2 = block_with(&c, 2, q1.clone(), payload, rc);
        let acts = deliver(&mut node, c.proposal(b2, None));
        match refusal {
            Some(r) => {
                assert!(discarded(&acts, r), "{acts:?}");
                assert!(!voted(&node, 2));
            }
            None => assert!(voted(&node, 2), "{acts:?}"),
        }
    }
}

#[test]
fn leader_proposes_its_oracle_set_then_empty_blocks() {
    let c = cluster();
    let m = changed_members(&c);
    let l = c.leader(1);
    let mut node =
        Core::new(config(), ctx(&c), c.signer_of(l), DurableState::default()).expect("core");
    node.handle(Event::Start { now_ms: 0 });
    node.handle(Event::PinnedHead {
        number: 20,
        hash: CHAIN_BLOCK,
        members: m.clone(),
        now_ms: 0,
    });
    let acts = node.handle(Event::PayloadReady {
        round: 1,
        batches: vec![BatchDigest([1; 32])],
    });
    let p = acts
        .iter()
        .find_map(|a| match a {
            Action::Broadcast(Message::Proposal(p)) => Some(p.clone()),
            _ => None,
        })
        .expect("proposal");
    assert_eq!(p.block.header().reconfigure, Some(reconfigure(20, m)));
}

/// Drives the handoff: B1 (Reconfigure) ← B2 ← B3 with QC(B2) commits B1 only (B2 is after B0).
#[test]
fn handoff_commits_b0_only_and_starts_the_next_epoch() {
    let c = cluster();
    let m = changed_members(&c);
    let (mut node, i) = voter(&c, config(), Some((20, m.clone())));
    let b1 = block_with(
        &c,
        1,
        c.ctx.genesis_qc(),
        vec![BatchDigest([1; 32])],
        Some(reconfigure(20, m.clone())),
    );
    let b2 = block_with(&c, 2, c.full_qc(1, b1.id()), vec![], None);
    let b3 = block_with(&c, 3, c.full_qc(2, b2.id()), vec![], None);
    deliver(&mut node, c.proposal(b1.clone(), None));
    deliver(&mut node, c.proposal(b2.clone(), None));
    let acts = deliver(&mut node, c.proposal(b3, None));
    let commit = acts
        .iter()
        .find_map(|a| match a {
            Action::Commit(c) => Some(c.clone()),
            _ => None,
        })
        .expect("commit");
    assert_eq!(commit.blocks.len(), 1, "only B0 commits");
    assert_eq!(commit.blocks[0].block.id(), b1.id());
    let record = acts
        .iter()
        .find_map(|a| match a {
            Action::PersistEpochChange(r) => Some(r.clone()),
            _ => None,
        })
        .expect("record persisted");
    let pc = acts
        .iter()
        .position(|a| matches!(a, Action::Commit(_)))
        .expect("c");
    let pr = acts
        .iter()
        .position(|a| matches!(a, Action::PersistEpochChange(_)))
        .expect("p");
    let br = acts
        .iter()
        .position(|a| matches!(a, Action::BroadcastEpochChange(_)))
        .expect("b");
    assert!(pc < pr && pr < br);
    assert_eq!(record.epoch, 0);
    assert_eq!(
        record.path.iter().map(Block::id).collect::<Vec<_>>(),
        vec![b1.id(), b2.id()]
    );
    assert_eq!(
        EpochChangeRecord::decode(&record.encode()).expect("codec"),
        record
    );
    let next = record.next_context(&ctx(&c)).expect("record verifies");
    assert_eq!(node.epoch(), 1);
    assert_eq!(node.context().set().member_infos(), m);
    assert_eq!(node.context().genesis_block(), next.genesis_block());
    assert_eq!(
        next.genesis_block(),
        c.ctx
            .domain()
            .genesis_block_id(1, &b1.id().0, &validator_set_hash(&m))
    );
    assert_eq!(node.context().chain_block(), 20);
    assert_eq!(node.round(), 1);
    assert_eq!(node.root().height, 1);
    assert_eq!(node.high_qc(), &next.genesis_qc());
    assert_eq!(node.safety_state().epoch, 1);
    assert_eq!(node.safety_state().last_voted_round, 0);

    // A record that does not link, or with a QC of the wrong block, does not verify.
    let mut broken = record.clone();
    broken.path.swap(0, 1);
    assert!(broken.verify(&ctx(&c)).is_err());
    let mut wrong_qc = record.clone();
    wrong_qc.qc = c.full_qc(1, b1.id());
    assert!(wrong_qc.verify(&ctx(&c)).is_err());

    // An old-epoch message from a member is answered with records; a newer-epoch one makes the
    // node fetch them.
    let j = (0..4).find(|&j| j != i).expect("peer");
    let old = c.timeout(j, 3, c.full_qc(2, b2.id()), None);
    let acts = node.handle(Event::Message {
        from: old.signer,
        message: Message::Timeout(old.clone()),
    });
    assert!(acts.contains(&Action::SendEpochChanges {
        to: old.signer,
        since_epoch: 0
    }));
    // Rate-limited: not again before the next timer.
    let acts = node.handle(Event::Message {
        from: old.signer,
        message: Message::Timeout(old.clone()),
    });
    assert!(
        !acts
            .iter()
            .any(|a| matches!(a, Action::SendEpochChanges { .. }))
    );
    let mut newer = old;
    newer.epoch = 2;
    let acts = node.handle(Event::Message {
        from: newer.signer,
        message: Message::Timeout(newer.clone()),
    });
    assert!(acts.contains(&Action::FetchEpochChanges {
        since_epoch: 1,
        from: Some(newer.signer)
    }));
}

/// A node that missed the commit catches up from the broadcast record alone.
#[test]
fn lagging_node_enters_the_next_epoch_from_the_record() {
    let c = cluster();
    let m = changed_members(&c);
    let (mut a, _) = voter(&c, config(), Some((20, m.clone())));
    let b1 = block_with(
        &c,
        1,
        c.ctx.genesis_qc(),
        vec![],
        Some(reconfigure(20, m.clone())),
    );
    let b2 = block_with(&c, 2, c.full_qc(1, b1.id()), vec![], None);
    let b3 = block_with(&c, 3, c.full_qc(2, b2.id()), vec![], None);
    for b in [&b1, &b2, &b3] {
        deliver(&mut a, c.proposal(b.clone(), None));
    }
    assert_eq!(a.epoch(), 1);
    let record = EpochChangeRecord {
        epoch: 0,
        path: vec![b1.clone(), b2.clone()],
        qc: c.full_qc(2, b2.id()),
    };
    // A fresh node that saw nothing: it gets the record, fetches B0's ancestors (none: B0's
    // parent is genesis), commits B0 and moves to epoch 1.
    let (mut lag, _) = voter(&c, config(), None);
    let acts = lag.handle(Event::EpochChanges {
        from: None,
        records: vec![record],
    });
    assert_eq!(lag.epoch(), 1, "{acts:?}");
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::Commit(c) if c.blocks.len() == 1))
    );
    assert_eq!(lag.context().genesis_block(), a.context().genesis_block());
}
