//! Root lab tests of the configuration reload (SIGHUP, docs/operations.md "Reload (SIGHUP)"):
//! under load, a new server certificate reaches new connections while the running ones finish
//! every request; a broken file keeps the running configuration and says why; a role and an
//! HTTP limit change for new connections only.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

/// Keep-alive connections posting transfers while the certificate changes (the issue: ≥ 16).
const LOAD_CONNECTIONS: u64 = 16;
/// A bound on each load connection's transfers, so the load ends even if the test stalls.
const LOAD_TRANSFERS_MAX: u64 = 20_000;
/// A bound on the load's duration, for the same reason.
const LOAD_TIME_MAX: Duration = Duration::from_secs(90);

const TWO_ACCOUNTS: &str = r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#;

fn service(lab: &Lab) -> SocketAddr {
    SocketAddr::from((lab.spec.service_ipv4, PORT))
}

fn transfer(id: u64) -> String {
    format!(r#"[{{"id":"{id}","debit_account_id":"1","credit_account_id":"2","amount":"1","ledger":1,"code":1}}]"#)
}

/// The first certificate of a PEM file.
fn first_cert(path: &Path) -> CertificateDer<'static> {
    CertificateDer::pem_file_iter(path).expect("PEM file").next().expect("a certificate").expect("valid PEM")
}

/// The server certificate a new connection from the client namespace is shown.
fn peer_cert(lab: &Lab, client: &Arc<rustls::ClientConfig>) -> CertificateDer<'static> {
    let (client, addr) = (Arc::clone(client), service(lab));
    in_netns(&lab.spec.netns, move || {
        let s = tls_connect(&client, addr).expect("a new connection");
        s.conn.peer_certificates().expect("the server's chain")[0].clone().into_owned()
    })
    .join()
    .expect("client thread")
}

/// A new server certificate and key from the lab CA (another key pair, another serial),
/// written in a staging directory next to `tls`.
fn issue_server_cert(lab: &Lab, tls: &Path) -> std::path::PathBuf {
    let staging = tls.with_file_name("tls-b");
    std::fs::create_dir(&staging).expect("staging dir");
    for name in ["ca.pem", "ca.key", "client.pem", "client.key", "reader.pem", "reader.key"] {
        std::fs::copy(tls.join(name), staging.join(name)).expect("copy");
    }
    // With the CA present, `certs init` issues only what is missing: the server's pair.
    let out = Command::new(PANTERA)
        .args(["certs", "init", "--dir"])
        .arg(&staging)
        .args(["--service-ip", &lab.spec.service_ipv4.to_string()])
        .output()
        .expect("run pantera certs init");
    assert!(out.status.success(), "certs init: {}", String::from_utf8_lossy(&out.stderr));
    staging
}

fn sighup(server: &Server) {
    kill(server.pid(), Signal::SIGHUP).expect("kill -HUP");
}

/// What one load connection did.
#[derive(Debug)]
struct LoadResult {
    created: u64,
    failures: Vec<String>,
    server_cert: CertificateDer<'static>,
}

#[test]
fn a_new_certificate_reaches_new_connections_while_the_running_ones_lose_no_request() {
    let lab = lab("reload", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_logged(&lab, dir.path(), "ledger", "");
    let tls = dir.path().join("tls");
    let client = tls_client_config(&tls, Some("client"));
    let cert_a = first_cert(&tls.join("server.pem"));
    assert_eq!(peer_cert(&lab, &client), cert_a);
    {
        let (client, addr) = (Arc::clone(&client), service(&lab));
        in_netns(&lab.spec.netns, move || {
            let mut s = tls_connect(&client, addr).expect("connect");
            let (status, body) = request(&mut s, "POST", "/v1/accounts", TWO_ACCOUNTS).expect("accounts");
            assert_eq!(status, 200, "{body}");
        })
        .join()
        .expect("setup");
    }

    // The load: keep-alive connections, each posting transfers until told to stop. A failed
    // request (an error status, a broken connection) is recorded and ends that connection.
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..LOAD_CONNECTIONS)
        .map(|c| {
            let (client, addr, stop, done) = (Arc::clone(&client), service(&lab), Arc::clone(&stop), Arc::clone(&done));
            in_netns(&lab.spec.netns, move || {
                let mut s = tls_connect(&client, addr).expect("a load connection");
                let server_cert = s.conn.peer_certificates().expect("chain")[0].clone().into_owned();
                let (mut created, mut failures) = (0, Vec::new());
                let deadline = Instant::now() + LOAD_TIME_MAX;
                while !stop.load(Ordering::Relaxed) && created < LOAD_TRANSFERS_MAX && Instant::now() < deadline {
                    let id = 1_000 + c * LOAD_TRANSFERS_MAX + created;
                    match request(&mut s, "POST", "/v1/transfers", &transfer(id)) {
                        Ok((200, body)) if body.contains("\"created\"") => {
                            created += 1;
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok((status, body)) => {
                            failures.push(format!("transfer {id}: {status} {body}"));
                            break;
                        }
                        Err(e) => {
                            failures.push(format!("transfer {id}: {e}"));
                            break;
                        }
                    }
                }
                LoadResult { created, failures, server_cert }
            })
        })
        .collect();
    let wait_for_load = |at_least: u64| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while done.load(Ordering::Relaxed) < at_least {
            assert!(Instant::now() < deadline, "the load stalled at {} transfers", done.load(Ordering::Relaxed));
            thread::sleep(Duration::from_millis(20));
        }
    };
    wait_for_load(LOAD_CONNECTIONS * 10);

    // Certificate B over the configured files, then SIGHUP.
    let staging = issue_server_cert(&lab, &tls);
    let cert_b = first_cert(&staging.join("server.pem"));
    assert_ne!(cert_a, cert_b);
    std::fs::rename(staging.join("server.key"), tls.join("server.key")).expect("install the key");
    std::fs::rename(staging.join("server.pem"), tls.join("server.pem")).expect("install the certificate");
    sighup(&server);
    assert_eq!(server.wait_metric("pantera_config_reloads_total", &["result=\"ok\""], 1.0), 1.0, "{}", server.log_text());
    // Every queue takes it at its next turn; a few new connections, which land on either queue.
    for _ in 0..6 {
        assert_eq!(peer_cert(&lab, &client), cert_b, "a new connection after the reload");
    }
    // The running connections keep going, on certificate A, through and after the reload.
    let after_reload = done.load(Ordering::Relaxed);
    wait_for_load(after_reload + LOAD_CONNECTIONS * 10);

    // A broken key: the reload fails, says why at error level, and certificate B stays.
    std::fs::write(tls.join("server.key"), "-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n").expect("write");
    sighup(&server);
    assert_eq!(server.wait_metric("pantera_config_reloads_total", &["result=\"failed\""], 1.0), 1.0);
    let log = server.log_text();
    let line = log.lines().find(|l| l.contains("configuration reload failed")).unwrap_or_else(|| panic!("no error line in the log:\n{log}"));
    assert!(line.contains("ERROR") && line.contains("server.key"), "{line}");
    assert_eq!(peer_cert(&lab, &client), cert_b, "the running configuration is kept");
    assert_eq!(server.metric_sum("pantera_config_reloads_total", &["result=\"ok\""]), 1.0);
    let after_failure = done.load(Ordering::Relaxed);
    wait_for_load(after_failure + LOAD_CONNECTIONS * 5);

    stop.store(true, Ordering::Relaxed);
    let results: Vec<LoadResult> = load.into_iter().map(|t| t.join().expect("load thread")).collect();
    let failures: Vec<&String> = results.iter().flat_map(|r| &r.failures).collect();
    assert!(failures.is_empty(), "failed requests: {failures:?}");
    assert!(results.iter().all(|r| r.server_cert == cert_a), "the load connections were made before the reload");
    assert!(results.iter().all(|r| r.created > 0));
    // Every acknowledged transfer is in the ledger, and no other.
    let created: u64 = results.iter().map(|r| r.created).sum();
    let (client, addr) = (Arc::clone(&client), service(&lab));
    let debits = in_netns(&lab.spec.netns, move || {
        let mut s = tls_connect(&client, addr).expect("connect");
        account_field(&mut s, 1, "debits_posted")
    })
    .join()
    .expect("client thread");
    assert_eq!(debits, created.to_string());
    assert!(server.terminate().success());
}

#[test]
fn a_role_and_an_http_limit_change_for_new_connections_only() {
    let lab = lab("reloadr", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_logged(&lab, dir.path(), "ledger", "");
    let tls = dir.path().join("tls");
    let (writer, reader, addr) = (tls_client_config(&tls, Some("client")), tls_client_config(&tls, Some("reader")), service(&lab));
    // Twenty transfers in one request: over the 1,024-byte body limit set below.
    let big: String = format!("[{}]", (0..20).map(|i| transfer(100 + i).trim_matches(['[', ']']).to_owned()).collect::<Vec<_>>().join(","));
    assert!(big.len() > 1024);

    let (w, r) = (Arc::clone(&writer), Arc::clone(&reader));
    let (mut old_writer, mut old_reader) = in_netns(&lab.spec.netns, move || {
        let mut old_writer = tls_connect(&w, addr).expect("writer");
        let (status, body) = request(&mut old_writer, "POST", "/v1/accounts", TWO_ACCOUNTS).expect("accounts");
        assert_eq!(status, 200, "{body}");
        let mut old_reader = tls_connect(&r, addr).expect("reader");
        let (status, _) = request(&mut old_reader, "POST", "/v1/transfers", &transfer(1)).expect("post");
        assert_eq!(status, 403, "the reader may not write before the reload");
        (old_writer, old_reader)
    })
    .join()
    .expect("client thread");

    // The reader becomes a writer, request bodies shrink to 1 KiB, and a field that needs a
    // restart changes too.
    let text = std::fs::read_to_string(server.config_path()).expect("read config");
    let text = text.replace("\"cn:reader\" = \"read\"", "\"cn:reader\" = \"write\"") + "\n[http]\nbody_bytes_max = 1024\n\n[tcp]\nconnections_max = 1000\n";
    std::fs::write(server.config_path(), text).expect("write config");
    sighup(&server);
    assert_eq!(server.wait_metric("pantera_config_reloads_total", &["result=\"ok\""], 1.0), 1.0, "{}", server.log_text());
    let log = server.log_text();
    assert!(
        log.lines().any(|l| l.contains("WARN") && l.contains("tcp.connections_max") && l.contains("needs a restart")),
        "no warning names the restart-only field:\n{log}"
    );

    let big_new = big.clone();
    let (new_reader_status, new_writer_status, old_reader_status, old_writer_status) = in_netns(&lab.spec.netns, move || {
        let mut new_reader = tls_connect(&reader, addr).expect("reader");
        let (new_reader_status, body) = request(&mut new_reader, "POST", "/v1/transfers", &transfer(2)).expect("post");
        assert!(new_reader_status != 200 || body.contains("\"created\""), "{body}");
        let mut new_writer = tls_connect(&writer, addr).expect("writer");
        let (new_writer_status, _) = request(&mut new_writer, "POST", "/v1/transfers", &big_new).expect("post");
        // The connections made before keep the roles and limits they started with.
        let (old_reader_status, _) = request(&mut old_reader, "POST", "/v1/transfers", &transfer(3)).expect("post");
        let (old_writer_status, body) = request(&mut old_writer, "POST", "/v1/transfers", &big_new).expect("post");
        assert!(old_writer_status != 200 || body.matches("\"created\"").count() == 20, "{body}");
        (new_reader_status, new_writer_status, old_reader_status, old_writer_status)
    })
    .join()
    .expect("client thread");
    assert_eq!(new_reader_status, 200, "the reloaded role applies to a new connection");
    assert_eq!(new_writer_status, 413, "the reloaded body limit applies to a new connection");
    assert_eq!(old_reader_status, 403, "an open connection keeps its roles");
    assert_eq!(old_writer_status, 200, "an open connection keeps its limits");
    assert_eq!(server.metric_sum("pantera_config_reloads_total", &["result=\"failed\""]), 0.0);
}

/// One GET from `local` in the client namespace (`one_request`).
fn request_from(lab: &Lab, config: &Arc<rustls::ClientConfig>, local: std::net::Ipv4Addr) -> Result<u16, String> {
    let (config, to) = (Arc::clone(config), service(lab));
    in_netns(&lab.spec.netns, move || one_request(&config, local, to)).join().expect("client thread")
}

#[test]
fn a_reload_rewrites_the_edge_allowlist_in_the_xdp_maps() {
    let lab = lab("reloade", 1);
    let allowed = add_client_address(&lab, 4);
    let stranger = lab.spec.peer_ipv4;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start_logged(&lab, dir.path(), "ledger", "");
    let client = tls_client_config(&dir.path().join("tls"), Some("client"));
    assert_eq!(request_from(&lab, &client, stranger), Ok(404), "no allowlist at start: anyone is served");

    let open = std::fs::read_to_string(server.config_path()).expect("read config");
    std::fs::write(server.config_path(), format!("{open}\n[edge]\nallow_sources = [\"{allowed}/32\"]\n")).expect("write config");
    sighup(&server);
    assert_eq!(server.wait_metric("pantera_config_reloads_total", &["result=\"ok\""], 1.0), 1.0, "{}", server.log_text());
    assert_eq!(request_from(&lab, &client, allowed), Ok(404), "the allowed source is served");
    let refused = request_from(&lab, &client, stranger);
    assert!(matches!(&refused, Err(e) if e.starts_with("connect:")), "the other source got {refused:?}");
    assert!(server.wait_metric("pantera_xdp_packets_total", &["action=\"drop\"", "reason=\"not_allowed\""], 1.0) >= 1.0);

    // Back to no allowlist: the other source is served again.
    std::fs::write(server.config_path(), open).expect("write config");
    sighup(&server);
    assert_eq!(server.wait_metric("pantera_config_reloads_total", &["result=\"ok\""], 2.0), 2.0, "{}", server.log_text());
    assert_eq!(request_from(&lab, &client, stranger), Ok(404), "the allowlist is gone");
}
