//! The dstack signature-chain verifier on attacker-chosen keys and signatures (the contract's
//! rules: v in {0,1,27,28}, low s, nonzero scalars, 33/64/65-byte keys). Half the inputs start
//! from a chain that verifies and change a few bytes of it; a chain that verifies must recover
//! exactly the pinned root, and a signature that parses must re-encode to itself.
#![no_main]
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use k256::ecdsa::SigningKey;
use libfuzzer_sys::fuzz_target;
use membership::identity::{
    self, KmsRoot, RecoverableSig, SigRole, TrustAnchor, parse_public_key, verify_chain,
};

#[derive(Arbitrary, Debug)]
struct Input {
    /// Start from the genuine chain (and apply `flips`), or use `key` and `chain` as given.
    genuine: bool,
    flips: Vec<(u16, u8)>,
    /// Anchor by address (else by public key).
    by_address: bool,
    app_id: [u8; 20],
    purpose: String,
    key: Vec<u8>,
    chain: Vec<Vec<u8>>,
    /// Hex texts for the text entry point.
    hex_key: String,
    hex_chain: Vec<String>,
}

struct Genuine {
    root: SigningKey,
    app_id: [u8; 20],
    purpose: String,
    key: Vec<u8>,
    chain: Vec<Vec<u8>>,
}

fn genuine() -> &'static Genuine {
    static G: OnceLock<Genuine> = OnceLock::new();
    G.get_or_init(|| {
        let (root, app_id, purpose, derived, chain) = fuzz::seeds::dstack_identity();
        Genuine {
            root,
            app_id,
            purpose: purpose.to_string(),
            key: identity::compress(derived.verifying_key()).to_vec(),
            chain,
        }
    })
}

fuzz_target!(|input: Input| {
    let g = genuine();
    let (mut key, mut chain, app_id, purpose) = if input.genuine {
        (g.key.clone(), g.chain.clone(), g.app_id, g.purpose.clone())
    } else {
        (input.key, input.chain, input.app_id, input.purpose)
    };
    for (at, x) in input.flips.iter().take(4) {
        let at = usize::from(*at);
        let total = key.len() + chain.iter().map(Vec::len).sum::<usize>();
        if total == 0 {
            break;
        }
        let mut at = at % total;
        if at < key.len() {
            key[at] ^= x;
            continue;
        }
        at -= key.len();
        for part in chain.iter_mut() {
            if at < part.len() {
                part[at] ^= x;
                break;
            }
            at -= part.len();
        }
    }
    let kms_root = if input.by_address {
        KmsRoot::Address(identity::address_of(g.root.verifying_key()))
    } else {
        KmsRoot::PublicKey(*g.root.verifying_key())
    };
    let anchor = TrustAnchor {
        kms_root,
        app_id,
        purpose,
    };
    for (i, s) in chain.iter().enumerate() {
        let role = if i == 0 { SigRole::App } else { SigRole::Kms };
        if let Ok(sig) = RecoverableSig::parse(role, s)
            && s[64] < 2
        {
            assert_eq!(&sig.to_bytes()[..], &s[..]);
        }
    }
    if let Ok(derived) = parse_public_key("derived public key", &key)
        && let Ok(id) = verify_chain(&anchor, &derived, &chain)
    {
        assert_eq!(id.kms_root, identity::address_of(g.root.verifying_key()));
        assert_eq!(id.derived_key, derived);
    }
    let hex_chain: Vec<&str> = input.hex_chain.iter().map(String::as_str).take(3).collect();
    let _ = identity::verify_chain_hex(&anchor, &input.hex_key, &hex_chain);
});
