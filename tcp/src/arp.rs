//! The ARP frames the stack makes itself: the gratuitous announcement sent at start, and the
//! synthetic reply that teaches smoltcp a neighbour learned from a received frame.
//!
//! smoltcp drops the first packet to a neighbour it has not resolved while it ARPs, so a
//! client's first SYN would be lost (about 1 s of retransmission delay). Announcing our
//! address first fills the neighbours' caches, and refreshes them after a MAC change.

use std::net::Ipv4Addr;

use smoltcp::wire::{
    ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, EthernetProtocol,
    EthernetRepr,
};

/// Length of the announcement: Ethernet header (14) + ARP for IPv4 over Ethernet (28).
/// The NIC pads it to the 60-byte minimum (IEEE 802.3 §3.2.7).
pub const GRATUITOUS_ARP_FRAME_BYTES: usize = 14 + 28;

/// Writes an ARP Announcement (RFC 5227 §2.3): a broadcast ARP request whose sender and
/// target protocol addresses are both ours and whose target hardware address is zero.
/// A request rather than a reply, because RFC 5227 §3 notes that some hosts only update
/// their caches from requests.
///
/// `frame` must be at least [`GRATUITOUS_ARP_FRAME_BYTES`] long; only that prefix is written.
pub fn write_gratuitous_arp(frame: &mut [u8], mac: [u8; 6], ipv4: Ipv4Addr) {
    assert!(frame.len() >= GRATUITOUS_ARP_FRAME_BYTES);
    let frame = &mut frame[..GRATUITOUS_ARP_FRAME_BYTES];
    let ethernet_repr = EthernetRepr {
        src_addr: EthernetAddress(mac),
        dst_addr: EthernetAddress::BROADCAST,
        ethertype: EthernetProtocol::Arp,
    };
    let arp_repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Request,
        source_hardware_addr: EthernetAddress(mac),
        source_protocol_addr: ipv4,
        target_hardware_addr: EthernetAddress([0; 6]),
        target_protocol_addr: ipv4,
    };
    let mut ethernet = EthernetFrame::new_unchecked(frame);
    ethernet_repr.emit(&mut ethernet);
    arp_repr.emit(&mut ArpPacket::new_unchecked(ethernet.payload_mut()));
}

/// Length of a synthetic ARP reply: Ethernet header (14) + ARP for IPv4 over Ethernet (28).
/// It never leaves the process, so it is not padded.
pub(crate) const NEIGHBOUR_ARP_FRAME_BYTES: usize = 14 + 28;

/// Writes the ARP reply (RFC 826) "`neighbour_ipv4` is at `neighbour_mac`", sent by the
/// neighbour to us (`our_mac`, `our_ipv4`).
///
/// This frame is never transmitted: the stack feeds it to its own smoltcp interface, which
/// has no public neighbour-cache API but fills its cache from any ARP packet whose target
/// protocol address is ours and whose sender is unicast and on-link (smoltcp 0.14
/// `InterfaceInner::process_arp`). A reply rather than a request, because smoltcp answers a
/// request, and that answer would go out on the wire.
pub(crate) fn write_neighbour_arp_reply(
    frame: &mut [u8; NEIGHBOUR_ARP_FRAME_BYTES],
    our_mac: [u8; 6],
    our_ipv4: Ipv4Addr,
    neighbour_mac: [u8; 6],
    neighbour_ipv4: Ipv4Addr,
) {
    let ethernet_repr = EthernetRepr {
        src_addr: EthernetAddress(neighbour_mac),
        dst_addr: EthernetAddress(our_mac),
        ethertype: EthernetProtocol::Arp,
    };
    let arp_repr = ArpRepr::EthernetIpv4 {
        operation: ArpOperation::Reply,
        source_hardware_addr: EthernetAddress(neighbour_mac),
        source_protocol_addr: neighbour_ipv4,
        target_hardware_addr: EthernetAddress(our_mac),
        target_protocol_addr: our_ipv4,
    };
    let mut ethernet = EthernetFrame::new_unchecked(&mut frame[..]);
    ethernet_repr.emit(&mut ethernet);
    arp_repr.emit(&mut ArpPacket::new_unchecked(ethernet.payload_mut()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gratuitous_arp_golden_bytes() {
        let mut frame = [0xaa_u8; 64];
        write_gratuitous_arp(
            &mut frame,
            [0x02, 0x00, 0x00, 0x00, 0x00, 0x02],
            Ipv4Addr::new(10, 99, 0, 2),
        );
        #[rustfmt::skip]
        let golden: [u8; GRATUITOUS_ARP_FRAME_BYTES] = [
            // Ethernet: broadcast destination, our source, ethertype ARP.
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0x02, 0x00, 0x00, 0x00, 0x00, 0x02,
            0x08, 0x06,
            // ARP: htype Ethernet, ptype IPv4, hlen 6, plen 4, oper request.
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01,
            // Sender: our MAC, our IP.
            0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 10, 99, 0, 2,
            // Target: zero MAC, our IP.
            0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 10, 99, 0, 2,
        ];
        assert_eq!(frame[..GRATUITOUS_ARP_FRAME_BYTES], golden);
        // Nothing past the announcement was touched.
        assert!(frame[GRATUITOUS_ARP_FRAME_BYTES..]
            .iter()
            .all(|&b| b == 0xaa));
    }

    #[test]
    fn neighbour_arp_reply_golden_bytes() {
        let mut frame = [0xaa_u8; NEIGHBOUR_ARP_FRAME_BYTES];
        write_neighbour_arp_reply(
            &mut frame,
            [0x02, 0x00, 0x00, 0x00, 0x00, 0x02],
            Ipv4Addr::new(10, 99, 0, 2),
            [0x02, 0x00, 0x00, 0x00, 0x00, 0x01],
            Ipv4Addr::new(10, 99, 0, 1),
        );
        #[rustfmt::skip]
        let golden: [u8; NEIGHBOUR_ARP_FRAME_BYTES] = [
            // Ethernet: to our MAC, from the neighbour's, ethertype ARP.
            0x02, 0x00, 0x00, 0x00, 0x00, 0x02,
            0x02, 0x00, 0x00, 0x00, 0x00, 0x01,
            0x08, 0x06,
            // ARP: htype Ethernet, ptype IPv4, hlen 6, plen 4, oper reply.
            0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02,
            // Sender: the neighbour's MAC and IP.
            0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 10, 99, 0, 1,
            // Target: our MAC and IP.
            0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 10, 99, 0, 2,
        ];
        assert_eq!(frame, golden);
    }
}
