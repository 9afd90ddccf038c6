//! End to end on a real anvil: deploy from the artifact, mint to several owners, register nodes
//! through the SDK from simulated TEEs, snapshot, transfer, deregister, change a URL, paginate.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use alloy::primitives::{Address, B256, Bytes, FixedBytes, U256};
use alloy::signers::local::PrivateKeySigner;
use common::*;
use membership::contract::DstackMembershipNFT;
use membership::dstack::GetKeyRequest;
use membership::genesis::PinRule;
use membership::identity::{KmsRoot, TrustAnchor};
use membership::kdf::node_key_path;
use membership::oracle::{BlockRef, Oracle, Snapshot};
use membership::sdk::{Cluster, RegistrationRequest, build_registration};
use membership::simulator::Simulator;

fn power_of(s: &Snapshot, node: Address) -> Option<u64> {
    s.members
        .iter()
        .find(|m| m.address == node)
        .map(|m| m.power)
}

fn check_hash(s: &Snapshot) {
    let sorted: Vec<_> = s
        .members
        .windows(2)
        .map(|w| w[0].address < w[1].address)
        .collect();
    assert!(sorted.iter().all(|b| *b), "members sorted by address");
    let manual = manual_set_hash(
        &s.members
            .iter()
            .map(|m| (m.address, m.public_key.to_vec(), m.power))
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        s.validator_set_hash,
        B256::from(manual),
        "independent ABI encoding"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_snapshot_transfer_url_deregister() {
    let anvil = Anvil::start().await;
    let contract = deploy(&anvil).await;
    assert_eq!(
        contract,
        "0x5FbDB2315678afecb367f032d93F642f64180aa3"
            .parse::<Address>()
            .unwrap(),
        "first deployment of anvil's account 0"
    );
    let owner_c = DstackMembershipNFT::new(contract, anvil.wallet(&deployer()));
    let owners: Vec<PrivateKeySigner> = (0..4).map(|_| PrivateKeySigner::random()).collect();
    for o in &owners {
        anvil.fund(o.address()).await;
    }
    // Token ids: A 1..=3, B 4..=5, C 6, D 7.
    for (o, n) in owners.iter().zip([3u64, 2, 1, 1]) {
        send(owner_c.mintBatch(o.address(), U256::from(n))).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let tees: Vec<_> = (1..=4u8).map(|i| tee(dir.path(), i)).collect();

    let cluster = Cluster::connect(&anvil.url, contract).await.unwrap();
    assert_eq!(cluster.chain_id(), 31337);
    let plan: [(usize, &[u64]); 4] = [(0, &[1, 2, 3]), (1, &[4, 5]), (2, &[6]), (3, &[7])];
    let mut nodes = Vec::new();
    for (i, tokens) in plan {
        let mut node = Address::ZERO;
        for t in tokens {
            let r = cluster
                .register(
                    &tees[i].0,
                    U256::from(*t),
                    &owners[i],
                    &format!("/ip4/127.0.0.1/tcp/{}", 9000 + i),
                )
                .await
                .unwrap();
            node = r.node;
        }
        nodes.push(node);
    }
    // The SDK registered the key dstack derives at the DESIGN path.
    let nk = tees[0]
        .0
        .node_key(31337, contract, "dstack-nft-cluster")
        .await
        .unwrap();
    assert_eq!(nk.address(), nodes[0]);
    assert_eq!(
        nk.path,
        node_key_path(31337, contract, &hex::encode([1u8; 20])).unwrap()
    );

    let peers = cluster.peers().await.unwrap();
    assert_eq!(peers.len(), 4);

    // Snapshot at the pinned (finalized = head - 2) block, once it covers the registrations.
    let oracle = Oracle::new(anvil.reader(), contract, PinRule::Finalized, 0);
    let snap = eventually("4 members at the finalized block", 30, || async {
        oracle
            .snapshot()
            .await
            .ok()
            .filter(|s| s.members.len() == 4)
    })
    .await;
    check_hash(&snap);
    assert_eq!(
        nodes
            .iter()
            .map(|n| power_of(&snap, *n).unwrap())
            .collect::<Vec<_>>(),
        vec![3, 2, 1, 1]
    );
    assert_eq!(snap.total_power(), 7);
    // Reading by hash again gives the same snapshot.
    assert_eq!(oracle.snapshot_at(snap.block).await.unwrap(), snap);

    // Transfer B's token 5 to C: node 2 drops to power 1 from that block on, not before.
    let b = DstackMembershipNFT::new(contract, anvil.wallet(&owners[1]));
    let t_block =
        send(b.transferFrom(owners[1].address(), owners[2].address(), U256::from(5))).await;
    let pinned = oracle.pinned_block().await.unwrap();
    if pinned.number < t_block {
        let before = oracle.snapshot_at(pinned).await.unwrap();
        assert_eq!(
            power_of(&before, nodes[1]),
            Some(2),
            "not before the pinned block reaches it"
        );
    }
    let prev = oracle
        .block_by_number(alloy::eips::BlockNumberOrTag::Number(t_block - 1))
        .await
        .unwrap();
    assert_eq!(
        power_of(&oracle.snapshot_at(prev).await.unwrap(), nodes[1]),
        Some(2)
    );
    let mut follower = oracle
        .clone()
        .follow(snap.clone(), Duration::from_millis(200));
    let changed = tokio::time::timeout(Duration::from_secs(30), follower.next_change())
        .await
        .unwrap()
        .unwrap();
    assert!(changed.block.number >= t_block);
    assert_eq!(power_of(&changed, nodes[1]), Some(1));
    assert_ne!(changed.validator_set_hash, snap.validator_set_hash);
    check_hash(&changed);

    // A URL change is not a set change: same hash, new URL.
    let a = DstackMembershipNFT::new(contract, anvil.wallet(&owners[0]));
    let u_block = send(a.updateConnectionUrl(nodes[0], "/ip4/10.0.0.1/tcp/9100".into())).await;
    let after_url = eventually("pinned block past the URL change", 30, || async {
        let s = oracle.snapshot().await.ok()?;
        (s.block.number >= u_block).then_some(s)
    })
    .await;
    assert_eq!(after_url.validator_set_hash, changed.validator_set_hash);
    let m0 = after_url
        .members
        .iter()
        .find(|m| m.address == nodes[0])
        .unwrap();
    assert_eq!(m0.connection_url, "/ip4/10.0.0.1/tcp/9100");
    let polled = follower.poll_once().await.unwrap();
    assert!(polled.is_none(), "URL edit reported as a set change");

    // Deregister D's node: the follower reports a 3-member set.
    let d = DstackMembershipNFT::new(contract, anvil.wallet(&owners[3]));
    send(d.deregisterNode(U256::from(7))).await;
    let gone = tokio::time::timeout(Duration::from_secs(30), follower.next_change())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gone.members.len(), 3);
    assert_eq!(power_of(&gone, nodes[3]), None);
    check_hash(&gone);
    for (_, t) in tees {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_paginates_past_one_page() {
    const N: usize = 130;
    let anvil = Anvil::start().await;
    let contract = deploy(&anvil).await;
    let owner = PrivateKeySigner::random();
    anvil.fund(owner.address()).await;
    let admin = DstackMembershipNFT::new(contract, anvil.wallet(&deployer()));
    send(admin.mintBatch(owner.address(), U256::from(N))).await;
    let sim = Simulator::from_kms_root(&kms_root(), APP_ID, "01").unwrap();
    let anchor = TrustAnchor {
        kms_root: KmsRoot::Address(membership::identity::address_of(kms_root().verifying_key())),
        app_id: APP_ID,
        purpose: "dstack-nft-cluster".into(),
    };
    let c = DstackMembershipNFT::new(contract, anvil.wallet(&owner));
    let deadline = anvil.deadline().await;
    let mut pending = Vec::new();
    for i in 0..N {
        let instance = [
            i as u8 + 1,
            (i >> 8) as u8,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            7,
        ];
        let path = node_key_path(31337, contract, &hex::encode(instance)).unwrap();
        let r = sim
            .get_key(&GetKeyRequest {
                path,
                purpose: anchor.purpose.clone(),
                algorithm: None,
            })
            .unwrap();
        let key = k256::ecdsa::SigningKey::from_slice(&hex::decode(&r.key).unwrap()).unwrap();
        let chain: Vec<Vec<u8>> = r
            .signature_chain
            .iter()
            .map(|s| hex::decode(s).unwrap())
            .collect();
        let p = build_registration(
            &key,
            &chain,
            &anchor,
            &RegistrationRequest {
                chain_id: 31337,
                contract,
                token_id: U256::from(i + 1),
                owner: owner.address(),
                instance_id: instance,
                connection_url: format!("/ip4/127.0.0.1/tcp/{}", 10000 + i),
                nonce: U256::ZERO,
                deadline,
            },
        )
        .unwrap();
        let tx = c
            .registerNode(
                p.token_id,
                p.proof(),
                FixedBytes(p.instance_id),
                p.connection_url.clone(),
                p.deadline,
                Bytes::copy_from_slice(&p.node_signature),
            )
            .gas(1_000_000)
            .send()
            .await
            .unwrap();
        pending.push(tx);
    }
    let mut last = 0;
    for tx in pending {
        let r = tx.get_receipt().await.unwrap();
        assert!(r.status());
        last = last.max(r.block_number.unwrap());
    }
    let oracle = Oracle::new(anvil.reader(), contract, PinRule::HeadMinusDepth, 0);
    let block = oracle
        .block_by_number(alloy::eips::BlockNumberOrTag::Number(last))
        .await
        .unwrap();
    let t = std::time::Instant::now();
    let snap = oracle.snapshot_at(block).await.unwrap();
    eprintln!("snapshot of {N} members: {:?}", t.elapsed());
    assert_eq!(snap.members.len(), N);
    assert_eq!(snap.total_power(), N as u128);
    check_hash(&snap);
    let cluster = Cluster::connect(&anvil.url, contract).await.unwrap();
    assert_eq!(cluster.peers().await.unwrap().len(), N);
    let _ = BlockRef {
        number: 0,
        hash: B256::ZERO,
    };
}
