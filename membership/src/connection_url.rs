//! The contract's rules for a node's connection URL, checked off chain before a registration is
//! signed, so a URL the contract would refuse fails with a clear error instead of a revert. Both
//! sides run the cases in `contracts/test/fixtures/connection_urls.json`.
//!
//! A connection URL is a libp2p multiaddr of the shape nodes dial: at most [`MAX_URL_LENGTH`]
//! bytes of printable ASCII without spaces, no empty segment, starting
//! `/<ip4|ip6|dns|dns4|dns6>/<host>/<tcp|udp>/<port 1-65535>`, then any further segments
//! (`/p2p/<peer id>`, `/quic-v1`, ...). It is a shape check: hosts are not parsed.

/// Longest connection URL the contract stores, in bytes (`MAX_URL_LENGTH` in the contract).
pub const MAX_URL_LENGTH: usize = 256;

/// Host protocols a connection URL may start with.
const HOST_PROTOCOLS: [&str; 5] = ["ip4", "ip6", "dns", "dns4", "dns6"];
/// Transports that may follow the host.
const TRANSPORTS: [&str; 2] = ["tcp", "udp"];

/// Why the contract would refuse a connection URL (its `UrlTooLong` and `InvalidConnectionUrl`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionUrlError {
    /// Longer than [`MAX_URL_LENGTH`] bytes.
    #[error("connection URL of {0} bytes, more than {MAX_URL_LENGTH}")]
    TooLong(usize),
    /// Not of the accepted shape; `position` is the byte offset where it stops matching (the
    /// start of a wrong or empty segment, the length for a URL that ends too early), as the
    /// contract reports it.
    #[error(
        "connection URL {url:?} is not a multiaddr /<ip4|ip6|dns|dns4|dns6>/<host>/<tcp|udp>/<port>[/...] \
         of printable ASCII (at byte {position})"
    )]
    Invalid {
        /// The URL.
        url: String,
        /// Byte offset of the first mismatch.
        position: usize,
    },
}

/// Checks `url` as the contract's `registerNode` and `updateConnectionUrl` do.
pub fn check(url: &str) -> Result<(), ConnectionUrlError> {
    let invalid = |position: usize| ConnectionUrlError::Invalid {
        url: url.to_string(),
        position,
    };
    let bytes = url.as_bytes();
    if bytes.len() > MAX_URL_LENGTH {
        return Err(ConnectionUrlError::TooLong(bytes.len()));
    }
    if bytes.first() != Some(&b'/') {
        return Err(invalid(0));
    }
    // Segments in order, each with its offset; the first byte is the leading '/'.
    let mut start = 1;
    for (number, segment) in url[1..].split('/').enumerate() {
        if number == 3 {
            // byte by byte, as the contract reads it: an unprintable byte is a non-digit there
            check_port(segment).map_err(|at| invalid(start + at))?;
        } else {
            if let Some(bad) = segment.bytes().position(|c| !c.is_ascii_graphic()) {
                return Err(invalid(start + bad));
            }
            let known = match number {
                0 => HOST_PROTOCOLS.contains(&segment),
                2 => TRANSPORTS.contains(&segment),
                _ => true,
            };
            if segment.is_empty() || !known {
                return Err(invalid(start));
            }
        }
        start += segment.len() + 1;
    }
    if url[1..].split('/').count() < 4 {
        return Err(invalid(bytes.len()));
    }
    Ok(())
}

/// A decimal port in 1..=65535; on error, the offset in `segment` the contract reports (the first
/// non-digit, the digit that passes 65535, or 0 for a zero or empty port).
fn check_port(segment: &str) -> Result<(), usize> {
    let mut port: u32 = 0;
    for (i, c) in segment.bytes().enumerate() {
        if !c.is_ascii_digit() {
            return Err(i);
        }
        port = port * 10 + u32::from(c - b'0');
        if port > u32::from(u16::MAX) {
            return Err(i);
        }
    }
    if port == 0 { Err(0) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The cases the contract's forge tests run too.
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Cases {
        valid: Vec<String>,
        invalid: Vec<String>,
        invalid_positions: Vec<usize>,
    }

    fn cases() -> Cases {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../contracts/test/fixtures/connection_urls.json"
        );
        let text = std::fs::read_to_string(path).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn shared_cases_agree_with_the_contract() {
        let c = cases();
        assert!(c.valid.len() >= 10 && c.invalid.len() >= 20, "cases loaded");
        for url in &c.valid {
            assert_eq!(check(url), Ok(()), "{url:?}");
        }
        assert_eq!(c.invalid.len(), c.invalid_positions.len());
        for (url, &position) in c.invalid.iter().zip(&c.invalid_positions) {
            assert_eq!(
                check(url),
                Err(ConnectionUrlError::Invalid {
                    url: url.clone(),
                    position
                }),
                "{url:?}"
            );
        }
    }

    #[test]
    fn length_bound_is_the_contracts() {
        let host = "a".repeat(MAX_URL_LENGTH - "/dns4//tcp/1".len());
        let fits = format!("/dns4/{host}/tcp/1");
        assert_eq!(fits.len(), MAX_URL_LENGTH);
        assert_eq!(check(&fits), Ok(()));
        let long = format!("/dns4/a{host}/tcp/1");
        assert_eq!(check(&long), Err(ConnectionUrlError::TooLong(257)));
    }

    #[test]
    fn error_names_the_url_and_the_position() {
        let e = check("/ip4/1.2.3.4/tcp/0").unwrap_err().to_string();
        assert!(
            e.contains("\"/ip4/1.2.3.4/tcp/0\"") && e.contains("at byte 17"),
            "{e}"
        );
    }
}
