//! In-memory handshakes between a rustls client and `tls_term::Session`, pumping bytes by hand
//! in TCP-segment-sized pieces (1500 bytes), with dev certificates from `certs::init`.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, HandshakeKind,
    ProtocolVersion, RootCertStore, SupportedProtocolVersion,
};
use tempfile::TempDir;
use tls_term::certs::{self, DevCertPaths};
use tls_term::{
    server_config, Role, RoleMap, Session, SessionError, TlsError, TlsSettings, TlsVersion,
    ALLOWED_CIPHER_SUITES,
};

const SERVICE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2));
const SEGMENT_BYTES: usize = 1500;
const TIMEOUT: Duration = Duration::from_secs(10);

fn dev_certs() -> (TempDir, DevCertPaths) {
    let dir = tempfile::tempdir().unwrap();
    let paths = certs::init(dir.path(), SERVICE_IP, false).unwrap();
    (dir, paths)
}

fn settings(paths: &DevCertPaths) -> TlsSettings {
    TlsSettings::lab(&paths.dir)
}

#[derive(Clone, Copy)]
enum ClientCert<'a> {
    None,
    Pair(&'a Path, &'a Path),
}

fn client_config(
    trust: &Path,
    cert: ClientCert<'_>,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(trust).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots);
    let mut config = match cert {
        ClientCert::None => builder.with_no_client_auth(),
        ClientCert::Pair(cert, key) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .unwrap()
                .map(Result::unwrap)
                .collect();
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

fn writer_config(
    paths: &DevCertPaths,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    client_config(
        &paths.ca_cert,
        ClientCert::Pair(&paths.client_cert, &paths.client_key),
        versions,
    )
}

const BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];

#[derive(Debug)]
enum Fail {
    Server(SessionError),
    Client(rustls::Error),
}

/// A client and a server session joined by two byte queues standing in for TCP.
struct Pair {
    client: ClientConnection,
    server: Session,
    to_server: Vec<u8>,
    to_client: Vec<u8>,
    now: Instant,
}

impl Pair {
    fn new(client_config: &Arc<ClientConfig>, server_config: &Arc<rustls::ServerConfig>) -> Pair {
        let now = Instant::now();
        let name = ServerName::IpAddress(SERVICE_IP.into());
        Pair {
            client: ClientConnection::new(client_config.clone(), name).unwrap(),
            server: Session::new(server_config, now, TIMEOUT).unwrap(),
            to_server: Vec::new(),
            to_client: Vec::new(),
            now,
        }
    }

    /// Moves bytes both ways, one segment at a time, until nothing moves.
    fn pump(&mut self) -> Result<(), Fail> {
        loop {
            let mut moved = false;
            while self.client.wants_write() {
                self.client.write_tls(&mut self.to_server).unwrap();
            }
            while !self.to_server.is_empty() {
                let take = self.to_server.len().min(SEGMENT_BYTES);
                let n = self
                    .server
                    .handle_input(self.now, &self.to_server[..take])
                    .map_err(Fail::Server)?;
                if n == 0 {
                    break; // server plaintext buffer full: the application must read first
                }
                self.to_server.drain(..n);
                moved = true;
            }
            let mut segment = [0u8; SEGMENT_BYTES];
            loop {
                let n = self.server.poll_output(&mut segment);
                if n == 0 {
                    break;
                }
                self.to_client.extend_from_slice(&segment[..n]);
            }
            while !self.to_client.is_empty() {
                let n = self.client.read_tls(&mut &self.to_client[..]).unwrap_or(0);
                if n == 0 {
                    break;
                }
                self.to_client.drain(..n);
                self.client.process_new_packets().map_err(Fail::Client)?;
                moved = true;
            }
            if !moved {
                return Ok(());
            }
        }
    }

    fn handshake(&mut self) -> Result<(), Fail> {
        self.pump()?;
        assert!(!self.server.is_handshaking());
        assert!(!self.client.is_handshaking());
        Ok(())
    }

    /// After the server failed: delivers what it still has to say and returns the client's view.
    fn deliver_alert(&mut self) -> rustls::Error {
        assert!(self.server.wants_output(), "an alert is queued");
        let mut out = [0u8; SEGMENT_BYTES];
        let n = self.server.poll_output(&mut out);
        assert!(n > 0);
        self.client.read_tls(&mut &out[..n]).unwrap();
        self.client
            .process_new_packets()
            .expect_err("client sees the alert")
    }
}

#[test]
fn tls13_handshake_with_client_certificate() {
    let (_dir, paths) = dev_certs();
    let config = server_config(&settings(&paths)).unwrap();
    let mut pair = Pair::new(&writer_config(&paths, BOTH), &config);
    assert!(pair.server.is_handshaking());
    assert_eq!(pair.server.identity(), None);
    pair.handshake().unwrap();

    assert_eq!(
        pair.server.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
    assert_eq!(pair.server.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(pair.client.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert!(ALLOWED_CIPHER_SUITES.contains(&pair.server.cipher_suite().unwrap()));
    assert_eq!(pair.server.identity(), Some("cn:client"));
    assert_eq!(
        RoleMap::lab()
            .entry(&pair.server.identity().unwrap().parse().unwrap())
            .map(|e| e.role),
        Some(Role::Write)
    );
    assert!(!pair.server.resumed());
    assert_eq!(
        pair.server.poll_at(),
        None,
        "no deadline after the handshake"
    );
}

#[test]
fn tls12_handshake_with_client_certificate() {
    let (_dir, paths) = dev_certs();
    let config = server_config(&settings(&paths)).unwrap();
    let mut pair = Pair::new(&writer_config(&paths, TLS12), &config);
    pair.handshake().unwrap();
    assert_eq!(
        pair.server.protocol_version(),
        Some(ProtocolVersion::TLSv1_2)
    );
    let suite = pair.server.cipher_suite().unwrap();
    assert!(ALLOWED_CIPHER_SUITES.contains(&suite));
    assert!(
        suite.as_str().unwrap().starts_with("TLS_ECDHE_ECDSA_WITH_"),
        "{suite:?}"
    );
    assert_eq!(pair.server.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(pair.server.identity(), Some("cn:client"));
}

#[test]
fn reader_certificate_maps_to_read_role() {
    let (_dir, paths) = dev_certs();
    let config = server_config(&settings(&paths)).unwrap();
    let client = client_config(
        &paths.ca_cert,
        ClientCert::Pair(&paths.reader_cert, &paths.reader_key),
        BOTH,
    );
    let mut pair = Pair::new(&client, &config);
    pair.handshake().unwrap();
    assert_eq!(pair.server.identity(), Some("cn:reader"));
    assert_eq!(RoleMap::lab().entry(&"cn:reader".parse().unwrap()).map(|e| e.role), Some(Role::Read));
}

#[test]
fn client_without_certificate_is_refused() {
    let (_dir, paths) = dev_certs();
    let config = server_config(&settings(&paths)).unwrap();
    for versions in [BOTH, TLS12] {
        let client = client_config(&paths.ca_cert, ClientCert::None, versions);
        let mut pair = Pair::new(&client, &config);
        match pair.pump() {
            Err(Fail::Server(error @ SessionError::NoClientCertificate)) => {
                assert_eq!(error.metric_label(), "no_client_certificate");
            }
            other => panic!("expected NoClientCertificate, got {other:?}"),
        }
        assert_eq!(pair.server.identity(), None);
        // RFC 8446 §4.4.2.4: certificate_required (rustls sends it for TLS 1.2 as well).
        assert_eq!(
            pair.deliver_alert(),
            rustls::Error::AlertReceived(AlertDescription::CertificateRequired)
        );
        // The error sticks; the session never becomes usable.
        assert!(matches!(
            pair.server.handle_input(pair.now, b"x"),
            Err(SessionError::NoClientCertificate)
        ));
        assert!(matches!(
            pair.server.write_plaintext(b"x"),
            Err(SessionError::Closed)
        ));
        assert_eq!(pair.server.poll_at(), None);
    }
}

/// Writes a CA named `ca_name` and a client certificate "client" it issued into `dir`.
fn foreign_client(dir: &Path, ca_name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let mut ca = CertificateParams::default();
    ca.distinguished_name = rcgen::DistinguishedName::new();
    ca.distinguished_name.push(DnType::CommonName, ca_name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = rcgen::DistinguishedName::new();
    leaf.distinguished_name.push(DnType::CommonName, "client");
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let (cert_path, key_path) = (dir.join("foreign.pem"), dir.join("foreign.key"));
    fs::write(&cert_path, cert.pem()).unwrap();
    fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[test]
fn client_certificate_from_another_ca_is_refused() {
    let (dir, paths) = dev_certs();
    let config = server_config(&settings(&paths)).unwrap();
    // The client trusts our server but presents a certificate issued by a foreign CA: once a
    // CA with another name (unknown issuer), once one posing under our CA's name (its
    // signature does not verify with our CA's key).
    for (ca_name, expected, label, alert) in [
        (
            "Mallory CA",
            CertificateError::UnknownIssuer,
            "unknown_ca",
            AlertDescription::UnknownCA,
        ),
        (
            certs::CA_COMMON_NAME,
            CertificateError::BadSignature,
            "bad_certificate_signature",
            AlertDescription::DecryptError,
        ),
    ] {
        let (cert, key) = foreign_client(dir.path(), ca_name);
        let client = client_config(&paths.ca_cert, ClientCert::Pair(&cert, &key), BOTH);
        let mut pair = Pair::new(&client, &config);
        match pair.pump() {
            Err(Fail::Server(error @ SessionError::BadClientCertificate(_))) => {
                assert_eq!(error.metric_label(), label);
                assert!(
                    matches!(&error, SessionError::BadClientCertificate(e) if *e == expected),
                    "{error:?}"
                );
            }
            other => panic!("expected BadClientCertificate, got {other:?}"),
        }
        assert_eq!(pair.deliver_alert(), rustls::Error::AlertReceived(alert));
        assert_eq!(pair.server.identity(), None);
    }
    // Another dev CA directory: the same name again, a different key.
    let (_other_dir, other) = dev_certs();
    let client = client_config(
        &paths.ca_cert,
        ClientCert::Pair(&other.client_cert, &other.client_key),
        BOTH,
    );
    let mut pair = Pair::new(&client, &config);
    assert!(matches!(
        pair.pump(),
        Err(Fail::Server(SessionError::BadClientCertificate(_)))
    ));
}

#[test]
fn without_client_ca_no_certificate_is_asked() {
    let (_dir, paths) = dev_certs();
    let settings = TlsSettings {
        client_ca: None,
        ..settings(&paths)
    };
    let config = server_config(&settings).unwrap();
    let client = client_config(&paths.ca_cert, ClientCert::None, BOTH);
    let mut pair = Pair::new(&client, &config);
    pair.handshake().unwrap();
    assert_eq!(pair.server.identity(), None);
}

#[test]
fn min_version_tls13_refuses_tls12_client() {
    let (_dir, paths) = dev_certs();
    let settings = TlsSettings {
        min_version: TlsVersion::Tls13,
        ..settings(&paths)
    };
    let config = server_config(&settings).unwrap();
    let mut pair = Pair::new(&writer_config(&paths, TLS12), &config);
    match pair.pump() {
        Err(Fail::Server(error @ SessionError::Incompatible(_))) => {
            assert_eq!(error.metric_label(), "incompatible");
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    assert_eq!(
        pair.deliver_alert(),
        rustls::Error::AlertReceived(AlertDescription::ProtocolVersion)
    );
    // A TLS 1.3 client is still welcome.
    let mut pair = Pair::new(&writer_config(&paths, BOTH), &config);
    pair.handshake().unwrap();
    assert_eq!(
        pair.server.protocol_version(),
        Some(ProtocolVersion::TLSv1_3)
    );
}

fn assert_resumes(
    settings: &TlsSettings,
    paths: &DevCertPaths,
    versions: &[&'static SupportedProtocolVersion],
) {
    let config = server_config(settings).unwrap();
    // One client config = one client session store, as a real client process keeps.
    let client = writer_config(paths, versions);
    let mut first = Pair::new(&client, &config);
    first.handshake().unwrap();
    // TLS 1.3 tickets arrive after the handshake; exchange a little data so they are read.
    first.server.write_plaintext(b"hello").unwrap();
    first.pump().unwrap();
    assert!(!first.server.resumed());

    let mut second = Pair::new(&client, &config);
    second.handshake().unwrap();
    assert!(second.server.resumed());
    assert_eq!(second.client.handshake_kind(), Some(HandshakeKind::Resumed));
    // The client identity survives resumption (it travels in the ticket / cached session).
    assert_eq!(second.server.identity(), Some("cn:client"));
}

#[test]
fn tls13_resumption_by_ticket_and_by_cache() {
    let (_dir, paths) = dev_certs();
    assert_resumes(&settings(&paths), &paths, BOTH);
    let stateful = TlsSettings {
        tickets: false,
        ..settings(&paths)
    };
    assert_resumes(&stateful, &paths, BOTH);
}

#[test]
fn tls12_resumption_by_ticket_and_by_session_id() {
    let (_dir, paths) = dev_certs();
    assert_resumes(&settings(&paths), &paths, TLS12);
    let stateful = TlsSettings {
        tickets: false,
        ..settings(&paths)
    };
    assert_resumes(&stateful, &paths, TLS12);
}

#[test]
fn no_resumption_when_both_mechanisms_are_off() {
    let (_dir, paths) = dev_certs();
    let settings = TlsSettings {
        tickets: false,
        session_cache_entries: 0,
        ..settings(&paths)
    };
    let config = server_config(&settings).unwrap();
    let client = writer_config(&paths, BOTH);
    let mut first = Pair::new(&client, &config);
    first.handshake().unwrap();
    first.server.write_plaintext(b"hello").unwrap();
    first.pump().unwrap();
    let mut second = Pair::new(&client, &config);
    second.handshake().unwrap();
    assert!(!second.server.resumed());
}

#[test]
fn plaintext_http_instead_of_tls_is_an_error() {
    let (_dir, paths) = dev_certs();
    let config = server_config(&settings(&paths)).unwrap();
    let mut session = Session::new(&config, Instant::now(), TIMEOUT).unwrap();
    let error = session
        .handle_input(
            Instant::now(),
            b"GET /v1/accounts/1 HTTP/1.1\r\nHost: pantera\r\n\r\n",
        )
        .unwrap_err();
    assert!(
        matches!(error, SessionError::InvalidMessage(_)),
        "{error:?}"
    );
    assert_eq!(error.metric_label(), "invalid_message");
    assert!(session.wants_output(), "an alert is queued");
    let mut out = [0u8; 64];
    let n = session.poll_output(&mut out);
    // An alert record (RFC 8446 §5.1: content type 21) with a fatal level (2).
    assert_eq!(out[0], 21);
    assert_eq!(out[5], 2);
    assert_eq!(n, 7);
}

#[test]
fn random_garbage_never_panics() {
    let (_dir, paths) = dev_certs();
    let config = server_config(&settings(&paths)).unwrap();
    // xorshift64: deterministic, no extra crate.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let mut errors = 0;
    for round in 0..300 {
        let mut session = Session::new(&config, Instant::now(), TIMEOUT).unwrap();
        let len = (next() % 3000) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        // Half the rounds start with a plausible handshake record header, to get past it.
        if round % 2 == 0 && bytes.len() >= 5 {
            bytes[..3].copy_from_slice(&[22, 3, 1]);
        }
        let mut fed = 0;
        while fed < bytes.len() {
            match session.handle_input(Instant::now(), &bytes[fed..]) {
                Ok(0) => break,
                Ok(n) => fed += n,
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
        let mut out = [0u8; 256];
        while session.poll_output(&mut out) > 0 {}
        let mut sink = Vec::new();
        assert_eq!(
            session.read_plaintext(&mut sink, 1 << 20),
            0,
            "no plaintext from garbage"
        );
    }
    assert!(errors > 200, "most garbage is rejected at once ({errors})");
}

#[test]
fn handshake_timeout() {
    let (_dir, paths) = dev_certs();
    let config = server_config(&settings(&paths)).unwrap();
    let t0 = Instant::now();
    let mut session = Session::new(&config, t0, TIMEOUT).unwrap();
    assert_eq!(session.poll_at(), Some(t0 + TIMEOUT));
    session
        .handle_timeout(t0 + TIMEOUT - Duration::from_millis(1))
        .unwrap();
    let error = session.handle_timeout(t0 + TIMEOUT).unwrap_err();
    assert!(matches!(
        error,
        SessionError::HandshakeTimeout { timeout_ms: 10_000 }
    ));
    assert_eq!(error.metric_label(), "handshake_timeout");
    assert_eq!(session.poll_at(), None);
    assert!(matches!(
        session.handle_input(t0, b"\x16\x03\x01"),
        Err(SessionError::HandshakeTimeout { .. })
    ));

    // Input arriving past the deadline is refused too, even without a handle_timeout call.
    let mut late = Session::new(&config, t0, TIMEOUT).unwrap();
    let mut client = ClientConnection::new(
        writer_config(&paths, BOTH),
        ServerName::IpAddress(SERVICE_IP.into()),
    )
    .unwrap();
    let mut hello = Vec::new();
    client.write_tls(&mut hello).unwrap();
    assert!(matches!(
        late.handle_input(t0 + TIMEOUT + Duration::from_secs(1), &hello),
        Err(SessionError::HandshakeTimeout { .. })
    ));

    // A finished handshake has no deadline any more.
    let mut pair = Pair::new(&writer_config(&paths, BOTH), &config);
    pair.handshake().unwrap();
    pair.server
        .handle_timeout(pair.now + TIMEOUT * 100)
        .unwrap();
}

#[test]
fn close_notify_both_ways() {
    let (_dir, paths) = dev_certs();
    let config = server_config(&settings(&paths)).unwrap();
    let mut pair = Pair::new(&writer_config(&paths, BOTH), &config);
    pair.handshake().unwrap();

    // Server closes after a last response: the client reads it, then a clean EOF.
    pair.server.write_plaintext(b"bye").unwrap();
    pair.server.close();
    assert!(!pair.server.close_sent());
    assert!(matches!(
        pair.server.write_plaintext(b"more"),
        Err(SessionError::Closed)
    ));
    pair.pump().unwrap();
    assert!(pair.server.close_sent());
    let mut got = Vec::new();
    let n = pair
        .client
        .reader()
        .read_to_end(&mut got)
        .expect("clean close_notify, not a truncation");
    assert_eq!((n, &got[..]), (3, &b"bye"[..]));

    // Client closes: the server sees close_notify.
    assert!(!pair.server.peer_closed());
    pair.client.send_close_notify();
    pair.pump().unwrap();
    assert!(pair.server.peer_closed());
    assert!(pair.server.received_close_notify());
    // Bytes after close_notify are consumed and ignored (RFC 8446 §6.1).
    assert_eq!(pair.server.handle_input(pair.now, b"junk").unwrap(), 4);
}

#[test]
fn close_waits_for_queued_plaintext() {
    let (_dir, paths) = dev_certs();
    let config = server_config(&settings(&paths)).unwrap();
    let mut pair = Pair::new(&writer_config(&paths, BOTH), &config);
    pair.handshake().unwrap();
    // More than rustls' own 64 KiB send buffer, so part of it waits in the session's queue
    // while close() is called: close_notify must still come after all of it.
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    pair.server.write_plaintext(&body).unwrap();
    pair.server.close();
    let mut got = Vec::new();
    loop {
        pair.pump().unwrap();
        let mut chunk = [0u8; 16 * 1024];
        match pair.client.reader().read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(got, body);
}

#[test]
fn tcp_eof_without_close_notify_is_seen() {
    let (_dir, paths) = dev_certs();
    let config = server_config(&settings(&paths)).unwrap();
    let mut pair = Pair::new(&writer_config(&paths, BOTH), &config);
    pair.handshake().unwrap();
    pair.server.handle_eof();
    assert!(pair.server.peer_closed());
    assert!(!pair.server.received_close_notify());
}

#[test]
fn write_plaintext_is_bounded_and_all_or_nothing() {
    let (_dir, paths) = dev_certs();
    let config = server_config(&settings(&paths)).unwrap();
    let limits = tls_term::SessionLimits {
        handshake_timeout: TIMEOUT,
        plaintext_buffer_bytes_max: 16 * 1024,
    };
    let name = ServerName::IpAddress(SERVICE_IP.into());
    let mut pair = Pair {
        client: ClientConnection::new(writer_config(&paths, BOTH), name).unwrap(),
        server: Session::with_limits(&config, Instant::now(), limits).unwrap(),
        to_server: Vec::new(),
        to_client: Vec::new(),
        now: Instant::now(),
    };
    pair.handshake().unwrap();
    let too_big = vec![7u8; 16 * 1024 + 1];
    match pair.server.write_plaintext(&too_big) {
        Err(
            error @ SessionError::TxBufferFull {
                queued: 0,
                requested: 16385,
                max: 16384,
            },
        ) => {
            assert_eq!(error.metric_label(), "tx_buffer_full");
        }
        other => panic!("expected TxBufferFull, got {other:?}"),
    }
    // Fill rustls' 64 KiB and then the session's 16 KiB queue without polling output.
    let mut accepted = 0usize;
    let chunk = vec![1u8; 4096];
    while pair.server.write_plaintext(&chunk).is_ok() {
        accepted += chunk.len();
        assert!(accepted < 1 << 20, "the queue is bounded");
    }
    assert!(accepted >= 64 * 1024);
    assert!(pair.server.wants_output());
    // Draining output makes room again.
    pair.pump().unwrap();
    pair.server.write_plaintext(&chunk).unwrap();
}

/// Reads everything the server has decrypted into `sink`.
fn drain_server(pair: &mut Pair, sink: &mut Vec<u8>) {
    while pair.server.read_plaintext(sink, SEGMENT_BYTES) > 0 {}
}

#[test]
fn one_mebibyte_each_way_in_small_chunks() {
    let (_dir, paths) = dev_certs();
    let config = server_config(&settings(&paths)).unwrap();
    for versions in [BOTH, TLS12] {
        let mut pair = Pair::new(&writer_config(&paths, versions), &config);
        pair.handshake().unwrap();
        let upload: Vec<u8> = (0..1 << 20)
            .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();

        // Client → server: the client writes 1 MiB in segment-sized pieces; the server is fed
        // 1500 bytes at a time and its plaintext is drained 1500 bytes at a time.
        let mut received = Vec::new();
        for piece in upload.chunks(SEGMENT_BYTES) {
            pair.client.writer().write_all(piece).unwrap();
            pair.pump().unwrap();
            drain_server(&mut pair, &mut received);
        }
        while received.len() < upload.len() {
            pair.pump().unwrap();
            let before = received.len();
            drain_server(&mut pair, &mut received);
            assert!(
                received.len() > before || pair.to_server.is_empty(),
                "progress"
            );
            if received.len() == before {
                break;
            }
        }
        assert_eq!(received.len(), upload.len());
        assert!(received == upload, "upload intact");

        // Server → client: echo it back in 1500-byte writes, retrying on backpressure.
        let mut downloaded = Vec::new();
        let mut pieces = received.chunks(SEGMENT_BYTES).peekable();
        while let Some(piece) = pieces.peek() {
            match pair.server.write_plaintext(piece) {
                Ok(()) => {
                    pieces.next();
                }
                Err(SessionError::TxBufferFull { .. }) => {}
                Err(e) => panic!("{e}"),
            }
            pair.pump().unwrap();
            let _ = pair.client.reader().read_to_end(&mut downloaded);
        }
        pair.pump().unwrap();
        let _ = pair.client.reader().read_to_end(&mut downloaded);
        assert_eq!(downloaded.len(), upload.len());
        assert!(downloaded == upload, "download intact");
    }
}

#[test]
fn key_readable_by_others_is_refused() {
    let (_dir, paths) = dev_certs();
    fs::set_permissions(&paths.server_key, fs::Permissions::from_mode(0o644)).unwrap();
    let error = server_config(&settings(&paths)).unwrap_err();
    assert!(
        matches!(&error, TlsError::KeyFileAccess { mode: 0o644, path, .. } if path == &paths.server_key)
    );
    let message = error.to_string();
    assert!(
        message.contains(&paths.server_key.display().to_string()),
        "{message}"
    );
    assert!(message.contains("0644"), "{message}");
    // 0640 is the root:<service group> layout: accepted only when the file's group is the
    // service user's group and root owns it.
    fs::set_permissions(&paths.server_key, fs::Permissions::from_mode(0o640)).unwrap();
    let me = tls_term::KeyOwner::current();
    let stranger_group = TlsSettings {
        key_owner: Some(tls_term::KeyOwner {
            uid: me.uid,
            gid: me.gid.wrapping_add(1),
        }),
        ..settings(&paths)
    };
    assert!(matches!(
        server_config(&stranger_group),
        Err(TlsError::KeyFileAccess { mode: 0o640, .. })
    ));
    if me.uid == 0 {
        server_config(&settings(&paths)).unwrap();
    }
    fs::set_permissions(&paths.server_key, fs::Permissions::from_mode(0o400)).unwrap();
    server_config(&settings(&paths)).unwrap();
}

#[test]
fn clear_errors_for_bad_files() {
    let (dir, paths) = dev_certs();
    let base = settings(&paths);

    let missing = TlsSettings {
        cert_chain: dir.path().join("nope.pem"),
        ..base.clone()
    };
    let error = server_config(&missing).unwrap_err();
    assert!(
        matches!(
            &error,
            TlsError::Missing {
                what: "certificate chain",
                ..
            }
        ),
        "{error}"
    );
    assert!(error.to_string().contains("nope.pem"));

    let missing_key = TlsSettings {
        private_key: dir.path().join("nope.key"),
        ..base.clone()
    };
    assert!(matches!(
        server_config(&missing_key),
        Err(TlsError::Missing {
            what: "private key",
            ..
        })
    ));

    let missing_ca = TlsSettings {
        client_ca: Some(dir.path().join("nope-ca.pem")),
        ..base.clone()
    };
    assert!(matches!(
        server_config(&missing_ca),
        Err(TlsError::Missing {
            what: "client CA",
            ..
        })
    ));

    // A key file given as the certificate chain: valid PEM, but no CERTIFICATE section.
    let no_certs = TlsSettings {
        cert_chain: paths.server_key.clone(),
        ..base.clone()
    };
    let error = server_config(&no_certs).unwrap_err();
    assert!(matches!(&error, TlsError::NoCertificates { .. }), "{error}");

    let empty_key = dir.path().join("empty.key");
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&empty_key)
        .unwrap();
    fs::set_permissions(&empty_key, fs::Permissions::from_mode(0o600)).unwrap();
    let no_key = TlsSettings {
        private_key: empty_key,
        ..base.clone()
    };
    assert!(matches!(
        server_config(&no_key),
        Err(TlsError::NoPrivateKey { .. })
    ));

    // The client's key with the server's certificate.
    fs::set_permissions(&paths.client_key, fs::Permissions::from_mode(0o600)).unwrap();
    let mismatch = TlsSettings {
        private_key: paths.client_key.clone(),
        ..base.clone()
    };
    let error = server_config(&mismatch).unwrap_err();
    assert!(matches!(&error, TlsError::KeyMismatch { .. }), "{error}");
    assert!(error.to_string().contains("client.key"));

    let broken = dir.path().join("broken.pem");
    fs::write(
        &broken,
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let bad_pem = TlsSettings {
        cert_chain: broken,
        ..base
    };
    assert!(matches!(server_config(&bad_pem), Err(TlsError::Pem { .. })));
}

#[test]
fn certs_init_is_idempotent_and_keys_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let tls_dir = dir.path().join("tls");
    let first = certs::init(&tls_dir, SERVICE_IP, false).unwrap();
    assert_eq!(first.written.len(), 8, "{:?}", first.written);
    let names: Vec<_> = fs::read_dir(&tls_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    for name in [
        "ca.pem",
        "ca.key",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
        "reader.pem",
        "reader.key",
    ] {
        assert!(names.contains(&name.to_string()), "{name} in {names:?}");
    }
    assert_eq!(names.len(), 8, "no temporary files left: {names:?}");
    for key in [
        &first.ca_key,
        &first.server_key,
        &first.client_key,
        &first.reader_key,
    ] {
        assert_eq!(
            fs::metadata(key).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            key.display()
        );
    }
    assert_eq!(
        fs::metadata(&tls_dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let snapshot = |paths: &DevCertPaths| -> Vec<Vec<u8>> {
        [
            &paths.ca_cert,
            &paths.ca_key,
            &paths.server_cert,
            &paths.server_key,
            &paths.client_cert,
            &paths.client_key,
        ]
        .iter()
        .map(|p| fs::read(p).unwrap())
        .collect()
    };
    let before = snapshot(&first);

    let second = certs::init(&tls_dir, SERVICE_IP, false).unwrap();
    assert!(second.written.is_empty());
    assert_eq!(snapshot(&second), before);

    // A missing leaf is reissued by the kept CA; nothing else changes.
    fs::remove_file(&first.client_cert).unwrap();
    let third = certs::init(&tls_dir, SERVICE_IP, false).unwrap();
    assert_eq!(
        third.written,
        vec![first.client_key.clone(), first.client_cert.clone()]
    );
    let after = snapshot(&third);
    assert_eq!(after[..4], before[..4]);
    assert_ne!(after[4], before[4]);

    // The reissued client certificate still chains to the kept CA.
    let config = server_config(&TlsSettings::lab(&tls_dir)).unwrap();
    let mut pair = Pair::new(&writer_config(&third, BOTH), &config);
    pair.handshake().unwrap();
    assert_eq!(pair.server.identity(), Some("cn:client"));

    // overwrite issues everything anew.
    let fourth = certs::init(&tls_dir, SERVICE_IP, true).unwrap();
    assert_eq!(fourth.written.len(), 8);
    assert_ne!(fs::read(&fourth.ca_cert).unwrap(), before[0]);

    // Half a CA is an error, not a silent new CA.
    fs::remove_file(&fourth.ca_key).unwrap();
    assert!(matches!(
        certs::init(&tls_dir, SERVICE_IP, false),
        Err(certs::CertError::PartialCa { .. })
    ));
}

#[test]
fn server_certificate_is_valid_for_ip_and_dns_name() {
    let (_dir, paths) = dev_certs();
    let config = server_config(&settings(&paths)).unwrap();
    let client = writer_config(&paths, BOTH);
    for name in [
        ServerName::IpAddress(SERVICE_IP.into()),
        ServerName::try_from("pantera.lab").unwrap(),
    ] {
        let mut pair = Pair::new(&client, &config);
        pair.client = ClientConnection::new(client.clone(), name.clone()).unwrap();
        pair.handshake().unwrap();
        if let ServerName::DnsName(_) = name {
            assert_eq!(pair.server.server_name(), Some("pantera.lab"));
        }
    }
    // Another address is refused by the client: the certificate names only the service's.
    let mut pair = Pair::new(&client, &config);
    pair.client = ClientConnection::new(
        client.clone(),
        ServerName::IpAddress(IpAddr::V4(Ipv4Addr::new(10, 99, 0, 3)).into()),
    )
    .unwrap();
    assert!(matches!(
        pair.pump(),
        Err(Fail::Client(rustls::Error::InvalidCertificate(_)))
    ));
}

#[test]
fn tickets_are_sealed_by_the_locked_ticketer_with_the_configured_lifetime() {
    let (_dir, paths) = dev_certs();
    let config = server_config(&TlsSettings {
        ticket_lifetime_s: 600,
        ..settings(&paths)
    })
    .unwrap();
    assert!(config.ticketer.enabled());
    assert_eq!(config.ticketer.lifetime(), 600);
    // Ours, under the resumption max-age wrapper (crate::aging).
    let ticketer = format!("{:?}", config.ticketer);
    assert!(ticketer.starts_with("MaxAgeTickets") && ticketer.contains("inner: Ticketer"), "{ticketer}");
    let ticket = config.ticketer.encrypt(b"state").unwrap();
    assert_eq!(config.ticketer.decrypt(&ticket).unwrap(), b"state");
}
