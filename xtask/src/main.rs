//! `cargo xtask`: the project's own set-up, lab, test, demo and benchmark commands.
//!
//! Std-only on purpose (plus anyhow): it must build in seconds on a fresh machine, before the
//! system packages the appliance needs are installed.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use anyhow::{bail, ensure, Context, Result};

mod fuzz;
mod tigerbeetle;

#[path = "../../src/lab.rs"]
#[allow(dead_code)]
mod lab;

use lab::{Lab, LabSpec};

/// Debian packages the build, the tests and the benchmarks need (docs/facts.md, "Machine and build").
const PACKAGES: &[&str] = &[
    // libxdp-sys / libbpf-sys build libxdp and libbpf; bindgen needs libclang.
    "clang", "llvm", "libelf-dev", "zlib1g-dev", "libpcap-dev", "pkg-config", "m4", "make",
    // BPF headers for steer.bpf.c, kernel uapi headers.
    "libbpf-dev", "linux-libc-dev",
    // The lab and its tests.
    "iproute2", "ethtool", "iputils-ping", "curl", "openssl", "procps", "tcpdump",
    // `systemd-analyze verify` of docs/pantera.service (tests/systemd_unit.rs).
    "systemd",
    // Benchmark peers.
    "nginx", "wrk",
    // pip installs the pinned zig that builds TigerBeetle (`cargo xtask tigerbeetle build`).
    "python3-pip",
    // `promtool check metrics` lints /metrics (tests/lab_metrics.rs).
    "prometheus",
];

const USAGE: &str = "usage: cargo xtask <command>

commands:
  deps                 install the Debian packages the build and tests need; mount bpffs
  lab up [--queues N]  create the lab (netns pantera-client, veth pantera0/pantera1)
  lab down             remove the lab
  test                 deps, then the whole suite (unit, property, in-memory and root lab tests,
                       the simulator's seeds, each fuzz target's smoke run)
  demo                 deps, build, lab, serve, a payment over mTLS from the client namespace,
                       then 10 s of load with a live progress bar and a report
  sim [--stack] [--seeds N] [--seed S] [--bug NAME]
                       the deterministic simulator (docs/simulation.md): N seeds (default 100),
                       or replay seed S (its summary and trace digest); --bug NAME checks that
                       an injected bug is caught; --stack: the whole appliance (TCP, TLS, HTTP,
                       API, ledger; default 20 seeds) instead of the ledger path
  fuzz --smoke [--seconds N]  build the fuzz targets, run each N s (default 15) (docs/fuzzing.md)
  fuzz TARGET [--seconds N]   run one fuzz target (default 600 s); fuzz --seeds rewrites seeds
  bench [NAME]         run the benchmarks (ledger, fairness, checkpoint, query_cost, api_cost, tls_cpu, stack_sim, seccomp_cost,
                       alloc_cost, xsk, echo, https, conns, synflood, startup; default all) in release mode";

fn main() -> Result<()> {
    let args: Vec<String> = env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    env::set_current_dir(workspace_root()).context("cannot enter the workspace root")?;
    match args.as_slice() {
        ["deps"] => deps(),
        ["lab", "up"] => lab_up(1),
        ["lab", "up", "--queues", n] => lab_up(n.parse().context("--queues takes a number")?),
        ["lab", "down"] => {
            Lab::remove(&LabSpec::standard(1));
            println!("lab removed (or was absent)");
            Ok(())
        }
        ["test"] => test(),
        ["sim", rest @ ..] => sim(rest),
        ["demo"] => demo(),
        ["fuzz", rest @ ..] => fuzz::main(rest),
        ["tigerbeetle", rest @ ..] => tigerbeetle::main(rest),
        ["bench"] => bench("all"),
        ["bench", name] => bench(name),
        _ => {
            // The tigerbeetle commands' lines live beside their code.
            eprintln!("{USAGE}\n{}", tigerbeetle::USAGE);
            bail!("unknown command: {}", args.join(" "));
        }
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_owned()
}

fn is_root() -> bool {
    // The effective uid, without libc: /proc/self/status "Uid: real effective saved fs".
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

fn status(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let st = cmd.status().with_context(|| format!("cannot run {shown}"))?;
    ensure!(st.success(), "{shown} failed: {st}");
    Ok(())
}

fn cargo() -> Command {
    Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()))
}

fn deps() -> Result<()> {
    let missing: Vec<&str> = PACKAGES
        .iter()
        .copied()
        .filter(|p| {
            let out = Command::new("dpkg-query").args(["-W", "-f=${Status}", p]).output();
            !matches!(out, Ok(o) if String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if !missing.is_empty() {
        ensure!(is_root(), "missing Debian packages {missing:?}; run `cargo xtask deps` as root");
        println!("xtask deps: installing {}", missing.join(" "));
        status(Command::new("apt-get").arg("update").arg("-qq"))?;
        status(
            Command::new("apt-get")
                .args(["install", "-y", "-qq", "--no-install-recommends"])
                .args(&missing)
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )?;
    }
    // nginx is a benchmark peer only; Debian starts it on port 80 at install. Leave it stopped.
    let _ = Command::new("systemctl").args(["disable", "--now", "nginx"]).stderr(Stdio::null()).status();
    // Only promtool is wanted from the prometheus package; its server starts at install too.
    let _ = Command::new("systemctl").args(["disable", "--now", "prometheus"]).stderr(Stdio::null()).status();
    let mounts = fs::read_to_string("/proc/mounts").unwrap_or_default();
    if !mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("bpf")) && is_root() {
        status(Command::new("mount").args(["-t", "bpf", "bpf", "/sys/fs/bpf"]))?;
    }
    println!("xtask deps: all {} packages present, bpffs mounted", PACKAGES.len());
    Ok(())
}

fn lab_up(queues: u32) -> Result<()> {
    ensure!(is_root(), "the lab needs root (CAP_NET_ADMIN)");
    ensure!((1..=64).contains(&queues), "--queues must be 1..=64");
    let spec = LabSpec::standard(queues);
    Lab::create(&spec)?.keep();
    println!(
        "lab up: netns {} ({} {}/{}), host {} {}/{}, service address {} ({} queue(s))",
        spec.netns, spec.peer_if, spec.peer_ipv4, spec.prefix_len, spec.host_if, spec.host_ipv4,
        spec.prefix_len, spec.service_ipv4, queues
    );
    Ok(())
}

fn test() -> Result<()> {
    deps()?;
    // The pinned zig (the `cluster` crate's tb_client is built with it, through ZIG_PATH) and
    // the TigerBeetle server its tests run: both cached under target/tigerbeetle/.
    timed("the TigerBeetle server and zig (cached)", tigerbeetle::build)?;
    // Unit, property and in-memory tests of every crate, then the root lab tests, which make
    // their own namespaces and veth pairs. The lab tests start real servers: run them one at a
    // time so two of them do not fight over the machine's two cores. The pantera package is
    // tested with its fault switches compiled in (tests/lab_faults.rs needs them).
    status(cargo().args(["test", "--workspace", "--exclude", "pantera"]))?;
    // The TigerBeetle client (C, built with zig; bindgen needs libclang) and the tests against
    // real local clusters: a step of its own, so the workspace step keeps building `cluster`
    // without the feature, as a plain `cargo build` does.
    timed("cargo test -p cluster --features tigerbeetle", || {
        status(cargo().args(["test", "--package", "cluster", "--features", "tigerbeetle"]))
    })?;
    // The patched smoltcp (third_party/smoltcp/PANTERA.md) is not a workspace member: its own
    // unit tests, the patch's among them, run from its directory with its own lock file.
    status(cargo().args(["test", "--lib", "--manifest-path", "third_party/smoltcp/Cargo.toml"]))?;
    // With the TigerBeetle backend compiled in (its client library needs the pinned zig, and
    // its tests the server, both from `cargo xtask tigerbeetle build`): tests/cluster_backend.rs
    // and tests/lab_cluster.rs run against a real cluster.
    status(cargo().args(["test", "--package", "pantera", "--features", "fault-injection,tigerbeetle", "--", "--test-threads", "1"]))?;
    sim_suite()?;
    // Every fuzz target for a bounded time from its checked-in corpus (docs/fuzzing.md): a
    // crash, a panic or a broken invariant fails the suite with the input saved.
    fuzz::main(&["--smoke"])?;
    Ok(())
}

/// Runs one step of the suite and prints how long it took.
fn timed<T>(what: &str, step: impl FnOnce() -> Result<T>) -> Result<T> {
    let started = Instant::now();
    let result = step()?;
    println!("xtask: {what} took {:.1?}", started.elapsed());
    Ok(result)
}

/// Seeds `cargo xtask test` runs: about 30 s in a debug build on the 2-vCPU CI machine
/// (docs/simulation.md has the measurement).
const SIM_SEEDS_CI: &str = "1000";
/// Seeds each injected bug may take to be caught in `cargo xtask test` (each is caught by
/// the first seed today; the bound keeps a regression of the checker visible and short).
const SIM_BUG_SEEDS_CI: &str = "50";

/// The simulator's part of `cargo xtask test`: the seeds, then each injected bug must be
/// caught. Timed, so the suite's log shows what it cost.
fn sim_suite() -> Result<()> {
    let started = std::time::Instant::now();
    sim(&["--seeds", SIM_SEEDS_CI])?;
    for bug in ["early-release", "skip-fsync", "double-apply"] {
        sim(&["--bug", bug, "--seeds", SIM_BUG_SEEDS_CI])?;
    }
    println!("xtask: the simulator's step took {:.1?}", started.elapsed());
    // The whole appliance: fewer seeds (each runs TCP and TLS too), a replay of the first
    // (its digest must not change), then each injected bug. Its own build of the pantera
    // crate (feature sim-bugs) is most of the time; the time printed includes it.
    let started = std::time::Instant::now();
    sim(&["--stack", "--seeds", SIM_STACK_SEEDS_CI, "--check-replay"])?;
    for bug in ["early-release", "skip-fsync", "double-apply"] {
        sim(&["--stack", "--bug", bug, "--seeds", SIM_BUG_SEEDS_CI])?;
    }
    println!("xtask: the whole-appliance simulator's step took {:.1?} (its build included)", started.elapsed());
    Ok(())
}

/// Whole-appliance seeds `cargo xtask test` runs: about 0.3 s each in a debug build here
/// (docs/simulation.md has the measurement).
const SIM_STACK_SEEDS_CI: &str = "30";

/// `cargo xtask sim ARGS`: runs ledger-svc's `sim` example (a debug build: the seeds are
/// cheap, and the build shares the test profile's artifacts). `--bug` needs the test-only
/// `sim-bugs` feature, compiled only for that run.
fn sim(args: &[&str]) -> Result<()> {
    let mut command = cargo();
    if args.contains(&"--stack") {
        // The whole appliance: pantera's `appliance_sim` example. Always built with the
        // bug switches (off unless --bug): one build of the pantera crate instead of two.
        command.args(["run", "--quiet", "--package", "pantera", "--features", "sim-bugs", "--example", "appliance_sim", "--"]);
        command.args(args.iter().filter(|a| **a != "--stack"));
        return status(&mut command);
    }
    command.args(["run", "--quiet", "--package", "ledger-svc", "--example", "sim"]);
    if args.contains(&"--bug") {
        command.args(["--features", "sim-bugs"]);
    }
    command.arg("--").args(args);
    status(&mut command)
}

/// Waits until `url` answers 200 on the management listener, or the child exits.
fn wait_ready(child: &mut Child, url: &str, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            bail!("pantera exited before it was ready: {st}");
        }
        let ok = Command::new("curl")
            .args(["-sf", "-o", "/dev/null", url])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "pantera was not ready within {timeout:?}");
        thread::sleep(Duration::from_millis(200));
    }
}

fn demo() -> Result<()> {
    deps()?;
    ensure!(is_root(), "the demo needs root: it attaches XDP to the lab's veth");
    // The appliance and the load tester (bench/, the `https` binary) the demo ends with.
    status(cargo().args(["build", "--release", "--bin", "pantera"]))?;
    status(cargo().args(["build", "--release", "--package", "bench", "--bin", "https"]))?;
    let spec = LabSpec::standard(1);
    let lab = Lab::create(&spec)?;
    let bin = "target/release/pantera";
    status(Command::new(bin).args(["certs", "init"]))?;
    // A fresh ledger for the demo, so its balances are the ones printed below: formatted as an
    // operator would (`serve` opens only a formatted data directory).
    let data = Path::new(".pantera/demo-data");
    let _ = fs::remove_dir_all(data);
    status(Command::new(bin).args(["format", "--cluster-id", "0", "--data-dir"]).arg(data))?;
    let mut server = Command::new(bin)
        .args(["serve", "--lab", "--data-dir"])
        .arg(data)
        .spawn()
        .context("cannot start pantera")?;
    let result = demo_requests(&lab, &mut server).and_then(|()| demo_load(&lab));
    // SIGTERM: the appliance detaches its XDP program and stops cleanly.
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let st = server.wait()?;
    drop(lab);
    result?;
    ensure!(st.success(), "pantera did not exit cleanly: {st}");
    println!("\ndemo done: pantera stopped cleanly, XDP program detached, lab removed");
    Ok(())
}

fn demo_requests(lab: &Lab, server: &mut Child) -> Result<()> {
    wait_ready(server, "http://127.0.0.1:9464/readyz", Duration::from_secs(30))?;
    let tls = workspace_root().join(".pantera/tls");
    let cert = |name: &str| tls.join(name).display().to_string();
    let base = format!("https://{}:8443", lab.spec.service_ipv4);
    let curl = |args: &[&str]| -> Result<String> {
        let mut full = vec![
            "curl", "-sS", "--max-time", "10", "--cacert", &cert("ca.pem"), "--cert",
            &cert("client.pem"), "--key", &cert("client.key"),
        ]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
        full.extend(args.iter().map(|s| s.to_string()));
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = lab.exec_in_ns(&refs)?;
        ensure!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let post = |path: &str, body: &str| curl(&["-X", "POST", "--data", body, "-H", "content-type: application/json", &format!("{base}{path}")]);
    println!("\n== ping 10.99.0.2 from the client namespace (answered by the userspace stack)");
    let ping = lab.exec_in_ns(&["ping", "-c", "3", "-i", "0.2", &lab.spec.service_ipv4.to_string()])?;
    print!("{}", String::from_utf8_lossy(&ping.stdout));
    println!("\n== POST /v1/accounts (two accounts on ledger 1)");
    println!("{}", post("/v1/accounts", r#"[{"id":"1","ledger":1,"code":10},{"id":"2","ledger":1,"code":10}]"#)?);
    println!("\n== POST /v1/transfers (100 from account 1 to account 2)");
    let transfer = r#"[{"id":"7","debit_account_id":"1","credit_account_id":"2","amount":"100","ledger":1,"code":1}]"#;
    println!("{}", post("/v1/transfers", transfer)?);
    println!("\n== the same POST again: idempotent, status exists");
    println!("{}", post("/v1/transfers", transfer)?);
    for id in ["1", "2"] {
        println!("\n== GET /v1/accounts/{id}");
        println!("{}", curl(&[&format!("{base}/v1/accounts/{id}")])?);
    }
    println!("\n== metrics (127.0.0.1:9464/metrics, excerpt)");
    let metrics = Command::new("curl").args(["-sf", "http://127.0.0.1:9464/metrics"]).output()?;
    for line in String::from_utf8_lossy(&metrics.stdout).lines().filter(|l| !l.starts_with('#') && !l.contains("_bucket")).take(40) {
        println!("{line}");
    }
    Ok(())
}

/// The demo's last act: ten seconds of durable transfers through the appliance from the client
/// namespace, with the load tester's progress bar and summary (rate, latency percentiles, the
/// ledger's Σ debits = Σ credits over the accounts it used), then a few of the appliance's own
/// counters.
fn demo_load(lab: &Lab) -> Result<()> {
    let root = workspace_root();
    let target = format!("{}:8443", lab.spec.service_ipv4);
    println!("\n== 10 s of load: POST /v1/transfers over mTLS, 32 keep-alive connections (bench: https load)");
    let json = root.join(".pantera/demo-load.json");
    let load = Command::new("ip")
        .args(["netns", "exec", &lab.spec.netns])
        .arg(root.join("target/release/https"))
        .args(["load", "--target", &target, "--connections", "32", "--duration", "10s", "--setup-accounts", "--json"])
        .arg(&json)
        .current_dir(&root)
        .status()
        .context("cannot run the load tester")?;
    ensure!(load.success(), "the load run failed ({load}); its figures are in {}", json.display());
    println!("\n== the appliance's own count of it (127.0.0.1:9464/metrics, excerpt)");
    let metrics = Command::new("curl").args(["-sf", "http://127.0.0.1:9464/metrics"]).output()?;
    let shown = ["pantera_http_responses_total", "pantera_ledger_", "pantera_tls_handshakes", "pantera_xdp_packets_total"];
    for line in String::from_utf8_lossy(&metrics.stdout).lines() {
        if !line.starts_with('#') && !line.contains("_bucket") && shown.iter().any(|p| line.starts_with(p)) {
            println!("{line}");
        }
    }
    Ok(())
}

fn bench(name: &str) -> Result<()> {
    deps()?;
    // Each benchmark binary and the arguments of its full run. They share the standard lab
    // names, so they run one after another, never at once.
    let all: [(&str, &[&str]); 15] = [
        ("ledger", &[]),
        ("fairness", &[]),
        ("checkpoint", &[]),
        ("query_cost", &[]),
        ("api_cost", &[]),
        ("tls_cpu", &[]),
        ("stack_sim", &[]),
        ("seccomp_cost", &[]),
        ("xsk", &["run"]),
        ("echo", &["run"]),
        ("https", &["run"]),
        ("conns", &[]),
        ("synflood", &[]),
        ("startup", &[]),
        ("alloc_cost", &[]),
    ];
    // These run in memory or on files and need no lab.
    let unprivileged =
        ["ledger", "fairness", "checkpoint", "query_cost", "api_cost", "tls_cpu", "stack_sim", "seccomp_cost", "alloc_cost"];
    let chosen: Vec<_> = all.iter().filter(|(n, _)| name == "all" || *n == name).collect();
    ensure!(!chosen.is_empty(), "unknown benchmark {name}; one of {:?}", all.map(|(n, _)| n));
    ensure!(is_root() || unprivileged.contains(&name), "the network benchmarks need root (XDP, namespaces)");
    status(cargo().args(["build", "--release", "--bins", "--package", "bench", "--package", "pantera"]))?;
    for (n, args) in chosen {
        println!("== bench {n}");
        status(Command::new(format!("target/release/{n}")).args(*args))?;
    }
    Ok(())
}
