//! The bodies of `POST /txs` and `POST /txs/bulk`: the bulk frame splitter, the transaction
//! check both endpoints run, and the mempool's admission of what passes (a real mempool).
#![no_main]
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use node::app::KvTx;
use node::frames::{push_frame, split_frames};
use node::mempool::{Mempool, MempoolConfig};

fuzz_target!(|data: &[u8]| {
    let Some((&kind, body)) = data.split_first() else {
        return;
    };
    let mut pool = Mempool::new(MempoolConfig {
        max_tx_bytes: 256,
        max_pending_txs: 8,
        ..MempoolConfig::default()
    });
    let now = Instant::now();
    let txs: Vec<&[u8]> = if kind & 1 == 0 {
        vec![body]
    } else {
        let Ok(frames) = split_frames(body) else {
            return;
        };
        // The frames are exactly the body.
        let mut again = Vec::new();
        for f in &frames {
            push_frame(&mut again, f);
        }
        assert_eq!(again, body);
        frames
    };
    for tx in txs {
        if KvTx::decode(tx).is_ok() {
            let _ = pool.submit(tx.to_vec(), now, |_| None);
        }
    }
    pool.tick(now);
    for b in pool.take_sealed() {
        assert!(b.encoded.len() <= pool.config().max_batch_bytes + 16);
    }
});
