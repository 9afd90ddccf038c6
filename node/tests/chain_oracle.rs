//! The node's chain view over several RPC endpoints, on real anvils: agreeing endpoints give the
//! pinned set; another chain with the same deployment, or a fork that diverged, gives an error
//! that names each endpoint's answer and is counted in `dstack_oracle_disagreements_total`; an
//! endpoint nobody listens at is counted in `dstack_oracle_rpc_errors_total{endpoint}`.

#![allow(clippy::unwrap_used)]

#[path = "../../membership/tests/common/mod.rs"]
mod anvil;

use std::time::Duration;

use alloy::primitives::{Address, U256};
use alloy::providers::{Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use anvil::{Anvil, deploy, deployer, eventually, send, tee};
use membership::contract::DstackMembershipNFT;
use membership::genesis::PinRule;
use membership::oracle::{Oracle, RetryPolicy};
use membership::quorum::{Endpoint, QuorumOracle};
use membership::sdk::Cluster;
use node::chain::{ChainView, OracleView};
use node::metrics::Metrics;

fn endpoint(name: &str, url: &str, contract: Address) -> Endpoint {
    let provider = ProviderBuilder::new()
        .connect_http(url.parse().unwrap())
        .erased();
    let retry = RetryPolicy {
        attempts: 2,
        initial_backoff: Duration::from_millis(50),
        max_backoff: Duration::from_millis(50),
        call_timeout: Duration::from_secs(5),
    };
    Endpoint {
        name: name.into(),
        oracle: Oracle::new(provider, contract, PinRule::Finalized, 0).with_retry(retry),
    }
}

fn view(endpoints: Vec<Endpoint>, quorum: usize) -> (OracleView, Metrics) {
    let view = OracleView::new(QuorumOracle::new(endpoints, quorum).unwrap());
    let metrics = Metrics::with_oracle(view.oracle_metrics().unwrap());
    (view, metrics)
}

fn has_line(metrics: &Metrics, line: &str) -> bool {
    let text = metrics.encode();
    text.lines().any(|l| l == line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_must_agree_and_their_failures_are_counted() {
    // Two registered nodes on the origin chain.
    let origin = Anvil::start().await;
    let contract = deploy(&origin).await;
    let admin = DstackMembershipNFT::new(contract, origin.wallet(&deployer()));
    let owners: Vec<PrivateKeySigner> = (0..2).map(|_| PrivateKeySigner::random()).collect();
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::connect(&origin.url, contract).await.unwrap();
    for (i, o) in owners.iter().enumerate() {
        origin.fund(o.address()).await;
        send(admin.mintBatch(o.address(), U256::from(1))).await;
        let (tee, task) = tee(dir.path(), i as u8 + 1);
        cluster
            .register(
                &tee,
                U256::from(i + 1),
                o,
                &format!("/ip4/127.0.0.1/tcp/{}", 9000 + i),
            )
            .await
            .unwrap();
        task.abort();
    }
    let registered = origin.head().await;
    let at = eventually("two blocks past the registrations", 30, || async {
        let h = origin.head().await;
        (h >= registered + 2).then_some(h)
    })
    .await;
    let fork = Anvil::fork(&origin, at).await;

    // Agreeing: the set at the fork's finalized block, which both hold.
    let (agreeing, metrics) = view(
        vec![
            endpoint("origin", &origin.url, contract),
            endpoint("fork", &fork.url, contract),
        ],
        2,
    );
    let set = agreeing.pinned().await.unwrap();
    assert_eq!((set.number, set.members.len()), (at - 2, 2));
    let again = agreeing.set_at(set.number, set.hash).await.unwrap();
    assert_eq!(again, Some(set.clone()));
    assert!(has_line(&metrics, "dstack_oracle_disagreements_total 0"));

    // The fork diverges (a node deregistered there only): no set, an error naming both answers,
    // one disagreement counted; the shared history still reads.
    let on_fork = DstackMembershipNFT::new(contract, fork.wallet(&owners[0]));
    send(on_fork.deregisterNode(U256::from(1))).await;
    fork.mine(3).await;
    eventually("origin's finalized block past the fork", 30, || async {
        (origin.head().await >= at + 3).then_some(())
    })
    .await;
    let e = agreeing.pinned().await.expect_err("diverged");
    assert!(e.contains("disagree"), "{e}");
    assert!(
        e.contains("origin: block") && e.contains("fork: block"),
        "{e}"
    );
    assert!(
        e.contains("2 member(s)") && e.contains("1 member(s)"),
        "{e}"
    );
    assert!(has_line(&metrics, "dstack_oracle_disagreements_total 1"));
    assert_eq!(
        agreeing.set_at(set.number, set.hash).await.unwrap(),
        Some(set.clone())
    );

    // Another chain with the same deployment (same contract address) disagrees too, and a
    // Reconfigure naming the origin's block cannot be checked against it.
    let other = Anvil::start().await;
    assert_eq!(deploy(&other).await, contract);
    other.mine(set.number + 5).await;
    let (two_chains, metrics) = view(
        vec![
            endpoint("origin", &origin.url, contract),
            endpoint("other", &other.url, contract),
        ],
        2,
    );
    let e = two_chains.pinned().await.expect_err("another chain");
    assert!(e.contains("other: "), "{e}");
    let e = two_chains
        .set_at(set.number, set.hash)
        .await
        .expect_err("the other chain has another block there");
    assert!(e.contains("disagree"), "{e}");
    assert!(has_line(&metrics, "dstack_oracle_disagreements_total 2"));

    // A dead endpoint: no quorum of two, its errors counted under its name.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://127.0.0.1:{}", l.local_addr().unwrap().port())
    };
    let (with_dead, metrics) = view(
        vec![
            endpoint("origin", &origin.url, contract),
            endpoint("dead", &dead, contract),
        ],
        2,
    );
    assert!(has_line(
        &metrics,
        r#"dstack_oracle_rpc_errors_total{endpoint="dead"} 0"#
    ));
    let e = with_dead.pinned().await.expect_err("no quorum");
    assert!(e.contains("1 of 2 RPC endpoint(s) agree, 2 needed"), "{e}");
    assert!(has_line(
        &metrics,
        r#"dstack_oracle_rpc_errors_total{endpoint="dead"} 1"#
    ));
    assert!(has_line(
        &metrics,
        r#"dstack_oracle_rpc_errors_total{endpoint="origin"} 0"#
    ));
    assert!(has_line(&metrics, "dstack_oracle_disagreements_total 0"));
}
