//! The ledger thread: the single writer (TigerBeetle's model).
//!
//! It drains submissions from every worker, applies everything waiting as one batch, appends the
//! batch to the WAL (group commit), and releases the replies only once a sync has made the batch
//! durable. At `ledger.pipeline_depth = 1` (the default) the sync runs on this thread before the
//! next batch is written; at 2 it runs on the WAL syncer thread (`wal-sync`), so while batch N's
//! fdatasync is in flight the ledger thread applies and writes batch N+1 (a pipelined group
//! commit, docs/ledger.md "Pipelined group commit"). Either way replies leave strictly after
//! their own batch is durable, in order. Queries ride in the same drain and are answered after the batch, from
//! the state it left; their answers too wait until that state is durable.
//!
//! The policy (what joins a batch, when an empty batch expires pending transfers, when a
//! checkpoint begins, which replies may go) is `ledger_svc::committer::Committer`, a sans-IO
//! state machine the deterministic simulator runs too (docs/simulation.md); this thread is its
//! driver: channels, the wall clock, real files and the checkpoint writer thread.
//!
//! Checkpoints stay off the commit path: after a batch's replies are released, if one is due,
//! the ledger thread rolls the WAL and lists the files the checkpoint will supersede
//! (`Ledger::begin_checkpoint`: no pass over the state) and hands the job to the checkpoint
//! writer thread, which brings its replica of the state up to that batch by replaying the
//! closed WAL segments, writes, syncs and renames the file on its own storage handle while
//! batches go on, then removes the WAL segments and the checkpoint it supersedes; when it
//! reports back, the ledger thread records it (`Ledger::finish_checkpoint`,
//! no I/O). A failed checkpoint write is fatal
//! like a failed WAL write: nothing acknowledged is lost (the segments it would supersede are
//! still there), but a disk that fails an fsync cannot be trusted with the next batch either,
//! and stopping makes the operator look now rather than at the next restart.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};
use ledger_svc::api::{self, Command, Reply};
use ledger_svc::committer::{Committer, CommitterConfig, LedgerStatus, Step};
use ledger_svc::ledger::CheckpointJob;
use ledger_svc::{FileStorage, Ledger, LedgerError, Storage, StorageError, SyncJob};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};

use crate::metrics::Metrics;

/// Where a reply goes back to: the worker, the connection (its slot in the worker's table and
/// the slot's generation, so a reply never reaches a later connection in the same slot), and
/// the request's place in that connection's pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    pub worker: usize,
    pub slot: usize,
    pub generation: u32,
    pub seq: u64,
}

#[derive(Debug)]
pub struct Submission {
    pub reply_to: ReplyTo,
    pub command: Command,
}

/// The ledger's typed reply; the connection renders it (JSON is not the single writer's job).
#[derive(Debug)]
pub struct Completion {
    pub reply_to: ReplyTo,
    pub reply: Reply,
}

/// A worker's end of the ledger: submit without blocking, or learn that the queue is full.
/// Mutations and queries have separate queues, so a flood of one kind cannot starve the other
/// (the ledger thread serves both every turn).
#[derive(Clone, Debug)]
pub struct LedgerClient {
    writes: Sender<Submission>,
    reads: Sender<Submission>,
}

/// A submission the ledger did not take. Its command is dropped at once (the worker answers
/// the request 503 with Retry-After from its own record of it), so a refusal hands back only
/// which request it was.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubmitError {
    #[error("the ledger's queue is full (request {} of slot {})", reply_to.seq, reply_to.slot)]
    Full { reply_to: ReplyTo },
    #[error("the ledger thread has stopped (request {} of slot {})", reply_to.seq, reply_to.slot)]
    Stopped { reply_to: ReplyTo },
}

impl SubmitError {
    /// The request the submission answers.
    pub fn reply_to(&self) -> ReplyTo {
        match self {
            SubmitError::Full { reply_to } | SubmitError::Stopped { reply_to } => *reply_to,
        }
    }
}

impl LedgerClient {
    /// Queues a command. When its queue is full the command is refused, so the worker
    /// answers 503 with Retry-After and memory stays bounded.
    pub fn submit(&self, submission: Submission) -> Result<(), SubmitError> {
        let queue = if submission.command.is_mutation() { &self.writes } else { &self.reads };
        match queue.try_send(submission) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(s)) => Err(SubmitError::Full { reply_to: s.reply_to }),
            Err(TrySendError::Disconnected(s)) => Err(SubmitError::Stopped { reply_to: s.reply_to }),
        }
    }
}

/// The ledger thread's ends of the two submission queues.
#[derive(Debug)]
pub struct Queues {
    pub writes: Receiver<Submission>,
    pub reads: Receiver<Submission>,
}

impl Queues {
    fn is_empty(&self) -> bool {
        self.writes.is_empty() && self.reads.is_empty()
    }
}

/// Queries answered per ledger-thread turn, after the turn's batch: a reads-only flood delays a
/// write by at most this many queries (each at most one page: at most 128 KiB of rows, copied
/// without rendering, found by examining at most `api::QUERY_SCAN_ROWS_MAX` objects), and
/// writes never starve reads.
pub const READS_PER_TURN_MAX: usize = 64;

/// The channels between the workers and the ledger thread.
#[derive(Debug)]
pub struct Channels {
    /// The workers' end of the submission queue (cloned into each).
    pub client: LedgerClient,
    /// The ledger thread's ends of the submission queues.
    pub submissions: Queues,
    /// The ledger thread's ends of the reply channels, one per worker.
    pub replies_tx: Vec<Sender<Completion>>,
    /// The workers' ends of the reply channels, one per worker.
    pub replies_rx: Vec<Receiver<Completion>>,
}

/// `queue_depth_max` bounds each of the two queues (mutations, queries).
pub fn channels(queue_depth_max: usize, workers: usize) -> Channels {
    let (writes_tx, writes) = crossbeam_channel::bounded(queue_depth_max);
    let (reads_tx, reads) = crossbeam_channel::bounded(queue_depth_max);
    // Replies are bounded by the submissions in flight (the bounded queues above plus one
    // turn), so an unbounded channel back to each worker cannot grow past that.
    let (replies_tx, replies_rx) = (0..workers).map(|_| crossbeam_channel::unbounded()).unzip();
    Channels { client: LedgerClient { writes: writes_tx, reads: reads_tx }, submissions: Queues { writes, reads }, replies_tx, replies_rx }
}

/// The ledger thread as `serve` and `serve-kernel` run it: its client end and the workers'
/// reply channels.
#[derive(Debug)]
pub struct Started {
    pub client: LedgerClient,
    pub replies: Vec<Receiver<Completion>>,
    pub thread: std::thread::JoinHandle<()>,
}

/// Opens the configured data directory (`ledger.data_dir`), refusing a missing, unformatted
/// or foreign one, or one group or other users could read (`ledger_svc::data_dir::open`).
/// Call it before anything touches the network. With `--lab` (`lab_home`), a data directory
/// that does not exist yet is formatted first (cluster `ledger.cluster_id`): the lab makes
/// its own fresh home; a configured `serve` never formats.
pub fn open_data_dir(config: &crate::config::Config, lab_home: Option<&std::path::Path>) -> anyhow::Result<FileStorage> {
    use anyhow::Context;
    let dir = &config.ledger.data_dir;
    if lab_home.is_some() && !dir.exists() {
        let superblock = ledger_svc::data_dir::format(dir, config.ledger.cluster_id, ledger_svc::data_dir::random_ledger_id(), now_ns())
            .with_context(|| format!("--lab: cannot format the data directory {}", dir.display()))?;
        log::info!("--lab: formatted a new data directory {} (cluster {}, ledger {:032x})", dir.display(), superblock.cluster_id, superblock.ledger_id);
    }
    let (storage, superblock) = ledger_svc::data_dir::open(dir, Some(config.ledger.cluster_id)).context("ledger.data_dir")?;
    log::info!(
        "data directory {}: cluster {}, ledger {:032x}, format version {}",
        dir.display(),
        superblock.cluster_id,
        superblock.ledger_id,
        superblock.format_version
    );
    Ok(storage)
}

/// Recovers the ledger from `storage` (the data directory `open_data_dir` checked; refusing
/// damaged acknowledged data before anything else starts) and starts the ledger thread, with
/// a reply channel for each of `workers`. On a clean stop the thread leaves the clean-stop
/// marker (`Ledger::close`), so the next start refuses any damage instead of cutting a tail.
pub fn start(config: &crate::config::Config, storage: FileStorage, workers: usize, metrics: &Metrics) -> anyhow::Result<Started> {
    recover(config, storage, workers, metrics)?.spawn()
}

/// The configured ledger backend, its thread not started yet (`serve` drops its privileges in
/// between): the embedded ledger recovered from its data directory, or the TigerBeetle
/// backend (src/cluster_backend.rs). Both take the same queues and send the same replies.
#[derive(Debug)]
pub enum Backend {
    Embedded(Box<Recovered>),
    TigerBeetle(Box<crate::cluster_backend::Prepared>),
}

impl Backend {
    /// Starts the backend's thread (`ledger`).
    pub fn spawn(self) -> anyhow::Result<Started> {
        match self {
            Backend::Embedded(recovered) => recovered.spawn(),
            Backend::TigerBeetle(prepared) => prepared.spawn(),
        }
    }
}

/// Opens the data directory when the configured backend has one (`open_data_dir`; the
/// embedded ledger): call it before anything touches the network.
pub fn open_storage(config: &crate::config::Config, lab_home: Option<&std::path::Path>) -> anyhow::Result<Option<FileStorage>> {
    match config.backend()? {
        crate::config::Backend::Embedded => open_data_dir(config, lab_home).map(Some),
        crate::config::Backend::TigerBeetle => Ok(None),
    }
}

/// The backend of `config` for `workers` workers: the embedded ledger recovered from
/// `storage` (what `open_storage` opened), or the TigerBeetle backend prepared.
pub fn prepare(config: &crate::config::Config, storage: Option<FileStorage>, workers: usize, metrics: &Metrics) -> anyhow::Result<Backend> {
    match storage {
        Some(storage) => Ok(Backend::Embedded(Box::new(recover(config, storage, workers, metrics)?))),
        None => Ok(Backend::TigerBeetle(Box::new(crate::cluster_backend::prepare(config, workers, metrics)?))),
    }
}

/// The recovered ledger, its thread not started yet (`serve` drops its privileges in between).
#[derive(Debug)]
pub struct Recovered {
    ledger: Ledger<FileStorage>,
    channels: Channels,
    settings: CommitSettings,
    metrics: Metrics,
}

/// The first half of [`start`]: recovers the ledger from `storage` (refusing damaged
/// acknowledged data) and makes the channels, with a reply channel for each of `workers`.
pub fn recover(config: &crate::config::Config, storage: FileStorage, workers: usize, metrics: &Metrics) -> anyhow::Result<Recovered> {
    use anyhow::Context;
    let data_dir = &config.ledger.data_dir;
    let recovery = Instant::now();
    let ledger = Ledger::open(storage, config.ledger_config()?)
        .with_context(|| format!("cannot recover the ledger from {}", data_dir.display()))?;
    log::info!("ledger recovered from {} in {:?}", data_dir.display(), recovery.elapsed());
    metrics.ledger_recovery_clean_stop.set(i64::from(ledger.recovery().clean_stop));
    if let Some((file, offset, bytes)) = &ledger.recovery().truncated {
        metrics.ledger_recovery_cut_bytes.set(i64::try_from(*bytes).unwrap_or(i64::MAX));
        log::warn!(
            "ledger recovery cut a torn tail of {bytes} bytes at byte offset {offset} of {file} (a write never acknowledged); the bytes are kept in {}",
            ledger.recovery().kept_as.as_deref().unwrap_or("?")
        );
    }
    Ok(Recovered {
        ledger,
        channels: channels(config.ledger.queue_depth_max, workers),
        settings: CommitSettings::of(config),
        metrics: metrics.clone(),
    })
}

impl Recovered {
    /// The second half of [`start`]: starts the ledger thread (it starts the checkpoint
    /// writer, `pantera-ckpt`, and at pipeline depth 2 the WAL syncer, `wal-sync`).
    pub fn spawn(self) -> anyhow::Result<Started> {
        let Recovered { mut ledger, channels, settings, metrics } = self;
        let Channels { client, submissions, replies_tx, replies_rx } = channels;
        let thread = std::thread::Builder::new().name("ledger".to_owned()).spawn(move || {
            crate::sandbox::confine_thread(crate::sandbox::Kind::Ledger);
            if let Err(e) = run(&mut ledger, &submissions, &replies_tx, &settings, &metrics) {
                // docs/style.md: a failed WAL write or fsync is fatal. Nothing of the failed batch was
                // acknowledged; stop now rather than acknowledge anything after a lost write.
                log::error!("FATAL: the write-ahead log failed, stopping: {e}");
                std::process::exit(70);
            }
            // Every client is gone and the queue is drained: a clean stop.
            if let Err(e) = ledger.close() {
                log::error!("FATAL: the ledger could not stop cleanly (the next start recovers as after a crash): {e}");
                std::process::exit(70);
            }
        })?;
        Ok(Started { client, replies: replies_rx, thread })
    }
}

/// The longest the ledger thread sleeps before looking at a due expiry again (the wall clock
/// may jump).
const EXPIRY_WAIT_MAX: Duration = Duration::from_secs(1);

/// The longest the idle ledger thread waits before it beats its heartbeat again (well inside
/// `health::HEARTBEAT_INTERVAL_MAX`).
const HEARTBEAT_TICK: Duration = Duration::from_millis(500);

/// The ledger's clock: wall time in nanoseconds. The ledger itself keeps timestamps strictly
/// increasing even if this goes backwards.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Checkpoints handed to the writer thread and not yet finished: one (the ledger never begins
/// a second while one is in flight, so the queue never holds more).
const CHECKPOINTS_IN_FLIGHT_MAX: usize = 1;

/// The ledger thread's end of the checkpoint writer.
struct Checkpoints {
    jobs: Sender<CheckpointJob>,
    done: Receiver<Result<CheckpointJob, LedgerError>>,
    metrics: Metrics,
}

fn writer_stopped() -> LedgerError {
    LedgerError::CheckpointWriter("stopped unexpectedly".to_string())
}

impl Checkpoints {
    /// Finishes the checkpoint the writer reported, if it did.
    fn poll<S: Storage>(&self, ledger: &mut Ledger<S>) -> Result<(), LedgerError> {
        match self.done.try_recv() {
            Ok(report) => self.finish(ledger, report),
            Err(TryRecvError::Empty) => Ok(()),
            Err(TryRecvError::Disconnected) => Err(writer_stopped()),
        }
    }

    fn finish<S: Storage>(&self, ledger: &mut Ledger<S>, report: Result<CheckpointJob, LedgerError>) -> Result<(), LedgerError> {
        let job = report?;
        let started = Instant::now();
        let sequence = job.sequence();
        ledger.finish_checkpoint(job)?;
        self.metrics.ledger_checkpoints.inc();
        log::debug!("ledger checkpoint {sequence} finished in {:?}", started.elapsed());
        Ok(())
    }

    /// Begins the checkpoint the committer found due, and queues it for the writer.
    fn begin<S: Storage>(&self, ledger: &mut Ledger<S>) -> Result<(), LedgerError> {
        let started = Instant::now();
        if let Some(job) = ledger.begin_checkpoint()? {
            self.metrics.ledger_checkpoint_begin_seconds.observe(started.elapsed().as_secs_f64());
            log::info!(
                "ledger checkpoint {} begun: {} directory entries listed on the ledger thread in {:?}",
                job.sequence(),
                job.work().ledger_thread_entries,
                started.elapsed()
            );
            // Room is certain: at most one job is in flight and it was not.
            self.jobs.try_send(job).map_err(|_| writer_stopped())?;
        }
        Ok(())
    }

    /// Waits for the checkpoint in flight, if any, and finishes it (a clean stop).
    fn drain<S: Storage>(&self, ledger: &mut Ledger<S>) -> Result<(), LedgerError> {
        if ledger.checkpoint_in_flight().is_none() {
            return Ok(());
        }
        let report = self.done.recv().map_err(|_| writer_stopped())?;
        self.finish(ledger, report)
    }
}

/// The checkpoint writer thread: writes each job on its own storage handle and reports back.
fn write_checkpoints<S: Storage>(mut storage: S, jobs: Receiver<CheckpointJob>, done: Sender<Result<CheckpointJob, LedgerError>>) {
    for mut job in jobs {
        #[cfg(feature = "fault-injection")]
        crate::fault::sandbox_point(crate::sandbox::Kind::Checkpoint);
        let started = Instant::now();
        let report = job.write(&mut storage).map(|()| job);
        match &report {
            Ok(job) => log::info!("ledger checkpoint {} written in {:?} off the ledger thread: {:?}", job.sequence(), started.elapsed(), job.work()),
            Err(error) => log::error!("ledger checkpoint write failed: {error}"),
        }
        if done.send(report).is_err() {
            break;
        }
    }
}

/// WAL syncs handed to the syncer thread and not reported yet: one (the committer never
/// begins a second while one is in flight, so the queue never holds more).
const SYNCS_IN_FLIGHT_MAX: usize = 1;

/// The metrics of the pipelined group commit (registered beside the others in `metrics.rs`).
#[derive(Clone, Debug)]
pub struct SyncMetrics {
    /// One WAL sync (fdatasync of the segments written since the last one), on whichever
    /// thread runs it (`ledger.pipeline_depth`).
    pub fsync_seconds: Histogram,
    /// WAL syncs completed (each covers one batch or more).
    pub syncs: IntCounter,
    /// Batches written and not yet durable (0, 1 or 2: `committer::BATCHES_UNSYNCED_MAX`).
    pub batches_unsynced: IntGauge,
    /// Batches applied and written while the previous batch's sync was in flight.
    pub batches_overlapped: IntCounter,
}

impl SyncMetrics {
    pub fn register(registry: &Registry) -> SyncMetrics {
        let fsync_seconds = Histogram::with_opts(
            HistogramOpts::new("ledger_fsync_seconds", "Time of one WAL sync, on the ledger thread (pipeline depth 1) or the syncer thread (depth 2): fdatasync of the segments written since the last one.")
                .buckets(prometheus::exponential_buckets(10e-6, 2.0, 16).expect("valid")),
        )
        .expect("valid");
        let syncs = IntCounter::new("ledger_syncs_total", "WAL syncs completed (each makes one batch or more durable).").expect("valid");
        let batches_unsynced = IntGauge::new("ledger_batches_unsynced", "Batches written to the WAL and not yet durable (at most 2).").expect("valid");
        let batches_overlapped =
            IntCounter::new("ledger_batches_overlapped_total", "Batches applied and written while the previous batch's fsync was in flight.").expect("valid");
        registry.register(Box::new(fsync_seconds.clone())).expect("unique");
        registry.register(Box::new(syncs.clone())).expect("unique");
        registry.register(Box::new(batches_unsynced.clone())).expect("unique");
        registry.register(Box::new(batches_overlapped.clone())).expect("unique");
        SyncMetrics { fsync_seconds, syncs, batches_unsynced, batches_overlapped }
    }
}

/// What the syncer reports for one job: its result and how long it took.
struct SyncReport {
    result: Result<u64, StorageError>,
    took: Duration,
}

/// The ledger thread's end of the WAL syncs: the syncer thread's queues (pipeline depth 2),
/// or none, and each sync runs on the ledger thread before the next batch (depth 1).
struct Syncer {
    /// The syncer thread's job queue; `None`: syncs run inline.
    jobs: Option<Sender<SyncJob>>,
    /// The syncer thread's reports (`never` when syncs run inline).
    done: Receiver<SyncReport>,
    metrics: SyncMetrics,
}

fn syncer_stopped() -> LedgerError {
    LedgerError::SyncProtocol("the WAL syncer thread stopped unexpectedly")
}

impl Syncer {
    /// Runs the committer's `Sync`: a job covering every record written so far, handed to
    /// the syncer thread or run here; with nothing to sync (`Durability::None`), durable at
    /// once.
    fn begin<S: Storage>(&self, ledger: &mut Ledger<S>, core: &mut Committer<ReplyTo>, upto: u64) -> Result<(), LedgerError> {
        match (ledger.begin_sync()?, &self.jobs) {
            // Room is certain: at most one job is in flight and it was not.
            (Some(job), Some(jobs)) => jobs.try_send(job).map_err(|_| syncer_stopped()),
            (Some(job), None) => {
                let started = Instant::now();
                let result = job.run();
                self.finish(ledger, core, SyncReport { result, took: started.elapsed() })
            }
            (None, _) => {
                core.synced(upto);
                Ok(())
            }
        }
    }

    /// Records a finished sync: the ledger's watermark moves and the committer releases
    /// what it covers. A failed sync is fatal (the ledger is poisoned; nothing it covered,
    /// nor anything written after it, is ever released).
    fn finish<S: Storage>(&self, ledger: &mut Ledger<S>, core: &mut Committer<ReplyTo>, report: SyncReport) -> Result<(), LedgerError> {
        self.metrics.fsync_seconds.observe(report.took.as_secs_f64());
        let durable = ledger.sync_done(report.result)?;
        self.metrics.syncs.inc();
        core.synced(durable);
        self.metrics.batches_unsynced.set(core.unsynced_batches() as i64);
        Ok(())
    }

    /// Finishes the sync the syncer reported, if it did.
    fn poll<S: Storage>(&self, ledger: &mut Ledger<S>, core: &mut Committer<ReplyTo>) -> Result<(), LedgerError> {
        match self.done.try_recv() {
            Ok(report) => self.finish(ledger, core, report),
            Err(TryRecvError::Empty) => Ok(()),
            Err(TryRecvError::Disconnected) => Err(syncer_stopped()),
        }
    }
}

/// The WAL syncer thread: runs each job (fdatasync on descriptors the ledger thread
/// duplicated, so it opens nothing) and reports back.
fn sync_wal(jobs: Receiver<SyncJob>, done: Sender<SyncReport>) {
    for job in jobs {
        #[cfg(feature = "fault-injection")]
        crate::fault::sandbox_point(crate::sandbox::Kind::Syncer);
        let started = Instant::now();
        let result = job.run();
        if done.send(SyncReport { result, took: started.elapsed() }).is_err() {
            break;
        }
    }
}

/// How the ledger thread commits: `[ledger]`'s bounds, durability and pipeline depth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommitSettings {
    /// `ledger.batch_events_max`.
    pub batch_events_max: usize,
    /// `ledger.durability` ("fsync" or "none"): the label of `ledger_commit_seconds`.
    pub durability: String,
    /// `ledger.pipeline_depth`: 1, each WAL sync on the ledger thread before the next batch;
    /// 2, on the WAL syncer thread while the next batch is applied and written.
    pub pipeline_depth: usize,
}

impl CommitSettings {
    /// The settings of `config`'s `[ledger]` (validated).
    pub fn of(config: &crate::config::Config) -> CommitSettings {
        CommitSettings {
            batch_events_max: config.ledger.batch_events_max,
            durability: config.ledger.durability.clone(),
            pipeline_depth: config.ledger.pipeline_depth,
        }
    }

    /// fsync durability at `pipeline_depth`, batches of at most `batch_events_max` events.
    pub fn fsync(batch_events_max: usize, pipeline_depth: usize) -> CommitSettings {
        CommitSettings { batch_events_max, durability: "fsync".to_owned(), pipeline_depth }
    }
}

/// Runs until every `LedgerClient` is dropped and the queue is drained and every batch
/// written is durable and released, then waits for the checkpoint in flight, if any. Returns
/// Err for a failed WAL append or sync, or a failed checkpoint write, which the caller must
/// treat as fatal: nothing written since the last durable batch was acknowledged, and the
/// process stops rather than acknowledge data it may have lost. Checkpoints are written by a
/// thread it spawns, on `ledger.storage().reopen()`; at pipeline depth 2, WAL syncs by
/// another (`wal-sync`).
pub fn run<S: Storage + Send>(
    ledger: &mut Ledger<S>,
    rx: &Queues,
    replies: &[Sender<Completion>],
    settings: &CommitSettings,
    metrics: &Metrics,
) -> Result<(), LedgerError> {
    let writer_storage = ledger.storage().reopen()?;
    std::thread::scope(|scope| {
        let (jobs_tx, jobs_rx) = crossbeam_channel::bounded(CHECKPOINTS_IN_FLIGHT_MAX);
        let (done_tx, done_rx) = crossbeam_channel::bounded(CHECKPOINTS_IN_FLIGHT_MAX);
        std::thread::Builder::new()
            .name("pantera-ckpt".to_string())
            .spawn_scoped(scope, move || {
                crate::sandbox::confine_thread(crate::sandbox::Kind::Checkpoint);
                write_checkpoints(writer_storage, jobs_rx, done_tx)
            })
            .map_err(|e| LedgerError::CheckpointWriter(format!("spawn: {e}")))?;
        let syncer = if settings.pipeline_depth > 1 {
            let (sync_jobs_tx, sync_jobs_rx) = crossbeam_channel::bounded(SYNCS_IN_FLIGHT_MAX);
            let (synced_tx, synced_rx) = crossbeam_channel::bounded(SYNCS_IN_FLIGHT_MAX);
            std::thread::Builder::new()
                .name("wal-sync".to_string())
                .spawn_scoped(scope, move || {
                    crate::sandbox::confine_thread(crate::sandbox::Kind::Syncer);
                    sync_wal(sync_jobs_rx, synced_tx)
                })
                .map_err(|_| LedgerError::SyncProtocol("the WAL syncer thread could not start"))?;
            Syncer { jobs: Some(sync_jobs_tx), done: synced_rx, metrics: metrics.ledger_sync.clone() }
        } else {
            Syncer { jobs: None, done: crossbeam_channel::never(), metrics: metrics.ledger_sync.clone() }
        };
        let checkpoints = Checkpoints { jobs: jobs_tx, done: done_rx, metrics: metrics.clone() };
        let result = commit_batches(ledger, rx, replies, settings, metrics, &checkpoints, &syncer);
        // A clean stop leaves the newest checkpoint finished, so the next start replays little.
        result.and_then(|()| checkpoints.drain(ledger))
        // Dropping `checkpoints` and `syncer` closes both threads' queues; the scope joins
        // them, each after the job it holds, if any (after an error that job is abandoned:
        // a crash at any point of a checkpoint or a sync recovers).
    })
}

fn commit_batches<S: Storage>(
    ledger: &mut Ledger<S>,
    rx: &Queues,
    replies: &[Sender<Completion>],
    settings: &CommitSettings,
    metrics: &Metrics,
    checkpoints: &Checkpoints,
    syncer: &Syncer,
) -> Result<(), LedgerError> {
    let commit_seconds = metrics.ledger_commit_seconds.with_label_values(&[settings.durability.as_str()]);
    // Beaten on every turn, busy or idle, with no WAL sync in flight: /healthz turns 503 if
    // this thread stops turning (a loop that never ends, a write or a sync that never
    // returns). Dropped on a clean stop.
    let heartbeat = metrics.health.register("ledger");
    // The policy (pipelined group commit, expiry, checkpoint scheduling, reply release) is the
    // sans-IO committer's; this loop only moves submissions in, runs its steps on the real
    // ledger and the syncer, and sends the replies out.
    let mut core: Committer<ReplyTo> = Committer::new(CommitterConfig {
        batches_unsynced_max: settings.pipeline_depth,
        ..CommitterConfig::new(settings.batch_events_max, READS_PER_TURN_MAX)
    });
    // When each batch with requests began (its write), until its replies go: the commit
    // time a request waits, apply + write + sync (at most `BATCHES_UNSYNCED_MAX` entries).
    let mut started: std::collections::VecDeque<(u64, Instant)> = std::collections::VecDeque::new();
    // Every `LedgerClient` is gone: no more submissions will come (what is queued is drained).
    let mut clients_gone = false;
    let never = crossbeam_channel::never();
    loop {
        // Not while a WAL sync is in flight: the heartbeat stands for the commit path
        // turning, and a sync that never returns must turn /healthz 503 wherever it runs
        // (at depth 1 it blocks this thread, so no beat comes either). Under load a beat
        // falls between one sync's report and the next sync's start (`run_steps` begins it
        // after this).
        if !core.is_syncing() {
            heartbeat.beat();
        }
        checkpoints.poll(ledger)?;
        syncer.poll(ledger, &mut core)?;
        // Group commit: every mutation already waiting joins the next batch, up to the
        // committer's bounds; the rest stays in the bounded queues.
        while core.wants_write() {
            let Ok(submission) = rx.writes.try_recv() else { break };
            core.submit(submission.reply_to, submission.command);
        }
        while core.wants_read() {
            let Ok(submission) = rx.reads.try_recv() else { break };
            core.submit(submission.reply_to, submission.command);
        }
        metrics.ledger_queue_depth.set((rx.writes.len() + rx.reads.len()) as i64);
        // The fault switch's moment: a turn with work drained (a write or a read).
        #[cfg(feature = "fault-injection")]
        if !core.is_idle() {
            crate::fault::ledger_batch();
        }
        if run_steps(ledger, &mut core, replies, metrics, &commit_seconds, checkpoints, syncer, &mut started)? {
            continue;
        }
        if clients_gone && rx.is_empty() && core.is_idle() {
            // Every client is gone, the queues are drained, and every batch written is
            // durable and released: a clean stop.
            break;
        }
        // Nothing to do now: wait for a submission the committer has room for, the syncer's
        // or the checkpoint writer's report, a due expiry or the heartbeat tick. Pending
        // transfers expire on the ledger's clock, which only moves with a batch: when one is
        // due and no request comes, the committer writes an empty batch (logged, so replay
        // expires the same transfers at the same time).
        let wait = match core.poll_at(&status(ledger)) {
            Some(due_ns) if core.is_idle() => Duration::from_nanos(due_ns.saturating_sub(now_ns())).min(EXPIRY_WAIT_MAX).min(HEARTBEAT_TICK),
            _ => HEARTBEAT_TICK,
        };
        let timer = crossbeam_channel::after(wait);
        // A queue is watched only while the committer has room for what it holds, so the
        // queues' bounds keep bounding what waits (a full batch is not grown past them).
        let writes = if !clients_gone && core.wants_write() { &rx.writes } else { &never };
        let reads = if !clients_gone && core.wants_read() { &rx.reads } else { &never };
        crossbeam_channel::select! {
            recv(writes) -> s => match s {
                Ok(s) => core.submit(s.reply_to, s.command),
                Err(_) => clients_gone = true,
            },
            recv(reads) -> s => match s {
                Ok(s) => core.submit(s.reply_to, s.command),
                Err(_) => clients_gone = true,
            },
            recv(syncer.done) -> report => syncer.finish(ledger, &mut core, report.map_err(|_| syncer_stopped())?)?,
            recv(checkpoints.done) -> report => checkpoints.finish(ledger, report.map_err(|_| writer_stopped())?)?,
            recv(timer) -> _ => {},
        }
    }
    Ok(())
}

/// Runs the committer's steps until it has nothing to do; returns whether it did anything.
/// Bounded: at most `BATCHES_UNSYNCED_MAX` writes, and the answers and releases of what was
/// drained.
#[allow(clippy::too_many_arguments)]
fn run_steps<S: Storage>(
    ledger: &mut Ledger<S>,
    core: &mut Committer<ReplyTo>,
    replies: &[Sender<Completion>],
    metrics: &Metrics,
    commit_seconds: &Histogram,
    checkpoints: &Checkpoints,
    syncer: &Syncer,
    started: &mut std::collections::VecDeque<(u64, Instant)>,
) -> Result<bool, LedgerError> {
    let mut progressed = false;
    while let Some(step) = core.poll(now_ns(), &status(ledger)) {
        progressed = true;
        match step {
            Step::Write { now_ns, ops } => {
                let began = Instant::now();
                if core.is_syncing() {
                    metrics.ledger_sync.batches_overlapped.inc();
                }
                let op_replies = ledger.write(now_ns, &ops)?;
                let sequence = ledger.sequence();
                if !ops.is_empty() {
                    started.push_back((sequence, began));
                }
                core.written(sequence, op_replies);
                metrics.ledger_batches.inc();
                metrics.ledger_sync.batches_unsynced.set(core.unsynced_batches() as i64);
            }
            Step::Sync { upto } => syncer.begin(ledger, core, upto)?,
            Step::Release { sequence, replies: released } => {
                // The batch is durable: release its replies, in order.
                while let Some(&(batch, began)) = started.front() {
                    if batch > sequence {
                        break;
                    }
                    started.pop_front();
                    if batch == sequence {
                        commit_seconds.observe(began.elapsed().as_secs_f64());
                    }
                }
                metrics.ledger_batch_requests.observe(released.len() as f64);
                metrics.ledger_requests.inc_by(released.len() as u64);
                for r in released {
                    // A created object's timestamp never changes, so rendering from the state
                    // of a later batch gives the reply the batch's own state would.
                    let reply = api::reply_of(&r.reply, ledger.state(), &r.op);
                    metrics.ledger.count_applied(&r.op, &reply);
                    // A worker that has stopped no longer needs its replies.
                    let _ = replies[r.token.worker].send(Completion { reply_to: r.token, reply });
                }
            }
            Step::Answer(reads) => {
                // From the state as it is now (every batch written); the committer holds the
                // answers until that state is durable.
                let answers = reads.into_iter().map(|(reply_to, command)| (reply_to, api::answer(ledger.state(), &command))).collect();
                core.answered(answers);
            }
            Step::Deliver(answers) => {
                for (reply_to, reply) in answers {
                    let _ = replies[reply_to.worker].send(Completion { reply_to, reply });
                    metrics.ledger.queries.inc();
                }
            }
            // After the replies, with every batch durable: the encoding pause delays only
            // requests still queued.
            Step::BeginCheckpoint => checkpoints.begin(ledger)?,
        }
    }
    Ok(progressed)
}

/// What the committer needs of the ledger before each step.
fn status<S: Storage>(ledger: &Ledger<S>) -> LedgerStatus {
    LedgerStatus { next_expiry_ns: ledger.state().poll_at(), checkpoint_due: ledger.checkpoint_due() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ledger_svc::{Account, Operation, SimStorage, Transfer};

    /// Both commit pipelines: each sync on the ledger thread (1), or on the syncer while the
    /// next batch is written (2).
    const PIPELINE_DEPTHS: [usize; 2] = [1, 2];

    fn reply_to(seq: u64) -> ReplyTo {
        ReplyTo { worker: 0, slot: 3, generation: 1, seq }
    }

    fn accounts(ids: &[u128]) -> Command {
        Command::Mutate(Operation::CreateAccounts(ids.iter().map(|&id| Account { id, ledger: 1, code: 1, ..Account::default() }).collect()))
    }

    #[test]
    fn a_full_queue_refuses_the_submission_and_names_it() {
        let Channels { client, submissions: rx, replies_tx: _replies, replies_rx: _completions } = channels(1, 1);
        let first = Submission { reply_to: reply_to(0), command: Command::LookupAccount(1) };
        assert!(client.submit(first).is_ok());
        let second = Submission { reply_to: reply_to(1), command: Command::LookupAccount(2) };
        let back = client.submit(second).expect_err("the queue holds one");
        assert_eq!(back, SubmitError::Full { reply_to: reply_to(1) });
        assert_eq!(back.reply_to().seq, 1);
        // Once the ledger thread's ends are gone, a submission is refused as stopped.
        drop(rx);
        let third = Submission { reply_to: reply_to(2), command: accounts(&[1]) };
        assert_eq!(client.submit(third), Err(SubmitError::Stopped { reply_to: reply_to(2) }));
    }

    #[test]
    fn waiting_submissions_share_one_group_commit_and_replies_keep_their_order() {
        for depth in PIPELINE_DEPTHS {
            let Channels { client, submissions: rx, replies_tx: replies, replies_rx: completions } = channels(16, 1);
            client.submit(Submission { reply_to: reply_to(0), command: accounts(&[1, 2]) }).expect("room");
            client.submit(Submission { reply_to: reply_to(1), command: Command::LookupAccount(1) }).expect("room");
            let transfer = Transfer { id: 9, debit_account_id: 1, credit_account_id: 2, amount: 5, ledger: 1, code: 1, ..Transfer::default() };
            client.submit(Submission { reply_to: reply_to(2), command: Command::Mutate(Operation::CreateTransfers(vec![transfer])) }).expect("room");
            drop(client);
            let mut ledger = Ledger::open(SimStorage::new(), ledger_svc::LedgerConfig::default()).expect("open");
            let metrics = Metrics::new();
            run(&mut ledger, &rx, &replies, &CommitSettings::fsync(8189, depth), &metrics).expect("run");
            // Three submissions, two mutations: one batch, one WAL record, one sync.
            assert_eq!(metrics.ledger_batches.get(), 1);
            assert_eq!(ledger.sequence(), 1);
            let got: Vec<Completion> = completions[0].try_iter().collect();
            // The batch's replies first, in order, then the turn's queries.
            assert_eq!(got.iter().map(|c| c.reply_to.seq).collect::<Vec<_>>(), vec![0, 2, 1]);
            let responses: std::collections::BTreeMap<u64, ledger_svc::http::Response> = got.iter().map(|c| (c.reply_to.seq, api::render(&c.reply))).collect();
            assert!(responses.values().all(|r| r.status == 200), "{got:?}");
            let body = |i: u64| String::from_utf8(responses[&i].body.clone()).expect("utf-8");
            assert!(body(0).contains("\"created\""), "{}", body(0));
            assert!(body(2).contains("\"created\""), "{}", body(2));
            // The query rode in the same drain and saw the state after the batch.
            assert!(body(1).contains("\"debits_posted\":\"5\""), "{}", body(1));
            assert_eq!(ledger.state().lookup_account(2).expect("account 2").credits_posted, 5);
        }
    }

    #[test]
    fn the_idle_ledger_thread_keeps_beating_and_unregisters_on_a_clean_stop() {
        let Channels { client, submissions: rx, replies_tx: replies, replies_rx: _completions } = channels(16, 1);
        let clock = crate::health::Clock::manual(0);
        let metrics = Metrics::with_health(crate::health::Health::with_clock(Duration::from_secs(5), clock.clone()));
        let health = metrics.health.clone();
        let ledger_thread = std::thread::spawn(move || {
            let mut ledger = Ledger::open(SimStorage::new(), ledger_svc::LedgerConfig::default()).expect("open");
            run(&mut ledger, &rx, &replies, &CommitSettings::fsync(8189, 2), &metrics).expect("run");
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        while health.ages_ms().is_empty() {
            assert!(Instant::now() < deadline, "the ledger thread never registered its heartbeat");
            std::thread::sleep(Duration::from_millis(5));
        }
        // Nothing is submitted. Jump the heartbeat clock past the threshold: the idle thread
        // is stale until its tick wakes it and it beats again, without any request.
        clock.advance(Duration::from_secs(60));
        while health.check().is_err() {
            assert!(Instant::now() < deadline, "the idle ledger thread never beat again");
            std::thread::sleep(Duration::from_millis(5));
        }
        drop(client);
        ledger_thread.join().expect("ledger thread");
        assert!(health.ages_ms().is_empty(), "a clean stop unregisters the heartbeat");
    }

    /// Runs the ledger thread on `storage` and submits `batches` single-account batches one at
    /// a time (each waits for its reply, so each is its own batch); returns the run's result,
    /// the ledger and the replies received.
    fn run_one_by_one<S: Storage + Send + 'static>(storage: S, pipeline_depth: usize, checkpoint_every_batches: u64, batches: u128) -> (Result<(), LedgerError>, Ledger<S>, usize) {
        let Channels { client, submissions: rx, replies_tx: replies, replies_rx: completions } = channels(16, 1);
        let config = ledger_svc::LedgerConfig { checkpoint_every_batches, ..ledger_svc::LedgerConfig::default() };
        let ledger_thread = std::thread::spawn(move || {
            let mut ledger = Ledger::open(storage, config).expect("open");
            let result = run(&mut ledger, &rx, &replies, &CommitSettings::fsync(8189, pipeline_depth), &Metrics::new());
            (result, ledger)
        });
        let mut received = 0;
        for id in 1..=batches {
            if client.submit(Submission { reply_to: reply_to(id as u64), command: accounts(&[id]) }).is_err() {
                break;
            }
            match completions[0].recv_timeout(Duration::from_secs(10)) {
                Ok(c) => {
                    assert_eq!(api::render(&c.reply).status, 200);
                    received += 1;
                }
                Err(_) => break,
            }
        }
        drop(client);
        let (result, ledger) = ledger_thread.join().expect("ledger thread");
        (result, ledger, received)
    }

    #[test]
    fn checkpoints_are_written_off_the_ledger_thread_and_finished() {
        for depth in PIPELINE_DEPTHS {
            let (result, mut ledger, received) = run_one_by_one(SimStorage::new(), depth, 3, 20);
            result.expect("run");
            assert_eq!(received, 20);
            assert_eq!(ledger.sequence(), 20);
            // Every checkpoint begun was written and finished (the last one on the clean stop).
            assert_eq!(ledger.checkpoint_in_flight(), None);
            let newest = ledger.checkpoint_sequence();
            assert!(newest >= 3, "checkpoint at {newest}");
            let names = ledger.storage_mut().list().expect("list");
            assert!(names.contains(&ledger_svc::checkpoint::checkpoint_name(newest)), "{names:?}");
            for name in &names {
                assert!(ledger_svc::wal::parse_segment_name(name).is_none_or(|first| first > newest), "{name} is superseded: {names:?}");
                assert!(ledger_svc::checkpoint::parse_checkpoint_name(name).is_none_or(|s| s == newest), "{names:?}");
            }
            let recovered = Ledger::open(ledger.storage().crash_clean(), ledger.config().clone()).expect("recover");
            assert_eq!(recovered.recovery().checkpoint_sequence, newest);
            assert_eq!(recovered.state().state_hash(), ledger.state().state_hash());
        }
    }

    #[test]
    fn a_failed_wal_sync_stops_the_thread_and_nothing_written_is_acknowledged() {
        for depth in PIPELINE_DEPTHS {
            let Channels { client, submissions: rx, replies_tx: replies, replies_rx: completions } = channels(16, 1);
            let mut ledger = Ledger::open(SimStorage::new(), ledger_svc::LedgerConfig::default()).expect("open");
            // Every sync fails (EIO), on the syncer thread or this one; the appends succeed.
            ledger.storage_mut().inject(ledger_svc::storage::DiskFaults {
                rng: ledger_svc::storage::SimRng::new(1),
                sync_failure_ppm: 1_000_000,
                read_corruption_ppm: 0,
                capacity_bytes: None,
            });
            for id in 1..=4u128 {
                client.submit(Submission { reply_to: reply_to(id as u64), command: accounts(&[id]) }).expect("room");
            }
            client.submit(Submission { reply_to: reply_to(9), command: Command::LookupAccount(1) }).expect("room");
            drop(client);
            let metrics = Metrics::new();
            let result = run(&mut ledger, &rx, &replies, &CommitSettings::fsync(8189, depth), &metrics);
            assert!(result.is_err_and(|e| e.is_fatal()), "a failed WAL sync must stop the ledger thread");
            assert!(ledger.sequence() >= 1, "a batch was written");
            assert_eq!(ledger.durable_sequence(), 0);
            assert_eq!(completions[0].try_iter().count(), 0, "no reply, not even a query's, for a state that is not durable");
            assert_eq!(metrics.ledger_sync.syncs.get(), 0);
        }
    }

    #[test]
    fn many_submissions_are_released_in_order_after_their_syncs_and_the_stop_drains_the_pipeline() {
        for depth in PIPELINE_DEPTHS {
            let Channels { client, submissions: rx, replies_tx: replies, replies_rx: completions } = channels(1024, 1);
            let metrics = Metrics::new();
            let thread_metrics = metrics.clone();
            let ledger_thread = std::thread::spawn(move || {
                let mut ledger = Ledger::open(SimStorage::new(), ledger_svc::LedgerConfig::default()).expect("open");
                run(&mut ledger, &rx, &replies, &CommitSettings::fsync(8, depth), &thread_metrics).expect("run");
                ledger
            });
            for id in 1..=200u128 {
                client.submit(Submission { reply_to: reply_to(id as u64), command: accounts(&[id]) }).expect("room");
            }
            drop(client);
            let ledger = ledger_thread.join().expect("ledger thread");
            // The clean stop came only after every batch written was durable and released.
            assert_eq!(ledger.durable_sequence(), ledger.sequence());
            let got: Vec<u64> = completions[0].try_iter().map(|c| c.reply_to.seq).collect();
            assert_eq!(got, (1..=200).collect::<Vec<u64>>(), "every reply, in submission order");
            assert!(metrics.ledger_batches.get() >= 25, "batches of at most 8 events");
            assert!(metrics.ledger_sync.syncs.get() >= 1 && metrics.ledger_sync.syncs.get() <= metrics.ledger_batches.get());
            assert_eq!(metrics.ledger_sync.batches_unsynced.get(), 0);
            if depth == 1 {
                assert_eq!(metrics.ledger_sync.batches_overlapped.get(), 0, "no batch is written while one syncs");
            }
        }
    }

    #[test]
    fn a_storage_failure_is_reported_and_nothing_is_acknowledged() {
        for depth in PIPELINE_DEPTHS {
            let Channels { client, submissions: rx, replies_tx: replies, replies_rx: completions } = channels(16, 1);
            let mut ledger = Ledger::open(SimStorage::new(), ledger_svc::LedgerConfig::default()).expect("open");
            ledger.storage_mut().fail_after(0);
            client.submit(Submission { reply_to: reply_to(0), command: accounts(&[1]) }).expect("room");
            drop(client);
            let result = run(&mut ledger, &rx, &replies, &CommitSettings::fsync(8189, depth), &Metrics::new());
            assert!(result.is_err(), "a failed append must stop the ledger thread");
            assert_eq!(completions[0].try_iter().count(), 0, "no reply for a batch that is not durable");
        }
    }
}
