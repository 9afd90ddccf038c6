//! The node's view of the chain for live membership (DESIGN section 4): the pinned head with
//! the validator set read there, and the set at a given block (checked by number and hash).
//! The driver polls [`ChainView::pinned`] beside consensus and answers the core's
//! `ReadChainSet` with [`ChainView::set_at`]; [`OracleView`] is the real implementation over the
//! contract, read by block hash (EIP-1898) through every configured RPC endpoint, a reading used
//! only when a quorum of them agree.
//!
//! A reading that cannot be taken whole (endpoints disagree, too few answer, a member's key is
//! malformed) is an error, never a partial set: the driver then keeps its previous view (no
//! `PinnedHead`), and a `Reconfigure` that names such a block gets no vote.

use std::future::Future;
use std::pin::Pin;

use alloy::primitives::B256;
use consensus::types::{Address, MemberInfo, PublicKey};
use membership::oracle::{OracleError, Snapshot};
use membership::quorum::{QuorumObserver, QuorumOracle};

use crate::metrics::OracleMetrics;

/// A validator with its registered connection URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Address, public key, power.
    pub info: MemberInfo,
    /// The connection URL (a multiaddr) registered on chain.
    pub url: String,
}

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
    /// The counters this view keeps, for the node's `/metrics` (`None`: it keeps none).
    fn oracle_metrics(&self) -> Option<OracleMetrics> {
        None
    }
}

/// A snapshot member whose public key is not the 64 bytes `x ‖ y`: the whole snapshot is
/// refused, since a set without that member is not the contract's set.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "member {member} has a public key of {len} bytes, not 64: the validator set at block {number} is refused"
)]
pub struct MalformedMember {
    /// The member's address.
    pub member: alloy::primitives::Address,
    /// The key's length in bytes.
    pub len: usize,
    /// The chain block of the snapshot.
    pub number: u64,
}

/// Converts an oracle snapshot, every member or none.
pub fn chain_set_of(s: &Snapshot) -> Result<ChainSet, MalformedMember> {
    let members = s
        .members
        .iter()
        .map(|m| {
            let pk: [u8; 64] = m
                .public_key
                .as_ref()
                .try_into()
                .map_err(|_| MalformedMember {
                    member: m.address,
                    len: m.public_key.len(),
                    number: s.block.number,
                })?;
            Ok(Member {
                info: MemberInfo {
                    address: Address(m.address.into_array()),
                    public_key: PublicKey(pk),
                    power: m.power,
                },
                url: m.connection_url.clone(),
            })
        })
        .collect::<Result<_, _>>()?;
    Ok(ChainSet {
        number: s.block.number,
        hash: s.block.hash.0,
        members,
    })
}

impl QuorumObserver for OracleMetrics {
    fn rpc_failed(&self, endpoint: &str) {
        self.rpc_error(endpoint);
    }

    fn disagreed(&self) {
        self.disagreements.inc();
    }
}

/// [`ChainView`] over the membership contract, through a quorum of RPC endpoints.
#[derive(Clone, Debug)]
pub struct OracleView {
    oracle: QuorumOracle,
    metrics: OracleMetrics,
}

impl OracleView {
    /// Wraps an oracle built from the cluster's genesis (pin rule, contract); its failures and
    /// disagreements are counted in [`ChainView::oracle_metrics`].
    pub fn new(oracle: QuorumOracle) -> Self {
        let metrics = OracleMetrics::default();
        for name in oracle.endpoint_names() {
            // Every endpoint is listed at zero from the start.
            let _ = metrics
                .rpc_errors
                .get_or_create(&crate::metrics::EndpointLabel {
                    endpoint: name.to_owned(),
                });
        }
        let oracle = oracle.with_observer(std::sync::Arc::new(metrics.clone()));
        Self { oracle, metrics }
    }

    /// An oracle answer as a chain set, or the error text (malformed members counted).
    fn convert(&self, read: Result<Snapshot, OracleError>) -> Result<ChainSet, String> {
        let malformed = |e: String| {
            self.metrics.malformed_members.inc();
            e
        };
        match read {
            Ok(s) => chain_set_of(&s).map_err(|e| malformed(e.to_string())),
            Err(e @ OracleError::MalformedKey { .. }) => Err(malformed(e.to_string())),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl ChainView for OracleView {
    fn pinned(&self) -> ChainFuture<'_, Result<ChainSet, String>> {
        Box::pin(async move { self.convert(self.oracle.snapshot().await) })
    }

    fn set_at(
        &self,
        number: u64,
        hash: [u8; 32],
    ) -> ChainFuture<'_, Result<Option<ChainSet>, String>> {
        Box::pin(async move {
            match self.oracle.set_at(number, B256::from(hash)).await {
                Ok(None) => Ok(None),
                Ok(Some(s)) => self.convert(Ok(s)).map(Some),
                Err(e) => self.convert(Err(e)).map(Some),
            }
        })
    }

    fn oracle_metrics(&self) -> Option<OracleMetrics> {
        Some(self.metrics.clone())
    }
}

#[cfg(test)]
mod tests {
    use alloy::primitives::{Address, B256, Bytes};
    use membership::oracle::{BlockRef, Member, Snapshot, validator_set_hash};

    use super::{ChainView, MalformedMember, OracleView, chain_set_of};
    use membership::genesis::PinRule;
    use membership::oracle::{Oracle, OracleError};
    use membership::quorum::{Endpoint, QuorumOracle};

    fn member(byte: u8, key_len: usize) -> Member {
        Member {
            address: Address::repeat_byte(byte),
            public_key: Bytes::from(vec![byte; key_len]),
            power: 1,
            connection_url: format!("/ip4/127.0.0.1/tcp/{byte}"),
            instance_id: [byte; 20],
        }
    }

    fn snapshot(members: Vec<Member>) -> Snapshot {
        Snapshot {
            block: BlockRef {
                number: 7,
                hash: B256::repeat_byte(0x77),
            },
            validator_set_hash: validator_set_hash(&members),
            members,
        }
    }

    #[test]
    fn a_member_with_a_malformed_key_refuses_the_whole_snapshot() {
        for len in [0, 33, 63, 65] {
            let s = snapshot(vec![member(1, 64), member(2, len), member(3, 64)]);
            let e = chain_set_of(&s).expect_err("a malformed member must not be dropped");
            assert_eq!(
                e,
                MalformedMember {
                    member: Address::repeat_byte(2),
                    len,
                    number: 7
                }
            );
            let text = e.to_string();
            assert!(
                text.contains(&Address::repeat_byte(2).to_string()),
                "{text}"
            );
            assert!(text.contains(&format!("{len} bytes")), "{text}");
        }
        let s = snapshot(vec![member(1, 64), member(3, 64)]);
        let set = chain_set_of(&s).expect("well-formed");
        assert_eq!(set.members.len(), 2);
        assert_eq!((set.number, set.hash), (7, [0x77; 32]));
        assert_eq!(set.members[1].url, "/ip4/127.0.0.1/tcp/3");
    }

    #[test]
    fn a_refused_snapshot_is_counted_and_named() {
        use alloy::providers::{Provider, ProviderBuilder};
        // Never dialled: the readings below are handed to the view directly.
        let provider = ProviderBuilder::new()
            .connect_http("http://127.0.0.1:9".parse().expect("url"))
            .erased();
        let endpoint = Endpoint {
            name: "e".into(),
            oracle: Oracle::new(provider, Address::ZERO, PinRule::Finalized, 0),
        };
        let view = OracleView::new(QuorumOracle::new(vec![endpoint], 1).expect("quorum"));
        let metrics = view.oracle_metrics().expect("counted");
        let bad = snapshot(vec![member(1, 64), member(2, 63)]);
        let e = view.convert(Ok(bad)).expect_err("refused");
        assert!(e.contains("63 bytes"), "{e}");
        let e = view
            .convert(Err(OracleError::MalformedKey {
                member: Address::repeat_byte(4),
                len: 65,
                block: B256::ZERO,
            }))
            .expect_err("refused");
        assert!(e.contains(&Address::repeat_byte(4).to_string()), "{e}");
        assert_eq!(metrics.malformed_members.get(), 2);
        let good = snapshot(vec![member(1, 64)]);
        assert_eq!(view.convert(Ok(good)).expect("read").members.len(), 1);
        assert_eq!(metrics.malformed_members.get(), 2);
    }
}
