//! `dstack-node`: the validator binary operators run. All I/O of the cluster lives in this
//! crate: libp2p, storage, mempool, the consensus driver, the HTTP API and metrics.

fn main() {
    println!("dstack-node {}", env!("CARGO_PKG_VERSION"));
}
