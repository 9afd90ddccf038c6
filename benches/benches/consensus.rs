//! Consensus micro-benchmarks: QC verification against the raw k256 verifications it needs, a
//! leader handling the votes of a round, the leader schedule for P = 10,000 and simulated rounds
//! per second.

use consensus::core::{Config, Core, DurableState, Event};
use consensus::crypto::Scheme;
use consensus::sim::{self, HostMode, Scenario, SimConfig};
use consensus::testkit::Cluster;
use consensus::types::{BlockId, Message, QuorumCert};
use consensus::validators::build_schedule;
use consensus::verify::EpochContext;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use k256::ecdsa::signature::hazmat::PrehashVerifier;
use k256::ecdsa::{Signature, VerifyingKey};
use std::hint::black_box;

/// The smallest quorum by index (equal powers): the signatures a QC verification must check.
fn quorum_members(cluster: &Cluster) -> Vec<usize> {
    let q = cluster.ctx.set().quorum_power();
    let mut power = 0;
    let mut who = Vec::new();
    for (i, m) in cluster.ctx.set().members().iter().enumerate() {
        if power >= q {
            break;
        }
        power += m.power;
        who.push(i);
    }
    who
}

fn verifying_key(cluster: &Cluster, i: usize) -> VerifyingKey {
    let public = cluster.ctx.set().members()[i].key.public();
    let mut sec1 = [4u8; 65];
    sec1[1..].copy_from_slice(&public.0);
    VerifyingKey::from_sec1_bytes(&sec1).expect("member key")
}

fn qc_verification(c: &mut Criterion) {
    let mut group = c.benchmark_group("qc_verify");
    for n in [4usize, 16, 64, 128] {
        let cluster = Cluster::new(Scheme::Secp256k1, &vec![1; n], 1);
        let block = BlockId([7; 32]);
        let who = quorum_members(&cluster);
        let qc: QuorumCert = cluster.qc(5, block, &who);
        group.throughput(Throughput::Elements(who.len() as u64));
        group.bench_with_input(BenchmarkId::new("verify_qc", n), &qc, |b, qc| {
            b.iter(|| {
                cluster
                    .ctx
                    .verify_qc_uncached(black_box(qc))
                    .expect("valid QC")
            })
        });
        let digest = cluster.ctx.domain().vote_digest(0, 5, &block);
        let raw: Vec<(VerifyingKey, Signature)> = who
            .iter()
            .zip(&qc.signatures)
            .map(|(&i, s)| {
                let sig = Signature::from_slice(&s.0[..64]).expect("signature");
                (verifying_key(&cluster, i), sig)
            })
            .collect();
        group.bench_with_input(BenchmarkId::new("raw_k256", n), &raw, |b, raw| {
            b.iter(|| {
                for (key, sig) in raw {
                    key.verify_prehash(black_box(&digest), sig).expect("valid");
                }
            })
        });
    }
    group.finish();
}

/// A validator receives the votes of a round until they form a QC (every validator aggregates).
fn vote_handling(c: &mut Criterion) {
    let mut group = c.benchmark_group("vote_handling");
    for n in [4usize, 16, 64] {
        let cluster = Cluster::new(Scheme::Secp256k1, &vec![1; n], 100);
        let genesis_qc = cluster.ctx.genesis_qc();
        let block = cluster.block(1, genesis_qc, Vec::new());
        let proposal = cluster.proposal(block.clone(), None);
        let votes: Vec<_> = (0..n).map(|i| cluster.vote(i, 1, block.id())).collect();
        let leader = cluster.leader(2);
        let proposer = cluster.signers[cluster.leader(1)].address();
        let setup = || {
            let mut core = Core::new(
                Config::default(),
                EpochContext::new(
                    cluster.ctx.epoch(),
                    cluster.ctx.genesis_block(),
                    cluster.ctx.set().clone(),
                    cluster.ctx.domain().clone(),
                    cluster.ctx.scheme(),
                ),
                cluster.signer_of(leader),
                DurableState::default(),
            )
            .expect("core");
            core.handle(Event::Start { now_ms: 0 });
            core.handle(Event::Message {
                from: proposer,
                message: Message::Proposal(proposal.clone()),
            });
            core
        };
        group.throughput(Throughput::Elements(n as u64));
        group.bench_function(BenchmarkId::new("votes_to_qc", n), |b| {
            b.iter_batched(
                setup,
                |mut core| {
                    for v in &votes {
                        black_box(core.handle(Event::Message {
                            from: v.signer,
                            message: Message::Vote(v.clone()),
                        }));
                    }
                    core
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn schedule(c: &mut Criterion) {
    // 1,000 validators with uneven powers summing to P = 10,000.
    let mut powers: Vec<u64> = (0..1000u64).map(|i| 1 + i % 19).collect();
    let sum: u64 = powers.iter().sum();
    powers[0] += 10_000 - sum;
    assert_eq!(powers.iter().sum::<u64>(), 10_000);
    c.bench_function("schedule_build_p10000", |b| {
        b.iter(|| build_schedule(black_box(&powers)))
    });
}

fn simulated_rounds(c: &mut Criterion) {
    let mut group = c.benchmark_group("simulator");
    group.sample_size(10);
    for (name, scheme) in [("fast", Scheme::Fast), ("real", Scheme::Secp256k1)] {
        let cfg = SimConfig {
            seed: 7,
            nodes: 4,
            powers: Some(vec![1, 1, 2, 3]),
            scenario: Scenario::Honest,
            rounds: 100,
            scheme,
            host: HostMode::Deferred,
        };
        let rounds = sim::run(&cfg).max_round;
        group.throughput(Throughput::Elements(rounds));
        group.bench_function(BenchmarkId::new("honest_rounds", name), |b| {
            b.iter(|| sim::run(black_box(&cfg)))
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    qc_verification,
    vote_handling,
    schedule,
    simulated_rounds
);
criterion_main!(benches);
