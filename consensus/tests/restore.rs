//! The epoch a node restarts in, from its stored records, blocks and ledger: in particular when
//! the ledger lags behind what the core committed by a whole epoch or more (batches still being
//! fetched), where each epoch's first block hangs off a genesis id no store holds.

use consensus::crypto::Scheme;
use consensus::domain::validator_set_hash;
use consensus::epoch::EpochChangeRecord;
use consensus::restore::{Ledger, StoredBlocks, restore};
use consensus::testkit::Cluster;
use consensus::types::{Block, BlockId, Reconfigure};
use std::collections::{HashMap, HashSet};
use std::convert::Infallible;

#[derive(Default)]
struct Blocks {
    stored: HashMap<BlockId, Block>,
    applied: HashSet<BlockId>,
}

impl StoredBlocks for Blocks {
    type Error = Infallible;
    fn is_applied(&self, id: &BlockId) -> Result<bool, Infallible> {
        Ok(self.applied.contains(id))
    }
    fn block(&self, id: &BlockId) -> Result<Option<Block>, Infallible> {
        Ok(self.stored.get(id).cloned())
    }
}

/// One epoch of `c`: A (round 1, off the epoch's genesis), B0 (round 2, the Reconfigure raising
/// member 0's power), B1 (round 3), and the record ending the epoch at B0.
fn epoch_of(c: &Cluster) -> (Vec<Block>, EpochChangeRecord) {
    let a = c.block(1, c.ctx.genesis_qc(), vec![]);
    let mut members = c.ctx.set().member_infos();
    members[0].power += 1;
    let b0 = Block::new(
        c.ctx.epoch(),
        2,
        c.full_qc(1, a.id()),
        c.signers[c.leader(2)].address(),
        vec![],
        Some(Reconfigure {
            chain_block_number: 20 + c.ctx.epoch(),
            chain_block_hash: [0xcb; 32],
            validator_set_hash: validator_set_hash(&members),
            members,
        }),
    );
    let b1 = c.block(3, c.full_qc(2, b0.id()), vec![]);
    let record = EpochChangeRecord {
        epoch: c.ctx.epoch(),
        qc: c.full_qc(3, b1.id()),
        path: vec![b0.clone(), b1.clone()],
    };
    (vec![a, b0, b1], record)
}

/// Epoch 0 and epoch 1 of one cluster, each ended by a record; every block stored, none applied.
fn two_epochs() -> (Cluster, Vec<Block>, Vec<EpochChangeRecord>, Blocks) {
    let c0 = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 40);
    let (blocks0, r0) = epoch_of(&c0);
    let c1 = Cluster {
        signers: (0..4).map(|i| c0.signer_of(i)).collect(),
        seeds: c0.seeds.clone(),
        ctx: r0.next_context(&c0.ctx).expect("epoch 1"),
    };
    let (blocks1, r1) = epoch_of(&c1);
    let all: Vec<Block> = blocks0.into_iter().chain(blocks1).collect();
    let mut store = Blocks::default();
    for b in &all {
        store.stored.insert(b.id(), b.clone());
    }
    (c0, all, vec![r0, r1], store)
}

fn ids(blocks: &[consensus::block_tree::CommittedBlock]) -> Vec<(u64, BlockId)> {
    blocks.iter().map(|c| (c.height, c.block.id())).collect()
}

#[test]
fn an_empty_ledger_a_whole_epoch_behind_restores_into_the_next_epoch() {
    let (c, all, records, store) = two_epochs();
    let ledger = Ledger {
        height: 0,
        tip: None,
    };
    let r = restore(c.fresh_context(), &records[..1], ledger, &store).expect("restore");
    assert_eq!(r.ctx.epoch(), 1);
    assert_eq!(r.stopped_at, None);
    assert_eq!(r.epoch_b0, Some(all[1].id()));
    // A and B0 of epoch 0 are queued, at heights 1 and 2.
    assert_eq!(ids(&r.unapplied), vec![(1, all[0].id()), (2, all[1].id())]);
    let root = r.root.expect("root");
    assert_eq!((root.id, root.height), (r.ctx.genesis_block(), 2));
}

#[test]
fn a_ledger_two_epochs_behind_queues_both_epochs_in_order() {
    let (c, all, records, store) = two_epochs();
    let ledger = Ledger {
        height: 0,
        tip: None,
    };
    let r = restore(c.fresh_context(), &records, ledger, &store).expect("restore");
    assert_eq!(r.ctx.epoch(), 2);
    assert_eq!(r.stopped_at, None);
    assert_eq!(
        ids(&r.unapplied),
        vec![
            (1, all[0].id()),
            (2, all[1].id()),
            (3, all[3].id()),
            (4, all[4].id())
        ]
    );
    assert_eq!(r.root.expect("root").height, 4);
}

#[test]
fn a_ledger_inside_the_epoch_queues_only_the_rest() {
    let (c, all, records, mut store) = two_epochs();
    store.applied.insert(all[0].id());
    let ledger = Ledger {
        height: 1,
        tip: Some(all[0].id()),
    };
    let r = restore(c.fresh_context(), &records[..1], ledger, &store).expect("restore");
    assert_eq!(r.ctx.epoch(), 1);
    assert_eq!(ids(&r.unapplied), vec![(2, all[1].id())]);
}

#[test]
fn an_applied_epoch_queues_nothing_and_roots_at_the_next_genesis() {
    let (c, all, records, mut store) = two_epochs();
    store.applied.extend([all[0].id(), all[1].id()]);
    let ledger = Ledger {
        height: 2,
        tip: Some(all[1].id()),
    };
    let r = restore(c.fresh_context(), &records[..1], ledger, &store).expect("restore");
    assert_eq!(r.ctx.epoch(), 1);
    assert!(r.unapplied.is_empty());
    let root = r.root.expect("root");
    assert_eq!((root.id, root.height), (r.ctx.genesis_block(), 2));
}

#[test]
fn a_missing_block_stops_at_the_epoch_it_belongs_to() {
    let (c, all, records, mut store) = two_epochs();
    store.stored.remove(&all[3].id());
    let ledger = Ledger {
        height: 0,
        tip: None,
    };
    let r = restore(c.fresh_context(), &records, ledger, &store).expect("restore");
    assert_eq!(r.ctx.epoch(), 1);
    assert_eq!(r.stopped_at, Some(1));
    assert_eq!(r.unapplied.len(), 2);
}

#[test]
fn a_ledger_that_does_not_reach_the_epoch_before_is_not_bridged() {
    // The ledger ends at A of epoch 0 but B0 of epoch 0 is applied (a gap): epoch 1's blocks
    // cannot be queued after A, so the restore stays in epoch 1.
    let (c, all, records, mut store) = two_epochs();
    store.applied.extend([all[0].id(), all[1].id()]);
    let ledger = Ledger {
        height: 1,
        tip: Some(all[0].id()),
    };
    let r = restore(c.fresh_context(), &records, ledger, &store).expect("restore");
    assert_eq!(r.ctx.epoch(), 1);
    assert_eq!(r.stopped_at, Some(1));
}
