//! A hook on the consensus messages a node sends, for fault-injection binaries only.
//!
//! The operator's `dstack-node` never installs one: [`crate::launch::run_start`] passes none. The
//! chaos suite's test-only equivocator links this crate and installs a tap that adds a second,
//! conflicting signed message next to each honest one, so the cluster's evidence path can be
//! exercised with real processes. Keeping the misbehaviour outside this crate means no operator
//! build can contain it.

use consensus::types::Message;

/// Sees each consensus message the node is about to send and may add more.
pub trait OutboundTap: Send + Sync {
    /// Messages to send after `message`, the same way (a vote to the same peer, the rest by
    /// gossip).
    fn extra(&self, message: &Message) -> Vec<Message>;
}
