//! Neighbour learning from received IPv4 frames.
//!
//! With several NIC queues the appliance runs one `Stack` per queue, all with the same MAC and
//! address. RSS hashes a client's TCP flow to one queue, but the client's ARP frames carry no
//! ports and land on another (on a real NIC, non-IP frames go to queue 0). A stack that must
//! ARP for a client to send its SYN-ACK therefore never sees the reply: the SYN-ACK is dropped
//! and the flow waits for a retransmitted SYN that happens to hash elsewhere. The same happens
//! to the gateway's ARP reply, which reaches one queue only.
//!
//! Every IPv4 frame sent to us already names its sender's MAC, so each stack learns the
//! neighbour from the frames of its own flows: the frame's source address if it is on-link,
//! else the configured gateway (an off-link packet reached us through it, so the frame's
//! Ethernet source is the gateway's MAC). smoltcp has no public neighbour-cache API, so the
//! stack teaches it by feeding its ingress a synthetic ARP reply "neighbour is-at MAC"
//! addressed to us, which smoltcp's `process_arp` takes into its cache like any other.
//!
//! A table of `NEIGHBOURS_MAX` entries remembers what was taught and when, so a frame teaches
//! only when the neighbour is new, its MAC changed, or the entry is older than
//! `NEIGHBOUR_REFRESH`: a busy flow costs one table lookup per frame, not one ARP parse.

use std::net::Ipv4Addr;

use smoltcp::iface::{Interface, PollIngressSingleResult, SocketSet};
use smoltcp::phy::Device;
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::Ipv4Cidr;

use crate::arp::{write_neighbour_arp_reply, NEIGHBOUR_ARP_FRAME_BYTES};
use crate::probe::OneFrameDevice;

/// Neighbours remembered as taught: as many as smoltcp's neighbour cache holds (the
/// `iface-neighbor-cache-count-16` feature in Cargo.toml), so the table never claims more
/// entries than smoltcp can keep. Beyond it the oldest is forgotten and, if it speaks again,
/// taught again.
pub const NEIGHBOURS_MAX: usize = smoltcp::config::IFACE_NEIGHBOR_CACHE_COUNT;

/// How long a taught entry is trusted before the next frame from it teaches it again. smoltcp
/// 0.14 keeps an entry 60 s (`neighbor::Cache::ENTRY_LIFETIME`) and extends it on every frame
/// from the same MAC; teaching again well before that also restores an entry that smoltcp
/// evicted to make room for another.
pub const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    ipv4: Ipv4Addr,
    mac: [u8; 6],
    taught_at: Instant,
}

/// The neighbours taught to one stack's smoltcp interface.
#[derive(Debug)]
pub(crate) struct Neighbours {
    /// At most `NEIGHBOURS_MAX`, allocated at start; unordered.
    entries: Vec<Entry>,
    our_mac: [u8; 6],
    our_ipv4: Ipv4Addr,
    network: Ipv4Cidr,
    gateway: Option<Ipv4Addr>,
}

impl Neighbours {
    pub(crate) fn new(
        our_mac: [u8; 6],
        our_ipv4: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
    ) -> Self {
        Neighbours {
            entries: Vec::with_capacity(NEIGHBOURS_MAX),
            our_mac,
            our_ipv4,
            network: Ipv4Cidr::new(our_ipv4, prefix_len),
            gateway,
        }
    }

    /// The neighbour whose MAC a frame from `source` carries: `source` itself if it is a host
    /// of our network, else the gateway if one is configured (the packet was routed to us
    /// through it), else none.
    pub(crate) fn neighbour_of(&self, source: Ipv4Addr) -> Option<Ipv4Addr> {
        if self.network.contains_addr(&source) {
            // RFC 919 §7 / RFC 922: the all-ones host is the network's broadcast address,
            // never a station's source; `broadcast()` is None for /31 and /32 (RFC 3021).
            if self.network.broadcast() == Some(source) {
                return None;
            }
            return Some(source);
        }
        self.gateway
    }

    /// True if `(ipv4, mac)` needs teaching at `now`: not in the table, taught with another
    /// MAC, or taught `NEIGHBOUR_REFRESH` ago or more.
    pub(crate) fn due(&self, ipv4: Ipv4Addr, mac: [u8; 6], now: Instant) -> bool {
        match self.entries.iter().find(|entry| entry.ipv4 == ipv4) {
            Some(entry) => entry.mac != mac || now >= entry.taught_at + NEIGHBOUR_REFRESH,
            None => true,
        }
    }

    /// Remembers `(ipv4, mac)` as taught at `now`, replacing its old entry or, when the table
    /// is full, the entry taught longest ago.
    pub(crate) fn record(&mut self, ipv4: Ipv4Addr, mac: [u8; 6], now: Instant) {
        let entry = Entry {
            ipv4,
            mac,
            taught_at: now,
        };
        if let Some(old) = self.entries.iter_mut().find(|entry| entry.ipv4 == ipv4) {
            *old = entry;
        } else if self.entries.len() < NEIGHBOURS_MAX {
            self.entries.push(entry);
        } else {
            let oldest = self
                .entries
                .iter_mut()
                .min_by_key(|entry| entry.taught_at)
                .expect("a full table has entries");
            *oldest = entry;
        }
        debug_assert!(self.entries.len() <= NEIGHBOURS_MAX);
    }

    /// Learns from a received frame sent to us from `source` by `source_mac`: if the neighbour
    /// it shows is due, teaches it to `iface` through one synthetic ARP reply. Returns true if
    /// smoltcp was taught. Nothing is taught when `device` has no transmit buffer free (the
    /// ingress call needs a token pair); a later frame teaches it.
    pub(crate) fn learn(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'_>,
        device: &mut impl Device,
        now: Instant,
        source: Ipv4Addr,
        source_mac: [u8; 6],
    ) -> bool {
        let Some(neighbour) = self.neighbour_of(source) else {
            return false;
        };
        if !self.due(neighbour, source_mac, now) {
            return false;
        }
        let mut frame = [0; NEIGHBOUR_ARP_FRAME_BYTES];
        write_neighbour_arp_reply(
            &mut frame,
            self.our_mac,
            self.our_ipv4,
            source_mac,
            neighbour,
        );
        let mut device = OneFrameDevice {
            inner: device,
            frame: Some(&frame),
        };
        let result = iface.poll_ingress_single(now, &mut device, sockets);
        if result == PollIngressSingleResult::None {
            return false;
        }
        self.record(neighbour, source_mac, now);
        true
    }

    /// The neighbours taught and not forgotten, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, [u8; 6])> + '_ {
        self.entries.iter().map(|entry| (entry.ipv4, entry.mac))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 254);

    fn host(i: u8) -> (Ipv4Addr, [u8; 6]) {
        (Ipv4Addr::new(10, 99, 0, 10 + i), [2, 0, 0, 0, 1, i])
    }

    #[test]
    fn the_table_follows_smoltcps_cache_size() {
        // Cargo.toml enables `iface-neighbor-cache-count-16`; the docs promise 16.
        assert_eq!(NEIGHBOURS_MAX, 16);
        assert!(NEIGHBOUR_REFRESH < Duration::from_secs(60));
    }

    #[test]
    fn on_link_sources_teach_themselves_off_link_the_gateway() {
        let alone = Neighbours::new(OUR_MAC, OUR_IP, 24, None);
        let routed = Neighbours::new(OUR_MAC, OUR_IP, 24, Some(GATEWAY));
        let on_link = Ipv4Addr::new(10, 99, 0, 1);
        let off_link = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(alone.neighbour_of(on_link), Some(on_link));
        assert_eq!(routed.neighbour_of(on_link), Some(on_link));
        assert_eq!(alone.neighbour_of(off_link), None);
        assert_eq!(routed.neighbour_of(off_link), Some(GATEWAY));
        // The subnet's broadcast address is nobody's source.
        assert_eq!(alone.neighbour_of(Ipv4Addr::new(10, 99, 0, 255)), None);
        // A /31 has no broadcast address (RFC 3021): both addresses are hosts.
        let point_to_point = Neighbours::new(OUR_MAC, Ipv4Addr::new(10, 99, 0, 0), 31, None);
        let peer = Ipv4Addr::new(10, 99, 0, 1);
        assert_eq!(point_to_point.neighbour_of(peer), Some(peer));
    }

    #[test]
    fn due_when_new_changed_or_stale() {
        let mut table = Neighbours::new(OUR_MAC, OUR_IP, 24, None);
        let (ip, mac) = host(1);
        let t0 = Instant::from_secs(100);
        assert!(table.due(ip, mac, t0));
        table.record(ip, mac, t0);
        assert!(!table.due(ip, mac, t0));
        assert!(!table.due(ip, mac, t0 + NEIGHBOUR_REFRESH - Duration::from_millis(1)));
        assert!(table.due(ip, mac, t0 + NEIGHBOUR_REFRESH));
        assert!(table.due(ip, [2, 0, 0, 0, 9, 9], t0), "a new MAC");
        table.record(ip, [2, 0, 0, 0, 9, 9], t0);
        assert_eq!(table.iter().collect::<Vec<_>>(), [(ip, [2, 0, 0, 0, 9, 9])]);
    }

    #[test]
    fn a_full_table_forgets_the_entry_taught_longest_ago() {
        let mut table = Neighbours::new(OUR_MAC, OUR_IP, 24, None);
        for i in 0..NEIGHBOURS_MAX as u8 {
            let (ip, mac) = host(i);
            table.record(ip, mac, Instant::from_secs(100 + i64::from(i)));
        }
        // Host 0 is taught again, so host 1 is now the oldest.
        let (ip0, mac0) = host(0);
        table.record(ip0, mac0, Instant::from_secs(200));
        assert_eq!(table.iter().count(), NEIGHBOURS_MAX);
        let (ip, mac) = host(NEIGHBOURS_MAX as u8);
        table.record(ip, mac, Instant::from_secs(201));
        assert_eq!(table.iter().count(), NEIGHBOURS_MAX);
        let known: Vec<Ipv4Addr> = table.iter().map(|(ip, _)| ip).collect();
        assert!(!known.contains(&host(1).0), "the oldest was forgotten");
        assert!(known.contains(&ip0) && known.contains(&ip));
        assert!(table.due(host(1).0, host(1).1, Instant::from_secs(201)));
    }
}
