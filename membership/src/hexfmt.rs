//! Hex parsing shared by every input format of the crate: dstack writes lowercase hex without
//! `0x`, Ethereum tools write it with `0x`; both are accepted everywhere.

use thiserror::Error;

/// Why a hex string was refused; names the field so the operator knows which input is wrong.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HexError {
    /// The text is not valid hex.
    #[error("{field}: not valid hex ({reason})")]
    Invalid {
        /// Which input the text was.
        field: &'static str,
        /// The decoder's reason.
        reason: String,
    },
    /// The decoded bytes have the wrong length.
    #[error("{field}: expected {expected} bytes, got {got}")]
    Length {
        /// Which input the text was.
        field: &'static str,
        /// The lengths that would have been accepted, as text (e.g. "33, 64 or 65").
        expected: String,
        /// The decoded length.
        got: usize,
    },
}

/// Strips one optional `0x`/`0X` prefix and surrounding whitespace.
pub fn strip_0x(s: &str) -> &str {
    let s = s.trim();
    s.strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s)
}

/// Decodes hex with an optional `0x` prefix.
pub fn decode(field: &'static str, s: &str) -> Result<Vec<u8>, HexError> {
    hex::decode(strip_0x(s)).map_err(|e| HexError::Invalid {
        field,
        reason: e.to_string(),
    })
}

/// Decodes hex of exactly `N` bytes with an optional `0x` prefix.
pub fn decode_fixed<const N: usize>(field: &'static str, s: &str) -> Result<[u8; N], HexError> {
    let bytes = decode(field, s)?;
    <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| HexError::Length {
        field,
        expected: N.to_string(),
        got: bytes.len(),
    })
}

/// Lowercase hex with a `0x` prefix, the form Ethereum tools print.
pub fn encode_0x(bytes: &[u8]) -> String {
    format!("0x{}", hex::encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_optional_prefix_and_rejects_bad_lengths() {
        assert_eq!(decode("x", "0xAb").unwrap(), vec![0xab]);
        assert_eq!(decode("x", "ab").unwrap(), vec![0xab]);
        assert!(matches!(decode("x", "0xzz"), Err(HexError::Invalid { .. })));
        assert!(matches!(
            decode_fixed::<2>("x", "ab"),
            Err(HexError::Length { got: 1, .. })
        ));
        assert_eq!(decode_fixed::<2>("x", "0xabcd").unwrap(), [0xab, 0xcd]);
    }
}
