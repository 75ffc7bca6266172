//! The stack's configuration and its validation.
//!
//! Every bound the stack works under is a field here, checked once by [`StackConfig::validate`]
//! before anything is allocated (TigerBeetle's TIGER_STYLE: limits on everything, checked at
//! startup).

use crate::cookie::SynCookieMode;
use crate::neighbour::NEIGHBOURS_MAX;
use std::net::Ipv4Addr;

/// The largest TCP buffer the stack accepts, in bytes: 256 KiB.
///
/// Above 65535 bytes smoltcp scales its window (RFC 7323 §2.2, shift 3 at 256 KiB). Unpatched,
/// it could then shrink its own right window edge by rounding and refuse every later ACK, a
/// stall the carried patch fixes (third_party/smoltcp/PANTERA.md, section 3). 256 KiB is the
/// size tested since; larger windows do worse under loss in smoltcp (1 MiB windows ran into
/// the idle timeout at 2 % simulated loss, 256 KiB ones did not), and each slot of the table
/// allocated at start holds rx + tx: 512 KiB at this bound, 544 MiB for the default
/// 1024 + 64 slots. See docs/tcp.md.
pub const TCP_BUFFER_BYTES_MAX: usize = 256 * 1024;

/// The smallest TCP buffer the stack accepts: one full-size segment at the Ethernet MTU
/// (1500 - 20 IPv4 - 20 TCP), so a buffer can always hold what the peer may send at once.
pub const TCP_BUFFER_BYTES_MIN: usize = 1460;

/// The default TCP buffer, each direction: 16 KiB.
///
/// The API is request/response: a request or a response is a few hundred bytes, and only a
/// batch body (up to 8 MiB) or its reply is larger. A buffer is the bound on what a connection
/// can make the stack hold, so its size times `connections_max` is memory the host must be able
/// to give: 32 KiB per connection is 320 MiB for 10,000 connections, where 64 KiB buffers
/// would be 1.25 GiB. An 8 MiB batch body uploaded over one connection on the lab link took
/// about as long with 16 KiB windows as with 64 KiB ones (8 KiB ones were 1.3-1.7x slower);
/// see docs/tcp.md and docs/PERFORMANCE.md.
pub const TCP_BUFFER_BYTES_DEFAULT: usize = 16 * 1024;

/// `connections_per_source_max` by default: half the default table, so one address can never
/// hold more than half of it.
pub const CONNECTIONS_PER_SOURCE_MAX_DEFAULT: usize = 512;

/// An upper bound on the socket table, so that a typo cannot make the stack allocate
/// terabytes at start (each slot holds rx + tx buffers).
pub const SOCKETS_MAX: usize = 1 << 20;

/// Configuration of one [`crate::Stack`] (one per NIC queue).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackConfig {
    /// Our Ethernet address; must be unicast.
    pub mac: [u8; 6],
    /// Our IPv4 address on the link.
    pub ipv4: Ipv4Addr,
    /// Prefix length of the link's subnet, 1..=32.
    pub prefix_len: u8,
    /// Default route, if clients may be off-link. Must be inside our subnet.
    pub gateway: Option<Ipv4Addr>,
    /// The gateway's MAC, if the operator pins it: taught at start, kept fresh, and never
    /// changed by any frame (docs/tcp.md, "Neighbours"). Needs `gateway`; must be unicast.
    /// None (the default): learned once from ARP or the first routed frame, and not rebound
    /// while it is in use.
    pub gateway_mac: Option<[u8; 6]>,
    /// Neighbours (the gateway and on-link peers) the stack keeps resolved at once,
    /// 2..=[`NEIGHBOURS_MAX`]. Entries with a live connection are never evicted; only the
    /// others make room. Default [`NEIGHBOURS_MAX`] (64).
    pub neighbours_max: usize,
    /// The service port; SYNs to any other port get RST.
    pub port: u16,
    /// Sockets kept in LISTEN: smoltcp has no backlog, so this is the number of handshakes
    /// that can arrive between two [`crate::Stack::service`] calls. Default 64.
    pub listen_sockets: usize,
    /// Connections (SYN-RECEIVED through LAST-ACK) at most. Default 1024. The socket table
    /// holds `connections_max + listen_sockets` sockets, allocated at start.
    pub connections_max: usize,
    /// Open connections from one source address. A connection past it is reset as soon as
    /// its handshake completes (counted `refused_per_source`), so one address that opens
    /// connections and never speaks cannot take every slot from the others. Default 512; a
    /// value above `connections_max` means `connections_max`.
    pub connections_per_source_max: usize,
    /// Receive buffer per socket, TCP_BUFFER_BYTES_MIN..=TCP_BUFFER_BYTES_MAX. Default 16384
    /// ([`TCP_BUFFER_BYTES_DEFAULT`]).
    pub rx_buffer_bytes: usize,
    /// Transmit buffer per socket, TCP_BUFFER_BYTES_MIN..=TCP_BUFFER_BYTES_MAX. Default 16384.
    pub tx_buffer_bytes: usize,
    /// A connection with no data moved in either direction for this long is aborted (RST).
    /// Default 60_000.
    pub idle_timeout_ms: u64,
    /// A handshake not completed within this time is aborted, freeing its slot: bounds what
    /// a SYN flood can hold. Default 10_000, which covers the initial SYN-ACK and three
    /// retransmissions at the RFC 6298 §2 initial RTO of 1 s (1 + 2 + 4 s).
    pub handshake_timeout_ms: u64,
    /// TCP keep-alive interval (RFC 1122 §4.2.3.6), None to send none. Default None.
    pub keep_alive_ms: Option<u64>,
    /// Frames taken from the device per [`crate::Stack::poll`]; the rest wait for the next
    /// turn so one busy queue cannot starve the worker's other work. Default 64.
    pub ingress_frames_per_poll_max: usize,
    /// Egress rounds per poll; one round lets every socket emit at most one segment.
    /// Default 64.
    pub egress_rounds_per_poll_max: usize,
    /// Nagle's algorithm (RFC 896). Off by default: the TLS layer writes whole records, and
    /// Nagle with the peer's delayed ACK (RFC 1122 §4.2.3.2) delays the last segment of a
    /// response by up to one delayed-ACK time.
    pub nagle: bool,
    /// Seed for smoltcp's PRNG (ephemeral ports; the ISNs come from `secret`). The caller
    /// passes randomness in (sans-IO); use a fresh random value per start.
    pub random_seed: u64,
    /// The stack's secret key: RFC 6528 initial sequence numbers and SYN cookies are keyed
    /// hashes under it (docs/tcp.md). The caller draws it from the OS at every start, one per
    /// stack; anyone who knows it can predict ISNs and forge cookies.
    pub secret: [u8; 16],
    /// When SYNs are answered with cookies instead of taking a listening socket. Default
    /// [`SynCookieMode::Auto`].
    pub syn_cookies: SynCookieMode,
    /// In auto mode, cookies engage while this many handshakes wait for their final ACK.
    /// Default 64; a value above `connections_max` means `connections_max`.
    pub syn_backlog: usize,
}

impl Default for StackConfig {
    /// The lab's appliance address (docs/design.md): 10.99.0.2/24, port 8443.
    fn default() -> Self {
        StackConfig {
            mac: [0x02, 0x00, 0x00, 0x00, 0x00, 0x02],
            ipv4: Ipv4Addr::new(10, 99, 0, 2),
            prefix_len: 24,
            gateway: None,
            gateway_mac: None,
            neighbours_max: NEIGHBOURS_MAX,
            port: 8443,
            listen_sockets: 64,
            connections_max: 1024,
            connections_per_source_max: CONNECTIONS_PER_SOURCE_MAX_DEFAULT,
            rx_buffer_bytes: TCP_BUFFER_BYTES_DEFAULT,
            tx_buffer_bytes: TCP_BUFFER_BYTES_DEFAULT,
            idle_timeout_ms: 60_000,
            handshake_timeout_ms: 10_000,
            keep_alive_ms: None,
            ingress_frames_per_poll_max: 64,
            egress_rounds_per_poll_max: 64,
            nagle: false,
            random_seed: 0,
            secret: [0; 16],
            syn_cookies: SynCookieMode::Auto,
            syn_backlog: 64,
        }
    }
}

/// A configuration value the stack cannot run with. Each names the field and the reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("tcp.{field}: {value} is out of range {min}..={max}: {reason}")]
    OutOfRange {
        field: &'static str,
        value: u64,
        min: u64,
        max: u64,
        reason: &'static str,
    },
    #[error("tcp.listen_sockets: {listen_sockets} exceeds tcp.connections_max {connections_max}: every listening socket must be able to become a connection")]
    ListenExceedsConnections {
        listen_sockets: usize,
        connections_max: usize,
    },
    #[error("tcp.mac: {mac:02x?} is not a unicast address")]
    MacNotUnicast { mac: [u8; 6] },
    #[error("tcp.ipv4: {ipv4} is not a unicast host address")]
    Ipv4NotUnicast { ipv4: Ipv4Addr },
    #[error("device: {reason}")]
    Device { reason: &'static str },
    #[error("tcp.gateway_mac: {mac:02x?} is not a unicast address other than ours, or no tcp.gateway is set")]
    GatewayMacInvalid { mac: [u8; 6] },
    #[error("tcp.gateway: {gateway} is not inside {ipv4}/{prefix_len}")]
    GatewayOffLink {
        gateway: Ipv4Addr,
        ipv4: Ipv4Addr,
        prefix_len: u8,
    },
}

impl StackConfig {
    /// Checks every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn range(
            field: &'static str,
            value: u64,
            min: u64,
            max: u64,
            reason: &'static str,
        ) -> Result<(), ConfigError> {
            if value < min || value > max {
                return Err(ConfigError::OutOfRange {
                    field,
                    value,
                    min,
                    max,
                    reason,
                });
            }
            Ok(())
        }
        let buffer_reason = "each slot holds rx + tx from start, and above 256 KiB smoltcp's scaled windows were not tested (larger ones did worse under loss); below one segment (1460) the peer cannot send a full segment";
        range(
            "prefix_len",
            u64::from(self.prefix_len),
            1,
            32,
            "an IPv4 prefix length",
        )?;
        range(
            "port",
            u64::from(self.port),
            1,
            65535,
            "port 0 cannot be listened on",
        )?;
        range(
            "listen_sockets",
            self.listen_sockets as u64,
            1,
            SOCKETS_MAX as u64,
            "at least one socket must listen to accept connections",
        )?;
        range(
            "connections_max",
            self.connections_max as u64,
            1,
            (SOCKETS_MAX - self.listen_sockets.min(SOCKETS_MAX)) as u64,
            "the socket table (connections_max + listen_sockets) is allocated at start",
        )?;
        if self.listen_sockets > self.connections_max {
            return Err(ConfigError::ListenExceedsConnections {
                listen_sockets: self.listen_sockets,
                connections_max: self.connections_max,
            });
        }
        if self.connections_per_source_max == 0 {
            return Err(ConfigError::OutOfRange {
                field: "connections_per_source_max",
                value: 0,
                min: 1,
                max: u64::MAX,
                reason: "at least one connection per source (a value above connections_max means connections_max)",
            });
        }
        range(
            "syn_backlog",
            self.syn_backlog as u64,
            1,
            u64::MAX,
            "handshakes pending before SYN cookies engage (above connections_max means connections_max)",
        )?;
        range(
            "rx_buffer_bytes",
            self.rx_buffer_bytes as u64,
            TCP_BUFFER_BYTES_MIN as u64,
            TCP_BUFFER_BYTES_MAX as u64,
            buffer_reason,
        )?;
        range(
            "tx_buffer_bytes",
            self.tx_buffer_bytes as u64,
            TCP_BUFFER_BYTES_MIN as u64,
            TCP_BUFFER_BYTES_MAX as u64,
            buffer_reason,
        )?;
        range(
            "idle_timeout_ms",
            self.idle_timeout_ms,
            1,
            24 * 3600 * 1000,
            "idle connections must be reclaimed, within a day",
        )?;
        range(
            "handshake_timeout_ms",
            self.handshake_timeout_ms,
            1,
            24 * 3600 * 1000,
            "half-open connections must be reclaimed, within a day",
        )?;
        if let Some(keep_alive_ms) = self.keep_alive_ms {
            range(
                "keep_alive_ms",
                keep_alive_ms,
                1,
                24 * 3600 * 1000,
                "a keep-alive interval, within a day",
            )?;
        }
        range(
            "ingress_frames_per_poll_max",
            self.ingress_frames_per_poll_max as u64,
            1,
            1 << 16,
            "each poll must take at least one frame, and a bounded number",
        )?;
        range(
            "egress_rounds_per_poll_max",
            self.egress_rounds_per_poll_max as u64,
            1,
            1 << 16,
            "each poll must let sockets transmit, a bounded number of times",
        )?;
        range(
            "neighbours_max",
            self.neighbours_max as u64,
            2,
            NEIGHBOURS_MAX as u64,
            "the gateway and at least one on-link peer; smoltcp's neighbour cache holds NEIGHBOURS_MAX (compile-time)",
        )?;
        // A multicast or broadcast source MAC is invalid on Ethernet (IEEE 802.3 §3.2.3:
        // the I/G bit of a source address is 0), and smoltcp panics on one.
        if self.mac[0] & 0x01 != 0 || self.mac == [0; 6] {
            return Err(ConfigError::MacNotUnicast { mac: self.mac });
        }
        let ip = self.ipv4;
        if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() || ip.is_loopback() {
            return Err(ConfigError::Ipv4NotUnicast { ipv4: ip });
        }
        if let Some(gateway) = self.gateway {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(self.prefix_len))
                .unwrap_or(0);
            if u32::from(gateway) & mask != u32::from(ip) & mask || gateway == ip {
                return Err(ConfigError::GatewayOffLink {
                    gateway,
                    ipv4: ip,
                    prefix_len: self.prefix_len,
                });
            }
        }
        if let Some(mac) = self.gateway_mac {
            // IEEE 802.3 §3.2.3: a station's address has the I/G bit clear; ours would loop.
            if self.gateway.is_none() || mac[0] & 0x01 != 0 || mac == [0; 6] || mac == self.mac {
                return Err(ConfigError::GatewayMacInvalid { mac });
            }
        }
        Ok(())
    }

    /// Sockets in the table: connections plus the listening pool.
    pub fn sockets_total(&self) -> usize {
        self.connections_max + self.listen_sockets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(error: ConfigError) -> &'static str {
        match error {
            ConfigError::OutOfRange { field, .. } => field,
            ConfigError::ListenExceedsConnections { .. } => "listen_sockets",
            ConfigError::MacNotUnicast { .. } => "mac",
            ConfigError::Ipv4NotUnicast { .. } => "ipv4",
            ConfigError::GatewayOffLink { .. } => "gateway",
            ConfigError::GatewayMacInvalid { .. } => "gateway_mac",
            ConfigError::Device { .. } => "device",
        }
    }

    fn check(f: impl FnOnce(&mut StackConfig)) -> Result<(), &'static str> {
        let mut config = StackConfig::default();
        f(&mut config);
        config.validate().map_err(field_of)
    }

    #[test]
    fn default_is_valid() {
        assert_eq!(StackConfig::default().validate(), Ok(()));
        assert_eq!(StackConfig::default().sockets_total(), 1024 + 64);
        assert_eq!(StackConfig::default().rx_buffer_bytes, 16384);
        assert_eq!(StackConfig::default().tx_buffer_bytes, 16384);
    }

    #[test]
    fn ten_thousand_connections_on_one_queue_are_valid() {
        assert_eq!(check(|c| c.connections_max = 10_000), Ok(()));
    }

    #[test]
    fn buffers_above_256_kib_are_rejected() {
        assert_eq!(
            check(|c| c.rx_buffer_bytes = 256 * 1024 + 1),
            Err("rx_buffer_bytes")
        );
        assert_eq!(
            check(|c| c.tx_buffer_bytes = 1024 * 1024),
            Err("tx_buffer_bytes")
        );
        assert_eq!(check(|c| c.rx_buffer_bytes = 65536), Ok(()));
        assert_eq!(check(|c| c.tx_buffer_bytes = 256 * 1024), Ok(()));
        let error = StackConfig {
            rx_buffer_bytes: 256 * 1024 + 1,
            ..StackConfig::default()
        }
        .validate()
        .unwrap_err();
        let message = error.to_string();
        assert!(message.contains("rx_buffer_bytes") && message.contains("256 KiB"));
    }

    #[test]
    fn zero_sizes_are_rejected() {
        assert_eq!(check(|c| c.rx_buffer_bytes = 0), Err("rx_buffer_bytes"));
        assert_eq!(check(|c| c.tx_buffer_bytes = 0), Err("tx_buffer_bytes"));
        assert_eq!(check(|c| c.listen_sockets = 0), Err("listen_sockets"));
        assert_eq!(check(|c| c.connections_max = 0), Err("connections_max"));
        assert_eq!(check(|c| c.idle_timeout_ms = 0), Err("idle_timeout_ms"));
        assert_eq!(
            check(|c| c.handshake_timeout_ms = 0),
            Err("handshake_timeout_ms")
        );
        assert_eq!(check(|c| c.port = 0), Err("port"));
        assert_eq!(check(|c| c.prefix_len = 0), Err("prefix_len"));
        assert_eq!(check(|c| c.prefix_len = 33), Err("prefix_len"));
        assert_eq!(
            check(|c| c.ingress_frames_per_poll_max = 0),
            Err("ingress_frames_per_poll_max")
        );
        assert_eq!(
            check(|c| c.egress_rounds_per_poll_max = 0),
            Err("egress_rounds_per_poll_max")
        );
        assert_eq!(check(|c| c.keep_alive_ms = Some(0)), Err("keep_alive_ms"));
    }

    #[test]
    fn connections_per_source_max_is_within_the_table() {
        assert_eq!(check(|c| c.connections_per_source_max = 0), Err("connections_per_source_max"));
        // Above the table it is the table.
        assert_eq!(
            check(|c| {
                c.connections_max = 10;
                c.listen_sockets = 4;
                c.connections_per_source_max = 11;
            }),
            Ok(())
        );
    }

    #[test]
    fn listen_sockets_above_connections_max_is_rejected() {
        assert_eq!(
            check(|c| {
                c.connections_max = 10;
                c.listen_sockets = 11;
            }),
            Err("listen_sockets")
        );
        assert_eq!(
            check(|c| {
                c.connections_max = 10;
                c.listen_sockets = 10;
            }),
            Ok(())
        );
        assert_eq!(
            check(|c| c.connections_max = usize::MAX),
            Err("connections_max")
        );
    }

    #[test]
    fn addresses_are_checked() {
        assert_eq!(check(|c| c.mac = [0x01, 0, 0x5e, 0, 0, 1]), Err("mac"));
        assert_eq!(check(|c| c.mac = [0xff; 6]), Err("mac"));
        assert_eq!(check(|c| c.mac = [0; 6]), Err("mac"));
        assert_eq!(check(|c| c.ipv4 = Ipv4Addr::UNSPECIFIED), Err("ipv4"));
        assert_eq!(check(|c| c.ipv4 = Ipv4Addr::new(224, 0, 0, 1)), Err("ipv4"));
        assert_eq!(
            check(|c| c.gateway = Some(Ipv4Addr::new(10, 98, 0, 1))),
            Err("gateway")
        );
        assert_eq!(
            check(|c| c.gateway = Some(Ipv4Addr::new(10, 99, 0, 1))),
            Ok(())
        );
        assert_eq!(
            check(|c| {
                c.prefix_len = 32;
                c.gateway = Some(Ipv4Addr::new(10, 99, 0, 1));
            }),
            Err("gateway")
        );
    }

    #[test]
    fn gateway_mac_and_neighbours_max_are_checked() {
        let gateway = Some(Ipv4Addr::new(10, 99, 0, 1));
        let mac = [0x02, 0, 0, 0, 0, 0xfe];
        assert_eq!(StackConfig::default().neighbours_max, NEIGHBOURS_MAX);
        assert_eq!(check(|c| c.gateway_mac = Some(mac)), Err("gateway_mac"), "no gateway");
        assert_eq!(check(|c| { c.gateway = gateway; c.gateway_mac = Some(mac) }), Ok(()));
        for bad in [[0x01, 0, 0x5e, 0, 0, 1], [0xff; 6], [0; 6], StackConfig::default().mac] {
            assert_eq!(
                check(|c| { c.gateway = gateway; c.gateway_mac = Some(bad) }),
                Err("gateway_mac")
            );
        }
        assert_eq!(check(|c| c.neighbours_max = 1), Err("neighbours_max"));
        assert_eq!(check(|c| c.neighbours_max = NEIGHBOURS_MAX + 1), Err("neighbours_max"));
        assert_eq!(check(|c| c.neighbours_max = 2), Ok(()));
    }
}
