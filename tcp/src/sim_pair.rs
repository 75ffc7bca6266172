//! The appliance's [`Stack`] and a client smoltcp `Interface` on the two ends of one
//! [`SimLink`], in simulated time: the harness of the stack's end-to-end tests and of the
//! `stack_sim` benchmark, in one place so that both drive the stack the same way.
//!
//! The stack is on side A, the client on side B. One [`SimPair::step`] polls and services the
//! stack, then polls the client; [`SimPair::advance`] jumps the clock to the next thing due,
//! so timeouts cost no wall-clock time. What happens to the stack's events is the caller's
//! [`Observer`]: a test checks the event stream, a benchmark only counts.

use smoltcp::iface::{Config, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::socket::tcp as stcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};

use crate::frames::{CLIENT_IP, CLIENT_MAC, PORT, SERVER_IP, SERVER_MAC};
use crate::sim::{Side, SimConfig, SimLink};
use crate::{ConfigError, Event, Stack, StackConfig};

/// The simulated clock's start.
const START_MS: i64 = 1_000;
/// The longest [`SimPair::advance`] moves the clock in one jump, so a caller's `done` is
/// asked at least once per simulated second.
const ADVANCE_MAX: Duration = Duration::from_secs(1);

/// What a harness does with the stack's events.
pub trait Observer {
    /// Each event [`Stack::service`] reports, in order.
    fn event(&mut self, event: Event);

    /// Called before the stack's poll and after its service on every step, for checks of the
    /// stack's state (a test's assertions); nothing by default.
    fn check(&mut self, _server: &mut Stack) {}
}

/// The stack's configuration in the pair: the addresses of [`crate::frames`] (server
/// 10.99.0.2/24 port 8443, the client at 10.99.0.1) and a fixed random seed; the rest default.
pub fn server_config() -> StackConfig {
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
pub struct SimPair<O> {
    pub link: SimLink,
    pub server: Stack,
    pub client: Interface,
    pub client_sockets: SocketSet<'static>,
    pub now: Instant,
    /// The caller's view of the stack's events.
    pub events: O,
}

impl<O> std::fmt::Debug for SimPair<O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimPair")
            .field("now", &self.now)
            .field("connections", &self.server.connections())
            .field("client_sockets", &self.client_sockets.iter().count())
            .finish_non_exhaustive()
    }
}

impl<O: Observer + Default> SimPair<O> {
    /// A stack with `config` that has announced itself, and a client without sockets, on a
    /// link with `sim`'s faults. Err if the stack refuses `config`.
    pub fn new(config: &StackConfig, sim: SimConfig) -> Result<SimPair<O>, ConfigError> {
        let mut link = SimLink::new(sim);
        let now = Instant::from_millis(START_MS);
        let mut server = Stack::new(config, &mut link.port(Side::A), now)?;
        // A new link's queues are empty: the announcement always has room.
        assert!(
            server.announce(&mut link.port(Side::A), now),
            "the gratuitous ARP was not sent"
        );
        let mut client_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(CLIENT_MAC)));
        client_config.random_seed = 0xc11e;
        let mut client = Interface::new(client_config, &mut link.port(Side::B), now);
        client.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(CLIENT_IP), 24))
                .expect("a new interface has room for one address")
        });
        Ok(SimPair {
            link,
            server,
            client,
            client_sockets: SocketSet::new(Vec::new()),
            now,
            events: O::default(),
        })
    }
}

impl<O: Observer> SimPair<O> {
    /// Adds a client socket with buffers of `buffer_bytes` each way, connecting to the service
    /// from `local_port`.
    pub fn connect(
        &mut self,
        local_port: u16,
        buffer_bytes: usize,
    ) -> Result<SocketHandle, stcp::ConnectError> {
        let mut socket = stcp::Socket::new(
            stcp::SocketBuffer::new(vec![0; buffer_bytes]),
            stcp::SocketBuffer::new(vec![0; buffer_bytes]),
        );
        socket.connect(
            self.client.context(),
            (IpAddress::Ipv4(SERVER_IP), PORT),
            local_port,
        )?;
        Ok(self.client_sockets.add(socket))
    }

    pub fn client_socket(&mut self, handle: SocketHandle) -> &mut stcp::Socket<'static> {
        self.client_sockets.get_mut::<stcp::Socket>(handle)
    }

    /// One turn of both ends. True if anything moved.
    pub fn step(&mut self) -> bool {
        self.events.check(&mut self.server);
        let mut busy = self.server.poll(self.now, &mut self.link.port(Side::A));
        let events = &mut self.events;
        self.server.service(self.now, |event| {
            busy = true;
            events.event(event);
        });
        self.events.check(&mut self.server);
        busy |= self.client.poll(
            self.now,
            &mut self.link.port(Side::B),
            &mut self.client_sockets,
        ) == PollResult::SocketStateChanged;
        busy
    }

    /// Moves time to the next thing due (a frame, a timer), at least 1 ms and at most
    /// [`ADVANCE_MAX`] on.
    pub fn advance(&mut self) {
        let candidates = [
            self.server.poll_delay(self.now).map(|d| self.now + d),
            self.client.poll_at(self.now, &self.client_sockets),
            self.link.next_delivery(),
        ];
        let next = candidates.into_iter().flatten().min();
        let floor = self.now + Duration::from_millis(1);
        self.now = match next {
            Some(next) if next > floor => next.min(self.now + ADVANCE_MAX),
            _ => floor,
        };
    }

    /// Steps (running `app` after each step) until `done` or `limit` of simulated time; true
    /// if `done` came first.
    pub fn run_until(
        &mut self,
        limit: Duration,
        mut app: impl FnMut(&mut Self),
        done: impl FnMut(&mut Self) -> bool,
    ) -> bool {
        let run = self.try_run_until(
            limit,
            |pair| {
                app(pair);
                Ok::<(), std::convert::Infallible>(())
            },
            done,
        );
        match run {
            Ok(done) => done,
            Err(never) => match never {},
        }
    }

    /// As [`SimPair::run_until`], with an `app` that may fail: its first error ends the run.
    pub fn try_run_until<E>(
        &mut self,
        limit: Duration,
        mut app: impl FnMut(&mut Self) -> Result<(), E>,
        mut done: impl FnMut(&mut Self) -> bool,
    ) -> Result<bool, E> {
        let deadline = self.now + limit;
        while self.now < deadline {
            let busy = self.step();
            app(self)?;
            if done(self) {
                return Ok(true);
            }
            if !busy {
                self.advance();
            }
        }
        Ok(false)
    }
}
