//! Benchmark transactions: KV puts of exactly the requested size, unique by key and nonce.

/// Smallest transaction size the generator can make.
pub const MIN_TX_SIZE: usize = 64;

/// Printable filler bytes (one fixed pseudo-random pattern, cut to length).
fn filler(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            b'a' + ((x >> 59) as u8 % 26)
        })
        .collect()
}

/// Makes transactions of one size for one client (key prefix).
#[derive(Debug, Clone)]
pub struct TxGen {
    prefix: String,
    size: usize,
    fill: Vec<u8>,
}

impl TxGen {
    /// A generator of `size`-byte transactions with keys `<prefix>-<seq>`.
    pub fn new(prefix: &str, size: usize) -> Self {
        Self {
            prefix: prefix.to_string(),
            size: size.max(MIN_TX_SIZE),
            fill: filler(size.max(MIN_TX_SIZE)),
        }
    }

    /// Transaction `seq`: `{"op":"put","key":"<prefix>-<seq>","value":"<filler>","nonce":seq}`,
    /// exactly `size` bytes.
    pub fn make(&self, seq: u64) -> Vec<u8> {
        let head = format!(
            "{{\"op\":\"put\",\"key\":\"{}-{seq}\",\"value\":\"",
            self.prefix
        );
        let tail = format!("\",\"nonce\":{seq}}}");
        let fill = self.size.saturating_sub(head.len() + tail.len()).max(1);
        let mut out = Vec::with_capacity(head.len() + fill + tail.len());
        out.extend_from_slice(head.as_bytes());
        out.extend_from_slice(&self.fill[..fill.min(self.fill.len())]);
        out.extend_from_slice(tail.as_bytes());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_size_valid_kv_and_unique() {
        let g = TxGen::new("c0", 512);
        let a = g.make(1);
        let b = g.make(123_456_789);
        assert_eq!(a.len(), 512);
        assert_eq!(b.len(), 512);
        assert_ne!(a, b);
        node::app::KvTx::decode(&a).expect("valid KV transaction");
    }
}
