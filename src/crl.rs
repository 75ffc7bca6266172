//! Certificate revocation lists while serving: the timer that notices a changed CRL file, and
//! the metrics of the CRLs loaded (docs/tls.md, "Revocation").
//!
//! CRLs are loaded with the rest of the TLS configuration (`tls_term::server_tls`): at start,
//! on SIGHUP, and when [`CrlWatch`] sees a CRL file change (every `tls.crl_reload_interval_ms`
//! the main thread compares each file's modification time and size with what it saw last).
//! A changed file rebuilds the TLS settings from the running configuration and publishes them
//! to the workers as a reload does (`Reloader::refresh_tls`), keeping the session cache and
//! ticket keys: new handshakes and resumptions are checked against the new CRLs, and clients
//! still valid keep resuming instead of all paying a full handshake at once. A CRL that no longer loads keeps the running
//! settings (and their CRLs), with an error in the log and
//! `pantera_tls_crl_reloads_total{result="failed"}`.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use prometheus::{GaugeVec, IntCounterVec, Opts};

use crate::metrics::Metrics;

/// What a file looked like last time: modification time and size (`None`: unreadable).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &PathBuf) -> Stamp {
    let meta = fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Notices a change to the CRL files, at most once per interval.
#[derive(Debug)]
pub struct CrlWatch {
    interval: Duration,
    next: Instant,
    seen: Vec<(PathBuf, Stamp)>,
}

impl CrlWatch {
    /// Watches `paths` (the running configuration's `tls.crls`) as they are now.
    pub fn new(paths: &[PathBuf], interval: Duration, now: Instant) -> CrlWatch {
        CrlWatch {
            interval,
            next: now + interval,
            seen: paths.iter().map(|p| (p.clone(), stamp(p))).collect(),
        }
    }

    /// Whether a CRL file changed since the last look (or the configured list itself changed,
    /// after a reload). Looks at the files only once `interval` has passed; cheap otherwise.
    pub fn poll(&mut self, paths: &[PathBuf], interval: Duration, now: Instant) -> bool {
        if now < self.next {
            return false;
        }
        self.interval = interval;
        self.next = now + self.interval;
        let current: Vec<(PathBuf, Stamp)> = paths.iter().map(|p| (p.clone(), stamp(p))).collect();
        let changed = current != self.seen;
        self.seen = current;
        changed
    }

    /// Takes the files as they are now as seen (after a SIGHUP loaded them anyway).
    pub fn rebase(&mut self, paths: &[PathBuf]) {
        self.seen = paths.iter().map(|p| (p.clone(), stamp(p))).collect();
    }
}

/// `pantera_tls_crl_next_update_timestamp_seconds{crl}` and `pantera_tls_crl_reloads_total{result}`.
#[derive(Debug, Clone)]
pub struct CrlMetrics {
    next_update: GaugeVec,
    reloads: IntCounterVec,
}

impl CrlMetrics {
    pub fn register(metrics: &Metrics) -> Result<CrlMetrics> {
        let next_update = GaugeVec::new(
            Opts::new(
                "tls_crl_next_update_timestamp_seconds",
                "nextUpdate of each loaded client CRL, in Unix seconds (0: the CRL names none); past it the CRL is stale but still applied.",
            ),
            &["crl"],
        )?;
        let reloads = IntCounterVec::new(
            Opts::new(
                "tls_crl_reloads_total",
                "CRL files re-read because they changed (timer), by result: ok or failed (the previous CRLs stay in force).",
            ),
            &["result"],
        )?;
        metrics
            .registry
            .register(Box::new(next_update.clone()))
            .context("registering the CRL metrics")?;
        metrics
            .registry
            .register(Box::new(reloads.clone()))
            .context("registering the CRL metrics")?;
        for result in ["ok", "failed"] {
            reloads.with_label_values(&[result]);
        }
        Ok(CrlMetrics {
            next_update,
            reloads,
        })
    }

    /// A timer-driven re-read ended with `ok`.
    pub fn reloaded(&self, ok: bool) {
        self.reloads
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc();
    }

    /// The CRLs now in force: one gauge per file (the earliest nextUpdate of the CRLs in it),
    /// and an error for each stale one: webpki keeps applying a CRL past its nextUpdate (its
    /// revocations stay in force), so staleness is said loudly rather than refusing clients.
    pub fn observe(&self, trust: Option<&tls_term::ClientTrust>) {
        self.next_update.reset();
        let Some(trust) = trust else { return };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut per_file: Vec<(String, i64)> = Vec::new();
        for crl in trust.crls() {
            let name = crl.path.display().to_string();
            let next = crl.next_update.unwrap_or(0);
            match per_file.iter_mut().find(|(n, _)| *n == name) {
                Some((_, earliest)) => *earliest = (*earliest).min(next),
                None => per_file.push((name.clone(), next)),
            }
            match crl.next_update {
                Some(next) if next < now => log::error!(
                    "CRL {name} is stale: its nextUpdate passed {} s ago; it is still applied, fetch a fresh one from the CA",
                    now - next
                ),
                None => log::warn!("CRL {name} names no nextUpdate: its freshness cannot be checked"),
                Some(_) => {}
            }
        }
        for (name, next) in per_file {
            self.next_update
                .with_label_values(&[&name])
                .set(next as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_noticed_once_per_interval() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.crl");
        fs::write(&path, b"one").unwrap();
        let paths = vec![path.clone()];
        let t0 = Instant::now();
        let interval = Duration::from_secs(10);
        let mut watch = CrlWatch::new(&paths, interval, t0);
        assert!(!watch.poll(&paths, interval, t0 + interval), "unchanged");
        fs::write(&path, b"longer").unwrap();
        assert!(
            !watch.poll(&paths, interval, t0 + interval + Duration::from_secs(1)),
            "not due yet"
        );
        assert!(
            watch.poll(&paths, interval, t0 + 2 * interval),
            "size changed"
        );
        assert!(!watch.poll(&paths, interval, t0 + 3 * interval), "seen");
        fs::remove_file(&path).unwrap();
        assert!(watch.poll(&paths, interval, t0 + 4 * interval), "gone");
        // A new list (after a reload) is a change too.
        assert!(watch.poll(&[], interval, t0 + 5 * interval));
        fs::write(&path, b"x").unwrap();
        watch.rebase(&paths);
        assert!(!watch.poll(&paths, interval, t0 + 6 * interval));
    }
}
