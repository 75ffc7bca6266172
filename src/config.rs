//! The appliance's configuration: `pantera.toml`, or the lab's defaults (`serve --lab`).
//!
//! Parsed once at start and validated as a whole; every error names the field and the reason,
//! and nothing is allocated or attached before the configuration is known to be good.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::lab::LabSpec;

/// A configuration error: which field, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: &'static str, reason: String },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { field, reason: reason.into() }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub dataplane: DataplaneSection,
    pub service: ServiceSection,
    #[serde(default)]
    pub tcp: TcpSection,
    pub tls: TlsSection,
    #[serde(default)]
    pub http: HttpSection,
    pub ledger: LedgerSection,
    #[serde(default)]
    pub management: ManagementSection,
    #[serde(default)]
    pub edge: EdgeSection,
    /// `[audit]`: the audit log of every write (src/audit.rs).
    #[serde(default)]
    pub audit: crate::audit::AuditSection,
    #[serde(default)]
    pub shutdown: ShutdownSection,
    /// `[log]`: level and format of the appliance's log (src/logging.rs).
    #[serde(default)]
    pub log: crate::logging::LogSection,
    /// `[sandbox]`: the confinement after start-up (src/sandbox/).
    #[serde(default)]
    pub sandbox: crate::sandbox::SandboxSection,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataplaneSection {
    /// The interface whose queues the appliance takes over. Named by the operator: nothing is
    /// attached anywhere else.
    pub interface: String,
    /// The rx queues to serve, one worker each. Empty: every queue of the interface (a queue
    /// without a socket would lose its flows, docs/facts.md).
    #[serde(default)]
    pub queues: Vec<u32>,
    /// "auto" (native, falling back to generic with a warning), "native" or "generic".
    #[serde(default = "default_xdp_mode")]
    pub xdp_mode: String,
    #[serde(default = "default_frame_count")]
    pub umem_frames: u32,
    #[serde(default = "default_ring_size")]
    pub ring_size: u32,
    /// Loop turns without work before a worker blocks in ppoll(2).
    #[serde(default = "default_busy_poll_turns")]
    pub busy_poll_turns: u32,
}

fn default_xdp_mode() -> String {
    "auto".to_owned()
}
fn default_frame_count() -> u32 {
    16_384
}
fn default_ring_size() -> u32 {
    4_096
}
fn default_busy_poll_turns() -> u32 {
    64
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    pub address: Ipv4Addr,
    #[serde(default = "default_prefix_len")]
    pub prefix_len: u8,
    #[serde(default)]
    pub gateway: Option<Ipv4Addr>,
    /// The gateway's MAC, "02:00:5e:00:01:01": pinned, never learned or rebound from frames
    /// (docs/tcp.md, "Neighbours"). Needs `gateway`. Left out: learned once, then guarded.
    #[serde(default)]
    pub gateway_mac: Option<String>,
    #[serde(default = "default_port")]
    pub port: u16,
    /// "ledger" (HTTPS API, the product) or "echo" (a TCP byte echo, for dataplane tests).
    #[serde(default = "default_app")]
    pub app: String,
}

fn default_prefix_len() -> u8 {
    24
}
fn default_port() -> u16 {
    8443
}
fn default_app() -> String {
    "ledger".to_owned()
}

/// Fields left out take the stack's defaults (`tcp::StackConfig::default`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpSection {
    pub listen_sockets: usize,
    pub connections_max: usize,
    pub connections_per_source_max: usize,
    pub rx_buffer_bytes: usize,
    pub tx_buffer_bytes: usize,
    pub idle_timeout_ms: u64,
    /// "auto" (default), "always" or "off": when SYNs are answered with SYN cookies
    /// (docs/tcp.md, "SYN cookies").
    pub syn_cookies: SynCookies,
    /// In auto mode, cookies engage while this many handshakes wait for their final ACK.
    pub syn_backlog: usize,
    /// Neighbours (gateway and on-link peers) kept resolved, 2..=64 (docs/tcp.md, "Neighbours").
    pub neighbours_max: usize,
}

/// `tcp.syn_cookies`, as written in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SynCookies {
    Auto,
    Always,
    Off,
}

impl From<SynCookies> for tcp::SynCookieMode {
    fn from(mode: SynCookies) -> tcp::SynCookieMode {
        match mode {
            SynCookies::Auto => tcp::SynCookieMode::Auto,
            SynCookies::Always => tcp::SynCookieMode::Always,
            SynCookies::Off => tcp::SynCookieMode::Off,
        }
    }
}

impl Default for TcpSection {
    fn default() -> TcpSection {
        let d = tcp::StackConfig::default();
        TcpSection {
            listen_sockets: d.listen_sockets,
            connections_max: d.connections_max,
            connections_per_source_max: d.connections_per_source_max,
            rx_buffer_bytes: d.rx_buffer_bytes,
            tx_buffer_bytes: d.tx_buffer_bytes,
            idle_timeout_ms: d.idle_timeout_ms,
            syn_cookies: SynCookies::Auto,
            syn_backlog: d.syn_backlog,
            neighbours_max: d.neighbours_max,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    pub cert_chain: PathBuf,
    pub private_key: PathBuf,
    /// With a CA, clients must present a certificate chaining to it (mTLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// "1.2" (default) or "1.3".
    #[serde(default = "default_min_version")]
    pub min_version: String,
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Connections per queue open at TCP whose handshake has not finished; past it the
    /// oldest is evicted (src/handshake.rs).
    #[serde(default = "default_handshakes_pending_max")]
    pub handshakes_pending_max: usize,
    /// Handshake steps (crypto) a worker runs per loop turn.
    #[serde(default = "default_handshakes_per_turn_max")]
    pub handshakes_per_turn_max: usize,
    /// The share of a worker's time handshakes may take while established connections are
    /// busy.
    #[serde(default = "default_handshake_time_share_percent")]
    pub handshake_time_share_percent: u32,
    /// Typed client identity (`dns:`, `email:`, `uri:`, `cn:`) -> "write" | "read", or
    /// `{ role = "write", issuer = "sha256:<hex>" }` to pin the issuing CA.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleValue>,
    /// The role of a client without a certificate (only when `client_ca` is unset):
    /// "none" (default: every request gets 403), "read" or "write".
    #[serde(default = "default_anonymous_role")]
    pub anonymous_role: String,
    /// Lock the whole process's memory (mlockall) so that no key material is swapped out;
    /// restart-only (docs/security.md, "Key custody").
    #[serde(default = "default_lock_memory")]
    pub lock_memory: bool,
    /// CRL files (PEM or DER) of the client CAs; re-read on SIGHUP and when they change
    /// (src/crl.rs).
    #[serde(default)]
    pub crls: Vec<PathBuf>,
    /// How often the CRL files are looked at for a change.
    #[serde(default = "default_crl_reload_interval_ms")]
    pub crl_reload_interval_ms: u64,
    /// A session resumes only within this many seconds of its full handshake; 0: never.
    #[serde(default = "default_resumption_max_age_s")]
    pub resumption_max_age_s: u64,
}

/// One `[tls] roles` value: a role, or a role pinned to the CA that issued the chain.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum RoleValue {
    Role(String),
    Pinned(PinnedRole),
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PinnedRole {
    pub role: String,
    /// `sha256:<hex>` of the issuing CA certificate's DER.
    #[serde(default)]
    pub issuer: Option<String>,
}

impl RoleValue {
    pub fn role(&self) -> &str {
        match self {
            RoleValue::Role(role) => role,
            RoleValue::Pinned(p) => &p.role,
        }
    }

    pub fn issuer(&self) -> Option<&str> {
        match self {
            RoleValue::Role(_) => None,
            RoleValue::Pinned(p) => p.issuer.as_deref(),
        }
    }
}

impl From<&str> for RoleValue {
    fn from(role: &str) -> Self {
        RoleValue::Role(role.to_owned())
    }
}

fn default_crl_reload_interval_ms() -> u64 {
    60_000
}
fn default_resumption_max_age_s() -> u64 {
    tls_term::RESUMPTION_MAX_AGE_S_DEFAULT
}

fn default_lock_memory() -> bool {
    true
}
fn default_min_version() -> String {
    "1.2".to_owned()
}
fn default_handshake_timeout_ms() -> u64 {
    tls_term::HANDSHAKE_TIMEOUT_MS_DEFAULT
}
fn default_handshakes_pending_max() -> usize {
    crate::handshake::HandshakeLimits::default().pending_max
}
fn default_handshakes_per_turn_max() -> usize {
    crate::handshake::HandshakeLimits::default().steps_per_turn_max
}
fn default_handshake_time_share_percent() -> u32 {
    crate::handshake::HandshakeLimits::default().time_share_percent
}
fn default_anonymous_role() -> String {
    "none".to_owned()
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[serde(default)]
pub struct HttpSection {
    pub header_bytes_max: usize,
    pub body_bytes_max: usize,
    pub requests_in_flight_max: usize,
    /// Unsent output plus awaited replies per connection before it stops reading.
    pub output_bytes_max: usize,
    /// Queries per connection waiting for the ledger thread before it stops reading.
    pub queries_in_flight_max: usize,
    /// Deadline for a request head, from its first byte.
    pub head_timeout_ms: u64,
    /// Deadline for a request body, from the end of its head.
    pub body_timeout_ms: u64,
    /// What all the connections of one queue may hold (output, awaited replies, request
    /// buffers) before none of them starts a new request.
    pub queue_budget_bytes_max: usize,
}

/// `http.queue_budget_bytes_max` by default: 64 MiB, what 256 connections at their full
/// `output_bytes_max` would hold.
pub const QUEUE_BUDGET_BYTES_MAX_DEFAULT: usize = 64 << 20;

impl Default for HttpSection {
    fn default() -> HttpSection {
        let d = ledger_svc::http::Limits::default();
        let c = ledger_svc::connection::ConnectionLimits::default();
        HttpSection {
            header_bytes_max: d.header_bytes_max,
            body_bytes_max: d.body_bytes_max,
            requests_in_flight_max: d.requests_in_flight_max,
            output_bytes_max: c.output_bytes_max,
            queries_in_flight_max: c.queries_in_flight_max,
            head_timeout_ms: c.head_timeout.as_millis() as u64,
            body_timeout_ms: c.body_timeout.as_millis() as u64,
            queue_budget_bytes_max: QUEUE_BUDGET_BYTES_MAX_DEFAULT,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LedgerSection {
    /// Where the books live: "embedded" (default: the in-process ledger with its WAL in
    /// `data_dir`) or "tigerbeetle" (a TigerBeetle cluster, `[ledger.tigerbeetle]`; the
    /// appliance keeps no WAL and needs no data directory).
    #[serde(default = "default_backend")]
    pub backend: String,
    /// The formatted data directory (`pantera format`): superblock, WAL, checkpoints.
    /// `wal_dir`, its name before data directories were formatted, is accepted as an alias.
    /// Required with the embedded backend; with "tigerbeetle" it is optional and only the
    /// default home of the audit log. Empty when not given.
    #[serde(alias = "wal_dir", default)]
    pub data_dir: PathBuf,
    /// The cluster this ledger belongs to: `serve` refuses a data directory formatted for
    /// another. An integer, or a decimal string for values past 2^63 (u128, as TigerBeetle's
    /// cluster id).
    #[serde(default, deserialize_with = "deserialize_cluster_id", serialize_with = "serialize_cluster_id")]
    pub cluster_id: u128,
    /// "fsync" (default: a reply only after the batch is on disk) or "none" (benchmarks only).
    #[serde(default = "default_durability")]
    pub durability: String,
    /// A checkpoint after this many batches since the last (docs/ledger.md, "Checkpoints").
    #[serde(default = "default_checkpoint_every_batches")]
    pub checkpoint_every_batches: u64,
    /// ... or after this many events (accounts and transfers), whichever comes first; 0: no
    /// bound by events. Recovery replays per event, so this bounds its time.
    #[serde(default = "default_checkpoint_every_events")]
    pub checkpoint_every_events: u64,
    /// Submissions waiting for the ledger thread, from all workers; past it, 503 Retry-After.
    #[serde(default = "default_queue_depth_max")]
    pub queue_depth_max: usize,
    /// Events applied in one group commit (the batch may hold several requests).
    #[serde(default = "default_batch_events_max")]
    pub batch_events_max: usize,
    /// Batches written to the WAL and not yet durable, at most: 1 runs each batch's fsync on
    /// the ledger thread before the next batch is applied; 2 runs it on the WAL syncer thread
    /// (`wal-sync`) while the next batch is applied and written (docs/ledger.md "Pipelined
    /// group commit"). Replies leave only after their batch is durable either way.
    #[serde(default = "default_pipeline_depth")]
    pub pipeline_depth: usize,
    /// `[ledger.tigerbeetle]`: the cluster, with `backend = "tigerbeetle"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tigerbeetle: Option<TigerBeetleSection>,
}

/// `[ledger.tigerbeetle]`: how the appliance reaches its TigerBeetle cluster
/// (docs/cluster-backend.md). `ledger.cluster_id` is the cluster's id.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TigerBeetleSection {
    /// Every replica's address, in replica order, as TigerBeetle's `--addresses`:
    /// comma-separated `ipv4:port` (or a bare port for 127.0.0.1).
    pub addresses: String,
    /// The deadline of each request to the cluster: past it, every submission waiting for it
    /// is answered 503 `ledger_unavailable` with Retry-After.
    #[serde(default = "default_tb_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Client sessions, each with at most one request in flight.
    #[serde(default = "default_tb_sessions")]
    pub sessions: usize,
    /// Events joined into one create request (TigerBeetle's bound is 8189 for a 1 MiB request).
    #[serde(default = "default_tb_batch_events_max")]
    pub batch_events_max: usize,
    /// `Retry-After` of a 503 `ledger_unavailable`.
    #[serde(default = "default_tb_retry_after_s")]
    pub retry_after_s: u32,
    /// Imported posts and voids of pending transfers: "refuse" (default: every one is answered
    /// 422, since one whose timestamp is not after its pending transfer's stops every
    /// TigerBeetle 0.16.78 replica for good) or "guard" (sent unless the backend's lookup of
    /// the pending transfer shows it would stop the cluster; safe only while this appliance is
    /// the cluster's only writer, docs/cluster-backend.md).
    #[serde(default = "default_tb_imported_resolutions")]
    pub imported_resolutions: String,
}

impl TigerBeetleSection {
    /// The section with these addresses and every other key at its default (what
    /// `pantera serve --tigerbeetle ADDRESSES` adds to a configuration without one).
    pub fn with_addresses(addresses: &str) -> TigerBeetleSection {
        TigerBeetleSection {
            addresses: addresses.to_owned(),
            request_timeout_ms: default_tb_request_timeout_ms(),
            sessions: default_tb_sessions(),
            batch_events_max: default_tb_batch_events_max(),
            retry_after_s: default_tb_retry_after_s(),
            imported_resolutions: default_tb_imported_resolutions(),
        }
    }
}

/// The bounds of `[ledger.tigerbeetle]` (docs/limits.md).
pub const TB_SESSIONS_MAX: usize = 16;
pub const TB_REQUEST_TIMEOUT_MS_RANGE: std::ops::RangeInclusive<u64> = 50..=60_000;
pub const TB_RETRY_AFTER_S_MAX: u32 = 300;

fn default_backend() -> String {
    "embedded".to_owned()
}
fn default_tb_request_timeout_ms() -> u64 {
    2_000
}
fn default_tb_sessions() -> usize {
    4
}
fn default_tb_batch_events_max() -> usize {
    ledger_svc::BATCH_EVENTS_MAX
}
fn default_tb_retry_after_s() -> u32 {
    1
}
fn default_tb_imported_resolutions() -> String {
    "refuse".to_owned()
}

/// Which ledger serves the API (`ledger.backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Embedded,
    TigerBeetle,
}

/// A u128 from a TOML integer (TOML integers are i64) or a decimal string.
fn deserialize_cluster_id<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<u128, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Integer(i64),
        Text(String),
    }
    match Id::deserialize(deserializer)? {
        Id::Integer(n) => u128::try_from(n).map_err(|_| serde::de::Error::custom("cluster_id must not be negative")),
        Id::Text(text) => text
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("cluster_id {text:?} is not a decimal u128"))),
    }
}

/// The inverse of `deserialize_cluster_id`: an integer while TOML can hold it, else a string.
fn serialize_cluster_id<S: serde::Serializer>(id: &u128, serializer: S) -> Result<S::Ok, S::Error> {
    match i64::try_from(*id) {
        Ok(n) => serializer.serialize_i64(n),
        Err(_) => serializer.serialize_str(&id.to_string()),
    }
}

fn default_durability() -> String {
    "fsync".to_owned()
}
fn default_checkpoint_every_batches() -> u64 {
    LEDGER_CHECKPOINT_EVERY_BATCHES_DEFAULT
}
fn default_checkpoint_every_events() -> u64 {
    LEDGER_CHECKPOINT_EVERY_EVENTS_DEFAULT
}
fn default_queue_depth_max() -> usize {
    4_096
}
fn default_batch_events_max() -> usize {
    ledger_svc::BATCH_EVENTS_MAX * 4
}
fn default_pipeline_depth() -> usize {
    LEDGER_PIPELINE_DEPTH_DEFAULT
}

/// `ledger.pipeline_depth` when the file leaves it out.
pub const LEDGER_PIPELINE_DEPTH_DEFAULT: usize = 1;

/// `ledger.checkpoint_every_batches` when the file leaves it out: 65,536 batches. With the
/// bound by events below, this only has to keep the per-record cost of many small batches in
/// check (a one-transfer batch replays in a few µs); the bound by events does the rest. At
/// the lab's durable load (~8 transfers per batch) a checkpoint comes every ~8 s instead of
/// every 0.5 s at the former 4,096, whose checkpoints, each a full copy of the state, took ~9 %
/// of the process's CPU and raised p99 (docs/PERFORMANCE.md, "Checkpoint cadence").
pub const LEDGER_CHECKPOINT_EVERY_BATCHES_DEFAULT: u64 = 65_536;

/// `ledger.checkpoint_every_events` when the file leaves it out: 2^20 events, about 0.6 s of
/// replay at recovery (docs/ledger.md: 1M transfers replayed in 0.58 s). Before it, the bound
/// by batches alone allowed 4,096 × 8,189 events (~20 s of replay) behind large batches.
pub const LEDGER_CHECKPOINT_EVERY_EVENTS_DEFAULT: u64 = 1 << 20;

/// Edge defence in the XDP program (docs/operations.md "Edge defence"). Fields left out take
/// `dataplane::EdgeConfig::default()`: SYN limit on and generous, no allowlist, stealth off.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct EdgeSection {
    /// SYNs per second one source may send to the service port; 0: no limit.
    pub syn_rate_per_source: u32,
    /// SYNs one source may send at once before the rate applies.
    pub syn_burst_per_source: u32,
    /// Sources whose SYN buckets are remembered (LRU).
    pub syn_sources_max: u32,
    /// Source prefixes ("10.99.0.0/24", or an address for a /32) that may reach the service;
    /// empty: everyone.
    pub allow_sources: Vec<String>,
    /// Drop, rather than pass to the host kernel, every frame on the interface that is not the
    /// service's and not from `host_allow`.
    pub stealth: bool,
    /// With `stealth`, source prefixes whose IPv4 and ARP still reach the host kernel.
    pub host_allow: Vec<String>,
}

impl Default for EdgeSection {
    fn default() -> EdgeSection {
        let d = dataplane::EdgeConfig::default();
        EdgeSection {
            syn_rate_per_source: d.syn_rate_per_source,
            syn_burst_per_source: d.syn_burst_per_source,
            syn_sources_max: d.syn_sources_max,
            allow_sources: Vec::new(),
            stealth: d.stealth,
            host_allow: Vec::new(),
        }
    }
}

fn parse_prefixes(field: &'static str, list: &[String]) -> Result<Vec<dataplane::Ipv4Cidr>, ConfigError> {
    if list.len() > dataplane::EDGE_CIDRS_MAX {
        return Err(invalid(field, format!("{} prefixes, at most {}", list.len(), dataplane::EDGE_CIDRS_MAX)));
    }
    list.iter()
        .enumerate()
        .map(|(i, text)| text.parse().map_err(|reason| invalid(field, format!("entry {i}: {reason}"))))
        .collect()
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagementSection {
    /// Kernel TCP listener for /metrics, /healthz, /readyz: the operator's network.
    pub listen: SocketAddr,
}

impl Default for ManagementSection {
    fn default() -> ManagementSection {
        ManagementSection { listen: "127.0.0.1:9464".parse().expect("valid literal") }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Config::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let config: Config = toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })?;
        config.validate()?;
        Ok(config)
    }

    /// The lab's defaults (docs/design.md): pantera0, 10.99.0.2:8443, mTLS with the dev CA under
    /// `home/tls`, the WAL under `home/wal`.
    pub fn lab(home: &Path) -> Config {
        let spec = LabSpec::standard(1);
        let tls = home.join("tls");
        Config {
            dataplane: DataplaneSection {
                interface: spec.host_if,
                queues: Vec::new(),
                xdp_mode: default_xdp_mode(),
                umem_frames: default_frame_count(),
                ring_size: default_ring_size(),
                busy_poll_turns: default_busy_poll_turns(),
            },
            service: ServiceSection {
                address: spec.service_ipv4,
                prefix_len: spec.prefix_len,
                gateway: None,
                gateway_mac: None,
                port: default_port(),
                app: default_app(),
            },
            tcp: TcpSection::default(),
            tls: TlsSection {
                cert_chain: tls.join("server.pem"),
                private_key: tls.join("server.key"),
                client_ca: Some(tls.join("ca.pem")),
                min_version: default_min_version(),
                handshake_timeout_ms: default_handshake_timeout_ms(),
                handshakes_pending_max: default_handshakes_pending_max(),
                handshakes_per_turn_max: default_handshakes_per_turn_max(),
                handshake_time_share_percent: default_handshake_time_share_percent(),
                roles: [("cn:client", "write"), ("cn:reader", "read")]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), RoleValue::from(v)))
                    .collect(),
                anonymous_role: default_anonymous_role(),
                lock_memory: default_lock_memory(),
                crls: Vec::new(),
                crl_reload_interval_ms: default_crl_reload_interval_ms(),
                resumption_max_age_s: default_resumption_max_age_s(),
            },
            http: HttpSection::default(),
            ledger: LedgerSection {
                backend: default_backend(),
                tigerbeetle: None,
                data_dir: home.join("data"),
                cluster_id: 0,
                durability: default_durability(),
                checkpoint_every_batches: default_checkpoint_every_batches(),
                checkpoint_every_events: default_checkpoint_every_events(),
                queue_depth_max: default_queue_depth_max(),
                batch_events_max: default_batch_events_max(),
                pipeline_depth: default_pipeline_depth(),
            },
            management: ManagementSection::default(),
            edge: EdgeSection::default(),
            audit: crate::audit::AuditSection::default(),
            // No load balancer stands in front of the lab: no grace period to wait out.
            shutdown: ShutdownSection { grace_ms: 0, ..ShutdownSection::default() },
            log: crate::logging::LogSection::default(),
            sandbox: crate::sandbox::SandboxSection::default(),
        }
    }

    /// Checks every field once, before anything is started.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let d = &self.dataplane;
        if d.interface.is_empty() || d.interface.len() > 15 {
            return Err(invalid("dataplane.interface", "must be an interface name of 1..=15 bytes"));
        }
        self.xdp_mode()?;
        let mut queues = d.queues.clone();
        queues.sort_unstable();
        queues.dedup();
        if queues.len() != d.queues.len() {
            return Err(invalid("dataplane.queues", "a queue is listed twice"));
        }
        if !d.umem_frames.is_power_of_two() || !(1024..=1 << 20).contains(&d.umem_frames) {
            return Err(invalid("dataplane.umem_frames", "must be a power of two in 1024..=1048576"));
        }
        if !d.ring_size.is_power_of_two() || !(64..=1 << 16).contains(&d.ring_size) {
            return Err(invalid("dataplane.ring_size", "must be a power of two in 64..=65536"));
        }
        // The fill ring and the rx ring each hold up to ring_size frames, and TX needs frames
        // of its own: with fewer UMEM frames the fill ring starves and RX drops (docs/facts.md).
        // The socket's own check owns that bound (fill + tx rings + an rx batch), so a file
        // `check-config` accepts is one `serve` can open.
        self.xsk_config()
            .validate()
            .map_err(|e| invalid("dataplane.umem_frames", format!("{e} (frame_count is umem_frames, each ring is ring_size)")))?;
        let s = &self.service;
        if s.address.is_unspecified() || s.address.is_multicast() || s.address.is_broadcast() {
            return Err(invalid("service.address", "must be a unicast IPv4 address"));
        }
        if !(1..=32).contains(&s.prefix_len) {
            return Err(invalid("service.prefix_len", "must be 1..=32"));
        }
        if s.port == 0 {
            return Err(invalid("service.port", "must not be 0"));
        }
        self.app()?;
        self.gateway_mac()?;
        // The MAC comes from the interface at start; a locally administered stand-in here.
        self.stack_config([0x02, 0, 0, 0, 0, 1]).validate().map_err(|e| invalid("tcp", e.to_string()))?;
        let t = &self.tls;
        self.tls_min_version()?;
        if !(100..=120_000).contains(&t.handshake_timeout_ms) {
            return Err(invalid("tls.handshake_timeout_ms", "must be 100..=120000"));
        }
        // At least one handshake can always proceed; more pending than the table holds
        // would be a bound that never binds.
        if !(1..=self.tcp.connections_max).contains(&t.handshakes_pending_max) {
            return Err(invalid("tls.handshakes_pending_max", format!("must be 1..=tcp.connections_max ({})", self.tcp.connections_max)));
        }
        if !(1..=64).contains(&t.handshakes_per_turn_max) {
            return Err(invalid("tls.handshakes_per_turn_max", "must be 1..=64"));
        }
        if !(1..=100).contains(&t.handshake_time_share_percent) {
            return Err(invalid("tls.handshake_time_share_percent", "must be 1..=100"));
        }
        self.role_map().map_err(|e| invalid("tls.roles", e.to_string()))?;
        if !(1_000..=86_400_000).contains(&t.crl_reload_interval_ms) {
            return Err(invalid("tls.crl_reload_interval_ms", "must be 1000..=86400000"));
        }
        if t.resumption_max_age_s > tls_term::RESUMPTION_MAX_AGE_S_MAX {
            return Err(invalid("tls.resumption_max_age_s", format!("must be 0..={}", tls_term::RESUMPTION_MAX_AGE_S_MAX)));
        }
        if !t.crls.is_empty() && t.client_ca.is_none() {
            return Err(invalid("tls.crls", "needs tls.client_ca (CRLs revoke client certificates)"));
        }
        match t.anonymous_role.as_str() {
            "none" | "read" | "write" => {}
            other => return Err(invalid("tls.anonymous_role", format!("{other:?} is not \"none\", \"read\" or \"write\""))),
        }
        if t.client_ca.is_some() && t.anonymous_role != "none" {
            return Err(invalid("tls.anonymous_role", "must be \"none\" when client_ca is set (every client has a certificate)"));
        }
        let h = &self.http;
        if !(512..=1 << 20).contains(&h.header_bytes_max) {
            return Err(invalid("http.header_bytes_max", "must be 512..=1048576"));
        }
        if !(1024..=64 << 20).contains(&h.body_bytes_max) {
            return Err(invalid("http.body_bytes_max", "must be 1024..=67108864"));
        }
        if !(1..=1024).contains(&h.requests_in_flight_max) {
            return Err(invalid("http.requests_in_flight_max", "must be 1..=1024"));
        }
        self.connection_limits().validate().map_err(|e| invalid("http", e.to_string()))?;
        if h.queue_budget_bytes_max < h.output_bytes_max {
            return Err(invalid("http.queue_budget_bytes_max", "must be at least http.output_bytes_max"));
        }
        let l = &self.ledger;
        match self.backend()? {
            Backend::Embedded => {
                if l.data_dir.as_os_str().is_empty() {
                    return Err(invalid("ledger.data_dir", "is required with ledger.backend = \"embedded\" (the default)"));
                }
                if l.tigerbeetle.is_some() {
                    return Err(invalid("ledger.tigerbeetle", "applies only with ledger.backend = \"tigerbeetle\""));
                }
            }
            Backend::TigerBeetle => {
                self.tigerbeetle()?;
                if self.audit.enabled && self.audit.path.is_none() && l.data_dir.as_os_str().is_empty() {
                    return Err(invalid(
                        "audit.path",
                        "is required with ledger.backend = \"tigerbeetle\" and no ledger.data_dir (the audit log's default home)",
                    ));
                }
            }
        }
        self.durability()?;
        if l.checkpoint_every_batches == 0 {
            return Err(invalid("ledger.checkpoint_every_batches", "must be at least 1"));
        }
        if !(1..=1 << 20).contains(&l.queue_depth_max) {
            return Err(invalid("ledger.queue_depth_max", "must be 1..=1048576"));
        }
        if l.batch_events_max < ledger_svc::BATCH_EVENTS_MAX {
            return Err(invalid(
                "ledger.batch_events_max",
                format!("must be at least {} (one full request)", ledger_svc::BATCH_EVENTS_MAX),
            ));
        }
        if !(1..=ledger_svc::committer::BATCHES_UNSYNCED_MAX).contains(&l.pipeline_depth) {
            return Err(invalid(
                "ledger.pipeline_depth",
                format!("must be 1 (fsync on the ledger thread) or {} (fsync on the WAL syncer thread)", ledger_svc::committer::BATCHES_UNSYNCED_MAX),
            ));
        }
        self.edge_config()?;
        self.audit.validate()?;
        self.shutdown.validate()?;
        crate::logging::parse_level(&self.log.level).map_err(|e| invalid("log.level", e.to_string()))?;
        Ok(())
    }

    /// The edge defence for the XDP program; every bound checked, the field named.
    pub fn edge_config(&self) -> Result<dataplane::EdgeConfig, ConfigError> {
        let e = &self.edge;
        let edge = dataplane::EdgeConfig {
            syn_rate_per_source: e.syn_rate_per_source,
            syn_burst_per_source: e.syn_burst_per_source,
            syn_sources_max: e.syn_sources_max,
            allow_sources: parse_prefixes("edge.allow_sources", &e.allow_sources)?,
            stealth: e.stealth,
            host_allow: parse_prefixes("edge.host_allow", &e.host_allow)?,
        };
        if !e.host_allow.is_empty() && !e.stealth {
            return Err(invalid("edge.host_allow", "has no effect without edge.stealth = true"));
        }
        // As for `tcp`: the crate that owns the bounds checks them and names the field.
        edge.validate().map_err(|e| invalid("edge", e.to_string()))?;
        Ok(edge)
    }

    pub fn xdp_mode(&self) -> Result<dataplane::XdpMode, ConfigError> {
        match self.dataplane.xdp_mode.as_str() {
            "auto" => Ok(dataplane::XdpMode::Auto),
            "native" => Ok(dataplane::XdpMode::Native),
            "generic" => Ok(dataplane::XdpMode::Generic),
            other => Err(invalid("dataplane.xdp_mode", format!("{other:?} is not auto, native or generic"))),
        }
    }

    pub fn app(&self) -> Result<App, ConfigError> {
        match self.service.app.as_str() {
            "ledger" => Ok(App::Ledger),
            "echo" => Ok(App::Echo),
            other => Err(invalid("service.app", format!("{other:?} is not \"ledger\" or \"echo\""))),
        }
    }

    /// `ledger.backend`. A binary built without the `tigerbeetle` feature refuses
    /// "tigerbeetle" and says how to build one that has it.
    pub fn backend(&self) -> Result<Backend, ConfigError> {
        match self.ledger.backend.as_str() {
            "embedded" => Ok(Backend::Embedded),
            "tigerbeetle" if cfg!(feature = "tigerbeetle") => Ok(Backend::TigerBeetle),
            "tigerbeetle" => Err(invalid(
                "ledger.backend",
                "\"tigerbeetle\" needs a binary built with the `tigerbeetle` feature (`cargo xtask tigerbeetle build`, then `cargo build --release --features tigerbeetle`)",
            )),
            other => Err(invalid("ledger.backend", format!("{other:?} is not \"embedded\" or \"tigerbeetle\""))),
        }
    }

    /// `[ledger.tigerbeetle]`, checked: required with `backend = "tigerbeetle"`.
    pub fn tigerbeetle(&self) -> Result<&TigerBeetleSection, ConfigError> {
        let t = self
            .ledger
            .tigerbeetle
            .as_ref()
            .ok_or_else(|| invalid("ledger.tigerbeetle", "is required with ledger.backend = \"tigerbeetle\" (at least `addresses`)"))?;
        parse_tb_addresses(&t.addresses)?;
        if !TB_REQUEST_TIMEOUT_MS_RANGE.contains(&t.request_timeout_ms) {
            return Err(invalid(
                "ledger.tigerbeetle.request_timeout_ms",
                format!("must be {}..={}", TB_REQUEST_TIMEOUT_MS_RANGE.start(), TB_REQUEST_TIMEOUT_MS_RANGE.end()),
            ));
        }
        if !(1..=TB_SESSIONS_MAX).contains(&t.sessions) {
            return Err(invalid("ledger.tigerbeetle.sessions", format!("must be 1..={TB_SESSIONS_MAX}")));
        }
        if !(1..=ledger_svc::BATCH_EVENTS_MAX).contains(&t.batch_events_max) {
            return Err(invalid(
                "ledger.tigerbeetle.batch_events_max",
                format!("must be 1..={} (the events of one 1 MiB TigerBeetle request)", ledger_svc::BATCH_EVENTS_MAX),
            ));
        }
        if !(1..=TB_RETRY_AFTER_S_MAX).contains(&t.retry_after_s) {
            return Err(invalid("ledger.tigerbeetle.retry_after_s", format!("must be 1..={TB_RETRY_AFTER_S_MAX}")));
        }
        if !matches!(t.imported_resolutions.as_str(), "refuse" | "guard") {
            return Err(invalid("ledger.tigerbeetle.imported_resolutions", format!("must be \"refuse\" or \"guard\", not {:?}", t.imported_resolutions)));
        }
        Ok(t)
    }

    pub fn durability(&self) -> Result<ledger_svc::Durability, ConfigError> {
        match self.ledger.durability.as_str() {
            "fsync" => Ok(ledger_svc::Durability::Fsync),
            "none" => Ok(ledger_svc::Durability::None),
            other => Err(invalid("ledger.durability", format!("{other:?} is not \"fsync\" or \"none\""))),
        }
    }

    pub fn tls_min_version(&self) -> Result<tls_term::TlsVersion, ConfigError> {
        match self.tls.min_version.as_str() {
            "1.2" => Ok(tls_term::TlsVersion::Tls12),
            "1.3" => Ok(tls_term::TlsVersion::Tls13),
            other => Err(invalid("tls.min_version", format!("{other:?} is not \"1.2\" or \"1.3\""))),
        }
    }

    /// `service.gateway_mac` parsed: six hexadecimal octets separated by colons.
    pub fn gateway_mac(&self) -> Result<Option<[u8; 6]>, ConfigError> {
        let Some(text) = &self.service.gateway_mac else {
            return Ok(None);
        };
        let octets: Vec<u8> = text
            .split(':')
            .map(|octet| {
                if octet.len() == 2 {
                    u8::from_str_radix(octet, 16).ok()
                } else {
                    None
                }
            })
            .collect::<Option<_>>()
            .ok_or_else(|| invalid("service.gateway_mac", format!("{text:?} is not a MAC like \"02:00:5e:00:01:01\"")))?;
        let mac: [u8; 6] = octets
            .try_into()
            .map_err(|_| invalid("service.gateway_mac", format!("{text:?} is not six octets")))?;
        Ok(Some(mac))
    }

    pub fn stack_config(&self, mac: [u8; 6]) -> tcp::StackConfig {
        tcp::StackConfig {
            mac,
            ipv4: self.service.address,
            prefix_len: self.service.prefix_len,
            gateway: self.service.gateway,
            // Checked by `validate` (a malformed value never gets here).
            gateway_mac: self.gateway_mac().ok().flatten(),
            neighbours_max: self.tcp.neighbours_max,
            port: self.service.port,
            listen_sockets: self.tcp.listen_sockets,
            connections_max: self.tcp.connections_max,
            // A per-source bound above the table is the table.
            connections_per_source_max: self.tcp.connections_per_source_max.min(self.tcp.connections_max),
            rx_buffer_bytes: self.tcp.rx_buffer_bytes,
            tx_buffer_bytes: self.tcp.tx_buffer_bytes,
            idle_timeout_ms: self.tcp.idle_timeout_ms,
            syn_cookies: self.tcp.syn_cookies.into(),
            syn_backlog: self.tcp.syn_backlog,
            ..tcp::StackConfig::default()
        }
    }

    pub fn xsk_config(&self) -> dataplane::XskConfig {
        let d = &self.dataplane;
        dataplane::XskConfig {
            frame_count: d.umem_frames,
            rx_ring: d.ring_size,
            tx_ring: d.ring_size,
            fill_ring: d.ring_size,
            comp_ring: d.ring_size,
            busy_poll_turns: d.busy_poll_turns,
            ..dataplane::XskConfig::default()
        }
    }

    pub fn tls_settings(&self) -> Result<tls_term::TlsSettings, ConfigError> {
        let t = &self.tls;
        Ok(tls_term::TlsSettings {
            cert_chain: t.cert_chain.clone(),
            private_key: t.private_key.clone(),
            client_ca: t.client_ca.clone(),
            min_version: self.tls_min_version()?,
            handshake_timeout_ms: t.handshake_timeout_ms,
            key_owner: Some(self.key_owner()?),
            crls: t.crls.clone(),
            resumption_max_age_s: t.resumption_max_age_s,
            // Ticket keys are erased within the ticket lifetime: no longer than a session may
            // resume (with resumption off no ticketer is built; the default stands).
            ticket_lifetime_s: match t.resumption_max_age_s {
                0 => tls_term::TICKET_LIFETIME_S_DEFAULT,
                age => u32::try_from(age)
                    .unwrap_or(u32::MAX)
                    .clamp(tls_term::TICKET_LIFETIME_S_MIN, tls_term::TICKET_LIFETIME_S_DEFAULT),
            },
            ..tls_term::TlsSettings::default()
        })
    }

    /// Who may own `tls.private_key`: the user the process serves as (`sandbox.user`, or the
    /// user it was started as).
    pub fn key_owner(&self) -> Result<tls_term::KeyOwner, ConfigError> {
        let user = crate::sandbox::ServiceUser::resolve(&self.sandbox).map_err(|e| invalid("sandbox.user", e))?;
        Ok(tls_term::KeyOwner { uid: user.uid, gid: user.gid })
    }

    /// Every per-connection bound of an HTTPS connection (TLS, HTTP, backpressure, deadlines);
    /// `validate` checks them, as it checks `stack_config`.
    pub fn connection_limits(&self) -> ledger_svc::connection::ConnectionLimits {
        let h = &self.http;
        ledger_svc::connection::ConnectionLimits {
            output_bytes_max: h.output_bytes_max,
            queries_in_flight_max: h.queries_in_flight_max,
            head_timeout: std::time::Duration::from_millis(h.head_timeout_ms),
            body_timeout: std::time::Duration::from_millis(h.body_timeout_ms),
            idle_timeout: std::time::Duration::from_millis(self.tcp.idle_timeout_ms),
            http: self.http_limits(),
            session: tls_term::SessionLimits {
                handshake_timeout: std::time::Duration::from_millis(self.tls.handshake_timeout_ms),
                ..tls_term::SessionLimits::default()
            },
        }
    }

    /// The bound on one queue's unfinished TLS handshakes and the pacing of their crypto.
    pub fn handshake_limits(&self) -> crate::handshake::HandshakeLimits {
        crate::handshake::HandshakeLimits {
            pending_max: self.tls.handshakes_pending_max,
            steps_per_turn_max: self.tls.handshakes_per_turn_max,
            time_share_percent: self.tls.handshake_time_share_percent,
        }
    }

    /// The bound on what all the HTTPS connections of one queue hold.
    pub fn queue_budget(&self) -> ledger_svc::connection::Budget {
        ledger_svc::connection::Budget::new(self.http.queue_budget_bytes_max)
    }

    pub fn http_limits(&self) -> ledger_svc::http::Limits {
        ledger_svc::http::Limits {
            header_bytes_max: self.http.header_bytes_max,
            body_bytes_max: self.http.body_bytes_max,
            requests_in_flight_max: self.http.requests_in_flight_max,
            ..ledger_svc::http::Limits::default()
        }
    }

    pub fn ledger_config(&self) -> Result<ledger_svc::LedgerConfig, ConfigError> {
        Ok(ledger_svc::LedgerConfig {
            durability: self.durability()?,
            checkpoint_every_batches: self.ledger.checkpoint_every_batches,
            checkpoint_every_events: self.ledger.checkpoint_every_events,
            ..ledger_svc::LedgerConfig::default()
        })
    }

    /// Typed identity -> role (and issuer pin), and the role of a client without a
    /// certificate; `validate` has checked it builds.
    pub fn role_map(&self) -> Result<tls_term::RoleMap, tls_term::RoleError> {
        let entries = self.tls.roles.iter().map(|(k, v)| (k.as_str(), v.role(), v.issuer().map(str::to_owned)));
        Ok(tls_term::RoleMap::from_entries(entries)?.with_anonymous(self.tls.anonymous_role.parse().ok()))
    }

    /// What the TLS sessions apply: roles, the client trust loaded with the server
    /// configuration (`tls_term::server_tls`) and the resumption bound.
    pub fn client_policy(&self, trust: Option<std::sync::Arc<tls_term::ClientTrust>>) -> Result<tls_term::ClientPolicy, ConfigError> {
        Ok(tls_term::ClientPolicy {
            roles: self.role_map().map_err(|e| invalid("tls.roles", e.to_string()))?,
            trust,
            resumption_max_age_s: self.tls.resumption_max_age_s,
        })
    }

    /// The CRL files the appliance reads while serving (SIGHUP and the CRL timer): the
    /// sandbox must leave them readable.
    pub fn crl_paths(&self) -> &[PathBuf] {
        &self.tls.crls
    }
}

/// The replica addresses of `ledger.tigerbeetle.addresses`: 1 to 6 of `ipv4:port` or a bare
/// port (127.0.0.1), as TigerBeetle parses them (no host names: the client resolves nothing).
pub fn parse_tb_addresses(text: &str) -> Result<Vec<SocketAddr>, ConfigError> {
    let field = "ledger.tigerbeetle.addresses";
    let addresses = text
        .split(',')
        .map(|a| {
            let a = a.trim();
            if let Ok(port) = a.parse::<u16>() {
                return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
            }
            a.parse::<std::net::SocketAddrV4>()
                .map(SocketAddr::V4)
                .map_err(|_| invalid(field, format!("{a:?} is not an ipv4:port or a port (TigerBeetle takes addresses, not host names)")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if !(1..=6).contains(&addresses.len()) {
        return Err(invalid(field, "must list 1 to 6 replicas"));
    }
    if addresses.iter().any(|a| a.port() == 0) {
        return Err(invalid(field, "port 0 is not an address"));
    }
    Ok(addresses)
}

/// Which application the workers run over TCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum App {
    Ledger,
    Echo,
}

/// How the appliance stops on SIGTERM/SIGINT (docs/operations.md "Stopping: drain and hard
/// stop"): `/readyz` turns 503 at once and traffic is served normally for `grace_ms`, so load
/// balancers stop sending; then the workers drain; `timeout_ms` after the signal the stop is
/// finished whatever is left (nginx `worker_shutdown_timeout`, HAProxy `hard-stop-after`).
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownSection {
    /// From the signal to the start of the drain: not ready, still serving.
    pub grace_ms: u64,
    /// From the signal to the hard stop.
    pub timeout_ms: u64,
}

/// The longest grace period: a load balancer's health check interval times a few failures.
const SHUTDOWN_GRACE_MS_MAX: u64 = 300_000;
/// The longest stop: under systemd's default `TimeoutStopSec` ceiling of practice.
const SHUTDOWN_TIMEOUT_MS_MAX: u64 = 600_000;
/// The shortest drain (timeout minus grace): time to answer what the ledger is committing.
const SHUTDOWN_DRAIN_MS_MIN: u64 = 100;

impl Default for ShutdownSection {
    fn default() -> ShutdownSection {
        ShutdownSection { grace_ms: 5_000, timeout_ms: 30_000 }
    }
}

impl ShutdownSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.grace_ms > SHUTDOWN_GRACE_MS_MAX {
            return Err(invalid("shutdown.grace_ms", format!("is {}; it must be 0..={SHUTDOWN_GRACE_MS_MAX}", self.grace_ms)));
        }
        if self.timeout_ms > SHUTDOWN_TIMEOUT_MS_MAX {
            return Err(invalid("shutdown.timeout_ms", format!("is {}; it must be at most {SHUTDOWN_TIMEOUT_MS_MAX}", self.timeout_ms)));
        }
        if self.timeout_ms < self.grace_ms + SHUTDOWN_DRAIN_MS_MIN {
            return Err(invalid(
                "shutdown.timeout_ms",
                format!(
                    "is {}; it must exceed shutdown.grace_ms ({}) by at least {SHUTDOWN_DRAIN_MS_MIN} ms, the time the drain gets",
                    self.timeout_ms, self.grace_ms
                ),
            ));
        }
        Ok(())
    }

    pub fn grace(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.grace_ms)
    }

    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.timeout_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[dataplane]
interface = "eth1"
queues = [0, 1]

[service]
address = "192.0.2.10"

[tls]
cert_chain = "/etc/pantera/server.pem"
private_key = "/etc/pantera/server.key"
client_ca = "/etc/pantera/ca.pem"
roles = { "dns:payments-gw" = "write", "cn:audit" = "read" }

[ledger]
data_dir = "/var/lib/pantera/data"
cluster_id = 7
"#;

    #[test]
    fn shutdown_section_defaults_and_a_single_key_parses() {
        let c = Config::parse(Path::new("t.toml"), GOOD).expect("valid");
        assert_eq!(c.shutdown, ShutdownSection { grace_ms: 5_000, timeout_ms: 30_000 });
        let c = Config::parse(Path::new("t.toml"), &format!("{GOOD}\n[shutdown]\ngrace_ms = 300\n")).expect("one key");
        assert_eq!(c.shutdown, ShutdownSection { grace_ms: 300, timeout_ms: 30_000 });
        let c = Config::parse(Path::new("t.toml"), &format!("{GOOD}\n[shutdown]\ntimeout_ms = 6000\n")).expect("one key");
        assert_eq!(c.shutdown, ShutdownSection { grace_ms: 5_000, timeout_ms: 6_000 });
    }

    #[test]
    fn shutdown_section_rejects_bad_bounds_naming_the_field() {
        for (toml, field, words) in [
            ("grace_ms = 5000\ntimeout_ms = 5000", "shutdown.timeout_ms", "must exceed shutdown.grace_ms"),
            ("timeout_ms = 1000", "shutdown.timeout_ms", "must exceed shutdown.grace_ms (5000)"),
            ("grace_ms = 400000", "shutdown.grace_ms", "0..=300000"),
            ("timeout_ms = 700000", "shutdown.timeout_ms", "at most 600000"),
        ] {
            let e = Config::parse(Path::new("t.toml"), &format!("{GOOD}\n[shutdown]\n{toml}\n")).expect_err(toml).to_string();
            assert!(e.contains(field) && e.contains(words), "{toml}: {e}");
        }
        let e = Config::parse(Path::new("t.toml"), &format!("{GOOD}\n[shutdown]\ngrace = 1\n")).expect_err("unknown key").to_string();
        assert!(e.contains("unknown field"), "{e}");
    }

    #[test]
    fn parses_a_minimal_file_with_defaults() {
        let c = Config::parse(Path::new("t.toml"), GOOD).expect("valid");
        assert_eq!(c.service.port, 8443);
        assert_eq!(c.dataplane.queues, vec![0, 1]);
        assert_eq!(c.management.listen.to_string(), "127.0.0.1:9464");
        let roles = c.role_map().unwrap();
        let role_of = |name: &str| roles.entry(&name.parse().unwrap()).map(|e| e.role);
        assert_eq!(role_of("dns:payments-gw"), Some(tls_term::Role::Write));
        assert_eq!(role_of("cn:audit"), Some(tls_term::Role::Read));
        assert_eq!(role_of("cn:payments-gw"), None);
        assert_eq!(roles.resolve(None, || None).role, None);
        assert_eq!(c.tls.resumption_max_age_s, 3_600);
        assert_eq!(c.tls.crl_reload_interval_ms, 60_000);
        let h = c.handshake_limits();
        assert_eq!(h, crate::handshake::HandshakeLimits::default());
        assert_eq!(c.tls.handshake_timeout_ms, 5_000);
    }

    #[test]
    fn roles_take_typed_identities_plain_or_pinned_to_an_issuer() {
        let hex = "ab".repeat(32);
        let text = GOOD.replace(
            r#"roles = { "dns:payments-gw" = "write", "cn:audit" = "read" }"#,
            &format!(
                "roles = {{ \"uri:spiffe://bank.example/pay\" = {{ role = \"write\", issuer = \"sha256:{hex}\" }}, \"email:ops@bank.example\" = \"read\" }}\ncrls = [\"/etc/pantera/clients.crl\"]\nresumption_max_age_s = 0"
            ),
        );
        let c = Config::parse(Path::new("t.toml"), &text).expect("valid");
        let roles = c.role_map().unwrap();
        let pinned = roles.entry(&"uri:spiffe://bank.example/pay".parse().unwrap()).unwrap();
        assert_eq!((pinned.role, pinned.issuer), (tls_term::Role::Write, Some([0xab; 32])));
        assert_eq!(roles.entry(&"email:ops@bank.example".parse().unwrap()).map(|e| e.issuer), Some(None));
        assert_eq!(c.crl_paths(), [PathBuf::from("/etc/pantera/clients.crl")]);
        let settings = c.tls_settings().unwrap();
        assert_eq!((settings.resumption_max_age_s, settings.crls.len()), (0, 1));
        // A pinned entry with an unknown field is refused, not ignored.
        let e = error_of(&text.replace("role = \"write\",", "role = \"write\", ca = \"x\","));
        assert!(e.contains("tls.roles") || e.contains("roles"), "{e}");
        // CRLs revoke client certificates: without a client CA they are a mistake.
        let e = error_of(&text.replace("client_ca = \"/etc/pantera/ca.pem\"\n", ""));
        assert!(e.contains("tls.crls"), "{e}");
    }

    #[test]
    fn ledger_data_dir_takes_wal_dir_as_an_alias_and_cluster_ids_up_to_u128() {
        let c = Config::parse(Path::new("t.toml"), GOOD).expect("valid");
        assert_eq!(c.ledger.data_dir, Path::new("/var/lib/pantera/data"));
        assert_eq!(c.ledger.cluster_id, 7);
        let old = GOOD.replace("data_dir = ", "wal_dir = ").replace("cluster_id = 7\n", "");
        let c = Config::parse(Path::new("t.toml"), &old).expect("wal_dir is an alias");
        assert_eq!(c.ledger.data_dir, Path::new("/var/lib/pantera/data"));
        assert_eq!(c.ledger.cluster_id, 0);
        let big = GOOD.replace("cluster_id = 7", "cluster_id = \"340282366920938463463374607431768211455\"");
        assert_eq!(Config::parse(Path::new("t.toml"), &big).expect("u128").ledger.cluster_id, u128::MAX);
        for bad in ["cluster_id = -1", "cluster_id = \"12x\"", "cluster_id = 1.5"] {
            let text = GOOD.replace("cluster_id = 7", bad);
            assert!(Config::parse(Path::new("t.toml"), &text).is_err(), "{bad}");
        }
        let both = GOOD.replace("cluster_id = 7", "wal_dir = \"/x\"");
        assert!(Config::parse(Path::new("t.toml"), &both).is_err(), "data_dir and wal_dir both set");
    }

    #[test]
    fn the_lab_defaults_are_valid() {
        Config::lab(Path::new(".pantera")).validate().expect("lab config is valid");
    }

    #[test]
    fn tcp_fields_left_out_take_the_stack_defaults() {
        let config = Config::parse(Path::new("t.toml"), &format!("{GOOD}\n[tcp]\nconnections_max = 10000\n")).expect("valid");
        let d = tcp::StackConfig::default();
        assert_eq!(config.tcp.connections_max, 10_000);
        assert_eq!(config.tcp.listen_sockets, d.listen_sockets);
        assert_eq!(config.tcp.rx_buffer_bytes, d.rx_buffer_bytes);
        assert_eq!(config.tcp.tx_buffer_bytes, d.tx_buffer_bytes);
        assert_eq!(config.tcp.idle_timeout_ms, d.idle_timeout_ms);
        assert_eq!(config.stack_config([2, 0, 0, 0, 0, 1]).syn_cookies, tcp::SynCookieMode::Auto);
        assert_eq!(config.stack_config([2, 0, 0, 0, 0, 1]).syn_backlog, d.syn_backlog);
    }

    #[test]
    fn syn_cookie_modes_parse_and_others_are_refused() {
        for (text, mode) in [("always", tcp::SynCookieMode::Always), ("off", tcp::SynCookieMode::Off), ("auto", tcp::SynCookieMode::Auto)] {
            let config = Config::parse(Path::new("t.toml"), &format!("{GOOD}\n[tcp]\nsyn_cookies = \"{text}\"\nsyn_backlog = 8\n")).expect("valid");
            assert_eq!(config.stack_config([2, 0, 0, 0, 0, 1]).syn_cookies, mode);
            assert_eq!(config.stack_config([2, 0, 0, 0, 0, 1]).syn_backlog, 8);
        }
        let e = error_of(&format!("{GOOD}\n[tcp]\nsyn_cookies = \"sometimes\"\n"));
        assert!(e.contains("syn_cookies") || e.contains("sometimes"), "{e}");
        let e = error_of(&format!("{GOOD}\n[tcp]\nsyn_backlog = 0\n"));
        assert!(e.contains("syn_backlog"), "{e}");
    }

    #[test]
    fn gateway_mac_is_parsed_and_checked() {
        let with = |line: &str| GOOD.replace("[service]", &format!("[service]\ngateway = \"192.0.2.1\"\n{line}"));
        let config = Config::parse(Path::new("t.toml"), &with("gateway_mac = \"02:00:5E:00:01:0a\"")).expect("valid");
        assert_eq!(config.gateway_mac().unwrap(), Some([0x02, 0, 0x5e, 0, 1, 0x0a]));
        assert_eq!(config.stack_config([2, 0, 0, 0, 0, 9]).gateway_mac, Some([0x02, 0, 0x5e, 0, 1, 0x0a]));
        assert_eq!(config.tcp.neighbours_max, tcp::StackConfig::default().neighbours_max);
        for bad in ["02:00:5e:00:01", "02-00-5e-00-01-01", "02:00:5e:00:01:1", "zz:00:5e:00:01:01"] {
            let e = error_of(&with(&format!("gateway_mac = \"{bad}\"")));
            assert!(e.contains("service.gateway_mac"), "{bad}: {e}");
        }
        // Multicast, and a gateway MAC without a gateway.
        let e = error_of(&with("gateway_mac = \"01:00:5e:00:00:01\""));
        assert!(e.contains("gateway_mac"), "{e}");
        let e = error_of(&GOOD.replace("[service]", "[service]\ngateway_mac = \"02:00:5e:00:01:01\""));
        assert!(e.contains("gateway_mac"), "{e}");
        let e = error_of(&format!("{GOOD}\n[tcp]\nneighbours_max = 65\n"));
        assert!(e.contains("neighbours_max"), "{e}");
    }

    fn error_of(text: &str) -> String {
        Config::parse(Path::new("t.toml"), text).expect_err("must be refused").to_string()
    }

    #[test]
    fn a_tigerbeetle_section_from_addresses_alone_has_the_parsed_defaults() {
        // `serve --tigerbeetle ADDRESSES` builds the section in code; a file with only
        // `addresses` must mean the same.
        let parsed: TigerBeetleSection = toml::from_str("addresses = \"3000,3001\"").expect("valid");
        assert_eq!(TigerBeetleSection::with_addresses("3000,3001"), parsed);
    }

    #[test]
    fn the_ledger_backend_is_embedded_by_default_and_tigerbeetle_needs_its_section() {
        let c = Config::parse(Path::new("t.toml"), GOOD).expect("valid");
        assert_eq!(c.backend().expect("known"), Backend::Embedded);
        let e = error_of(&GOOD.replace("data_dir = \"/var/lib/pantera/data\"\n", ""));
        assert!(e.contains("ledger.data_dir") && e.contains("embedded"), "{e}");
        let e = error_of(&GOOD.replace("[ledger]", "[ledger]\nbackend = \"postgres\""));
        assert!(e.contains("ledger.backend") && e.contains("postgres"), "{e}");
        let e = error_of(&format!("{GOOD}\n[ledger.tigerbeetle]\naddresses = \"3000\"\n"));
        assert!(e.contains("ledger.tigerbeetle") && e.contains("only with"), "{e}");
        let tb = GOOD.replace("data_dir = \"/var/lib/pantera/data\"\n", "backend = \"tigerbeetle\"\n");
        if !cfg!(feature = "tigerbeetle") {
            let e = error_of(&format!("{tb}\n[ledger.tigerbeetle]\naddresses = \"3000\"\n"));
            assert!(e.contains("ledger.backend") && e.contains("--features tigerbeetle"), "{e}");
            return;
        }
        let e = error_of(&tb);
        assert!(e.contains("ledger.tigerbeetle") && e.contains("addresses"), "{e}");
        // The audit log (on by default) lives beside the data directory unless named.
        let e = error_of(&format!("{tb}\n[ledger.tigerbeetle]\naddresses = \"3000\"\n"));
        assert!(e.contains("audit.path"), "{e}");
        let with = |keys: &str| format!("{tb}\n[ledger.tigerbeetle]\n{keys}\n[audit]\npath = \"/var/log/pantera/audit.log\"\n");
        let c = Config::parse(Path::new("t.toml"), &with("addresses = \"10.0.0.1:3000,10.0.0.2:3000,3002\"")).expect("valid");
        assert_eq!(c.backend().expect("known"), Backend::TigerBeetle);
        let t = c.tigerbeetle().expect("checked");
        assert_eq!((t.request_timeout_ms, t.sessions, t.batch_events_max, t.retry_after_s), (2_000, 4, 8189, 1));
        assert_eq!(parse_tb_addresses(&t.addresses).expect("valid")[2], "127.0.0.1:3002".parse().unwrap());
        for (keys, field) in [
            ("addresses = \"db1:3000\"", "ledger.tigerbeetle.addresses"),
            ("addresses = \"1,2,3,4,5,6,7\"", "ledger.tigerbeetle.addresses"),
            ("addresses = \"3000\"\nsessions = 0", "ledger.tigerbeetle.sessions"),
            ("addresses = \"3000\"\nsessions = 17", "ledger.tigerbeetle.sessions"),
            ("addresses = \"3000\"\nbatch_events_max = 8190", "ledger.tigerbeetle.batch_events_max"),
            ("addresses = \"3000\"\nrequest_timeout_ms = 10", "ledger.tigerbeetle.request_timeout_ms"),
            ("addresses = \"3000\"\nretry_after_s = 0", "ledger.tigerbeetle.retry_after_s"),
            ("addresses = \"3000\"\nimported_resolutions = \"allow\"", "ledger.tigerbeetle.imported_resolutions"),
            ("addresses = \"3000\"\ntimeout = 1", "unknown field"),
        ] {
            let e = error_of(&with(keys));
            assert!(e.contains(field), "{keys}: {e}");
        }
    }

    #[test]
    fn errors_name_the_field_and_the_reason() {
        let e = error_of(&GOOD.replace("[service]", "[service]\nport = 0"));
        assert!(e.contains("service.port"), "{e}");
        let e = error_of(&GOOD.replace("queues = [0, 1]", "queues = [1, 1]"));
        assert!(e.contains("dataplane.queues") && e.contains("twice"), "{e}");
        let e = error_of(&GOOD.replace("\"cn:audit\" = \"read\"", "\"cn:audit\" = \"admin\""));
        assert!(e.contains("tls.roles") && e.contains("admin"), "{e}");
        // An untyped identity: the error says what to write instead.
        let e = error_of(&GOOD.replace("\"cn:audit\" = \"read\"", "\"audit\" = \"read\""));
        assert!(e.contains("tls.roles") && e.contains("\"cn:audit\"") && e.contains("\"dns:audit\""), "{e}");
        let e = error_of(&GOOD.replace("\"cn:audit\" = \"read\"", "\"cn:audit\" = { role = \"read\", issuer = \"sha256:00\" }"));
        assert!(e.contains("tls.roles") && e.contains("issuer"), "{e}");
        let e = error_of(&GOOD.replace("[ledger]", "resumption_max_age_s = 999999\n[ledger]"));
        assert!(e.contains("tls.resumption_max_age_s"), "{e}");
        let e = error_of(&GOOD.replace("[ledger]", "[ledger]\ndurability = \"sometimes\""));
        assert!(e.contains("ledger.durability"), "{e}");
        for depth in [0, 3] {
            let e = error_of(&GOOD.replace("[ledger]", &format!("[ledger]\npipeline_depth = {depth}")));
            assert!(e.contains("ledger.pipeline_depth") && e.contains("must be 1"), "{e}");
        }
        for depth in [1, 2] {
            let text = GOOD.replace("[ledger]", &format!("[ledger]\npipeline_depth = {depth}"));
            assert_eq!(Config::parse(Path::new("t.toml"), &text).expect("valid").ledger.pipeline_depth, depth);
        }
        // The checkpoint bounds reach the ledger: the defaults, and 0 turning the bound by
        // events off (the bound by batches may not be 0).
        let ledger = Config::parse(Path::new("t.toml"), GOOD).expect("valid").ledger_config().expect("ledger");
        assert_eq!((ledger.checkpoint_every_batches, ledger.checkpoint_every_events), (65_536, 1 << 20));
        let text = GOOD.replace("[ledger]", "[ledger]\ncheckpoint_every_batches = 100\ncheckpoint_every_events = 0");
        let ledger = Config::parse(Path::new("t.toml"), &text).expect("valid").ledger_config().expect("ledger");
        assert_eq!((ledger.checkpoint_every_batches, ledger.checkpoint_every_events), (100, 0));
        let e = error_of(&GOOD.replace("[ledger]", "[ledger]\ncheckpoint_every_batches = 0"));
        assert!(e.contains("ledger.checkpoint_every_batches"), "{e}");
        let e = error_of(&GOOD.replace("[dataplane]", "[dataplane]\nxdp_mode = \"offload\""));
        assert!(e.contains("dataplane.xdp_mode"), "{e}");
        let e = error_of(&format!("{GOOD}\n[tcp]\nlisten_sockets = 8\nconnections_max = 64\nrx_buffer_bytes = 1048576\ntx_buffer_bytes = 65535\nidle_timeout_ms = 1000\n"));
        assert!(e.contains("tcp"), "{e}");
        let e = error_of(&GOOD.replace("[service]", "[service]\ncolour = \"red\""));
        assert!(e.contains("colour"), "{e}");
        let e = error_of(&GOOD.replace("[tls]", "[tls]\nanonymous_role = \"write\""));
        assert!(e.contains("tls.anonymous_role"), "{e}");
        let e = error_of(&GOOD.replace("[tls]", "[tls]\nhandshakes_pending_max = 0"));
        assert!(e.contains("tls.handshakes_pending_max"), "{e}");
        let e = error_of(&GOOD.replace("[tls]", "[tls]\nhandshakes_pending_max = 5000"));
        assert!(e.contains("tls.handshakes_pending_max") && e.contains("tcp.connections_max"), "{e}");
        let e = error_of(&GOOD.replace("[tls]", "[tls]\nhandshakes_per_turn_max = 0"));
        assert!(e.contains("tls.handshakes_per_turn_max"), "{e}");
        let e = error_of(&GOOD.replace("[tls]", "[tls]\nhandshake_time_share_percent = 101"));
        assert!(e.contains("tls.handshake_time_share_percent"), "{e}");
    }

    #[test]
    fn the_example_in_the_operations_guide_is_valid() {
        let guide = include_str!("../docs/operations.md");
        let example = guide.split("```toml\n").nth(1).and_then(|b| b.split("```").next()).expect("a toml block");
        let c = Config::parse(Path::new("docs/operations.md"), example).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.edge_config().unwrap(), dataplane::EdgeConfig::default(), "the guide shows the defaults");
    }

    #[test]
    fn the_edge_section_is_optional_validated_and_names_its_fields() {
        let c = Config::parse(Path::new("t.toml"), GOOD).expect("valid");
        assert_eq!(c.edge_config().unwrap(), dataplane::EdgeConfig::default());
        let text = format!(
            "{GOOD}\n[edge]\nsyn_rate_per_source = 200\nsyn_burst_per_source = 400\nallow_sources = [\"10.99.0.0/24\", \"192.0.2.7\"]\nstealth = true\nhost_allow = [\"10.99.0.0/24\"]\n"
        );
        let edge = Config::parse(Path::new("t.toml"), &text).expect("valid").edge_config().unwrap();
        assert_eq!(edge.syn_rate_per_source, 200);
        assert_eq!(edge.allow_sources.len(), 2);
        assert_eq!(edge.allow_sources[1].to_string(), "192.0.2.7/32");
        assert!(edge.stealth);
        let e = error_of(&format!("{GOOD}\n[edge]\nallow_sources = [\"10.99.0.0/24\", \"10.99.0.1/24\"]\n"));
        assert!(e.contains("edge.allow_sources") && e.contains("entry 1") && e.contains("10.99.0.0/24"), "{e}");
        let e = error_of(&format!("{GOOD}\n[edge]\nallow_sources = [\"10.99.0.0/40\"]\n"));
        assert!(e.contains("edge.allow_sources") && e.contains("0..=32"), "{e}");
        let e = error_of(&format!("{GOOD}\n[edge]\nhost_allow = [\"not-an-address\"]\nstealth = true\n"));
        assert!(e.contains("edge.host_allow"), "{e}");
        let e = error_of(&format!("{GOOD}\n[edge]\nhost_allow = [\"10.0.0.0/8\"]\n"));
        assert!(e.contains("edge.host_allow") && e.contains("stealth"), "{e}");
        let e = error_of(&format!("{GOOD}\n[edge]\nsyn_burst_per_source = 0\n"));
        assert!(e.contains("`edge`") && e.contains("syn_burst_per_source"), "{e}");
        let e = error_of(&format!("{GOOD}\n[edge]\nsyn_rate_per_source = 2000000\n"));
        assert!(e.contains("`edge`") && e.contains("syn_rate_per_source"), "{e}");
        let e = error_of(&format!("{GOOD}\n[edge]\nsyn_sources_max = 10\n"));
        assert!(e.contains("`edge`") && e.contains("syn_sources_max"), "{e}");
        let many: Vec<String> = (0..1025).map(|i| format!("\"10.{}.{}.0/24\"", i / 256, i % 256)).collect();
        let e = error_of(&format!("{GOOD}\n[edge]\nallow_sources = [{}]\n", many.join(", ")));
        assert!(e.contains("edge.allow_sources") && e.contains("1024"), "{e}");
        let e = error_of(&format!("{GOOD}\n[edge]\nsyn_per_second = 5\n"));
        assert!(e.contains("syn_per_second"), "{e}");
        // syn_rate_per_source = 0 turns the limit off; the burst is then not checked.
        let off = Config::parse(Path::new("t.toml"), &format!("{GOOD}\n[edge]\nsyn_rate_per_source = 0\nsyn_burst_per_source = 0\n"));
        assert!(off.is_ok());
    }
}
