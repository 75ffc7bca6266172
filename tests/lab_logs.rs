//! Root lab test of the log (issue 10, "Logs with tracing"): with `log.format = "json"` every
//! line the appliance writes is a JSON object; a client without a certificate and a 403 are
//! each logged with the peer's address and the reason; a flood of failed handshakes yields a
//! bounded number of lines, and every failure is either a line or counted in a "suppressed"
//! summary.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// The JSON objects of the log so far; panics on a line that is not one.
fn log_lines(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("a log line is not JSON ({e}): {line}")))
        .collect()
}

fn of_kind<'a>(lines: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|l| l["kind"] == kind).collect()
}

/// Failed handshakes the log accounts for: one per warning line, plus each summary's count
/// (a warning line's `suppressed` counts lines held back before it).
fn accounted(lines: &[&serde_json::Value]) -> u64 {
    lines
        .iter()
        .map(|l| {
            let suppressed = l["suppressed"].as_u64().unwrap_or(0);
            if l["reason"].is_null() {
                suppressed
            } else {
                1 + suppressed
            }
        })
        .sum()
}

/// Polls the log (bounded) until `done` holds for its lines; returns the last lines read.
fn wait_for_log(path: &Path, done: impl Fn(&[serde_json::Value]) -> bool) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let lines = log_lines(path);
        if done(&lines) || Instant::now() > deadline {
            return lines;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A connection without a client certificate: refused at the handshake (in TLS 1.3 the client
/// learns it on its first read).
fn anonymous_attempt(config: &Arc<rustls::ClientConfig>, addr: SocketAddr) -> bool {
    match tls_connect(config, addr) {
        Err(_) => true,
        Ok(mut s) => request(&mut s, "GET", "/v1/accounts/1", "").is_err(),
    }
}

#[test]
fn json_log_names_peer_and_reason_and_a_handshake_flood_is_rate_limited() {
    const FLOOD: u64 = 200;
    const FLOOD_THREADS: u64 = 8;
    let lab = lab("logs", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let _server = Server::start_logged(&lab, dir.path(), "ledger", "\n[log]\nformat = \"json\"\n");
    let log = dir.path().join("pantera.log");
    let tls = dir.path().join("tls");
    let addr = SocketAddr::from((lab.spec.service_ipv4, PORT));
    let peer_ip = lab.spec.peer_ipv4.to_string();

    // One client without a certificate, and one 403 (the reader may not write).
    let anonymous = tls_client_config(&tls, None);
    let reader = tls_client_config(&tls, Some("reader"));
    let (refused, denied) = {
        let (anonymous, reader) = (Arc::clone(&anonymous), Arc::clone(&reader));
        in_netns(&lab.spec.netns, move || {
            let refused = anonymous_attempt(&anonymous, addr);
            let mut r = tls_connect(&reader, addr).expect("reader connects");
            let denied = request(
                &mut r,
                "POST",
                "/v1/transfers",
                r#"[{"id":"9","debit_account_id":"1","credit_account_id":"2","amount":"5","ledger":1,"code":1}]"#,
            )
            .expect("post");
            (refused, denied.0)
        })
        .join()
        .expect("client thread")
    };
    assert!(refused, "a client without a certificate got an answer");
    assert_eq!(denied, 403);

    let lines = wait_for_log(&log, |lines| {
        !of_kind(lines, "tls_handshake_failed").is_empty() && !of_kind(lines, "forbidden").is_empty()
    });
    let ready = lines
        .iter()
        .find(|l| l["message"].as_str().is_some_and(|m| m.starts_with("ready in")))
        .expect("the log:: lines are JSON too");
    assert_eq!(ready["target"], "pantera::serve", "{ready}");
    let failed = of_kind(&lines, "tls_handshake_failed");
    assert_eq!(failed.len(), 1, "{failed:?}");
    let f = failed[0];
    assert_eq!(f["level"], "WARN");
    assert_eq!(f["reason"], "no_client_certificate", "{f}");
    assert!(f["peer"].as_str().is_some_and(|p| p.starts_with(&format!("{peer_ip}:"))), "{f}");
    assert!(f["slot"].is_u64(), "{f}");
    assert_eq!(f["span"]["name"], "worker", "the worker span names the queue: {f}");
    assert_eq!(f["span"]["queue"], "0", "{f}");
    let forbidden = of_kind(&lines, "forbidden");
    assert_eq!(forbidden.len(), 1, "{forbidden:?}");
    let f = forbidden[0];
    assert_eq!(f["identity"], "cn:reader", "{f}");
    assert!(f["reason"].as_str().is_some_and(|r| r.contains("role read")), "{f}");
    assert!(f["peer"].as_str().is_some_and(|p| p.starts_with(&format!("{peer_ip}:"))), "{f}");

    // The flood: FLOOD more clients without a certificate, from a few threads at once.
    let started = Instant::now();
    let threads: Vec<_> = (0..FLOOD_THREADS)
        .map(|_| {
            let anonymous = Arc::clone(&anonymous);
            in_netns(&lab.spec.netns, move || {
                (0..FLOOD / FLOOD_THREADS).filter(|_| anonymous_attempt(&anonymous, addr)).count() as u64
            })
        })
        .collect();
    let refused: u64 = threads.into_iter().map(|t| t.join().expect("flood thread")).sum();
    assert_eq!(refused, FLOOD, "every attempt without a certificate is refused");
    // The summary of the lines held back comes once the bucket has a token again.
    let lines = wait_for_log(&log, |lines| accounted(&of_kind(lines, "tls_handshake_failed")) > FLOOD);
    let elapsed = started.elapsed();
    let failed = of_kind(&lines, "tls_handshake_failed");
    assert_eq!(
        accounted(&failed),
        FLOOD + 1,
        "every failed handshake is a line or counted in a summary: {failed:?}"
    );
    // The limiter's promise: at most its burst, then its rate, per second since the flood began
    // (the one line before the flood included).
    let per_second = u64::from(pantera::logging::WARNINGS_PER_SECOND);
    let bound = 1 + per_second + per_second * elapsed.as_secs().saturating_add(1);
    assert!(
        (failed.len() as u64) <= bound,
        "{} lines in {elapsed:?}, at most {bound}",
        failed.len()
    );
    let suppressed: u64 = failed.iter().map(|l| l["suppressed"].as_u64().unwrap_or(0)).sum();
    assert!(
        suppressed > 0,
        "{} lines for {} failures: nothing was held back",
        failed.len(),
        FLOOD + 1
    );
    assert!(
        failed
            .iter()
            .any(|l| l["message"].as_str().is_some_and(|m| m.contains("suppressed")) || l["suppressed"].as_u64() > Some(0)),
        "a line says how many were suppressed"
    );
}

#[test]
fn sighup_applies_log_level_and_rust_log_unset_lets_the_file_decide() {
    use nix::sys::signal::{kill, Signal};
    let lab = lab("loglevel", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    // RUST_LOG set but empty: as if unset, so `log.level` decides.
    let server = Server::start_logged_with_env(
        &lab,
        dir.path(),
        "ledger",
        "\n[log]\nformat = \"json\"\nlevel = \"warn\"\n",
        &[("RUST_LOG", "")],
    );
    let log = dir.path().join("pantera.log");
    let infos = |lines: &[serde_json::Value]| lines.iter().filter(|l| l["level"] == "INFO").count();
    assert_eq!(infos(&log_lines(&log)), 0, "level warn at start: no info line");

    let set_level = |from: &str, to: &str, reloads: f64| {
        let text = std::fs::read_to_string(server.config_path()).expect("read config");
        std::fs::write(
            server.config_path(),
            text.replace(&format!("level = \"{from}\""), &format!("level = \"{to}\"")),
        )
        .expect("write config");
        kill(server.pid(), Signal::SIGHUP).expect("kill -HUP");
        assert_eq!(
            server.wait_metric("pantera_config_reloads_total", &["result=\"ok\""], reloads),
            reloads,
            "{}",
            server.log_text()
        );
    };
    set_level("warn", "info", 1.0);
    let lines = wait_for_log(&log, |lines| lines.iter().any(|l| l["message"] == "log level now \"info\""));
    assert!(
        lines.iter().any(|l| l["message"] == "log level now \"info\""),
        "{}",
        server.log_text()
    );
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "INFO" && l["message"].as_str().is_some_and(|m| m.starts_with("configuration reloaded"))),
        "{}",
        server.log_text()
    );
    let before = infos(&lines);
    set_level("info", "warn", 2.0);
    // Only the reload's first line ("SIGHUP: reloading") is written at info; the rest come
    // after the filter is back at warn, and before the reload is counted.
    let lines = log_lines(&log);
    assert_eq!(infos(&lines), before + 1, "{}", server.log_text());
    assert!(lines.last().is_some_and(|l| l["message"].as_str().is_some_and(|m| m.starts_with("SIGHUP"))), "{}", server.log_text());
}
