//! The SDK: connect to a cluster's contract, register a dstack node, list its peers.
//!
//! ```no_run
//! # async fn demo(dstack: membership::dstack::DstackClient,
//! #     owner: alloy::signers::local::PrivateKeySigner) -> Result<(), membership::sdk::SdkError> {
//! use membership::sdk::Cluster;
//! let contract = "0x5FbDB2315678afecb367f032d93F642f64180aa3".parse().expect("address");
//! let cluster = Cluster::connect("http://127.0.0.1:8545", contract).await?;
//! cluster.register(&dstack, alloy::primitives::U256::from(1), &owner, "/ip4/127.0.0.1/tcp/9000").await?;
//! let peers = cluster.peers().await?;
//! # let _ = peers; Ok(()) }
//! ```

use std::time::Duration;

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, B256, Bytes, FixedBytes, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use alloy::sol_types::{SolStruct, eip712_domain};
use alloy::transports::http::reqwest::Url;
use k256::ecdsa::SigningKey;
use thiserror::Error;

use crate::connection_url::{self, ConnectionUrlError};
use crate::contract::DstackMembershipNFT::{self, DstackProof};
use crate::contract::{EIP712_NAME, EIP712_VERSION, Registration};
use crate::dstack::{DstackClient, DstackError, NodeKey};
use crate::hexfmt::{HexError, encode_0x};
use crate::identity::{
    self, KmsRoot, TrustAnchor, VerifiedIdentity, VerifyError, sign_prehash, uncompressed64,
};

/// How long a registration stays valid after it is signed (the contract refuses more than its
/// `MAX_DEADLINE_WINDOW`, one day).
pub const DEFAULT_DEADLINE_SECS: u64 = 3600;

/// The timeout of one RPC call made by the SDK and the oracle.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(15);

/// SDK failures, each naming what was being done.
#[derive(Debug, Error)]
pub enum SdkError {
    /// The RPC URL does not parse.
    #[error("RPC URL {0:?} is not a valid http(s) URL")]
    BadUrl(String),
    /// An RPC call failed or timed out.
    #[error("RPC {what}: {reason}")]
    Rpc {
        /// The call.
        what: String,
        /// Why.
        reason: String,
    },
    /// No code at the contract address.
    #[error("no contract code at {0}: wrong address, wrong chain, or not deployed yet")]
    NoCode(Address),
    /// Code is there, but it does not answer like `DstackMembershipNFT`.
    #[error("contract at {contract} does not answer like DstackMembershipNFT ({reason})")]
    NotTheContract {
        /// The address.
        contract: Address,
        /// The failed probe.
        reason: String,
    },
    /// The contract has no KMS root yet: registration is refused on chain.
    #[error("the contract's KMS root is not set (owner must call setKmsRoot)")]
    KmsRootNotSet,
    /// The node's app id is not allowed by the contract.
    #[error("app id {0} is not allowed by the contract (owner must call setAppIdAllowed)")]
    AppIdNotAllowed(String),
    /// The guest agent failed.
    #[error(transparent)]
    Dstack(#[from] DstackError),
    /// The node's chain does not verify against the contract's KMS root and purpose.
    #[error("the node's dstack signature chain does not verify against the contract: {0}")]
    Verify(#[from] VerifyError),
    /// The instance id does not fit `bytes20`.
    #[error(transparent)]
    InstanceId(#[from] HexError),
    /// The locally computed EIP-712 digest differs from the contract's.
    #[error("EIP-712 digest mismatch: local {local}, contract {contract}")]
    DigestMismatch {
        /// Ours.
        local: B256,
        /// The contract's.
        contract: B256,
    },
    /// The connection URL is one the contract refuses.
    #[error(transparent)]
    ConnectionUrl(#[from] ConnectionUrlError),
    /// The contract rejected the transaction.
    #[error("registerNode rejected: {0}")]
    Rejected(String),
}

fn rpc(what: impl Into<String>, e: impl std::fmt::Display) -> SdkError {
    SdkError::Rpc {
        what: what.into(),
        reason: e.to_string(),
    }
}

/// Runs an RPC future with [`RPC_TIMEOUT`].
pub(crate) async fn timed<T, E: std::fmt::Display>(
    what: &str,
    fut: impl std::future::IntoFuture<Output = Result<T, E>>,
) -> Result<T, SdkError> {
    match tokio::time::timeout(RPC_TIMEOUT, fut.into_future()).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(rpc(what, e)),
        Err(_) => Err(rpc(what, format!("no answer within {RPC_TIMEOUT:?}"))),
    }
}

pub use crate::contract::describe_contract_error;

/// A registration as the contract takes it, plus its context (also the forge fixture).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationPayload {
    /// Chain id of the EIP-712 domain.
    pub chain_id: u64,
    /// The contract (EIP-712 verifying contract).
    pub contract: Address,
    /// The token authorizing the node.
    pub token_id: U256,
    /// The token's owner.
    pub owner: Address,
    /// The KMS root the chain ends in.
    pub kms_root: Address,
    /// The app id.
    pub app_id: [u8; 20],
    /// The purpose the chain was made for.
    pub purpose: String,
    /// The instance id (`bytes20`).
    pub instance_id: [u8; 20],
    /// The node's connection URL (multiaddr).
    pub connection_url: String,
    /// `nonces(node)` at signing time.
    pub nonce: U256,
    /// Last valid timestamp.
    pub deadline: U256,
    /// The node's key, 64 bytes x ‖ y.
    pub derived_public_key: [u8; 64],
    /// The app key, 64 bytes x ‖ y.
    pub app_public_key: [u8; 64],
    /// `signature_chain[0]`.
    pub app_signature: Vec<u8>,
    /// `signature_chain[1]`.
    pub kms_signature: Vec<u8>,
    /// The node's EIP-712 signature (r ‖ s ‖ v, v in {0,1}).
    pub node_signature: [u8; 65],
}

/// The EIP-712 digest of a registration, as `registrationDigest` computes it.
#[allow(clippy::too_many_arguments)]
pub fn registration_digest(
    chain_id: u64,
    contract: Address,
    token_id: U256,
    owner: Address,
    instance_id: [u8; 20],
    connection_url: &str,
    nonce: U256,
    deadline: U256,
) -> B256 {
    let domain = eip712_domain! {
        name: EIP712_NAME,
        version: EIP712_VERSION,
        chain_id: chain_id,
        verifying_contract: contract,
    };
    Registration {
        tokenId: token_id,
        owner,
        instanceId: FixedBytes(instance_id),
        connectionUrl: connection_url.to_string(),
        nonce,
        deadline,
    }
    .eip712_signing_hash(&domain)
}

/// Everything a registration commits to besides the node key and chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationRequest {
    /// Chain id.
    pub chain_id: u64,
    /// Contract.
    pub contract: Address,
    /// Token id.
    pub token_id: U256,
    /// Token owner.
    pub owner: Address,
    /// Instance id (`bytes20`).
    pub instance_id: [u8; 20],
    /// Connection URL.
    pub connection_url: String,
    /// `nonces(node)`.
    pub nonce: U256,
    /// Deadline (unix seconds).
    pub deadline: U256,
}

/// Builds and signs a registration without any I/O: verifies the chain against `anchor` first
/// (so a node never signs a registration the contract would reject for its chain).
pub fn build_registration(
    node_key: &SigningKey,
    signature_chain: &[Vec<u8>],
    anchor: &TrustAnchor,
    req: &RegistrationRequest,
) -> Result<RegistrationPayload, VerifyError> {
    let id: VerifiedIdentity =
        identity::verify_chain(anchor, node_key.verifying_key(), signature_chain)?;
    let digest = registration_digest(
        req.chain_id,
        req.contract,
        req.token_id,
        req.owner,
        req.instance_id,
        &req.connection_url,
        req.nonce,
        req.deadline,
    );
    Ok(RegistrationPayload {
        chain_id: req.chain_id,
        contract: req.contract,
        token_id: req.token_id,
        owner: req.owner,
        kms_root: id.kms_root,
        app_id: anchor.app_id,
        purpose: anchor.purpose.clone(),
        instance_id: req.instance_id,
        connection_url: req.connection_url.clone(),
        nonce: req.nonce,
        deadline: req.deadline,
        derived_public_key: uncompressed64(&id.derived_key),
        app_public_key: uncompressed64(&id.app_key),
        app_signature: signature_chain[0].clone(),
        kms_signature: signature_chain[1].clone(),
        node_signature: sign_prehash(node_key, &digest.0),
    })
}

impl RegistrationPayload {
    /// The node's address.
    pub fn node(&self) -> Address {
        Address::from_raw_public_key(&self.derived_public_key)
    }

    /// The contract's `DstackProof` struct.
    pub fn proof(&self) -> DstackProof {
        DstackProof {
            derivedPublicKey: Bytes::copy_from_slice(&self.derived_public_key),
            appPublicKey: Bytes::copy_from_slice(&self.app_public_key),
            appSignature: Bytes::copy_from_slice(&self.app_signature),
            kmsSignature: Bytes::copy_from_slice(&self.kms_signature),
            appId: FixedBytes(self.app_id),
        }
    }

    /// The JSON form (the forge fixture's keys: hex with 0x, numbers as decimal strings).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "chainId": self.chain_id.to_string(),
            "contract": encode_0x(self.contract.as_slice()),
            "tokenId": self.token_id.to_string(),
            "owner": encode_0x(self.owner.as_slice()),
            "kmsRoot": encode_0x(self.kms_root.as_slice()),
            "appId": encode_0x(&self.app_id),
            "purpose": self.purpose,
            "instanceId": encode_0x(&self.instance_id),
            "connectionUrl": self.connection_url,
            "nonce": self.nonce.to_string(),
            "deadline": self.deadline.to_string(),
            "derivedPublicKey": encode_0x(&self.derived_public_key),
            "appPublicKey": encode_0x(&self.app_public_key),
            "appSignature": encode_0x(&self.app_signature),
            "kmsSignature": encode_0x(&self.kms_signature),
            "nodeSignature": encode_0x(&self.node_signature),
            "node": encode_0x(self.node().as_slice()),
        })
    }
}

/// A peer from `getPeers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Node address.
    pub node: Address,
    /// Its connection URL.
    pub connection_url: String,
}

/// A receipt of a successful registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registered {
    /// The registered node.
    pub node: Address,
    /// The transaction.
    pub tx_hash: B256,
    /// The block it was mined in.
    pub block_number: Option<u64>,
}

/// A connection to one cluster contract.
#[derive(Debug, Clone)]
pub struct Cluster {
    provider: DynProvider,
    rpc_url: Url,
    contract: Address,
    chain_id: u64,
}

impl Cluster {
    /// Connects and checks that `contract` holds code that answers like the membership
    /// contract (a wrong address gives an error here, not an empty validator set later).
    pub async fn connect(rpc_url: &str, contract: Address) -> Result<Self, SdkError> {
        let url: Url = rpc_url
            .parse()
            .map_err(|_| SdkError::BadUrl(rpc_url.to_string()))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(SdkError::BadUrl(rpc_url.to_string()));
        }
        let provider = ProviderBuilder::new().connect_http(url.clone()).erased();
        let chain_id = timed(&format!("eth_chainId at {url}"), provider.get_chain_id()).await?;
        let code = timed("eth_getCode", provider.get_code_at(contract).into_future()).await?;
        if code.is_empty() {
            return Err(SdkError::NoCode(contract));
        }
        let cluster = Self {
            provider,
            rpc_url: url,
            contract,
            chain_id,
        };
        let c = cluster.instance();
        match tokio::time::timeout(RPC_TIMEOUT, c.MAX_PAGE_LIMIT().call()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(SdkError::NotTheContract {
                    contract,
                    reason: format!("MAX_PAGE_LIMIT(): {e}"),
                });
            }
            Err(_) => return Err(rpc("MAX_PAGE_LIMIT()", "timeout")),
        }
        Ok(cluster)
    }

    /// The chain id of the RPC.
    pub fn chain_id(&self) -> u64 {
        self.chain_id
    }

    /// The contract address.
    pub fn contract(&self) -> Address {
        self.contract
    }

    /// The read-only provider.
    pub fn provider(&self) -> &DynProvider {
        &self.provider
    }

    /// The RPC URL.
    pub fn rpc_url(&self) -> &str {
        self.rpc_url.as_str()
    }

    /// A binding on the read-only provider.
    pub fn instance(&self) -> DstackMembershipNFT::DstackMembershipNFTInstance<DynProvider> {
        DstackMembershipNFT::new(self.contract, self.provider.clone())
    }

    /// A binding that sends transactions signed by `signer`.
    pub fn with_signer(
        &self,
        signer: &PrivateKeySigner,
    ) -> DstackMembershipNFT::DstackMembershipNFTInstance<DynProvider> {
        let provider = ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer.clone()))
            .connect_http(self.rpc_url.clone())
            .erased();
        DstackMembershipNFT::new(self.contract, provider)
    }

    /// The contract's purpose string.
    pub async fn purpose(&self) -> Result<String, SdkError> {
        timed("purpose()", self.instance().purpose().call()).await
    }

    /// The contract's KMS root (refusing an unset one).
    pub async fn kms_root(&self) -> Result<Address, SdkError> {
        let root = timed("kmsRoot()", self.instance().kmsRoot().call()).await?;
        if root == Address::ZERO {
            return Err(SdkError::KmsRootNotSet);
        }
        Ok(root)
    }

    /// The node key from dstack at this cluster's path, with the contract's purpose.
    pub async fn node_key(&self, dstack: &DstackClient) -> Result<NodeKey, SdkError> {
        let purpose = self.purpose().await?;
        Ok(dstack
            .node_key(self.chain_id, self.contract, &purpose)
            .await?)
    }

    /// Builds the signed registration for `token_id` owned by `owner`, checking everything the
    /// contract will check that can be checked off chain (chain, app id, digest).
    pub async fn registration(
        &self,
        dstack: &DstackClient,
        token_id: U256,
        owner: Address,
        connection_url: &str,
    ) -> Result<RegistrationPayload, SdkError> {
        let node = self.node_key(dstack).await?;
        self.registration_for(&node, token_id, owner, connection_url)
            .await
    }

    /// [`Cluster::registration`] for a node key already obtained.
    pub async fn registration_for(
        &self,
        node: &NodeKey,
        token_id: U256,
        owner: Address,
        connection_url: &str,
    ) -> Result<RegistrationPayload, SdkError> {
        connection_url::check(connection_url)?;
        let c = self.instance();
        let kms_root = self.kms_root().await?;
        let allowed = timed(
            "isAppIdAllowed()",
            c.isAppIdAllowed(FixedBytes(node.app_id)).call(),
        )
        .await?;
        if !allowed {
            return Err(SdkError::AppIdNotAllowed(encode_0x(&node.app_id)));
        }
        let anchor = TrustAnchor {
            kms_root: KmsRoot::Address(kms_root),
            app_id: node.app_id,
            purpose: node.purpose.clone(),
        };
        let node_address = node.address();
        let nonce = timed("nonces()", c.nonces(node_address).call()).await?;
        let latest = timed(
            "eth_getBlockByNumber(latest)",
            self.provider
                .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
                .into_future(),
        )
        .await?
        .ok_or_else(|| rpc("eth_getBlockByNumber(latest)", "no block"))?;
        let deadline = U256::from(latest.header.timestamp + DEFAULT_DEADLINE_SECS);
        let req = RegistrationRequest {
            chain_id: self.chain_id,
            contract: self.contract,
            token_id,
            owner,
            instance_id: node.instance_id_bytes20()?,
            connection_url: connection_url.to_string(),
            nonce,
            deadline,
        };
        let payload =
            build_registration(&node.key.secret, &node.key.signature_chain, &anchor, &req)?;
        let onchain = timed(
            "registrationDigest()",
            c.registrationDigest(
                token_id,
                owner,
                FixedBytes(req.instance_id),
                req.connection_url.clone(),
                nonce,
                deadline,
            )
            .call(),
        )
        .await?;
        let local = registration_digest(
            req.chain_id,
            req.contract,
            token_id,
            owner,
            req.instance_id,
            &req.connection_url,
            nonce,
            deadline,
        );
        if onchain != local {
            return Err(SdkError::DigestMismatch {
                local,
                contract: onchain,
            });
        }
        Ok(payload)
    }

    /// Submits a registration payload with the owner's signer and waits for its receipt.
    pub async fn submit(
        &self,
        payload: &RegistrationPayload,
        owner_signer: &PrivateKeySigner,
    ) -> Result<Registered, SdkError> {
        let c = self.with_signer(owner_signer);
        let call = c.registerNode(
            payload.token_id,
            payload.proof(),
            FixedBytes(payload.instance_id),
            payload.connection_url.clone(),
            payload.deadline,
            Bytes::copy_from_slice(&payload.node_signature),
        );
        let pending = match tokio::time::timeout(RPC_TIMEOUT, call.send()).await {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return Err(SdkError::Rejected(describe_contract_error(&e))),
            Err(_) => return Err(rpc("registerNode send", "timeout")),
        };
        let tx_hash = *pending.tx_hash();
        let receipt = timed("registerNode receipt", pending.get_receipt()).await?;
        if !receipt.status() {
            return Err(SdkError::Rejected(format!(
                "transaction {tx_hash} reverted"
            )));
        }
        Ok(Registered {
            node: payload.node(),
            tx_hash,
            block_number: receipt.block_number,
        })
    }

    /// Registers the dstack node behind `dstack` for `token_id`, signed by the token's owner.
    pub async fn register(
        &self,
        dstack: &DstackClient,
        token_id: U256,
        owner_signer: &PrivateKeySigner,
        connection_url: &str,
    ) -> Result<Registered, SdkError> {
        let payload = self
            .registration(dstack, token_id, owner_signer.address(), connection_url)
            .await?;
        self.submit(&payload, owner_signer).await
    }

    /// All counted peers (paginated `getPeers`) at the latest block.
    pub async fn peers(&self) -> Result<Vec<Peer>, SdkError> {
        let c = self.instance();
        let limit = U256::from(crate::contract::PAGE_LIMIT);
        let mut out = Vec::new();
        loop {
            let page = timed(
                "getPeers()",
                c.getPeers(U256::from(out.len()), limit).call(),
            )
            .await?;
            let n = page.len();
            out.extend(page.into_iter().map(|p| Peer {
                node: p.node,
                connection_url: p.connectionUrl,
            }));
            if n < crate::contract::PAGE_LIMIT as usize {
                return Ok(out);
            }
        }
    }
}
