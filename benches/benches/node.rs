//! Node-path micro-benchmarks: batch encoding and BLAKE3 naming, a peer batch's validation
//! (decode, limits, canonical re-encoding), block encoding and id hashing, mempool insertion,
//! storage writes with fsync, gossip validation of a proposal (decode, wire conversion, k256
//! signature and QC checks), vote verification, and the KV transaction check.

use std::collections::HashSet;
use std::hint::black_box;
use std::time::Instant;

use consensus::crypto::Scheme;
use consensus::testkit::Cluster;
use consensus::types::{BatchDigest, BlockId};
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use node::mempool::{Mempool, MempoolConfig, SealedBatch, encode_batch};
use node::storage::Store;
use prost::Message;

const TX: usize = 512;

fn txs(n: usize) -> Vec<Vec<u8>> {
    let g = benches::txgen::TxGen::new("bench", TX);
    (0..n as u64).map(|i| g.make(i)).collect()
}

fn batches(c: &mut Criterion) {
    let mut group = c.benchmark_group("batch");
    for n in [100usize, 2000] {
        let t = txs(n);
        group.throughput(Throughput::Bytes((n * TX) as u64));
        group.bench_with_input(BenchmarkId::new("encode", n), &t, |b, t| {
            b.iter(|| encode_batch(black_box(t)))
        });
        let enc = encode_batch(&t);
        group.bench_with_input(BenchmarkId::new("blake3_digest", n), &enc, |b, e| {
            b.iter(|| node::mempool::batch_digest(black_box(e)))
        });
        group.bench_with_input(BenchmarkId::new("seal_from_txs", n), &t, |b, t| {
            b.iter(|| SealedBatch::from_txs(black_box(t)))
        });
        // What a node does with a peer's batch from gossip: decode, check limits, re-encode
        // canonically, name it.
        // The genesis default batch limit (1 MiB), as a node runs with.
        let cfg = MempoolConfig {
            max_batch_bytes: 1 << 20,
            ..MempoolConfig::default()
        };
        group.bench_with_input(BenchmarkId::new("from_wire", n), &enc, |b, e| {
            b.iter(|| {
                let wire = proto::v1::Batch::decode(black_box(e.as_slice())).expect("batch");
                SealedBatch::from_wire(wire, &cfg).expect("valid")
            })
        });
    }
    group.finish();
}

fn blocks(c: &mut Criterion) {
    let cluster = Cluster::new(Scheme::Secp256k1, &[1, 1, 1, 1], 7);
    let qc = cluster.full_qc(1, BlockId([1; 32]));
    let mut group = c.benchmark_group("block");
    for n in [1usize, 64] {
        let payload: Vec<BatchDigest> = (0..n).map(|i| BatchDigest([i as u8; 32])).collect();
        group.bench_with_input(BenchmarkId::new("build_and_id", n), &payload, |b, p| {
            b.iter(|| cluster.block(2, qc.clone(), black_box(p.clone())).id())
        });
        let block = cluster.block(2, qc.clone(), payload.clone());
        group.bench_with_input(BenchmarkId::new("encode", n), &block, |b, blk| {
            b.iter(|| node::wire::block_to_wire(black_box(blk)).encode_to_vec())
        });
    }
    group.finish();
}

fn mempool(c: &mut Criterion) {
    let mut group = c.benchmark_group("mempool");
    let t = txs(2000);
    group.throughput(Throughput::Elements(t.len() as u64));
    group.bench_function("submit_2000x512B", |b| {
        b.iter_batched(
            || {
                let cfg = MempoolConfig {
                    max_batch_bytes: 1 << 20,
                    ..MempoolConfig::default()
                };
                (Mempool::new(cfg), t.clone())
            },
            |(mut m, t)| {
                let now = Instant::now();
                for tx in t {
                    m.submit(tx, now, |_| None).expect("accepted");
                }
                m.take_sealed()
            },
            BatchSize::LargeInput,
        )
    });
    let mut m = Mempool::new(MempoolConfig::default());
    for k in 0..64u8 {
        // One origin per batch, so no member's share limits the set.
        let origin = consensus::types::Address([k; 20]);
        m.add_remote_from(&SealedBatch::from_txs(&[vec![k + 1]]), origin, 64)
            .expect("room for 64 batches");
    }
    group.throughput(Throughput::Elements(1));
    group.bench_function("payload_64_of_64", |b| {
        b.iter(|| m.payload(64, &HashSet::new()))
    });
    group.bench_function("kv_tx_decode_512B", |b| {
        b.iter(|| node::app::KvTx::decode(black_box(&t[0])).expect("valid"))
    });
    group.finish();
}

fn storage(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let mut group = c.benchmark_group("storage");
    group.sample_size(20);
    for n in [1usize, 2000] {
        let enc = encode_batch(&txs(n));
        group.throughput(Throughput::Bytes(enc.len() as u64));
        let mut k = 0u64;
        group.bench_with_input(BenchmarkId::new("put_batch_fsync", n), &enc, |b, e| {
            b.iter(|| {
                k += 1;
                let mut d = [0u8; 32];
                d[..8].copy_from_slice(&k.to_le_bytes());
                store.write(|w| w.put_batch(&d, e)).expect("write");
            })
        });
    }
    group.finish();
}

/// Executing a committed block of one 2,000-transaction batch (512-byte KV puts) into a store
/// that already holds earlier blocks: dedup lookups, KV puts, the transaction index and the
/// commit record, in one fsync'd transaction, as every node does for every block.
fn execution(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let mut group = c.benchmark_group("app");
    group.sample_size(20);
    group.throughput(Throughput::Elements(2000));
    let mut height = 0u64;
    group.bench_function("commit_block_2000x512B", |b| {
        b.iter_batched(
            || {
                height += 1;
                let g = benches::txgen::TxGen::new(&format!("h{height}"), TX);
                let t: Vec<Vec<u8>> = (0..2000u64).map(|i| g.make(i)).collect();
                let batch = SealedBatch::from_txs(&t);
                store
                    .write(|w| w.put_batch(&batch.digest, &batch.encoded))
                    .expect("batch");
                (height, batch.digest)
            },
            |(h, digest)| {
                let mut id = [0u8; 32];
                id[..8].copy_from_slice(&h.to_le_bytes());
                node::app::commit_block(
                    &store,
                    node::app::CommitInput {
                        height: h,
                        id: &id,
                        block: &[0u8; 200],
                        proof: &[0u8; 300],
                        batch_digests: &[digest],
                        known_hashes: &[],
                        prune_round: None,
                    },
                )
                .expect("commit")
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

fn gossip(c: &mut Criterion) {
    let mut group = c.benchmark_group("gossip_validate");
    for n in [4usize, 16] {
        let cluster = Cluster::new(Scheme::Secp256k1, &vec![1; n], 11);
        let qc = cluster.full_qc(1, BlockId([3; 32]));
        let payload: Vec<BatchDigest> = (0..8).map(|i| BatchDigest([i as u8; 32])).collect();
        let p = cluster.proposal(cluster.block(2, qc, payload), None);
        let bytes = node::wire::proposal_to_wire(&p).encode_to_vec();
        group.bench_with_input(
            BenchmarkId::new("proposal_uncached_qc", n),
            &bytes,
            |b, by| {
                b.iter(|| {
                    let w = proto::v1::Proposal::decode(black_box(by.as_slice())).expect("decode");
                    let p = node::wire::proposal_from_wire(&w).expect("wire");
                    cluster.ctx.verify_qc_uncached(p.block.qc()).expect("qc");
                    cluster.ctx.verify_proposal(&p).expect("valid")
                })
            },
        );
        let v = cluster.vote(0, 2, BlockId([9; 32]));
        group.bench_with_input(BenchmarkId::new("vote", n), &v, |b, v| {
            b.iter(|| cluster.ctx.verify_vote(black_box(v)).expect("valid"))
        });
    }
    group.finish();
}

criterion_group!(
    benches, batches, blocks, mempool, storage, execution, gossip
);
criterion_main!(benches);
