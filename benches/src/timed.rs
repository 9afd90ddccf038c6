//! `bench start --home H`: `dstack-node start` plus a passive outbound tap that records when the
//! node hands each signed proposal to the network (the proposal time of the consensus-latency
//! metric). The tap adds no message and changes nothing the node does.
//!
//! Before starting, it applies the run's cluster settings from `<run dir>/bench-node.json`
//! (written by the harness): the base round timeout, rewritten into the node's own copy of
//! `genesis.json` (every node rewrites it the same way, so they agree on `genesis_id`), and
//! `--set section.key=value` overrides for `config.toml`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use consensus::types::Message;
use node::driver::DriverConfig;
use node::node::TapFactory;
use node::tap::OutboundTap;
use serde::{Deserialize, Serialize};

use crate::error::{BenchError, io};

/// The file beside each node home where proposals are recorded: `<unix µs> <epoch> <round>
/// <batches>` per line.
pub const PROPOSALS_FILE: &str = "proposals.log";
/// The run-wide node settings file, in the run directory.
pub const SETTINGS_FILE: &str = "bench-node.json";

/// Settings every node of a run applies at start.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSettings {
    /// Base round timeout (ms) written into `genesis.json`; None keeps the genesis value.
    pub base_timeout_ms: Option<u64>,
    /// `section.key=value` overrides passed as `--set`.
    pub sets: Vec<String>,
    /// Keep each node's database in `<data_root>/<node name>` instead of its home (a
    /// diagnostic: on tmpfs, fsync costs nothing).
    #[serde(default)]
    pub data_root: Option<String>,
    /// Numeric cluster parameters written into every node's `genesis.json` (e.g.
    /// `max_block_batches`), the same on every node.
    #[serde(default)]
    pub genesis: Vec<(String, u64)>,
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

struct ProposalLog {
    file: Mutex<std::fs::File>,
}

impl OutboundTap for ProposalLog {
    fn extra(&self, message: &Message) -> Vec<Message> {
        if let Message::Proposal(p) = message {
            let line = format!(
                "{} {} {} {}\n",
                now_us(),
                p.block.epoch(),
                p.block.round(),
                p.block.payload().len()
            );
            let mut f = match self.file.lock() {
                Ok(f) => f,
                Err(e) => e.into_inner(),
            };
            let _ = f.write_all(line.as_bytes());
        }
        Vec::new()
    }
}

/// The tap factory for a node whose home is `home`.
pub fn tap_factory(home: &Path) -> Result<TapFactory, BenchError> {
    let path = home.join(PROPOSALS_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))?;
    let tap: Arc<dyn OutboundTap> = Arc::new(ProposalLog {
        file: Mutex::new(file),
    });
    Ok(Arc::new(move |_: &DriverConfig| tap.clone()))
}

/// The `--set` overrides for the node whose home is `home`.
pub fn node_sets(home: &Path, settings: &NodeSettings) -> Vec<String> {
    let mut sets = settings.sets.clone();
    if let (Some(root), Some(name)) = (&settings.data_root, home.file_name()) {
        sets.push(format!(
            "node.data_dir={}",
            Path::new(root).join(name).display()
        ));
    }
    sets
}

/// The run directory of a node home (`<dir>/nodes/<name>`).
fn run_dir(home: &Path) -> Option<PathBuf> {
    Some(home.parent()?.parent()?.to_path_buf())
}

/// Reads the run's node settings (none written: the defaults).
pub fn load_settings(home: &Path) -> Result<NodeSettings, BenchError> {
    let Some(dir) = run_dir(home) else {
        return Ok(NodeSettings::default());
    };
    let path = dir.join(SETTINGS_FILE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map_err(|e| BenchError::Invalid(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeSettings::default()),
        Err(e) => Err(io(format!("reading {}", path.display()))(e)),
    }
}

/// Writes numeric cluster parameters into `<home>/genesis.json`; each must exist there.
pub fn apply_genesis(home: &Path, params: &[(String, u64)]) -> Result<(), BenchError> {
    if params.is_empty() {
        return Ok(());
    }
    let path = home.join("genesis.json");
    let text = std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
    let mut v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| BenchError::Invalid(format!("{}: {e}", path.display())))?;
    for (k, val) in params {
        match v.get_mut(k) {
            Some(slot) if slot.is_u64() => *slot = (*val).into(),
            _ => {
                return Err(BenchError::Invalid(format!(
                    "genesis.json has no numeric parameter {k}"
                )));
            }
        }
    }
    let out = serde_json::to_string_pretty(&v)
        .map_err(|e| BenchError::Invalid(format!("genesis: {e}")))?;
    std::fs::write(&path, out + "\n").map_err(io(format!("writing {}", path.display())))
}

/// Writes the base timeout into `<home>/genesis.json` (keeping the cap at least the base and
/// `reconfig_wait_ms` below it).
pub fn apply_base_timeout(home: &Path, base_ms: u64) -> Result<(), BenchError> {
    let path = home.join("genesis.json");
    let text = std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
    let mut v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| BenchError::Invalid(format!("{}: {e}", path.display())))?;
    let Some(obj) = v.as_object_mut() else {
        return Err(BenchError::Invalid(format!(
            "{} is not a JSON object",
            path.display()
        )));
    };
    let get = |o: &serde_json::Map<String, serde_json::Value>, k: &str| {
        o.get(k).and_then(|x| x.as_u64()).unwrap_or(0)
    };
    let cap = get(obj, "timeout_cap_ms").max(base_ms);
    let wait = get(obj, "reconfig_wait_ms").min(base_ms / 2);
    obj.insert("base_timeout_ms".into(), base_ms.into());
    obj.insert("timeout_cap_ms".into(), cap.into());
    if obj.contains_key("reconfig_wait_ms") {
        obj.insert("reconfig_wait_ms".into(), wait.into());
    }
    let out = serde_json::to_string_pretty(&v)
        .map_err(|e| BenchError::Invalid(format!("genesis: {e}")))?;
    std::fs::write(&path, out + "\n").map_err(io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_timeout_is_rewritten_with_cap_and_wait() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("genesis.json"),
            r#"{"chain_id":1,"base_timeout_ms":1000,"timeout_cap_ms":4000,"reconfig_wait_ms":500}"#,
        )
        .expect("write");
        apply_base_timeout(dir.path(), 200).expect("apply");
        let v: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(dir.path().join("genesis.json")).expect("read"),
        )
        .expect("json");
        assert_eq!(v["base_timeout_ms"], 200);
        assert_eq!(v["timeout_cap_ms"], 4000);
        assert_eq!(v["reconfig_wait_ms"], 100);
        assert_eq!(v["chain_id"], 1);
    }
}
