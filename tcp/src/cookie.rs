//! SYN cookies (RFC 4987 §3.6): answering a SYN without keeping any state for it.
//!
//! Under a SYN flood, every SYN that reaches smoltcp takes a listening socket until its
//! handshake times out, and the flood's spoofed sources never complete it. With cookies the
//! stack answers the SYN itself with a SYN-ACK whose sequence number encodes everything the
//! connection needs, and forgets it. Only a client that receives the SYN-ACK (so owns its
//! address) can send the ACK that carries the cookie back; then the stack checks it, rebuilds
//! the SYN and hands smoltcp the SYN and the ACK together, with the cookie as the ISN. No
//! socket is taken before that ACK.
//!
//! # The cookie
//!
//! ```text
//!  31 30 29 28 27    24 23                                   0
//! +-----+-----+--------+--------------------------------------+
//! |  t  | mss | wscale |  SipHash-2-4(key_t, four-tuple,      |
//! |     |     |        |    client ISN, t, mss, wscale) & 2^24-1 |
//! +-----+-----+--------+--------------------------------------+
//! ```
//!
//! - `t`: the low two bits of the time slot (`SLOT_SECS` long) the cookie was made in. A cookie
//!   is accepted in its own slot and the next one, so it lives between `SLOT_SECS` and twice
//!   that (Linux: up to 2 minutes).
//! - `mss`: an index in [`MSS_TABLE`], the largest entry not above the client's MSS (RFC 9293
//!   §3.7.1: 536 when the SYN carries none).
//! - `wscale`: the client's window scale shift (RFC 7323 §2.2: 0 to 14), or 15 when its SYN
//!   offered none.
//! - 24 bits of MAC: a blind attacker's ACK is accepted with probability 2^-24 per guess.
//!
//! SACK-permitted and timestamps do not survive the cookie (as on Linux without timestamps):
//! a connection opened from a cookie runs without them.
//!
//! # Secrets
//!
//! The key of slot `s` is `SipHash(secret, s)` for the stack's 128-bit secret (from the OS at
//! every start, one per queue): each slot signs with a fresh key, and a cookie cannot outlive
//! its two slots.

use smoltcp::wire::IpEndpoint;

use crate::isn::{endpoint_bytes, siphash24};

/// Length of a time slot; a cookie is valid for one to two slots.
pub const SLOT_SECS: u64 = 64;

/// MSS values a cookie can carry (the table Linux uses for IPv4, net/ipv4/syncookies.c).
pub const MSS_TABLE: [u16; 4] = [536, 1300, 1440, 1460];

/// `wscale` field value for a SYN that offered no window scaling.
const NO_WSCALE: u8 = 15;

/// What a valid cookie tells about the client's SYN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CookieSyn {
    /// The client's MSS, rounded down to a [`MSS_TABLE`] entry.
    pub(crate) mss: u16,
    /// The client's window scale shift, None if its SYN offered none.
    pub(crate) window_scale: Option<u8>,
}

/// Makes and checks cookies for one stack.
#[derive(Debug)]
pub(crate) struct Cookies {
    secret: [u64; 2],
    /// The current slot and its key, cached; refreshed when the clock enters a new slot.
    slot: u64,
    key: [u64; 2],
    /// The previous slot's key.
    key_previous: [u64; 2],
}

impl Cookies {
    pub(crate) fn new(secret: [u64; 2]) -> Self {
        Cookies {
            secret,
            slot: 0,
            key: slot_key(secret, 0),
            key_previous: slot_key(secret, u64::MAX),
        }
    }

    /// Moves to the slot of `now_secs` (seconds since any fixed origin), rotating the keys.
    fn advance(&mut self, now_secs: u64) {
        let slot = now_secs / SLOT_SECS;
        if slot == self.slot {
            return;
        }
        self.key_previous = if slot == self.slot + 1 {
            self.key
        } else {
            slot_key(self.secret, slot.wrapping_sub(1))
        };
        self.key = slot_key(self.secret, slot);
        self.slot = slot;
    }

    /// The cookie (our ISN) for a SYN from `remote` to `local` with sequence number
    /// `client_isn`, MSS option `mss` and window scale option `window_scale`.
    pub(crate) fn make(
        &mut self,
        now_secs: u64,
        local: IpEndpoint,
        remote: IpEndpoint,
        client_isn: u32,
        mss: Option<u16>,
        window_scale: Option<u8>,
    ) -> u32 {
        self.advance(now_secs);
        // RFC 9293 §3.7.1: without the option the peer's MSS is 536; a zero MSS counts as absent.
        let mss = mss.filter(|&mss| mss != 0).unwrap_or(536);
        let mss_index = MSS_TABLE.iter().rposition(|&entry| entry <= mss).unwrap_or(0) as u8;
        // RFC 7323 §2.3: a shift above 14 is used as 14.
        let wscale = window_scale.map_or(NO_WSCALE, |shift| shift.min(14));
        let fields = ((self.slot & 3) as u8) << 6 | mss_index << 4 | wscale;
        (u32::from(fields) << 24) | mac(self.key, local, remote, client_isn, fields)
    }

    /// Checks `cookie`, acknowledged by a segment from `remote` to `local` whose sequence
    /// number says the client's ISN was `client_isn`. Some if it was made by this stack, for
    /// this connection, in the current or the previous slot.
    pub(crate) fn check(
        &mut self,
        now_secs: u64,
        local: IpEndpoint,
        remote: IpEndpoint,
        client_isn: u32,
        cookie: u32,
    ) -> Option<CookieSyn> {
        self.advance(now_secs);
        let fields = (cookie >> 24) as u8;
        let t = u64::from(fields >> 6);
        let key = if t == self.slot & 3 {
            self.key
        } else if t == self.slot.wrapping_sub(1) & 3 {
            self.key_previous
        } else {
            return None;
        };
        if mac(key, local, remote, client_isn, fields) != cookie & 0x00ff_ffff {
            return None;
        }
        let wscale = fields & 0x0f;
        if wscale > 14 && wscale != NO_WSCALE {
            return None;
        }
        Some(CookieSyn {
            mss: MSS_TABLE[usize::from((fields >> 4) & 3)],
            window_scale: (wscale != NO_WSCALE).then_some(wscale),
        })
    }
}

/// When the stack answers SYNs with cookies (`tcp.syn_cookies`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SynCookieMode {
    /// Never: every SYN goes to a listening socket (and a flood can fill them).
    Off,
    /// When the handshakes waiting for their final ACK reach `tcp.syn_backlog`: a quiet
    /// server keeps full TCP options (SACK), a flooded one keeps no state per SYN.
    #[default]
    Auto,
    /// For every SYN.
    Always,
}

/// What the gate did with a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Not the gate's: smoltcp processes it.
    Pass,
    /// A SYN answered with a cookie, or an ACK carrying a valid cookie kept aside to open
    /// its connection after this ingress call: smoltcp must not see it.
    Taken,
}

/// A SYN-ACK carrying a cookie: Ethernet (14) + IPv4 (20) + TCP (20) + MSS (4) + window
/// scale (3, padded to 4) = 62 bytes.
pub(crate) const SYN_ACK_FRAME_BYTES_MAX: usize = 14 + 20 + 20 + 8;

/// Peers remembered as having had a SYN passed to smoltcp (a few hundred bytes each at most
/// 4,096: 200 KiB).
pub(crate) const PASSED_MAX: usize = 4096;

/// Counters of the gate, folded into `StackCounters`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GateCounters {
    pub(crate) cookies_sent: u64,
    pub(crate) cookies_accepted: u64,
    /// SYN-ACKs with a cookie that found no transmit buffer (the client retransmits its SYN).
    pub(crate) cookies_unsent: u64,
}

/// The stack's front door for SYNs and the ACKs of cookies: sits in the receive path ahead of
/// smoltcp, sees each frame once and either passes it or takes it.
#[derive(Debug)]
pub(crate) struct Gate {
    pub(crate) cookies: Cookies,
    pub(crate) mode: SynCookieMode,
    /// Auto mode engages at this many handshakes pending.
    pub(crate) backlog: usize,
    /// Handshakes pending in smoltcp: the count at the last service, plus the SYNs passed
    /// since (each may have taken a listening socket).
    pub(crate) pending: usize,
    /// The slot in which a cookie was last made: ACKs are checked for cookies only within
    /// two slots of it (older cookies cannot be valid).
    pub(crate) last_cookie_slot: Option<u64>,
    /// Remote endpoints of connections opened from a cookie and not yet released: their
    /// segments carry the cookie in their ACK field until we send data, and must go to
    /// their socket, not open another.
    pub(crate) opened: std::collections::HashSet<IpEndpoint>,
    /// The SYN-ACK made during the current ingress call, to transmit after it (one frame per
    /// ingress call, so at most one).
    pub(crate) syn_ack: Option<([u8; SYN_ACK_FRAME_BYTES_MAX], usize)>,
    /// ACK frames with a valid cookie, copied, to open their connections after the ingress
    /// call (at most one per ingress call: the stack drains it after each).
    pub(crate) accepted: Option<(Vec<u8>, CookieSyn)>,
    pub(crate) counters: GateCounters,
    /// Peers whose SYN was passed to smoltcp, and when: at most [`PASSED_MAX`].
    pub(crate) passed: std::collections::HashMap<IpEndpoint, smoltcp::time::Instant>,
    pub(crate) handshake_timeout: smoltcp::time::Duration,
    pub(crate) now: smoltcp::time::Instant,
    pub(crate) local: IpEndpoint,
    pub(crate) mac: [u8; 6],
    /// Our MSS and window as smoltcp would announce them in its own SYN-ACK.
    pub(crate) mss: u16,
    pub(crate) window: u16,
    pub(crate) window_shift: u8,
    pub(crate) now_secs: u64,
}

impl Gate {
    /// Looks at one received Ethernet frame. Only TCP to the service port, SYN or ACK
    /// without SYN/RST, is considered; everything else passes untouched.
    pub(crate) fn inspect(&mut self, frame: &[u8]) -> Verdict {
        use smoltcp::phy::ChecksumCapabilities;
        use smoltcp::wire::{
            EthernetFrame, EthernetProtocol, IpAddress, IpProtocol, Ipv4Packet, TcpPacket,
            TcpRepr,
        };
        let Ok(ethernet) = EthernetFrame::new_checked(frame) else {
            return Verdict::Pass;
        };
        if ethernet.ethertype() != EthernetProtocol::Ipv4 {
            return Verdict::Pass;
        }
        let Ok(ip) = Ipv4Packet::new_checked(ethernet.payload()) else {
            return Verdict::Pass;
        };
        let IpAddress::Ipv4(local_addr) = self.local.addr;
        if ip.next_header() != IpProtocol::Tcp
            || ip.dst_addr() != local_addr
            || ip.more_frags()
            || ip.frag_offset() != 0
        {
            return Verdict::Pass;
        }
        let Ok(tcp) = TcpPacket::new_checked(ip.payload()) else {
            return Verdict::Pass;
        };
        if tcp.dst_port() != self.local.port || tcp.rst() || tcp.fin() {
            return Verdict::Pass;
        }
        let remote = IpEndpoint::new(IpAddress::Ipv4(ip.src_addr()), tcp.src_port());
        let syn_only = tcp.syn() && !tcp.ack();
        let ack_only = tcp.ack() && !tcp.syn();
        if syn_only {
            if !self.engaged() {
                self.pending += 1;
                self.remember_passed(remote);
                return Verdict::Pass;
            }
            // A retransmission of a SYN smoltcp took before cookies engaged goes to smoltcp
            // again: answered with a cookie, the client would hold two SYN-ACKs with different
            // ISNs, and acknowledging the cookie's would meet smoltcp's handshake and be reset.
            if self.passed.get(&remote).is_some_and(|&at| self.now < at + self.handshake_timeout) {
                return Verdict::Pass;
            }
            // A frame smoltcp would drop (bad checksums, source not unicast) gets no answer
            // from us either; smoltcp can drop it.
            if !ip.verify_checksum() || !unicast_source(ip.src_addr()) {
                return Verdict::Pass;
            }
            let caps = ChecksumCapabilities::default();
            let Ok(repr) = TcpRepr::parse(&tcp, &remote.addr, &self.local.addr, &caps) else {
                return Verdict::Pass;
            };
            let client_isn = repr.seq_number.0 as u32;
            let cookie = self.cookies.make(
                self.now_secs,
                self.local,
                remote,
                client_isn,
                repr.max_seg_size,
                repr.window_scale,
            );
            self.last_cookie_slot = Some(self.now_secs / SLOT_SECS);
            let mut out = [0u8; SYN_ACK_FRAME_BYTES_MAX];
            let len = self.write_syn_ack(
                &mut out,
                ethernet.src_addr().0,
                remote,
                cookie,
                client_isn,
                repr.window_scale.is_some(),
            );
            self.syn_ack = Some((out, len));
            self.counters.cookies_sent += 1;
            return Verdict::Taken;
        }
        if ack_only && self.accepted.is_none() && self.cookies_recent() && !self.opened.contains(&remote)
        {
            let client_isn = tcp.seq_number().0.wrapping_sub(1) as u32;
            let cookie = tcp.ack_number().0.wrapping_sub(1) as u32;
            let Some(syn) = self.cookies.check(self.now_secs, self.local, remote, client_isn, cookie)
            else {
                return Verdict::Pass;
            };
            let caps = ChecksumCapabilities::default();
            if !ip.verify_checksum()
                || TcpRepr::parse(&tcp, &remote.addr, &self.local.addr, &caps).is_err()
            {
                return Verdict::Pass;
            }
            self.accepted = Some((frame.to_vec(), syn));
            return Verdict::Taken;
        }
        Verdict::Pass
    }

    /// Notes a SYN passed to smoltcp. The table is bounded: when full, entries older than the
    /// handshake timeout go; if it is still full the SYN is not noted (its retransmission, if
    /// cookies engage meanwhile, is answered with a cookie).
    fn remember_passed(&mut self, remote: IpEndpoint) {
        if self.passed.len() >= PASSED_MAX && !self.passed.contains_key(&remote) {
            let (now, timeout) = (self.now, self.handshake_timeout);
            self.passed.retain(|_, &mut at| now < at + timeout);
            if self.passed.len() >= PASSED_MAX {
                return;
            }
        }
        self.passed.insert(remote, self.now);
    }

    fn engaged(&self) -> bool {
        match self.mode {
            SynCookieMode::Off => false,
            SynCookieMode::Always => true,
            SynCookieMode::Auto => self.pending >= self.backlog,
        }
    }

    fn cookies_recent(&self) -> bool {
        self.last_cookie_slot
            .is_some_and(|slot| self.now_secs / SLOT_SECS <= slot + 1)
    }

    /// Writes our SYN-ACK to `remote` (at `remote_mac`) into `out`; returns its length.
    fn write_syn_ack(
        &self,
        out: &mut [u8; SYN_ACK_FRAME_BYTES_MAX],
        remote_mac: [u8; 6],
        remote: IpEndpoint,
        cookie: u32,
        client_isn: u32,
        window_scale: bool,
    ) -> usize {
        use smoltcp::wire::TcpSeqNumber;
        let repr = smoltcp::wire::TcpRepr {
            src_port: self.local.port,
            dst_port: remote.port,
            control: smoltcp::wire::TcpControl::Syn,
            seq_number: TcpSeqNumber(cookie as i32),
            ack_number: Some(TcpSeqNumber(client_isn.wrapping_add(1) as i32)),
            window_len: self.window,
            // RFC 7323 §2.2: our shift only if the client offered scaling.
            window_scale: window_scale.then_some(self.window_shift),
            max_seg_size: Some(self.mss),
            sack_permitted: false,
            sack_ranges: [None; 3],
            timestamp: None,
            payload: &[],
        };
        write_ipv4_tcp(out, self.mac, remote_mac, self.local, remote, &repr)
    }
}

/// Writes an Ethernet/IPv4/TCP frame carrying `repr` from `src` (at `src_mac`) to `dst` (at
/// `dst_mac`) into `out`, checksums computed; returns its length.
pub(crate) fn write_ipv4_tcp(
    out: &mut [u8],
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: IpEndpoint,
    dst: IpEndpoint,
    repr: &smoltcp::wire::TcpRepr<'_>,
) -> usize {
    use smoltcp::phy::ChecksumCapabilities;
    use smoltcp::wire::{
        EthernetAddress, EthernetFrame, EthernetProtocol, EthernetRepr, IpAddress, IpProtocol,
        Ipv4Packet, Ipv4Repr, TcpPacket,
    };
    let (IpAddress::Ipv4(src_addr), IpAddress::Ipv4(dst_addr)) = (src.addr, dst.addr);
    let ip_repr = Ipv4Repr {
        src_addr,
        dst_addr,
        next_header: IpProtocol::Tcp,
        payload_len: repr.buffer_len(),
        hop_limit: 64,
    };
    let len = 14 + ip_repr.buffer_len() + repr.buffer_len();
    let out = &mut out[..len];
    let caps = ChecksumCapabilities::default();
    let mut ethernet = EthernetFrame::new_unchecked(&mut *out);
    EthernetRepr {
        src_addr: EthernetAddress(src_mac),
        dst_addr: EthernetAddress(dst_mac),
        ethertype: EthernetProtocol::Ipv4,
    }
    .emit(&mut ethernet);
    let mut ip = Ipv4Packet::new_unchecked(ethernet.payload_mut());
    ip_repr.emit(&mut ip, &caps);
    repr.emit(
        &mut TcpPacket::new_unchecked(ip.payload_mut()),
        &src.addr,
        &dst.addr,
        &caps,
    );
    len
}

/// RFC 1122 §3.2.1.3: a source that is broadcast, multicast, 0.0.0.0 or loopback sends no SYN.
fn unicast_source(addr: std::net::Ipv4Addr) -> bool {
    !(addr.is_broadcast() || addr.is_multicast() || addr.is_unspecified() || addr.is_loopback())
}

fn slot_key(secret: [u64; 2], slot: u64) -> [u64; 2] {
    let mut input = [0u8; 9];
    input[..8].copy_from_slice(&slot.to_le_bytes());
    let first = siphash24(secret, &input);
    input[8] = 1;
    [first, siphash24(secret, &input)]
}

fn mac(key: [u64; 2], local: IpEndpoint, remote: IpEndpoint, client_isn: u32, fields: u8) -> u32 {
    let mut input = [0u8; 17];
    input[..6].copy_from_slice(&endpoint_bytes(local));
    input[6..12].copy_from_slice(&endpoint_bytes(remote));
    input[12..16].copy_from_slice(&client_isn.to_be_bytes());
    input[16] = fields;
    (siphash24(key, &input) as u32) & 0x00ff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::wire::IpAddress;
    use std::net::Ipv4Addr;

    fn endpoint(last: u8, port: u16) -> IpEndpoint {
        IpEndpoint::new(IpAddress::Ipv4(Ipv4Addr::new(10, 99, 0, last)), port)
    }

    const T0: u64 = 1_000 * SLOT_SECS;

    #[test]
    fn a_cookie_carries_mss_and_window_scale_back() {
        let mut cookies = Cookies::new([3, 4]);
        let (local, remote) = (endpoint(2, 8443), endpoint(1, 40_000));
        for (mss, wscale, expect_mss) in [
            (Some(1460), Some(7), 1460),
            (Some(1400), None, 1300),
            (None, Some(0), 536),
            (Some(9000), Some(14), 1460),
            (Some(100), Some(20), 536),
        ] {
            let cookie = cookies.make(T0, local, remote, 77, mss, wscale);
            let syn = cookies.check(T0 + 1, local, remote, 77, cookie).expect("valid");
            assert_eq!(syn.mss, expect_mss);
            assert_eq!(syn.window_scale, wscale.map(|shift| shift.min(14)));
        }
    }

    #[test]
    fn a_cookie_is_bound_to_its_connection_and_its_time() {
        let mut cookies = Cookies::new([3, 4]);
        let (local, remote) = (endpoint(2, 8443), endpoint(1, 40_000));
        let cookie = cookies.make(T0, local, remote, 77, Some(1460), Some(7));
        assert!(cookies.check(T0, local, remote, 77, cookie).is_some());
        assert!(cookies.check(T0 + 2 * SLOT_SECS - 1, local, remote, 77, cookie).is_some(), "the next slot");
        assert!(cookies.check(T0 + 2 * SLOT_SECS, local, remote, 77, cookie).is_none(), "two slots on");
        let mut cookies = Cookies::new([3, 4]);
        assert!(cookies.check(T0, local, endpoint(1, 40_001), 77, cookie).is_none(), "another port");
        assert!(cookies.check(T0, local, endpoint(3, 40_000), 77, cookie).is_none(), "another address");
        assert!(cookies.check(T0, local, remote, 78, cookie).is_none(), "another client ISN");
        assert!(cookies.check(T0, local, remote, 77, cookie ^ 1).is_none(), "a flipped MAC bit");
        assert!(cookies.check(T0, local, remote, 77, cookie ^ (1 << 28)).is_none(), "another MSS");
        let mut other = Cookies::new([3, 5]);
        assert!(other.check(T0, local, remote, 77, cookie).is_none(), "another secret");
    }

    #[test]
    fn guessed_cookies_are_rejected() {
        let mut cookies = Cookies::new([9, 9]);
        let (local, remote) = (endpoint(2, 8443), endpoint(1, 40_000));
        let accepted = (0..200_000u32)
            .filter(|guess| cookies.check(T0, local, remote, 1, guess.wrapping_mul(2_654_435_761)).is_some())
            .count();
        // 2^-24 per guess with a matching t: 200,000 guesses expect ~0.006.
        assert_eq!(accepted, 0);
    }
}
