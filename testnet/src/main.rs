//! `testnet`: a local multi-node cluster on one machine (anvil, the contract, simulated TEEs,
//! node processes) and the chaos suite that attacks it.

fn main() {
    println!("testnet {}", env!("CARGO_PKG_VERSION"));
}
