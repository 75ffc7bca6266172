//! The lab: a veth pair that stands in for a NIC, with its far end in a network namespace that
//! plays the client (docs/design.md, "The lab").
//!
//! This module uses only `std` and the `ip`/`ethtool` commands, so `xtask` can include it with
//! `#[path]` without building the appliance, and tests can make private labs with unique names.
//! A `Lab` is an RAII guard: dropping it removes the namespace and the veth pair, also when a test
//! fails. `Lab::keep` leaves the lab up (for `cargo xtask lab up`).

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Names and addresses of one lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabSpec {
    /// The namespace that holds the client's end.
    pub netns: String,
    /// The end that stays in the root namespace: the "NIC" the appliance attaches to.
    pub host_if: String,
    /// The client's end, inside `netns`.
    pub peer_if: String,
    /// The kernel's own address on `host_if` (kernel-path baseline, proof of XDP_PASS).
    pub host_ipv4: Ipv4Addr,
    /// The client's address on `peer_if`.
    pub peer_ipv4: Ipv4Addr,
    /// The appliance's address: no kernel owns it; the userspace stack answers for it.
    pub service_ipv4: Ipv4Addr,
    pub prefix_len: u8,
    /// RX and TX queues on both ends of the pair.
    pub queues: u32,
    /// Link MTU of both ends. Native XDP on veth caps the peer's MTU at 3506 (docs/facts.md).
    pub mtu: u32,
}

impl LabSpec {
    /// The lab exactly as docs/design.md names it.
    pub fn standard(queues: u32) -> LabSpec {
        LabSpec {
            netns: "pantera-client".to_owned(),
            host_if: "pantera0".to_owned(),
            peer_if: "pantera1".to_owned(),
            host_ipv4: Ipv4Addr::new(10, 99, 0, 3),
            peer_ipv4: Ipv4Addr::new(10, 99, 0, 1),
            service_ipv4: Ipv4Addr::new(10, 99, 0, 2),
            prefix_len: 24,
            queues,
            mtu: 1500,
        }
    }

    /// A private lab for one test: names unique to this process and call, and a /24 of
    /// 10.99.0.0/16 that no other interface on the machine uses.
    pub fn unique(tag: &str, queues: u32) -> LabSpec {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let call = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let used = subnets_in_use();
        // Subnet 0 belongs to the standard lab; spread tests over 1..=250 starting from a
        // hash of (pid, call) so concurrent test processes rarely probe the same one.
        let start = (pid.wrapping_mul(31).wrapping_add(call.wrapping_mul(7))) % 250;
        let subnet = (0..250)
            .map(|i| 1 + (start + i) % 250)
            .find(|n| !used.contains(&(*n as u8)))
            .unwrap_or(1 + start) as u8;
        // Interface names are limited to 15 bytes (IFNAMSIZ - 1).
        let id = format!("{:04}{:03}", pid % 10_000, call % 1_000);
        let tag: String = tag.chars().filter(char::is_ascii_alphanumeric).take(12).collect();
        LabSpec {
            netns: format!("pantera-test-{tag}-{id}"),
            host_if: format!("pt{id}h"),
            peer_if: format!("pt{id}c"),
            host_ipv4: Ipv4Addr::new(10, 99, subnet, 3),
            peer_ipv4: Ipv4Addr::new(10, 99, subnet, 1),
            service_ipv4: Ipv4Addr::new(10, 99, subnet, 2),
            prefix_len: 24,
            queues,
            mtu: 1500,
        }
    }
}

/// Third octets of the 10.99.x.0/24 networks already on this machine's root namespace.
fn subnets_in_use() -> Vec<u8> {
    let Ok(out) = Command::new("ip").args(["-4", "-o", "addr", "show"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|word| word.strip_prefix("10.99."))
        .filter_map(|rest| rest.split('.').next()?.parse().ok())
        .collect()
}

/// A lab that exists; removed on drop unless `keep` was called.
#[derive(Debug)]
pub struct Lab {
    pub spec: LabSpec,
    keep: bool,
}

/// A failed lab command, with the command line and what it printed.
#[derive(Debug)]
pub struct LabError {
    pub command: String,
    pub detail: String,
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lab command `{}` failed: {}", self.command, self.detail)
    }
}

impl std::error::Error for LabError {}

impl From<LabError> for io::Error {
    fn from(e: LabError) -> io::Error {
        io::Error::other(e.to_string())
    }
}

fn run(args: &[&str]) -> Result<Output, LabError> {
    let command = args.join(" ");
    let out = Command::new(args[0])
        .args(&args[1..])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| LabError { command: command.clone(), detail: format!("cannot run {}: {e}", args[0]) })?;
    if !out.status.success() {
        let detail = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        return Err(LabError { command, detail: format!("{} ({})", detail, out.status) });
    }
    Ok(out)
}

impl Lab {
    /// Makes the lab, first removing any leftover of the same names (so `lab up` is idempotent).
    pub fn create(spec: &LabSpec) -> Result<Lab, LabError> {
        assert!(spec.queues >= 1, "a lab needs at least one queue");
        Lab::remove(spec);
        // From here on the guard exists, so a failure half-way still cleans up.
        let lab = Lab { spec: spec.clone(), keep: false };
        let s = &lab.spec;
        let queues = s.queues.to_string();
        let mtu = s.mtu.to_string();
        let host_cidr = format!("{}/{}", s.host_ipv4, s.prefix_len);
        let peer_cidr = format!("{}/{}", s.peer_ipv4, s.prefix_len);
        run(&["ip", "netns", "add", &s.netns])?;
        // Native XDP on veth needs the attached side's rx queues >= the peer's tx queues.
        run(&[
            "ip", "link", "add", &s.host_if, "numtxqueues", &queues, "numrxqueues", &queues,
            "type", "veth", "peer", "name", &s.peer_if, "numtxqueues", &queues, "numrxqueues",
            &queues,
        ])?;
        run(&["ip", "link", "set", &s.peer_if, "netns", &s.netns])?;
        // The host side is not a router for the service: keep IPv6 chatter off the link.
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{}/disable_ipv6", s.host_if), "1");
        run(&["ip", "link", "set", &s.host_if, "mtu", &mtu])?;
        run(&["ip", "addr", "add", &host_cidr, "dev", &s.host_if])?;
        run(&["ip", "link", "set", &s.host_if, "up"])?;
        let ns = |args: &[&str]| {
            let mut full = vec!["ip", "netns", "exec", s.netns.as_str()];
            full.extend_from_slice(args);
            run(&full)
        };
        ns(&["sysctl", "-qw", &format!("net.ipv6.conf.{}.disable_ipv6=1", s.peer_if)])?;
        ns(&["ip", "link", "set", "lo", "up"])?;
        ns(&["ip", "link", "set", &s.peer_if, "mtu", &mtu])?;
        ns(&["ip", "addr", "add", &peer_cidr, "dev", &s.peer_if])?;
        ns(&["ip", "link", "set", &s.peer_if, "up"])?;
        // The client's kernel leaves TCP checksums to offload on veth; AF_XDP would then see
        // every segment with a bad checksum and smoltcp would drop it (docs/facts.md). A real NIC
        // needs no such step.
        ns(&["ethtool", "-K", &s.peer_if, "tx", "off"])?;
        Ok(lab)
    }

    /// Removes a lab by its names; absent parts are ignored (idempotent `lab down`).
    pub fn remove(spec: &LabSpec) {
        // Deleting one end of a veth pair deletes both; the peer may already be in the netns.
        let _ = run(&["ip", "link", "del", &spec.host_if]);
        let _ = run(&["ip", "netns", "del", &spec.netns]);
    }

    /// Leaves the lab up after this guard is gone.
    pub fn keep(mut self) {
        self.keep = true;
    }

    /// The argument vector that runs `args` inside the client namespace.
    pub fn ns_command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.spec.netns]).args(args);
        cmd
    }

    /// Runs a command in the client namespace and waits for it (whatever its exit status).
    pub fn exec_in_ns(&self, args: &[&str]) -> io::Result<Output> {
        self.ns_command(args).stdin(Stdio::null()).output()
    }

    /// Starts a command in the client namespace.
    pub fn spawn_in_ns(&self, args: &[&str]) -> io::Result<Child> {
        self.ns_command(args).stdin(Stdio::null()).spawn()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.keep {
            Lab::remove(&self.spec);
        }
    }
}
