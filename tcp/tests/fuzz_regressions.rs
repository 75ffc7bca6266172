//! Inputs the `tcp_frames` fuzz target found (docs/fuzzing.md), replayed through the same
//! harness: a mode byte, then records of `[flags][length: u16 LE][frame]`; the flags advance
//! the simulated clock, fix checksums or acknowledge the stack's last SYN-ACK; the stack is
//! polled and serviced after each frame, the application echoing what it reads. The readiness
//! sets must miss no slot with work.

use std::collections::HashSet;

use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, TcpPacket, TcpSeqNumber};
use tcp::sim::{Side, SimConfig, SimLink};
use tcp::{Event, Stack, StackConfig, SynCookieMode};

fn config(mode: u8) -> StackConfig {
    StackConfig {
        mac: [0x02, 0, 0, 0, 0, 0x02],
        ipv4: std::net::Ipv4Addr::new(10, 99, 0, 2),
        prefix_len: 16,
        port: 8443,
        listen_sockets: 2,
        connections_max: 8,
        connections_per_source_max: 4,
        syn_backlog: 2,
        rx_buffer_bytes: 2048,
        tx_buffer_bytes: 2048,
        random_seed: 0x5eed,
        secret: *b"sixteen byte key",
        syn_cookies: match mode % 3 {
            0 => SynCookieMode::Off,
            1 => SynCookieMode::Auto,
            _ => SynCookieMode::Always,
        },
        ..StackConfig::default()
    }
}

/// The record flags' actions, as the fuzz target applies them: with `set_ack`, the TCP
/// acknowledgment number becomes `ack`; then both checksums are recomputed.
fn rewrite(frame: &mut [u8], set_ack: Option<u32>) {
    let Ok(mut ethernet) = EthernetFrame::new_checked(&mut *frame) else { return };
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return;
    }
    let Ok(mut ip) = Ipv4Packet::new_checked(ethernet.payload_mut()) else { return };
    ip.fill_checksum();
    if ip.next_header() != IpProtocol::Tcp {
        return;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) else { return };
    if let Some(ack) = set_ack {
        tcp.set_ack_number(TcpSeqNumber(ack as i32));
        tcp.set_ack(true);
    }
    tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
}

/// The sequence number of a SYN-ACK the stack sent, if `frame` is one.
fn syn_ack_seq(frame: &[u8]) -> Option<u32> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    (ip.next_header() == IpProtocol::Tcp && tcp.syn() && tcp.ack()).then(|| tcp.seq_number().0 as u32)
}

/// Replays `input` and returns the first round's readiness violations, if any, with the index
/// of the frame that preceded them.
fn replay(input: &[u8]) -> Option<(usize, Vec<usize>)> {
    let (&mode, mut rest) = input.split_first().unwrap();
    let mut link = SimLink::new(SimConfig { queue_frames_max: 4096, ..SimConfig::default() });
    let mut now = Instant::from_secs(100_000);
    let mut stack = Stack::new(&config(mode), &mut link.port(Side::A), now).unwrap();
    let mut open = HashSet::new();
    let mut frame_index = 0;
    let mut last_syn_ack = None;
    while rest.len() >= 3 {
        let flags = rest[0];
        let len = usize::from(u16::from_le_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let mut frame = rest[3..3 + len].to_vec();
        rest = &rest[3 + len..];
        if flags & 4 != 0 {
            now += Duration::from_secs(65);
        }
        now += Duration::from_millis(100 * u64::from(flags >> 3));
        if flags & 3 != 0 {
            rewrite(&mut frame, if flags & 2 != 0 { last_syn_ack.map(|s: u32| s.wrapping_add(1)) } else { None });
        }
        link.inject(Side::A, now, &frame);
        for _ in 0..4 {
            stack.poll(now, &mut link.port(Side::A));
            stack.service(now, |event| match event {
                Event::Opened(id) => assert!(open.insert(id)),
                Event::Closed(id) => assert!(open.remove(&id)),
            });
            let missed = stack.readiness_violations();
            if !missed.is_empty() {
                return Some((frame_index, missed));
            }
            let ids: Vec<_> = open.iter().copied().collect();
            for id in ids {
                let mut echo = Vec::new();
                while stack.can_recv(id) {
                    let got = stack.recv(id, |bytes| {
                        echo.extend_from_slice(bytes);
                        (bytes.len(), bytes.len())
                    });
                    if !matches!(got, Ok(n) if n > 0) {
                        break;
                    }
                }
                if !echo.is_empty() && stack.may_send(id) {
                    let _ = stack.send_slice(id, &echo);
                }
                if echo.first() == Some(&b'q') {
                    stack.close(id);
                }
            }
        }
        while let Some(sent) = link.take(Side::B, now) {
            last_syn_ack = syn_ack_seq(&sent).or(last_syn_ack);
        }
        frame_index += 1;
    }
    None
}

/// A SYN whose handshake does not complete, then 67.8 s with no poll: the embryonic
/// connection is aborted at its handshake timeout, and its RST waits for the neighbour, whose
/// cache entry expired meanwhile. A later frame from the same client revived the expired entry
/// inside smoltcp (no fill the stack could see), so the waiting socket had work the readiness
/// sets did not cover. Fixed in the smoltcp patch (third_party/smoltcp/PANTERA.md, section 4:
/// an expired entry is never revived by a passing frame).
#[test]
fn readiness_after_a_handshake_timeout_abort() {
    let input = include_bytes!("fuzz_inputs/readiness-handshake-timeout");
    assert_eq!(replay(input), None, "(frame, slots) the readiness sets would not visit");
}
