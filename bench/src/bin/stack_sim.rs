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
use std::net::Ipv4Addr;

use anyhow::{anyhow, ensure, Context, Result};
use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp as stcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use tcp::sim::{Side, SimConfig, SimLink};
use tcp::{ConnId, Event, Stack, StackConfig};

const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const PORT: u16 = 8443;

fn main() -> Result<()> {
    bulk_transfer()?;
    service_walk_and_connection_rate()
}

fn server_config() -> StackConfig {
    StackConfig {
        mac: SERVER_MAC,
        ipv4: SERVER_IP,
        prefix_len: 24,
        port: PORT,
        random_seed: 0x5eed,
        ..StackConfig::default()
    }
}

/// The appliance and a client interface over one simulated link.
struct World {
    link: SimLink,
    server: Stack,
    client: Interface,
    client_sockets: SocketSet<'static>,
    now: Instant,
    /// Connections the server reported open and not yet closed.
    open: HashSet<ConnId>,
    /// Every connection the server reported opened, in order.
    opened: Vec<ConnId>,
    closed: usize,
}

impl World {
    fn new(config: &StackConfig) -> Result<World> {
        let mut link = SimLink::new(SimConfig::default());
        let now = Instant::from_millis(1_000);
        let mut server = Stack::new(config, &mut link.port(Side::A), now)
            .map_err(|e| anyhow!("stack config: {e:?}"))?;
        ensure!(
            server.announce(&mut link.port(Side::A), now),
            "the gratuitous ARP was not sent"
        );
        let mut client_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(CLIENT_MAC)));
        client_config.random_seed = 0xc11e;
        let mut client = Interface::new(client_config, &mut link.port(Side::B), now);
        client.update_ip_addrs(|addrs| {
            // The interface starts with no address: room for one is certain.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(CLIENT_IP), 24));
        });
        Ok(World {
            link,
            server,
            client,
            client_sockets: SocketSet::new(Vec::new()),
            now,
            open: HashSet::new(),
            opened: Vec::new(),
            closed: 0,
        })
    }

    /// Adds a client socket connecting to the service from `local_port`.
    fn connect(&mut self, local_port: u16, buffer_bytes: usize) -> Result<SocketHandle> {
        let mut socket = stcp::Socket::new(
            stcp::SocketBuffer::new(vec![0; buffer_bytes]),
            stcp::SocketBuffer::new(vec![0; buffer_bytes]),
        );
        socket
            .connect(
                self.client.context(),
                (IpAddress::Ipv4(SERVER_IP), PORT),
                local_port,
            )
            .map_err(|e| anyhow!("client connect from port {local_port}: {e:?}"))?;
        Ok(self.client_sockets.add(socket))
    }

    fn client_socket(&mut self, handle: SocketHandle) -> &mut stcp::Socket<'static> {
        self.client_sockets.get_mut::<stcp::Socket>(handle)
    }

    /// One turn of both ends. True if anything moved.
    fn step(&mut self) -> bool {
        let mut busy = self.server.poll(self.now, &mut self.link.port(Side::A));
        let (open, opened, closed) = (&mut self.open, &mut self.opened, &mut self.closed);
        self.server.service(self.now, |event| {
            busy = true;
            match event {
                Event::Opened(id) => {
                    open.insert(id);
                    opened.push(id);
                }
                Event::Closed(id) => {
                    open.remove(&id);
                    *closed += 1;
                }
            }
        });
        busy |= self.client.poll(
            self.now,
            &mut self.link.port(Side::B),
            &mut self.client_sockets,
        ) == PollResult::SocketStateChanged;
        busy
    }

    /// Moves time to the next thing due (a frame, a timer), at least 1 ms on.
    fn advance(&mut self) {
        let candidates = [
            self.server.poll_delay(self.now).map(|d| self.now + d),
            self.client.poll_at(self.now, &self.client_sockets),
            self.link.next_delivery(),
        ];
        let next = candidates.into_iter().flatten().min();
        let floor = self.now + Duration::from_millis(1);
        self.now = match next {
            Some(next) if next > floor => next.min(self.now + Duration::from_secs(1)),
            _ => floor,
        };
    }

    /// Steps (running `app` after each step) until `done` or `limit` of simulated time; an
    /// error if `limit` passes first or `app` fails.
    fn run_until(
        &mut self,
        what: &str,
        limit: Duration,
        mut app: impl FnMut(&mut World) -> Result<()>,
        mut done: impl FnMut(&mut World) -> bool,
    ) -> Result<()> {
        let deadline = self.now + limit;
        while self.now < deadline {
            let busy = self.step();
            app(self)?;
            if done(self) {
                return Ok(());
            }
            if !busy {
                self.advance();
            }
        }
        Err(anyhow!("{what}: not done after {limit} of simulated time"))
    }

    /// Reads everything the server holds on its open connections; returns the bytes read.
    fn drain_server(&mut self) -> Result<usize> {
        let mut read = 0;
        let ids: Vec<ConnId> = self.open.iter().copied().collect();
        for id in ids {
            while self.server.can_recv(id) {
                read += self
                    .server
                    .recv(id, |b| (b.len(), b.len()))
                    .map_err(|e| anyhow!("recv: {e:?}"))?;
            }
        }
        Ok(read)
    }
}

fn no_app(_: &mut World) -> Result<()> {
    Ok(())
}

/// 64 MiB from one client connection to the server, read as it arrives.
fn bulk_transfer() -> Result<()> {
    const BYTES: usize = 64 << 20;
    let mut world = World::new(&server_config())?;
    let client = world.connect(36_000, 65535)?;
    let chunk = vec![0x5a_u8; 65535];
    let mut sent = 0usize;
    let started = std::time::Instant::now();
    let frames_before = world.server.counters().rx_frames;
    // Shared by `app`, which counts, and `done`, which reads.
    let received = std::cell::Cell::new(0usize);
    world.run_until(
        "bulk transfer",
        Duration::from_secs(3600),
        |w| {
            let socket = w.client_socket(client);
            if socket.can_send() && sent < BYTES {
                sent += socket
                    .send_slice(&chunk[..(BYTES - sent).min(chunk.len())])
                    .map_err(|e| anyhow!("client send: {e:?}"))?;
            }
            received.set(received.get() + w.drain_server()?);
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
    let mut world = World::new(&config)?;
    // Connection rate: waves of 50 connects, each then closed by the client, server closes back.
    let started = std::time::Instant::now();
    let mut port = 40_000u16;
    const WAVES: usize = 20;
    for _ in 0..WAVES {
        let mut handles = Vec::with_capacity(50);
        for _ in 0..50 {
            port += 1;
            handles.push(world.connect(port, 1024)?);
        }
        let target = world.opened.len() + 50;
        world.run_until("a wave of opens", Duration::from_secs(5), no_app, |w| {
            w.opened.len() == target
        })?;
        for &h in &handles {
            world.client_socket(h).close();
        }
        let closed_target = world.closed + 50;
        world.run_until(
            "a wave of closes",
            Duration::from_secs(5),
            |w| {
                let ids: Vec<ConnId> = w.open.iter().copied().collect();
                for id in ids {
                    if !w.server.may_recv(id) {
                        w.server.close(id);
                    }
                }
                Ok(())
            },
            |w| w.closed == closed_target,
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
        world.connect(50_000 + i, 1024)?;
        if i % 50 == 49 {
            let target = world.open.len() + 50;
            world.run_until("a wave of opens", Duration::from_secs(5), no_app, |w| {
                w.open.len() == target
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
    let busy = world.connect(60_000, 1024)?;
    world.run_until(
        "the busy connection's open",
        Duration::from_secs(5),
        no_app,
        |w| w.server.connections() == 1001,
    )?;
    let id = *world.opened.last().context("no connection opened")?;
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
