//! Rebuilding a node's epoch at start from what it stored: epoch 0's context, the epoch-change
//! records in order, and how far the ledger got.
//!
//! The core may commit blocks the host has not applied to its ledger yet (their batches are
//! still being fetched), and it may finish an epoch, and sign in the next, meanwhile. At start
//! the committed-but-unapplied blocks are found again by walking back from each epoch's B0.
//! Every epoch's first block has that epoch's genesis id as parent, an id no store holds: the
//! walk ends there, and the epoch before it must end at the ledger's tip (or at the previous
//! epoch's B0, itself unapplied). Pure, so that tests and the simulator run the node's rule.

use crate::block_tree::{CommittedBlock, Root};
use crate::epoch::{EpochChangeRecord, MAX_RECORD_PATH};
use crate::types::{Block, BlockId};
use crate::verify::EpochContext;
use thiserror::Error;

/// The most blocks one epoch may leave unapplied and still be restored from the store.
pub const MAX_UNAPPLIED_PER_EPOCH: usize = MAX_RECORD_PATH * 16;

/// Read access to the blocks a node stored, as the restore needs them.
pub trait StoredBlocks {
    /// The store's error.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Whether block `id` is applied to the ledger (has a height there).
    fn is_applied(&self, id: &BlockId) -> Result<bool, Self::Error>;
    /// A stored block, `None` if absent or undecodable.
    fn block(&self, id: &BlockId) -> Result<Option<Block>, Self::Error>;
}

/// The ledger's height and its tip block (`None` when empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ledger {
    /// Committed height applied.
    pub height: u64,
    /// The block at that height.
    pub tip: Option<BlockId>,
}

/// Where the node stands after a restore.
#[derive(Debug)]
pub struct Restored {
    /// The context of the latest epoch the stored records reach.
    pub ctx: EpochContext,
    /// The B0 that started that epoch (`None` in epoch 0).
    pub epoch_b0: Option<BlockId>,
    /// Blocks the core counted as committed that the ledger does not hold yet, oldest first,
    /// with the heights they take.
    pub unapplied: Vec<CommittedBlock>,
    /// The core's committed root: the epoch's genesis once the epoch's B0 is committed.
    pub root: Option<Root>,
    /// Records that could not be followed (a gap in the stored blocks), so the node stays in
    /// an earlier epoch than it reached before: the first such epoch.
    pub stopped_at: Option<u64>,
}

/// Why a restore failed.
#[derive(Debug, Error)]
pub enum RestoreError<E: std::error::Error + 'static> {
    /// The store could not be read.
    #[error("reading stored blocks")]
    Store(#[source] E),
    /// A stored record does not follow from the epoch before it.
    #[error("stored record of epoch {epoch}")]
    Record {
        /// The record's epoch.
        epoch: u64,
        /// Why.
        #[source]
        source: crate::epoch::RecordError,
    },
    /// The ledger has a height but no block at it.
    #[error("the ledger has height {0} but no block at it")]
    NoTip(u64),
    /// The ledger's tip is not among the stored blocks.
    #[error("the ledger's tip block {0:?} is not stored")]
    MissingTip(BlockId),
}

/// Restores the latest epoch the records reach from `base` (epoch 0's context).
pub fn restore<S: StoredBlocks>(
    base: EpochContext,
    records: &[EpochChangeRecord],
    ledger: Ledger,
    store: &S,
) -> Result<Restored, RestoreError<S::Error>> {
    let mut ctx = base;
    let mut epoch_b0 = None;
    let mut unapplied: Vec<CommittedBlock> = Vec::new();
    let mut height = ledger.height;
    let mut stopped_at = None;
    for r in records {
        let Some(b0) = r.b0().map(Block::id).filter(|_| r.epoch == ctx.epoch()) else {
            stopped_at = Some(r.epoch);
            break;
        };
        if !store.is_applied(&b0).map_err(RestoreError::Store)? {
            // The epoch before ends where the ledger stands, or it is queued whole already.
            let follows = !unapplied.is_empty() || ledger.tip == epoch_b0;
            let Some(blocks) = unapplied_path(store, b0, &ctx, ledger.tip, follows)? else {
                stopped_at = Some(r.epoch);
                break;
            };
            for block in blocks {
                height += 1;
                unapplied.push(CommittedBlock { height, block });
            }
        }
        ctx = r
            .next_context(&ctx)
            .map_err(|source| RestoreError::Record {
                epoch: r.epoch,
                source,
            })?;
        epoch_b0 = Some(b0);
    }
    let root = if height == 0 {
        None
    } else if !unapplied.is_empty() || ledger.tip == epoch_b0 {
        Some(Root {
            id: ctx.genesis_block(),
            round: 0,
            height,
        })
    } else {
        let id = ledger.tip.ok_or(RestoreError::NoTip(height))?;
        let b = store
            .block(&id)
            .map_err(RestoreError::Store)?
            .ok_or(RestoreError::MissingTip(id))?;
        Some(Root {
            id,
            round: b.round(),
            height,
        })
    };
    Ok(Restored {
        ctx,
        epoch_b0,
        unapplied,
        root,
        stopped_at,
    })
}

/// The blocks of `ctx`'s epoch from the ledger (excluded) up to `b0` (included), oldest first:
/// the walk ends at the ledger's tip when the ledger stopped inside this epoch, or at the
/// epoch's genesis when the epoch before `follows` on. `None`: a block is missing, the epoch
/// before is not all there, or the walk is too long.
fn unapplied_path<S: StoredBlocks>(
    store: &S,
    b0: BlockId,
    ctx: &EpochContext,
    tip: Option<BlockId>,
    follows: bool,
) -> Result<Option<Vec<Block>>, RestoreError<S::Error>> {
    let genesis = ctx.genesis_block();
    #[cfg(feature = "mutant-restore-past-genesis")]
    let _ = (genesis, follows);
    let mut out = Vec::new();
    let mut id = b0;
    loop {
        if Some(id) == tip {
            break;
        }
        // Mutant: the walk goes on past the epoch's genesis id, which no store holds.
        #[cfg(not(feature = "mutant-restore-past-genesis"))]
        if id == genesis {
            if !follows {
                return Ok(None);
            }
            break;
        }
        if out.len() >= MAX_UNAPPLIED_PER_EPOCH {
            return Ok(None);
        }
        let Some(b) = store.block(&id).map_err(RestoreError::Store)? else {
            return Ok(None);
        };
        id = b.parent_id();
        out.push(b);
    }
    out.reverse();
    Ok(Some(out))
}
