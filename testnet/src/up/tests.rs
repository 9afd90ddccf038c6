use super::{NodeNet, NodePlace, worker_threads};
use crate::netns::NetPlan;

/// Every URL the testnet registers is one the contract accepts (on loopback at any port, and
/// in the chaos suite's namespaces).
#[test]
fn registered_urls_pass_the_contracts_rules() {
    let plan = NetPlan::new("t", 16);
    let mut places: Vec<NodePlace> = [1, 26656, 65535]
        .into_iter()
        .map(|p| NodePlace::loopback([p, 2, 3]))
        .collect();
    places.extend((0..16).map(|i| {
        NodePlace::netns(&NodeNet {
            netns: plan.nodes[i].clone(),
            ip: plan.node_ip(i),
        })
    }));
    for place in places {
        let url = place.p2p_url();
        assert_eq!(membership::connection_url::check(&url), Ok(()), "{url}");
    }
}

#[test]
fn one_worker_each_only_when_nodes_crowd_the_cores() {
    assert_eq!(worker_threads(4, 2), None);
    assert_eq!(worker_threads(5, 2), Some(1));
    assert_eq!(worker_threads(16, 2), Some(1));
    assert_eq!(worker_threads(16, 8), None);
    assert_eq!(
        worker_threads(3, 0),
        Some(1),
        "an unknown core count counts as one"
    );
}
