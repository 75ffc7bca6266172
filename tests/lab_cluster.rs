//! Root lab test of the TigerBeetle ledger backend (docs/cluster-backend.md): the appliance
//! on the lab, under its normal sandbox, with `ledger.backend = "tigerbeetle"` in front of a
//! 1-replica TigerBeetle cluster on loopback. A transfer over mTLS succeeds; with the replica
//! killed a transfer gets 503 `ledger_unavailable` with Retry-After, `/readyz` says not ready
//! and `/healthz` stays healthy; with the replica back, service and readiness return by
//! themselves, the client's retry with the same id is not applied twice, and the balances are
//! right.
//!
//! Needs root (the lab), the `tigerbeetle` feature and the server `cargo xtask tigerbeetle
//! build` installs.

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use cluster::local::LocalCluster;
use common::*;

/// The backend's deadline in this test: short, so the dead-cluster phase is quick.
const REQUEST_TIMEOUT_MS: u64 = 1_000;
const RETRY_AFTER_S: u32 = 2;

/// One request on a new mTLS connection from the client namespace: status, head, body.
fn call(
    lab: &Lab,
    config: &Arc<rustls::ClientConfig>,
    method: &'static str,
    path: String,
    body: String,
) -> (u16, String, String) {
    let (config, addr) = (
        Arc::clone(config),
        SocketAddr::from((lab.spec.service_ipv4, PORT)),
    );
    in_netns(&lab.spec.netns, move || {
        let mut s = tls_connect(&config, addr).expect("mTLS connection");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: pantera\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        std::io::Write::write_all(&mut s, head.as_bytes()).expect("send");
        read_with_head(&mut s)
    })
    .join()
    .expect("client thread")
}

/// Reads one Content-Length framed response, keeping the head (for Retry-After).
fn read_with_head(stream: &mut impl Read) -> (u16, String, String) {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).expect("read the response"),
            1,
            "closed before a response"
        );
        buf.push(byte[0]);
        assert!(buf.len() < 64 * 1024, "response head too large");
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let (status, length) = pantera::lab_client::response_head(&head);
    let mut body = vec![0; length];
    stream.read_exact(&mut body).expect("read the body");
    (
        status.unwrap_or(0),
        head,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn transfer(id: u32, amount: u32) -> String {
    format!(
        r#"[{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":"{amount}","ledger":1,"code":1}}]"#
    )
}

fn wait_for(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !ok() {
        assert!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    started.elapsed()
}

#[test]
fn a_dead_cluster_turns_into_503_and_not_ready_and_the_appliance_recovers_by_itself() {
    let lab = lab("tbdown", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = LocalCluster::start(1).expect("start a 1-replica TigerBeetle cluster");
    cluster
        .wait_ready(Duration::from_secs(60))
        .expect("the cluster serves");
    let extra = format!(
        "[ledger.tigerbeetle]\naddresses = \"{}\"\nrequest_timeout_ms = {REQUEST_TIMEOUT_MS}\nretry_after_s = {RETRY_AFTER_S}\nsessions = 2\n",
        cluster.addresses()
    );
    let mut server = Server::start_logged_edited(&lab, dir.path(), "ledger", &extra, |text| {
        text.replace("[ledger]\n", "[ledger]\nbackend = \"tigerbeetle\"\n")
    });
    let client = tls_client_config(&dir.path().join("tls"), Some("client"));

    let accounts = r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#.to_owned();
    let (status, _, body) = call(&lab, &client, "POST", "/v1/accounts".into(), accounts);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.matches("\"created\"").count(), 2, "{body}");
    let (status, _, body) = call(
        &lab,
        &client,
        "POST",
        "/v1/transfers".into(),
        transfer(100, 10),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"created\"") && body.contains("\"timestamp\""),
        "{body}"
    );

    // The cluster goes away.
    cluster.kill(0);
    let asked = Instant::now();
    let (status, head, body) = call(
        &lab,
        &client,
        "POST",
        "/v1/transfers".into(),
        transfer(101, 5),
    );
    println!(
        "dead cluster: answered {status} after {:?} (deadline {REQUEST_TIMEOUT_MS} ms)",
        asked.elapsed()
    );
    assert_eq!(status, 503, "{head}{body}");
    assert!(body.contains("ledger_unavailable"), "{body}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("retry-after: {RETRY_AFTER_S}\r\n")),
        "{head}"
    );
    let (status, body) = http_get(server.management, "/readyz").expect("readyz");
    assert_eq!(
        status, 503,
        "not ready while the cluster does not answer: {body}"
    );
    assert!(body.contains("TigerBeetle"), "{body}");
    assert_eq!(
        http_get(server.management, "/healthz").expect("healthz").0,
        200,
        "the process itself is fine"
    );
    // Reads too: every request gets an answer within its deadline, none hangs.
    let (status, _, body) = call(&lab, &client, "GET", "/v1/accounts/1".into(), String::new());
    assert_eq!(status, 503, "{body}");
    assert!(server.metric_sum("pantera_ledger_cluster_deadline_expiries_total", &[]) >= 1.0);
    assert!(server.metric_sum("pantera_ledger_cluster_unavailable_total", &[]) >= 2.0);
    assert_eq!(
        server.metric_sum("pantera_ledger_cluster_reachable", &[]),
        0.0
    );

    // The cluster returns: readiness and service come back without any action.
    cluster.restart(0).expect("restart the replica");
    let took = wait_for(
        "/readyz 200 after the cluster returned",
        Duration::from_secs(90),
        || http_get(server.management, "/readyz").is_ok_and(|(s, _)| s == 200),
    );
    println!("cluster back: ready again after {took:?}");
    // The client retries the transfer that got 503 with the same id: applied at most once
    // (`exists` when the cluster applied the first attempt after all).
    let (status, _, body) = call(
        &lab,
        &client,
        "POST",
        "/v1/transfers".into(),
        transfer(101, 5),
    );
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"created\"") || body.contains("\"exists\""),
        "{body}"
    );
    let (status, _, body) = call(
        &lab,
        &client,
        "POST",
        "/v1/transfers".into(),
        transfer(102, 1),
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"created\""), "{body}");
    let (status, _, body) = call(&lab, &client, "GET", "/v1/accounts/1".into(), String::new());
    assert_eq!(status, 200, "{body}");
    let account: serde_json::Value = serde_json::from_str(&body).expect("account JSON");
    assert_eq!(account["debits_posted"], "16", "10 + 5 (once) + 1: {body}");
    let (_, _, body) = call(&lab, &client, "GET", "/v1/accounts/2".into(), String::new());
    let account: serde_json::Value = serde_json::from_str(&body).expect("account JSON");
    assert_eq!(account["credits_posted"], "16", "{body}");
    assert_eq!(
        server.metric_sum("pantera_ledger_cluster_reachable", &[]),
        1.0
    );

    // The cluster goes away again, a request is waiting for it: the stop (SIGTERM) does not
    // hang on the dead cluster (it waits at most one deadline for the request in flight), and
    // nothing on the way is denied by the sandbox (tb_client's connection teardown included).
    cluster.kill(0);
    let (status, _, body) = call(&lab, &client, "POST", "/v1/transfers".into(), transfer(103, 1));
    assert_eq!(status, 503, "{body}");
    let stopping = Instant::now();
    let status = server.terminate();
    println!("stopped with the cluster down in {:?}", stopping.elapsed());
    let log = server.log_text();
    assert!(status.success(), "exit {status}: {log}");
    assert!(
        !log.contains("FATAL"),
        "nothing fatal (a denied system call is): {log}"
    );
}
