//! Root lab test of the audit log (docs/operations.md, "Audit log"): writes from two client
//! identities, some refused and some with failing events, then a clean stop; the log must
//! hold exactly one record per write, each with its identity, and its result summaries must
//! reconcile with the ledger.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::*;
use serde_json::Value;

/// One write the test sends, and what its audit record must say.
struct Expected {
    identity: &'static str,
    role: &'static str,
    route: &'static str,
    status: u16,
    operation: &'static str,
    events: u64,
    /// The result summary, exactly.
    results: Value,
}

fn transfer(id: u32, debit: u32, credit: u32) -> String {
    // Every amount is 1: the ledger's posted debits then count the transfers it holds.
    format!(
        r#"{{"id":"{id}","debit_account_id":"{debit}","credit_account_id":"{credit}","amount":"1","ledger":1,"code":1}}"#
    )
}

#[test]
fn every_write_has_one_record_with_its_identity_and_the_results_reconcile_with_the_ledger() {
    let lab = lab("audit", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    // One key alone in [audit]; the path is the default, beside the data directory.
    let mut server = Server::start(&lab, dir.path(), "ledger", "[audit]\nfsync = \"batch\"\n");
    let tls = dir.path().join("tls");
    tls_term::certs::issue_client(&tls, "teller").expect("a second writer's certificate");
    let addr = SocketAddr::from((lab.spec.service_ipv4, PORT));
    let (client, teller, reader) = (
        tls_client_config(&tls, Some("client")),
        tls_client_config(&tls, Some("teller")),
        tls_client_config(&tls, Some("reader")),
    );

    // Account 3 may not be debited past its credits: a debit of it fails with exceeds_credits.
    let accounts = r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1},{"id":"3","ledger":1,"code":1,"flags":["debits_must_not_exceed_credits"]}]"#;
    let accounts_again = r#"[{"id":"3","ledger":1,"code":1,"flags":["debits_must_not_exceed_credits"]},{"id":"4","ledger":1,"code":1}]"#;
    let transfers_client: Vec<String> = (1..=10)
        .map(|i| format!("[{}]", transfer(i, 1, 2)))
        .collect();
    let transfers_teller = format!(
        "[{},{},{}]",
        transfer(100, 3, 4),
        transfer(101, 2, 1),
        transfer(102, 4, 3)
    );
    let write = |identity, route, status, operation, events, results: Value| Expected {
        identity,
        role: "write",
        route,
        status,
        operation,
        events,
        results,
    };
    let mut expected = vec![
        write(
            "cn:client",
            "/v1/accounts",
            200,
            "create_accounts",
            3,
            serde_json::json!({"ok": 3}),
        ),
        write(
            "cn:teller",
            "/v1/accounts",
            200,
            "create_accounts",
            2,
            serde_json::json!({"exists": 1, "ok": 1}),
        ),
    ];
    for _ in &transfers_client {
        expected.push(write(
            "cn:client",
            "/v1/transfers",
            200,
            "create_transfers",
            1,
            serde_json::json!({"ok": 1}),
        ));
    }
    // 100 fails (account 3 has no credits yet), 101 and 102 are created.
    expected.push(write(
        "cn:teller",
        "/v1/transfers",
        200,
        "create_transfers",
        3,
        serde_json::json!({"exceeds_credits": 1, "ok": 2}),
    ));
    // Refused before the ledger: a body that is not JSON, and the read-only identity.
    expected.push(write(
        "cn:teller",
        "/v1/transfers",
        400,
        "none",
        0,
        serde_json::json!({}),
    ));
    expected.push(Expected {
        identity: "cn:reader",
        role: "read",
        route: "/v1/transfers",
        status: 403,
        operation: "none",
        events: 0,
        results: serde_json::json!({}),
    });

    let (debits, credits, missing) = in_netns(&lab.spec.netns, move || {
        let mut c = tls_connect(&client, addr).expect("client connects");
        let mut t = tls_connect(&teller, addr).expect("teller connects");
        let mut r = tls_connect(&reader, addr).expect("reader connects");
        let post = |s: &mut TlsStream, path: &str, body: &str| {
            request(s, "POST", path, body).expect("POST")
        };
        assert_eq!(post(&mut c, "/v1/accounts", accounts).0, 200);
        assert_eq!(post(&mut t, "/v1/accounts", accounts_again).0, 200);
        for body in &transfers_client {
            assert_eq!(post(&mut c, "/v1/transfers", body).0, 200);
        }
        assert_eq!(post(&mut t, "/v1/transfers", &transfers_teller).0, 200);
        assert_eq!(post(&mut t, "/v1/transfers", "[{not json").0, 400);
        assert_eq!(
            post(
                &mut r,
                "/v1/transfers",
                &format!("[{}]", transfer(200, 1, 2))
            )
            .0,
            403
        );
        // What the ledger holds, read back through the API.
        let field = |s: &mut TlsStream, id: u128, name: &str| -> u64 {
            account_field(s, id, name)
                .parse()
                .expect("a decimal amount")
        };
        let debits: u64 = (1..=4).map(|id| field(&mut r, id, "debits_posted")).sum();
        let credits: u64 = (1..=4).map(|id| field(&mut r, id, "credits_posted")).sum();
        let (status, _) = request(&mut r, "GET", "/v1/accounts/5", "").expect("GET");
        (debits, credits, status)
    })
    .join()
    .expect("client thread");
    assert_eq!(missing, 404);
    assert_eq!(debits, credits);
    assert_eq!(debits, 12, "ten transfers of the client, two of the teller");

    let n = expected.len();
    assert_eq!(
        server.wait_metric("pantera_audit_records_total", &[], n as f64),
        n as f64,
        "records written before the stop"
    );
    let status = server.terminate();
    assert!(status.success(), "a clean stop: {status:?}");

    let text = std::fs::read_to_string(dir.path().join("audit.log"))
        .expect("the audit log beside the data directory");
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(
        records.len(),
        n,
        "exactly one record per write (GETs are not written):\n{text}"
    );
    // One worker, requests sent one after another: the records are in the order sent.
    for (i, (record, want)) in records.iter().zip(&expected).enumerate() {
        let what = format!("record {i}: {record}");
        assert_eq!(record["identity"], want.identity, "{what}");
        assert_eq!(record["role"], want.role, "{what}");
        assert_eq!(record["method"], "POST", "{what}");
        assert_eq!(record["route"], want.route, "{what}");
        assert_eq!(record["status"], want.status, "{what}");
        assert_eq!(record["operation"], want.operation, "{what}");
        assert_eq!(record["events"], want.events, "{what}");
        assert_eq!(record["results"], want.results, "{what}");
        let peer: SocketAddr = record["peer"]
            .as_str()
            .expect("peer")
            .parse()
            .expect("ip:port");
        assert_eq!(
            peer.ip(),
            std::net::IpAddr::V4(lab.spec.peer_ipv4),
            "{what}"
        );
        assert!(
            record["request_bytes"].as_u64().expect("request_bytes") > 0,
            "{what}"
        );
        assert!(
            record["response_bytes"].as_u64().expect("response_bytes") > 0,
            "{what}"
        );
        assert!(record["duration_us"].is_u64(), "{what}");
        assert!(
            record["time"]
                .as_str()
                .is_some_and(|t| t.len() == 24 && t.ends_with('Z')),
            "{what}"
        );
    }
    let ids: BTreeSet<&str> = records
        .iter()
        .map(|r| r["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids.len(), n, "request ids are unique");

    // Reconciliation: the events the log says were created are what the ledger holds.
    let created = |operation: &str| -> u64 {
        records
            .iter()
            .filter(|r| r["operation"] == operation)
            .map(|r| r["results"]["ok"].as_u64().unwrap_or(0))
            .sum()
    };
    assert_eq!(
        created("create_transfers"),
        debits,
        "created transfers (amount 1 each) == debits posted"
    );
    assert_eq!(
        created("create_accounts"),
        4,
        "accounts 1..=4 exist and 5 does not"
    );
    let failed: u64 = records
        .iter()
        .map(|r| r["results"]["exceeds_credits"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(failed, 1);
}
