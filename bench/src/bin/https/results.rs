//! What one `https load` run measured, as a document (`--json FILE`), how the per-thread
//! seconds are merged into it, and `https compare`: several such documents side by side.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context, Result};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::engine::ThreadSummary;
use crate::schedule::{ErrorKind, Interval, NANOS_PER_SECOND};

/// The version of the document's layout; `compare` refuses others.
pub const FORMAT_VERSION: u32 = 1;

/// The run's settings, as given.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    pub target: String,
    pub workload: String,
    pub path: String,
    pub connections: usize,
    pub threads: usize,
    pub pipeline: usize,
    pub new_connections: bool,
    pub resume: bool,
    /// Requests per second in all (open loop); None: closed loop.
    pub rate_per_s: Option<f64>,
    pub duration_s: f64,
    /// Requests in all, if bounded by a count.
    pub requests: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Totals {
    /// Requests that ended (ok or not).
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    /// From the start to the end of the last request.
    pub elapsed_s: f64,
    pub ok_per_s: f64,
    /// Open loop: slots of the schedule that came and were never sent (the client fell
    /// behind; their latency is not in the histogram).
    pub missed_slots: u64,
    pub connections_dead: usize,
    /// The client's own CPU time over the run (all threads), for "how much of the machine did
    /// the client take".
    pub client_cpu_s: f64,
}

/// Latency percentiles in microseconds, from the intended send time in the open loop.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Percentiles {
        if h.is_empty() {
            return Percentiles::default();
        }
        Percentiles {
            count: h.len(),
            mean: h.mean(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
        }
    }
}

/// One second of the run, by completion time.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Second {
    pub second: u64,
    pub ok: u64,
    pub errors: u64,
    /// 0 when nothing was answered in this second.
    pub p50_us: u64,
    pub p99_us: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Handshakes {
    pub full: u64,
    pub resumed: u64,
}

/// The whole document.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub format_version: u32,
    /// A name for tables and plot legends (`--label`, else the workload and connections).
    pub label: String,
    /// Seconds since the Unix epoch at the start.
    pub started_unix_s: u64,
    pub config: RunConfig,
    pub totals: Totals,
    /// Requests that did not count as ok, by kind (every kind listed, zeros included).
    pub errors: BTreeMap<String, u64>,
    pub first_error: Option<String>,
    pub latency_us: Percentiles,
    /// (quantile, µs) from 0 to 1, for the percentile plot.
    pub latency_curve: Vec<(f64, u64)>,
    pub series: Vec<Second>,
    pub handshakes: Handshakes,
    /// "ok", "skipped", or what did not match.
    pub ledger_check: String,
}

impl RunResult {
    pub fn status_503(&self) -> u64 {
        self.errors
            .get(ErrorKind::Status503.name())
            .copied()
            .unwrap_or(0)
    }

    pub fn read(path: &Path) -> Result<RunResult> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let r: RunResult = serde_json::from_str(&text)
            .with_context(|| format!("{} is not an `https load --json` result", path.display()))?;
        ensure!(
            r.format_version == FORMAT_VERSION,
            "{}: format version {} (this program reads {FORMAT_VERSION})",
            path.display(),
            r.format_version
        );
        Ok(r)
    }
}

/// The quantiles of the stored latency curve: dense where tails are (1 − 10^(−k/4)), to 99.999 %.
fn curve_quantiles() -> impl Iterator<Item = f64> {
    (0..=20)
        .map(|k| 1.0 - 10f64.powf(-f64::from(k) / 4.0))
        .chain(std::iter::once(1.0))
}

/// Merges the threads' seconds as they arrive. A second is final once every thread has
/// reported it (each reports its seconds in order), and then only its figures are kept, so
/// memory does not grow with the run's length.
#[derive(Debug)]
pub struct Merger {
    /// Per thread: the latest second it has reported (u64::MAX once done).
    latest: Vec<Option<u64>>,
    pending: BTreeMap<u64, Interval>,
    pub series: Vec<Second>,
    /// Everything so far.
    pub total: Interval,
    pub summaries: Vec<ThreadSummary>,
}

impl Merger {
    pub fn new(threads: usize) -> Merger {
        Merger {
            latest: vec![None; threads],
            pending: BTreeMap::new(),
            series: Vec::new(),
            total: Interval::new(0),
            summaries: Vec::new(),
        }
    }

    pub fn interval(&mut self, thread: usize, i: Interval) {
        self.latest[thread] = Some(i.second);
        self.add(i);
        self.finalize();
    }

    pub fn done(&mut self, thread: usize, mut summary: ThreadSummary) {
        let last = std::mem::replace(&mut summary.last, Interval::new(0));
        self.latest[thread] = Some(u64::MAX);
        self.add(last);
        self.summaries.push(summary);
        self.finalize();
    }

    pub fn all_done(&self) -> bool {
        self.latest.iter().all(|l| *l == Some(u64::MAX))
    }

    fn add(&mut self, i: Interval) {
        self.total.merge(&i);
        self.pending
            .entry(i.second)
            .or_insert_with(|| Interval::new(i.second))
            .merge(&i);
    }

    fn finalize(&mut self) {
        // Nothing is final until every thread has reported something.
        let Some(upto) = self.latest.iter().map(|l| l.unwrap_or(0)).min() else {
            return;
        };
        if self.latest.iter().any(Option::is_none) {
            return;
        }
        let ready: Vec<u64> = self.pending.range(..=upto).map(|(s, _)| *s).collect();
        for s in ready {
            let i = self.pending.remove(&s).expect("listed above");
            let p = Percentiles::of(&i.latency_us);
            self.series.push(Second {
                second: s,
                ok: i.ok,
                errors: i.error_count(),
                p50_us: p.p50,
                p99_us: p.p99,
            });
        }
        // A thread may report a second after a later one was finalized (it was quiet): merge
        // the series in order.
        self.series.sort_by_key(|s| s.second);
        self.series.dedup_by(|later, earlier| {
            if later.second == earlier.second {
                earlier.ok += later.ok;
                earlier.errors += later.errors;
                earlier.p99_us = earlier.p99_us.max(later.p99_us);
                true
            } else {
                false
            }
        });
    }

    /// The document, once every thread is done.
    pub fn result(
        mut self,
        label: String,
        started_unix_s: u64,
        config: RunConfig,
        client_cpu_s: f64,
        ledger_check: String,
    ) -> RunResult {
        // Anything not final yet (a thread ended early) is final now.
        self.latest.iter_mut().for_each(|l| *l = Some(u64::MAX));
        self.finalize();
        let t = &self.total;
        let last_end_ns = self
            .summaries
            .iter()
            .map(|s| s.last_end_ns)
            .max()
            .unwrap_or(0);
        let elapsed_s = last_end_ns as f64 / NANOS_PER_SECOND as f64;
        let errors: BTreeMap<String, u64> = ErrorKind::ALL
            .iter()
            .map(|k| (k.name().to_owned(), t.errors[*k as usize]))
            .collect();
        let latency_curve = if t.latency_us.is_empty() {
            Vec::new()
        } else {
            curve_quantiles()
                .map(|q| (q, t.latency_us.value_at_quantile(q)))
                .collect()
        };
        RunResult {
            format_version: FORMAT_VERSION,
            label,
            started_unix_s,
            config,
            totals: Totals {
                requests: t.ok + t.error_count(),
                ok: t.ok,
                errors: t.error_count(),
                elapsed_s,
                ok_per_s: if elapsed_s > 0.0 {
                    t.ok as f64 / elapsed_s
                } else {
                    0.0
                },
                missed_slots: self.summaries.iter().map(|s| s.missed_slots).sum(),
                connections_dead: self.summaries.iter().map(|s| s.connections_dead).sum(),
                client_cpu_s,
            },
            errors,
            first_error: self.summaries.iter().find_map(|s| s.first_error.clone()),
            latency_us: Percentiles::of(&t.latency_us),
            latency_curve,
            series: self.series,
            handshakes: Handshakes {
                full: t.handshakes_full,
                resumed: t.handshakes_resumed,
            },
            ledger_check,
        }
    }
}

/// The p99 of everything so far (for the progress line).
pub fn p99_so_far(total: &Interval) -> u64 {
    if total.latency_us.is_empty() {
        0
    } else {
        total.latency_us.value_at_quantile(0.99)
    }
}

#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// Two or more results of `https load --json`; ratios are against the first.
    #[arg(required = true, num_args = 2..)]
    pub files: Vec<PathBuf>,
    /// Also write overlaid plots (throughput over time, latency by percentile) here.
    #[arg(long)]
    pub plot_dir: Option<PathBuf>,
}

pub fn compare(args: &CompareArgs) -> Result<()> {
    let runs: Vec<RunResult> = args
        .files
        .iter()
        .map(|f| RunResult::read(f))
        .collect::<Result<_>>()?;
    print!("{}", compare_table(&runs));
    if let Some(dir) = &args.plot_dir {
        for path in crate::plot::compare(dir, &runs)? {
            eprintln!("https: wrote {}", path.display());
        }
    }
    Ok(())
}

/// The side-by-side table: one column per run, then each later run's ratio to the first.
pub fn compare_table(runs: &[RunResult]) -> String {
    type Metric = (&'static str, fn(&RunResult) -> f64, usize);
    fn per_s(r: &RunResult, n: u64) -> f64 {
        if r.totals.elapsed_s > 0.0 {
            n as f64 / r.totals.elapsed_s
        } else {
            0.0
        }
    }
    let metrics: [Metric; 14] = [
        ("ok/s", |r| r.totals.ok_per_s, 0),
        ("requests", |r| r.totals.requests as f64, 0),
        ("errors", |r| r.totals.errors as f64, 0),
        ("p50 µs", |r| r.latency_us.p50 as f64, 0),
        ("p90 µs", |r| r.latency_us.p90 as f64, 0),
        ("p99 µs", |r| r.latency_us.p99 as f64, 0),
        ("p99.9 µs", |r| r.latency_us.p999 as f64, 0),
        ("max µs", |r| r.latency_us.max as f64, 0),
        ("mean µs", |r| r.latency_us.mean, 0),
        ("full handshakes/s", |r| per_s(r, r.handshakes.full), 0),
        (
            "resumed handshakes/s",
            |r| per_s(r, r.handshakes.resumed),
            0,
        ),
        ("missed slots", |r| r.totals.missed_slots as f64, 0),
        (
            "client CPU µs/req",
            |r| {
                if r.totals.requests > 0 {
                    r.totals.client_cpu_s * 1e6 / r.totals.requests as f64
                } else {
                    0.0
                }
            },
            1,
        ),
        ("elapsed s", |r| r.totals.elapsed_s, 2),
    ];
    let mut out = String::new();
    let _ = write!(out, "| |");
    for r in runs {
        let _ = write!(out, " {} |", r.label.replace('|', "/"));
    }
    for r in &runs[1..] {
        let _ = write!(
            out,
            " {} / {} |",
            r.label.replace('|', "/"),
            runs[0].label.replace('|', "/")
        );
    }
    out.push('\n');
    out.push_str("|---|");
    for _ in 0..(runs.len() * 2 - 1) {
        out.push_str("---:|");
    }
    out.push('\n');
    let describe = |r: &RunResult| {
        let c = &r.config;
        let lp = match c.rate_per_s {
            Some(rate) => format!("open {rate:.0}/s"),
            None => "closed".to_owned(),
        };
        let kind = if c.new_connections {
            if c.resume {
                "new conn, resumed"
            } else {
                "new conn"
            }
        } else {
            "keep-alive"
        };
        format!(
            "{} {} ×{} p{} {kind}, {lp}",
            c.target, c.workload, c.connections, c.pipeline
        )
    };
    let _ = write!(out, "| run |");
    for r in runs {
        let _ = write!(out, " {} |", describe(r));
    }
    for _ in &runs[1..] {
        out.push_str(" |");
    }
    out.push('\n');
    for (name, f, decimals) in metrics {
        let _ = write!(out, "| {name} |");
        let base = f(&runs[0]);
        for r in runs {
            let _ = write!(out, " {:.*} |", decimals, f(r));
        }
        for r in &runs[1..] {
            let v = f(r);
            if base > 0.0 {
                let _ = write!(out, " {:.2}× |", v / base);
            } else {
                out.push_str(" – |");
            }
        }
        out.push('\n');
    }
    let _ = write!(out, "| ledger check |");
    for r in runs {
        let _ = write!(out, " {} |", r.ledger_check.replace('|', "/"));
    }
    for _ in &runs[1..] {
        out.push_str(" |");
    }
    out.push('\n');
    out
}

#[cfg(test)]
pub mod tests {
    use super::*;

    pub fn sample(label: &str, ok_per_s: f64, p99: u64) -> RunResult {
        RunResult {
            format_version: FORMAT_VERSION,
            label: label.to_owned(),
            started_unix_s: 1,
            config: RunConfig {
                target: "10.99.0.2:8443".into(),
                workload: "transfers".into(),
                path: "/v1/transfers".into(),
                connections: 64,
                threads: 2,
                pipeline: 1,
                new_connections: false,
                resume: false,
                rate_per_s: None,
                duration_s: 10.0,
                requests: None,
            },
            totals: Totals {
                requests: 1000,
                ok: 1000,
                errors: 0,
                elapsed_s: 2.0,
                ok_per_s,
                ..Totals::default()
            },
            errors: BTreeMap::new(),
            first_error: None,
            latency_us: Percentiles {
                count: 1000,
                mean: 10.0,
                p50: 5,
                p90: 8,
                p99,
                p999: p99 * 2,
                max: p99 * 3,
            },
            latency_curve: vec![(0.0, 1), (0.5, 5), (0.99, p99), (1.0, p99 * 3)],
            series: vec![
                Second {
                    second: 0,
                    ok: 500,
                    errors: 0,
                    p50_us: 5,
                    p99_us: p99,
                },
                Second {
                    second: 1,
                    ok: 500,
                    errors: 0,
                    p50_us: 5,
                    p99_us: p99,
                },
            ],
            handshakes: Handshakes {
                full: 64,
                resumed: 0,
            },
            ledger_check: "ok".into(),
        }
    }

    fn interval(second: u64, ok: u64, latency_us: u64) -> Interval {
        let mut i = Interval::new(second);
        i.ok = ok;
        for _ in 0..ok {
            i.latency_us.record(latency_us).expect("in bounds");
        }
        i
    }

    fn summary(last: Interval, last_end_ns: u64) -> ThreadSummary {
        ThreadSummary {
            last,
            last_end_ns,
            missed_slots: 1,
            connections_dead: 0,
            first_error: None,
        }
    }

    #[test]
    fn seconds_are_final_once_every_thread_reported_them() {
        let mut m = Merger::new(2);
        m.interval(0, interval(0, 10, 100));
        assert!(m.series.is_empty(), "thread 1 has not reported second 0");
        m.interval(1, interval(0, 5, 300));
        assert_eq!(m.series.len(), 1);
        assert_eq!((m.series[0].ok, m.series[0].p99_us), (15, 300));
        m.interval(0, interval(1, 1, 100));
        m.done(0, summary(interval(2, 2, 100), 2_500_000_000));
        m.done(1, summary(interval(1, 3, 100), 1_900_000_000));
        assert!(m.all_done());
        let config = sample("x", 0.0, 0).config;
        let r = m.result("run".into(), 7, config, 0.5, "ok".into());
        assert_eq!(
            r.series
                .iter()
                .map(|s| (s.second, s.ok))
                .collect::<Vec<_>>(),
            vec![(0, 15), (1, 4), (2, 2)]
        );
        assert_eq!(
            (r.totals.ok, r.totals.requests, r.totals.missed_slots),
            (21, 21, 2)
        );
        assert!((r.totals.elapsed_s - 2.5).abs() < 1e-9);
        assert!((r.totals.ok_per_s - 8.4).abs() < 1e-9);
        assert_eq!(r.latency_us.count, 21);
        assert_eq!(r.latency_us.max, 300);
        assert_eq!(r.latency_curve.last().map(|c| c.0), Some(1.0));
        assert_eq!(r.errors.len(), ErrorKind::ALL.len());
    }

    #[test]
    fn results_survive_a_round_trip_and_compare_with_ratios() {
        let a = sample("nginx", 1000.0, 200);
        let b = sample("pantera", 1500.0, 300);
        let text = serde_json::to_string(&b).expect("serializable");
        let back: RunResult = serde_json::from_str(&text).expect("readable");
        assert_eq!(back, b);
        let table = compare_table(&[a, b]);
        assert!(
            table.starts_with("| | nginx | pantera | pantera / nginx |\n"),
            "{table}"
        );
        assert!(table.contains("| ok/s | 1000 | 1500 | 1.50× |"), "{table}");
        assert!(table.contains("| p99 µs | 200 | 300 | 1.50× |"), "{table}");
        assert!(table.contains("| errors | 0 | 0 | – |"), "{table}");
        assert!(table.contains("| ledger check | ok | ok | |"), "{table}");
    }
}
