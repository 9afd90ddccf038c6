//! Block-sync and fetch answers as a peer sends them: a response envelope holding a sync page,
//! a block page or batches, converted the way the driver converts them (records, blocks, commit
//! proofs, batches through the mempool's limits), and each record checked against a real
//! cluster's epoch context the way a sync page's records are.
#![no_main]
use consensus::crypto::Scheme;
use consensus::testkit::Cluster;
use libfuzzer_sys::fuzz_target;
use node::mempool::{MempoolConfig, SealedBatch};
use node::wire;
use proto::{ResponseBody, v1};

thread_local! {
    static CLUSTER: Cluster = Cluster::new(Scheme::Secp256k1, &[1, 1, 2, 3], 40);
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = v1::Response::decode_checked(data) else {
        return;
    };
    match body {
        ResponseBody::Sync(page) => {
            for r in &page.records {
                fuzz::roundtrip::record(r);
                if let Ok(record) = wire::record_from_wire(r) {
                    CLUSTER.with(|c| {
                        let _ = record.next_context(&c.ctx);
                    });
                }
            }
            for cb in &page.blocks {
                if let Some(b) = &cb.block {
                    fuzz::roundtrip::block(b);
                }
                if let Some(p) = &cb.proof {
                    fuzz::roundtrip::proof(p);
                }
            }
        }
        ResponseBody::Blocks(page) => {
            for b in &page.blocks {
                fuzz::roundtrip::block(b);
            }
        }
        ResponseBody::Batches(resp) => {
            let cfg = MempoolConfig::default();
            for b in resp.batches {
                let _ = SealedBatch::from_wire(b, &cfg);
            }
        }
        ResponseBody::Ack(_) | ResponseBody::Error(_) => {}
    }
});
