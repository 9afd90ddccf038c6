//! Block-sync and fetch answers as a peer sends them: a response envelope holding a sync page,
//! a block page or batches, converted the way the driver converts them (records, blocks, commit
//! proofs, batches through the mempool's limits), each record checked against a real cluster's
//! epoch context the way a sync page's records are, and the page checked as the requester checks
//! it (`consensus::sync::verify_page`).
#![no_main]
use consensus::crypto::Scheme;
use consensus::sync::{Anchor, PageBlock, verify_page};
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
            // The requester's check of the page, from an empty ledger, as the driver runs it.
            let records: Vec<_> = page
                .records
                .iter()
                .filter_map(|r| wire::record_from_wire(r).ok())
                .collect();
            let blocks: Vec<PageBlock> = page
                .blocks
                .iter()
                .map_while(|cb| {
                    Some(PageBlock {
                        height: cb.height,
                        block: wire::block_from_wire(cb.block.as_ref()?).ok()?,
                        proof: cb
                            .proof
                            .as_ref()
                            .and_then(|p| wire::proof_from_wire(p).ok()),
                    })
                })
                .collect();
            let n = blocks.len();
            CLUSTER.with(|c| {
                let anchor = Anchor {
                    ctx: &c.ctx,
                    height: 0,
                    tip: None,
                    epoch_b0: None,
                };
                let v = verify_page(&anchor, blocks, &records);
                assert!(v.blocks.len() + v.unproved.len() <= n);
                assert!(v.records.len() <= records.len() + 1);
            });
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
