//! `https`: the HTTPS benchmark of docs/design.md "What is measured".
//!
//! `https run` (the default; `cargo xtask bench https`) compares, in one run on the lab, the
//! appliance (`pantera serve --lab`: XDP + AF_XDP + smoltcp + rustls + the ledger), its own
//! kernel-socket baseline (`pantera serve-kernel`: the same TLS and ledger over kernel TCP) and
//! nginx returning a constant over TLS 1.3: transfers/s and p50/p99/p99.9 latency at 1, 16 and
//! 64 keep-alive connections, new connections/s with full and with resumed handshakes, and the
//! server's CPU time per request. It writes the table into docs/PERFORMANCE.md.
//!
//! `https load` is the load client (docs/PERFORMANCE.md, "The load client"): usable alone
//! against a running appliance, and the client side of every measurement of `https run`, run
//! inside the lab's client namespace. `https compare` sets the JSON results of several runs
//! side by side.
#![forbid(unsafe_code)]

// A binary's root resolves modules beside itself; its submodules live in https/.
#[path = "https/http1.rs"]
mod http1;
#[path = "https/engine.rs"]
mod engine;
#[path = "https/load.rs"]
mod load;
#[path = "https/plot.rs"]
mod plot;
#[path = "https/process.rs"]
mod process;
#[path = "https/progress.rs"]
mod progress;
#[path = "https/report.rs"]
mod report;
#[path = "https/results.rs"]
mod results;
#[path = "https/run.rs"]
mod run;
#[path = "https/schedule.rs"]
mod schedule;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "https", about = "HTTPS benchmark: pantera vs its kernel-socket baseline vs nginx")]
struct Cli {
    #[command(subcommand)]
    command: Option<Commands>,
}

#[derive(Debug, Subcommand)]
enum Commands {
    /// The whole comparison on a fresh lab (the default).
    Run(run::RunArgs),
    /// The load client: event-driven, mTLS, closed or open loop; usable alone.
    Load(Box<load::LoadArgs>),
    /// Results of `https load --json` side by side, with ratios to the first.
    Compare(results::CompareArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Some(Commands::Load(args)) => load::run(&args),
        Some(Commands::Compare(args)) => results::compare(&args),
        Some(Commands::Run(args)) => run::run(&args),
        None => {
            // `https` alone is `https run` with its defaults.
            let Cli { command: Some(Commands::Run(args)) } = Cli::parse_from(["https", "run"]) else {
                unreachable!("`run` parses as the run subcommand")
            };
            run::run(&args)
        }
    }
}
