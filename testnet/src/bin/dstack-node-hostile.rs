//! `dstack-node-hostile`: the TEST-ONLY hostile peers of the chaos suite's `hostile` scenario.
//!
//! - `start --home DIR`: a validator node (as `dstack-node start`, with the equivocator's
//!   conflicting twins) that, once armed with SIGUSR1 (SIGUSR2 disarms), signs thousands of
//!   distinct proposals for each round it leads and pushes batches at line rate
//!   ([`testnet::hostile::member`]).
//! - `outsider --chain-id 31337 --contract 0x.. --node P2P,HTTP ...`: a non-member with a fresh
//!   key that sends maximal and far-future rounds, forged records, request floods and oversized
//!   frames for `--seconds`, then writes its report ([`testnet::hostile::outsider`]).
//!
//! `DSTACK_HOSTILE_ATTACKS` narrows what either runs. It lives in crate `testnet`, never in
//! crate `node`, so no operator build contains it, and it refuses any chain but anvil's (chain
//! id 31337).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use consensus::types::Message;
use node::driver::DriverConfig;
use node::launch::FaultHooks;
use node::node::TapFactory;
use node::tap::OutboundTap;
use testnet::equivocate::Equivocator;
use testnet::faulty;
use testnet::hostile::member::MemberAttack;
use testnet::hostile::outsider::{self, OutsiderConfig, Target};
use testnet::hostile::{self, Attack};

const NAME: &str = "dstack-node-hostile";

/// TEST-ONLY hostile peers for the chaos suite (chain id 31337 only).
#[derive(Debug, Parser)]
#[command(name = NAME)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Start the hostile member's node from its home (see `dstack-node start`).
    Start(faulty::StartArgs),
    /// Attack the cluster as a non-member for a while, then write a JSON report.
    Outsider {
        /// The cluster's chain id (31337 only).
        #[arg(long)]
        chain_id: u64,
        /// The cluster's contract (0x hex).
        #[arg(long)]
        contract: String,
        /// A node to attack: `P2P_MULTIADDR,HTTP_URL` (repeat for each node).
        #[arg(long = "node", required = true)]
        nodes: Vec<String>,
        /// How long to attack.
        #[arg(long, default_value_t = 15.0)]
        seconds: f64,
        /// Where the JSON report goes.
        #[arg(long)]
        report: PathBuf,
    },
}

/// The member's tap: the equivocator's twins, and while armed each proposal's conflicting flood.
struct HostileTap {
    twins: Option<Equivocator>,
    attack: Option<MemberAttack>,
}

impl OutboundTap for HostileTap {
    fn extra(&self, message: &Message) -> Vec<Message> {
        let mut out: Vec<Message> = self
            .twins
            .as_ref()
            .and_then(|e| e.twin(message))
            .into_iter()
            .collect();
        if let (Message::Proposal(p), Some(a)) = (message, &self.attack) {
            out.extend(a.on_proposal(p).into_iter().map(Message::Proposal));
        }
        out
    }
}

fn factory() -> TapFactory {
    Arc::new(|cfg: &DriverConfig| -> Arc<dyn OutboundTap> {
        faulty::refuse_unless_local(NAME, cfg);
        let attacks = hostile::attacks_from_env().unwrap_or_else(|e| {
            eprintln!("{NAME}: {e}");
            std::process::exit(2);
        });
        let twins = Equivocator::new(cfg)
            .map_err(|e| eprintln!("{NAME}: node key: {e}"))
            .ok();
        let attack = MemberAttack::start(cfg, attacks);
        if attack.is_none() {
            eprintln!("{NAME}: the member's attacks could not start; running as an equivocator");
        }
        Arc::new(HostileTap { twins, attack })
    })
}

fn targets(nodes: &[String]) -> Result<Vec<Target>, String> {
    nodes
        .iter()
        .map(|n| {
            let (p2p, http) = n
                .split_once(',')
                .ok_or_else(|| format!("--node {n:?}: expected P2P_MULTIADDR,HTTP_URL"))?;
            Ok(Target {
                p2p: p2p
                    .parse()
                    .map_err(|e| format!("--node {n:?}: multiaddr: {e}"))?,
                http: http.trim_end_matches('/').to_string(),
            })
        })
        .collect()
}

fn outsider_main(
    chain_id: u64,
    contract: String,
    nodes: &[String],
    seconds: f64,
    report: PathBuf,
) -> ExitCode {
    if chain_id != faulty::LOCAL_CHAIN_ID {
        eprintln!(
            "{NAME}: refusing chain id {chain_id} (test-only binary: chain id {} only)",
            faulty::LOCAL_CHAIN_ID
        );
        return ExitCode::from(3);
    }
    let prepared = (|| {
        let attacks = hostile::attacks_from_env()?;
        let duration = Duration::try_from_secs_f64(seconds)
            .map_err(|e| format!("--seconds {seconds}: {e}"))?;
        Ok::<_, String>(OutsiderConfig {
            chain_id,
            contract,
            targets: targets(nodes)?,
            duration,
            attacks: attacks
                .into_iter()
                .filter(|a: &Attack| a.by_outsider())
                .collect(),
        })
    })();
    let cfg = match prepared {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{NAME}: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{NAME}: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    let result = runtime.block_on(outsider::run(cfg));
    let written = result.and_then(|r| {
        let text = serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?;
        std::fs::write(&report, text + "\n")
            .map_err(|e| format!("writing {}: {e}", report.display()))?;
        eprintln!(
            "{NAME}: outsider {} done after {:.1} s: published {:?}, requests {:?}",
            r.peer_id, r.seconds, r.published, r.requests
        );
        Ok(())
    });
    // The swarm's tasks are not waited for.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{NAME}: outsider: {e}");
            ExitCode::from(1)
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Cmd::Start(a) => faulty::run_node(
            &a.home,
            &a.set,
            FaultHooks {
                tap: Some(factory()),
                ..FaultHooks::default()
            },
        ),
        Cmd::Outsider {
            chain_id,
            contract,
            nodes,
            seconds,
            report,
        } => outsider_main(chain_id, contract, &nodes, seconds, report),
    }
}
