//! The tree of blocks above the committed root, and the 2-chain commit rule (DESIGN section 5):
//! on a QC for B1 whose parent B0 has `B1.round == B0.round + 1`, commit B0 and its uncommitted
//! ancestors in order. The proof of the commit is B1 with QC(B1); the committed blocks chain to it
//! by parent ids. After a commit everything not descending from the new root is pruned, so the
//! tree only ever holds uncommitted blocks (bounded by `max_blocks`).
//!
//! One round has one leader, so the tree keeps **one block per round** as a proposal
//! ([`BlockTree::insert`]): a leader that signs many blocks for its round cannot fill the tree,
//! the later ones are evidence only. A block that a QC certifies (a fetched ancestor, a record's
//! path) may still join as the round's second block ([`BlockTree::insert_certified`]): at most
//! one block of a round can gather a quorum, and a node that first saw the other one must be
//! able to follow the certified chain. So a round never holds more than two blocks.

use crate::types::{Block, BlockId, QuorumCert};
use std::collections::{HashMap, HashSet};
use thiserror::Error;

/// The committed head: the last committed block (or the epoch's genesis block, height 0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Root {
    /// Block id.
    pub id: BlockId,
    /// Its round (0 for genesis).
    pub round: u64,
    /// Its height (0 for genesis; committed blocks count from 1).
    pub height: u64,
}

/// A committed block with its height.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommittedBlock {
    /// Height (consecutive from the previous root).
    pub height: u64,
    /// The block.
    pub block: Block,
}

/// Why the newest committed block is final: B1 (its child, one round later) and QC(B1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitProof {
    /// B1: `certified.parent_id` is the last committed block and its round is one above.
    pub certified: Block,
    /// QC(B1).
    pub qc: QuorumCert,
}

/// One commit: blocks in order (each the parent of the next), and the proof of the last one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Newly committed blocks, oldest first.
    pub blocks: Vec<CommittedBlock>,
    /// Proof of the last block (and so, by parent links, of all).
    pub proof: CommitProof,
}

/// Why a block was not inserted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TreeError {
    /// The parent is neither the root nor a known block.
    #[error("parent block is unknown")]
    MissingParent,
    /// At or below the committed root.
    #[error("block round is not above the committed root")]
    BelowRoot,
    /// Round not above the parent's.
    #[error("block round is not above its parent's")]
    RoundNotAboveParent,
    /// The tree holds `max_blocks` already.
    #[error("block tree is full")]
    Full,
    /// Another block of the same round is held already (two, for a certified block).
    #[error("the tree holds another block of round {0}")]
    RoundTaken(u64),
}

/// Uncommitted blocks descending from the committed root.
#[derive(Clone, Debug)]
pub struct BlockTree {
    root: Root,
    blocks: HashMap<BlockId, Block>,
    /// Blocks held per round (one or two ids).
    rounds: HashMap<u64, Vec<BlockId>>,
    max_blocks: usize,
}

impl BlockTree {
    /// A tree over `root` holding at most `max_blocks`.
    pub fn new(root: Root, max_blocks: usize) -> Self {
        Self {
            root,
            blocks: HashMap::new(),
            rounds: HashMap::new(),
            max_blocks,
        }
    }
    /// The committed root.
    pub fn root(&self) -> &Root {
        &self.root
    }
    /// Whether `id` is the root or a block of the tree.
    pub fn contains(&self, id: &BlockId) -> bool {
        *id == self.root.id || self.blocks.contains_key(id)
    }
    /// A block of the tree (not the root).
    pub fn get(&self, id: &BlockId) -> Option<&Block> {
        self.blocks.get(id)
    }
    /// Number of uncommitted blocks held.
    pub fn len(&self) -> usize {
        self.blocks.len()
    }
    /// Whether no uncommitted block is held.
    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    fn round_of(&self, id: &BlockId) -> Option<u64> {
        if *id == self.root.id {
            Some(self.root.round)
        } else {
            self.blocks.get(id).map(Block::round)
        }
    }

    /// The block held for `round` first, if any (the proposal a node saw first).
    pub fn first_of_round(&self, round: u64) -> Option<BlockId> {
        self.rounds.get(&round).and_then(|ids| ids.first().copied())
    }

    /// Inserts a proposed block (already validated) whose parent is in the tree, if no other
    /// block of its round is held. Returns false if it was there already.
    pub fn insert(&mut self, block: Block) -> Result<bool, TreeError> {
        self.insert_bounded(block, 1)
    }

    /// Inserts a block certified by a verified QC (directly, or as the parent of a certified
    /// block), even if another block of its round is held (at most two per round).
    pub fn insert_certified(&mut self, block: Block) -> Result<bool, TreeError> {
        self.insert_bounded(block, 2)
    }

    fn insert_bounded(&mut self, block: Block, per_round: usize) -> Result<bool, TreeError> {
        if self.blocks.contains_key(&block.id()) {
            return Ok(false);
        }
        if block.round() <= self.root.round {
            return Err(TreeError::BelowRoot);
        }
        let parent_round = self
            .round_of(&block.parent_id())
            .ok_or(TreeError::MissingParent)?;
        if block.round() <= parent_round {
            return Err(TreeError::RoundNotAboveParent);
        }
        let held = self.rounds.get(&block.round()).map_or(0, Vec::len);
        if held >= per_round {
            return Err(TreeError::RoundTaken(block.round()));
        }
        if self.blocks.len() >= self.max_blocks {
            return Err(TreeError::Full);
        }
        self.rounds
            .entry(block.round())
            .or_default()
            .push(block.id());
        self.blocks.insert(block.id(), block);
        Ok(true)
    }

    /// The commit rule, applied to a (verified) QC whose block is in the tree. Returns the
    /// commit it triggers, and prunes the tree below the new root.
    pub fn on_qc(&mut self, qc: &QuorumCert) -> Option<Commit> {
        let c = self.commit_for(qc)?;
        self.advance_root(&c.blocks);
        Some(c)
    }

    /// The commit a (verified) QC would trigger, leaving the tree as it is: the caller can refuse
    /// it (a commit that cannot end its epoch) before anything changes.
    pub fn commit_for(&self, qc: &QuorumCert) -> Option<Commit> {
        let b1 = self.blocks.get(&qc.block_id)?;
        let b0 = self.blocks.get(&b1.parent_id())?;
        #[cfg(not(feature = "mutant-one-chain-commit"))]
        if b0.round().checked_add(1) != Some(b1.round()) {
            return None;
        }
        if b0.round() <= self.root.round {
            return None;
        }
        // Path from b0 down to the root.
        let mut path = vec![b0.clone()];
        let mut cur = b0.parent_id();
        while cur != self.root.id {
            let b = self.blocks.get(&cur)?;
            path.push(b.clone());
            cur = b.parent_id();
        }
        path.reverse();
        let proof = CommitProof {
            certified: b1.clone(),
            qc: qc.clone(),
        };
        let base = self.root.height;
        let blocks: Vec<CommittedBlock> = path
            .into_iter()
            .enumerate()
            .map(|(i, block)| CommittedBlock {
                height: base + 1 + i as u64,
                block,
            })
            .collect();
        Some(Commit { blocks, proof })
    }

    /// Makes the last of `blocks` (a commit from [`Self::commit_for`], maybe cut short) the root,
    /// and prunes the tree below it.
    pub fn advance_root(&mut self, blocks: &[CommittedBlock]) {
        let Some(last) = blocks.last() else {
            return;
        };
        self.root = Root {
            id: last.block.id(),
            round: last.block.round(),
            height: last.height,
        };
        self.prune();
    }

    /// Drops every block that does not descend from the root.
    fn prune(&mut self) {
        let mut sorted: Vec<(u64, BlockId, BlockId)> = self
            .blocks
            .values()
            .map(|b| (b.round(), b.id(), b.parent_id()))
            .collect();
        sorted.sort_unstable();
        let mut keep: HashSet<BlockId> = HashSet::new();
        keep.insert(self.root.id);
        for (round, id, parent) in sorted {
            if round > self.root.round && keep.contains(&parent) {
                keep.insert(id);
            }
        }
        let root = self.root.id;
        self.blocks.retain(|id, _| *id != root && keep.contains(id));
        let blocks = &self.blocks;
        self.rounds.retain(|_, ids| {
            ids.retain(|id| blocks.contains_key(id));
            !ids.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Scheme;
    use crate::testkit::Cluster;

    fn tree(c: &Cluster) -> BlockTree {
        BlockTree::new(
            Root {
                id: c.ctx.genesis_block(),
                round: 0,
                height: 0,
            },
            100,
        )
    }

    #[test]
    fn commits_only_on_consecutive_rounds() {
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 7);
        let mut t = tree(&c);
        let b1 = c.block(1, c.ctx.genesis_qc(), vec![]);
        let q1 = c.full_qc(1, b1.id());
        // B3 extends B1 after round 2 timed out: rounds 1 and 3 are not consecutive.
        let b3 = c.block(3, q1.clone(), vec![]);
        let q3 = c.full_qc(3, b3.id());
        let b4 = c.block(4, q3.clone(), vec![]);
        let q4 = c.full_qc(4, b4.id());
        for b in [&b1, &b3, &b4] {
            assert_eq!(t.insert(b.clone()), Ok(true));
        }
        assert_eq!(t.on_qc(&q1), None, "B1's parent is the root");
        #[cfg(not(feature = "mutant-one-chain-commit"))]
        assert_eq!(
            t.on_qc(&q3),
            None,
            "QC(B3) with parent B1 of round 1: no commit"
        );
        let commit = t
            .on_qc(&q4)
            .expect("QC(B4), parent B3 of round 3: commits B3");
        let heights: Vec<(u64, BlockId)> = commit
            .blocks
            .iter()
            .map(|c| (c.height, c.block.id()))
            .collect();
        #[cfg(not(feature = "mutant-one-chain-commit"))]
        assert_eq!(heights, vec![(1, b1.id()), (2, b3.id())]);
        let _ = heights;
        assert_eq!(commit.proof.certified, b4);
        assert_eq!(t.root().id, b3.id());
        assert_eq!(t.len(), 1, "only B4 is left");
    }

    #[test]
    fn commit_for_leaves_the_tree_until_the_root_advances() {
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 7);
        let mut t = tree(&c);
        let b1 = c.block(1, c.ctx.genesis_qc(), vec![]);
        let b2 = c.block(2, c.full_qc(1, b1.id()), vec![]);
        let q2 = c.full_qc(2, b2.id());
        for b in [&b1, &b2] {
            assert_eq!(t.insert(b.clone()), Ok(true));
        }
        let commit = t.commit_for(&q2).expect("QC(B2) commits B1");
        assert_eq!(t.root().height, 0, "a peek commits nothing");
        assert_eq!(t.len(), 2);
        t.advance_root(&commit.blocks);
        assert_eq!((t.root().id, t.root().height), (b1.id(), 1));
        assert_eq!(t.len(), 1, "only B2 is left");
        assert_eq!(t.commit_for(&q2), None, "B1 is the root now");
    }

    #[test]
    fn one_proposed_block_per_round_and_one_certified_beside_it() {
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 7);
        let mut t = tree(&c);
        let a = c.block(1, c.ctx.genesis_qc(), vec![]);
        let b = c.block(
            1,
            c.ctx.genesis_qc(),
            vec![crate::types::BatchDigest([9; 32])],
        );
        let d = c.block(
            1,
            c.ctx.genesis_qc(),
            vec![crate::types::BatchDigest([8; 32])],
        );
        assert_eq!(t.insert(a.clone()), Ok(true));
        assert_eq!(t.insert(a.clone()), Ok(false), "the same block again");
        assert_eq!(t.insert(b.clone()), Err(TreeError::RoundTaken(1)));
        assert_eq!(t.insert_certified(b.clone()), Ok(true));
        assert_eq!(t.insert_certified(d), Err(TreeError::RoundTaken(1)));
        assert_eq!(t.len(), 2);
        assert_eq!(t.first_of_round(1), Some(a.id()));
        // Once B is committed the round's bookkeeping goes with A.
        let b2 = c.block(2, c.full_qc(1, b.id()), vec![]);
        let b3 = c.block(3, c.full_qc(2, b2.id()), vec![]);
        t.insert(b2.clone()).expect("inserts");
        t.insert(b3.clone()).expect("inserts");
        t.on_qc(&c.full_qc(3, b3.id())).expect("commits B and B2");
        assert_eq!(t.first_of_round(1), None);
        assert_eq!(t.first_of_round(2), None);
    }

    #[test]
    fn prunes_forks_and_refuses_orphans() {
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 7);
        let mut t = tree(&c);
        let b1 = c.block(1, c.ctx.genesis_qc(), vec![]);
        let fork = c.block(2, c.ctx.genesis_qc(), vec![]); // also extends genesis
        let b2 = c.block(2, c.full_qc(1, b1.id()), vec![]);
        let b3 = c.block(3, c.full_qc(2, b2.id()), vec![]);
        let orphan = c.block(5, c.full_qc(4, crate::types::BlockId([1; 32])), vec![]);
        assert_eq!(t.insert(orphan), Err(TreeError::MissingParent));
        for b in [&b1, &fork] {
            t.insert(b.clone()).expect("inserts");
        }
        // B2 shares round 2 with the fork: it joins as the certified one.
        t.insert_certified(b2.clone()).expect("inserts");
        t.insert(b3.clone()).expect("inserts");
        let commit = t.on_qc(&c.full_qc(2, b2.id())).expect("commits B1");
        assert_eq!(commit.blocks.len(), 1);
        assert!(!t.contains(&fork.id()), "fork below the new root is pruned");
        assert!(t.contains(&b3.id()));
        assert_eq!(t.insert(fork), Err(TreeError::MissingParent));
        assert_eq!(t.insert(b1), Err(TreeError::BelowRoot));
    }
}
