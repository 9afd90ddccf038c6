//! NFT-weighted 2-chain HotStuff as a pure, synchronous state machine: events in, actions out.
//! No tokio, sockets, disk or clock reads live here (time is an input), so the protocol can be
//! proven by a deterministic, seeded simulator before anything is wired to a network.
//!
//! Layout, one concept per module: [`codec`] (canonical bytes), [`bounds`] (range checks on
//! outside integers), [`types`] (messages and
//! certificates), [`domain`] (signed digests and genesis ids), [`crypto`] (signers and
//! verifiers), [`validators`] (weighted set, thresholds, leader schedule), [`verify`]
//! (certificate and message checks against an epoch), [`safety`] (the persisted safety rules),
//! [`block_tree`] (blocks, QCs, the commit rule), [`pacemaker`] (rounds, timers, timeout
//! certificates), [`core`] (the state machine), [`evidence`] (equivocation records), [`epoch`] (epoch-change records),
//! [`host`] (the order a host applies actions in), [`restore`] (the epoch a node restarts in),
//! [`sim`] (the deterministic simulator) and [`testkit`] (signed test objects).
#![forbid(unsafe_code)]

pub mod block_tree;
pub mod bounds;
pub mod codec;
pub mod core;
pub mod crypto;
pub mod domain;
pub mod epoch;
pub mod evidence;
pub mod hash;
pub mod host;
pub mod pacemaker;
pub mod restore;
pub mod safety;
pub mod sim;
pub mod sync;
pub mod testkit;
pub mod types;
pub mod validators;
pub mod verify;
