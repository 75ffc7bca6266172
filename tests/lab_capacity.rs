//! Root lab test of capacity (issue 7, hostile clients): 10,000 concurrent keep-alive mTLS
//! connections on one queue, all open at the same time, each answered twice on the same
//! connection. The client is one thread over nonblocking sockets and poll(2)
//! (`pantera::lab_client`), the same fleet the `conns` benchmark uses.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use pantera::lab_client::{raise_open_files_limit, Fleet, FleetLimits};

const CONNS: usize = 10_000;
/// The whole test: about 10 s of handshakes here (1–2k/s), two rounds of requests, set-up.
const TEST_TIMEOUT: Duration = Duration::from_secs(120);
const GET_ACCOUNT: &[u8] = b"GET /v1/accounts/1 HTTP/1.1\r\nHost: pantera\r\n\r\n";

#[test]
fn ten_thousand_keep_alive_connections_on_one_queue_are_all_open_and_served() {
    let deadline = Instant::now() + TEST_TIMEOUT;
    // One socket per connection in this process, plus the test harness's own.
    raise_open_files_limit(CONNS as u64 + 1024).expect("raise RLIMIT_NOFILE");
    let lab = lab("cap", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    // Idle timeout well past the test's own bound, so no connection is reclaimed mid-test.
    let server = Server::start(&lab, dir.path(), "ledger", &format!("\n[tcp]\nconnections_max = {CONNS}\nconnections_per_source_max = {CONNS}\nidle_timeout_ms = 300000\n"));
    let config = tls_client_config(&dir.path().join("tls"), Some("client"));
    let addr = SocketAddr::from((lab.spec.service_ipv4, PORT));

    let opened = in_netns(&lab.spec.netns, move || {
        let mut s = tls_connect(&config, addr).expect("connect for set-up");
        let (status, body) = request(&mut s, "POST", "/v1/accounts", r#"[{"id":"1","ledger":1,"code":1}]"#).expect("create account 1");
        assert_eq!(status, 200, "{body}");
        drop(s);
        Fleet::connect(Arc::clone(&config), addr, CONNS, FleetLimits::default(), deadline)
    })
    .join()
    .expect("client thread");
    let (mut fleet, report) = opened.unwrap_or_else(|e| panic!("opening {CONNS} connections: {e}"));
    eprintln!(
        "lab_capacity: {} connections opened in {:.1} s ({:.0} handshakes/s, {} retried)",
        report.opened,
        report.elapsed.as_secs_f64(),
        report.rate_per_s(),
        report.retries
    );

    let first = fleet.round(GET_ACCOUNT, deadline).unwrap_or_else(|e| panic!("first round: {e}"));
    assert_eq!(first.count_of(200), CONNS, "first round: {first:?}");
    assert_eq!(fleet.open(), CONNS, "first round: {first:?}");
    // Every connection answered and none closed: the appliance holds all of them at once.
    let open = server.wait_metric("pantera_tcp_connections", &[], CONNS as f64);
    assert_eq!(open, CONNS as f64, "open connections on the appliance");

    let second = fleet.round(GET_ACCOUNT, deadline).unwrap_or_else(|e| panic!("second round: {e}"));
    assert_eq!(second.count_of(200), CONNS, "second round, same connections: {second:?}");
    assert_eq!(fleet.open(), CONNS);
    eprintln!(
        "lab_capacity: round 1 {:.0} requests/s, round 2 {:.0} requests/s over {CONNS} connections",
        CONNS as f64 / first.elapsed.as_secs_f64(),
        CONNS as f64 / second.elapsed.as_secs_f64()
    );
    // No connection was refused or timed out on the way.
    assert_eq!(server.metric_sum("pantera_tcp_idle_timeouts_total", &[]), 0.0);
    assert_eq!(server.metric_sum("pantera_tcp_connections_refused_total", &["reason=\"at_capacity\""]), 0.0);
    assert_eq!(server.metric_sum("pantera_tcp_connections", &[]), CONNS as f64);
}
