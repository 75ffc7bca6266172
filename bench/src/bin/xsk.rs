//! AF_XDP packet rate on a lab veth pair: `rxdrop` (receive, count, recycle) and `reflect`
//! (l2fwd-style: swap MACs, send back), against a bounded sender in the client namespace.
//!
//! `xsk run` makes a private lab, attaches the steering program to the host end, opens one
//! socket on queue 0, and starts this same binary as `xsk send` inside the namespace. The
//! sender is itself an AF_XDP socket (TX only, no XDP program on its side), so the bench needs
//! no raw sockets and no unsafe code; it sends minimum-size TCP SYNs to the service port,
//! which the steering program redirects. Bounded by a frame count and a time limit.
//!
//! Run as root: `cargo run --release -p bench --bin xsk -- run --mode rxdrop`.
#![forbid(unsafe_code)]

#[allow(dead_code)]
#[path = "../../../src/lab.rs"]
mod lab;

use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use dataplane::{interface_mac, EdgeConfig, SteerConfig, Steering, XdpMode, XskConfig, XskPort};

const SERVICE_PORT: u16 = 8443;
/// Frames taken from the RX ring per loop turn in the receiver.
const RX_BATCH_MAX: usize = 64;
/// Frames queued for TX per loop turn in the sender.
const TX_BATCH_MAX: usize = 256;

#[derive(Parser, Debug)]
#[command(about = "AF_XDP packets/s on a lab veth pair")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Make a lab, receive the sender's frames, print the rate.
    Run {
        #[arg(long, value_enum, default_value_t = Mode::Rxdrop)]
        mode: Mode,
        /// Frames the sender sends at most.
        #[arg(long, default_value_t = 2_000_000)]
        count: u64,
        /// Seconds the sender sends at most.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Ethernet frame bytes (without FCS), 60..=1514.
        #[arg(long, default_value_t = 60)]
        size: usize,
        #[arg(long, value_enum, default_value_t = Attach::Auto)]
        xdp_mode: Attach,
    },
    /// (Inside the namespace.) Send TCP SYNs to the service port through an AF_XDP socket.
    Send {
        #[arg(long)]
        ifname: String,
        #[arg(long)]
        dst_mac: String,
        #[arg(long)]
        src_ip: Ipv4Addr,
        #[arg(long)]
        dst_ip: Ipv4Addr,
        #[arg(long)]
        count: u64,
        #[arg(long)]
        seconds: u64,
        #[arg(long)]
        size: usize,
    },
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
enum Mode {
    Rxdrop,
    Reflect,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Attach {
    Auto,
    Native,
    Generic,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Run { mode, count, seconds, size, xdp_mode } => run(mode, count, seconds, size, xdp_mode),
        Cmd::Send { ifname, dst_mac, src_ip, dst_ip, count, seconds, size } => {
            send(&ifname, parse_mac(&dst_mac)?, src_ip, dst_ip, count, seconds, size)
        }
    }
}

fn parse_mac(text: &str) -> Result<[u8; 6]> {
    let bytes: Vec<u8> = text.split(':').map(|p| u8::from_str_radix(p, 16)).collect::<Result<_, _>>()?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("{text:?} is not a MAC address"))
}

fn mac_text(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

fn run(mode: Mode, count: u64, seconds: u64, size: usize, attach: Attach) -> Result<()> {
    if !(60..=1514).contains(&size) {
        bail!("--size {size} must be in 60..=1514");
    }
    ensure_root()?;
    let lab = lab::Lab::create(&lab::LabSpec::unique("xskbench", 1)).context("creating the lab")?;
    let spec = lab.spec.clone();
    let mut steering = Steering::attach(&SteerConfig {
        ifname: spec.host_if.clone(),
        service_ipv4: spec.service_ipv4,
        service_port: SERVICE_PORT,
        mode: match attach {
            Attach::Auto => XdpMode::Auto,
            Attach::Native => XdpMode::Native,
            Attach::Generic => XdpMode::Generic,
        },
        // The sender is one address sending SYNs as fast as it can: this measures the rings,
        // so the per-source SYN limit (which would drop nearly all of them) is off.
        edge: EdgeConfig::off(),
    })?;
    let config = XskConfig { rx_batch_max: RX_BATCH_MAX, ..XskConfig::default() };
    let mut port = XskPort::open(&spec.host_if, 0, &config)?;
    steering.register(0, &port)?;
    let host_mac = interface_mac(&spec.host_if)?;

    let exe = std::env::current_exe()?;
    let exe = exe.to_str().context("exe path")?;
    let (count_s, seconds_s, size_s) = (count.to_string(), seconds.to_string(), size.to_string());
    let (src_ip, dst_ip) = (spec.peer_ipv4.to_string(), spec.service_ipv4.to_string());
    let dst_mac = mac_text(host_mac);
    let sender = lab
        .ns_command(&[
            exe, "send", "--ifname", &spec.peer_if, "--dst-mac", &dst_mac, "--src-ip", &src_ip, "--dst-ip", &dst_ip,
            "--count", &count_s, "--seconds", &seconds_s, "--size", &size_s,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the sender in the namespace")?;

    let mut first: Option<Instant> = None;
    let mut last = Instant::now();
    let mut received: u64 = 0;
    let mut sender = Some(sender);
    let mut sender_output = String::new();
    let hard_limit = Instant::now() + Duration::from_secs(seconds + 10);
    loop {
        let mut got = 0;
        while got < RX_BATCH_MAX
            && port.receive_raw(|frame| match mode {
                Mode::Rxdrop => None,
                Mode::Reflect => {
                    // l2fwd: swap destination and source MAC, send the frame back out.
                    let (dst, src) = frame.split_at_mut(6);
                    dst.swap_with_slice(&mut src[..6]);
                    Some(frame.len())
                }
            })
        {
            got += 1;
        }
        port.service();
        if got > 0 {
            received += got as u64;
            let now = Instant::now();
            first.get_or_insert(now);
            last = now;
            continue;
        }
        if let Some(child) = sender.as_mut() {
            if child.try_wait()?.is_some() {
                let out = sender.take().context("sender")?.wait_with_output()?;
                sender_output = String::from_utf8_lossy(&out.stdout).into_owned();
            }
        } else if last.elapsed() > Duration::from_millis(200) && port.tx_in_flight() == 0 {
            break; // the sender is done and the link has drained
        }
        if Instant::now() > hard_limit {
            if let Some(mut child) = sender.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
            break;
        }
        port.wait(Duration::from_millis(1))?;
    }

    let stats = port.stats();
    let window = first.map(|f| last.duration_since(f)).unwrap_or_default().as_secs_f64();
    let pps = if window > 0.0 { received as f64 / window } else { 0.0 };
    println!("mode={mode:?} xdp={} frame_bytes={size}", steering.mode());
    println!("sender: {}", sender_output.trim());
    println!("received={received} in {window:.3} s: {:.0} pps ({:.1} Mbit/s of frames)", pps, pps * size as f64 * 8.0 / 1e6);
    if mode == Mode::Reflect {
        println!("reflected (put on TX ring)={}", stats.tx_frames);
    }
    println!(
        "kernel: rx_dropped={} rx_ring_full={} fill_ring_empty={}  tx_no_frame={} ring_desc_invalid={}",
        stats.rx_dropped, stats.rx_ring_full, stats.fill_ring_empty, stats.tx_no_frame, stats.ring_desc_invalid
    );
    let nonzero: Vec<_> = steering.counters().into_iter().filter(|(_, v)| *v > 0).collect();
    println!("steering: {nonzero:?}");
    Ok(())
}

/// A minimum TCP SYN from the client to the service port; the source port varies per frame so
/// the stream looks like many flows.
fn syn_frame(buf: &mut [u8], src_mac: [u8; 6], dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, sport: u16) {
    buf.fill(0);
    buf[0..6].copy_from_slice(&dst_mac);
    buf[6..12].copy_from_slice(&src_mac);
    buf[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip_total = (buf.len() - 14).min(1500) as u16;
    let ip = &mut buf[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_total.to_be_bytes());
    ip[6] = 0x40; // DF
    ip[8] = 64;
    ip[9] = 6; // TCP
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    // RFC 791 header checksum: one's complement sum of the header's 16-bit words.
    let mut sum: u32 = ip.chunks(2).map(|w| u32::from(u16::from_be_bytes([w[0], w[1]]))).sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ip[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    let tcp = &mut buf[34..54];
    tcp[0..2].copy_from_slice(&sport.to_be_bytes());
    tcp[2..4].copy_from_slice(&SERVICE_PORT.to_be_bytes());
    tcp[12] = 5 << 4;
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&65535u16.to_be_bytes());
}

fn send(ifname: &str, dst_mac: [u8; 6], src: Ipv4Addr, dst: Ipv4Addr, count: u64, seconds: u64, size: usize) -> Result<()> {
    let src_mac = interface_mac(ifname)?;
    let config = XskConfig {
        frame_count: 8192,
        fill_ring: 2048,
        rx_ring: 2048,
        tx_ring: 4096,
        comp_ring: 4096,
        ..XskConfig::default()
    };
    let mut port = XskPort::open(ifname, 0, &config)?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut sport: u16 = 1024;
    while sent < count && Instant::now() < deadline {
        let mut queued = 0;
        while queued < TX_BATCH_MAX && sent < count {
            sport = if sport == u16::MAX { 1024 } else { sport + 1 };
            if !port.transmit_raw(size, |buf| syn_frame(buf, src_mac, dst_mac, src, dst, sport)) {
                break;
            }
            queued += 1;
            sent += 1;
        }
        port.service();
    }
    // Drain: keep kicking until the kernel has sent everything (bounded).
    let drain_deadline = Instant::now() + Duration::from_secs(2);
    while port.tx_in_flight() > 0 && Instant::now() < drain_deadline {
        port.service();
    }
    let elapsed = start.elapsed().as_secs_f64();
    let stats = port.stats();
    println!(
        "sent={sent} in {elapsed:.3} s ({:.0} pps), tx_frames={} in_flight_at_exit={}",
        sent as f64 / elapsed,
        stats.tx_frames,
        port.tx_in_flight()
    );
    Ok(())
}

fn ensure_root() -> Result<()> {
    let out = Command::new("id").arg("-u").output()?;
    if String::from_utf8_lossy(&out.stdout).trim() != "0" {
        bail!("run as root");
    }
    Ok(())
}
