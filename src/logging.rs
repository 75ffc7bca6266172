//! The appliance's log: `tracing` with the `log` crate bridged in, configured by `[log]`.
//!
//! Every crate of the workspace (and smoltcp, rustls) logs through the `log` macros; a
//! `LogTracer` turns those records into `tracing` events, so they get the same filter, format
//! and span context as events made with `tracing` directly. Output goes to stderr (the
//! journal under systemd), as text or one JSON object per line.
//!
//! The level is an `EnvFilter` directive string (`info`, `warn,pantera=debug`). `RUST_LOG`,
//! when set, wins over the configuration at start and over `set_level` later: whoever set it
//! on the command line asked for exactly that. The filter sits behind a reload layer so a
//! configuration reload can change it without restarting (`set_level`).
//!
//! Cost: `log::max_level()` is kept at the filter's most verbose level, so a `log::trace!` on
//! the packet path is one relaxed atomic load and a compare when trace is off, as it was with
//! env_logger; only records that pass it reach the filter.
//!
//! Two warnings come from the traffic itself and could flood the log: a failed TLS handshake
//! and a 403. Each is logged with the peer's address and the reason, at most
//! `WARNINGS_PER_SECOND` lines per second per kind (a token bucket, `RateLimiter`); the lines
//! held back are counted and reported in one "suppressed N similar lines" line.

use std::net::SocketAddr;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::{reload, EnvFilter, Layer, Registry};

/// The `[log]` section of the configuration. Every key is optional.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// An `EnvFilter` directive: a level (`info`), or a level with per-target overrides
    /// (`warn,pantera=debug`). `RUST_LOG`, when set, overrides it.
    pub level: String,
    /// `text` (one human-readable line per event) or `json` (one JSON object per line).
    pub format: LogFormat,
}

impl Default for LogSection {
    fn default() -> LogSection {
        LogSection {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// `log.format`, as written in the file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Why the log could not be set up or changed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid log level {directive:?}: {reason}")]
    InvalidLevel { directive: String, reason: String },
    #[error("the log is not initialised")]
    NotInitialised,
    #[error("the log was already initialised")]
    AlreadyInitialised,
    #[error("cannot change the log level: {0}")]
    Reload(String),
}

/// Parses an `EnvFilter` directive string, refusing one that does not parse (an unknown
/// level, a malformed target) rather than ignoring the bad part.
pub fn parse_level(directive: &str) -> Result<EnvFilter, LogError> {
    let invalid = |reason: String| LogError::InvalidLevel {
        directive: directive.to_owned(),
        reason,
    };
    if directive.trim().is_empty() {
        return Err(invalid("empty".to_owned()));
    }
    // EnvFilter reads a bare word as a target at trace level, so a mistyped level ("inf")
    // would turn everything under a target named "inf" on and leave the rest at the default.
    // A bare word must be a level; a target takes its level after `=`.
    for part in directive
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        if !part.contains('=')
            && !part.contains('[')
            && part.parse::<tracing::level_filters::LevelFilter>().is_err()
        {
            return Err(invalid(format!("{part:?} is not a level (trace, debug, info, warn, error, off); a target takes one as target=level")));
        }
    }
    EnvFilter::builder()
        .parse(directive)
        .map_err(|e| invalid(e.to_string()))
}

/// What `init` installed: the reload handle of the filter, and whether `RUST_LOG` pins it.
struct Installed {
    filter: reload::Handle<EnvFilter, Registry>,
    from_env: bool,
}

static INSTALLED: OnceLock<Installed> = OnceLock::new();

/// The log's filter for the start: `RUST_LOG` when it is set (and says something), else the
/// configured level. Returns the filter and whether it came from the environment.
fn start_filter(
    section: &LogSection,
    rust_log: Option<&str>,
) -> Result<(EnvFilter, bool), LogError> {
    match rust_log.filter(|v| !v.trim().is_empty()) {
        Some(env) => Ok((
            parse_level(env).map_err(|e| match e {
                LogError::InvalidLevel { reason, .. } => LogError::InvalidLevel {
                    directive: format!("RUST_LOG={env}"),
                    reason,
                },
                other => other,
            })?,
            true,
        )),
        None => Ok((parse_level(&section.level)?, false)),
    }
}

/// Installs the process-wide log writing to stderr. Call once, early in `main`: with the
/// configuration's `[log]` for `serve` (read first), else with the defaults. A reload
/// changes the level later (`set_level`); the format stays.
pub fn init(section: &LogSection) -> Result<(), LogError> {
    init_with_writer(
        section,
        std::env::var("RUST_LOG").ok().as_deref(),
        std::io::stderr,
    )
}

/// `init` with the writer and `RUST_LOG` given (the unit tests capture the output).
fn init_with_writer<W>(
    section: &LogSection,
    rust_log: Option<&str>,
    writer: W,
) -> Result<(), LogError>
where
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let (filter, from_env) = start_filter(section, rust_log)?;
    let max = filter.max_level_hint();
    let (filter, handle) = reload::Layer::new(filter);
    let text = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(false);
    // The format is chosen once per process: the JSON and text layers are different types,
    // and a pipeline reading the log would not cope with a change mid-stream anyway.
    let format = match section.format {
        LogFormat::Text => text.boxed(),
        LogFormat::Json => text
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .boxed(),
    };
    let subscriber = Registry::default().with(filter).with(format);
    tracing::subscriber::set_global_default(subscriber)
        .map_err(|_| LogError::AlreadyInitialised)?;
    tracing_log::LogTracer::builder()
        .with_max_level(log::LevelFilter::Trace)
        .init()
        .map_err(|_| LogError::AlreadyInitialised)?;
    set_log_max_level(max);
    INSTALLED
        .set(Installed {
            filter: handle,
            from_env,
        })
        .map_err(|_| LogError::AlreadyInitialised)?;
    Ok(())
}

/// Keeps the `log` crate's own fast check in step with the filter (see the module's "Cost").
fn set_log_max_level(hint: Option<tracing::level_filters::LevelFilter>) {
    use tracing::level_filters::LevelFilter as L;
    let level = match hint {
        None | Some(L::TRACE) => log::LevelFilter::Trace,
        Some(L::DEBUG) => log::LevelFilter::Debug,
        Some(L::INFO) => log::LevelFilter::Info,
        Some(L::WARN) => log::LevelFilter::Warn,
        Some(L::ERROR) => log::LevelFilter::Error,
        Some(_) => log::LevelFilter::Off,
    };
    log::set_max_level(level);
}

/// Changes the log level while running (a configuration reload). A directive that does not
/// parse changes nothing and is returned as an error. While `RUST_LOG` is set it keeps
/// precedence: the call checks the directive, says so at info and changes nothing.
pub fn set_level(directive: &str) -> Result<(), LogError> {
    let filter = parse_level(directive)?;
    let installed = INSTALLED.get().ok_or(LogError::NotInitialised)?;
    if installed.from_env {
        log::info!("log level {directive:?} not applied: RUST_LOG is set and takes precedence");
        return Ok(());
    }
    let max = filter.max_level_hint();
    installed
        .filter
        .reload(filter)
        .map_err(|e| LogError::Reload(e.to_string()))?;
    set_log_max_level(max);
    log::info!("log level now {directive:?}");
    Ok(())
}

/// Lines per second, per kind, of the warnings the traffic causes (and the burst allowed).
pub const WARNINGS_PER_SECOND: u32 = 5;

/// A token bucket: `per_second` lines a second, up to `per_second` at once; the lines it
/// refuses are counted until a line may be written again. The clock is passed in.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    per_second: u32,
    /// Whole tokens are lines; the fraction accrues between calls.
    tokens: f64,
    refilled_at: Option<Instant>,
    suppressed: u64,
}

/// What to do with one line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Write it; `suppressed` lines were held back before it (report them with it).
    Write { suppressed: u64 },
    /// Hold it back (counted).
    Suppress,
}

impl RateLimiter {
    pub fn new(per_second: u32) -> RateLimiter {
        let per_second = per_second.max(1);
        RateLimiter {
            per_second,
            tokens: f64::from(per_second),
            refilled_at: None,
            suppressed: 0,
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = self
            .refilled_at
            .map_or(Duration::ZERO, |at| now.saturating_duration_since(at));
        let cap = f64::from(self.per_second);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * cap).min(cap);
        self.refilled_at = Some(now);
    }

    /// One line wants out at `now`.
    pub fn check(&mut self, now: Instant) -> Verdict {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Verdict::Write {
                suppressed: std::mem::take(&mut self.suppressed),
            }
        } else {
            self.suppressed += 1;
            Verdict::Suppress
        }
    }

    /// The lines held back since the last line written, once a line may be written again (the
    /// summary takes that line's token). `None` while nothing is held back or no token is free.
    pub fn take_suppressed(&mut self, now: Instant) -> Option<u64> {
        if self.suppressed == 0 {
            return None;
        }
        self.refill(now);
        if self.tokens < 1.0 {
            return None;
        }
        self.tokens -= 1.0;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The rate-limited kinds of warning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    HandshakeFailed,
    Forbidden,
}

impl Kind {
    const ALL: [Kind; 2] = [Kind::HandshakeFailed, Kind::Forbidden];

    fn name(self) -> &'static str {
        match self {
            Kind::HandshakeFailed => "tls_handshake_failed",
            Kind::Forbidden => "forbidden",
        }
    }
}

/// One bucket per kind, shared by every worker: these lines are rare next to the traffic
/// (one per failed connection or refused request), so one lock is no contention.
static LIMITERS: Mutex<Option<[RateLimiter; 2]>> = Mutex::new(None);

fn verdict(kind: Kind, now: Instant) -> Verdict {
    let mut guard = LIMITERS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let limiters =
        guard.get_or_insert_with(|| Kind::ALL.map(|_| RateLimiter::new(WARNINGS_PER_SECOND)));
    limiters[kind as usize].check(now)
}

/// Which connection a line is about: the worker's connection slot and the peer's address.
/// Built only when a line is about to be written (see `conn_events`), so the packet path
/// never pays for it.
#[derive(Debug, Clone, Copy, Default)]
pub struct ConnFields {
    pub slot: usize,
    pub peer: Option<SocketAddr>,
}

/// `peer` as written in a line: the address, or `-` when unknown.
fn peer_text(peer: Option<SocketAddr>) -> String {
    peer.map_or_else(|| "-".to_owned(), |p| p.to_string())
}

/// A TLS handshake failed: a warning with the peer and the reason, rate-limited.
pub fn handshake_failed(conn: ConnFields, reason: &str) {
    if !tracing::enabled!(tracing::Level::WARN) {
        return;
    }
    if let Verdict::Write { suppressed } = verdict(Kind::HandshakeFailed, Instant::now()) {
        tracing::warn!(
            kind = Kind::HandshakeFailed.name(),
            slot = conn.slot,
            peer = %peer_text(conn.peer),
            reason,
            suppressed,
            "TLS handshake failed: {reason}"
        );
    }
}

/// A request was refused with 403: a warning with the peer, the client's identity and why,
/// rate-limited.
pub fn forbidden(
    conn: ConnFields,
    identity: Option<&str>,
    role: Option<&str>,
    method: &str,
    route: &str,
) {
    if !tracing::enabled!(tracing::Level::WARN) {
        return;
    }
    if let Verdict::Write { suppressed } = verdict(Kind::Forbidden, Instant::now()) {
        let identity = identity.unwrap_or("-");
        let reason = match role {
            None => "this identity has no role".to_owned(),
            Some(role) => format!("role {role} may not {method} {route}"),
        };
        tracing::warn!(
            kind = Kind::Forbidden.name(),
            slot = conn.slot,
            peer = %peer_text(conn.peer),
            identity,
            reason = %reason,
            suppressed,
            "403 for {identity}: {reason}"
        );
    }
}

/// Writes the "suppressed N similar lines" summary of each kind whose bucket has a token again.
/// Called from the main thread's loop a few times a second, so a flood that ends is still
/// accounted for.
pub fn flush_suppressed() {
    let now = Instant::now();
    let pending: Vec<(Kind, u64)> = {
        let mut guard = LIMITERS
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(limiters) = guard.as_mut() else {
            return;
        };
        Kind::ALL
            .iter()
            .filter_map(|&kind| {
                limiters[kind as usize]
                    .take_suppressed(now)
                    .map(|n| (kind, n))
            })
            .collect()
    };
    for (kind, suppressed) in pending {
        tracing::warn!(
            kind = kind.name(),
            suppressed,
            "suppressed {suppressed} similar lines ({})",
            kind.name()
        );
    }
}

/// Logs what the connection's events say about it: a failed handshake, a 403 (both
/// rate-limited warnings), a completed handshake (debug). `fields` is only called when a line
/// is written.
pub fn connection_event(
    event: &ledger_svc::connection::Event,
    fields: impl FnOnce() -> ConnFields,
) {
    use ledger_svc::connection::Event;
    match event {
        Event::TlsFailed { reason } => handshake_failed(fields(), reason),
        Event::Response(answered) if answered.status == 403 => {
            let write = answered.write.as_ref();
            let role = write.and_then(|w| w.role).map(|r| match r {
                ledger_svc::api::Role::Write => "write",
                ledger_svc::api::Role::Read => "read",
            });
            forbidden(
                fields(),
                write.and_then(|w| w.identity.as_deref()),
                role,
                answered.method,
                answered.route,
            )
        }
        Event::Handshake { version, resumed } if log::log_enabled!(log::Level::Debug) => {
            let f = fields();
            log::debug!(
                "connection {} from {}: TLS {version} handshake done (resumed: {resumed})",
                f.slot,
                peer_text(f.peer)
            );
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_and_bad_ones_are_refused() {
        for good in [
            "info",
            "warn",
            "trace",
            "warn,pantera=debug",
            "pantera::worker=trace",
            "off",
        ] {
            parse_level(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "",
            "  ",
            "loud",
            "inf",
            "info,pantera=loud",
            "pantera=debug,verbose",
            "[{",
        ] {
            let e = parse_level(bad).expect_err(bad).to_string();
            assert!(e.contains("invalid log level"), "{bad}: {e}");
        }
    }

    #[test]
    fn rust_log_overrides_the_configured_level_when_set() {
        let section = LogSection {
            level: "warn".to_owned(),
            format: LogFormat::Text,
        };
        let (filter, from_env) = start_filter(&section, None).unwrap();
        assert!(!from_env);
        assert_eq!(
            filter.max_level_hint(),
            Some(tracing::level_filters::LevelFilter::WARN)
        );
        let (filter, from_env) = start_filter(&section, Some("debug")).unwrap();
        assert!(from_env);
        assert_eq!(
            filter.max_level_hint(),
            Some(tracing::level_filters::LevelFilter::DEBUG)
        );
        // Set but empty: as if unset.
        assert!(!start_filter(&section, Some("")).unwrap().1);
        let e = start_filter(&section, Some("loud"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("RUST_LOG=loud") && e.matches("invalid log level").count() == 1,
            "{e}"
        );
    }

    #[test]
    fn the_log_section_defaults_and_parses_one_key_alone() {
        let s: LogSection = toml::from_str("").unwrap();
        assert_eq!(s, LogSection::default());
        assert_eq!(s.level, "info");
        let s: LogSection = toml::from_str("format = \"json\"").unwrap();
        assert_eq!((s.level.as_str(), s.format), ("info", LogFormat::Json));
        let s: LogSection = toml::from_str("level = \"debug\"").unwrap();
        assert_eq!((s.level.as_str(), s.format), ("debug", LogFormat::Text));
        assert!(toml::from_str::<LogSection>("format = \"xml\"").is_err());
        assert!(toml::from_str::<LogSection>("colour = true").is_err());
    }

    #[test]
    fn the_limiter_allows_a_burst_then_the_rate_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(3);
        for _ in 0..3 {
            assert_eq!(limiter.check(t0), Verdict::Write { suppressed: 0 });
        }
        for _ in 0..10 {
            assert_eq!(limiter.check(t0), Verdict::Suppress);
        }
        // A third of a second buys one line, which carries the count held back before it.
        let t1 = t0 + Duration::from_millis(340);
        assert_eq!(limiter.check(t1), Verdict::Write { suppressed: 10 });
        assert_eq!(limiter.check(t1), Verdict::Suppress);
        // A long quiet spell refills to the burst, no further.
        let t2 = t1 + Duration::from_secs(60);
        assert_eq!(limiter.check(t2), Verdict::Write { suppressed: 1 });
        assert_eq!(limiter.check(t2), Verdict::Write { suppressed: 0 });
        assert_eq!(limiter.check(t2), Verdict::Write { suppressed: 0 });
        assert_eq!(limiter.check(t2), Verdict::Suppress);
    }

    #[test]
    fn a_flood_yields_at_most_the_rate_and_every_line_is_accounted_for() {
        let t0 = Instant::now();
        let mut limiter = RateLimiter::new(5);
        let (mut written, mut reported) = (0u64, 0u64);
        // 10 000 lines over 10 s (one per millisecond), then the summary.
        for i in 0..10_000u64 {
            if let Verdict::Write { suppressed } = limiter.check(t0 + Duration::from_millis(i)) {
                written += 1;
                reported += suppressed;
            }
        }
        assert!(written <= 5 + 5 * 10, "{written} lines");
        // The flood's last line took or missed the last token: nothing to summarise with yet.
        assert_eq!(
            limiter.take_suppressed(t0 + Duration::from_millis(9_999)),
            None,
            "no token yet"
        );
        let summary = limiter
            .take_suppressed(t0 + Duration::from_millis(10_300))
            .expect("a summary once a token is back");
        assert_eq!(written + reported + summary, 10_000);
        assert_eq!(
            limiter.take_suppressed(t0 + Duration::from_secs(20)),
            None,
            "reported once"
        );
    }

    /// A writer into a shared buffer, for the one test that installs the process's log.
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn lines_with(&self, marker: &str) -> Vec<serde_json::Value> {
            let text = String::from_utf8(self.0.lock().unwrap().clone()).unwrap();
            text.lines()
                .filter(|l| l.contains(marker))
                .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
                .collect()
        }
    }

    /// The only test that installs the process-wide log (it can be installed once).
    #[test]
    fn set_level_reloads_the_filter_and_log_macros_reach_the_json_output() {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let section = LogSection {
            level: "info".to_owned(),
            format: LogFormat::Json,
        };
        init_with_writer(&section, None, move || writer.clone()).expect("first init");
        assert!(matches!(
            init_with_writer(&section, None, Buffer::default),
            Err(LogError::AlreadyInitialised)
        ));

        log::debug!("marker-1 hidden at info");
        log::info!("marker-2 shown");
        assert!(buffer.lines_with("marker-1").is_empty());
        let lines = buffer.lines_with("marker-2");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["message"], "marker-2 shown");
        // A `log` record gets its own target, not `log` (the bridge's normalisation); its
        // source location comes along as `log.file` and `log.line`.
        assert_eq!(lines[0]["target"], "pantera::logging::tests");

        set_level("debug").expect("valid");
        assert_eq!(log::max_level(), log::LevelFilter::Debug);
        log::debug!("marker-3 shown at debug");
        assert_eq!(buffer.lines_with("marker-3").len(), 1);

        let e = set_level("loud").expect_err("invalid");
        assert!(matches!(e, LogError::InvalidLevel { .. }), "{e}");
        log::debug!("marker-4 still shown: a bad level changes nothing");
        assert_eq!(buffer.lines_with("marker-4").len(), 1);

        set_level("warn").expect("valid");
        assert_eq!(log::max_level(), log::LevelFilter::Warn);
        log::info!("marker-5 hidden at warn");
        assert!(buffer.lines_with("marker-5").is_empty());

        // The structured warnings carry their fields at the top level of the object.
        let peer: SocketAddr = "10.99.0.1:40000".parse().unwrap();
        forbidden(
            ConnFields {
                slot: 7,
                peer: Some(peer),
            },
            Some("marker-6"),
            Some("read"),
            "POST",
            "/transfers",
        );
        let lines = buffer.lines_with("marker-6");
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["peer"], "10.99.0.1:40000");
        assert_eq!(lines[0]["slot"], 7);
        assert_eq!(lines[0]["identity"], "marker-6");
        assert_eq!(lines[0]["reason"], "role read may not POST /transfers");
        set_level("info").expect("valid");
    }
}
