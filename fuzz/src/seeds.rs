//! The seed corpus: a handful of valid inputs per target, built from real encodings (signed by
//! a test cluster's keys), so the fuzzer starts past the decoders' first checks. Written to
//! `fuzz/corpus/<target>/` by the `seed_corpus` program; see `README.md`.

use arbitrary::{Arbitrary, Unstructured};
use consensus::block_tree::CommitProof;
use consensus::crypto::Scheme;
use consensus::domain::validator_set_hash;
use consensus::epoch::EpochChangeRecord;
use consensus::testkit::Cluster;
use consensus::types::{BatchDigest, Block, Reconfigure};
use k256::ecdsa::SigningKey;
use membership::identity;
use node::app::KvTx;
use node::config::{Config, render};
use node::frames::push_frame;
use node::mempool::encode_batch;
use node::wire;
use prost::Message;
use proto::{GossipBody, RequestBody, ResponseBody, v1};

use crate::core_harness::{self, Input};

/// Seeds of one target.
pub struct Seeds {
    /// The fuzz target.
    pub target: &'static str,
    /// Its inputs.
    pub inputs: Vec<Vec<u8>>,
}

fn tagged(kind: u8, bytes: Vec<u8>) -> Vec<u8> {
    let mut out = vec![kind];
    out.extend(bytes);
    out
}

/// Valid consensus objects of a test cluster: a 3-block chain with QCs, a TC, a timeout, a
/// vote, a proposal, a commit proof and an epoch-change record.
struct Objects {
    proposal: v1::Proposal,
    timeout: v1::Timeout,
    tc: v1::TimeoutCert,
    vote: v1::Vote,
    blocks: Vec<v1::Block>,
    proof: v1::CommitProof,
    record: v1::EpochChangeRecord,
}

fn objects() -> Objects {
    let c = Cluster::new(Scheme::Secp256k1, &[1, 1, 2, 3], 40);
    let all = [0, 1, 2, 3];
    let g = c.ctx.genesis_qc();
    let b1 = c.block(1, g.clone(), vec![BatchDigest([1; 32])]);
    let q1 = c.qc(1, b1.id(), &all);
    let b2 = c.block(2, q1.clone(), Vec::new());
    let q2 = c.qc(2, b2.id(), &all);
    let tc = c.tc(3, q2.clone(), &[(0, 2), (1, 2), (2, 2), (3, 2)]);
    let b4 = c.block(4, q2.clone(), Vec::new());
    let proposal = c.proposal(b4.clone(), Some(tc.clone()));
    let timeout = c.timeout(1, 3, q2.clone(), None);
    let vote = c.vote(2, 4, b4.id());
    let members = c.ctx.set().member_infos();
    let leader = c.signers[c.leader(5)].address();
    let b5 = Block::new(
        0,
        5,
        c.qc(4, b4.id(), &all),
        leader,
        Vec::new(),
        Some(Reconfigure {
            chain_block_number: 9,
            chain_block_hash: [9; 32],
            validator_set_hash: validator_set_hash(&members),
            members,
        }),
    );
    let b6 = c.block(6, c.qc(5, b5.id(), &all), Vec::new());
    let record = EpochChangeRecord {
        epoch: 0,
        qc: c.qc(6, b6.id(), &all),
        path: vec![b5, b6],
    };
    Objects {
        proposal: wire::proposal_to_wire(&proposal),
        timeout: wire::timeout_to_wire(&timeout),
        tc: wire::tc_to_wire(&tc),
        vote: wire::vote_to_wire(&vote),
        blocks: [&b1, &b2, &b4].map(wire::block_to_wire).to_vec(),
        proof: wire::proof_to_wire(&CommitProof {
            certified: b2,
            qc: q2,
        }),
        record: wire::record_to_wire(&record),
    }
}

fn batch() -> v1::Batch {
    v1::Batch {
        transactions: vec![
            br#"{"op":"put","key":"a","value":"1"}"#.to_vec(),
            br#"{"op":"delete","key":"b","nonce":7}"#.to_vec(),
        ],
    }
}

fn gossip(o: &Objects) -> Vec<Vec<u8>> {
    [
        GossipBody::Proposal(o.proposal.clone()),
        GossipBody::Timeout(o.timeout.clone()),
        GossipBody::Tc(o.tc.clone()),
        GossipBody::Batch(batch()),
        GossipBody::EpochChange(o.record.clone()),
    ]
    .into_iter()
    .map(|b| v1::GossipMessage::new(b).encode_to_vec())
    .collect()
}

fn sync_page(o: &Objects) -> v1::SyncResponse {
    v1::SyncResponse {
        blocks: o
            .blocks
            .iter()
            .enumerate()
            .map(|(i, b)| v1::CommittedBlock {
                height: i as u64 + 1,
                block: Some(b.clone()),
                proof: Some(o.proof.clone()),
            })
            .collect(),
        records: vec![o.record.clone()],
        ..Default::default()
    }
}

fn responses(o: &Objects) -> Vec<Vec<u8>> {
    [
        ResponseBody::Sync(sync_page(o)),
        ResponseBody::Blocks(v1::BlockResponse {
            blocks: o.blocks.clone(),
        }),
        ResponseBody::Batches(v1::BatchResponse {
            batches: vec![batch()],
        }),
        ResponseBody::Ack(v1::Ack {}),
    ]
    .into_iter()
    .map(|b| v1::Response::new(b).encode_to_vec())
    .collect()
}

fn requests(o: &Objects) -> Vec<Vec<u8>> {
    [
        RequestBody::Vote(o.vote.clone()),
        RequestBody::Batches(v1::BatchRequest {
            digests: vec![vec![1; 32]],
        }),
        RequestBody::Sync(v1::SyncRequest {
            from_height: 1,
            max_blocks: 64,
            known_epoch: 0,
        }),
        RequestBody::Blocks(v1::BlockRequest {
            block_id: vec![2; 32],
            stop_at_round: 0,
            max_blocks: 16,
        }),
    ]
    .into_iter()
    .map(|b| v1::Request::new(b).encode_to_vec())
    .collect()
}

fn kv_txs() -> Vec<Vec<u8>> {
    vec![
        KvTx::Put {
            key: "user:1".into(),
            value: "alice".into(),
            nonce: Some(1),
        }
        .encode(),
        KvTx::Delete {
            key: "user:2".into(),
            nonce: None,
        }
        .encode(),
        br#"{"op":"put","key":"k","value":"\u00e9\n"}"#.to_vec(),
    ]
}

/// A genuine dstack identity: KMS root 0x11.., app key 0x22.., derived key 0x33.., app id
/// 0x44.., purpose `fuzz` (the `dstack_replies` target anchors in the same root).
pub fn dstack_identity() -> (SigningKey, [u8; 20], &'static str, SigningKey, Vec<Vec<u8>>) {
    let root = SigningKey::from_slice(&[0x11; 32]).expect("root key");
    let app = SigningKey::from_slice(&[0x22; 32]).expect("app key");
    let derived = SigningKey::from_slice(&[0x33; 32]).expect("derived key");
    let app_id = [0x44; 20];
    let purpose = "fuzz";
    let app_sig = identity::sign_prehash(
        &app,
        &identity::app_message_hash(purpose, derived.verifying_key()),
    );
    let kms_sig = identity::sign_prehash(
        &root,
        &identity::kms_message_hash(&app_id, app.verifying_key()),
    );
    (
        root,
        app_id,
        purpose,
        derived,
        vec![app_sig.to_vec(), kms_sig.to_vec()],
    )
}

fn dstack() -> Vec<Vec<u8>> {
    let (_, app_id, _, derived, chain) = dstack_identity();
    let info = serde_json::json!({
        "app_id": hex::encode(app_id),
        "instance_id": hex::encode([0x55; 20]),
        "app_name": "dstack-nft-cluster",
    });
    let key = serde_json::json!({
        "key": hex::encode(derived.to_bytes()),
        "signature_chain": chain.iter().map(hex::encode).collect::<Vec<_>>(),
    });
    let mut both = info.to_string().into_bytes();
    both.push(0);
    both.extend(key.to_string().into_bytes());
    vec![
        tagged(0, both),
        tagged(1, key.to_string().into_bytes()),
        tagged(
            2,
            br#"{"quote":"00ff","event_log":"[]","simulated":true}"#.to_vec(),
        ),
        tagged(3, br#"{"version":"0.5.3","rev":"abc"}"#.to_vec()),
    ]
}

/// Bytes that `arbitrary` decodes into chosen values (little-endian integers, a `u32` that
/// picks an enum variant by proportion, a byte per `bool`/`Option` flag and per
/// take-rest element).
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }
    fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }
    fn u16(&mut self, v: u16) -> &mut Self {
        self.0.extend(v.to_le_bytes());
        self
    }
    fn variant(&mut self, index: u64, count: u64) -> &mut Self {
        let t = (index << 32).div_ceil(count);
        self.0.extend((t as u32).to_le_bytes());
        self
    }
    fn step(&mut self, index: u64) -> &mut Self {
        // A take-rest element: "one more" flag, then the step's variant.
        self.bool(true).variant(index, STEP_VARIANTS)
    }
    fn current_round(&mut self, offset: i8) -> &mut Self {
        self.variant(0, 4).u8(offset as u8)
    }
    fn set(&mut self, powers: [u8; 4]) -> &mut Self {
        for p in powers {
            self.u8(p);
        }
        self
    }
    fn honest_round(&mut self, batches: u8) -> &mut Self {
        self.step(0).u8(batches)
    }
    fn timer(&mut self, advance_ms: u16) -> &mut Self {
        self.step(6).bool(false).u16(advance_ms)
    }
    fn payload(&mut self) -> &mut Self {
        self.step(7).bool(false).u8(2)
    }
    fn batches_available(&mut self) -> &mut Self {
        self.step(8).bool(false)
    }
    fn fetched(&mut self) -> &mut Self {
        self.step(9).bool(false).u8(8).bool(false)
    }
    fn pinned(&mut self, number: u16, powers: [u8; 4]) -> &mut Self {
        self.step(10).u16(number).set(powers).u16(10)
    }
    fn chain_set(&mut self) -> &mut Self {
        self.step(11).bool(true).bool(false)
    }
    fn valid_record(&mut self, powers: [u8; 4]) -> &mut Self {
        self.step(12).variant(0, 3).set(powers).current_round(0)
    }
    fn timeout(&mut self, member: u8) -> &mut Self {
        // Timeout { round: Current(0), who: Member(m), qc: 0, tc: None, tamper: None }
        self.step(3)
            .current_round(0)
            .variant(0, 3)
            .u8(member)
            .u8(0)
            .bool(false)
            .variant(0, 5)
    }
    fn end(&mut self) -> Vec<u8> {
        self.bool(false);
        std::mem::take(&mut self.0)
    }
}

/// Number of `core_harness::Step` variants (the encoder picks them by index).
const STEP_VARIANTS: u64 = 15;

fn core_input(shape: u8, me: u8, small: bool, script: impl Fn(&mut Enc)) -> Vec<u8> {
    let mut e = Enc::default();
    e.u8(shape).u8(me).bool(small);
    script(&mut e);
    e.end()
}

/// Scripts for the core target, with the least they must reach (round, epoch, committed).
fn core_scripts() -> Vec<(Vec<u8>, core_harness::RunStats)> {
    let honest = |rounds: usize| {
        move |e: &mut Enc| {
            for i in 0..rounds {
                e.honest_round(i as u8 % 3);
            }
        }
    };
    let at_least = |round, epoch, committed| core_harness::RunStats {
        round,
        epoch,
        committed,
    };
    vec![
        // Honest rounds commit, in every cluster shape and as every member.
        (core_input(0, 0, false, honest(8)), at_least(8, 0, 5)),
        (core_input(1, 3, false, honest(8)), at_least(8, 0, 5)),
        (core_input(3, 1, true, honest(6)), at_least(6, 0, 3)),
        // A round times out (the other members' timeouts form a TC), then rounds resume.
        (
            core_input(0, 2, false, |e| {
                honest(3)(e);
                e.timer(1_500).timeout(0).timeout(1).timeout(3);
                honest(4)(e);
            }),
            at_least(7, 0, 2),
        ),
        // The core asks for a payload, batches and blocks, and gets them.
        (
            core_input(1, 1, false, |e| {
                honest(2)(e);
                e.payload().batches_available().fetched();
                honest(3)(e);
            }),
            at_least(4, 0, 1),
        ),
        // A valid epoch-change record moves the core to epoch 1, where rounds go on.
        (
            core_input(0, 1, false, |e| {
                honest(2)(e);
                e.valid_record([1, 1, 1, 1]);
                honest(5)(e);
            }),
            at_least(4, 1, 5),
        ),
        // The oracle pins a new set; a Reconfigure is proposed, checked and committed.
        (
            core_input(0, 2, true, |e| {
                e.pinned(40, [2, 1, 1, 1]);
                for i in 0..12 {
                    e.honest_round(0).chain_set();
                    if i % 4 == 0 {
                        e.pinned(40 + i, [2, 1, 1, 1]);
                    }
                }
            }),
            at_least(1, 1, 1),
        ),
    ]
}

fn core_seeds() -> Vec<Vec<u8>> {
    let clusters = core_harness::clusters();
    core_scripts()
        .into_iter()
        .map(|(bytes, want)| {
            let input = Input::arbitrary_take_rest(Unstructured::new(&bytes)).expect("decodes");
            let got = core_harness::run(&clusters, input)
                .unwrap_or_else(|v| panic!("seed breaks an invariant: {}", v.0));
            assert!(
                got.round >= want.round
                    && got.epoch >= want.epoch
                    && got.committed >= want.committed,
                "a core seed fell short: got {got:?}, want at least {want:?}"
            );
            bytes
        })
        .collect()
}

/// Every target's seeds.
pub fn all() -> Vec<Seeds> {
    let o = objects();
    let canonical = encode_batch(&batch().transactions);
    let mut frames = Vec::new();
    for f in [
        proto::batch_gossip(&canonical),
        v1::GossipMessage::new(GossipBody::Batch(batch())).encode_to_vec(),
    ] {
        frames.extend((f.len() as u32).to_be_bytes());
        frames.extend(f);
    }
    let mut bulk = Vec::new();
    for tx in kv_txs() {
        push_frame(&mut bulk, &tx);
    }
    let g = membership::genesis::Genesis::new(
        31337,
        alloy::primitives::Address::repeat_byte(0x11),
        membership::genesis::GenesisBlock {
            number: 12,
            hash: alloy::primitives::B256::repeat_byte(0x33),
        },
        alloy::primitives::B256::repeat_byte(0x44),
    );
    let envelopes: Vec<Vec<u8>> = gossip(&o)
        .into_iter()
        .map(|b| tagged(0, b))
        .chain(requests(&o).into_iter().map(|b| tagged(1, b)))
        .chain(responses(&o).into_iter().map(|b| tagged(2, b)))
        .collect();
    let messages: Vec<Vec<u8>> = vec![
        tagged(
            2,
            o.proposal
                .block
                .as_ref()
                .and_then(|b| b.header.as_ref())
                .and_then(|h| h.qc.clone())
                .unwrap_or_default()
                .encode_to_vec(),
        ),
        tagged(3, o.tc.encode_to_vec()),
        tagged(5, o.blocks[0].encode_to_vec()),
        tagged(6, o.proposal.encode_to_vec()),
        tagged(7, o.vote.encode_to_vec()),
        tagged(8, o.timeout.encode_to_vec()),
        tagged(9, o.proof.encode_to_vec()),
        tagged(11, o.record.encode_to_vec()),
        tagged(15, batch().encode_to_vec()),
        tagged(21, sync_page(&o).encode_to_vec()),
    ];
    let mut convert: Vec<Vec<u8>> = gossip(&o).into_iter().map(|b| tagged(0, b)).collect();
    convert.push(tagged(1, requests(&o).swap_remove(0)));
    convert.extend(o.blocks.iter().map(|b| tagged(2, b.encode_to_vec())));
    let config = render(&Config::default());
    vec![
        Seeds {
            target: "proto_envelopes",
            inputs: envelopes,
        },
        Seeds {
            target: "proto_messages",
            inputs: messages,
        },
        Seeds {
            target: "wire_convert",
            inputs: convert,
        },
        Seeds {
            target: "batch_frames",
            inputs: vec![frames.clone(), tagged(1, frames)],
        },
        Seeds {
            target: "block_sync",
            inputs: responses(&o),
        },
        Seeds {
            target: "kv_tx",
            inputs: kv_txs(),
        },
        Seeds {
            target: "http_txs",
            inputs: kv_txs()
                .into_iter()
                .map(|t| tagged(0, t))
                .chain([tagged(1, bulk)])
                .collect(),
        },
        Seeds {
            target: "genesis_json",
            inputs: vec![g.to_json().into_bytes()],
        },
        Seeds {
            target: "config_toml",
            inputs: vec![
                config.clone().into_bytes(),
                format!("{config}\n#--\napi.listen=127.0.0.1:9000\nDSTACK_NODE_LOG_FORMAT=json\n")
                    .into_bytes(),
            ],
        },
        Seeds {
            target: "dstack_replies",
            inputs: dstack(),
        },
        Seeds {
            target: "identity_chain",
            // `genuine` set, by address and by key, no flips; then one flip.
            inputs: vec![vec![1, 0, 1], vec![1, 0, 0], vec![1, 1, 0x10, 0, 1, 1]],
        },
        Seeds {
            target: "core_cluster",
            inputs: core_seeds(),
        },
    ]
}
