//! The validator-set oracle (DESIGN section 4): reads the contract at a pinned chain block by
//! block hash (EIP-1898), page by page, and returns the members sorted by address with their
//! powers and URLs and the exact `validator_set_hash`. It follows new blocks and reports set
//! changes (a URL edit is not one). RPC failures are retried a bounded number of times with
//! backoff and then reported; an empty set is an error, never a valid answer.

use std::time::Duration;

use alloy::eips::{BlockId, BlockNumberOrTag, RpcBlockHash};
use alloy::primitives::{Address, B256, Bytes, U256, keccak256};
use alloy::providers::{DynProvider, Provider};
use alloy::sol_types::SolValue;
use thiserror::Error;

use crate::contract::DstackMembershipNFT;
use crate::genesis::{Genesis, PinRule};

pub use crate::contract::PAGE_LIMIT;

/// Oracle failures.
#[derive(Debug, Error)]
pub enum OracleError {
    /// An RPC call kept failing.
    #[error("RPC {what} failed after {attempts} attempt(s): {reason}")]
    Rpc {
        /// The call.
        what: String,
        /// Attempts made.
        attempts: u32,
        /// The last error.
        reason: String,
    },
    /// The chain does not know the block.
    #[error("block {0} not found on the RPC (reorged away, or a pruned/other chain)")]
    BlockNotFound(String),
    /// No code at the contract at that block.
    #[error("no contract code at {contract} at block {block}: wrong address or chain")]
    NoCode {
        /// The address.
        contract: Address,
        /// The block.
        block: B256,
    },
    /// The contract did not answer like `DstackMembershipNFT`.
    #[error("contract at {contract} does not answer like DstackMembershipNFT: {reason}")]
    NotTheContract {
        /// The address.
        contract: Address,
        /// The failed call.
        reason: String,
    },
    /// The set at that block is empty.
    #[error("the validator set at block {number} ({hash}) is empty")]
    EmptySet {
        /// Block number.
        number: u64,
        /// Block hash.
        hash: B256,
    },
    /// A member's public key is not the 64 bytes `x ‖ y`: the set cannot be read fully, so no
    /// part of it is used.
    #[error("member {member} has a public key of {len} bytes, not 64, at block {block}")]
    MalformedKey {
        /// The member's address.
        member: Address,
        /// The key's length in bytes.
        len: usize,
        /// The block.
        block: B256,
    },
    /// Endpoints of a quorum oracle gave different answers, so none is used.
    #[error("RPC endpoints disagree on {what}: {answers}")]
    Disagreement {
        /// The read.
        what: String,
        /// Which endpoint said what.
        answers: String,
    },
    /// Too few endpoints of a quorum oracle answered alike (the others failed).
    #[error("{what}: {agreeing} of {endpoints} RPC endpoint(s) agree, {quorum} needed: {answers}")]
    NoQuorum {
        /// The read.
        what: String,
        /// The largest number of endpoints that gave one answer.
        agreeing: usize,
        /// Endpoints configured.
        endpoints: usize,
        /// Endpoints that must agree.
        quorum: usize,
        /// Which endpoint said what.
        answers: String,
    },
    /// A quorum oracle's quorum is not within one and its number of endpoints.
    #[error("RPC quorum {quorum} is outside 1..={endpoints} (the number of endpoints)")]
    InvalidQuorum {
        /// The quorum asked for.
        quorum: usize,
        /// Endpoints configured.
        endpoints: usize,
    },
    /// The pages contradict each other or the contract's rules.
    #[error("inconsistent validator data at block {block}: {reason}")]
    Inconsistent {
        /// The block.
        block: B256,
        /// What.
        reason: String,
    },
}

/// A chain block (number and hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlockRef {
    /// Number.
    pub number: u64,
    /// Hash.
    pub hash: B256,
}

/// One validator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Node address.
    pub address: Address,
    /// 64-byte public key (x ‖ y).
    pub public_key: Bytes,
    /// Voting power (number of authorizing tokens).
    pub power: u64,
    /// Connection URL (not part of the set hash).
    pub connection_url: String,
    /// Instance id (informational).
    pub instance_id: [u8; 20],
}

/// The validator set at one chain block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The block it was read at.
    pub block: BlockRef,
    /// Members sorted by address.
    pub members: Vec<Member>,
    /// `keccak256(abi.encode((address, bytes, uint256)[]))` over the sorted members.
    pub validator_set_hash: B256,
}

impl Snapshot {
    /// Total power (fits: at most 2^64 members of power < 2^64).
    pub fn total_power(&self) -> u128 {
        self.members.iter().map(|m| u128::from(m.power)).sum()
    }

    /// Whether two snapshots hold the same set (URLs and blocks ignored).
    pub fn same_set(&self, other: &Snapshot) -> bool {
        self.validator_set_hash == other.validator_set_hash
    }
}

/// `validator_set_hash` of members already sorted by address.
pub fn validator_set_hash(members: &[Member]) -> B256 {
    let tuples: Vec<(Address, Bytes, U256)> = members
        .iter()
        .map(|m| (m.address, m.public_key.clone(), U256::from(m.power)))
        .collect();
    // abi.encode(array): the one-element parameter list holding the dynamic array.
    keccak256((tuples,).abi_encode_params())
}

/// Retries of one RPC call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (at least 1).
    pub attempts: u32,
    /// First backoff.
    pub initial_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// Timeout of one attempt.
    pub call_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(3),
            call_timeout: Duration::from_secs(10),
        }
    }
}

enum Failure {
    Retry(String),
    Fatal(OracleError),
}

/// Reads validator sets from the contract.
#[derive(Debug, Clone)]
pub struct Oracle {
    provider: DynProvider,
    contract: Address,
    pin_rule: PinRule,
    pin_depth: u64,
    retry: RetryPolicy,
}

impl Oracle {
    /// An oracle with an explicit pin rule.
    pub fn new(
        provider: DynProvider,
        contract: Address,
        pin_rule: PinRule,
        pin_depth: u64,
    ) -> Self {
        Self {
            provider,
            contract,
            pin_rule,
            pin_depth,
            retry: RetryPolicy::default(),
        }
    }

    /// An oracle with the pin rule of a cluster's genesis.
    pub fn from_genesis(provider: DynProvider, genesis: &Genesis) -> Self {
        Self::new(
            provider,
            genesis.contract,
            genesis.pin_rule,
            genesis.pin_depth,
        )
    }

    /// Changes the retry policy.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The contract read.
    pub fn contract(&self) -> Address {
        self.contract
    }

    async fn retrying<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, OracleError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let attempts = self.retry.attempts.max(1);
        let mut backoff = self.retry.initial_backoff;
        let mut last = String::new();
        for attempt in 1..=attempts {
            match tokio::time::timeout(self.retry.call_timeout, f()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(Failure::Fatal(e))) => return Err(e),
                Ok(Err(Failure::Retry(reason))) => last = reason,
                Err(_) => last = format!("no answer within {:?}", self.retry.call_timeout),
            }
            if attempt < attempts {
                tracing::debug!(what, attempt, %last, "oracle RPC failed, retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(self.retry.max_backoff);
            }
        }
        Err(OracleError::Rpc {
            what: what.to_string(),
            attempts,
            reason: last,
        })
    }

    /// The block the pin rule selects now.
    pub async fn pinned_block(&self) -> Result<BlockRef, OracleError> {
        let tag = match self.pin_rule {
            PinRule::Finalized => BlockNumberOrTag::Finalized,
            PinRule::HeadMinusDepth => {
                let head = self
                    .retrying("eth_blockNumber", || async {
                        self.provider
                            .get_block_number()
                            .await
                            .map_err(|e| Failure::Retry(e.to_string()))
                    })
                    .await?;
                BlockNumberOrTag::Number(head.saturating_sub(self.pin_depth))
            }
        };
        self.block_by_number(tag).await
    }

    /// The block with this number or tag.
    pub async fn block_by_number(&self, tag: BlockNumberOrTag) -> Result<BlockRef, OracleError> {
        let block = self
            .retrying(&format!("eth_getBlockByNumber({tag})"), || async {
                self.provider
                    .get_block_by_number(tag)
                    .await
                    .map_err(|e| Failure::Retry(e.to_string()))
            })
            .await?
            .ok_or_else(|| OracleError::BlockNotFound(tag.to_string()))?;
        Ok(BlockRef {
            number: block.header.number,
            hash: block.header.hash,
        })
    }

    /// The block with this hash.
    pub async fn block_by_hash(&self, hash: B256) -> Result<BlockRef, OracleError> {
        let block = self
            .retrying("eth_getBlockByHash", || async {
                self.provider
                    .get_block_by_hash(hash)
                    .await
                    .map_err(|e| Failure::Retry(e.to_string()))
            })
            .await?
            .ok_or_else(|| OracleError::BlockNotFound(hash.to_string()))?;
        Ok(BlockRef {
            number: block.header.number,
            hash: block.header.hash,
        })
    }

    /// The set at the block the pin rule selects now.
    pub async fn snapshot(&self) -> Result<Snapshot, OracleError> {
        let block = self.pinned_block().await?;
        self.snapshot_at(block).await
    }

    /// The set at a block, read by its hash (EIP-1898, `requireCanonical`).
    pub async fn snapshot_at(&self, block: BlockRef) -> Result<Snapshot, OracleError> {
        let id = BlockId::Hash(RpcBlockHash {
            block_hash: block.hash,
            require_canonical: Some(true),
        });
        let contract = self.contract;
        let code = self
            .retrying("eth_getCode", || async {
                self.provider
                    .get_code_at(contract)
                    .block_id(id)
                    .await
                    .map_err(|e| Failure::Retry(e.to_string()))
            })
            .await?;
        if code.is_empty() {
            return Err(OracleError::NoCode {
                contract,
                block: block.hash,
            });
        }
        let c = DstackMembershipNFT::new(contract, self.provider.clone());
        // Transport trouble is retried; a revert or undecodable answer is the contract's
        // deterministic reply and is reported at once.
        let classify = |what: &str, e: alloy::contract::Error| {
            let reverted = e.as_revert_data().is_some() || e.to_string().contains("revert");
            match e {
                alloy::contract::Error::TransportError(t) if !reverted => {
                    Failure::Retry(t.to_string())
                }
                other => Failure::Fatal(OracleError::NotTheContract {
                    contract,
                    reason: format!(
                        "{what}: {}",
                        crate::contract::describe_contract_error(&other)
                    ),
                }),
            }
        };
        let count = self
            .retrying("validatorCount()", || async {
                c.validatorCount()
                    .block(id)
                    .call()
                    .await
                    .map_err(|e| classify("validatorCount()", e))
            })
            .await?;
        let inconsistent = |reason: String| OracleError::Inconsistent {
            block: block.hash,
            reason,
        };
        let count = u64::try_from(count).map_err(|_| inconsistent(format!("count {count}")))?;
        let mut members = Vec::with_capacity(count.min(10_000) as usize);
        let mut offset = 0u64;
        while offset < count {
            let page = self
                .retrying("validators()", || async {
                    c.validators(U256::from(offset), U256::from(PAGE_LIMIT))
                        .block(id)
                        .call()
                        .await
                        .map_err(|e| classify("validators()", e))
                })
                .await?;
            let expected = (count - offset).min(PAGE_LIMIT);
            if page.len() as u64 != expected {
                return Err(inconsistent(format!(
                    "page at offset {offset} has {} entries, expected {expected}",
                    page.len()
                )));
            }
            for v in page {
                if v.publicKey.len() != 64 {
                    return Err(OracleError::MalformedKey {
                        member: v.node,
                        len: v.publicKey.len(),
                        block: block.hash,
                    });
                }
                if Address::from_raw_public_key(&v.publicKey) != v.node {
                    return Err(inconsistent(format!(
                        "{}: public key is not the node's",
                        v.node
                    )));
                }
                let power = u64::try_from(v.power).map_err(|_| {
                    inconsistent(format!("{}: power {} exceeds u64", v.node, v.power))
                })?;
                if power == 0 {
                    continue;
                }
                members.push(Member {
                    address: v.node,
                    public_key: v.publicKey,
                    power,
                    connection_url: v.connectionUrl,
                    instance_id: v.instanceId.0,
                });
            }
            offset += expected;
        }
        members.sort_by_key(|m| m.address);
        if members.windows(2).any(|w| w[0].address == w[1].address) {
            return Err(inconsistent("a node appears twice".into()));
        }
        if members.is_empty() {
            return Err(OracleError::EmptySet {
                number: block.number,
                hash: block.hash,
            });
        }
        let validator_set_hash = validator_set_hash(&members);
        Ok(Snapshot {
            block,
            members,
            validator_set_hash,
        })
    }

    /// The set at `hash` if `hash` is this RPC's block at `number`; `None` when it is not
    /// (rolled back, invented, or not reached yet).
    pub async fn set_at(&self, number: u64, hash: B256) -> Result<Option<Snapshot>, OracleError> {
        let at = match self.block_by_number(BlockNumberOrTag::Number(number)).await {
            Ok(b) => b,
            Err(OracleError::BlockNotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        if at.hash != hash {
            return Ok(None);
        }
        self.snapshot_at(at).await.map(Some)
    }

    /// A follower starting from `current`.
    pub fn follow(self, current: Snapshot, poll: Duration) -> Follower {
        Follower {
            oracle: self,
            current,
            poll,
        }
    }
}

/// Follows the pinned block and reports validator-set changes.
#[derive(Debug, Clone)]
pub struct Follower {
    oracle: Oracle,
    current: Snapshot,
    poll: Duration,
}

impl Follower {
    /// The latest snapshot read (with the latest URLs).
    pub fn current(&self) -> &Snapshot {
        &self.current
    }

    /// Reads the pinned block once: `Some` with the new snapshot when the set changed, `None`
    /// when the pinned block or the set did not (URL updates are absorbed into `current`).
    pub async fn poll_once(&mut self) -> Result<Option<Snapshot>, OracleError> {
        let block = self.oracle.pinned_block().await?;
        if block.hash == self.current.block.hash || block.number < self.current.block.number {
            return Ok(None);
        }
        let snap = self.oracle.snapshot_at(block).await?;
        let changed = !snap.same_set(&self.current);
        self.current = snap;
        Ok(changed.then(|| self.current.clone()))
    }

    /// Waits (polling) until the set changes, and returns the new snapshot.
    pub async fn next_change(&mut self) -> Result<Snapshot, OracleError> {
        loop {
            if let Some(s) = self.poll_once().await? {
                return Ok(s);
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}
