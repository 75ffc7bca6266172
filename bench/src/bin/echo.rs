//! TCP echo throughput through the appliance (XDP + AF_XDP + smoltcp, `--app echo`) against the
//! kernel's own TCP on the same veth, in the same run.
//!
//! `echo run` makes the standard lab, starts `target/release/pantera serve --lab --app echo`,
//! and a kernel echo server on the host end's kernel address (10.99.0.3); then it runs this
//! same binary as `echo client` inside the client namespace against each, one connection at a
//! time, bounded in bytes and time. Results are printed and written into docs/PERFORMANCE.md
//! between the `echo` markers.
//!
//! Run as root after `cargo build --release -p pantera -p bench`.
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Parser, Subcommand};
use pantera::lab::{Lab, LabSpec};

const MANAGEMENT: &str = "127.0.0.1:9466";
const KERNEL_PORT: u16 = 9000;
/// Bytes written per call by the client.
const CHUNK_BYTES: usize = 64 * 1024;

#[derive(Parser, Debug)]
#[command(about = "TCP echo throughput: userspace stack vs kernel")]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Make the lab, start both servers, measure, report.
    Run {
        /// Bytes echoed per run (sent and received back).
        #[arg(long, default_value_t = 256 << 20)]
        bytes: u64,
        /// Runs per target; the table shows each.
        #[arg(long, default_value_t = 3)]
        runs: u32,
        #[arg(long, default_value = "docs/PERFORMANCE.md")]
        report: String,
    },
    /// (Inside the namespace.) Echo `bytes` through one connection; print MB/s.
    Client {
        #[arg(long)]
        target: SocketAddr,
        #[arg(long)]
        bytes: u64,
        #[arg(long, default_value_t = 60)]
        max_seconds: u64,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command.unwrap_or(Cmd::Run { bytes: 256 << 20, runs: 3, report: "docs/PERFORMANCE.md".to_owned() }) {
        Cmd::Run { bytes, runs, report } => run(bytes, runs, &report),
        Cmd::Client { target, bytes, max_seconds } => client(target, bytes, Duration::from_secs(max_seconds)),
    }
}

/// One connection: a writer thread sends `bytes`, this thread reads them back and checks them.
fn client(target: SocketAddr, bytes: u64, limit: Duration) -> Result<()> {
    let stream = TcpStream::connect_timeout(&target, Duration::from_secs(5)).with_context(|| format!("connect {target}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut writer = stream.try_clone()?;
    let deadline = Instant::now() + limit;
    let started = Instant::now();
    let sender = thread::spawn(move || -> std::io::Result<()> {
        let chunk: Vec<u8> = (0..CHUNK_BYTES).map(|i| (i % 251) as u8).collect();
        let mut left = bytes;
        while left > 0 && Instant::now() < deadline {
            let n = left.min(CHUNK_BYTES as u64) as usize;
            writer.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let mut reader = stream;
    let mut buf = vec![0u8; CHUNK_BYTES];
    let mut received = 0u64;
    while received < bytes {
        ensure!(Instant::now() < deadline, "echo did not finish within {limit:?}: {received} of {bytes} bytes");
        let n = reader.read(&mut buf)?;
        ensure!(n > 0, "server closed after {received} bytes");
        // The pattern repeats every 251 bytes of each 64 KiB chunk: check every byte.
        for (i, b) in buf[..n].iter().enumerate() {
            let at = (received + i as u64) % CHUNK_BYTES as u64;
            ensure!(*b == (at % 251) as u8, "corrupt byte at offset {}", received + i as u64);
        }
        received += n as u64;
    }
    sender.join().expect("sender thread")?;
    let seconds = started.elapsed().as_secs_f64();
    println!("{{\"bytes\":{bytes},\"seconds\":{seconds:.3},\"mb_per_s\":{:.1}}}", bytes as f64 / seconds / 1e6);
    Ok(())
}

/// Kills the child on drop (by its pid, SIGTERM first).
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_ready(url_addr: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(url_addr) {
            let _ = write!(s, "GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if text.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
        }
        thread::sleep(Duration::from_millis(100));
    }
    bail!("pantera not ready on {url_addr}")
}

/// A plain kernel echo server, thread per connection, until `stop`.
fn kernel_echo(listen: SocketAddr, stop: Arc<AtomicBool>) -> Result<thread::JoinHandle<()>> {
    let listener = TcpListener::bind(listen).with_context(|| format!("bind {listen}"))?;
    listener.set_nonblocking(true)?;
    Ok(thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    thread::spawn(move || {
                        let mut buf = vec![0u8; CHUNK_BYTES];
                        while let Ok(n) = s.read(&mut buf) {
                            if n == 0 || s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    });
                }
                Err(_) => thread::sleep(Duration::from_millis(20)),
            }
        }
    }))
}

fn measure(lab: &Lab, target: SocketAddr, bytes: u64) -> Result<f64> {
    let me = std::env::current_exe()?;
    let out = lab
        .ns_command(&[me.to_str().context("exe path")?, "client", "--target", &target.to_string(), "--bytes", &bytes.to_string()])
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(out.status.success(), "echo client against {target} failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim()).with_context(|| format!("client output: {text}"))?;
    v["mb_per_s"].as_f64().context("mb_per_s")
}

fn run(bytes: u64, runs: u32, report: &str) -> Result<()> {
    let spec = LabSpec::standard(1);
    let lab = Lab::create(&spec)?;
    let pantera = Process(
        Command::new("target/release/pantera")
            .args(["serve", "--lab", "--app", "echo", "--management", MANAGEMENT])
            .stdout(Stdio::null())
            .spawn()
            .context("start target/release/pantera (build it with --release first)")?,
    );
    wait_ready(MANAGEMENT)?;
    let stop = Arc::new(AtomicBool::new(false));
    let kernel_addr = SocketAddr::from((spec.host_ipv4, KERNEL_PORT));
    let kernel = kernel_echo(kernel_addr, Arc::clone(&stop))?;
    let pantera_addr = SocketAddr::from((spec.service_ipv4, 8443));
    let mut rows = Vec::new();
    for (name, target) in [("pantera (XDP + AF_XDP copy mode + smoltcp)", pantera_addr), ("kernel TCP (same veth, tx checksum offload off)", kernel_addr)] {
        let mut figures = Vec::new();
        for _ in 0..runs {
            figures.push(measure(&lab, target, bytes)?);
        }
        println!("{name}: {figures:.0?} MB/s");
        rows.push((name, figures));
    }
    stop.store(true, Ordering::Relaxed);
    let _ = kernel.join();
    drop(pantera);
    drop(lab);

    let mut table = format!(
        "One connection echoing {} MiB (sent and received back, every byte checked), {runs} runs each, MTU 1500.\n\n| server | MB/s per run |\n|---|---|\n",
        bytes >> 20
    );
    for (name, figures) in &rows {
        let list: Vec<String> = figures.iter().map(|f| format!("{f:.0}")).collect();
        table.push_str(&format!("| {name} | {} |\n", list.join(", ")));
    }
    write_section(report, "echo", &table)?;
    println!("\n{table}");
    Ok(())
}

/// Replaces the text between `<!-- NAME:begin -->` and `<!-- NAME:end -->` in `path` (appends
/// the section if the markers are absent).
fn write_section(path: &str, name: &str, body: &str) -> Result<()> {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let section = format!("{begin}\n{body}{end}");
    let new = match (text.find(&begin), text.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{section}{}", &text[..b], &text[e + end.len()..]),
        _ => format!("{text}\n## TCP echo throughput\n\n{section}\n"),
    };
    std::fs::write(path, new).with_context(|| format!("write {path}"))
}
