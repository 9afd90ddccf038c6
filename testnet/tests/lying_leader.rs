//! A leader proposing a `Reconfigure` from a stale or a future chain block is refused by honest
//! nodes (DESIGN section 4), end to end: `testnet up --detach` (powers 1,1,1,2: one node of power
//! 1 may be Byzantine), then node0 is restarted as `dstack-node-liar`, whose oracle claims one
//! more unit of power for it at the pinned block number with a hash the chain does not hold
//! there (stale: a rolled-back block) or 1,000 blocks past the pinned head (future). Every time it
//! leads a round from `epoch_min_rounds` on, it proposes such a `Reconfigure`. The honest nodes
//! must refuse both kinds (counted by reason in their metrics), stay in epoch 0 with their set
//! unchanged, and keep committing. Bounded at 150 s.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use alloy::transports::http::reqwest;
use common::{run_testnet, show};

const BUDGET: Duration = Duration::from_secs(150);
/// How long the honest nodes have to see (and refuse) both kinds of lie.
const REFUSAL_WAIT: Duration = Duration::from_secs(60);
const LIAR: &str = env!("CARGO_BIN_EXE_dstack-node-liar");

struct Cleanup {
    dir: PathBuf,
    liar: Option<Child>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(mut c) = self.liar.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = run_testnet(
            &self.dir,
            &["down"],
            Instant::now() + Duration::from_secs(30),
            None,
        );
    }
}

fn state(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap()).unwrap()
}

fn alive(pid: i32) -> bool {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

async fn text(client: &reqwest::Client, url: &str) -> Option<String> {
    client.get(url).send().await.ok()?.text().await.ok()
}

/// The value of `name{reason="<reason>"}` in a metrics text (0 when absent).
fn counter(text: &str, name: &str, reason: &str) -> f64 {
    let key = format!("{name}{{reason=\"{reason}\"}} ");
    text.lines()
        .filter_map(|l| l.strip_prefix(&key))
        .filter_map(|v| v.trim().parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honest_nodes_refuse_reconfigures_at_stale_or_future_chain_blocks() {
    let started = Instant::now();
    let deadline = started + BUDGET;
    let tmp = tempfile::Builder::new()
        .prefix("tll")
        .tempdir_in("/tmp")
        .expect("tempdir");
    let dir = tmp.path().to_path_buf();
    let mut cleanup = Cleanup {
        dir: dir.clone(),
        liar: None,
    };
    let up = run_testnet(
        &dir,
        &["up", "--detach", "--powers", "1,1,1,2"],
        deadline,
        None,
    );
    assert!(up.status.success(), "up failed:\n{}", show(&up));

    // node0 (power 1 of 5: P - Q = 1) becomes the liar, on the same home and key.
    let st = state(&dir);
    let node0 = &st["nodes"][0];
    let pid = node0["process"]["pid"].as_i64().expect("node0 pid") as i32;
    let home = PathBuf::from(node0["home"].as_str().unwrap());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("stop node0");
    let t = Instant::now();
    while alive(pid) {
        assert!(t.elapsed() < Duration::from_secs(20), "node0 did not stop");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = std::fs::File::create(home.join("liar.log")).expect("liar log");
    cleanup.liar = Some(
        Command::new(LIAR)
            .args(["start", "--home"])
            .arg(&home)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the liar"),
    );

    let honest: Vec<(String, String)> = st["nodes"].as_array().unwrap()[1..]
        .iter()
        .map(|n| {
            (
                n["http_url"].as_str().unwrap().to_string(),
                n["metrics_url"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let height = |s: &serde_json::Value| s["committed_height"].as_u64().unwrap_or(0);
    let status = async |url: &str| -> serde_json::Value {
        serde_json::from_str(
            &text(&client, &format!("{url}/status"))
                .await
                .unwrap_or_default(),
        )
        .unwrap_or(serde_json::Value::Null)
    };
    let h0 = height(&status(&honest[0].0).await);
    let t = Instant::now();
    let (stale, future) = loop {
        let (mut stale, mut future) = (0.0, 0.0);
        for (http, metrics) in &honest {
            let s = status(http).await;
            assert_eq!(
                s["epoch"],
                0,
                "an honest node changed epoch on a lie: {s}\nliar log tail:\n{}",
                tail(&home.join("liar.log"))
            );
            let m = text(&client, metrics).await.unwrap_or_default();
            stale += counter(
                &m,
                "dstack_messages_ignored_total",
                "reconfigure_names_a_block_that_is_not_the_chain_s",
            );
            future += counter(
                &m,
                "dstack_messages_ignored_total",
                "pinned_head_did_not_reach_the_reconfigure_s_block",
            );
        }
        if stale >= 1.0 && future >= 1.0 {
            break (stale, future);
        }
        assert!(
            t.elapsed() < REFUSAL_WAIT,
            "the honest nodes did not refuse both lies within {} s (stale {stale}, future \
             {future}); liar log tail:\n{}",
            REFUSAL_WAIT.as_secs(),
            tail(&home.join("liar.log"))
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!(
        "refusals after {:.1} s: stale {stale}, future {future}",
        t.elapsed().as_secs_f64()
    );
    // Still epoch 0 with the genesis powers, and still committing.
    for (http, _) in &honest {
        let v: serde_json::Value = serde_json::from_str(
            &text(&client, &format!("{http}/validators"))
                .await
                .unwrap_or_default(),
        )
        .unwrap_or(serde_json::Value::Null);
        assert_eq!(v["epoch"], 0, "{v}");
        assert_eq!(v["total_power"], 5, "{v}");
    }
    let t = Instant::now();
    while height(&status(&honest[0].0).await) < h0 + 20 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the cluster stopped committing under the lying leader"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(cleanup);
    eprintln!("whole test {:.1} s", started.elapsed().as_secs_f64());
}

fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}
