//! `stack_sim`: the userspace TCP stack's own cost, with no NIC and no kernel: the appliance's
//! `tcp::Stack` on one end of a simulated link (`tcp::sim::SimLink`), a client smoltcp
//! `Interface` on the other, simulated time. Both ends run on this one thread, so the
//! throughput and connection-rate figures are for client + server; the per-call figures time
//! the server's calls only. Figures only; docs/tcp.md ("Cost") records a run.
//!
//! ```text
//! cargo run --release -p bench --bin stack_sim
//! ```
#![forbid(unsafe_code)]

use std::collections::HashSet;

use anyhow::{anyhow, ensure, Context, Result};
use smoltcp::time::Duration;
use tcp::sim::{Side, SimConfig};
use tcp::sim_pair::{server_config, Observer, SimPair};
use tcp::{ConnId, Event, StackConfig};

fn main() -> Result<()> {
    bulk_transfer()?;
    service_walk_and_connection_rate()
}

/// The connections the stack reported, counted (no checks: they would cost time measured).
#[derive(Default)]
struct Connections {
    /// Connections the server reported open and not yet closed.
    open: HashSet<ConnId>,
    /// Every connection the server reported opened, in order.
    opened: Vec<ConnId>,
    closed: usize,
}

impl Observer for Connections {
    fn event(&mut self, event: Event) {
        match event {
            Event::Opened(id) => {
                self.open.insert(id);
                self.opened.push(id);
            }
            Event::Closed(id) => {
                self.open.remove(&id);
                self.closed += 1;
            }
        }
    }
}

/// The appliance and a client interface over one simulated link.
type World = SimPair<Connections>;

fn new_world(config: &StackConfig) -> Result<World> {
    World::new(config, SimConfig::default()).context("stack config")
}

/// Adds a client socket connecting to the service from `local_port`.
fn connect(
    world: &mut World,
    local_port: u16,
    buffer_bytes: usize,
) -> Result<smoltcp::iface::SocketHandle> {
    world
        .connect(local_port, buffer_bytes)
        .map_err(|e| anyhow!("client connect from port {local_port}: {e:?}"))
}

/// Steps (running `app` after each step) until `done` or `limit` of simulated time; an error
/// if `limit` passes first or `app` fails.
fn run_until(
    world: &mut World,
    what: &str,
    limit: Duration,
    app: impl FnMut(&mut World) -> Result<()>,
    done: impl FnMut(&mut World) -> bool,
) -> Result<()> {
    ensure!(
        world.try_run_until(limit, app, done)?,
        "{what}: not done after {limit} of simulated time"
    );
    Ok(())
}

/// Reads everything the server holds on its open connections; returns the bytes read.
fn drain_server(world: &mut World) -> Result<usize> {
    let mut read = 0;
    let ids: Vec<ConnId> = world.events.open.iter().copied().collect();
    for id in ids {
        while world.server.can_recv(id) {
            read += world
                .server
                .recv(id, |b| (b.len(), b.len()))
                .map_err(|e| anyhow!("recv: {e:?}"))?;
        }
    }
    Ok(read)
}

fn no_app(_: &mut World) -> Result<()> {
    Ok(())
}

/// Steps, with no application, until connections asked for are open (`done`): an error after
/// 5 s of simulated time.
fn opens(world: &mut World, what: &str, done: impl FnMut(&mut World) -> bool) -> Result<()> {
    run_until(world, what, Duration::from_secs(5), no_app, done)
}

/// 64 MiB from one client connection to the server, read as it arrives.
fn bulk_transfer() -> Result<()> {
    const BYTES: usize = 64 << 20;
    let mut world = new_world(&server_config())?;
    let client = connect(&mut world, 36_000, 65535)?;
    let chunk = vec![0x5a_u8; 65535];
    let mut sent = 0usize;
    let started = std::time::Instant::now();
    let frames_before = world.server.counters().rx_frames;
    // Shared by `app`, which counts, and `done`, which reads.
    let received = std::cell::Cell::new(0usize);
    run_until(
        &mut world,
        "bulk transfer",
        Duration::from_secs(3600),
        |w| {
            let socket = w.client_socket(client);
            if socket.can_send() && sent < BYTES {
                sent += socket
                    .send_slice(&chunk[..(BYTES - sent).min(chunk.len())])
                    .map_err(|e| anyhow!("client send: {e:?}"))?;
            }
            received.set(received.get() + drain_server(w)?);
            Ok(())
        },
        |_| received.get() == BYTES,
    )?;
    let elapsed = started.elapsed();
    let frames = world.server.counters().rx_frames - frames_before;
    println!(
        "bulk: {} MiB in {:?}: {:.0} MB/s, {} frames in, {:.2} us per frame in (client+server)",
        BYTES >> 20,
        elapsed,
        BYTES as f64 / elapsed.as_secs_f64() / 1e6,
        frames,
        elapsed.as_secs_f64() * 1e6 / frames.max(1) as f64
    );
    Ok(())
}

/// Connections opened and closed per second; then, with 1000 connections open, the cost of an
/// idle `service()` and `poll()` and of one busy connection's round trip.
fn service_walk_and_connection_rate() -> Result<()> {
    let config = StackConfig {
        rx_buffer_bytes: 2048,
        tx_buffer_bytes: 2048,
        // Every simulated connection comes from the one client address.
        connections_per_source_max: usize::MAX,
        ..server_config()
    };
    let mut world = new_world(&config)?;
    // Connection rate: waves of 50 connects, each then closed by the client, server closes back.
    let started = std::time::Instant::now();
    let mut port = 40_000u16;
    const WAVES: usize = 20;
    for _ in 0..WAVES {
        let mut handles = Vec::with_capacity(50);
        for _ in 0..50 {
            port += 1;
            handles.push(connect(&mut world, port, 1024)?);
        }
        let target = world.events.opened.len() + 50;
        opens(&mut world, "a wave of opens", |w| {
            w.events.opened.len() == target
        })?;
        for &h in &handles {
            world.client_socket(h).close();
        }
        let closed_target = world.events.closed + 50;
        run_until(
            &mut world,
            "a wave of closes",
            Duration::from_secs(5),
            |w| {
                let ids: Vec<ConnId> = w.events.open.iter().copied().collect();
                for id in ids {
                    if !w.server.may_recv(id) {
                        w.server.close(id);
                    }
                }
                Ok(())
            },
            |w| w.events.closed == closed_target,
        )?;
        for h in handles {
            world.client_sockets.remove(h);
        }
    }
    let elapsed = started.elapsed();
    println!(
        "connections: {} opened+closed in {:?}: {:.0}/s (client+server, simulated link)",
        WAVES * 50,
        elapsed,
        (WAVES * 50) as f64 / elapsed.as_secs_f64()
    );

    // The service walk over a full table: 1000 open connections of 1088 slots.
    for i in 0..1000u16 {
        connect(&mut world, 50_000 + i, 1024)?;
        if i % 50 == 49 {
            let target = world.events.open.len() + 50;
            opens(&mut world, "a wave of opens", |w| {
                w.events.open.len() == target
            })?;
        }
    }
    const CALLS: u32 = 10_000;
    let started = std::time::Instant::now();
    for _ in 0..CALLS {
        world.server.service(world.now, |_| {});
    }
    let per_call = started.elapsed() / CALLS;
    println!(
        "service(): {:?} per call with {} open of {} slots",
        per_call,
        world.server.connections(),
        world.server.sockets_total()
    );
    let started = std::time::Instant::now();
    for _ in 0..CALLS {
        world.server.poll(world.now, &mut world.link.port(Side::A));
    }
    println!(
        "poll() with nothing to do: {:?} per call",
        started.elapsed() / CALLS
    );

    // One busy connection among the 1000 open: 64-byte round trips, timing only the
    // server's poll and service (the client's smoltcp walks its own 1000 sockets).
    let busy = connect(&mut world, 60_000, 1024)?;
    opens(&mut world, "the busy connection's open", |w| {
        w.server.connections() == 1001
    })?;
    let id = *world.events.opened.last().context("no connection opened")?;
    const ROUNDS: u32 = 5_000;
    // Each round trip gets this much simulated time before it counts as lost.
    const ROUND_TRIP_STEPS_MAX: u32 = 10_000;
    let mut server_time = std::time::Duration::ZERO;
    let mut buffer = [0u8; 64];
    for _ in 0..ROUNDS {
        world
            .client_socket(busy)
            .send_slice(&[7; 64])
            .map_err(|e| anyhow!("client send: {e:?}"))?;
        let mut echoed = 0;
        let mut steps = 0;
        while echoed < 64 {
            steps += 1;
            ensure!(
                steps <= ROUND_TRIP_STEPS_MAX,
                "a round trip did not complete"
            );
            let started = std::time::Instant::now();
            world.server.poll(world.now, &mut world.link.port(Side::A));
            world.server.service(world.now, |_| {});
            if world.server.can_recv(id) {
                let n = world
                    .server
                    .recv(id, |b| {
                        let n = b.len().min(64);
                        buffer[..n].copy_from_slice(&b[..n]);
                        (n, n)
                    })
                    .map_err(|e| anyhow!("recv: {e:?}"))?;
                world
                    .server
                    .send_slice(id, &buffer[..n])
                    .map_err(|e| anyhow!("send: {e:?}"))?;
                world.server.poll(world.now, &mut world.link.port(Side::A));
            }
            server_time += started.elapsed();
            world.client.poll(
                world.now,
                &mut world.link.port(Side::B),
                &mut world.client_sockets,
            );
            while let Ok(n) = world.client_socket(busy).recv_slice(&mut buffer) {
                if n == 0 {
                    break;
                }
                echoed += n;
            }
            world.now += Duration::from_micros(100);
        }
    }
    println!(
        "one busy connection among {} open of {} slots: server poll+service {:?} per 64-byte round trip",
        world.server.connections(),
        world.server.sockets_total(),
        server_time / ROUNDS
    );
    Ok(())
}
