//! Neighbour learning: a stack whose clients' ARP frames go to another NIC queue still answers
//! them at once, because it learns each client's MAC (or the gateway's) from the IPv4 frames
//! of the client's own flows; and that what may be learned is limited, so an on-link attacker
//! can neither rebind the gateway nor evict a live connection's neighbour. See docs/tcp.md,
//! "Neighbours".
//!
//! The appliance's [`Stack`] is on side A of a [`SimLink`]; on side B a smoltcp client
//! `Interface` or hand-made frames. Every frame crossing the link is relayed by the test, which
//! drops the client's ARP frames toward the stack (they reach "another queue") and records what
//! the stack sends.

use std::net::Ipv4Addr;

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::socket::tcp as stcp;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr, HardwareAddress, Icmpv4Packet, Icmpv4Repr, IpAddress, IpCidr, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket,
};
use tcp::frames::{Segment, CLIENT_IP, CLIENT_MAC, PORT, SERVER_IP, SERVER_MAC};
use tcp::sim::{Side, SimConfig, SimLink};
use tcp::{ConnId, Event, Stack, StackConfig, SynCookieMode, NEIGHBOUR_LIFETIME, NEIGHBOUR_REFRESH};

const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 254);
/// An off-link client (TEST-NET-1, RFC 5737) and its own router.
const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const REMOTE_ROUTER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// An on-link attacker.
const ATTACKER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x66];

fn server_config(gateway: Option<Ipv4Addr>) -> StackConfig {
    StackConfig {
        mac: SERVER_MAC,
        ipv4: SERVER_IP,
        prefix_len: 24,
        gateway,
        port: PORT,
        rx_buffer_bytes: 4096,
        tx_buffer_bytes: 4096,
        connections_max: 32,
        listen_sockets: 32,
        random_seed: 0x5eed,
        ..StackConfig::default()
    }
}

fn ethertype(frame: &[u8]) -> Option<EthernetProtocol> {
    EthernetFrame::new_checked(frame)
        .ok()
        .map(|ethernet| ethernet.ethertype())
}

fn arp_of(frame: &[u8]) -> Option<ArpRepr> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    if ethernet.ethertype() != EthernetProtocol::Arp {
        return None;
    }
    ArpRepr::parse(&ArpPacket::new_checked(ethernet.payload()).ok()?).ok()
}

/// An ARP reply "`sender_ip` is-at `sender_mac`" to `(target_mac, target_ip)`.
fn arp_reply(
    sender_mac: [u8; 6],
    sender_ip: Ipv4Addr,
    target_mac: [u8; 6],
    target_ip: Ipv4Addr,
) -> Vec<u8> {
    let mut frame = vec![0; 42];
    let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: EthernetAddress(sender_mac),
        dst_addr: EthernetAddress(target_mac),
        ethertype: EthernetProtocol::Arp,
    }
    .emit(&mut ethernet);
    ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(sender_mac),
        source_protocol_addr: sender_ip,
        target_hardware_addr: EthernetAddress(target_mac),
        target_protocol_addr: target_ip,
    }
    .emit(&mut ArpPacket::new_unchecked(ethernet.payload_mut()));
    frame
}

/// A TCP SYN to the service from `(mac, ip, port)`, checksums filled in.
fn syn_frame(mac: [u8; 6], ip: Ipv4Addr, port: u16) -> Vec<u8> {
    Segment {
        mac,
        ..Segment::syn(ip, port, 1000)
    }
    .frame()
}

/// A stray segment to the service from `(mac, ip, port)`: an ACK of nothing the stack sent,
/// on no connection, checksums filled in.
fn stray_ack_frame(mac: [u8; 6], ip: Ipv4Addr, port: u16) -> Vec<u8> {
    Segment {
        mac,
        control: TcpControl::None,
        ack: Some(1),
        mss: None,
        window_scale: None,
        ..Segment::syn(ip, port, 1000)
    }
    .frame()
}

/// An ARP request from `(mac, ip)` for our address, broadcast.
fn arp_request(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let mut frame = arp_reply(mac, ip, [0xff; 6], SERVER_IP);
    let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
    let mut arp = ArpPacket::new_unchecked(ethernet.payload_mut());
    arp.set_operation(ArpOperation::Request);
    arp.set_target_hardware_addr(&[0; 6]);
    frame
}

/// An ICMP echo request to us from `(mac, ip)`.
fn echo_request(mac: [u8; 6], ip: Ipv4Addr) -> Vec<u8> {
    let icmp = Icmpv4Repr::EchoRequest {
        ident: 7,
        seq_no: 1,
        data: b"ping",
    };
    let ip_repr = Ipv4Repr {
        src_addr: ip,
        dst_addr: SERVER_IP,
        next_header: IpProtocol::Icmp,
        payload_len: icmp.buffer_len(),
        hop_limit: 64,
    };
    let checksums = ChecksumCapabilities::default();
    let mut frame = vec![0; 14 + ip_repr.buffer_len() + icmp.buffer_len()];
    let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: EthernetAddress(mac),
        dst_addr: EthernetAddress(SERVER_MAC),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut ethernet);
    let mut ip_packet = Ipv4Packet::new_unchecked(ethernet.payload_mut());
    ip_repr.emit(&mut ip_packet, &checksums);
    icmp.emit(&mut Icmpv4Packet::new_unchecked(ip_packet.payload_mut()), &checksums);
    frame
}

/// (Ethernet destination, IPv4 destination, TCP destination port) of a SYN-ACK, or None.
fn syn_ack_of(frame: &[u8]) -> Option<([u8; 6], Ipv4Addr, u16)> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    (tcp.syn() && tcp.ack()).then(|| (ethernet.dst_addr().0, ip.dst_addr(), tcp.dst_port()))
}

/// (Ethernet destination, IPv4 destination) of an IPv4 frame, or None.
fn ipv4_dst_of(frame: &[u8]) -> Option<([u8; 6], Ipv4Addr)> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
    Some((ethernet.dst_addr().0, ip.dst_addr()))
}

/// The stack and one smoltcp client, with the test relaying every frame.
struct World {
    link: SimLink,
    server: Stack,
    client: Interface,
    client_sockets: SocketSet<'static>,
    now: Instant,
    opened: Vec<ConnId>,
    /// The client's ARP frames that the relay kept from the stack.
    arp_dropped: usize,
    /// Frames the relay let through to the stack.
    server_relayed: u64,
    /// Every frame the stack sent, with the time it was relayed.
    server_sent: Vec<(Instant, Vec<u8>)>,
}

impl World {
    /// `client_mac`/`client_ip` and the client's own route; the client is taught the next hop
    /// toward the stack by an injected ARP reply, since its ARP requests never get through.
    fn new(
        config: &StackConfig,
        client_mac: [u8; 6],
        client_cidr: IpCidr,
        client_router: Option<Ipv4Addr>,
    ) -> World {
        let mut link = SimLink::new(SimConfig::default());
        let now = Instant::from_millis(1_000);
        let server = Stack::new(config, &mut link.port(Side::A), now).expect("valid config");
        let mut client_config = Config::new(HardwareAddress::Ethernet(EthernetAddress(client_mac)));
        client_config.random_seed = 0xc11e;
        let mut client = Interface::new(client_config, &mut link.port(Side::B), now);
        client.update_ip_addrs(|addrs| addrs.push(client_cidr).unwrap());
        let IpAddress::Ipv4(client_ip) = client_cidr.address();
        let next_hop = match client_router {
            Some(router) => {
                client.routes_mut().add_default_ipv4_route(router).unwrap();
                router
            }
            None => SERVER_IP,
        };
        link.inject(
            Side::B,
            now,
            &arp_reply(SERVER_MAC, next_hop, client_mac, client_ip),
        );
        let mut client_sockets = SocketSet::new(Vec::new());
        client.poll(now, &mut link.port(Side::B), &mut client_sockets);
        assert_eq!(link.in_flight(), 0, "the client took the ARP reply");
        World {
            link,
            server,
            client,
            client_sockets,
            now,
            opened: Vec::new(),
            arp_dropped: 0,
            server_relayed: 0,
            server_sent: Vec::new(),
        }
    }

    fn connect(&mut self, local_port: u16) -> SocketHandle {
        let mut socket = stcp::Socket::new(
            stcp::SocketBuffer::new(vec![0; 4096]),
            stcp::SocketBuffer::new(vec![0; 4096]),
        );
        socket
            .connect(
                self.client.context(),
                (IpAddress::Ipv4(SERVER_IP), PORT),
                local_port,
            )
            .unwrap();
        self.client_sockets.add(socket)
    }

    /// One turn: the client's frames reach the stack, except its ARP frames (they go to
    /// "another queue"); the stack polls; its frames are recorded and reach the client.
    /// The link has no latency: each turn is 100 µs of simulated time.
    fn step(&mut self) {
        let to_server: Vec<_> = std::iter::from_fn(|| self.link.take(Side::A, self.now)).collect();
        for frame in to_server {
            if ethertype(&frame) == Some(EthernetProtocol::Arp) {
                self.arp_dropped += 1;
            } else {
                assert!(self.link.inject(Side::A, self.now, &frame));
                self.server_relayed += 1;
            }
        }
        self.server_turn();
    }

    /// The stack polls and services; its frames are recorded and reach the client.
    fn server_turn(&mut self) {
        self.server.poll(self.now, &mut self.link.port(Side::A));
        let opened = &mut self.opened;
        self.server.service(self.now, |event| {
            if let Event::Opened(id) = event {
                opened.push(id);
            }
        });
        let missed = self.server.readiness_violations();
        assert!(missed.is_empty(), "slots with work the readiness sets would not visit: {missed:?}");
        let to_client: Vec<_> = std::iter::from_fn(|| self.link.take(Side::B, self.now)).collect();
        for frame in to_client {
            assert!(self.link.inject(Side::B, self.now, &frame));
            self.server_sent.push((self.now, frame));
        }
        self.client.poll(
            self.now,
            &mut self.link.port(Side::B),
            &mut self.client_sockets,
        );
    }

    /// Hand-made frames reach the stack directly (ARP included), `batch` per turn.
    fn hit(&mut self, frames: &[Vec<u8>], batch: usize) {
        for chunk in frames.chunks(batch) {
            for frame in chunk {
                assert!(self.link.inject(Side::A, self.now, frame));
            }
            self.server_turn();
            self.client.poll(
                self.now,
                &mut self.link.port(Side::B),
                &mut self.client_sockets,
            );
            self.now += Duration::from_micros(100);
        }
    }

    /// Echoes what each open connection received.
    fn echo(&mut self) {
        for &id in &self.opened {
            let mut buffer = [0; 512];
            while self.server.can_recv(id) {
                let n = self
                    .server
                    .recv(id, |bytes| {
                        let n = bytes.len().min(buffer.len());
                        buffer[..n].copy_from_slice(&bytes[..n]);
                        (n, n)
                    })
                    .unwrap();
                assert_eq!(self.server.send_slice(id, &buffer[..n]).unwrap(), n);
            }
        }
    }

    /// Steps in 100 µs increments until `done` or `limit` of simulated time; returns the time
    /// taken, None on timeout.
    fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&mut World) -> bool,
    ) -> Option<Duration> {
        let start = self.now;
        while self.now < start + limit {
            self.step();
            self.echo();
            if done(self) {
                return Some(self.now - start);
            }
            self.now += Duration::from_micros(100);
        }
        None
    }

    /// The ARP requests the stack sent.
    fn server_arp_requests(&self) -> Vec<ArpRepr> {
        self.server_sent
            .iter()
            .filter_map(|(_, frame)| arp_of(frame))
            .filter(|arp| {
                matches!(
                    arp,
                    ArpRepr::EthernetIpv4 {
                        operation: ArpOperation::Request,
                        ..
                    }
                )
            })
            .collect()
    }
}

/// Connects, then sends `message` and waits for its echo. Returns the time the handshake took.
fn connect_and_echo(world: &mut World, message: &[u8]) -> Duration {
    connect_and_echo_on(world, message).0
}

/// As `connect_and_echo`, and the client's socket.
fn connect_and_echo_on(world: &mut World, message: &[u8]) -> (Duration, SocketHandle) {
    let handle = world.connect(40_000);
    let handshake = world
        .run_until(Duration::from_secs(5), |w| {
            !w.opened.is_empty()
                && w.client_sockets.get::<stcp::Socket>(handle).state() == stcp::State::Established
        })
        .unwrap_or_else(|| {
            panic!(
                "no handshake; counters {:?}, client {:?}, arp dropped {}, stack sent {:?}",
                world.server.counters(),
                world.client_sockets.get::<stcp::Socket>(handle).state(),
                world.arp_dropped,
                world.server_sent.iter().take(6).collect::<Vec<_>>()
            )
        });
    let sent = world
        .client_sockets
        .get_mut::<stcp::Socket>(handle)
        .send_slice(message)
        .unwrap();
    assert_eq!(sent, message.len());
    let mut echoed = Vec::new();
    world
        .run_until(Duration::from_secs(5), |w| {
            let socket = w.client_sockets.get_mut::<stcp::Socket>(handle);
            while socket.can_recv() {
                socket
                    .recv(|bytes| {
                        echoed.extend_from_slice(bytes);
                        (bytes.len(), ())
                    })
                    .unwrap();
            }
            echoed.len() >= message.len()
        })
        .expect("the echo comes back");
    assert_eq!(echoed, message);
    (handshake, handle)
}

/// The client reads everything `handle` has received within `limit`, until it holds `len`
/// bytes; returns them and the time it took, None on timeout.
fn client_receives(
    world: &mut World,
    handle: SocketHandle,
    len: usize,
    limit: Duration,
) -> Option<(Vec<u8>, Duration)> {
    let mut received = Vec::new();
    let took = world.run_until(limit, |w| {
        let socket = w.client_sockets.get_mut::<stcp::Socket>(handle);
        while socket.can_recv() {
            socket
                .recv(|bytes| {
                    received.extend_from_slice(bytes);
                    (bytes.len(), ())
                })
                .unwrap();
        }
        received.len() >= len
    })?;
    Some((received, took))
}

#[test]
fn a_client_whose_arp_goes_elsewhere_is_answered_at_once() {
    let mut world = World::new(
        &server_config(None),
        CLIENT_MAC,
        IpCidr::new(IpAddress::Ipv4(CLIENT_IP), 24),
        None,
    );
    let handshake = connect_and_echo(&mut world, b"pantera neighbour learning");

    // One SYN, one SYN-ACK, one ACK: a few relay turns. Without learning the stack would
    // ARP, never hear back, and the client would retransmit its SYN after 1 s or more.
    assert!(
        handshake < Duration::from_millis(5),
        "handshake took {handshake}"
    );
    assert!(
        world.server_arp_requests().is_empty(),
        "the stack asked for the client: {:?}",
        world.server_arp_requests()
    );
    let syn_acks: Vec<_> = world
        .server_sent
        .iter()
        .filter_map(|(_, frame)| syn_ack_of(frame))
        .collect();
    assert_eq!(syn_acks, [(CLIENT_MAC, CLIENT_IP, 40_000)], "one SYN-ACK");
    assert_eq!(
        world.server.neighbours().collect::<Vec<_>>(),
        [(CLIENT_IP, CLIENT_MAC)]
    );
    // Taught once: the handshake and echo frames that followed found the entry fresh.
    assert_eq!(world.server.counters().neighbours_learned, 1);
    // The synthetic ARP reply is not a received frame: once the link is quiet, rx counts
    // exactly what the relay let in.
    world.run_until(Duration::from_millis(50), |w| w.link.in_flight() == 0);
    assert!(world.server_relayed >= 3);
    assert_eq!(world.server.counters().rx_frames, world.server_relayed);
}

#[test]
fn an_off_link_client_is_answered_through_the_gateway() {
    let mut world = World::new(
        &server_config(Some(GATEWAY_IP)),
        // The off-link client's frames reach us with the gateway's MAC as source: on this
        // link the client *is* the gateway's MAC.
        GATEWAY_MAC,
        IpCidr::new(IpAddress::Ipv4(REMOTE_IP), 24),
        Some(REMOTE_ROUTER_IP),
    );
    let handshake = connect_and_echo(&mut world, b"routed through the gateway");
    assert!(
        handshake < Duration::from_millis(5),
        "handshake took {handshake}"
    );
    assert!(world.server_arp_requests().is_empty());
    let syn_acks: Vec<_> = world
        .server_sent
        .iter()
        .filter_map(|(_, frame)| syn_ack_of(frame))
        .collect();
    assert_eq!(
        syn_acks,
        [(GATEWAY_MAC, REMOTE_IP, 40_000)],
        "the SYN-ACK goes to the gateway's MAC"
    );
    // The gateway was learned, not the off-link client.
    assert_eq!(
        world.server.neighbours().collect::<Vec<_>>(),
        [(GATEWAY_IP, GATEWAY_MAC)]
    );
    assert_eq!(world.server.counters().neighbours_learned, 1);
}

#[test]
fn an_off_link_source_without_a_gateway_teaches_nothing() {
    let mut link = SimLink::new(SimConfig::default());
    let now = Instant::from_millis(1_000);
    let mut server = Stack::new(&server_config(None), &mut link.port(Side::A), now).unwrap();
    link.inject(Side::A, now, &syn_frame(GATEWAY_MAC, REMOTE_IP, 40_000));
    server.poll(now, &mut link.port(Side::A));
    assert_eq!(server.counters().neighbours_learned, 0);
    assert_eq!(server.neighbours().count(), 0);
    // Nor does a frame for another MAC, or for another address.
    let mut other_mac = syn_frame(CLIENT_MAC, CLIENT_IP, 40_001);
    other_mac[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x77]);
    link.inject(Side::A, now, &other_mac);
    let mut other_ip = syn_frame(CLIENT_MAC, CLIENT_IP, 40_002);
    // IPv4 destination at 14 + 16; the header checksum is then wrong too, so change both
    // ways a frame can be "not for us" one at a time: here only the address.
    other_ip[14 + 19] = 3;
    let mut ip = Ipv4Packet::new_unchecked(&mut other_ip[14..]);
    ip.fill_checksum();
    link.inject(Side::A, now, &other_ip);
    // And a frame whose IPv4 header checksum fails teaches nothing either.
    let mut bad_checksum = syn_frame(CLIENT_MAC, CLIENT_IP, 40_003);
    bad_checksum[14 + 10] ^= 0xff;
    link.inject(Side::A, now, &bad_checksum);
    server.poll(now, &mut link.port(Side::A));
    assert_eq!(server.counters().rx_frames, 4);
    assert_eq!(server.counters().neighbours_learned, 0);
}

/// Feeds the stack one SYN and returns what it sent in reply.
fn syn_and_reply(
    link: &mut SimLink,
    server: &mut Stack,
    now: Instant,
    mac: [u8; 6],
    ip: Ipv4Addr,
    port: u16,
) -> Vec<Vec<u8>> {
    assert!(link.inject(Side::A, now, &syn_frame(mac, ip, port)));
    server.poll(now, &mut link.port(Side::A));
    std::iter::from_fn(|| link.take(Side::B, now)).collect()
}

#[test]
fn the_table_is_bounded_and_a_changed_mac_is_taught_again() {
    const TABLE: usize = 16;
    let mut link = SimLink::new(SimConfig::default());
    let mut now = Instant::from_millis(1_000);
    let config = StackConfig {
        neighbours_max: TABLE,
        ..server_config(None)
    };
    let mut server = Stack::new(&config, &mut link.port(Side::A), now).unwrap();
    let host = |i: u8| (Ipv4Addr::new(10, 99, 0, 100 + i), [0x02, 0, 0, 0, 1, i]);

    // 17 hosts, none of which ever ARPs: each SYN-ACK goes straight to its host's MAC.
    for i in 0..=TABLE as u8 {
        let (ip, mac) = host(i);
        now += Duration::from_millis(1);
        let sent = syn_and_reply(&mut link, &mut server, now, mac, ip, 40_000);
        assert_eq!(
            sent.iter().map(|f| syn_ack_of(f)).collect::<Vec<_>>(),
            [Some((mac, ip, 40_000))],
            "host {i}: one SYN-ACK to its MAC, no ARP request"
        );
    }
    assert_eq!(server.counters().neighbours_learned, 17);
    let known: Vec<_> = server.neighbours().collect();
    assert_eq!(known.len(), TABLE, "17 neighbours, 16 entries");
    assert!(
        !known.contains(&host(0)),
        "the first one taught was forgotten"
    );
    assert!((1..=TABLE as u8).all(|i| known.contains(&host(i))));

    // A second frame from a known host with the same MAC teaches nothing.
    let (ip, mac) = host(16);
    now += Duration::from_millis(1);
    let sent = syn_and_reply(&mut link, &mut server, now, mac, ip, 40_001);
    assert_eq!(syn_ack_of(&sent[0]), Some((mac, ip, 40_001)));
    assert_eq!(server.counters().neighbours_learned, 17);

    // The host moves to a new MAC (a NIC swap, a failover): taught again at once, and the
    // reply follows it.
    let moved = [0x02, 0, 0, 0, 2, 16];
    now += Duration::from_millis(1);
    let sent = syn_and_reply(&mut link, &mut server, now, moved, ip, 40_002);
    assert_eq!(
        sent.iter().map(|f| syn_ack_of(f)).collect::<Vec<_>>(),
        [Some((moved, ip, 40_002))]
    );
    assert_eq!(server.counters().neighbours_learned, 18);
    assert!(server.neighbours().any(|entry| entry == (ip, moved)));
    assert_eq!(server.neighbours().count(), TABLE);

    // After the refresh interval the same pair is taught again (smoltcp forgets after 60 s).
    now += NEIGHBOUR_REFRESH;
    syn_and_reply(&mut link, &mut server, now, moved, ip, 40_003);
    assert_eq!(server.counters().neighbours_learned, 19);
}

#[test]
fn without_a_free_transmit_buffer_nothing_is_taught_until_a_later_frame() {
    let mut link = SimLink::new(SimConfig {
        queue_frames_max: 1,
        ..SimConfig::default()
    });
    let now = Instant::from_millis(1_000);
    let mut server = Stack::new(&server_config(None), &mut link.port(Side::A), now).unwrap();
    // The queue toward the client is full: the device has no transmit token to lend.
    assert!(link.inject(Side::B, now, &[0; 60]));
    assert!(link.inject(Side::A, now, &syn_frame(CLIENT_MAC, CLIENT_IP, 40_000)));
    server.poll(now, &mut link.port(Side::A));
    assert_eq!(server.counters().neighbours_learned, 0);
    assert_eq!(server.neighbours().count(), 0);

    // Room again; the client's retransmitted SYN teaches it and the SYN-ACK goes out.
    assert_eq!(link.take(Side::B, now), Some(vec![0; 60]));
    let later = now + Duration::from_secs(1);
    let sent = syn_and_reply(&mut link, &mut server, later, CLIENT_MAC, CLIENT_IP, 40_000);
    assert_eq!(server.counters().neighbours_learned, 1);
    assert!(
        sent.iter()
            .any(|f| syn_ack_of(f) == Some((CLIENT_MAC, CLIENT_IP, 40_000))),
        "{} frames, none a SYN-ACK to the client",
        sent.len()
    );
}

/// The attacks of issue 8 item 5 first: an on-link attacker must not redirect routed replies
/// by showing the gateway's address with its own MAC, whatever it sends.
#[test]
fn a_routed_frame_from_another_mac_does_not_rebind_the_gateway() {
    let mut world = World::new(
        &server_config(Some(GATEWAY_IP)),
        GATEWAY_MAC,
        IpCidr::new(IpAddress::Ipv4(REMOTE_IP), 24),
        Some(REMOTE_ROUTER_IP),
    );
    let (_, handle) = connect_and_echo_on(&mut world, b"before the attack");
    assert_eq!(
        world.server.neighbours().collect::<Vec<_>>(),
        [(GATEWAY_IP, GATEWAY_MAC)]
    );
    let sent_before = world.server_sent.len();

    let elsewhere = Ipv4Addr::new(198, 51, 100, 9);
    world.hit(
        &[
            // A SYN "routed" from anywhere: used to rebind the gateway to its MAC.
            syn_frame(ATTACKER_MAC, elsewhere, 5555),
            // A segment of the live connection's four-tuple, from the attacker's MAC.
            stray_ack_frame(ATTACKER_MAC, REMOTE_IP, 40_000),
            // ARP claiming the gateway's address: an unsolicited reply and a request.
            arp_reply(ATTACKER_MAC, GATEWAY_IP, SERVER_MAC, SERVER_IP),
            arp_request(ATTACKER_MAC, GATEWAY_IP),
            // And ICMP echo from afar.
            echo_request(ATTACKER_MAC, elsewhere),
        ],
        1,
    );
    assert_eq!(
        world.server.neighbours().collect::<Vec<_>>(),
        [(GATEWAY_IP, GATEWAY_MAC)],
        "the gateway kept its MAC; counters {:?}",
        world.server.counters()
    );
    assert!(world.server.counters().neighbour_rebinds_refused >= 4);

    // The live connection still answers through the real gateway, and so does the new SYN.
    let message = b"after the attack";
    let socket = world.client_sockets.get_mut::<stcp::Socket>(handle);
    assert_eq!(socket.send_slice(message).unwrap(), message.len());
    let (echoed, _) = client_receives(&mut world, handle, message.len(), Duration::from_secs(1))
        .expect("the echo comes back through the gateway");
    assert_eq!(echoed, message);
    let routed: Vec<_> = world.server_sent[sent_before..]
        .iter()
        .filter_map(|(_, frame)| ipv4_dst_of(frame))
        .collect();
    assert!(routed.iter().any(|&(_, ip)| ip == elsewhere), "the SYN was answered");
    assert!(
        routed.iter().all(|&(mac, _)| mac == GATEWAY_MAC),
        "every routed reply went to the gateway: {routed:?}"
    );
}

/// 100 spoofed on-link sources (SYNs, echo requests, ARP, stray segments) and spoofed claims
/// on the client's own address: the live connection's neighbour stays, and the stack sends to
/// it at once, without asking for it.
#[test]
fn a_flood_from_spoofed_on_link_sources_does_not_evict_a_live_connections_neighbour() {
    let config = StackConfig {
        connections_max: 256,
        listen_sockets: 128,
        syn_cookies: SynCookieMode::Off,
        ..server_config(None)
    };
    let mut world = World::new(
        &config,
        CLIENT_MAC,
        IpCidr::new(IpAddress::Ipv4(CLIENT_IP), 24),
        None,
    );
    let (_, handle) = connect_and_echo_on(&mut world, b"hello");
    let id = world.opened[0];
    let sent_before = world.server_sent.len();

    let mut flood = Vec::new();
    for i in 0..100u16 {
        let ip = Ipv4Addr::new(10, 99, 0, 20 + i as u8);
        let mac = [0x02, 0, 0, 0, 3, i as u8];
        flood.push(syn_frame(mac, ip, 1000 + i));
        flood.push(echo_request(mac, ip));
        flood.push(arp_request(mac, ip));
        flood.push(arp_reply(mac, ip, SERVER_MAC, SERVER_IP));
        flood.push(stray_ack_frame(mac, ip, 2000 + i));
    }
    // Claims on the client's own address from the attacker's MAC.
    flood.push(syn_frame(ATTACKER_MAC, CLIENT_IP, 41_000));
    flood.push(echo_request(ATTACKER_MAC, CLIENT_IP));
    flood.push(arp_request(ATTACKER_MAC, CLIENT_IP));
    flood.push(arp_reply(ATTACKER_MAC, CLIENT_IP, SERVER_MAC, SERVER_IP));
    world.hit(&flood, 16);
    assert!(
        world.server.neighbours().any(|entry| entry == (CLIENT_IP, CLIENT_MAC)),
        "the client's neighbour survived; counters {:?}",
        world.server.counters()
    );
    assert!(world.server.counters().neighbour_rebinds_refused >= 4);
    assert!(world.server.counters().neighbours_evicted > 0, "the flood did churn the rest");
    // The refused ARP request was still answered (our address is no secret), without
    // learning the requester.
    assert!(
        world.server_sent.iter().filter_map(|(_, frame)| arp_of(frame)).any(|arp| arp
            == ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Reply,
                source_hardware_addr: EthernetAddress(SERVER_MAC),
                source_protocol_addr: SERVER_IP,
                target_hardware_addr: EthernetAddress(ATTACKER_MAC),
                target_protocol_addr: CLIENT_IP,
            }),
        "the refused request got no answer"
    );

    // The stack speaks first: without the client's neighbour it would have to ARP, and the
    // client's ARP replies never reach this queue.
    let push = b"pushed by the stack";
    assert_eq!(world.server.send_slice(id, push).unwrap(), push.len());
    let (received, took) = client_receives(&mut world, handle, push.len(), Duration::from_secs(2))
        .unwrap_or_else(|| panic!("no data; counters {:?}", world.server.counters()));
    assert_eq!(received, push);
    assert!(took < Duration::from_millis(5), "took {took}");
    let to_client: Vec<_> = world.server_sent[sent_before..]
        .iter()
        .filter_map(|(_, frame)| ipv4_dst_of(frame))
        .filter(|&(_, ip)| ip == CLIENT_IP)
        .collect();
    assert!(
        to_client.iter().all(|&(mac, _)| mac == CLIENT_MAC),
        "nothing for the client went to another MAC: {to_client:?}"
    );
    assert!(
        !world.server_arp_requests().iter().any(|arp| matches!(
            arp,
            ArpRepr::EthernetIpv4 { target_protocol_addr, .. } if *target_protocol_addr == CLIENT_IP
        )),
        "the stack asked for the client"
    );
}

/// `tcp.gateway_mac`: taught at start, kept across minutes of silence, and never changed by
/// a frame or ARP with another MAC.
#[test]
fn a_static_gateway_mac_is_taught_at_start_and_never_changed() {
    let mut link = SimLink::new(SimConfig::default());
    let mut now = Instant::from_millis(1_000);
    let config = StackConfig {
        gateway_mac: Some(GATEWAY_MAC),
        ..server_config(Some(GATEWAY_IP))
    };
    let mut server = Stack::new(&config, &mut link.port(Side::A), now).unwrap();
    assert_eq!(server.neighbours().collect::<Vec<_>>(), [(GATEWAY_IP, GATEWAY_MAC)]);
    assert_eq!(server.counters().neighbours_learned, 1);

    // The first routed SYN arrives through another MAC (a second router, or an attacker):
    // the reply still goes to the configured gateway.
    let sent = syn_and_reply(&mut link, &mut server, now, ATTACKER_MAC, REMOTE_IP, 40_000);
    assert_eq!(
        sent.iter().map(|f| syn_ack_of(f)).collect::<Vec<_>>(),
        [Some((GATEWAY_MAC, REMOTE_IP, 40_000))]
    );
    assert!(link.inject(Side::A, now, &arp_reply(ATTACKER_MAC, GATEWAY_IP, SERVER_MAC, SERVER_IP)));
    server.poll(now, &mut link.port(Side::A));
    assert_eq!(server.counters().neighbour_rebinds_refused, 2);
    assert_eq!(server.neighbours().collect::<Vec<_>>(), [(GATEWAY_IP, GATEWAY_MAC)]);

    // Five quiet minutes (smoltcp forgets an entry after 60 s): still resolved, no ARP.
    let mut arp_requests = 0;
    for _ in 0..300 {
        now += Duration::from_secs(1);
        server.poll(now, &mut link.port(Side::A));
        server.service(now, |_| {});
        arp_requests += std::iter::from_fn(|| link.take(Side::B, now))
            .filter(|frame| ethertype(frame) == Some(EthernetProtocol::Arp))
            .count();
    }
    assert_eq!(arp_requests, 0);
    let sent = syn_and_reply(&mut link, &mut server, now, GATEWAY_MAC, REMOTE_IP, 40_001);
    assert_eq!(
        sent.iter().map(|f| syn_ack_of(f)).collect::<Vec<_>>(),
        [Some((GATEWAY_MAC, REMOTE_IP, 40_001))]
    );
}

/// A learned gateway survives a failover to a new MAC: refused while the old MAC is fresh,
/// learned once it has gone `NEIGHBOUR_LIFETIME` without a frame.
#[test]
fn a_learned_gateway_moves_only_after_its_mac_went_quiet() {
    let mut link = SimLink::new(SimConfig::default());
    let mut now = Instant::from_millis(1_000);
    let mut server = Stack::new(&server_config(Some(GATEWAY_IP)), &mut link.port(Side::A), now).unwrap();
    let moved = [0x02, 0, 0, 0, 0, 0xfd];
    let sent = syn_and_reply(&mut link, &mut server, now, GATEWAY_MAC, REMOTE_IP, 40_000);
    assert_eq!(syn_ack_of(&sent[0]), Some((GATEWAY_MAC, REMOTE_IP, 40_000)));

    now += Duration::from_secs(1);
    let sent = syn_and_reply(&mut link, &mut server, now, moved, REMOTE_IP, 40_001);
    assert!(
        sent.iter().any(|f| syn_ack_of(f) == Some((GATEWAY_MAC, REMOTE_IP, 40_001))),
        "not yet: {sent:?}"
    );
    assert_eq!(server.counters().neighbour_rebinds_refused, 1);

    now += NEIGHBOUR_LIFETIME;
    let sent = syn_and_reply(&mut link, &mut server, now, moved, REMOTE_IP, 40_002);
    assert!(
        sent.iter().any(|f| syn_ack_of(f) == Some((moved, REMOTE_IP, 40_002))),
        "the new MAC is learned: {sent:?}"
    );
    assert_eq!(server.neighbours().collect::<Vec<_>>(), [(GATEWAY_IP, moved)]);
}
