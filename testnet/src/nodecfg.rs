//! Setting up one node's home: `dstack-node init --home H --genesis G`, then the run's values
//! written into the `config.toml` init made (comments kept), so `dstack-node start --home H`
//! alone restarts the node exactly as the run started it.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, io};

/// The node binary's capabilities that a run needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NodeCaps {
    /// `dstack-node init` exists.
    pub init: bool,
    /// `dstack-node start` exists.
    pub start: bool,
}

fn has_subcommand(bin: &Path, sub: &str) -> bool {
    Command::new(bin)
        .args([sub, "--help"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("--home"))
        .unwrap_or(false)
}

/// Asks the binary which subcommands it has: `<sub> --help` must succeed and document
/// `--home` (a binary that ignores its arguments does not pass).
pub fn probe(bin: &Path) -> NodeCaps {
    NodeCaps {
        init: has_subcommand(bin, "init"),
        start: has_subcommand(bin, "start"),
    }
}

/// Runs `dstack-node init --home <home> --genesis <genesis>`.
pub fn init(bin: &Path, home: &Path, genesis: &Path) -> Result<(), Error> {
    let out = Command::new(bin)
        .arg("init")
        .arg("--home")
        .arg(home)
        .arg("--genesis")
        .arg(genesis)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Process(format!("running {} init: {e}", bin.display())))?;
    if !out.status.success() {
        return Err(Error::Process(format!(
            "{} init --home {} failed ({}): {}{}",
            bin.display(),
            home.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(())
}

/// Replaces the values of `section.key` lines in a TOML text, keeping every comment and every
/// other line; each key must appear exactly once in its section.
pub fn patch(text: &str, sets: &[(&str, toml::Value)]) -> Result<String, Error> {
    let mut out = String::with_capacity(text.len());
    let mut section = String::new();
    let mut done = vec![false; sets.len()];
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
        }
        let mut replaced = false;
        if !t.starts_with('#')
            && let Some((k, _)) = t.split_once('=')
        {
            let full = format!("{section}.{}", k.trim());
            for (i, (key, value)) in sets.iter().enumerate() {
                if *key == full {
                    if done[i] {
                        return Err(Error::Invalid(format!("config key {key} appears twice")));
                    }
                    out.push_str(&format!("{} = {value}\n", k.trim()));
                    done[i] = true;
                    replaced = true;
                }
            }
        }
        if !replaced {
            out.push_str(line);
            out.push('\n');
        }
    }
    if let Some(i) = done.iter().position(|d| !d) {
        return Err(Error::Invalid(format!(
            "config.toml written by dstack-node init has no key {}",
            sets[i].0
        )));
    }
    // The result must parse and hold exactly the values set.
    let table: toml::Table =
        toml::from_str(&out).map_err(|e| Error::Invalid(format!("patched config.toml: {e}")))?;
    for (key, value) in sets {
        let got = key
            .split_once('.')
            .and_then(|(s, k)| table.get(s)?.as_table()?.get(k));
        if got != Some(value) {
            return Err(Error::Invalid(format!(
                "patched config.toml: {key} is {got:?}, expected {value}"
            )));
        }
    }
    Ok(out)
}

/// The node settings of a run.
#[derive(Debug)]
pub struct NodeSettings<'a> {
    /// anvil's RPC URL.
    pub rpc_url: &'a str,
    /// The simulated TEE's socket.
    pub dstack_socket: &'a Path,
    /// The pinned KMS root address.
    pub kms_root: &'a str,
    /// The node's NFT owner.
    pub owner_address: &'a str,
    /// libp2p listen and external multiaddr.
    pub p2p: &'a str,
    /// API `ip:port`.
    pub api: &'a str,
    /// Metrics `ip:port`.
    pub metrics: &'a str,
}

/// Writes the run's settings into `<home>/config.toml`.
pub fn configure(home: &Path, s: &NodeSettings<'_>) -> Result<(), Error> {
    let path = home.join("config.toml");
    let text = std::fs::read_to_string(&path).map_err(io(format!("reading {}", path.display())))?;
    let string = |v: &str| toml::Value::String(v.to_string());
    let list = |v: &str| toml::Value::Array(vec![toml::Value::String(v.to_string())]);
    let socket = s.dstack_socket.display().to_string();
    let sets = [
        ("chain.rpc_url", string(s.rpc_url)),
        ("cluster.genesis", string("genesis.json")),
        ("dstack.endpoint", string(&socket)),
        ("dstack.kms_root", string(s.kms_root)),
        ("node.owner_address", string(s.owner_address)),
        ("p2p.listen", list(s.p2p)),
        ("p2p.external", list(s.p2p)),
        ("api.listen", string(s.api)),
        ("api.metrics_listen", string(s.metrics)),
    ];
    let patched = patch(&text, &sets)?;
    std::fs::write(&path, patched).map_err(io(format!("writing {}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "# top comment\n[chain]\n# rpc\nrpc_url = \"http://127.0.0.1:8545\"\n\n\
                          [p2p]\nlisten = [\"/ip4/0.0.0.0/tcp/26656\"]\n# external = []\n\
                          external = []\n[api]\nlisten = \"127.0.0.1:26657\"\n";

    #[test]
    fn patch_keeps_comments_and_sets_values_per_section() {
        let out = patch(
            SAMPLE,
            &[
                ("chain.rpc_url", toml::Value::String("http://x:1".into())),
                (
                    "p2p.listen",
                    toml::Value::Array(vec![toml::Value::String("/ip4/127.0.0.1/tcp/9".into())]),
                ),
                ("api.listen", toml::Value::String("127.0.0.1:5".into())),
            ],
        )
        .expect("patch");
        assert!(out.contains("# top comment\n[chain]\n# rpc\nrpc_url = \"http://x:1\"\n"));
        assert!(out.contains("# external = []\nexternal = []\n"));
        assert!(out.contains("listen = [\"/ip4/127.0.0.1/tcp/9\"]"));
        assert!(out.contains("[api]\nlisten = \"127.0.0.1:5\"\n"));
    }

    #[test]
    fn patch_refuses_a_missing_key() {
        let e =
            patch(SAMPLE, &[("log.level", toml::Value::String("x".into()))]).expect_err("missing");
        assert!(e.to_string().contains("log.level"), "{e}");
    }
}
