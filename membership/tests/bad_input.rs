//! Bad input gives clear errors: unreachable RPC, bad URL, an address without code, a contract
//! that is not ours, an empty set, a contract that does not trust the node's chain, a connection
//! URL the contract refuses.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use alloy::primitives::{Address, Bytes, FixedBytes, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use common::*;
use membership::connection_url::ConnectionUrlError;
use membership::contract::DstackMembershipNFT;
use membership::genesis::PinRule;
use membership::oracle::{Oracle, OracleError, RetryPolicy};
use membership::sdk::{Cluster, SdkError};

/// A connection URL the contract accepts.
const URL: &str = "/ip4/127.0.0.1/tcp/9000";

fn quick() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(100),
        call_timeout: Duration::from_secs(2),
    }
}

#[tokio::test]
async fn unreachable_rpc_and_bad_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let err = Cluster::connect(&url, Address::repeat_byte(1))
        .await
        .unwrap_err();
    assert!(matches!(err, SdkError::Rpc { .. }), "{err}");
    assert!(err.to_string().contains("eth_chainId"), "{err}");
    let err = Cluster::connect("not a url", Address::ZERO)
        .await
        .unwrap_err();
    assert!(matches!(err, SdkError::BadUrl(_)), "{err}");

    let provider = ProviderBuilder::new()
        .connect_http(url.parse().unwrap())
        .erased();
    let oracle =
        Oracle::new(provider, Address::repeat_byte(1), PinRule::Finalized, 0).with_retry(quick());
    let t = std::time::Instant::now();
    let err = oracle.snapshot().await.unwrap_err();
    assert!(matches!(err, OracleError::Rpc { attempts: 3, .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(5), "bounded retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_addresses_empty_set_and_untrusted_chain() {
    let anvil = Anvil::start().await;
    let contract = deploy(&anvil).await;
    let oracle = |addr: Address| {
        Oracle::new(anvil.reader(), addr, PinRule::HeadMinusDepth, 0).with_retry(quick())
    };

    // No code.
    let empty = Address::repeat_byte(0x77);
    let err = Cluster::connect(&anvil.url, empty).await.unwrap_err();
    assert!(matches!(err, SdkError::NoCode(a) if a == empty), "{err}");
    let err = oracle(empty).snapshot().await.unwrap_err();
    assert!(matches!(err, OracleError::NoCode { .. }), "{err}");

    // Code that is not the membership contract (reverts on every call).
    let other = Address::repeat_byte(0x78);
    let _: serde_json::Value = anvil
        .reader()
        .raw_request(
            "anvil_setCode".into(),
            (other, Bytes::from(vec![0x60, 0, 0x60, 0, 0xfd])),
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await; // let a block include it
    let err = Cluster::connect(&anvil.url, other).await.unwrap_err();
    assert!(matches!(err, SdkError::NotTheContract { .. }), "{err}");
    let err = oracle(other).snapshot().await.unwrap_err();
    assert!(matches!(err, OracleError::NotTheContract { .. }), "{err}");

    // The real contract with nobody registered: an error, never an empty set.
    let err = oracle(contract).snapshot().await.unwrap_err();
    assert!(matches!(err, OracleError::EmptySet { .. }), "{err}");

    // A block hash the chain does not know.
    let err = oracle(contract)
        .block_by_hash(alloy::primitives::B256::repeat_byte(9))
        .await
        .unwrap_err();
    assert!(matches!(err, OracleError::BlockNotFound(_)), "{err}");

    // The SDK refuses before sending when the contract does not trust the node's chain.
    let owner = PrivateKeySigner::random();
    anvil.fund(owner.address()).await;
    let admin = DstackMembershipNFT::new(contract, anvil.wallet(&deployer()));
    admin
        .mint(owner.address())
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (dstack, _t) = tee(dir.path(), 9);
    let cluster = Cluster::connect(&anvil.url, contract).await.unwrap();
    admin
        .setAppIdAllowed(FixedBytes(APP_ID), false)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let err = cluster
        .register(&dstack, U256::from(1), &owner, URL)
        .await
        .unwrap_err();
    assert!(matches!(err, SdkError::AppIdNotAllowed(_)), "{err}");
    admin
        .setAppIdAllowed(FixedBytes(APP_ID), true)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    admin
        .setKmsRoot(Address::repeat_byte(0x55))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let err = cluster
        .register(&dstack, U256::from(1), &owner, URL)
        .await
        .unwrap_err();
    assert!(matches!(err, SdkError::Verify(_)), "{err}");
    // A token the signer does not own: the contract's error is decoded.
    admin
        .setKmsRoot(membership::identity::address_of(kms_root().verifying_key()))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    let stranger = PrivateKeySigner::random();
    anvil.fund(stranger.address()).await;
    let err = cluster
        .register(&dstack, U256::from(1), &stranger, URL)
        .await
        .unwrap_err();
    assert!(matches!(err, SdkError::Rejected(_)), "{err}");
    assert!(err.to_string().contains("NotTokenOwnerOrApproved"), "{err}");
    // A connection URL the contract refuses is refused before anything is signed or sent, with
    // the offset the contract would name.
    let err = cluster
        .register(&dstack, U256::from(1), &owner, "x")
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            SdkError::ConnectionUrl(ConnectionUrlError::Invalid { position: 0, .. })
        ),
        "{err}"
    );
}
