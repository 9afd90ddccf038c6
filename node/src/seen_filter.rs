//! A Bloom filter over committed transaction hashes, so the ingest path can tell "certainly
//! never committed" (nearly every new transaction) without a B-tree lookup in the transaction
//! index, which costs a random page read per transaction.
//!
//! Transaction hashes are BLAKE3 outputs, uniform and independent, so the filter takes its bit
//! positions straight from the hash (double hashing over two 64-bit words) instead of hashing
//! again. It grows by layers: when the newest layer holds its capacity, a layer twice as large
//! is added; a lookup checks every layer (a handful: capacity doubles each time). About ten bits
//! per entry and seven probes give under 1 % false positives per layer; a false positive only
//! costs the lookup the filter would have saved. There are no false negatives: a hash is added
//! before the transaction that commits it is durable, never after.

use crate::Hash32;

/// Bits per entry of a layer.
const BITS_PER_ENTRY: usize = 10;
/// Probes per hash.
const PROBES: u64 = 7;
/// Entries the first layer holds.
const FIRST_CAPACITY: usize = 1 << 16;

/// See the module documentation.
#[derive(Debug, Default)]
pub struct SeenFilter {
    layers: Vec<Layer>,
}

#[derive(Debug)]
struct Layer {
    words: Vec<u64>,
    /// Number of bits minus one (the bit count is a power of two).
    mask: u64,
    len: usize,
    capacity: usize,
}

impl Layer {
    fn new(capacity: usize) -> Self {
        let bits = (capacity * BITS_PER_ENTRY).next_power_of_two().max(64);
        Self {
            words: vec![0; bits / 64],
            mask: bits as u64 - 1,
            len: 0,
            capacity,
        }
    }

    fn positions(&self, hash: &Hash32) -> impl Iterator<Item = u64> + use<> {
        let (a, b) = words(hash);
        let mask = self.mask;
        (0..PROBES).map(move |i| a.wrapping_add(i.wrapping_mul(b)) & mask)
    }

    fn insert(&mut self, hash: &Hash32) {
        for p in self.positions(hash) {
            self.words[(p / 64) as usize] |= 1 << (p % 64);
        }
        self.len += 1;
    }

    fn may_contain(&self, hash: &Hash32) -> bool {
        self.positions(hash)
            .all(|p| self.words[(p / 64) as usize] & (1 << (p % 64)) != 0)
    }
}

/// Two 64-bit words of the hash; the step is odd so the probes of a power-of-two table differ.
fn words(hash: &Hash32) -> (u64, u64) {
    let mut a = [0u8; 8];
    let mut b = [0u8; 8];
    a.copy_from_slice(&hash[0..8]);
    b.copy_from_slice(&hash[8..16]);
    (u64::from_le_bytes(a), u64::from_le_bytes(b) | 1)
}

impl SeenFilter {
    /// An empty filter.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a committed (or about to be committed) transaction hash.
    pub fn insert(&mut self, hash: &Hash32) {
        let full = self.layers.last().is_none_or(|l| l.len >= l.capacity);
        if full {
            let capacity = self
                .layers
                .last()
                .map_or(FIRST_CAPACITY, |l| l.capacity.saturating_mul(2));
            self.layers.push(Layer::new(capacity));
        }
        if let Some(layer) = self.layers.last_mut() {
            layer.insert(hash);
        }
    }

    /// False when `hash` was certainly never inserted.
    pub fn may_contain(&self, hash: &Hash32) -> bool {
        self.layers.iter().any(|l| l.may_contain(hash))
    }

    /// Hashes inserted.
    pub fn len(&self) -> usize {
        self.layers.iter().map(|l| l.len).sum()
    }

    /// Whether nothing was inserted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u64) -> Hash32 {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn no_false_negatives_and_few_false_positives_across_layers() {
        let mut f = SeenFilter::new();
        let n = 3 * FIRST_CAPACITY as u64 + 5; // 64k + 128k, and 5 in a third layer
        for i in 0..n {
            f.insert(&h(i));
        }
        assert_eq!(f.len(), n as usize);
        assert_eq!(f.layers.len(), 3);
        assert!((0..n).all(|i| f.may_contain(&h(i))));
        let trials = 100_000u64;
        let fp = (n..n + trials).filter(|i| f.may_contain(&h(*i))).count();
        // Two layers at under 1 % each.
        assert!(fp < 2_500, "{fp} false positives in {trials}");
        assert!(!SeenFilter::new().may_contain(&h(1)));
    }
}
