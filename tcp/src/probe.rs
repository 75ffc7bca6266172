//! A pass-through [`Device`] that counts frames and notices refused SYNs.
//!
//! smoltcp answers a SYN that no socket accepts with an RST from inside
//! `Interface::poll_ingress_single` (RFC 9293 §3.10.7.1), without telling the caller. To count
//! refusals the probe looks at the TCP flags of each frame going in and of the reply coming out
//! through the same token pair: a SYN to the service port answered by an RST was refused. The
//! look is a few header bytes; payloads are never copied.

use std::cell::Cell;

use smoltcp::phy::{Device, DeviceCapabilities, RxToken, TxToken};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetFrame, EthernetProtocol, IpProtocol, Ipv4Packet, TcpPacket};

/// What the probe saw during one poll.
#[derive(Debug, Default)]
pub(crate) struct Probe {
    port: u16,
    pub(crate) rx_frames: Cell<u64>,
    pub(crate) rx_bytes: Cell<u64>,
    pub(crate) tx_frames: Cell<u64>,
    pub(crate) tx_bytes: Cell<u64>,
    /// The frame being processed is a SYN (without ACK) to the service port.
    pub(crate) rx_syn: Cell<bool>,
    /// An RST left the service port since `rx_syn` was last cleared.
    pub(crate) tx_rst: Cell<bool>,
}

impl Probe {
    pub(crate) fn new(port: u16) -> Self {
        Probe {
            port,
            ..Probe::default()
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
    }

    fn saw_tx(&self, frame: &[u8]) {
        self.tx_frames.set(self.tx_frames.get() + 1);
        self.tx_bytes.set(self.tx_bytes.get() + frame.len() as u64);
        if let Some((_, _, true)) = Self::tcp_flags(frame, self.port, false) {
            self.tx_rst.set(true);
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
            f(frame)
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
