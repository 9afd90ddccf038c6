//! The chaos suite's hostile peers (test-only; crate `node` never contains them), run by the
//! `dstack-node-hostile` binary:
//!
//! - an **outsider** ([`outsider`]): a fresh libp2p key that is not in the contract, connecting
//!   to every node and sending consensus gossip with maximal and far-future rounds and junk
//!   signatures, unsigned TCs, forged epoch-change records (one with the largest set of distinct
//!   powers a set may have), floods of sync, block and batch requests, and oversized frames;
//! - a **power-1 member** ([`member`]): a real validator that, while armed (SIGUSR1; SIGUSR2
//!   disarms), signs thousands of distinct proposals for each round it leads and pushes valid
//!   batches to every member as fast as the streams take them.
//!
//! `DSTACK_HOSTILE_ATTACKS` (a comma-separated subset of [`Attack`] names; unset: all) picks
//! what runs, so each attack can be tried on its own.

pub mod forge;
pub mod member;
pub mod outsider;

use std::collections::BTreeSet;

/// The environment variable naming the attacks to run.
pub const ATTACKS_ENV: &str = "DSTACK_HOSTILE_ATTACKS";

/// One attack of the hostile peers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Attack {
    /// Outsider: proposals, timeouts, TCs and votes with maximal and far-future rounds.
    Rounds,
    /// Outsider: forged epoch-change records (huge set, overflowing round, later epochs).
    Records,
    /// Outsider: floods of sync, block and batch requests.
    Requests,
    /// Outsider: frames above the gossip and request limits.
    Oversized,
    /// Member: thousands of distinct signed proposals per round it leads.
    Equivocate,
    /// Member: valid batches pushed at line rate.
    Batches,
}

impl Attack {
    /// Every attack.
    pub const ALL: [Attack; 6] = [
        Attack::Rounds,
        Attack::Records,
        Attack::Requests,
        Attack::Oversized,
        Attack::Equivocate,
        Attack::Batches,
    ];

    /// Its name in [`ATTACKS_ENV`] and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Attack::Rounds => "rounds",
            Attack::Records => "records",
            Attack::Requests => "requests",
            Attack::Oversized => "oversized",
            Attack::Equivocate => "equivocate",
            Attack::Batches => "batches",
        }
    }

    /// Whether the outsider (not the member) runs it.
    pub fn by_outsider(self) -> bool {
        !matches!(self, Attack::Equivocate | Attack::Batches)
    }
}

/// Parses a comma-separated list of attack names (empty: every attack).
pub fn parse_attacks(list: &str) -> Result<BTreeSet<Attack>, String> {
    let mut out = BTreeSet::new();
    for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match Attack::ALL.iter().find(|a| a.name() == name) {
            Some(a) => {
                out.insert(*a);
            }
            None => {
                return Err(format!(
                    "unknown attack {name:?} in {ATTACKS_ENV}: {}",
                    Attack::ALL.map(Attack::name).join(", ")
                ));
            }
        }
    }
    if out.is_empty() {
        out.extend(Attack::ALL);
    }
    Ok(out)
}

/// The attacks [`ATTACKS_ENV`] selects (unset or empty: all).
pub fn attacks_from_env() -> Result<BTreeSet<Attack>, String> {
    parse_attacks(&std::env::var(ATTACKS_ENV).unwrap_or_default())
}

/// A request gate with no server behind it: a hostile peer answers no one's batch, block or
/// sync requests (each is refused as busy).
pub(crate) fn no_server() -> node::serve::Gate {
    node::serve::Gate::new(&node::serve::ServeConfig::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attack_lists_parse() {
        assert_eq!(parse_attacks("").unwrap_or_default().len(), 6);
        let s = parse_attacks("rounds, batches").unwrap_or_default();
        assert_eq!(
            s.into_iter().collect::<Vec<_>>(),
            vec![Attack::Rounds, Attack::Batches]
        );
        assert!(parse_attacks("rounds,flood").is_err());
        assert!(Attack::Records.by_outsider() && !Attack::Equivocate.by_outsider());
    }
}
