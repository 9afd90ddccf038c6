//! A batch stream as a peer writes it: length-prefixed frames read with the stream's bound,
//! each taken apart as a batch envelope (fast path or general decoder) and then checked by the
//! mempool the way the driver checks a member's batch.
#![no_main]
use std::future::Future;
use std::io;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use node::frames::{canonical_batch, read_frame};
use node::mempool::{MempoolConfig, SealedBatch, encode_batch};
use proto::limits::MAX_GOSSIP_BYTES;

/// One frame read from the front of `bytes` by the stream reader (a slice is always ready).
fn read_now(bytes: &mut &[u8], max: usize) -> io::Result<Vec<u8>> {
    match std::pin::pin!(read_frame(bytes, max)).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r,
        Poll::Pending => panic!("a slice reader is never pending"),
    }
}

fuzz_target!(|data: &[u8]| {
    let cfg = MempoolConfig::default();
    let mut rest = data;
    // Small bounds now and then, so the oversize refusal is reached with small inputs.
    let max = if data.first().is_some_and(|b| b & 1 == 1) {
        64
    } else {
        MAX_GOSSIP_BYTES
    };
    while let Ok(frame) = read_now(&mut rest, max) {
        assert!(frame.len() <= max);
        let Ok(canonical) = canonical_batch(frame) else {
            break;
        };
        // The fast path hands the bytes on unchecked: what is canonical must decode the same
        // both ways and re-encode to itself; anything else the mempool must refuse.
        match SealedBatch::tx_slices(&canonical) {
            Ok(slices) => {
                let txs = SealedBatch::decode_txs(&canonical).expect("canonical bytes decode");
                assert_eq!(slices, txs.iter().map(Vec::as_slice).collect::<Vec<_>>());
                assert_eq!(encode_batch(&slices), canonical);
                if let Ok(sealed) = SealedBatch::from_canonical(canonical.clone(), &cfg) {
                    assert_eq!(sealed, SealedBatch::from_txs(&txs));
                }
            }
            Err(_) => assert!(SealedBatch::from_canonical(canonical, &cfg).is_err()),
        }
    }
});
