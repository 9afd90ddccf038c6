//! The guest-agent client against the in-process simulator (Unix socket and TCP) and against
//! servers that answer badly: every failure must be a clear error.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use k256::ecdsa::SigningKey;
use membership::dstack::{DstackClient, DstackError, Endpoint};
use membership::kdf::KeyError;
use membership::simulator::{SIMULATED_QUOTE_MARKER, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const APP_ID: [u8; 20] = [0x42; 20];

fn sim(instance: &str) -> Simulator {
    Simulator::from_kms_root(
        &SigningKey::from_slice(&[5u8; 32]).unwrap(),
        APP_ID,
        instance,
    )
    .unwrap()
}

#[tokio::test]
async fn all_four_calls_over_unix_and_tcp() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let _task = sim("abcd").spawn_unix(&sock).unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", tcp.local_addr().unwrap());
    let _t2 = tokio::spawn(sim("abcd").serve_tcp(tcp));
    for ep in [
        sock.to_str().unwrap().to_string(),
        format!("unix:{}", sock.display()),
        url,
    ] {
        let c = DstackClient::new(Some(&ep)).unwrap();
        let info = c.info().await.unwrap();
        assert_eq!(info.app_id_bytes().unwrap(), APP_ID);
        assert_eq!(info.instance_id, "abcd");
        let q = c.get_quote(b"hello").await.unwrap();
        assert_eq!(q.simulated, Some(true));
        assert!(
            hex::decode(&q.quote)
                .unwrap()
                .starts_with(SIMULATED_QUOTE_MARKER)
        );
        let v = c.version().await.unwrap();
        assert!(v.version.contains("simulator"));
        let k = c.get_key("p", "x").await.unwrap();
        assert_eq!(k.signature_chain.len(), 2);
        assert!(c.get_quote(&[0u8; 65]).await.is_err());
    }
}

#[tokio::test]
async fn empty_instance_id_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("d.sock");
    let _task = sim("").spawn_unix(&sock).unwrap();
    let c = DstackClient::new(Some(sock.to_str().unwrap())).unwrap();
    let err = c
        .node_key(1, alloy::primitives::Address::ZERO, "p")
        .await
        .unwrap_err();
    assert!(
        matches!(err, DstackError::Key(KeyError::EmptyInstanceId)),
        "{err}"
    );
    assert!(err.to_string().contains("no_instance_id"));
}

#[test]
fn endpoints_parse() {
    assert_eq!(
        Endpoint::parse("http://127.0.0.1:8090/").unwrap(),
        Endpoint::Http {
            authority: "127.0.0.1:8090".into(),
            base: "".into()
        }
    );
    assert!(matches!(
        Endpoint::parse("unix:/x.sock").unwrap(),
        Endpoint::Unix(_)
    ));
    assert!(Endpoint::parse("https://x").is_err());
    assert!(Endpoint::parse("").is_err());
}

/// A Unix server that answers every connection with `reply` (raw bytes) and closes.
fn raw_server(dir: &std::path::Path, name: &str, reply: &'static [u8]) -> String {
    let path = dir.join(name);
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let _ = s.write_all(reply).await;
            let _ = s.shutdown().await;
        }
    });
    path.to_str().unwrap().to_string()
}

fn http(body: &str) -> &'static [u8] {
    let s = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    Box::leak(s.into_boxed_str()).as_bytes()
}

#[tokio::test]
async fn malformed_replies_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: Vec<(&str, &'static [u8], &str)> = vec![
        ("notjson", http("{not json"), "malformed reply"),
        ("noshape", http("{\"key\": \"00\"}"), "signature_chain"),
        ("badhex", http("{\"key\": \"zz\", \"signature_chain\": [\"00\", \"00\"]}"), "GetKey.key"),
        ("shortkey", http("{\"key\": \"0011\", \"signature_chain\": [\"00\", \"00\"]}"), "expected 32 bytes"),
        ("onesig", http(&format!("{{\"key\": \"{}\", \"signature_chain\": [\"00\"]}}", "11".repeat(32))), "2"),
        ("status", b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\nconnection: close\r\n\r\nboom", "status 500"),
        ("garbage", b"\x00\x01\x02 this is not http\r\n\r\n", "HTTP failure"),
    ];
    for (name, reply, needle) in cases {
        let ep = raw_server(d, name, reply);
        let c = DstackClient::new(Some(&ep)).unwrap();
        let err = c.get_key("p", "x").await.expect_err(name);
        assert!(err.to_string().contains(needle), "{name}: {err}");
    }
    // Info without instance_id.
    let ep = raw_server(d, "info", http("{\"app_id\": \"00\"}"));
    let err = DstackClient::new(Some(&ep))
        .unwrap()
        .info()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("instance_id"), "{err}");
}

#[tokio::test]
async fn missing_socket_and_silent_server_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("none.sock");
    let err = DstackClient::new(Some(missing.to_str().unwrap()))
        .unwrap()
        .info()
        .await
        .unwrap_err();
    assert!(matches!(err, DstackError::Connect { .. }), "{err}");
    assert!(err.to_string().contains("none.sock"));

    let path = dir.path().join("silent.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let c = DstackClient::new(Some(path.to_str().unwrap()))
        .unwrap()
        .with_timeout(Duration::from_millis(300));
    let err = c.version().await.unwrap_err();
    assert!(matches!(err, DstackError::Timeout { .. }), "{err}");
}
