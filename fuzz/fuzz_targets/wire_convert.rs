//! What the driver does with a decoded envelope: gossip bodies, vote requests and the stored
//! blocks converted to consensus types (`node::wire`), with the block id recomputed; every value
//! that converts must convert back to the same value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use proto::v1;

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            if let Ok(body) = v1::GossipMessage::decode_checked(bytes) {
                fuzz::roundtrip::gossip_body(&body);
            }
        }
        1 => {
            if let Ok(proto::RequestBody::Vote(v)) = v1::Request::decode_checked(bytes) {
                fuzz::roundtrip::vote(&v);
            }
        }
        _ => {
            // The block store's bytes (written by this node, read back at start and for serving).
            if let Ok(b) = v1::Block::decode(bytes) {
                fuzz::roundtrip::block(&b);
            }
        }
    }
});
