//! The metrics an SRE alerts on (issue 10): `/metrics` passes `promtool check metrics`, and the
//! series an alert reads move with the traffic that should move them. Also `pantera --version`.

mod common;

use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

const ACCOUNTS: &str = r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#;
/// One transfer that goes through and one from an account that does not exist.
const TRANSFERS: &str = r#"[{"id":"7","debit_account_id":"1","credit_account_id":"2","amount":"5","ledger":1,"code":1},
{"id":"8","debit_account_id":"99","credit_account_id":"2","amount":"5","ledger":1,"code":1}]"#;

#[test]
fn pantera_version_names_the_build_commit() {
    let out = Command::new(PANTERA)
        .arg("--version")
        .output()
        .expect("run pantera --version");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let prefix = format!("pantera {} (commit ", env!("CARGO_PKG_VERSION"));
    let commit = text
        .strip_prefix(&prefix)
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("{text:?}"));
    // The tests run from the checkout the binary was built from: its HEAD, as git names it.
    let head = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output();
    match head {
        Ok(head) if head.status.success() => {
            let head = String::from_utf8_lossy(&head.stdout).trim().to_owned();
            assert!(
                commit == head || commit == format!("{head}-dirty"),
                "version {text:?}, HEAD {head}"
            );
        }
        _ => assert_eq!(commit, "unknown", "{text:?}"),
    }
}

/// The value of the one series `name{labels}` (labels as rendered, sorted), or None.
fn series(text: &str, name_and_labels: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(name_and_labels)?
            .strip_prefix(' ')?
            .parse()
            .ok()
    })
}

#[test]
fn metrics_pass_promtool_and_move_with_traffic() {
    let lab = lab("metrics", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, dir.path(), "ledger", "");
    let tls = dir.path().join("tls");
    let addr = SocketAddr::from((lab.spec.service_ipv4, PORT));
    let closed_port = SocketAddr::from((lab.spec.service_ipv4, 9999));
    let writer = tls_client_config(&tls, Some("client"));
    let anonymous = tls_client_config(&tls, None);
    let before = server.metrics();
    let requests_before = series(
        &before,
        "pantera_http_request_seconds_count{route=\"/v1/transfers\",status_class=\"2xx\"}",
    )
    .unwrap_or(0.0);

    let (anonymous_result, dropped_syn) = in_netns(&lab.spec.netns, move || {
        let mut s = tls_connect(&writer, addr).expect("connect");
        let (status, body) = request(&mut s, "POST", "/v1/accounts", ACCOUNTS).expect("accounts");
        assert_eq!(status, 200, "{body}");
        let (status, body) =
            request(&mut s, "POST", "/v1/transfers", TRANSFERS).expect("transfers");
        assert_eq!(status, 200, "{body}");
        let (status, body) = request(&mut s, "GET", "/v1/accounts/1", "").expect("get");
        assert_eq!(status, 200, "{body}");
        // A client without a certificate fails the handshake.
        let anonymous_result = tls_connect(&anonymous, addr)
            .and_then(|mut s| request(&mut s, "GET", "/v1/accounts/1", ""));
        // A SYN to a port the service does not use: the XDP program drops it.
        let dropped_syn = TcpStream::connect_timeout(&closed_port, Duration::from_secs(1));
        (anonymous_result, dropped_syn.map(drop))
    })
    .join()
    .expect("client thread");
    assert!(
        anonymous_result.is_err(),
        "a client without a certificate got an answer: {anonymous_result:?}"
    );
    assert!(dropped_syn.is_err(), "nothing listens on {closed_port}");

    // The series the example alerts read moved with that traffic.
    assert!(
        server.wait_metric(
            "pantera_tls_errors_total",
            &["reason=\"no_client_certificate\""],
            1.0
        ) >= 1.0,
        "{}",
        server.metrics()
    );
    assert!(
        server.wait_metric(
            "pantera_xdp_packets_total",
            &["action=\"drop\"", "reason=\"port\""],
            1.0
        ) >= 1.0,
        "{}",
        server.metrics()
    );
    let text = server.metrics();
    let requests = series(
        &text,
        "pantera_http_request_seconds_count{route=\"/v1/transfers\",status_class=\"2xx\"}",
    )
    .unwrap_or(0.0);
    assert_eq!(requests - requests_before, 1.0, "{text}");
    let events = server.metric_sum(
        "pantera_ledger_events_total",
        &["operation=\"create_transfers\""],
    );
    assert_eq!(events, 2.0, "both transfers counted, by result: {text}");
    let result = |code: &str| {
        server.metric_sum(
            "pantera_ledger_events_total",
            &[
                "operation=\"create_transfers\"",
                &format!("result=\"{code}\""),
            ],
        )
    };
    assert_eq!(
        (result("ok"), result("debit_account_not_found")),
        (1.0, 1.0),
        "by result code: {text}"
    );
    assert_eq!(
        server.metric_sum(
            "pantera_ledger_events_total",
            &["operation=\"create_accounts\""]
        ),
        2.0,
        "{text}"
    );
    assert!(
        server.metric_sum("pantera_ledger_queries_total", &[]) >= 1.0,
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("pantera_build_info{commit=\"") && l.ends_with(" 1")),
        "{text}"
    );
    assert!(
        series(&text, "process_resident_memory_bytes").unwrap_or(0.0) > 0.0,
        "{text}"
    );
    let now = std::time::UNIX_EPOCH
        .elapsed()
        .expect("clock")
        .as_secs_f64();
    let expiry = series(
        &text,
        "pantera_tls_certificate_expiry_timestamp_seconds{cert=\"server\"}",
    )
    .unwrap_or(0.0);
    assert!(
        expiry > now,
        "server certificate expiry {expiry}, now {now}: {text}"
    );
    assert!(
        !text.contains("counter=\""),
        "a counter label family is left: {text}"
    );
    assert_eq!(
        series(&text, "pantera_ledger_replies_awaited{queue=\"0\"}"),
        Some(0.0),
        "every reply came back: {text}"
    );

    // promtool lints the exposition: non-zero exit and a list of problems otherwise.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; cargo xtask deps installs it)");
    std::io::Write::write_all(&mut promtool.stdin.take().expect("stdin"), text.as_bytes())
        .expect("feed promtool");
    let out = promtool.wait_with_output().expect("promtool");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics: {:?}\n{report}",
        out.status
    );
}
