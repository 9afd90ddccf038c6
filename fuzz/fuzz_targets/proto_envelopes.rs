//! The three envelopes a node decodes from the network (gossip, request, response), through
//! `decode_checked` (size, version, body), and the batch fast path beside the general decoder.
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
            let decoded = v1::GossipMessage::decode_checked(bytes);
            if let Some(range) = proto::batch_in_gossip(bytes) {
                // The fast path takes the batch bytes unchecked (the mempool checks them); they
                // must decode to what the general decoder finds, or both must refuse.
                let fast = v1::Batch::decode(&bytes[range.clone()]);
                match (&decoded, &fast) {
                    (Ok(proto::GossipBody::Batch(b)), Ok(f)) => assert_eq!(b, f),
                    (Err(_), Err(_)) => {}
                    (d, f) => panic!("fast path {f:?} and decoder {d:?} disagree"),
                }
                let taken = proto::take_batch_in_gossip(bytes.to_vec()).expect("same envelope");
                assert_eq!(taken, &bytes[range]);
            }
            if let Ok(body) = decoded {
                let again = v1::GossipMessage::new(body.clone()).encode_to_vec();
                assert_eq!(v1::GossipMessage::decode_checked(&again).ok(), Some(body));
            }
        }
        1 => {
            if let Ok(body) = v1::Request::decode_checked(bytes) {
                let again = v1::Request::new(body.clone()).encode_to_vec();
                assert_eq!(v1::Request::decode_checked(&again).ok(), Some(body));
            }
        }
        _ => {
            if let Ok(body) = v1::Response::decode_checked(bytes) {
                let again = v1::Response::new(body.clone()).encode_to_vec();
                assert_eq!(v1::Response::decode_checked(&again).ok(), Some(body));
            }
        }
    }
});
