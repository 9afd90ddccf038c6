//! The signature-chain verifier against chains from the simulator in both modes, every forgery
//! class the contract rejects, and single-byte changes (property test).

#![allow(clippy::unwrap_used)]

use k256::ecdsa::SigningKey;
use membership::appkeys::AppKeysFile;
use membership::dstack::GetKeyRequest;
use membership::identity::{
    KmsRoot, SigRole, TrustAnchor, VerifyError, address_of, check_claimed_app_key, compress,
    parse_public_key, uncompressed64, verify_chain, verify_chain_hex,
};
use membership::kdf::{app_signature, derive_app_key, derive_path_key, kms_signature};
use membership::simulator::Simulator;
use proptest::prelude::*;

const APP_ID: [u8; 20] = [0xa1; 20];
const PURPOSE: &str = "dstack-nft-cluster";
const PATH: &str = "dstack-nft-cluster/31337/0x5fbdb2315678afecb367f032d93f642f64180aa3/0102";

fn root() -> SigningKey {
    SigningKey::from_slice(&[7u8; 32]).unwrap()
}

fn anchor() -> TrustAnchor {
    TrustAnchor {
        kms_root: KmsRoot::Address(address_of(root().verifying_key())),
        app_id: APP_ID,
        purpose: PURPOSE.into(),
    }
}

/// (derived public key hex 33, [app_sig hex, kms_sig hex]) from the KMS-mode simulator.
fn kms_mode_chain() -> (String, Vec<String>) {
    let sim = Simulator::from_kms_root(&root(), APP_ID, "0102").unwrap();
    let r = sim
        .get_key(&GetKeyRequest {
            path: PATH.into(),
            purpose: PURPOSE.into(),
            algorithm: None,
        })
        .unwrap();
    let sk = SigningKey::from_slice(&hex::decode(&r.key).unwrap()).unwrap();
    (hex::encode(compress(sk.verifying_key())), r.signature_chain)
}

fn decode_chain(chain: &[String]) -> Vec<Vec<u8>> {
    chain.iter().map(|s| hex::decode(s).unwrap()).collect()
}

fn derived(pk_hex: &str) -> k256::ecdsa::VerifyingKey {
    parse_public_key("t", &hex::decode(pk_hex).unwrap()).unwrap()
}

#[test]
fn kms_mode_chain_verifies_by_address_and_by_public_key() {
    let (pk, chain) = kms_mode_chain();
    let id = verify_chain_hex(&anchor(), &pk, &[&chain[0], &chain[1]]).unwrap();
    assert_eq!(id.kms_root, address_of(root().verifying_key()));
    assert_eq!(id.derived_address, address_of(&derived(&pk)));
    let (app, _) = derive_app_key(&root(), &APP_ID).unwrap();
    assert_eq!(id.app_address, address_of(app.verifying_key()));

    let by_key = TrustAnchor {
        kms_root: KmsRoot::parse(&hex::encode(compress(root().verifying_key()))).unwrap(),
        ..anchor()
    };
    verify_chain_hex(&by_key, &pk, &[&chain[0], &chain[1]]).unwrap();
    // 64- and 65-byte forms of the derived key and 0x prefixes are accepted too.
    let full = uncompressed64(&derived(&pk));
    let with04 = format!("04{}", hex::encode(full));
    verify_chain_hex(&anchor(), &hex::encode(full), &[&chain[0], &chain[1]]).unwrap();
    verify_chain_hex(
        &anchor(),
        &format!("0x{with04}"),
        &[&format!("0x{}", chain[0]), &chain[1]],
    )
    .unwrap();
}

#[test]
fn appkeys_mode_answers_exactly_as_kms_mode() {
    let dir = tempfile::tempdir().unwrap();
    let file = AppKeysFile::issue(&root(), &APP_ID).unwrap();
    let path = dir.path().join("appkeys.json");
    std::fs::write(&path, serde_json::to_string(&file).unwrap()).unwrap();
    let parsed = AppKeysFile::parse(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let sim = Simulator::from_app_keys(parsed.keys().unwrap(), APP_ID, "0102");
    let r = sim
        .get_key(&GetKeyRequest {
            path: PATH.into(),
            purpose: PURPOSE.into(),
            algorithm: Some("secp256k1".into()),
        })
        .unwrap();
    let sk = SigningKey::from_slice(&hex::decode(&r.key).unwrap()).unwrap();
    let (pk, chain) = kms_mode_chain();
    assert_eq!(hex::encode(compress(sk.verifying_key())), pk);
    assert_eq!(r.signature_chain, chain);
    verify_chain_hex(&anchor(), &pk, &[&chain[0], &chain[1]]).unwrap();
}

#[test]
fn appkeys_json_in_dstack_shape_is_read() {
    let (app, sig) = derive_app_key(&root(), &APP_ID).unwrap();
    let text = serde_json::json!({
        "disk_crypt_key": "00",
        "env_crypt_key": "",
        "k256_key": hex::encode(app.to_bytes()),
        "k256_signature": hex::encode(sig),
        "gateway_app_id": "any",
        "ca_cert": "-----BEGIN CERTIFICATE-----",
        "key_provider": {"Kms": {"url": "https://kms", "pubkey": "02", "tmp_ca_key": "", "tmp_ca_cert": ""}},
        "a_future_field": 1
    })
    .to_string();
    let keys = AppKeysFile::parse(&text).unwrap().keys().unwrap();
    assert_eq!(keys.app_key, app);
    assert_eq!(keys.k256_signature, sig.to_vec());
    let bad = text.replace(&hex::encode(app.to_bytes()), "zz");
    assert!(AppKeysFile::parse(&bad).unwrap().keys().is_err());
}

#[test]
fn unsupported_algorithm_is_refused_and_empty_is_secp256k1() {
    let sim = Simulator::from_kms_root(&root(), APP_ID, "0102").unwrap();
    let req = |a: Option<&str>| GetKeyRequest {
        path: PATH.into(),
        purpose: PURPOSE.into(),
        algorithm: a.map(str::to_string),
    };
    assert!(sim.get_key(&req(Some("rsa"))).is_err());
    assert_eq!(
        sim.get_key(&req(Some(""))).unwrap(),
        sim.get_key(&req(None)).unwrap()
    );
}

// ---- forgery classes -------------------------------------------------------------------

fn expect_err(
    anchor: &TrustAnchor,
    pk: &k256::ecdsa::VerifyingKey,
    chain: &[Vec<u8>],
) -> VerifyError {
    verify_chain(anchor, pk, chain).expect_err("forgery must be rejected")
}

#[test]
fn wrong_root_app_id_purpose_or_key_is_rejected() {
    let (pk, chain) = kms_mode_chain();
    let pk = derived(&pk);
    let chain = decode_chain(&chain);
    let other_root = SigningKey::from_slice(&[8u8; 32]).unwrap();
    let mut a = anchor();
    a.kms_root = KmsRoot::Address(address_of(other_root.verifying_key()));
    assert!(matches!(
        expect_err(&a, &pk, &chain),
        VerifyError::KmsRootMismatch { .. }
    ));
    let mut a = anchor();
    a.app_id[0] ^= 1;
    assert!(matches!(
        expect_err(&a, &pk, &chain),
        VerifyError::KmsRootMismatch { .. }
    ));
    let mut a = anchor();
    a.purpose = "other".into();
    assert!(matches!(
        expect_err(&a, &pk, &chain),
        VerifyError::KmsRootMismatch { .. }
    ));
    let stranger = SigningKey::from_slice(&[9u8; 32]).unwrap();
    assert!(matches!(
        expect_err(&anchor(), stranger.verifying_key(), &chain),
        VerifyError::KmsRootMismatch { .. }
    ));
}

#[test]
fn app_key_of_another_app_signed_by_the_same_kms_is_rejected() {
    // The attacker runs app B under the same KMS: its app key carries a genuine KMS signature,
    // but for B's app id. Signing an arbitrary key with it must not pass for app A.
    let app_b = [0xb2; 20];
    let (app_key_b, kms_sig_b) = derive_app_key(&root(), &app_b).unwrap();
    let victim = SigningKey::from_slice(&[3u8; 32]).unwrap();
    let app_sig = app_signature(&app_key_b, PURPOSE, victim.verifying_key());
    let chain = vec![app_sig.to_vec(), kms_sig_b.to_vec()];
    assert!(matches!(
        expect_err(&anchor(), victim.verifying_key(), &chain),
        VerifyError::KmsRootMismatch { .. }
    ));
    // With B's own app id it verifies: the check is the app id, not luck.
    let mut b = anchor();
    b.app_id = app_b;
    verify_chain(&b, victim.verifying_key(), &chain).unwrap();
}

#[test]
fn claimed_app_key_must_be_the_recovered_one() {
    // The old prototype's hole: a proof naming a genuine KMS-signed app key while the app
    // signature was made by another key. The verifier recovers the real signer; the contract
    // form (claimed key beside the chain) is checked by `check_claimed_app_key`.
    let (pk, chain) = kms_mode_chain();
    let id = verify_chain(&anchor(), &derived(&pk), &decode_chain(&chain)).unwrap();
    let (app_other, _) = derive_app_key(&root(), &[0xc3; 20]).unwrap();
    check_claimed_app_key(&id, &id.app_key.clone()).unwrap();
    assert!(matches!(
        check_claimed_app_key(&id, app_other.verifying_key()),
        Err(VerifyError::AppKeyMismatch { .. })
    ));
}

#[test]
fn non_kms_high_s_bad_v_and_bad_lengths_are_rejected() {
    let (pk, chain) = kms_mode_chain();
    let pk = derived(&pk);
    let chain = decode_chain(&chain);
    let a = anchor();
    assert_eq!(
        expect_err(&a, &pk, &[chain[0].clone(), vec![]]),
        VerifyError::KmsSignatureEmpty
    );
    assert_eq!(
        expect_err(&a, &pk, &chain[..1]),
        VerifyError::ChainLength(1)
    );
    let three = vec![chain[0].clone(), chain[1].clone(), chain[1].clone()];
    assert_eq!(expect_err(&a, &pk, &three), VerifyError::ChainLength(3));
    for (i, role) in [(0usize, SigRole::App), (1, SigRole::Kms)] {
        let mut c = chain.clone();
        c[i].truncate(64);
        assert_eq!(
            expect_err(&a, &pk, &c),
            VerifyError::SignatureLength { role, got: 64 }
        );
        let mut c = chain.clone();
        c[i].push(0);
        assert_eq!(
            expect_err(&a, &pk, &c),
            VerifyError::SignatureLength { role, got: 66 }
        );
        for v in [2u8, 26, 29, 255] {
            let mut c = chain.clone();
            c[i][64] = v;
            assert_eq!(expect_err(&a, &pk, &c), VerifyError::BadV { role, v });
        }
        // v as 27/28 is the same signature.
        let mut c = chain.clone();
        c[i][64] += 27;
        verify_chain(&a, &pk, &c).unwrap();
        // High s: s' = n - s with the other parity is the same point, refused.
        let mut c = chain.clone();
        let sig = k256::ecdsa::Signature::from_slice(&c[i][..64]).unwrap();
        let (r, s) = sig.split_scalars();
        let high = k256::ecdsa::Signature::from_scalars(r, -*s).unwrap();
        c[i][..64].copy_from_slice(&high.to_bytes());
        c[i][64] ^= 1;
        assert_eq!(expect_err(&a, &pk, &c), VerifyError::HighS { role });
        // r = 0.
        let mut c = chain.clone();
        c[i][..32].fill(0);
        assert_eq!(expect_err(&a, &pk, &c), VerifyError::BadScalar { role });
    }
}

#[test]
fn malformed_text_inputs_name_the_field() {
    let (pk, chain) = kms_mode_chain();
    let e = verify_chain_hex(&anchor(), &pk[..64], &[&chain[0], &chain[1]]).unwrap_err();
    assert!(
        matches!(e, VerifyError::PublicKeyLength { got: 32, .. }),
        "{e}"
    );
    let e = verify_chain_hex(&anchor(), "zz", &[&chain[0], &chain[1]]).unwrap_err();
    assert!(e.to_string().contains("derived public key"), "{e}");
    let mut bad_point = hex::decode(&pk).unwrap();
    bad_point[0] = 0x05;
    let e =
        verify_chain_hex(&anchor(), &hex::encode(bad_point), &[&chain[0], &chain[1]]).unwrap_err();
    assert!(matches!(e, VerifyError::PublicKeyInvalid { .. }), "{e}");
    assert!(KmsRoot::parse("0x1234").is_err());
}

#[test]
fn independent_chain_pieces_compose() {
    // The library's own helpers agree with the simulator (sanity for the helpers the SDK uses).
    let (app, kms_sig) = derive_app_key(&root(), &APP_ID).unwrap();
    assert_eq!(
        kms_sig,
        kms_signature(&root(), &APP_ID, app.verifying_key())
    );
    let d = derive_path_key(&app, PATH).unwrap();
    let (pk, chain) = kms_mode_chain();
    assert_eq!(hex::encode(compress(d.verifying_key())), pk);
    assert_eq!(
        hex::encode(app_signature(&app, PURPOSE, d.verifying_key())),
        chain[0]
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Any single-byte change of the app or KMS signature is rejected, except rewriting v
    /// between its two equivalent encodings (0<->27, 1<->28).
    #[test]
    fn single_byte_change_in_a_signature_is_rejected(which in 0usize..2, idx in 0usize..65, byte in any::<u8>()) {
        let (pk, chain) = kms_mode_chain();
        let pk = derived(&pk);
        let mut chain = decode_chain(&chain);
        let old = chain[which][idx];
        prop_assume!(byte != old);
        prop_assume!(!(idx == 64 && (byte % 27 == old % 27) && byte <= 28));
        chain[which][idx] = byte;
        prop_assert!(verify_chain(&anchor(), &pk, &chain).is_err());
    }

    /// Any single-byte change of the derived key (compressed), app id or purpose is rejected.
    #[test]
    fn single_byte_change_in_key_app_id_or_purpose_is_rejected(field in 0usize..3, idx in 0usize..64, byte in any::<u8>()) {
        let (pk_hex, chain) = kms_mode_chain();
        let chain = decode_chain(&chain);
        let mut pk = hex::decode(&pk_hex).unwrap();
        let mut a = anchor();
        let mut purpose = a.purpose.clone().into_bytes();
        match field {
            0 => { let i = idx % 33; prop_assume!(pk[i] != byte); pk[i] = byte; }
            1 => { let i = idx % 20; prop_assume!(a.app_id[i] != byte); a.app_id[i] = byte; }
            _ => { let i = idx % purpose.len(); prop_assume!(purpose[i] != byte); purpose[i] = byte; }
        }
        a.purpose = String::from_utf8_lossy(&purpose).into_owned();
        prop_assume!(field != 2 || a.purpose != PURPOSE);
        let result = parse_public_key("pk", &pk).and_then(|k| verify_chain(&a, &k, &chain));
        prop_assert!(result.is_err());
    }
}
