//! The library half of `dstack-node`: storage, mempool, the replicated KV application, the HTTP
//! API and metrics, the libp2p network and the consensus driver. The binary only parses the
//! command line and calls into this crate, so every part is testable on its own.
//!
//! Without the default feature `full`, only the parts that decode bytes from outside and need
//! no runtime build (wire conversions, frames, batches, transactions, `config.toml`), from a few
//! crates: the fuzz targets (`fuzz/`) use that, so their instrumented build stays short.

#[cfg(feature = "full")]
pub mod api;
pub mod app;
#[cfg(feature = "full")]
pub mod batch_log;
#[cfg(feature = "full")]
#[cfg(feature = "full")]
pub mod chain;
pub mod config;
pub mod disk_quota;
#[cfg(feature = "full")]
pub mod driver;
#[cfg(feature = "full")]
pub mod exec_overlay;
pub mod frames;
#[cfg(feature = "full")]
#[cfg(feature = "full")]
pub mod launch;
pub mod mempool;
#[cfg(feature = "full")]
pub mod metrics;
#[cfg(feature = "full")]
pub mod net;
#[cfg(feature = "full")]
pub mod node;
#[cfg(feature = "full")]
pub mod pruner;
#[cfg(feature = "full")]
pub mod seen_filter;
#[cfg(feature = "full")]
pub mod serve;
#[cfg(feature = "full")]
pub mod storage;
#[cfg(feature = "full")]
pub mod tap;
pub mod wire;

/// A 32-byte identifier: block ids, batch digests, transaction hashes.
pub type Hash32 = [u8; 32];
