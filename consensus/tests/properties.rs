//! Property tests: canonical encodings round-trip and never panic on arbitrary bytes; the safety
//! rules keep their invariants under arbitrary orders of proposals and timeouts.

use consensus::codec::{Decode, Encode};
use consensus::crypto::Scheme;
use consensus::safety::{SafetyRules, SafetyState};
use consensus::testkit::Cluster;
use consensus::types::{
    Address, BatchDigest, Block, BlockId, Message, Proposal, QuorumCert, Signature, SignerBitmap,
    Timeout, TimeoutCert, Vote,
};
use proptest::prelude::*;
use std::collections::BTreeMap;

fn arb_qc() -> impl Strategy<Value = QuorumCert> {
    (
        any::<u64>(),
        any::<u64>(),
        any::<[u8; 32]>(),
        proptest::collection::vec(any::<bool>(), 0..40),
    )
        .prop_map(|(epoch, round, id, bits)| {
            let mut signers = SignerBitmap::new(bits.len());
            for (i, b) in bits.iter().enumerate() {
                if *b {
                    signers.set(i);
                }
            }
            let signatures = (0..signers.count())
                .map(|i| Signature([i as u8; 65]))
                .collect();
            QuorumCert {
                epoch,
                round,
                block_id: BlockId(id),
                signers,
                signatures,
            }
        })
}

fn arb_tc() -> impl Strategy<Value = TimeoutCert> {
    (arb_qc(), any::<u64>(), any::<u64>()).prop_map(|(qc, epoch, round)| {
        let n = qc.signers.count();
        TimeoutCert {
            epoch,
            round,
            signers: qc.signers.clone(),
            high_qc_rounds: (0..n as u64).collect(),
            signatures: qc.signatures.clone(),
            high_qc: qc,
        }
    })
}

fn arb_block() -> impl Strategy<Value = Block> {
    (
        any::<u64>(),
        any::<u64>(),
        arb_qc(),
        any::<[u8; 20]>(),
        proptest::collection::vec(any::<[u8; 32]>(), 0..8),
    )
        .prop_map(|(e, r, qc, p, payload)| {
            Block::new(
                e,
                r,
                qc,
                Address(p),
                payload.into_iter().map(BatchDigest).collect(),
                None,
            )
        })
}

fn arb_message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (arb_block(), proptest::option::of(arb_tc()), any::<u8>()).prop_map(|(block, tc, s)| {
            Message::Proposal(Proposal {
                block,
                tc,
                signature: Signature([s; 65]),
            })
        }),
        (
            any::<u64>(),
            any::<u64>(),
            any::<[u8; 32]>(),
            any::<[u8; 20]>()
        )
            .prop_map(|(epoch, round, id, a)| Message::Vote(Vote {
                epoch,
                round,
                block_id: BlockId(id),
                signer: Address(a),
                signature: Signature([1; 65]),
            })),
        (arb_qc(), proptest::option::of(arb_tc()), any::<u64>()).prop_map(
            |(high_qc, high_tc, round)| Message::Timeout(Timeout {
                epoch: 3,
                round,
                high_qc,
                high_tc,
                signer: Address([2; 20]),
                signature: Signature([3; 65]),
            })
        ),
        arb_tc().prop_map(Message::TimeoutCert),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn messages_round_trip(m in arb_message()) {
        let bytes = m.encode();
        prop_assert_eq!(Message::decode(&bytes), Ok(m.clone()));
        // Every strict prefix fails cleanly.
        for cut in [0, bytes.len() / 2, bytes.len().saturating_sub(1)] {
            if cut < bytes.len() {
                prop_assert!(Message::decode(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = Message::decode(&bytes);
        let _ = SafetyState::decode(&bytes);
        let _ = Block::decode(&bytes);
    }
}

#[derive(Clone, Debug)]
enum Step {
    /// Propose at round r extending the QC of round `parent` (a block chain of QCs), with a TC
    /// of round r-1 when the QC is not of the previous round.
    Propose { round: u64, parent: u64, alt: bool },
    /// Time out at round r.
    Timeout { round: u64 },
}

fn arb_steps() -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        prop_oneof![
            (1u64..12, 0u64..12, any::<bool>()).prop_map(|(round, p, alt)| Step::Propose {
                round,
                parent: p.min(round - 1),
                alt
            }),
            (1u64..12).prop_map(|round| Step::Timeout { round }),
        ],
        1..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    /// Whatever order proposals (valid or not, conflicting or not) and timeout requests arrive
    /// in, the rules never sign two votes for one round, never vote in a round they timed out in,
    /// and never move `last_voted_round` or `one_chain_round` backwards.
    #[test]
    fn safety_rules_invariants_under_arbitrary_orders(steps in arb_steps()) {
        let c = Cluster::new(Scheme::Fast, &[1, 2, 1, 1], 900);
        let mut rules = SafetyRules::new(SafetyState::new(0), c.signer_of(0));
        // A chain of certified blocks: one per round, plus an alternative per round.
        let mut blocks: BTreeMap<(u64, bool), Block> = BTreeMap::new();
        let mut qcs: BTreeMap<u64, QuorumCert> = BTreeMap::new();
        qcs.insert(0, c.ctx.genesis_qc());
        let mut votes: BTreeMap<u64, BlockId> = BTreeMap::new();
        let mut timeouts: BTreeMap<u64, u64> = BTreeMap::new();
        let (mut lvr, mut ocr) = (0u64, 0u64);
        for step in steps {
            match step {
                Step::Propose { round, parent, alt } => {
                    let Some(qc) = qcs.get(&parent).cloned() else { continue };
                    let payload = if alt { vec![BatchDigest([round as u8; 32])] } else { vec![] };
                    let b = c.block(round, qc.clone(), payload);
                    let tc = (parent + 1 != round)
                        .then(|| c.tc(round - 1, qc.clone(), &[(0, parent), (1, parent), (2, parent), (3, parent)]));
                    blocks.insert((round, alt), b.clone());
                    if !alt {
                        qcs.insert(round, c.full_qc(round, b.id()));
                    }
                    if let Ok(v) = rules.make_vote(&c.ctx, &c.proposal(b.clone(), tc)) {
                        prop_assert_eq!(v.block_id, b.id());
                        if !votes.contains_key(&round) {
                            prop_assert!(
                                !timeouts.contains_key(&round),
                                "new vote in round {} after timing out in it", round
                            );
                        }
                        if let Some(prev) = votes.insert(round, v.block_id) {
                            prop_assert_eq!(prev, v.block_id, "two votes in round {}", round);
                        }
                    }
                }
                Step::Timeout { round } => {
                    // Use the highest QC below the round, with a TC of round-1 when needed.
                    let (qr, qc) = qcs.range(..round).next_back().map(|(r, q)| (*r, q.clone())).expect("genesis");
                    let tc = (qr + 1 != round)
                        .then(|| c.tc(round - 1, qc.clone(), &[(0, qr), (1, qr), (2, qr), (3, qr)]));
                    if let Ok(t) = rules.make_timeout(&c.ctx, round, &qc, tc.as_ref())
                        && let Some(prev) = timeouts.insert(round, t.high_qc.round)
                    {
                        prop_assert_eq!(prev, t.high_qc.round);
                    }
                }
            }
            let st = rules.state();
            prop_assert!(st.last_voted_round >= lvr && st.one_chain_round >= ocr);
            lvr = st.last_voted_round;
            ocr = st.one_chain_round;
        }
    }
}
