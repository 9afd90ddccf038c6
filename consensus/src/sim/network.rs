//! The simulated network: per-message latency drawn from a seeded distribution with a long tail,
//! random drops, and partitions of any shape. A message crossing a partition is either lost or
//! held until the partition heals (as a reconnecting transport would deliver it late).

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Latency and loss parameters of one run.
#[derive(Clone, Debug)]
pub struct NetParams {
    /// Minimum one-way latency (ms).
    pub min_ms: u64,
    /// Maximum one-way latency of the common case (ms).
    pub max_ms: u64,
    /// Probability that a message takes an extra, long delay.
    pub tail_prob: f64,
    /// Largest extra delay of the tail (ms).
    pub tail_ms: u64,
    /// Probability that a message is lost.
    pub drop_prob: f64,
}

impl NetParams {
    /// Parameters drawn for one run; `lossy` adds drops.
    pub fn draw(rng: &mut ChaCha8Rng, lossy: bool) -> Self {
        let min_ms = rng.gen_range(1..20);
        let max_ms = min_ms + rng.gen_range(5..150);
        Self {
            min_ms,
            max_ms,
            tail_prob: [0.0, 0.01, 0.05][rng.gen_range(0..3)],
            tail_ms: rng.gen_range(100..1500),
            drop_prob: if lossy {
                [0.0, 0.01, 0.05][rng.gen_range(0..3)]
            } else {
                0.0
            },
        }
    }
}

/// Where each node sits: nodes talk only within their group.
#[derive(Clone, Debug)]
pub struct Network {
    /// Parameters.
    pub params: NetParams,
    group: Vec<usize>,
}

/// What happens to one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fate {
    /// Delivered after this delay (ms).
    Deliver(u64),
    /// Lost.
    Drop,
    /// Held until the partition heals.
    Hold,
}

impl Network {
    /// A fully connected network of `n` nodes.
    pub fn new(n: usize, params: NetParams) -> Self {
        Self {
            params,
            group: vec![0; n],
        }
    }
    /// Splits the nodes: `groups[i]` is node i's group.
    pub fn partition(&mut self, groups: Vec<usize>) {
        self.group = groups;
    }
    /// Reconnects everyone.
    pub fn heal(&mut self) {
        self.group.iter_mut().for_each(|g| *g = 0);
    }
    /// Whether `a` and `b` can talk now.
    pub fn connected(&self, a: usize, b: usize) -> bool {
        self.group.get(a) == self.group.get(b)
    }
    /// Whether a partition is in effect.
    pub fn partitioned(&self) -> bool {
        self.group.iter().any(|&g| g != self.group[0])
    }
    /// A one-way delay.
    pub fn delay(&self, rng: &mut ChaCha8Rng) -> u64 {
        let p = &self.params;
        let mut d = rng.gen_range(p.min_ms..=p.max_ms);
        if p.tail_prob > 0.0 && rng.gen_bool(p.tail_prob) {
            d += rng.gen_range(0..=p.tail_ms);
        }
        d
    }
    /// The fate of a message from `a` to `b` sent now.
    pub fn fate(&self, rng: &mut ChaCha8Rng, a: usize, b: usize) -> Fate {
        if !self.connected(a, b) {
            return if rng.gen_bool(0.5) {
                Fate::Drop
            } else {
                Fate::Hold
            };
        }
        if self.params.drop_prob > 0.0 && rng.gen_bool(self.params.drop_prob) {
            return Fate::Drop;
        }
        Fate::Deliver(self.delay(rng))
    }
}
