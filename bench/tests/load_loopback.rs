//! `https load` end to end against `pantera serve-kernel`'s server (the same TLS, HTTP, API and
//! ledger as the appliance, over kernel sockets), run in this process on loopback: no root, no
//! lab. Each load is bounded by a count of requests (and a short duration); the checks are on
//! the figures the client reports and the ledger check it makes, never on time.
#![forbid(unsafe_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HTTPS: &str = env!("CARGO_BIN_EXE_https");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind an ephemeral port")
        .local_addr()
        .expect("its address")
        .port()
}

/// The server, stopped (and joined) on drop.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<()>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn start(home: &Path) -> (Server, SocketAddr) {
    let mut config = pantera::config::Config::lab(home);
    config.ledger.data_dir = home.join("data");
    config.management.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    pantera::serve::ensure_lab_certificates(home, &config).expect("lab certificates");
    let listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let stop = Arc::new(AtomicBool::new(false));
    let home = home.to_owned();
    let flag = Arc::clone(&stop);
    let thread = std::thread::spawn(move || {
        pantera::baseline::serve_kernel(&config, Some(&home), listen, flag)
    });
    let server = Server {
        stop,
        thread: Some(thread),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "serve-kernel did not open {listen}"
        );
        assert!(
            !server.thread.as_ref().is_some_and(|t| t.is_finished()),
            "serve-kernel ended before it was ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (server, listen)
}

/// Runs `https load` with `extra` arguments and returns its JSON result.
fn load(home: &Path, target: SocketAddr, extra: &[&str]) -> serde_json::Value {
    let json = home.join("result.json");
    let _ = std::fs::remove_file(&json);
    let tls = home.join("tls");
    let out = Command::new(HTTPS)
        .arg("load")
        .args([
            "--target",
            &target.to_string(),
            "--quiet",
            "--duration",
            "20s",
            "--json",
        ])
        .arg(&json)
        .arg("--ca")
        .arg(tls.join("ca.pem"))
        .arg("--cert")
        .arg(tls.join("client.pem"))
        .arg("--key")
        .arg(tls.join("client.key"))
        .args(extra)
        .output()
        .expect("run https load");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "https load {extra:?} failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("ok transfers") || stdout.contains("ok requests"),
        "a human summary: {stdout}"
    );
    serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON result"))
        .expect("valid JSON")
}

#[test]
fn load_against_serve_kernel_on_loopback() {
    let home = tempfile::tempdir().expect("a temporary directory");
    let (_server, target) = start(home.path());

    // Keep-alive, pipelined, bounded by a count: every transfer created and accounted for.
    let r = load(
        home.path(),
        target,
        &[
            "--setup-accounts",
            "--connections",
            "4",
            "--pipeline",
            "4",
            "--requests",
            "400",
        ],
    );
    assert_eq!(r["totals"]["ok"], 400, "{r}");
    assert_eq!(r["totals"]["errors"], 0, "{r}");
    assert_eq!(r["ledger_check"], "ok", "{r}");
    assert_eq!(r["latency_us"]["count"], 400);
    assert_eq!(
        r["handshakes"]["full"], 4,
        "one handshake per keep-alive connection: {r}"
    );
    let series_ok: u64 = r["series"]
        .as_array()
        .expect("a series")
        .iter()
        .map(|s| s["ok"].as_u64().expect("a count"))
        .sum();
    assert_eq!(series_ok, 400, "the per-second series adds up to the total");

    // A new connection per request, resumed: after each connection's first, resumed handshakes.
    let r = load(
        home.path(),
        target,
        &[
            "--setup-accounts",
            "--connections",
            "2",
            "--new-connections",
            "--resume",
            "--requests",
            "20",
        ],
    );
    assert_eq!(r["totals"]["ok"], 20, "{r}");
    assert_eq!(r["ledger_check"], "ok", "{r}");
    let (full, resumed) = (
        r["handshakes"]["full"].as_u64().expect("n"),
        r["handshakes"]["resumed"].as_u64().expect("n"),
    );
    assert_eq!(full + resumed, 20, "{r}");
    assert!(resumed >= 10, "most handshakes resumed: {r}");

    // Without --resume every handshake is full.
    let r = load(
        home.path(),
        target,
        &[
            "--setup-accounts",
            "--connections",
            "2",
            "--new-connections",
            "--requests",
            "10",
        ],
    );
    assert_eq!(
        (
            r["handshakes"]["full"].as_u64(),
            r["handshakes"]["resumed"].as_u64()
        ),
        (Some(10), Some(0)),
        "{r}"
    );

    // Open loop and a ledger read: a count at a modest rate, all answered.
    let r = load(
        home.path(),
        target,
        &[
            "--workload",
            "read",
            "--setup-accounts",
            "--connections",
            "2",
            "--rate",
            "200",
            "--requests",
            "100",
        ],
    );
    assert_eq!(r["totals"]["ok"], 100, "{r}");
    assert_eq!(r["config"]["rate_per_s"], 200.0);
    assert_eq!(r["ledger_check"], "skipped");
}

#[test]
fn bad_arguments_are_refused_with_a_reason() {
    for (args, reason) in [
        (&["--connections", "0"][..], "--connections must be"),
        (&["--workload", "transfers"][..], "needs accounts"),
        (
            &[
                "--workload",
                "constant",
                "--new-connections",
                "--pipeline",
                "2",
            ][..],
            "--pipeline needs keep-alive",
        ),
        (
            &["--workload", "constant", "--duration", "2h"][..],
            "duration",
        ),
    ] {
        let out = Command::new(HTTPS)
            .arg("load")
            .args(args)
            .output()
            .expect("run https load");
        assert!(!out.status.success(), "{args:?} accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(reason), "{args:?}: {err}");
    }
}
