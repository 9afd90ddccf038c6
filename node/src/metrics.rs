//! Prometheus metrics with exactly the names of DESIGN section 9 (served at `GET /metrics`).
//!
//! prometheus-client appends `_total` to counters, so counters are registered without it.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label set with one `address` label (0x-prefixed lowercase hex).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AddressLabel {
    /// The validator's address.
    pub address: String,
}

/// A label set with one `reason` label.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    /// Why a message was rejected or ignored.
    pub reason: String,
}

/// A label set with one `signer` label (0x-prefixed lowercase hex address).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignerLabel {
    /// The equivocating signer.
    pub signer: String,
}

/// A label set with one `file` label (a part of the data directory).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FileLabel {
    /// `node.redb`, `txindex.redb` or `batches`.
    pub file: String,
}

/// A label set with one `kind` label (what was pruned).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    /// `heights` or `batches`.
    pub kind: String,
}

/// A label set with one `endpoint` label (an RPC endpoint's scheme, host and port).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabel {
    /// The endpoint, without credentials, path or query.
    pub endpoint: String,
}

/// The chain oracle's counters. The chain view counts into them and the node's registry serves
/// them; the handles share their values, so the view can be built before the registry.
#[derive(Clone, Debug, Default)]
pub struct OracleMetrics {
    /// `dstack_oracle_disagreements_total`: reads where RPC endpoints answered differently.
    pub disagreements: Counter,
    /// `dstack_oracle_rpc_errors_total{endpoint}`: reads an endpoint did not answer (after its
    /// retries).
    pub rpc_errors: Family<EndpointLabel, Counter>,
    /// `dstack_oracle_malformed_members_total`: snapshots refused because a member's public key
    /// is not 64 bytes.
    pub malformed_members: Counter,
}

impl OracleMetrics {
    /// Counts a read `endpoint` did not answer.
    pub fn rpc_error(&self, endpoint: &str) {
        self.rpc_errors
            .get_or_create(&EndpointLabel {
                endpoint: endpoint.to_owned(),
            })
            .inc();
    }
}

/// Every metric a node exports. Cheap handles: clone the fields freely.
pub struct Metrics {
    registry: Registry,
    /// `dstack_consensus_height`: the highest committed height.
    pub height: Gauge,
    /// `dstack_consensus_round`: the current round.
    pub round: Gauge,
    /// `dstack_consensus_epoch`: the current epoch.
    pub epoch: Gauge,
    /// `dstack_validators_power`: the total power of the current set.
    pub validators_power: Gauge,
    /// `dstack_validator_power{address}`: each member's power.
    pub validator_power: Family<AddressLabel, Gauge>,
    /// `dstack_block_interval_seconds`: time between consecutive commits.
    pub block_interval: Histogram,
    /// `dstack_commit_latency_seconds`: from a transaction's acceptance to its commit.
    pub commit_latency: Histogram,
    /// `dstack_timeouts_total`: round timeouts this node signed.
    pub timeouts: Counter,
    /// `dstack_messages_rejected_total{reason}`.
    pub rejected: Family<ReasonLabel, Counter>,
    /// `dstack_messages_ignored_total{reason}`.
    pub ignored: Family<ReasonLabel, Counter>,
    /// `dstack_evidence_total{signer}`: equivocations seen, by signer.
    pub evidence: Family<SignerLabel, Counter>,
    /// `dstack_epoch_changes_total`.
    pub epoch_changes: Counter,
    /// `dstack_p2p_peers`: connected peers.
    pub p2p_peers: Gauge,
    /// `dstack_mempool_transactions`: local pending transactions.
    pub mempool_transactions: Gauge,
    /// `dstack_syncing`: 1 while block sync runs.
    pub syncing: Gauge<u64, AtomicU64>,
    /// `dstack_storage_bytes{file}`: what each part of the data directory takes.
    pub storage_bytes: Family<FileLabel, Gauge<u64, AtomicU64>>,
    /// `dstack_storage_pruned_total{kind}`: heights and batches deleted below the horizon.
    pub storage_pruned: Family<KindLabel, Counter>,
    /// `dstack_storage_over_quota`: 1 while the store is above `storage.max_disk_bytes`.
    pub storage_over_quota: Gauge<u64, AtomicU64>,
    /// `dstack_batch_intake_wait_seconds_total`: time members' batch streams were left unread
    /// because their sender was over its share of `mempool.peer_batch_bytes_per_sec`.
    pub batch_intake_wait: Counter<f64, AtomicU64>,
    /// The chain oracle's counters.
    pub oracle: OracleMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        Self::with_oracle(OracleMetrics::default())
    }

    /// Creates and registers every metric, the oracle's being the given handles (those a chain
    /// view counts into).
    pub fn with_oracle(oracle: OracleMetrics) -> Self {
        let mut registry = Registry::default();
        let height = Gauge::default();
        let round = Gauge::default();
        let epoch = Gauge::default();
        let validators_power = Gauge::default();
        let validator_power = Family::<AddressLabel, Gauge>::default();
        let block_interval = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let commit_latency = Histogram::new(exponential_buckets(0.01, 2.0, 14));
        let timeouts = Counter::default();
        let rejected = Family::<ReasonLabel, Counter>::default();
        let ignored = Family::<ReasonLabel, Counter>::default();
        let evidence = Family::<SignerLabel, Counter>::default();
        let epoch_changes = Counter::default();
        let p2p_peers = Gauge::default();
        let mempool_transactions = Gauge::default();
        let syncing = Gauge::<u64, AtomicU64>::default();
        let storage_bytes = Family::<FileLabel, Gauge<u64, AtomicU64>>::default();
        let storage_pruned = Family::<KindLabel, Counter>::default();
        let storage_over_quota = Gauge::<u64, AtomicU64>::default();
        let batch_intake_wait = Counter::<f64, AtomicU64>::default();
        let r = &mut registry;
        r.register(
            "dstack_consensus_height",
            "Highest committed height",
            height.clone(),
        );
        r.register("dstack_consensus_round", "Current round", round.clone());
        r.register("dstack_consensus_epoch", "Current epoch", epoch.clone());
        r.register(
            "dstack_validators_power",
            "Total voting power of the current validator set",
            validators_power.clone(),
        );
        r.register(
            "dstack_validator_power",
            "Voting power of each validator (number of NFTs authorizing it)",
            validator_power.clone(),
        );
        r.register(
            "dstack_block_interval_seconds",
            "Seconds between consecutive commits",
            block_interval.clone(),
        );
        r.register(
            "dstack_commit_latency_seconds",
            "Seconds from accepting a transaction to committing it",
            commit_latency.clone(),
        );
        r.register("dstack_timeouts", "Round timeouts signed", timeouts.clone());
        r.register(
            "dstack_messages_rejected",
            "Messages rejected (peer penalized), by reason",
            rejected.clone(),
        );
        r.register(
            "dstack_messages_ignored",
            "Messages ignored (not forwarded), by reason",
            ignored.clone(),
        );
        r.register(
            "dstack_evidence",
            "Equivocation evidence recorded, by signer",
            evidence.clone(),
        );
        r.register(
            "dstack_epoch_changes",
            "Epoch changes committed",
            epoch_changes.clone(),
        );
        r.register("dstack_p2p_peers", "Connected peers", p2p_peers.clone());
        r.register(
            "dstack_mempool_transactions",
            "Local transactions pending in the mempool",
            mempool_transactions.clone(),
        );
        r.register(
            "dstack_syncing",
            "1 while the node catches up by block sync",
            syncing.clone(),
        );
        r.register(
            "dstack_storage_bytes",
            "Bytes each part of the data directory takes",
            storage_bytes.clone(),
        );
        r.register(
            "dstack_storage_pruned",
            "Heights and batches deleted below the retention horizon",
            storage_pruned.clone(),
        );
        r.register(
            "dstack_storage_over_quota",
            "1 while the store is above its disk quota (new transactions and batches refused)",
            storage_over_quota.clone(),
        );
        r.register(
            "dstack_batch_intake_wait_seconds",
            "Seconds members' batch streams were left unread: the sender was over its share of \
             the batch intake (mempool.peer_batch_bytes_per_sec)",
            batch_intake_wait.clone(),
        );
        r.register(
            "dstack_oracle_disagreements",
            "Validator-set reads where the RPC endpoints answered differently",
            oracle.disagreements.clone(),
        );
        r.register(
            "dstack_oracle_rpc_errors",
            "Validator-set reads an RPC endpoint did not answer, by endpoint",
            oracle.rpc_errors.clone(),
        );
        r.register(
            "dstack_oracle_malformed_members",
            "Validator-set snapshots refused for a member whose public key is not 64 bytes",
            oracle.malformed_members.clone(),
        );
        Self {
            registry,
            height,
            round,
            epoch,
            validators_power,
            validator_power,
            block_interval,
            commit_latency,
            timeouts,
            rejected,
            ignored,
            evidence,
            epoch_changes,
            p2p_peers,
            mempool_transactions,
            syncing,
            storage_bytes,
            storage_pruned,
            storage_over_quota,
            batch_intake_wait,
            oracle,
        }
    }

    /// Counts a rejected message.
    pub fn reject(&self, reason: &str) {
        self.rejected
            .get_or_create(&ReasonLabel {
                reason: reason_label(reason),
            })
            .inc();
    }

    /// Adds time a member's batch stream waited for its share of the intake.
    pub fn batch_intake_waited(&self, wait: std::time::Duration) {
        self.batch_intake_wait.inc_by(wait.as_secs_f64());
    }

    /// Counts an ignored message.
    pub fn ignore(&self, reason: &str) {
        self.ignored
            .get_or_create(&ReasonLabel {
                reason: reason_label(reason),
            })
            .inc();
    }

    /// The text exposition (OpenMetrics) of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// A reason as a short, stable label: the consensus core explains discards in words ("stale
/// timeout"); dashboards and alerts want identifiers (`stale_timeout`), so every character that
/// is not a letter or digit becomes `_` and letters are lowered.
pub fn reason_label(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    for c in reason.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    out.trim_matches('_').to_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn reasons_become_identifiers() {
        assert_eq!(super::reason_label("stale timeout"), "stale_timeout");
        assert_eq!(
            super::reason_label("TC of another epoch"),
            "tc_of_another_epoch"
        );
        assert_eq!(
            super::reason_label("vote from a non-member"),
            "vote_from_a_non_member"
        );
        assert_eq!(super::reason_label("bad_signature"), "bad_signature");
    }

    use super::*;

    /// Every name of DESIGN section 9, the storage and the oracle's, as they appear in the exposition.
    pub(crate) const NAMES: [&str; 22] = [
        "dstack_consensus_height",
        "dstack_consensus_round",
        "dstack_consensus_epoch",
        "dstack_validators_power",
        "dstack_validator_power",
        "dstack_block_interval_seconds",
        "dstack_commit_latency_seconds",
        "dstack_timeouts_total",
        "dstack_messages_rejected_total",
        "dstack_messages_ignored_total",
        "dstack_evidence_total",
        "dstack_epoch_changes_total",
        "dstack_p2p_peers",
        "dstack_mempool_transactions",
        "dstack_syncing",
        "dstack_storage_bytes",
        "dstack_storage_pruned_total",
        "dstack_storage_over_quota",
        "dstack_oracle_disagreements_total",
        "dstack_oracle_rpc_errors_total",
        "dstack_oracle_malformed_members_total",
        "dstack_batch_intake_wait_seconds_total",
    ];

    #[test]
    fn exposes_exactly_the_design_names() {
        let m = Metrics::new();
        m.height.set(5);
        m.timeouts.inc();
        m.reject("bad_signature");
        m.ignore("stale");
        m.validator_power
            .get_or_create(&AddressLabel {
                address: "0xab".into(),
            })
            .set(3);
        m.evidence
            .get_or_create(&SignerLabel {
                signer: "0xcd".into(),
            })
            .inc();
        m.block_interval.observe(0.5);
        m.storage_bytes
            .get_or_create(&FileLabel {
                file: "batches".into(),
            })
            .set(7);
        m.storage_pruned
            .get_or_create(&KindLabel {
                kind: "heights".into(),
            })
            .inc();
        m.oracle.rpc_error("http://127.0.0.1:8545");
        let text = m.encode();
        for name in NAMES {
            assert!(
                text.lines().any(|l| l.starts_with(name)),
                "{name} missing in:\n{text}"
            );
        }
        assert!(text.contains("dstack_consensus_height 5"), "{text}");
        assert!(text.contains("dstack_timeouts_total 1"), "{text}");
        assert!(
            text.contains(r#"dstack_messages_rejected_total{reason="bad_signature"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"dstack_validator_power{address="0xab"} 3"#),
            "{text}"
        );
        assert!(
            text.contains("dstack_block_interval_seconds_bucket"),
            "{text}"
        );
        assert!(
            text.contains(r#"dstack_oracle_rpc_errors_total{endpoint="http://127.0.0.1:8545"} 1"#),
            "{text}"
        );
        // No metric outside the design's list.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap_or_default();
            assert!(
                NAMES.iter().any(|n| name.starts_with(n)),
                "unexpected metric {name}"
            );
        }
    }

    #[test]
    fn oracle_counters_are_shared_with_the_registry() {
        let oracle = OracleMetrics::default();
        let m = Metrics::with_oracle(oracle.clone());
        oracle.disagreements.inc();
        oracle.malformed_members.inc();
        oracle.rpc_error("http://a:1");
        let text = m.encode();
        assert!(
            text.contains("dstack_oracle_disagreements_total 1"),
            "{text}"
        );
        assert!(
            text.contains("dstack_oracle_malformed_members_total 1"),
            "{text}"
        );
        assert!(
            text.contains(r#"dstack_oracle_rpc_errors_total{endpoint="http://a:1"} 1"#),
            "{text}"
        );
    }
}
