//! Figures, not assertions: server-side CPU time of handshakes and bulk transfer, in memory,
//! one thread. Run with
//! `cargo test -p tls-term --release --test bench -- --ignored --nocapture`.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, SupportedProtocolVersion};
use tls_term::{certs, server_config, Session, TlsSettings};

const SERVICE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2));

fn client_config(
    paths: &certs::DevCertPaths,
    versions: &[&'static SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(&paths.ca_cert).unwrap())
        .unwrap();
    let chain = vec![CertificateDer::from_pem_file(&paths.client_cert).unwrap()];
    let key = PrivateKeyDer::from_pem_file(&paths.client_key).unwrap();
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(config)
}

/// Pumps until quiet; returns the time spent inside the server's calls.
fn pump(client: &mut ClientConnection, server: &mut Session) -> Duration {
    let mut server_time = Duration::ZERO;
    let mut wire = Vec::new();
    let mut out = vec![0u8; 64 * 1024];
    loop {
        let mut moved = false;
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire).unwrap();
        }
        let started = Instant::now();
        let mut fed = 0;
        while fed < wire.len() {
            let n = server.handle_input(Instant::now(), &wire[fed..]).unwrap();
            if n == 0 {
                break;
            }
            fed += n;
        }
        let n = server.poll_output(&mut out);
        server_time += started.elapsed();
        assert_eq!(fed, wire.len());
        moved |= fed > 0 || n > 0;
        let mut rest = &out[..n];
        while !rest.is_empty() {
            client.read_tls(&mut rest).unwrap();
            client.process_new_packets().unwrap();
        }
        if !moved {
            return server_time;
        }
    }
}

fn handshakes(
    label: &str,
    config: &Arc<rustls::ServerConfig>,
    client: &Arc<ClientConfig>,
    resume: bool,
) {
    const ROUNDS: u32 = 300;
    let mut total = Duration::ZERO;
    let mut resumed = 0;
    let client = if resume {
        client.clone()
    } else {
        // Without a client session store every handshake is a full one.
        let mut config = (**client).clone();
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    };
    for _ in 0..ROUNDS {
        let client = client.clone();
        let mut c =
            ClientConnection::new(client, ServerName::IpAddress(SERVICE_IP.into())).unwrap();
        let mut s = Session::new(config, Instant::now(), Duration::from_secs(10)).unwrap();
        total += pump(&mut c, &mut s);
        s.write_plaintext(b"x").unwrap();
        total += pump(&mut c, &mut s);
        resumed += u32::from(s.resumed());
    }
    let per = total / ROUNDS;
    println!(
        "{label:<34} server CPU {:>7.1} us/handshake  ({:>6.0} handshakes/s/core), resumed {resumed}/{ROUNDS}",
        per.as_secs_f64() * 1e6,
        1.0 / per.as_secs_f64()
    );
}

#[test]
#[ignore = "benchmark: prints figures"]
fn figures() {
    let dir = tempfile::tempdir().unwrap();
    let paths = certs::init(dir.path(), SERVICE_IP, false).unwrap();
    let config = server_config(&TlsSettings::lab(dir.path())).unwrap();
    let both: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
    let tls12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
    handshakes(
        "TLS 1.3 mTLS full",
        &config,
        &client_config(&paths, both),
        false,
    );
    handshakes(
        "TLS 1.3 mTLS resumed (ticket)",
        &config,
        &client_config(&paths, both),
        true,
    );
    handshakes(
        "TLS 1.2 mTLS full",
        &config,
        &client_config(&paths, tls12),
        false,
    );
    handshakes(
        "TLS 1.2 mTLS resumed (ticket)",
        &config,
        &client_config(&paths, tls12),
        true,
    );

    // Bulk: 64 MiB each way in 16 KiB application writes.
    const TOTAL: usize = 64 << 20;
    let client = client_config(&paths, both);
    let mut c = ClientConnection::new(client, ServerName::IpAddress(SERVICE_IP.into())).unwrap();
    c.set_buffer_limit(None);
    let mut s = Session::new(&config, Instant::now(), Duration::from_secs(10)).unwrap();
    pump(&mut c, &mut s);
    let block = vec![0x5au8; 16 * 1024];
    let mut rx_time = Duration::ZERO;
    let mut plain = Vec::with_capacity(64 * 1024);
    let mut wire = Vec::new();
    let mut received = 0;
    while received < TOTAL {
        c.writer().write_all(&block).unwrap();
        wire.clear();
        while c.wants_write() {
            c.write_tls(&mut wire).unwrap();
        }
        let started = Instant::now();
        let mut fed = 0;
        while fed < wire.len() {
            fed += s.handle_input(Instant::now(), &wire[fed..]).unwrap();
            plain.clear();
            received += s.read_plaintext(&mut plain, usize::MAX);
        }
        rx_time += started.elapsed();
    }
    let mut tx_time = Duration::ZERO;
    let mut sent = 0;
    let mut out = vec![0u8; 64 * 1024];
    let mut sink = vec![0u8; 64 * 1024];
    while sent < TOTAL {
        let started = Instant::now();
        s.write_plaintext(&block).unwrap();
        let mut produced = Vec::new();
        loop {
            let n = s.poll_output(&mut out);
            if n == 0 {
                break;
            }
            produced.extend_from_slice(&out[..n]);
        }
        tx_time += started.elapsed();
        sent += block.len();
        let mut rest = &produced[..];
        while !rest.is_empty() {
            c.read_tls(&mut rest).unwrap();
            c.process_new_packets().unwrap();
            while c.reader().read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        }
    }
    let mb = TOTAL as f64 / 1e6;
    println!(
        "bulk TLS 1.3 {}: decrypt {:.0} MB/s, encrypt {:.0} MB/s (server side, one core)",
        s.cipher_suite().unwrap().as_str().unwrap(),
        mb / rx_time.as_secs_f64(),
        mb / tx_time.as_secs_f64()
    );
}
