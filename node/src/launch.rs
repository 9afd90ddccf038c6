//! `dstack-node start --home DIR`: everything between the command line and a running node.
//!
//! 1. node settings from `config.toml` (+ environment and `--set` overrides);
//! 2. the cluster's `genesis.json` (membership crate format; a missing file is an error naming it);
//! 3. the chain RPC endpoints: each one's chain id and contract checked, then the purpose and KMS
//!    root read through the first (bounded retries, errors name the endpoint);
//! 4. the node key from dstack on the DESIGN path, its signature chain verified against the KMS
//!    root (configured, or the contract's) before anything else uses it;
//! 5. epoch 0's validator set read at the genesis chain block (by hash, a quorum of endpoints
//!    agreeing);
//! 6. the node (store, libp2p, API, metrics, driver) until SIGTERM/SIGINT, then a clean stop.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use alloy::primitives::{Address, U256};
use consensus::core::Config as CoreConfig;
use membership::dstack::{DstackClient, NodeKey};
use membership::genesis::Genesis;
use membership::identity::KmsRoot;
use membership::oracle::{BlockRef, Oracle};
use membership::quorum::{Endpoint, QuorumOracle, endpoint_label};
use membership::sdk::Cluster;

use crate::api::RegistrationFn;
use crate::chain::{ChainView, OracleView, chain_set_of};
use crate::config::Config;
use crate::driver::DriverConfig;
use crate::mempool::MempoolConfig;
use crate::node::TapFactory;
use crate::node::{NodeParams, start};
use crate::serve::ToServeConfig;

/// Why `start` failed; every variant names what it could not reach or read.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The settings could not be loaded.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The genesis file could not be loaded.
    #[error("{0}")]
    Genesis(String),
    /// The chain RPC failed.
    #[error("chain RPC {url}: {reason}")]
    Chain {
        /// The RPC URL.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The dstack endpoint failed.
    #[error("dstack endpoint {endpoint}: {reason}")]
    Dstack {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        reason: String,
    },
    /// The node's own key does not verify.
    #[error("the node's signature chain does not verify: {0}")]
    Identity(String),
    /// A setting is invalid.
    #[error("invalid setting: {0}")]
    Invalid(String),
    /// The node failed.
    #[error(transparent)]
    Node(#[from] crate::node::NodeError),
}

async fn retry<T, E: std::fmt::Display, F, Fut>(
    what: &str,
    attempts: u32,
    mut f: F,
) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = Duration::from_millis(500);
    let mut last = String::new();
    for i in 0..attempts {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                last = e.to_string();
                tracing::warn!(attempt = i + 1, attempts, error = %last, "{what} failed");
                if i + 1 < attempts {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(8));
                }
            }
        }
    }
    Err(format!("{last} (after {attempts} attempts)"))
}

/// How logs and metrics name endpoint `i` of `urls`: scheme, host and port only (a provider's
/// URL often holds an API key), with `#i` added when two endpoints share them.
fn endpoint_name(urls: &[String], i: usize) -> String {
    let label = endpoint_label(urls.get(i).map_or("", String::as_str));
    if urls.iter().filter(|u| endpoint_label(u) == label).count() > 1 {
        format!("{label}#{i}")
    } else {
        label
    }
}

/// The endpoints for an error message (credentials left out).
fn endpoints_text(urls: &[String]) -> String {
    (0..urls.len())
        .map(|i| endpoint_name(urls, i))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Installs the tracing subscriber (human or JSON) with the configured filter.
pub fn init_logging(format: &str, level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = if format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// Runs `dstack-node start --home DIR` until a signal; `sets` are `--set section.key=value`.
pub async fn run_start(home: &Path, sets: &[String]) -> Result<(), LaunchError> {
    run_start_with(home, sets, None).await
}

/// [`run_start`] with a fault-injection tap: only test binaries (the chaos suite's equivocator)
/// call this with `Some`.
pub async fn run_start_with(
    home: &Path,
    sets: &[String],
    tap: Option<TapFactory>,
) -> Result<(), LaunchError> {
    run_start_hooked(
        home,
        sets,
        FaultHooks {
            tap,
            ..FaultHooks::default()
        },
    )
    .await
}

/// Wraps the node's real chain view (given the driver's settings) in another one.
pub type ChainWrap =
    Arc<dyn Fn(&DriverConfig, Arc<dyn ChainView>) -> Arc<dyn ChainView> + Send + Sync>;

/// Fault-injection hooks of test-only binaries (the chaos suite's equivocator, the lying
/// reconfigurer). `dstack-node` installs none.
#[derive(Default, Clone)]
pub struct FaultHooks {
    /// Sees (and adds to) each consensus message sent.
    pub tap: Option<TapFactory>,
    /// Replaces the chain view the driver reads the pinned head from.
    pub chain: Option<ChainWrap>,
}

/// [`run_start`] with fault-injection hooks (test binaries only).
pub async fn run_start_hooked(
    home: &Path,
    sets: &[String],
    hooks: FaultHooks,
) -> Result<(), LaunchError> {
    let tap = hooks.tap;
    let cfg = Config::load(home, std::env::vars(), sets)?;
    init_logging(&cfg.log.format, &cfg.log.level);
    let genesis_path = cfg.genesis_path(home);
    let genesis = Genesis::load(&genesis_path).map_err(|e| match e {
        membership::genesis::GenesisError::Io { .. } => LaunchError::Genesis(e.to_string()),
        other => LaunchError::Genesis(format!("{}: {other}", genesis_path.display())),
    })?;
    let urls = cfg.chain.endpoints();
    // Reads through every endpoint fail with all of them named; start-up reads go to the first.
    let chain_err = |reason: String| LaunchError::Chain {
        url: endpoints_text(&urls),
        reason,
    };
    let first_err = |reason: String| LaunchError::Chain {
        url: urls.first().cloned().unwrap_or_default(),
        reason,
    };
    let mut endpoints = Vec::with_capacity(urls.len());
    let mut cluster = None;
    for (i, url) in urls.iter().enumerate() {
        let err = |reason: String| LaunchError::Chain {
            url: url.clone(),
            reason,
        };
        let c = retry("chain RPC", 5, || Cluster::connect(url, genesis.contract))
            .await
            .map_err(err)?;
        if c.chain_id() != genesis.chain_id {
            return Err(err(format!(
                "chain id {} differs from the genesis file's {}",
                c.chain_id(),
                genesis.chain_id
            )));
        }
        endpoints.push(Endpoint {
            name: endpoint_name(&urls, i),
            oracle: Oracle::from_genesis(c.provider().clone(), &genesis),
        });
        cluster.get_or_insert(c);
    }
    let Some(cluster) = cluster else {
        return Err(chain_err("no RPC endpoint configured".into()));
    };
    let oracle = QuorumOracle::new(endpoints, cfg.chain.quorum())
        .map_err(|e| LaunchError::Invalid(format!("chain.rpc_quorum: {e}")))?;
    if urls.len() > 1 {
        tracing::info!(endpoints = %endpoints_text(&urls), quorum = cfg.chain.quorum(), "the validator-set oracle reads several RPC endpoints");
    }
    let purpose = retry("purpose()", 5, || cluster.purpose())
        .await
        .map_err(first_err)?;
    let kms_root = if cfg.dstack.kms_root.is_empty() {
        let a = retry("kmsRoot()", 5, || cluster.kms_root())
            .await
            .map_err(first_err)?;
        KmsRoot::Address(a)
    } else {
        KmsRoot::parse(&cfg.dstack.kms_root)
            .map_err(|e| LaunchError::Invalid(format!("dstack.kms_root: {e}")))?
    };
    let endpoint = cfg.dstack.endpoint.clone();
    let dstack_err = |reason: String| LaunchError::Dstack {
        endpoint: endpoint.clone(),
        reason,
    };
    let dstack = DstackClient::new(Some(&endpoint)).map_err(|e| dstack_err(e.to_string()))?;
    let node_key: NodeKey = retry("dstack GetKey", 5, || {
        dstack.node_key(genesis.chain_id, genesis.contract, &purpose)
    })
    .await
    .map_err(dstack_err)?;
    let verified = node_key
        .verify(kms_root)
        .map_err(|e| LaunchError::Identity(e.to_string()))?;
    tracing::info!(address = %node_key.address(), path = %node_key.path, "node identity verified");
    let _ = verified;
    let secret: [u8; 32] = node_key.key.secret.to_bytes().into();

    let at = BlockRef {
        number: genesis.genesis_block.number,
        hash: genesis.genesis_block.hash,
    };
    let snapshot = retry("validator set at the genesis block", 5, || {
        oracle.snapshot_at(at)
    })
    .await
    .map_err(chain_err)?;
    let members = chain_set_of(&snapshot)
        .map_err(|e| chain_err(e.to_string()))?
        .members;

    let registration = registration_fn(&cfg, cluster.clone(), node_key.clone())?;
    let listen = parse_addrs("p2p.listen", &cfg.p2p.listen)?;
    let bootstrap = parse_addrs("p2p.bootstrap", &cfg.p2p.bootstrap)?;
    let api_listen = cfg
        .api
        .listen
        .parse()
        .map_err(|_| LaunchError::Invalid("api.listen".into()))?;
    let metrics_listen = cfg
        .api
        .metrics_listen
        .parse()
        .map_err(|_| LaunchError::Invalid("api.metrics_listen".into()))?;
    let mut params = NodeParams {
        driver: DriverConfig {
            secret,
            chain_id: genesis.chain_id,
            contract: genesis.contract.into_array(),
            genesis_id: genesis.genesis_id().0,
            genesis_chain_block_hash: genesis.genesis_block.hash.0,
            genesis_chain_block_number: genesis.genesis_block.number,
            members,
            core: CoreConfig {
                base_timeout_ms: genesis.base_timeout_ms,
                max_timeout_ms: genesis.timeout_cap_ms,
                max_payload_batches: usize::try_from(genesis.max_block_batches)
                    .unwrap_or(usize::MAX)
                    .min(consensus::types::MAX_BATCHES_PER_BLOCK),
                reconfig_max_lag_blocks: genesis.reconfig_max_lag_blocks,
                reconfig_wait_ms: genesis.reconfig_wait_ms,
                epoch_min_rounds: genesis.epoch_min_rounds,
                ..CoreConfig::default()
            },
            sync_check: Duration::from_secs(1),
            empty_block_interval: Duration::from_millis(
                cfg.mempool
                    .empty_block_interval_ms
                    .min(genesis.base_timeout_ms / 2),
            ),
            stall_after: Duration::from_millis(genesis.timeout_cap_ms.saturating_mul(2)),
            oracle_poll: Duration::from_millis(genesis.oracle_poll_ms),
        },
        data_dir: cfg.data_dir(home),
        p2p_listen: listen,
        bootstrap,
        api_listen,
        metrics_listen: Some(metrics_listen),
        mempool: MempoolConfig {
            max_tx_bytes: usize::try_from(genesis.max_tx_bytes).unwrap_or(usize::MAX),
            max_batch_bytes: usize::try_from(genesis.max_batch_bytes).unwrap_or(usize::MAX),
            max_pending_txs: cfg.mempool.max_pending_txs,
            max_pending_bytes: cfg.mempool.max_pending_bytes,
            batch_timeout: Duration::from_millis(cfg.mempool.batch_timeout_ms),
            ..MempoolConfig::default()
        },
        retain_heights: cfg.storage.retain_heights,
        max_disk_bytes: cfg.storage.max_disk_bytes,
        batch_intake_bytes_per_sec: cfg.mempool.peer_batch_bytes_per_sec,
        serve: cfg.serve.to_config(),
        registration,
        tap,
        chain: None,
    };
    let real: Arc<dyn ChainView> = Arc::new(OracleView::new(oracle));
    params.chain = Some(match &hooks.chain {
        Some(wrap) => wrap(&params.driver, real),
        None => real,
    });
    let mut node = start(params).await?;
    tracing::info!(
        api = %node.api_addr,
        peer_id = %node.peer_id,
        listen = ?node.listen_addrs,
        "dstack-node started"
    );
    tokio::select! {
        _ = shutdown_signal() => {
            tracing::info!("signal received; stopping");
            node.stop().await?;
        }
        r = node.wait() => r?,
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn parse_addrs(key: &str, v: &[String]) -> Result<Vec<libp2p::Multiaddr>, LaunchError> {
    v.iter()
        .map(|s| {
            s.parse()
                .map_err(|e| LaunchError::Invalid(format!("{key}: {s:?}: {e}")))
        })
        .collect()
}

/// The `/registration` provider: payloads for the configured owner only.
fn registration_fn(
    cfg: &Config,
    cluster: Cluster,
    node_key: NodeKey,
) -> Result<Option<RegistrationFn>, LaunchError> {
    if cfg.node.owner_address.is_empty() {
        return Ok(None);
    }
    let owner: Address = cfg
        .node
        .owner_address
        .parse()
        .map_err(|_| LaunchError::Invalid("node.owner_address is not an address".into()))?;
    let url = cfg.p2p.external.first().cloned().unwrap_or_default();
    let cluster = Arc::new(cluster);
    let node_key = Arc::new(node_key);
    Ok(Some(Arc::new(move |token: String| {
        let cluster = cluster.clone();
        let node_key = node_key.clone();
        let url = url.clone();
        Box::pin(async move {
            let token_id: U256 = token
                .parse()
                .map_err(|_| format!("token_id {token:?} is not a number"))?;
            if url.is_empty() {
                return Err("set p2p.external: the registration needs a connection URL".into());
            }
            cluster
                .registration_for(&node_key, token_id, owner, &url)
                .await
                .map(|p| p.to_json())
                .map_err(|e| e.to_string())
        })
    })))
}
