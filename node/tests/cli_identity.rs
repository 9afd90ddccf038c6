//! The identity, register and version subcommands of `dstack-node`, run as a process against
//! the dstack simulator (and a real anvil for `register`).

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, FixedBytes, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use k256::ecdsa::SigningKey;
use membership::contract::DstackMembershipNFT;
use membership::dstack::{DstackClient, GetKeyRequest};
use membership::identity::{address_of, compress, uncompressed64};
use membership::simulator::Simulator;

const APP_ID: [u8; 20] = [0xa5; 20];
const INSTANCE: &str = "0102030405060708090a0b0c0d0e0f1011121314";
const CONTRACT: &str = "0x5FbDB2315678afecb367f032d93F642f64180aa3";

fn root() -> SigningKey {
    SigningKey::from_slice(&[0x6b; 32]).unwrap()
}

fn node(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_dstack-node"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn verify_accepts_a_valid_chain_and_names_the_failed_check() {
    let sim = Simulator::from_kms_root(&root(), APP_ID, INSTANCE).unwrap();
    let r = sim
        .get_key(&GetKeyRequest {
            path: "p".into(),
            purpose: "dstack-nft-cluster".into(),
            algorithm: None,
        })
        .unwrap();
    let sk = SigningKey::from_slice(&hex::decode(&r.key).unwrap()).unwrap();
    let pk33 = hex::encode(compress(sk.verifying_key()));
    let pk64 = hex::encode(uncompressed64(sk.verifying_key()));
    let chain = r.signature_chain.join(",");
    let root_addr = address_of(root().verifying_key()).to_string();
    let root_pub = hex::encode(compress(root().verifying_key()));
    let app_id = hex::encode(APP_ID);
    for (kms, pk) in [(&root_addr, &pk33), (&root_pub, &pk64)] {
        let o = node(&[
            "identity",
            "verify",
            "--kms-root",
            kms,
            "--app-id",
            &app_id,
            "--purpose",
            "dstack-nft-cluster",
            "--derived-pubkey",
            pk,
            "--signature-chain",
            &chain,
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
        assert!(text(&o).contains(&address_of(sk.verifying_key()).to_string()));
    }
    let o = node(&[
        "identity",
        "verify",
        "--kms-root",
        &root_addr,
        "--app-id",
        &app_id,
        "--purpose",
        "other",
        "--derived-pubkey",
        &pk33,
        "--signature-chain",
        &chain,
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("pinned KMS root"), "{}", text(&o));
    let o = node(&[
        "identity",
        "verify",
        "--kms-root",
        &root_addr,
        "--app-id",
        &app_id,
        "--purpose",
        "dstack-nft-cluster",
        "--derived-pubkey",
        &pk33,
        "--signature-chain",
        &format!("{},", r.signature_chain[0]),
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("empty"), "{}", text(&o));
}

fn anvil_bin() -> PathBuf {
    let p = std::env::var("ANVIL_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            // The native binary, not the npm wrapper script: killing the wrapper would leave
            // anvil running.
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../contracts/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil")
        });
    assert!(
        p.exists(),
        "anvil not found at {}: run `make deps-npm`",
        p.display()
    );
    p
}

struct Kill(std::process::Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_and_register_against_the_simulator_and_anvil() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let _sim = Simulator::from_kms_root(&root(), APP_ID, INSTANCE)
        .unwrap()
        .spawn_unix(&sock)
        .unwrap();
    let sock_s = sock.to_str().unwrap().to_string();
    let contract: Address = CONTRACT.parse().unwrap();
    let expected = DstackClient::new(Some(&sock_s))
        .unwrap()
        .node_key(31337, contract, "dstack-nft-cluster")
        .await
        .unwrap();

    let o = tokio::task::spawn_blocking({
        let s = sock_s.clone();
        move || {
            node(&[
                "identity",
                "show",
                "--dstack",
                &s,
                "--chain-id",
                "31337",
                "--contract",
                CONTRACT,
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains(&format!("address: {}", expected.address())));
    assert!(text(&o).contains("peer_id: 16Uiu2"), "{}", text(&o));

    // anvil, the contract at its first deployment address, a token for a fresh owner.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _anvil = Kill(
        Command::new(anvil_bin())
            .args([
                "--port",
                &port.to_string(),
                "--slots-in-an-epoch",
                "1",
                "--block-time",
                "1",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("http://127.0.0.1:{port}");
    let deployer: PrivateKeySigner =
        "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
            .parse()
            .unwrap();
    let p = ProviderBuilder::new()
        .wallet(EthereumWallet::from(deployer.clone()))
        .connect_http(url.parse().unwrap())
        .erased();
    let deadline = Instant::now() + Duration::from_secs(20);
    while p.get_chain_id().await.is_err() {
        assert!(Instant::now() < deadline, "anvil did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let c = DstackMembershipNFT::deploy(p.clone(), "C".into(), "C".into(), deployer.address())
        .await
        .unwrap();
    assert_eq!(*c.address(), contract);
    let owner = PrivateKeySigner::random();
    for call in [
        c.setKmsRoot(address_of(root().verifying_key()))
            .into_transaction_request(),
        c.setAppIdAllowed(FixedBytes(APP_ID), true)
            .into_transaction_request(),
        c.mint(owner.address()).into_transaction_request(),
    ] {
        p.send_transaction(call)
            .await
            .unwrap()
            .get_receipt()
            .await
            .unwrap();
    }
    let _: serde_json::Value = p
        .raw_request(
            "anvil_setBalance".into(),
            (owner.address(), U256::from(10u64).pow(U256::from(20u64))),
        )
        .await
        .unwrap();

    let key_hex = hex::encode(owner.credential().to_bytes());
    let o = tokio::task::spawn_blocking({
        let (s, url) = (sock_s.clone(), url.clone());
        move || {
            Command::new(env!("CARGO_BIN_EXE_dstack-node"))
                .args([
                    "register",
                    "--token-id",
                    "1",
                    "--owner-key-env",
                    "OWNER_KEY",
                    "--rpc",
                    &url,
                ])
                .args([
                    "--contract",
                    CONTRACT,
                    "--dstack",
                    &s,
                    "--connection-url",
                    "/ip4/127.0.0.1/tcp/9000",
                ])
                .env("OWNER_KEY", key_hex)
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains(&expected.address().to_string()));
    let power = c.powerOf(expected.address()).call().await.unwrap();
    assert_eq!(power, U256::from(1));

    // A missing key variable is a clear error, exit 1.
    let o = node(&[
        "register",
        "--token-id",
        "1",
        "--owner-key-env",
        "NO_SUCH_VAR_X",
        "--rpc",
        &url,
        "--contract",
        CONTRACT,
        "--dstack",
        &sock_s,
        "--connection-url",
        "x",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("NO_SUCH_VAR_X"), "{}", text(&o));

    // show with the owner options prints the payload with the contract's nonce (now 1).
    let o = tokio::task::spawn_blocking(move || {
        node(&[
            "identity",
            "show",
            "--dstack",
            &sock_s,
            "--chain-id",
            "31337",
            "--contract",
            CONTRACT,
            "--owner",
            &owner.address().to_string(),
            "--token-id",
            "1",
            "--rpc",
            &url,
            "--connection-url",
            "/ip4/127.0.0.1/tcp/9000",
        ])
    })
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("\"nonce\": \"1\""), "{}", text(&o));
}
