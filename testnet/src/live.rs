//! Live membership changes of a running testnet: `add-node` mints tokens to a new
//! owner account, starts a simulated TEE and a `dstack-node` with the cluster's `genesis.json`,
//! and registers the node for its tokens through the membership SDK; `transfer` and `burn` move
//! or destroy a token with its owner's key (development keys of the local chain, recorded in
//! `state.json`). The node side turns each change into an epoch change; these functions only
//! change the chain and the run's processes, and record what they did.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use alloy::primitives::{Address, B256};
use alloy::signers::local::PrivateKeySigner;
use membership::dstack::DstackClient;
use membership::sdk::Cluster;
use serde::Serialize;

use crate::chain;
use crate::error::Error;
use crate::paths;
use crate::state::{Account, ChainInfo, Phase};
use crate::status::Client;
use crate::up::{NodePlace, Testnet, wait_ready, wait_tee};

/// Largest power `add-node` mints in one go (as `up`'s per-validator limit).
pub const MAX_ADD_POWER: u64 = 100;
/// How long a new node's API may take to answer after its start.
const API_WAIT: Duration = Duration::from_secs(20);

/// What `add-node` did.
#[derive(Clone, Debug, Serialize)]
pub struct AddedNode {
    /// `node<i>`.
    pub name: String,
    /// Its index in `state.json`'s node list.
    pub index: usize,
    /// The node's address (its dstack-derived key).
    pub address: Address,
    /// The new owner account holding its tokens.
    pub owner: Address,
    /// The tokens minted to the owner and registered for the node.
    pub tokens: Vec<u64>,
    /// Its registered power (the number of tokens).
    pub power: u64,
    /// Base URL of its HTTP API.
    pub http_url: String,
    /// Its libp2p connection URL (registered on chain).
    pub p2p_url: String,
    /// The registration transactions, one per token.
    pub registration_txs: Vec<B256>,
    /// The blocks they were mined in.
    pub registered_in_blocks: Vec<u64>,
    /// When the last registration was seen mined (Unix seconds), for join-time figures.
    pub registered_at_unix: f64,
}

/// Who receives a transferred token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recipient {
    /// A given address.
    Address(Address),
    /// A fresh account, funded by the deployer and recorded in `state.json`.
    New,
}

impl FromStr for Recipient {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "new" {
            return Ok(Self::New);
        }
        s.parse::<Address>()
            .map(Self::Address)
            .map_err(|e| format!("{s:?} is neither `new` nor a 0x address: {e}"))
    }
}

/// What `transfer` did.
#[derive(Clone, Debug, Serialize)]
pub struct Transferred {
    /// The token.
    pub token_id: u64,
    /// Its previous owner.
    pub from: Address,
    /// Its new owner.
    pub to: Address,
    /// Whether `to` is a fresh account made for this transfer.
    pub new_account: bool,
    /// The `transferFrom` transaction.
    pub tx_hash: B256,
    /// Its block.
    pub block: u64,
    /// The node the token authorized until now, if any.
    pub unregistered_from: Option<String>,
    /// The node of the new owner the token was registered for (`--register`), if any.
    pub registered_for: Option<String>,
    /// That registration's transaction.
    pub registration_tx: Option<B256>,
    /// Its block.
    pub registration_block: Option<u64>,
    /// When the last transaction was seen mined (Unix seconds).
    pub mined_at_unix: f64,
}

/// What `burn` did.
#[derive(Clone, Debug, Serialize)]
pub struct Burned {
    /// The token.
    pub token_id: u64,
    /// Its owner until now.
    pub owner: Address,
    /// The `burn` transaction.
    pub tx_hash: B256,
    /// Its block.
    pub block: u64,
    /// The node the token authorized until now, if any.
    pub unregistered_from: Option<String>,
    /// When it was seen mined (Unix seconds).
    pub mined_at_unix: f64,
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn parse_key(key: &str, whose: &str) -> Result<PrivateKeySigner, Error> {
    key.parse()
        .map_err(|e| Error::State(format!("the recorded key of {whose} is malformed: {e}")))
}

impl Testnet {
    fn chain_info(&self) -> Result<ChainInfo, Error> {
        self.state
            .chain
            .clone()
            .ok_or_else(|| Error::State("no chain recorded: was `testnet up` run?".into()))
    }

    fn require_nodes(&self) -> Result<(), Error> {
        match self.state.phase {
            Phase::Nodes | Phase::Running => Ok(()),
            other => Err(Error::State(format!(
                "the run in {} has no running nodes (phase {other:?}{}): start one with \
                 `testnet up --detach`",
                self.state.dir.display(),
                self.state
                    .note
                    .as_ref()
                    .map(|n| format!(": {n}"))
                    .unwrap_or_default()
            ))),
        }
    }

    /// The first part of [`Testnet::add_node`]: a new slot `node<i>` at `place` with its
    /// simulated TEE running, its address known (read from the TEE at the cluster's key path)
    /// and a fresh owner key chosen (not funded yet), then `dstack-node init` with the cluster's
    /// genesis file and the node started: a non-member (observer) that syncs the chain before it
    /// holds any token. Saves the state; returns the index once the node's API answers.
    pub async fn prepare_node(
        &mut self,
        place: &NodePlace,
        program: Option<PathBuf>,
        log_level: &str,
    ) -> Result<usize, Error> {
        self.require_nodes()?;
        let ch = self.chain_info()?;
        let sim_bin = paths::simulator_bin()?;
        let node_bin = paths::node_bin()?;
        let i = self.add_slot(0, &sim_bin, place, program)?;
        let owner = PrivateKeySigner::random();
        {
            let n = &mut self.state.nodes[i];
            n.added = true;
            n.owner = owner.address();
            n.owner_key = format!("0x{}", hex::encode(owner.to_bytes()));
        }
        self.state.save()?;
        wait_tee(&self.state.nodes[i]).await?;
        let socket = self.state.nodes[i].socket.display().to_string();
        let dstack = DstackClient::new(Some(&socket))
            .map_err(|e| Error::Process(format!("dstack endpoint {socket}: {e}")))?;
        let cluster = Cluster::connect(&ch.rpc_url, ch.contract).await?;
        let key = cluster.node_key(&dstack).await?;
        self.state.nodes[i].address = Some(key.address());
        self.state.save()?;
        self.init_and_start(i, &node_bin, log_level)?;
        self.wait_api(i).await?;
        Ok(i)
    }

    /// The second part of [`Testnet::add_node`] for a node started by
    /// [`Testnet::prepare_node`]: funds its owner account from the deployer, mints it `power`
    /// tokens and registers the node for each through the SDK. The cluster takes the node in at
    /// its next epoch.
    pub async fn join_node(&mut self, i: usize, power: u64) -> Result<AddedNode, Error> {
        if !(1..=MAX_ADD_POWER).contains(&power) {
            return Err(Error::Invalid(format!(
                "--power must be between 1 and {MAX_ADD_POWER}"
            )));
        }
        let ch = self.chain_info()?;
        let node = self.node(i)?;
        if !node.tokens.is_empty() || !node.added {
            return Err(Error::Invalid(format!(
                "{} is not a node waiting to join",
                node.name
            )));
        }
        let signer = parse_key(&node.owner_key, &node.name)?;
        let mut owners = chain::mint_to(&ch.rpc_url, ch.contract, vec![(signer, power)]).await?;
        let owner = owners
            .pop()
            .ok_or_else(|| Error::Chain("minting returned no owner".into()))?;
        {
            let n = &mut self.state.nodes[i];
            n.owner = owner.signer.address();
            n.owner_key = format!("0x{}", hex::encode(owner.signer.to_bytes()));
            n.tokens = owner.tokens.clone();
            n.power = power;
        }
        self.state.save()?;
        let socket = node.socket.display().to_string();
        let dstack = DstackClient::new(Some(&socket))
            .map_err(|e| Error::Process(format!("dstack endpoint {socket}: {e}")))?;
        let cluster = Cluster::connect(&ch.rpc_url, ch.contract).await?;
        let reg = chain::register_node(
            &cluster,
            &dstack,
            &owner.signer,
            &owner.tokens,
            &node.p2p_url,
        )
        .await?;
        let registered_at_unix = unix_now();
        if node.address.is_some_and(|a| a != reg.node) {
            return Err(Error::Chain(format!(
                "{} registered as {}, but its TEE gave {:?} before",
                node.name, reg.node, node.address
            )));
        }
        self.state.nodes[i].address = Some(reg.node);
        self.state.nodes[i].registered_in_blocks = reg.blocks.clone();
        self.state.save()?;
        let n = &self.state.nodes[i];
        Ok(AddedNode {
            name: n.name.clone(),
            index: i,
            address: reg.node,
            owner: n.owner,
            tokens: n.tokens.clone(),
            power,
            http_url: n.http_url.clone(),
            p2p_url: n.p2p_url.clone(),
            registration_txs: reg.txs,
            registered_in_blocks: reg.blocks,
            registered_at_unix,
        })
    }

    /// `testnet add-node`: [`Testnet::prepare_node`] at `place` (default: loopback with free
    /// ports; the node starts and syncs as a non-member), then [`Testnet::join_node`] (tokens
    /// minted to its owner, registrations).
    pub async fn add_node(
        &mut self,
        power: u64,
        place: Option<NodePlace>,
        log_level: &str,
    ) -> Result<AddedNode, Error> {
        if !(1..=MAX_ADD_POWER).contains(&power) {
            return Err(Error::Invalid(format!(
                "--power must be between 1 and {MAX_ADD_POWER}"
            )));
        }
        let place = match place {
            Some(p) => p,
            None => NodePlace::free_loopback()?,
        };
        let i = self.prepare_node(&place, None, log_level).await?;
        self.join_node(i, power).await
    }

    async fn wait_api(&self, i: usize) -> Result<(), Error> {
        let node = &self.state.nodes[i];
        let client = Client::new(Duration::from_secs(2));
        wait_ready(
            &format!("{} (API {})", node.name, node.http_url),
            node.process.as_ref(),
            API_WAIT,
            async || client.status(&node.http_url).await.is_ok(),
        )
        .await
    }

    /// The owner of `token` on chain and its recorded key.
    async fn owner_signer(
        &self,
        ch: &ChainInfo,
        token: u64,
    ) -> Result<(Address, PrivateKeySigner), Error> {
        let owner = chain::owner_of(&ch.rpc_url, ch.contract, token).await?;
        let key = self.state.key_of(owner).ok_or_else(|| {
            Error::Invalid(format!(
                "token {token} is owned by {owner}, an account this run has no key for"
            ))
        })?;
        Ok((owner, parse_key(key, &owner.to_string())?))
    }

    /// Forgets `token` as an authorization of the node recorded with it (its power drops by
    /// one); returns that node's name.
    fn release_token(&mut self, token: u64) -> Option<String> {
        let n = self
            .state
            .nodes
            .iter_mut()
            .find(|n| n.tokens.contains(&token))?;
        n.tokens.retain(|&t| t != token);
        n.power = n.power.saturating_sub(1);
        Some(n.name.clone())
    }

    /// `testnet transfer`: moves `token` from its current owner (whose key the run recorded) to
    /// `to` (a fresh funded account for [`Recipient::New`]). The transfer ends the token's
    /// authorization of its node. With `register`, the recipient must own a node of the run,
    /// and the token is registered for that node (its power grows by one). Saves the state.
    pub async fn transfer(
        &mut self,
        token: u64,
        to: Recipient,
        register: bool,
    ) -> Result<Transferred, Error> {
        let ch = self.chain_info()?;
        let (from, signer) = self.owner_signer(&ch, token).await?;
        let (to, new_account) = match to {
            Recipient::Address(a) => (a, false),
            Recipient::New => {
                let acct = PrivateKeySigner::random();
                chain::fund(&ch.rpc_url, acct.address()).await?;
                self.state.accounts.push(Account {
                    address: acct.address(),
                    key: format!("0x{}", hex::encode(acct.to_bytes())),
                });
                self.state.save()?;
                (acct.address(), true)
            }
        };
        if to == from {
            return Err(Error::Invalid(format!(
                "token {token} is already owned by {to}"
            )));
        }
        let target = if register {
            let j = self
                .state
                .nodes
                .iter()
                .position(|n| n.owner == to && n.address.is_some())
                .ok_or_else(|| {
                    Error::Invalid(format!(
                        "--register: {to} owns no node of this run; give a node owner's address"
                    ))
                })?;
            Some(j)
        } else {
            None
        };
        let mined = chain::transfer(&ch.rpc_url, ch.contract, &signer, to, token).await?;
        let unregistered_from = self.release_token(token);
        self.state.save()?;
        let mut out = Transferred {
            token_id: token,
            from,
            to,
            new_account,
            tx_hash: mined.tx_hash,
            block: mined.block,
            unregistered_from,
            registered_for: None,
            registration_tx: None,
            registration_block: None,
            mined_at_unix: unix_now(),
        };
        if let Some(j) = target {
            let node = self.state.nodes[j].clone();
            let owner = parse_key(&node.owner_key, &node.name)?;
            let socket = node.socket.display().to_string();
            let dstack = DstackClient::new(Some(&socket))
                .map_err(|e| Error::Process(format!("dstack endpoint {socket}: {e}")))?;
            let cluster = Cluster::connect(&ch.rpc_url, ch.contract).await?;
            let reg =
                chain::register_node(&cluster, &dstack, &owner, &[token], &node.p2p_url).await?;
            let n = &mut self.state.nodes[j];
            n.tokens.push(token);
            n.power += 1;
            n.registered_in_blocks.extend(reg.blocks.iter().copied());
            self.state.save()?;
            out.registered_for = Some(node.name.clone());
            out.registration_tx = reg.txs.first().copied();
            out.registration_block = reg.blocks.first().copied();
            out.mined_at_unix = unix_now();
        }
        Ok(out)
    }

    /// `testnet burn`: burns `token` with its owner's recorded key, ending its authorization.
    /// Saves the state.
    pub async fn burn(&mut self, token: u64) -> Result<Burned, Error> {
        let ch = self.chain_info()?;
        let (owner, signer) = self.owner_signer(&ch, token).await?;
        let mined = chain::burn(&ch.rpc_url, ch.contract, &signer, token).await?;
        let unregistered_from = self.release_token(token);
        self.state.save()?;
        Ok(Burned {
            token_id: token,
            owner,
            tx_hash: mined.tx_hash,
            block: mined.block,
            unregistered_from,
            mined_at_unix: unix_now(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recipients_parse() {
        assert_eq!(Recipient::from_str("new"), Ok(Recipient::New));
        let a = "0x70997970c51812dc3a010c7d01b50e0d17dc79c8";
        assert_eq!(
            Recipient::from_str(a),
            Ok(Recipient::Address(a.parse().expect("address")))
        );
        assert!(Recipient::from_str("old").is_err());
        assert!(Recipient::from_str("0x1234").is_err());
    }
}
