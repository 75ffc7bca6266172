//! Loads `steer.bpf.c` (xdp-programs), writes its configuration, attaches it to an interface
//! through a bpf_link, puts AF_XDP sockets into its XSKMAP, and reads its counters.
//!
//! libbpf-rs rather than aya: see docs/dataplane.md. In short, xsk-rs already links libbpf
//! (libbpf-sys 1.5.1), and libbpf-rs 0.25 shares that exact copy; the program is plain C
//! compiled by clang, the form the kernel's own samples and every XDP tutorial use.

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
}

impl SteerCounter {
    pub const ALL: [SteerCounter; 15] = [
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
}

fn bpf_error(context: impl Into<String>) -> impl FnOnce(libbpf_rs::Error) -> DataplaneError {
    let context = context.into();
    move |source| DataplaneError::Bpf { context, source }
}

impl SteerProgram {
    /// Loads the program (the verifier runs here) and writes the `config` map.
    pub fn load(service_ipv4: Ipv4Addr, service_port: u16) -> Result<Self, DataplaneError> {
        if service_ipv4.is_unspecified() || service_port == 0 {
            return Err(DataplaneError::Config(format!(
                "service address {service_ipv4}:{service_port} must name a host and a port"
            )));
        }
        let open = ObjectBuilder::default()
            .open_memory(xdp_programs::STEER_BPF_OBJECT)
            .map_err(bpf_error("opening the embedded steer.bpf.o"))?;
        let object = open.load().map_err(bpf_error("loading steer.bpf.o (verifier)"))?;
        let program = SteerProgram { object };
        // struct steer_config { __be32 service_ipv4; __be16 service_port; __u16 pad; }
        let mut value = [0u8; 8];
        value[0..4].copy_from_slice(&service_ipv4.octets());
        value[4..6].copy_from_slice(&service_port.to_be_bytes());
        program
            .map("config")?
            .update(&0u32.to_ne_bytes(), &value, MapFlags::ANY)
            .map_err(bpf_error("writing the config map"))?;
        Ok(program)
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

impl Steering {
    /// Removes a leftover program from the interface, loads the steering program with
    /// `config`'s service address and port, and attaches it in `config.mode`.
    pub fn attach(config: &SteerConfig) -> Result<Self, DataplaneError> {
        check_ifname(&config.ifname)?;
        let ifindex = interface_index(&config.ifname)?;
        detach_leftover(&config.ifname)?;
        let program = SteerProgram::load(config.service_ipv4, config.service_port)?;
        let prog_fd = program.prog_fd()?;
        let ifname = config.ifname.clone();
        let attach = |mode: XdpMode, flags: u32| {
            sys::xdp_link_create(prog_fd, ifindex, flags).map_err(|source| DataplaneError::Attach {
                ifname: ifname.clone(),
                mode: mode.name(),
                source,
            })
        };
        let (link, mode) = match config.mode {
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
            "steering {}:{} on {} (ifindex {ifindex}) in {mode} XDP mode",
            config.service_ipv4, config.service_port, config.ifname
        );
        Ok(Steering { link, program, ifname, ifindex, mode, registered: Vec::new() })
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
    fn modes_parse() {
        assert_eq!("native".parse::<XdpMode>().unwrap(), XdpMode::Native);
        assert!("skb".parse::<XdpMode>().is_err());
    }
}
