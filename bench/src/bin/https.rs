//! `https`: the HTTPS benchmark of docs/design.md "What is measured".
//!
//! `https run` (the default; `cargo xtask bench https`) compares, in one run on the lab, the
//! appliance (`pantera serve --lab`: XDP + AF_XDP + smoltcp + rustls + the ledger), its own
//! kernel-socket baseline (`pantera serve-kernel`: the same TLS and ledger over kernel TCP) and
//! nginx returning a constant over TLS 1.3: transfers/s and p50/p99/p99.9 latency at 1, 16 and
//! 64 keep-alive connections, new connections/s with full and with resumed handshakes, and the
//! server's CPU time per request. It writes the table into docs/PERFORMANCE.md.
//!
//! `https load` is the client side of one measurement, run inside the lab's client namespace.
#![forbid(unsafe_code)]

// A binary's root resolves modules beside itself; its submodules live in https/.
#[path = "https/http1.rs"]
mod http1;
#[path = "https/load.rs"]
mod load;
#[path = "https/process.rs"]
mod process;
#[path = "https/report.rs"]
mod report;
#[path = "https/run.rs"]
mod run;

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
    /// The client side of one measurement; prints one JSON line.
    Load(load::LoadArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Some(Commands::Load(args)) => load::run(&args),
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
