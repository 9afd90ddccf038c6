//! Several RPC endpoints read as one validator-set oracle. One provider can lie, lag or serve
//! another chain, and operators who share a provider would share its lies; so every read goes to
//! every endpoint, and an answer is used only when `quorum` endpoints gave exactly that answer:
//! the same block number and hash, the same members with the same keys, powers and URLs.
//! Different answers are an [`OracleError::Disagreement`] that names which endpoint said what.
//! An endpoint that gives no answer (transport failure after its retries, or a block it has not
//! reached) only counts as missing. With one endpoint and quorum 1 this reads like [`Oracle`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;

use alloy::eips::BlockNumberOrTag;
use alloy::primitives::{B256, keccak256};

use crate::oracle::{BlockRef, Oracle, OracleError, Snapshot};

/// One RPC endpoint and the name logs and metrics give it (see [`endpoint_label`]).
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// How logs and metrics name the endpoint (never its credentials).
    pub name: String,
    /// The oracle reading through this endpoint.
    pub oracle: Oracle,
}

/// Hears which endpoints failed and which reads they disagreed on, so a node can count them.
pub trait QuorumObserver: Send + Sync {
    /// `endpoint` gave no answer to one read (after its retries).
    fn rpc_failed(&self, endpoint: &str) {
        let _ = endpoint;
    }
    /// Endpoints answered one read differently.
    fn disagreed(&self) {}
}

struct Unobserved;

impl QuorumObserver for Unobserved {}

/// `scheme://host[:port]` of an RPC URL: a provider's URL often carries an API key in its path,
/// query or user info, and none of those may reach logs or metric labels.
pub fn endpoint_label(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    if scheme.is_empty() {
        host.to_owned()
    } else {
        format!("{scheme}://{host}")
    }
}

/// Reads validator sets through several endpoints and uses an answer only when a quorum agrees.
#[derive(Clone)]
pub struct QuorumOracle {
    endpoints: Arc<[Endpoint]>,
    quorum: usize,
    observer: Arc<dyn QuorumObserver>,
}

impl fmt::Debug for QuorumOracle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QuorumOracle")
            .field("endpoints", &self.endpoints)
            .field("quorum", &self.quorum)
            .finish_non_exhaustive()
    }
}

/// What one endpoint said, grouped with the endpoints that said the same.
struct Group<T> {
    answer: Result<T, OracleError>,
    endpoints: Vec<usize>,
}

/// A read through one endpoint's oracle.
type Read<'a, T> = Pin<Box<dyn Future<Output = Result<T, OracleError>> + Send + 'a>>;

impl QuorumOracle {
    /// An oracle over `endpoints` (reads go to all of them) that uses an answer when `quorum`
    /// of them gave it. `quorum` must be within `1..=endpoints.len()`.
    pub fn new(endpoints: Vec<Endpoint>, quorum: usize) -> Result<Self, OracleError> {
        if quorum == 0 || quorum > endpoints.len() {
            return Err(OracleError::InvalidQuorum {
                quorum,
                endpoints: endpoints.len(),
            });
        }
        Ok(Self {
            endpoints: endpoints.into(),
            quorum,
            observer: Arc::new(Unobserved),
        })
    }

    /// Reports failures and disagreements to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn QuorumObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// The endpoints' names, in configuration order.
    pub fn endpoint_names(&self) -> impl Iterator<Item = &str> {
        self.endpoints.iter().map(|e| e.name.as_str())
    }

    /// The set at the block the pin rule selects now. Each endpoint names its pinned block; the
    /// block read is the highest that `quorum` of them have reached, so neither a lagging nor a
    /// racing endpoint moves it alone; then every endpoint reads the set there.
    pub async fn snapshot(&self) -> Result<Snapshot, OracleError> {
        let pinned = self.ask_all(|_, o| Box::pin(o.pinned_block())).await;
        let mut numbers = Vec::new();
        for (i, r) in pinned.iter().enumerate() {
            match r {
                Ok(b) => numbers.push(b.number),
                Err(e) => self.note_failure(i, e),
            }
        }
        numbers.sort_unstable_by(|a, b| b.cmp(a));
        let Some(&number) = numbers.get(self.quorum - 1) else {
            let answers = self.describe_all(&pinned, |b| format!("block {} {}", b.number, b.hash));
            return Err(match (self.endpoints.len(), pinned.into_iter().next()) {
                (1, Some(Err(e))) => e,
                _ => OracleError::NoQuorum {
                    what: "the pinned block".into(),
                    agreeing: numbers.len(),
                    endpoints: self.endpoints.len(),
                    quorum: self.quorum,
                    answers,
                },
            });
        };
        let known: Vec<Option<BlockRef>> = pinned
            .into_iter()
            .map(|r| r.ok().filter(|b| b.number == number))
            .collect();
        let reads = self
            .ask_all(|i, o| {
                let known = known.get(i).copied().flatten();
                Box::pin(async move {
                    let block = match known {
                        Some(b) => b,
                        None => o.block_by_number(BlockNumberOrTag::Number(number)).await?,
                    };
                    o.snapshot_at(block).await
                })
            })
            .await;
        self.decide(
            &format!("the validator set at pinned block {number}"),
            reads,
            summary,
        )
    }

    /// The set at a block, read by its hash through every endpoint.
    pub async fn snapshot_at(&self, block: BlockRef) -> Result<Snapshot, OracleError> {
        let reads = self.ask_all(|_, o| Box::pin(o.snapshot_at(block))).await;
        self.decide(
            &format!("the validator set at block {} {}", block.number, block.hash),
            reads,
            summary,
        )
    }

    /// The set at `hash` if the endpoints agree that `hash` is the chain's block at `number`;
    /// `None` when they agree it is not (rolled back, invented, or not reached yet).
    pub async fn set_at(&self, number: u64, hash: B256) -> Result<Option<Snapshot>, OracleError> {
        let reads = self.ask_all(|_, o| Box::pin(o.set_at(number, hash))).await;
        self.decide(
            &format!("the validator set at block {number} {hash}"),
            reads,
            |a| match a {
                Some(s) => summary(s),
                None => format!("{hash} is not its block {number}"),
            },
        )
    }

    /// Runs one read through every endpoint at once; the answers come back in endpoint order.
    async fn ask_all<'a, T>(
        &'a self,
        read: impl Fn(usize, &'a Oracle) -> Read<'a, T>,
    ) -> Vec<Result<T, OracleError>> {
        let mut pending: Vec<Read<'a, T>> = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| read(i, &e.oracle))
            .collect();
        let mut done: Vec<Option<Result<T, OracleError>>> = pending.iter().map(|_| None).collect();
        std::future::poll_fn(|cx| {
            let mut waiting = false;
            for (read, slot) in pending.iter_mut().zip(done.iter_mut()) {
                if slot.is_none() {
                    match read.as_mut().poll(cx) {
                        Poll::Ready(r) => *slot = Some(r),
                        Poll::Pending => waiting = true,
                    }
                }
            }
            if waiting {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        done.into_iter().flatten().collect()
    }

    /// Picks the answer `quorum` endpoints gave, or explains why there is none.
    fn decide<T: PartialEq>(
        &self,
        what: &str,
        replies: Vec<Result<T, OracleError>>,
        describe: impl Fn(&T) -> String,
    ) -> Result<T, OracleError> {
        let answers = self.describe_all(&replies, &describe);
        let only_endpoint = self.endpoints.len() == 1;
        let mut groups: Vec<Group<T>> = Vec::new();
        let mut last_silence = None;
        for (i, reply) in replies.into_iter().enumerate() {
            match reply {
                Err(e) if is_silence(&e) => {
                    self.note_failure(i, &e);
                    last_silence = Some(e);
                }
                answer => match groups.iter_mut().find(|g| same(&g.answer, &answer)) {
                    Some(g) => g.endpoints.push(i),
                    None => groups.push(Group {
                        answer,
                        endpoints: vec![i],
                    }),
                },
            }
        }
        if groups.len() > 1 {
            self.observer.disagreed();
        }
        let mut winners = groups
            .iter()
            .enumerate()
            .filter(|(_, g)| g.endpoints.len() >= self.quorum)
            .map(|(i, _)| i);
        match (winners.next(), winners.next()) {
            (Some(w), None) => {
                if groups.len() > 1 {
                    tracing::warn!(what, %answers, quorum = self.quorum, "RPC endpoints disagree; the quorum's answer is used");
                }
                groups.swap_remove(w).answer
            }
            _ if groups.len() > 1 => Err(OracleError::Disagreement {
                what: what.to_owned(),
                answers,
            }),
            _ => match last_silence {
                Some(e) if only_endpoint => Err(e),
                _ => Err(OracleError::NoQuorum {
                    what: what.to_owned(),
                    agreeing: groups.first().map_or(0, |g| g.endpoints.len()),
                    endpoints: self.endpoints.len(),
                    quorum: self.quorum,
                    answers,
                }),
            },
        }
    }

    fn note_failure(&self, endpoint: usize, e: &OracleError) {
        if let (OracleError::Rpc { .. }, Some(ep)) = (e, self.endpoints.get(endpoint)) {
            self.observer.rpc_failed(&ep.name);
        }
    }

    /// `name: answer; name: answer` over every endpoint, for logs and errors.
    fn describe_all<T>(
        &self,
        replies: &[Result<T, OracleError>],
        describe: impl Fn(&T) -> String,
    ) -> String {
        self.endpoints
            .iter()
            .zip(replies)
            .map(|(e, r)| match r {
                Ok(v) => format!("{}: {}", e.name, describe(v)),
                Err(err) => format!("{}: {err}", e.name),
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// An endpoint that gave no answer at all: it neither supports nor contradicts the others.
fn is_silence(e: &OracleError) -> bool {
    matches!(e, OracleError::Rpc { .. } | OracleError::BlockNotFound(_))
}

/// Whether two endpoints said the same (errors alike when their texts are).
fn same<T: PartialEq>(a: &Result<T, OracleError>, b: &Result<T, OracleError>) -> bool {
    match (a, b) {
        (Ok(x), Ok(y)) => x == y,
        (Err(x), Err(y)) => x.to_string() == y.to_string(),
        _ => false,
    }
}

/// A snapshot in one line: enough to see which part two endpoints disagree on.
fn summary(s: &Snapshot) -> String {
    let mut urls = Vec::new();
    for m in &s.members {
        urls.extend_from_slice(m.address.as_slice());
        urls.extend_from_slice(&m.instance_id);
        urls.extend_from_slice(&(m.connection_url.len() as u64).to_be_bytes());
        urls.extend_from_slice(m.connection_url.as_bytes());
    }
    format!(
        "block {} {}: {} member(s), power {}, set hash {}, URLs digest {}",
        s.block.number,
        s.block.hash,
        s.members.len(),
        s.total_power(),
        s.validator_set_hash,
        keccak256(&urls)
    )
}

#[cfg(test)]
mod tests {
    use super::endpoint_label;

    #[test]
    fn labels_drop_credentials_paths_and_queries() {
        assert_eq!(
            endpoint_label("https://user:secret@mainnet.example.io:8443/v3/KEY?x=1"),
            "https://mainnet.example.io:8443"
        );
        assert_eq!(
            endpoint_label("http://127.0.0.1:8545"),
            "http://127.0.0.1:8545"
        );
        assert_eq!(endpoint_label("localhost:8545/x"), "localhost:8545");
    }
}
