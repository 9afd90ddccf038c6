//! Shared parts of the fuzz targets in `fuzz_targets/`: the structure-aware consensus harness
//! and the round-trip checks several decoder targets use. See `README.md` for how to run them.
#![forbid(unsafe_code)]

pub mod core_harness;
pub mod roundtrip;
pub mod seeds;
