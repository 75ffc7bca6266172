//! The steering program run with BPF_PROG_TEST_RUN on crafted frames: one case per verdict,
//! each checking the XDP action and that exactly the expected counter moved. Needs root.
//!
//! A test run without a context runs on rx queue 0 of loopback, so `ctx->rx_queue_index` is
//! 0: the XSKMAP entry 0 decides between XDP_REDIRECT and the no-socket drop. To have a real
//! socket there, a private lab (veth pair in a fresh namespace) lends its queue 0.

#[allow(dead_code)]
#[path = "../../src/lab.rs"]
mod lab;

use std::net::Ipv4Addr;

use dataplane::{xdp_action, EdgeConfig, SteerCounter, SteerProgram, SynBucket, XskConfig, XskPort};
use etherparse::PacketBuilder;

const SERVICE: Ipv4Addr = Ipv4Addr::new(10, 99, 7, 2);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 99, 7, 1);
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 99, 7, 3);
const PORT: u16 = 8443;
const SERVICE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];

fn eth(ethertype: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    frame.extend_from_slice(&SERVICE_MAC);
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&ethertype.to_be_bytes());
    frame
}

/// RFC 826 Ethernet/IPv4 ARP packet.
fn arp(op: u16, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = eth(0x0806);
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4]);
    frame.extend_from_slice(&op.to_be_bytes());
    frame.extend_from_slice(&CLIENT_MAC);
    frame.extend_from_slice(&CLIENT.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&target.octets());
    frame
}

fn tcp(dst: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SERVICE_MAC)
        .ipv4(CLIENT.octets(), dst.octets(), 64)
        .tcp(40000, port, 1, 65535)
        .syn()
        .write(&mut frame, &[])
        .unwrap();
    frame
}

fn udp(dst: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SERVICE_MAC)
        .ipv4(CLIENT.octets(), dst.octets(), 64)
        .udp(40000, port)
        .write(&mut frame, b"hello")
        .unwrap();
    frame
}

fn ping(dst: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SERVICE_MAC)
        .ipv4(CLIENT.octets(), dst.octets(), 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut frame, b"ping")
        .unwrap();
    frame
}

fn vlan_tcp(dst: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SERVICE_MAC)
        .single_vlan(etherparse::VlanId::try_new(42).unwrap())
        .ipv4(CLIENT.octets(), dst.octets(), 64)
        .tcp(40000, port, 1, 65535)
        .syn()
        .write(&mut frame, &[])
        .unwrap();
    assert_eq!(&frame[12..14], &[0x81, 0x00], "802.1Q tag present");
    frame
}

/// Offset of the IPv4 header in an untagged frame.
const L3: usize = 14;

/// `frame` with `options` inserted after its IPv4 header and IHL and total length adjusted
/// (the program does not verify checksums; smoltcp does).
fn with_ip_options(frame: &[u8], options: &[u8]) -> Vec<u8> {
    assert_eq!(options.len() % 4, 0);
    let mut out = frame[..L3 + 20].to_vec();
    out.extend_from_slice(options);
    out.extend_from_slice(&frame[L3 + 20..]);
    out[L3] = 0x40 | (5 + options.len() / 4) as u8;
    let total = u16::from_be_bytes([out[L3 + 2], out[L3 + 3]]) + options.len() as u16;
    out[L3 + 2..L3 + 4].copy_from_slice(&total.to_be_bytes());
    out
}

fn set_frag(mut frame: Vec<u8>, flags_offset: u16) -> Vec<u8> {
    frame[L3 + 6..L3 + 8].copy_from_slice(&flags_offset.to_be_bytes());
    frame
}

fn set_protocol(mut frame: Vec<u8>, protocol: u8) -> Vec<u8> {
    frame[L3 + 9] = protocol;
    frame
}

fn set_ihl(mut frame: Vec<u8>, ihl: u8) -> Vec<u8> {
    frame[L3] = 0x40 | ihl;
    frame
}

fn set_icmp_type(mut frame: Vec<u8>, kind: u8) -> Vec<u8> {
    frame[L3 + 20] = kind;
    frame
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    action: u32,
    counter: SteerCounter,
}

fn case(name: &'static str, frame: Vec<u8>, action: u32, counter: SteerCounter) -> Case {
    Case { name, frame, action, counter }
}

/// Every verdict the program can give, with the action expected when a socket is bound to
/// queue 0 (`redirect`) — and the reason counter that must move.
fn cases(redirect: u32) -> Vec<Case> {
    use xdp_action::{DROP, PASS};
    use SteerCounter::*;
    let ipv6 = {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(CLIENT_MAC, SERVICE_MAC)
            .ipv6([0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 1)
            .udp(546, 547)
            .write(&mut frame, &[])
            .unwrap();
        frame
    };
    let nops = [1u8, 1, 1, 1, 1, 1, 1, 0];
    vec![
        case("ARP request for the service", arp(1, SERVICE), redirect, RedirectArpRequest),
        case("ARP reply to the service", arp(2, SERVICE), redirect, RedirectArpReply),
        case("ARP request for another address", arp(1, OTHER), PASS, PassOther),
        case("RARP-style op for the service", arp(3, SERVICE), DROP, DropArp),
        case("ICMP echo request to the service", ping(SERVICE), redirect, RedirectIcmp),
        case("ICMP echo reply to the service", set_icmp_type(ping(SERVICE), 0), DROP, DropIcmp),
        case("ICMP echo request to another address", ping(OTHER), PASS, PassOther),
        case("TCP to the service port", tcp(SERVICE, PORT), redirect, RedirectTcp),
        case("TCP to another port of the service", tcp(SERVICE, 22), DROP, DropPort),
        case("TCP to another address", tcp(OTHER, PORT), PASS, PassOther),
        case("UDP to the service", udp(SERVICE, PORT), DROP, DropUdp),
        case("UDP to another address", udp(OTHER, 53), PASS, PassOther),
        case("GRE to the service", set_protocol(tcp(SERVICE, PORT), 47), DROP, DropProto),
        case("IPv6", ipv6, PASS, PassOther),
        case("first fragment (MF) to the service", set_frag(tcp(SERVICE, PORT), 0x2000), DROP, DropFragment),
        case("later fragment to the service", set_frag(tcp(SERVICE, PORT), 0x0010), DROP, DropFragment),
        case("DF is not a fragment", set_frag(tcp(SERVICE, PORT), 0x4000), redirect, RedirectTcp),
        case("fragment to another address", set_frag(tcp(OTHER, PORT), 0x2000), PASS, PassOther),
        case("VLAN-tagged TCP to the service port", vlan_tcp(SERVICE, PORT), redirect, RedirectTcp),
        case("VLAN-tagged TCP to another port", vlan_tcp(SERVICE, 22), DROP, DropPort),
        case("IPv4 options, TCP to the service port", with_ip_options(&tcp(SERVICE, PORT), &nops), redirect, RedirectTcp),
        case("IPv4 options, TCP to another port", with_ip_options(&tcp(SERVICE, 22), &nops), DROP, DropPort),
        case("40 bytes of IPv4 options, service port", with_ip_options(&tcp(SERVICE, PORT), &[1; 40]), redirect, RedirectTcp),
        case("Ethernet header only (IPv4 type)", eth(0x0800), PASS, PassTruncated),
        case("IPv4 header cut before daddr", tcp(SERVICE, PORT)[..L3 + 16].to_vec(), PASS, PassTruncated),
        case("ARP cut before the target address", arp(1, SERVICE)[..38].to_vec(), PASS, PassTruncated),
        case("VLAN tag cut", vlan_tcp(SERVICE, PORT)[..16].to_vec(), PASS, PassTruncated),
        case("TCP header cut, to the service", tcp(SERVICE, PORT)[..L3 + 20 + 10].to_vec(), DROP, DropMalformed),
        case("ICMP header cut, to the service", ping(SERVICE)[..L3 + 20 + 4].to_vec(), DROP, DropMalformed),
        case("IHL 3, to the service", set_ihl(tcp(SERVICE, PORT), 3), DROP, DropMalformed),
        case("IHL 15 past the end, to the service", set_ihl(tcp(SERVICE, PORT)[..L3 + 40].to_vec(), 15), DROP, DropMalformed),
        case("unknown ethertype", eth(0x88b5), PASS, PassOther),
    ]
}

fn check(program: &SteerProgram, cases: &[Case]) {
    for case in cases {
        let before = program.counters();
        let action = program.test_run(&case.frame).unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let after = program.counters();
        assert_eq!(action, case.action, "{}: XDP action", case.name);
        for ((name, b), (_, a)) in before.iter().zip(after.iter()) {
            let expected = u64::from(*name == case.counter.name());
            assert_eq!(a - b, expected, "{}: counter {name}", case.name);
        }
    }
}

#[test]
fn verdicts_with_a_socket_on_the_queue() {
    let lab = lab::Lab::create(&lab::LabSpec::unique("steer", 1)).expect("lab");
    let port = XskPort::open(&lab.spec.host_if, 0, &small()).unwrap();
    let program = SteerProgram::load(SERVICE, PORT, &EdgeConfig::off()).unwrap();
    program.insert_socket(0, port.fd()).unwrap();
    check(&program, &cases(xdp_action::REDIRECT));
}

#[test]
fn service_traffic_without_a_socket_is_dropped_and_counted() {
    let program = SteerProgram::load(SERVICE, PORT, &EdgeConfig::off()).unwrap();
    let mut cases = cases(xdp_action::DROP);
    for case in &mut cases {
        if case.counter.verdict() == "redirect" {
            case.counter = SteerCounter::DropNoSocket;
        }
    }
    check(&program, &cases);
    assert_eq!(program.counter(SteerCounter::DropNoSocket).unwrap(), 8);
}

#[test]
fn an_unusable_service_address_is_refused() {
    assert!(SteerProgram::load(Ipv4Addr::UNSPECIFIED, PORT, &EdgeConfig::off()).is_err());
    assert!(SteerProgram::load(SERVICE, 0, &EdgeConfig::off()).is_err());
}

fn small() -> XskConfig {
    XskConfig {
        frame_count: 4096 + 1024 + 64,
        rx_ring: 1024,
        tx_ring: 1024,
        fill_ring: 4096,
        comp_ring: 1024,
        ..XskConfig::default()
    }
}

/// The verdict table of docs/dataplane.md written as plain Rust, as a reference for the
/// differential test below: (XDP action, counter) with no socket on the queue.
fn reference(frame: &[u8]) -> (u32, SteerCounter) {
    use xdp_action::{DROP, PASS};
    use SteerCounter::*;
    let be16 = |at: usize| u16::from_be_bytes([frame[at], frame[at + 1]]);
    let redirect = (DROP, DropNoSocket);
    if frame.len() < 14 {
        return (PASS, PassTruncated);
    }
    let (mut proto, mut l3) = (be16(12), 14);
    if proto == 0x8100 || proto == 0x88a8 {
        if frame.len() < 18 {
            return (PASS, PassTruncated);
        }
        proto = be16(16);
        l3 = 18;
    }
    let service = SERVICE.octets();
    match proto {
        0x0806 => {
            if frame.len() < l3 + 28 {
                return (PASS, PassTruncated);
            }
            let a = &frame[l3..];
            if be16(l3) != 1 || be16(l3 + 2) != 0x0800 || a[4] != 6 || a[5] != 4 || a[24..28] != service {
                return (PASS, PassOther);
            }
            match be16(l3 + 6) {
                1 | 2 => redirect,
                _ => (DROP, DropArp),
            }
        }
        0x0800 => {
            if frame.len() < l3 + 20 {
                return (PASS, PassTruncated);
            }
            let ip = &frame[l3..];
            if ip[0] >> 4 != 4 || ip[16..20] != service {
                return (PASS, PassOther);
            }
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            if ihl < 20 || frame.len() < l3 + ihl {
                return (DROP, DropMalformed);
            }
            if be16(l3 + 6) & 0x3fff != 0 {
                return (DROP, DropFragment);
            }
            let l4 = l3 + ihl;
            match ip[9] {
                6 if frame.len() < l4 + 20 => (DROP, DropMalformed),
                6 if be16(l4 + 2) != PORT => (DROP, DropPort),
                6 => redirect,
                1 if frame.len() < l4 + 8 => (DROP, DropMalformed),
                1 if frame[l4] != 8 || frame[l4 + 1] != 0 => (DROP, DropIcmp),
                1 => redirect,
                17 => (DROP, DropUdp),
                _ => (DROP, DropProto),
            }
        }
        _ => (PASS, PassOther),
    }
}

/// xorshift64*: a fixed-seed generator, so a failure reproduces exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn the_program_agrees_with_the_reference_on_mutated_frames() {
    let program = SteerProgram::load(SERVICE, PORT, &EdgeConfig::off()).unwrap();
    let seeds: Vec<Vec<u8>> = cases(xdp_action::DROP).into_iter().map(|c| c.frame).collect();
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let rounds = 3000;
    for round in 0..rounds {
        let mut frame = seeds[rng.below(seeds.len())].clone();
        // Flip a few bytes among the headers (the first 64), then maybe cut the frame.
        for _ in 0..1 + rng.below(3) {
            let at = rng.below(frame.len().min(64));
            frame[at] = match rng.below(4) {
                0 => 0,
                1 => 0xff,
                _ => rng.next() as u8,
            };
        }
        if rng.below(4) == 0 {
            frame.truncate(14 + rng.below(frame.len() - 13));
        }
        let expected = reference(&frame);
        let before = program.counter(expected.1).unwrap();
        let action = program.test_run(&frame).unwrap();
        let moved = program.counter(expected.1).unwrap() - before;
        assert_eq!(
            (action, moved),
            (expected.0, 1),
            "round {round}: frame {frame:02x?} expected {:?}",
            expected.1
        );
    }
    let total: u64 = program.counters().iter().map(|(_, v)| v).sum();
    assert_eq!(total, rounds, "one counter per frame");
    let reasons = program.counters().iter().filter(|(_, v)| *v > 0).count();
    assert!(reasons >= 10, "mutations should reach most verdicts: {:?}", program.counters());
}

// Edge defence (docs/dataplane.md §1, "Edge defence"). Without a socket on the queue, a frame
// the program would redirect is dropped and counted drop_no_socket: that is what "let through"
// looks like below.

/// A source outside the client's /24.
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 99, 8, 1);
/// A source in `host_allow` in the stealth cases.
const HOST_PEER: Ipv4Addr = Ipv4Addr::new(10, 99, 9, 5);

#[derive(Clone, Copy)]
enum Flags {
    Syn,
    SynAck,
    Ack,
}

fn segment(src: Ipv4Addr, dst: Ipv4Addr, port: u16, flags: Flags) -> Vec<u8> {
    let mut frame = Vec::new();
    let builder = PacketBuilder::ethernet2(CLIENT_MAC, SERVICE_MAC).ipv4(src.octets(), dst.octets(), 64).tcp(40000, port, 1, 65535);
    let builder = match flags {
        Flags::Syn => builder.syn(),
        Flags::SynAck => builder.syn().ack(1),
        Flags::Ack => builder.ack(1),
    };
    builder.write(&mut frame, &[]).unwrap();
    frame
}

fn ping_from(src: Ipv4Addr, dst: Ipv4Addr) -> Vec<u8> {
    let mut frame = Vec::new();
    PacketBuilder::ethernet2(CLIENT_MAC, SERVICE_MAC)
        .ipv4(src.octets(), dst.octets(), 64)
        .icmpv4_echo_request(7, 1)
        .write(&mut frame, b"ping")
        .unwrap();
    frame
}

fn udp_from(src: Ipv4Addr, dst: Ipv4Addr, port: u16) -> Vec<u8> {
    let mut frame = udp(dst, port);
    frame[L3 + 12..L3 + 16].copy_from_slice(&src.octets());
    frame
}

fn arp_from(op: u16, sender: Ipv4Addr, target: Ipv4Addr) -> Vec<u8> {
    let mut frame = arp(op, target);
    frame[28..32].copy_from_slice(&sender.octets());
    frame
}

fn edge(f: impl FnOnce(&mut EdgeConfig)) -> EdgeConfig {
    let mut edge = EdgeConfig::off();
    f(&mut edge);
    edge
}

fn prefixes(list: &[&str]) -> Vec<dataplane::Ipv4Cidr> {
    list.iter().map(|p| p.parse().unwrap()).collect()
}

#[test]
fn the_allowlist_drops_service_traffic_from_other_sources_only() {
    use xdp_action::{DROP, PASS};
    use SteerCounter::*;
    let program = SteerProgram::load(SERVICE, PORT, &edge(|e| e.allow_sources = prefixes(&["10.99.7.0/24"]))).unwrap();
    check(
        &program,
        &[
            case("SYN from an allowed source", segment(CLIENT, SERVICE, PORT, Flags::Syn), DROP, DropNoSocket),
            case("ping from an allowed source", ping_from(CLIENT, SERVICE), DROP, DropNoSocket),
            case("SYN from another source", segment(STRANGER, SERVICE, PORT, Flags::Syn), DROP, DropNotAllowed),
            case("ACK from another source", segment(STRANGER, SERVICE, PORT, Flags::Ack), DROP, DropNotAllowed),
            case("ping from another source", ping_from(STRANGER, SERVICE), DROP, DropNotAllowed),
            // ARP is answered whatever the sender: a router resolving the service for its
            // off-link clients need not be in the list (docs/dataplane.md).
            case("ARP request from another source", arp_from(1, STRANGER, SERVICE), DROP, DropNoSocket),
            case("another port, from another source", segment(STRANGER, SERVICE, 22, Flags::Syn), DROP, DropPort),
            case("another address, from another source", segment(STRANGER, OTHER, PORT, Flags::Syn), PASS, PassOther),
        ],
    );
    // Rewritten while loaded: the stale prefix goes, the new one applies.
    program.configure_edge(&edge(|e| e.allow_sources = prefixes(&["10.99.8.0/24"]))).unwrap();
    check(
        &program,
        &[
            case("SYN from the newly allowed source", segment(STRANGER, SERVICE, PORT, Flags::Syn), DROP, DropNoSocket),
            case("SYN from the source no longer allowed", segment(CLIENT, SERVICE, PORT, Flags::Syn), DROP, DropNotAllowed),
        ],
    );
    // An empty list allows everyone, as before edge defence.
    program.configure_edge(&EdgeConfig::off()).unwrap();
    check(&program, &[case("SYN, allowlist empty", segment(CLIENT, SERVICE, PORT, Flags::Syn), DROP, DropNoSocket)]);
}

#[test]
fn the_syn_bucket_drops_a_source_past_its_burst_and_only_its_syns() {
    use xdp_action::DROP;
    use SteerCounter::*;
    // One token a second: the few milliseconds this test takes refill almost nothing.
    let program = SteerProgram::load(SERVICE, PORT, &edge(|e| {
        e.syn_rate_per_source = 1;
        e.syn_burst_per_source = 5;
    }))
    .unwrap();
    let syn = |src| segment(src, SERVICE, PORT, Flags::Syn);
    let burst: Vec<Case> = (0..5).map(|_| case("SYN within the burst", syn(CLIENT), DROP, DropNoSocket)).collect();
    check(&program, &burst);
    check(
        &program,
        &[
            case("SYN past the burst", syn(CLIENT), DROP, DropSynRate),
            case("SYN past the burst, again", syn(CLIENT), DROP, DropSynRate),
            // Only a SYN without ACK opens a connection (RFC 9293 §3.5): the rest flows.
            case("ACK from the same source", segment(CLIENT, SERVICE, PORT, Flags::Ack), DROP, DropNoSocket),
            case("SYN-ACK from the same source", segment(CLIENT, SERVICE, PORT, Flags::SynAck), DROP, DropNoSocket),
            case("SYN from another source", syn(STRANGER), DROP, DropNoSocket),
            case("SYN to another port", segment(CLIENT, SERVICE, 22, Flags::Syn), DROP, DropPort),
        ],
    );
    let bucket = program.syn_bucket(CLIENT).unwrap().expect("a bucket for the client");
    assert!(bucket.credit_ns < 1_000_000_000, "{bucket:?}");
    assert_eq!(program.syn_bucket(STRANGER).unwrap().unwrap().credit_ns, 4_000_000_000, "a new source starts full, less one SYN");

    // The program's clock cannot be moved, so the bucket's timestamp is: refilled at boot,
    // the bucket is full again (capped at the burst, not grown by hours of credit).
    program.set_syn_bucket(CLIENT, SynBucket { refilled_ns: 0, credit_ns: 0 }).unwrap();
    check(&program, &[case("SYN after a long quiet", syn(CLIENT), DROP, DropNoSocket)]);
    assert_eq!(program.syn_bucket(CLIENT).unwrap().unwrap().credit_ns, 4_000_000_000);
    // A timestamp later than the program's clock (another CPU refilled a moment after this one
    // read the clock): no time elapsed, no wrap-around into a huge refill.
    let future = SynBucket { refilled_ns: u64::MAX, credit_ns: 999_999_999 };
    program.set_syn_bucket(CLIENT, future).unwrap();
    check(&program, &[case("SYN, a token less a nanosecond", syn(CLIENT), DROP, DropSynRate)]);
    assert_eq!(program.syn_bucket(CLIENT).unwrap().unwrap(), future);
    program.set_syn_bucket(CLIENT, SynBucket { refilled_ns: u64::MAX, credit_ns: 1_000_000_000 }).unwrap();
    check(&program, &[case("SYN, exactly one token", syn(CLIENT), DROP, DropNoSocket)]);
    assert_eq!(program.syn_bucket(CLIENT).unwrap().unwrap().credit_ns, 0);
    // Credit above the bucket (left by an earlier, larger burst) is capped to the new one.
    program.set_syn_bucket(CLIENT, SynBucket { refilled_ns: u64::MAX, credit_ns: 100_000_000_000 }).unwrap();
    check(&program, &[case("SYN, credit over the burst", syn(CLIENT), DROP, DropNoSocket)]);
    assert_eq!(program.syn_bucket(CLIENT).unwrap().unwrap().credit_ns, 4_000_000_000);

    // Off: any number of SYNs pass.
    program.configure_edge(&EdgeConfig::off()).unwrap();
    let many: Vec<Case> = (0..100).map(|_| case("SYN, limit off", syn(CLIENT), DROP, DropNoSocket)).collect();
    check(&program, &many);
}

#[test]
fn stealth_drops_what_is_not_the_services_unless_it_comes_from_host_allow() {
    use xdp_action::{DROP, PASS};
    use SteerCounter::*;
    let stealth = edge(|e| {
        e.stealth = true;
        e.host_allow = prefixes(&["10.99.9.0/24"]);
    });
    let program = SteerProgram::load(SERVICE, PORT, &stealth).unwrap();
    let ipv6 = cases(DROP).into_iter().find(|c| c.name == "IPv6").unwrap().frame;
    // (A frame shorter than an Ethernet header, also dropped in stealth mode, cannot be sent:
    // BPF_PROG_TEST_RUN refuses it with EINVAL.)
    let frames = || {
        vec![
            ("TCP to another address", segment(CLIENT, OTHER, PORT, Flags::Syn)),
            ("UDP to another address", udp_from(CLIENT, OTHER, 53)),
            ("IPv6", ipv6.clone()),
            ("unknown ethertype", eth(0x88b5)),
            ("ARP request for another address", arp_from(1, CLIENT, OTHER)),
            ("IPv4 header cut before daddr", segment(CLIENT, OTHER, PORT, Flags::Syn)[..L3 + 16].to_vec()),
            ("ARP cut before the target address", arp(1, OTHER)[..38].to_vec()),
            ("VLAN tag cut", vlan_tcp(OTHER, PORT)[..16].to_vec()),
        ]
    };
    let dropped = [DropStealthIpv4, DropStealthIpv4, DropStealthIpv6, DropStealthOther, DropStealthArp, DropStealthIpv4, DropStealthArp, DropStealthOther];
    let stealth_cases: Vec<Case> = frames().into_iter().zip(dropped).map(|((name, frame), c)| case(name, frame, DROP, c)).collect();
    check(&program, &stealth_cases);
    check(
        &program,
        &[
            case("TCP to another address from host_allow", segment(HOST_PEER, OTHER, 22, Flags::Syn), PASS, PassOther),
            case("ARP for another address from host_allow", arp_from(1, HOST_PEER, OTHER), PASS, PassOther),
            case("ARP reply from host_allow", arp_from(2, HOST_PEER, OTHER), PASS, PassOther),
            // The service is served as before, and its closed ports stay closed.
            case("ARP request for the service", arp(1, SERVICE), DROP, DropNoSocket),
            case("TCP to the service port", tcp(SERVICE, PORT), DROP, DropNoSocket),
            case("ping to the service", ping(SERVICE), DROP, DropNoSocket),
            case("UDP to the service", udp(SERVICE, PORT), DROP, DropUdp),
        ],
    );
    // Stealth off (the default): the same frames pass to the host, as they always did.
    program.configure_edge(&EdgeConfig::off()).unwrap();
    let passed = [PassOther, PassOther, PassOther, PassOther, PassOther, PassTruncated, PassTruncated, PassTruncated];
    let pass_cases: Vec<Case> = frames().into_iter().zip(passed).map(|((name, frame), c)| case(name, frame, PASS, c)).collect();
    check(&program, &pass_cases);
}

#[test]
fn default_edge_settings_let_every_verdict_through_unchanged() {
    // The defaults (SYN limit on, generous; no allowlist; stealth off) change no verdict of
    // the table above.
    let program = SteerProgram::load(SERVICE, PORT, &EdgeConfig::default()).unwrap();
    let mut cases = cases(xdp_action::DROP);
    for case in &mut cases {
        if case.counter.verdict() == "redirect" {
            case.counter = SteerCounter::DropNoSocket;
        }
    }
    check(&program, &cases);
}
