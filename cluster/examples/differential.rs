//! Longer differential runs by hand: `cargo run -p cluster --features tigerbeetle --release
//! --example differential -- SEEDS EVENTS_PER_SEED [FIRST_SEED]` runs seeds FIRST_SEED.. (a
//! fresh 1-replica cluster each) and stops at the first difference, printing it for replay.

use std::time::{Duration, Instant};

use cluster::local::LocalCluster;
use cluster::oracle::{self, Embedded, Remote};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let number = |i: usize, default: u64| -> anyhow::Result<u64> {
        args.get(i).map_or(Ok(default), |s| s.parse().map_err(|e| anyhow::anyhow!("argument {}: {s}: {e}", i + 1)))
    };
    let seeds = number(0, 8)?;
    let events = number(1, 10_000)? as usize;
    let first = number(2, 1)?;
    let mut total = 0;
    let started = Instant::now();
    for seed in first..first + seeds {
        let cluster = LocalCluster::start(1)?;
        cluster.wait_ready(Duration::from_secs(90))?;
        let mut remote = Remote::connect(cluster.cluster_id(), &cluster.addresses(), Duration::from_secs(30))?;
        let mut embedded = Embedded::new();
        let t = Instant::now();
        match oracle::run_seed(seed, events, &mut embedded, &mut remote) {
            Ok(outcome) => {
                total += outcome.events;
                println!(
                    "seed {seed}: {} events, {} requests, {:.0} events/s, identical",
                    outcome.events,
                    outcome.requests,
                    outcome.events as f64 / t.elapsed().as_secs_f64()
                );
            }
            Err(divergence) => {
                println!("{divergence}");
                anyhow::bail!("seed {seed} differs");
            }
        }
    }
    println!("{total} events over {seeds} seeds from {first}, {:.1} s, no difference", started.elapsed().as_secs_f64());
    Ok(())
}
