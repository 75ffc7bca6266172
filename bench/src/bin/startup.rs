//! `startup`: start-to-ready time of `pantera serve` on an empty (freshly formatted) data
//! directory (issue 13).
//!
//! On a private lab, formats a fresh data directory, starts `pantera serve`, and probes
//! `/readyz` on the management port every 0.2 ms until it answers 200 (so the probe adds at
//! most that to the figure); then stops the process by its pid with SIGTERM. Repeated `--runs`
//! times; prints each run, the median, and the median of each step the appliance reports in its
//! "ready in X ms: step Y ms, ..." log line (`pantera::startup`). Needs root (the lab, XDP).
#![forbid(unsafe_code)]

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use pantera::lab::{Lab, LabSpec};

const PORT: u16 = 8443;
/// A start that is not ready within this fails the run.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a stop may take after SIGTERM before the process is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The probe's interval: small against the figure measured.
const PROBE_INTERVAL: Duration = Duration::from_micros(200);
const RUNS_MAX: usize = 1000;

#[derive(Debug, Parser)]
#[command(
    name = "startup",
    about = "Start-to-ready time of pantera serve on an empty data directory"
)]
struct Args {
    /// Starts measured; the median is reported.
    #[arg(long, default_value_t = 11)]
    runs: usize,
    /// The pantera binary (default: next to this one).
    #[arg(long)]
    pantera: Option<PathBuf>,
    /// Another pantera binary (say, a build of the previous commit) started alternately with
    /// `--pantera`, run for run, so both see the same machine load; both are reported.
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// `tls.lock_memory` of the appliance (mlockall at start; on by default, as in the
    /// appliance): `--lock-memory false` to compare.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    lock_memory: bool,
}

/// One start: spawn to /readyz 200, and the appliance's own breakdown.
struct Run {
    ready: Duration,
    /// (step, ms) from the "ready in" log line, in the order the steps ran.
    steps: Vec<(String, f64)>,
    /// The appliance's own total (from the first instruction of `serve`).
    serve_ms: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        (1..=RUNS_MAX).contains(&args.runs),
        "--runs must be 1..={RUNS_MAX}"
    );
    let me = std::env::current_exe().context("cannot find this program's path")?;
    let pantera = args
        .pantera
        .clone()
        .unwrap_or_else(|| me.with_file_name("pantera"));
    ensure!(
        pantera.exists(),
        "{} not found: build it first (cargo build --release -p pantera)",
        pantera.display()
    );

    let tmp = tempfile::Builder::new()
        .prefix("pantera-bench-startup-")
        .tempdir()?;
    let lab = Lab::create(&LabSpec::unique("startup", 1)).context("cannot create the lab")?;
    let tls = tmp.path().join("tls");
    let out = Command::new(&pantera)
        .args(["certs", "init", "--dir"])
        .arg(&tls)
        .args(["--service-ip", &lab.spec.service_ipv4.to_string()])
        .output()?;
    ensure!(
        out.status.success(),
        "pantera certs init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let management = SocketAddr::from(([127, 0, 0, 1], free_port()?));

    let mut binaries = vec![("pantera", pantera.clone())];
    if let Some(baseline) = &args.baseline {
        ensure!(baseline.exists(), "{} not found", baseline.display());
        binaries.insert(0, ("baseline", baseline.clone()));
    }
    let mut runs: Vec<Vec<Run>> = binaries.iter().map(|_| Vec::with_capacity(args.runs)).collect();
    for i in 0..args.runs {
        for (b, (name, binary)) in binaries.iter().enumerate() {
            let dir = tmp.path().join(format!("{name}-run{i}"));
            fs::create_dir_all(&dir)?;
            let data = dir.join("data");
            let out = Command::new(binary).args(["format", "--cluster-id", "0", "--data-dir"]).arg(&data).output()?;
            ensure!(out.status.success(), "pantera format: {}", String::from_utf8_lossy(&out.stderr));
            let config = dir.join("pantera.toml");
            fs::write(&config, appliance_config(&lab, &tls, &data, management, args.lock_memory))?;
            let run = start_once(binary, &config, &dir.join("pantera.log"), management)?;
            println!("{name} run {i:>3}: ready {:>6.1} ms (serve's own clock {:>6.1} ms)", ms(run.ready), run.serve_ms);
            runs[b].push(run);
        }
    }

    println!("## startup: {} starts on an empty data directory, 1 queue, lock_memory = {}", args.runs, args.lock_memory);
    for ((name, binary), runs) in binaries.iter().zip(&runs) {
        report(name, binary, runs);
    }
    Ok(())
}

/// Prints the medians of one binary's runs.
fn report(name: &str, binary: &Path, runs: &[Run]) {
    let mut ready: Vec<f64> = runs.iter().map(|r| ms(r.ready)).collect();
    let mut serve: Vec<f64> = runs.iter().map(|r| r.serve_ms).collect();
    println!("### {name} ({})", binary.display());
    println!("spawn to /readyz 200: median {:.1} ms (min {:.1}, max {:.1})", median(&mut ready), min(&ready), max(&ready));
    println!("inside serve (its \"ready in\"): median {:.1} ms", median(&mut serve));
    println!("steps (median over the runs, in the order they run):");
    for (step, _) in &runs[0].steps {
        let mut each: Vec<f64> = runs.iter().filter_map(|r| r.steps.iter().find(|(s, _)| s == step).map(|(_, v)| *v)).collect();
        println!("  {step:<44} {:>7.2} ms", median(&mut each));
    }
}

/// Starts the appliance, waits for /readyz 200, reads its breakdown, stops it.
fn start_once(pantera: &Path, config: &Path, log: &Path, management: SocketAddr) -> Result<Run> {
    let out = fs::File::create(log)?;
    let started = Instant::now();
    let child = Command::new(pantera)
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(out)
        .spawn()
        .context("cannot start pantera serve")?;
    let mut guard = Stopper(Some(child));
    let ready = loop {
        if readyz(management) {
            break started.elapsed();
        }
        if let Some(status) = guard.0.as_mut().expect("running").try_wait()? {
            bail!(
                "pantera serve exited before it was ready ({status}):\n{}",
                fs::read_to_string(log).unwrap_or_default()
            );
        }
        ensure!(
            started.elapsed() < READY_TIMEOUT,
            "pantera serve was not ready within {READY_TIMEOUT:?}"
        );
        std::thread::sleep(PROBE_INTERVAL);
    };
    guard.stop()?;
    let text = fs::read_to_string(log)?;
    let line = text
        .lines()
        .find_map(|l| l.find("ready in ").map(|at| &l[at..]))
        .context("no \"ready in\" line in the log")?;
    let (serve_ms, steps) =
        parse_ready_line(line).with_context(|| format!("cannot read the line {line:?}"))?;
    Ok(Run {
        ready,
        steps,
        serve_ms,
    })
}

/// "ready in 12.3 ms: a 1.0 ms, b c 0.2 ms" -> (12.3, [(a, 1.0), (b c, 0.2)]). A step's name
/// may hold ", ": a piece that does not end in a number of ms continues the next one's name.
fn parse_ready_line(line: &str) -> Option<(f64, Vec<(String, f64)>)> {
    let rest = line.strip_prefix("ready in ")?;
    let (total, steps) = rest.split_once(" ms:")?;
    let mut out = Vec::new();
    let mut name = String::new();
    for piece in steps.split(", ") {
        let piece = piece.trim();
        let value = piece.strip_suffix(" ms").and_then(|p| p.rsplit_once(' ')).and_then(|(n, v)| Some((n, v.parse::<f64>().ok()?)));
        match value {
            Some((last, value)) => {
                if !name.is_empty() {
                    name.push_str(", ");
                }
                name.push_str(last);
                out.push((std::mem::take(&mut name), value));
            }
            None => {
                if !name.is_empty() {
                    name.push_str(", ");
                }
                name.push_str(piece);
            }
        }
    }
    (name.is_empty() && !out.is_empty()).then_some(())?;
    Some((total.parse().ok()?, out))
}

/// SIGTERM by pid on drop (and on `stop`), then SIGKILL if it does not stop in time.
struct Stopper(Option<Child>);

impl Stopper {
    fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.0.take() else {
            return Ok(());
        };
        // std sends only SIGKILL; `kill` keeps this crate free of unsafe code.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + STOP_TIMEOUT;
        while Instant::now() < deadline {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = child.kill();
        child.wait()?;
        bail!("pantera serve did not stop within {STOP_TIMEOUT:?} of SIGTERM")
    }
}

impl Drop for Stopper {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

fn readyz(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && &head[9..12] == b"200"
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn appliance_config(
    lab: &Lab,
    tls: &Path,
    data: &Path,
    management: SocketAddr,
    lock_memory: bool,
) -> String {
    let t = tls.display();
    format!(
        r#"[dataplane]
interface = "{interface}"

[service]
address = "{service}"
port = {PORT}

[tls]
cert_chain = "{t}/server.pem"
private_key = "{t}/server.key"
client_ca = "{t}/ca.pem"
roles = {{ "cn:client" = "write" }}
lock_memory = {lock_memory}

[ledger]
data_dir = "{data}"

[management]
listen = "{management}"

[shutdown]
grace_ms = 0
"#,
        interface = lab.spec.host_if,
        service = lab.spec.service_ipv4,
        data = data.display(),
    )
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(0.0, f64::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_ready_line() {
        let (total, steps) =
            parse_ready_line("ready in 12.3 ms: data directory 1.0 ms, XDP load and attach 0.2 ms")
                .expect("parses");
        assert_eq!(total, 12.3);
        assert_eq!(
            steps,
            vec![
                ("data directory".to_owned(), 1.0),
                ("XDP load and attach".to_owned(), 0.2)
            ]
        );
        assert!(parse_ready_line("ready in 5 ms").is_none());
        let (_, steps) = parse_ready_line("ready in 3.0 ms: a, b 1.0 ms, c 2.0 ms").expect("parses");
        assert_eq!(steps, vec![("a, b".to_owned(), 1.0), ("c".to_owned(), 2.0)]);
    }
}
