//! A real `testnet up --detach` with 4 validators (powers 1,1,2,3) against real anvil and real
//! `dstack-simulator` processes, then `status --json`, `load`, the live membership commands
//! (`add-node`, `transfer`, `burn`, and the epochs that follow each) and `down`. Bounded: the
//! whole test fails after 120 s. Needs the npm toolchain (`make deps-npm`) and the workspace binaries built
//! (`cargo build --release -p membership --bin dstack-simulator -p node`); it fails, naming the
//! fix, when one is missing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use alloy::primitives::{Address, U256};
use alloy::providers::Provider;
use alloy::rpc::types::Filter;
use membership::genesis::Genesis;
use membership::sdk::Cluster;

use common::{
    EPOCH_WAIT, TESTNET, alive, get_json, nodes_of, processes_mentioning, run_testnet, show,
    wait_set,
};

const BUDGET: Duration = Duration::from_secs(120);

/// Runs `testnet --dir <dir> <args>` with a deadline; panics with its output on a timeout.
fn testnet(dir: &Path, args: &[&str], deadline: Instant) -> Output {
    run_testnet(dir, args, deadline, None)
}

/// Runs `testnet down` when dropped, so a failed assertion leaves no process behind.
struct DownOnDrop(PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = testnet(&self.0, &["down"], Instant::now() + Duration::from_secs(30));
    }
}

/// Whether the `dstack-node` that `testnet` will use can start clusters (the same probe as
/// `testnet up`): then the test requires running nodes with commits.
fn node_can_start() -> bool {
    let bin = std::env::var_os("DSTACK_NODE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(TESTNET).with_file_name("dstack-node"));
    Command::new(bin)
        .args(["start", "--help"])
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--home"))
        .unwrap_or(false)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_detach_registers_four_nodes_writes_genesis_and_down_stops_everything() {
    let started = Instant::now();
    let deadline = started + BUDGET;
    let tmp = tempfile::Builder::new()
        .prefix("tn")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let guard = DownOnDrop(dir.clone());

    // up
    let up = testnet(
        &dir,
        &[
            "up",
            "--detach",
            "--validators",
            "4",
            "--powers",
            "1,1,2,3",
            "--wait",
            "45",
        ],
        deadline,
    );
    assert!(up.status.success(), "testnet up failed:\n{}", show(&up));
    let up_secs = started.elapsed().as_secs_f64();
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap())
            .expect("state.json is JSON");
    let phase = state["phase"].as_str().unwrap().to_string();
    let nodes_started = phase == "running";
    if node_can_start() {
        assert!(
            nodes_started,
            "dstack-node has `start`, so every node must have committed (phase {phase}):\n{}",
            show(&up)
        );
    }
    assert!(
        nodes_started || phase == "genesis",
        "unexpected phase {phase}:\n{}",
        show(&up)
    );
    if !nodes_started {
        let text = String::from_utf8_lossy(&up.stdout);
        assert!(
            text.contains("NODES NOT STARTED"),
            "up without nodes must say so clearly:\n{}",
            show(&up)
        );
        eprintln!(
            "NOTE: dstack-node cannot start clusters yet ({}); nodes were not started and the \
             commit assertions are not made",
            state["note"]
        );
    }

    // the contract: 4 nodes registered with powers 1,1,2,3, total 7
    let rpc = state["chain"]["rpc_url"].as_str().unwrap().to_string();
    let contract: Address = state["chain"]["contract"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let cluster = Cluster::connect(&rpc, contract).await.expect("connect");
    let c = cluster.instance();
    assert_eq!(c.validatorCount().call().await.unwrap(), U256::from(4));
    assert_eq!(c.totalPower().call().await.unwrap(), U256::from(7));
    let vals = c
        .validators(U256::ZERO, U256::from(100))
        .call()
        .await
        .unwrap();
    let nodes = state["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 4);
    let want = [1u64, 1, 2, 3];
    for (n, &power) in nodes.iter().zip(&want) {
        let addr: Address = n["address"].as_str().unwrap().parse().unwrap();
        let v = vals
            .iter()
            .find(|v| v.node == addr)
            .unwrap_or_else(|| panic!("{} ({addr}) is not a validator", n["name"]));
        assert_eq!(v.power, U256::from(power), "power of {}", n["name"]);
        assert_eq!(v.connectionUrl, n["p2p_url"].as_str().unwrap());
        let owner: Address = n["owner"].as_str().unwrap().parse().unwrap();
        let tokens = n["tokens"].as_array().unwrap();
        assert_eq!(tokens.len() as u64, power);
        for t in tokens {
            let t = U256::from(t.as_u64().unwrap());
            assert_eq!(c.ownerOf(t).call().await.unwrap(), owner);
            assert_eq!(c.nodeOf(t).call().await.unwrap(), addr);
        }
    }
    let owners: BTreeSet<&str> = nodes.iter().map(|n| n["owner"].as_str().unwrap()).collect();
    assert_eq!(owners.len(), 4, "every node has its own owner account");

    // genesis.json loads with membership's loader; its block comes after every contract event
    let genesis = Genesis::load(&dir.join("genesis.json")).expect("genesis.json loads");
    assert_eq!(genesis.contract, contract);
    assert_eq!(genesis.chain_id, cluster.chain_id());
    assert_ne!(genesis.cluster_nonce, alloy::primitives::B256::ZERO);
    let logs = cluster
        .provider()
        .get_logs(&Filter::new().address(contract).from_block(0))
        .await
        .unwrap();
    let last_event = logs.iter().filter_map(|l| l.block_number).max().unwrap();
    assert!(
        genesis.genesis_block.number > last_event,
        "genesis block {} is not after the last registration event (block {last_event})",
        genesis.genesis_block.number
    );
    let block = cluster
        .provider()
        .get_block_by_number(genesis.genesis_block.number.into())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        block.header.hash, genesis.genesis_block.hash,
        "genesis block hash"
    );

    // status --json: exactly the documented shape
    let st = testnet(&dir, &["status", "--json"], deadline);
    assert!(st.status.success(), "status --json failed:\n{}", show(&st));
    let report: serde_json::Value = serde_json::from_slice(&st.stdout)
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}):\n{}", show(&st)));
    let top: BTreeSet<&str> = report
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(top, BTreeSet::from(["nodes"]));
    let entries = report["nodes"].as_array().unwrap();
    let keys = BTreeSet::from([
        "name",
        "http_url",
        "metrics_url",
        "pid",
        "power",
        "epoch_power",
        "role",
        "height",
        "round",
        "epoch",
    ]);
    if nodes_started {
        assert_eq!(
            entries.len(),
            4,
            "one entry per running node:\n{}",
            show(&st)
        );
        for (e, &power) in entries.iter().zip(&want) {
            let got: BTreeSet<&str> = e.as_object().unwrap().keys().map(|k| k.as_str()).collect();
            assert_eq!(got, keys);
            assert!(e["name"].is_string() && e["http_url"].is_string());
            assert!(e["metrics_url"].is_string() && e["pid"].is_u64());
            assert_eq!(e["power"].as_u64(), Some(power));
            assert!(e["round"].is_u64() && e["epoch"].is_u64(), "{e}");
            assert_eq!(
                e["epoch_power"].as_u64(),
                Some(power),
                "epoch 0 powers: {e}"
            );
            assert_eq!(e["role"], "validator", "{e}");
            let h = e["height"].as_u64().unwrap_or(0);
            assert!(h >= 1, "{} has not committed: {e}", e["name"]);
        }
    } else {
        assert!(
            entries.is_empty(),
            "no node runs, so no entries:\n{}",
            show(&st)
        );
    }

    // load: an open-loop run whose accepted transactions all commit
    if nodes_started {
        let load = testnet(
            &dir,
            &[
                "load",
                "--rate",
                "40",
                "--tx-size",
                "200",
                "--duration",
                "3",
                "--json",
            ],
            deadline,
        );
        assert!(
            load.status.success(),
            "testnet load failed:\n{}",
            show(&load)
        );
        let r: serde_json::Value = serde_json::from_slice(&load.stdout)
            .unwrap_or_else(|e| panic!("load --json is not JSON ({e}):\n{}", show(&load)));
        let submitted = r["submitted"].as_u64().unwrap();
        assert!(
            (100..=125).contains(&submitted),
            "40 tx/s for 3 s is 120 submissions: {r}"
        );
        assert_eq!(r["accepted"].as_u64(), Some(submitted), "{r}");
        assert_eq!(r["committed"], r["accepted"], "{r}");
        assert!(r["rejected"].as_object().unwrap().is_empty(), "{r}");
    }

    // live membership: add-node, transfer, burn (the tool's side; the epochs that follow are
    // checked in tests/live_epochs.rs)
    if nodes_started {
        live_membership_commands(&dir, &cluster, deadline).await;
    } else {
        let add = testnet(&dir, &["add-node", "--json"], deadline);
        assert!(
            !add.status.success()
                && String::from_utf8_lossy(&add.stderr).contains("no running nodes"),
            "add-node without running nodes must fail clearly:\n{}",
            show(&add)
        );
    }

    // down stops every recorded process, is idempotent, and leaves nothing running
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap())
            .expect("state.json is JSON");
    let nodes = state["nodes"].as_array().unwrap();
    let pids: Vec<u64> = {
        let mut v = vec![state["anvil"]["pid"].as_u64().unwrap()];
        for n in nodes {
            v.push(n["simulator"]["pid"].as_u64().unwrap());
            if let Some(p) = n["process"]["pid"].as_u64() {
                v.push(p);
            }
        }
        v
    };
    assert!(
        pids.iter().all(|&p| alive(p)),
        "every recorded process runs before down"
    );
    let down = testnet(&dir, &["down"], deadline);
    assert!(down.status.success(), "down failed:\n{}", show(&down));
    for &p in &pids {
        assert!(!alive(p), "pid {p} still runs after down:\n{}", show(&down));
    }
    let left = processes_mentioning(dir.to_str().unwrap());
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(!dir.join("state.json").exists(), "down removes state.json");
    let again = testnet(&dir, &["down"], deadline);
    assert!(
        again.status.success(),
        "a second down must succeed:\n{}",
        show(&again)
    );
    drop(guard);
    eprintln!(
        "up took {up_secs:.1} s; the whole test {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// Parses a command's `--json` output.
fn json_of(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("output is not JSON ({e}):\n{}", show(o)))
}

/// `add-node --power 2` (a 5th node on a new owner: running, registered for both tokens,
/// listed in state.json and `status --json`; it joins at a later epoch, on every node and in
/// its own view), `transfer` of one of its tokens to a new account (ownerOf changes; its power
/// drops to 1 at a later epoch), a transfer back (the recorded key of the new account), `burn`
/// of node0's only token (node0 leaves the set at a later epoch and calls itself `removed`).
/// Prints the time from each transaction to the epoch that applies it on every node.
async fn live_membership_commands(dir: &Path, cluster: &Cluster, deadline: Instant) {
    let c = cluster.instance();
    let t = Instant::now();
    let add = testnet(dir, &["add-node", "--power", "2", "--json"], deadline);
    assert!(add.status.success(), "add-node failed:\n{}", show(&add));
    let a = json_of(&add);
    eprintln!("add-node took {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(a["name"], "node4", "{a}");
    let address: Address = a["address"].as_str().unwrap().parse().unwrap();
    let owner: Address = a["owner"].as_str().unwrap().parse().unwrap();
    let tokens: Vec<u64> = a["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap())
        .collect();
    assert_eq!(tokens.len(), 2, "{a}");
    assert_eq!(a["registration_txs"].as_array().unwrap().len(), 2, "{a}");
    for &t in &tokens {
        assert_eq!(c.ownerOf(U256::from(t)).call().await.unwrap(), owner);
        assert_eq!(c.nodeOf(U256::from(t)).call().await.unwrap(), address);
    }
    assert_eq!(c.powerOf(address).call().await.unwrap(), U256::from(2));
    assert_eq!(c.validatorCount().call().await.unwrap(), U256::from(5));
    assert_eq!(c.totalPower().call().await.unwrap(), U256::from(9));
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let n4 = &state["nodes"][4];
    assert_eq!(n4["name"], "node4");
    assert_eq!(n4["added"], true);
    assert_eq!(n4["power"], 2);
    assert_eq!(
        n4["owner"].as_str().unwrap().parse::<Address>().unwrap(),
        owner
    );
    let pid = n4["process"]["pid"].as_u64().expect("node4 has a process");
    assert!(alive(pid), "node4 (pid {pid}) runs");
    assert!(alive(n4["simulator"]["pid"].as_u64().unwrap()));
    let genesis = std::fs::read_to_string(dir.join("genesis.json")).unwrap();
    let home = PathBuf::from(n4["home"].as_str().unwrap());
    assert_eq!(
        std::fs::read_to_string(home.join("genesis.json")).unwrap(),
        genesis,
        "node4 runs with the cluster's genesis.json"
    );
    let st = testnet(dir, &["status", "--json"], deadline);
    assert!(st.status.success(), "{}", show(&st));
    let report = json_of(&st);
    let e = report["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "node4")
        .unwrap_or_else(|| panic!("status --json lists node4:\n{}", show(&st)))
        .clone();
    assert_eq!(e["power"], 2, "{e}");
    assert_eq!(e["pid"].as_u64(), Some(pid), "{e}");
    assert!(
        e["epoch"].is_u64() && e["epoch_power"].is_u64(),
        "node4's API answers: {e}"
    );

    // node4 joins at a later epoch, on every node (its own view included)
    let all = nodes_of(dir);
    let watch: Vec<&common::NodeRef> = all.iter().collect();
    let mut want = BTreeMap::from([
        ("node0", 1),
        ("node1", 1),
        ("node2", 2),
        ("node3", 3),
        ("node4", 2),
    ]);
    let block = a["registered_in_blocks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|b| b.as_u64())
        .max()
        .unwrap();
    let (joined, e1) = wait_set(&watch, &all, block, &want, "add-node").await;
    assert!(e1 >= 1, "a new epoch: {e1}");
    eprintln!("registration mined -> node4 a member on every node (epoch {e1}): {joined:.1} s");
    let st = json_of(&testnet(dir, &["status", "--json"], deadline));
    let e = st["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "node4")
        .unwrap()
        .clone();
    assert_eq!(e["epoch_power"], 2, "{e}");
    assert_eq!(e["role"], "validator", "{e}");

    // transfer one of node4's tokens to a fresh account
    let token = tokens[0].to_string();
    let tr = testnet(
        dir,
        &["transfer", "--token-id", &token, "--to", "new", "--json"],
        deadline,
    );
    assert!(tr.status.success(), "transfer failed:\n{}", show(&tr));
    let r = json_of(&tr);
    let to: Address = r["to"].as_str().unwrap().parse().unwrap();
    assert_ne!(to, owner);
    assert_eq!(
        r["from"].as_str().unwrap().parse::<Address>().unwrap(),
        owner
    );
    assert_eq!(r["new_account"], true);
    assert_eq!(r["unregistered_from"], "node4");
    assert!(r["tx_hash"].as_str().unwrap().starts_with("0x"), "{r}");
    assert_eq!(c.ownerOf(U256::from(tokens[0])).call().await.unwrap(), to);
    assert_eq!(
        c.nodeOf(U256::from(tokens[0])).call().await.unwrap(),
        Address::ZERO
    );
    assert_eq!(c.powerOf(address).call().await.unwrap(), U256::from(1));
    want.insert("node4", 1);
    let (dropped, e2) = wait_set(
        &watch,
        &all,
        r["block"].as_u64().unwrap(),
        &want,
        "transfer",
    )
    .await;
    assert!(e2 > e1, "epoch {e2} after {e1}");
    eprintln!("transfer mined -> node4's power 1 on every node (epoch {e2}): {dropped:.1} s");
    // the new account's key is recorded: the token can move on (back to node4's owner)
    let back = testnet(
        dir,
        &[
            "transfer",
            "--token-id",
            &token,
            "--to",
            &owner.to_string(),
            "--json",
        ],
        deadline,
    );
    assert!(
        back.status.success(),
        "transfer back failed:\n{}",
        show(&back)
    );
    assert_eq!(
        c.ownerOf(U256::from(tokens[0])).call().await.unwrap(),
        owner
    );

    // burn node0's only token: node0 is no validator any more
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let n0 = &state["nodes"][0];
    let n0_addr: Address = n0["address"].as_str().unwrap().parse().unwrap();
    let n0_token = n0["tokens"][0].as_u64().unwrap();
    let burn = testnet(
        dir,
        &["burn", "--token-id", &n0_token.to_string(), "--json"],
        deadline,
    );
    assert!(burn.status.success(), "burn failed:\n{}", show(&burn));
    let b = json_of(&burn);
    assert_eq!(b["unregistered_from"], "node0");
    assert!(
        c.ownerOf(U256::from(n0_token)).call().await.is_err(),
        "burned"
    );
    assert_eq!(c.powerOf(n0_addr).call().await.unwrap(), U256::ZERO);
    assert_eq!(c.validatorCount().call().await.unwrap(), U256::from(4));
    want.remove("node0");
    let rest: Vec<&common::NodeRef> = all.iter().filter(|n| n.name != "node0").collect();
    let (left, e3) = wait_set(&rest, &all, b["block"].as_u64().unwrap(), &want, "burn").await;
    assert!(e3 > e2, "epoch {e3} after {e2}");
    eprintln!("burn mined -> node0 out of the set on every other node (epoch {e3}): {left:.1} s");
    // node0 says it was removed
    let client = alloy::transports::http::reqwest::Client::new();
    let t0 = Instant::now();
    loop {
        let s = get_json(&client, &format!("{}/status", all[0].http_url)).await;
        if s.as_ref().is_some_and(|s| s["role"] == "removed") {
            break;
        }
        assert!(
            t0.elapsed() < EPOCH_WAIT,
            "node0 does not report role `removed` after its token was burned: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    assert_eq!(state["nodes"][0]["power"], 0);
    assert_eq!(state["nodes"][4]["power"], 1);
    // a token the run holds no key for is refused with a clear message
    let bad = testnet(
        dir,
        &["transfer", "--token-id", "999", "--to", "new"],
        deadline,
    );
    assert!(!bad.status.success(), "{}", show(&bad));
    eprintln!(
        "add-node, transfers and burn took {:.1} s",
        t.elapsed().as_secs_f64()
    );
}
