//! Root lab tests of the product path (issue: TLS termination and the HTTPS ledger API): real
//! clients in the client namespace, through XDP, AF_XDP, the userspace stack and rustls, into the
//! ledger, with its state checked afterwards.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

fn service(lab: &Lab) -> SocketAddr {
    SocketAddr::from((lab.spec.service_ipv4, PORT))
}

/// Creates accounts 1 and 2 on ledger 1 over a connection of its own.
fn create_two_accounts(lab: &Lab, config: &Arc<rustls::ClientConfig>) {
    let (config, addr) = (Arc::clone(config), service(lab));
    in_netns(&lab.spec.netns, move || {
        let mut s = tls_connect(&config, addr).expect("connect");
        let (st, b) = request(&mut s, "POST", "/v1/accounts", TWO_ACCOUNTS).expect("accounts");
        assert_eq!(st, 200, "{b}");
    })
    .join()
    .expect("setup");
}

const TWO_ACCOUNTS: &str = r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#;

/// curl from the client namespace with the lab CA and the named client certificate.
fn curl(lab: &Lab, tls: &Path, who: Option<&str>, args: &[&str]) -> (bool, String) {
    let ca = tls.join("ca.pem").display().to_string();
    let mut full: Vec<String> = ["curl", "-sS", "--max-time", "10", "--cacert", &ca].iter().map(|s| s.to_string()).collect();
    if let Some(name) = who {
        full.extend(["--cert".to_owned(), tls.join(format!("{name}.pem")).display().to_string()]);
        full.extend(["--key".to_owned(), tls.join(format!("{name}.key")).display().to_string()]);
    }
    full.extend(args.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = full.iter().map(String::as_str).collect();
    let out = lab.exec_in_ns(&refs).expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn curl_creates_accounts_and_a_transfer_and_a_retry_is_idempotent() {
    let lab = lab("curl", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let _server = Server::start(&lab, dir.path(), "ledger", "");
    let tls = dir.path().join("tls");
    let base = format!("https://{}:{PORT}", lab.spec.service_ipv4);
    let post = |path: &str, body: &str| {
        let url = format!("{base}{path}");
        let (ok, text) = curl(&lab, &tls, Some("client"), &["-X", "POST", "-H", "content-type: application/json", "--data", body, &url]);
        assert!(ok, "curl POST {path}: {text}");
        json(&text)
    };
    let get = |path: &str| {
        let (ok, text) = curl(&lab, &tls, Some("client"), &[&format!("{base}{path}")]);
        assert!(ok, "curl GET {path}: {text}");
        json(&text)
    };
    let created = post("/v1/accounts", r#"[{"id":"1","ledger":1,"code":10},{"id":"2","ledger":1,"code":10}]"#);
    assert_eq!(created[0]["status"], "created", "{created}");
    assert_eq!(created[1]["status"], "created", "{created}");
    let transfer = r#"[{"id":"7","debit_account_id":"1","credit_account_id":"2","amount":"100","ledger":1,"code":1}]"#;
    let first = post("/v1/transfers", transfer);
    assert_eq!(first[0]["status"], "created", "{first}");
    assert_eq!(get("/v1/accounts/1")["debits_posted"], "100");
    assert_eq!(get("/v1/accounts/2")["credits_posted"], "100");

    let again = post("/v1/transfers", transfer);
    assert_eq!(again[0]["status"], "exists", "{again}");
    assert_eq!(get("/v1/accounts/1")["debits_posted"], "100", "a retry changes no balance");
    assert_eq!(get("/v1/accounts/2")["credits_posted"], "100", "a retry changes no balance");
    assert_eq!(get("/v1/transfers/7")["amount"], "100");
}

#[test]
fn mtls_is_required_and_the_reader_may_only_read() {
    let lab = lab("mtls", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let _server = Server::start(&lab, dir.path(), "ledger", "");
    let tls = dir.path().join("tls");
    let addr = service(&lab);

    // Without a certificate: refused at the handshake (in TLS 1.3 the client learns it from the
    // server's alert on its first read), so no request is ever answered.
    let anonymous = tls_client_config(&tls, None);
    let refused = in_netns(&lab.spec.netns, move || {
        let mut s = tls_connect(&anonymous, addr)?;
        request(&mut s, "GET", "/v1/accounts/1", "")
    })
    .join()
    .expect("client thread");
    assert!(refused.is_err(), "a client without a certificate got an answer: {refused:?}");
    let (ok, text) = curl(&lab, &tls, None, &[&format!("https://{addr}/v1/accounts/1")]);
    assert!(!ok, "curl without a certificate succeeded: {text}");

    let writer = tls_client_config(&tls, Some("client"));
    let reader = tls_client_config(&tls, Some("reader"));
    let (denied, allowed) = in_netns(&lab.spec.netns, move || {
        let mut w = tls_connect(&writer, addr).expect("writer connects");
        let (s, b) = request(&mut w, "POST", "/v1/accounts", TWO_ACCOUNTS).expect("create");
        assert_eq!(s, 200, "{b}");
        let mut r = tls_connect(&reader, addr).expect("reader connects");
        let denied = request(&mut r, "POST", "/v1/transfers", r#"[{"id":"9","debit_account_id":"1","credit_account_id":"2","amount":"5","ledger":1,"code":1}]"#).expect("post");
        let allowed = request(&mut r, "GET", "/v1/accounts/1", "").expect("get");
        (denied, allowed)
    })
    .join()
    .expect("client thread");
    assert_eq!(denied.0, 403, "reader POST /v1/transfers: {}", denied.1);
    assert_eq!(json(&denied.1)["error"]["code"], "forbidden");
    assert_eq!(allowed.0, 200, "reader GET /v1/accounts/1: {}", allowed.1);
    assert_eq!(json(&allowed.1)["debits_posted"], "0", "the refused transfer changed nothing");
}

#[test]
fn one_hundred_connections_times_one_hundred_transfers_all_acknowledged_and_balanced() {
    const CONNS: usize = 100;
    const PER_CONN: usize = 100;
    let lab = lab("load", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, dir.path(), "ledger", "");
    let config = tls_client_config(&dir.path().join("tls"), Some("client"));
    let addr = service(&lab);
    create_two_accounts(&lab, &config);
    let handles: Vec<_> = (0..CONNS)
        .map(|c| {
            let config = Arc::clone(&config);
            in_netns(&lab.spec.netns, move || -> Result<u128, String> {
                let mut s = tls_connect(&config, addr).map_err(|e| format!("conn {c}: connect: {e}"))?;
                let mut acknowledged = 0u128;
                for i in 0..PER_CONN {
                    let id = 1_000 + c * PER_CONN + i;
                    let amount = (i % 7 + 1) as u128;
                    let body = format!(r#"[{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":"{amount}","ledger":1,"code":1}}]"#);
                    let (st, b) = request(&mut s, "POST", "/v1/transfers", &body).map_err(|e| format!("conn {c} transfer {i}: {e}"))?;
                    if st != 200 || !b.contains("\"created\"") {
                        return Err(format!("conn {c} transfer {i}: {st} {b}"));
                    }
                    acknowledged += amount;
                }
                Ok(acknowledged)
            })
        })
        .collect();
    let mut total = 0u128;
    let mut failures = Vec::new();
    for h in handles {
        match h.join().expect("client thread") {
            Ok(sum) => total += sum,
            Err(e) => failures.push(e),
        }
    }
    assert!(failures.is_empty(), "{} connections failed, e.g. {:?}", failures.len(), &failures[..failures.len().min(3)]);
    let (debits, credits) = in_netns(&lab.spec.netns, move || {
        let mut s = tls_connect(&config, addr).expect("connect");
        (account_field(&mut s, 1, "debits_posted"), account_field(&mut s, 2, "credits_posted"))
    })
    .join()
    .expect("check");
    assert_eq!(debits, total.to_string());
    assert_eq!(credits, total.to_string());
    // Every acknowledged transfer was timed, under its route template and status class.
    let timed = ["route=\"/v1/transfers\"", "status_class=\"2xx\""];
    let count = server.wait_metric("pantera_http_request_seconds_count", &timed, (CONNS * PER_CONN) as f64);
    assert_eq!(count, (CONNS * PER_CONN) as f64, "{}", server.metrics());
    assert!(server.metric_sum("pantera_http_request_seconds_sum", &timed) > 0.0);
}

/// Sends raw bytes over TLS and returns the status of the response, or 0 if the connection
/// closed without one.
fn raw_over_tls(config: &Arc<rustls::ClientConfig>, addr: SocketAddr, bytes: &[u8]) -> u16 {
    let mut s = tls_connect(config, addr).expect("connect");
    s.write_all(bytes).expect("write");
    s.flush().expect("flush");
    read_response(&mut s).map(|(st, _)| st).unwrap_or(0)
}

#[test]
fn bad_input_gets_its_error_and_the_appliance_keeps_serving_the_others() {
    let lab = lab("bad", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, dir.path(), "ledger", "");
    let config = tls_client_config(&dir.path().join("tls"), Some("client"));
    let addr = service(&lab);
    let c = Arc::clone(&config);
    let (before, results) = in_netns(&lab.spec.netns, move || {
        // A good client holds its connection open through all of it.
        let mut good = tls_connect(&c, addr).expect("connect");
        let (st, b) = request(&mut good, "POST", "/v1/accounts", TWO_ACCOUNTS).expect("accounts");
        assert_eq!(st, 200, "{b}");
        let (st, b) = request(&mut good, "POST", "/v1/transfers", r#"[{"id":"5","debit_account_id":"1","credit_account_id":"2","amount":"10","ledger":1,"code":1}]"#).expect("transfer");
        assert_eq!(st, 200, "{b}");
        let before = account_field(&mut good, 1, "debits_posted");

        let mut results = Vec::new();
        results.push(("malformed HTTP", raw_over_tls(&c, addr, b"GET /v1/accounts/1 HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n")));
        let bad_json = "[{\"id\":\"6\",\"amount\":";
        results.push(("malformed JSON", raw_over_tls(&c, addr, format!("POST /v1/transfers HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{bad_json}", bad_json.len()).as_bytes())));
        let unknown_field = r#"[{"id":"6","debit_account_id":"1","credit_account_id":"2","amount":"10","ledger":1,"code":1,"colour":"red"}]"#;
        results.push(("unknown field", raw_over_tls(&c, addr, format!("POST /v1/transfers HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{unknown_field}", unknown_field.len()).as_bytes())));
        let huge_header = format!("GET /v1/accounts/1 HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n", "a".repeat(16 * 1024));
        results.push(("oversized header", raw_over_tls(&c, addr, huge_header.as_bytes())));
        results.push(("oversized body", raw_over_tls(&c, addr, b"POST /v1/transfers HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n[")));
        results.push(("chunked body", raw_over_tls(&c, addr, b"POST /v1/transfers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")));

        // Garbage instead of TLS: the connection is closed (after an alert), never answered.
        let mut raw = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        raw.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        raw.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        let mut sink = Vec::new();
        let garbage_closed = raw.read_to_end(&mut sink).is_ok() && !sink.starts_with(b"HTTP");
        results.push(("garbage instead of TLS", if garbage_closed { 1 } else { 0 }));

        // A client that stalls mid-handshake is cut off by the handshake timeout (2 s here).
        let mut stalled = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        stalled.set_read_timeout(Some(Duration::from_secs(15))).expect("timeout");
        stalled.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).expect("write");
        let started = Instant::now();
        let mut sink = Vec::new();
        let cut = stalled.read_to_end(&mut sink).is_ok() && started.elapsed() < Duration::from_secs(14);
        results.push(("stalled handshake", if cut { 1 } else { 0 }));

        // The good client is still served, on its original connection.
        let after = account_field(&mut good, 1, "debits_posted");
        assert_eq!(after, before, "bad input changed the ledger");
        (before, results)
    })
    .join()
    .expect("client thread");
    let status = |name: &str| results.iter().find(|(n, _)| *n == name).map(|(_, s)| *s).expect("ran");
    assert_eq!(status("malformed HTTP"), 400, "{results:?}");
    assert_eq!(status("malformed JSON"), 400, "{results:?}");
    assert_eq!(status("unknown field"), 400, "{results:?}");
    assert_eq!(status("oversized header"), 431, "{results:?}");
    assert_eq!(status("oversized body"), 413, "{results:?}");
    assert_eq!(status("chunked body"), 411, "{results:?}");
    assert_eq!(status("garbage instead of TLS"), 1, "{results:?}");
    assert_eq!(status("stalled handshake"), 1, "{results:?}");
    assert_eq!(before, "10");
    assert!(server.wait_metric("pantera_tls_errors_total", &["handshake_timeout"], 1.0) >= 1.0, "{}", server.metrics());
}

#[test]
fn sigkill_under_load_loses_no_acknowledged_transfer() {
    const WRITERS: usize = 8;
    let lab = lab("crash", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&lab, dir.path(), "ledger", "");
    let config = tls_client_config(&dir.path().join("tls"), Some("client"));
    let addr = service(&lab);
    create_two_accounts(&lab, &config);
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let attempted = Arc::new(Mutex::new(BTreeSet::new()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (config, acknowledged, attempted) = (Arc::clone(&config), Arc::clone(&acknowledged), Arc::clone(&attempted));
            in_netns(&lab.spec.netns, move || {
                let Ok(mut s) = tls_connect(&config, addr) else { return };
                // Bounded: at most 5,000 requests or 20 s per writer, whichever comes first.
                let deadline = Instant::now() + Duration::from_secs(20);
                for i in 0..5_000u128 {
                    let id = 10_000 + w as u128 * 100_000 + i;
                    attempted.lock().expect("lock").insert(id);
                    let body = format!(r#"[{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":"1","ledger":1,"code":1}}]"#);
                    match request(&mut s, "POST", "/v1/transfers", &body) {
                        Ok((200, b)) if b.contains("\"created\"") => {
                            acknowledged.lock().expect("lock").insert(id);
                        }
                        _ => return,
                    }
                    if Instant::now() > deadline {
                        return;
                    }
                }
            })
        })
        .collect();
    // Let the load run, then kill the appliance mid-flight.
    let start = Instant::now();
    while acknowledged.lock().expect("lock").len() < 500 && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    server.kill();
    for w in writers {
        w.join().expect("writer");
    }
    let acknowledged = acknowledged.lock().expect("lock").clone();
    let attempted = attempted.lock().expect("lock").clone();
    assert!(acknowledged.len() >= 100, "the load ran before the kill: {} acknowledged", acknowledged.len());

    server.spawn();
    let (found, debits) = in_netns(&lab.spec.netns, move || {
        let mut s = tls_connect(&config, addr).expect("connect after restart");
        let mut found = BTreeSet::new();
        for id in &attempted {
            let (st, _) = request(&mut s, "GET", &format!("/v1/transfers/{id}"), "").expect("lookup");
            if st == 200 {
                found.insert(*id);
            }
        }
        (found, account_field(&mut s, 1, "debits_posted"))
    })
    .join()
    .expect("check");
    let lost: Vec<_> = acknowledged.difference(&found).collect();
    assert!(lost.is_empty(), "{} acknowledged transfers lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(5)]);
    // Every transfer that exists moved exactly its amount: the balance matches them, no more.
    assert_eq!(debits, found.len().to_string());
}

/// docs/api.md's imported-event and query examples, with curl over the real appliance: a
/// migration with client timestamps by the writer, then get_account_transfers,
/// get_account_balances, query_accounts and query_transfers by the reader, and the Link of a
/// cut page.
#[test]
fn curl_imports_history_and_the_reader_queries_it() {
    let lab = lab("query", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let _server = Server::start(&lab, dir.path(), "ledger", "");
    let tls = dir.path().join("tls");
    let base = format!("https://{}:{PORT}", lab.spec.service_ipv4);
    let post = |path: &str, body: &str| {
        let url = format!("{base}{path}");
        let (ok, text) = curl(&lab, &tls, Some("client"), &["-X", "POST", "--data", body, &url]);
        assert!(ok, "curl POST {path}: {text}");
        json(&text)
    };
    // The reader's GET, with the response head (for the Link header).
    let get = |path: &str| {
        let (ok, text) = curl(&lab, &tls, Some("reader"), &["-i", &format!("{base}{path}")]);
        assert!(ok, "curl GET {path}: {text}");
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no head: {text}"));
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        let link = head.lines().find_map(|l| l.strip_prefix("Link: ")).map(str::to_owned);
        (json(body), link)
    };
    let statuses = |json: &serde_json::Value| -> Vec<String> {
        json.as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap().to_owned()).collect()
    };
    let accounts = post(
        "/v1/accounts",
        r#"[{"id":"100","ledger":1,"code":10,"flags":["imported","history"],"timestamp":"1600000000000000001"},
            {"id":"101","ledger":1,"code":10,"flags":["imported"],"timestamp":"1600000000000000002"}]"#,
    );
    assert_eq!(statuses(&accounts), ["created", "created"], "{accounts}");
    assert_eq!(accounts[0]["timestamp"], "1600000000000000001");
    let transfers = post(
        "/v1/transfers",
        r#"[{"id":"900","debit_account_id":"100","credit_account_id":"101","amount":"5","ledger":1,"code":1,"user_data_128":"9","flags":["imported"],"timestamp":"1600000000000000003"},
            {"id":"901","debit_account_id":"100","credit_account_id":"101","amount":"7","ledger":1,"code":2,"flags":["imported"],"timestamp":"1600000000000000004"}]"#,
    );
    assert_eq!(statuses(&transfers), ["created", "created"], "{transfers}");
    // An ordinary account after the import; an import older than it no longer fits.
    assert_eq!(statuses(&post("/v1/accounts", r#"[{"id":"102","ledger":1,"code":10}]"#)), ["created"]);
    let late = post("/v1/accounts", r#"[{"id":"103","ledger":1,"code":10,"flags":["imported"],"timestamp":"1600000000000000005"}]"#);
    assert_eq!(statuses(&late), ["imported_event_timestamp_must_not_regress"], "{late}");

    let (found, _) = get("/v1/accounts/100/transfers?code=1&user_data_128=9");
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found[0]["id"], "900");
    let (balances, _) = get("/v1/accounts/100/balances");
    assert_eq!(
        balances,
        serde_json::json!([
            {"debits_pending":"0","debits_posted":"5","credits_pending":"0","credits_posted":"0","timestamp":"1600000000000000003"},
            {"debits_pending":"0","debits_posted":"12","credits_pending":"0","credits_posted":"0","timestamp":"1600000000000000004"}
        ])
    );
    let (found, _) = get("/v1/transfers?code=2");
    assert_eq!(found.as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found[0]["id"], "901");
    // Three accounts on ledger 1, two per page: the first page links to the rest.
    let (page, link) = get("/v1/accounts?ledger=1&code=10&limit=2");
    let ids: Vec<&str> = page.as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["100", "101"]);
    let link = link.expect("a Link to the next page");
    let next = link.trim().strip_prefix('<').and_then(|l| l.split_once(">; rel=\"next\"")).map(|(t, _)| t.to_owned());
    let next = next.unwrap_or_else(|| panic!("malformed Link: {link}"));
    let (page, link) = get(&next);
    assert_eq!(page.as_array().unwrap().len(), 1, "{page}");
    assert_eq!(page[0]["id"], "102");
    assert_eq!(link, None, "the last page has no Link");
}
