//! Ethernet frames into the userspace TCP/IP stack's receive path (ARP, ICMP, TCP, the SYN
//! cookie gate), with the application side echoing what it reads.
//!
//! Input: a mode byte (SYN cookies off, auto with a backlog of 2, always), then frame records
//! (`pantera_fuzz::frame_records`). Properties beyond "no panic": every `Opened` is followed by
//! exactly one `Closed` and never for an id that is already open, the readiness sets miss no
//! slot with work (`Stack::readiness_violations`), the connection count stays within the
//! configured table, and every frame the stack sends parses as Ethernet.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use pantera_fuzz::{fix_checksums, flags, frame_records, set_ack, PORT, SERVER_MAC};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket};
use tcp::sim::{Side, SimConfig, SimLink};
use tcp::{Event, Stack, StackConfig, SynCookieMode};

const CONNECTIONS_MAX: usize = 8;

fn config(mode: u8) -> StackConfig {
    StackConfig {
        mac: SERVER_MAC,
        ipv4: pantera_fuzz::SERVER_IP,
        prefix_len: 16,
        port: PORT,
        listen_sockets: 2,
        connections_max: CONNECTIONS_MAX,
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

/// The sequence number of a SYN-ACK the stack sent, if `frame` is one.
fn syn_ack_seq(frame: &[u8]) -> Option<u32> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return None;
    }
    let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
    if ip.next_header() != IpProtocol::Tcp {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    (tcp.syn() && tcp.ack()).then(|| tcp.seq_number().0 as u32)
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut link = SimLink::new(SimConfig { queue_frames_max: 4096, ..SimConfig::default() });
    let mut now = Instant::from_secs(100_000);
    let mut stack = Stack::new(&config(mode), &mut link.port(Side::A), now).expect("valid config");
    let mut open = HashSet::new();
    let mut last_syn_ack = None;
    let mut echo = Vec::new();

    for record in frame_records(rest) {
        if record.flags & flags::LONG_PAUSE != 0 {
            now += Duration::from_secs(65);
        }
        now += Duration::from_millis(100 * u64::from(record.flags >> flags::STEP_SHIFT));
        let mut frame = record.bytes.to_vec();
        if record.flags & flags::ACK_LAST_SYN_ACK != 0 {
            if let Some(seq) = last_syn_ack {
                set_ack(&mut frame, u32::wrapping_add(seq, 1));
            }
        }
        if record.flags & (flags::FIX_CHECKSUMS | flags::ACK_LAST_SYN_ACK) != 0 {
            fix_checksums(&mut frame);
        }
        link.inject(Side::A, now, &frame);

        for _ in 0..4 {
            stack.poll(now, &mut link.port(Side::A));
            stack.service(now, |event| match event {
                Event::Opened(id) => assert!(open.insert(id), "{id:?} opened twice"),
                Event::Closed(id) => assert!(open.remove(&id), "{id:?} closed but not open"),
            });
            let missed = stack.readiness_violations();
            assert!(missed.is_empty(), "slots the readiness sets would not visit: {missed:?}");
            assert!(stack.connections() <= CONNECTIONS_MAX, "{} connections", stack.connections());
            // The application: read everything, echo it back while there is room.
            let ids: Vec<_> = open.iter().copied().collect();
            for id in ids {
                echo.clear();
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
            assert!(EthernetFrame::new_checked(&sent[..]).is_ok(), "the stack sent a runt frame");
            if let Some(seq) = syn_ack_seq(&sent) {
                last_syn_ack = Some(seq);
            }
        }
    }
});
