//! A spoofed SYN flood on a private lab (root): 240 source addresses of the lab's subnet send
//! SYNs that nobody will ever acknowledge, at 50,000 per second for 6 s, while an honest client
//! on another address opens a new mTLS connection for every request. Without SYN cookies each
//! SYN took a listening socket for the 10 s handshake timeout and the honest client got 0 of 20
//! answers (docs/tcp.md, "SYN cookies"). Every frame stays inside the lab's namespace pair;
//! the flood stops by itself after its count or its time.

mod common;

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::socket::{bind, connect, setsockopt, socket, sockopt, AddressFamily, SockFlag, SockType, SockaddrIn};
use nix::sys::time::TimeVal;

const FLOOD_RATE: u64 = 50_000;
const FLOOD_FOR: Duration = Duration::from_secs(6);

/// RFC 1071 one's-complement sum of `data`, folded, not yet inverted.
fn sum16(mut sum: u32, data: &[u8]) -> u32 {
    for pair in data.chunks(2) {
        let word = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum
}

/// An Ethernet/IPv4/TCP SYN (with an MSS option) from `src:sport` to `dst:port`.
fn syn_frame(src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, sport: u16, dst: Ipv4Addr, port: u16, seq: u32) -> [u8; 58] {
    let mut f = [0u8; 58];
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
    tcp[12] = 6 << 4; // 24-byte header
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    tcp[20..24].copy_from_slice(&[2, 4, 0x05, 0xb4]); // MSS 1460
    let mut pseudo = [0u8; 12];
    pseudo[..4].copy_from_slice(&src.octets());
    pseudo[4..8].copy_from_slice(&dst.octets());
    pseudo[9] = 6;
    pseudo[10..12].copy_from_slice(&24u16.to_be_bytes());
    let checksum = !(sum16(sum16(0, &pseudo), &f[34..58]) as u16);
    f[50..52].copy_from_slice(&checksum.to_be_bytes());
    f
}

fn mac_of(interface: &str, netns: Option<&str>) -> [u8; 6] {
    let text = match netns {
        None => std::fs::read_to_string(format!("/sys/class/net/{interface}/address")).expect("MAC"),
        Some(ns) => {
            let out = Command::new("ip").args(["netns", "exec", ns, "cat", &format!("/sys/class/net/{interface}/address")]).output().expect("MAC");
            String::from_utf8(out.stdout).expect("utf-8")
        }
    };
    let bytes: Vec<u8> = text.trim().split(':').map(|b| u8::from_str_radix(b, 16).expect("hex")).collect();
    bytes.try_into().expect("six bytes")
}

/// Sends SYNs from `sources` (round robin, a fresh port and sequence number each) out of
/// `interface` in the current namespace through an AF_PACKET socket: `rate` per second, for at
/// most `duration` and `rate * duration` frames. Returns how many were sent.
fn flood(interface: &str, src_mac: [u8; 6], dst_mac: [u8; 6], sources: &[Ipv4Addr], dst: Ipv4Addr, rate: u64, duration: Duration) -> u64 {
    // SAFETY: plain socket(2), if_nametoindex(3), bind(2) and send(2) calls on a socket this
    // function owns, with buffers that outlive each call.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "AF_PACKET socket: {}", std::io::Error::last_os_error());
        let name = std::ffi::CString::new(interface).expect("name");
        let index = libc::if_nametoindex(name.as_ptr());
        assert!(index > 0, "no interface {interface}");
        let mut address: libc::sockaddr_ll = std::mem::zeroed();
        address.sll_family = libc::AF_PACKET as u16;
        address.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        address.sll_ifindex = index as i32;
        let bound = libc::bind(fd, &address as *const libc::sockaddr_ll as *const libc::sockaddr, std::mem::size_of::<libc::sockaddr_ll>() as u32);
        assert_eq!(bound, 0, "bind: {}", std::io::Error::last_os_error());
        let total = rate * duration.as_secs();
        let start = Instant::now();
        let mut sent = 0u64;
        while sent < total && start.elapsed() < duration {
            // Pace in 1 ms steps: send what the rate allows so far.
            let due = (start.elapsed().as_micros() as u64 * rate / 1_000_000).min(total);
            while sent < due {
                let source = sources[(sent % sources.len() as u64) as usize];
                let sport = 1024 + ((sent / sources.len() as u64) % 60_000) as u16;
                let frame = syn_frame(src_mac, dst_mac, source, sport, dst, PORT, sent as u32);
                if libc::send(fd, frame.as_ptr().cast(), frame.len(), 0) == frame.len() as isize {
                    sent += 1;
                } else {
                    // ENOBUFS: the veth queue is full; count nothing and let it drain.
                    break;
                }
            }
            thread::sleep(Duration::from_micros(500));
        }
        libc::close(fd);
        sent
    }
}

/// A TCP connection from `local` (an address of the current namespace) to `to`.
fn connect_from(local: Ipv4Addr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let SocketAddr::V4(to) = to else { unreachable!("the lab is IPv4") };
    let fd: OwnedFd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    setsockopt(&fd, sockopt::SendTimeout, &TimeVal::new(3, 0))?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(SocketAddrV4::new(local, 0)))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(to))?;
    Ok(TcpStream::from(fd))
}

/// One mTLS request on a new connection from `local`: the status, or why it failed.
fn one_request(config: &Arc<rustls::ClientConfig>, local: Ipv4Addr, to: SocketAddr) -> Result<u16, String> {
    let tcp = connect_from(local, to).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(3))).map_err(|e| e.to_string())?;
    let name = rustls_pki_types::ServerName::IpAddress(to.ip().into());
    let conn = rustls::ClientConnection::new(Arc::clone(config), name).map_err(|e| e.to_string())?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    request(&mut stream, "GET", "/v1/accounts/1", "").map(|(status, _)| status).map_err(|e| format!("request: {e}"))
}

fn rss_bytes(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .expect("VmRSS")
        * 1024
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[test]
fn a_spoofed_syn_flood_from_240_addresses_does_not_deny_an_honest_client() {
    let lab = lab("flood", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let extra = std::env::var("PANTERA_FLOOD_EXTRA_TOML").unwrap_or_default();
    let server = Server::start(&lab, dir.path(), "ledger", &extra);
    let service = SocketAddr::from((server.service, PORT));
    let octets = lab.spec.peer_ipv4.octets();
    let honest_ip = Ipv4Addr::new(octets[0], octets[1], octets[2], 4);
    let out = Command::new("ip")
        .args(["-n", &lab.spec.netns, "addr", "add", &format!("{honest_ip}/{}", lab.spec.prefix_len), "dev", &lab.spec.peer_if])
        .output()
        .expect("ip addr add");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // Spoofed sources: 240 addresses of the lab's own subnet that no host answers for.
    let sources: Vec<Ipv4Addr> = (10..250).map(|last| Ipv4Addr::new(octets[0], octets[1], octets[2], last)).collect();
    assert!(!sources.contains(&server.service) && !sources.contains(&honest_ip));
    let config = tls_client_config(&dir.path().join("tls"), Some("client"));
    // Warm up: the honest client is served before the flood, and an account exists to read.
    let warm = in_netns(&lab.spec.netns, {
        let config = Arc::clone(&config);
        move || one_request(&config, honest_ip, service)
    });
    let status = warm.join().expect("warm-up").expect("served before the flood");
    assert!(status == 200 || status == 404, "status {status}");
    let rss_before = rss_bytes(server.pid());

    let (src_mac, dst_mac) = (mac_of(&lab.spec.peer_if, Some(&lab.spec.netns)), mac_of(&lab.spec.host_if, None));
    let peer_if = lab.spec.peer_if.clone();
    let service_ip = server.service;
    let flooding = Arc::new(AtomicBool::new(true));
    let flooder = in_netns(&lab.spec.netns, {
        let flooding = Arc::clone(&flooding);
        move || {
            let started = Instant::now();
            let sent = flood(&peer_if, src_mac, dst_mac, &sources, service_ip, FLOOD_RATE, FLOOD_FOR);
            flooding.store(false, Ordering::Relaxed);
            (sent, started.elapsed())
        }
    });
    // The honest client: one request on a new connection every 25 ms while the flood lasts.
    let honest = in_netns(&lab.spec.netns, {
        let (config, flooding) = (Arc::clone(&config), Arc::clone(&flooding));
        move || {
            thread::sleep(Duration::from_millis(500));
            let mut results = Vec::new();
            while flooding.load(Ordering::Relaxed) {
                let start = Instant::now();
                let outcome = one_request(&config, honest_ip, service);
                results.push((outcome, start.elapsed()));
                thread::sleep(Duration::from_millis(25));
            }
            results
        }
    });
    let (sent, took) = flooder.join().expect("flooder");
    let results = honest.join().expect("honest client");
    let rss_after = rss_bytes(server.pid());

    let rate = sent as f64 / took.as_secs_f64();
    let served: Vec<Duration> = results.iter().filter(|(r, _)| matches!(r, Ok(200) | Ok(404))).map(|(_, t)| *t).collect();
    let failures: Vec<&Result<u16, String>> = results.iter().map(|(r, _)| r).filter(|r| !matches!(r, Ok(200) | Ok(404))).collect();
    let mut latencies = served.clone();
    latencies.sort();
    let cookies = server.metric_sum("pantera_tcp_total", &["syn_cookies_sent"]);
    let accepted = server.metric_sum("pantera_tcp_total", &["syn_cookies_accepted"]);
    let summary = format!(
        "flood: {sent} SYNs in {took:?} ({rate:.0}/s); honest: {} of {} served, p50 {:?}, p99 {:?}; cookies sent {cookies}, accepted {accepted}; RSS {} -> {} KiB; failures {failures:?}",
        served.len(),
        results.len(),
        latencies.get(latencies.len() / 2),
        (!latencies.is_empty()).then(|| percentile(&latencies, 0.99)),
        rss_before / 1024,
        rss_after / 1024,
    );
    println!("{summary}");
    assert!(sent >= FLOOD_RATE * 5, "the flood was not a flood: {summary}");
    assert!(rate >= FLOOD_RATE as f64 * 0.9, "{summary}");
    assert!(results.len() >= 100, "{summary}");
    assert!(served.len() * 100 >= results.len() * 99, "fewer than 99 % served: {summary}");
    assert!(percentile(&latencies, 0.99) < Duration::from_millis(50), "p99: {summary}");
    // No state per SYN: the flood's SYNs were answered with cookies, and memory stayed flat.
    assert!(cookies >= sent as f64 * 0.9, "{summary}");
    assert!(rss_after <= rss_before + 4 * 1024 * 1024, "memory grew: {summary}");
}
