//! `dstack-node-equivocator`: a TEST-ONLY byzantine validator for the chaos suite. It is
//! `dstack-node start` plus an outbound tap that, next to every vote and every proposal with a
//! payload the node signs, sends a conflicting one signed with the same key (a vote for another
//! block id; the same proposal with an empty payload). Honest nodes must record evidence against
//! it and stay safe.
//!
//! It lives in crate `testnet`, never in crate `node`, so no operator build contains it, and it
//! refuses to run on any chain but anvil's (chain id 31337).

use std::process::ExitCode;
use std::sync::Arc;

use consensus::types::Message;
use node::driver::DriverConfig;
use node::launch::FaultHooks;
use node::node::TapFactory;
use node::tap::OutboundTap;
use testnet::equivocate::Equivocator;
use testnet::faulty;

/// Sends each message's conflicting twin.
struct Twins(Option<Equivocator>);

impl OutboundTap for Twins {
    fn extra(&self, message: &Message) -> Vec<Message> {
        self.0
            .as_ref()
            .and_then(|e| e.twin(message))
            .into_iter()
            .collect()
    }
}

fn factory() -> TapFactory {
    Arc::new(|cfg: &DriverConfig| -> Arc<dyn OutboundTap> {
        faulty::refuse_unless_local("dstack-node-equivocator", cfg);
        match Equivocator::new(cfg) {
            Ok(e) => Arc::new(Twins(Some(e))),
            Err(e) => {
                eprintln!("dstack-node-equivocator: node key: {e}");
                Arc::new(Twins(None))
            }
        }
    })
}

fn main() -> ExitCode {
    faulty::main_with(
        "dstack-node-equivocator",
        "TEST-ONLY equivocating dstack-node for the chaos suite (chain id 31337 only)",
        FaultHooks {
            tap: Some(factory()),
            ..FaultHooks::default()
        },
    )
}
