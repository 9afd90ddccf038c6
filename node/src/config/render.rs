//! Writing a configuration back as a commented `config.toml` (what `init` writes and what a
//! loaded configuration renders to).

use super::*;

/// The commented `config.toml` that `init` writes, with these values.
pub fn render(cfg: &Config) -> String {
    let list = |v: &[String]| {
        let items: Vec<String> = v.iter().map(|s| toml_str(s)).collect();
        format!("[{}]", items.join(", "))
    };
    format!(
        r#"# dstack-node settings (node-local). Cluster parameters such as timeouts and batch limits
# live in the cluster's genesis.json, which every operator of the cluster shares.
# Every key can be overridden by the environment, DSTACK_NODE_<SECTION>_<KEY> (lists are
# comma-separated), or on the command line with --set section.key=value.

[chain]
# JSON-RPC endpoint of the chain holding the membership contract (the one endpoint when rpc_urls
# is empty).
rpc_url = {rpc}
# Several independent endpoints of that chain (distinct providers; a provider can lie or serve
# another chain). The validator-set oracle reads the pinned block's hash and the set at that hash
# from every one and uses a reading only when rpc_quorum of them agree on block and set;
# otherwise the node keeps its previous view and logs which endpoint said what. When set, rpc_url
# must be "" or one of them; the first also serves start-up reads and /registration.
rpc_urls = {rpc_urls}
# How many endpoints must agree; 0: all of them. With half of them or fewer, two answers can each
# reach the quorum: that is a disagreement too.
rpc_quorum = {rpc_quorum}

[cluster]
# The cluster's genesis file (relative to this directory).
genesis = {genesis}

[dstack]
# The dstack guest agent: a Unix socket path or an http:// URL (the simulator in development).
endpoint = {endpoint}
# The pinned KMS root (0x address or compressed public key); empty: the contract's KMS root.
kms_root = {kms}

[node]
# The NFT owner GET /registration serves registration payloads for (empty: disabled).
owner_address = {owner}
# The database directory (relative to this directory). Locked while the node runs.
data_dir = {data}

[p2p]
# libp2p multiaddrs to listen on.
listen = {listen}
# Multiaddrs other nodes reach this one at (register one of them as the connection URL).
external = {external}
# Extra peers to dial at start, besides the validators' registered connection URLs.
bootstrap = {bootstrap}

[api]
# The HTTP JSON API (/health, /status, /txs, ...).
listen = {api}
# Prometheus /metrics (the API serves /metrics too).
metrics_listen = {metrics}

[log]
# "human" or "json".
format = {format}
# A tracing filter, e.g. "info" or "node=debug,info".
level = {level}

[mempool]
# Local transactions waiting for commit, at most (beyond: HTTP 503).
max_pending_txs = {mpt}
# Bytes of those transactions, at most.
max_pending_bytes = {mpb}
# A batch is sealed this long (ms) after its first transaction, or sooner when full.
batch_timeout_ms = {bt}
# With nothing to propose and nothing uncommitted, a leader waits this long (ms) before its empty
# block (at once when transactions arrive). 0: at once. At most half the round timeout applies.
empty_block_interval_ms = {ebi}
# Bytes per second of batches read from all members' batch streams together, shared by voting
# power (a member of power p of P gets p/P of it; beyond it its stream is read more slowly).
# 0: unlimited.
peer_batch_bytes_per_sec = {pbr}

[storage]
# Committed heights kept on disk (blocks with their commit proofs, transaction lists, batches):
# older ones are pruned in the background, except the blocks that ended an epoch (every node
# verifies history with them). A node that lags further than this cannot sync from this one.
# 0 keeps everything (an archive node).
retain_heights = {rh}
# Bytes the data directory may take (0: no quota). Above it the node refuses new transactions
# (HTTP 503) and other members' batches, and keeps committing and pruning until it is below.
max_disk_bytes = {mdb}
[serve]
# Budgets for answering other nodes' batch, block and sync requests, read from the store by
# these worker threads (never the consensus task); non-members may occupy all but one of them.
workers = {sw}
# Each member: requests per second (refill), at once after a quiet spell (burst), queued or being
# answered at once (in flight), and response bytes per second.
member_requests_per_sec = {mr}
member_request_burst = {mb}
member_in_flight = {mf}
member_bytes_per_sec = {mby}
# Each non-member (anyone may connect, so these are small).
non_member_requests_per_sec = {nr}
non_member_request_burst = {nb}
non_member_in_flight = {nf}
non_member_bytes_per_sec = {nby}
# All non-members together, however many PeerIds they use.
non_member_pool_requests_per_sec = {pr}
non_member_pool_request_burst = {pb}
non_member_pool_in_flight = {pf}
non_member_pool_bytes_per_sec = {pby}
# Non-member peers tracked at most (idle ones are forgotten first; beyond it new ones are refused).
max_non_member_peers = {mnp}
"#,
        rpc = toml_str(&cfg.chain.rpc_url),
        rpc_urls = list(&cfg.chain.rpc_urls),
        rpc_quorum = cfg.chain.rpc_quorum,
        genesis = toml_str(&cfg.cluster.genesis),
        endpoint = toml_str(&cfg.dstack.endpoint),
        kms = toml_str(&cfg.dstack.kms_root),
        owner = toml_str(&cfg.node.owner_address),
        data = toml_str(&cfg.node.data_dir),
        listen = list(&cfg.p2p.listen),
        external = list(&cfg.p2p.external),
        bootstrap = list(&cfg.p2p.bootstrap),
        api = toml_str(&cfg.api.listen),
        metrics = toml_str(&cfg.api.metrics_listen),
        format = toml_str(&cfg.log.format),
        level = toml_str(&cfg.log.level),
        mpt = cfg.mempool.max_pending_txs,
        mpb = cfg.mempool.max_pending_bytes,
        bt = cfg.mempool.batch_timeout_ms,
        ebi = cfg.mempool.empty_block_interval_ms,
        pbr = cfg.mempool.peer_batch_bytes_per_sec,
        rh = cfg.storage.retain_heights,
        mdb = cfg.storage.max_disk_bytes,
        sw = cfg.serve.workers,
        mr = cfg.serve.member_requests_per_sec,
        mb = cfg.serve.member_request_burst,
        mf = cfg.serve.member_in_flight,
        mby = cfg.serve.member_bytes_per_sec,
        nr = cfg.serve.non_member_requests_per_sec,
        nb = cfg.serve.non_member_request_burst,
        nf = cfg.serve.non_member_in_flight,
        nby = cfg.serve.non_member_bytes_per_sec,
        pr = cfg.serve.non_member_pool_requests_per_sec,
        pb = cfg.serve.non_member_pool_request_burst,
        pf = cfg.serve.non_member_pool_in_flight,
        pby = cfg.serve.non_member_pool_bytes_per_sec,
        mnp = cfg.serve.max_non_member_peers,
    )
}

pub(super) fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}
