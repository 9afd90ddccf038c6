//! Node settings: `<home>/config.toml` (written, commented, by `dstack-node init`), overridden by
//! environment variables and command-line `--set` flags.
//!
//! Cluster parameters (timeouts, batch and block limits, pin rule) are not here: every honest
//! node must share them, so they live in the cluster's `genesis.json`. This file holds what is
//! local to one node: where the chain RPC and dstack are, addresses to listen on, logging.
//!
//! Every key `section.key` can be overridden by the environment variable
//! `DSTACK_NODE_<SECTION>_<KEY>` (upper case; lists are comma-separated) and by
//! `--set section.key=value`; command-line wins over environment, which wins over the file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod render;

pub use render::render;

/// The file name of the node settings inside the home directory.
pub const CONFIG_FILE: &str = "config.toml";
/// The default file name of the cluster's genesis inside the home directory.
pub const GENESIS_FILE: &str = "genesis.json";
/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "DSTACK_NODE_";

/// Chain access.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// JSON-RPC URL of the chain that holds the membership contract: the one endpoint when
    /// `rpc_urls` is empty.
    pub rpc_url: String,
    /// Several independent JSON-RPC endpoints of that chain (empty: `rpc_url` alone). One
    /// provider can lie or serve another chain; the validator-set oracle reads every endpoint
    /// and uses a reading only when `rpc_quorum` of them agree.
    #[serde(default)]
    pub rpc_urls: Vec<String>,
    /// How many endpoints must give the same reading; 0: all of them.
    #[serde(default)]
    pub rpc_quorum: usize,
}

impl ChainConfig {
    /// The endpoints read, in order: `rpc_urls`, or `rpc_url` alone when that list is empty.
    /// The first also serves start-up reads (purpose, KMS root) and `/registration`.
    pub fn endpoints(&self) -> Vec<String> {
        if self.rpc_urls.is_empty() {
            vec![self.rpc_url.clone()]
        } else {
            self.rpc_urls.clone()
        }
    }

    /// How many endpoints must agree (`rpc_quorum`, 0 meaning all).
    pub fn quorum(&self) -> usize {
        match self.rpc_quorum {
            0 => self.endpoints().len(),
            q => q,
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key: &str, detail: String| ConfigError::Invalid {
            key: key.into(),
            detail,
        };
        let endpoints = self.endpoints();
        if !self.rpc_urls.is_empty()
            && !self.rpc_url.is_empty()
            && !self.rpc_urls.contains(&self.rpc_url)
        {
            return Err(invalid(
                "chain.rpc_url",
                format!(
                    "{:?} is not among chain.rpc_urls: list every endpoint in rpc_urls and set \
                     rpc_url to \"\" or to one of them",
                    self.rpc_url
                ),
            ));
        }
        for (i, url) in endpoints.iter().enumerate() {
            if url.is_empty() {
                return Err(invalid("chain.rpc_url", "no RPC endpoint is set".into()));
            }
            if endpoints[..i].contains(url) {
                return Err(invalid(
                    "chain.rpc_urls",
                    format!("{url:?} is listed twice (it would count twice toward the quorum)"),
                ));
            }
        }
        if self.quorum() > endpoints.len() {
            return Err(invalid(
                "chain.rpc_quorum",
                format!(
                    "{} is above the number of endpoints, {}",
                    self.rpc_quorum,
                    endpoints.len()
                ),
            ));
        }
        Ok(())
    }
}

/// Where the cluster is defined.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// Path of the cluster's `genesis.json` (relative paths are relative to the home directory).
    pub genesis: String,
}

/// The dstack guest agent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DstackConfig {
    /// Unix socket path or `http://` URL of the guest agent (or the simulator).
    pub endpoint: String,
    /// The pinned KMS root (0x address or 33-byte compressed key hex); empty: the contract's.
    pub kms_root: String,
}

/// The NFT owner this node registers for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The owner address `GET /registration` serves payloads for (empty: endpoint disabled).
    pub owner_address: String,
    /// Where the node keeps its database (relative paths are relative to the home directory).
    pub data_dir: String,
}

/// libp2p.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P2pConfig {
    /// Multiaddrs to listen on.
    pub listen: Vec<String>,
    /// Multiaddrs to announce (what you register as connection URL).
    pub external: Vec<String>,
    /// Extra peers to dial at start, besides the validators' connection URLs.
    pub bootstrap: Vec<String>,
}

/// HTTP endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Listen address of the JSON API.
    pub listen: String,
    /// Listen address of `/metrics` (may equal `listen`: then the API serves it too).
    pub metrics_listen: String,
}

/// Logging.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: String,
    /// A tracing filter, like `info` or `node=debug,info`.
    pub level: String,
}

/// Node-local mempool bounds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MempoolSettings {
    /// Local transactions pending at most (more: HTTP 503).
    pub max_pending_txs: usize,
    /// Bytes of local pending transactions at most.
    pub max_pending_bytes: usize,
    /// A non-empty batch is sealed this many milliseconds after its first transaction (sooner
    /// when full). Longer waits make fewer, larger batches: less work per transaction on every
    /// node, more latency at low load.
    #[serde(default = "default_batch_timeout_ms")]
    pub batch_timeout_ms: u64,
    /// A leader with no transactions to propose and none waiting to commit proposes its empty
    /// block this many milliseconds late (at once when transactions arrive meanwhile), so an
    /// idle cluster runs a few rounds a second instead of as many as its CPU and disks allow.
    /// 0 proposes at once. Capped at half the round timeout, so pacing never times a round out.
    #[serde(default = "default_empty_block_interval_ms")]
    pub empty_block_interval_ms: u64,
    /// Bytes per second of batches this node reads from all members' batch streams together,
    /// shared among them by voting power (a member of power p of P may push p/P of it; beyond
    /// that its stream is read more slowly). It bounds what a low-power member can make every
    /// node hash and store. 0: unlimited.
    #[serde(default = "default_peer_batch_bytes_per_sec")]
    pub peer_batch_bytes_per_sec: u64,
}

/// How much history the node keeps on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageSettings {
    /// Committed heights kept (blocks, proofs, transaction lists, batches); older ones are
    /// pruned in the background, except the blocks that ended an epoch. Enough to serve block
    /// sync to a node that lags this far. 0 keeps everything (an archive node).
    #[serde(default = "default_retain_heights")]
    pub retain_heights: u64,
    /// Bytes the data directory may take; above it the node refuses new transactions (HTTP
    /// 503) and peers' batches until pruning frees space, and keeps committing. 0: no quota.
    #[serde(default)]
    pub max_disk_bytes: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        Self {
            retain_heights: default_retain_heights(),
            max_disk_bytes: 0,
        }
    }
}

fn default_retain_heights() -> u64 {
    100_000
}

/// The longest empty-block interval a config may set.
pub const MAX_EMPTY_BLOCK_INTERVAL_MS: u64 = 10_000;

fn default_empty_block_interval_ms() -> u64 {
    100
}

/// The longest batch timeout a config may set: beyond it a lone transaction would wait longer
/// than any client reasonably waits for its acknowledgement.
pub const MAX_BATCH_TIMEOUT_MS: u64 = 10_000;

fn default_batch_timeout_ms() -> u64 {
    50
}

fn default_peer_batch_bytes_per_sec() -> u64 {
    64 << 20
}

/// Budgets for serving other nodes' batch, block and sync requests (see [`crate::serve`]): per
/// member, per non-member, and for all non-members together.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeSettings {
    /// Threads reading the store to answer requests; non-members may occupy all but one.
    pub workers: usize,
    /// Requests per second each member may make (refill rate).
    pub member_requests_per_sec: u32,
    /// Requests a member may make at once after a quiet spell.
    pub member_request_burst: u32,
    /// A member's requests queued or being answered, at most.
    pub member_in_flight: u32,
    /// Response bytes per second to each member.
    pub member_bytes_per_sec: u64,
    /// Requests per second each non-member may make.
    pub non_member_requests_per_sec: u32,
    /// Requests a non-member may make at once after a quiet spell.
    pub non_member_request_burst: u32,
    /// A non-member's requests queued or being answered, at most.
    pub non_member_in_flight: u32,
    /// Response bytes per second to each non-member.
    pub non_member_bytes_per_sec: u64,
    /// Requests per second of all non-members together.
    pub non_member_pool_requests_per_sec: u32,
    /// Requests all non-members together may make at once.
    pub non_member_pool_request_burst: u32,
    /// Non-members' requests queued or being answered, at most, all together.
    pub non_member_pool_in_flight: u32,
    /// Response bytes per second to all non-members together.
    pub non_member_pool_bytes_per_sec: u64,
    /// Non-member peers whose budgets are tracked at most (idle ones are forgotten first).
    pub max_non_member_peers: usize,
}

/// The most request-serving threads a config may set.
pub const MAX_SERVE_WORKERS: usize = 64;

const MIB: u64 = 1024 * 1024;

impl Default for ServeSettings {
    /// Members ask for what consensus needs at full speed (a lagging member syncs ~16 MiB
    /// pages); each non-member gets a trickle, and all non-members together a fixed share,
    /// however many PeerIds they use.
    fn default() -> Self {
        Self {
            workers: 2,
            member_requests_per_sec: 200,
            member_request_burst: 400,
            member_in_flight: 32,
            member_bytes_per_sec: 128 * MIB,
            non_member_requests_per_sec: 4,
            non_member_request_burst: 8,
            non_member_in_flight: 2,
            non_member_bytes_per_sec: 4 * MIB,
            non_member_pool_requests_per_sec: 40,
            non_member_pool_request_burst: 80,
            non_member_pool_in_flight: 8,
            non_member_pool_bytes_per_sec: 16 * MIB,
            max_non_member_peers: 4096,
        }
    }
}

impl ServeSettings {
    /// Every bound must let something through: a zero would refuse that class for good.
    fn validate(&self) -> Result<(), ConfigError> {
        let counts = [
            (
                "member_requests_per_sec",
                u64::from(self.member_requests_per_sec),
            ),
            ("member_request_burst", u64::from(self.member_request_burst)),
            ("member_in_flight", u64::from(self.member_in_flight)),
            ("member_bytes_per_sec", self.member_bytes_per_sec),
            (
                "non_member_requests_per_sec",
                u64::from(self.non_member_requests_per_sec),
            ),
            (
                "non_member_request_burst",
                u64::from(self.non_member_request_burst),
            ),
            ("non_member_in_flight", u64::from(self.non_member_in_flight)),
            ("non_member_bytes_per_sec", self.non_member_bytes_per_sec),
            (
                "non_member_pool_requests_per_sec",
                u64::from(self.non_member_pool_requests_per_sec),
            ),
            (
                "non_member_pool_request_burst",
                u64::from(self.non_member_pool_request_burst),
            ),
            (
                "non_member_pool_in_flight",
                u64::from(self.non_member_pool_in_flight),
            ),
            (
                "non_member_pool_bytes_per_sec",
                self.non_member_pool_bytes_per_sec,
            ),
            ("max_non_member_peers", self.max_non_member_peers as u64),
        ];
        if let Some((key, _)) = counts.iter().find(|(_, v)| *v == 0) {
            return Err(ConfigError::Invalid {
                key: format!("serve.{key}"),
                detail: "0 would refuse every such request; use at least 1".into(),
            });
        }
        if !(1..=MAX_SERVE_WORKERS).contains(&self.workers) {
            return Err(ConfigError::Invalid {
                key: "serve.workers".into(),
                detail: format!("{} is outside 1..={MAX_SERVE_WORKERS}", self.workers),
            });
        }
        Ok(())
    }
}

/// The whole `config.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Chain access.
    pub chain: ChainConfig,
    /// The cluster definition.
    pub cluster: ClusterConfig,
    /// The dstack guest agent.
    pub dstack: DstackConfig,
    /// This node.
    pub node: NodeConfig,
    /// libp2p.
    pub p2p: P2pConfig,
    /// HTTP.
    pub api: ApiConfig,
    /// Logging.
    pub log: LogConfig,
    /// Mempool bounds.
    pub mempool: MempoolSettings,
    /// Retention and disk quota.
    #[serde(default)]
    pub storage: StorageSettings,
    /// Request-serving budgets (an older file without the section gets the defaults).
    #[serde(default)]
    pub serve: ServeSettings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            chain: ChainConfig {
                rpc_url: "http://127.0.0.1:8545".into(),
                rpc_urls: Vec::new(),
                rpc_quorum: 0,
            },
            cluster: ClusterConfig {
                genesis: GENESIS_FILE.into(),
            },
            dstack: DstackConfig {
                endpoint: "/var/run/dstack.sock".into(),
                kms_root: String::new(),
            },
            node: NodeConfig {
                owner_address: String::new(),
                data_dir: "data".into(),
            },
            p2p: P2pConfig {
                listen: vec!["/ip4/0.0.0.0/tcp/26656".into()],
                external: Vec::new(),
                bootstrap: Vec::new(),
            },
            api: ApiConfig {
                listen: "127.0.0.1:26657".into(),
                metrics_listen: "127.0.0.1:26660".into(),
            },
            log: LogConfig {
                format: "human".into(),
                level: "info".into(),
            },
            mempool: MempoolSettings {
                max_pending_txs: 50_000,
                max_pending_bytes: 64 * 1024 * 1024,
                batch_timeout_ms: default_batch_timeout_ms(),
                empty_block_interval_ms: default_empty_block_interval_ms(),
                peer_batch_bytes_per_sec: default_peer_batch_bytes_per_sec(),
            },
            storage: StorageSettings::default(),
            serve: ServeSettings::default(),
        }
    }
}

/// Why the settings could not be loaded or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is not valid TOML of this layout.
    #[error("{path}: {detail}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// An override names no known key or has a value of the wrong type.
    #[error("override {key}: {detail}")]
    Override {
        /// The key (`section.key`).
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// `init` would overwrite an existing file.
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    /// A setting has an invalid value.
    #[error("invalid setting {key}: {detail}")]
    Invalid {
        /// The key.
        key: String,
        /// What is wrong.
        detail: String,
    },
}

/// What `init` did.
#[derive(Debug)]
pub struct InitOutcome {
    /// The written `config.toml`.
    pub config: PathBuf,
    /// The genesis file copied beside it, if `--genesis` was given.
    pub genesis: Option<PathBuf>,
}

/// `dstack-node init --home DIR [--genesis FILE]`: writes a commented `config.toml` (and copies
/// the genesis file beside it). Without a genesis file the config targets a local anvil at
/// 127.0.0.1:8545 and expects `genesis.json` beside it. Never overwrites an existing file.
pub fn init(home: &Path, genesis: Option<&Path>) -> Result<InitOutcome, ConfigError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ConfigError::Io { path, source }
    };
    std::fs::create_dir_all(home).map_err(io(home))?;
    let config = home.join(CONFIG_FILE);
    if config.exists() {
        return Err(ConfigError::Exists(config));
    }
    let mut copied = None;
    if let Some(src) = genesis {
        let dst = home.join(GENESIS_FILE);
        if dst.exists() && std::fs::canonicalize(&dst).ok() != std::fs::canonicalize(src).ok() {
            return Err(ConfigError::Exists(dst));
        }
        if !dst.exists() {
            std::fs::copy(src, &dst).map_err(io(src))?;
        }
        copied = Some(dst);
    }
    std::fs::write(&config, render(&Config::default())).map_err(io(&config))?;
    Ok(InitOutcome {
        config,
        genesis: copied,
    })
}

impl Config {
    /// Loads `<home>/config.toml`, then applies environment overrides from `env` (pass
    /// `std::env::vars()`) and the `--set` overrides, in that order.
    pub fn load(
        home: &Path,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Self, ConfigError> {
        let path = home.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Io {
            path: path.clone(),
            source,
        })?;
        Self::parse(&path, &text, env, sets)
    }

    /// Parses the text of a `config.toml` (`path` names it in errors), then applies the
    /// environment and `--set` overrides like [`Config::load`]: the whole of loading except the
    /// file read, so it can be tested and fuzzed on any text.
    pub fn parse(
        path: &Path,
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
        sets: &[String],
    ) -> Result<Self, ConfigError> {
        let path = path.to_path_buf();
        let mut table: toml::Table = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.clone(),
            detail: e.to_string(),
        })?;
        apply_env(&mut table, env)?;
        for set in sets {
            let Some((key, value)) = set.split_once('=') else {
                return Err(ConfigError::Override {
                    key: set.clone(),
                    detail: "expected section.key=value".into(),
                });
            };
            apply_override(&mut table, key.trim(), value.trim())?;
        }
        let cfg: Config = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Parse {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that TOML types cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.chain.validate()?;
        if !matches!(self.log.format.as_str(), "human" | "json") {
            return Err(ConfigError::Invalid {
                key: "log.format".into(),
                detail: format!("{:?} is neither \"human\" nor \"json\"", self.log.format),
            });
        }
        for (key, addr) in [
            ("api.listen", &self.api.listen),
            ("api.metrics_listen", &self.api.metrics_listen),
        ] {
            if addr.parse::<std::net::SocketAddr>().is_err() {
                return Err(ConfigError::Invalid {
                    key: key.into(),
                    detail: format!("{addr:?} is not an ip:port address"),
                });
            }
        }
        if !(1..=MAX_BATCH_TIMEOUT_MS).contains(&self.mempool.batch_timeout_ms) {
            return Err(ConfigError::Invalid {
                key: "mempool.batch_timeout_ms".into(),
                detail: format!(
                    "{} is outside 1..={MAX_BATCH_TIMEOUT_MS}",
                    self.mempool.batch_timeout_ms
                ),
            });
        }
        if self.mempool.empty_block_interval_ms > MAX_EMPTY_BLOCK_INTERVAL_MS {
            return Err(ConfigError::Invalid {
                key: "mempool.empty_block_interval_ms".into(),
                detail: format!(
                    "{} is above {MAX_EMPTY_BLOCK_INTERVAL_MS}",
                    self.mempool.empty_block_interval_ms
                ),
            });
        }
        self.serve.validate()
    }

    /// The genesis path, resolved against the home directory.
    pub fn genesis_path(&self, home: &Path) -> PathBuf {
        home.join(&self.cluster.genesis)
    }

    /// The data directory, resolved against the home directory.
    pub fn data_dir(&self, home: &Path) -> PathBuf {
        home.join(&self.node.data_dir)
    }
}

fn apply_env(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<(), ConfigError> {
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    let env: std::collections::HashMap<String, String> = env.into_iter().collect();
    for (section, keys) in &defaults {
        let Some(keys) = keys.as_table() else {
            continue;
        };
        for key in keys.keys() {
            let var = format!("{ENV_PREFIX}{}_{}", section, key).to_uppercase();
            if let Some(value) = env.get(&var) {
                apply_override(table, &format!("{section}.{key}"), value)?;
            }
        }
    }
    Ok(())
}

/// Sets `section.key` to `value`, typed like the default of that key.
pub fn apply_override(table: &mut toml::Table, key: &str, value: &str) -> Result<(), ConfigError> {
    let err = |detail: String| ConfigError::Override {
        key: key.to_owned(),
        detail,
    };
    let defaults = toml::Table::try_from(Config::default()).unwrap_or_default();
    let Some((section, name)) = key.split_once('.') else {
        return Err(err("expected section.key".into()));
    };
    let Some(default) = defaults
        .get(section)
        .and_then(|s| s.as_table())
        .and_then(|s| s.get(name))
    else {
        return Err(err("no such setting".into()));
    };
    let typed = match default {
        toml::Value::String(_) => toml::Value::String(value.to_owned()),
        toml::Value::Integer(_) => toml::Value::Integer(
            value
                .parse()
                .map_err(|_| err(format!("{value:?} is not an integer")))?,
        ),
        toml::Value::Boolean(_) => toml::Value::Boolean(
            value
                .parse()
                .map_err(|_| err(format!("{value:?} is not true or false")))?,
        ),
        toml::Value::Array(_) => toml::Value::Array(
            value
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| toml::Value::String(s.to_owned()))
                .collect(),
        ),
        _ => return Err(err("unsupported type".into())),
    };
    let entry = table
        .entry(section.to_owned())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(section_table) = entry.as_table_mut() else {
        return Err(err(format!("[{section}] is not a table")));
    };
    section_table.insert(name.to_owned(), typed);
    Ok(())
}

#[cfg(test)]
mod tests;
