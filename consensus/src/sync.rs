//! Block sync, the requester's check of a page of committed blocks: pure, so the node and the
//! tests (and the fuzzer) run the same rule.
//!
//! A page is trusted only as far as it is proved. Blocks must follow each other by height and by
//! parent from the requester's ledger tip (an epoch's first block from that epoch's genesis id),
//! each of the epoch the chain is in. A block is proved committed by its commit proof (its child
//! one round later, certified by a QC valid in its epoch), or, for the `Reconfigure` block that
//! ends an epoch, by that epoch's record, which also gives the next epoch's context; every block
//! before a proved one is committed too (its ancestor). What follows the last proved block, when
//! every block given links, is returned unproved: a commit longer than one page is proved by a
//! later page, so the requester holds that run and asks for what comes after it.

use crate::block_tree::CommitProof;
use crate::epoch::EpochChangeRecord;
use crate::types::{Block, BlockId};
use crate::verify::EpochContext;

/// Where the requester's ledger ends.
#[derive(Clone, Copy, Debug)]
pub struct Anchor<'a> {
    /// The context of the epoch the requester runs in.
    pub ctx: &'a EpochContext,
    /// The ledger's height (0: empty).
    pub height: u64,
    /// The ledger's last block (`None`: empty).
    pub tip: Option<BlockId>,
    /// The block that ended the epoch before `ctx`'s (`None` in epoch 0): when it is the tip, the
    /// next block's parent is the epoch's genesis id.
    pub epoch_b0: Option<BlockId>,
}

/// One block of a page, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageBlock {
    /// The height the responder gives it.
    pub height: u64,
    /// The block.
    pub block: Block,
    /// Its commit proof, if the responder has one.
    pub proof: Option<CommitProof>,
}

/// What a page proves.
#[derive(Debug, Default)]
pub struct Verified {
    /// The blocks proved committed, in height order from the anchor's height + 1.
    pub blocks: Vec<PageBlock>,
    /// The records that end epochs on the way, each with its B0's height (the anchor's height
    /// when the ledger's tip is a B0 whose record the requester lost).
    pub records: Vec<(u64, EpochChangeRecord)>,
    /// The context after the proved blocks, when they end the anchor's epoch.
    pub next_ctx: Option<EpochContext>,
    /// Blocks after the last proved one that link to it, not proved yet.
    pub unproved: Vec<PageBlock>,
    /// Why the check stopped before the end of the page (`None`: it read every block).
    pub stopped: Option<&'static str>,
}

impl Verified {
    /// The epoch reached after the proved blocks.
    pub fn epoch(&self, anchor: &Anchor<'_>) -> u64 {
        self.next_ctx.as_ref().unwrap_or(anchor.ctx).epoch()
    }
}

/// Whether `proof` shows `b` committed by a direct 2-chain: its child one round later, certified
/// by a QC valid in `ctx`. The peer's rounds are compared without arithmetic that could overflow,
/// and the QC (the costly part) is checked last.
pub fn proves_directly(b: &Block, proof: &CommitProof, ctx: &EpochContext) -> bool {
    proof.certified.parent_id() == b.id()
        && b.round().checked_add(1) == Some(proof.certified.round())
        && proof.qc.block_id == proof.certified.id()
        && ctx.verify_qc(&proof.qc).is_ok()
}

/// Checks `blocks` (a held unproved run, then a page) from `anchor`, with the page's `records`
/// (at most one per epoch is used: the one whose B0 the chain reaches).
pub fn verify_page(
    anchor: &Anchor<'_>,
    blocks: Vec<PageBlock>,
    records: &[EpochChangeRecord],
) -> Verified {
    let record_of = |epoch: u64, b0: BlockId| {
        records
            .iter()
            .find(|r| r.epoch == epoch && r.b0().map(Block::id) == Some(b0))
    };
    let mut out = Verified::default();
    let mut expect_parent = match anchor.tip {
        Some(id) if Some(id) != anchor.epoch_b0 => id,
        _ => anchor.ctx.genesis_block(),
    };
    // The ledger may end at B0 with its record lost in a crash: the page's record ends the epoch.
    if let Some(id) = anchor.tip
        && Some(id) != anchor.epoch_b0
        && let Some(r) = record_of(anchor.ctx.epoch(), id)
        && let Ok(next) = r.next_context(anchor.ctx)
    {
        out.records.push((anchor.height, r.clone()));
        expect_parent = next.genesis_block();
        out.next_ctx = Some(next);
    }
    let mut linked: Vec<PageBlock> = Vec::new();
    let mut proved = 0;
    let mut heights = anchor.height.checked_add(1).map(|h| h..);
    for pb in blocks {
        let Some(height) = heights.as_mut().and_then(Iterator::next) else {
            out.stopped = Some("height out of range");
            break;
        };
        if pb.height != height {
            out.stopped = Some("height gap");
            break;
        }
        let ctx = out.next_ctx.as_ref().unwrap_or(anchor.ctx);
        if pb.block.parent_id() != expect_parent {
            out.stopped = Some("block does not extend the one before");
            break;
        }
        if pb.block.epoch() != ctx.epoch() {
            out.stopped = Some("block of another epoch");
            break;
        }
        let direct = pb
            .proof
            .as_ref()
            .is_some_and(|p| proves_directly(&pb.block, p, ctx));
        let id = pb.block.id();
        let ends_epoch = pb.block.header().reconfigure.is_some();
        linked.push(pb);
        if direct {
            proved = linked.len();
        }
        if !ends_epoch {
            expect_parent = id;
            continue;
        }
        // A committed Reconfigure block is the epoch's B0: nothing after it in this epoch.
        let Some(r) = record_of(ctx.epoch(), id) else {
            out.stopped = Some("epoch-ending block without its record");
            break;
        };
        match r.next_context(ctx) {
            Ok(next) => {
                proved = linked.len();
                out.records.push((height, r.clone()));
                expect_parent = next.genesis_block();
                out.next_ctx = Some(next);
            }
            Err(_) => {
                out.stopped = Some("epoch-change record does not verify");
                break;
            }
        }
    }
    // Every record was taken at a proved block: none lies past the last one.
    out.unproved = linked.split_off(proved);
    out.blocks = linked;
    // A run is held only while everything after it links: a held run the next page does not
    // extend (junk a responder linked to the tip, say) is dropped, or the requester would ask
    // from after it, of every responder, for good.
    if out.stopped.is_some() {
        out.unproved.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Scheme;
    use crate::testkit::Cluster;

    fn chain(c: &Cluster, rounds: &[u64]) -> Vec<Block> {
        let mut out: Vec<Block> = Vec::new();
        let mut qc = c.ctx.genesis_qc();
        for &r in rounds {
            let b = c.block(r, qc, vec![]);
            qc = c.full_qc(r, b.id());
            out.push(b);
        }
        out
    }

    fn page(blocks: &[Block], proofs: &[(usize, CommitProof)]) -> Vec<PageBlock> {
        blocks
            .iter()
            .enumerate()
            .map(|(i, b)| PageBlock {
                height: i as u64 + 1,
                block: b.clone(),
                proof: proofs.iter().find(|(j, _)| *j == i).map(|(_, p)| p.clone()),
            })
            .collect()
    }

    fn anchor(c: &Cluster) -> Anchor<'_> {
        Anchor {
            ctx: &c.ctx,
            height: 0,
            tip: None,
            epoch_b0: None,
        }
    }

    #[test]
    fn a_proof_proves_its_block_and_every_block_before_it() {
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 11);
        // Rounds 1, 3, 5, 6: only round 5 has a child one round later.
        let bs = chain(&c, &[1, 3, 5, 6]);
        let proof = CommitProof {
            certified: bs[3].clone(),
            qc: c.full_qc(6, bs[3].id()),
        };
        let v = verify_page(&anchor(&c), page(&bs, &[(2, proof)]), &[]);
        assert_eq!(v.blocks.len(), 3, "rounds 1, 3 and 5");
        assert_eq!(v.unproved.len(), 1, "round 6 links but is not proved");
        assert_eq!(v.stopped, None);
    }

    #[test]
    fn a_commit_longer_than_a_page_is_proved_by_the_next_page() {
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 12);
        let bs = chain(&c, &[1, 3, 5, 7, 9, 10]);
        let proof = CommitProof {
            certified: bs[5].clone(),
            qc: c.full_qc(10, bs[5].id()),
        };
        let all = page(&bs, &[(4, proof)]);
        // The first page holds rounds 1..7, none proved: all held.
        let first = verify_page(&anchor(&c), all[..4].to_vec(), &[]);
        assert!(first.blocks.is_empty());
        assert_eq!(first.unproved.len(), 4);
        // The next page starts after the held run; both together prove rounds 1..9.
        let mut again = first.unproved;
        again.extend_from_slice(&all[4..]);
        let second = verify_page(&anchor(&c), again, &[]);
        assert_eq!(second.blocks.len(), 5);
        assert_eq!(second.unproved.len(), 1);
    }

    #[test]
    fn a_forged_link_a_gap_or_a_bad_proof_proves_nothing() {
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 13);
        let bs = chain(&c, &[1, 2, 3]);
        let good = CommitProof {
            certified: bs[2].clone(),
            qc: c.full_qc(3, bs[2].id()),
        };
        // The QC of too few members.
        let weak = CommitProof {
            qc: c.qc(3, bs[2].id(), &[0]),
            ..good.clone()
        };
        let v = verify_page(&anchor(&c), page(&bs, &[(1, weak)]), &[]);
        assert!(v.blocks.is_empty());
        // A block that does not extend the one before.
        let other = c.block(
            1,
            c.ctx.genesis_qc(),
            vec![crate::types::BatchDigest([9; 32])],
        );
        let mut forged = page(&bs, &[(1, good.clone())]);
        forged[1].block = c.block(2, c.full_qc(1, other.id()), vec![]);
        let v = verify_page(&anchor(&c), forged, &[]);
        assert!(v.blocks.is_empty());
        assert_eq!(v.stopped, Some("block does not extend the one before"));
        // A height gap.
        let mut gap = page(&bs, &[(1, good)]);
        gap[1].height = 5;
        let v = verify_page(&anchor(&c), gap, &[]);
        assert!(v.blocks.is_empty());
        assert_eq!(v.stopped, Some("height gap"));
    }

    #[test]
    fn the_block_that_ends_an_epoch_is_proved_by_its_record() {
        use crate::domain::validator_set_hash;
        use crate::types::Reconfigure;
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 14);
        let mut members = c.ctx.set().member_infos();
        members[0].power += 1;
        let b0 = Block::new(
            0,
            1,
            c.ctx.genesis_qc(),
            c.signers[c.leader(1)].address(),
            vec![],
            Some(Reconfigure {
                chain_block_number: 20,
                chain_block_hash: [0xcb; 32],
                validator_set_hash: validator_set_hash(&members),
                members,
            }),
        );
        let b1 = c.block(2, c.full_qc(1, b0.id()), vec![]);
        let record = EpochChangeRecord {
            epoch: 0,
            qc: c.full_qc(2, b1.id()),
            path: vec![b0.clone(), b1],
        };
        let next = record.next_context(&c.ctx).expect("a valid record");
        let e1 = Block::new(
            1,
            1,
            next.genesis_qc(),
            c.signers[0].address(),
            vec![],
            None,
        );
        let blocks = vec![
            PageBlock {
                height: 1,
                block: b0,
                proof: None,
            },
            PageBlock {
                height: 2,
                block: e1,
                proof: None,
            },
        ];
        // Without the record nothing is proved.
        let v = verify_page(&anchor(&c), blocks.clone(), &[]);
        assert!(v.blocks.is_empty());
        assert_eq!(v.stopped, Some("epoch-ending block without its record"));
        let v = verify_page(&anchor(&c), blocks, std::slice::from_ref(&record));
        assert_eq!(v.blocks.len(), 1, "B0");
        assert_eq!(v.records, vec![(1, record)]);
        assert_eq!(v.epoch(&anchor(&c)), 1);
        assert_eq!(v.unproved.len(), 1, "epoch 1's first block links, unproved");
    }

    #[test]
    fn a_held_run_the_next_page_does_not_extend_is_dropped() {
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 15);
        // A responder's junk, linked to the empty ledger, unproved: held.
        let junk = c.block(
            1,
            c.ctx.genesis_qc(),
            vec![crate::types::BatchDigest([7; 32])],
        );
        let held = verify_page(&anchor(&c), page(&[junk], &[]), &[]);
        assert_eq!(held.unproved.len(), 1);
        // The honest chain's next block does not extend it: nothing is held any more.
        let honest = chain(&c, &[1, 2]);
        let mut next = held.unproved;
        next.push(PageBlock {
            height: 2,
            block: honest[1].clone(),
            proof: None,
        });
        let v = verify_page(&anchor(&c), next, &[]);
        assert_eq!(v.stopped, Some("block does not extend the one before"));
        assert!(v.blocks.is_empty() && v.unproved.is_empty());
    }

    #[test]
    fn a_proof_naming_the_last_round_is_refused_without_overflow() {
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 5);
        let b1 = c.block(1, c.ctx.genesis_qc(), vec![]);
        let b2 = c.block(2, c.full_qc(1, b1.id()), vec![]);
        let proof = CommitProof {
            qc: c.full_qc(2, b2.id()),
            certified: b2,
        };
        assert!(proves_directly(&b1, &proof, &c.ctx));
        let far = Block::new(0, u64::MAX, c.ctx.genesis_qc(), b1.proposer(), vec![], None);
        let child = Block::new(0, 3, c.full_qc(2, far.id()), b1.proposer(), vec![], None);
        let bad = CommitProof {
            qc: c.full_qc(3, child.id()),
            certified: child,
        };
        assert!(!proves_directly(&far, &bad, &c.ctx));
        let anchor = Anchor {
            height: u64::MAX,
            ..anchor(&c)
        };
        let v = verify_page(&anchor, page(&[far], &[]), &[]);
        assert_eq!(v.stopped, Some("height out of range"));
    }
}
