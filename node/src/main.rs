//! `dstack-node`: the validator binary operators run. All I/O of the cluster lives in this
//! crate: libp2p, storage, mempool, the consensus driver, the HTTP API and metrics. This file
//! only parses the command line (module `cli`) and runs the chosen subcommand.

use std::process::ExitCode;

use clap::Parser;

mod cli;

fn main() -> ExitCode {
    exit_on_panic();
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(1)
        }
    }
}

/// A panic on any thread is a bug: it is logged and the process exits with status 101, so a
/// supervisor that restarts on failure brings the node back (tokio would otherwise keep the
/// process running with the panicked task gone).
fn exit_on_panic() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default(info);
        tracing::error!(panic = %info, "panic: exiting");
        std::process::exit(101);
    }));
}

/// The error and its causes, skipping causes whose text the previous message already shows
/// (library errors often embed their source in their own message).
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}
