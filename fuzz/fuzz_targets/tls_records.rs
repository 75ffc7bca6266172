//! TLS records from a client into a server `Session` configured as the lab's appliance: the dev
//! CA's server certificate, client certificates required (mTLS).
//!
//! Input: a chunk-size byte, then the bytes the client sends, fed in chunks of that size (TCP
//! may split records anywhere). Properties beyond "no panic": `handle_input` never reports
//! more bytes consumed than it was given; an error is final (every later call returns it); and
//! since the fuzzer cannot sign with a client key the dev CA issued, no input may finish the
//! handshake, so the session never reaches application data.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tls_term::rustls::ServerConfig;
use tls_term::{certs, server_config, Session, TlsSettings};

/// The lab configuration, built once per process: dev certificates are written to a private
/// temporary directory, loaded, and the directory removed.
fn config() -> &'static Arc<ServerConfig> {
    static CONFIG: OnceLock<Arc<ServerConfig>> = OnceLock::new();
    CONFIG.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("pantera-fuzz-tls-{}", std::process::id()));
        let paths = certs::init(&dir, IpAddr::V4(Ipv4Addr::new(10, 99, 0, 2)), true)
            .expect("dev certificates");
        let config = server_config(&TlsSettings::lab(&paths.dir)).expect("lab TLS settings");
        let _ = std::fs::remove_dir_all(&dir);
        config
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, input)) = data.split_first() else { return };
    let chunk = usize::from(chunk).max(1) * 16;
    let now = Instant::now();
    let mut session = Session::new(config(), now, Duration::from_secs(10)).expect("session");
    let mut output = vec![0u8; 16 * 1024];
    let mut plaintext = Vec::new();
    let mut failed = None;

    for piece in input.chunks(chunk) {
        let mut piece = piece;
        // Bounded: each round either consumes bytes or stops.
        while !piece.is_empty() {
            match session.handle_input(now, piece) {
                Ok(consumed) => {
                    assert!(consumed <= piece.len(), "consumed {consumed} of {}", piece.len());
                    assert!(failed.is_none(), "a session that failed took input again");
                    piece = &piece[consumed..];
                    plaintext.clear();
                    let read = session.read_plaintext(&mut plaintext, 64 * 1024);
                    if consumed == 0 && read == 0 {
                        break;
                    }
                }
                Err(error) => {
                    failed = Some(error);
                    break;
                }
            }
            while session.poll_output(&mut output) > 0 {}
        }
        while session.poll_output(&mut output) > 0 {}
        assert!(
            session.is_handshaking() || session.error().is_some() || failed.is_some(),
            "a handshake completed without a client certificate the CA issued"
        );
        assert!(plaintext.is_empty(), "application data before an authenticated handshake");
        if failed.is_some() {
            assert!(session.handle_input(now, b"\x17\x03\x03\x00\x01x").is_err(), "error not final");
            break;
        }
    }
    session.handle_eof();
    let _ = session.handle_timeout(now + Duration::from_secs(11));
    while session.poll_output(&mut output) > 0 {}
});
