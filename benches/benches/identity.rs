//! dstack signature-chain verification beside the raw k256 public-key recoveries it needs (two
//! per chain): the goal is a chain verification within 1.2x of two recoveries.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use k256::ecdsa::{RecoveryId, Signature, SigningKey, VerifyingKey};
use membership::identity::{
    KmsRoot, TrustAnchor, address_of, app_message_hash, kms_message_hash, verify_chain,
};
use membership::kdf::{app_signature, derive_app_key, derive_path_key};
use std::hint::black_box;

fn chain_verification(c: &mut Criterion) {
    let root = SigningKey::from_slice(&[0x42; 32]).expect("root key");
    let app_id = [0xa1; 20];
    let purpose = "dstack-nft-cluster";
    let (app_key, kms_sig) = derive_app_key(&root, &app_id).expect("app key");
    let derived = derive_path_key(&app_key, "dstack-nft-cluster/31337/0x00/01").expect("key");
    let derived_pub = *derived.verifying_key();
    let app_sig = app_signature(&app_key, purpose, &derived_pub);
    let anchor = TrustAnchor {
        kms_root: KmsRoot::Address(address_of(root.verifying_key())),
        app_id,
        purpose: purpose.to_string(),
    };
    let chain = [app_sig.to_vec(), kms_sig.to_vec()];

    let mut group = c.benchmark_group("signature_chain");
    group.throughput(Throughput::Elements(1));
    group.bench_function("verify_chain", |b| {
        b.iter(|| verify_chain(black_box(&anchor), &derived_pub, &chain).expect("valid chain"))
    });

    let app_hash = app_message_hash(purpose, &derived_pub);
    let kms_hash = kms_message_hash(&app_id, app_key.verifying_key());
    let parse = |s: &[u8; 65]| {
        (
            Signature::from_slice(&s[..64]).expect("sig"),
            RecoveryId::from_byte(s[64]).expect("v"),
        )
    };
    let (a_sig, a_v) = parse(&app_sig);
    let (k_sig, k_v) = parse(&kms_sig);
    group.bench_function("two_raw_recoveries", |b| {
        b.iter(|| {
            let a = VerifyingKey::recover_from_prehash(black_box(&app_hash), &a_sig, a_v);
            let k = VerifyingKey::recover_from_prehash(black_box(&kms_hash), &k_sig, k_v);
            (a.expect("app"), k.expect("kms"))
        })
    });
    group.finish();
}

criterion_group!(benches, chain_verification);
criterion_main!(benches);
