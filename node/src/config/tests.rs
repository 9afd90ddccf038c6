use super::*;
use crate::serve::{ServeConfig, ToServeConfig};

#[test]
fn init_writes_a_commented_config_that_loads_as_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = init(dir.path(), None).expect("init");
    let text = std::fs::read_to_string(&out.config).expect("read");
    assert!(text.contains("# dstack-node settings"));
    assert!(text.contains("rpc_url = \"http://127.0.0.1:8545\""));
    assert!(out.genesis.is_none());
    let cfg = Config::load(dir.path(), Vec::new(), &[]).expect("load");
    assert_eq!(cfg, Config::default());
    assert_eq!(
        cfg.genesis_path(dir.path()),
        dir.path().join("genesis.json")
    );
    assert!(matches!(
        init(dir.path(), None),
        Err(ConfigError::Exists(_))
    ));
}

#[test]
fn init_copies_the_genesis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("g.json");
    std::fs::write(&src, b"{\"chain_id\":1}").expect("write");
    let home = dir.path().join("home");
    let out = init(&home, Some(&src)).expect("init");
    let dst = out.genesis.expect("copied");
    assert_eq!(std::fs::read(dst).expect("read"), b"{\"chain_id\":1}");
}

#[test]
fn env_then_flags_override_every_type() {
    let dir = tempfile::tempdir().expect("tempdir");
    init(dir.path(), None).expect("init");
    let env = vec![
        (
            "DSTACK_NODE_CHAIN_RPC_URL".to_string(),
            "http://rpc:1".to_string(),
        ),
        (
            "DSTACK_NODE_P2P_BOOTSTRAP".to_string(),
            "/ip4/1.2.3.4/tcp/1, /ip4/5.6.7.8/tcp/2".to_string(),
        ),
        (
            "DSTACK_NODE_MEMPOOL_MAX_PENDING_TXS".to_string(),
            "7".to_string(),
        ),
        ("DSTACK_NODE_LOG_FORMAT".to_string(), "json".to_string()),
        ("UNRELATED".to_string(), "x".to_string()),
    ];
    let cfg = Config::load(
        dir.path(),
        env,
        &["chain.rpc_url=http://flag:2".to_string()],
    )
    .expect("load");
    assert_eq!(cfg.chain.rpc_url, "http://flag:2");
    assert_eq!(
        cfg.p2p.bootstrap,
        vec!["/ip4/1.2.3.4/tcp/1", "/ip4/5.6.7.8/tcp/2"]
    );
    assert_eq!(cfg.mempool.max_pending_txs, 7);
    assert_eq!(cfg.log.format, "json");
}

#[test]
fn bad_overrides_and_values_are_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    init(dir.path(), None).expect("init");
    let e = Config::load(dir.path(), Vec::new(), &["nope.key=1".into()]).expect_err("bad");
    assert!(e.to_string().contains("nope.key"), "{e}");
    let e = Config::load(
        dir.path(),
        vec![("DSTACK_NODE_MEMPOOL_MAX_PENDING_TXS".into(), "many".into())],
        &[],
    )
    .expect_err("bad int");
    assert!(e.to_string().contains("mempool.max_pending_txs"), "{e}");
    let e = Config::load(dir.path(), Vec::new(), &["log.format=xml".into()]).expect_err("fmt");
    assert!(e.to_string().contains("log.format"), "{e}");
    for bad in ["0", "10001"] {
        let set = [format!("mempool.batch_timeout_ms={bad}")];
        let e = Config::load(dir.path(), Vec::new(), &set).expect_err("bad batch timeout");
        assert!(e.to_string().contains("mempool.batch_timeout_ms"), "{e}");
    }
    let set = ["mempool.batch_timeout_ms=200".to_string()];
    let cfg = Config::load(dir.path(), Vec::new(), &set).expect("200 ms");
    assert_eq!(cfg.mempool.batch_timeout_ms, 200);
    let set = ["mempool.empty_block_interval_ms=10001".to_string()];
    let e = Config::load(dir.path(), Vec::new(), &set).expect_err("bad interval");
    assert!(
        e.to_string().contains("mempool.empty_block_interval_ms"),
        "{e}"
    );
    let set = ["mempool.empty_block_interval_ms=0".to_string()];
    let cfg = Config::load(dir.path(), Vec::new(), &set).expect("0 ms");
    assert_eq!(cfg.mempool.empty_block_interval_ms, 0);
    for bad in [
        "serve.non_member_in_flight=0",
        "serve.workers=0",
        "serve.workers=65",
    ] {
        let key = bad.split('=').next().unwrap_or_default();
        let e = Config::load(dir.path(), Vec::new(), &[bad.to_string()]).expect_err(bad);
        assert!(e.to_string().contains(key), "{e}");
    }
    let set = ["serve.non_member_pool_bytes_per_sec=1000".to_string()];
    let cfg = Config::load(dir.path(), Vec::new(), &set).expect("pool bytes");
    assert_eq!(
        cfg.serve.to_config().limits.non_member_pool.bytes_per_sec,
        1000
    );
}

/// Loads the config `init` writes with the lines of `keys` taken out, as an older
/// version wrote it.
fn load_without(keys: &[&str]) -> Config {
    let dir = tempfile::tempdir().expect("tempdir");
    init(dir.path(), None).expect("init");
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("read");
    let older: String = text
        .lines()
        .filter(|l| !keys.iter().any(|k| l.starts_with(&format!("{k} ="))))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        text.lines().count() - older.lines().count(),
        keys.len(),
        "init writes each key once"
    );
    std::fs::write(&path, older).expect("write");
    Config::load(dir.path(), Vec::new(), &[]).expect("load")
}

#[test]
fn a_config_without_the_batch_timeout_loads_with_the_default() {
    let cfg = load_without(&["batch_timeout_ms", "empty_block_interval_ms"]);
    assert_eq!(cfg.mempool.batch_timeout_ms, 50);
    assert_eq!(cfg.mempool.empty_block_interval_ms, 100);
}

#[test]
fn a_config_without_the_storage_section_loads_with_the_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    init(dir.path(), None).expect("init");
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("read");
    let without_storage: String = text
        .split("[storage]")
        .next()
        .unwrap_or_default()
        .to_owned();
    std::fs::write(&path, without_storage).expect("write");
    let cfg = Config::load(dir.path(), Vec::new(), &[]).expect("load");
    assert_eq!(cfg.storage, StorageSettings::default());
    let set = [
        "storage.retain_heights=0".to_string(),
        "storage.max_disk_bytes=1000".to_string(),
    ];
    let cfg = Config::load(dir.path(), Vec::new(), &set).expect("overrides");
    assert_eq!(
        (cfg.storage.retain_heights, cfg.storage.max_disk_bytes),
        (0, 1000)
    );
}

#[test]
fn parse_reads_text_like_load_and_names_the_path() {
    let path = Path::new("home/config.toml");
    let text = render(&Config::default());
    let sets = ["log.format=json".to_string()];
    let cfg = Config::parse(path, &text, Vec::new(), &sets).expect("parses");
    assert_eq!(cfg.log.format, "json");
    let e = Config::parse(path, "[api\n", Vec::new(), &[]).expect_err("bad toml");
    assert!(e.to_string().contains("home/config.toml"), "{e}");
}

#[test]
fn a_config_without_the_serve_section_loads_with_the_defaults() {
    let dir = tempfile::tempdir().expect("tempdir");
    init(dir.path(), None).expect("init");
    let path = dir.path().join("config.toml");
    let text = std::fs::read_to_string(&path).expect("read");
    let (older, _) = text.split_once("[serve]").expect("init writes the section");
    std::fs::write(&path, older).expect("write");
    let cfg = Config::load(dir.path(), Vec::new(), &[]).expect("load");
    assert_eq!(cfg.serve.to_config(), ServeConfig::default());
}

#[test]
fn several_rpc_endpoints_and_their_quorum() {
    let dir = tempfile::tempdir().expect("tempdir");
    init(dir.path(), None).expect("init");
    let text = std::fs::read_to_string(dir.path().join("config.toml")).expect("read");
    assert!(text.contains("rpc_urls = []"), "{text}");
    assert!(text.contains("rpc_quorum = 0"), "{text}");
    let one = Config::load(dir.path(), Vec::new(), &[]).expect("default");
    assert_eq!(one.chain.endpoints(), vec!["http://127.0.0.1:8545"]);
    assert_eq!(one.chain.quorum(), 1);

    let env = vec![
        (
            "DSTACK_NODE_CHAIN_RPC_URLS".to_string(),
            "http://a:1, http://b:2,http://c:3".to_string(),
        ),
        ("DSTACK_NODE_CHAIN_RPC_URL".to_string(), String::new()),
    ];
    let all = Config::load(dir.path(), env.clone(), &[]).expect("three");
    assert_eq!(
        all.chain.endpoints(),
        vec!["http://a:1", "http://b:2", "http://c:3"]
    );
    assert_eq!(all.chain.quorum(), 3, "0 means all of them");
    let mut env2 = env.clone();
    env2.push(("DSTACK_NODE_CHAIN_RPC_QUORUM".into(), "2".into()));
    let two = Config::load(dir.path(), env2, &[]).expect("quorum 2");
    assert_eq!(two.chain.quorum(), 2);
    let kept = Config::load(
        dir.path(),
        env.clone(),
        &["chain.rpc_url=http://b:2".into()],
    )
    .expect("rpc_url among them");
    assert_eq!(kept.chain.endpoints().len(), 3);

    let bad = |sets: &[&str], key: &str| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let e = Config::load(dir.path(), Vec::new(), &sets).expect_err(key);
        assert!(e.to_string().contains(key), "{e}");
    };
    bad(&["chain.rpc_urls=http://a:1,http://b:2"], "chain.rpc_url");
    bad(
        &["chain.rpc_url=", "chain.rpc_urls=http://a:1,http://a:1"],
        "chain.rpc_urls",
    );
    bad(
        &[
            "chain.rpc_url=",
            "chain.rpc_urls=http://a:1,http://b:2",
            "chain.rpc_quorum=3",
        ],
        "chain.rpc_quorum",
    );
    bad(&["chain.rpc_quorum=2"], "chain.rpc_quorum");
    bad(&["chain.rpc_url="], "chain.rpc_url");
}

#[test]
fn a_config_without_the_endpoint_list_loads_with_one_endpoint() {
    let cfg = load_without(&["rpc_urls", "rpc_quorum"]);
    assert_eq!(cfg, Config::default());
    assert_eq!(cfg.chain.endpoints(), vec!["http://127.0.0.1:8545"]);
}

#[test]
fn missing_config_names_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let e = Config::load(dir.path(), Vec::new(), &[]).expect_err("missing");
    assert!(e.to_string().contains("config.toml"), "{e}");
}
