//! Helpers shared by the process tests: run `testnet` with a deadline, read what is left.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use alloy::transports::http::reqwest;

/// Longest wait from a membership transaction to every node's epoch including it.
pub const EPOCH_WAIT: Duration = Duration::from_secs(25);

/// The binary under test.
pub const TESTNET: &str = env!("CARGO_BIN_EXE_testnet");

/// Runs `testnet --dir <dir> <args>` until it exits or `deadline` (then it is killed and the
/// test panics with its stderr). When `interrupt_when` turns true, SIGINT is sent once.
pub fn run_testnet(
    dir: &Path,
    args: &[&str],
    deadline: Instant,
    interrupt_when: Option<&dyn Fn() -> bool>,
) -> Output {
    let mut child = Command::new(TESTNET)
        .arg("--dir")
        .arg(dir)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn testnet");
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut out, &mut s).ok();
        s
    });
    let t_err = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut err, &mut s).ok();
        s
    });
    let mut interrupted = false;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if !interrupted && interrupt_when.is_some_and(|f| f()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            interrupted = true;
        }
        if Instant::now() >= deadline {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGINT,
            );
            std::thread::sleep(Duration::from_secs(20));
            let _ = child.kill();
            let _ = child.wait();
            let stderr = String::from_utf8_lossy(&t_err.join().unwrap()).into_owned();
            panic!("testnet {args:?} did not finish within its time budget; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// Exit status and both outputs, for assertion messages.
pub fn show(o: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether a pid is a live process (zombies are dead).
pub fn alive(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => {
            let rest = &s[s.rfind(')').unwrap() + 1..];
            !matches!(rest.trim_start().chars().next(), Some('Z' | 'X'))
        }
        Err(_) => false,
    }
}

/// Live processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|s| s.parse::<u64>().ok()) else {
            continue;
        };
        if pid == u64::from(std::process::id()) || !alive(pid) {
            continue;
        }
        if let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(needle) {
                out.push(format!("{pid}: {cmd}"));
            }
        }
    }
    out
}

/// Network namespaces whose name starts with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_string)
        .collect()
}

/// A node of a run, as the membership checks name it.
pub struct NodeRef {
    /// `node<i>`.
    pub name: String,
    /// Its API.
    pub http_url: String,
    /// Its address, lowercase.
    pub address: String,
}

/// The nodes recorded in `<dir>/state.json`.
pub fn nodes_of(dir: &Path) -> Vec<NodeRef> {
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap();
    state["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| NodeRef {
            name: n["name"].as_str().unwrap().to_string(),
            http_url: n["http_url"].as_str().unwrap().to_string(),
            address: n["address"].as_str().unwrap().to_lowercase(),
        })
        .collect()
}

/// GET a JSON document (None on any failure).
pub async fn get_json(client: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    let r = client.get(url).send().await.ok()?;
    serde_json::from_slice(&r.bytes().await.ok()?).ok()
}

/// Waits (at most [`EPOCH_WAIT`]) until every node of `watch` serves `/validators` at an epoch
/// read at chain block `block` or later whose powers by node name are `want` (absent = not a
/// member); returns the seconds it took and the epoch.
pub async fn wait_set(
    watch: &[&NodeRef],
    all: &[NodeRef],
    block: u64,
    want: &BTreeMap<&str, u64>,
    what: &str,
) -> (f64, u64) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let mut epochs = Vec::new();
        for n in watch {
            let Some(v) = get_json(&client, &format!("{}/validators", n.http_url)).await else {
                last = format!("{} does not answer", n.name);
                break;
            };
            let ecb = v["epoch_chain_block"].as_u64().unwrap_or(0);
            let got: BTreeMap<&str, u64> = v["validators"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|m| {
                    let a = m["address"].as_str()?.to_lowercase();
                    let name = all.iter().find(|n| n.address == a)?.name.as_str();
                    Some((name, m["power"].as_u64()?))
                })
                .collect();
            if ecb < block || &got != want {
                last = format!("{}: epoch {} at block {ecb}: {got:?}", n.name, v["epoch"]);
                break;
            }
            epochs.push(v["epoch"].as_u64().unwrap());
        }
        if epochs.len() == watch.len() {
            epochs.dedup();
            assert_eq!(
                epochs.len(),
                1,
                "{what}: nodes in different epochs {epochs:?}"
            );
            return (start.elapsed().as_secs_f64(), epochs[0]);
        }
        assert!(
            start.elapsed() < EPOCH_WAIT,
            "{what}: no epoch with {want:?} from chain block {block} on every node within {} s; \
             last seen {last}",
            EPOCH_WAIT.as_secs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
