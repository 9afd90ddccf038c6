//! Building the core at start from the store: the epoch (through `consensus::restore`), the
//! safety state, the certificates and the blocks above the committed root.

use super::*;

/// What a restart learned besides the core.
pub(super) struct Restored {
    /// The B0 that started the current epoch (None in epoch 0).
    pub(super) epoch_b0: Option<BlockId>,
    /// Blocks the core counts as committed but the ledger does not hold yet (a crash between
    /// an epoch change and applying B0 and its ancestors), oldest first.
    pub(super) unapplied: Vec<CommittedBlock>,
}

/// Epoch 0's context, from the genesis file's set.
pub(super) fn base_context(cfg: &DriverConfig) -> Result<EpochContext, DriverError> {
    let infos: Vec<MemberInfo> = cfg.members.iter().map(|m| m.info.clone()).collect();
    // The same reduction every node applies to a chain view beyond the set bounds.
    let set = ValidatorSet::from_members(consensus::validators::bounded_members(infos))
        .map_err(|e| DriverError::Set(e.to_string()))?;
    let domain = Domain::new(cfg.chain_id, Address(cfg.contract), cfg.genesis_id);
    let genesis = domain.genesis_block_id(0, &cfg.genesis_chain_block_hash, &set.hash());
    Ok(
        EpochContext::new(0, genesis, set, domain, Scheme::Secp256k1)
            .with_chain_block(cfg.genesis_chain_block_number),
    )
}

pub(super) fn decode_block(bytes: &[u8]) -> Option<Block> {
    v1::Block::decode(bytes)
        .ok()
        .and_then(|w| wire::block_from_wire(&w).ok())
}

/// The node's store as the restore reads it.
pub(super) struct StoreBlocks<'a>(&'a Store);

impl consensus::restore::StoredBlocks for StoreBlocks<'_> {
    type Error = StorageError;
    fn is_applied(&self, id: &BlockId) -> Result<bool, StorageError> {
        Ok(self.0.height_of(&id.0)?.is_some())
    }
    fn block(&self, id: &BlockId) -> Result<Option<Block>, StorageError> {
        Ok(self.0.get_block(&id.0)?.as_deref().and_then(decode_block))
    }
}

/// Builds the core from what the store holds: epoch 0 from the genesis file, then every stored
/// epoch-change record in order ([`consensus::restore`]), then the safety state, certificates
/// and blocks.
pub(super) fn build_core(
    cfg: &DriverConfig,
    store: &Store,
) -> Result<(Core, Restored), DriverError> {
    let records = store
        .epoch_changes_since(0, usize::MAX)?
        .into_iter()
        .map(|(_, bytes)| {
            EpochChangeRecord::decode(&bytes)
                .map_err(|_| DriverError::Corrupt("epoch-change record"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let height = store.committed_height()?;
    let ledger = consensus::restore::Ledger {
        height,
        tip: store.committed_id(height)?.map(BlockId),
    };
    let restored =
        consensus::restore::restore(base_context(cfg)?, &records, ledger, &StoreBlocks(store))
            .map_err(|e| match e {
                consensus::restore::RestoreError::Store(e) => DriverError::Storage(e),
                other => DriverError::Core(format!("restoring the epoch: {other}")),
            })?;
    if let Some(epoch) = restored.stopped_at {
        tracing::warn!(
            epoch,
            "stored epoch-change records past this epoch cannot be followed from the stored blocks"
        );
    }
    let ctx = restored.ctx;
    let signer =
        K256Signer::from_secret(&cfg.secret).map_err(|e| DriverError::Core(e.to_string()))?;
    let safety = match store.get_meta(meta::SAFETY)? {
        Some(b) => SafetyState::decode(&b).map_err(|_| DriverError::Corrupt("safety state"))?,
        None => SafetyState::new(0),
    };
    let high_qc = match store.get_meta(meta::HIGH_QC)? {
        Some(b) => Some(QuorumCert::decode(&b).map_err(|_| DriverError::Corrupt("high QC"))?),
        None => None,
    };
    let high_tc = match store.get_meta(meta::HIGH_TC)? {
        Some(b) => Some(TimeoutCert::decode(&b).map_err(|_| DriverError::Corrupt("high TC"))?),
        None => None,
    };
    let blocks = store
        .uncommitted_blocks()?
        .into_iter()
        .filter_map(|bytes| decode_block(&bytes))
        .filter(|b| b.epoch() == ctx.epoch())
        .collect();
    let durable = DurableState {
        safety,
        root: restored.root,
        blocks,
        high_qc,
        high_tc,
    };
    let core = Core::new(cfg.core.clone(), ctx, Box::new(signer), durable)
        .map_err(|e| DriverError::Core(e.to_string()))?;
    Ok((
        core,
        Restored {
            epoch_b0: restored.epoch_b0,
            unapplied: restored.unapplied,
        },
    ))
}
