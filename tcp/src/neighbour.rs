//! The stack's neighbours: who may be taught to smoltcp's neighbour cache, and who may not.
//!
//! With several NIC queues the appliance runs one `Stack` per queue, all with the same MAC and
//! address. RSS hashes a client's TCP flow to one queue, but the client's ARP frames carry no
//! ports and land on another (on a real NIC, non-IP frames go to queue 0). A stack that must
//! ARP for a client to send its SYN-ACK therefore never sees the reply. So each stack learns
//! neighbours from the frames of its own flows: the frame's source address if it is on-link,
//! else the configured gateway (an off-link packet reached us through it, so the frame's
//! Ethernet source is the gateway's MAC). smoltcp has no public call to fill its cache, so the
//! stack teaches it by feeding its ingress a synthetic ARP reply "neighbour is-at MAC"
//! addressed to us, which smoltcp's `process_arp` takes into its cache like any other.
//!
//! Learning from any frame let an on-link attacker rebind the gateway with one routed frame,
//! and churn the cache with spoofed sources until the neighbours of live connections were
//! evicted. So this table is the authority over smoltcp's cache (docs/tcp.md, "Neighbours"):
//!
//! - Every fill of smoltcp's cache goes through it: the synthetic replies, and real ARP
//!   frames for our address, which the probe holds back until the table admits them. An
//!   entry the table evicts is removed from smoltcp's cache first (the patch's
//!   `Interface::neighbor_cache_remove`), so smoltcp, whose cache is at least as large as the
//!   table, never evicts on its own choice.
//! - The gateway's MAC is either static (taught at start, refreshed, never changed by a frame)
//!   or learned once and then changed only by an ARP reply to smoltcp's own request, or after
//!   [`NEIGHBOUR_LIFETIME`] without a frame confirming it.
//! - An on-link source is learned from a segment of a live connection (its four-tuple is a
//!   socket in ESTABLISHED or later, which includes the handshake's final ACK), from a SYN that
//!   smoltcp takes, an ICMP echo request, or ARP aimed at us. Only the first may rebind an
//!   entry that has a live connection; the others take a free entry or one without.
//! - Entries whose address has a live connection are pinned: eviction picks only the others,
//!   the one taught longest ago.

use std::net::Ipv4Addr;

use smoltcp::iface::{Interface, PollIngressSingleResult, SocketSet};
use smoltcp::phy::{Device, TxToken};
use smoltcp::time::{Duration, Instant};
use smoltcp::wire::{ArpOperation, ArpPacket, ArpRepr, EthernetAddress, EthernetFrame, IpAddress, Ipv4Cidr};

use crate::arp::{write_neighbour_arp_reply, NEIGHBOUR_ARP_FRAME_BYTES};
use crate::probe::OneFrameDevice;

/// The largest neighbour table a stack may keep (`tcp.neighbours_max`): as many entries as
/// smoltcp's neighbour cache holds (the `iface-neighbor-cache-count-64` feature in
/// Cargo.toml), so the table never claims more entries than smoltcp can keep.
pub const NEIGHBOURS_MAX: usize = smoltcp::config::IFACE_NEIGHBOR_CACHE_COUNT;

/// How long a taught entry is trusted before the next frame from it teaches it again. smoltcp
/// 0.14 keeps an entry [`NEIGHBOUR_LIFETIME`] and extends it on every frame from the same
/// address and MAC; teaching again well before that keeps the gateway, whose frames carry
/// other addresses, resolved.
pub const NEIGHBOUR_REFRESH: Duration = Duration::from_secs(20);

/// smoltcp 0.14's entry lifetime (`neighbor::Cache::ENTRY_LIFETIME`): a learned gateway not
/// confirmed by a frame for this long has expired in smoltcp too, and may be learned anew.
pub const NEIGHBOUR_LIFETIME: Duration = Duration::from_secs(60);

/// An ARP reply from an address is taken as the answer to smoltcp's request for it if it
/// arrives this soon after the request left; smoltcp asks again after 1 s at the earliest
/// (`neighbor::Cache::SILENT_TIME`).
pub(crate) const ARP_ANSWER_WINDOW: Duration = Duration::from_secs(1);

/// An entry taught by a live connection's segment stays pinned this long even before
/// `Stack::service` counts the connection open (the final ACK and the flood that follows it
/// may arrive in one poll).
const CONFIRMED_PIN: Duration = Duration::from_secs(1);

/// What a received frame shows about the neighbour that sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seen {
    /// A SYN that smoltcp takes: it needs the sender to send its SYN-ACK.
    Syn,
    /// An ICMP echo request.
    Echo,
    /// Another TCP segment to the service port, from source port `port`: it teaches only if
    /// its four-tuple is a live connection (the stack checks).
    Segment { port: u16 },
}

/// How much a sighting may change in the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Authority {
    /// A segment of a live connection (ESTABLISHED or later), or a valid cookie ACK: may
    /// rebind an on-link entry, pinned or not.
    Live,
    /// An ARP reply to smoltcp's own request for this address: may rebind any entry but a
    /// static gateway.
    Answer,
    /// A SYN, an echo request, other ARP for us: a new entry only into room that no live
    /// connection holds; rebinds only entries without one.
    Tentative,
    /// Anything else sent to us: only refreshes an entry with the same MAC.
    Refresh,
}

/// What the table decided for one sighting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plan {
    /// Known with this MAC and taught recently: nothing to teach.
    Fresh,
    /// Teach (new, rebind or refresh); for a new entry, evict `victim` first.
    Teach { victim: Option<usize> },
    /// A different MAC for an entry that this sighting may not rebind.
    RebindRefused,
    /// A new neighbour, but every entry is pinned.
    TableFull,
    /// Nothing to learn from this sighting.
    Ignore,
}

/// Counters of the table, folded into `StackCounters`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct NeighbourCounters {
    /// Frames fed to smoltcp's ARP (each may fill its cache): sockets waiting for a
    /// neighbour may have work after one.
    pub(crate) fed: u64,
    pub(crate) learned: u64,
    pub(crate) rebinds_refused: u64,
    pub(crate) evicted: u64,
    pub(crate) table_full: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    ipv4: Ipv4Addr,
    mac: [u8; 6],
    taught_at: Instant,
    /// Last taught or seen by a live connection's segment.
    confirmed_at: Option<Instant>,
}

/// The neighbours taught to one stack's smoltcp interface: exactly the entries smoltcp's cache
/// holds (it may have expired some).
#[derive(Debug)]
pub(crate) struct Neighbours {
    /// At most `max`, allocated at start; unordered.
    entries: Vec<Entry>,
    max: usize,
    our_mac: [u8; 6],
    our_ipv4: Ipv4Addr,
    network: Ipv4Cidr,
    gateway: Option<Ipv4Addr>,
    /// The operator's static gateway MAC (`tcp.gateway_mac`).
    gateway_mac: Option<[u8; 6]>,
    /// The address smoltcp last sent an ARP request for, and when.
    asked: Option<(Ipv4Addr, Instant)>,
    /// When a static gateway MAC is next due to be taught (None: no static MAC).
    static_due_at: Option<Instant>,
    pub(crate) counters: NeighbourCounters,
}

impl Neighbours {
    pub(crate) fn new(
        our_mac: [u8; 6],
        our_ipv4: Ipv4Addr,
        prefix_len: u8,
        gateway: Option<Ipv4Addr>,
        gateway_mac: Option<[u8; 6]>,
        max: usize,
    ) -> Self {
        assert!((1..=NEIGHBOURS_MAX).contains(&max));
        assert!(gateway_mac.is_none() || gateway.is_some());
        Neighbours {
            entries: Vec::with_capacity(max),
            max,
            our_mac,
            our_ipv4,
            network: Ipv4Cidr::new(our_ipv4, prefix_len),
            gateway,
            gateway_mac,
            asked: None,
            static_due_at: gateway_mac.map(|_| Instant::from_micros(i64::MIN)),
            counters: NeighbourCounters::default(),
        }
    }

    /// The neighbour whose MAC a frame from `source` carries: `source` itself if it is a host
    /// of our network, else the gateway if one is configured (the packet was routed to us
    /// through it), else none.
    pub(crate) fn neighbour_of(&self, source: Ipv4Addr) -> Option<Ipv4Addr> {
        if self.network.contains_addr(&source) {
            // RFC 919 §7 / RFC 922: the all-ones host is the network's broadcast address,
            // never a station's source; `broadcast()` is None for /31 and /32 (RFC 3021).
            if self.network.broadcast() == Some(source) || source == self.our_ipv4 {
                return None;
            }
            return Some(source);
        }
        self.gateway
    }

    fn position(&self, ipv4: Ipv4Addr) -> Option<usize> {
        self.entries.iter().position(|entry| entry.ipv4 == ipv4)
    }

    /// The gateway and the neighbours with a live connection (per `live`, or confirmed by a
    /// live segment within `CONFIRMED_PIN`) are never evicted.
    fn pinned(&self, entry: &Entry, now: Instant, live: &impl Fn(Ipv4Addr) -> bool) -> bool {
        Some(entry.ipv4) == self.gateway
            || live(entry.ipv4)
            || entry.confirmed_at.is_some_and(|at| now < at + CONFIRMED_PIN)
    }

    /// True if a segment from on-link `neighbour` with `mac` would change nothing unless its
    /// four-tuple is a live connection: the stack looks the four-tuple up only then.
    pub(crate) fn wants_confirmation(
        &self,
        neighbour: Ipv4Addr,
        mac: [u8; 6],
        now: Instant,
        live: &impl Fn(Ipv4Addr) -> bool,
    ) -> bool {
        if Some(neighbour) == self.gateway {
            return false;
        }
        match self.position(neighbour) {
            Some(index) => {
                let entry = &self.entries[index];
                entry.mac != mac || !self.pinned(entry, now, live)
            }
            None => true,
        }
    }

    /// True if smoltcp asked for `ipv4` within `ARP_ANSWER_WINDOW`.
    fn asked_for(&self, ipv4: Ipv4Addr, now: Instant) -> bool {
        self.asked
            .is_some_and(|(asked, at)| asked == ipv4 && now < at + ARP_ANSWER_WINDOW)
    }

    /// Notes that smoltcp sent an ARP request for `ipv4` at `now`.
    pub(crate) fn note_asked(&mut self, ipv4: Ipv4Addr, now: Instant) {
        self.asked = Some((ipv4, now));
    }

    /// Room for a new entry: None if the table has a free entry, else the unpinned entry
    /// taught longest ago; Err if every entry is pinned.
    fn room(&self, now: Instant, live: &impl Fn(Ipv4Addr) -> bool) -> Result<Option<usize>, ()> {
        if self.entries.len() < self.max {
            return Ok(None);
        }
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, entry)| !self.pinned(entry, now, live))
            .min_by_key(|(_, entry)| entry.taught_at)
            .map(|(index, _)| Some(index))
            .ok_or(())
    }

    /// The table's decision for `(neighbour, mac)` seen with `authority` at `now`.
    fn plan(
        &self,
        neighbour: Ipv4Addr,
        mac: [u8; 6],
        authority: Authority,
        now: Instant,
        live: &impl Fn(Ipv4Addr) -> bool,
    ) -> Plan {
        let existing = self.position(neighbour).map(|index| &self.entries[index]);
        let new_entry = || match self.room(now, live) {
            Ok(victim) => Plan::Teach { victim },
            Err(()) => Plan::TableFull,
        };
        let same_mac = |entry: &Entry| {
            if now >= entry.taught_at + NEIGHBOUR_REFRESH {
                Plan::Teach { victim: None }
            } else {
                Plan::Fresh
            }
        };
        if Some(neighbour) == self.gateway {
            if let Some(gateway_mac) = self.gateway_mac {
                // Static: no frame changes it (an ARP "answer" neither: on-link attackers
                // can answer smoltcp's requests too).
                return match existing {
                    _ if mac != gateway_mac => Plan::RebindRefused,
                    Some(entry) => same_mac(entry),
                    None => new_entry(),
                };
            }
            return match existing {
                // Learned once, from the first routed frame or ARP.
                None => new_entry(),
                Some(entry) if entry.mac == mac => same_mac(entry),
                // Failover: the answer to smoltcp's own request, or the old MAC unconfirmed
                // for as long as smoltcp keeps an entry.
                Some(entry)
                    if authority == Authority::Answer
                        || now >= entry.taught_at + NEIGHBOUR_LIFETIME =>
                {
                    Plan::Teach { victim: None }
                }
                Some(_) => Plan::RebindRefused,
            };
        }
        match existing {
            Some(entry) if entry.mac == mac => same_mac(entry),
            Some(entry) => match authority {
                Authority::Live | Authority::Answer => Plan::Teach { victim: None },
                Authority::Tentative if !self.pinned(entry, now, live) => {
                    Plan::Teach { victim: None }
                }
                _ => Plan::RebindRefused,
            },
            None if authority == Authority::Refresh => Plan::Ignore,
            None => new_entry(),
        }
    }

    /// Carries out `plan` for `(neighbour, mac)`: for a new entry the victim leaves the table
    /// and smoltcp's cache first, then `feed` gives smoltcp the frame that fills its cache
    /// (false if it could not, for want of a transmit buffer). Counts what happened.
    #[allow(clippy::too_many_arguments)]
    fn apply(
        &mut self,
        iface: &mut Interface,
        plan: Plan,
        neighbour: Ipv4Addr,
        mac: [u8; 6],
        authority: Authority,
        now: Instant,
        feed: impl FnOnce(&mut Interface) -> bool,
    ) -> bool {
        match plan {
            Plan::Fresh => {
                if authority == Authority::Live {
                    if let Some(index) = self.position(neighbour) {
                        self.entries[index].confirmed_at = Some(now);
                    }
                }
                return false;
            }
            Plan::RebindRefused => {
                self.counters.rebinds_refused += 1;
                return false;
            }
            Plan::TableFull => {
                self.counters.table_full += 1;
                return false;
            }
            Plan::Ignore => return false,
            Plan::Teach { victim } => {
                if let Some(victim) = victim {
                    let gone = self.entries.swap_remove(victim);
                    iface.neighbor_cache_remove(IpAddress::Ipv4(gone.ipv4));
                    self.counters.evicted += 1;
                }
            }
        }
        if !feed(iface) {
            return false;
        }
        self.counters.fed += 1;
        let confirmed_at = (authority == Authority::Live).then_some(now);
        match self.position(neighbour) {
            Some(index) => {
                let entry = &mut self.entries[index];
                entry.mac = mac;
                entry.taught_at = now;
                entry.confirmed_at = confirmed_at.or(entry.confirmed_at);
            }
            None => {
                assert!(self.entries.len() < self.max, "room was made");
                self.entries.push(Entry {
                    ipv4: neighbour,
                    mac,
                    taught_at: now,
                    confirmed_at,
                });
            }
        }
        self.counters.learned += 1;
        true
    }

    /// Learns from an IPv4 frame sent to us from `source` by `source_mac` with `authority`:
    /// if the table admits the neighbour it shows and it is due, teaches it to `iface` through
    /// one synthetic ARP reply. Returns true if smoltcp was taught. Nothing is taught when
    /// `device` has no transmit buffer free (the ingress call needs a token pair); a later
    /// frame teaches it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn learn(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'_>,
        device: &mut impl Device,
        now: Instant,
        source: Ipv4Addr,
        source_mac: [u8; 6],
        authority: Authority,
        live: &impl Fn(Ipv4Addr) -> bool,
    ) -> bool {
        let Some(neighbour) = self.neighbour_of(source) else {
            return false;
        };
        let plan = self.plan(neighbour, source_mac, authority, now, live);
        let (our_mac, our_ipv4) = (self.our_mac, self.our_ipv4);
        self.apply(iface, plan, neighbour, source_mac, authority, now, |iface| {
            teach(iface, sockets, device, now, our_mac, our_ipv4, neighbour, source_mac)
        })
    }

    /// Keeps a static gateway MAC taught: at start and every `NEIGHBOUR_REFRESH`, with no
    /// frame needed. Cheap when nothing is due.
    pub(crate) fn maintain(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'_>,
        device: &mut impl Device,
        now: Instant,
        live: &impl Fn(Ipv4Addr) -> bool,
    ) {
        let (Some(gateway), Some(mac), Some(due_at)) =
            (self.gateway, self.gateway_mac, self.static_due_at)
        else {
            return;
        };
        if now < due_at {
            return;
        }
        let plan = self.plan(gateway, mac, Authority::Refresh, now, live);
        let (our_mac, our_ipv4) = (self.our_mac, self.our_ipv4);
        let taught = plan == Plan::Fresh
            || self.apply(iface, plan, gateway, mac, Authority::Refresh, now, |iface| {
                teach(iface, sockets, device, now, our_mac, our_ipv4, gateway, mac)
            });
        // Taught (or fresh): due again after the refresh interval; else try the next poll.
        self.static_due_at = Some(match (taught, self.position(gateway)) {
            (true, Some(index)) => self.entries[index].taught_at + NEIGHBOUR_REFRESH,
            _ => now,
        });
    }

    /// Handles an ARP frame whose target is our address, held back by the probe: smoltcp gets
    /// it (and fills its cache, and answers a request) only if the table admits its sender;
    /// a request whose sender is refused is answered here, without learning it.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn arp(
        &mut self,
        iface: &mut Interface,
        sockets: &mut SocketSet<'_>,
        device: &mut impl Device,
        now: Instant,
        frame: &[u8],
        live: &impl Fn(Ipv4Addr) -> bool,
    ) {
        let Some((operation, sender, sender_mac, ethernet_dst)) = parse_arp(frame) else {
            return;
        };
        // smoltcp takes frames to our MAC and to group MACs. What it would not learn from
        // (group or zero sender MACs, off-link or broadcast senders) it would not answer
        // either, so such a frame is dropped here.
        let for_us = ethernet_dst == self.our_mac || !EthernetAddress(ethernet_dst).is_unicast();
        let admissible = for_us
            && EthernetAddress(sender_mac).is_unicast()
            && sender_mac != [0; 6]
            && self.neighbour_of(sender) == Some(sender)
            && self.network.contains_addr(&sender);
        if !admissible {
            return;
        }
        let authority = if operation == ArpOperation::Reply && self.asked_for(sender, now) {
            Authority::Answer
        } else {
            Authority::Tentative
        };
        let plan = self.plan(sender, sender_mac, authority, now, live);
        if plan == Plan::Fresh {
            // Known with this MAC: smoltcp may see it (and answer a request); its fill only
            // extends the entry.
            if feed_frame(iface, sockets, device, now, frame) {
                self.counters.fed += 1;
                let index = self.position(sender).expect("a fresh entry is in the table");
                self.entries[index].taught_at = now;
            }
            return;
        }
        let fed = self.apply(iface, plan, sender, sender_mac, authority, now, |iface| {
            feed_frame(iface, sockets, device, now, frame)
        });
        if authority == Authority::Answer && fed {
            self.asked = None;
        }
        if !fed && operation == ArpOperation::Request && matches!(plan, Plan::RebindRefused | Plan::TableFull) {
            // The requester may still reach us; we just do not take its word for its MAC.
            let mut reply = [0; NEIGHBOUR_ARP_FRAME_BYTES];
            write_neighbour_arp_reply(&mut reply, sender_mac, sender, self.our_mac, self.our_ipv4);
            if let Some(token) = device.transmit(now) {
                token.consume(reply.len(), |buffer| buffer.copy_from_slice(&reply));
            }
        }
    }

    /// The neighbours taught and not forgotten, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Ipv4Addr, [u8; 6])> + '_ {
        self.entries.iter().map(|entry| (entry.ipv4, entry.mac))
    }
}

/// (operation, sender address, sender MAC, Ethernet destination) of an Ethernet/ARP frame.
fn parse_arp(frame: &[u8]) -> Option<(ArpOperation, Ipv4Addr, [u8; 6], [u8; 6])> {
    let ethernet = EthernetFrame::new_checked(frame).ok()?;
    let ArpRepr::EthernetIpv4 {
        operation,
        source_hardware_addr,
        source_protocol_addr,
        ..
    } = ArpRepr::parse(&ArpPacket::new_checked(ethernet.payload()).ok()?).ok()?
    else {
        return None;
    };
    Some((
        operation,
        source_protocol_addr,
        source_hardware_addr.0,
        ethernet.dst_addr().0,
    ))
}

/// Gives smoltcp one frame through its ingress; false if the device lent no token pair.
fn feed_frame(
    iface: &mut Interface,
    sockets: &mut SocketSet<'_>,
    device: &mut impl Device,
    now: Instant,
    frame: &[u8],
) -> bool {
    let mut device = OneFrameDevice {
        inner: device,
        frame: Some(frame),
    };
    iface.poll_ingress_single(now, &mut device, sockets) != PollIngressSingleResult::None
}

/// Teaches smoltcp "`neighbour` is-at `mac`" with a synthetic ARP reply to us.
#[allow(clippy::too_many_arguments)]
fn teach(
    iface: &mut Interface,
    sockets: &mut SocketSet<'_>,
    device: &mut impl Device,
    now: Instant,
    our_mac: [u8; 6],
    our_ipv4: Ipv4Addr,
    neighbour: Ipv4Addr,
    mac: [u8; 6],
) -> bool {
    let mut frame = [0; NEIGHBOUR_ARP_FRAME_BYTES];
    write_neighbour_arp_reply(&mut frame, our_mac, our_ipv4, mac, neighbour);
    feed_frame(iface, sockets, device, now, &frame)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const OUR_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
    const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 254);
    const GATEWAY_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0xfe];
    const OTHER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x66];

    fn host(i: u8) -> (Ipv4Addr, [u8; 6]) {
        (Ipv4Addr::new(10, 99, 0, 10 + i), [2, 0, 0, 0, 1, i])
    }

    fn nobody(_: Ipv4Addr) -> bool {
        false
    }

    /// Records `(ipv4, mac)` as the table would after teaching it.
    fn record(table: &mut Neighbours, ipv4: Ipv4Addr, mac: [u8; 6], now: Instant) {
        let plan = table.plan(ipv4, mac, Authority::Tentative, now, &nobody);
        assert!(matches!(plan, Plan::Teach { .. }), "{plan:?}");
        if let Plan::Teach { victim: Some(victim) } = plan {
            table.entries.swap_remove(victim);
        }
        match table.position(ipv4) {
            Some(index) => table.entries[index] = Entry { ipv4, mac, taught_at: now, confirmed_at: None },
            None => table.entries.push(Entry { ipv4, mac, taught_at: now, confirmed_at: None }),
        }
    }

    #[test]
    fn the_table_follows_smoltcps_cache_size() {
        // Cargo.toml enables `iface-neighbor-cache-count-64`; the docs promise 64.
        assert_eq!(NEIGHBOURS_MAX, 64);
        assert!(NEIGHBOUR_REFRESH < NEIGHBOUR_LIFETIME);
    }

    #[test]
    fn on_link_sources_teach_themselves_off_link_the_gateway() {
        let alone = Neighbours::new(OUR_MAC, OUR_IP, 24, None, None, 16);
        let routed = Neighbours::new(OUR_MAC, OUR_IP, 24, Some(GATEWAY), None, 16);
        let on_link = Ipv4Addr::new(10, 99, 0, 1);
        let off_link = Ipv4Addr::new(192, 0, 2, 7);
        assert_eq!(alone.neighbour_of(on_link), Some(on_link));
        assert_eq!(routed.neighbour_of(on_link), Some(on_link));
        assert_eq!(alone.neighbour_of(off_link), None);
        assert_eq!(routed.neighbour_of(off_link), Some(GATEWAY));
        // The subnet's broadcast address is nobody's source.
        assert_eq!(alone.neighbour_of(Ipv4Addr::new(10, 99, 0, 255)), None);
        // A /31 has no broadcast address (RFC 3021): both addresses are hosts.
        let point_to_point = Neighbours::new(OUR_MAC, Ipv4Addr::new(10, 99, 0, 0), 31, None, None, 16);
        let peer = Ipv4Addr::new(10, 99, 0, 1);
        assert_eq!(point_to_point.neighbour_of(peer), Some(peer));
    }

    #[test]
    fn due_when_new_changed_or_stale() {
        let mut table = Neighbours::new(OUR_MAC, OUR_IP, 24, None, None, 16);
        let (ip, mac) = host(1);
        let t0 = Instant::from_secs(100);
        let plan = |table: &Neighbours, mac, at| table.plan(ip, mac, Authority::Tentative, at, &nobody);
        assert_eq!(plan(&table, mac, t0), Plan::Teach { victim: None });
        record(&mut table, ip, mac, t0);
        assert_eq!(plan(&table, mac, t0), Plan::Fresh);
        assert_eq!(plan(&table, mac, t0 + NEIGHBOUR_REFRESH - Duration::from_millis(1)), Plan::Fresh);
        assert_eq!(plan(&table, mac, t0 + NEIGHBOUR_REFRESH), Plan::Teach { victim: None });
        assert_eq!(plan(&table, OTHER_MAC, t0), Plan::Teach { victim: None }, "a new MAC, no live connection");
        // With a live connection only the connection's own segments (or an answer to our
        // request) may move it.
        let live = |ipv4: Ipv4Addr| ipv4 == ip;
        assert_eq!(table.plan(ip, OTHER_MAC, Authority::Tentative, t0, &live), Plan::RebindRefused);
        assert_eq!(table.plan(ip, OTHER_MAC, Authority::Refresh, t0, &live), Plan::RebindRefused);
        assert_eq!(table.plan(ip, OTHER_MAC, Authority::Live, t0, &live), Plan::Teach { victim: None });
        assert_eq!(table.plan(ip, OTHER_MAC, Authority::Answer, t0, &live), Plan::Teach { victim: None });
        // A segment that is no live connection's teaches no new neighbour.
        assert_eq!(table.plan(host(2).0, host(2).1, Authority::Refresh, t0, &nobody), Plan::Ignore);
    }

    #[test]
    fn a_full_table_evicts_the_oldest_unpinned_entry() {
        let mut table = Neighbours::new(OUR_MAC, OUR_IP, 24, None, None, 16);
        for i in 0..16 {
            let (ip, mac) = host(i);
            record(&mut table, ip, mac, Instant::from_secs(100 + i64::from(i)));
        }
        let now = Instant::from_secs(200);
        let (ip, mac) = host(16);
        let victim_of = |plan| match plan {
            Plan::Teach { victim: Some(victim) } => table.entries[victim].ipv4,
            other => panic!("{other:?}"),
        };
        assert_eq!(victim_of(table.plan(ip, mac, Authority::Tentative, now, &nobody)), host(0).0);
        // Host 0 and 1 have live connections: host 2 goes.
        let live = |ipv4: Ipv4Addr| ipv4 == host(0).0 || ipv4 == host(1).0;
        assert_eq!(victim_of(table.plan(ip, mac, Authority::Tentative, now, &live)), host(2).0);
        // Everyone has one: nothing is evicted, not even for a live connection's segment.
        let everyone = |_: Ipv4Addr| true;
        assert_eq!(table.plan(ip, mac, Authority::Tentative, now, &everyone), Plan::TableFull);
        assert_eq!(table.plan(ip, mac, Authority::Live, now, &everyone), Plan::TableFull);
    }

    #[test]
    fn the_gateway_is_learned_once_and_rebound_only_by_an_answer_or_after_expiry() {
        let mut table = Neighbours::new(OUR_MAC, OUR_IP, 24, Some(GATEWAY), None, 16);
        let t0 = Instant::from_secs(100);
        record(&mut table, GATEWAY, GATEWAY_MAC, t0);
        for authority in [Authority::Live, Authority::Tentative, Authority::Refresh] {
            assert_eq!(table.plan(GATEWAY, OTHER_MAC, authority, t0, &nobody), Plan::RebindRefused);
        }
        assert_eq!(table.plan(GATEWAY, OTHER_MAC, Authority::Answer, t0, &nobody), Plan::Teach { victim: None });
        let later = t0 + NEIGHBOUR_LIFETIME;
        assert_eq!(table.plan(GATEWAY, OTHER_MAC, Authority::Tentative, later, &nobody), Plan::Teach { victim: None });
        // The gateway is never a victim.
        let mut full = Neighbours::new(OUR_MAC, OUR_IP, 24, Some(GATEWAY), None, 2);
        record(&mut full, GATEWAY, GATEWAY_MAC, t0);
        record(&mut full, host(1).0, host(1).1, t0 + Duration::from_secs(1));
        let Plan::Teach { victim: Some(victim) } = full.plan(host(2).0, host(2).1, Authority::Tentative, later, &nobody) else {
            panic!("room expected");
        };
        assert_eq!(full.entries[victim].ipv4, host(1).0);
    }

    #[test]
    fn a_static_gateway_mac_is_never_rebound() {
        let table = Neighbours::new(OUR_MAC, OUR_IP, 24, Some(GATEWAY), Some(GATEWAY_MAC), 16);
        let later = Instant::from_secs(1_000);
        for authority in [Authority::Live, Authority::Answer, Authority::Tentative, Authority::Refresh] {
            assert_eq!(table.plan(GATEWAY, OTHER_MAC, authority, later, &nobody), Plan::RebindRefused);
        }
        assert_eq!(table.plan(GATEWAY, GATEWAY_MAC, Authority::Refresh, later, &nobody), Plan::Teach { victim: None });
    }
}
