//! Canonical byte encoding of consensus data: big-endian fixed-width integers, `u32`
//! length-prefixed sequences, one tag byte for options and enums. One encoding per value, so the
//! same bytes are hashed for ids, stored by the host and compared in tests; every length is
//! bounded before anything is allocated, so a hostile input cannot make the decoder allocate much.

use thiserror::Error;

/// Why bytes could not be decoded. Decoding never panics and never allocates beyond the bounds.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// The input ended before the value did.
    #[error("truncated input: needed {needed} more bytes for {what}")]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// How many bytes were missing.
        needed: usize,
    },
    /// A length prefix is above the bound for that field.
    #[error("{what} has {len} elements, more than the bound {max}")]
    TooLong {
        /// The field.
        what: &'static str,
        /// The announced length.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// A tag byte (option or enum discriminant) has no meaning.
    #[error("invalid tag {tag} for {what}")]
    InvalidTag {
        /// The field.
        what: &'static str,
        /// The tag read.
        tag: u8,
    },
    /// Bytes were left after the value.
    #[error("{0} trailing bytes after the value")]
    TrailingBytes(usize),
    /// The value decoded but violates an invariant of its type.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The field.
        what: &'static str,
        /// The broken invariant.
        reason: &'static str,
    },
}

/// Appends canonical bytes. A thin wrapper over `Vec<u8>` so encoders read like the format.
#[derive(Debug, Default)]
pub struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    /// An empty writer.
    pub fn new() -> Self {
        Self::default()
    }
    /// The bytes written so far.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
    /// One byte.
    pub fn u8(&mut self, v: u8) {
        self.buf.push(v);
    }
    /// A big-endian u32.
    pub fn u32(&mut self, v: u32) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// A big-endian u64.
    pub fn u64(&mut self, v: u64) {
        self.buf.extend_from_slice(&v.to_be_bytes());
    }
    /// Raw fixed-size bytes (no length prefix).
    pub fn raw(&mut self, v: &[u8]) {
        self.buf.extend_from_slice(v);
    }
    /// A length prefix. Lengths are bounded far below `u32::MAX` by the types that use them.
    pub fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).unwrap_or(u32::MAX));
    }
    /// An option tag: 0 for none, 1 for some.
    pub fn flag(&mut self, some: bool) {
        self.u8(u8::from(some));
    }
}

/// Reads canonical bytes with bounds checks; every error names the field.
#[derive(Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    /// A reader over `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    /// Takes `n` raw bytes.
    pub fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                what,
                needed: n - self.buf.len(),
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    /// A fixed-size array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N, what)?);
        Ok(out)
    }
    /// One byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(what)?[0])
    }
    /// A big-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }
    /// A big-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }
    /// A length prefix, checked against `max` before anything is allocated.
    pub fn len(&mut self, max: usize, what: &'static str) -> Result<usize, DecodeError> {
        let n = self.u32(what)? as usize;
        if n > max {
            return Err(DecodeError::TooLong {
                what,
                len: n as u64,
                max: max as u64,
            });
        }
        Ok(n)
    }
    /// An option tag.
    pub fn flag(&mut self, what: &'static str) -> Result<bool, DecodeError> {
        match self.u8(what)? {
            0 => Ok(false),
            1 => Ok(true),
            tag => Err(DecodeError::InvalidTag { what, tag }),
        }
    }
}

/// A value with a canonical byte encoding.
pub trait Encode {
    /// Appends the canonical bytes of `self`.
    fn encode_to(&self, w: &mut Writer);
    /// The canonical bytes of `self`.
    fn encode(&self) -> Vec<u8> {
        let mut w = Writer::new();
        self.encode_to(&mut w);
        w.into_bytes()
    }
}

/// A value that can be read back from its canonical encoding, with every length bounded.
pub trait Decode: Sized {
    /// Reads one value from `r`.
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError>;
    /// Reads exactly one value from `bytes`; trailing bytes are an error (one encoding per value).
    fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut r = Reader::new(bytes);
        let v = Self::decode_from(&mut r)?;
        match r.remaining() {
            0 => Ok(v),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }
}

impl<T: Encode> Encode for Option<T> {
    fn encode_to(&self, w: &mut Writer) {
        w.flag(self.is_some());
        if let Some(v) = self {
            v.encode_to(w);
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode_from(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        if r.flag("option")? {
            Ok(Some(T::decode_from(r)?))
        } else {
            Ok(None)
        }
    }
}
