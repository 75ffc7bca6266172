//! TLS termination for Pantera (pipeline stage [4], docs/design.md): one rustls server session per
//! TCP connection, driven sans-IO; the mutual-TLS client identity and its role; dev
//! certificates for the lab. Policy and file formats: docs/tls.md.
//!
//! ```text
//! settings ──server_config()──▶ Arc<ServerConfig> ──Session::new()──▶ Session (per connection)
//!   TCP rx ─▶ handle_input ─▶ read_plaintext ─▶ HTTP        HTTP ─▶ write_plaintext ─▶ poll_output ─▶ TCP tx
//!   handshake done ─▶ names_of(leaf) ─▶ RoleMap::resolve() ─▶ identity(), role()
//!   resumed ─▶ ClientPolicy::check_resumed() (chain, CRLs, age) ─▶ refused or on
//! ```
// Unsafe only where memory for secrets is mapped and locked (`secret`) and for the process's
// own uid (`key_file`), each block with its SAFETY comment.
#![deny(unsafe_code)]

pub mod aging;
pub mod certs;
mod config;
pub mod identity;
mod key_file;
mod policy;
mod roles;
mod secret;
mod session;
mod tickets;
mod trust;

pub use config::{
    crypto_provider, load_certs, server_config, server_tls, server_tls_keeping_sessions, server_tls_with_provider, ServerTls,
    SessionLimits, TlsError, TlsSettings, TlsVersion, ALLOWED_CIPHER_SUITES, ALPN_HTTP_1_1,
    HANDSHAKE_TIMEOUT_MS_DEFAULT, HANDSHAKE_TIMEOUT_MS_MAX, PLAINTEXT_BUFFER_BYTES_MAX_DEFAULT,
    PLAINTEXT_BUFFER_BYTES_MAX_LIMIT, PLAINTEXT_BUFFER_BYTES_MIN, RESUMPTION_MAX_AGE_S_DEFAULT,
    RESUMPTION_MAX_AGE_S_MAX, SESSION_CACHE_ENTRIES_DEFAULT, SESSION_CACHE_ENTRIES_MAX,
};
pub use key_file::{check_key_file, load_private_key, KeyKind, KeyOwner, PrivateKey, KEY_FILE_BYTES_MAX};
pub use policy::{AuthenticatedAt, ClientPolicy, ResumptionRefused};
pub use roles::{
    parse_fingerprint, CaFingerprint, Identity, NameKind, Resolved, Role, RoleEntry, RoleError,
    RoleMap, IDENTITY_BYTES_MAX, ROLE_ENTRIES_MAX,
};
pub use secret::{reserve as reserve_locked_memory, Locked, SecretBytes};
pub use session::{Session, SessionError};
pub use tickets::{
    Ticketer, TicketerError, TICKET_LIFETIME_S_DEFAULT, TICKET_LIFETIME_S_MAX,
    TICKET_LIFETIME_S_MIN,
};
pub use trust::{fingerprint, ClientTrust, CrlInfo, CRL_FILES_MAX, CRL_FILE_BYTES_MAX};

/// rustls, re-exported so callers name the same version's types (ServerConfig, ProtocolVersion).
pub use rustls;
