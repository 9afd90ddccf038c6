//! The dstack guest agent's JSON answers (`GetKey`, `Info`, `GetQuote`, `Version`), decoded
//! as the client decodes them, then the node key built from an `Info` and a `GetKey` answer
//! the way `DstackClient::node_key` builds it, and its signature chain verified against the
//! root of `fuzz::seeds::dstack_identity` (the seeds carry a chain that verifies).
#![no_main]
use alloy::primitives::Address;
use libfuzzer_sys::fuzz_target;
use membership::dstack::{
    DerivedKey, GetKeyResponse, Info, NodeKey, QuoteResponse, VersionResponse, parse_reply,
};
use membership::identity::{self, KmsRoot};
use membership::kdf;

const ENDPOINT: &str = "unix:/fuzz/dstack.sock";

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 4 {
        0 => {
            // `Info` then `GetKey`, separated by a NUL byte.
            let (info, key) = match bytes.iter().position(|&b| b == 0) {
                Some(i) => (&bytes[..i], &bytes[i + 1..]),
                None => (bytes, &b"{}"[..]),
            };
            let (root, _, purpose, _, _) = fuzz::seeds::dstack_identity();
            let Ok(raw) = parse_reply::<serde_json::Value>(ENDPOINT, "Info", info) else {
                return;
            };
            let Ok(info) = Info::from_reply(ENDPOINT, raw) else {
                return;
            };
            let Ok(app_id) = info.app_id_bytes() else {
                return;
            };
            let Ok(instance_id) = kdf::normalize_instance_id(&info.instance_id) else {
                return;
            };
            let Ok(path) = kdf::node_key_path(31337, Address::repeat_byte(0x11), &instance_id)
            else {
                return;
            };
            let Ok(reply) = parse_reply::<GetKeyResponse>(ENDPOINT, "GetKey", key) else {
                return;
            };
            let Ok(key) = DerivedKey::from_reply(ENDPOINT, &reply) else {
                return;
            };
            let node_key = NodeKey {
                path,
                app_id,
                instance_id,
                purpose: purpose.into(),
                key,
            };
            let _ = node_key.instance_id_bytes20();
            let root = identity::address_of(root.verifying_key());
            if let Ok(id) = node_key.verify(KmsRoot::Address(root)) {
                assert_eq!(id.kms_root, root);
                assert_eq!(id.app_id, node_key.app_id);
            }
        }
        1 => {
            if let Ok(reply) = parse_reply::<GetKeyResponse>(ENDPOINT, "GetKey", bytes) {
                let _ = DerivedKey::from_reply(ENDPOINT, &reply);
            }
        }
        2 => {
            let _ = parse_reply::<QuoteResponse>(ENDPOINT, "GetQuote", bytes);
        }
        _ => {
            let _ = parse_reply::<VersionResponse>(ENDPOINT, "Version", bytes);
        }
    }
});
