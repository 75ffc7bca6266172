//! `tls_cpu`: the server-side CPU time of TLS handshakes and of bulk transfer, in memory, one
//! thread (`tls_term::Session` against a rustls client, no sockets). Figures only; docs/tls.md
//! ("Figures") records a run.
//!
//! ```text
//! cargo run --release -p bench --bin tls_cpu -- [--rounds N] [--bulk-mib N]
//! ```
#![forbid(unsafe_code)]

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Parser;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{
    ClientConfig, ClientConnection, RootCertStore, ServerConfig, SupportedProtocolVersion,
};
use tls_term::{certs, server_config, Session, TlsSettings};

/// The address the dev certificates name; nothing is sent to it (all in memory).
const SERVICE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2));

#[derive(Parser, Debug)]
#[command(about = "Server-side CPU time of TLS handshakes and bulk transfer, in memory")]
struct Args {
    /// Handshakes of each kind.
    #[arg(long, default_value_t = 300)]
    rounds: u32,
    /// MiB sent each way in the bulk measurement, in 16 KiB application writes.
    #[arg(long, default_value_t = 64)]
    bulk_mib: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    ensure!(args.bulk_mib > 0, "--bulk-mib must be at least 1");
    let dir = tempfile::tempdir()?;
    let paths = certs::init(dir.path(), SERVICE_IP, false)?;
    let config = server_config(&TlsSettings::lab(dir.path()))?;
    let both: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
    let tls12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
    for (label, versions, resume) in [
        ("TLS 1.3 mTLS full", both, false),
        ("TLS 1.3 mTLS resumed (ticket)", both, true),
        ("TLS 1.2 mTLS full", tls12, false),
        ("TLS 1.2 mTLS resumed (ticket)", tls12, true),
    ] {
        handshakes(
            label,
            args.rounds,
            &config,
            &client_config(&paths, versions)?,
            resume,
        )?;
    }
    bulk(&config, &client_config(&paths, both)?, args.bulk_mib << 20)
}

fn client_config(
    paths: &certs::DevCertPaths,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&paths.ca_cert).context("CA certificate")?)?;
    let chain =
        vec![CertificateDer::from_pem_file(&paths.client_cert).context("client certificate")?];
    let key = PrivateKeyDer::from_pem_file(&paths.client_key).context("client key")?;
    let mut config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(versions)?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn connect(client: &Arc<ClientConfig>) -> Result<ClientConnection> {
    Ok(ClientConnection::new(
        client.clone(),
        ServerName::IpAddress(SERVICE_IP.into()),
    )?)
}

/// Moves records both ways until neither side has anything to say; returns the time spent
/// inside the server's calls (the client's time is not the appliance's).
fn pump(client: &mut ClientConnection, server: &mut Session) -> Result<Duration> {
    let mut server_time = Duration::ZERO;
    let mut wire = Vec::new();
    let mut out = vec![0u8; 64 * 1024];
    loop {
        wire.clear();
        while client.wants_write() {
            client.write_tls(&mut wire)?;
        }
        let started = Instant::now();
        let mut fed = 0;
        while fed < wire.len() {
            let n = server
                .handle_input(Instant::now(), &wire[fed..])
                .context("server input")?;
            if n == 0 {
                break;
            }
            fed += n;
        }
        let n = server.poll_output(&mut out);
        server_time += started.elapsed();
        ensure!(
            fed == wire.len(),
            "the server took {fed} of {} bytes",
            wire.len()
        );
        let mut rest = &out[..n];
        while !rest.is_empty() {
            client.read_tls(&mut rest)?;
            client.process_new_packets()?;
        }
        if fed == 0 && n == 0 {
            return Ok(server_time);
        }
    }
}

fn handshakes(
    label: &str,
    rounds: u32,
    config: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    resume: bool,
) -> Result<()> {
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
    for _ in 0..rounds {
        let mut c = connect(&client)?;
        let mut s = Session::new(config, Instant::now(), Duration::from_secs(10))
            .context("session")?;
        total += pump(&mut c, &mut s)?;
        // One byte of application data delivers the TLS 1.3 tickets with it.
        s.write_plaintext(b"x")
            .context("write")?;
        total += pump(&mut c, &mut s)?;
        resumed += u32::from(s.resumed());
    }
    let per = total / rounds;
    println!(
        "{label:<34} server CPU {:>7.1} us/handshake  ({:>6.0} handshakes/s/core), resumed {resumed}/{rounds}",
        per.as_secs_f64() * 1e6,
        1.0 / per.as_secs_f64()
    );
    Ok(())
}

/// `total` bytes each way over one TLS 1.3 connection, timing only the server's calls.
fn bulk(config: &Arc<ServerConfig>, client: &Arc<ClientConfig>, total: usize) -> Result<()> {
    let mut c = connect(client)?;
    c.set_buffer_limit(None);
    let mut s = Session::new(config, Instant::now(), Duration::from_secs(10))
        .context("session")?;
    pump(&mut c, &mut s)?;
    let block = vec![0x5au8; 16 * 1024];
    let mut rx_time = Duration::ZERO;
    let mut plain = Vec::with_capacity(64 * 1024);
    let mut wire = Vec::new();
    let mut received = 0;
    while received < total {
        c.writer().write_all(&block)?;
        wire.clear();
        while c.wants_write() {
            c.write_tls(&mut wire)?;
        }
        let started = Instant::now();
        let mut fed = 0;
        while fed < wire.len() {
            let n = s
                .handle_input(Instant::now(), &wire[fed..])
                .context("server input")?;
            ensure!(n > 0, "the server took no bytes of a record");
            fed += n;
            plain.clear();
            received += s.read_plaintext(&mut plain, usize::MAX);
        }
        rx_time += started.elapsed();
    }
    let mut tx_time = Duration::ZERO;
    let mut sent = 0;
    let mut out = vec![0u8; 64 * 1024];
    let mut sink = vec![0u8; 64 * 1024];
    let mut produced = Vec::new();
    while sent < total {
        let started = Instant::now();
        s.write_plaintext(&block)
            .context("write")?;
        produced.clear();
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
            c.read_tls(&mut rest)?;
            c.process_new_packets()?;
            while c.reader().read(&mut sink).map(|n| n > 0).unwrap_or(false) {}
        }
    }
    let mb = total as f64 / 1e6;
    let suite = s.cipher_suite().and_then(|s| s.as_str()).unwrap_or("?");
    println!(
        "bulk TLS 1.3 {suite}: decrypt {:.0} MB/s, encrypt {:.0} MB/s (server side, one core)",
        mb / rx_time.as_secs_f64(),
        mb / tx_time.as_secs_f64()
    );
    Ok(())
}
