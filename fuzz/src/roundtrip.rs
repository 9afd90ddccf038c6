//! Checks that what a decoder accepted survives being encoded and decoded again: a decoder
//! that accepts bytes its own encoder cannot reproduce is a decoder two nodes may disagree on.

use node::wire;
use proto::v1;

/// Converts a decoded gossip body the way the driver does, and checks every value that
/// converts round-trips through the wire types.
pub fn gossip_body(body: &proto::GossipBody) {
    use proto::GossipBody as G;
    match body {
        G::Proposal(p) => {
            if let Ok(x) = wire::proposal_from_wire(p) {
                let back = wire::proposal_from_wire(&wire::proposal_to_wire(&x));
                assert_eq!(back.ok().as_ref(), Some(&x), "proposal round trip");
            }
        }
        G::Timeout(t) => {
            if let Ok(x) = wire::timeout_from_wire(t) {
                let back = wire::timeout_from_wire(&wire::timeout_to_wire(&x));
                assert_eq!(back.ok().as_ref(), Some(&x), "timeout round trip");
            }
        }
        G::Tc(tc) => {
            if let Ok(x) = wire::tc_from_wire(tc) {
                let back = wire::tc_from_wire(&wire::tc_to_wire(&x));
                assert_eq!(back.ok().as_ref(), Some(&x), "tc round trip");
            }
        }
        G::EpochChange(r) => record(r),
        G::Batch(_) | G::Evidence(_) => {}
    }
}

/// Converts an epoch-change record and checks its round trip.
pub fn record(r: &v1::EpochChangeRecord) {
    if let Ok(x) = wire::record_from_wire(r) {
        let back = wire::record_from_wire(&wire::record_to_wire(&x));
        assert_eq!(back.ok().as_ref(), Some(&x), "record round trip");
    }
}

/// Converts a block and checks its round trip (the id is recomputed on both sides).
pub fn block(b: &v1::Block) {
    if let Ok(x) = wire::block_from_wire(b) {
        let back = wire::block_from_wire(&wire::block_to_wire(&x));
        assert_eq!(back.ok().as_ref(), Some(&x), "block round trip");
    }
}

/// Converts a commit proof and checks its round trip.
pub fn proof(p: &v1::CommitProof) {
    if let Ok(x) = wire::proof_from_wire(p) {
        let back = wire::proof_from_wire(&wire::proof_to_wire(&x));
        assert_eq!(back.ok().as_ref(), Some(&x), "proof round trip");
    }
}

/// Converts a vote and checks its round trip.
pub fn vote(v: &v1::Vote) {
    if let Ok(x) = wire::vote_from_wire(v) {
        let back = wire::vote_from_wire(&wire::vote_to_wire(&x));
        assert_eq!(back.ok().as_ref(), Some(&x), "vote round trip");
    }
}
