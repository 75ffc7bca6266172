//! Frame-record inputs for the stack: the `tcp_frames` fuzz target's format and its harness,
//! in one place so that the fuzz target, the regression tests of its findings and the seed
//! writer replay an input the same way (docs/fuzzing.md).
//!
//! An input is a mode byte (SYN cookies off, auto with a backlog of 2, always), then records of
//! `[flags: u8][length: u16 LE][frame]`. A blind mutator would almost never produce a valid TCP
//! checksum or a SYN cookie, and the checks behind them would hide the code under test, so a
//! record's flags can ask the harness to fix its checksums or to acknowledge the stack's last
//! SYN-ACK, and to advance the clock. After each frame the stack is polled and serviced four
//! times, the application echoing what it reads (`q` closes), and [`replay`] checks:
//!
//! - every `Opened` is followed by exactly one `Closed`, never for an id already open;
//! - the readiness sets miss no slot with work (`Stack::readiness_violations`);
//! - the connection count stays within the table;
//! - every frame the stack sends parses as Ethernet.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

use crate::sim::{Side, SimConfig, SimLink};
use crate::{Event, Stack, StackConfig, SynCookieMode};

/// The stack's addresses in the harness (the lab's).
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
pub const PORT: u16 = 8443;
/// The harness's connection table: small, so that capacity is reached.
pub const CONNECTIONS_MAX: usize = 8;

/// Frame record flags.
pub mod flags {
    /// Recompute the IPv4 header checksum and the TCP checksum before delivery.
    pub const FIX_CHECKSUMS: u8 = 1;
    /// Set the TCP acknowledgment number to the last SYN-ACK's sequence number plus one
    /// (completing a handshake, with or without a cookie), then fix the checksums.
    pub const ACK_LAST_SYN_ACK: u8 = 2;
    /// Advance the clock by 65 s before delivery: handshake timeouts, cookie slots expire.
    pub const LONG_PAUSE: u8 = 4;
    /// The other five bits advance the clock by that many 100 ms steps.
    pub const STEP_SHIFT: u32 = 3;
}

/// One frame of an input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRecord<'a> {
    pub flags: u8,
    pub bytes: &'a [u8],
}

/// Splits records of `[flags: u8][length: u16 LE][bytes]`; a short last record takes what is
/// left.
pub fn frame_records(mut data: &[u8]) -> Vec<FrameRecord<'_>> {
    let mut records = Vec::new();
    while data.len() >= 3 {
        let flags = data[0];
        let len = usize::from(u16::from_le_bytes([data[1], data[2]]));
        let rest = &data[3..];
        let len = len.min(rest.len());
        records.push(FrameRecord { flags, bytes: &rest[..len] });
        data = &rest[len..];
    }
    records
}

/// The inverse of [`frame_records`] (for the seed writer).
pub fn encode_frame_records(records: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (flags, bytes) in records {
        out.push(*flags);
        out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}

/// The stack configuration for an input's mode byte.
pub fn config(mode: u8) -> StackConfig {
    StackConfig {
        mac: SERVER_MAC,
        ipv4: SERVER_IP,
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

/// A property an input broke: which, and after which frame record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub record: usize,
    pub what: String,
}

/// Replays `input` through a stack on a simulated link; the first property it breaks, if any.
pub fn replay(input: &[u8]) -> Result<(), Violation> {
    let Some((&mode, rest)) = input.split_first() else { return Ok(()) };
    let mut link = SimLink::new(SimConfig { queue_frames_max: 4096, ..SimConfig::default() });
    let mut now = Instant::from_secs(100_000);
    let mut stack = Stack::new(&config(mode), &mut link.port(Side::A), now).expect("the harness configuration is valid");
    let mut open = HashSet::new();
    let mut last_syn_ack = None;
    let mut echo = Vec::new();

    for (record, FrameRecord { flags, bytes }) in frame_records(rest).into_iter().enumerate() {
        let broke = |what: String| Err(Violation { record, what });
        if flags & flags::LONG_PAUSE != 0 {
            now += Duration::from_secs(65);
        }
        now += Duration::from_millis(100 * u64::from(flags >> flags::STEP_SHIFT));
        let mut frame = bytes.to_vec();
        if flags & flags::ACK_LAST_SYN_ACK != 0 {
            if let Some(seq) = last_syn_ack {
                set_ack(&mut frame, u32::wrapping_add(seq, 1));
            }
        }
        if flags & (flags::FIX_CHECKSUMS | flags::ACK_LAST_SYN_ACK) != 0 {
            fix_checksums(&mut frame);
        }
        link.inject(Side::A, now, &frame);

        for _ in 0..4 {
            stack.poll(now, &mut link.port(Side::A));
            let mut pairing = Ok(());
            stack.service(now, |event| match event {
                Event::Opened(id) if !open.insert(id) => pairing = Err(format!("{id:?} opened twice")),
                Event::Closed(id) if !open.remove(&id) => pairing = Err(format!("{id:?} closed but not open")),
                _ => {}
            });
            if let Err(what) = pairing {
                return broke(what);
            }
            let missed = stack.readiness_violations();
            if !missed.is_empty() {
                return broke(format!("slots the readiness sets would not visit: {missed:?}"));
            }
            if stack.connections() > CONNECTIONS_MAX {
                return broke(format!("{} connections in a table of {CONNECTIONS_MAX}", stack.connections()));
            }
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
            if EthernetFrame::new_checked(&sent[..]).is_err() {
                return broke(format!("the stack sent a runt frame of {} bytes", sent.len()));
            }
            last_syn_ack = syn_ack_seq(&sent).or(last_syn_ack);
        }
    }
    Ok(())
}

/// A client's TCP segment to the stack at [`SERVER_IP`]:[`PORT`], built with valid checksums
/// (the seed writer and the stack's own tests make their inputs with it).
#[derive(Debug, Clone)]
pub struct Segment<'a> {
    pub mac: [u8; 6],
    pub ip: Ipv4Addr,
    pub port: u16,
    pub control: TcpControl,
    pub seq: u32,
    pub ack: Option<u32>,
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub payload: &'a [u8],
}

impl Segment<'_> {
    /// A SYN from `ip:port` (MSS 1460, window scale 7) with the client's MAC.
    pub fn syn(ip: Ipv4Addr, port: u16, seq: u32) -> Segment<'static> {
        Segment {
            mac: CLIENT_MAC,
            ip,
            port,
            control: TcpControl::Syn,
            seq,
            ack: None,
            mss: Some(1460),
            window_scale: Some(7),
            payload: &[],
        }
    }

    /// The segment as an Ethernet frame.
    pub fn frame(&self) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: self.port,
            dst_port: PORT,
            control: self.control,
            seq_number: TcpSeqNumber(self.seq as i32),
            ack_number: self.ack.map(|ack| TcpSeqNumber(ack as i32)),
            window_len: 4096,
            window_scale: self.window_scale,
            max_seg_size: self.mss,
            sack_permitted: self.control == TcpControl::Syn,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: self.payload,
        };
        let ip_repr = Ipv4Repr {
            src_addr: self.ip,
            dst_addr: SERVER_IP,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let checksums = ChecksumCapabilities::default();
        let mut frame = vec![0; 14 + ip_repr.buffer_len() + tcp.buffer_len()];
        let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
        EthernetRepr {
            src_addr: EthernetAddress(self.mac),
            dst_addr: EthernetAddress(SERVER_MAC),
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut ethernet);
        let mut ip_packet = Ipv4Packet::new_unchecked(ethernet.payload_mut());
        ip_repr.emit(&mut ip_packet, &checksums);
        tcp.emit(
            &mut TcpPacket::new_unchecked(ip_packet.payload_mut()),
            &IpAddress::Ipv4(self.ip),
            &IpAddress::Ipv4(SERVER_IP),
            &checksums,
        );
        frame
    }
}

/// Recomputes the IPv4 and TCP checksums of an Ethernet frame in place, when it holds an IPv4
/// packet with a TCP segment whose lengths are consistent; other frames are left alone.
pub fn fix_checksums(frame: &mut [u8]) {
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
    tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
}

/// Sets the acknowledgment number (and the ACK flag) of a frame's TCP segment, if it has one.
pub fn set_ack(frame: &mut [u8], ack: u32) {
    let Ok(mut ethernet) = EthernetFrame::new_checked(&mut *frame) else { return };
    if ethernet.ethertype() != EthernetProtocol::Ipv4 {
        return;
    }
    let Ok(mut ip) = Ipv4Packet::new_checked(ethernet.payload_mut()) else { return };
    if ip.next_header() != IpProtocol::Tcp {
        return;
    }
    let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) else { return };
    tcp.set_ack_number(TcpSeqNumber(ack as i32));
    tcp.set_ack(true);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_short_last_record_takes_what_is_left() {
        let records = vec![(1, vec![1, 2, 3]), (0x0a, vec![])];
        let bytes = encode_frame_records(&records);
        let back = frame_records(&bytes);
        assert_eq!(back, [FrameRecord { flags: 1, bytes: &[1, 2, 3] }, FrameRecord { flags: 0x0a, bytes: &[] }]);
        assert_eq!(frame_records(&[7, 9, 0, 1, 2]), [FrameRecord { flags: 7, bytes: &[1, 2] }]);
    }
}
