//! The chaos suite's private network: a hub namespace holding a bridge (10.77.0.1/24, where
//! anvil, the simulated TEEs and the chaos controller live) and one namespace per node, joined
//! to the bridge by a veth pair (node i is 10.77.0.(10+i)). Every address is inside namespaces
//! this run creates, so faults (iptables rules in a node's namespace) touch nothing else, and
//! deleting the namespaces removes every interface and rule with them.
//!
//! Names carry a per-run tag (from the pid), and the list is written to `<dir>/netns.json`
//! before anything is created, so a later run in the same directory removes what a crashed one
//! left behind.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::{Deserialize, Serialize};

use crate::error::{Error, io};

/// The file in the run directory listing the namespaces of the run.
pub const NETNS_FILE: &str = "netns.json";
/// The first three octets of the private subnet.
const SUBNET: &str = "10.77.0";

/// The namespaces of one chaos run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetPlan {
    /// The per-run tag every name starts with.
    pub tag: String,
    /// The hub namespace.
    pub hub: String,
    /// One namespace per node.
    pub nodes: Vec<String>,
}

impl NetPlan {
    /// The plan of a run with `n` nodes tagged `tag` (short: interface and namespace names).
    pub fn new(tag: &str, n: usize) -> Self {
        Self {
            tag: tag.to_string(),
            hub: format!("{tag}h"),
            nodes: (0..n).map(|i| format!("{tag}n{i}")).collect(),
        }
    }

    /// The hub's address on the bridge (anvil and the controller).
    pub fn hub_ip(&self) -> String {
        format!("{SUBNET}.1")
    }

    /// Node `i`'s address.
    pub fn node_ip(&self, i: usize) -> String {
        format!("{SUBNET}.{}", 10 + i)
    }

    /// Every namespace, hub last.
    pub fn all(&self) -> Vec<String> {
        let mut v = self.nodes.clone();
        v.push(self.hub.clone());
        v
    }

    fn file(dir: &Path) -> PathBuf {
        dir.join(NETNS_FILE)
    }

    /// Records the plan in `dir` (before creating anything).
    pub fn save(&self, dir: &Path) -> Result<(), Error> {
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| Error::State(format!("encoding the namespace list: {e}")))?;
        let path = Self::file(dir);
        std::fs::write(&path, text).map_err(io(format!("writing {}", path.display())))
    }

    /// The plan a previous run recorded in `dir`, if any.
    pub fn load(dir: &Path) -> Result<Option<Self>, Error> {
        let path = Self::file(dir);
        match std::fs::read_to_string(&path) {
            Ok(t) => serde_json::from_str(&t)
                .map(Some)
                .map_err(|e| Error::State(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("reading {}", path.display()))(e)),
        }
    }

    /// Creates the hub with its bridge and every node namespace with its veth; on failure removes
    /// what it made.
    pub fn create(&self) -> Result<(), Error> {
        let r = self.create_inner();
        if r.is_err() {
            let _ = self.destroy();
        }
        r
    }

    fn create_inner(&self) -> Result<(), Error> {
        let hub = self.hub.as_str();
        ip(&["netns", "add", hub])?;
        ip(&["-n", hub, "link", "set", "lo", "up"])?;
        ip(&["-n", hub, "link", "add", "br0", "type", "bridge"])?;
        ip(&[
            "-n",
            hub,
            "addr",
            "add",
            &format!("{}/24", self.hub_ip()),
            "dev",
            "br0",
        ])?;
        ip(&["-n", hub, "link", "set", "br0", "up"])?;
        for (i, ns) in self.nodes.iter().enumerate() {
            let veth = format!("vh{i}");
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", hub, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ])?;
            ip(&["-n", hub, "link", "set", &veth, "master", "br0"])?;
            ip(&["-n", hub, "link", "set", &veth, "up"])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{}/24", self.node_ip(i)),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// Kills every process still inside the run's namespaces (only this run's processes live
    /// there) and deletes the namespaces (their veths, bridge and iptables rules go with them).
    /// Returns what failed.
    pub fn destroy(&self) -> Vec<String> {
        let mut failures = Vec::new();
        let existing = list();
        for ns in self.all() {
            if !existing.contains(&ns) {
                continue;
            }
            for pid in pids(&ns) {
                if let Ok(p) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(p),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            // A killed process leaves the namespace once the kernel reaps it.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while !pids(&ns).is_empty() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            if let Err(e) = ip(&["netns", "del", &ns]) {
                failures.push(e.to_string());
            }
        }
        failures
    }
}

/// Runs `ip <args>`; an error names the command and its stderr.
pub fn ip(args: &[&str]) -> Result<(), Error> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), Error> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::Process(format!("running {program}: {e}")))?;
    if !out.status.success() {
        return Err(Error::Process(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Runs `iptables -w <args>` inside namespace `ns`.
pub fn iptables(ns: &str, args: &[&str]) -> Result<(), Error> {
    let mut all = vec!["netns", "exec", ns, "iptables", "-w"];
    all.extend_from_slice(args);
    ip(&all)
}

/// The namespaces that exist (`ip netns list`).
pub fn list() -> Vec<String> {
    Command::new("ip")
        .args(["netns", "list"])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| l.split_whitespace().next().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The pids inside namespace `ns`.
pub fn pids(ns: &str) -> Vec<u32> {
    Command::new("ip")
        .args(["netns", "pids", ns])
        .stderr(Stdio::null())
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Checks what the chaos suite needs before it creates anything: root, `ip`, `iptables` with
/// the `statistic` match, and a namespace it can create and delete. The error says what is
/// missing and how to fix it; the suite never skips.
pub fn preflight(tag: &str) -> Result<(), Error> {
    if !nix::unistd::geteuid().is_root() {
        return Err(Error::Missing(
            "testnet chaos needs root: it creates network namespaces (ip netns), veth pairs, a \
             bridge and iptables rules. Run it as root (CI does), e.g. `sudo -E testnet chaos ...`"
                .into(),
        ));
    }
    for (tool, pkg) in [("ip", "iproute2"), ("iptables", "iptables")] {
        let ok = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return Err(Error::Missing(format!(
                "`{tool}` is missing: install the Debian package {pkg} (`make deps-apt`)"
            )));
        }
    }
    let probe = format!("{tag}p");
    ip(&["netns", "add", &probe]).map_err(|e| {
        Error::Missing(format!(
            "cannot create a network namespace ({e}); the chaos suite needs them (root with \
             CAP_SYS_ADMIN, a kernel with network namespaces)"
        ))
    })?;
    let stat = iptables(
        &probe,
        &[
            "-A",
            "INPUT",
            "-s",
            "10.77.0.99",
            "-m",
            "statistic",
            "--mode",
            "random",
            "--probability",
            "0.1",
            "-j",
            "DROP",
        ],
    );
    let del = ip(&["netns", "del", &probe]);
    stat.map_err(|e| {
        Error::Missing(format!(
            "iptables cannot add a `statistic` rule in a namespace ({e}); the packet-loss fault \
             needs it (kernel module xt_statistic)"
        ))
    })?;
    del
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_and_addresses_distinct() {
        let p = NetPlan::new("tc4194303", 12);
        assert!(p.all().iter().all(|n| n.len() <= 15));
        assert_eq!(p.hub_ip(), "10.77.0.1");
        assert_eq!(p.node_ip(0), "10.77.0.10");
        assert_eq!(p.node_ip(11), "10.77.0.21");
        assert_eq!(p.all().last(), Some(&p.hub));
        let dir = tempfile::tempdir().expect("tempdir");
        p.save(dir.path()).expect("save");
        assert_eq!(NetPlan::load(dir.path()).expect("load"), Some(p));
    }
}
