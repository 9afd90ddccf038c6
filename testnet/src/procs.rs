//! Child processes of a run: started in their own process group (a Ctrl-C in the terminal
//! reaches `testnet`, which stops them in order), logged to files, recorded with their pid and
//! kernel start time (so a recycled pid is never signalled), and stopped with SIGTERM, then
//! SIGKILL after a grace period.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::{Error, io};

/// A process a run started, as recorded in `state.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    /// What it is (`anvil`, `node0/simulator`, `node0`).
    pub name: String,
    /// Its pid.
    pub pid: u32,
    /// Its start time in clock ticks since boot (`/proc/<pid>/stat` field 22).
    pub start_time: u64,
    /// The program.
    pub program: PathBuf,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

/// How to start one process.
#[derive(Debug)]
pub struct Spawn<'a> {
    /// Recorded name.
    pub name: &'a str,
    /// The program.
    pub program: &'a Path,
    /// Its arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Environment variables removed first when their names start with one of these (so a
    /// user's overrides cannot change what the run configured).
    pub clear_env_prefixes: &'a [&'a str],
    /// The log file (appended).
    pub log: PathBuf,
    /// The network namespace to run it in (`ip netns exec <ns> <program> ...`; `ip` execs the
    /// program, so the recorded pid is the program's own).
    pub netns: Option<&'a str>,
}

/// Starts a process in its own process group with stdin closed and output to its log.
pub fn spawn(s: Spawn<'_>) -> Result<(Child, Proc), Error> {
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&s.log)
        .map_err(io(format!("opening log {}", s.log.display())))?;
    let log2 = log
        .try_clone()
        .map_err(io(format!("opening log {}", s.log.display())))?;
    let mut cmd = match s.netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(s.program);
            c
        }
        None => Command::new(s.program),
    };
    cmd.args(&s.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log2))
        .process_group(0);
    for (k, _) in std::env::vars_os() {
        if let Some(k) = k.to_str()
            && s.clear_env_prefixes.iter().any(|p| k.starts_with(p))
        {
            cmd.env_remove(k);
        }
    }
    cmd.envs(s.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    let child = cmd.spawn().map_err(|e| {
        Error::Process(format!(
            "starting {} ({}): {e}",
            s.name,
            s.program.display()
        ))
    })?;
    let pid = child.id();
    let start_time = stat(pid).map(|st| st.start_time).unwrap_or(0);
    Ok((
        child,
        Proc {
            name: s.name.to_string(),
            pid,
            start_time,
            program: s.program.to_path_buf(),
            log: s.log,
        },
    ))
}

struct Stat {
    state: char,
    start_time: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain spaces: split after it.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Whether the recorded process still runs (a zombie or a recycled pid does not count).
pub fn is_running(p: &Proc) -> bool {
    match stat(p.pid) {
        Some(st) => !matches!(st.state, 'Z' | 'X') && st.start_time == p.start_time,
        None => false,
    }
}

fn signal(p: &Proc, sig: Signal) {
    if let Ok(pid) = i32::try_from(p.pid) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

/// Stops a recorded process: SIGTERM, up to `grace` for it to exit, then SIGKILL. Returns
/// whether SIGKILL was needed; an error when it still runs afterwards.
pub fn stop(p: &Proc, grace: Duration) -> Result<bool, Error> {
    if !is_running(p) {
        return Ok(false);
    }
    signal(p, Signal::SIGTERM);
    if wait_gone(p, grace) {
        return Ok(false);
    }
    signal(p, Signal::SIGKILL);
    if wait_gone(p, Duration::from_secs(5)) {
        return Ok(true);
    }
    Err(Error::Process(format!(
        "{} (pid {}) still runs after SIGKILL",
        p.name, p.pid
    )))
}

fn wait_gone(p: &Proc, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if !is_running(p) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Clock ticks per second of `/proc/<pid>/stat`'s CPU times (Linux's `USER_HZ`, 100 on every
/// architecture the project runs on).
pub const TICKS_PER_SECOND: u64 = 100;

/// The CPU time (user + system, in [`TICKS_PER_SECOND`] ticks) a running recorded process has
/// used; `None` once it is gone (or its pid was recycled).
pub fn cpu_ticks(p: &Proc) -> Option<u64> {
    if !is_running(p) {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; `rest` starts at field 3.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The resident set size (bytes) of a running recorded process (`VmRSS`).
pub fn rss_bytes(p: &Proc) -> Option<u64> {
    if !is_running(p) {
        return None;
    }
    let text = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The last `lines` lines of a log file (for error messages).
pub fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            all[from..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// A free TCP port on 127.0.0.1 (bound then released; the caller retries if it is taken by the
/// time it is used).
pub fn free_port() -> Result<u16, Error> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding a free port"))?;
    Ok(l.local_addr().map_err(io("finding a free port"))?.port())
}

/// `n` distinct free ports, all held until every one is chosen.
pub fn free_ports(n: usize) -> Result<Vec<u16>, Error> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(std::net::TcpListener::bind("127.0.0.1:0").map_err(io("finding free ports"))?);
    }
    held.iter()
        .map(|l| {
            l.local_addr()
                .map(|a| a.port())
                .map_err(io("finding free ports"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_record_and_stop() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut child, p) = spawn(Spawn {
            name: "sleep",
            program: Path::new("/bin/sleep"),
            args: vec!["30".into()],
            env: vec![],
            clear_env_prefixes: &[],
            log: dir.path().join("sleep.log"),
            netns: None,
        })
        .expect("spawn");
        assert!(p.start_time > 0);
        assert!(is_running(&p));
        let mut recycled = p.clone();
        recycled.start_time += 1;
        assert!(
            !is_running(&recycled),
            "a different start time is another process"
        );
        assert!(!stop(&recycled, Duration::from_secs(1)).expect("no-op"));
        assert!(is_running(&p), "stopping a recycled pid must not signal it");
        let killed = stop(&p, Duration::from_secs(5)).expect("stop");
        assert!(!killed, "sleep exits on SIGTERM");
        let _ = child.wait();
        assert!(!is_running(&p));
    }

    #[test]
    fn cpu_and_rss_of_a_busy_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut child, p) = spawn(Spawn {
            name: "busy",
            program: Path::new("/bin/sh"),
            args: vec!["-c".into(), "while :; do :; done".into()],
            env: vec![],
            clear_env_prefixes: &[],
            log: dir.path().join("busy.log"),
            netns: None,
        })
        .expect("spawn");
        let t0 = cpu_ticks(&p).expect("ticks");
        // A spinning shell gathers 0.2 s of CPU quickly, even on a loaded machine (bounded wait).
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut t1 = t0;
        while t1 < t0 + TICKS_PER_SECOND / 5 && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
            t1 = cpu_ticks(&p).expect("ticks");
        }
        assert!(t1 >= t0 + TICKS_PER_SECOND / 5, "{t0} -> {t1}");
        let rss = rss_bytes(&p).expect("rss");
        assert!((64 * 1024..1 << 30).contains(&rss), "{rss}");
        stop(&p, Duration::from_secs(5)).expect("stop");
        let _ = child.wait();
        assert_eq!(cpu_ticks(&p), None);
        assert_eq!(rss_bytes(&p), None);
    }

    #[test]
    fn free_ports_are_distinct() {
        let ports = free_ports(6).expect("ports");
        let set: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(set.len(), 6);
    }
}
