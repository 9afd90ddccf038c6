//! Interoperability: keys and chains computed here straight from dstack's formats (HKDF-SHA256
//! salt "RATLS", keccak messages, k256 `sign_digest_recoverable` as dstack's KMS and guest agent
//! call it), without the crate's derivation code, compared with what the simulator binary serves
//! over its socket in both modes.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hkdf::Hkdf;
use k256::ecdsa::SigningKey;
use membership::dstack::DstackClient;
use sha2::Sha256;
use sha3::{Digest, Keccak256};

const APP_ID_HEX: &str = "d4a3f2e1c0b9a8970605040302010f0e0d0c0b0a";
const INSTANCE_HEX: &str = "00112233445566778899aabbccddeeff00112233";
const PURPOSE: &str = "dstack-nft-cluster";

/// dstack `ra_tls::kdf::derive_key(ikm, context, 32)`.
fn dstack_derive(ikm: &[u8], context: &[&[u8]]) -> [u8; 32] {
    let hk = Hkdf::<Sha256>::new(Some(b"RATLS"), ikm);
    let mut okm = [0u8; 32];
    hk.expand_multi_info(context, &mut okm).unwrap();
    okm
}

/// dstack's recoverable signature: keccak digest, `sign_digest_recoverable`, r‖s‖recid.
fn dstack_sign(key: &SigningKey, msg: &[u8]) -> Vec<u8> {
    let (sig, recid) = key
        .sign_digest_recoverable(Keccak256::new_with_prefix(msg))
        .unwrap();
    let mut out = sig.to_vec();
    out.push(recid.to_byte());
    out
}

struct Sim(Child);
impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_sim(args: &[&str], socket: &std::path::Path) -> Sim {
    let child = Command::new(env!("CARGO_BIN_EXE_dstack-simulator"))
        .args(args)
        .arg("--socket")
        .arg(socket)
        .args(["--app-id", APP_ID_HEX, "--instance-id", INSTANCE_HEX])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start dstack-simulator");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        assert!(
            Instant::now() < deadline,
            "simulator did not create its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Sim(child)
}

#[tokio::test]
async fn simulator_binary_matches_independent_dstack_computation_in_both_modes() {
    let dir = tempfile::tempdir().unwrap();
    let root_file = dir.path().join("kms-root.key");
    let appkeys = dir.path().join("appkeys.json");
    let sock_kms = dir.path().join("kms.sock");
    let _kms = spawn_sim(
        &[
            "--kms-root-key",
            root_file.to_str().unwrap(),
            "--write-appkeys",
            appkeys.to_str().unwrap(),
        ],
        &sock_kms,
    );
    // The generated root was written; read it back as dstack's KMS would hold it.
    let root_hex = std::fs::read_to_string(&root_file).unwrap();
    let root = SigningKey::from_slice(&hex::decode(root_hex.trim()).unwrap()).unwrap();
    let app_id = hex::decode(APP_ID_HEX).unwrap();

    // KMS: app key and its signature.
    let app_key =
        SigningKey::from_slice(&dstack_derive(&root.to_bytes(), &[&app_id, b"app-key"])).unwrap();
    let app_pub33 = app_key.verifying_key().to_sec1_bytes();
    assert_eq!(app_pub33.len(), 33);
    let kms_sig = dstack_sign(
        &root,
        &[b"dstack-kms-issued".as_slice(), b":", &app_id, &app_pub33].concat(),
    );
    // The appkeys.json the simulator wrote holds exactly these.
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&appkeys).unwrap()).unwrap();
    assert_eq!(file["k256_key"], hex::encode(app_key.to_bytes()));
    assert_eq!(file["k256_signature"], hex::encode(&kms_sig));

    // Guest agent: derived key for the path and the app signature.
    let path = format!(
        "dstack-nft-cluster/8453/0x5fbdb2315678afecb367f032d93f642f64180aa3/{INSTANCE_HEX}"
    );
    let derived =
        SigningKey::from_slice(&dstack_derive(&app_key.to_bytes(), &[path.as_bytes()])).unwrap();
    let derived_pub_hex = hex::encode(derived.verifying_key().to_sec1_bytes());
    let app_sig = dstack_sign(&app_key, format!("{PURPOSE}:{derived_pub_hex}").as_bytes());

    let sock_app = dir.path().join("app.sock");
    let _app = spawn_sim(&["--appkeys", appkeys.to_str().unwrap()], &sock_app);
    for sock in [&sock_kms, &sock_app] {
        let client = DstackClient::new(Some(sock.to_str().unwrap())).unwrap();
        let got = client.get_key_raw(&path, PURPOSE).await.unwrap();
        assert_eq!(got.key, hex::encode(derived.to_bytes()));
        assert_eq!(
            got.signature_chain,
            vec![hex::encode(&app_sig), hex::encode(&kms_sig)]
        );
        // And the node key path the client builds from Info is the DESIGN one.
        let contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
            .parse()
            .unwrap();
        let node = client.node_key(8453, contract, PURPOSE).await.unwrap();
        assert_eq!(node.path, path);
        assert_eq!(node.key.secret, derived);
        let id = node
            .verify(membership::identity::KmsRoot::Address(
                membership::identity::address_of(root.verifying_key()),
            ))
            .unwrap();
        assert_eq!(
            id.derived_address,
            membership::identity::address_of(derived.verifying_key())
        );
    }
}
