//! `genesis.json` as an operator (or a hostile copy of it) writes it: parsed and validated; a
//! genesis that validates must survive writing and reading back, with the same genesis id.
#![no_main]
use libfuzzer_sys::fuzz_target;
use membership::genesis::Genesis;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(g) = Genesis::from_json(text) {
        let again = Genesis::from_json(&g.to_json()).expect("written genesis reads back");
        assert_eq!(again, g);
        assert_eq!(again.genesis_id(), g.genesis_id());
        assert!(!g.canonical_encoding().is_empty());
    }
});
