//! Length-prefixed frames, the one framing of every byte stream a node reads from outside: a
//! 4-byte big-endian length, then that many bytes. Request-response streams and batch streams
//! carry one prost envelope per frame (read with a bound checked before allocating); the body of
//! `POST /txs/bulk` is a sequence of frames, one transaction each.

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use proto::GossipBody;

/// Reads one frame from a stream, refusing (with `InvalidData`) a length above `max` before
/// allocating: the decoder of every request-response stream and batch stream.
pub async fn read_frame<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    max: usize,
) -> io::Result<Vec<u8>> {
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {max}"),
        ));
    }
    let mut buf = vec![0u8; len];
    io.read_exact(&mut buf).await?;
    Ok(buf)
}

/// Writes one frame and flushes it, keeping the stream open for the next (batch push).
pub async fn write_frame_open<T: AsyncWrite + Unpin + Send>(
    io: &mut T,
    bytes: &[u8],
    max: usize,
) -> io::Result<()> {
    if bytes.len() > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("frame of {} bytes exceeds the limit of {max}", bytes.len()),
        ));
    }
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "frame too large"))?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(bytes).await?;
    io.flush().await
}

/// Why a frame sequence is malformed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The body ends inside a length prefix or a transaction.
    #[error("truncated frame at byte {0}")]
    Truncated(usize),
}

/// Splits a body into its length-prefixed transactions.
pub fn split_frames(body: &[u8]) -> Result<Vec<&[u8]>, FrameError> {
    let mut out = Vec::new();
    let mut at = 0usize;
    while at < body.len() {
        let Some(len_bytes) = body.get(at..at + 4) else {
            return Err(FrameError::Truncated(at));
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(len_bytes);
        let len = u32::from_be_bytes(len) as usize;
        let start = at + 4;
        let Some(tx) = start.checked_add(len).and_then(|end| body.get(start..end)) else {
            return Err(FrameError::Truncated(at));
        };
        out.push(tx);
        at = start + len;
    }
    Ok(out)
}

/// Appends one transaction as a frame (what a client sends).
pub fn push_frame(body: &mut Vec<u8>, tx: &[u8]) {
    let len = u32::try_from(tx.len()).unwrap_or(u32::MAX);
    body.extend_from_slice(&len.to_be_bytes());
    body.extend_from_slice(tx);
}

/// Why a batch-stream frame was refused, with the metric's reason.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed or not a batch: counted as rejected.
    Reject(&'static str),
    /// Another wire version (not an attack): counted as ignored.
    Ignore(&'static str),
}

/// The canonical batch bytes (`v1::Batch` encoding) inside a batch-stream frame: taken as they are from the
/// envelope [`proto::batch_gossip`] writes, re-encoded from any other well-formed batch envelope.
pub fn canonical_batch(frame: Vec<u8>) -> Result<Vec<u8>, Refusal> {
    let frame = match proto::take_batch_in_gossip(frame) {
        Ok(canonical) => return Ok(canonical),
        Err(frame) => frame,
    };
    match proto::v1::GossipMessage::decode_checked(&frame) {
        Ok(GossipBody::Batch(b)) => Ok(crate::mempool::encode_batch(&b.transactions)),
        Ok(_) => Err(Refusal::Reject("wrong_topic")),
        Err(e @ proto::WireError::Version(_)) => Err(Refusal::Ignore(crate::wire::wire_reason(&e))),
        Err(e) => Err(Refusal::Reject(crate::wire::wire_reason(&e))),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;

    #[test]
    fn frames_round_trip() {
        let mut body = Vec::new();
        push_frame(&mut body, b"abc");
        push_frame(&mut body, b"");
        push_frame(&mut body, b"de");
        let f = split_frames(&body).expect("frames");
        assert_eq!(f, vec![&b"abc"[..], &b""[..], &b"de"[..]]);
        assert!(split_frames(&[]).expect("empty").is_empty());
    }

    #[test]
    fn truncated_frames_are_refused() {
        let mut body = Vec::new();
        push_frame(&mut body, b"abc");
        assert_eq!(split_frames(&body[..5]), Err(FrameError::Truncated(0)));
        assert_eq!(split_frames(&body[..2]), Err(FrameError::Truncated(0)));
        let mut two = body.clone();
        two.extend_from_slice(&[0, 0, 0, 9, 1]);
        assert_eq!(split_frames(&two), Err(FrameError::Truncated(7)));
        // A length near u32::MAX cannot overflow the offset arithmetic.
        assert_eq!(
            split_frames(&[0xff, 0xff, 0xff, 0xff, 1]),
            Err(FrameError::Truncated(0))
        );
    }

    #[test]
    fn frames_become_canonical_batches_or_are_refused() {
        let batch = proto::v1::Batch {
            transactions: vec![b"a".to_vec(), vec![9; 200]],
        };
        let canonical = batch.encode_to_vec();
        // The fast form: the bytes as they are.
        assert_eq!(
            canonical_batch(proto::batch_gossip(&canonical)),
            Ok(canonical.clone())
        );
        // Another encoding of the same batch (an unknown field appended): decoded, re-encoded.
        let mut other = proto::batch_gossip(&canonical);
        other.extend_from_slice(&[0x78, 0x01]); // field 15, varint 1
        assert!(proto::batch_in_gossip(&other).is_none());
        assert_eq!(canonical_batch(other), Ok(canonical));
        // Not a batch, garbage, another version.
        let timeout = proto::v1::GossipMessage::new(GossipBody::Timeout(Default::default()));
        assert_eq!(
            canonical_batch(timeout.encode_to_vec()),
            Err(Refusal::Reject("wrong_topic"))
        );
        assert_eq!(
            canonical_batch(vec![0xff, 0xff, 0xff, 0x0f]),
            Err(Refusal::Reject("malformed"))
        );
        let newer = proto::v1::GossipMessage {
            version: proto::WIRE_VERSION + 1,
            body: Some(GossipBody::Batch(batch)),
        };
        assert_eq!(
            canonical_batch(newer.encode_to_vec()),
            Err(Refusal::Ignore("version"))
        );
    }

    fn read_now(bytes: &mut &[u8], max: usize) -> io::Result<Vec<u8>> {
        use std::future::Future;
        use std::task::{Context, Poll, Waker};
        // A byte slice is always ready: the future ends at its first poll.
        match std::pin::pin!(read_frame(bytes, max)).poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(r) => r,
            Poll::Pending => panic!("a slice reader is never pending"),
        }
    }

    #[test]
    fn stream_frames_are_read_in_turn_and_oversized_or_truncated_ones_refused() {
        let mut bytes: &[u8] = &[0, 0, 0, 2, 7, 8, 0, 0, 0, 0, 0, 0, 0, 9];
        assert_eq!(read_now(&mut bytes, 4).expect("first"), vec![7, 8]);
        assert_eq!(read_now(&mut bytes, 4).expect("empty"), Vec::<u8>::new());
        let e = read_now(&mut bytes, 4).expect_err("9 > 4");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        let mut short: &[u8] = &[0, 0, 0, 3, 1];
        let e = read_now(&mut short, 4).expect_err("truncated");
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
