//! The HTTP API over a real socket: every route, the 503 of a full mempool,
//! and the metric names of DESIGN section 9, fed by a status struct (no consensus needed).

mod common;

use common::http;

use std::sync::{Arc, Mutex, RwLock};

use node::api::{ApiState, NodeStatus, RegistrationFn, ValidatorInfo, router};
use node::app::{CommitInput, KvTx, commit_block};
use node::mempool::{Mempool, MempoolConfig, SealedBatch};
use node::metrics::Metrics;
use node::storage::Store;
use prost::Message;
use tokio::sync::Notify;

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

struct Fixture {
    addr: std::net::SocketAddr,
    store: Store,
    status: Arc<RwLock<NodeStatus>>,
    _dir: tempfile::TempDir,
}

async fn start(mempool_cfg: MempoolConfig, registration: Option<RegistrationFn>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("store");
    let status = Arc::new(RwLock::new(NodeStatus {
        epoch: 0,
        round: 12,
        committed_height: 0,
        committed_block: None,
        leader: Some("0x01".into()),
        peers: 3,
        syncing: false,
        node_address: "0xaa".into(),
        peer_id: "16Uiu2Hxx".into(),
        epoch_chain_block: 77,
        member: true,
        role: "validator".into(),
        validators: vec![
            ValidatorInfo {
                address: "0x01".into(),
                power: 1,
                public_key: "11".into(),
                connection_url: "/ip4/127.0.0.1/tcp/1".into(),
            },
            ValidatorInfo {
                address: "0x02".into(),
                power: 3,
                public_key: "22".into(),
                connection_url: "/ip4/127.0.0.1/tcp/2".into(),
            },
        ],
    }));
    let state = ApiState {
        status: status.clone(),
        store: store.clone(),
        mempool: Arc::new(Mutex::new(Mempool::new(mempool_cfg))),
        mempool_wake: Arc::new(Notify::new()),
        metrics: Arc::new(Metrics::new()),
        registration,
        durable: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        axum::serve(listener, router(state)).await.expect("serve");
    });
    Fixture {
        addr,
        store,
        status,
        _dir: dir,
    }
}

fn put(k: &str, v: &str) -> Vec<u8> {
    KvTx::Put {
        key: k.into(),
        value: v.into(),
        nonce: None,
    }
    .encode()
}

#[tokio::test]
async fn every_route_answers_as_specified() {
    let f = start(MempoolConfig::default(), None).await;

    let (code, body) = http(f.addr, "GET", "/health", b"").await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["status"], "ok");

    let (code, body) = http(f.addr, "GET", "/status", b"").await;
    assert_eq!(code, 200);
    let st = json(&body);
    let mut keys: Vec<&str> = st
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "committed_block",
            "committed_height",
            "epoch",
            "epoch_chain_block",
            "leader",
            "member",
            "node_address",
            "peer_id",
            "peers",
            "role",
            "round",
            "syncing"
        ]
    );
    assert_eq!(st["round"], 12);
    assert_eq!(st["role"], "validator");
    assert_eq!(st["epoch_chain_block"], 77);

    let (code, body) = http(f.addr, "GET", "/validators", b"").await;
    assert_eq!(code, 200);
    let v = json(&body);
    assert_eq!(v["total_power"], 4);
    assert_eq!(v["validators"][1]["address"], "0x02");

    let (code, _) = http(f.addr, "GET", "/blocks/latest", b"").await;
    assert_eq!(code, 404, "nothing committed yet");

    // A transaction: accepted, pending, then committed through the app.
    let tx = put("color", "blue");
    let (code, body) = http(f.addr, "POST", "/txs", &tx).await;
    assert_eq!(code, 202, "{body}");
    let hash = json(&body)["hash"].as_str().expect("hash").to_owned();
    assert_eq!(
        hash,
        format!("0x{}", hex::encode(blake3::hash(&tx).as_bytes()))
    );
    let (code, body) = http(f.addr, "GET", &format!("/txs/{hash}"), b"").await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["status"], "pending");
    let (code, _) = http(f.addr, "POST", "/txs", &tx).await;
    assert_eq!(code, 409, "duplicate");
    let (code, body) = http(f.addr, "POST", "/txs", b"{\"op\":\"nope\"}").await;
    assert_eq!(code, 400, "{body}");
    // A node outside the current set (removed at an epoch change) refuses, naming why.
    {
        let mut st = f.status.write().expect("status");
        st.member = false;
        st.role = "removed".into();
    }
    let (code, body) = http(f.addr, "POST", "/txs", &put("k", "removed")).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not a validator of epoch 0"), "{body}");
    f.status.write().expect("status").member = true;

    let batch = SealedBatch::from_txs(std::slice::from_ref(&tx));
    f.store
        .write(|w| w.put_batch(&batch.digest, &batch.encoded))
        .expect("batch");
    let block = proto::v1::Block {
        header: Some(proto::v1::BlockHeader {
            epoch: 0,
            round: 5,
            parent_id: vec![9; 32],
            qc: Some(proto::v1::QuorumCert {
                epoch: 0,
                round: 4,
                block_id: vec![9; 32],
                signer_bitmap: vec![0b11],
                signatures: vec![vec![1; 65], vec![2; 65]],
            }),
            payload_digest: vec![0; 32],
            proposer: vec![2; 20],
            reconfigure: None,
        }),
        batch_digests: vec![batch.digest.to_vec()],
    };
    commit_block(
        &f.store,
        CommitInput {
            height: 1,
            id: &[5; 32],
            block: &block.encode_to_vec(),
            proof: b"proof",
            batch_digests: &[batch.digest],
            known_hashes: &[],
            prune_round: None,
        },
    )
    .expect("commit");

    let (code, body) = http(f.addr, "GET", &format!("/txs/{hash}"), b"").await;
    assert_eq!(code, 200);
    let t = json(&body);
    assert_eq!(t["status"], "committed");
    assert_eq!(t["height"], 1);

    for path in ["/blocks/latest", "/blocks/1"] {
        let (code, body) = http(f.addr, "GET", path, b"").await;
        assert_eq!(code, 200, "{path}: {body}");
        let b = json(&body);
        assert_eq!(b["height"], 1);
        assert_eq!(b["id"], format!("0x{}", hex::encode([5u8; 32])));
        assert_eq!(b["parent"], format!("0x{}", hex::encode([9u8; 32])));
        assert_eq!(b["round"], 5);
        assert_eq!(b["proposer"], format!("0x{}", hex::encode([2u8; 20])));
        assert_eq!(b["qc_signers"], serde_json::json!(["0x01", "0x02"]));
        assert_eq!(b["transactions"], serde_json::json!([hash]));
    }
    let (code, _) = http(f.addr, "GET", "/blocks/2", b"").await;
    assert_eq!(code, 404);
    let (code, _) = http(f.addr, "GET", "/blocks/x", b"").await;
    assert_eq!(code, 400);

    let (code, body) = http(f.addr, "GET", "/kv/color", b"").await;
    assert_eq!(code, 200);
    assert_eq!(json(&body)["value"], "blue");
    let (code, _) = http(f.addr, "GET", "/kv/nothing", b"").await;
    assert_eq!(code, 404);

    let (code, _) = http(f.addr, "GET", &format!("/txs/0x{}", "00".repeat(32)), b"").await;
    assert_eq!(code, 404);

    // Registration without an owner configured: a clear 503.
    let (code, body) = http(f.addr, "GET", "/registration?token_id=1", b"").await;
    assert_eq!(code, 503);
    assert!(body.contains("owner_address"), "{body}");
    let (code, _) = http(f.addr, "GET", "/registration?token_id=abc", b"").await;
    assert_eq!(code, 400);

    f.status.write().expect("lock").committed_height = 1;
    let (code, body) = http(f.addr, "GET", "/metrics", b"").await;
    assert_eq!(code, 200);
    for name in [
        "dstack_consensus_height",
        "dstack_consensus_round",
        "dstack_consensus_epoch",
        "dstack_validators_power",
        "dstack_block_interval_seconds",
        "dstack_commit_latency_seconds",
        "dstack_timeouts_total",
        "dstack_epoch_changes_total",
        "dstack_p2p_peers",
        "dstack_mempool_transactions",
        "dstack_syncing",
    ] {
        assert!(body.contains(name), "{name} missing");
    }
}

#[tokio::test]
async fn full_mempool_is_503_with_a_clear_body() {
    let cfg = MempoolConfig {
        max_pending_txs: 2,
        ..MempoolConfig::default()
    };
    let f = start(cfg, None).await;
    for i in 0..2 {
        let (code, _) = http(f.addr, "POST", "/txs", &put("k", &i.to_string())).await;
        assert_eq!(code, 202);
    }
    let (code, body) = http(f.addr, "POST", "/txs", &put("k", "x")).await;
    assert_eq!(code, 503);
    assert!(
        json(&body)["error"]
            .as_str()
            .expect("error")
            .contains("mempool full")
    );
}

#[tokio::test]
async fn registration_serves_the_provider_payload() {
    let provider: RegistrationFn = Arc::new(|token: String| {
        Box::pin(async move { Ok(serde_json::json!({ "token_id": token, "proof": "0x00" })) })
    });
    let f = start(MempoolConfig::default(), Some(provider)).await;
    let (code, body) = http(f.addr, "GET", "/registration?token_id=42", b"").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["token_id"], "42");
    let (code, _) = http(f.addr, "GET", "/registration", b"").await;
    assert_eq!(code, 400);
}
