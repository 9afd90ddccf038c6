//! Hostile inputs to the core: what a non-member or a low-power member can send. Each test names
//! an attack that crashed, stalled or bloated a node before the core bounded it: rounds near
//! `u64::MAX` (overflow before any signature check), a leader signing many blocks for its round
//! (a full block tree), forged epoch-change records (expensive checks before the QC), records of
//! later epochs (stored unverified) and forged old-epoch messages (records sent to anyone named).

use consensus::core::{Action, Config, Core, DurableState, Event};
use consensus::crypto::Scheme;
use consensus::domain::validator_set_hash;
use consensus::epoch::{EpochChangeRecord, RecordError};
use consensus::testkit::Cluster;
use consensus::types::{
    Address, BatchDigest, Block, MemberInfo, Message, PublicKey, QuorumCert, Reconfigure,
    Signature, SignerBitmap, Timeout, TimeoutCert, Vote,
};
use consensus::validators::{MAX_TOTAL_POWER, ValidatorSet, bounded_members};
use consensus::verify::EpochContext;

const CHAIN_BLOCK: [u8; 32] = [0xcb; 32];

fn ctx(c: &Cluster) -> EpochContext {
    c.fresh_context().with_chain_block(5)
}

fn config() -> Config {
    Config {
        epoch_min_rounds: 1,
        reconfig_max_lag_blocks: 10,
        reconfig_wait_ms: 300,
        ..Config::default()
    }
}

fn started(c: &Cluster, i: usize) -> Core {
    let mut core =
        Core::new(config(), ctx(c), c.signer_of(i), DurableState::default()).expect("core starts");
    core.handle(Event::Start { now_ms: 0 });
    core
}

/// A member that leads none of rounds 1..=3.
fn plain(c: &Cluster) -> usize {
    (0..c.signers.len())
        .find(|&i| (1..=3).all(|r| c.leader(r) != i))
        .expect("a plain member")
}

fn send(core: &mut Core, from: Address, message: Message) -> Vec<Action> {
    core.handle(Event::Message { from, message })
}

fn rejected(acts: &[Action], reason: &str) -> bool {
    acts.iter()
        .any(|a| matches!(a, Action::Discarded(d) if d.reject && d.reason == reason))
}

fn discarded(acts: &[Action], reason: &str) -> bool {
    acts.iter()
        .any(|a| matches!(a, Action::Discarded(d) if d.reason == reason))
}

fn junk_signature() -> Signature {
    Signature([7; 65])
}

/// A block of epoch 0 by the round's leader that carries a `Reconfigure` to `members`.
fn reconfigure_block(c: &Cluster, round: u64, members: Vec<MemberInfo>) -> Block {
    let leader = c.signers[c.leader(round)].address();
    Block::new(
        0,
        round,
        c.ctx.genesis_qc(),
        leader,
        vec![],
        Some(Reconfigure {
            chain_block_number: 20,
            chain_block_hash: CHAIN_BLOCK,
            validator_set_hash: validator_set_hash(&members),
            members,
        }),
    )
}

/// The genuine record that ends epoch 0 (member 0's power raised by one): B0 at round 1, B1 at
/// round 2 with the QC of B0, and the QC of B1.
fn record_to_epoch_1(c: &Cluster) -> EpochChangeRecord {
    let mut m1 = c.ctx.set().member_infos();
    m1[0].power += 1;
    let b0 = reconfigure_block(c, 1, m1);
    let b1 = c.block(2, c.full_qc(1, b0.id()), vec![]);
    EpochChangeRecord {
        epoch: 0,
        qc: c.full_qc(2, b1.id()),
        path: vec![b0, b1],
    }
}

#[test]
fn rounds_near_u64_max_are_rejected_before_any_arithmetic() {
    let c = Cluster::new(Scheme::Secp256k1, &[1, 1, 1, 1], 90);
    let me = plain(&c);
    let mut core = started(&c, me);
    let member = c.signers[(me + 1) % 4].address();
    let outsider = Address([0xee; 20]);

    // An unsigned TC of the last round.
    let mut tc = c.tc(1, c.ctx.genesis_qc(), &[(0, 0), (1, 0), (2, 0)]);
    tc.round = u64::MAX;
    let acts = send(&mut core, outsider, Message::TimeoutCert(tc.clone()));
    assert!(rejected(&acts, "round out of range"), "{acts:?}");

    // A timeout and a vote that only name a member.
    let t = Timeout {
        epoch: 0,
        round: u64::MAX,
        high_qc: c.ctx.genesis_qc(),
        high_tc: None,
        signer: member,
        signature: junk_signature(),
    };
    let acts = send(&mut core, outsider, Message::Timeout(t.clone()));
    assert!(rejected(&acts, "round out of range"), "{acts:?}");
    let v = Vote {
        epoch: 0,
        round: u64::MAX,
        block_id: c.ctx.genesis_block(),
        signer: member,
        signature: junk_signature(),
    };
    let acts = send(&mut core, outsider, Message::Vote(v));
    assert!(rejected(&acts, "round out of range"), "{acts:?}");

    // A genuine proposal whose TC a relay changed (the proposal signature does not cover it).
    let l2 = c.leader(2);
    let b2 = c.block(2, c.ctx.genesis_qc(), vec![]);
    let mut p = c.proposal(
        b2,
        Some(c.tc(1, c.ctx.genesis_qc(), &[(0, 0), (1, 0), (2, 0)])),
    );
    if let Some(tc) = p.tc.as_mut() {
        tc.round = u64::MAX;
    }
    let acts = send(&mut core, c.signers[l2].address(), Message::Proposal(p));
    assert!(rejected(&acts, "round out of range"), "{acts:?}");

    // A forged record whose first block has the last round.
    let mut rc_members = c.ctx.set().member_infos();
    rc_members[0].power += 1;
    let b0 = reconfigure_block(&c, u64::MAX, rc_members);
    let record = EpochChangeRecord {
        epoch: 0,
        path: vec![b0.clone(), b0],
        qc: c.ctx.genesis_qc(),
    };
    let acts = core.handle(Event::EpochChanges {
        from: Some(outsider),
        records: vec![record],
    });
    assert!(rejected(&acts, "round out of range"), "{acts:?}");

    // Epochs too: a far epoch is out of range, not "later".
    let mut far = t;
    far.round = 3;
    far.epoch = u64::MAX;
    let acts = send(&mut core, outsider, Message::Timeout(far));
    assert!(rejected(&acts, "epoch out of range"), "{acts:?}");

    // The node is unharmed: round 1 still, and a valid TC of round 1 moves it on.
    assert_eq!(core.round(), 1);
    tc.round = 1;
    send(&mut core, outsider, Message::TimeoutCert(tc));
    assert_eq!(core.round(), 2);
}

#[test]
fn a_leader_that_signs_many_blocks_for_its_round_adds_one_block_and_one_evidence() {
    let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 91);
    let me = plain(&c);
    let mut core = started(&c, me);
    let leader = c.signers[c.leader(1)].address();
    let mut persisted = 0;
    let mut evidence = 0;
    let mut votes = 0;
    for k in 0..500u32 {
        let mut d = [0u8; 32];
        d[..4].copy_from_slice(&k.to_be_bytes());
        let b = c.block(
            1,
            c.ctx.genesis_qc(),
            if k == 0 { vec![] } else { vec![BatchDigest(d)] },
        );
        let acts = send(&mut core, leader, Message::Proposal(c.proposal(b, None)));
        for a in &acts {
            match a {
                Action::PersistBlock(_) => persisted += 1,
                Action::Evidence(_) => evidence += 1,
                Action::Broadcast(Message::Vote(_)) => votes += 1,
                _ => {}
            }
        }
        if k > 0 {
            assert!(discarded(&acts, "equivocating proposal"), "{acts:?}");
        }
    }
    assert_eq!(persisted, 1, "only the round's first block is stored");
    assert_eq!(evidence, 1, "the equivocation is reported once");
    assert_eq!(votes, 1, "one vote, for the first block");
    assert_eq!(core.stats().pending_blocks, 1);
}

/// An equivocation its proposer sent is marked as the sender's own misbehaviour (the network
/// may penalize it); the same block relayed by another member is not (the relay did no wrong).
#[test]
fn an_equivocation_is_the_senders_misbehaviour_only_when_the_proposer_sent_it() {
    let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 93);
    let me = plain(&c);
    let leader = c.signers[c.leader(1)].address();
    let relay = c
        .signers
        .iter()
        .map(|s| s.address())
        .find(|a| *a != leader && *a != c.signers[me].address())
        .expect("a third member");
    let first = c.block(1, c.ctx.genesis_qc(), vec![]);
    let others: Vec<_> = (1..=3u8)
        .map(|k| c.block(1, c.ctx.genesis_qc(), vec![BatchDigest([k; 32])]))
        .collect();
    let by_sender = |acts: &[Action]| {
        acts.iter().find_map(|a| match a {
            Action::Discarded(d) if d.reason == "equivocating proposal" => Some(d.by_sender),
            _ => None,
        })
    };
    let mut core = started(&c, me);
    send(
        &mut core,
        leader,
        Message::Proposal(c.proposal(first, None)),
    );
    // The second block (checked, evidence made) and a third (no signature check), each sent by
    // a relay and by the proposer.
    for b in &others[..2] {
        let relayed = send(
            &mut core,
            relay,
            Message::Proposal(c.proposal(b.clone(), None)),
        );
        assert_eq!(by_sender(&relayed), Some(false), "{relayed:?}");
        let direct = send(
            &mut core,
            leader,
            Message::Proposal(c.proposal(b.clone(), None)),
        );
        assert_eq!(by_sender(&direct), Some(true), "{direct:?}");
    }
    let direct = send(
        &mut core,
        leader,
        Message::Proposal(c.proposal(others[2].clone(), None)),
    );
    assert_eq!(by_sender(&direct), Some(true), "{direct:?}");
}

#[test]
fn the_certified_block_of_an_equivocating_round_is_still_followed() {
    let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 92);
    let me = plain(&c);
    let mut core = started(&c, me);
    let l1 = c.signers[c.leader(1)].address();
    let first = c.block(1, c.ctx.genesis_qc(), vec![]);
    let other = c.block(1, c.ctx.genesis_qc(), vec![BatchDigest([4; 32])]);
    send(
        &mut core,
        l1,
        Message::Proposal(c.proposal(first.clone(), None)),
    );
    let acts = send(
        &mut core,
        l1,
        Message::Proposal(c.proposal(other.clone(), None)),
    );
    assert!(discarded(&acts, "equivocating proposal"));
    // The others certified `other`: the next leader extends it; this node fetches it and
    // follows.
    let b2 = c.block(2, c.full_qc(1, other.id()), vec![]);
    let l2 = c.signers[c.leader(2)].address();
    let acts = send(
        &mut core,
        l2,
        Message::Proposal(c.proposal(b2.clone(), None)),
    );
    assert!(
        acts.iter()
            .any(|a| matches!(a, Action::FetchBlocks { block_id, .. } if *block_id == other.id())),
        "{acts:?}"
    );
    core.handle(Event::BlocksFetched {
        from: Some(l2),
        blocks: vec![other],
    });
    let b3 = c.block(3, c.full_qc(2, b2.id()), vec![]);
    let l3 = c.signers[c.leader(3)].address();
    let acts = send(&mut core, l3, Message::Proposal(c.proposal(b3, None)));
    assert!(
        acts.iter().any(|a| matches!(a, Action::Commit(_))),
        "QC(B2) over the certified block commits it: {acts:?}"
    );
    assert_eq!(core.root().height, 1);
}

/// `n` members with distinct powers 1..=n (keys that are not on the curve do not matter: the
/// set is only hashed and checked, never used to verify).
fn huge_members(n: u64) -> Vec<MemberInfo> {
    let mut members: Vec<MemberInfo> = (0..n)
        .map(|i| {
            let mut key = [0u8; 64];
            key[..8].copy_from_slice(&i.to_be_bytes());
            let public_key = PublicKey(key);
            MemberInfo {
                address: consensus::crypto::address_of(&public_key),
                public_key,
                power: i + 1,
            }
        })
        .collect();
    members.sort_by_key(|m| m.address);
    members
}

#[test]
fn a_forged_record_with_a_huge_set_fails_on_its_qc_before_the_set_is_built() {
    let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 93);
    // ~1,450 members of distinct powers: their total is just under MAX_TOTAL_POWER, so the
    // leader schedule would have ~1M entries and cost seconds to build.
    let members = huge_members(1_440);
    let total: u64 = members.iter().map(|m| m.power).sum();
    assert!(total <= MAX_TOTAL_POWER);
    let b0 = reconfigure_block(&c, 1, members);
    let b1 = c.block(2, c.full_qc(1, b0.id()), vec![]);
    let mut qc = c.full_qc(2, b1.id());
    qc.signatures = vec![junk_signature(); qc.signatures.len()];
    let record = EpochChangeRecord {
        epoch: 0,
        path: vec![b0, b1],
        qc,
    };
    match record.verify(&ctx(&c)) {
        Err(RecordError::Qc(_)) => {}
        other => panic!("the QC must be checked first: {other:?}"),
    }
}

#[test]
fn a_junk_record_of_a_later_epoch_cannot_displace_the_genuine_one() {
    let c = Cluster::new(Scheme::Fast, &[1, 2, 1, 3], 94);
    let me = plain(&c);
    // Epoch 0 -> 1 by a genuine record.
    let r0 = record_to_epoch_1(&c);
    let mut junk = r0.clone();
    junk.epoch = 1;
    let mut core = started(&c, me);
    // The junk record of epoch 1 arrives first: nothing of it can be verified, so it is not
    // kept, but the node asks for the records from its own epoch on.
    let acts = core.handle(Event::EpochChanges {
        from: None,
        records: vec![junk.clone()],
    });
    assert!(discarded(&acts, "record of a later epoch"), "{acts:?}");
    assert!(acts.contains(&Action::FetchEpochChanges {
        since_epoch: 0,
        from: None
    }));
    // The genuine record of epoch 0 moves it to epoch 1, and it then asks for epoch 1's record
    // (a later epoch was seen) instead of applying the junk it was shown.
    let acts = core.handle(Event::EpochChanges {
        from: None,
        records: vec![r0],
    });
    assert_eq!(core.epoch(), 1);
    assert!(
        acts.contains(&Action::FetchEpochChanges {
            since_epoch: 1,
            from: None
        }),
        "{acts:?}"
    );
    assert!(!discarded(&acts, "epoch-change record does not verify"));
}

#[test]
fn forged_old_epoch_messages_get_no_records_sent_to_their_named_signers() {
    let c = Cluster::new(Scheme::Fast, &[1, 2, 1, 3], 95);
    let me = plain(&c);
    let r0 = record_to_epoch_1(&c);
    let mut core = started(&c, me);
    core.handle(Event::EpochChanges {
        from: None,
        records: vec![r0],
    });
    assert_eq!(core.epoch(), 1);
    let outsider = Address([0xee; 20]);
    for j in (0..4).filter(|&j| j != me) {
        let forged = Vote {
            epoch: 0,
            round: 3,
            block_id: c.ctx.genesis_block(),
            signer: c.signers[j].address(),
            signature: junk_signature(),
        };
        let acts = send(&mut core, outsider, Message::Vote(forged));
        assert!(
            !acts
                .iter()
                .any(|a| matches!(a, Action::SendEpochChanges { .. })),
            "a forged signer is not answered: {acts:?}"
        );
    }
    // A genuine old-epoch vote is.
    let j = (0..4).find(|&j| j != me).expect("peer");
    let genuine = c.vote(j, 3, c.ctx.genesis_block());
    let acts = send(&mut core, outsider, Message::Vote(genuine.clone()));
    assert!(acts.contains(&Action::SendEpochChanges {
        to: genuine.signer,
        since_epoch: 0
    }));
}

#[test]
fn a_chain_view_beyond_the_set_bounds_still_reconfigures() {
    let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 96);
    // The chain holds more power than a set may: the leader must still propose a set, reduced
    // by the rule every voter applies, rather than keep the old members for good.
    let mut chain = c.ctx.set().member_infos();
    for (k, m) in chain.iter_mut().enumerate() {
        m.power = MAX_TOTAL_POWER / 2 + k as u64;
    }
    let bounded = bounded_members(chain.clone());
    let total: u64 = bounded.iter().map(|m| m.power).sum();
    assert!(total <= MAX_TOTAL_POWER, "{total}");
    assert!(ValidatorSet::from_members(bounded.clone()).is_ok());
    assert!(ValidatorSet::from_members(chain.clone()).is_err());
    // Proportions are kept within rounding: the largest holder stays the largest.
    let max = |ms: &[MemberInfo]| ms.iter().max_by_key(|m| m.power).map(|m| m.address);
    assert_eq!(max(&bounded), max(&chain));

    let l = c.leader(config().epoch_min_rounds.max(1));
    let mut core = started(&c, l);
    core.handle(Event::PinnedHead {
        number: 20,
        hash: CHAIN_BLOCK,
        members: chain,
        now_ms: 0,
    });
    let acts = core.handle(Event::PayloadReady {
        round: 1,
        batches: vec![],
    });
    let proposed = acts
        .iter()
        .find_map(|a| match a {
            Action::Broadcast(Message::Proposal(p)) => Some(p.clone()),
            _ => None,
        })
        .expect("the leader proposes");
    let rc = proposed
        .block
        .header()
        .reconfigure
        .clone()
        .expect("with a reconfigure of the bounded set");
    assert_eq!(rc.members, bounded);
}

#[test]
fn too_many_members_keep_the_highest_powers() {
    let n = consensus::types::MAX_VALIDATORS as u64 + 10;
    let members = huge_members(n);
    let bounded = bounded_members(members);
    assert_eq!(bounded.len(), consensus::types::MAX_VALIDATORS);
    assert!(bounded.iter().all(|m| m.power > 0));
    assert!(bounded.windows(2).all(|w| w[0].address < w[1].address));
    let total: u64 = bounded.iter().map(|m| m.power).sum();
    assert!(total <= MAX_TOTAL_POWER);
    assert!(consensus::validators::check_members(&bounded).is_ok());
}

#[test]
fn a_tc_and_a_qc_that_merely_name_signers_cost_nothing_when_out_of_range() {
    // The bounds module is what the core runs first; a QC or TC is only data until then.
    let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 97);
    let mut signers = SignerBitmap::new(4);
    signers.set(0);
    let qc = QuorumCert {
        epoch: 0,
        round: u64::MAX,
        block_id: c.ctx.genesis_block(),
        signers: signers.clone(),
        signatures: vec![junk_signature()],
    };
    let tc = TimeoutCert {
        epoch: 0,
        round: 5,
        high_qc: qc,
        signers,
        high_qc_rounds: vec![u64::MAX],
        signatures: vec![junk_signature()],
    };
    assert_eq!(consensus::bounds::check_tc(&tc), Err("round out of range"));
}

/// More than f faulty can certify a branch with a second `Reconfigure` after B0. The commit of
/// B0 could then not be proved by a record (a record holds one `Reconfigure`): the core commits
/// nothing of that branch, so its committed root, its commits and its epoch stay consistent.
#[test]
fn a_branch_with_two_reconfigures_commits_nothing() {
    let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 97);
    let me = plain(&c);
    let mut core = started(&c, me);
    let mut m1 = c.ctx.set().member_infos();
    m1[0].power += 1;
    let b1 = reconfigure_block(&c, 1, m1.clone());
    m1[1].power += 1;
    let leader2 = c.signers[c.leader(2)].address();
    let b2 = Block::new(
        0,
        2,
        c.full_qc(1, b1.id()),
        leader2,
        vec![],
        Some(Reconfigure {
            chain_block_number: 21,
            chain_block_hash: CHAIN_BLOCK,
            validator_set_hash: validator_set_hash(&m1),
            members: m1,
        }),
    );
    let b3 = c.block(3, c.full_qc(2, b2.id()), vec![]);
    let b4 = c.block(4, c.full_qc(3, b3.id()), vec![]);
    let mut acts = Vec::new();
    for b in [b1, b2, b3, b4] {
        let from = c.signers[c.leader(b.round())].address();
        acts.extend(send(
            &mut core,
            from,
            Message::Proposal(c.proposal(b, None)),
        ));
    }
    assert!(
        rejected(&acts, "certified branch ends its epoch without a record"),
        "{acts:?}"
    );
    assert!(
        !acts.iter().any(|a| matches!(
            a,
            Action::Commit(_) | Action::PersistEpochChange(_) | Action::BroadcastEpochChange(_)
        )),
        "{acts:?}"
    );
    assert_eq!(core.epoch(), 0);
}
