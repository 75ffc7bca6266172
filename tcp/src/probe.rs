//! A pass-through [`Device`] that counts frames, notices refused SYNs and learns neighbours.
//!
//! smoltcp answers a SYN that no socket accepts with an RST from inside
//! `Interface::poll_ingress_single` (RFC 9293 §3.10.7.1), without telling the caller. To count
//! refusals the probe looks at the TCP flags of each frame going in and of the reply coming out
//! through the same token pair: a SYN to the service port answered by an RST was refused. The
//! look is a few header bytes; payloads are never copied.
//!
//! The probe also notes the Ethernet and IPv4 source of each IPv4 frame addressed to us and what
//! the frame is (a SYN, another segment to the service port, an echo request), so the stack can
//! teach smoltcp that neighbour without ARP; holds back every ARP frame aimed at our address
//! until the stack's neighbour table admits its sender; and notes the address of each ARP
//! request smoltcp sends (see `neighbour.rs` for why).

use std::cell::{Cell, RefCell};
use std::net::Ipv4Addr;

use smoltcp::phy::{Device, DeviceCapabilities, PacketMeta, RxToken, TxToken};
use smoltcp::time::Instant;
use crate::cookie::{Gate, Verdict};
use crate::neighbour::Seen;
use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    Icmpv4Message, Icmpv4Packet, IpProtocol, Ipv4Packet, TcpPacket,
};

/// The part of an ARP frame the stack keeps: Ethernet header (14) + ARP for IPv4 (28).
pub(crate) const ARP_FRAME_BYTES: usize = 14 + 28;

/// What the probe saw during one poll.
#[derive(Debug)]
pub(crate) struct Probe {
    port: u16,
    mac: [u8; 6],
    ipv4: Ipv4Addr,
    pub(crate) rx_frames: Cell<u64>,
    pub(crate) rx_bytes: Cell<u64>,
    pub(crate) tx_frames: Cell<u64>,
    pub(crate) tx_bytes: Cell<u64>,
    /// The frame being processed is a SYN (without ACK) to the service port.
    pub(crate) rx_syn: Cell<bool>,
    /// An RST left the service port since `rx_syn` was last cleared.
    pub(crate) tx_rst: Cell<bool>,
    /// (source IPv4, source MAC, what it was) of the last received IPv4 frame addressed to
    /// our MAC and our address that may teach a neighbour; the stack takes it after each frame.
    pub(crate) learned: Cell<Option<(Ipv4Addr, [u8; 6], Seen)>>,
    /// An ARP frame aimed at our address, held back from smoltcp; the stack takes it after
    /// each frame.
    pub(crate) arp: Cell<Option<[u8; ARP_FRAME_BYTES]>>,
    /// The target of the last ARP request smoltcp sent.
    pub(crate) asked: Cell<Option<Ipv4Addr>>,
    /// The SYN-cookie gate, which sees each received frame before smoltcp (cookie.rs).
    pub(crate) gate: RefCell<Gate>,
}

impl Probe {
    pub(crate) fn new(port: u16, mac: [u8; 6], ipv4: Ipv4Addr, gate: Gate) -> Self {
        Probe {
            port,
            mac,
            ipv4,
            rx_frames: Cell::new(0),
            rx_bytes: Cell::new(0),
            tx_frames: Cell::new(0),
            tx_bytes: Cell::new(0),
            rx_syn: Cell::new(false),
            tx_rst: Cell::new(false),
            learned: Cell::new(None),
            arp: Cell::new(None),
            asked: Cell::new(None),
            gate: RefCell::new(gate),
        }
    }

    /// The (source IPv4, source MAC) of a well-formed Ethernet/IPv4 frame whose Ethernet
    /// destination is our MAC and whose IPv4 destination is our address, sent from a unicast
    /// MAC and a unicast address other than ours; None for anything else. Broadcast and
    /// multicast frames teach nothing: only a frame sent to us shows the path back.
    fn ipv4_source(&self, frame: &[u8]) -> Option<(Ipv4Addr, [u8; 6], Seen)> {
        let ethernet = EthernetFrame::new_checked(frame).ok()?;
        if ethernet.ethertype() != EthernetProtocol::Ipv4
            || ethernet.dst_addr() != EthernetAddress(self.mac)
        {
            return None;
        }
        let source_mac = ethernet.src_addr();
        // IEEE 802 §8.2: the I/G bit marks group addresses; all-zero is no station.
        if !source_mac.is_unicast() || source_mac == EthernetAddress([0; 6]) {
            return None;
        }
        let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
        // RFC 791 §3.1: a header whose checksum fails is discarded, so it teaches nothing.
        if ip.version() != 4 || ip.dst_addr() != self.ipv4 || !ip.verify_checksum() {
            return None;
        }
        let source = ip.src_addr();
        // RFC 1122 §3.2.1.3: a source address is never broadcast, multicast or 0.0.0.0.
        if source.is_broadcast()
            || source.is_multicast()
            || source.is_unspecified()
            || source.is_loopback()
            || source == self.ipv4
        {
            return None;
        }
        // Only what needs the sender to answer, or may belong to a live connection, teaches.
        let seen = match ip.next_header() {
            _ if ip.frag_offset() != 0 => return None,
            IpProtocol::Tcp => {
                let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
                if tcp.dst_port() != self.port {
                    return None;
                }
                if tcp.syn() && !tcp.ack() {
                    Seen::Syn
                } else {
                    Seen::Segment {
                        port: tcp.src_port(),
                    }
                }
            }
            IpProtocol::Icmp => {
                let icmp = Icmpv4Packet::new_checked(ip.payload()).ok()?;
                if icmp.msg_type() != Icmpv4Message::EchoRequest {
                    return None;
                }
                Seen::Echo
            }
            _ => return None,
        };
        Some((source, source_mac.0, seen))
    }

    /// An ARP request or reply whose target address is ours: smoltcp would fill its cache
    /// from it, so the stack decides first.
    fn arp_for_us(&self, frame: &[u8]) -> Option<[u8; ARP_FRAME_BYTES]> {
        let ethernet = EthernetFrame::new_checked(frame).ok()?;
        if ethernet.ethertype() != EthernetProtocol::Arp {
            return None;
        }
        let arp = ArpRepr::parse(&ArpPacket::new_checked(ethernet.payload()).ok()?).ok()?;
        let ArpRepr::EthernetIpv4 {
            operation,
            target_protocol_addr,
            ..
        } = arp
        else {
            return None;
        };
        if target_protocol_addr != self.ipv4
            || !matches!(operation, ArpOperation::Request | ArpOperation::Reply)
        {
            return None;
        }
        frame.get(..ARP_FRAME_BYTES)?.try_into().ok()
    }

    /// The target of an ARP request we send, or None.
    fn arp_request_target(frame: &[u8]) -> Option<Ipv4Addr> {
        let ethernet = EthernetFrame::new_checked(frame).ok()?;
        if ethernet.ethertype() != EthernetProtocol::Arp {
            return None;
        }
        match ArpRepr::parse(&ArpPacket::new_checked(ethernet.payload()).ok()?).ok()? {
            ArpRepr::EthernetIpv4 {
                operation: ArpOperation::Request,
                target_protocol_addr,
                ..
            } => Some(target_protocol_addr),
            _ => None,
        }
    }

    /// The TCP flags of an Ethernet/IPv4/TCP frame to or from `port`, or None.
    fn tcp_flags(frame: &[u8], port: u16, inbound: bool) -> Option<(bool, bool, bool)> {
        let ethernet = EthernetFrame::new_checked(frame).ok()?;
        if ethernet.ethertype() != EthernetProtocol::Ipv4 {
            return None;
        }
        let ip = Ipv4Packet::new_checked(ethernet.payload()).ok()?;
        if ip.next_header() != IpProtocol::Tcp || ip.frag_offset() != 0 {
            return None;
        }
        let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
        let service_port = if inbound {
            tcp.dst_port()
        } else {
            tcp.src_port()
        };
        if service_port != port {
            return None;
        }
        Some((tcp.syn(), tcp.ack(), tcp.rst()))
    }

    fn saw_rx(&self, frame: &[u8]) {
        self.rx_frames.set(self.rx_frames.get() + 1);
        self.rx_bytes.set(self.rx_bytes.get() + frame.len() as u64);
        let syn = matches!(
            Self::tcp_flags(frame, self.port, true),
            Some((true, false, false))
        );
        self.rx_syn.set(syn);
        self.tx_rst.set(false);
        if let Some(source) = self.ipv4_source(frame) {
            self.learned.set(Some(source));
        }
    }

    fn saw_tx(&self, frame: &[u8]) {
        self.tx_frames.set(self.tx_frames.get() + 1);
        self.tx_bytes.set(self.tx_bytes.get() + frame.len() as u64);
        if let Some((_, _, true)) = Self::tcp_flags(frame, self.port, false) {
            self.tx_rst.set(true);
        }
        if let Some(target) = Self::arp_request_target(frame) {
            self.asked.set(Some(target));
        }
    }
}

/// Wraps the caller's device for the length of one poll.
pub(crate) struct ProbeDevice<'d, 'p, D: Device> {
    pub(crate) inner: &'d mut D,
    pub(crate) probe: &'p Probe,
}

pub(crate) struct ProbeRx<'p, T> {
    inner: T,
    probe: &'p Probe,
}

pub(crate) struct ProbeTx<'p, T> {
    inner: T,
    probe: &'p Probe,
}

impl<D: Device> Device for ProbeDevice<'_, '_, D> {
    type RxToken<'a>
        = ProbeRx<'a, D::RxToken<'a>>
    where
        Self: 'a;
    type TxToken<'a>
        = ProbeTx<'a, D::TxToken<'a>>
    where
        Self: 'a;

    fn receive(&mut self, timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let probe = self.probe;
        self.inner
            .receive(timestamp)
            .map(|(rx, tx)| (ProbeRx { inner: rx, probe }, ProbeTx { inner: tx, probe }))
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<Self::TxToken<'_>> {
        let probe = self.probe;
        self.inner
            .transmit(timestamp)
            .map(|tx| ProbeTx { inner: tx, probe })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

impl<T: RxToken> RxToken for ProbeRx<'_, T> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        let probe = self.probe;
        self.inner.consume(|frame| {
            probe.saw_rx(frame);
            if let Some(arp) = probe.arp_for_us(frame) {
                // Held back: smoltcp sees it after the stack's neighbour table admits it.
                probe.arp.set(Some(arp));
                return f(&[]);
            }
            match probe.gate.borrow_mut().inspect(frame) {
                Verdict::Pass => f(frame),
                Verdict::Taken => {
                    // smoltcp must not see the frame, but the token is already its: an empty
                    // frame is one it drops at once (too short for an Ethernet header).
                    probe.rx_syn.set(false);
                    probe.learned.set(None);
                    f(&[])
                }
            }
        })
    }

    fn meta(&self) -> smoltcp::phy::PacketMeta {
        self.inner.meta()
    }
}

impl<T: TxToken> TxToken for ProbeTx<'_, T> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let probe = self.probe;
        self.inner.consume(len, |frame| {
            let result = f(frame);
            probe.saw_tx(frame);
            result
        })
    }

    fn set_meta(&mut self, meta: smoltcp::phy::PacketMeta) {
        self.inner.set_meta(meta)
    }
}

/// A device that receives one given frame, then nothing; its transmit side is the inner
/// device's (`Device::receive` must hand out a transmit token with every received frame, and
/// smoltcp may answer the frame). The stack feeds frames it made or kept aside through it: the
/// synthetic ARP replies that teach neighbours, and the SYN and ACK that open a connection
/// from a cookie.
pub(crate) struct OneFrameDevice<'d, 'f, D: Device> {
    pub(crate) inner: &'d mut D,
    pub(crate) frame: Option<&'f [u8]>,
}

pub(crate) struct OneFrameRx<'f>(&'f [u8]);

impl<D: Device> Device for OneFrameDevice<'_, '_, D> {
    type RxToken<'a>
        = OneFrameRx<'a>
    where
        Self: 'a;
    type TxToken<'a>
        = D::TxToken<'a>
    where
        Self: 'a;

    fn receive(&mut self, timestamp: Instant) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        let frame = self.frame?;
        let tx = self.inner.transmit(timestamp)?;
        self.frame = None;
        Some((OneFrameRx(frame), tx))
    }

    fn transmit(&mut self, timestamp: Instant) -> Option<Self::TxToken<'_>> {
        self.inner.transmit(timestamp)
    }

    fn capabilities(&self) -> DeviceCapabilities {
        self.inner.capabilities()
    }
}

impl RxToken for OneFrameRx<'_> {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(self.0)
    }

    fn meta(&self) -> PacketMeta {
        PacketMeta::default()
    }
}
