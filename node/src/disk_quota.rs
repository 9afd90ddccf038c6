//! The disk quota of a data directory (`storage.max_disk_bytes`): the pruner measures what the
//! store takes, and while that is above the quota the node takes in nothing new (client
//! transactions, batches from peers) so that it never fails a write consensus needs. Committed
//! blocks, votes and the batches a committed block names are still written: refusing them would
//! stop the node from committing, and so from pruning its way back under the quota.

use std::sync::atomic::{AtomicU64, Ordering};

/// A shared view of the store's size against its quota. Cheap to read on every request.
#[derive(Debug, Default)]
pub struct DiskQuota {
    /// The quota in bytes (0: none).
    max: u64,
    /// What the store took at the last measurement.
    used: AtomicU64,
}

impl DiskQuota {
    /// A quota of `max` bytes (0: unlimited).
    pub fn new(max: u64) -> Self {
        Self {
            max,
            used: AtomicU64::new(0),
        }
    }

    /// Records a measurement of the store's size.
    pub fn set_used(&self, bytes: u64) {
        self.used.store(bytes, Ordering::Relaxed);
    }

    /// The last measurement.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// The quota (0: none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// `(used, max)` while the store is above its quota.
    pub fn exceeded(&self) -> Option<(u64, u64)> {
        let used = self.used();
        (self.max > 0 && used > self.max).then_some((used, self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_set_quota_is_ever_exceeded() {
        let q = DiskQuota::new(100);
        q.set_used(100);
        assert_eq!(q.exceeded(), None, "at the quota is still within it");
        q.set_used(101);
        assert_eq!(q.exceeded(), Some((101, 100)));
        let none = DiskQuota::new(0);
        none.set_used(u64::MAX);
        assert_eq!(none.exceeded(), None);
    }
}
