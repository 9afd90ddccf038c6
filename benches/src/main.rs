//! `bench`: the load harness that drives a local cluster and reports throughput and latency the
//! way the field measures them. Criterion micro-benchmarks live beside it in `benches/`.

fn main() {
    println!("bench {}", env!("CARGO_PKG_VERSION"));
}
