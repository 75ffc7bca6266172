//! `https run`: the whole comparison in one go (what `cargo xtask bench https` calls).
//!
//! Makes the lab, then for each server in turn: start it, wait until it is ready, run the load
//! phases from inside the client namespace (`ip netns exec pantera-client https load ...`),
//! read the server's CPU time around each phase, scrape its metrics, stop it. The three servers
//! run one after the other on the same lab, never at the same time: they would share the two
//! vCPUs with each other as well as with the client.
//!
//! With `--ledger-backends` it measures the appliance alone, once per ledger backend: the
//! embedded ledger, then a 1-replica and a 3-replica TigerBeetle cluster on loopback
//! (`cluster::local::LocalCluster`, started before the appliance and removed after it), with
//! the same client and phases, into a section of its own.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use cluster::local::LocalCluster;
use pantera::lab::{Lab, LabSpec};

use crate::process::{self, Server};
use crate::report::{self, LoadResult, Row, ServerNotes};
use crate::results::RunResult;

/// How long a server may take from spawn to ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// The same in front of a fresh TigerBeetle cluster: the appliance is ready once the cluster
/// answers, which took 5–11 s on loopback (docs/cluster.md), more on a busy machine.
const READY_TIMEOUT_CLUSTER: Duration = Duration::from_secs(120);
/// Time a load run may take beyond its own `--duration` (connects, the drain, the ledger check).
const LOAD_GRACE: Duration = Duration::from_secs(30);
/// The appliance's port, on the lab's service address.
const SERVICE_PORT: u16 = 8443;
/// The kernel-socket baseline's port, on the kernel's own address on the lab link.
const KERNEL_PORT: u16 = 8443;
const NGINX_PORT: u16 = 8444;
const PANTERA_MANAGEMENT: &str = "127.0.0.1:9464";
const KERNEL_MANAGEMENT: &str = "127.0.0.1:9465";
/// The constant nginx returns: the shape and size of the appliance's reply to one transfer.
const NGINX_CONSTANT: &str = r#"[{"index":0,"status":"created","timestamp":"1732420000000000001"}]"#;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    /// `pantera serve --lab`: XDP + AF_XDP + smoltcp + rustls + the ledger.
    Pantera,
    /// `pantera serve-kernel`: the same TLS and ledger over kernel TCP sockets.
    Kernel,
    /// nginx, 1 worker, returning a constant over TLS 1.3.
    Nginx,
    /// `pantera serve --lab --tigerbeetle ...` in front of a 1-replica TigerBeetle cluster on
    /// loopback (needs a pantera built with the `tigerbeetle` feature).
    PanteraTb1,
    /// The same in front of a 3-replica cluster.
    PanteraTb3,
}

impl Peer {
    fn label(self, ledger_backends: bool) -> &'static str {
        if ledger_backends && self == Peer::Pantera {
            // Beside the TigerBeetle rows, the row says which ledger it is.
            return "pantera (AF_XDP), embedded ledger";
        }
        self.label_alone()
    }

    fn label_alone(self) -> &'static str {
        match self {
            Peer::Pantera => "pantera (AF_XDP)",
            Peer::Kernel => "pantera serve-kernel",
            Peer::Nginx => "nginx (constant)",
            Peer::PanteraTb1 => "pantera (AF_XDP), TigerBeetle 1 replica",
            Peer::PanteraTb3 => "pantera (AF_XDP), TigerBeetle 3 replicas",
        }
    }

    /// The replicas of the TigerBeetle cluster the peer keeps its books in; None: its own WAL
    /// (or no ledger at all).
    fn cluster_replicas(self) -> Option<u8> {
        match self {
            Peer::PanteraTb1 => Some(1),
            Peer::PanteraTb3 => Some(3),
            Peer::Pantera | Peer::Kernel | Peer::Nginx => None,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Small counts: a smoke test of the whole run in a few seconds per server.
    #[arg(long)]
    pub quick: bool,
    /// The pantera binary (default: next to this one).
    #[arg(long)]
    pub pantera: Option<PathBuf>,
    /// The lab state directory (certificates under tls/); the WALs go to a temporary directory.
    #[arg(long, default_value = ".pantera")]
    pub home: PathBuf,
    /// Where the table goes, between the https markers.
    #[arg(long, default_value = "docs/PERFORMANCE.md")]
    pub docs: PathBuf,
    /// Print the table only.
    #[arg(long)]
    pub no_docs: bool,
    /// Remove a lab that is already up (someone else's `cargo xtask lab up`) and make a fresh one.
    #[arg(long)]
    pub replace_lab: bool,
    /// Use a lab of its own (unique namespace, veth names and 10.99.x.0/24) instead of the
    /// standard one, so nothing else on the machine that uses the standard lab can disturb
    /// the run, nor be disturbed by it.
    #[arg(long, conflicts_with = "replace_lab")]
    pub private_lab: bool,
    /// The ledger's durability for both pantera servers: `fsync` (the product; a reply only
    /// after its batch is on disk) or `none` (the network path without the WAL's fsync, for
    /// comparison only). Each writes its own section of the docs.
    #[arg(long, value_parser = ["fsync", "none"], default_value = "fsync")]
    pub durability: String,
    /// The servers to measure, in this order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "pantera,kernel,nginx")]
    pub peers: Vec<Peer>,
    /// Measure the appliance with each ledger backend instead (peers `pantera`, `pantera-tb1`,
    /// `pantera-tb3`: the embedded ledger, a 1-replica and a 3-replica TigerBeetle cluster on
    /// loopback), keep-alive and read phases only, into a section of its own. Needs a pantera
    /// built with the `tigerbeetle` feature and the server of `cargo xtask tigerbeetle build`.
    #[arg(long, conflicts_with = "peers")]
    pub ledger_backends: bool,
}

impl RunArgs {
    /// The servers this run measures, in order.
    fn peers(&self) -> Vec<Peer> {
        if self.ledger_backends {
            vec![Peer::Pantera, Peer::PanteraTb1, Peer::PanteraTb3]
        } else {
            self.peers.clone()
        }
    }
}

/// How a phase opens connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Open the connections once, then send every request on them.
    Keepalive,
    /// A new TCP connection and TLS handshake for every request.
    Handshake,
}

/// One kind of load.
#[derive(Clone, Copy, Debug)]
struct Phase {
    label: &'static str,
    mode: Mode,
    resume: bool,
    conns: usize,
    requests_per_conn: u64,
    /// A ledger read (`GET /v1/accounts/{id}`) instead of a transfer; pantera servers only.
    read: bool,
    /// Open loop at this total rate; None: closed loop.
    rate_per_s: Option<f64>,
}

fn phases(quick: bool) -> Vec<Phase> {
    let base = Phase { label: "keep-alive", mode: Mode::Keepalive, resume: false, conns: 1, requests_per_conn: 1, read: false, rate_per_s: None };
    let k = |conns, requests_per_conn| Phase { conns, requests_per_conn, ..base };
    let read = |conns, requests_per_conn| Phase { label: "ledger read", read: true, conns, requests_per_conn, ..base };
    let open = |conns, requests_per_conn, rate| Phase { label: "keep-alive, open loop", conns, requests_per_conn, rate_per_s: Some(rate), ..base };
    let full = |conns, requests_per_conn| Phase { label: "new conn, full handshake", mode: Mode::Handshake, conns, requests_per_conn, ..base };
    let resumed = |conns, requests_per_conn| Phase { label: "new conn, resumed", mode: Mode::Handshake, resume: true, conns, requests_per_conn, ..base };
    // The counts are ceilings; a phase normally ends at its time limit (`phase_seconds`), so
    // every server is measured over about the same time whatever its rate. The open-loop
    // phase offers every server the same rate, below what each sustains at 64 connections,
    // so its latencies compare servers at equal load.
    if quick {
        vec![k(1, 500), k(16, 100), k(64, 30), read(64, 30), open(64, 30, 1000.0), full(8, 50), resumed(8, 50)]
    } else {
        vec![
            k(1, 200_000),
            k(16, 20_000),
            k(64, 8_000),
            read(64, 8_000),
            open(64, 8_000, 20_000.0),
            full(16, 500),
            resumed(16, 500),
        ]
    }
}

/// The phases of `--ledger-backends`: what tells the backends apart is the durable write path
/// (one request in flight, then many sharing commits) and a read; the handshake and open-loop
/// phases measure the network path, which is the same for all three.
fn backend_phases(quick: bool) -> Vec<Phase> {
    phases(quick).into_iter().filter(|p| p.mode == Mode::Keepalive && p.rate_per_s.is_none()).collect()
}

/// The time limit of one phase (`https load --max-seconds`).
fn phase_seconds(quick: bool) -> u64 {
    if quick {
        3
    } else {
        5
    }
}

struct Ctx<'a> {
    args: &'a RunArgs,
    lab: &'a Lab,
    service: SocketAddr,
    kernel: SocketAddr,
    nginx: SocketAddr,
    /// /proc/loadavg when the run started: the machine is shared, and a busy one says so.
    load_average: String,
    me: PathBuf,
    pantera: PathBuf,
    tls_dir: PathBuf,
    tmp: &'a Path,
    clock_ticks: u64,
    max_seconds: u64,
    phases: Vec<Phase>,
}

pub fn run(args: &RunArgs) -> Result<()> {
    let me = std::env::current_exe().context("cannot find this program's path")?;
    let pantera = match &args.pantera {
        Some(p) => p.clone(),
        None => me.with_file_name("pantera"),
    };
    let peers = args.peers();
    if args.ledger_backends && args.durability != "fsync" {
        bail!("--ledger-backends compares durable ledgers: it takes no --durability {}", args.durability);
    }
    if peers.iter().any(|p| *p != Peer::Nginx) && !pantera.exists() {
        bail!("{} not found: build it first (cargo build --release --bin pantera) or pass --pantera", pantera.display());
    }
    let spec = if args.private_lab { LabSpec::unique("bench", 1) } else { LabSpec::standard(1) };
    if Path::new("/sys/class/net").join(&spec.host_if).exists() && !args.replace_lab {
        bail!(
            "a lab is already up ({} exists): bring it down with `cargo xtask lab down`, or pass --replace-lab",
            spec.host_if
        );
    }
    // Certificates before anything else: every server and the client use the same ones.
    fs::create_dir_all(&args.home).with_context(|| format!("cannot create {}", args.home.display()))?;
    let home = args.home.canonicalize()?;
    let tls_dir = home.join("tls");
    if peers.iter().any(|p| *p != Peer::Nginx) {
        // Its output is captured: stdout is the table's.
        let out = std::process::Command::new(&pantera)
            .args(["certs", "init", "--dir"])
            .arg(&tls_dir)
            .output()
            .context("cannot run pantera certs init")?;
        if !out.status.success() {
            bail!("pantera certs init failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
        }
    } else if !tls_dir.join("ca.pem").exists() {
        bail!("no certificates in {}: run `pantera certs init` first", tls_dir.display());
    }

    let tmp = tempfile::Builder::new().prefix("pantera-bench-https-").tempdir()?;
    let lab = Lab::create(&spec).context("cannot create the lab")?;
    // A handshake phase opens thousands of connections from the client namespace; each leaves
    // a TIME_WAIT behind for 60 s. The whole port range keeps them from running out.
    let out = lab.exec_in_ns(&["sysctl", "-qw", "net.ipv4.ip_local_port_range=1024 65535"])?;
    if !out.status.success() {
        eprintln!("https: cannot widen the client's port range: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    let ctx = Ctx {
        args,
        lab: &lab,
        service: SocketAddr::from((spec.service_ipv4, SERVICE_PORT)),
        kernel: SocketAddr::from((spec.host_ipv4, KERNEL_PORT)),
        nginx: SocketAddr::from((spec.host_ipv4, NGINX_PORT)),
        load_average: fs::read_to_string("/proc/loadavg").unwrap_or_default().split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        me,
        pantera,
        tls_dir,
        tmp: tmp.path(),
        clock_ticks: process::clock_ticks_per_second(),
        max_seconds: phase_seconds(args.quick),
        phases: if args.ledger_backends { backend_phases(args.quick) } else { phases(args.quick) },
    };
    let mut rows = Vec::new();
    let mut results: Vec<(String, RunResult)> = Vec::new();
    let mut notes = Vec::new();
    for &peer in &peers {
        eprintln!("https: == {}", peer.label(args.ledger_backends));
        let mut n = ServerNotes { server: peer.label(args.ledger_backends).to_owned(), ..ServerNotes::default() };
        if let Err(e) = measure(&ctx, peer, &mut rows, &mut results, &mut n) {
            eprintln!("https: {}: {e:#}", peer.label(args.ledger_backends));
            n.failure = Some(format!("{e:#}"));
        }
        notes.push(n);
    }
    let load_average = ctx.load_average.clone();
    drop(ctx);
    drop(lab);

    let what = if args.ledger_backends {
        format!(
            "ledger backends: embedded (durability fsync) and TigerBeetle {} on loopback",
            cluster::local::TIGERBEETLE_RELEASE
        )
    } else {
        format!("ledger durability {}", args.durability)
    };
    let header = format!(
        "### HTTPS, {} run of {}, {what} (commit {}, kernel {}, load average at start {})",
        if args.quick { "quick" } else { "full" },
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command_output("git", &["rev-parse", "--short", "HEAD"]),
        command_output("uname", &["-r"]),
        load_average,
    );
    let table = report::render(&header, &rows, &notes);
    println!("{table}");
    if !args.no_docs {
        let doc = fs::read_to_string(&args.docs).unwrap_or_default();
        let section = if args.ledger_backends {
            report::SECTION_LEDGER_BACKENDS
        } else if args.durability == "none" {
            report::SECTION_DURABILITY_NONE
        } else {
            report::SECTION
        };
        fs::write(&args.docs, report::splice(&doc, section, &table)).with_context(|| format!("cannot write {}", args.docs.display()))?;
        eprintln!("https: table written to {}", args.docs.display());
        let dir = args.docs.parent().unwrap_or(Path::new(".")).join("perf");
        let suffix = if args.ledger_backends {
            "-ledger-backends".to_owned()
        } else if args.durability == "fsync" {
            String::new()
        } else {
            format!("-durability-{}", args.durability)
        };
        if let Err(e) = write_plots(&dir, &suffix, &results) {
            eprintln!("https: plots: {e:#}");
        }
    }
    // The table is written either way; the exit status says whether every figure in it is
    // one of a correct run.
    let problems = report::problems(&rows, &notes);
    if !problems.is_empty() {
        bail!("the run had problems:\n{}", problems.join("\n"));
    }
    Ok(())
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "?".to_owned())
}

/// Starts one server, runs every phase against it, stops it.
fn measure(ctx: &Ctx<'_>, peer: Peer, rows: &mut Vec<Row>, results: &mut Vec<(String, RunResult)>, notes: &mut ServerNotes) -> Result<()> {
    // `--home` and `--durability` only when not the defaults, so the command lines stay the
    // documented ones.
    let mut common_args: Vec<String> = if ctx.args.home == Path::new(".pantera") {
        Vec::new()
    } else {
        vec!["--home".to_owned(), ctx.args.home.display().to_string()]
    };
    if ctx.args.durability != "fsync" {
        common_args.extend(["--durability".to_owned(), ctx.args.durability.clone()]);
    }
    // The cluster first (its replicas formatted and started), so that it outlives the
    // appliance in front of it: locals drop in reverse order.
    let cluster = match peer.cluster_replicas() {
        Some(n) => {
            let c = LocalCluster::start(n).with_context(|| format!("cannot start a {n}-replica TigerBeetle cluster"))?;
            eprintln!("https: TigerBeetle cluster of {n} at {} ({})", c.addresses(), c.dir().display());
            Some(c)
        }
        None => None,
    };
    let (mut server, target, management, workload) = match peer {
        Peer::Pantera | Peer::PanteraTb1 | Peer::PanteraTb3 => {
            let wal = ctx.tmp.join(format!("wal-{peer:?}").to_lowercase());
            let mut args = vec!["serve".to_owned(), "--lab".to_owned(), "--data-dir".to_owned(), wal.display().to_string()];
            args.extend(common_args);
            if let Some(c) = &cluster {
                args.extend(["--tigerbeetle".to_owned(), c.addresses()]);
            }
            if ctx.args.private_lab {
                let spec = &ctx.lab.spec;
                args.extend(["--interface".to_owned(), spec.host_if.clone(), "--address".to_owned(), spec.service_ipv4.to_string()]);
            }
            let s = Server::spawn("pantera serve", &ctx.pantera, &args, ctx.tmp.join(format!("{peer:?}.log").to_lowercase()))?;
            (s, ctx.service, Some(PANTERA_MANAGEMENT), "transfers")
        }
        Peer::Kernel => {
            let wal = ctx.tmp.join("wal-kernel");
            let mut args: Vec<String> = ["serve-kernel", "--lab", "--management", KERNEL_MANAGEMENT, "--listen"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            args.extend([ctx.kernel.to_string(), "--data-dir".to_owned(), wal.display().to_string()]);
            args.extend(common_args);
            let s = Server::spawn("pantera serve-kernel", &ctx.pantera, &args, ctx.tmp.join("kernel.log"))?;
            (s, ctx.kernel, Some(KERNEL_MANAGEMENT), "transfers")
        }
        Peer::Nginx => {
            let dir = ctx.tmp.join("nginx");
            fs::create_dir_all(&dir)?;
            let conf = dir.join("nginx.conf");
            fs::write(&conf, nginx_config(&dir, &ctx.tls_dir, ctx.nginx))?;
            let args: Vec<String> = vec![
                "-p".into(),
                format!("{}/", dir.display()),
                "-e".into(),
                dir.join("error.log").display().to_string(),
                "-c".into(),
                conf.display().to_string(),
                "-g".into(),
                "daemon off;".into(),
            ];
            let s = Server::spawn("nginx", Path::new("nginx"), &args, ctx.tmp.join("nginx.log"))?;
            (s, ctx.nginx, None, "constant")
        }
    };
    let ready = match management {
        Some(m) => {
            // In front of a cluster, /readyz says 503 until the cluster answers.
            let timeout = if cluster.is_some() { READY_TIMEOUT_CLUSTER } else { READY_TIMEOUT };
            let addr: SocketAddr = m.parse().expect("valid literal");
            server.wait_ready(timeout, || matches!(process::http_get(addr, "/readyz"), Ok((200, _))))?
        }
        None => server.wait_ready(READY_TIMEOUT, || TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_ok())?,
    };
    notes.ready_ms = Some(ready.as_secs_f64() * 1e3);
    eprintln!("https: {} ready in {:?}", peer.label(ctx.args.ledger_backends), ready);

    // The server's CPU time, with its cluster's replicas (the embedded ledger's work is inside
    // the appliance; the cluster's is in the replicas).
    let cpu_ticks = |server: &Server| {
        let replicas: u64 = cluster.iter().flat_map(|c| (0..c.replicas()).filter_map(|i| c.pid(i))).map(process::cpu_ticks).sum();
        process::cpu_ticks(server.pid()) + replicas
    };
    for &phase in &ctx.phases {
        if phase.read && peer == Peer::Nginx {
            // nginx returns its constant whatever is asked: a read phase would repeat the
            // keep-alive one.
            continue;
        }
        // The lab is shared with anyone on the machine who can run `lab down`: say so plainly.
        if !Path::new("/run/netns").join(&ctx.lab.spec.netns).exists() {
            bail!("the lab's namespace {} disappeared during the run (removed by something else)", ctx.lab.spec.netns);
        }
        let before = cpu_ticks(&server);
        let full = load(ctx, peer, phase, target, if phase.read { "read" } else { workload });
        let outcome = full.as_ref().map(LoadResult::from_run).map_err(Clone::clone);
        let after = cpu_ticks(&server);
        let cpu_us_per_request = match &outcome {
            Ok(r) if r.requests > 0 => Some((after - before) as f64 * 1e6 / ctx.clock_ticks as f64 / r.requests as f64),
            _ => None,
        };
        match &outcome {
            Ok(r) => eprintln!(
                "https:   {} x{}: {} requests, {:.0} ok/s, p50 {} µs, p99 {} µs, errors {}, ledger {}",
                phase.label, phase.conns, r.requests, r.ok_per_s, r.p50_us, r.p99_us, r.errors, r.ledger_check
            ),
            Err(e) => eprintln!("https:   {} x{}: failed: {e}", phase.label, phase.conns),
        }
        let run = match phase.rate_per_s {
            Some(rate) => format!("{} at {rate:.0}/s", phase.label),
            None => phase.label.to_owned(),
        };
        if let Ok(r) = full {
            results.push((phase_slug(&phase), r));
        }
        rows.push(Row { server: peer.label(ctx.args.ledger_backends).to_owned(), run, conns: phase.conns, outcome, cpu_us_per_request });
        server.check_alive()?;
    }

    if let Some(m) = management {
        let addr: SocketAddr = m.parse().expect("valid literal");
        match process::http_get(addr, "/metrics") {
            Ok((200, text)) => {
                fs::write(ctx.tmp.join(format!("{peer:?}.metrics")), &text)?;
                notes.lines.extend(metric_notes(&text));
            }
            Ok((status, _)) => notes.lines.push(format!("/metrics answered {status}")),
            Err(e) => notes.lines.push(format!("/metrics unreadable: {e}")),
        }
    }
    let status = server.stop()?;
    if !status.success() {
        // The log goes with the run's temporary directory: keep its last line, which says why.
        notes.lines.push(format!("{status} after SIGTERM (log: {})", process::tail(&server.log, 1).trim()));
    }
    drop(cluster);
    Ok(())
}

/// The figures of the appliance's own metrics worth a line in the report.
fn metric_notes(text: &str) -> Vec<String> {
    let m = |name: &str| process::metric_sum(text, name);
    let mut lines = Vec::new();
    if let (Some(batches), Some(requests)) = (m("pantera_ledger_batches_total"), m("pantera_ledger_requests_total")) {
        if batches > 0.0 {
            lines.push(format!("{requests:.0} ledger requests in {batches:.0} group commits ({:.1} per commit)", requests / batches));
        }
    }
    if let (Some(sum), Some(count)) = (m("pantera_ledger_commit_seconds_sum"), m("pantera_ledger_commit_seconds_count")) {
        if count > 0.0 {
            lines.push(format!("mean group commit (apply + WAL write + fsync if durable) {:.0} µs", sum / count * 1e6));
        }
    }
    if let (Some(sum), Some(count)) = (m("pantera_ledger_cluster_request_seconds_sum"), m("pantera_ledger_cluster_request_seconds_count")) {
        if count > 0.0 {
            let events = m("pantera_ledger_requests_total").unwrap_or(0.0);
            lines.push(format!(
                "{count:.0} TigerBeetle requests for {events:.0} ledger requests; mean request (send to reply) {:.0} µs",
                sum / count * 1e6
            ));
        }
    }
    if let Some(h) = m("pantera_tls_handshakes_total") {
        let resumed = process::metric_sum_where(text, "pantera_tls_handshakes_total", "resumed=\"true\"").unwrap_or(0.0);
        lines.push(format!("{h:.0} TLS handshakes ({resumed:.0} resumed)"));
    }
    if let Some(full) = m("pantera_ledger_queue_full_total") {
        if full > 0.0 {
            lines.push(format!("{full:.0} requests refused 503 (ledger queue full)"));
        }
    }
    if let Some(e) = m("pantera_tls_errors_total") {
        if e > 0.0 {
            lines.push(format!("{e:.0} TLS sessions ended by an error"));
        }
    }
    lines
}

/// A phase's name in file names: `keepalive-64`, `new-conn-resumed-16`, ...
fn phase_slug(phase: &Phase) -> String {
    let kind = match (phase.mode, phase.resume, phase.read, phase.rate_per_s.is_some()) {
        (Mode::Handshake, false, _, _) => "new-conn-full",
        (Mode::Handshake, true, _, _) => "new-conn-resumed",
        (Mode::Keepalive, _, true, _) => "read",
        (Mode::Keepalive, _, false, true) => "open-loop",
        (Mode::Keepalive, _, false, false) => "keepalive",
    };
    format!("{kind}-{}", phase.conns)
}

/// For each phase, the servers' results side by side: the JSON documents (for `https compare`
/// against a later run) and two overlaid plots, under `dir` (docs/perf).
fn write_plots(dir: &Path, suffix: &str, results: &[(String, RunResult)]) -> Result<()> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // The phases in the order they ran, each once (the results come server by server).
    let mut slugs: Vec<&String> = Vec::new();
    for (s, _) in results {
        if !slugs.contains(&s) {
            slugs.push(s);
        }
    }
    for slug in slugs {
        let runs: Vec<RunResult> = results.iter().filter(|(s, _)| s == slug).map(|(_, r)| r.clone()).collect();
        let name = format!("{slug}{suffix}");
        for r in &runs {
            let file = dir.join(format!("{name}-{}.json", crate::plot::slug(&r.label)));
            fs::write(&file, serde_json::to_string_pretty(r)? + "\n").with_context(|| format!("cannot write {}", file.display()))?;
        }
        for path in crate::plot::compare_named(dir, &name, &runs)? {
            eprintln!("https: wrote {}", path.display());
        }
    }
    Ok(())
}

/// Runs `https load` inside the client namespace and reads its JSON result.
fn load(ctx: &Ctx<'_>, peer: Peer, phase: Phase, target: SocketAddr, workload: &str) -> Result<RunResult, String> {
    let tls = &ctx.tls_dir;
    let json = ctx.tmp.join("load.json");
    let _ = fs::remove_file(&json);
    let mut args: Vec<String> = vec![
        "netns".into(),
        "exec".into(),
        ctx.lab.spec.netns.clone(),
        ctx.me.display().to_string(),
        "load".into(),
        "--quiet".into(),
        "--target".into(),
        target.to_string(),
        "--connections".into(),
        phase.conns.to_string(),
        "--requests".into(),
        (phase.conns as u64 * phase.requests_per_conn).to_string(),
        "--workload".into(),
        workload.into(),
        "--ca".into(),
        tls.join("ca.pem").display().to_string(),
        "--cert".into(),
        tls.join("client.pem").display().to_string(),
        "--key".into(),
        tls.join("client.key").display().to_string(),
        "--duration".into(),
        format!("{}s", ctx.max_seconds),
        "--json".into(),
        json.display().to_string(),
        "--label".into(),
        peer.label(ctx.args.ledger_backends).to_owned(),
    ];
    if workload != "constant" {
        args.push("--setup-accounts".into());
    }
    if phase.mode == Mode::Handshake {
        args.push("--new-connections".into());
    }
    if phase.resume {
        args.push("--resume".into());
    }
    if let Some(rate) = phase.rate_per_s {
        args.extend(["--rate".into(), format!("{rate}")]);
    }
    let log = ctx.tmp.join("load.out");
    let mut child = Server::spawn("https load", Path::new("ip"), &args, log.clone()).map_err(|e| e.to_string())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(ctx.max_seconds) + LOAD_GRACE;
    loop {
        if child.check_alive().is_err() {
            break;
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("the load did not finish within {:?}", Duration::from_secs(ctx.max_seconds) + LOAD_GRACE));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(child);
    match RunResult::read(&json) {
        Ok(r) => Ok(r),
        Err(e) => {
            let out = fs::read_to_string(&log).unwrap_or_default();
            Err(format!("no result from the load ({e:#}): {}", out.lines().last().unwrap_or("(no output)")))
        }
    }
}

/// nginx: 1 worker, TLS 1.3, the ECDSA P-256 dev certificate, mTLS against the dev CA (as the
/// appliance), keep-alive without a request limit, a constant JSON reply, no access log.
fn nginx_config(dir: &Path, tls: &Path, listen: SocketAddr) -> String {
    let d = dir.display();
    let t = tls.display();
    format!(
        r#"worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    server {{
        listen {listen} ssl;
        ssl_certificate {t}/server.pem;
        ssl_certificate_key {t}/server.key;
        ssl_client_certificate {t}/ca.pem;
        ssl_verify_client on;
        ssl_protocols TLSv1.3;
        ssl_session_cache shared:SSL:1m;
        location / {{
            default_type application/json;
            return 200 '{NGINX_CONSTANT}';
        }}
    }}
}}
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nginx_config_has_what_the_comparison_needs() {
        let c = nginx_config(Path::new("/tmp/x"), Path::new("/h/tls"), "10.99.0.3:8444".parse().expect("literal"));
        for needle in [
            "worker_processes 1;",
            "listen 10.99.0.3:8444 ssl;",
            "ssl_protocols TLSv1.3;",
            "ssl_verify_client on;",
            "ssl_certificate /h/tls/server.pem;",
            "pid /tmp/x/nginx.pid;",
            "keepalive_requests 1000000;",
        ] {
            assert!(c.contains(needle), "{needle} missing from\n{c}");
        }
        assert!(c.contains(NGINX_CONSTANT));
    }

    #[test]
    fn phases_are_bounded() {
        for quick in [true, false] {
            for p in phases(quick) {
                assert!(p.conns >= 1 && p.conns <= crate::load::CONNECTIONS_MAX);
                assert!(p.conns as u64 * p.requests_per_conn <= 1_000_000);
                if p.mode == Mode::Handshake {
                    // Two handshake phases of TIME_WAITs must fit the client's port range.
                    assert!(p.conns as u64 * p.requests_per_conn <= 20_000);
                }
            }
        }
    }

    #[test]
    fn the_ledger_backends_run_measures_the_three_backends_on_the_durable_and_read_phases() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            run: RunArgs,
        }
        use clap::Parser as _;
        let run = Cli::try_parse_from(["https", "--ledger-backends"]).expect("valid").run;
        assert_eq!(run.peers(), vec![Peer::Pantera, Peer::PanteraTb1, Peer::PanteraTb3]);
        assert_eq!(Peer::PanteraTb3.cluster_replicas(), Some(3));
        assert_ne!(Peer::Pantera.label(true), Peer::Pantera.label(false));
        assert!(Cli::try_parse_from(["https", "--ledger-backends", "--peers", "nginx"]).is_err());
        let plain = Cli::try_parse_from(["https", "--peers", "pantera-tb1,pantera"]).expect("valid").run;
        assert_eq!(plain.peers(), vec![Peer::PanteraTb1, Peer::Pantera]);
        for quick in [true, false] {
            let p = backend_phases(quick);
            assert!(p.iter().any(|p| !p.read && p.conns == 64), "{p:?}");
            assert!(p.iter().any(|p| p.read), "{p:?}");
            assert!(p.iter().all(|p| p.mode == Mode::Keepalive && p.rate_per_s.is_none()), "{p:?}");
        }
    }

    #[test]
    fn metric_notes_derive_batching() {
        let text = "pantera_ledger_batches_total 10\npantera_ledger_requests_total 40\npantera_ledger_commit_seconds_sum{durability=\"fsync\"} 0.002\npantera_ledger_commit_seconds_count{durability=\"fsync\"} 10\n";
        let notes = metric_notes(text);
        assert!(notes.contains(&"40 ledger requests in 10 group commits (4.0 per commit)".to_owned()), "{notes:?}");
        assert!(notes.contains(&"mean group commit (apply + WAL write + fsync if durable) 200 µs".to_owned()), "{notes:?}");
    }
}
