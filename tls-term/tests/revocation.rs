//! Revocation, resumption policy and typed identities, driven in memory: a rustls client and a
//! [`Session`] exchange bytes through vectors (no sockets, no lab).
//!
//! A resumed session is checked against the policy the new session was created with; the
//! tests keep one server configuration (so the ticket keys and session cache are shared) and
//! change the policy, as a reload or a CRL change does for new connections.

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    AlertDescription, ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion,
};
use tempfile::TempDir;
use tls_term::certs::{self, LabCa, LabNames};
use tls_term::{
    server_tls, ClientPolicy, Role, RoleMap, ServerTls, Session, SessionError, SessionLimits,
    TlsError, TlsSettings,
};

const SERVICE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2));
const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

struct Lab {
    dir: TempDir,
    ca: LabCa,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        certs::init(dir.path(), SERVICE_IP, false).unwrap();
        let ca = LabCa::dev(dir.path()).unwrap();
        Lab { dir, ca }
    }

    fn settings(&self, crls: Vec<PathBuf>) -> TlsSettings {
        TlsSettings {
            crls,
            ..TlsSettings::lab(self.dir.path())
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        fs::write(&path, text).unwrap();
        path
    }

    /// A client config presenting a certificate of `ca` with `names`, serial `serial`.
    fn client(
        &self,
        ca: &LabCa,
        names: &LabNames<'_>,
        serial: u64,
        not_after: i64,
        versions: &[&'static SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let (cert, key) = ca.issue(names, serial, not_after).unwrap();
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(self.dir.path().join("ca.pem")).unwrap())
            .unwrap();
        let chain = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
        let mut config =
            ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots)
                .with_client_auth_cert(
                    chain,
                    PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
                )
                .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

fn policy(tls: &ServerTls, roles: RoleMap) -> Arc<ClientPolicy> {
    Arc::new(ClientPolicy {
        roles,
        trust: tls.trust.clone(),
        resumption_max_age_s: 3_600,
    })
}

#[derive(Debug)]
enum Fail {
    Server(SessionError),
    Client(rustls::Error),
}

/// Runs a connection to the end of its handshake (and a little data, so TLS 1.3 tickets
/// reach the client's store). Returns the server session.
fn connect(
    client: &Arc<ClientConfig>,
    server: &ServerTls,
    policy: &Arc<ClientPolicy>,
) -> Result<(Session, ClientConnection), Fail> {
    let now = Instant::now();
    let mut c =
        ClientConnection::new(client.clone(), ServerName::IpAddress(SERVICE_IP.into())).unwrap();
    let mut s = Session::with_policy(
        &server.config,
        now,
        SessionLimits::default(),
        Arc::clone(policy),
    )
    .unwrap();
    let mut sent_hello = false;
    for _ in 0..50 {
        let mut to_server = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut to_server).unwrap();
        }
        let mut pos = 0;
        let mut server_error = None;
        while pos < to_server.len() {
            match s.handle_input(now, &to_server[pos..]) {
                Ok(0) => break,
                Ok(n) => pos += n,
                Err(e) => {
                    server_error = Some(e);
                    break;
                }
            }
        }
        if !s.is_handshaking() && !sent_hello && server_error.is_none() {
            s.write_plaintext(b"hello").unwrap();
            sent_hello = true;
        }
        let mut to_client = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            let n = s.poll_output(&mut buf);
            if n == 0 {
                break;
            }
            to_client.extend_from_slice(&buf[..n]);
        }
        let mut rest = &to_client[..];
        while !rest.is_empty() {
            if c.read_tls(&mut rest).unwrap() == 0 {
                break;
            }
            if let Err(e) = c.process_new_packets() {
                return Err(match server_error {
                    Some(server) => Fail::Server(server),
                    None => Fail::Client(e),
                });
            }
        }
        if let Some(e) = server_error {
            // The client got the alert too: report both sides.
            return Err(Fail::Server(e));
        }
        if sent_hello && !c.is_handshaking() && !c.wants_write() && to_client.is_empty() {
            return Ok((s, c));
        }
    }
    panic!("no progress");
}

fn refused_label(result: Result<(Session, ClientConnection), Fail>) -> &'static str {
    match result {
        Err(Fail::Server(e)) => e.metric_label(),
        Err(Fail::Client(e)) => panic!("the client failed first: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn a_revoked_certificate_is_refused_at_the_handshake() {
    let lab = Lab::new();
    let crl = lab.write(
        "ca.crl",
        &lab.ca.crl(&[1001], 1, unix_now() + 3600).unwrap(),
    );
    let tls = server_tls(&lab.settings(vec![crl])).unwrap();
    let p = policy(&tls, RoleMap::lab());
    let names = LabNames {
        cn: Some("client"),
        ..Default::default()
    };
    let revoked = lab.client(&lab.ca, &names, 1001, unix_now() + 3600, TLS13);
    assert_eq!(
        refused_label(connect(&revoked, &tls, &p)),
        "certificate_revoked"
    );
    // Another serial of the same CA is fine, with its typed identity and role.
    let good = lab.client(&lab.ca, &names, 1002, unix_now() + 3600, TLS13);
    let (s, _) = connect(&good, &tls, &p).unwrap();
    assert_eq!(
        (s.identity(), s.role()),
        (Some("cn:client"), Some(Role::Write))
    );
    let info = tls.trust.as_ref().unwrap().crls();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].revoked, 1);
    assert!(info[0].next_update.unwrap() > unix_now());
}

/// Gets a session while valid, then resumes under `later`; returns the resumption's result.
fn resume_under(
    lab: &Lab,
    versions: &[&'static SupportedProtocolVersion],
    serial: u64,
    later: impl FnOnce(&ServerTls) -> Arc<ClientPolicy>,
) -> Result<(Session, ClientConnection), Fail> {
    let tls = server_tls(&lab.settings(vec![])).unwrap();
    let names = LabNames {
        cn: Some("client"),
        ..Default::default()
    };
    let client = lab.client(&lab.ca, &names, serial, unix_now() + 3600, versions);
    let (first, _) = connect(&client, &tls, &policy(&tls, RoleMap::lab())).unwrap();
    assert!(!first.resumed());
    // Resumption works under the same policy...
    let (again, _) = connect(&client, &tls, &policy(&tls, RoleMap::lab())).unwrap();
    assert!(again.resumed(), "the client resumes");
    assert_eq!(again.role(), Some(Role::Write));
    // ...and is checked again under the new one.
    connect(&client, &tls, &later(&tls))
}

#[test]
fn a_revoked_client_cannot_resume() {
    for versions in [TLS13, TLS12] {
        let lab = Lab::new();
        let crl = lab.write("ca.crl", &lab.ca.crl(&[77], 2, unix_now() + 3600).unwrap());
        let revoking = server_tls(&lab.settings(vec![crl])).unwrap();
        let result = resume_under(&lab, versions, 77, |_| policy(&revoking, RoleMap::lab()));
        assert_eq!(refused_label(result), "certificate_revoked");
    }
}

#[test]
fn the_client_gets_a_fatal_alert_when_resumption_is_refused() {
    let lab = Lab::new();
    let crl = lab.write("ca.crl", &lab.ca.crl(&[78], 2, unix_now() + 3600).unwrap());
    let revoking = server_tls(&lab.settings(vec![crl])).unwrap();
    let tls = server_tls(&lab.settings(vec![])).unwrap();
    let names = LabNames {
        cn: Some("client"),
        ..Default::default()
    };
    let client = lab.client(&lab.ca, &names, 78, unix_now() + 3600, TLS13);
    connect(&client, &tls, &policy(&tls, RoleMap::lab())).unwrap();
    // Drive by hand to see the client's side.
    let now = Instant::now();
    let mut c = ClientConnection::new(client, ServerName::IpAddress(SERVICE_IP.into())).unwrap();
    let mut s = Session::with_policy(
        &tls.config,
        now,
        SessionLimits::default(),
        policy(&revoking, RoleMap::lab()),
    )
    .unwrap();
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    assert!(s.handle_input(now, &hello).is_err());
    let mut out = [0u8; 4096];
    let n = s.poll_output(&mut out);
    assert_eq!(n, 7, "only the alert record, never the server's flight");
    assert_eq!(s.poll_output(&mut out), 0);
    c.read_tls(&mut &out[..n]).unwrap();
    match c.process_new_packets() {
        Err(rustls::Error::AlertReceived(AlertDescription::CertificateRevoked)) => {}
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_ca_removed_from_the_bundle_stops_resumption() {
    let lab = Lab::new();
    let other = LabCa::generate("Another CA").unwrap();
    let other_bundle = lab.write("other-ca.pem", &other.pem);
    let result = resume_under(&lab, TLS13, 5, |_| {
        let tls = server_tls(&TlsSettings {
            client_ca: Some(other_bundle.clone()),
            ..lab.settings(vec![])
        })
        .unwrap();
        policy(&tls, RoleMap::lab())
    });
    assert_eq!(refused_label(result), "unknown_ca");
}

#[test]
fn no_resumption_past_the_max_age() {
    let lab = Lab::new();
    // Max age 0 under the new policy: any resumed session is too old.
    let result = resume_under(&lab, TLS13, 6, |tls| {
        Arc::new(ClientPolicy {
            resumption_max_age_s: 0,
            ..(*policy(tls, RoleMap::lab())).clone()
        })
    });
    assert_eq!(refused_label(result), "resumption_too_old");
    // A real age: 1 s allowed, 2 s waited (the check has second granularity).
    let result = resume_under(&lab, TLS13, 7, |tls| {
        std::thread::sleep(Duration::from_millis(2_100));
        Arc::new(ClientPolicy {
            resumption_max_age_s: 1,
            ..(*policy(tls, RoleMap::lab())).clone()
        })
    });
    assert_eq!(refused_label(result), "resumption_too_old");
}

#[test]
fn resumption_off_means_full_handshakes() {
    let lab = Lab::new();
    let tls = server_tls(&TlsSettings {
        resumption_max_age_s: 0,
        ..lab.settings(vec![])
    })
    .unwrap();
    let p = policy(&tls, RoleMap::lab());
    let names = LabNames {
        cn: Some("client"),
        ..Default::default()
    };
    for versions in [TLS13, TLS12] {
        let client = lab.client(&lab.ca, &names, 8, unix_now() + 3600, versions);
        connect(&client, &tls, &p).unwrap();
        let (s, _) = connect(&client, &tls, &p).unwrap();
        assert!(!s.resumed());
    }
}

#[test]
fn an_expired_certificate_cannot_resume() {
    let lab = Lab::new();
    let tls = server_tls(&lab.settings(vec![])).unwrap();
    let p = policy(&tls, RoleMap::lab());
    let names = LabNames {
        cn: Some("client"),
        ..Default::default()
    };
    // Valid for two more seconds (webpki compares whole seconds).
    let client = lab.client(&lab.ca, &names, 9, unix_now() + 2, TLS13);
    let (s, _) = connect(&client, &tls, &p).unwrap();
    assert!(!s.resumed());
    std::thread::sleep(Duration::from_millis(3_200));
    assert_eq!(
        refused_label(connect(&client, &tls, &p)),
        "certificate_expired"
    );
}

#[test]
fn a_cn_does_not_get_the_role_of_a_dns_identity_and_pins_hold() {
    let lab = Lab::new();
    let other = LabCa::generate("Another CA").unwrap();
    // Both CAs in the client CA bundle.
    let bundle = lab.write("bundle.pem", &format!("{}{}", lab.ca.pem, other.pem));
    let tls = server_tls(&TlsSettings {
        client_ca: Some(bundle),
        ..lab.settings(vec![])
    })
    .unwrap();
    let roles = RoleMap::from_entries([
        ("dns:payments-gw", "write", None),
        (
            "dns:pay.bank.example",
            "write",
            Some(format!("sha256:{}", lab.ca.fingerprint_hex())),
        ),
    ])
    .unwrap();
    let p = policy(&tls, roles);
    let far = unix_now() + 3600;

    let cn_only = LabNames {
        cn: Some("payments-gw"),
        ..Default::default()
    };
    let (s, _) = connect(&lab.client(&lab.ca, &cn_only, 20, far, TLS13), &tls, &p).unwrap();
    assert_eq!((s.identity(), s.role()), (Some("cn:payments-gw"), None));

    let dns = LabNames {
        dns: Some("payments-gw"),
        ..Default::default()
    };
    let (s, _) = connect(&lab.client(&lab.ca, &dns, 21, far, TLS13), &tls, &p).unwrap();
    assert_eq!(
        (s.identity(), s.role()),
        (Some("dns:payments-gw"), Some(Role::Write))
    );

    // The pinned name: from the pinned CA it has the role, from the other CA in the bundle not.
    let pinned = LabNames {
        dns: Some("pay.bank.example"),
        ..Default::default()
    };
    let (s, _) = connect(&lab.client(&lab.ca, &pinned, 22, far, TLS13), &tls, &p).unwrap();
    assert_eq!(s.role(), Some(Role::Write));
    let (s, _) = connect(&lab.client(&other, &pinned, 23, far, TLS13), &tls, &p).unwrap();
    assert_eq!(
        (s.identity(), s.role()),
        (Some("dns:pay.bank.example"), None)
    );

    // SPIFFE ids are uri: identities.
    let spiffe_roles =
        RoleMap::from_roles([("uri:spiffe://bank.example/payments", "write")]).unwrap();
    let spiffe = LabNames {
        uri: Some("spiffe://bank.example/payments"),
        cn: Some("x"),
        ..Default::default()
    };
    let (s, _) = connect(
        &lab.client(&other, &spiffe, 24, far, TLS13),
        &tls,
        &policy(&tls, spiffe_roles),
    )
    .unwrap();
    assert_eq!(
        (s.identity(), s.role()),
        (
            Some("uri:spiffe://bank.example/payments"),
            Some(Role::Write)
        )
    );
}

#[test]
fn bad_crl_files_are_clear_errors() {
    let lab = Lab::new();
    let check = |path: PathBuf| match server_tls(&lab.settings(vec![path.clone()])) {
        Err(e @ (TlsError::BadCrl { .. } | TlsError::Missing { .. })) => {
            assert!(e.to_string().contains(&path.display().to_string()), "{e}");
            e.to_string()
        }
        other => panic!("{other:?}"),
    };
    check(lab.dir.path().join("missing.crl"));
    let e = check(lab.write(
        "garbage.crl",
        "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
    ));
    assert!(e.contains("CRL"), "{e}");
    let e = check(lab.write("cert-not-crl.pem", &lab.ca.pem));
    assert!(e.contains("X509 CRL"), "{e}");
    // A CRL of a CA that is not a client CA.
    let other = LabCa::generate("Another CA").unwrap();
    let e = check(lab.write("other.crl", &other.crl(&[1], 1, unix_now() + 60).unwrap()));
    assert!(e.contains("not signed by any client CA"), "{e}");
    // DER is accepted as well as PEM.
    let pem = lab.ca.crl(&[1], 1, unix_now() + 60).unwrap();
    let der =
        rustls::pki_types::CertificateRevocationListDer::from_pem_slice(pem.as_bytes()).unwrap();
    let path = lab.dir.path().join("ca.der.crl");
    fs::write(&path, der.as_ref()).unwrap();
    server_tls(&lab.settings(vec![path])).unwrap();
}

#[test]
fn an_expired_crl_is_still_applied() {
    let lab = Lab::new();
    // nextUpdate in the past: stale, yet its revocation holds (not silently off).
    let crl = lab.write("ca.crl", &lab.ca.crl(&[31], 1, unix_now() - 1).unwrap());
    let tls = server_tls(&lab.settings(vec![crl])).unwrap();
    let p = policy(&tls, RoleMap::lab());
    let names = LabNames {
        cn: Some("client"),
        ..Default::default()
    };
    let revoked = lab.client(&lab.ca, &names, 31, unix_now() + 3600, TLS13);
    assert_eq!(
        refused_label(connect(&revoked, &tls, &p)),
        "certificate_revoked"
    );
    let good = lab.client(&lab.ca, &names, 32, unix_now() + 3600, TLS13);
    connect(&good, &tls, &p).unwrap();
}

#[test]
fn chained_resumptions_count_from_the_full_handshake() {
    let lab = Lab::new();
    let tls = server_tls(&lab.settings(vec![])).unwrap();
    let p = Arc::new(ClientPolicy {
        resumption_max_age_s: 2,
        ..(*policy(&tls, RoleMap::lab())).clone()
    });
    let names = LabNames {
        cn: Some("client"),
        ..Default::default()
    };
    let client = lab.client(&lab.ca, &names, 40, unix_now() + 3600, TLS13);
    let (full, _) = connect(&client, &tls, &p).unwrap();
    assert!(!full.resumed());
    // 1.5 s later (1 or 2 whole seconds): within the bound; this connection issues new
    // tickets, and the client offers the newest next.
    std::thread::sleep(Duration::from_millis(1_500));
    let (resumed, _) = connect(&client, &tls, &p).unwrap();
    assert!(resumed.resumed());
    // 1.5 s after that: the newest ticket is 1.5 s old, but the full handshake 3 s: refused.
    // (Were the age counted from the last ticket, this would resume.)
    std::thread::sleep(Duration::from_millis(1_500));
    assert_eq!(
        refused_label(connect(&client, &tls, &p)),
        "resumption_too_old"
    );
}
