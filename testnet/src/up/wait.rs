//! Waiting for what `up` starts: a process ready (or failed), a simulated TEE answering, every
//! node past its first commit.

use super::*;

/// Polls `ready` every 100 ms until it holds; fails when `proc` exits (with the end of its
/// log) or after `within`. `what` names the process in the errors.
pub async fn wait_ready(
    what: &str,
    proc: Option<&crate::procs::Proc>,
    within: Duration,
    mut ready: impl AsyncFnMut() -> bool,
) -> Result<(), Error> {
    let deadline = Instant::now() + within;
    loop {
        if ready().await {
            return Ok(());
        }
        if let Some(p) = proc
            && !procs::is_running(p)
        {
            return Err(Error::Process(format!(
                "{what} exited; last lines of {}:\n{}",
                p.log.display(),
                procs::log_tail(&p.log, 20)
            )));
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(format!(
                "{what} did not answer within {} s",
                within.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (at most 15 s) until the simulated TEE of `node` answers `/Info`.
pub async fn wait_tee(node: &NodeEntry) -> Result<(), Error> {
    let socket = node.socket.display().to_string();
    let client = DstackClient::new(Some(&socket))
        .map_err(|e| Error::Process(format!("dstack endpoint {socket}: {e}")))?
        .with_timeout(Duration::from_secs(2));
    wait_ready(
        &format!("the simulated TEE of {} (socket {socket})", node.name),
        node.simulator.as_ref(),
        Duration::from_secs(15),
        async || node.socket.exists() && client.info().await.is_ok(),
    )
    .await
}

/// Waits until every node of `state` reports a committed height of at least 1, printing
/// progress; fails early when a node process exits.
pub async fn wait_commits(
    state: &State,
    within: Duration,
    progress: Progress<'_>,
) -> Result<(), Error> {
    let client = Client::new(Duration::from_secs(2));
    let start = Instant::now();
    let deadline = start + within;
    let mut committed = vec![false; state.nodes.len()];
    let mut last_report = Instant::now();
    loop {
        let mut summary = Vec::new();
        for (i, n) in state.nodes.iter().enumerate() {
            if let Some(p) = &n.process
                && !procs::is_running(p)
            {
                return Err(Error::Process(format!(
                    "{} exited during start-up; last lines of {}:\n{}",
                    n.name,
                    p.log.display(),
                    procs::log_tail(&p.log, 20)
                )));
            }
            match client.status(&n.http_url).await {
                Ok(s) => {
                    if s.committed_height >= 1 && !committed[i] {
                        committed[i] = true;
                        progress(&format!(
                            "{} committed height {} (round {}, {} peers) after {:.1} s",
                            n.name,
                            s.committed_height,
                            s.round,
                            s.peers,
                            start.elapsed().as_secs_f64()
                        ));
                    }
                    summary.push(format!(
                        "{} h={} r={} peers={}",
                        n.name, s.committed_height, s.round, s.peers
                    ));
                }
                Err(_) => summary.push(format!("{} (API not up)", n.name)),
            }
        }
        if committed.iter().all(|&c| c) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut msg = format!(
                "not every node committed within {} s: {}",
                within.as_secs(),
                summary.join(", ")
            );
            for (i, n) in state.nodes.iter().enumerate() {
                if !committed[i]
                    && let Some(p) = &n.process
                {
                    msg.push_str(&format!(
                        "\n--- last lines of {}:\n{}",
                        p.log.display(),
                        procs::log_tail(&p.log, 8)
                    ));
                }
            }
            return Err(Error::Timeout(msg));
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            progress(&format!("waiting: {}", summary.join(", ")));
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
