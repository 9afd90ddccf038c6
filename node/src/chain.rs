//! The node's view of the chain for live membership (DESIGN section 4): the pinned head with
//! the validator set read there, and the set at a given block (checked by number and hash).
//! The driver polls [`ChainView::pinned`] beside consensus and answers the core's
//! `ReadChainSet` with [`ChainView::set_at`]; [`OracleView`] is the real implementation over the
//! contract, read by block hash (EIP-1898).

use std::future::Future;
use std::pin::Pin;

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::B256;
use consensus::types::{Address, MemberInfo, PublicKey};
use membership::oracle::{BlockRef, Oracle, OracleError, Snapshot};

use crate::driver::Member;

/// A boxed future, so the trait stays object-safe.
pub type ChainFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The set at one chain block, with connection URLs beside the members.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainSet {
    /// Chain block number.
    pub number: u64,
    /// Its hash.
    pub hash: [u8; 32],
    /// Members sorted by address, with their URLs.
    pub members: Vec<Member>,
}

/// Where live membership comes from. Errors are texts for logs: a failed read only delays an
/// epoch change (the core refuses to vote on what it cannot check).
pub trait ChainView: Send + Sync {
    /// The block the cluster's pin rule selects now, and the set read there by hash.
    fn pinned(&self) -> ChainFuture<'_, Result<ChainSet, String>>;
    /// The set at `hash`, if `hash` is the chain's block at `number`; `Ok(None)` when it is not
    /// (rolled back, invented, or not yet reached).
    fn set_at(
        &self,
        number: u64,
        hash: [u8; 32],
    ) -> ChainFuture<'_, Result<Option<ChainSet>, String>>;
}

/// [`ChainView`] over the membership contract.
#[derive(Clone, Debug)]
pub struct OracleView {
    oracle: Oracle,
}

impl OracleView {
    /// Wraps an oracle built from the cluster's genesis (pin rule, contract).
    pub fn new(oracle: Oracle) -> Self {
        Self { oracle }
    }
}

/// Converts an oracle snapshot; members with a malformed key (the contract prevents them) are
/// left out rather than trusted.
pub fn chain_set_of(s: &Snapshot) -> ChainSet {
    let members = s
        .members
        .iter()
        .filter_map(|m| {
            let pk: [u8; 64] = m.public_key.as_ref().try_into().ok()?;
            Some(Member {
                info: MemberInfo {
                    address: Address(m.address.into_array()),
                    public_key: PublicKey(pk),
                    power: m.power,
                },
                url: m.connection_url.clone(),
            })
        })
        .collect();
    ChainSet {
        number: s.block.number,
        hash: s.block.hash.0,
        members,
    }
}

impl ChainView for OracleView {
    fn pinned(&self) -> ChainFuture<'_, Result<ChainSet, String>> {
        Box::pin(async move {
            let s = self.oracle.snapshot().await.map_err(|e| e.to_string())?;
            Ok(chain_set_of(&s))
        })
    }

    fn set_at(
        &self,
        number: u64,
        hash: [u8; 32],
    ) -> ChainFuture<'_, Result<Option<ChainSet>, String>> {
        Box::pin(async move {
            let at = match self
                .oracle
                .block_by_number(BlockNumberOrTag::Number(number))
                .await
            {
                Ok(b) => b,
                Err(OracleError::BlockNotFound(_)) => return Ok(None),
                Err(e) => return Err(e.to_string()),
            };
            if at.hash != B256::from(hash) {
                return Ok(None);
            }
            let s = self
                .oracle
                .snapshot_at(BlockRef {
                    number,
                    hash: at.hash,
                })
                .await
                .map_err(|e| e.to_string())?;
            Ok(Some(chain_set_of(&s)))
        })
    }
}
