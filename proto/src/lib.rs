//! The wire schema shared by every node: proposals, votes, timeouts, certificates, batches and
//! sync messages, as prost types generated from `schema/dstack.proto`. Only data lives here;
//! validation and conversion to consensus types belong to `node`, the protocol to `consensus`.
#![forbid(unsafe_code)]

/// Generated prost types of wire version 1.
#[allow(missing_docs, clippy::all)]
pub mod v1 {
    include!(concat!(env!("OUT_DIR"), "/dstack.v1.rs"));
}

use prost::Message;

/// The wire version this build speaks; messages of any other version are refused.
pub const WIRE_VERSION: u32 = 1;

/// Upper bounds on encoded messages, checked before any decoding so a hostile peer cannot make
/// a node allocate more than these.
pub mod limits {
    /// A gossip message (proposal, timeout, TC, batch, epoch-change record, evidence).
    pub const MAX_GOSSIP_BYTES: usize = 4 * 1024 * 1024;
    /// A request on a request-response stream.
    pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
    /// A response on a request-response stream (batches and sync pages).
    pub const MAX_RESPONSE_BYTES: usize = 16 * 1024 * 1024;
}

/// Why a message could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The message is longer than its channel allows.
    #[error("message of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The channel's limit.
        max: usize,
    },
    /// The bytes are not a valid protobuf message of the expected type.
    #[error("malformed message: {0}")]
    Malformed(#[from] prost::DecodeError),
    /// The sender speaks another wire version.
    #[error("unsupported wire version {0} (this node speaks {WIRE_VERSION})")]
    Version(u32),
    /// The envelope carries no body.
    #[error("message has no body")]
    Empty,
}

fn decode_bounded<M: Message + Default>(bytes: &[u8], max: usize) -> Result<M, WireError> {
    if bytes.len() > max {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    Ok(M::decode(bytes)?)
}

macro_rules! envelope {
    ($ty:ident, $body:ty, $limit:expr) => {
        impl v1::$ty {
            /// Wraps a body in an envelope of this build's wire version.
            pub fn new(body: $body) -> Self {
                Self {
                    version: WIRE_VERSION,
                    body: Some(body),
                }
            }

            /// Decodes an envelope after checking its size, its version and that it has a body.
            pub fn decode_checked(bytes: &[u8]) -> Result<$body, WireError> {
                let message: Self = decode_bounded(bytes, $limit)?;
                if message.version != WIRE_VERSION {
                    return Err(WireError::Version(message.version));
                }
                message.body.ok_or(WireError::Empty)
            }
        }
    };
}

/// The body of a gossip message.
pub use v1::gossip_message::Body as GossipBody;
/// The body of a request.
pub use v1::request::Body as RequestBody;
/// The body of a response.
pub use v1::response::Body as ResponseBody;

envelope!(GossipMessage, GossipBody, limits::MAX_GOSSIP_BYTES);
envelope!(Request, RequestBody, limits::MAX_REQUEST_BYTES);
envelope!(Response, ResponseBody, limits::MAX_RESPONSE_BYTES);

/// Field 5 (`batch`) of `GossipMessage`, length-delimited: its key byte.
const GOSSIP_BATCH_KEY: u8 = (5 << 3) | 2;

/// The gossip envelope of a batch, built around the batch's canonical bytes (its `v1::Batch`
/// encoding) instead of decoding and re-encoding every transaction: the same bytes as
/// `GossipMessage::new(GossipBody::Batch(batch)).encode_to_vec()`.
pub fn batch_gossip(canonical: &[u8]) -> Vec<u8> {
    let head = v1::GossipMessage {
        version: WIRE_VERSION,
        body: None,
    }
    .encode_to_vec();
    let mut out = Vec::with_capacity(head.len() + 11 + canonical.len());
    out.extend_from_slice(&head);
    out.push(GOSSIP_BATCH_KEY);
    prost::encoding::encode_varint(canonical.len() as u64, &mut out);
    out.extend_from_slice(canonical);
    out
}

/// Where the batch bytes sit in a gossip envelope written exactly as [`batch_gossip`] writes it
/// (this wire version, a batch body, nothing else, within the gossip size limit); `None` for
/// anything else, which is then decoded the general way. Lets the receiver take a batch without
/// allocating each transaction.
pub fn batch_in_gossip(bytes: &[u8]) -> Option<std::ops::Range<usize>> {
    if bytes.len() > limits::MAX_GOSSIP_BYTES {
        return None;
    }
    let head = v1::GossipMessage {
        version: WIRE_VERSION,
        body: None,
    }
    .encode_to_vec();
    let rest = bytes.strip_prefix(head.as_slice())?;
    let (&key, mut rest) = rest.split_first()?;
    if key != GOSSIP_BATCH_KEY {
        return None;
    }
    let len = prost::encoding::decode_varint(&mut rest).ok()?;
    if len != rest.len() as u64 {
        return None;
    }
    Some(bytes.len() - rest.len()..bytes.len())
}

/// The canonical batch bytes of an envelope [`batch_in_gossip`] recognises, taken out of it in
/// place (the transactions are neither decoded nor copied into new buffers); the envelope
/// itself back when it is anything else.
pub fn take_batch_in_gossip(mut bytes: Vec<u8>) -> Result<Vec<u8>, Vec<u8>> {
    match batch_in_gossip(&bytes) {
        Some(range) => {
            bytes.truncate(range.end);
            bytes.drain(..range.start);
            Ok(bytes)
        }
        None => Err(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vote() -> v1::Vote {
        v1::Vote {
            epoch: 3,
            round: 7,
            block_id: vec![1; 32],
            signer: vec![2; 20],
            signature: vec![3; 65],
        }
    }

    #[test]
    fn batch_gossip_is_the_prost_encoding_and_is_found_again() {
        let batch = v1::Batch {
            transactions: vec![b"a".to_vec(), vec![7; 300]],
        };
        let canonical = batch.encode_to_vec();
        let general = v1::GossipMessage::new(GossipBody::Batch(batch)).encode_to_vec();
        let fast = batch_gossip(&canonical);
        assert_eq!(fast, general);
        assert_eq!(take_batch_in_gossip(fast.clone()), Ok(canonical.clone()));
        assert!(take_batch_in_gossip(fast[..fast.len() - 1].to_vec()).is_err());
        let range = batch_in_gossip(&fast).expect("batch envelope");
        assert_eq!(&fast[range], canonical.as_slice());
        // Truncated, another body, another version: not the fast form.
        assert!(batch_in_gossip(&fast[..fast.len() - 1]).is_none());
        let vote_env = v1::GossipMessage::new(GossipBody::Timeout(v1::Timeout::default()));
        assert!(batch_in_gossip(&vote_env.encode_to_vec()).is_none());
        let old = v1::GossipMessage {
            version: WIRE_VERSION + 1,
            body: Some(GossipBody::Batch(v1::Batch::default())),
        };
        assert!(batch_in_gossip(&old.encode_to_vec()).is_none());
    }

    #[test]
    fn envelope_round_trips() {
        let bytes = v1::Request::new(RequestBody::Vote(vote())).encode_to_vec();
        match v1::Request::decode_checked(&bytes) {
            Ok(RequestBody::Vote(v)) => assert_eq!(v, vote()),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn oversized_is_refused_before_decoding() {
        let bytes = vec![0u8; limits::MAX_REQUEST_BYTES + 1];
        assert!(matches!(
            v1::Request::decode_checked(&bytes),
            Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn other_versions_and_empty_bodies_are_refused() {
        let mut request = v1::Request::new(RequestBody::Vote(vote()));
        request.version = 2;
        assert!(matches!(
            v1::Request::decode_checked(&request.encode_to_vec()),
            Err(WireError::Version(2))
        ));
        let empty = v1::Request {
            version: WIRE_VERSION,
            body: None,
        };
        assert!(matches!(
            v1::Request::decode_checked(&empty.encode_to_vec()),
            Err(WireError::Empty)
        ));
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let garbage = [0xff_u8, 0xff, 0xff, 0xff, 0x0f, 0x12];
        assert!(matches!(
            v1::GossipMessage::decode_checked(&garbage),
            Err(WireError::Malformed(_))
        ));
    }
}
