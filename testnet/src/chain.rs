//! The chain side of a run: anvil, the contract deployed from the committed artifact (through
//! membership's alloy bindings), its configuration, tokens minted to fresh owner accounts, the
//! node registrations (through membership's SDK) and the genesis chain block.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use alloy::eips::BlockNumberOrTag;
use alloy::network::{EthereumWallet, TransactionBuilder};
use alloy::primitives::{Address, B256, FixedBytes, U256};
use alloy::providers::{DynProvider, Provider, ProviderBuilder};
use alloy::rpc::types::TransactionRequest;
use alloy::signers::local::PrivateKeySigner;
use membership::contract::DstackMembershipNFT;
use membership::dstack::DstackClient;
use membership::genesis::GenesisBlock;
use membership::sdk::{Cluster, describe_contract_error};

use crate::error::{Error, chain};
use crate::procs::{self, Proc, Spawn};

/// anvil's first development account (mnemonic "test test ... junk"): deployer and contract
/// owner of a local run. Public; never use it on a real chain.
pub const DEPLOYER_KEY: &str = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

/// What each fresh owner account gets from the deployer (1 ETH) for its registration gas.
pub const OWNER_FUNDING_WEI: u128 = 1_000_000_000_000_000_000;

/// How long anvil may take to answer.
const ANVIL_START: Duration = Duration::from_secs(20);
/// How long one transaction may take to be mined.
const TX_WAIT: Duration = Duration::from_secs(30);

/// A started anvil.
#[derive(Debug)]
pub struct Anvil {
    /// The process handle (to reap it when this process stops it).
    pub child: Child,
    /// The recorded process.
    pub proc: Proc,
    /// Its JSON-RPC URL.
    pub url: String,
    /// Its chain id.
    pub chain_id: u64,
}

/// A read-only provider for `url`.
pub fn reader(url: &str) -> Result<DynProvider, Error> {
    let url = url
        .parse()
        .map_err(|e| Error::Invalid(format!("RPC URL {url}: {e}")))?;
    Ok(ProviderBuilder::new().connect_http(url).erased())
}

/// A provider sending transactions signed by `signer` (nonces cached, so several transactions
/// can be in flight at once).
pub fn wallet(url: &str, signer: &PrivateKeySigner) -> Result<DynProvider, Error> {
    let url = url
        .parse()
        .map_err(|e| Error::Invalid(format!("RPC URL {url}: {e}")))?;
    Ok(ProviderBuilder::new()
        .wallet(EthereumWallet::from(signer.clone()))
        .connect_http(url)
        .erased())
}

/// The deployer's signer.
pub fn deployer() -> Result<PrivateKeySigner, Error> {
    DEPLOYER_KEY
        .parse()
        .map_err(|e| Error::Invalid(format!("deployer key: {e}")))
}

/// Starts anvil on `host` with `--slots-in-an-epoch 1 --block-time <t>` (finalized = head − 2) on `port`,
/// or on a free port (three tries when a chosen port turns out to be taken).
pub async fn start_anvil(
    bin: &Path,
    dir: &Path,
    host: &str,
    port: Option<u16>,
    block_time: u64,
) -> Result<Anvil, Error> {
    let log = dir.join("anvil.log");
    let mut last = String::new();
    for _ in 0..3 {
        let chosen = match port {
            Some(p) => p,
            None => procs::free_port()?,
        };
        let port_arg = chosen;
        let (mut child, proc) = procs::spawn(Spawn {
            name: "anvil",
            program: bin,
            args: vec![
                "--host".into(),
                host.to_string(),
                "--port".into(),
                port_arg.to_string(),
                "--slots-in-an-epoch".into(),
                "1".into(),
                "--block-time".into(),
                block_time.to_string(),
            ],
            env: vec![],
            clear_env_prefixes: &[],
            log: log.clone(),
            netns: None,
        })?;
        // Listening on every address of the namespace, the run itself uses loopback (alloy
        // polls a loopback URL every 250 ms, any other every 7 s).
        let url_host = if host == "0.0.0.0" { "127.0.0.1" } else { host };
        let url = format!("http://{url_host}:{chosen}");
        let provider = reader(&url)?;
        let deadline = Instant::now() + ANVIL_START;
        loop {
            if let Ok(Ok(chain_id)) =
                tokio::time::timeout(Duration::from_secs(2), provider.get_chain_id()).await
            {
                return Ok(Anvil {
                    child,
                    proc,
                    url,
                    chain_id,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                last = format!(
                    "anvil exited ({status}) on port {chosen}:\n{}",
                    procs::log_tail(&log, 10)
                );
                break;
            }
            if Instant::now() >= deadline {
                let _ = procs::stop(&proc, Duration::from_secs(2));
                let _ = child.wait();
                return Err(Error::Timeout(format!(
                    "anvil did not answer on {url} within {} s; log {}",
                    ANVIL_START.as_secs(),
                    log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if port.is_some() {
            break; // the port was asked for: no other to try
        }
    }
    Err(Error::Process(last))
}

async fn mined<N: alloy::network::Network>(
    what: &str,
    pending: alloy::providers::PendingTransactionBuilder<N>,
) -> Result<u64, Error> {
    let hash = *pending.tx_hash();
    let receipt = tokio::time::timeout(TX_WAIT, pending.get_receipt())
        .await
        .map_err(|_| Error::Timeout(format!("{what} ({hash}) not mined within {TX_WAIT:?}")))?
        .map_err(|e| chain(format!("{what} ({hash}): {e}")))?;
    use alloy::network::ReceiptResponse;
    if !receipt.status() {
        return Err(chain(format!("{what} ({hash}) reverted")));
    }
    receipt
        .block_number()
        .ok_or_else(|| chain(format!("{what} ({hash}): receipt without a block number")))
}

/// Deploys the contract from the committed artifact with the deployer as owner, then sets the
/// KMS root, allows `app_id` and sets `purpose`.
pub async fn deploy(
    url: &str,
    kms_root: Address,
    app_id: [u8; 20],
    purpose: &str,
) -> Result<Address, Error> {
    let signer = deployer()?;
    let p = wallet(url, &signer)?;
    let c = tokio::time::timeout(
        TX_WAIT,
        DstackMembershipNFT::deploy(
            p.clone(),
            "dstack-nft-cluster testnet".to_string(),
            "DNCT".to_string(),
            signer.address(),
        ),
    )
    .await
    .map_err(|_| Error::Timeout("contract deployment not mined".into()))?
    .map_err(|e| chain(format!("deploying DstackMembershipNFT: {e}")))?;
    let send = |what: &'static str, r: Result<_, alloy::contract::Error>| {
        r.map_err(|e| chain(format!("{what}: {}", describe_contract_error(&e))))
    };
    let a = send("setKmsRoot", c.setKmsRoot(kms_root).send().await)?;
    let b = send(
        "setAppIdAllowed",
        c.setAppIdAllowed(FixedBytes(app_id), true).send().await,
    )?;
    let d = send("setPurpose", c.setPurpose(purpose.to_string()).send().await)?;
    mined("setKmsRoot", a).await?;
    mined("setAppIdAllowed", b).await?;
    mined("setPurpose", d).await?;
    let got = c
        .kmsRoot()
        .call()
        .await
        .map_err(|e| chain(format!("kmsRoot(): {e}")))?;
    if got != kms_root {
        return Err(chain(format!("kmsRoot() is {got}, expected {kms_root}")));
    }
    Ok(*c.address())
}

/// An owner account and the tokens minted to it.
#[derive(Clone, Debug)]
pub struct Owner {
    /// Its key (fresh, funded by the deployer).
    pub signer: PrivateKeySigner,
    /// Its token ids.
    pub tokens: Vec<u64>,
}

/// Creates one fresh owner account per power, funds each from the deployer and mints it
/// `power` tokens (`mintBatch`); checks every token's owner on chain afterwards.
pub async fn mint_to_owners(
    url: &str,
    contract: Address,
    powers: &[u64],
) -> Result<Vec<Owner>, Error> {
    let owners = powers
        .iter()
        .map(|&p| (PrivateKeySigner::random(), p))
        .collect();
    mint_to(url, contract, owners).await
}

/// Funds each given owner account from the deployer and mints it its number of tokens
/// (`mintBatch`); checks every token's owner on chain afterwards.
pub async fn mint_to(
    url: &str,
    contract: Address,
    to: Vec<(PrivateKeySigner, u64)>,
) -> Result<Vec<Owner>, Error> {
    let signer = deployer()?;
    let p = wallet(url, &signer)?;
    let c = DstackMembershipNFT::new(contract, p.clone());
    let first = c
        .totalMinted()
        .call()
        .await
        .map_err(|e| chain(format!("totalMinted(): {e}")))?;
    let mut next: u64 = first
        .try_into()
        .map_err(|_| chain("totalMinted() does not fit u64"))?;
    let mut owners = Vec::new();
    let mut pending = Vec::new();
    for (owner, power) in to {
        pending.push(("funding an owner", send_funding(&p, owner.address()).await?));
        let tx = c
            .mintBatch(owner.address(), U256::from(power))
            .send()
            .await
            .map_err(|e| chain(format!("mintBatch: {}", describe_contract_error(&e))))?;
        pending.push(("mintBatch", tx));
        let tokens: Vec<u64> = (next + 1..=next + power).collect();
        next += power;
        owners.push(Owner {
            signer: owner,
            tokens,
        });
    }
    for (what, tx) in pending {
        mined(what, tx).await?;
    }
    for o in &owners {
        for &t in &o.tokens {
            let got = c
                .ownerOf(U256::from(t))
                .call()
                .await
                .map_err(|e| chain(format!("ownerOf({t}): {e}")))?;
            if got != o.signer.address() {
                return Err(chain(format!(
                    "token {t} is owned by {got}, expected {}",
                    o.signer.address()
                )));
            }
        }
    }
    Ok(owners)
}

/// The registrations of one node.
#[derive(Clone, Debug)]
pub struct Registration {
    /// The node's address.
    pub node: Address,
    /// The blocks the registrations were mined in (one per token).
    pub blocks: Vec<u64>,
    /// Their transactions.
    pub txs: Vec<B256>,
}

/// Registers one node for each of `tokens` held by `owner` (sequentially: each registration
/// uses the node's next on-chain nonce), with `connection_url`.
pub async fn register_node(
    cluster: &Cluster,
    dstack: &DstackClient,
    owner: &PrivateKeySigner,
    tokens: &[u64],
    connection_url: &str,
) -> Result<Registration, Error> {
    let mut out = Registration {
        node: Address::ZERO,
        blocks: Vec::new(),
        txs: Vec::new(),
    };
    for &t in tokens {
        let r = cluster
            .register(dstack, U256::from(t), owner, connection_url)
            .await?;
        out.node = r.node;
        out.blocks.push(r.block_number.unwrap_or(0));
        out.txs.push(r.tx_hash);
    }
    Ok(out)
}

/// Sends `OWNER_FUNDING_WEI` to `to` through `p` (a deployer wallet).
async fn send_funding(
    p: &DynProvider,
    to: Address,
) -> Result<alloy::providers::PendingTransactionBuilder<alloy::network::Ethereum>, Error> {
    let tx = TransactionRequest::default()
        .with_to(to)
        .with_value(U256::from(OWNER_FUNDING_WEI));
    p.send_transaction(tx)
        .await
        .map_err(|e| chain(format!("funding {to}: {e}")))
}

/// Sends `OWNER_FUNDING_WEI` from the deployer to `to` and waits for it to be mined.
pub async fn fund(url: &str, to: Address) -> Result<(), Error> {
    let p = wallet(url, &deployer()?)?;
    let pending = send_funding(&p, to).await?;
    mined("funding an account", pending).await.map(|_| ())
}

/// A mined token transaction.
#[derive(Clone, Debug)]
pub struct Mined {
    /// Its hash.
    pub tx_hash: B256,
    /// Its block.
    pub block: u64,
}

/// `ownerOf(token)` at the latest block (an error for a burned or never-minted token).
pub async fn owner_of(url: &str, contract: Address, token: u64) -> Result<Address, Error> {
    DstackMembershipNFT::new(contract, reader(url)?)
        .ownerOf(U256::from(token))
        .call()
        .await
        .map_err(|e| chain(format!("ownerOf({token}): {}", describe_contract_error(&e))))
}

/// The contract's counted validators (address, power) at chain block `number`.
pub async fn validators_at(
    url: &str,
    contract: Address,
    number: u64,
) -> Result<Vec<(Address, u64)>, Error> {
    let c = DstackMembershipNFT::new(contract, reader(url)?);
    let mut out = Vec::new();
    loop {
        let page = c
            .validators(U256::from(out.len()), U256::from(100))
            .block(number.into())
            .call()
            .await
            .map_err(|e| chain(format!("validators() at block {number}: {e}")))?;
        let len = page.len();
        for v in page {
            let power = u64::try_from(v.power)
                .map_err(|_| chain(format!("power of {} does not fit u64", v.node)))?;
            out.push((v.node, power));
        }
        if len < 100 {
            return Ok(out);
        }
    }
}

/// `transferFrom(owner, to, token)` signed by the token's owner; waits for it to be mined.
pub async fn transfer(
    url: &str,
    contract: Address,
    owner: &PrivateKeySigner,
    to: Address,
    token: u64,
) -> Result<Mined, Error> {
    let c = DstackMembershipNFT::new(contract, wallet(url, owner)?);
    let pending = c
        .transferFrom(owner.address(), to, U256::from(token))
        .send()
        .await
        .map_err(|e| chain(format!("transferFrom: {}", describe_contract_error(&e))))?;
    let tx_hash = *pending.tx_hash();
    let block = mined("transferFrom", pending).await?;
    Ok(Mined { tx_hash, block })
}

/// `burn(token)` signed by the token's owner; waits for it to be mined.
pub async fn burn(
    url: &str,
    contract: Address,
    owner: &PrivateKeySigner,
    token: u64,
) -> Result<Mined, Error> {
    let c = DstackMembershipNFT::new(contract, wallet(url, owner)?);
    let pending = c
        .burn(U256::from(token))
        .send()
        .await
        .map_err(|e| chain(format!("burn: {}", describe_contract_error(&e))))?;
    let tx_hash = *pending.tx_hash();
    let block = mined("burn", pending).await?;
    Ok(Mined { tx_hash, block })
}

/// Waits (bounded) for the first block after `after` and returns it: the genesis chain block.
pub async fn block_after(
    provider: &DynProvider,
    after: u64,
    within: Duration,
) -> Result<GenesisBlock, Error> {
    let deadline = Instant::now() + within;
    loop {
        let block = provider
            .get_block_by_number(BlockNumberOrTag::Number(after + 1))
            .await
            .map_err(|e| chain(format!("eth_getBlockByNumber({}): {e}", after + 1)))?;
        if let Some(b) = block {
            return Ok(GenesisBlock {
                number: b.header.number,
                hash: b.header.hash,
            });
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "no block after {after} within {} s",
                within.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
