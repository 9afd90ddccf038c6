//! Live membership end to end, under load: `testnet up --detach --powers 1,1,1,3` and an open-loop KV
//! load on the initial nodes for the whole run, then, one after the other,
//! - `add-node`: a 5th node joins at a later epoch on every node and then signs QCs (it votes);
//! - node1's owner edits its connection URL: every node shows the new URL, no epoch change;
//! - `transfer` of one of node3's tokens: node3's power drops from 3 to 2 at a later epoch;
//! - `burn` of node0's only token: node0 leaves the set (it says `removed` itself);
//! - node3, holding the most power (2 of 5, so it leads two rounds in five, the closing ones
//!   among them), loses its last tokens: the new epoch still starts and every remaining member
//!   reaches it.
//!
//! Then every acknowledged transaction is committed, none twice, and all five nodes (the two
//! removed ones follow as observers) hold the same chain. The figures (registration to epoch,
//! transfer to loss of power) are printed. Bounded at 240 s.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use alloy::primitives::Address;
use alloy::signers::local::PrivateKeySigner;
use alloy::transports::http::reqwest;
use common::{NodeRef, get_json, nodes_of, run_testnet, show, wait_set};
use membership::contract::DstackMembershipNFT;

const BUDGET: Duration = Duration::from_secs(240);
/// The load's length: it spans every membership change.
const LOAD_SECONDS: &str = "75";

fn testnet(dir: &Path, args: &[&str], deadline: Instant) -> serde_json::Value {
    let out = run_testnet(dir, args, deadline, None);
    assert!(
        out.status.success(),
        "testnet {args:?} failed:\n{}",
        show(&out)
    );
    if args.contains(&"--json") {
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("testnet {args:?}: not JSON ({e}):\n{}", show(&out)))
    } else {
        serde_json::Value::Null
    }
}

struct DownOnDrop(PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let _ = run_testnet(
            &self.0,
            &["down"],
            Instant::now() + Duration::from_secs(30),
            None,
        );
    }
}

fn tokens_of(dir: &Path, node: usize) -> Vec<String> {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    state["nodes"][node]["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_u64().unwrap().to_string())
        .collect()
}

fn by_name<'a>(all: &'a [NodeRef], names: &[&str]) -> Vec<&'a NodeRef> {
    all.iter()
        .filter(|n| names.contains(&n.name.as_str()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_follows_the_nft_under_load() {
    let started = Instant::now();
    let deadline = started + BUDGET;
    let tmp = tempfile::Builder::new()
        .prefix("tlm")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let _guard = DownOnDrop(dir.clone());
    testnet(&dir, &["up", "--detach", "--powers", "1,1,1,3"], deadline);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();

    // The load runs beside every change (on the four initial nodes; a removed one answers 503).
    let load_dir = dir.clone();
    let load = std::thread::spawn(move || {
        run_testnet(
            &load_dir,
            &[
                "load",
                "--rate",
                "40",
                "--tx-size",
                "128",
                "--duration",
                LOAD_SECONDS,
                "--grace",
                "40",
                "--json",
            ],
            deadline,
            None,
        )
    });

    // 1. a 5th node joins at a later epoch, then votes.
    let a = testnet(&dir, &["add-node", "--power", "1", "--json"], deadline);
    let block = a["registered_in_blocks"][0].as_u64().unwrap();
    let all = nodes_of(&dir);
    let everyone: Vec<&NodeRef> = all.iter().collect();
    let mut want = BTreeMap::from([
        ("node0", 1),
        ("node1", 1),
        ("node2", 1),
        ("node3", 3),
        ("node4", 1),
    ]);
    let (joined, e1) = wait_set(&everyone, &all, block, &want, "add-node").await;
    eprintln!("registration mined -> node4 a member on every node (epoch {e1}): {joined:.1} s");
    let node4 = all[4].address.clone();
    let t = Instant::now();
    loop {
        let b = get_json(&client, &format!("{}/blocks/latest", all[1].http_url))
            .await
            .unwrap_or_default();
        let signed = b["qc_signers"]
            .as_array()
            .is_some_and(|s| s.iter().any(|x| x.as_str() == Some(node4.as_str())));
        if signed && b["epoch"].as_u64() >= Some(e1) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "node4 never signed a QC in epoch {e1}: {b}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "node4 signs QCs {:.1} s after joining",
        t.elapsed().as_secs_f64()
    );

    // 1b. a connection-URL edit reaches every node without an epoch change.
    let st: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    let owner: PrivateKeySigner = st["nodes"][1]["owner_key"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let rpc = st["chain"]["rpc_url"].as_str().unwrap();
    let contract: Address = st["chain"]["contract"].as_str().unwrap().parse().unwrap();
    let peer_id = get_json(&client, &format!("{}/status", all[1].http_url))
        .await
        .unwrap_or_default()["peer_id"]
        .as_str()
        .unwrap()
        .to_string();
    let new_url = format!(
        "{}/p2p/{peer_id}",
        st["nodes"][1]["p2p_url"].as_str().unwrap()
    );
    let c = DstackMembershipNFT::new(contract, testnet::chain::wallet(rpc, &owner).unwrap());
    c.updateConnectionUrl(all[1].address.parse().unwrap(), new_url.clone())
        .send()
        .await
        .expect("updateConnectionUrl")
        .get_receipt()
        .await
        .expect("mined");
    let t = Instant::now();
    loop {
        let mut last = serde_json::Value::Null;
        let mut seen = 0;
        for n in &all {
            let v = get_json(&client, &format!("{}/validators", n.http_url))
                .await
                .unwrap_or_default();
            let url = v["validators"].as_array().and_then(|vs| {
                vs.iter()
                    .find(|m| m["address"].as_str() == Some(all[1].address.as_str()))
                    .and_then(|m| m["connection_url"].as_str().map(str::to_string))
            });
            assert_eq!(
                v["epoch"].as_u64(),
                Some(e1),
                "a URL edit changed the epoch: {v}"
            );
            if url.as_deref() == Some(new_url.as_str()) {
                seen += 1;
            }
            last = v;
        }
        if seen == all.len() {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "node1's new URL not on every node: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    eprintln!(
        "URL edit on every node after {:.1} s, epoch unchanged",
        t.elapsed().as_secs_f64()
    );

    // 2. one of node3's three tokens moves away: its power drops at a later epoch.
    let node3_tokens = tokens_of(&dir, 3);
    let tr = testnet(
        &dir,
        &[
            "transfer",
            "--token-id",
            &node3_tokens[0],
            "--to",
            "new",
            "--json",
        ],
        deadline,
    );
    want.insert("node3", 2);
    let (dropped, e2) = wait_set(
        &everyone,
        &all,
        tr["block"].as_u64().unwrap(),
        &want,
        "transfer",
    )
    .await;
    assert!(e2 > e1, "epoch {e2} after {e1}");
    eprintln!("transfer mined -> node3's power 3 -> 2 on every node (epoch {e2}): {dropped:.1} s");

    // 3. node0's only token burns: it leaves, and knows it.
    let bu = testnet(
        &dir,
        &["burn", "--token-id", &tokens_of(&dir, 0)[0], "--json"],
        deadline,
    );
    want.remove("node0");
    let rest = by_name(&all, &["node1", "node2", "node3", "node4"]);
    let (left, e3) = wait_set(&rest, &all, bu["block"].as_u64().unwrap(), &want, "burn").await;
    assert!(e3 > e2, "epoch {e3} after {e2}");
    eprintln!("burn mined -> node0 out of the set on every member (epoch {e3}): {left:.1} s");

    // 4. node3 (2 of 5, the most power) loses its last tokens.
    let mut last_block = 0;
    for token in &node3_tokens[1..] {
        let tr = testnet(
            &dir,
            &["transfer", "--token-id", token, "--to", "new", "--json"],
            deadline,
        );
        last_block = tr["block"].as_u64().unwrap();
    }
    want.remove("node3");
    let remaining = by_name(&all, &["node1", "node2", "node4"]);
    let (gone, e4) = wait_set(&remaining, &all, last_block, &want, "node3 removed").await;
    assert!(e4 > e3, "epoch {e4} after {e3}");
    eprintln!("node3's last transfer mined -> every remaining member in epoch {e4}: {gone:.1} s");
    for (i, role) in [(0, "removed"), (3, "removed"), (4, "validator")] {
        let s = get_json(&client, &format!("{}/status", all[i].http_url))
            .await
            .unwrap_or_default();
        assert_eq!(s["role"], role, "node{i}: {s}");
    }

    // 5. every acknowledged transaction committed, none twice; one chain everywhere.
    let out = load.join().expect("load thread");
    assert!(out.status.success(), "load failed:\n{}", show(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).expect("load JSON");
    let accepted = r["accepted"].as_u64().unwrap();
    assert!(accepted > 0, "{r}");
    assert_eq!(
        r["committed"].as_u64(),
        Some(accepted),
        "acknowledged but lost: {r}"
    );
    eprintln!("load: {r}");
    let mut heights = Vec::new();
    for n in &all {
        let s = get_json(&client, &format!("{}/status", n.http_url))
            .await
            .unwrap_or_default();
        heights.push(s["committed_height"].as_u64().unwrap_or(0));
    }
    let top = *heights.iter().min().unwrap();
    assert!(top > 0, "heights {heights:?}");
    let mut seen = HashSet::new();
    let mut epoch_starts = Vec::new();
    let mut prev_epoch = 0;
    for h in 1..=top {
        let reference = get_json(&client, &format!("{}/blocks/{h}", all[1].http_url))
            .await
            .unwrap_or_else(|| panic!("node1 has no block {h}"));
        for tx in reference["transactions"].as_array().unwrap() {
            assert!(
                seen.insert(tx.as_str().unwrap().to_string()),
                "transaction {tx} committed twice (again at height {h})"
            );
        }
        let epoch = reference["epoch"].as_u64().unwrap();
        if epoch != prev_epoch {
            epoch_starts.push((epoch, h));
            prev_epoch = epoch;
        }
        // Every node at every 5th height and around each epoch change; node1 at all.
        if h % 5 == 0 || epoch_starts.last().is_some_and(|&(_, s)| s + 1 >= h) {
            for n in &all {
                let b = get_json(&client, &format!("{}/blocks/{h}", n.http_url))
                    .await
                    .unwrap_or_default();
                assert_eq!(b["id"], reference["id"], "{} differs at height {h}", n.name);
            }
        }
    }
    eprintln!(
        "{top} blocks agree on all five nodes; epochs start at {epoch_starts:?}; {} distinct \
         transactions; whole test {:.1} s",
        seen.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(
        epoch_starts.len(),
        e4 as usize,
        "the ledger holds every epoch: {epoch_starts:?}"
    );
}
