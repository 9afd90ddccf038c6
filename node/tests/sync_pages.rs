//! Block sync of a commit longer than one response: a real store serves it in parts (none of them
//! proved until the last), and the requester's check (`consensus::sync::verify_page`) holds the
//! unproved run and proves all of it with the page that ends the commit.

use consensus::block_tree::CommitProof;
use consensus::crypto::Scheme;
use consensus::sync::{Anchor, PageBlock, verify_page};
use consensus::testkit::Cluster;
use consensus::types::{BatchDigest, Block};
use node::serve::answer::{self, RESPONSE_BUDGET};
use node::storage::Store;
use node::wire;
use prost::Message as _;
use proto::v1;

/// Digests per block: each block's wire form is about 16 KiB.
const DIGESTS: usize = 500;

/// A chain of `n` blocks in rounds 1, 3, 5, … (no block but the last has a child one round
/// later) and the last block's certified child: one commit of `n` blocks.
fn long_commit(c: &Cluster, n: usize) -> (Vec<Block>, CommitProof) {
    let mut blocks: Vec<Block> = Vec::new();
    let mut qc = c.ctx.genesis_qc();
    for i in 0..n {
        let round = 2 * i as u64 + 1;
        let payload = (0..DIGESTS)
            .map(|j| {
                let mut d = [0u8; 32];
                d[..8].copy_from_slice(&(i as u64).to_be_bytes());
                d[8..16].copy_from_slice(&(j as u64).to_be_bytes());
                BatchDigest(d)
            })
            .collect();
        let b = c.block(round, qc, payload);
        qc = c.full_qc(round, b.id());
        blocks.push(b);
    }
    let last = blocks.last().expect("n > 0");
    let child = c.block(last.round() + 1, qc, vec![]);
    let proof = CommitProof {
        qc: c.full_qc(child.round(), child.id()),
        certified: child,
    };
    (blocks, proof)
}

fn decode(page: &v1::SyncResponse) -> Vec<PageBlock> {
    page.blocks
        .iter()
        .map(|cb| PageBlock {
            height: cb.height,
            block: wire::block_from_wire(cb.block.as_ref().expect("block")).expect("decodes"),
            proof: cb
                .proof
                .as_ref()
                .map(|p| wire::proof_from_wire(p).expect("proof decodes")),
        })
        .collect()
}

#[test]
fn a_commit_longer_than_one_response_is_served_in_parts_and_proved_by_the_last() {
    let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 31);
    // About 1.5 responses of blocks.
    let n = RESPONSE_BUDGET / (DIGESTS * 32) * 3 / 2;
    let (blocks, proof) = long_commit(&c, n);
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    store
        .write(|w| {
            for (i, b) in blocks.iter().enumerate() {
                let bytes = wire::block_to_wire(b).encode_to_vec();
                w.put_block(&b.id().0, &bytes)?;
                // Only the last block of a commit has a proof.
                let p = if i + 1 == blocks.len() {
                    wire::proof_to_wire(&proof).encode_to_vec()
                } else {
                    Vec::new()
                };
                w.commit_block(i as u64 + 1, &b.id().0, &p)?;
            }
            Ok(())
        })
        .expect("store the commit");

    let ask = |from: u64| {
        answer::sync(
            &store,
            0,
            &v1::SyncRequest {
                from_height: from,
                max_blocks: node::serve::MAX_SYNC_BLOCKS,
                known_epoch: 0,
            },
        )
        .expect("served")
    };
    let anchor = Anchor {
        ctx: &c.ctx,
        height: 0,
        tip: None,
        epoch_b0: None,
    };
    let first = ask(1);
    assert!(
        !first.blocks.is_empty() && first.blocks.len() < n,
        "the first page holds part of the commit: {} of {n}",
        first.blocks.len()
    );
    assert!(first.encoded_len() <= proto::limits::MAX_RESPONSE_BYTES);
    assert!(first.blocks.iter().all(|b| b.proof.is_none()));
    let held = verify_page(&anchor, decode(&first), &[]);
    assert!(
        held.blocks.is_empty(),
        "nothing is proved by the first page"
    );
    assert_eq!(held.unproved.len(), first.blocks.len(), "all of it links");

    let second = ask(first.blocks.len() as u64 + 1);
    assert_eq!(
        first.blocks.len() + second.blocks.len(),
        n,
        "the second page ends the commit"
    );
    let mut all = held.unproved;
    all.extend(decode(&second));
    let v = verify_page(&anchor, all, &[]);
    assert_eq!(
        v.blocks.len(),
        n,
        "the last page's proof proves every block"
    );
    assert!(v.unproved.is_empty());
    let ids: Vec<_> = v.blocks.iter().map(|b| b.block.id()).collect();
    let want: Vec<_> = blocks.iter().map(Block::id).collect();
    assert_eq!(ids, want);
}
