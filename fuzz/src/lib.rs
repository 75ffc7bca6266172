//! What the fuzz targets and the seed writer share: the input formats of the binary targets.
//!
//! The fuzzer mutates bytes; these formats let it reach deep states cheaply. A frame record
//! can ask the harness to fix its checksums or to acknowledge the stack's last SYN-ACK, since
//! a blind mutator would almost never find a valid TCP checksum or a SYN cookie, and the
//! checks behind them would hide the code under test.

use std::collections::BTreeMap;

use smoltcp::phy::ChecksumCapabilities;
use smoltcp::wire::{
    EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
    Ipv4Address, Ipv4Packet, Ipv4Repr, TcpControl, TcpPacket, TcpRepr, TcpSeqNumber,
};

/// The stack's addresses in the `tcp_frames` target (the lab's, docs/design.md).
pub const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const SERVER_IP: Ipv4Address = Ipv4Address::new(10, 99, 0, 2);
pub const CLIENT_IP: Ipv4Address = Ipv4Address::new(10, 99, 0, 1);
pub const PORT: u16 = 8443;

/// Frame record flags (`tcp_frames`).
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

/// One frame of a `tcp_frames` input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameRecord<'a> {
    pub flags: u8,
    pub bytes: &'a [u8],
}

/// Splits an input into records of `[flags: u8][length: u16 LE][bytes]`; a short last record
/// takes what is left.
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

/// A client's TCP segment to the stack, as the project's tests build them (tcp/tests).
#[derive(Debug, Clone)]
pub struct Segment<'a> {
    pub src_port: u16,
    pub control: TcpControl,
    pub seq: u32,
    pub ack: Option<u32>,
    pub mss: Option<u16>,
    pub window_scale: Option<u8>,
    pub payload: &'a [u8],
}

impl Segment<'_> {
    pub fn frame(&self) -> Vec<u8> {
        let tcp = TcpRepr {
            src_port: self.src_port,
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
            src_addr: CLIENT_IP,
            dst_addr: SERVER_IP,
            next_header: IpProtocol::Tcp,
            payload_len: tcp.buffer_len(),
            hop_limit: 64,
        };
        let checksums = ChecksumCapabilities::default();
        let mut frame = vec![0; 14 + ip_repr.buffer_len() + tcp.buffer_len()];
        let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
        EthernetRepr {
            src_addr: EthernetAddress(CLIENT_MAC),
            dst_addr: EthernetAddress(SERVER_MAC),
            ethertype: EthernetProtocol::Ipv4,
        }
        .emit(&mut ethernet);
        let mut ip_packet = Ipv4Packet::new_unchecked(ethernet.payload_mut());
        ip_repr.emit(&mut ip_packet, &checksums);
        tcp.emit(
            &mut TcpPacket::new_unchecked(ip_packet.payload_mut()),
            &IpAddress::Ipv4(CLIENT_IP),
            &IpAddress::Ipv4(SERVER_IP),
            &checksums,
        );
        frame
    }
}

/// Files of a data directory in one fuzz input (`wal_recovery`): records of
/// `[name length: u8][name][length: u32 LE][bytes]`; a short last record takes what is left,
/// a later file of the same name replaces an earlier one.
pub fn decode_files(mut data: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    while let Some((&name_len, rest)) = data.split_first() {
        let name_len = usize::from(name_len).min(rest.len());
        let name = String::from_utf8_lossy(&rest[..name_len]).into_owned();
        let rest = &rest[name_len..];
        if rest.len() < 4 {
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let rest = &rest[4..];
        let len = len.min(rest.len());
        files.insert(name, rest[..len].to_vec());
        data = &rest[len..];
    }
    files
}

/// The inverse of [`decode_files`] (for the seed writer).
pub fn encode_files(files: &BTreeMap<String, Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, bytes) in files {
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(bytes);
    }
    out
}
