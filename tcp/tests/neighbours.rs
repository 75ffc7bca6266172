//! Neighbour learning: a stack whose clients' ARP frames go to another NIC queue still answers
//! them at once, because it learns each client's MAC (or the gateway's) from the IPv4 frames
//! of the client's own flows. See docs/tcp.md, "Neighbours across queues".
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
    EthernetRepr, HardwareAddress, IpAddress, IpCidr, IpProtocol, Ipv4Packet, Ipv4Repr, TcpControl,
    TcpPacket, TcpRepr, TcpSeqNumber,
};
use tcp::sim::{Side, SimConfig, SimLink};
use tcp::{ConnId, Event, Stack, StackConfig, NEIGHBOURS_MAX, NEIGHBOUR_REFRESH};

const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const GATEWAY_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xfe];
const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 254);
/// An off-link client (TEST-NET-1, RFC 5737) and its own router.
const REMOTE_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 7);
const REMOTE_ROUTER_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const PORT: u16 = 8443;

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
    let tcp = TcpRepr {
        src_port: port,
        dst_port: PORT,
        control: TcpControl::Syn,
        seq_number: TcpSeqNumber(1000),
        ack_number: None,
        window_len: 4096,
        window_scale: None,
        max_seg_size: Some(1460),
        sack_permitted: false,
        sack_ranges: [None; 3],
        timestamp: None,
        payload: &[],
    };
    let ip_repr = Ipv4Repr {
        src_addr: ip,
        dst_addr: SERVER_IP,
        next_header: IpProtocol::Tcp,
        payload_len: tcp.buffer_len(),
        hop_limit: 64,
    };
    let checksums = ChecksumCapabilities::default();
    let mut frame = vec![0; 14 + ip_repr.buffer_len() + tcp.buffer_len()];
    let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
    EthernetRepr {
        src_addr: EthernetAddress(mac),
        dst_addr: EthernetAddress(SERVER_MAC),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut ethernet);
    let mut ip_packet = Ipv4Packet::new_unchecked(ethernet.payload_mut());
    ip_repr.emit(&mut ip_packet, &checksums);
    tcp.emit(
        &mut TcpPacket::new_unchecked(ip_packet.payload_mut()),
        &IpAddress::Ipv4(ip),
        &IpAddress::Ipv4(SERVER_IP),
        &checksums,
    );
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
        self.server.poll(self.now, &mut self.link.port(Side::A));
        let opened = &mut self.opened;
        self.server.service(self.now, |event| {
            if let Event::Opened(id) = event {
                opened.push(id);
            }
        });
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
    handshake
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
    assert_eq!(NEIGHBOURS_MAX, 16);
    let mut link = SimLink::new(SimConfig::default());
    let mut now = Instant::from_millis(1_000);
    let mut server = Stack::new(&server_config(None), &mut link.port(Side::A), now).unwrap();
    let host = |i: u8| (Ipv4Addr::new(10, 99, 0, 100 + i), [0x02, 0, 0, 0, 1, i]);

    // 17 hosts, none of which ever ARPs: each SYN-ACK goes straight to its host's MAC.
    for i in 0..=NEIGHBOURS_MAX as u8 {
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
    assert_eq!(known.len(), NEIGHBOURS_MAX, "17 neighbours, 16 entries");
    assert!(
        !known.contains(&host(0)),
        "the first one taught was forgotten"
    );
    assert!((1..=NEIGHBOURS_MAX as u8).all(|i| known.contains(&host(i))));

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
    assert_eq!(server.neighbours().count(), NEIGHBOURS_MAX);

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
