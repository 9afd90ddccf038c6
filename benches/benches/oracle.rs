//! The validator-set oracle's snapshot time for 1,000 registered members on a real anvil: the
//! cost every node pays when it reads the set for an epoch change.
//!
//! Setup (not measured): anvil on a free port, the contract deployed from the committed
//! artifact, 1,000 tokens minted to four owners and 1,000 distinct nodes registered with keys
//! derived in process from one KMS root, sent with explicit nonces without waiting for each
//! receipt. The bench then reads `Oracle::snapshot_at` at a finalized block that includes them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::eips::BlockNumberOrTag;
use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, Bytes, FixedBytes, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use criterion::{Criterion, criterion_group, criterion_main};
use k256::ecdsa::SigningKey;
use membership::contract::DstackMembershipNFT;
use membership::genesis::PinRule;
use membership::identity::{KmsRoot, TrustAnchor, address_of};
use membership::kdf::{app_signature, derive_app_key, derive_path_key, node_key_path};
use membership::oracle::{BlockRef, Oracle};
use membership::sdk::{DEFAULT_DEADLINE_SECS, RegistrationRequest, build_registration};

/// Members registered.
const MEMBERS: usize = 1_000;
/// Token owners (each registers `MEMBERS / OWNERS` nodes).
const OWNERS: usize = 4;
/// anvil's first default account: deployer and contract owner.
const DEPLOYER_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
const APP_ID: [u8; 20] = [0xa5; 20];
const PURPOSE: &str = "dstack-nft-cluster";
const CHAIN_ID: u64 = 31337;

fn anvil_bin() -> PathBuf {
    let p = match std::env::var("ANVIL_BIN") {
        Ok(p) => PathBuf::from(p),
        Err(_) => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"),
    };
    assert!(
        p.exists(),
        "anvil not found at {}: run make deps-npm (or set ANVIL_BIN)",
        p.display()
    );
    p
}

/// A running anvil, killed on drop.
struct Anvil {
    child: Child,
    url: String,
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Anvil {
    async fn start() -> Anvil {
        for _ in 0..3 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("free port")
                .port();
            let child = Command::new(anvil_bin())
                .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
                .args(["--slots-in-an-epoch", "1", "--block-time", "1"])
                .args(["--gas-limit", "100000000", "--code-size-limit", "100000"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn anvil");
            let mut anvil = Anvil {
                child,
                url: format!("http://127.0.0.1:{port}"),
            };
            let reader = anvil.reader();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if reader.get_chain_id().await.is_ok() {
                    return anvil;
                }
                if let Ok(Some(_)) = anvil.child.try_wait() {
                    break; // port taken meanwhile: try another
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("anvil did not start within 20 s (three ports tried)");
    }

    fn reader(&self) -> DynProvider {
        ProviderBuilder::new()
            .connect_http(self.url.parse().unwrap())
            .erased()
    }

    fn wallet(&self, signer: &PrivateKeySigner) -> DynProvider {
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer.clone()))
            .connect_http(self.url.parse().unwrap())
            .erased()
    }
}

/// Everything the measured loop needs; `_anvil` keeps the chain alive.
struct Setup {
    _anvil: Anvil,
    oracle: Oracle,
    block: BlockRef,
}

async fn setup() -> Setup {
    let started = Instant::now();
    let anvil = Anvil::start().await;
    let deployer: PrivateKeySigner = DEPLOYER_KEY.parse().unwrap();
    let admin_p = anvil.wallet(&deployer);
    let kms_root = SigningKey::from_slice(&[0x6b; 32]).unwrap();
    let admin = DstackMembershipNFT::deploy(
        admin_p.clone(),
        "Dstack Cluster".to_string(),
        "DNC".to_string(),
        deployer.address(),
    )
    .await
    .expect("deploy from the artifact");
    let contract = *admin.address();
    admin
        .setKmsRoot(address_of(kms_root.verifying_key()))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    admin
        .setAppIdAllowed(FixedBytes(APP_ID), true)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();

    let owners: Vec<PrivateKeySigner> = (0..OWNERS).map(|_| PrivateKeySigner::random()).collect();
    let per_owner = MEMBERS / OWNERS;
    for o in &owners {
        let (): () = anvil
            .reader()
            .raw_request(
                "anvil_setBalance".into(),
                (o.address(), U256::from(10u64).pow(U256::from(21u64))),
            )
            .await
            .unwrap();
        let r = admin
            .mintBatch(o.address(), U256::from(per_owner))
            .send()
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
        assert!(r.status(), "mintBatch reverted");
    }

    // One app key from the KMS root; one node key per instance, as dstack derives them.
    let (app_key, kms_sig) = derive_app_key(&kms_root, &APP_ID).unwrap();
    let anchor = TrustAnchor {
        kms_root: KmsRoot::Address(address_of(kms_root.verifying_key())),
        app_id: APP_ID,
        purpose: PURPOSE.to_string(),
    };
    // The contract accepts deadlines at most a day ahead of its block time.
    let now = anvil
        .reader()
        .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
        .await
        .unwrap()
        .expect("latest block")
        .header
        .timestamp;
    let deadline = U256::from(now + DEFAULT_DEADLINE_SECS);
    let mut hashes: Vec<B256> = Vec::with_capacity(MEMBERS);
    for (k, owner) in owners.iter().enumerate() {
        let c = DstackMembershipNFT::new(contract, anvil.wallet(owner));
        let first_nonce = anvil
            .reader()
            .get_transaction_count(owner.address())
            .await
            .unwrap();
        for j in 0..per_owner {
            let i = k * per_owner + j;
            let mut instance = [0u8; 20];
            instance[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
            instance[19] = 0x07;
            let path = node_key_path(CHAIN_ID, contract, &hex_lower(&instance)).unwrap();
            let node_key = derive_path_key(&app_key, &path).unwrap();
            let app_sig = app_signature(&app_key, PURPOSE, node_key.verifying_key());
            let chain = [app_sig.to_vec(), kms_sig.to_vec()];
            let p = build_registration(
                &node_key,
                &chain,
                &anchor,
                &RegistrationRequest {
                    chain_id: CHAIN_ID,
                    contract,
                    token_id: U256::from(i + 1),
                    owner: owner.address(),
                    instance_id: instance,
                    connection_url: format!("/ip4/127.0.0.1/tcp/{}", 10_000 + i),
                    nonce: U256::ZERO,
                    deadline,
                },
            )
            .expect("registration payload");
            let pending = c
                .registerNode(
                    p.token_id,
                    p.proof(),
                    FixedBytes(p.instance_id),
                    p.connection_url.clone(),
                    p.deadline,
                    Bytes::copy_from_slice(&p.node_signature),
                )
                .nonce(first_nonce + j as u64)
                .gas(1_000_000)
                .max_fee_per_gas(100_000_000_000)
                .max_priority_fee_per_gas(1_000_000_000)
                .send()
                .await
                .expect("send registerNode");
            hashes.push(*pending.tx_hash());
        }
    }

    // Wait (bounded) for every registration's receipt, then for a finalized block past them.
    let reader = anvil.reader();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut last_block = 0u64;
    for h in &hashes {
        let r = loop {
            if let Some(r) = reader.get_transaction_receipt(*h).await.unwrap() {
                break r;
            }
            assert!(
                Instant::now() < deadline,
                "registrations not mined within 120 s"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert!(r.status(), "registerNode {h} reverted");
        last_block = last_block.max(r.block_number.unwrap());
    }
    let oracle = Oracle::new(reader, contract, PinRule::Finalized, 0);
    let block = loop {
        let b = oracle.pinned_block().await.unwrap();
        if b.number >= last_block {
            break b;
        }
        assert!(
            Instant::now() < deadline,
            "finalized block did not reach {last_block} within 120 s"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // The pinned block is fixed by hash: later blocks do not change what is measured.
    assert_eq!(
        oracle
            .block_by_number(BlockNumberOrTag::Number(block.number))
            .await
            .unwrap(),
        block
    );
    let snap = oracle.snapshot_at(block).await.expect("snapshot");
    assert_eq!(snap.members.len(), MEMBERS, "every registration in the set");
    assert_eq!(snap.total_power(), MEMBERS as u128);
    let distinct: std::collections::BTreeSet<Address> =
        snap.members.iter().map(|m| m.address).collect();
    assert_eq!(distinct.len(), MEMBERS, "distinct nodes");
    eprintln!(
        "oracle bench setup: {MEMBERS} members at block {} in {:.1} s",
        block.number,
        started.elapsed().as_secs_f64()
    );
    Setup {
        _anvil: anvil,
        oracle,
        block,
    }
}

fn hex_lower(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn snapshot_1000(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let s = rt.block_on(setup());
    let mut group = c.benchmark_group("oracle");
    group.sample_size(10);
    group.bench_function("snapshot_at_1000_members", |b| {
        b.iter(|| {
            let snap = rt
                .block_on(s.oracle.snapshot_at(s.block))
                .expect("snapshot");
            assert_eq!(snap.members.len(), MEMBERS);
            snap
        })
    });
    group.finish();
    drop(s);
}

criterion_group!(benches, snapshot_1000);
criterion_main!(benches);
