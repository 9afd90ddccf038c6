//! Range checks on the integers of outside messages, run before any other use of them. Rounds and
//! epochs come off the wire unsigned and unbounded; every rule of the core compares them with
//! `round + 1` or `epoch + 1`, so a value near `u64::MAX` would overflow before a signature could
//! reject it. A message naming a round or epoch above [`MAX_ROUND`] / [`MAX_EPOCH`] is malformed:
//! no honest node ever reaches those values, and below them every `+ 1` fits.

use crate::epoch::EpochChangeRecord;
use crate::types::{Block, Message, QuorumCert, TimeoutCert};

/// The highest round a message may name: 2^48 rounds at 1,000 rounds a second last about 8,900
/// years, so an honest cluster never reaches it.
pub const MAX_ROUND: u64 = 1 << 48;
/// The highest epoch a message may name (an epoch lasts at least `epoch_min_rounds` rounds, so
/// this is never reached either).
pub const MAX_EPOCH: u64 = 1 << 48;

/// Why a value is out of range (a metrics label, like `Discard::reason`).
pub type OutOfRange = &'static str;

fn round(r: u64) -> Result<(), OutOfRange> {
    if r > MAX_ROUND {
        Err("round out of range")
    } else {
        Ok(())
    }
}

fn epoch(e: u64) -> Result<(), OutOfRange> {
    if e > MAX_EPOCH {
        Err("epoch out of range")
    } else {
        Ok(())
    }
}

/// A QC's epoch and round are in range.
pub fn check_qc(qc: &QuorumCert) -> Result<(), OutOfRange> {
    epoch(qc.epoch)?;
    round(qc.round)
}

/// A TC's epoch, round, high QC and every signer's high-QC round are in range.
pub fn check_tc(tc: &TimeoutCert) -> Result<(), OutOfRange> {
    epoch(tc.epoch)?;
    round(tc.round)?;
    check_qc(&tc.high_qc)?;
    tc.high_qc_rounds.iter().try_for_each(|r| round(*r))
}

/// A block's epoch, round and QC are in range.
pub fn check_block(b: &Block) -> Result<(), OutOfRange> {
    epoch(b.epoch())?;
    round(b.round())?;
    check_qc(b.qc())
}

/// Every epoch and round a message names is in range.
pub fn check_message(m: &Message) -> Result<(), OutOfRange> {
    match m {
        Message::Proposal(p) => {
            check_block(&p.block)?;
            p.tc.as_ref().map_or(Ok(()), check_tc)
        }
        Message::Vote(v) => {
            epoch(v.epoch)?;
            round(v.round)
        }
        Message::Timeout(t) => {
            epoch(t.epoch)?;
            round(t.round)?;
            check_qc(&t.high_qc)?;
            t.high_tc.as_ref().map_or(Ok(()), check_tc)
        }
        Message::TimeoutCert(tc) => check_tc(tc),
    }
}

/// Every epoch and round an epoch-change record names is in range.
pub fn check_record(r: &EpochChangeRecord) -> Result<(), OutOfRange> {
    epoch(r.epoch)?;
    r.path.iter().try_for_each(check_block)?;
    check_qc(&r.qc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Scheme;
    use crate::testkit::Cluster;

    #[test]
    fn values_at_the_bound_pass_and_above_fail() {
        let c = Cluster::new(Scheme::Fast, &[1, 1, 1, 1], 3);
        let mut qc = c.ctx.genesis_qc();
        qc.round = MAX_ROUND;
        assert_eq!(check_qc(&qc), Ok(()));
        qc.round = MAX_ROUND + 1;
        assert_eq!(check_qc(&qc), Err("round out of range"));
        qc.round = 1;
        qc.epoch = u64::MAX;
        assert_eq!(check_qc(&qc), Err("epoch out of range"));
        let mut tc = c.tc(1, c.ctx.genesis_qc(), &[(0, 0), (1, 0), (2, 0)]);
        assert_eq!(check_tc(&tc), Ok(()));
        tc.high_qc_rounds[1] = u64::MAX;
        assert_eq!(check_tc(&tc), Err("round out of range"));
    }
}
