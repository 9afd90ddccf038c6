//! `testnet up` and `testnet down`: the orchestration of a run.

use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use alloy::primitives::{Address, B256, U256};
use k256::ecdsa::SigningKey;
use membership::dstack::DstackClient;
use membership::genesis::Genesis;
use membership::identity::address_of;
use membership::sdk::Cluster;
use rand::RngCore;

use crate::chain;
use crate::error::{Error, io};
use crate::nodecfg;
use crate::paths;
use crate::procs::{self, Spawn};
use crate::state::{ChainInfo, NodeEntry, Phase, State};
use crate::status::Client;

mod down;
mod wait;

pub use down::{down, down_state};
pub use wait::{wait_commits, wait_ready, wait_tee};

/// The purpose string the run's contract is configured with (the contract's default).
pub const PURPOSE: &str = "dstack-nft-cluster";
/// Longest Unix socket path Linux accepts (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// What `up` is asked to do.
#[derive(Clone, Debug)]
pub struct UpOptions {
    /// The run directory.
    pub dir: PathBuf,
    /// Voting power of each validator (one entry per validator).
    pub powers: Vec<u64>,
    /// anvil's block time (seconds, ≥ 1).
    pub block_time: u64,
    /// anvil's port (`None`: a free one).
    pub anvil_port: Option<u16>,
    /// How long to wait for every node's first commit.
    pub commit_wait: Duration,
    /// The nodes' tracing filter.
    pub node_log_level: String,
    /// Where the processes live on the network (`None`: everything on 127.0.0.1 with free
    /// ports, in the current network namespace).
    pub net: Option<NetLayout>,
    /// Nodes that run another program than `dstack-node` (by index; the chaos suite's
    /// test-only equivocator). `dstack-node init` still prepares their home.
    pub node_programs: Vec<(usize, PathBuf)>,
}

/// A chaos run's network: anvil on an address of the current namespace, every node in its own
/// network namespace with its own address (fixed ports, since addresses differ).
#[derive(Clone, Debug)]
pub struct NetLayout {
    /// The address anvil listens on (reachable from the node namespaces).
    pub anvil_ip: String,
    /// Per node, in order: its namespace and address.
    pub nodes: Vec<NodeNet>,
}

/// One node's network namespace and address.
#[derive(Clone, Debug)]
pub struct NodeNet {
    /// The namespace name (`ip netns`).
    pub netns: String,
    /// The node's IPv4 address in it.
    pub ip: String,
}

/// Where one node listens: its address, namespace and ports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodePlace {
    /// Its IPv4 address.
    pub ip: String,
    /// Its network namespace (`None`: the current one).
    pub netns: Option<String>,
    /// libp2p port.
    pub p2p: u16,
    /// HTTP API port.
    pub api: u16,
    /// Metrics port.
    pub metrics: u16,
}

impl NodePlace {
    /// On 127.0.0.1 with the given p2p, API and metrics ports.
    pub fn loopback([p2p, api, metrics]: [u16; 3]) -> Self {
        Self {
            ip: "127.0.0.1".into(),
            netns: None,
            p2p,
            api,
            metrics,
        }
    }

    /// In its own namespace with the fixed ports.
    pub fn netns(n: &NodeNet) -> Self {
        Self {
            ip: n.ip.clone(),
            netns: Some(n.netns.clone()),
            p2p: NETNS_P2P_PORT,
            api: NETNS_API_PORT,
            metrics: NETNS_METRICS_PORT,
        }
    }

    /// On 127.0.0.1 with three free ports.
    pub fn free_loopback() -> Result<Self, Error> {
        let p = procs::free_ports(3)?;
        Ok(Self::loopback([p[0], p[1], p[2]]))
    }

    /// The libp2p multiaddr the node listens on and registers as its connection URL.
    pub fn p2p_url(&self) -> String {
        format!("/ip4/{}/tcp/{}", self.ip, self.p2p)
    }
}

/// The libp2p port of a node in its own namespace.
pub const NETNS_P2P_PORT: u16 = 26656;
/// The HTTP API port of a node in its own namespace.
pub const NETNS_API_PORT: u16 = 26657;
/// The metrics port of a node in its own namespace.
pub const NETNS_METRICS_PORT: u16 = 26660;

impl UpOptions {
    /// Defaults for everything but the directory and powers (1 s chain blocks, free ports,
    /// 60 s commit wait, `info` logs, loopback).
    pub fn new(dir: PathBuf, powers: Vec<u64>) -> Self {
        Self {
            dir,
            powers,
            block_time: 1,
            anvil_port: None,
            commit_wait: Duration::from_secs(60),
            node_log_level: "info".into(),
            net: None,
            node_programs: Vec::new(),
        }
    }
}

impl UpOptions {
    /// Validates the command-line combination `--validators` / `--powers`: powers default to
    /// 1,1,2,3 for four validators and to 1 each otherwise.
    pub fn powers_from(
        validators: Option<usize>,
        powers: Option<Vec<u64>>,
    ) -> Result<Vec<u64>, Error> {
        let powers = match (validators, powers) {
            (Some(n), Some(p)) if p.len() != n => {
                return Err(Error::Invalid(format!(
                    "--validators {n} but --powers lists {} values",
                    p.len()
                )));
            }
            (_, Some(p)) => p,
            (None, None) | (Some(4), None) => vec![1, 1, 2, 3],
            (Some(n), None) => vec![1; n],
        };
        if powers.is_empty() {
            return Err(Error::Invalid("at least one validator is needed".into()));
        }
        if powers.len() > 50 {
            return Err(Error::Invalid(
                "at most 50 validators on one machine".into(),
            ));
        }
        if powers.iter().any(|&p| p == 0 || p > 100) {
            return Err(Error::Invalid(
                "every power must be between 1 and 100".into(),
            ));
        }
        Ok(powers)
    }
}

/// How `up` ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every node committed at least one block.
    Running,
    /// The chain, the TEEs and `genesis.json` are ready, but the node binary cannot start
    /// clusters yet (the reason says what is missing).
    ChainOnly(String),
}

/// A run this process started: its state and the handles of its children (reaped on stop).
#[derive(Debug)]
pub struct Testnet {
    /// The recorded state (also in `<dir>/state.json`).
    pub state: State,
    children: Vec<Child>,
}

/// The environment of a node process: its log filter and, when many nodes share this machine's
/// cores, one async worker thread each (unless the user set `TOKIO_WORKER_THREADS`).
fn node_env(log_level: &str, nodes: usize) -> Vec<(String, String)> {
    let mut env = vec![("RUST_LOG".into(), log_level.to_string())];
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if std::env::var_os("TOKIO_WORKER_THREADS").is_none()
        && let Some(threads) = worker_threads(nodes, cores)
    {
        env.push(("TOKIO_WORKER_THREADS".into(), threads.to_string()));
    }
    env
}

/// Async worker threads per node when `nodes` share `cores`, or `None` for the runtime's default
/// (one per core). Each node's runtime starts a worker per core; with more than two nodes per
/// core those workers only steal from and wake each other (at 16 nodes on 2 cores a single
/// worker each committed ~13 % more transactions per second at saturation; at 4 nodes the
/// default was better).
pub fn worker_threads(nodes: usize, cores: usize) -> Option<usize> {
    (nodes > 2 * cores.max(1)).then_some(1)
}

impl Testnet {
    /// Starts (or restarts) node `i` from its home with the program and namespace recorded in
    /// the state; its log is appended. The caller saves the state.
    pub fn start_node(&mut self, i: usize, log_level: &str) -> Result<(), Error> {
        self.reap();
        let node = self.node(i)?;
        let program = match &node.program {
            Some(p) => p.clone(),
            None => paths::node_bin()?,
        };
        let (child, proc) = procs::spawn(Spawn {
            name: &node.name,
            program: &program,
            args: vec![
                "start".into(),
                "--home".into(),
                node.home.display().to_string(),
            ],
            env: node_env(log_level, self.state.nodes.len()),
            clear_env_prefixes: &["DSTACK_NODE_", "DSTACK_SIMULATOR_ENDPOINT"],
            log: node.home.join("node.log"),
            netns: node.netns.as_deref(),
        })?;
        self.children.push(child);
        self.state.nodes[i].process = Some(proc);
        Ok(())
    }

    /// A copy of node `i`'s entry.
    pub fn node(&self, i: usize) -> Result<NodeEntry, Error> {
        self.state
            .nodes
            .get(i)
            .cloned()
            .ok_or_else(|| Error::Invalid(format!("no node {i}")))
    }

    /// A run started by another process (`testnet up --detach`), from its recorded state: its
    /// processes are not this process's children.
    pub fn attach(state: State) -> Self {
        Self {
            state,
            children: Vec::new(),
        }
    }

    /// Records a new node slot `node<i>` with `power`: starts its simulated TEE (the run's KMS
    /// root and app id, a fresh instance id) at `place`. No token, no registration, no node
    /// process yet. Returns its index. The caller saves the state.
    pub fn add_slot(
        &mut self,
        power: u64,
        sim_bin: &Path,
        place: &NodePlace,
        program: Option<PathBuf>,
    ) -> Result<usize, Error> {
        let ch = self
            .state
            .chain
            .as_ref()
            .ok_or_else(|| Error::State("no chain recorded".into()))?;
        let kms_file = ch.kms_root_key_file.clone();
        let app_id = ch.app_id.trim_start_matches("0x").to_string();
        let i = self.state.nodes.len();
        let name = format!("node{i}");
        let home = self.state.dir.join("nodes").join(&name);
        std::fs::create_dir_all(&home).map_err(io(format!("creating {}", home.display())))?;
        let socket = home.join("dstack.sock");
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(Error::Invalid(format!(
                "the TEE socket path {} exceeds {MAX_SOCKET_PATH} bytes (a Unix socket limit): \
                 use a shorter --dir",
                socket.display()
            )));
        }
        let instance_id = hex::encode(random_bytes::<20>());
        let (child, proc) = procs::spawn(Spawn {
            name: &format!("{name}/simulator"),
            program: sim_bin,
            args: vec![
                "--socket".into(),
                socket.display().to_string(),
                "--kms-root-key".into(),
                kms_file.display().to_string(),
                "--app-id".into(),
                app_id,
                "--instance-id".into(),
                instance_id.clone(),
            ],
            env: vec![],
            clear_env_prefixes: &["DSTACK_SIM_"],
            log: home.join("simulator.log"),
            netns: None,
        })?;
        self.children.push(child);
        self.state.nodes.push(NodeEntry {
            name,
            power,
            tokens: Vec::new(),
            owner: Address::ZERO,
            owner_key: String::new(),
            instance_id,
            address: None,
            registered_in_blocks: Vec::new(),
            home,
            socket,
            p2p_url: place.p2p_url(),
            http_url: format!("http://{}:{}", place.ip, place.api),
            metrics_url: format!("http://{}:{}/metrics", place.ip, place.metrics),
            simulator: Some(proc),
            added: false,
            process: None,
            netns: place.netns.clone(),
            program,
        });
        Ok(i)
    }

    /// `dstack-node init` with the run's genesis file, the run's settings written into node
    /// `i`'s `config.toml`, then [`Testnet::start_node`]; saves the state.
    pub fn init_and_start(
        &mut self,
        i: usize,
        node_bin: &Path,
        log_level: &str,
    ) -> Result<(), Error> {
        let ch = self
            .state
            .chain
            .clone()
            .ok_or_else(|| Error::State("no chain recorded".into()))?;
        let genesis_file = ch
            .genesis_file
            .clone()
            .ok_or_else(|| Error::State("no genesis.json recorded".into()))?;
        let node = self.node(i)?;
        nodecfg::init(node_bin, &node.home, &genesis_file)?;
        let api = node.http_url.trim_start_matches("http://").to_string();
        let metrics = node
            .metrics_url
            .trim_start_matches("http://")
            .trim_end_matches("/metrics")
            .to_string();
        nodecfg::configure(
            &node.home,
            &nodecfg::NodeSettings {
                rpc_url: ch.node_rpc(),
                dstack_socket: &node.socket,
                kms_root: &ch.kms_root.to_string(),
                owner_address: &node.owner.to_string(),
                p2p: &node.p2p_url,
                api: &api,
                metrics: &metrics,
            },
        )?;
        if self.state.nodes[i].program.is_none() {
            self.state.nodes[i].program = Some(node_bin.to_path_buf());
        }
        self.start_node(i, log_level)?;
        self.state.save()
    }

    /// Reaps exited children (so killed nodes do not linger as zombies).
    pub fn reap(&mut self) {
        self.children
            .retain_mut(|c| !matches!(c.try_wait(), Ok(Some(_))));
    }

    /// Stops every process (nodes, TEEs, anvil) and removes `state.json`. Nodes another
    /// command added to the recorded state (`testnet add-node`) are stopped too.
    pub fn stop(mut self) -> Result<Vec<String>, Error> {
        if let Ok(Some(disk)) = State::load(&self.state.dir) {
            let known = self.state.nodes.len();
            self.state.nodes.extend(disk.nodes.into_iter().skip(known));
        }
        let r = down_state(&self.state);
        for c in &mut self.children {
            let _ = c.try_wait();
        }
        r
    }
}

/// Progress lines go through this.
pub type Progress<'a> = &'a (dyn Fn(&str) + Sync);

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b
}

fn write_secret(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("creating {}", path.display())))?;
    f.write_all(text.as_bytes())
        .map_err(io(format!("writing {}", path.display())))
}

/// Prepares the run directory: stops a run recorded there, removes what a run writes.
fn prepare_dir(dir: &Path, progress: Progress<'_>) -> Result<(), Error> {
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    if let Some(old) = State::load(dir)? {
        progress(&format!(
            "stopping the previous testnet recorded in {}",
            dir.display()
        ));
        for line in down_state(&old)? {
            progress(&line);
        }
    }
    let nodes = dir.join("nodes");
    if nodes.exists() {
        std::fs::remove_dir_all(&nodes).map_err(io(format!("removing {}", nodes.display())))?;
    }
    for f in ["genesis.json", "kms-root.key", "anvil.log"] {
        let p = dir.join(f);
        if p.exists() {
            std::fs::remove_file(&p).map_err(io(format!("removing {}", p.display())))?;
        }
    }
    Ok(())
}

/// Brings a cluster up (see the crate docs). On failure everything started is stopped again.
pub async fn up(opts: &UpOptions, progress: Progress<'_>) -> Result<(Testnet, Outcome), Error> {
    if opts.block_time == 0 {
        return Err(Error::Invalid(
            "--chain-block-time must be at least 1 second".into(),
        ));
    }
    let anvil_bin = paths::anvil_bin()?;
    let sim_bin = paths::simulator_bin()?;
    let node_bin = paths::node_bin();
    std::fs::create_dir_all(&opts.dir).map_err(io(format!("creating {}", opts.dir.display())))?;
    let dir = std::fs::canonicalize(&opts.dir)
        .map_err(io(format!("resolving {}", opts.dir.display())))?;
    let longest = dir
        .join(format!("nodes/node{}/dstack.sock", opts.powers.len()))
        .as_os_str()
        .len();
    if longest > MAX_SOCKET_PATH {
        return Err(Error::Invalid(format!(
            "--dir {} is too deep: the TEE socket paths under it would exceed {MAX_SOCKET_PATH} \
             bytes (a Unix socket limit); use a shorter directory",
            dir.display()
        )));
    }
    prepare_dir(&dir, progress)?;
    let mut tn = Testnet {
        state: State::new(&dir),
        children: Vec::new(),
    };
    tn.state.save()?;
    let result = bring_up(&mut tn, opts, &anvil_bin, &sim_bin, node_bin, progress).await;
    match result {
        Ok(outcome) => Ok((tn, outcome)),
        Err(e) => {
            progress("start-up failed; stopping what was started (logs are kept)");
            let _ = tn.stop();
            Err(e)
        }
    }
}

async fn bring_up(
    tn: &mut Testnet,
    opts: &UpOptions,
    anvil_bin: &Path,
    sim_bin: &Path,
    node_bin: Result<PathBuf, Error>,
    progress: Progress<'_>,
) -> Result<Outcome, Error> {
    let t0 = Instant::now();
    let dir = tn.state.dir.clone();
    let n = opts.powers.len();

    // 1. anvil
    progress(&format!(
        "starting anvil ({}, --slots-in-an-epoch 1 --block-time {})",
        anvil_bin.display(),
        opts.block_time
    ));
    // In a chaos run anvil listens on the hub namespace's every address: loopback for this
    // process, the bridge address for the nodes in their namespaces.
    let anvil_host = if opts.net.is_some() {
        "0.0.0.0".to_string()
    } else {
        "127.0.0.1".to_string()
    };
    let anvil = chain::start_anvil(
        anvil_bin,
        &dir,
        &anvil_host,
        opts.anvil_port,
        opts.block_time,
    )
    .await?;
    let url = anvil.url.clone();
    let node_rpc_url = match &opts.net {
        Some(l) => {
            let port = url.rsplit(':').next().unwrap_or_default();
            format!("http://{}:{port}", l.anvil_ip)
        }
        None => url.clone(),
    };
    tn.state.anvil = Some(anvil.proc.clone());
    tn.children.push(anvil.child);
    tn.state.save()?;
    progress(&format!(
        "anvil answers at {url} (chain id {})",
        anvil.chain_id
    ));

    // 2. KMS root, app id; deploy and configure
    let kms = SigningKey::random(&mut rand::rngs::OsRng);
    let kms_root = address_of(kms.verifying_key());
    let kms_file = dir.join("kms-root.key");
    write_secret(&kms_file, &format!("{}\n", hex::encode(kms.to_bytes())))?;
    let app_id: [u8; 20] = random_bytes();
    progress("deploying DstackMembershipNFT from contracts/artifacts (KMS root, app id, purpose)");
    let contract = chain::deploy(&url, kms_root, app_id, PURPOSE).await?;
    tn.state.chain = Some(ChainInfo {
        rpc_url: url.clone(),
        chain_id: anvil.chain_id,
        block_time: opts.block_time,
        contract,
        deployer: chain::deployer()?.address(),
        kms_root,
        kms_root_key_file: kms_file.clone(),
        app_id: format!("0x{}", hex::encode(app_id)),
        purpose: PURPOSE.into(),
        genesis_file: None,
        genesis_block: None,
        node_rpc_url: Some(node_rpc_url.clone()),
    });
    tn.state.save()?;
    progress(&format!(
        "contract {contract}, KMS root {kms_root}, app id 0x{}",
        hex::encode(app_id)
    ));

    // 3. one simulated TEE per node; ports
    let ports = procs::free_ports(3 * n)?;
    for (i, &power) in opts.powers.iter().enumerate() {
        let place = match &opts.net {
            Some(l) => NodePlace::netns(l.nodes.get(i).ok_or_else(|| {
                Error::Invalid(format!("the network layout has no entry for node {i}"))
            })?),
            None => NodePlace::loopback([ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]]),
        };
        let program = opts
            .node_programs
            .iter()
            .find(|(j, _)| *j == i)
            .map(|(_, p)| p.clone());
        tn.add_slot(power, sim_bin, &place, program)?;
        tn.state.save()?;
    }
    progress(&format!(
        "started {n} simulated dstack TEEs (one KMS root, distinct instance ids)"
    ));

    // 4. mint to fresh owners
    let owners = chain::mint_to_owners(&url, contract, &opts.powers).await?;
    for (node, owner) in tn.state.nodes.iter_mut().zip(&owners) {
        node.owner = owner.signer.address();
        node.owner_key = format!("0x{}", hex::encode(owner.signer.to_bytes()));
        node.tokens = owner.tokens.clone();
    }
    tn.state.save()?;
    progress(&format!(
        "minted {} tokens to {n} owner accounts (powers {})",
        opts.powers.iter().sum::<u64>(),
        opts.powers
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(",")
    ));

    // 5. wait for the TEEs, then register every node through the SDK
    for node in &tn.state.nodes {
        wait_tee(node).await?;
    }
    let cluster = Cluster::connect(&url, contract).await?;
    let mut tasks = tokio::task::JoinSet::new();
    for (i, (node, owner)) in tn.state.nodes.iter().zip(owners).enumerate() {
        let cluster = cluster.clone();
        let socket = node.socket.display().to_string();
        let p2p = node.p2p_url.clone();
        tasks.spawn(async move {
            let dstack = DstackClient::new(Some(&socket))
                .map_err(|e| Error::Process(format!("dstack endpoint {socket}: {e}")))?;
            let r =
                chain::register_node(&cluster, &dstack, &owner.signer, &owner.tokens, &p2p).await?;
            Ok::<_, Error>((i, r))
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (i, r) = joined.map_err(|e| Error::Process(format!("registration task: {e}")))??;
        let node = &mut tn.state.nodes[i];
        node.address = Some(r.node);
        node.registered_in_blocks = r.blocks;
    }
    tn.state.save()?;
    let c = cluster.instance();
    let count = c
        .validatorCount()
        .call()
        .await
        .map_err(|e| crate::error::chain(format!("validatorCount(): {e}")))?;
    let total = c
        .totalPower()
        .call()
        .await
        .map_err(|e| crate::error::chain(format!("totalPower(): {e}")))?;
    let want_total: u64 = opts.powers.iter().sum();
    if count != U256::from(n) || total != U256::from(want_total) {
        return Err(Error::Chain(format!(
            "after registration the contract counts {count} validators with power {total}, \
             expected {n} with {want_total}"
        )));
    }
    progress(&format!(
        "registered {n} nodes through the SDK (totalPower {total})"
    ));

    // 6. genesis.json at a block after the registrations
    let last = tn
        .state
        .nodes
        .iter()
        .flat_map(|n| n.registered_in_blocks.iter().copied())
        .max()
        .unwrap_or(0);
    let block = chain::block_after(
        cluster.provider(),
        last,
        Duration::from_secs(10 * opts.block_time + 10),
    )
    .await?;
    let genesis = Genesis::new(
        anvil.chain_id,
        contract,
        block,
        B256::from(random_bytes::<32>()),
    );
    genesis
        .validate()
        .map_err(|e| Error::Invalid(format!("genesis: {e}")))?;
    let genesis_file = dir.join("genesis.json");
    std::fs::write(&genesis_file, genesis.to_json() + "\n")
        .map_err(io(format!("writing {}", genesis_file.display())))?;
    if let Some(ch) = tn.state.chain.as_mut() {
        ch.genesis_file = Some(genesis_file.clone());
        ch.genesis_block = Some(block.number);
    }
    tn.state.phase = Phase::Genesis;
    tn.state.save()?;
    progress(&format!(
        "wrote {} (genesis chain block {}, genesis id {})",
        genesis_file.display(),
        block.number,
        genesis.genesis_id()
    ));

    // 7. the nodes, when the node binary can start them
    let node_bin = match node_bin {
        Ok(b) => b,
        Err(e) => return chain_only(tn, format!("{e}")),
    };
    let caps = nodecfg::probe(&node_bin);
    if !caps.init || !caps.start {
        return chain_only(
            tn,
            format!(
                "{} has no `{}` subcommand yet: the node cannot start clusters",
                node_bin.display(),
                if caps.init { "start" } else { "init" }
            ),
        );
    }
    tn.state.phase = Phase::Nodes;
    for i in 0..n {
        tn.init_and_start(i, &node_bin, &opts.node_log_level)?;
    }
    progress(&format!(
        "started {n} dstack-node processes; waiting for first commits (at most {} s)",
        opts.commit_wait.as_secs()
    ));
    wait_commits(&tn.state, opts.commit_wait, progress).await?;
    tn.state.phase = Phase::Running;
    tn.state.save()?;
    progress(&format!(
        "every node committed; cluster up after {:.1} s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(Outcome::Running)
}

fn chain_only(tn: &mut Testnet, reason: String) -> Result<Outcome, Error> {
    tn.state.note = Some(reason.clone());
    tn.state.save()?;
    Ok(Outcome::ChainOnly(reason))
}

#[cfg(test)]
mod tests;
