//! The `bench` load harness of dstack-nft-cluster: a local cluster started through the `testnet`
//! library (real anvil, the contract, simulated TEEs, `dstack-node` processes over libp2p on
//! loopback), open-loop load from separate client processes, and the metrics the field uses:
//!
//! * consensus latency = commit time − the block's proposal time;
//! * end-to-end latency = commit time − the client's send time of sampled transactions;
//! * TPS = committed bytes / duration / transaction size.
//!
//! A block's commit time is the earliest time any node logged its commit; its proposal time is
//! the earliest time its proposer handed the signed proposal to the network (recorded by a
//! passive outbound tap of `bench start`, the node wrapper the harness runs).
#![forbid(unsafe_code)]

pub mod client;
pub mod error;
pub mod logs;
pub mod plot;
pub mod procstat;
pub mod run;
pub mod stats;
pub mod sweep;
pub mod timed;
pub mod txgen;

pub use error::BenchError;
