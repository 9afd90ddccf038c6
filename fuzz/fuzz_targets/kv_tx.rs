//! A KV transaction as the application executes it (committed batches carry any bytes a
//! member put there): decoded and checked, and what decodes re-encodes to an equal transaction.
#![no_main]
use libfuzzer_sys::fuzz_target;
use node::app::KvTx;

fuzz_target!(|data: &[u8]| {
    if let Ok(tx) = KvTx::decode(data) {
        let again = KvTx::decode(&tx.encode()).expect("an encoded transaction decodes");
        assert_eq!(again, tx);
    }
});
