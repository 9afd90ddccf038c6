//! Who may take part in consensus: dstack signature-chain verification, the dstack guest-agent
//! client and simulator, bindings to the `DstackMembershipNFT` contract, and the validator-set
//! oracle that reads the contract at pinned chain blocks (through one RPC endpoint or a quorum of
//! several). It knows nothing of consensus.
#![forbid(unsafe_code)]
#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod appkeys;
pub mod contract;
pub mod dstack;
pub mod genesis;
pub mod hexfmt;
pub mod identity;
pub mod kdf;
pub mod oracle;
pub mod quorum;
pub mod sdk;
pub mod simulator;
