//! Liveness on the real appliance (issue: hostile clients): every worker and the ledger thread
//! publish a heartbeat while idle, and the management endpoints report them.

mod common;

use std::thread;
use std::time::Duration;

use common::*;

#[test]
fn an_idle_appliance_stays_healthy_and_reports_every_heartbeat() {
    let lab = lab("health", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, dir.path(), "ledger", "");
    // Idle for longer than the longest gap between beats (1 s): a thread that beat only when
    // it had work would show an age past it.
    thread::sleep(Duration::from_millis(1_500));
    let (status, body) = http_get(server.management, "/healthz").expect("healthz");
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    assert_eq!(http_get(server.management, "/readyz").expect("readyz").0, 200);
    let metrics = server.metrics();
    assert!(metrics.contains("pantera_healthy 1"), "{metrics}");
    for thread in ["worker-q0", "worker-q1", "ledger"] {
        let age = server.metric_sum("pantera_heartbeat_age_seconds", &[&format!("thread=\"{thread}\"")]);
        println!("{thread}: heartbeat {age} s old after 1.5 s idle");
        assert!(metrics.contains(&format!("pantera_heartbeat_age_seconds{{thread=\"{thread}\"}}")), "{thread} has no heartbeat: {metrics}");
        assert!(age < 1.0, "{thread}'s heartbeat is {age} s old while idle");
    }
}
