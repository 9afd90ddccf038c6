//! Stopping a testnet: every process its state records (nodes, then TEEs, then anvil), then the
//! state file.

use super::*;

/// Stops every process recorded in `state` (nodes first, then TEEs, then anvil) and removes
/// `state.json`. Returns one line per process stopped.
pub fn down_state(state: &State) -> Result<Vec<String>, Error> {
    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for p in state.processes() {
        if !procs::is_running(p) {
            continue;
        }
        let grace = if p.name.contains('/') || p.name == "anvil" {
            Duration::from_secs(3)
        } else {
            Duration::from_secs(10)
        };
        match procs::stop(p, grace) {
            Ok(false) => lines.push(format!("stopped {} (pid {})", p.name, p.pid)),
            Ok(true) => lines.push(format!(
                "killed {} (pid {}): it ignored SIGTERM for {} s",
                p.name,
                p.pid,
                grace.as_secs()
            )),
            Err(e) => failures.push(e.to_string()),
        }
    }
    if !failures.is_empty() {
        return Err(Error::Process(failures.join("; ")));
    }
    let path = State::path(&state.dir);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(format!("removing {}", path.display()))(e)),
    }
    Ok(lines)
}

/// `testnet down`: stops what `<dir>/state.json` records (nothing recorded: nothing to do).
pub fn down(dir: &Path) -> Result<Vec<String>, Error> {
    match State::load(dir)? {
        Some(state) => down_state(&state),
        None => Ok(Vec::new()),
    }
}
