//! Reading what the nodes recorded: commit lines of `node.log` (the driver's debug line
//! `committed height=H round=R txs=N`, written once the block is applied durably) and the
//! proposal times of [`crate::timed::PROPOSALS_FILE`].

use std::collections::BTreeMap;
use std::path::Path;

/// One commit as a node logged it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitLine {
    /// Unix µs of the log line.
    pub at_us: u64,
    /// Committed height.
    pub height: u64,
    /// The block's round.
    pub round: u64,
    /// Transactions executed by the block.
    pub txs: u64,
}

/// One proposal as the tap recorded it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProposalLine {
    /// Unix µs.
    pub at_us: u64,
    /// Epoch.
    pub epoch: u64,
    /// Round.
    pub round: u64,
    /// Batch digests in the block.
    pub batches: u64,
}

/// Removes ANSI colour sequences.
pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// Days since 1970-01-01 of a civil date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Parses an RFC 3339 UTC timestamp `YYYY-MM-DDTHH:MM:SS[.fraction]Z` into Unix µs.
pub fn parse_rfc3339_us(ts: &str) -> Option<u64> {
    let ts = ts.strip_suffix('Z')?;
    let (date, time) = ts.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>().ok());
    let (y, mo, da) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, ""));
    let mut t = hms.split(':').map(|x| x.parse::<i64>().ok());
    let (h, mi, s) = (t.next()??, t.next()??, t.next()??);
    let mut micros = 0i64;
    for (i, c) in frac.chars().take(6).enumerate() {
        micros += i64::from(c.to_digit(10)?) * 10i64.pow(5 - i as u32);
    }
    let secs = days_from_civil(y, mo, da) * 86_400 + h * 3600 + mi * 60 + s;
    u64::try_from(secs * 1_000_000 + micros).ok()
}

fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let rest = &line[at..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Parses one `node.log` line; None unless it is a commit line.
pub fn parse_commit(line: &str) -> Option<CommitLine> {
    if !line.contains("committed") {
        return None;
    }
    let line = strip_ansi(line);
    let at = line.find(" committed ")?;
    let ts = line.split_whitespace().next()?;
    let rest = &line[at..];
    Some(CommitLine {
        at_us: parse_rfc3339_us(ts)?,
        height: field(rest, "height")?,
        round: field(rest, "round")?,
        txs: field(rest, "txs")?,
    })
}

/// Every commit line of a node log (a missing file: none).
pub fn read_commits(path: &Path) -> Vec<CommitLine> {
    std::fs::read_to_string(path)
        .map(|t| t.lines().filter_map(parse_commit).collect())
        .unwrap_or_default()
}

/// The waits of the batches a node proposed (`batch proposed waited_ms=..` lines of target
/// `node::mempool`): ms from the batch being proposable at the leader to its first proposal.
pub fn read_batch_waits(path: &Path) -> Vec<f64> {
    std::fs::read_to_string(path)
        .map(|t| {
            t.lines()
                .filter(|l| l.contains("batch proposed"))
                .filter_map(|l| field(&strip_ansi(l), "waited_ms"))
                .map(|v| v as f64)
                .collect()
        })
        .unwrap_or_default()
}

/// Every proposal of a node's proposal file (a missing file: none).
pub fn read_proposals(path: &Path) -> Vec<ProposalLine> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(|x| x.parse::<u64>().ok());
            Some(ProposalLine {
                at_us: f.next()??,
                epoch: f.next()??,
                round: f.next()??,
                batches: f.next()??,
            })
        })
        .collect()
}

/// The cluster's view of commits: per height the earliest commit time over nodes, with the
/// block's round and transaction count.
pub fn merge_commits(per_node: &[Vec<CommitLine>]) -> BTreeMap<u64, CommitLine> {
    let mut out: BTreeMap<u64, CommitLine> = BTreeMap::new();
    for c in per_node.iter().flatten() {
        out.entry(c.height)
            .and_modify(|e| {
                if c.at_us < e.at_us {
                    e.at_us = c.at_us;
                }
            })
            .or_insert(*c);
    }
    out
}

/// Per (epoch, round) the earliest proposal time over nodes.
pub fn merge_proposals(per_node: &[Vec<ProposalLine>]) -> BTreeMap<(u64, u64), u64> {
    let mut out: BTreeMap<(u64, u64), u64> = BTreeMap::new();
    for p in per_node.iter().flatten() {
        let e = out.entry((p.epoch, p.round)).or_insert(p.at_us);
        *e = (*e).min(p.at_us);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_coloured_commit_lines() {
        let plain =
            "2026-11-30T05:40:01.123456Z DEBUG node::driver: committed height=5 round=7 txs=12";
        let c = parse_commit(plain).expect("commit");
        assert_eq!((c.height, c.round, c.txs), (5, 7, 12));
        assert_eq!(c.at_us % 1_000_000, 123_456);
        let coloured = "\u{1b}[2m2026-11-30T05:40:01.123456Z\u{1b}[0m \u{1b}[34mDEBUG\u{1b}[0m \
                        \u{1b}[2mnode::driver\u{1b}[0m\u{1b}[2m:\u{1b}[0m committed \
                        \u{1b}[3mheight\u{1b}[0m\u{1b}[2m=\u{1b}[0m5 \u{1b}[3mround\u{1b}[0m\
                        \u{1b}[2m=\u{1b}[0m7 \u{1b}[3mtxs\u{1b}[0m\u{1b}[2m=\u{1b}[0m12";
        assert_eq!(parse_commit(coloured), Some(c));
        assert_eq!(parse_commit("2026-11-30T05:40:01Z INFO x: started"), None);
    }

    #[test]
    fn parses_batch_waits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("node.log");
        std::fs::write(
            &p,
            "2026-11-30T05:40:01.1Z DEBUG node::mempool: batch proposed waited_ms=12 local=true txs=3\n\
             2026-11-30T05:40:01.2Z DEBUG node::driver: committed height=5 round=7 txs=12\n",
        )
        .expect("write");
        assert_eq!(read_batch_waits(&p), vec![12.0]);
    }

    #[test]
    fn rfc3339_matches_known_epochs() {
        assert_eq!(parse_rfc3339_us("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_us("2000-03-01T00:00:01.5Z"),
            Some(951_868_801_500_000)
        );
    }

    #[test]
    fn merges_take_the_earliest() {
        let a = CommitLine {
            at_us: 10,
            height: 1,
            round: 1,
            txs: 3,
        };
        let b = CommitLine { at_us: 7, ..a };
        let m = merge_commits(&[vec![a], vec![b]]);
        assert_eq!(m[&1].at_us, 7);
        let p = |at_us| ProposalLine {
            at_us,
            epoch: 0,
            round: 4,
            batches: 1,
        };
        assert_eq!(merge_proposals(&[vec![p(9), p(5)]])[&(0, 4)], 5);
    }
}
