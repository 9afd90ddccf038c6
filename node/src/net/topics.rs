//! The gossip topics, namespaced by chain id and contract, and the kind of body each carries.

use super::*;

/// Which pubsub topic a message travels on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TopicKind {
    /// Proposals, timeouts, TCs, epoch-change records, evidence.
    Consensus,
    /// Batches of transactions.
    Batches,
}

impl TopicKind {
    /// The topic a gossip body belongs on.
    pub fn of(body: &GossipBody) -> Self {
        match body {
            GossipBody::Batch(_) => TopicKind::Batches,
            _ => TopicKind::Consensus,
        }
    }
}

/// The cluster's topics, namespaced by chain id and contract (so clusters never mix).
#[derive(Clone, Debug)]
pub struct Topics {
    /// The consensus topic.
    pub consensus: IdentTopic,
    /// The batch topic.
    pub batches: IdentTopic,
}

/// The namespace of a cluster's topics and protocols: chain id and contract (lowercase, 0x).
pub(super) fn namespace(chain_id: u64, contract: &str) -> String {
    let c = contract.trim_start_matches("0x").to_lowercase();
    format!("/dstack-nft-cluster/{chain_id}/0x{c}")
}

/// The stream protocol batches are pushed on, namespaced like the topics (so clusters never
/// mix): `/dstack-nft-cluster/{chain_id}/0x{contract}/batches/1`.
pub fn batch_protocol(chain_id: u64, contract: &str) -> Result<StreamProtocol, NetError> {
    StreamProtocol::try_from_owned(format!("{}/batches/1", namespace(chain_id, contract)))
        .map_err(|e| NetError::Transport(format!("batch protocol name: {e}")))
}

impl Topics {
    /// Topics for the cluster of `contract` (any case, with or without 0x) on `chain_id`.
    pub fn new(chain_id: u64, contract: &str) -> Self {
        let base = namespace(chain_id, contract);
        Self {
            consensus: IdentTopic::new(format!("{base}/consensus/1")),
            batches: IdentTopic::new(format!("{base}/batches/1")),
        }
    }

    pub(super) fn topic(&self, kind: TopicKind) -> &IdentTopic {
        match kind {
            TopicKind::Consensus => &self.consensus,
            TopicKind::Batches => &self.batches,
        }
    }

    pub(super) fn kind(&self, hash: &gossipsub::TopicHash) -> Option<TopicKind> {
        if *hash == self.consensus.hash() {
            Some(TopicKind::Consensus)
        } else if *hash == self.batches.hash() {
            Some(TopicKind::Batches)
        } else {
            None
        }
    }
}
