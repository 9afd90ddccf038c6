//! Who may take part in consensus: dstack signature-chain verification, the dstack guest-agent
//! client and simulator, bindings to the `DstackMembershipNFT` contract, and the validator-set
//! oracle that reads the contract at pinned chain blocks (through one RPC endpoint or a quorum of
//! several). It knows nothing of consensus.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod appkeys;
pub mod connection_url;
#[cfg(feature = "chain")]
pub mod contract;
pub mod dstack;
pub mod genesis;
pub mod hexfmt;
pub mod identity;
pub mod kdf;
#[cfg(feature = "chain")]
pub mod oracle;
#[cfg(feature = "chain")]
pub mod quorum;
#[cfg(feature = "chain")]
pub mod sdk;
pub mod simulator;
