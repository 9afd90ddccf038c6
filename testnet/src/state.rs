//! `<dir>/state.json`: everything a run started and configured, written after every process it
//! starts (so `testnet down` can stop a run that failed half-way) and removed by `down`.

use std::path::{Path, PathBuf};

use alloy::primitives::Address;
use serde::{Deserialize, Serialize};

use crate::error::{Error, io};
use crate::procs::Proc;

/// The file name inside the run directory.
pub const STATE_FILE: &str = "state.json";
/// The format version written.
pub const STATE_VERSION: u32 = 1;

/// How far a run got.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Starting anvil, deploying, minting, starting the simulated TEEs, registering.
    Chain,
    /// `genesis.json` is written; nodes are not started (the node binary cannot start clusters).
    Genesis,
    /// Node processes are starting.
    Nodes,
    /// Every node has committed at least one block.
    Running,
}

/// The chain side of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainInfo {
    /// anvil's JSON-RPC URL.
    pub rpc_url: String,
    /// Its chain id.
    pub chain_id: u64,
    /// anvil's block time (seconds).
    pub block_time: u64,
    /// The `DstackMembershipNFT` contract (zero until deployed).
    pub contract: Address,
    /// The deployer and contract owner (anvil's first dev account).
    pub deployer: Address,
    /// The KMS root every simulated TEE signs with (its address).
    pub kms_root: Address,
    /// The file holding the KMS root secret key (hex, mode 0600).
    pub kms_root_key_file: PathBuf,
    /// The allowed app id (0x hex, 20 bytes).
    pub app_id: String,
    /// The contract's purpose string.
    pub purpose: String,
    /// The cluster's genesis file, once written.
    pub genesis_file: Option<PathBuf>,
    /// Its genesis chain block number, once chosen.
    pub genesis_block: Option<u64>,
    /// The RPC URL the nodes use (differs from `rpc_url` when they run in other network
    /// namespaces); `None`: `rpc_url`.
    #[serde(default)]
    pub node_rpc_url: Option<String>,
}

impl ChainInfo {
    /// The RPC URL the nodes use.
    pub fn node_rpc(&self) -> &str {
        self.node_rpc_url.as_deref().unwrap_or(&self.rpc_url)
    }
}

/// An account a run created that holds tokens but runs no node (`testnet transfer --to new`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    /// Its address.
    pub address: Address,
    /// Its private key (0x hex): a fresh development key on this local chain only.
    pub key: String,
}

/// One validator node of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEntry {
    /// `node0`, `node1`, ...
    pub name: String,
    /// Its voting power (tokens authorizing it).
    pub power: u64,
    /// The token ids authorizing it.
    pub tokens: Vec<u64>,
    /// The owner account holding those tokens.
    pub owner: Address,
    /// The owner's private key (0x hex): a fresh development key on this local chain only.
    pub owner_key: String,
    /// The simulated TEE's instance id (hex).
    pub instance_id: String,
    /// The node's address (its dstack-derived key), once registered.
    pub address: Option<Address>,
    /// The chain blocks its registrations were mined in.
    pub registered_in_blocks: Vec<u64>,
    /// The node's home directory (`<dir>/nodes/<name>`: config, genesis, data, logs).
    pub home: PathBuf,
    /// The simulated TEE's Unix socket.
    pub socket: PathBuf,
    /// The libp2p multiaddr it listens on and registered as connection URL.
    pub p2p_url: String,
    /// Base URL of its HTTP API.
    pub http_url: String,
    /// URL of its Prometheus metrics.
    pub metrics_url: String,
    /// The simulated TEE process.
    pub simulator: Option<Proc>,
    /// Whether `testnet add-node` (or a chaos run) added it after the genesis file.
    #[serde(default)]
    pub added: bool,
    /// The `dstack-node` process.
    pub process: Option<Proc>,
    /// The network namespace it runs in (chaos runs), `None` on the host's.
    #[serde(default)]
    pub netns: Option<String>,
    /// The node program it runs (a test-only one for a chaos run's byzantine node).
    #[serde(default)]
    pub program: Option<PathBuf>,
}

/// The whole state file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Format version.
    pub version: u32,
    /// The run directory.
    pub dir: PathBuf,
    /// How far the run got.
    pub phase: Phase,
    /// Why nodes were not started, when they were not.
    pub note: Option<String>,
    /// anvil.
    pub anvil: Option<Proc>,
    /// The chain and contract.
    pub chain: Option<ChainInfo>,
    /// The nodes.
    pub nodes: Vec<NodeEntry>,
    /// Funded accounts without a node (recipients of `testnet transfer --to new`).
    #[serde(default)]
    pub accounts: Vec<Account>,
}

impl State {
    /// An empty state for `dir`.
    pub fn new(dir: &Path) -> Self {
        Self {
            version: STATE_VERSION,
            dir: dir.to_path_buf(),
            phase: Phase::Chain,
            note: None,
            anvil: None,
            chain: None,
            nodes: Vec::new(),
            accounts: Vec::new(),
        }
    }

    /// The state file of `dir`.
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(STATE_FILE)
    }

    /// Loads `dir`'s state, `None` when there is none.
    pub fn load(dir: &Path) -> Result<Option<Self>, Error> {
        let path = Self::path(dir);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io(format!("reading {}", path.display()))(e)),
        };
        let state: State = serde_json::from_str(&text)
            .map_err(|e| Error::State(format!("{}: {e}", path.display())))?;
        if state.version != STATE_VERSION {
            return Err(Error::State(format!(
                "{}: version {} is not {STATE_VERSION}",
                path.display(),
                state.version
            )));
        }
        Ok(Some(state))
    }

    /// Writes the state atomically (temporary file, then rename).
    pub fn save(&self) -> Result<(), Error> {
        let path = Self::path(&self.dir);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::State(format!("encoding: {e}")))?;
        std::fs::write(&tmp, text + "\n").map_err(io(format!("writing {}", tmp.display())))?;
        std::fs::rename(&tmp, &path).map_err(io(format!("writing {}", path.display())))
    }

    /// The private key (0x hex) of `address` when the run created that account: a node's
    /// owner or an account of [`State::accounts`].
    pub fn key_of(&self, address: Address) -> Option<&str> {
        self.nodes
            .iter()
            .filter(|n| n.owner == address && !n.owner_key.is_empty())
            .map(|n| n.owner_key.as_str())
            .chain(
                self.accounts
                    .iter()
                    .filter(|a| a.address == address)
                    .map(|a| a.key.as_str()),
            )
            .next()
    }

    /// Every recorded process, in the order `down` stops them: nodes, TEEs, then anvil.
    pub fn processes(&self) -> Vec<&Proc> {
        let mut out: Vec<&Proc> = self
            .nodes
            .iter()
            .filter_map(|n| n.process.as_ref())
            .collect();
        out.extend(self.nodes.iter().filter_map(|n| n.simulator.as_ref()));
        out.extend(self.anvil.iter());
        out
    }
}

/// An exclusive lock on a run directory's state (`<dir>/state.lock`), held while one command
/// reads, changes and writes `state.json` (so two `add-node`s cannot both take `node4`).
#[derive(Debug)]
pub struct StateLock {
    _file: std::fs::File,
}

impl StateLock {
    /// Waits for the lock of `dir`.
    pub fn acquire(dir: &Path) -> Result<Self, Error> {
        let path = dir.join("state.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(format!("opening {}", path.display())))?;
        file.lock()
            .map_err(io(format!("locking {}", path.display())))?;
        Ok(Self { _file: file })
    }
}
