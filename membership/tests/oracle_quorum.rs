//! The quorum oracle on real anvils: an anvil forked from another serves the same blocks (same
//! hashes, same state) up to the fork, so the two agree there; once the fork mines its own
//! blocks (a node deregistered on it only) they disagree. A fresh anvil with the same deployment
//! is another chain. An endpoint nobody listens at gives no answer.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use alloy::primitives::{Address, B256, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use common::*;
use membership::contract::DstackMembershipNFT;
use membership::genesis::PinRule;
use membership::oracle::{Oracle, OracleError, RetryPolicy, Snapshot};
use membership::quorum::{Endpoint, QuorumObserver, QuorumOracle};
use membership::sdk::Cluster;

/// Counts what the quorum oracle reports.
#[derive(Default)]
struct Counts {
    rpc_failed: Mutex<Vec<String>>,
    disagreements: AtomicUsize,
}

impl QuorumObserver for Counts {
    fn rpc_failed(&self, endpoint: &str) {
        self.rpc_failed.lock().unwrap().push(endpoint.to_owned());
    }
    fn disagreed(&self) {
        self.disagreements.fetch_add(1, Ordering::SeqCst);
    }
}

impl Counts {
    fn disagreements(&self) -> usize {
        self.disagreements.load(Ordering::SeqCst)
    }
}

/// Retries kept short, so a dead endpoint costs one refused connection.
fn quick() -> RetryPolicy {
    RetryPolicy {
        attempts: 2,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(50),
        call_timeout: Duration::from_secs(5),
    }
}

fn endpoint(name: &str, url: &str, contract: Address) -> Endpoint {
    let provider = ProviderBuilder::new()
        .connect_http(url.parse().unwrap())
        .erased();
    Endpoint {
        name: name.into(),
        oracle: Oracle::new(provider, contract, PinRule::Finalized, 0).with_retry(quick()),
    }
}

fn quorum(endpoints: Vec<Endpoint>, q: usize) -> (QuorumOracle, Arc<Counts>) {
    let counts = Arc::new(Counts::default());
    let o = QuorumOracle::new(endpoints, q)
        .unwrap()
        .with_observer(counts.clone());
    (o, counts)
}

/// A chain with three registered nodes of power 1, and the owners.
struct Registered {
    anvil: Anvil,
    contract: Address,
    owners: Vec<PrivateKeySigner>,
    /// The block of the last registration.
    last: u64,
}

async fn registered_chain() -> Registered {
    let anvil = Anvil::start().await;
    let contract = deploy(&anvil).await;
    let admin = DstackMembershipNFT::new(contract, anvil.wallet(&deployer()));
    let owners: Vec<PrivateKeySigner> = (0..3).map(|_| PrivateKeySigner::random()).collect();
    for o in &owners {
        anvil.fund(o.address()).await;
        send(admin.mintBatch(o.address(), U256::from(1))).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::connect(&anvil.url, contract).await.unwrap();
    for (i, o) in owners.iter().enumerate() {
        let (tee, task) = tee(dir.path(), i as u8 + 1);
        let url = format!("/ip4/127.0.0.1/tcp/{}", 9000 + i);
        cluster
            .register(&tee, U256::from(i + 1), o, &url)
            .await
            .unwrap();
        task.abort();
    }
    let last = anvil.head().await;
    Registered {
        anvil,
        contract,
        owners,
        last,
    }
}

/// A fork of `origin` at a block at least 2 past `after` (so the fork's finalized block, head -
/// 2, already holds everything up to `after`); returns it and the fork block.
async fn fork_after(origin: &Anvil, after: u64) -> (Anvil, u64) {
    let at = eventually("origin 2 blocks past the registrations", 30, || async {
        let h = origin.head().await;
        (h >= after + 2).then_some(h)
    })
    .await;
    (Anvil::fork(origin, at).await, at)
}

/// The tests start several anvils each; one at a time keeps a loaded machine responsive.
fn one_test_at_a_time() -> &'static tokio::sync::Mutex<()> {
    static LOCK: OnceLock<tokio::sync::Mutex<()>> = OnceLock::new();
    LOCK.get_or_init(|| tokio::sync::Mutex::new(()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agreeing_endpoints_give_the_snapshot_and_a_diverged_one_a_disagreement() {
    let _one_at_a_time = one_test_at_a_time().lock().await;
    let chain = registered_chain().await;
    let (fork, at) = fork_after(&chain.anvil, chain.last).await;
    let (q, counts) = quorum(
        vec![
            endpoint("origin", &chain.anvil.url, chain.contract),
            endpoint("fork", &fork.url, chain.contract),
        ],
        2,
    );

    // Both agree: the fork's finalized block (at - 2) is the highest both have pinned.
    let snap = q.snapshot().await.unwrap();
    assert_eq!(snap.block.number, at - 2);
    assert_eq!(snap.members.len(), 3);
    let alone = Oracle::new(chain.anvil.reader(), chain.contract, PinRule::Finalized, 0);
    assert_eq!(snap, alone.snapshot_at(snap.block).await.unwrap());
    assert_eq!(
        q.set_at(snap.block.number, snap.block.hash).await.unwrap(),
        Some(snap.clone())
    );
    assert_eq!(
        q.set_at(snap.block.number, B256::repeat_byte(0xee))
            .await
            .unwrap(),
        None,
        "both say an invented hash is not their block"
    );
    assert_eq!(counts.disagreements(), 0);

    // The fork diverges: token 1's node is deregistered there only, and it mines past it.
    let on_fork = DstackMembershipNFT::new(chain.contract, fork.wallet(&chain.owners[0]));
    let dereg = send(on_fork.deregisterNode(U256::from(1))).await;
    assert_eq!(dereg, at + 1);
    fork.mine(3).await;
    eventually("origin's finalized block past the fork", 30, || async {
        (chain.anvil.head().await >= at + 3).then_some(())
    })
    .await;
    let e = q
        .snapshot()
        .await
        .expect_err("diverged endpoints must not give a snapshot");
    let OracleError::Disagreement { answers, .. } = &e else {
        panic!("expected a disagreement, got {e}");
    };
    assert!(answers.contains("origin: block "), "{e}");
    assert!(answers.contains("fork: block "), "{e}");
    assert!(answers.contains("3 member(s)"), "origin's answer: {e}");
    assert!(answers.contains("2 member(s)"), "fork's answer: {e}");
    assert_eq!(counts.disagreements(), 1);

    // History before the fork is still agreed (a Reconfigure naming it can be checked)...
    assert_eq!(
        q.set_at(snap.block.number, snap.block.hash).await.unwrap(),
        Some(snap.clone())
    );
    // ...but a block only the fork holds is a disagreement, not a set.
    let fork_oracle = Oracle::new(fork.reader(), chain.contract, PinRule::Finalized, 0);
    let fork_block = fork_oracle
        .block_by_number(alloy::eips::BlockNumberOrTag::Number(at + 2))
        .await
        .unwrap();
    let e = q
        .set_at(fork_block.number, fork_block.hash)
        .await
        .expect_err("origin does not hold the fork's block");
    assert!(matches!(e, OracleError::Disagreement { .. }), "{e}");
    assert!(e.to_string().contains("origin: "), "{e}");
    assert_eq!(counts.disagreements(), 2);

    // With quorum 1, both answers reach it: still a disagreement, never a pick.
    let (q1, counts1) = quorum(
        vec![
            endpoint("origin", &chain.anvil.url, chain.contract),
            endpoint("fork", &fork.url, chain.contract),
        ],
        1,
    );
    let e = q1
        .set_at(fork_block.number, fork_block.hash)
        .await
        .expect_err("two answers reach quorum 1");
    assert!(matches!(e, OracleError::Disagreement { .. }), "{e}");
    assert_eq!(counts1.disagreements(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_chain_disagrees_and_a_dead_endpoint_is_missing() {
    let _one_at_a_time = one_test_at_a_time().lock().await;
    let chain = registered_chain().await;
    let (fork, _) = fork_after(&chain.anvil, chain.last).await;
    // Another chain with the same deployment (same deployer, same contract address).
    let other = Anvil::start().await;
    assert_eq!(deploy(&other).await, chain.contract);
    let (q, counts) = quorum(
        vec![
            endpoint("origin", &chain.anvil.url, chain.contract),
            endpoint("other", &other.url, chain.contract),
        ],
        2,
    );
    let e = q
        .snapshot()
        .await
        .expect_err("another chain must not agree");
    assert!(matches!(e, OracleError::Disagreement { .. }), "{e}");
    assert!(e.to_string().contains("other: "), "{e}");
    assert_eq!(counts.disagreements(), 1);

    // Two of three agree: their answer is used, the third's dissent still counted. The fork's
    // finalized block is one the origin holds too.
    let on_fork = Oracle::new(fork.reader(), chain.contract, PinRule::Finalized, 0);
    let snap: Snapshot = on_fork.snapshot().await.unwrap();
    assert_eq!(snap.members.len(), 3);
    other.mine(snap.block.number + 5).await;
    let (q3, counts3) = quorum(
        vec![
            endpoint("origin", &chain.anvil.url, chain.contract),
            endpoint("fork", &fork.url, chain.contract),
            endpoint("other", &other.url, chain.contract),
        ],
        2,
    );
    assert_eq!(
        q3.set_at(snap.block.number, snap.block.hash).await.unwrap(),
        Some(snap.clone())
    );
    assert_eq!(
        counts3.disagreements(),
        1,
        "the other chain's None is dissent"
    );

    // A dead endpoint gives no answer: it is missing, never agreeing.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let (q, counts) = quorum(
        vec![
            endpoint("origin", &chain.anvil.url, chain.contract),
            endpoint("dead", &dead, chain.contract),
        ],
        2,
    );
    let e = q
        .snapshot()
        .await
        .expect_err("one of two cannot make quorum 2");
    let OracleError::NoQuorum {
        agreeing,
        quorum: need,
        ..
    } = &e
    else {
        panic!("expected no quorum, got {e}");
    };
    assert_eq!((*agreeing, *need), (1, 2), "{e}");
    assert!(e.to_string().contains("dead: RPC"), "{e}");
    assert!(
        counts
            .rpc_failed
            .lock()
            .unwrap()
            .iter()
            .all(|n| n == "dead")
    );
    assert!(!counts.rpc_failed.lock().unwrap().is_empty());
    assert_eq!(counts.disagreements(), 0, "silence is not dissent");
    let (q, counts) = quorum(
        vec![
            endpoint("origin", &chain.anvil.url, chain.contract),
            endpoint("dead", &dead, chain.contract),
        ],
        1,
    );
    assert_eq!(
        q.set_at(snap.block.number, snap.block.hash).await.unwrap(),
        Some(snap.clone())
    );
    assert_eq!(*counts.rpc_failed.lock().unwrap(), vec!["dead".to_string()]);

    // One endpoint: its own error, as the plain oracle gives it.
    let (q, _) = quorum(vec![endpoint("dead", &dead, chain.contract)], 1);
    let e = q.snapshot().await.expect_err("dead");
    assert!(matches!(e, OracleError::Rpc { .. }), "{e}");

    // Quorums outside 1..=endpoints are refused.
    for (n, q) in [(0usize, 1usize), (1, 2), (2, 0)] {
        let eps = (0..n)
            .map(|i| endpoint(&format!("e{i}"), &chain.anvil.url, chain.contract))
            .collect();
        let e = QuorumOracle::new(eps, q).expect_err("bad quorum");
        assert!(
            matches!(e, OracleError::InvalidQuorum { quorum, endpoints } if quorum == q && endpoints == n),
            "{e}"
        );
    }
}
