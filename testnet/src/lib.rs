//! `testnet`: a local dstack-nft-cluster on one machine. It starts anvil from the project's npm
//! toolchain, deploys `DstackMembershipNFT` from the committed artifact, mints tokens to owner
//! accounts by power, starts one simulated dstack TEE per node, registers every node through the
//! membership SDK, writes the cluster's `genesis.json`, and starts the `dstack-node` processes.
//!
//! `add-node`, `transfer` and `burn` ([`live`]) change the membership of a running cluster.
//!
//! The library is what the `testnet` binary runs, so `benches` (and the chaos suite) can bring a
//! cluster up and down in code. Everything a run starts is recorded in `<dir>/state.json`, so
//! another process (`testnet down`) can stop it.
#![forbid(unsafe_code)]

pub mod chain;
pub mod chaos;
pub mod equivocate;
pub mod error;
pub mod faulty;
pub mod hostile;
pub mod live;
pub mod load;
pub mod netns;
pub mod nodecfg;
pub mod paths;
pub mod procs;
pub mod state;
pub mod status;
pub mod timeline;
pub mod up;

pub use error::Error;
