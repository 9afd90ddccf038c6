//! The registration payload the Rust SDK produces for fixed inputs, committed as
//! `contracts/test/fixtures/sdk_registration.json` for the forge test, and checked here against
//! a real anvil deployment (first deployment of anvil's account 0, so the contract address is
//! deterministic). Regenerate with `UPDATE_FIXTURES=1 cargo test --release -p membership --test sdk_fixture`.

#![allow(clippy::unwrap_used)]

mod common;

use alloy::primitives::{Address, Bytes, FixedBytes, U256};
use alloy::signers::local::PrivateKeySigner;
use common::*;
use k256::ecdsa::SigningKey;
use membership::contract::DstackMembershipNFT;
use membership::dstack::GetKeyRequest;
use membership::identity::{KmsRoot, TrustAnchor, address_of};
use membership::kdf::node_key_path;
use membership::sdk::{RegistrationPayload, RegistrationRequest, build_registration};
use membership::simulator::Simulator;

/// anvil's second default account: the token owner in the fixture.
const OWNER_KEY: &str = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d";
const CONTRACT: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";
const INSTANCE: [u8; 20] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
];
const DEADLINE: u64 = 4_102_444_800; // 2100-01-01

fn fixture_path() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../contracts/test/fixtures/sdk_registration.json")
}

fn payload() -> RegistrationPayload {
    let root = kms_root();
    let contract: Address = CONTRACT.parse().unwrap();
    let owner: PrivateKeySigner = OWNER_KEY.parse().unwrap();
    let sim = Simulator::from_kms_root(&root, APP_ID, &hex::encode(INSTANCE)).unwrap();
    let r = sim
        .get_key(&GetKeyRequest {
            path: node_key_path(31337, contract, &hex::encode(INSTANCE)).unwrap(),
            purpose: "dstack-nft-cluster".into(),
            algorithm: None,
        })
        .unwrap();
    let key = SigningKey::from_slice(&hex::decode(&r.key).unwrap()).unwrap();
    let chain: Vec<Vec<u8>> = r
        .signature_chain
        .iter()
        .map(|s| hex::decode(s).unwrap())
        .collect();
    build_registration(
        &key,
        &chain,
        &TrustAnchor {
            kms_root: KmsRoot::Address(address_of(root.verifying_key())),
            app_id: APP_ID,
            purpose: "dstack-nft-cluster".into(),
        },
        &RegistrationRequest {
            chain_id: 31337,
            contract,
            token_id: U256::from(1),
            owner: owner.address(),
            instance_id: INSTANCE,
            connection_url: "/ip4/127.0.0.1/tcp/9000".into(),
            nonce: U256::ZERO,
            deadline: U256::from(DEADLINE),
        },
    )
    .unwrap()
}

#[test]
fn committed_fixture_is_what_the_sdk_produces() {
    let text = format!(
        "{}\n",
        serde_json::to_string_pretty(&payload().to_json()).unwrap()
    );
    let path = fixture_path();
    if std::env::var("UPDATE_FIXTURES").as_deref() == Ok("1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &text).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; regenerate with UPDATE_FIXTURES=1 cargo test --release -p membership --test sdk_fixture",
            path.display()
        )
    });
    assert_eq!(
        committed, text,
        "fixture differs from the SDK's output; regenerate with UPDATE_FIXTURES=1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fixture_registers_on_a_real_deployment() {
    let p = payload();
    let anvil = Anvil::start().await;
    let contract = deploy(&anvil).await;
    assert_eq!(contract, p.contract);
    let owner: PrivateKeySigner = OWNER_KEY.parse().unwrap();
    assert_eq!(
        owner.address(),
        "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
            .parse::<Address>()
            .unwrap()
    );
    let admin = DstackMembershipNFT::new(contract, anvil.wallet(&deployer()));
    admin
        .mint(owner.address())
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    // The fixture's deadline is fixed (it is signed); the contract accepts a deadline at most a
    // day ahead, so the chain's clock goes to just before it.
    anvil.set_next_block_timestamp(DEADLINE - 600).await;
    let c = DstackMembershipNFT::new(contract, anvil.wallet(&owner));
    let r = c
        .registerNode(
            p.token_id,
            p.proof(),
            FixedBytes(p.instance_id),
            p.connection_url.clone(),
            p.deadline,
            Bytes::copy_from_slice(&p.node_signature),
        )
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    assert!(r.status());
    assert_eq!(c.nodeOf(U256::from(1)).call().await.unwrap(), p.node());
    assert_eq!(c.powerOf(p.node()).call().await.unwrap(), U256::from(1));
    // Replaying the same payload fails: the nonce moved on.
    let replay = c
        .registerNode(
            p.token_id,
            p.proof(),
            FixedBytes(p.instance_id),
            p.connection_url.clone(),
            p.deadline,
            Bytes::copy_from_slice(&p.node_signature),
        )
        .send()
        .await;
    assert!(replay.is_err());
}
