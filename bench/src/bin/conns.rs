//! `conns`: capacity and memory per idle keep-alive HTTPS connection on one queue (issue 7).
//!
//! On a private lab, starts `pantera serve` with `tcp.connections_max = N`, reads its resident
//! memory (VmRSS of /proc/PID/status) once it is ready, opens N mutual-TLS keep-alive
//! connections from the lab's client namespace with the lab client fleet
//! (`pantera::lab_client`: one thread, nonblocking sockets, poll(2)), sends one request on each,
//! and reads VmRSS again while all N are open and idle. It prints RSS at start, RSS with N idle
//! connections, (RSS_N - RSS_0) / N, the handshake rate, the appliance's CPU while the N
//! connections idle, and the same figures for an in-process model of the per-connection TLS and
//! HTTP state (the breakdown). Then one connection uploads an 8 MiB batch body a few times (the
//! bulk cost of the TCP buffer size).
//!
//! `conns --rx-buffer-bytes B --tx-buffer-bytes B` compares TCP buffer sizes on the same machine.
#![forbid(unsafe_code)]

#[path = "https/process.rs"]
#[allow(dead_code)]
mod process;

use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::Parser;
use pantera::lab::{Lab, LabSpec};
use pantera::lab_client::{self, Fleet, FleetLimits};

use process::Server;

const PORT: u16 = 8443;
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const GET_ACCOUNT: &[u8] = b"GET /v1/accounts/1 HTTP/1.1\r\nHost: pantera\r\n\r\n";
/// Events in the bulk batch: the API's largest batch (TigerBeetle's 8189).
const BULK_EVENTS: usize = 8189;
/// The bulk body's size: the default `http.body_bytes_max` (8 MiB) less room for the head.
const BULK_BODY_BYTES: usize = 8 * 1024 * 1024 - 1024;
/// Uploads of the bulk body; the median is reported.
const BULK_RUNS: usize = 5;
/// How long the appliance's CPU is sampled while the connections idle.
const IDLE_SAMPLE: Duration = Duration::from_secs(5);
/// The table of the reference start: `tcp.listen_sockets`' default, the smallest valid table.
const SMALL_TABLE_CONNECTIONS: usize = 64;

#[derive(Debug, Parser)]
#[command(name = "conns", about = "Memory per idle keep-alive HTTPS connection on one queue")]
struct Args {
    /// Connections to hold open at once.
    #[arg(long, default_value_t = 10_000)]
    conns: usize,
    /// `tcp.rx_buffer_bytes` of the appliance (default: the stack's default).
    #[arg(long)]
    rx_buffer_bytes: Option<usize>,
    /// `tcp.tx_buffer_bytes` of the appliance (default: the stack's default).
    #[arg(long)]
    tx_buffer_bytes: Option<usize>,
    /// The pantera binary (default: next to this one).
    #[arg(long)]
    pantera: Option<PathBuf>,
    /// The bound on the whole run.
    #[arg(long, default_value_t = 300)]
    max_seconds: u64,
    /// Skip the in-process breakdown.
    #[arg(long)]
    no_breakdown: bool,
    /// After the idle measurement, upload the 8 MiB batch once on every connection and report
    /// the memory each keeps afterwards while idle again (what a burst leaves behind).
    #[arg(long)]
    bulk_all: bool,
    /// Print the appliance's largest mappings by RSS (/proc/PID/smaps) at start and with N open.
    #[arg(long)]
    smaps: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!((1..=60_000).contains(&args.conns), "--conns must be 1..=60000 (one client port each)");
    let deadline = Instant::now() + Duration::from_secs(args.max_seconds);
    let me = std::env::current_exe().context("cannot find this program's path")?;
    let pantera = args.pantera.clone().unwrap_or_else(|| me.with_file_name("pantera"));
    ensure!(pantera.exists(), "{} not found: build it first (cargo build --release -p pantera)", pantera.display());
    lab_client::raise_open_files_limit(args.conns as u64 + 1024)?;

    let tmp = tempfile::Builder::new().prefix("pantera-bench-conns-").tempdir()?;
    let lab = Lab::create(&LabSpec::unique("conns", 1)).context("cannot create the lab")?;
    let tls = tmp.path().join("tls");
    let out = std::process::Command::new(&pantera)
        .args(["certs", "init", "--dir"])
        .arg(&tls)
        .args(["--service-ip", &lab.spec.service_ipv4.to_string()])
        .output()?;
    ensure!(out.status.success(), "pantera certs init: {}", String::from_utf8_lossy(&out.stderr));
    let management: SocketAddr = "127.0.0.1:9474".parse()?;
    // First the same appliance with the smallest table (64 connections): what the socket table
    // itself costs at start is RSS_0 of the big table less this.
    let rss_small = {
        let mut small = start(&pantera, &args, &lab, &tls, &tmp.path().join("small"), management, SMALL_TABLE_CONNECTIONS)?;
        let rss = rss_kib(small.pid())?;
        small.stop()?;
        rss
    };
    // One more than the fleet: the connection that creates the accounts and later uploads the
    // bulk batch stays open beside it.
    let mut server = start(&pantera, &args, &lab, &tls, &tmp.path().join("big"), management, args.conns + 1)?;
    let rss_start = rss_kib(server.pid())?;
    if args.smaps {
        print_smaps(server.pid(), "at start")?;
    }

    let config = lab_client::client_config(&tls.join("ca.pem"), &tls.join("client.pem"), &tls.join("client.key"))?;
    let target = SocketAddr::from((lab.spec.service_ipv4, PORT));
    let (netns, count, c) = (lab.spec.netns.clone(), args.conns, Arc::clone(&config));
    let opened = std::thread::spawn(move || -> Result<_> {
        lab_client::enter_netns(&netns)?;
        // Account 1, for the requests to read.
        let (mut one, _) = Fleet::connect(Arc::clone(&c), target, 1, FleetLimits::default(), deadline)?;
        let body = r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#;
        let created = one.round(format!("POST /v1/accounts HTTP/1.1\r\nHost: pantera\r\nContent-Length: {}\r\n\r\n{body}", body.len()).as_bytes(), deadline)?;
        ensure!(created.count_of(200) == 1, "creating accounts: {created:?}");
        let fleet = Fleet::connect(c, target, count, FleetLimits::default(), deadline)?;
        Ok((one, fleet))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
    .with_context(|| format!("opening the connections; the appliance's log:\n{}", process::tail(&server.log, 20)))?;
    let (mut one, (mut fleet, connect)) = opened;
    let first = fleet.round(GET_ACCOUNT, deadline)?;
    ensure!(first.count_of(200) == args.conns, "first round: {first:?}");
    let open = wait_metric(management, "pantera_tcp_connections", args.conns as f64)?;
    ensure!(open == args.conns as f64 + 1.0 || open == args.conns as f64, "the appliance holds {open} connections, not {}", args.conns);
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle = rss_kib(server.pid())?;
    if args.smaps {
        print_smaps(server.pid(), "with the connections idle")?;
    }
    let ticks = process::clock_ticks_per_second();
    let cpu_before = process::cpu_ticks(server.pid());
    std::thread::sleep(IDLE_SAMPLE);
    let idle_cpu = (process::cpu_ticks(server.pid()) - cpu_before) as f64 / ticks as f64 / IDLE_SAMPLE.as_secs_f64();
    let second = fleet.round(GET_ACCOUNT, deadline)?;
    ensure!(second.count_of(200) == args.conns, "second round: {second:?}");
    let rss_after_second = rss_kib(server.pid())?;

    let after_bulk = if args.bulk_all {
        let report = fleet.round(bulk_request(99).as_bytes(), deadline)?;
        ensure!(report.count_of(200) == args.conns, "bulk on every connection: {report:?}");
        std::thread::sleep(Duration::from_secs(1));
        Some(rss_kib(server.pid())?)
    } else {
        None
    };
    let per_conn = (rss_idle as f64 - rss_start as f64) * 1024.0 / args.conns as f64;
    println!("## conns: {} idle keep-alive mTLS connections on one queue", args.conns);
    println!("tcp buffers: rx {} B, tx {} B", buffer(args.rx_buffer_bytes, true), buffer(args.tx_buffer_bytes, false));
    println!("RSS at start, table of {SMALL_TABLE_CONNECTIONS} connections:       {:>9} KiB", rss_small);
    println!("RSS at start, table of {:>6} connections:   {:>9} KiB ({:.0} B per slot more)", args.conns + 1, rss_start, (rss_start as f64 - rss_small as f64) * 1024.0 / (args.conns + 1 - SMALL_TABLE_CONNECTIONS) as f64);
    println!("RSS with {:>6} idle connections:         {:>9} KiB", args.conns, rss_idle);
    println!("RSS after a second request on each:       {:>9} KiB", rss_after_second);
    println!("memory per idle connection (RSS_N-RSS_0)/N: {:>7.0} B ({:.1} KiB)", per_conn, per_conn / 1024.0);
    let with_slot = (rss_idle as f64 - rss_small as f64) * 1024.0 / args.conns as f64;
    println!("  with its slot's share of the table (RSS_N-RSS_small)/N: {:>7.0} B ({:.1} KiB)", with_slot, with_slot / 1024.0);
    println!(
        "handshakes (TCP + TLS 1.3 mTLS, full): {} in {:.1} s = {:.0}/s; retried {}; per thousand: {}",
        connect.opened,
        connect.elapsed.as_secs_f64(),
        connect.rate_per_s(),
        connect.retries,
        per_thousand(&connect.elapsed_per_thousand)
    );
    println!(
        "requests over all connections, {} in flight: round 1 {:.0}/s, round 2 {:.0}/s",
        FleetLimits::default().requests_in_flight_max,
        args.conns as f64 / first.elapsed.as_secs_f64(),
        args.conns as f64 / second.elapsed.as_secs_f64()
    );
    if let Some(rss) = after_bulk {
        let kept = (rss as f64 - rss_after_second as f64) * 1024.0 / args.conns as f64;
        println!("RSS after one 8 MiB upload on each, idle again: {rss} KiB: {:.0} KiB more per connection", kept / 1024.0);
    }
    println!("appliance CPU while the {} connections idle: {:.1} % of a core", args.conns, idle_cpu * 100.0);
    drop(fleet);
    // The bulk upload runs on the same big table with the fleet's connections gone.
    let drain_deadline = Instant::now() + Duration::from_secs(30);
    while process::metric_sum(&process::http_get(management, "/metrics")?.1, "pantera_tcp_connections").unwrap_or(0.0) > 1.0 {
        ensure!(Instant::now() < drain_deadline, "the fleet's connections did not close within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }

    let bulk = bulk(&mut one, deadline)?;
    println!(
        "bulk: {BULK_EVENTS}-transfer batch padded to {:.1} MiB, {BULK_RUNS} uploads on one connection (table of {} slots, other connections closed): median {:.0} ms ({:.0} MB/s), runs {}",
        BULK_BODY_BYTES as f64 / 1048576.0,
        args.conns + 1,
        bulk[bulk.len() / 2].as_secs_f64() * 1e3,
        BULK_BODY_BYTES as f64 / bulk[bulk.len() / 2].as_secs_f64() / 1e6,
        bulk.iter().map(|d| format!("{:.0}", d.as_secs_f64() * 1e3)).collect::<Vec<_>>().join(" ")
    );
    drop(one);
    let status = server.stop()?;
    if !status.success() {
        bail!("pantera exited with {status}; log {}", process::tail(&server.log, 30));
    }
    if !args.no_breakdown {
        breakdown(&tls, lab.spec.service_ipv4, args.conns)?;
    }
    Ok(())
}

fn buffer(value: Option<usize>, rx: bool) -> usize {
    let d = tcp::StackConfig::default();
    value.unwrap_or(if rx { d.rx_buffer_bytes } else { d.tx_buffer_bytes })
}

/// Starts the appliance on the lab with a table of `connections_max`; returns once it is ready
/// and its start-up allocations have settled.
fn start(pantera: &Path, args: &Args, lab: &Lab, tls: &Path, dir: &Path, management: SocketAddr, connections_max: usize) -> Result<Server> {
    fs::create_dir_all(dir)?;
    let config_path = dir.join("pantera.toml");
    let data = dir.join("data");
    process::format_data_dir(pantera, &data)?;
    fs::write(&config_path, appliance_config(args, lab, tls, &data, management, connections_max))?;
    let mut server = Server::spawn("pantera serve", pantera, &["serve".into(), "--config".into(), config_path.display().to_string()], dir.join("pantera.log"))?;
    server.wait_ready(READY_TIMEOUT, || matches!(process::http_get(management, "/readyz"), Ok((200, _))))?;
    std::thread::sleep(Duration::from_secs(1));
    Ok(server)
}

fn appliance_config(args: &Args, lab: &Lab, tls: &Path, data: &Path, management: SocketAddr, connections_max: usize) -> String {
    // Every connection comes from the one client address of the lab.
    let mut tcp = format!("connections_max = {connections_max}\nconnections_per_source_max = {connections_max}\nidle_timeout_ms = 600000\n");
    if let Some(b) = args.rx_buffer_bytes {
        tcp += &format!("rx_buffer_bytes = {b}\n");
    }
    if let Some(b) = args.tx_buffer_bytes {
        tcp += &format!("tx_buffer_bytes = {b}\n");
    }
    let t = tls.display();
    format!(
        r#"[dataplane]
interface = "{interface}"

[service]
address = "{service}"
port = {PORT}

[tcp]
{tcp}
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
        data = data.display(),
    )
}

/// Resident set of a process, in KiB (VmRSS of /proc/PID/status).
fn rss_kib(pid: u32) -> Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:")?.trim().strip_suffix("kB")?.trim().parse().ok())
        .context("no VmRSS in /proc/PID/status")
}

/// The six mappings of a process with the most resident memory, from /proc/PID/smaps.
fn print_smaps(pid: u32, when: &str) -> Result<()> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut mappings: Vec<(u64, u64, String)> = Vec::new();
    for line in text.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && !first.ends_with(':') {
            let name = line.split_whitespace().nth(5).unwrap_or("[anon]").to_owned();
            mappings.push((0, 0, format!("{first} {name}")));
        } else if let (Some(last), Some(kib)) = (mappings.last_mut(), line.strip_prefix("Rss:")) {
            last.0 = kib.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        } else if let (Some(last), Some(kib)) = (mappings.last_mut(), line.strip_prefix("Size:")) {
            last.1 = kib.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        }
    }
    mappings.sort_by_key(|m| std::cmp::Reverse(m.0));
    println!("largest mappings {when} (RSS KiB / size KiB):");
    for (rss, size, name) in mappings.iter().take(6) {
        println!("  {rss:>9} / {size:>9}  {name}");
    }
    Ok(())
}

/// Polls /metrics until `name` reaches `min` (workers publish a few times a second); returns
/// the last value seen.
fn wait_metric(management: SocketAddr, name: &str, min: f64) -> Result<f64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, text) = process::http_get(management, "/metrics")?;
        let value = process::metric_sum(&text, name).unwrap_or(0.0);
        if value >= min || Instant::now() > deadline {
            return Ok(value);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn per_thousand(elapsed: &[Duration]) -> String {
    let mut previous = Duration::ZERO;
    let mut rates = Vec::new();
    for &at in elapsed {
        rates.push(format!("{:.0}", 1000.0 / (at - previous).as_secs_f64().max(1e-9)));
        previous = at;
    }
    format!("[{}]/s", rates.join(" "))
}

/// Uploads the bulk batch `BULK_RUNS` times on `one`; returns the times, sorted.
fn bulk(one: &mut Fleet, deadline: Instant) -> Result<Vec<Duration>> {
    let mut times = Vec::new();
    for run in 0..BULK_RUNS {
        let report = one.round(bulk_request(run).as_bytes(), deadline)?;
        ensure!(report.count_of(200) == 1, "bulk upload {run}: {report:?}");
        times.push(report.elapsed);
    }
    times.sort();
    Ok(times)
}

/// `POST /v1/transfers` of `BULK_EVENTS` transfers (ids unique to `run`), padded with JSON
/// whitespace to `BULK_BODY_BYTES`.
fn bulk_request(run: usize) -> String {
    {
        let mut body = String::with_capacity(BULK_BODY_BYTES);
        body.push('[');
        for i in 0..BULK_EVENTS {
            if i > 0 {
                body.push(',');
            }
            let id = 1_000_000 + run * BULK_EVENTS + i;
            body += &format!(r#"{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":"1","ledger":1,"code":1}}"#);
        }
        body.push(']');
        assert!(body.len() <= BULK_BODY_BYTES, "the batch alone is {} bytes", body.len());
        // JSON allows whitespace between tokens: pad to the full size so the bytes on the wire
        // are a full-size body.
        body.extend(std::iter::repeat_n(' ', BULK_BODY_BYTES - body.len()));
        format!("POST /v1/transfers HTTP/1.1\r\nHost: pantera\r\nContent-Length: {}\r\n\r\n{body}", body.len())
    }
}

/// An in-process model of what the worker keeps per idle HTTPS connection: a TLS session
/// (tls-term over rustls) that did one mTLS handshake and one request/response, and an HTTP
/// decoder that decoded one request. RSS growth over `n` of each, per connection.
fn breakdown(tls: &Path, service: std::net::Ipv4Addr, n: usize) -> Result<()> {
    use ledger_svc::http::{self, RequestDecoder};
    use tls_term::{Session, TlsSettings};
    let settings = TlsSettings::lab(tls);
    let server_config = tls_term::server_config(&settings)?;
    let client_config = lab_client::client_config(&tls.join("ca.pem"), &tls.join("client.pem"), &tls.join("client.key"))?;
    let response_body = br#"{"id":"1","debits_pending":"0","debits_posted":"0","credits_pending":"0","credits_posted":"0","user_data_128":"0","user_data_64":"0","user_data_32":0,"ledger":1,"code":1,"flags":[],"timestamp":"1732420000000000001"}"#;
    let now = Instant::now();
    let mut scratch = vec![0u8; 64 * 1024];
    let mut plaintext = Vec::new();
    let before = rss_kib(std::process::id())?;
    let mut sessions = Vec::with_capacity(n);
    for _ in 0..n {
        let name = rustls::pki_types::ServerName::IpAddress(service.into());
        let mut client = rustls::ClientConnection::new(Arc::clone(&client_config), name)?;
        let mut server = Session::with_limits(&server_config, now, settings.session_limits())?;
        let mut request_sent = false;
        let mut answered = false;
        for _ in 0..64 {
            while client.wants_write() {
                let mut wire = Vec::new();
                client.write_tls(&mut wire)?;
                let mut at = 0;
                while at < wire.len() {
                    at += server.handle_input(now, &wire[at..])?;
                    plaintext.clear();
                    server.read_plaintext(&mut plaintext, 64 * 1024);
                    if !plaintext.is_empty() && !answered {
                        let mut response = Vec::new();
                        http::encode_response(&http::Response::json(200, response_body.to_vec()), &mut response);
                        server.write_plaintext(&response)?;
                        answered = true;
                    }
                }
            }
            while server.wants_output() {
                let len = server.poll_output(&mut scratch);
                let mut wire = &scratch[..len];
                while !wire.is_empty() {
                    client.read_tls(&mut wire)?;
                    client.process_new_packets()?;
                }
            }
            if !client.is_handshaking() && !request_sent {
                std::io::Write::write_all(&mut client.writer(), GET_ACCOUNT)?;
                request_sent = true;
            }
            if answered && !server.wants_output() && !client.wants_write() {
                break;
            }
        }
        ensure!(answered, "the in-process handshake and request did not complete");
        sessions.push(server);
    }
    let with_sessions = rss_kib(std::process::id())?;
    let mut decoders = Vec::with_capacity(n);
    for _ in 0..n {
        let mut decoder = RequestDecoder::new(http::Limits::default());
        decoder.feed(GET_ACCOUNT);
        let request = decoder.poll_request()?.context("a whole request")?;
        drop(request);
        let mut out = Vec::new();
        decoder.encode_response(&http::Response::json(200, response_body.to_vec()), &mut out);
        decoders.push(decoder);
    }
    let with_decoders = rss_kib(std::process::id())?;
    println!("breakdown, in process, {n} of each (RSS growth per connection):");
    println!("  TLS session (tls-term + rustls, after an mTLS 1.3 handshake and one request): {:.0} B", (with_sessions - before) as f64 * 1024.0 / n as f64);
    println!("  HTTP decoder (after one request):                                           {:.0} B", (with_decoders - with_sessions) as f64 * 1024.0 / n as f64);
    drop((sessions, decoders));
    Ok(())
}
