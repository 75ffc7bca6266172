//! SIGHUP: re-read the configuration and apply, without a restart, what can change while
//! serving (nginx semantics, docs/operations.md "Reload (SIGHUP)").
//!
//! The whole file is read and validated exactly as at start (the same source, the same
//! command-line overrides, the same derivations: TLS files loaded into a rustls
//! configuration, roles, limits, the edge defence). Only when all of it is good is anything
//! applied; a reload that fails changes nothing and says why, at error level.
//!
//! Reloadable: `[tls]` (certificates, key, client CA, CRLs, minimum version, handshake deadline
//! and budget, roles, resumption bound), `[http]` (request and connection limits, the queue budget) and `[edge]`
//! except `syn_sources_max`. The workers take the new TLS configuration, limits and roles
//! for the connections they open from then on: a connection keeps the ones it started with
//! for its whole life. The edge defence is rewritten in the XDP maps at once.
//!
//! The rest (`[dataplane]`, `[service]`, `[tcp]`, `[ledger]`, `[management]`, `[audit]`,
//! `edge.syn_sources_max`) sizes rings, tables and maps or names what is bound: a change there
//! is logged as needing a restart and the running value is kept, while the reloadable
//! settings of the same file still apply.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use ledger_svc::connection::ConnectionLimits;
use prometheus::{Gauge, IntCounterVec, Opts};

use crate::config::{
    App, Config, DataplaneSection, LedgerSection, ManagementSection, ServiceSection, TcpSection,
};
use crate::handshake::HandshakeLimits;
use crate::metrics::Metrics;

/// What a worker gives the connections it opens: everything of the configuration that a
/// reload may change and a connection holds.
#[derive(Debug)]
pub struct Settings {
    pub tls: Arc<rustls::ServerConfig>,
    pub limits: ConnectionLimits,
    /// Roles, client trust (CAs, CRLs) and resumption bound, applied by the TLS sessions.
    pub roles: Arc<tls_term::ClientPolicy>,
    /// `http.queue_budget_bytes_max`: the bound of the worker's budget for new connections
    /// (the count of bytes held stays one per worker, `Budget::with_bytes_max`).
    pub queue_budget_bytes_max: usize,
    pub handshakes: HandshakeLimits,
}

impl Settings {
    /// The settings of a validated configuration: the TLS files are read and checked here
    /// (a key that does not match its certificate, a missing file, a bad CA fail).
    pub fn build(config: &Config) -> Result<Settings> {
        let tls = tls_term::server_tls(&config.tls_settings()?).context("tls")?;
        Settings::with_tls(config, tls)
    }

    /// Like `build`, keeping the session cache and ticket keys of `previous` (built from the
    /// same configuration): for a CRL change (src/crl.rs).
    pub fn build_keeping_sessions(config: &Config, previous: &rustls::ServerConfig) -> Result<Settings> {
        let tls = tls_term::server_tls_keeping_sessions(&config.tls_settings()?, previous).context("tls")?;
        Settings::with_tls(config, tls)
    }

    fn with_tls(config: &Config, tls: tls_term::ServerTls) -> Result<Settings> {
        Ok(Settings {
            roles: Arc::new(config.client_policy(tls.trust.clone())?),
            tls: tls.config,
            limits: config.connection_limits(),
            queue_budget_bytes_max: config.http.queue_budget_bytes_max,
            handshakes: config.handshake_limits(),
        })
    }
}

/// Pushes `$section.$field` onto `$out` for each field that differs between `$old` and
/// `$new`. The struct pattern names every field of the section: a field added to it does
/// not compile here until it is listed, so none can change silently without its warning.
macro_rules! changed_fields {
    ($out:expr, $old:expr, $new:expr, $section:literal, $ty:path { $($field:ident),* $(,)? }) => {{
        let $ty { $($field: _),* } = $new;
        $(
            if $old.$field != $new.$field {
                $out.push(concat!($section, ".", stringify!($field)));
            }
        )*
    }};
}

/// The fields that differ between the running configuration and `new` but take a restart,
/// in file order.
pub fn restart_fields(running: &Config, new: &Config) -> Vec<&'static str> {
    // Every section named: a section added to the configuration must be classified here
    // (reloadable, or kept until a restart) before this compiles.
    let Config {
        dataplane: _,
        service: _,
        tcp: _,
        tls: _,
        http: _,
        ledger: _,
        management: _,
        edge: _,
        audit: _,
        // Reloadable: read when the stop signal arrives.
        shutdown: _,
        log: _,
        sandbox: _,
    } = new;
    let mut out = Vec::new();
    changed_fields!(
        out,
        running.dataplane,
        &new.dataplane,
        "dataplane",
        DataplaneSection {
            interface,
            queues,
            xdp_mode,
            umem_frames,
            ring_size,
            busy_poll_turns,
        }
    );
    changed_fields!(
        out,
        running.service,
        &new.service,
        "service",
        ServiceSection {
            address,
            prefix_len,
            gateway,
            gateway_mac,
            port,
            app,
        }
    );
    changed_fields!(
        out,
        running.tcp,
        &new.tcp,
        "tcp",
        TcpSection {
            listen_sockets,
            connections_max,
            connections_per_source_max,
            rx_buffer_bytes,
            tx_buffer_bytes,
            idle_timeout_ms,
            syn_cookies,
            syn_backlog,
            neighbours_max,
        }
    );
    changed_fields!(
        out,
        running.ledger,
        &new.ledger,
        "ledger",
        LedgerSection {
            backend,
            data_dir,
            cluster_id,
            durability,
            checkpoint_every_batches,
            checkpoint_every_events,
            queue_depth_max,
            batch_events_max,
            pipeline_depth,
            tigerbeetle,
        }
    );
    changed_fields!(
        out,
        running.management,
        &new.management,
        "management",
        ManagementSection { listen }
    );
    // The audit file is opened and its writer started once, at start.
    changed_fields!(
        out,
        running.audit,
        &new.audit,
        "audit",
        crate::audit::AuditSection {
            enabled,
            path,
            max_bytes,
            keep,
            fsync,
            fsync_interval_ms,
            channel_capacity,
        }
    );
    // The confinement is applied once, after start-up.
    changed_fields!(
        out,
        running.sandbox,
        &new.sandbox,
        "sandbox",
        crate::sandbox::SandboxSection { enabled, user }
    );
    // The size of an XDP map, fixed when the program is loaded.
    if running.edge.syn_sources_max != new.edge.syn_sources_max {
        out.push("edge.syn_sources_max");
    }
    // The log's format is chosen when the log starts (`log.level` reloads).
    if running.log.format != new.log.format {
        out.push("log.format");
    }
    // mlockall is called once, at start, while the process may still raise its lock limit.
    if running.tls.lock_memory != new.tls.lock_memory {
        out.push("tls.lock_memory");
    }
    out
}

/// `new` with the running values of every field that takes a restart: what the appliance
/// runs with after the reload.
pub fn effective(running: &Config, new: &Config) -> Config {
    let mut config = new.clone();
    config.dataplane = running.dataplane.clone();
    config.service = running.service.clone();
    config.tcp = running.tcp.clone();
    config.ledger = running.ledger.clone();
    config.management = running.management.clone();
    config.audit = running.audit.clone();
    config.sandbox = running.sandbox.clone();
    config.edge.syn_sources_max = running.edge.syn_sources_max;
    config.log.format = running.log.format;
    config.tls.lock_memory = running.tls.lock_memory;
    config
}

/// A reload checked in full and ready to apply.
#[derive(Debug)]
pub struct Plan {
    /// The configuration the appliance runs with once the plan is applied.
    pub config: Config,
    /// For the workers; None for the echo app, which has no TLS.
    pub settings: Option<Settings>,
    pub edge: dataplane::EdgeConfig,
    /// Fields changed in the file that keep their running value until a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Checks `new` against the running configuration and derives everything a reload applies.
/// Nothing is applied here: an error leaves the running configuration as it is.
pub fn plan(running: &Config, new: &Config) -> Result<Plan> {
    let needs_restart = restart_fields(running, new);
    let config = effective(running, new);
    // Again, over the mix: a new bound may be checked against a running one (e.g.
    // `tls.handshakes_pending_max` against the running `tcp.connections_max`).
    config
        .validate()
        .context("the reloaded values do not fit the running ones")?;
    let settings = match config.app()? {
        App::Ledger => {
            // The deep check of a start (src/check.rs): the chain in order, expiry warnings.
            for warning in crate::check::deep(&config, crate::check::DataDir::Skip, SystemTime::now())? {
                log::warn!("reload: {warning}");
            }
            Some(Settings::build(&config)?)
        }
        App::Echo => None,
    };
    let edge = config.edge_config()?;
    Ok(Plan {
        config,
        settings,
        edge,
        needs_restart,
    })
}

/// The latest settings, published by the main thread and taken by each worker at the top of
/// a turn: one atomic load per turn while nothing changes.
#[derive(Debug)]
struct Published {
    generation: AtomicU64,
    settings: Mutex<Option<Arc<Settings>>>,
}

/// A worker's view of the published settings.
#[derive(Debug)]
pub struct Watch {
    published: Arc<Published>,
    seen: u64,
}

impl Watch {
    /// The settings published since the last call, if any.
    pub fn changed(&mut self) -> Option<Arc<Settings>> {
        let generation = self.published.generation.load(Ordering::Acquire);
        if generation == self.seen {
            return None;
        }
        self.seen = generation;
        // The settings are written before the generation moves: these are at least as new.
        self.published
            .settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }
}

/// The reload metrics: `pantera_config_reloads_total{result}` and
/// `pantera_config_last_reload_success_timestamp_seconds`.
#[derive(Debug, Clone)]
struct ReloadMetrics {
    reloads: IntCounterVec,
    last_success: Gauge,
}

impl ReloadMetrics {
    fn register(metrics: &Metrics) -> Result<ReloadMetrics> {
        let reloads = IntCounterVec::new(
            Opts::new(
                "config_reloads_total",
                "Configuration reloads (SIGHUP), by result: ok or failed.",
            ),
            &["result"],
        )?;
        let last_success = Gauge::new(
            "config_last_reload_success_timestamp_seconds",
            "When the running configuration was last loaded successfully (start or reload), in Unix seconds.",
        )?;
        metrics
            .registry
            .register(Box::new(reloads.clone()))
            .context("registering the reload metrics")?;
        metrics
            .registry
            .register(Box::new(last_success.clone()))
            .context("registering the reload metrics")?;
        // Both results exist from the start, so a rate or an alert on failures has a series.
        for result in ["ok", "failed"] {
            reloads.with_label_values(&[result]);
        }
        let m = ReloadMetrics {
            reloads,
            last_success,
        };
        m.loaded_now();
        Ok(m)
    }

    fn loaded_now(&self) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.last_success.set(now);
    }
}

/// An error and its causes on one line, each cause left out when the message before it
/// already says it (the TLS errors quote their source in their own message).
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
    }
    out
}

/// Where a reload reads the configuration from: the same file and command-line overrides
/// as the start.
pub type Source<'a> = &'a dyn Fn() -> Result<Config>;

/// The main thread's side of reloads: the running configuration and where to publish.
pub struct Reloader<'a> {
    source: Source<'a>,
    running: Config,
    published: Arc<Published>,
    metrics: ReloadMetrics,
    /// The whole set, for the certificate expiry gauges a reload moves.
    all_metrics: Metrics,
    crl: crate::crl::CrlMetrics,
    /// The TLS configuration new connections get now (start, then each publish): a CRL
    /// change keeps its session cache and ticket keys.
    current_tls: Option<Arc<rustls::ServerConfig>>,
}

impl std::fmt::Debug for Reloader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field(
                "generation",
                &self.published.generation.load(Ordering::Relaxed),
            )
            .finish()
    }
}

impl<'a> Reloader<'a> {
    /// `running`: the configuration the appliance started with (from `source`).
    pub fn new(source: Source<'a>, running: Config, metrics: &Metrics) -> Result<Reloader<'a>> {
        Ok(Reloader {
            source,
            running,
            published: Arc::new(Published {
                generation: AtomicU64::new(0),
                settings: Mutex::new(None),
            }),
            metrics: ReloadMetrics::register(metrics)?,
            all_metrics: metrics.clone(),
            crl: crate::crl::CrlMetrics::register(metrics)?,
            current_tls: None,
        })
    }

    /// The TLS configuration and client trust `serve` started with (its CRLs' metrics; its
    /// sessions, kept across CRL changes). Reloads record theirs themselves.
    pub fn started_with(&mut self, tls: Option<Arc<rustls::ServerConfig>>, trust: Option<&tls_term::ClientTrust>) {
        self.current_tls = tls;
        self.crl.observe(trust);
    }

    /// A CRL file changed (src/crl.rs): rebuilds the TLS settings of the running
    /// configuration and publishes them as a reload does. On error the running settings
    /// (and their CRLs) stay. Returns whether it applied.
    pub fn refresh_tls(&mut self) -> bool {
        let built = match &self.current_tls {
            Some(previous) => Settings::build_keeping_sessions(&self.running, previous),
            None => Settings::build(&self.running),
        };
        match built {
            Ok(settings) => {
                log::info!("a CRL file changed: new handshakes and resumptions use the CRLs now in the files");
                self.publish(settings);
                self.crl.reloaded(true);
                true
            }
            Err(e) => {
                self.crl.reloaded(false);
                log::error!("a CRL file changed but cannot be loaded, the CRLs in force are kept: {}", describe(&e));
                false
            }
        }
    }

    fn publish(&mut self, settings: Settings) {
        self.crl.observe(settings.roles.trust.as_deref());
        self.current_tls = Some(Arc::clone(&settings.tls));
        *self
            .published
            .settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(settings));
        self.published.generation.fetch_add(1, Ordering::Release);
    }

    /// A view for one worker.
    pub fn watch(&self) -> Watch {
        Watch {
            published: Arc::clone(&self.published),
            seen: self.published.generation.load(Ordering::Acquire),
        }
    }

    /// The configuration running now.
    pub fn running(&self) -> &Config {
        &self.running
    }

    /// Re-reads the configuration and applies it (`write_edge` rewrites the XDP maps). On
    /// any error the running configuration stays as it was. Returns whether it applied.
    pub fn reload(
        &mut self,
        write_edge: impl FnMut(&dataplane::EdgeConfig) -> Result<(), dataplane::DataplaneError>,
    ) -> bool {
        log::info!("SIGHUP: reloading the configuration");
        let outcome = (self.source)().and_then(|new| self.apply(&new, write_edge));
        match outcome {
            Ok(()) => {
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                self.metrics.loaded_now();
                self.record_cert_expiry();
                true
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failed"]).inc();
                log::error!(
                    "configuration reload failed, the running configuration is kept: {}",
                    describe(&e)
                );
                false
            }
        }
    }

    /// The expiry gauges follow the certificates now served (new connections get them).
    fn record_cert_expiry(&self) {
        if self.running.app().ok() != Some(App::Ledger) {
            return;
        }
        let result = self
            .running
            .tls_settings()
            .map_err(anyhow::Error::new)
            .and_then(|tls| crate::metric_families::record_cert_expiry(&self.all_metrics, &tls));
        if let Err(e) = result {
            log::warn!("reload: cannot read the certificate expiry for the metrics: {e:#}");
        }
    }

    /// Applies `new` (already read): everything is checked first, then the edge defence is
    /// written, then the workers' settings are published.
    pub fn apply(
        &mut self,
        new: &Config,
        mut write_edge: impl FnMut(&dataplane::EdgeConfig) -> Result<(), dataplane::DataplaneError>,
    ) -> Result<()> {
        let plan = plan(&self.running, new)?;
        let running_edge = self.running.edge_config()?;
        if plan.edge != running_edge {
            if let Err(e) = write_edge(&plan.edge) {
                // Part of the new edge may be in the maps: put the running one back whole.
                if let Err(restore) = write_edge(&running_edge) {
                    log::error!(
                        "cannot restore the running edge defence after a failed reload: {restore}"
                    );
                }
                return Err(anyhow::Error::new(e)
                    .context("cannot write the edge defence into the XDP maps"));
            }
        }
        for field in &plan.needs_restart {
            log::warn!("reload: `{field}` changed but needs a restart; the running value is kept");
        }
        if plan.config.log.level != self.running.log.level {
            // Validated with the rest of the file; the log says what it did with it.
            if let Err(e) = crate::logging::set_level(&plan.config.log.level) {
                log::warn!("reload: log.level not applied: {e}");
            }
        }
        if let Some(settings) = plan.settings {
            self.publish(settings);
        }
        self.running = plan.config;
        log::info!(
            "configuration reloaded: new connections use the TLS certificates, client CA, roles and limits now in the file{}",
            if plan.needs_restart.is_empty() { "" } else { " (some changes need a restart, see the warnings)" }
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;

    /// A configuration over the dev certificates in `tls`, with `extra` appended.
    fn config_text(tls: &Path, extra: &str) -> String {
        format!(
            r#"
[dataplane]
interface = "eth1"
queues = [0]

[service]
address = "192.0.2.10"

[tls]
cert_chain = "{tls}/server.pem"
private_key = "{tls}/server.key"
client_ca = "{tls}/ca.pem"
roles = {{ "cn:client" = "write" }}

[ledger]
data_dir = "/var/lib/pantera/data"
{extra}
"#,
            tls = tls.display()
        )
    }

    fn parse(text: &str) -> Result<Config> {
        Ok(Config::parse(Path::new("t.toml"), text)?)
    }

    fn certs() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls = dir.path().join("tls");
        tls_term::certs::init(&tls, "192.0.2.10".parse().unwrap(), false)
            .expect("dev certificates");
        (dir, tls)
    }

    fn reloader<'a>(source: Source<'a>, metrics: &Metrics) -> Reloader<'a> {
        let running = source().expect("the start configuration is valid");
        Reloader::new(source, running, metrics).expect("metrics register")
    }

    fn no_edge(_: &dataplane::EdgeConfig) -> Result<(), dataplane::DataplaneError> {
        panic!("the edge defence did not change")
    }

    fn reloads(metrics: &Metrics, result: &str) -> u64 {
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        text.lines()
            .find(|l| {
                l.starts_with(&format!(
                    "pantera_config_reloads_total{{result=\"{result}\"}}"
                ))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .expect("the series exists")
    }

    #[test]
    fn an_error_is_described_once_per_cause() {
        let io = std::io::Error::other("disk on fire");
        let e = anyhow::Error::new(io)
            .context("cannot read x: disk on fire")
            .context("tls");
        assert_eq!(describe(&e), "tls: cannot read x: disk on fire");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(describe(&e), "outer: inner");
    }

    #[test]
    fn reloadable_sections_change_nothing_that_needs_a_restart() {
        let (_dir, tls) = certs();
        let old = parse(&config_text(&tls, "")).unwrap();
        let new = parse(&config_text(
            &tls,
            "[http]\nbody_bytes_max = 4096\nqueue_budget_bytes_max = 1048576\n[edge]\nallow_sources = [\"10.99.0.0/24\"]\n",
        ))
        .unwrap();
        let new = Config {
            tls: crate::config::TlsSection {
                min_version: "1.3".into(),
                ..new.tls.clone()
            },
            ..new
        };
        assert!(
            restart_fields(&old, &new).is_empty(),
            "{:?}",
            restart_fields(&old, &new)
        );
        let plan = plan(&old, &new).expect("valid");
        let settings = plan.settings.expect("the ledger app has settings");
        assert_eq!(settings.limits.http.body_bytes_max, 4096);
        assert_eq!(settings.queue_budget_bytes_max, 1 << 20);
        assert_eq!(plan.edge.allow_sources.len(), 1);
    }

    #[test]
    fn a_key_file_others_may_read_fails_the_reload_with_its_path_and_mode() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, tls) = certs();
        let old = parse(&config_text(&tls, "")).unwrap();
        let key = tls.join("server.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = format!("{:#}", plan(&old, &old.clone()).expect_err("refused"));
        assert!(e.contains(&key.display().to_string()) && e.contains("0644") && e.contains("other users may read"), "{e}");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o400)).unwrap();
        plan(&old, &old.clone()).expect("0400 is fine");
    }

    #[test]
    fn each_restart_field_is_named_and_keeps_its_running_value() {
        let (_dir, tls) = certs();
        let old = parse(&config_text(&tls, "")).unwrap();
        let text = config_text(&tls, "[tcp]\nconnections_max = 2048\n[management]\nlisten = \"127.0.0.1:9999\"\n[edge]\nsyn_sources_max = 4096\n[http]\nbody_bytes_max = 2048\n[audit]\nkeep = 3\n")
            .replace("queues = [0]", "queues = [0, 1]")
            .replace("address = \"192.0.2.10\"", "address = \"192.0.2.11\"")
            .replace("data_dir = \"/var/lib/pantera/data\"", "data_dir = \"/srv/data\"\ndurability = \"none\"")
            .replace("[tls]", "[tls]\nlock_memory = false");
        let new = parse(&text).unwrap();
        assert_eq!(
            restart_fields(&old, &new),
            vec![
                "dataplane.queues",
                "service.address",
                "tcp.connections_max",
                "ledger.data_dir",
                "ledger.durability",
                "management.listen",
                "audit.keep",
                "edge.syn_sources_max",
                "tls.lock_memory"
            ]
        );
        assert!(plan(&old, &new).unwrap().config.tls.lock_memory, "keeps its running value");
        let plan = plan(&old, &new).expect("the reloadable part applies");
        assert_eq!(plan.config.dataplane.queues, vec![0]);
        assert_eq!(plan.config.service.address.to_string(), "192.0.2.10");
        assert_eq!(plan.config.tcp.connections_max, old.tcp.connections_max);
        assert_eq!(
            plan.config.ledger.data_dir,
            Path::new("/var/lib/pantera/data")
        );
        assert_eq!(plan.config.management.listen, old.management.listen);
        assert_eq!(plan.config.audit, old.audit);
        assert_eq!(plan.edge.syn_sources_max, old.edge.syn_sources_max);
        assert_eq!(
            plan.config.http.body_bytes_max, 2048,
            "the reloadable change still applies"
        );
    }

    #[test]
    fn a_new_bound_is_checked_against_the_running_values() {
        let (_dir, tls) = certs();
        let old = parse(&config_text(&tls, "[tcp]\nconnections_max = 256\n")).unwrap();
        // Valid on its own (the file raises connections_max too), but the running table has
        // 256 slots: the handshake budget may not exceed it.
        let new = parse(
            &config_text(&tls, "[tcp]\nconnections_max = 4096\n")
                .replace("[tls]", "[tls]\nhandshakes_pending_max = 1000"),
        )
        .unwrap();
        let e = plan(&old, &new).expect_err("refused");
        assert!(
            format!("{e:#}").contains("tls.handshakes_pending_max"),
            "{e:#}"
        );
    }

    #[test]
    fn a_reload_publishes_new_settings_to_every_watch_once() {
        let (_dir, tls) = certs();
        let path = tls.parent().unwrap().join("pantera.toml");
        std::fs::write(&path, config_text(&tls, "")).unwrap();
        let source = || Ok(Config::load(&path)?);
        let metrics = Metrics::new();
        let mut r = reloader(&source, &metrics);
        let (mut a, mut b) = (r.watch(), r.watch());
        assert!(a.changed().is_none(), "nothing published at start");
        std::fs::write(
            &path,
            config_text(&tls, "").replace("\"cn:client\" = \"write\"", "\"cn:client\" = \"read\""),
        )
        .unwrap();
        assert!(r.reload(no_edge));
        let s = a.changed().expect("published");
        assert_eq!(
            s.roles.roles.entry(&"cn:client".parse().unwrap()).map(|e| e.role),
            Some(tls_term::Role::Read)
        );
        assert!(a.changed().is_none(), "taken once");
        assert!(b.changed().is_some(), "every worker gets it");
        assert_eq!(
            (reloads(&metrics, "ok"), reloads(&metrics, "failed")),
            (1, 0)
        );
        assert_eq!(r.running().tls.roles["cn:client"], "read".into());
    }

    #[test]
    fn a_failed_reload_keeps_the_running_configuration_and_counts() {
        let (_dir, tls) = certs();
        let path = tls.parent().unwrap().join("pantera.toml");
        let good = config_text(&tls, "");
        std::fs::write(&path, &good).unwrap();
        let source = || Ok(Config::load(&path)?);
        let metrics = Metrics::new();
        let mut r = reloader(&source, &metrics);
        let mut w = r.watch();
        let server_key = std::fs::read(tls.join("server.key")).unwrap();
        let other = tempfile::tempdir().unwrap();
        tls_term::certs::init(other.path(), "192.0.2.10".parse().unwrap(), false).unwrap();
        type BreakIt<'a> = Box<dyn Fn() + 'a>;
        let failures: Vec<(&str, BreakIt)> = vec![
            (
                "bad TOML",
                Box::new(|| std::fs::write(&path, "[tls\n").unwrap()),
            ),
            (
                "an invalid value",
                Box::new(|| {
                    std::fs::write(
                        &path,
                        good.replace("[http]", "")
                            .replace("[tls]", "[tls]\nmin_version = \"1.1\""),
                    )
                    .unwrap()
                }),
            ),
            (
                "an unreadable file",
                Box::new(|| std::fs::remove_file(&path).unwrap()),
            ),
            (
                "a missing certificate",
                Box::new(|| {
                    std::fs::write(&path, good.replace("server.pem", "nowhere.pem")).unwrap()
                }),
            ),
            (
                "a garbage key",
                Box::new(|| {
                    std::fs::write(
                        tls.join("server.key"),
                        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                    )
                    .unwrap()
                }),
            ),
            (
                "a key of another certificate",
                Box::new(|| {
                    std::fs::copy(other.path().join("server.key"), tls.join("server.key"))
                        .map(drop)
                        .unwrap()
                }),
            ),
            (
                "a bad CA",
                Box::new(|| std::fs::write(tls.join("ca.pem"), "not a certificate\n").unwrap()),
            ),
        ];
        let ca = std::fs::read(tls.join("ca.pem")).unwrap();
        for (n, (what, break_it)) in failures.iter().enumerate() {
            std::fs::write(&path, &good).unwrap();
            std::fs::write(tls.join("server.key"), &server_key).unwrap();
            std::fs::write(tls.join("ca.pem"), &ca).unwrap();
            break_it();
            assert!(!r.reload(no_edge), "{what} must fail the reload");
            assert!(w.changed().is_none(), "{what}: nothing published");
            assert_eq!(reloads(&metrics, "failed"), n as u64 + 1, "{what}");
        }
        assert_eq!(reloads(&metrics, "ok"), 0);
        // Fixed, it applies.
        std::fs::write(&path, &good).unwrap();
        std::fs::write(tls.join("server.key"), &server_key).unwrap();
        std::fs::write(tls.join("ca.pem"), &ca).unwrap();
        assert!(r.reload(no_edge));
        assert!(w.changed().is_some());
    }

    #[test]
    fn the_edge_defence_is_written_only_when_it_changed_and_put_back_when_writing_fails() {
        let (_dir, tls) = certs();
        let metrics = Metrics::new();
        let old = parse(&config_text(&tls, "")).unwrap();
        let source = || parse(&config_text(&tls, ""));
        let mut r = Reloader::new(&source, old.clone(), &metrics).unwrap();
        let new = parse(&config_text(
            &tls,
            "[edge]\nallow_sources = [\"10.99.0.0/24\"]\n",
        ))
        .unwrap();
        let mut written = Vec::new();
        r.apply(&new, |edge| {
            written.push(edge.clone());
            Ok(())
        })
        .unwrap();
        assert_eq!(written.len(), 1);
        assert_eq!(written[0].allow_sources[0].to_string(), "10.99.0.0/24");
        // The maps refuse the next one: the running one is written back and nothing else moves.
        let newer = parse(&config_text(
            &tls,
            "[edge]\nallow_sources = [\"10.98.0.0/24\"]\n[http]\nbody_bytes_max = 2048\n",
        ))
        .unwrap();
        let mut written = Vec::new();
        let e = r
            .apply(&newer, |edge| {
                written.push(edge.clone());
                if written.len() == 1 {
                    Err(dataplane::DataplaneError::Config("map full".into()))
                } else {
                    Ok(())
                }
            })
            .expect_err("refused");
        assert!(format!("{e:#}").contains("map full"), "{e:#}");
        assert_eq!(
            written[1].allow_sources[0].to_string(),
            "10.99.0.0/24",
            "the running edge is restored"
        );
        assert_eq!(r.running().http.body_bytes_max, old.http.body_bytes_max);
    }
}
