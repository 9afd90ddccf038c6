//! NFT-weighted 2-chain HotStuff as a pure, synchronous state machine: events in, actions out.
//! No tokio, sockets, disk or clock reads live here (time is an input), so the protocol can be
//! proven by a deterministic, seeded simulator before anything is wired to a network.
#![forbid(unsafe_code)]
