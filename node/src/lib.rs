//! The library half of `dstack-node`: storage, mempool, the replicated KV application, the HTTP
//! API and metrics, the libp2p network and the consensus driver. The binary only parses the
//! command line and calls into this crate, so every part is testable on its own.

pub mod api;
pub mod app;
pub mod batch_log;
pub mod batch_push;
pub mod chain;
pub mod config;
pub mod driver;
pub mod exec_overlay;
pub mod ingest;
pub mod launch;
pub mod mempool;
pub mod metrics;
pub mod net;
pub mod node;
pub mod seen_filter;
pub mod serve;
pub mod storage;
pub mod tap;
pub mod wire;
