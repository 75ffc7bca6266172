//! The audit log: one JSON line per write request (every POST, answered or refused), in its
//! own file, written by its own thread (docs/operations.md, "Audit log").
//!
//! Each worker holds an [`Audit`] handle and collects one [`Record`] per write once the
//! response is queued; at the end of each of its turns (or at [`RECORDS_PER_SEND_MAX`]) it
//! sends what it collected as one batch through a bounded channel, so a busy worker wakes the
//! writer once per turn instead of once per write, and the channel costs one operation per
//! batch. The writer thread ([`AuditWriter`]) turns records into lines, appends them with
//! buffered writes, flushes after every batch it drains, syncs by the configured policy
//! ([`Fsync`]), rotates the file by size, and hands the emptied batch back for reuse.
//!
//! Nothing is dropped. When the channel is full the worker blocks on the send until the
//! writer makes room: every connection of that queue waits meanwhile, which is the point (a
//! write must not outrun its audit record by more than the channel and one turn hold). The
//! channel's bound is `audit.channel_capacity` records, counted in whole batches of up to
//! [`RECORDS_PER_SEND_MAX`] (so it holds at least that many records). The time spent
//! waiting is counted in `pantera_audit_backpressure_seconds_total`, the records waiting in
//! `pantera_audit_queue_depth`.
//!
//! A failed write or sync of the audit file is fatal, as a failed WAL write is (docs/style.md):
//! the process stops (exit code 70) rather than go on applying writes nobody can audit. A
//! failed rotation (a rename) is not: the current file keeps growing, the failure is logged
//! and counted (`pantera_audit_errors_total`), and rotation is tried again later.
//!
//! What the log does not promise: a record is written after its response is queued, so the
//! client may hold a reply whose record is still in its worker's batch, in the channel, in
//! the writer's buffer, or
//! (with `fsync = "interval"` or `"never"`) in the page cache. A crash of the process loses
//! the records in the channel and the buffer; a crash of the host loses, besides, what was
//! not yet synced. A clean stop (SIGTERM) writes and syncs every record before exit.

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::cell::RefCell;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, TrySendError};
use ledger_svc::api::Role;
use ledger_svc::connection::Answered;
use prometheus::{Counter, IntCounter, IntGauge, Registry};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;

/// Records the writer takes from the channel before it flushes: a flush (a write(2)) per
/// batch, and a bound on how long a flush waits.
const BATCH_RECORDS_MAX: usize = 1024;
/// The writer wakes at most this often while records keep coming: what arrives meanwhile is
/// written in one go. Records are not on any reply's path (a response never waits for its
/// record), so the delay costs nothing but the wake-ups it saves: under load a worker ends a
/// turn, and sends a batch, once per group commit, thousands of times a second.
const WAKE_INTERVAL_MIN: Duration = Duration::from_millis(1);
/// Records a worker collects before it sends them, even within a turn: the granularity of the
/// channel's bound, and what one turn's batch can hold before it goes.
pub const RECORDS_PER_SEND_MAX: usize = 64;
/// The audit file and its rotated copies are readable by the service's user only: they name
/// the clients and what they did.
const FILE_MODE: u32 = 0o600;
/// The process's exit code when the audit file fails, as for a failed WAL (EX_SOFTWARE).
const EXIT_FATAL: i32 = 70;

/// `[audit]`: where and how the audit log is written. Every key has a default, so a section
/// may set any of them alone.
// Serialize: the effective configuration can be printed (`check-config --print`).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Write the audit log (only `app = "ledger"` has writes to audit).
    pub enabled: bool,
    /// The file; default `audit.log` beside the data directory (a sibling of `ledger.data_dir`,
    /// never inside it: the data directory holds only the ledger's files).
    pub path: Option<PathBuf>,
    /// Past this size the file is rotated: `audit.log` becomes `audit.log.1`, and so on.
    pub max_bytes: u64,
    /// Rotated files kept (`audit.log.1` ..= `audit.log.<keep>`); the oldest is deleted.
    pub keep: u32,
    /// "batch" (fdatasync after every batch drained), "interval" (at most every
    /// `fsync_interval_ms`, and that long after the last record at the latest) or "never"
    /// (the kernel writes back when it likes; a clean stop still syncs).
    pub fsync: String,
    pub fsync_interval_ms: u64,
    /// Records waiting for the writer, from all workers; when full, workers wait.
    pub channel_capacity: usize,
}

impl Default for AuditSection {
    fn default() -> AuditSection {
        AuditSection {
            enabled: true,
            path: None,
            max_bytes: 256 * 1024 * 1024,
            keep: 10,
            fsync: "interval".to_owned(),
            fsync_interval_ms: 1000,
            channel_capacity: 65_536,
        }
    }
}

/// When the writer makes what it wrote durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fsync {
    Batch,
    Interval(Duration),
    Never,
}

impl AuditSection {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |field: &'static str, reason: &str| ConfigError::Invalid {
            field,
            reason: reason.to_owned(),
        };
        if !(4096..=1 << 40).contains(&self.max_bytes) {
            return Err(invalid(
                "audit.max_bytes",
                "must be in 4096..=1099511627776",
            ));
        }
        if !(1..=1000).contains(&self.keep) {
            return Err(invalid("audit.keep", "must be in 1..=1000"));
        }
        if !(1..=60_000).contains(&self.fsync_interval_ms) {
            return Err(invalid("audit.fsync_interval_ms", "must be in 1..=60000"));
        }
        if !(1..=1 << 20).contains(&self.channel_capacity) {
            return Err(invalid("audit.channel_capacity", "must be in 1..=1048576"));
        }
        if let Some(path) = &self.path {
            if path.as_os_str().is_empty() || path.file_name().is_none() {
                return Err(invalid("audit.path", "must name a file"));
            }
        }
        self.fsync_policy()?;
        Ok(())
    }

    pub fn fsync_policy(&self) -> Result<Fsync, ConfigError> {
        match self.fsync.as_str() {
            "batch" => Ok(Fsync::Batch),
            "interval" => Ok(Fsync::Interval(Duration::from_millis(
                self.fsync_interval_ms,
            ))),
            "never" => Ok(Fsync::Never),
            other => Err(ConfigError::Invalid {
                field: "audit.fsync",
                reason: format!("{other:?} is not \"batch\", \"interval\" or \"never\""),
            }),
        }
    }

    /// The audit file: `path`, or `audit.log` beside the data directory.
    pub fn path_for(&self, data_dir: &Path) -> PathBuf {
        if let Some(path) = &self.path {
            return path.clone();
        }
        match data_dir.parent() {
            Some(parent) => parent.join("audit.log"),
            None => PathBuf::from("audit.log"),
        }
    }
}

/// The writer's counters, registered with the appliance's registry.
#[derive(Clone, Debug)]
pub struct AuditMetrics {
    records: IntCounter,
    bytes: IntCounter,
    rotations: IntCounter,
    errors: IntCounter,
    backpressure_seconds: Counter,
    queue_depth: IntGauge,
}

impl AuditMetrics {
    /// Registers the audit metrics (the registry adds the `pantera_` prefix).
    pub fn register(registry: &Registry) -> prometheus::Result<AuditMetrics> {
        let records = IntCounter::new(
            "audit_records_total",
            "Write records appended to the audit log.",
        )?;
        let bytes = IntCounter::new("audit_bytes_total", "Bytes appended to the audit log.")?;
        let rotations = IntCounter::new("audit_rotations_total", "Audit log rotations by size.")?;
        let errors = IntCounter::new(
            "audit_errors_total",
            "Audit log errors that did not stop the process (failed rotations).",
        )?;
        let backpressure_seconds = Counter::new(
            "audit_backpressure_seconds_total",
            "Time workers spent waiting for room in the audit channel (every connection of the queue waited).",
        )?;
        let queue_depth = IntGauge::new(
            "audit_queue_depth",
            "Audit records waiting for the writer thread.",
        )?;
        registry.register(Box::new(records.clone()))?;
        registry.register(Box::new(bytes.clone()))?;
        registry.register(Box::new(rotations.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(backpressure_seconds.clone()))?;
        registry.register(Box::new(queue_depth.clone()))?;
        Ok(AuditMetrics {
            records,
            bytes,
            rotations,
            errors,
            backpressure_seconds,
            queue_depth,
        })
    }
}

/// One write request, as a worker hands it to the writer.
#[derive(Debug)]
pub struct Record {
    /// Per-queue sequence number, from 1; with the process's start and the queue it makes the
    /// request id.
    pub seq: u64,
    pub queue: Arc<str>,
    /// When the response was queued for sending.
    pub at: SystemTime,
    /// The client's address and port.
    pub peer: Option<SocketAddr>,
    pub answered: Answered,
}

/// A worker's handle on the audit log. Clones share the channel and the sequence numbers;
/// each collects its own batch ([`Audit::flush`] sends it, and so does dropping the handle).
#[derive(Debug)]
pub struct Audit {
    tx: Sender<Vec<Record>>,
    /// Batches the writer has emptied, for reuse: no allocation per batch in steady state.
    recycled: Receiver<Vec<Record>>,
    /// Records collected since the last send.
    batch: RefCell<Vec<Record>>,
    /// Records sent and not yet written, all handles (the queue-depth gauge).
    waiting: Arc<AtomicI64>,
    queue: Arc<str>,
    seq: Arc<AtomicU64>,
    metrics: AuditMetrics,
}

impl Clone for Audit {
    fn clone(&self) -> Audit {
        Audit {
            tx: self.tx.clone(),
            recycled: self.recycled.clone(),
            batch: RefCell::new(Vec::new()),
            waiting: Arc::clone(&self.waiting),
            queue: Arc::clone(&self.queue),
            seq: Arc::clone(&self.seq),
            metrics: self.metrics.clone(),
        }
    }
}

/// The two ends of the channel between the handles and the writer, with room for `batches`
/// batches (and as many emptied ones on the way back): the first handle, and the writer's.
fn channel(batches: usize, metrics: AuditMetrics) -> (Audit, Writer) {
    let (tx, rx) = crossbeam_channel::bounded(batches);
    let (recycle, recycled) = crossbeam_channel::bounded(batches);
    let waiting = Arc::new(AtomicI64::new(0));
    let audit = Audit {
        tx,
        recycled,
        batch: RefCell::new(Vec::new()),
        waiting: Arc::clone(&waiting),
        queue: Arc::from("-"),
        seq: Arc::new(AtomicU64::new(0)),
        metrics: metrics.clone(),
    };
    (audit, Writer { rx, recycle, waiting, metrics })
}

/// Batches of up to [`RECORDS_PER_SEND_MAX`] that hold `audit.channel_capacity` records.
fn batches_for(capacity_records: usize) -> usize {
    capacity_records.div_ceil(RECORDS_PER_SEND_MAX).max(1)
}

impl Audit {
    /// A handle for the worker of `queue`, numbering its records from 1.
    pub fn for_queue(&self, queue: &str) -> Audit {
        let mut audit = self.clone();
        audit.queue = Arc::from(queue);
        audit.seq = Arc::new(AtomicU64::new(0));
        audit
    }

    /// Collects the record of a response if it answers a write; other responses are ignored.
    /// The batch is sent at [`RECORDS_PER_SEND_MAX`] records, else by [`Audit::flush`].
    pub fn record(&self, peer: Option<SocketAddr>, answered: Answered) {
        if answered.write.is_none() {
            return;
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let record = Record {
            seq,
            queue: Arc::clone(&self.queue),
            at: SystemTime::now(),
            peer,
            answered,
        };
        let full = {
            let mut batch = self.batch.borrow_mut();
            batch.push(record);
            batch.len() >= RECORDS_PER_SEND_MAX
        };
        if full {
            self.flush();
        }
    }

    /// Sends the records collected so far as one batch (the worker calls this at the end of
    /// every turn). Blocks while the channel is full (the wait is counted), never drops.
    pub fn flush(&self) {
        let mut batch = self.batch.borrow_mut();
        if batch.is_empty() {
            return;
        }
        let next = self.recycled.try_recv().unwrap_or_else(|_| Vec::with_capacity(RECORDS_PER_SEND_MAX));
        let full = std::mem::replace(&mut *batch, next);
        let records = full.len() as i64;
        let sent = match self.tx.try_send(full) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(full)) => {
                let waited_from = Instant::now();
                let sent = self.tx.send(full).map_err(|_| ());
                self.metrics
                    .backpressure_seconds
                    .inc_by(waited_from.elapsed().as_secs_f64());
                sent
            }
            Err(TrySendError::Disconnected(_)) => Err(()),
        };
        if sent.is_err() {
            // The writer only leaves while a handle exists if it died: go on and writes would
            // be applied unaudited.
            log::error!("FATAL: the audit log writer is gone, stopping");
            std::process::exit(EXIT_FATAL);
        }
        let waiting = self.waiting.fetch_add(records, Ordering::Relaxed) + records;
        self.metrics.queue_depth.set(waiting);
    }
}

impl Drop for Audit {
    /// A handle's last records go with it: a worker that stops sends what its turn left.
    fn drop(&mut self) {
        self.flush();
    }
}

/// The writer thread. Join it after every [`Audit`] handle is dropped (after the workers):
/// it writes and syncs what is left, then returns.
#[derive(Debug)]
pub struct AuditWriter {
    thread: JoinHandle<()>,
}

impl AuditWriter {
    /// Waits for the writer to write and sync the last records, until `deadline`. False: it
    /// was still running then.
    pub fn join_until(self, deadline: std::time::Instant) -> bool {
        crate::shutdown::join_until(self.thread, deadline)
    }
}

/// The settings the writer runs with, resolved from `[audit]`.
#[derive(Clone, Debug)]
pub struct Settings {
    pub path: PathBuf,
    pub max_bytes: u64,
    pub keep: u32,
    pub fsync: Fsync,
    pub channel_capacity: usize,
}

impl Settings {
    pub fn new(section: &AuditSection, data_dir: &Path) -> Result<Settings, ConfigError> {
        Ok(Settings {
            path: section.path_for(data_dir),
            max_bytes: section.max_bytes,
            keep: section.keep,
            fsync: section.fsync_policy()?,
            channel_capacity: section.channel_capacity,
        })
    }
}

/// Opens the audit file (appending to what an earlier run wrote) and starts the writer.
/// A file that cannot be opened refuses the start.
pub fn start(settings: &Settings, metrics: AuditMetrics) -> io::Result<(Audit, AuditWriter)> {
    open(settings, metrics)?.spawn()
}

/// The audit file opened, its writer not started yet (`serve` drops its privileges in
/// between).
pub struct Opened {
    file: LogFile,
    fsync: Fsync,
    channel_capacity: usize,
    metrics: AuditMetrics,
}

impl std::fmt::Debug for Opened {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Opened").field("fsync", &self.fsync).finish_non_exhaustive()
    }
}

/// The first half of [`start`]: opens the audit file (appending to what an earlier run
/// wrote).
pub fn open(settings: &Settings, metrics: AuditMetrics) -> io::Result<Opened> {
    let file = LogFile::open(settings, metrics.clone())?;
    Ok(Opened { file, fsync: settings.fsync, channel_capacity: settings.channel_capacity, metrics })
}

impl Opened {
    /// The second half of [`start`]: starts the writer thread.
    pub fn spawn(self) -> io::Result<(Audit, AuditWriter)> {
        let Opened { file, fsync, channel_capacity, metrics } = self;
        let (audit, writer) = channel(batches_for(channel_capacity), metrics);
        let start_id = start_id(SystemTime::now());
        let thread = std::thread::Builder::new()
            .name("audit".to_owned())
            .spawn(move || {
                crate::sandbox::confine_thread(crate::sandbox::Kind::Audit);
                if let Err(e) = run(file, &writer, &start_id, fsync) {
                    log::error!("FATAL: the audit log failed, stopping: {e}");
                    std::process::exit(EXIT_FATAL);
                }
            })?;
        Ok((audit, AuditWriter { thread }))
    }
}

/// Starts the audit log `[audit]` describes, its metrics in the appliance's registry.
pub fn start_from_config(
    config: &crate::config::Config,
    metrics: &crate::metrics::Metrics,
) -> anyhow::Result<(Audit, AuditWriter)> {
    Ok(open_from_config(config, metrics)?.spawn()?)
}

/// The first half of [`start_from_config`]: opens the audit file `[audit]` names and
/// registers its metrics; [`Opened::spawn`] starts the writer.
pub fn open_from_config(
    config: &crate::config::Config,
    metrics: &crate::metrics::Metrics,
) -> anyhow::Result<Opened> {
    use anyhow::Context;
    let settings = Settings::new(&config.audit, &config.ledger.data_dir)?;
    let audit_metrics =
        AuditMetrics::register(&metrics.registry).context("cannot register the audit metrics")?;
    let opened = open(&settings, audit_metrics)
        .with_context(|| format!("cannot open the audit log {}", settings.path.display()))?;
    log::info!(
        "audit log: {} (fsync {:?})",
        settings.path.display(),
        settings.fsync
    );
    Ok(opened)
}

/// The first part of every request id of this process: its start in milliseconds since the
/// Unix epoch, in hex, so ids never repeat across restarts.
fn start_id(now: SystemTime) -> String {
    format!(
        "{:x}",
        now.duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis()
    )
}

/// The writer's ends: batches in, emptied batches back, the count of records waiting.
struct Writer {
    rx: Receiver<Vec<Record>>,
    recycle: Sender<Vec<Record>>,
    waiting: Arc<AtomicI64>,
    metrics: AuditMetrics,
}

impl Writer {
    /// An emptied batch goes back to the handles; when they hold enough spares it is freed.
    fn recycle(&self, mut batch: Vec<Record>) {
        self.waiting.fetch_sub(batch.len() as i64, Ordering::Relaxed);
        batch.clear();
        let _ = self.recycle.try_send(batch);
    }
}

/// The writer's loop: batches until every handle is gone.
fn run(mut file: LogFile, writer: &Writer, start_id: &str, fsync: Fsync) -> io::Result<()> {
    let (rx, metrics) = (&writer.rx, &writer.metrics);
    let mut line = Vec::with_capacity(512);
    let mut synced_at = Instant::now();
    let mut unsynced = false;
    let mut woke_at: Option<Instant> = None;
    loop {
        // Not back to a blocking receive at once: a receiver blocked on an empty channel is
        // woken by the next send, and the next, one futex wake and context switch each.
        if let Some(woke_at) = woke_at {
            let awake = woke_at.elapsed();
            if awake < WAKE_INTERVAL_MIN {
                std::thread::sleep(WAKE_INTERVAL_MIN - awake);
            }
        }
        // With an interval policy, wake when the data written last is due to be synced even
        // if no record comes.
        let first = match fsync {
            Fsync::Interval(interval) if unsynced => {
                rx.recv_timeout(interval.saturating_sub(synced_at.elapsed()))
            }
            _ => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        woke_at = Some(Instant::now());
        let first = match first {
            Ok(batch) => batch,
            Err(RecvTimeoutError::Timeout) => {
                file.sync()?;
                synced_at = Instant::now();
                unsynced = false;
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        #[cfg(feature = "fault-injection")]
        crate::fault::sandbox_point(crate::sandbox::Kind::Audit);
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(batch) = next {
            for record in &batch {
                line.clear();
                write_line(&mut line, start_id, record).map_err(io::Error::other)?;
                file.append(&line)?;
            }
            taken += batch.len();
            writer.recycle(batch);
            next = if taken < BATCH_RECORDS_MAX {
                rx.try_recv().ok()
            } else {
                None
            };
        }
        file.flush()?;
        metrics.queue_depth.set(writer.waiting.load(Ordering::Relaxed));
        unsynced = true;
        let due = match fsync {
            Fsync::Batch => true,
            Fsync::Interval(interval) => synced_at.elapsed() >= interval,
            Fsync::Never => false,
        };
        if due {
            file.sync()?;
            synced_at = Instant::now();
            unsynced = false;
        }
    }
    // A clean stop: everything written is made durable, whatever the policy.
    file.flush()?;
    file.sync()?;
    metrics.queue_depth.set(0);
    Ok(())
}

/// The open audit file, its size, and its rotation.
struct LogFile {
    path: PathBuf,
    out: BufWriter<File>,
    bytes: u64,
    max_bytes: u64,
    /// The next size at which a rotation is tried (past `max_bytes` after a failed one).
    rotate_at: u64,
    keep: u32,
    metrics: AuditMetrics,
}

impl LogFile {
    fn open(settings: &Settings, metrics: AuditMetrics) -> io::Result<LogFile> {
        let file = open_append(&settings.path)?;
        let bytes = file.metadata()?.len();
        Ok(LogFile {
            path: settings.path.clone(),
            out: BufWriter::with_capacity(64 * 1024, file),
            bytes,
            max_bytes: settings.max_bytes,
            rotate_at: settings.max_bytes,
            keep: settings.keep,
            metrics,
        })
    }

    /// Appends one line; rotates once the file has passed `max_bytes`, so a record is never
    /// split between two files.
    fn append(&mut self, line: &[u8]) -> io::Result<()> {
        self.out.write_all(line)?;
        self.bytes += line.len() as u64;
        self.metrics.records.inc();
        self.metrics.bytes.inc_by(line.len() as u64);
        if self.bytes >= self.rotate_at {
            self.rotate()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    fn sync(&mut self) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_data()
    }

    /// `audit.log.<keep-1>` -> `audit.log.<keep>` (replacing the oldest) ... `audit.log` ->
    /// `audit.log.1`, then a new `audit.log`. The full file is synced first, so a rotated file
    /// is complete on disk. A failed rename is logged and counted and leaves the current file
    /// in use (tried again after another `max_bytes`); a new file that cannot be opened is
    /// fatal (the caller stops).
    fn rotate(&mut self) -> io::Result<()> {
        self.sync()?;
        if let Err(e) = self.shift() {
            self.metrics.errors.inc();
            self.rotate_at = self.bytes + self.max_bytes;
            log::error!(
                "cannot rotate the audit log {}: {e}; it keeps growing",
                self.path.display()
            );
            return Ok(());
        }
        let file = open_append(&self.path)?;
        self.out = BufWriter::with_capacity(64 * 1024, file);
        self.bytes = 0;
        self.rotate_at = self.max_bytes;
        self.metrics.rotations.inc();
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            // The renames and the new file's name are durable with their directory.
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    fn shift(&self) -> io::Result<()> {
        for n in (1..self.keep).rev() {
            match std::fs::rename(rotated(&self.path, n), rotated(&self.path, n + 1)) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        std::fs::rename(&self.path, rotated(&self.path, 1))
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(FILE_MODE)
        .open(path)
}

/// `audit.log` -> `audit.log.<n>`.
pub fn rotated(path: &Path, n: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// One record as a line of JSON, fields in a fixed order (docs/operations.md, "Audit log").
#[derive(Serialize)]
struct Line<'a> {
    id: String,
    time: String,
    peer: Option<String>,
    queue: &'a str,
    identity: Option<&'a str>,
    role: Option<&'static str>,
    method: &'static str,
    route: &'static str,
    status: u16,
    operation: &'static str,
    events: usize,
    results: Results<'a>,
    request_bytes: usize,
    response_bytes: usize,
    duration_us: u64,
}

/// The result codes and their counts, as one JSON object in first-seen order.
struct Results<'a>(&'a [(&'static str, u32)]);

impl Serialize for Results<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (code, count) in self.0 {
            map.serialize_entry(code, count)?;
        }
        map.end()
    }
}

/// Appends `record` to `out` as one JSON line, newline included.
pub fn write_line(out: &mut Vec<u8>, start_id: &str, record: &Record) -> serde_json::Result<()> {
    let a = &record.answered;
    let write = a.write.as_ref();
    let line = Line {
        id: format!("{start_id}-{}-{}", record.queue, record.seq),
        time: rfc3339_ms(record.at),
        peer: record.peer.map(|p| p.to_string()),
        queue: &record.queue,
        identity: write.and_then(|w| w.identity.as_deref()),
        role: write.and_then(|w| w.role).map(|r| match r {
            Role::Read => "read",
            Role::Write => "write",
        }),
        method: a.method,
        route: a.route,
        status: a.status,
        operation: write.map_or("none", |w| w.operation),
        events: write.map_or(0, |w| w.events),
        results: Results(write.map_or(&[], |w| w.results.as_slice())),
        request_bytes: a.request_bytes,
        response_bytes: a.response_bytes,
        duration_us: u64::try_from(a.duration.as_micros()).unwrap_or(u64::MAX),
    };
    serde_json::to_writer(&mut *out, &line)?;
    out.push(b'\n');
    Ok(())
}

/// `2026-12-03T04:21:29.123Z`: RFC 3339, UTC, milliseconds.
pub fn rfc3339_ms(at: SystemTime) -> String {
    let since = at.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = tls_term::certs::civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        since.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_svc::connection::WriteRecord;

    fn metrics() -> AuditMetrics {
        AuditMetrics::register(&Registry::new()).expect("metrics")
    }

    fn answered(status: u16, identity: &str, results: Vec<(&'static str, u32)>) -> Answered {
        Answered {
            status,
            method: "POST",
            route: "/transfers",
            duration: Duration::from_micros(1234),
            request_bytes: 321,
            response_bytes: 99,
            write: Some(WriteRecord {
                operation: "create_transfers",
                events: results.iter().map(|(_, n)| *n as usize).sum(),
                identity: Some(Arc::from(identity)),
                role: Some(Role::Write),
                results,
            }),
        }
    }

    fn record(seq: u64, answered: Answered) -> Record {
        Record {
            seq,
            queue: Arc::from("0"),
            at: UNIX_EPOCH + Duration::from_millis(1_796_271_689_123),
            peer: Some("10.99.0.1:40000".parse().expect("addr")),
            answered,
        }
    }

    fn settings(dir: &Path, max_bytes: u64, keep: u32, channel_capacity: usize) -> Settings {
        Settings {
            path: dir.join("audit.log"),
            max_bytes,
            keep,
            fsync: Fsync::Batch,
            channel_capacity,
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pantera-audit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    #[test]
    fn a_record_is_one_json_line_with_every_field_in_order() {
        let mut out = Vec::new();
        let r = record(
            7,
            answered(200, "client", vec![("ok", 9), ("exceeds_credits", 1)]),
        );
        write_line(&mut out, "19a1", &r).expect("json");
        let golden = concat!(
            r#"{"id":"19a1-0-7","time":"2026-12-03T04:21:29.123Z","peer":"10.99.0.1:40000","queue":"0","#,
            r#""identity":"client","role":"write","method":"POST","route":"/transfers","status":200,"#,
            r#""operation":"create_transfers","events":10,"results":{"ok":9,"exceeds_credits":1},"#,
            r#""request_bytes":321,"response_bytes":99,"duration_us":1234}"#,
            "\n"
        );
        assert_eq!(String::from_utf8(out).expect("utf-8"), golden);
    }

    #[test]
    fn a_refused_write_without_identity_has_nulls_and_no_results() {
        let mut a = answered(403, "x", Vec::new());
        let w = a.write.as_mut().expect("write");
        w.identity = None;
        w.role = None;
        w.operation = "none";
        w.events = 0;
        let mut out = Vec::new();
        write_line(&mut out, "1", &record(1, a)).expect("json");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["identity"], serde_json::Value::Null);
        assert_eq!(v["role"], serde_json::Value::Null);
        assert_eq!(v["status"], 403);
        assert_eq!(v["operation"], "none");
        assert_eq!(v["results"], serde_json::json!({}));
    }

    #[test]
    fn an_identity_with_quotes_is_escaped() {
        let mut out = Vec::new();
        write_line(
            &mut out,
            "1",
            &record(1, answered(200, "a\"b\n", vec![("ok", 1)])),
        )
        .expect("json");
        let v: serde_json::Value = serde_json::from_slice(&out).expect("valid JSON");
        assert_eq!(v["identity"], "a\"b\n");
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1, "one line");
    }

    #[test]
    fn dates_are_rfc3339_utc() {
        assert_eq!(rfc3339_ms(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century leap year) 23:59:59.999.
        assert_eq!(
            rfc3339_ms(UNIX_EPOCH + Duration::from_millis(951_868_799_999)),
            "2000-02-29T23:59:59.999Z"
        );
        assert_eq!(
            rfc3339_ms(UNIX_EPOCH + Duration::from_secs(4_107_542_400)),
            "2100-03-01T00:00:00.000Z"
        );
    }

    /// One written record of a successful write, as the rotation tests append it.
    fn ok_line() -> Vec<u8> {
        let mut line = Vec::new();
        write_line(
            &mut line,
            "1",
            &record(1, answered(200, "client", vec![("ok", 1)])),
        )
        .expect("json");
        line
    }

    #[test]
    fn rotation_at_size_keeps_the_newest_files() {
        let dir = temp_dir("rotate");
        let s = settings(&dir, 4096, 2, 16);
        let m = metrics();
        let mut file = LogFile::open(&s, m.clone()).expect("open");
        let line = ok_line();
        let per_file = 4096_usize.div_ceil(line.len());
        // Four files' worth: three rotations; keep = 2 leaves audit.log.1 and audit.log.2.
        for _ in 0..per_file * 3 + 1 {
            file.append(&line).expect("append");
        }
        file.sync().expect("sync");
        assert_eq!(m.rotations.get(), 3);
        assert!(!rotated(&s.path, 3).exists(), "only `keep` rotated files");
        for n in 1..=2 {
            let rotated = std::fs::read(rotated(&s.path, n)).expect("rotated file");
            assert_eq!(
                rotated.len(),
                per_file * line.len(),
                "a rotated file ends at a record past max_bytes"
            );
        }
        assert_eq!(std::fs::read(&s.path).expect("current").len(), line.len());
        assert_eq!(m.records.get(), (per_file * 3 + 1) as u64);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_failed_rotation_keeps_writing_the_current_file_and_is_counted() {
        let dir = temp_dir("rotate-fails");
        let s = settings(&dir, 4096, 1, 16);
        // audit.log.1 is a directory that is not empty: renaming the log over it fails.
        std::fs::create_dir_all(rotated(&s.path, 1).join("occupied")).expect("blocker");
        let m = metrics();
        let mut file = LogFile::open(&s, m.clone()).expect("open");
        let line = ok_line();
        let records = 2 * 4096_usize.div_ceil(line.len()) + 1;
        for _ in 0..records {
            file.append(&line).expect("a failed rotation is not fatal");
        }
        file.sync().expect("sync");
        assert_eq!(m.rotations.get(), 0);
        // Tried at max_bytes, then again one max_bytes later.
        assert_eq!(m.errors.get(), 2);
        assert_eq!(
            std::fs::read(&s.path).expect("current").len(),
            records * line.len(),
            "nothing lost"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_restart_appends_to_the_existing_file() {
        let dir = temp_dir("append");
        let s = settings(&dir, 1 << 20, 2, 16);
        std::fs::write(&s.path, b"{\"earlier\":1}\n").expect("an earlier run's log");
        let mut file = LogFile::open(&s, metrics()).expect("open");
        assert_eq!(file.bytes, 14, "the size counts what is there");
        file.append(b"{\"later\":2}\n").expect("append");
        file.sync().expect("sync");
        assert_eq!(
            std::fs::read_to_string(&s.path).expect("log"),
            "{\"earlier\":1}\n{\"later\":2}\n"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_full_channel_blocks_the_worker_rather_than_dropping() {
        let dir = temp_dir("backpressure");
        let s = settings(&dir, 1 << 20, 2, 2);
        let registry = Registry::new();
        let m = AuditMetrics::register(&registry).expect("metrics");
        // A stalled writer: the channel's receiver is held, not read, until the test lets go.
        // Room for two batches; the worker sends a batch of one record per turn.
        let (audit, writer) = channel(2, m.clone());
        let worker_audit = audit.for_queue("0");
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let worker = std::thread::spawn(move || {
            for _ in 0..5 {
                worker_audit.record(None, answered(200, "client", vec![("ok", 1)]));
                worker_audit.flush();
                done_tx.send(()).expect("test alive");
            }
        });
        // Two fit; the third send blocks until the writer takes one.
        for _ in 0..2 {
            done_rx
                .recv_timeout(Duration::from_secs(10))
                .expect("a send with room returns");
        }
        assert!(
            done_rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "the third record waits for room"
        );
        assert_eq!(writer.rx.len(), 2);
        // The writer starts: every record arrives, in order, none dropped.
        let file = LogFile::open(&s, m.clone()).expect("open");
        drop(audit);
        let writer = std::thread::spawn(move || run(file, &writer, "1", Fsync::Batch));
        worker.join().expect("worker");
        writer.join().expect("writer").expect("written");
        let text = std::fs::read_to_string(&s.path).expect("log");
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json")["id"]
                    .as_str()
                    .expect("id")
                    .to_owned()
            })
            .collect();
        assert_eq!(ids, (1..=5).map(|n| format!("1-0-{n}")).collect::<Vec<_>>());
        let scraped = registry.gather();
        let waited = scraped
            .iter()
            .find(|f| f.name() == "audit_backpressure_seconds_total")
            .expect("metric");
        assert!(
            waited.get_metric()[0].get_counter().get_value() > 0.0,
            "the wait is counted"
        );
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn a_response_that_is_not_a_write_is_not_recorded() {
        let (audit, writer) = channel(4, metrics());
        let mut get = answered(200, "client", Vec::new());
        get.method = "GET";
        get.write = None;
        audit.record(None, get);
        audit.record(None, answered(200, "client", vec![("ok", 1)]));
        audit.flush();
        assert_eq!(writer.rx.try_iter().flatten().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
    }

    #[test]
    fn a_worker_sends_its_records_in_batches_in_order_and_the_last_with_the_handle() {
        let (first_handle, writer) = channel(8, metrics());
        let audit = first_handle.for_queue("0");
        drop(first_handle);
        let (rx, waiting) = (writer.rx.clone(), Arc::clone(&writer.waiting));
        // A full batch goes by itself, within a turn.
        for _ in 0..RECORDS_PER_SEND_MAX {
            audit.record(None, answered(200, "client", vec![("ok", 1)]));
        }
        let first = rx.try_recv().expect("a full batch is sent at once");
        assert_eq!(first.len(), RECORDS_PER_SEND_MAX);
        assert!(first.iter().map(|r| r.seq).eq(1..=RECORDS_PER_SEND_MAX as u64));
        assert_eq!(waiting.load(Ordering::Relaxed), RECORDS_PER_SEND_MAX as i64);
        // Fewer wait for the end of the turn.
        audit.record(None, answered(200, "client", vec![("ok", 1)]));
        assert!(rx.try_recv().is_err(), "a partial batch waits for the flush");
        audit.flush();
        assert_eq!(rx.try_recv().expect("flushed").iter().map(|r| r.seq).collect::<Vec<_>>(), vec![65]);
        audit.flush();
        assert!(rx.try_recv().is_err(), "an empty batch is not sent");
        // An emptied batch comes back and is reused; records left in a dropped handle are sent.
        writer.recycle(first);
        assert_eq!(waiting.load(Ordering::Relaxed), 1);
        assert_eq!(audit.recycled.len(), 1);
        audit.record(None, answered(200, "client", vec![("ok", 1)]));
        audit.flush();
        assert_eq!(audit.recycled.len(), 0, "the emptied batch is the next one");
        assert_eq!(rx.try_recv().expect("flushed").iter().map(|r| r.seq).collect::<Vec<_>>(), vec![66]);
        audit.record(None, answered(200, "client", vec![("ok", 1)]));
        drop(audit);
        let last = rx.try_recv().expect("the dropped handle sent its record");
        assert_eq!(last.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![67]);
    }

    #[test]
    fn the_section_defaults_and_validates() {
        let s: AuditSection = toml::from_str("keep = 3").expect("one key alone");
        assert_eq!(
            s,
            AuditSection {
                keep: 3,
                ..AuditSection::default()
            }
        );
        assert!(s.validate().is_ok());
        assert_eq!(
            s.path_for(Path::new("/var/lib/pantera/data")),
            Path::new("/var/lib/pantera/audit.log")
        );
        assert!(
            toml::from_str::<AuditSection>("kep = 3").is_err(),
            "unknown keys are refused"
        );
        let bad = AuditSection {
            fsync: "sometimes".to_owned(),
            ..AuditSection::default()
        };
        assert!(bad.validate().is_err());
        let bad = AuditSection {
            channel_capacity: 0,
            ..AuditSection::default()
        };
        assert!(bad.validate().is_err());
        let bad = AuditSection {
            keep: 0,
            ..AuditSection::default()
        };
        assert!(bad.validate().is_err());
        assert_eq!(
            AuditSection::default().fsync_policy().expect("valid"),
            Fsync::Interval(Duration::from_secs(1))
        );
    }
}
