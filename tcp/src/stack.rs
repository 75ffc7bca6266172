//! The stack: one smoltcp `Interface`, a fixed socket table, the listener pool and the
//! connection lifecycle (see docs/tcp.md).
//!
//! # Slot lifecycle
//!
//! Every socket of the table lives in a slot, allocated at start. A slot has a role:
//!
//! ```text
//!   Free ──listen()──▶ Listening ──SYN──▶ Embryonic ──handshake done──▶ Open ──▶ Lingering ──▶ Free
//!                          ▲                  │ RST in SYN-RECEIVED          (Closed reported)
//!                          └──────────────────┘ (RFC 9293 §3.10.7.4: back to LISTEN)
//! ```
//!
//! - `Embryonic` and `Open` slots are the connections counted against `connections_max`.
//! - `Opened` is reported when a slot reaches `Open`, `Closed` when it leaves it, whatever the
//!   cause, so the two always pair up. A handshake that dies before completing reports nothing.
//! - `Lingering` slots hold a socket in TIME-WAIT (RFC 9293 §3.10.7.4, smoltcp keeps it 10 s)
//!   or one with an RST still to send. They are reclaimed for listening when no slot is free.
//!
//! # Bounds
//!
//! The listening pool is kept at `min(listen_sockets, connections_max - connections)`. Since
//! each new connection consumes a listening socket, `listening + connections <=
//! connections_max` holds at every instant, also inside a poll: the table can never hold more
//! than `connections_max` connections. The `listen_sockets` extra slots leave room for
//! lingering sockets, so re-arming always finds a slot.

use std::net::Ipv4Addr;

use smoltcp::iface::{
    Config, Interface, PollIngressSingleResult, PollResult, SocketHandle, SocketSet,
};
use smoltcp::phy::{Device, Medium, TxToken};
use smoltcp::socket::tcp::{self, RecvError, SendError, State};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr, IpEndpoint};

use crate::arp::{write_gratuitous_arp, GRATUITOUS_ARP_FRAME_BYTES};
use crate::cookie::{CookieSyn, Cookies, Gate};
use crate::isn;
use crate::config::{ConfigError, StackConfig};
use crate::neighbour::{Authority, Neighbours, Seen};
use crate::probe::{OneFrameDevice, Probe, ProbeDevice};
use crate::ready::Ready;

/// Names one connection: a slot of the socket table and the slot's generation when the
/// connection was opened. The generation changes each time the slot opens a new connection,
/// so an id kept after its connection closed can never reach the next one (it gets
/// [`ConnError::Stale`]). Generations are u32 and wrap: an id would have to outlive 2^32
/// connections on its slot to alias.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    slot: u32,
    generation: u32,
}

impl ConnId {
    /// Index in the socket table, `< connections_max + listen_sockets`: use it to index
    /// per-connection state (TLS sessions) in a table of the same size.
    pub fn slot(self) -> usize {
        self.slot as usize
    }

    pub fn generation(self) -> u32 {
        self.generation
    }
}

/// A change in the connection table, reported by [`Stack::service`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The three-way handshake completed; the id is valid until its `Closed`.
    Opened(ConnId),
    /// Reported exactly once for every `Opened`, whatever ended the connection: both FINs
    /// exchanged, an RST from the peer, the idle timeout, or [`Stack::abort`]. The id is
    /// stale from now on.
    Closed(ConnId),
}

/// Why an operation on a connection failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnError {
    /// The id names no open connection: its connection was closed (and `Closed` reported),
    /// and the slot may already serve another one.
    #[error("connection {id:?} is closed; the id is stale")]
    Stale { id: ConnId },
    /// The peer closed its side (FIN) and every byte it sent has been received.
    #[error("connection {id:?}: the peer finished sending (FIN), all its data was received")]
    Finished { id: ConnId },
    /// The connection cannot receive in this state (reset, or aborted by us).
    #[error("connection {id:?} cannot receive in state {state}")]
    NotReadable { id: ConnId, state: State },
    /// The connection cannot send in this state (we closed our side, or it was reset).
    #[error("connection {id:?} cannot send in state {state}")]
    NotWritable { id: ConnId, state: State },
}

/// Counters since start; plain u64 fields for the caller to export (Prometheus).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StackCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    /// Connections that completed the handshake (`Opened` events).
    pub accepted: u64,
    /// `Closed` events; equals `accepted` minus open connections.
    pub closed: u64,
    /// Open connections aborted after `idle_timeout_ms` without traffic.
    pub idle_timeouts: u64,
    /// Handshakes aborted after `handshake_timeout_ms` (SYN floods, lost final ACKs).
    pub handshake_timeouts: u64,
    /// Connections aborted by [`Stack::abort`].
    pub aborted: u64,
    /// Handshakes that left LISTEN but never completed (RST, handshake timeout).
    pub handshakes_failed: u64,
    /// SYNs to the service port answered with RST because `connections_max` was reached.
    pub refused_at_capacity: u64,
    /// Connections reset as their handshake completed because their source address already
    /// had `connections_per_source_max` open.
    pub refused_per_source: u64,
    /// SYNs answered with RST because more arrived in one poll than sockets were listening
    /// (raise `listen_sockets`).
    pub refused_listen_pool_empty: u64,
    /// TIME-WAIT sockets (or sockets with an RST still queued) cut short to listen again.
    pub lingering_reclaimed: u64,
    /// Gratuitous ARP announcements sent.
    pub announcements: u64,
    /// Polls that stopped at `ingress_frames_per_poll_max` (more frames may be waiting).
    pub ingress_limit_hits: u64,
    /// Neighbours taught to smoltcp from received frames (new, MAC changed, or refreshed);
    /// see docs/tcp.md, "Neighbours".
    pub neighbours_learned: u64,
    /// Frames or ARP that showed another MAC for the gateway, or for a neighbour with a live
    /// connection, without the right to rebind it (docs/tcp.md, "Neighbours").
    pub neighbour_rebinds_refused: u64,
    /// Neighbours without a live connection evicted to make room for another.
    pub neighbours_evicted: u64,
    /// New neighbours not learned because every entry had a live connection (raise
    /// `tcp.neighbours_max`).
    pub neighbours_table_full: u64,
    /// SYNs answered with a SYN cookie instead of a listening socket (docs/tcp.md).
    pub syn_cookies_sent: u64,
    /// Connections opened from an ACK that carried a valid cookie.
    pub syn_cookies_accepted: u64,
    /// Cookie SYN-ACKs dropped for want of a transmit buffer (the client sends its SYN again).
    pub syn_cookies_unsent: u64,
    /// Sockets egress dispatched because they were ready (`ready.rs`): the stack's work
    /// follows what happened, not the size of the table.
    pub egress_visits: u64,
    /// Slots `service` looked at because they were ready.
    pub service_visits: u64,
    /// Walks of the whole table: egress after a neighbour was taught, `service` when the
    /// earliest idle or handshake deadline came.
    pub table_walks: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Free,
    Listening,
    Embryonic,
    Open,
    Lingering,
}

#[derive(Debug)]
struct Slot {
    handle: SocketHandle,
    generation: u32,
    role: Role,
    /// When data last moved or the state last changed (for the idle timeout).
    last_activity: Instant,
    /// The peer's address while the slot is an open connection (counted in `per_source`).
    source: Option<IpAddress>,
    /// (bytes in rx buffer, bytes in tx buffer, state) at the last look: a change is activity.
    seen: (usize, usize, State),
    /// The peer of a connection opened from a SYN cookie, until the slot is released: its
    /// entry in the gate's `opened` set is removed with it.
    cookie_remote: Option<IpEndpoint>,
}

/// One userspace TCP/IP stack over one device (one NIC queue). Sans-IO: the caller passes
/// the device and the time into every call.
pub struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    slots: Vec<Slot>,
    /// Indices of `Free` slots.
    free: Vec<u32>,
    listening: usize,
    /// Embryonic + Open slots: the connections counted against `connections_max`.
    connections_counted: usize,
    /// Open connections per peer address, for `connections_per_source_max`. At most one
    /// entry per open connection; std's keyed hasher, since the keys are chosen by peers.
    per_source: std::collections::HashMap<IpAddress, u32>,
    connections_per_source_max: usize,
    connections_open: usize,
    /// True when the last re-arm kept fewer than `listen_sockets` listening because of
    /// `connections_max`: a refused SYN is then counted as refused at capacity.
    at_capacity: bool,
    /// The slots egress and `service` must look at, and the sockets' timers (`ready.rs`).
    ready: Ready,
    /// Scratch lists for the slots and handles of one egress or service round.
    round_slots: Vec<u32>,
    round_handles: Vec<SocketHandle>,
    /// Egress must walk every socket once: a neighbour was taught, so any socket waiting
    /// for one may have work (rare).
    walk_egress: bool,
    /// `service` must walk every slot once (after a walking egress, whose sockets are not
    /// known).
    walk_service: bool,
    /// The neighbour table's `fed` counter at the last poll.
    neighbours_fed: u64,
    /// The earliest idle or handshake deadline: the last full `service` walk's, lowered by
    /// each slot looked at since. Only ever early, so a walk at that time finds every expiry.
    timeout_next: Option<Instant>,
    now: Instant,
    probe: Probe,
    neighbours: Neighbours,
    counters: StackCounters,
    mac: [u8; 6],
    ipv4: Ipv4Addr,
    port: u16,
    listen_sockets: usize,
    connections_max: usize,
    idle_timeout: Duration,
    handshake_timeout: Duration,
    ingress_frames_per_poll_max: usize,
    egress_rounds_per_poll_max: usize,
}

impl std::fmt::Debug for Stack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stack")
            .field("ipv4", &self.ipv4)
            .field("port", &self.port)
            .field("listening", &self.listening)
            .field("connections_counted", &self.connections_counted)
            .field("connections_open", &self.connections_open)
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Stack {
    /// Validates `config`, allocates the whole socket table and starts listening.
    /// Memory: `(connections_max + listen_sockets) * (rx_buffer_bytes + tx_buffer_bytes)`,
    /// 34 MiB with the defaults, reserved here; the buffers are zeroed by the allocator
    /// (calloc), so a page becomes resident only once data passes through it. About 17 KiB per
    /// slot is resident from the start whatever the buffer size (allocator bookkeeping at each
    /// buffer's edges, measured by the `conns` benchmark).
    pub fn new(
        config: &StackConfig,
        device: &mut impl Device,
        now: Instant,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let capabilities = device.capabilities();
        if capabilities.medium != Medium::Ethernet {
            return Err(ConfigError::Device {
                reason: "the device's medium is not Ethernet",
            });
        }
        // An Ethernet header plus the smallest datagram every IPv4 host must take
        // (RFC 791: 576 bytes).
        if capabilities.max_transmission_unit < 14 + 576 {
            return Err(ConfigError::Device {
                reason: "the device's frame size is below 14 + 576 bytes",
            });
        }

        let mut iface_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(config.mac)));
        iface_config.random_seed = config.random_seed;
        let mut iface = Interface::new(iface_config, device, now);
        let key = isn::key_words(config.secret);
        iface.set_tcp_isn_generator(Some(isn::generator(key)));
        // The gate's SYN-ACK announces what smoltcp's own would: MSS from the device's frame
        // size, the receive buffer as window, and smoltcp's window shift for that buffer.
        let rx_cap_log2 = usize::BITS - config.rx_buffer_bytes.leading_zeros();
        let gate = Gate {
            cookies: Cookies::new(key),
            mode: config.syn_cookies,
            backlog: config.syn_backlog.min(config.connections_max),
            pending: 0,
            last_cookie_slot: None,
            opened: std::collections::HashSet::new(),
            syn_ack: None,
            accepted: None,
            counters: Default::default(),
            passed: std::collections::HashMap::new(),
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
            now,
            local: IpEndpoint::new(IpAddress::Ipv4(config.ipv4), config.port),
            mac: config.mac,
            mss: (capabilities.max_transmission_unit - 14 - 40).min(usize::from(u16::MAX)) as u16,
            window: config.rx_buffer_bytes.min(usize::from(u16::MAX)) as u16,
            window_shift: rx_cap_log2.saturating_sub(16) as u8,
            now_secs: 0,
        };
        iface.update_ip_addrs(|addrs| {
            addrs
                .push(IpCidr::new(IpAddress::Ipv4(config.ipv4), config.prefix_len))
                .expect("a fresh interface has room for one address");
        });
        if let Some(gateway) = config.gateway {
            iface
                .routes_mut()
                .add_default_ipv4_route(gateway)
                .expect("a fresh interface has room for one route");
        }

        let sockets_total = config.sockets_total();
        assert!(sockets_total <= u32::MAX as usize);
        let mut sockets = SocketSet::new(Vec::with_capacity(sockets_total));
        let mut slots = Vec::with_capacity(sockets_total);
        for _ in 0..sockets_total {
            let mut socket = tcp::Socket::new(
                tcp::SocketBuffer::new(vec![0; config.rx_buffer_bytes]),
                tcp::SocketBuffer::new(vec![0; config.tx_buffer_bytes]),
            );
            socket.set_nagle_enabled(config.nagle);
            socket.set_keep_alive(config.keep_alive_ms.map(Duration::from_millis));
            slots.push(Slot {
                handle: sockets.add(socket),
                generation: 0,
                role: Role::Free,
                last_activity: now,
                source: None,
                seen: (0, 0, State::Closed),
                cookie_remote: None,
            });
        }
        // `touch_ingress_socket` finds a socket's slot by its handle.
        debug_assert!(slots.windows(2).all(|pair| pair[0].handle < pair[1].handle));
        // Pop order: the lowest slots listen first.
        let free = (0..sockets_total as u32).rev().collect();

        let mut stack = Stack {
            iface,
            sockets,
            slots,
            free,
            listening: 0,
            connections_counted: 0,
            per_source: std::collections::HashMap::new(),
            connections_per_source_max: config.connections_per_source_max.min(config.connections_max),
            connections_open: 0,
            at_capacity: false,
            timeout_next: None,
            ready: Ready::new(sockets_total),
            round_slots: Vec::with_capacity(sockets_total),
            round_handles: Vec::with_capacity(sockets_total),
            walk_egress: false,
            walk_service: false,
            neighbours_fed: 0,
            now,
            probe: Probe::new(config.port, config.mac, config.ipv4, gate),
            neighbours: Neighbours::new(
                config.mac,
                config.ipv4,
                config.prefix_len,
                config.gateway,
                config.gateway_mac,
                config.neighbours_max,
            ),
            counters: StackCounters::default(),
            mac: config.mac,
            ipv4: config.ipv4,
            port: config.port,
            listen_sockets: config.listen_sockets,
            connections_max: config.connections_max,
            idle_timeout: Duration::from_millis(config.idle_timeout_ms),
            handshake_timeout: Duration::from_millis(config.handshake_timeout_ms),
            ingress_frames_per_poll_max: config.ingress_frames_per_poll_max,
            egress_rounds_per_poll_max: config.egress_rounds_per_poll_max,
        };
        stack.rearm();
        // A static gateway MAC is known from the start.
        let per_source = &stack.per_source;
        stack.neighbours.maintain(
            &mut stack.iface,
            &mut stack.sockets,
            device,
            now,
            &|ipv4| per_source.contains_key(&IpAddress::Ipv4(ipv4)),
        );
        stack.fold_neighbour_counters();
        Ok(stack)
    }

    /// Sends one gratuitous ARP announcement for our address (RFC 5227 §2.3). Call at start
    /// (and after a MAC change) so neighbours do not drop our first replies while they ARP.
    /// Returns false if the device had no transmit buffer free; call again later.
    pub fn announce(&mut self, device: &mut impl Device, now: Instant) -> bool {
        let Some(token) = device.transmit(now) else {
            return false;
        };
        let (mac, ipv4) = (self.mac, self.ipv4);
        token.consume(GRATUITOUS_ARP_FRAME_BYTES, |frame| {
            write_gratuitous_arp(frame, mac, ipv4)
        });
        self.counters.announcements += 1;
        self.counters.tx_frames += 1;
        self.counters.tx_bytes += GRATUITOUS_ARP_FRAME_BYTES as u64;
        true
    }

    /// Runs the interface: at most `ingress_frames_per_poll_max` frames in (ARP, ICMP echo and
    /// TCP are answered by smoltcp), then at most `egress_rounds_per_poll_max` rounds out.
    /// Returns true if anything happened (frames moved or socket state changed).
    pub fn poll(&mut self, now: Instant, device: &mut impl Device) -> bool {
        self.now = now;
        let tx_frames_before = self.probe.tx_frames.get();
        let mut device = ProbeDevice {
            inner: device,
            probe: &self.probe,
        };
        let mut changed = false;
        let mut frames = 0;
        {
            let mut gate = self.probe.gate.borrow_mut();
            gate.now_secs = now.secs().max(0) as u64;
            gate.now = now;
            gate.pending = self.connections_counted - self.connections_open;
        }
        self.iface.poll_maintenance(now);
        let per_source = &self.per_source;
        let live = |ipv4: Ipv4Addr| per_source.contains_key(&IpAddress::Ipv4(ipv4));
        self.neighbours
            .maintain(&mut self.iface, &mut self.sockets, &mut device, now, &live);
        while frames < self.ingress_frames_per_poll_max {
            let result = self
                .iface
                .poll_ingress_single(now, &mut device, &mut self.sockets);
            match result {
                PollIngressSingleResult::None => break,
                PollIngressSingleResult::PacketProcessed => {}
                PollIngressSingleResult::SocketStateChanged => changed = true,
            }
            frames += 1;
            touch_ingress_socket(&mut self.iface, &self.slots, &mut self.ready);
            // What the SYN-cookie gate took from this frame: a SYN-ACK to send, or an ACK
            // whose cookie opens a connection now.
            let (syn_ack, accepted) = {
                let mut gate = self.probe.gate.borrow_mut();
                (gate.syn_ack.take(), gate.accepted.take())
            };
            if let Some((frame, len)) = syn_ack {
                send_frame(&mut device, now, &frame[..len], &mut self.probe.gate.borrow_mut().counters.cookies_unsent);
            }
            if let Some((frame, syn)) = accepted {
                let window = self.probe.gate.borrow().window;
                let opened = open_from_cookie(
                    &mut self.iface,
                    &mut self.sockets,
                    &mut device,
                    now,
                    &frame,
                    syn,
                    window,
                    &self.slots,
                );
                touch_ingress_socket(&mut self.iface, &self.slots, &mut self.ready);
                if let Some((index, remote, remote_mac)) = opened {
                    self.ready.touch(index);
                    self.slots[index].cookie_remote = Some(remote);
                    let mut gate = self.probe.gate.borrow_mut();
                    gate.opened.insert(remote);
                    gate.counters.cookies_accepted += 1;
                    drop(gate);
                    changed = true;
                    // A valid cookie ACK completes a handshake: it teaches like a live segment.
                    let IpAddress::Ipv4(source) = remote.addr;
                    self.neighbours.learn(
                        &mut self.iface,
                        &mut self.sockets,
                        &mut device,
                        now,
                        source,
                        remote_mac,
                        Authority::Live,
                        &live,
                    );
                }
            }
            // A SYN to the service port answered with an RST: no socket was listening
            // (smoltcp's reply to a segment no socket accepts, RFC 9293 §3.10.7.1).
            if self.probe.rx_syn.get() && self.probe.tx_rst.get() {
                if self.at_capacity {
                    self.counters.refused_at_capacity += 1;
                } else {
                    self.counters.refused_listen_pool_empty += 1;
                }
                self.probe.rx_syn.set(false);
            }
            // ARP aimed at us reaches smoltcp (which fills its cache from it) only if the
            // neighbour table admits the sender (docs/tcp.md, "Neighbours").
            if let Some(arp) = self.probe.arp.take() {
                self.neighbours.arp(
                    &mut self.iface,
                    &mut self.sockets,
                    &mut device,
                    now,
                    &arp,
                    &live,
                );
            }
            // Teach smoltcp the sender of an IPv4 frame addressed to us before egress runs,
            // so a SYN-ACK to a client whose ARP traffic reaches another queue leaves in this
            // poll instead of waiting for an ARP reply that never comes (docs/tcp.md). Only a
            // live connection's segment may move a neighbour that has one.
            if let Some((source, source_mac, seen)) = self.probe.learned.take() {
                let authority = match seen {
                    Seen::Syn | Seen::Echo => Authority::Tentative,
                    Seen::Segment { port } => {
                        let remote = IpEndpoint::new(IpAddress::Ipv4(source), port);
                        let confirm = self.neighbours.neighbour_of(source) == Some(source)
                            && self
                                .neighbours
                                .wants_confirmation(source, source_mac, now, &live);
                        if confirm && live_four_tuple(&self.slots, &self.sockets, remote) {
                            Authority::Live
                        } else {
                            Authority::Refresh
                        }
                    }
                };
                self.neighbours.learn(
                    &mut self.iface,
                    &mut self.sockets,
                    &mut device,
                    now,
                    source,
                    source_mac,
                    authority,
                    &live,
                );
            }
            if let Some(target) = self.probe.asked.take() {
                self.neighbours.note_asked(target, now);
            }
        }
        if frames == self.ingress_frames_per_poll_max {
            self.counters.ingress_limit_hits += 1;
        }
        // Egress dispatches the sockets that may have work (`ready.rs`): touched by a segment
        // or by the caller, or due by their timer. Every socket only after a neighbour was
        // taught, since any socket may have been waiting for it.
        if self.neighbours.counters.fed != self.neighbours_fed {
            self.neighbours_fed = self.neighbours.counters.fed;
            self.walk_egress = true;
        }
        self.ready.expire(now);
        if self.walk_egress {
            self.walk_egress = false;
            self.counters.table_walks += 1;
            for _ in 0..self.egress_rounds_per_poll_max {
                match self.iface.poll_egress(now, &mut device, &mut self.sockets) {
                    PollResult::None => break,
                    PollResult::SocketStateChanged => changed = true,
                }
            }
            // Which sockets moved is not known: every slot's timer is taken afresh and the
            // next service walks the table.
            self.ready.take_egress(&mut self.round_slots);
            for index in 0..self.slots.len() {
                if self.slots[index].role != Role::Free {
                    let at = self.iface.socket_poll_at(now, &self.sockets, self.slots[index].handle);
                    self.ready.schedule(index, at, now);
                }
            }
            self.walk_service = true;
        } else {
            for _ in 0..self.egress_rounds_per_poll_max {
                if !self.ready.egress_pending() {
                    break;
                }
                self.ready.take_egress(&mut self.round_slots);
                self.counters.egress_visits += self.round_slots.len() as u64;
                self.round_handles.clear();
                self.round_handles.extend(self.round_slots.iter().map(|&i| self.slots[i as usize].handle));
                if self.iface.poll_egress_sockets(now, &mut device, &mut self.sockets, &self.round_handles)
                    == PollResult::SocketStateChanged
                {
                    changed = true;
                }
                // A socket with more to send comes back for the next round (or the next
                // poll); the others wait for their timer or for a segment.
                for &index in &self.round_slots {
                    let index = index as usize;
                    let at = self.iface.socket_poll_at(now, &self.sockets, self.slots[index].handle);
                    self.ready.schedule(index, at, now);
                    self.ready.wants_service(index);
                }
            }
        }
        if let Some(target) = self.probe.asked.take() {
            self.neighbours.note_asked(target, now);
        }
        self.fold_neighbour_counters();
        let gate = self.probe.gate.borrow().counters;
        self.counters.syn_cookies_sent = gate.cookies_sent;
        self.counters.syn_cookies_accepted = gate.cookies_accepted;
        self.counters.syn_cookies_unsent = gate.cookies_unsent;
        self.counters.rx_frames = self.probe.rx_frames.get();
        self.counters.rx_bytes = self.probe.rx_bytes.get();
        self.counters.tx_frames = self.probe.tx_frames.get() + self.counters.announcements;
        self.counters.tx_bytes = self.probe.tx_bytes.get()
            + self.counters.announcements * GRATUITOUS_ARP_FRAME_BYTES as u64;
        changed || frames > 0 || self.probe.tx_frames.get() != tx_frames_before
    }

    fn fold_neighbour_counters(&mut self) {
        let neighbours = self.neighbours.counters;
        self.counters.neighbours_learned = neighbours.learned;
        self.counters.neighbour_rebinds_refused = neighbours.rebinds_refused;
        self.counters.neighbours_evicted = neighbours.evicted;
        self.counters.neighbours_table_full = neighbours.table_full;
    }

    /// How long the caller may wait before the next `poll`/`service` if no frame arrives:
    /// smoltcp's timers (retransmission, delayed ACK, TIME-WAIT) and the earliest idle or
    /// handshake timeout seen by the last `service`. None: nothing is pending.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        let sockets = if self.ready.egress_pending() || self.walk_egress {
            Some(now)
        } else {
            self.ready.next_timer()
        };
        let next = match (sockets, self.timeout_next) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next.map(|at| if at > now { at - now } else { Duration::ZERO })
    }

    /// Looks at the slots that may have changed (`ready.rs`): reports `Opened`/`Closed`,
    /// aborts connections idle for `idle_timeout_ms` and handshakes older than
    /// `handshake_timeout_ms`, frees closed sockets and re-arms the listening pool. Call after
    /// every `poll`. Its cost follows what happened since the last call, except when the
    /// earliest idle or handshake deadline has come: then it walks the whole table once,
    /// one look at each slot (about 2.5 µs for 1088 slots in release), and learns the next.
    pub fn service(&mut self, now: Instant, mut on_event: impl FnMut(Event)) {
        self.now = now;
        let walk = self.walk_service || self.timeout_next.is_some_and(|at| now >= at);
        if walk {
            self.walk_service = false;
            self.counters.table_walks += 1;
            self.timeout_next = None;
            self.ready.take_service(&mut self.round_slots);
            for index in 0..self.slots.len() {
                if self.slots[index].role != Role::Free {
                    self.service_slot(index, now, &mut on_event);
                }
            }
        } else {
            let mut round = std::mem::take(&mut self.round_slots);
            self.ready.take_service(&mut round);
            self.counters.service_visits += round.len() as u64;
            for &index in &round {
                if self.slots[index as usize].role != Role::Free {
                    self.service_slot(index as usize, now, &mut on_event);
                }
            }
            self.round_slots = round;
        }
        self.rearm();
    }

    /// Calls `f` with each open connection a segment reached since the last call (data, a
    /// FIN, an ACK that made room to send, a reset): the connections the caller may want to
    /// look at. Call after `service`, so that ids are those of open connections.
    pub fn take_ingress_ready(&mut self, mut f: impl FnMut(ConnId)) {
        let slots = &self.slots;
        self.ready.take_app(|index| {
            let slot = &slots[index];
            if slot.role == Role::Open {
                f(ConnId { slot: index as u32, generation: slot.generation });
            }
        });
    }

    /// Slots whose socket wants polling (`Interface::socket_poll_at`) but which the
    /// readiness sets would not visit in time: empty unless there is a bug. A walk of the
    /// table, for tests.
    #[doc(hidden)]
    pub fn readiness_violations(&mut self) -> Vec<usize> {
        let now = self.now;
        (0..self.slots.len())
            .filter(|&index| {
                self.iface
                    .socket_poll_at(now, &self.sockets, self.slots[index].handle)
                    .is_some_and(|at| !self.walk_egress && !self.ready.covers(index, at.max(now)))
            })
            .collect()
    }

    fn service_slot(&mut self, index: usize, now: Instant, on_event: &mut impl FnMut(Event)) {
        let slot = &mut self.slots[index];
        let socket = self.sockets.get_mut::<tcp::Socket>(slot.handle);
        let state = socket.state();

        if slot.role == Role::Listening {
            match state {
                State::Listen => return,
                // Only a reset (our address removed) closes a listening socket.
                State::Closed => {
                    self.listening -= 1;
                    slot.role = Role::Free;
                    self.free.push(index as u32);
                    return;
                }
                // A SYN arrived: this socket is now a connection (RFC 9293 §3.10.7.2).
                _ => {
                    self.listening -= 1;
                    self.connections_counted += 1;
                    slot.role = Role::Embryonic;
                    slot.last_activity = now;
                    slot.seen = (socket.recv_queue(), socket.send_queue(), state);
                }
            }
        }

        if slot.role == Role::Embryonic {
            match state {
                // RST in SYN-RECEIVED: smoltcp returned the socket to LISTEN.
                State::Listen => {
                    self.connections_counted -= 1;
                    self.listening += 1;
                    self.counters.handshakes_failed += 1;
                    slot.role = Role::Listening;
                    if let Some(remote) = slot.cookie_remote.take() {
                        self.probe.gate.borrow_mut().opened.remove(&remote);
                    }
                    return;
                }
                State::SynReceived | State::SynSent => {
                    let deadline = slot.last_activity + self.handshake_timeout;
                    if now >= deadline {
                        socket.abort();
                        self.ready.touch(index);
                        self.counters.handshake_timeouts += 1;
                        self.counters.handshakes_failed += 1;
                        self.connections_counted -= 1;
                        slot.role = Role::Lingering;
                    } else {
                        self.timeout_next = Some(match self.timeout_next {
                            Some(d) => d.min(deadline),
                            None => deadline,
                        });
                    }
                    return;
                }
                // Ended before we saw it open (RST right after the handshake): the caller
                // never knew it, so nothing is reported.
                State::Closed | State::TimeWait => {
                    self.connections_counted -= 1;
                    self.counters.handshakes_failed += 1;
                    slot.role = Role::Lingering;
                }
                // The handshake completed (possibly with data and FIN already in).
                _ => {
                    let source = socket.remote_endpoint().map(|e| e.addr);
                    let count = source.map_or(0, |a| self.per_source.get(&a).copied().unwrap_or(0));
                    if count as usize >= self.connections_per_source_max {
                        // RFC 9293 §3.10.4 ABORT: an RST, and the slot lingers until it is out.
                        socket.abort();
                        self.ready.touch(index);
                        self.counters.refused_per_source += 1;
                        self.counters.handshakes_failed += 1;
                        self.connections_counted -= 1;
                        slot.role = Role::Lingering;
                        return;
                    }
                    if let Some(a) = source {
                        *self.per_source.entry(a).or_insert(0) += 1;
                    }
                    slot.source = source;
                    slot.generation = slot.generation.wrapping_add(1);
                    slot.role = Role::Open;
                    slot.last_activity = now;
                    self.connections_open += 1;
                    self.counters.accepted += 1;
                    on_event(Event::Opened(ConnId {
                        slot: index as u32,
                        generation: slot.generation,
                    }));
                }
            }
        }

        if slot.role == Role::Open {
            let id = ConnId {
                slot: index as u32,
                generation: slot.generation,
            };
            // In TIME-WAIT the peer's last bytes may still be unread: the connection stays
            // open for the caller until they are (or the idle timeout ends it).
            let ended = match state {
                State::Closed | State::Listen => true,
                State::TimeWait => !socket.can_recv(),
                _ => false,
            };
            if !ended {
                let seen = (socket.recv_queue(), socket.send_queue(), state);
                if seen != slot.seen {
                    slot.seen = seen;
                    slot.last_activity = now;
                }
                let deadline = slot.last_activity + self.idle_timeout;
                if now < deadline {
                    self.timeout_next = Some(match self.timeout_next {
                        Some(d) => d.min(deadline),
                        None => deadline,
                    });
                    return;
                }
                // RFC 9293 §3.10.4: ABORT sends an RST and deletes the connection.
                socket.abort();
                self.ready.touch(index);
                self.counters.idle_timeouts += 1;
            }
            self.connections_counted -= 1;
            self.connections_open -= 1;
            self.counters.closed += 1;
            if let Some(a) = slot.source.take() {
                if let std::collections::hash_map::Entry::Occupied(mut e) = self.per_source.entry(a) {
                    *e.get_mut() -= 1;
                    if *e.get() == 0 {
                        e.remove();
                    }
                }
            }
            slot.role = Role::Lingering;
            on_event(Event::Closed(id));
        }

        if slot.role == Role::Lingering {
            if let Some(remote) = slot.cookie_remote.take() {
                self.probe.gate.borrow_mut().opened.remove(&remote);
            }
            // Free once TIME-WAIT expired and any RST went out (smoltcp forgets the
            // remote endpoint after sending the RST of an abort).
            let socket = self.sockets.get::<tcp::Socket>(slot.handle);
            if socket.state() == State::Closed && socket.remote_endpoint().is_none() {
                slot.role = Role::Free;
                self.free.push(index as u32);
            }
        }
    }

    /// Keeps `min(listen_sockets, connections_max - connections)` sockets listening.
    fn rearm(&mut self) {
        let room = self.connections_max - self.connections_counted;
        let wanted = self.listen_sockets.min(room);
        self.at_capacity = room < self.listen_sockets;
        while self.listening < wanted {
            let index = match self.free.pop() {
                Some(index) => index as usize,
                None => {
                    // listening + connections <= connections_max and the table holds
                    // connections_max + listen_sockets slots, so a lingering slot exists.
                    let index = self
                        .slots
                        .iter()
                        .position(|slot| slot.role == Role::Lingering)
                        .expect("a lingering slot exists when none is free");
                    self.counters.lingering_reclaimed += 1;
                    index
                }
            };
            let slot = &mut self.slots[index];
            let socket = self.sockets.get_mut::<tcp::Socket>(slot.handle);
            // Free and lingering sockets are CLOSED or TIME-WAIT, which `listen` accepts; it
            // resets the socket, dropping a TIME-WAIT or an unsent RST.
            socket
                .listen(self.port)
                .expect("a closed socket listens on a nonzero port");
            slot.role = Role::Listening;
            self.listening += 1;
        }
    }

    /// Looks up an open connection.
    fn slot_of(&self, id: ConnId) -> Result<&Slot, ConnError> {
        match self.slots.get(id.slot()) {
            Some(slot) if slot.generation == id.generation && slot.role == Role::Open => Ok(slot),
            _ => Err(ConnError::Stale { id }),
        }
    }

    fn socket_of(&self, id: ConnId) -> Option<&tcp::Socket<'static>> {
        let handle = self.slot_of(id).ok()?.handle;
        Some(self.sockets.get::<tcp::Socket>(handle))
    }

    /// Zero-copy receive: `f` gets the contiguous readable bytes and returns how many it
    /// consumed (at most the slice's length) plus a value.
    ///
    /// The receive buffer is a ring: the slice stops at its end, so one call may show fewer
    /// bytes than are buffered. Loop while [`Stack::can_recv`] is true. With an empty buffer
    /// `f` gets an empty slice.
    pub fn recv<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&[u8]) -> (usize, R),
    ) -> Result<R, ConnError> {
        let handle = self.slot_of(id)?.handle;
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let result = socket.recv(|buffer| {
            let (consumed, value) = f(buffer);
            assert!(
                consumed <= buffer.len(),
                "recv callback consumed {consumed} of {} bytes",
                buffer.len()
            );
            (consumed, (consumed, value))
        });
        match result {
            Ok((consumed, value)) => {
                if consumed > 0 {
                    // Reading opens the receive window: a window update may be due.
                    self.slots[id.slot()].last_activity = self.now;
                    self.ready.touch(id.slot());
                }
                Ok(value)
            }
            Err(RecvError::Finished) => Err(ConnError::Finished { id }),
            Err(RecvError::InvalidState) => Err(ConnError::NotReadable {
                id,
                state: socket.state(),
            }),
        }
    }

    /// Zero-copy send: `f` gets free transmit-buffer space and returns how many bytes it
    /// wrote (at most the slice's length) plus a value.
    ///
    /// The slice is the contiguous free space up to the ring's end, so it may be shorter
    /// than [`Stack::send_capacity_free`]: loop while there is more to write and room.
    pub fn send<R>(
        &mut self,
        id: ConnId,
        f: impl FnOnce(&mut [u8]) -> (usize, R),
    ) -> Result<R, ConnError> {
        let handle = self.slot_of(id)?.handle;
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        let result = socket.send(|buffer| {
            let length = buffer.len();
            let (written, value) = f(buffer);
            assert!(
                written <= length,
                "send callback wrote {written} of {length} bytes"
            );
            (written, (written, value))
        });
        match result {
            Ok((written, value)) => {
                if written > 0 {
                    self.slots[id.slot()].last_activity = self.now;
                    self.ready.touch(id.slot());
                }
                Ok(value)
            }
            Err(SendError::InvalidState) => Err(ConnError::NotWritable {
                id,
                state: socket.state(),
            }),
        }
    }

    /// Copies as much of `data` as fits into the transmit buffer (both parts of the ring);
    /// returns how many bytes were taken, possibly 0.
    pub fn send_slice(&mut self, id: ConnId, data: &[u8]) -> Result<usize, ConnError> {
        let handle = self.slot_of(id)?.handle;
        let socket = self.sockets.get_mut::<tcp::Socket>(handle);
        match socket.send_slice(data) {
            Ok(written) => {
                if written > 0 {
                    self.slots[id.slot()].last_activity = self.now;
                    self.ready.touch(id.slot());
                }
                Ok(written)
            }
            Err(SendError::InvalidState) => Err(ConnError::NotWritable {
                id,
                state: socket.state(),
            }),
        }
    }

    /// True if received bytes are waiting. False for a stale id.
    pub fn can_recv(&self, id: ConnId) -> bool {
        self.socket_of(id).is_some_and(|socket| socket.can_recv())
    }

    /// True while more data may come: the peer has not closed its side, or bytes are still
    /// buffered. False for a stale id.
    pub fn may_recv(&self, id: ConnId) -> bool {
        self.socket_of(id).is_some_and(|socket| socket.may_recv())
    }

    /// True while we may send (our side not closed, no reset). False for a stale id.
    pub fn may_send(&self, id: ConnId) -> bool {
        self.socket_of(id).is_some_and(|socket| socket.may_send())
    }

    /// Free bytes in the transmit buffer; 0 if the connection cannot send or the id is stale.
    pub fn send_capacity_free(&self, id: ConnId) -> usize {
        match self.socket_of(id) {
            Some(socket) if socket.may_send() => socket.send_capacity() - socket.send_queue(),
            _ => 0,
        }
    }

    /// Bytes queued for sending and not yet acknowledged by the peer.
    pub fn send_queue(&self, id: ConnId) -> usize {
        self.socket_of(id).map_or(0, |socket| socket.send_queue())
    }

    /// The TCP state of the connection, None for a stale id.
    pub fn state(&self, id: ConnId) -> Option<State> {
        self.socket_of(id).map(|socket| socket.state())
    }

    /// The peer's address and port, None for a stale id.
    pub fn remote_endpoint(&self, id: ConnId) -> Option<IpEndpoint> {
        self.socket_of(id)
            .and_then(|socket| socket.remote_endpoint())
    }

    /// Closes our side: a FIN goes out after the queued data (RFC 9293 §3.10.4). `Closed` is
    /// reported once the peer's FIN has arrived too (or the idle timeout ends it). A stale id
    /// is ignored.
    pub fn close(&mut self, id: ConnId) {
        if let Ok(slot) = self.slot_of(id) {
            self.sockets.get_mut::<tcp::Socket>(slot.handle).close();
            self.ready.touch(id.slot());
        }
    }

    /// Resets the connection: one RST, queued data dropped (RFC 9293 §3.10.4 ABORT).
    /// `Closed` is reported by the next `service`. A stale id is ignored.
    pub fn abort(&mut self, id: ConnId) {
        if let Ok(slot) = self.slot_of(id) {
            let socket = self.sockets.get_mut::<tcp::Socket>(slot.handle);
            if socket.state() != State::Closed {
                socket.abort();
                self.counters.aborted += 1;
                self.ready.touch(id.slot());
            }
        }
    }

    /// Open connections (reported `Opened`, not yet `Closed`).
    pub fn connections(&self) -> usize {
        self.connections_open
    }

    /// Connections in the handshake (SYN-RECEIVED), counted against `connections_max`.
    pub fn handshakes_pending(&self) -> usize {
        self.connections_counted - self.connections_open
    }

    /// Sockets in LISTEN.
    pub fn listening(&self) -> usize {
        self.listening
    }

    /// Sockets in the table (`connections_max + listen_sockets`).
    pub fn sockets_total(&self) -> usize {
        self.slots.len()
    }

    pub fn counters(&self) -> &StackCounters {
        &self.counters
    }

    /// The neighbours taught to smoltcp and not evicted (at most `tcp.neighbours_max`), as
    /// (IPv4 address, MAC), in no particular order.
    pub fn neighbours(&self) -> impl Iterator<Item = (Ipv4Addr, [u8; 6])> + '_ {
        self.neighbours.iter()
    }

    /// The smoltcp interface, for inspection (neighbour cache, addresses).
    pub fn interface(&self) -> &Interface {
        &self.iface
    }
}

/// Touches the slot whose socket smoltcp gave the last TCP segment to, if any.
fn touch_ingress_socket(iface: &mut Interface, slots: &[Slot], ready: &mut Ready) {
    if let Some(handle) = iface.take_tcp_ingress_socket() {
        // Slots hold their sockets in handle order (`Stack::new`).
        let index = slots
            .binary_search_by_key(&handle, |slot| slot.handle)
            .expect("every socket of the set belongs to a slot");
        ready.ingress(index);
    }
}

/// True if a socket holds the connection with `remote` in ESTABLISHED or a later state (so
/// also just after the handshake's final ACK): its segments may teach `remote`'s MAC. A scan
/// of the table, done only for a segment whose neighbour it could change.
fn live_four_tuple(slots: &[Slot], sockets: &SocketSet<'static>, remote: IpEndpoint) -> bool {
    slots.iter().any(|slot| {
        slot.role != Role::Free && {
            let socket = sockets.get::<tcp::Socket>(slot.handle);
            !matches!(
                socket.state(),
                State::Closed | State::Listen | State::SynSent | State::SynReceived
            ) && socket.remote_endpoint() == Some(remote)
        }
    })
}

/// Transmits one frame the stack made itself; counts it in `unsent` if the device has no
/// transmit buffer free.
fn send_frame(device: &mut impl Device, now: Instant, frame: &[u8], unsent: &mut u64) {
    match device.transmit(now) {
        Some(token) => token.consume(frame.len(), |buffer| buffer.copy_from_slice(frame)),
        None => *unsent += 1,
    }
}

/// Opens the connection whose final ACK (`frame`) carried a valid cookie: a listening socket
/// takes the handshake the cookie describes (the patched smoltcp's
/// `Socket::accept_syn_cookie`), then smoltcp gets the ACK itself, which brings the client's
/// window and any data (RFC 4987 §3.6). Returns the slot that took the connection, the peer
/// and its MAC. With no socket listening (at capacity) smoltcp answers the ACK with an RST,
/// as it answers a SYN then.
#[allow(clippy::too_many_arguments)]
fn open_from_cookie(
    iface: &mut Interface,
    sockets: &mut SocketSet<'static>,
    device: &mut impl Device,
    now: Instant,
    frame: &[u8],
    syn: CookieSyn,
    window: u16,
    slots: &[Slot],
) -> Option<(usize, IpEndpoint, [u8; 6])> {
    use smoltcp::wire::{EthernetFrame, Ipv4Packet, TcpPacket};
    // The gate checked the frame (lengths, checksums) before keeping it.
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let handshake = tcp::SynCookieHandshake {
        local: IpEndpoint::new(IpAddress::Ipv4(ip.dst_addr()), tcp.dst_port()),
        remote: IpEndpoint::new(IpAddress::Ipv4(ip.src_addr()), tcp.src_port()),
        local_isn: tcp.ack_number() - 1,
        remote_isn: tcp.seq_number() - 1,
        remote_mss: Some(syn.mss),
        remote_win_scale: syn.window_scale,
        local_window: window,
    };
    let remote_mac = ethernet.src_addr().0;
    // A socket smoltcp already holds for this peer keeps it: a handshake it took before
    // cookies engaged (then a retransmitted SYN was answered with a cookie), or TIME-WAIT.
    // The ACK goes to that socket, which resets it if it acknowledges the other SYN-ACK. A
    // listening slot may also have taken a SYN in this very poll (its role changes at the
    // next service), hence the look at every socket. One walk, once per cookie opened.
    let held = slots.iter().any(|slot| {
        slot.role != Role::Free
            && sockets.get::<tcp::Socket>(slot.handle).remote_endpoint() == Some(handshake.remote)
    });
    let mut taken = None;
    if !held {
        for (index, slot) in slots.iter().enumerate() {
            if slot.role == Role::Listening
                && sockets
                    .get_mut::<tcp::Socket>(slot.handle)
                    .accept_syn_cookie(iface.context(), &handshake)
                    .is_ok()
            {
                taken = Some(index);
                break;
            }
        }
    }
    iface.poll_ingress_single(
        now,
        &mut OneFrameDevice {
            inner: &mut *device,
            frame: Some(frame),
        },
        sockets,
    );
    taken.map(|index| (index, handshake.remote, remote_mac))
}
