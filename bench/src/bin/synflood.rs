//! `synflood`: SYNs absorbed per core with SYN cookies, and an honest client's latency during
//! the flood (issue 8's figures).
//!
//! On a private lab with one queue, starts `pantera serve` (release build), then for each rate
//! floods the service with SYNs from 240 spoofed addresses of the lab's own subnet
//! (`pantera::lab_flood`, AF_PACKET, bounded by count and time) while an honest client in the
//! lab's namespace opens a new mutual-TLS connection for one request every 20 ms. For each
//! phase it prints the SYNs sent, the SYN-ACKs with cookies, the worker thread's CPU (from
//! /proc/PID/task/TID/stat) and the honest client's outcomes and p50/p99. A last phase repeats
//! one rate with `tcp.syn_cookies = "off"` on a fresh start.
//!
//! ```text
//! cargo build --release -p bench -p pantera
//! target/release/synflood [--rates 25000,50000,100000,200000] [--seconds 5]
//! ```
//!
//! docs/PERFORMANCE.md ("SYN flood") records a run and its method.
#![forbid(unsafe_code)]

#[path = "https/process.rs"]
#[allow(dead_code)]
mod process;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use pantera::lab::{Lab, LabSpec};
use pantera::lab_client;
use pantera::lab_flood::{mac_of, SynFlood};
use process::Server;

const PORT: u16 = 8443;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(name = "synflood", about = "SYNs absorbed per core with SYN cookies; an honest client's latency meanwhile")]
struct Args {
    /// Flood rates, SYNs per second (0: no flood, the baseline).
    #[arg(long, value_delimiter = ',', default_values_t = [0u64, 25_000, 50_000, 100_000, 200_000])]
    rates: Vec<u64>,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// The rate of the last phase, run with cookies off.
    #[arg(long, default_value_t = 50_000)]
    off_rate: u64,
    /// The pantera binary (default: next to this one).
    #[arg(long)]
    pantera: Option<PathBuf>,
}

struct Phase {
    rate: u64,
    sent: u64,
    elapsed: Duration,
    cookies: f64,
    worker_cpu: f64,
    served: usize,
    tried: usize,
    latencies: Vec<Duration>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let me = std::env::current_exe().context("cannot find this program's path")?;
    let pantera = args.pantera.clone().unwrap_or_else(|| me.with_file_name("pantera"));
    ensure!(pantera.exists(), "{} not found: build it first (cargo build --release -p pantera)", pantera.display());
    let tmp = tempfile::Builder::new().prefix("pantera-bench-synflood-").tempdir()?;
    let lab = Lab::create(&LabSpec::unique("synflood", 1)).context("cannot create the lab")?;
    let tls = tmp.path().join("tls");
    let out = std::process::Command::new(&pantera)
        .args(["certs", "init", "--dir"])
        .arg(&tls)
        .args(["--service-ip", &lab.spec.service_ipv4.to_string()])
        .output()?;
    ensure!(out.status.success(), "pantera certs init: {}", String::from_utf8_lossy(&out.stderr));
    let management: SocketAddr = "127.0.0.1:9475".parse()?;
    let config = lab_client::client_config(&tls.join("ca.pem"), &tls.join("client.pem"), &tls.join("client.key"))?;

    println!("one queue, 240 spoofed sources, {} s per phase, honest client: a new mTLS connection per request every 20 ms", args.seconds);
    println!("{:>9} {:>10} {:>11} {:>12} {:>16} {:>9} {:>9} {:>9}", "cookies", "SYN/s", "cookie/s", "worker CPU", "SYNs per core-s", "served", "p50 ms", "p99 ms");
    let mut server = start(&pantera, &lab, &tls, &tmp.path().join("on"), management, "auto")?;
    for &rate in &args.rates {
        let phase = phase(&lab, &server, &config, management, rate, args.seconds)?;
        print_phase("auto", &phase);
    }
    server.stop()?;
    let mut off = start(&pantera, &lab, &tls, &tmp.path().join("off"), management, "off")?;
    let phase = phase(&lab, &off, &config, management, args.off_rate, args.seconds)?;
    print_phase("off", &phase);
    off.stop()?;
    Ok(())
}

fn print_phase(mode: &str, p: &Phase) {
    let secs = p.elapsed.as_secs_f64();
    let per_core = if p.worker_cpu > 0.0 { p.cookies / (p.worker_cpu * secs) } else { 0.0 };
    let ms = |q: f64| {
        if p.latencies.is_empty() {
            "-".to_owned()
        } else {
            let i = ((p.latencies.len() as f64 * q).ceil() as usize).clamp(1, p.latencies.len()) - 1;
            format!("{:.1}", p.latencies[i].as_secs_f64() * 1e3)
        }
    };
    println!(
        "{mode:>9} {:>10.0} {:>11.0} {:>11.0}% {:>16.0} {:>9} {:>9} {:>9}",
        p.sent as f64 / secs,
        p.cookies / secs,
        p.worker_cpu * 100.0,
        per_core,
        format!("{}/{}", p.served, p.tried),
        ms(0.5),
        ms(0.99),
    );
    let _ = p.rate;
}

fn phase(lab: &Lab, server: &Server, config: &Arc<rustls::ClientConfig>, management: SocketAddr, rate: u64, seconds: u64) -> Result<Phase> {
    let duration = Duration::from_secs(seconds);
    let octets = lab.spec.peer_ipv4.octets();
    let sources: Vec<Ipv4Addr> = (10..250).map(|last| Ipv4Addr::new(octets[0], octets[1], octets[2], last)).collect();
    let metrics = |name: &str| -> Result<f64> {
        let text = process::http_get(management, "/metrics")?.1;
        Ok(process::metric_sum_where(&text, &format!("pantera_tcp_{name}_total"), "").unwrap_or(0.0))
    };
    let cookies_before = metrics("syn_cookies_sent")?;
    let worker = worker_tid(server.pid())?;
    let cpu_before = thread_ticks(server.pid(), worker)?;
    let flooding = Arc::new(AtomicBool::new(true));
    let flood = SynFlood {
        interface: lab.spec.peer_if.clone(),
        src_mac: [0x02, 0x00, 0x5e, 0x10, 0x00, 0x01],
        dst_mac: mac_of(&lab.spec.host_if)?,
        sources,
        dst: lab.spec.service_ipv4,
        port: PORT,
        rate,
        duration,
    };
    let netns = lab.spec.netns.clone();
    let flooder = {
        let (flooding, netns) = (Arc::clone(&flooding), netns.clone());
        std::thread::spawn(move || -> Result<(u64, Duration)> {
            lab_client::enter_netns(&netns)?;
            let started = Instant::now();
            let sent = if rate == 0 {
                std::thread::sleep(duration);
                0
            } else {
                flood.run()?.sent
            };
            flooding.store(false, Ordering::Relaxed);
            Ok((sent, started.elapsed()))
        })
    };
    let target = SocketAddr::from((lab.spec.service_ipv4, PORT));
    let honest = {
        let (flooding, config) = (Arc::clone(&flooding), Arc::clone(config));
        std::thread::spawn(move || -> Result<(usize, usize, Vec<Duration>)> {
            lab_client::enter_netns(&netns)?;
            let (mut served, mut tried, mut latencies) = (0, 0, Vec::new());
            while flooding.load(Ordering::Relaxed) {
                let start = Instant::now();
                tried += 1;
                if one_request(&config, target).is_ok() {
                    served += 1;
                    latencies.push(start.elapsed());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            latencies.sort();
            Ok((served, tried, latencies))
        })
    };
    let (sent, elapsed) = flooder.join().map_err(|_| anyhow::anyhow!("flooder panicked"))??;
    let cpu_after = thread_ticks(server.pid(), worker)?;
    let (served, tried, latencies) = honest.join().map_err(|_| anyhow::anyhow!("honest client panicked"))??;
    let cookies = metrics("syn_cookies_sent")? - cookies_before;
    let worker_cpu = (cpu_after - cpu_before) as f64 / process::clock_ticks_per_second() as f64 / elapsed.as_secs_f64();
    Ok(Phase {
        rate,
        sent,
        elapsed,
        cookies,
        worker_cpu,
        served,
        tried,
        latencies,
    })
}

/// One GET on a new mutual-TLS connection; an error for anything but a 200 or a 404.
fn one_request(config: &Arc<rustls::ClientConfig>, target: SocketAddr) -> Result<()> {
    let tcp = TcpStream::connect_timeout(&target, Duration::from_secs(3))?;
    tcp.set_read_timeout(Some(Duration::from_secs(3)))?;
    let name = rustls_pki_types::ServerName::IpAddress(target.ip().into());
    let conn = rustls::ClientConnection::new(Arc::clone(config), name)?;
    let mut stream = rustls::StreamOwned::new(conn, tcp);
    stream.write_all(b"GET /v1/accounts/1 HTTP/1.1\r\nHost: pantera\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let head = String::from_utf8_lossy(&response[..response.len().min(16)]).into_owned();
    ensure!(head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.1 404"), "response {head:?}");
    Ok(())
}

/// The worker thread of queue 0 (named `worker-q0`).
fn worker_tid(pid: u32) -> Result<u32> {
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: u32 = entry?.file_name().to_string_lossy().parse()?;
        if fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).is_ok_and(|c| c.trim() == "worker-q0") {
            return Ok(tid);
        }
    }
    anyhow::bail!("no worker-q0 thread in process {pid}")
}

/// utime + stime of one thread, in clock ticks.
fn thread_ticks(pid: u32, tid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat"))?;
    process::parse_stat(&stat).map(|(_, ticks)| ticks).context("unparsable stat")
}

fn start(pantera: &Path, lab: &Lab, tls: &Path, dir: &Path, management: SocketAddr, cookies: &str) -> Result<Server> {
    fs::create_dir_all(dir)?;
    process::format_data_dir(pantera, &dir.join("data"))?;
    let config_path = dir.join("pantera.toml");
    let t = tls.display();
    fs::write(
        &config_path,
        format!(
            r#"[dataplane]
interface = "{interface}"

[service]
address = "{service}"
port = {PORT}

[tcp]
syn_cookies = "{cookies}"

[tls]
cert_chain = "{t}/server.pem"
private_key = "{t}/server.key"
client_ca = "{t}/ca.pem"
roles = {{ "cn:client" = "write" }}

[ledger]
data_dir = "{data}"

[management]
listen = "{management}"
"#,
            interface = lab.spec.host_if,
            service = lab.spec.service_ipv4,
            data = dir.join("data").display(),
        ),
    )?;
    let mut server = Server::spawn("pantera serve", pantera, &["serve".into(), "--config".into(), config_path.display().to_string()], dir.join("pantera.log"))?;
    server.wait_ready(READY_TIMEOUT, || matches!(process::http_get(management, "/readyz"), Ok((200, _))))?;
    Ok(server)
}
