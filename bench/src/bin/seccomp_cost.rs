//! `seccomp_cost`: what the worker's system-call allowlist (src/sandbox/seccomp.rs) adds to
//! each system call a worker makes on its hot path: `sendto` (the AF_XDP transmit kick),
//! `ppoll` (the wait) and `getsockopt(SOL_XDP)` (ring statistics, the filter checks an
//! argument). Figures only; docs/PERFORMANCE.md ("The sandbox's cost") records a run.
//!
//! Two threads take turns on the same calls, one confined with the worker's filters exactly
//! as a worker installs them and one not, so both see the same machine at nearly the same
//! time; each round times `--calls` calls of each kind and the medians are compared.
//!
//! ```text
//! cargo run --release -p bench --bin seccomp_cost -- [--rounds N] [--calls N]
//! ```
//!
//! Needs no privileges (a filter installs with no_new_privs). The `sendto` calls send empty
//! datagrams to a UDP socket of this process on 127.0.0.1, nowhere else.

use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use pantera::sandbox::seccomp::Filters;
use pantera::sandbox::Kind;

#[derive(Parser, Debug)]
#[command(about = "Cost of the worker's seccomp allowlist per system call")]
struct Args {
    /// Rounds per thread (the figures are the medians).
    #[arg(long, default_value_t = 15)]
    rounds: usize,
    /// Calls of each kind per round.
    #[arg(long, default_value_t = 100_000)]
    calls: u32,
}

/// Nanoseconds per call of each kind in one round.
#[derive(Debug, Clone, Copy, Default)]
struct Round {
    sendto: f64,
    poll: f64,
    getsockopt: f64,
}

/// The calls a round makes, on sockets the thread owns.
struct Calls {
    /// Never read: once its buffer is full, loopback drops what arrives (UDP has no
    /// backpressure), so the sending side never blocks and the confined thread needs no recv.
    _sink: UdpSocket,
    sender: UdpSocket,
}

impl Calls {
    fn new() -> Result<Calls> {
        let sink = UdpSocket::bind("127.0.0.1:0").context("cannot bind the sink socket")?;
        let sender = UdpSocket::bind("127.0.0.1:0").context("cannot bind the sending socket")?;
        sender.connect(sink.local_addr()?).context("cannot connect to the sink")?;
        Ok(Calls { _sink: sink, sender })
    }

    fn round(&self, calls: u32) -> Round {
        let per_call = |elapsed: Duration| elapsed.as_nanos() as f64 / f64::from(calls);
        let fd = self.sender.as_raw_fd();
        // sendto with an empty datagram and MSG_DONTWAIT, as the transmit kick is made.
        let started = Instant::now();
        for _ in 0..calls {
            // SAFETY: a null buffer of length 0 is a valid empty datagram.
            unsafe { libc::sendto(fd, std::ptr::null(), 0, libc::MSG_DONTWAIT, std::ptr::null(), 0) };
        }
        let sendto = per_call(started.elapsed());
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        let no_wait = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        let started = Instant::now();
        for _ in 0..calls {
            // SAFETY: one valid pollfd and timespec, no wait, no signal mask: the worker's ppoll.
            unsafe { libc::ppoll(&mut pfd, 1, &no_wait, std::ptr::null()) };
        }
        let poll = per_call(started.elapsed());
        // On a UDP socket SOL_XDP is answered with an error at once: the filter's argument
        // check is what is measured, not the option.
        let mut value = 0u64;
        let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
        let started = Instant::now();
        for _ in 0..calls {
            // SAFETY: value and len describe a valid 8-byte buffer.
            unsafe { libc::getsockopt(fd, libc::SOL_XDP, 6, (&mut value as *mut u64).cast(), &mut len) };
        }
        let getsockopt = per_call(started.elapsed());
        Round { sendto, poll, getsockopt }
    }
}

/// A measuring thread's ends: ask it for a round, then read the round (or why it could not
/// measure: a failed socket or filter, as text, since it crosses the thread).
type RoundChannel = (mpsc::Sender<()>, mpsc::Receiver<Result<Round, String>>);

/// A thread that runs a round each time it is asked, confined first if `confined`.
fn spawn(confined: bool, calls: u32) -> Result<RoundChannel> {
    let (ask, asked) = mpsc::channel::<()>();
    let (tell, told) = mpsc::channel();
    // Compiled here, applied in the thread: as a worker does, and no allocation after it.
    let filters = if confined { Some(Filters::compile(Kind::Worker).context("the worker's allowlist")?) } else { None };
    let name = if confined { "confined" } else { "free" };
    thread::Builder::new().name(name.into()).spawn(move || {
        let calls_on = Calls::new().map_err(|e| e.to_string());
        let applied = match &filters {
            Some(filters) => filters.apply().map_err(|e| e.to_string()),
            None => Ok(()),
        };
        for () in asked {
            let round = match (&calls_on, &applied) {
                (Ok(c), Ok(())) => Ok(c.round(calls)),
                (Err(e), _) | (_, Err(e)) => Err(e.clone()),
            };
            if tell.send(round).is_err() {
                break;
            }
        }
    })?;
    Ok((ask, told))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.rounds > 0 && args.calls > 0, "--rounds and --calls must be at least 1");
    let free = spawn(false, args.calls)?;
    let confined = spawn(true, args.calls)?;
    let (mut plain, mut filtered) = (Vec::new(), Vec::new());
    for _ in 0..args.rounds {
        for ((ask, told), into) in [(&free, &mut plain), (&confined, &mut filtered)] {
            ask.send(()).context("a measuring thread stopped")?;
            let round = told.recv().context("a measuring thread stopped")?;
            into.push(round.map_err(anyhow::Error::msg)?);
        }
    }
    println!("seccomp_cost: {} rounds of {} calls each, medians (ns per call)", args.rounds, args.calls);
    println!("{:<22} {:>10} {:>10} {:>10} {:>8}", "call", "free", "confined", "added", "ratio");
    type Pick = fn(&Round) -> f64;
    let kinds: [(&str, Pick); 3] = [
        ("sendto (tx kick)", |r| r.sendto),
        ("ppoll (no wait)", |r| r.poll),
        ("getsockopt(SOL_XDP)", |r| r.getsockopt),
    ];
    for (name, pick) in kinds {
        let a = median(plain.iter().map(pick).collect());
        let b = median(filtered.iter().map(pick).collect());
        println!("{name:<22} {a:>10.1} {b:>10.1} {:>10.1} {:>8.3}", b - a, b / a);
    }
    Ok(())
}
