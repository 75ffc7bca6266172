//! SYN cookies and keyed ISNs (docs/tcp.md): the appliance's [`Stack`] on one end of a
//! [`SimLink`], hand-made frames on the other, so every sequence number is under the test's
//! control. Time is simulated.

use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpAddress, Ipv4Packet, TcpControl, TcpPacket, TcpRepr};
use tcp::sim::{Side, SimConfig, SimLink};
use tcp::{Event, Stack, StackConfig, SynCookieMode};

use tcp::frames::{Segment, CLIENT_IP, CLIENT_MAC, PORT, SERVER_IP, SERVER_MAC};

fn config(mode: SynCookieMode) -> StackConfig {
    StackConfig {
        mac: SERVER_MAC,
        ipv4: SERVER_IP,
        prefix_len: 16,
        port: PORT,
        random_seed: 0x5eed,
        secret: *b"sixteen byte key",
        syn_cookies: mode,
        rx_buffer_bytes: 4096,
        tx_buffer_bytes: 4096,
        ..StackConfig::default()
    }
}

/// A TCP segment the server sent, as (Ethernet destination, IPv4 destination, parsed TCP).
struct Sent {
    mac: [u8; 6],
    ip: Ipv4Addr,
    port: u16,
    control: TcpControl,
    seq: u32,
    ack: Option<u32>,
    mss: Option<u16>,
    window_scale: Option<u8>,
    sack_permitted: bool,
    payload_len: usize,
}

fn parse_sent(frame: &[u8]) -> Option<Sent> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
    assert!(ip.verify_checksum(), "our IPv4 checksum");
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    let repr = TcpRepr::parse(
        &tcp,
        &IpAddress::Ipv4(ip.src_addr()),
        &IpAddress::Ipv4(ip.dst_addr()),
        &ChecksumCapabilities::default(),
    )
    .expect("our TCP checksum");
    Some(Sent {
        mac: ethernet.dst_addr().0,
        ip: ip.dst_addr(),
        port: repr.dst_port,
        control: repr.control,
        seq: repr.seq_number.0 as u32,
        ack: repr.ack_number.map(|ack| ack.0 as u32),
        mss: repr.max_seg_size,
        window_scale: repr.window_scale,
        sack_permitted: repr.sack_permitted,
        payload_len: repr.payload.len(),
    })
}

struct Server {
    link: SimLink,
    stack: Stack,
    now: Instant,
    events: Vec<Event>,
}

impl Server {
    fn new(config: &StackConfig) -> Server {
        let mut link = SimLink::new(SimConfig {
            queue_frames_max: 1 << 20,
            ..SimConfig::default()
        });
        let now = Instant::from_secs(100_000);
        let stack = Stack::new(config, &mut link.port(Side::A), now).unwrap();
        Server {
            link,
            stack,
            now,
            events: Vec::new(),
        }
    }

    /// Delivers `frame`, runs the stack until it is quiet and returns what it sent.
    fn send(&mut self, frame: &[u8]) -> Vec<Sent> {
        self.link.inject(Side::A, self.now, frame);
        self.run()
    }

    fn run(&mut self) -> Vec<Sent> {
        for _ in 0..8 {
            self.stack.poll(self.now, &mut self.link.port(Side::A));
            let events = &mut self.events;
            self.stack.service(self.now, |event| events.push(event));
            let missed = self.stack.readiness_violations();
            assert!(missed.is_empty(), "slots with work the readiness sets would not visit: {missed:?}");
        }
        let mut sent = Vec::new();
        while let Some(frame) = self.link.take(Side::B, self.now) {
            sent.extend(parse_sent(&frame));
        }
        sent
    }

    fn received(&mut self, id: tcp::ConnId) -> Vec<u8> {
        let mut got = Vec::new();
        while self.stack.can_recv(id) {
            self.stack
                .recv(id, |bytes| {
                    got.extend_from_slice(bytes);
                    (bytes.len(), ())
                })
                .unwrap();
        }
        got
    }

    fn opened(&self) -> usize {
        self.events
            .iter()
            .filter(|event| matches!(event, Event::Opened(_)))
            .count()
    }
}

#[test]
fn with_cookies_a_syn_takes_no_socket_and_its_ack_opens_the_connection() {
    let mut server = Server::new(&config(SynCookieMode::Always));
    let listening = server.stack.listening();
    let sent = server.send(&Segment::syn(CLIENT_IP, 40_000, 5_000).frame());
    assert_eq!(sent.len(), 1);
    let syn_ack = &sent[0];
    assert_eq!(syn_ack.control, TcpControl::Syn);
    assert_eq!(syn_ack.ack, Some(5_001));
    assert_eq!((syn_ack.mac, syn_ack.ip, syn_ack.port), (CLIENT_MAC, CLIENT_IP, 40_000));
    assert_eq!(syn_ack.mss, Some(1460));
    assert_eq!(syn_ack.window_scale, Some(0), "our shift for a 4 KiB buffer, since the client offered scaling");
    assert!(!syn_ack.sack_permitted, "SACK does not survive a cookie");
    // No state: nothing listening was used, nothing is pending.
    assert_eq!(server.stack.listening(), listening);
    assert_eq!(server.stack.handshakes_pending(), 0);
    assert_eq!(server.stack.counters().syn_cookies_sent, 1);

    let cookie = syn_ack.seq;
    let ack = Segment {
        control: TcpControl::None,
        seq: 5_001,
        ack: Some(cookie.wrapping_add(1)),
        mss: None,
        window_scale: None,
        ..Segment::syn(CLIENT_IP, 40_000, 0)
    };
    assert!(server.send(&ack.frame()).is_empty(), "the final ACK gets no answer");
    assert_eq!(server.opened(), 1);
    assert_eq!(server.stack.connections(), 1);
    assert_eq!(server.stack.counters().syn_cookies_accepted, 1);
    let Event::Opened(id) = server.events[0] else { unreachable!() };

    // Data flows both ways on the cookie's sequence numbers.
    let data = Segment {
        payload: b"hello",
        ..ack
    };
    server.send(&data.frame());
    assert_eq!(server.received(id), b"hello");
    server.stack.send_slice(id, b"world").unwrap();
    let sent = server.run();
    let reply = sent.iter().find(|s| s.payload_len == 5).expect("the reply");
    assert_eq!(reply.seq, cookie.wrapping_add(1));
    // A retransmitted data segment (still carrying ack = cookie + 1) goes to the connection,
    // not to a second one.
    server.send(&data.frame());
    assert_eq!(server.opened(), 1);
    assert_eq!(server.stack.counters().syn_cookies_accepted, 1);
}

#[test]
fn when_the_final_ack_is_lost_the_first_data_segment_opens_the_connection() {
    let mut server = Server::new(&config(SynCookieMode::Always));
    let sent = server.send(&Segment::syn(CLIENT_IP, 40_001, 9).frame());
    let cookie = sent[0].seq;
    let data = Segment {
        control: TcpControl::Psh,
        seq: 10,
        ack: Some(cookie.wrapping_add(1)),
        mss: None,
        window_scale: None,
        payload: b"ClientHello",
        ..Segment::syn(CLIENT_IP, 40_001, 0)
    };
    server.send(&data.frame());
    assert_eq!(server.opened(), 1);
    let Event::Opened(id) = server.events[0] else { unreachable!() };
    assert_eq!(server.received(id), b"ClientHello");
}

#[test]
fn forged_and_stale_cookies_open_nothing() {
    let mut server = Server::new(&config(SynCookieMode::Always));
    let sent = server.send(&Segment::syn(CLIENT_IP, 40_002, 77).frame());
    let cookie = sent[0].seq;
    let ack = |port: u16, seq: u32, cookie: u32| Segment {
        control: TcpControl::None,
        seq,
        ack: Some(cookie.wrapping_add(1)),
        mss: None,
        window_scale: None,
        ..Segment::syn(CLIENT_IP, port, 0)
    };
    // Another port, another client ISN, a guessed cookie: smoltcp answers each with an RST
    // (no connection has that four-tuple).
    for forged in [ack(40_003, 78, cookie), ack(40_002, 79, cookie), ack(40_002, 78, cookie ^ 0x10)] {
        let sent = server.send(&forged.frame());
        assert!(sent.iter().all(|s| s.control == TcpControl::Rst), "only RSTs");
    }
    assert_eq!(server.opened(), 0);
    // The right ACK two slots later: expired.
    server.now += Duration::from_secs(2 * tcp::SLOT_SECS);
    let sent = server.send(&ack(40_002, 78, cookie).frame());
    assert!(sent.iter().all(|s| s.control == TcpControl::Rst));
    assert_eq!(server.opened(), 0);
    assert_eq!(server.stack.counters().syn_cookies_accepted, 0);
}

#[test]
fn a_spoofed_flood_engages_cookies_and_keeps_the_state_bounded() {
    let backlog = 16;
    let mut server = Server::new(&StackConfig {
        syn_backlog: backlog,
        ..config(SynCookieMode::Auto)
    });
    // 5,000 SYNs from 250 spoofed addresses of the lab subnet that never answer.
    for i in 0..5_000u32 {
        let ip = Ipv4Addr::new(10, 99, 1 + (i % 250 / 250) as u8, (i % 250) as u8 + 3);
        let syn = Segment {
            mac: [0x02, 0, 0, 0, 0xee, 0x01],
            ..Segment::syn(ip, 1_024 + (i / 250) as u16, i)
        };
        server.link.inject(Side::A, server.now, &syn.frame());
        if i % 64 == 63 {
            server.run();
        }
    }
    server.run();
    let counters = server.stack.counters().clone();
    assert!(server.stack.handshakes_pending() <= backlog + 64, "{}", server.stack.handshakes_pending());
    assert!(counters.syn_cookies_sent >= 5_000 - (backlog as u64 + 64) * 2, "{counters:?}");
    assert_eq!(counters.refused_listen_pool_empty + counters.refused_at_capacity, 0, "{counters:?}");

    // A real client during the flood completes its handshake through a cookie.
    let sent = server.send(&Segment::syn(CLIENT_IP, 41_000, 1).frame());
    let syn_ack = sent.iter().find(|s| s.ip == CLIENT_IP).expect("answered");
    let ack = Segment {
        control: TcpControl::None,
        seq: 2,
        ack: Some(syn_ack.seq.wrapping_add(1)),
        mss: None,
        window_scale: None,
        ..Segment::syn(CLIENT_IP, 41_000, 0)
    };
    server.send(&ack.frame());
    assert_eq!(server.opened(), 1);
    assert_eq!(server.stack.connections(), 1);
}

#[test]
fn without_pressure_auto_mode_lets_smoltcp_answer_with_keyed_isns() {
    let isn_of = |secret: [u8; 16], now_secs: u64, port: u16| {
        let mut server = Server::new(&StackConfig {
            secret,
            ..config(SynCookieMode::Auto)
        });
        server.now = Instant::from_secs(now_secs as i64);
        let sent = server.send(&Segment::syn(CLIENT_IP, port, 1).frame());
        assert_eq!(server.stack.counters().syn_cookies_sent, 0);
        assert_eq!(server.stack.handshakes_pending(), 1, "smoltcp took the SYN");
        assert!(sent[0].sack_permitted, "full options without cookies");
        sent[0].seq
    };
    let key_a = *b"sixteen byte key";
    let key_b = *b"another 16B key!";
    let a = isn_of(key_a, 100, 40_000);
    assert_eq!(a, isn_of(key_a, 100, 40_000), "a function of key, tuple and clock");
    assert_ne!(a, isn_of(key_b, 100, 40_000), "another key");
    assert_ne!(a, isn_of(key_a, 100, 40_001), "another port");
    // One second later the same tuple's ISN moved on by the 4 µs clock.
    assert_eq!(isn_of(key_a, 101, 40_000).wrapping_sub(a), 250_000);
    // The PRNG seed no longer decides it.
    let mut server = Server::new(&StackConfig {
        random_seed: 1,
        ..config(SynCookieMode::Off)
    });
    server.now = Instant::from_secs(100);
    let sent = server.send(&Segment::syn(CLIENT_IP, 40_000, 1).frame());
    assert_eq!(sent[0].seq, a);
}

#[test]
fn a_retransmitted_syn_smoltcp_holds_is_not_answered_with_a_cookie() {
    // Backlog 1: the first SYN goes to smoltcp, and from then on cookies are engaged.
    let mut server = Server::new(&StackConfig {
        syn_backlog: 1,
        ..config(SynCookieMode::Auto)
    });
    let syn = Segment::syn(CLIENT_IP, 42_000, 500).frame();
    let first = server.send(&syn);
    assert_eq!(server.stack.handshakes_pending(), 1);
    // The client retransmits its SYN: it goes to smoltcp's handshake, not to a cookie, so
    // the client never holds two SYN-ACKs with different ISNs.
    server.send(&syn);
    assert_eq!(server.stack.counters().syn_cookies_sent, 0);
    // Another client's SYN, meanwhile, is answered with a cookie.
    server.send(&Segment::syn(CLIENT_IP, 42_001, 9).frame());
    assert_eq!(server.stack.counters().syn_cookies_sent, 1);
    let ack = Segment {
        control: TcpControl::None,
        seq: 501,
        ack: Some(first[0].seq.wrapping_add(1)),
        mss: None,
        window_scale: None,
        ..Segment::syn(CLIENT_IP, 42_000, 0)
    };
    server.send(&ack.frame());
    assert_eq!(server.opened(), 1);
    assert_eq!(server.stack.connections(), 1);
}
