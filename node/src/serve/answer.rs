//! The answers to batch, block and sync requests, read from the store (on a server worker,
//! never the consensus task) and bounded in count and bytes under the wire's response limit.

use consensus::codec::Decode;
use consensus::epoch::EpochChangeRecord;
use consensus::types::QuorumCert;
use prost::Message as _;
use proto::v1;

use crate::storage::{StorageError, Store, meta};
use crate::wire;

/// Most batches served per request.
pub const MAX_BATCHES_PER_RESPONSE: usize = 256;
/// Most committed blocks served per sync page.
pub const MAX_SYNC_BLOCKS: u32 = 256;
/// Most uncommitted blocks served per block request.
pub const MAX_BLOCKS_PER_RESPONSE: u32 = 1024;
/// Most epoch-change records served per answer.
pub const MAX_RECORDS_PER_RESPONSE: usize = 16;
/// Bytes a response may carry (leaves room under the wire limit).
pub const RESPONSE_BUDGET: usize = proto::limits::MAX_RESPONSE_BYTES - 64 * 1024;

/// Why a request could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Something the node stored does not decode.
    #[error("stored {0} is corrupt")]
    Corrupt(&'static str),
}

/// The stored batches of the wanted digests (unknown or malformed digests are skipped).
pub fn batches(store: &Store, req: &v1::BatchRequest) -> Result<v1::BatchResponse, ServeError> {
    let mut out = Vec::new();
    let mut budget = RESPONSE_BUDGET;
    for d in req.digests.iter().take(MAX_BATCHES_PER_RESPONSE) {
        let Ok(d) = <[u8; 32]>::try_from(d.as_slice()) else {
            continue;
        };
        if let Some(bytes) = store.get_batch(&d)? {
            if bytes.len() > budget {
                break;
            }
            budget -= bytes.len();
            if let Ok(b) = v1::Batch::decode(bytes.as_slice()) {
                out.push(b);
            }
        }
    }
    Ok(v1::BatchResponse { batches: out })
}

/// A block and its ancestors, newest first, down to (excluding) round `stop_at_round`.
pub fn blocks(store: &Store, req: &v1::BlockRequest) -> Result<v1::BlockResponse, ServeError> {
    let mut out = Vec::new();
    let Ok(mut id) = <[u8; 32]>::try_from(req.block_id.as_slice()) else {
        return Ok(v1::BlockResponse { blocks: out });
    };
    let max = req.max_blocks.min(MAX_BLOCKS_PER_RESPONSE) as usize;
    let mut budget = RESPONSE_BUDGET;
    while out.len() < max {
        let Some(bytes) = store.get_block(&id)? else {
            break;
        };
        let Ok(b) = v1::Block::decode(bytes.as_slice()) else {
            break;
        };
        let round = b.header.as_ref().map_or(0, |h| h.round);
        if round <= req.stop_at_round || bytes.len() > budget {
            break;
        }
        budget -= bytes.len();
        let parent = b
            .header
            .as_ref()
            .and_then(|h| <[u8; 32]>::try_from(h.parent_id.as_slice()).ok());
        out.push(b);
        match parent {
            Some(p) => id = p,
            None => break,
        }
    }
    Ok(v1::BlockResponse { blocks: out })
}

/// A page of committed blocks from `from_height` with their commit proofs, and the stored
/// epoch-change records since the requester's epoch when the node is in a later one
/// (`epoch`). The high QC is the one the node last made durable.
pub fn sync(
    store: &Store,
    epoch: u64,
    req: &v1::SyncRequest,
) -> Result<v1::SyncResponse, ServeError> {
    let top = if req.max_blocks == 0 {
        0
    } else {
        store.committed_height()?
    };
    let mut blocks = Vec::new();
    let mut proved: Option<usize> = None;
    let mut h = req.from_height.max(1);
    let limit = u64::from(req.max_blocks.clamp(1, MAX_SYNC_BLOCKS));
    // Records first: the requester needs them to verify blocks past each epoch's end.
    let records = if req.known_epoch < epoch {
        stored_records(store, req.known_epoch)?
    } else {
        Vec::new()
    };
    let mut budget =
        RESPONSE_BUDGET.saturating_sub(records.iter().map(|r| r.encoded_len()).sum::<usize>());
    while h <= top {
        let Some(id) = store.committed_id(h)? else {
            break;
        };
        let Some(bytes) = store.get_block(&id)? else {
            break;
        };
        let proof = store.commit_proof(h)?.unwrap_or_default();
        if bytes.len() + proof.len() > budget {
            break;
        }
        budget -= bytes.len() + proof.len();
        let block = v1::Block::decode(bytes.as_slice()).ok();
        let proof = if proof.is_empty() {
            None
        } else {
            v1::CommitProof::decode(proof.as_slice()).ok()
        };
        // The block that ended an epoch is proved by that epoch's record when the page carries
        // it (blocks re-applied after a restart have no proof of their own).
        let has_proof = proof.is_some()
            || block.as_ref().is_some_and(|b| {
                b.header.as_ref().is_some_and(|h| h.reconfigure.is_some())
                    && records
                        .iter()
                        .any(|r| r.proof.as_ref().and_then(|p| p.path.first()) == Some(b))
            });
        blocks.push(v1::CommittedBlock {
            height: h,
            block,
            proof,
        });
        if has_proof {
            proved = Some(blocks.len() - 1);
        }
        h += 1;
        // Stop at a block carrying a proof once the page is full enough.
        if has_proof && blocks.len() as u64 >= limit {
            break;
        }
    }
    // Drop a trailing run without a proof (the requester asks again from after the last proof),
    // unless the page holds no proof at all: a commit longer than a page is then sent in parts,
    // which the requester holds until the page that proves them.
    if let Some(last) = proved {
        blocks.truncate(last + 1);
    }
    let high_qc = match store.get_meta(meta::HIGH_QC)? {
        Some(b) => Some(wire::qc_to_wire(
            &QuorumCert::decode(&b).map_err(|_| ServeError::Corrupt("high QC"))?,
        )),
        None => None,
    };
    Ok(v1::SyncResponse {
        blocks,
        records,
        high_qc,
        high_tc: None,
    })
}

/// The stored epoch-change records of epochs `since..`, as wire messages (bounded in count and
/// to half a response).
pub fn stored_records(store: &Store, since: u64) -> Result<Vec<v1::EpochChangeRecord>, ServeError> {
    let mut out = Vec::new();
    let mut budget = RESPONSE_BUDGET / 2;
    for (_, bytes) in store.epoch_changes_since(since, MAX_RECORDS_PER_RESPONSE)? {
        let r = EpochChangeRecord::decode(&bytes)
            .map_err(|_| ServeError::Corrupt("epoch-change record"))?;
        let w = wire::record_to_wire(&r);
        let len = w.encoded_len();
        if len > budget {
            break;
        }
        budget -= len;
        out.push(w);
    }
    Ok(out)
}
