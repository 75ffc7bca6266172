//! Loads `steer.bpf.c` (xdp-programs), writes its configuration, attaches it to an interface
//! through a bpf_link, puts AF_XDP sockets into its XSKMAP, and reads its counters.
//!
//! libbpf-rs rather than aya: see docs/dataplane.md. In short, xsk-rs already links libbpf
//! (libbpf-sys 1.5.1), and libbpf-rs 0.25 shares that exact copy; the program is plain C
//! compiled by clang, the form the kernel's own samples and every XDP tutorial use.

use std::fmt;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use libbpf_rs::{MapCore, MapFlags, Object, ObjectBuilder};
use log::{info, warn};

use crate::error::DataplaneError;
use crate::iface::{check_ifname, interface_index};
use crate::port::XskPort;
use crate::sys;

/// Entries of the XSKMAP: the highest queue id an appliance can bind, plus one
/// (`XSKS_MAX` in steer.bpf.c).
pub const XSKS_MAX: u32 = 64;

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Native (driver) mode if the driver supports it, else generic with a warning.
    #[default]
    Auto,
    /// Driver mode only: fails on drivers without XDP support.
    Native,
    /// Generic (skb) mode: works everywhere, slower (the skb is allocated first).
    Generic,
}

impl XdpMode {
    pub fn name(self) -> &'static str {
        match self {
            XdpMode::Auto => "auto",
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

impl std::fmt::Display for XdpMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for XdpMode {
    type Err = DataplaneError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(XdpMode::Auto),
            "native" => Ok(XdpMode::Native),
            "generic" => Ok(XdpMode::Generic),
            _ => Err(DataplaneError::Config(format!("xdp mode {s:?} is not auto, native or generic"))),
        }
    }
}

/// Where the steering program goes and what it steers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SteerConfig {
    pub ifname: String,
    pub service_ipv4: Ipv4Addr,
    pub service_port: u16,
    pub mode: XdpMode,
    /// Edge defence in the program: SYN rate per source, source allowlist, stealth.
    pub edge: EdgeConfig,
}

/// Entries of each source-prefix list (`allow_sources`, `host_allow`): `CIDRS_MAX` in
/// steer.bpf.c, the size of its LPM tries.
pub const EDGE_CIDRS_MAX: usize = 1024;

/// Bounds of the SYN token bucket: at most 10^6 SYN/s and 10^6 tokens, so a full bucket in
/// nanoseconds (burst × 10^9 / rate) stays below 10^15, far from u64's limit.
pub const SYN_RATE_PER_SOURCE_MAX: u32 = 1_000_000;
pub const SYN_BURST_PER_SOURCE_MAX: u32 = 1_000_000;
/// Bounds of the SYN bucket map (LRU entries): each entry costs about 80 bytes of kernel
/// memory, allocated at load (LRU hashes are preallocated).
pub const SYN_SOURCES_MIN: u32 = 1024;
pub const SYN_SOURCES_MAX: u32 = 1 << 22;

/// An IPv4 prefix, `a.b.c.d/n` (a bare address is a /32). Host bits must be zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    pub addr: Ipv4Addr,
    pub prefix_len: u8,
}

impl Ipv4Cidr {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
        u32::from(ip) & mask == u32::from(self.addr)
    }

    /// The LPM trie key (`struct lpm_v4_key`): prefix length (host order), address (network order).
    fn key(&self) -> [u8; 8] {
        let mut key = [0u8; 8];
        key[0..4].copy_from_slice(&u32::from(self.prefix_len).to_ne_bytes());
        key[4..8].copy_from_slice(&self.addr.octets());
        key
    }
}

impl std::str::FromStr for Ipv4Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("{s:?} is not an IPv4 address or a.b.c.d/n prefix"))?;
        let prefix_len = match len {
            None => 32,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= 32 => n,
                _ => return Err(format!("{s:?}: the prefix length must be 0..=32")),
            },
        };
        let cidr = Ipv4Cidr { addr, prefix_len };
        let mask = u32::MAX.checked_shl(32 - u32::from(prefix_len)).unwrap_or(0);
        if u32::from(addr) & !mask != 0 {
            let network = Ipv4Addr::from(u32::from(addr) & mask);
            return Err(format!("{s:?} has host bits set (did you mean {network}/{prefix_len}?)"));
        }
        Ok(cidr)
    }
}

impl std::fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// Edge defence done in the XDP program, before a frame costs the appliance anything
/// (docs/dataplane.md §1, docs/operations.md "Edge defence"). Lives in BPF maps written by the
/// loader, so it can be rewritten while attached ([`SteerProgram::configure_edge`]), except
/// `syn_sources_max`, the size of a map, fixed at load.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeConfig {
    /// SYNs per second one IPv4 source may send to the service port; 0: no limit.
    pub syn_rate_per_source: u32,
    /// SYNs a source may send at once before the rate applies (the bucket's size).
    pub syn_burst_per_source: u32,
    /// Sources whose buckets are remembered (LRU: the least recently seen is forgotten).
    pub syn_sources_max: u32,
    /// Only these sources reach the service (TCP to its port, ICMP echo). Empty: everyone.
    pub allow_sources: Vec<Ipv4Cidr>,
    /// Drop, rather than pass to the host, every frame that is not the service's and does not
    /// come from `host_allow`.
    pub stealth: bool,
    /// In stealth mode, IPv4 and ARP from these sources still reach the host.
    pub host_allow: Vec<Ipv4Cidr>,
}

impl Default for EdgeConfig {
    /// The SYN limit is on, far above any legitimate client: 10,000 SYN/s with a burst of
    /// 20,000 per source, against at most 4,200 handshakes/s (resumed) that the whole
    /// appliance completed for one source in the benchmarks (docs/PERFORMANCE.md). A bank's
    /// gateway is one source carrying many clients, so the bound must never fall below what
    /// the appliance can serve it; it stops a single address's SYN flood (hundreds of
    /// thousands per second) before the AF_XDP rings. Allowlist empty, stealth off.
    fn default() -> EdgeConfig {
        EdgeConfig {
            syn_rate_per_source: 10_000,
            syn_burst_per_source: 20_000,
            syn_sources_max: 65_536,
            allow_sources: Vec::new(),
            stealth: false,
            host_allow: Vec::new(),
        }
    }
}

impl std::fmt::Display for EdgeConfig {
    /// One line for the start-up log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.syn_rate_per_source {
            0 => f.write_str("SYN limit off")?,
            rate => write!(f, "SYN limit {rate}/s, burst {} per source ({} sources)", self.syn_burst_per_source, self.syn_sources_max)?,
        }
        match self.allow_sources.len() {
            0 => f.write_str(", every source allowed")?,
            n => write!(f, ", {n} allowed source prefixes")?,
        }
        if self.stealth {
            write!(f, ", stealth on ({} host_allow prefixes)", self.host_allow.len())
        } else {
            f.write_str(", stealth off")
        }
    }
}

impl EdgeConfig {
    /// Nothing filtered: the steering program as it was before edge defence.
    pub fn off() -> EdgeConfig {
        EdgeConfig { syn_rate_per_source: 0, ..EdgeConfig::default() }
    }

    /// Checks every bound; the error names the field.
    pub fn validate(&self) -> Result<(), DataplaneError> {
        let bad = |m: String| Err(DataplaneError::Config(m));
        if self.syn_rate_per_source > SYN_RATE_PER_SOURCE_MAX {
            return bad(format!("syn_rate_per_source must be 0 (off) ..= {SYN_RATE_PER_SOURCE_MAX}"));
        }
        if self.syn_rate_per_source > 0 && !(1..=SYN_BURST_PER_SOURCE_MAX).contains(&self.syn_burst_per_source) {
            return bad(format!("syn_burst_per_source must be 1..={SYN_BURST_PER_SOURCE_MAX}"));
        }
        if !(SYN_SOURCES_MIN..=SYN_SOURCES_MAX).contains(&self.syn_sources_max) {
            return bad(format!("syn_sources_max must be {SYN_SOURCES_MIN}..={SYN_SOURCES_MAX}"));
        }
        for (name, list) in [("allow_sources", &self.allow_sources), ("host_allow", &self.host_allow)] {
            if list.len() > EDGE_CIDRS_MAX {
                return bad(format!("{name} has {} prefixes, at most {EDGE_CIDRS_MAX}", list.len()));
            }
        }
        Ok(())
    }

    /// (syn_token_ns, syn_bucket_ns) for the program: one token in nanoseconds of refill, and
    /// a full bucket. Integer division rounds the token down, so the rate is at least the one
    /// configured (10^9 / 10^6 is exact; 3/s becomes 3.000000003/s).
    fn syn_bucket_ns(&self) -> (u64, u64) {
        if self.syn_rate_per_source == 0 {
            return (0, 0);
        }
        let token = 1_000_000_000 / u64::from(self.syn_rate_per_source);
        (token, token * u64::from(self.syn_burst_per_source))
    }
}

/// A source's SYN token bucket as the program keeps it (`struct syn_bucket`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynBucket {
    /// CLOCK_MONOTONIC (bpf_ktime_get_ns) of the last refill.
    pub refilled_ns: u64,
    /// Credit left, in nanoseconds of refill time (one SYN costs 10^9 / rate).
    pub credit_ns: u64,
}

/// The program's verdict reasons, in the order of `enum steer_counter` in steer.bpf.c.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum SteerCounter {
    RedirectArpRequest = 0,
    RedirectArpReply = 1,
    RedirectIcmp = 2,
    RedirectTcp = 3,
    /// Service traffic on a queue with no socket bound: dropped. Alert on it.
    DropNoSocket = 4,
    DropPort = 5,
    DropUdp = 6,
    DropProto = 7,
    DropIcmp = 8,
    DropArp = 9,
    DropFragment = 10,
    DropMalformed = 11,
    PassOther = 12,
    PassTruncated = 13,
    PassUnconfigured = 14,
    /// TCP to the service port or ICMP echo from a source outside `allow_sources`.
    DropNotAllowed = 15,
    /// A SYN from a source whose token bucket is empty.
    DropSynRate = 16,
    /// Stealth mode: IPv4 not to the service, from a source outside `host_allow`.
    DropStealthIpv4 = 17,
    /// Stealth mode: IPv6.
    DropStealthIpv6 = 18,
    /// Stealth mode: ARP not for the service address, from a sender outside `host_allow`.
    DropStealthArp = 19,
    /// Stealth mode: any other EtherType, or a frame too short to tell.
    DropStealthOther = 20,
}

impl SteerCounter {
    pub const ALL: [SteerCounter; 21] = [
        SteerCounter::RedirectArpRequest,
        SteerCounter::RedirectArpReply,
        SteerCounter::RedirectIcmp,
        SteerCounter::RedirectTcp,
        SteerCounter::DropNoSocket,
        SteerCounter::DropPort,
        SteerCounter::DropUdp,
        SteerCounter::DropProto,
        SteerCounter::DropIcmp,
        SteerCounter::DropArp,
        SteerCounter::DropFragment,
        SteerCounter::DropMalformed,
        SteerCounter::PassOther,
        SteerCounter::PassTruncated,
        SteerCounter::PassUnconfigured,
        SteerCounter::DropNotAllowed,
        SteerCounter::DropSynRate,
        SteerCounter::DropStealthIpv4,
        SteerCounter::DropStealthIpv6,
        SteerCounter::DropStealthArp,
        SteerCounter::DropStealthOther,
    ];

    /// The name for Prometheus labels (`reason="redirect_tcp"`).
    pub fn name(self) -> &'static str {
        match self {
            SteerCounter::RedirectArpRequest => "redirect_arp_request",
            SteerCounter::RedirectArpReply => "redirect_arp_reply",
            SteerCounter::RedirectIcmp => "redirect_icmp",
            SteerCounter::RedirectTcp => "redirect_tcp",
            SteerCounter::DropNoSocket => "drop_no_socket",
            SteerCounter::DropPort => "drop_port",
            SteerCounter::DropUdp => "drop_udp",
            SteerCounter::DropProto => "drop_proto",
            SteerCounter::DropIcmp => "drop_icmp",
            SteerCounter::DropArp => "drop_arp",
            SteerCounter::DropFragment => "drop_fragment",
            SteerCounter::DropMalformed => "drop_malformed",
            SteerCounter::PassOther => "pass_other",
            SteerCounter::PassTruncated => "pass_truncated",
            SteerCounter::PassUnconfigured => "pass_unconfigured",
            SteerCounter::DropNotAllowed => "drop_not_allowed",
            SteerCounter::DropSynRate => "drop_syn_rate",
            SteerCounter::DropStealthIpv4 => "drop_stealth_ipv4",
            SteerCounter::DropStealthIpv6 => "drop_stealth_ipv6",
            SteerCounter::DropStealthArp => "drop_stealth_arp",
            SteerCounter::DropStealthOther => "drop_stealth_other",
        }
    }

    /// The XDP action this reason leads to: "redirect", "drop" or "pass".
    pub fn verdict(self) -> &'static str {
        self.name().split('_').next().unwrap_or("")
    }
}

/// XDP actions (uapi/linux/bpf.h `enum xdp_action`).
pub mod xdp_action {
    pub const ABORTED: u32 = 0;
    pub const DROP: u32 = 1;
    pub const PASS: u32 = 2;
    pub const TX: u32 = 3;
    pub const REDIRECT: u32 = 4;
}

/// The steering program loaded into the kernel with its configuration, not attached.
/// Useful alone for `BPF_PROG_TEST_RUN`; [`Steering`] attaches it.
#[derive(Debug)]
pub struct SteerProgram {
    object: Object,
    service_ipv4: Ipv4Addr,
    service_port: u16,
}

// steer_config.flags in steer.bpf.c.
const EDGE_ALLOW_SOURCES: u16 = 1;
const EDGE_STEALTH: u16 = 2;

fn bpf_error(context: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> DataplaneError {
    let context = context.into();
    move |source| DataplaneError::Bpf { context, source }
}

impl SteerProgram {
    /// Loads the program (the verifier runs here) and writes the `config` map and the edge
    /// maps from `edge`.
    pub fn load(service_ipv4: Ipv4Addr, service_port: u16, edge: &EdgeConfig) -> Result<Self, DataplaneError> {
        if service_ipv4.is_unspecified() || service_port == 0 {
            return Err(DataplaneError::Config(format!(
                "service address {service_ipv4}:{service_port} must name a host and a port"
            )));
        }
        edge.validate()?;
        let mut open = ObjectBuilder::default()
            .open_memory(xdp_programs::STEER_BPF_OBJECT)
            .map_err(bpf_error("opening the embedded steer.bpf.o"))?;
        let mut buckets = open.maps_mut().find(|m| m.name() == "syn_buckets").ok_or_else(|| DataplaneError::Bpf {
            context: "steer.bpf.o has no map \"syn_buckets\"".to_owned(),
            source: libbpf_rs::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound)),
        })?;
        buckets.set_max_entries(edge.syn_sources_max).map_err(bpf_error("sizing syn_buckets"))?;
        let object = open.load().map_err(bpf_error("loading steer.bpf.o (verifier)"))?;
        let program = SteerProgram { object, service_ipv4, service_port };
        program.configure_edge(edge)?;
        Ok(program)
    }

    /// Writes `edge` into the maps of the loaded (possibly attached) program, in the order
    /// that never drops a frame either configuration would pass: new prefixes first, then the
    /// `config` entry whose flags switch the lists on or off, then the stale prefixes go. So a
    /// list is never switched on before it is filled, nor emptied while still switched on.
    /// `syn_sources_max` is fixed at load and ignored here; the buckets already held are kept.
    pub fn configure_edge(&self, edge: &EdgeConfig) -> Result<(), DataplaneError> {
        edge.validate()?;
        self.add_prefixes("allow_sources", &edge.allow_sources)?;
        self.add_prefixes("host_allow", &edge.host_allow)?;
        self.write_config(edge)?;
        self.remove_stale_prefixes("allow_sources", &edge.allow_sources)?;
        self.remove_stale_prefixes("host_allow", &edge.host_allow)
    }

    fn write_config(&self, edge: &EdgeConfig) -> Result<(), DataplaneError> {
        let mut flags = 0u16;
        if !edge.allow_sources.is_empty() {
            flags |= EDGE_ALLOW_SOURCES;
        }
        if edge.stealth {
            flags |= EDGE_STEALTH;
        }
        let (token_ns, bucket_ns) = edge.syn_bucket_ns();
        // struct steer_config { __be32 service_ipv4; __be16 service_port; __u16 flags;
        //                       __u64 syn_token_ns; __u64 syn_bucket_ns; }
        let mut value = [0u8; 24];
        value[0..4].copy_from_slice(&self.service_ipv4.octets());
        value[4..6].copy_from_slice(&self.service_port.to_be_bytes());
        value[6..8].copy_from_slice(&flags.to_ne_bytes());
        value[8..16].copy_from_slice(&token_ns.to_ne_bytes());
        value[16..24].copy_from_slice(&bucket_ns.to_ne_bytes());
        self.map("config")?
            .update(&0u32.to_ne_bytes(), &value, MapFlags::ANY)
            .map_err(bpf_error("writing the config map"))
    }

    /// Adds `prefixes` to the LPM trie `name` (present ones are rewritten).
    fn add_prefixes(&self, name: &str, prefixes: &[Ipv4Cidr]) -> Result<(), DataplaneError> {
        let map = self.map(name)?;
        for prefix in prefixes {
            map.update(&prefix.key(), &[1u8], MapFlags::ANY)
                .map_err(bpf_error(format!("adding {prefix} to {name}")))?;
        }
        Ok(())
    }

    /// Removes from the LPM trie `name` every prefix not in `prefixes`.
    fn remove_stale_prefixes(&self, name: &str, prefixes: &[Ipv4Cidr]) -> Result<(), DataplaneError> {
        let map = self.map(name)?;
        let wanted: Vec<[u8; 8]> = prefixes.iter().map(Ipv4Cidr::key).collect();
        let stale: Vec<Vec<u8>> = map.keys().filter(|k| !wanted.iter().any(|w| w[..] == k[..])).collect();
        for key in stale {
            map.delete(&key).map_err(bpf_error(format!("removing a prefix from {name}")))?;
        }
        Ok(())
    }

    /// The SYN token bucket the program holds for `source`, if it has seen it.
    pub fn syn_bucket(&self, source: Ipv4Addr) -> Result<Option<SynBucket>, DataplaneError> {
        let value = self
            .map("syn_buckets")?
            .lookup(&source.octets(), MapFlags::ANY)
            .map_err(bpf_error("reading syn_buckets"))?;
        Ok(value.filter(|v| v.len() >= 16).map(|v| SynBucket {
            refilled_ns: u64::from_ne_bytes(v[0..8].try_into().expect("8 bytes")),
            credit_ns: u64::from_ne_bytes(v[8..16].try_into().expect("8 bytes")),
        }))
    }

    /// Overwrites `source`'s bucket: for tests, which cannot move the program's clock.
    pub fn set_syn_bucket(&self, source: Ipv4Addr, bucket: SynBucket) -> Result<(), DataplaneError> {
        let mut value = [0u8; 16];
        value[0..8].copy_from_slice(&bucket.refilled_ns.to_ne_bytes());
        value[8..16].copy_from_slice(&bucket.credit_ns.to_ne_bytes());
        self.map("syn_buckets")?
            .update(&source.octets(), &value, MapFlags::ANY)
            .map_err(bpf_error("writing syn_buckets"))
    }

    fn map(&self, name: &str) -> Result<libbpf_rs::Map<'_>, DataplaneError> {
        self.object.maps().find(|m| m.name() == name).ok_or_else(|| DataplaneError::Bpf {
            context: format!("steer.bpf.o has no map {name:?}"),
            source: libbpf_rs::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound)),
        })
    }

    fn program(&self) -> Result<libbpf_rs::ProgramMut<'_>, DataplaneError> {
        self.object.progs_mut().find(|p| p.name() == "steer").ok_or_else(|| DataplaneError::Bpf {
            context: "steer.bpf.o has no program \"steer\"".to_owned(),
            source: libbpf_rs::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound)),
        })
    }

    /// Runs the program once on `frame` with BPF_PROG_TEST_RUN (rx queue 0 of loopback) and
    /// returns its XDP action. The counters move as for real traffic.
    pub fn test_run(&self, frame: &[u8]) -> Result<u32, DataplaneError> {
        let program = self.program()?;
        let input = libbpf_rs::ProgramInput { data_in: Some(frame), ..Default::default() };
        let output = program.test_run(input).map_err(bpf_error("BPF_PROG_TEST_RUN"))?;
        Ok(output.return_value)
    }

    /// Puts the AF_XDP socket `fd` at `queue_id` of the XSKMAP.
    pub fn insert_socket(&self, queue_id: u32, fd: std::os::fd::RawFd) -> Result<(), DataplaneError> {
        if queue_id >= XSKS_MAX {
            return Err(DataplaneError::Config(format!("queue id {queue_id} must be < {XSKS_MAX}")));
        }
        let fd = u32::try_from(fd).map_err(|_| DataplaneError::Config(format!("socket fd {fd}")))?;
        self.map("xsks")?
            .update(&queue_id.to_ne_bytes(), &fd.to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_error(format!("inserting the socket of queue {queue_id} into xsks")))
    }

    /// Removes the socket at `queue_id` from the XSKMAP (absent is fine).
    pub fn remove_socket(&self, queue_id: u32) -> Result<(), DataplaneError> {
        match self.map("xsks")?.delete(&queue_id.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(bpf_error(format!("removing queue {queue_id} from xsks"))(e)),
        }
    }

    /// One counter, summed over CPUs.
    pub fn counter(&self, counter: SteerCounter) -> Result<u64, DataplaneError> {
        let per_cpu = self
            .map("counters")?
            .lookup_percpu(&(counter as u32).to_ne_bytes(), MapFlags::ANY)
            .map_err(bpf_error("reading the counters map"))?
            .unwrap_or_default();
        Ok(per_cpu
            .iter()
            .filter_map(|v| v.get(..8).and_then(|b| b.try_into().ok()))
            .map(u64::from_ne_bytes)
            .sum())
    }

    /// Every counter by name, summed over CPUs (a counter that cannot be read reads 0, so a
    /// metrics scrape never fails half-way).
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        SteerCounter::ALL.iter().map(|c| (c.name(), self.counter(*c).unwrap_or(0))).collect()
    }

    fn prog_fd(&self) -> Result<std::os::fd::RawFd, DataplaneError> {
        Ok(self.program()?.as_fd().as_raw_fd())
    }
}

/// The steering program attached to one interface. Dropping it removes the sockets it
/// registered from the XSKMAP and detaches the program (closing the bpf_link).
#[derive(Debug)]
pub struct Steering {
    // Field order is drop order: the link (attachment) goes before the program and maps.
    link: OwnedFd,
    program: SteerProgram,
    ifname: String,
    ifindex: u32,
    mode: XdpMode,
    registered: Vec<u32>,
}

/// The steering program loaded and verified, not yet attached: [`Steering::load`], then
/// [`LoadedSteering::attach`]. Start-up splits the two so that the link, which waits in the
/// kernel, overlaps with the UMEM registration (the load allocates, and would wait for the
/// registration's hold on the address space instead).
pub struct LoadedSteering {
    program: SteerProgram,
    ifname: String,
    ifindex: u32,
    mode: XdpMode,
    /// The edge defence's description, for the log line of the attach.
    edge: String,
}

impl fmt::Debug for LoadedSteering {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedSteering").field("ifname", &self.ifname).field("ifindex", &self.ifindex).field("mode", &self.mode).finish_non_exhaustive()
    }
}

impl LoadedSteering {
    /// Attaches the loaded program in the configured mode (auto: native, else generic).
    pub fn attach(self) -> Result<Steering, DataplaneError> {
        let LoadedSteering { program, ifname, ifindex, mode, edge } = self;
        let prog_fd = program.prog_fd()?;
        let attach = |mode: XdpMode, flags: u32| {
            sys::xdp_link_create(prog_fd, ifindex, flags).map_err(|source| DataplaneError::Attach {
                ifname: ifname.clone(),
                mode: mode.name(),
                source,
            })
        };
        let (link, mode) = match mode {
            XdpMode::Native => (attach(XdpMode::Native, sys::XDP_FLAGS_DRV_MODE)?, XdpMode::Native),
            XdpMode::Generic => (attach(XdpMode::Generic, sys::XDP_FLAGS_SKB_MODE)?, XdpMode::Generic),
            XdpMode::Auto => match attach(XdpMode::Native, sys::XDP_FLAGS_DRV_MODE) {
                Ok(link) => (link, XdpMode::Native),
                Err(native) => {
                    warn!("{native}; falling back to generic (skb) XDP, which is slower");
                    (attach(XdpMode::Generic, sys::XDP_FLAGS_SKB_MODE)?, XdpMode::Generic)
                }
            },
        };
        info!(
            "steering {}:{} on {ifname} (ifindex {ifindex}) in {mode} XDP mode; {edge}",
            program.service_ipv4, program.service_port
        );
        Ok(Steering { link, program, ifname, ifindex, mode, registered: Vec::new() })
    }
}

impl Steering {
    /// Removes a leftover program from the interface, loads the steering program with
    /// `config`'s service address and port, and attaches it in `config.mode`.
    pub fn attach(config: &SteerConfig) -> Result<Self, DataplaneError> {
        Steering::load(config)?.attach()
    }

    /// The first half of [`Steering::attach`]: removes a leftover program from the interface
    /// and loads (verifies) the steering program, without attaching it.
    pub fn load(config: &SteerConfig) -> Result<LoadedSteering, DataplaneError> {
        check_ifname(&config.ifname)?;
        let ifindex = interface_index(&config.ifname)?;
        detach_leftover(&config.ifname)?;
        let program = SteerProgram::load(config.service_ipv4, config.service_port, &config.edge)?;
        Ok(LoadedSteering { program, ifname: config.ifname.clone(), ifindex, mode: config.mode, edge: config.edge.to_string() })
    }

    /// Sends the service traffic of `queue_id` to `port`'s socket.
    pub fn register(&mut self, queue_id: u32, port: &XskPort) -> Result<(), DataplaneError> {
        if port.ifname() != self.ifname || port.queue_id() != queue_id {
            return Err(DataplaneError::Config(format!(
                "socket of {} queue {} cannot serve {} queue {queue_id}",
                port.ifname(),
                port.queue_id(),
                self.ifname
            )));
        }
        self.program.insert_socket(queue_id, port.fd())?;
        if !self.registered.contains(&queue_id) {
            self.registered.push(queue_id);
        }
        Ok(())
    }

    /// Rewrites the edge defence of the attached program (see [`SteerProgram::configure_edge`]).
    pub fn configure_edge(&mut self, edge: &EdgeConfig) -> Result<(), DataplaneError> {
        self.program.configure_edge(edge)
    }

    /// Verdict counters summed over CPUs, by name, for Prometheus.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.program.counters()
    }

    /// The mode actually attached (never `Auto`).
    pub fn mode(&self) -> XdpMode {
        self.mode
    }

    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn program(&self) -> &SteerProgram {
        &self.program
    }

    /// The bpf_link's fd (kept open for as long as the program must stay attached).
    pub fn link_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.link.as_fd()
    }
}

impl Drop for Steering {
    fn drop(&mut self) {
        for queue_id in self.registered.drain(..) {
            if let Err(e) = self.program.remove_socket(queue_id) {
                warn!("{e}");
            }
        }
        info!("detaching XDP from {} (ifindex {})", self.ifname, self.ifindex);
        // The `link` field closes next, which detaches the program.
    }
}

/// Removes an XDP program that a killed earlier run, or another tool, left attached over
/// netlink (the equivalent of `ip link set dev X xdp off`). Returns whether one was removed.
/// A program held by a bpf_link of a live process is not ours to remove: `Busy`.
pub fn detach_leftover(ifname: &str) -> Result<bool, DataplaneError> {
    let ifindex = interface_index(ifname)?;
    let query = |call| {
        sys::xdp_query(ifindex).map_err(|source| DataplaneError::Syscall { call, ifname: ifname.to_owned(), source })
    };
    let found = query("bpf_xdp_query")?;
    let mut removed = false;
    for (prog_id, flags, mode) in [
        (found.drv_prog_id, sys::XDP_FLAGS_DRV_MODE, "native"),
        (found.skb_prog_id, sys::XDP_FLAGS_SKB_MODE, "generic"),
    ] {
        if prog_id == 0 {
            continue;
        }
        match sys::xdp_detach(ifindex, flags) {
            Ok(()) => {
                warn!("removed leftover XDP program id {prog_id} ({mode} mode) from {ifname}");
                removed = true;
            }
            // The kernel refuses netlink detach of a link-attached program.
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                return Err(DataplaneError::Busy { ifname: ifname.to_owned(), prog_id });
            }
            Err(source) => {
                return Err(DataplaneError::Syscall { call: "bpf_xdp_detach", ifname: ifname.to_owned(), source });
            }
        }
    }
    if found.hw_prog_id != 0 {
        warn!("{ifname} has an offloaded XDP program id {} that pantera leaves alone", found.hw_prog_id);
    }
    Ok(removed)
}

/// The id of the XDP program attached to `ifname` in any mode (0 if none).
pub fn attached_program_id(ifname: &str) -> Result<u32, DataplaneError> {
    let ifindex = interface_index(ifname)?;
    let found = sys::xdp_query(ifindex).map_err(|source| DataplaneError::Syscall {
        call: "bpf_xdp_query",
        ifname: ifname.to_owned(),
        source,
    })?;
    Ok([found.drv_prog_id, found.skb_prog_id, found.hw_prog_id].into_iter().max().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_names_are_unique_and_ordered_like_the_c_enum() {
        for (i, c) in SteerCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
            assert!(["redirect", "drop", "pass"].contains(&c.verdict()), "{}", c.name());
        }
        let mut names: Vec<_> = SteerCounter::ALL.iter().map(|c| c.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), SteerCounter::ALL.len());
    }

    #[test]
    fn the_c_enum_has_the_same_names_and_values() {
        let source = xdp_programs::STEER_BPF_SOURCE;
        let body = source.split("enum steer_counter {").nth(1).and_then(|b| b.split("};").next()).expect("enum in steer.bpf.c");
        let entries: Vec<(String, usize)> = body
            .lines()
            .filter_map(|l| l.trim().strip_suffix(','))
            .filter_map(|l| l.split_once(" = "))
            .map(|(name, value)| (name.to_ascii_lowercase(), value.parse().expect("a number")))
            .collect();
        let c: Vec<(String, usize)> = entries.iter().filter(|(n, _)| n != "counter_max").cloned().collect();
        let rust: Vec<(String, usize)> = SteerCounter::ALL.iter().map(|c| (c.name().to_owned(), *c as usize)).collect();
        assert_eq!(c, rust);
        assert!(entries.contains(&("counter_max".to_owned(), SteerCounter::ALL.len())));
    }

    #[test]
    fn prefixes_parse_and_refuse_what_is_not_one() {
        let c: Ipv4Cidr = "10.99.0.0/24".parse().unwrap();
        assert_eq!(c, Ipv4Cidr { addr: Ipv4Addr::new(10, 99, 0, 0), prefix_len: 24 });
        assert!(c.contains(Ipv4Addr::new(10, 99, 0, 200)) && !c.contains(Ipv4Addr::new(10, 99, 1, 1)));
        assert_eq!("10.99.0.4".parse::<Ipv4Cidr>().unwrap().prefix_len, 32);
        assert!("0.0.0.0/0".parse::<Ipv4Cidr>().unwrap().contains(Ipv4Addr::new(192, 0, 2, 1)));
        assert!("10.99.0.4/24".parse::<Ipv4Cidr>().unwrap_err().contains("10.99.0.0/24"));
        assert!("10.99.0.0/33".parse::<Ipv4Cidr>().is_err());
        assert!("10.99.0/24".parse::<Ipv4Cidr>().is_err());
        assert!("::1/128".parse::<Ipv4Cidr>().is_err());
        let mut key = [0u8; 8];
        key[..4].copy_from_slice(&24u32.to_ne_bytes());
        key[4..].copy_from_slice(&[10, 99, 0, 0]);
        assert_eq!(c.key(), key);
    }

    #[test]
    fn the_syn_bucket_is_integer_nanoseconds_within_bounds() {
        let edge = EdgeConfig { syn_rate_per_source: 200, syn_burst_per_source: 400, ..EdgeConfig::default() };
        assert_eq!(edge.syn_bucket_ns(), (5_000_000, 2_000_000_000));
        assert_eq!(EdgeConfig::off().syn_bucket_ns(), (0, 0));
        let max = EdgeConfig { syn_rate_per_source: 1, syn_burst_per_source: SYN_BURST_PER_SOURCE_MAX, ..EdgeConfig::default() };
        max.validate().unwrap();
        assert_eq!(max.syn_bucket_ns().1, 1_000_000_000_000_000);
        EdgeConfig::default().validate().unwrap();
        let too_fast = EdgeConfig { syn_rate_per_source: SYN_RATE_PER_SOURCE_MAX + 1, ..EdgeConfig::default() };
        assert!(too_fast.validate().unwrap_err().to_string().contains("syn_rate_per_source"));
        let no_burst = EdgeConfig { syn_burst_per_source: 0, ..EdgeConfig::default() };
        assert!(no_burst.validate().unwrap_err().to_string().contains("syn_burst_per_source"));
        let many = EdgeConfig { allow_sources: vec!["10.0.0.0/8".parse().unwrap(); EDGE_CIDRS_MAX + 1], ..EdgeConfig::default() };
        assert!(many.validate().unwrap_err().to_string().contains("allow_sources"));
    }

    #[test]
    fn modes_parse() {
        assert_eq!("native".parse::<XdpMode>().unwrap(), XdpMode::Native);
        assert!("skb".parse::<XdpMode>().is_err());
    }
}
