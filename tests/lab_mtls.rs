//! Root lab tests of mutual TLS you can revoke and trust (issue 11, docs/tls.md "Revocation",
//! "Resumption", "Identities and roles"): real clients in the client namespace against the
//! appliance, client certificates issued by the lab CA (and a second CA) with chosen names,
//! serials and expiry, CRLs written by the test.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::*;
use nix::sys::signal::{kill, Signal};
use rustls::HandshakeKind;
use tls_term::certs::{LabCa, LabNames};

const TWO_ACCOUNTS: &str = r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#;

fn service(lab: &Lab) -> SocketAddr {
    SocketAddr::from((lab.spec.service_ipv4, PORT))
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// Issues a client certificate as `tls/{file}.pem` + `.key` and returns a client config for
/// it (one config = one client session store, so its connections may resume).
fn client(
    tls: &Path,
    ca: &LabCa,
    file: &str,
    names: LabNames<'_>,
    serial: u64,
    not_after: i64,
) -> Arc<rustls::ClientConfig> {
    let (cert, key) = ca
        .issue(&names, serial, not_after)
        .expect("issue a client certificate");
    std::fs::write(tls.join(format!("{file}.pem")), cert).expect("write cert");
    std::fs::write(tls.join(format!("{file}.key")), key).expect("write key");
    tls_client_config(tls, Some(file))
}

/// Writes a CRL the way an operator publishes one: a temporary file renamed over the old.
fn publish_crl(path: &Path, ca: &LabCa, serials: &[u64], number: u64) {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        ca.crl(serials, number, unix_now() + 3600).expect("CRL"),
    )
    .expect("write CRL");
    std::fs::rename(&tmp, path).expect("rename CRL");
}

/// One connection, one request: the status, and whether the handshake was a resumption.
/// `Err` when the server refused the client: `handshake: ...` when the client's own handshake
/// failed (a refused resumption: the server answers the ClientHello with the alert),
/// `request: ...` when it failed after (a full TLS 1.3 handshake: the client has finished its
/// side when the server refuses its certificate, and sees the alert on its first read).
fn attempt(
    lab: &Lab,
    config: &Arc<rustls::ClientConfig>,
    method: &'static str,
    path: &'static str,
    body: &'static str,
) -> Result<(u16, bool), String> {
    let (config, addr) = (Arc::clone(config), service(lab));
    in_netns(&lab.spec.netns, move || {
        let mut s = tls_connect(&config, addr).map_err(|e| format!("handshake: {e}"))?;
        let (status, _) =
            request(&mut s, method, path, body).map_err(|e| format!("request: {e}"))?;
        Ok((
            status,
            s.conn.handshake_kind() == Some(HandshakeKind::Resumed),
        ))
    })
    .join()
    .expect("client thread")
}

fn get(lab: &Lab, config: &Arc<rustls::ClientConfig>) -> Result<(u16, bool), String> {
    attempt(lab, config, "GET", "/v1/accounts/1", "")
}

fn sighup(server: &Server) {
    kill(server.pid(), Signal::SIGHUP).expect("kill -HUP");
}

#[test]
fn revoked_and_expired_clients_are_refused_also_when_they_resume() {
    let lab = lab("mtlsrev", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = init_certs(&lab, dir.path());
    let ca = LabCa::dev(&tls).expect("the lab CA");
    let crl = tls.join("clients.crl");
    // Serial 10 is revoked from the start.
    publish_crl(&crl, &ca, &[10], 1);
    let far = unix_now() + 3600;
    let cn = |name| LabNames {
        cn: Some(name),
        ..Default::default()
    };
    let revoked = client(&tls, &ca, "revoked", cn("client"), 10, far);
    let victim = client(&tls, &ca, "victim", cn("client"), 11, far);
    let late = client(&tls, &ca, "late", cn("client"), 12, far);

    let tls_toml = format!(
        "crls = [\"{}\"]\ncrl_reload_interval_ms = 1000\n",
        crl.display()
    );
    let server = Server::start_with_tls(&lab, dir.path(), "ledger", &tls_toml, "", &[]);
    assert!(
        server.metric_sum("pantera_tls_crl_next_update_timestamp_seconds", &[]) > unix_now() as f64,
        "the CRL's nextUpdate is exported"
    );

    // A revoked certificate is refused at the handshake.
    assert!(get(&lab, &revoked).is_err(), "a revoked client is refused");
    server.wait_metric(
        "pantera_tls_errors_total",
        &["reason=\"certificate_revoked\""],
        1.0,
    );

    // A valid client gets a session and resumes it...
    let (status, resumed) =
        attempt(&lab, &victim, "POST", "/v1/accounts", TWO_ACCOUNTS).expect("a valid client");
    assert_eq!((status, resumed), (200, false));
    assert_eq!(
        get(&lab, &victim),
        Ok((200, true)),
        "the second connection resumes"
    );
    // ...until it is revoked: a new CRL and SIGHUP, and its session no longer resumes.
    publish_crl(&crl, &ca, &[10, 11], 2);
    sighup(&server);
    server.wait_metric("pantera_config_reloads_total", &["result=\"ok\""], 1.0);
    assert!(
        get(&lab, &victim).is_err(),
        "a revoked client cannot resume"
    );
    server.wait_metric(
        "pantera_tls_errors_total",
        &["reason=\"certificate_revoked\""],
        2.0,
    );

    // The timer picks up a CRL change without SIGHUP. Sessions survive it (same cache and
    // ticket keys): a client still valid keeps resuming, a revoked one is refused when it
    // tries to resume, at its handshake.
    let steady = client(&tls, &ca, "steady", cn("client"), 14, far);
    assert_eq!(get(&lab, &late), Ok((200, false)));
    assert_eq!(get(&lab, &steady), Ok((200, false)));
    publish_crl(&crl, &ca, &[10, 11, 12], 3);
    server.wait_metric("pantera_tls_crl_reloads_total", &["result=\"ok\""], 1.0);
    let refused = get(&lab, &late);
    assert!(
        refused.as_ref().is_err_and(|e| e.starts_with("handshake:")),
        "revoked by the timer's reload, refused as it resumes: {refused:?}"
    );
    assert_eq!(
        get(&lab, &steady),
        Ok((200, true)),
        "a valid client keeps resuming"
    );
    server.wait_metric(
        "pantera_tls_errors_total",
        &["reason=\"certificate_revoked\""],
        3.0,
    );

    // A bad CRL keeps the CRLs in force.
    std::fs::write(
        &crl,
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    )
    .expect("write");
    server.wait_metric("pantera_tls_crl_reloads_total", &["result=\"failed\""], 1.0);
    assert!(get(&lab, &late).is_err(), "still revoked");

    // An expired certificate cannot resume: valid for a few seconds, a session while valid
    // (resumed once), then past notAfter (webpki compares whole seconds) it is refused.
    let not_after = unix_now() + 4;
    let expiring = client(&tls, &ca, "expiring", cn("client"), 13, not_after);
    assert_eq!(get(&lab, &expiring), Ok((200, false)));
    assert_eq!(get(&lab, &expiring), Ok((200, true)));
    while unix_now() <= not_after + 1 {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        get(&lab, &expiring).is_err(),
        "an expired client cannot resume"
    );
    server.wait_metric(
        "pantera_tls_errors_total",
        &["reason=\"certificate_expired\""],
        1.0,
    );

    let mut server = server;
    assert!(server.terminate().success());
}

#[test]
fn a_cn_does_not_get_a_dns_role_and_a_pinned_issuer_holds() {
    let lab = lab("mtlsid", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = init_certs(&lab, dir.path());
    let ca = LabCa::dev(&tls).expect("the lab CA");
    let other = LabCa::generate("Another client CA").expect("a second CA");
    // Both CAs in the client CA bundle (the dev CA first: `certs init` reads it).
    let bundle = std::fs::read_to_string(tls.join("ca.pem")).expect("ca.pem") + &other.pem;
    std::fs::write(tls.join("ca.pem"), bundle).expect("write the bundle");
    let far = unix_now() + 3600;
    let cn_gw = client(
        &tls,
        &ca,
        "cn-gw",
        LabNames {
            cn: Some("payments-gw"),
            ..Default::default()
        },
        30,
        far,
    );
    let dns_gw = client(
        &tls,
        &ca,
        "dns-gw",
        LabNames {
            dns: Some("payments-gw"),
            ..Default::default()
        },
        31,
        far,
    );
    let pay = LabNames {
        dns: Some("pay.bank.example"),
        ..Default::default()
    };
    let pinned_ok = client(&tls, &ca, "pay-ours", pay.clone(), 32, far);
    let pinned_other = client(&tls, &other, "pay-other", pay, 33, far);

    let mut server = Server::start_logged(&lab, dir.path(), "ledger", "");
    // The roles of this test, applied by a reload (the lab's defaults are `cn:` entries).
    let text = std::fs::read_to_string(server.config_path()).expect("read config");
    let roles = format!(
        "roles = {{ \"cn:client\" = \"write\", \"dns:payments-gw\" = \"write\", \"dns:pay.bank.example\" = {{ role = \"write\", issuer = \"sha256:{}\" }} }}",
        ca.fingerprint_hex()
    );
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("roles = ") {
                roles.clone()
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(server.config_path(), text).expect("write config");
    sighup(&server);
    assert_eq!(
        server.wait_metric("pantera_config_reloads_total", &["result=\"ok\""], 1.0),
        1.0,
        "{}",
        server.log_text()
    );

    let post = |config| {
        attempt(&lab, config, "POST", "/v1/accounts", TWO_ACCOUNTS).map(|(status, _)| status)
    };
    assert_eq!(
        post(&cn_gw),
        Ok(403),
        "a CN equal to a dns: identity gets no role"
    );
    assert_eq!(post(&dns_gw), Ok(200), "the dns: name gets it");
    assert_eq!(
        post(&pinned_ok),
        Ok(200),
        "the pinned name from the pinned CA"
    );
    assert_eq!(
        post(&pinned_other),
        Ok(403),
        "the same name from the other CA in the bundle"
    );
    let log = server.log_text();
    assert!(
        log.contains("cn:payments-gw"),
        "the refused client is named by its typed identity:\n{log}"
    );
    assert!(server.terminate().success());
}
