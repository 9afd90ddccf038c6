//! `dstack-node init` and `start` as an operator runs them: the commented config, and start-up
//! failures that name what is missing or unreachable (never a panic).

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_dstack-node"))
}

const GENESIS: &str = r#"{"version":1,"chain_id":31337,"contract":"0x5fbdb2315678afecb367f032d93f642f64180aa3","genesis_block":{"number":12,"hash":"0x1111111111111111111111111111111111111111111111111111111111111111"},"cluster_nonce":"0x2222222222222222222222222222222222222222222222222222222222222222","pin_rule":"finalized","pin_depth":0,"reconfig_max_lag_blocks":512,"reconfig_wait_ms":500,"epoch_min_rounds":10,"base_timeout_ms":1000,"timeout_cap_ms":4000,"max_batch_bytes":1048576,"max_block_batches":64,"max_tx_bytes":65536,"oracle_poll_ms":1000}"#;

#[test]
fn init_then_start_errors_name_the_missing_piece() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let out = bin()
        .args(["init", "--home"])
        .arg(&home)
        .output()
        .expect("run init");
    assert!(out.status.success(), "{out:?}");
    let config = std::fs::read_to_string(home.join("config.toml")).expect("config");
    for key in [
        "rpc_url",
        "genesis",
        "endpoint",
        "owner_address",
        "listen",
        "external",
        "metrics_listen",
        "format",
    ] {
        assert!(config.contains(&format!("\n{key} = ")), "{key} missing");
    }
    // A second init refuses to overwrite.
    let again = bin()
        .args(["init", "--home"])
        .arg(&home)
        .output()
        .expect("run");
    assert!(!again.status.success());

    // No genesis.json: the error names it.
    let out = bin()
        .args(["start", "--home"])
        .arg(&home)
        .output()
        .expect("run start");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("genesis.json"), "{err}");
    assert!(!err.contains("panicked"), "{err}");

    // A genesis but an unreachable chain RPC: bounded retries, then an error naming the URL.
    std::fs::write(home.join("genesis.json"), GENESIS).expect("genesis");
    let started = std::time::Instant::now();
    let out = bin()
        .args(["start", "--home"])
        .arg(&home)
        .args(["--set", "chain.rpc_url=http://127.0.0.1:9"])
        .env("DSTACK_NODE_LOG_LEVEL", "error")
        .output()
        .expect("run start");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("chain RPC http://127.0.0.1:9"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}
