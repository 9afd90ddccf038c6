//! Shared test support: a real anvil from the npm toolchain on a free port, the contract
//! deployed from the committed artifact, and simulated TEEs.

#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::network::EthereumWallet;
use alloy::primitives::{Address, FixedBytes, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::signers::local::PrivateKeySigner;
use k256::ecdsa::SigningKey;
use membership::contract::DstackMembershipNFT;
use membership::dstack::DstackClient;
use membership::identity::address_of;
use membership::simulator::Simulator;

/// anvil's first default account (deployer and contract owner).
pub const DEPLOYER_KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";
/// The app id every simulated TEE reports.
pub const APP_ID: [u8; 20] = [0xa5; 20];

/// The anvil binary: `ANVIL_BIN`, else the workspace's npm toolchain. Panics with the fix when
/// missing: these tests never skip.
pub fn anvil_bin() -> PathBuf {
    if let Ok(p) = std::env::var("ANVIL_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "ANVIL_BIN={} does not exist: run `make deps-npm`",
            p.display()
        );
        return p;
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../contracts/node_modules/.bin/anvil");
    assert!(
        p.exists(),
        "anvil not found at {} and ANVIL_BIN unset: run `make deps-npm` first",
        p.display()
    );
    p
}

/// A running anvil, killed on drop.
pub struct Anvil {
    child: Child,
    pub url: String,
    pub port: u16,
}

impl Drop for Anvil {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Anvil {
    /// Starts anvil with 1-second blocks and finalized = head - 2.
    pub async fn start() -> Anvil {
        Self::spawn(&["--block-time", "1"]).await
    }

    /// Starts an anvil that forks `origin` at `block`: blocks up to `block` are `origin`'s
    /// (same hashes, same state), later ones its own. It mines only on demand (a transaction or
    /// [`Anvil::mine`]), finalized = head - 2.
    pub async fn fork(origin: &Anvil, block: u64) -> Anvil {
        Self::spawn(&[
            "--fork-url",
            &origin.url,
            "--fork-block-number",
            &block.to_string(),
        ])
        .await
    }

    async fn spawn(extra: &[&str]) -> Anvil {
        for _ in 0..3 {
            let port = free_port();
            let child = Command::new(anvil_bin())
                .args(["--port", &port.to_string(), "--host", "127.0.0.1"])
                .args(["--slots-in-an-epoch", "1"])
                .args(["--gas-limit", "100000000", "--code-size-limit", "100000"])
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn anvil");
            let mut anvil = Anvil {
                child,
                url: format!("http://127.0.0.1:{port}"),
                port,
            };
            let provider = ProviderBuilder::new().connect_http(anvil.url.parse().unwrap());
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if provider.get_chain_id().await.is_ok() {
                    return anvil;
                }
                if let Ok(Some(_)) = anvil.child.try_wait() {
                    break; // port taken: try another
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        panic!("anvil did not start within 20 s (three ports tried)");
    }

    /// Mines `n` empty blocks at once.
    pub async fn mine(&self, n: u64) {
        let _: serde_json::Value = self
            .reader()
            .raw_request("anvil_mine".into(), (U256::from(n),))
            .await
            .unwrap();
    }

    /// The chain's head block number.
    pub async fn head(&self) -> u64 {
        self.reader().get_block_number().await.unwrap()
    }

    /// A provider sending transactions as `signer`.
    pub fn wallet(&self, signer: &PrivateKeySigner) -> DynProvider {
        ProviderBuilder::new()
            .wallet(EthereumWallet::from(signer.clone()))
            .connect_http(self.url.parse().unwrap())
            .erased()
    }

    /// A read-only provider.
    pub fn reader(&self) -> DynProvider {
        ProviderBuilder::new()
            .connect_http(self.url.parse().unwrap())
            .erased()
    }

    /// Gives `addr` 1000 ETH.
    pub async fn fund(&self, addr: Address) {
        let _: serde_json::Value = self
            .reader()
            .raw_request(
                "anvil_setBalance".into(),
                (addr, U256::from(10u64).pow(U256::from(21u64))),
            )
            .await
            .unwrap();
    }

    /// A registration deadline the contract accepts now: the latest block's time plus the SDK's
    /// validity.
    pub async fn deadline(&self) -> U256 {
        let latest = self
            .reader()
            .get_block_by_number(alloy::eips::BlockNumberOrTag::Latest)
            .await
            .unwrap()
            .unwrap();
        U256::from(latest.header.timestamp + membership::sdk::DEFAULT_DEADLINE_SECS)
    }

    /// Moves the chain's clock: the next block gets `timestamp`, later ones follow from there.
    pub async fn set_next_block_timestamp(&self, timestamp: u64) {
        let _: serde_json::Value = self
            .reader()
            .raw_request("evm_setNextBlockTimestamp".into(), (timestamp,))
            .await
            .unwrap();
    }
}

pub fn deployer() -> PrivateKeySigner {
    DEPLOYER_KEY.parse().unwrap()
}

pub fn kms_root() -> SigningKey {
    SigningKey::from_slice(&[0x6b; 32]).unwrap()
}

/// Deploys the contract from the artifact bytecode, sets the KMS root and allows [`APP_ID`].
pub async fn deploy(anvil: &Anvil) -> Address {
    let p = anvil.wallet(&deployer());
    let c = DstackMembershipNFT::deploy(
        p.clone(),
        "Dstack Cluster".to_string(),
        "DNC".to_string(),
        deployer().address(),
    )
    .await
    .unwrap();
    c.setKmsRoot(address_of(kms_root().verifying_key()))
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    c.setAppIdAllowed(FixedBytes(APP_ID), true)
        .send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap();
    *c.address()
}

/// A simulated TEE (KMS mode) serving on a socket in `dir`.
pub fn tee(dir: &std::path::Path, instance: u8) -> (DstackClient, tokio::task::JoinHandle<()>) {
    let sim = Simulator::from_kms_root(&kms_root(), APP_ID, &hex::encode([instance; 20])).unwrap();
    let path = dir.join(format!("tee{instance}.sock"));
    let task = sim.spawn_unix(&path).unwrap();
    (
        DstackClient::new(Some(path.to_str().unwrap())).unwrap(),
        task,
    )
}

/// Independent ABI encoding of `(address, bytes, uint256)[]` and its keccak, for checking the
/// oracle's `validator_set_hash` without alloy's encoder.
pub fn manual_set_hash(members: &[(Address, Vec<u8>, u64)]) -> [u8; 32] {
    use sha3::{Digest, Keccak256};
    let word = |v: u64| {
        let mut w = [0u8; 32];
        w[24..].copy_from_slice(&v.to_be_bytes());
        w
    };
    let mut out = Vec::new();
    out.extend_from_slice(&word(32)); // offset of the array
    out.extend_from_slice(&word(members.len() as u64));
    // Heads: offsets of each tuple (dynamic) relative to the start of the heads.
    let mut tails: Vec<Vec<u8>> = Vec::new();
    for (a, pk, power) in members {
        let mut t = Vec::new();
        let mut aw = [0u8; 32];
        aw[12..].copy_from_slice(a.as_slice());
        t.extend_from_slice(&aw);
        t.extend_from_slice(&word(96)); // offset of bytes within the tuple
        t.extend_from_slice(&word(*power));
        t.extend_from_slice(&word(pk.len() as u64));
        let mut data = pk.clone();
        data.resize(pk.len().div_ceil(32) * 32, 0);
        t.extend_from_slice(&data);
        tails.push(t);
    }
    let mut offset = 32 * members.len() as u64;
    for t in &tails {
        out.extend_from_slice(&word(offset));
        offset += t.len() as u64;
    }
    for t in tails {
        out.extend_from_slice(&t);
    }
    Keccak256::digest(&out).into()
}

/// Sends a contract call and waits for its receipt; returns the block it landed in.
pub async fn send(
    call: alloy::contract::CallBuilder<
        &DynProvider,
        std::marker::PhantomData<impl alloy::sol_types::SolCall>,
    >,
) -> u64 {
    call.send()
        .await
        .unwrap()
        .get_receipt()
        .await
        .unwrap()
        .block_number
        .unwrap()
}

/// Waits (bounded) until `f` returns `Some`.
pub async fn eventually<T, F, Fut>(what: &str, secs: u64, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}
