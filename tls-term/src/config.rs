//! TLS settings and the one `rustls::ServerConfig` every session of the process shares.
//!
//! Policy (docs/tls.md): TLS 1.3 and 1.2 (minimum configurable), AEAD cipher suites with
//! ephemeral (EC)DHE key exchange only, ALPN `http/1.1`, session resumption by a stateful cache
//! and by tickets, and optional mutual TLS against a configured client CA.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::crypto::{ring, CryptoProvider};
use rustls::server::{NoServerSessionStorage, ServerSessionMemoryCache};
use rustls::sign::{CertifiedKey, SingleCertAndKey};
use rustls::{CipherSuite, ServerConfig, SupportedProtocolVersion};

use crate::aging::{MaxAgeCache, MaxAgeTickets};
use crate::trust::ClientTrust;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::CertificateDer;

use crate::key_file::{load_private_key, KeyKind, KeyOwner};
use crate::tickets::{
    Ticketer, TicketerError, TICKET_LIFETIME_S_DEFAULT, TICKET_LIFETIME_S_MAX,
    TICKET_LIFETIME_S_MIN,
};

/// The only application protocol spoken over the tunnel (RFC 7301 ALPN id).
pub const ALPN_HTTP_1_1: &[u8] = b"http/1.1";

/// Default stateful session cache size: about 4096 × ~300 B ≈ 1.2 MiB per process.
pub const SESSION_CACHE_ENTRIES_DEFAULT: usize = 4096;
/// Upper bound on the stateful session cache: keeps a typo from reserving gigabytes.
pub const SESSION_CACHE_ENTRIES_MAX: usize = 1 << 20;
/// Default bound on a resumed session's age, from the full handshake that authenticated the
/// client: one hour, so a revoked or expired client is refused within the hour even by a
/// server whose CRLs are not updated (the re-check on every resumption is immediate).
pub const RESUMPTION_MAX_AGE_S_DEFAULT: u64 = 3_600;
/// One day: rustls' own stateful-ticket lifetime hint, and beyond any honest reuse.
pub const RESUMPTION_MAX_AGE_S_MAX: u64 = 86_400;
/// A client that has not finished its handshake within this time is dropped: it holds a
/// connection slot and handshake state (slowloris at the TLS layer). 5 s: an honest client
/// needs one round trip and its own signature after the server's flight (RFC 8446 §2), far
/// less even on a slow link; the worker's handshake budget (docs/limits.md) bounds how many
/// wait meanwhile.
pub const HANDSHAKE_TIMEOUT_MS_DEFAULT: u64 = 5_000;
/// Ten minutes: anything longer is a misconfiguration, not a slow client.
pub const HANDSHAKE_TIMEOUT_MS_MAX: u64 = 600_000;
/// Default bound on plaintext queued for encryption per session (one HTTP response batch).
pub const PLAINTEXT_BUFFER_BYTES_MAX_DEFAULT: usize = 256 * 1024;
/// Below one maximal TLS record (RFC 8446 §5.1: 2^14 bytes) a session could never send a full
/// record.
pub const PLAINTEXT_BUFFER_BYTES_MIN: usize = 16 * 1024;
/// Per-session upper bound: with thousands of sessions per worker this is already a lot.
pub const PLAINTEXT_BUFFER_BYTES_MAX_LIMIT: usize = 64 * 1024 * 1024;

/// Lowest protocol version the server accepts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TlsVersion {
    /// Accept TLS 1.2 and TLS 1.3 (the default: many payment clients still speak 1.2).
    #[default]
    Tls12,
    /// Accept TLS 1.3 only.
    Tls13,
}

impl TlsVersion {
    fn protocol_versions(self) -> &'static [&'static SupportedProtocolVersion] {
        static BOTH: [&SupportedProtocolVersion; 2] =
            [&rustls::version::TLS13, &rustls::version::TLS12];
        static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
        match self {
            TlsVersion::Tls12 => &BOTH,
            TlsVersion::Tls13 => &TLS13_ONLY,
        }
    }
}

impl std::str::FromStr for TlsVersion {
    type Err = TlsError;

    /// Accepts "1.2"/"tls12"/"TLS1.2" and "1.3"/"tls13"/"TLS1.3".
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let normal: String = s
            .chars()
            .filter(|c| *c != '.' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        match normal.as_str() {
            "12" | "tls12" | "tlsv12" => Ok(TlsVersion::Tls12),
            "13" | "tls13" | "tlsv13" => Ok(TlsVersion::Tls13),
            _ => Err(TlsError::InvalidSetting {
                name: "min_version",
                value: s.to_owned(),
                reason: "expected \"1.2\" or \"1.3\"",
            }),
        }
    }
}

/// Everything the TLS terminator needs to know; see docs/tls.md for each field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM file: the server certificate first, then any intermediates.
    pub cert_chain: PathBuf,
    /// PEM file with the server's private key (PKCS#8, PKCS#1 or SEC1). Owned by the service
    /// user with mode 0600/0400, or by root with the service user's group and mode 0640/0440
    /// ([`crate::check_key_file`]); read into locked memory.
    pub private_key: PathBuf,
    /// PEM file of CA certificates: when set, every client must present a certificate chaining
    /// to one of them (mutual TLS). When unset, no client certificate is requested.
    pub client_ca: Option<PathBuf>,
    /// Lowest protocol version accepted.
    pub min_version: TlsVersion,
    /// Entries of the stateful resumption cache (TLS 1.2 session ids, TLS 1.3 stateful
    /// tickets when `tickets` is off). 0 disables the cache.
    pub session_cache_entries: usize,
    /// Issue stateless resumption tickets (RFC 8446 §4.6.1, RFC 5077), sealed with keys that
    /// live only in this process, in locked memory, and are erased within the ticket lifetime
    /// ([`crate::Ticketer`]).
    pub tickets: bool,
    /// Certificate revocation lists of the client CAs (PEM or DER files), checked on every
    /// full handshake and every resumption.
    pub crls: Vec<PathBuf>,
    /// A session resumes only within this many seconds of the full handshake that
    /// authenticated the client; 0 turns resumption off (no cache, no tickets).
    pub resumption_max_age_s: u64,
    /// Deadline from the first byte of a connection to the end of its handshake.
    pub handshake_timeout_ms: u64,
    /// Bound on plaintext a session queues for encryption ([`crate::Session::write_plaintext`]).
    pub plaintext_buffer_bytes_max: usize,
    /// The user the process serves as, who may own the key file; None: the process's
    /// effective user and group.
    pub key_owner: Option<KeyOwner>,
    /// How long a ticket can be opened after it was issued (and the lifetime announced to
    /// clients): the ticket keys are erased on this schedule ([`crate::Ticketer`]).
    pub ticket_lifetime_s: u32,
}

impl TlsSettings {
    /// Settings for the dev certificates that [`crate::certs::init`] writes into `dir`,
    /// with mutual TLS on.
    pub fn lab(dir: &Path) -> Self {
        let paths = crate::certs::DevCertPaths::in_dir(dir);
        TlsSettings {
            cert_chain: paths.server_cert,
            private_key: paths.server_key,
            client_ca: Some(paths.ca_cert),
            ..TlsSettings::default()
        }
    }

    /// Checks every bound; paths are checked by [`server_config`], which opens them.
    pub fn validate(&self) -> Result<(), TlsError> {
        if self.session_cache_entries > SESSION_CACHE_ENTRIES_MAX {
            return Err(TlsError::InvalidSetting {
                name: "session_cache_entries",
                value: self.session_cache_entries.to_string(),
                reason: "must be at most 1048576",
            });
        }
        if self.handshake_timeout_ms == 0 || self.handshake_timeout_ms > HANDSHAKE_TIMEOUT_MS_MAX {
            return Err(TlsError::InvalidSetting {
                name: "handshake_timeout_ms",
                value: self.handshake_timeout_ms.to_string(),
                reason: "must be in 1..=600000",
            });
        }
        if !(PLAINTEXT_BUFFER_BYTES_MIN..=PLAINTEXT_BUFFER_BYTES_MAX_LIMIT)
            .contains(&self.plaintext_buffer_bytes_max)
        {
            return Err(TlsError::InvalidSetting {
                name: "plaintext_buffer_bytes_max",
                value: self.plaintext_buffer_bytes_max.to_string(),
                reason: "must be in 16384..=67108864",
            });
        }
        if !(TICKET_LIFETIME_S_MIN..=TICKET_LIFETIME_S_MAX).contains(&self.ticket_lifetime_s) {
            return Err(TlsError::InvalidSetting {
                name: "ticket_lifetime_s",
                value: self.ticket_lifetime_s.to_string(),
                reason: "must be in 2..=604800 (RFC 8446 §4.6.1: at most 7 days)",
            });
        }
        if self.resumption_max_age_s > RESUMPTION_MAX_AGE_S_MAX {
            return Err(TlsError::InvalidSetting {
                name: "resumption_max_age_s",
                value: self.resumption_max_age_s.to_string(),
                reason: "must be in 0..=86400",
            });
        }
        if !self.crls.is_empty() && self.client_ca.is_none() {
            return Err(TlsError::InvalidSetting {
                name: "crls",
                value: format!("{} file(s)", self.crls.len()),
                reason: "CRLs need client_ca (they revoke client certificates)",
            });
        }
        for (name, path) in [
            ("cert_chain", &self.cert_chain),
            ("private_key", &self.private_key),
        ] {
            if path.as_os_str().is_empty() {
                return Err(TlsError::InvalidSetting {
                    name,
                    value: String::new(),
                    reason: "path must not be empty",
                });
            }
        }
        Ok(())
    }

    /// The per-session limits derived from these settings, for [`crate::Session::with_limits`].
    pub fn session_limits(&self) -> SessionLimits {
        SessionLimits {
            handshake_timeout: Duration::from_millis(self.handshake_timeout_ms),
            plaintext_buffer_bytes_max: self.plaintext_buffer_bytes_max,
        }
    }
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            cert_chain: PathBuf::from(".pantera/tls/server.pem"),
            private_key: PathBuf::from(".pantera/tls/server.key"),
            client_ca: Some(PathBuf::from(".pantera/tls/ca.pem")),
            min_version: TlsVersion::Tls12,
            session_cache_entries: SESSION_CACHE_ENTRIES_DEFAULT,
            tickets: true,
            crls: Vec::new(),
            resumption_max_age_s: RESUMPTION_MAX_AGE_S_DEFAULT,
            handshake_timeout_ms: HANDSHAKE_TIMEOUT_MS_DEFAULT,
            plaintext_buffer_bytes_max: PLAINTEXT_BUFFER_BYTES_MAX_DEFAULT,
            key_owner: None,
            ticket_lifetime_s: TICKET_LIFETIME_S_DEFAULT,
        }
    }
}

/// Bounds one [`crate::Session`] enforces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionLimits {
    /// Deadline from `Session` creation to the end of the handshake.
    pub handshake_timeout: Duration,
    /// Bound on plaintext queued for encryption and not yet taken by rustls.
    pub plaintext_buffer_bytes_max: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            handshake_timeout: Duration::from_millis(HANDSHAKE_TIMEOUT_MS_DEFAULT),
            plaintext_buffer_bytes_max: PLAINTEXT_BUFFER_BYTES_MAX_DEFAULT,
        }
    }
}

/// Operating errors: the server cannot be configured as asked. Each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("invalid TLS setting {name} = {value:?}: {reason}")]
    InvalidSetting {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("{what} file {path} does not exist")]
    Missing { what: &'static str, path: PathBuf },
    #[error("cannot read {what} file {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("private key {path} (owner {uid}:{gid}, mode {mode:04o}) is refused: {reason}")]
    KeyFileAccess {
        path: PathBuf,
        uid: u32,
        gid: u32,
        mode: u32,
        reason: String,
    },
    #[error("private key file {path} is not a usable PEM key: {reason}")]
    KeyPem { path: PathBuf, reason: String },
    #[error("cannot keep {what} in locked memory: {source}")]
    LockedMemory {
        what: &'static str,
        source: io::Error,
    },
    #[error("{what} file {path} is not valid PEM: {source}")]
    Pem {
        what: &'static str,
        path: PathBuf,
        source: pem::Error,
    },
    #[error("{what} file {path} holds no PEM CERTIFICATE section")]
    NoCertificates { what: &'static str, path: PathBuf },
    #[error("private key file {path} holds no PEM private key section")]
    NoPrivateKey { path: PathBuf },
    #[error("private key {key} does not match the certificate {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot use the certificate {cert} with the key {key}: {source}")]
    CertifiedKey {
        cert: PathBuf,
        key: PathBuf,
        source: rustls::Error,
    },
    #[error(
        "client CA file {path} holds a certificate that is not a usable trust anchor: {source}"
    )]
    BadClientCa {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("cannot build the client certificate verifier from {path}: {source}")]
    ClientVerifier {
        path: PathBuf,
        source: rustls::server::VerifierBuilderError,
    },
    #[error("session tickets: {0}")]
    Tickets(String),
    #[error("CRL file {path}: {reason}")]
    BadCrl { path: PathBuf, reason: String },
    #[error("TLS configuration: {what}: {source}")]
    Rustls {
        what: &'static str,
        source: rustls::Error,
    },
}

/// The cipher suites Pantera allows: AEAD only (RFC 8446 §5.2; for 1.2, RFC 5288 GCM and
/// RFC 7905 ChaCha20-Poly1305) with ephemeral ECDHE (forward secrecy). TLS 1.3 suites carry no
/// key exchange: every TLS 1.3 key exchange is ephemeral (RFC 8446 §2).
pub const ALLOWED_CIPHER_SUITES: &[CipherSuite] = &[
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// rustls' ring provider restricted to [`ALLOWED_CIPHER_SUITES`]. ring's defaults already are
/// exactly these; the filter keeps a future default from widening the policy silently.
pub fn crypto_provider() -> CryptoProvider {
    let mut provider = ring::default_provider();
    provider
        .cipher_suites
        .retain(|suite| ALLOWED_CIPHER_SUITES.contains(&suite.suite()));
    provider
}

/// The server configuration of one set of settings, and the client trust it verifies with.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    /// The client CAs and CRLs (`None` without mTLS), for resumed sessions and issuer pins.
    pub trust: Option<Arc<ClientTrust>>,
}

/// Loads the certificates and key named by `settings` and builds the shared server config.
pub fn server_config(settings: &TlsSettings) -> Result<Arc<ServerConfig>, TlsError> {
    Ok(server_tls(settings)?.config)
}

/// Like [`server_config`], and also returns the client trust the configuration verifies with
/// (one load of the CA and CRL files for both).
pub fn server_tls(settings: &TlsSettings) -> Result<ServerTls, TlsError> {
    build(settings, None, crypto_provider())
}

/// Like [`server_tls`], with another crypto provider: the deterministic simulator's, whose
/// randomness and key exchange come from its seed. Production uses [`crypto_provider`].
pub fn server_tls_with_provider(
    settings: &TlsSettings,
    provider: CryptoProvider,
) -> Result<ServerTls, TlsError> {
    build(settings, None, provider)
}

/// Like [`server_tls`], keeping the session cache and ticket keys of `previous`, a configuration
/// built from the same settings: for a CRL change, after which clients keep resuming their
/// sessions (each resumption is checked against the new CRLs, [`crate::policy`]) instead of
/// all paying a full handshake at once.
pub fn server_tls_keeping_sessions(
    settings: &TlsSettings,
    previous: &ServerConfig,
) -> Result<ServerTls, TlsError> {
    build(settings, Some(previous), crypto_provider())
}

fn build(
    settings: &TlsSettings,
    previous: Option<&ServerConfig>,
    provider: CryptoProvider,
) -> Result<ServerTls, TlsError> {
    settings.validate()?;
    let provider = Arc::new(provider);

    let cert_chain = load_certs("certificate chain", &settings.cert_chain)?;
    let owner = settings.key_owner.unwrap_or_else(KeyOwner::current);
    let certified_key = certified_key(
        cert_chain,
        &settings.private_key,
        &settings.cert_chain,
        owner,
    )?;

    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(settings.min_version.protocol_versions())
        .map_err(|source| TlsError::Rustls {
            what: "protocol versions",
            source,
        })?;

    let trust = match &settings.client_ca {
        Some(ca_path) => Some(Arc::new(ClientTrust::load(
            ca_path,
            &settings.crls,
            provider,
        )?)),
        None => None,
    };
    let builder = match &trust {
        Some(trust) => builder.with_client_cert_verifier(trust.verifier()),
        None => builder.with_no_client_auth(),
    };

    let mut config = builder.with_cert_resolver(Arc::new(SingleCertAndKey::from(certified_key)));

    config.alpn_protocols = vec![ALPN_HTTP_1_1.to_vec()];
    let resumption = settings.resumption_max_age_s > 0;
    // Cache entries and tickets are not resumed past the max age (a full handshake instead),
    // and tickets advertise no longer a lifetime (crate::aging).
    let max_age_s = settings.resumption_max_age_s;
    config.session_storage = if settings.session_cache_entries == 0 || !resumption {
        Arc::new(NoServerSessionStorage {})
    } else {
        Arc::new(MaxAgeCache::new(
            ServerSessionMemoryCache::new(settings.session_cache_entries),
            max_age_s,
        ))
    };
    if settings.tickets && resumption {
        let ticketer = Ticketer::new(settings.ticket_lifetime_s).map_err(|e| match e {
            TicketerError::Lock(source) => TlsError::LockedMemory {
                what: "the session ticket keys",
                source,
            },
            e => TlsError::Tickets(e.to_string()),
        })?;
        config.ticketer = Arc::new(MaxAgeTickets::new(Arc::new(ticketer), max_age_s));
    }
    if !resumption {
        // No TLS 1.3 stateful tickets either: nothing to resume from.
        config.send_tls13_tickets = 0;
    }
    if let Some(previous) = previous {
        config.session_storage = Arc::clone(&previous.session_storage);
        config.ticketer = Arc::clone(&previous.ticketer);
    }
    // 0-RTT stays off (max_early_data_size = 0, rustls' default): early data is replayable
    // (RFC 8446 §8) and every request here moves money.
    debug_assert_eq!(config.max_early_data_size, 0);
    Ok(ServerTls {
        config: Arc::new(config),
        trust,
    })
}

fn check_exists(what: &'static str, path: &Path) -> Result<fs::Metadata, TlsError> {
    fs::metadata(path).map_err(|source| file_error(what, path, source))
}

/// A file that cannot be opened or read: `Missing` when it is not there, else `Io`.
pub(crate) fn file_error(what: &'static str, path: &Path, source: io::Error) -> TlsError {
    match source.kind() {
        io::ErrorKind::NotFound => TlsError::Missing {
            what,
            path: path.to_owned(),
        },
        _ => TlsError::Io {
            what,
            path: path.to_owned(),
            source,
        },
    }
}

fn pem_error(what: &'static str, path: &Path, source: pem::Error) -> TlsError {
    match source {
        pem::Error::Io(source) if source.kind() == io::ErrorKind::NotFound => TlsError::Missing {
            what,
            path: path.to_owned(),
        },
        pem::Error::Io(source) => TlsError::Io {
            what,
            path: path.to_owned(),
            source,
        },
        source => TlsError::Pem {
            what,
            path: path.to_owned(),
            source,
        },
    }
}

/// Every CERTIFICATE section of a PEM file, in file order; at least one.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    check_exists(what, path)?;
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificates {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// The certificate chain with the signing key made from the key file: the DER key is in
/// locked memory while ring parses it, and zeroed as soon as it has (ring keeps its own parsed
/// form: docs/security.md, "Key custody").
fn certified_key(
    cert_chain: Vec<CertificateDer<'static>>,
    key_path: &Path,
    cert_path: &Path,
    owner: KeyOwner,
) -> Result<CertifiedKey, TlsError> {
    let key = load_private_key(key_path, owner)?;
    if key.kind() == KeyKind::Sec1 {
        // rustls wraps a SEC1 key into PKCS#8 in heap buffers of its own before ring reads
        // it: those copies are freed without being zeroed.
        log::warn!(
            "private key {} is SEC1 (\"EC PRIVATE KEY\"): convert it to PKCS#8 (`openssl pkcs8 -topk8 -nocrypt`) so that no unzeroed copy of it is made while loading",
            key_path.display()
        );
    }
    let signing_key =
        ring::sign::any_supported_type(&key.der()).map_err(|source| TlsError::CertifiedKey {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            source,
        })?;
    drop(key);
    let certified = CertifiedKey::new(cert_chain, signing_key);
    // As rustls' `with_single_cert`: the key's public half must be the leaf's; a key type
    // that cannot tell is accepted.
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(TlsError::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            })
        }
        Err(source) => Err(TlsError::CertifiedKey {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_defaults_are_aead_with_forward_secrecy() {
        let defaults = ring::default_provider();
        assert!(!defaults.cipher_suites.is_empty());
        for suite in &defaults.cipher_suites {
            assert!(
                ALLOWED_CIPHER_SUITES.contains(&suite.suite()),
                "ring default suite {:?} is outside the policy",
                suite.suite()
            );
            let name = format!("{:?}", suite.suite());
            // Belt and braces on the names: AEAD (GCM or ChaCha20-Poly1305), and for 1.2 ECDHE.
            assert!(
                name.contains("GCM") || name.contains("CHACHA20_POLY1305"),
                "{name}"
            );
            if name.starts_with("TLS_") {
                assert!(name.starts_with("TLS_ECDHE_"), "{name}");
            }
        }
        // The filter keeps all of them: the policy costs no suite.
        assert_eq!(
            crypto_provider().cipher_suites.len(),
            defaults.cipher_suites.len()
        );
        // Key exchange groups are all ephemeral ECDHE.
        for group in &crypto_provider().kx_groups {
            let name = format!("{:?}", group.name());
            assert!(
                matches!(name.as_str(), "X25519" | "secp256r1" | "secp384r1"),
                "{name}"
            );
        }
    }

    #[test]
    fn validate_checks_bounds() {
        let ok = TlsSettings::default();
        ok.validate().unwrap();
        let bad = TlsSettings {
            handshake_timeout_ms: 0,
            ..ok.clone()
        };
        assert!(matches!(
            bad.validate(),
            Err(TlsError::InvalidSetting {
                name: "handshake_timeout_ms",
                ..
            })
        ));
        let bad = TlsSettings {
            plaintext_buffer_bytes_max: 100,
            ..ok.clone()
        };
        assert!(matches!(
            bad.validate(),
            Err(TlsError::InvalidSetting {
                name: "plaintext_buffer_bytes_max",
                ..
            })
        ));
        let bad = TlsSettings {
            session_cache_entries: usize::MAX,
            ..ok.clone()
        };
        assert!(matches!(
            bad.validate(),
            Err(TlsError::InvalidSetting {
                name: "session_cache_entries",
                ..
            })
        ));
        let bad = TlsSettings {
            ticket_lifetime_s: 1,
            ..ok.clone()
        };
        assert!(matches!(
            bad.validate(),
            Err(TlsError::InvalidSetting {
                name: "ticket_lifetime_s",
                ..
            })
        ));
        let bad = TlsSettings {
            cert_chain: PathBuf::new(),
            ..ok
        };
        assert!(matches!(
            bad.validate(),
            Err(TlsError::InvalidSetting {
                name: "cert_chain",
                ..
            })
        ));
    }

    #[test]
    fn tls_version_parses() {
        assert_eq!("1.2".parse::<TlsVersion>().unwrap(), TlsVersion::Tls12);
        assert_eq!("TLS1.3".parse::<TlsVersion>().unwrap(), TlsVersion::Tls13);
        assert_eq!("tls13".parse::<TlsVersion>().unwrap(), TlsVersion::Tls13);
        assert!("1.1".parse::<TlsVersion>().is_err());
    }
}
