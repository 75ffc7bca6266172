//! The ledger thread: the single writer (TigerBeetle's model).
//!
//! It drains submissions from every worker, applies everything waiting as one batch, appends the
//! batch to the WAL with one fsync (group commit), and only then releases the replies. Queries
//! ride in the same drain and are answered after the batch, from the state it left.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use ledger_svc::api::{self, Command};
use ledger_svc::http::Response;
use ledger_svc::wal::OPERATIONS_PER_RECORD_MAX;
use ledger_svc::{Ledger, Operation, Storage};

use crate::metrics::Metrics;

/// Where a reply goes back to: the worker, the connection, and the request's place in that
/// connection's pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplyTo {
    pub worker: usize,
    pub conn: tcp::ConnId,
    pub seq: u64,
}

#[derive(Debug)]
pub struct Submission {
    pub reply_to: ReplyTo,
    pub command: Command,
}

#[derive(Debug)]
pub struct Completion {
    pub reply_to: ReplyTo,
    pub response: Response,
}

/// A worker's end of the ledger: submit without blocking, or learn that the queue is full.
#[derive(Clone, Debug)]
pub struct LedgerClient {
    tx: Sender<Submission>,
}

impl LedgerClient {
    /// Queues a command. When the ledger's queue is full the command is handed back, so the
    /// worker answers 503 with Retry-After and memory stays bounded.
    pub fn submit(&self, submission: Submission) -> Result<(), Submission> {
        match self.tx.try_send(submission) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(s)) | Err(TrySendError::Disconnected(s)) => Err(s),
        }
    }
}

/// The channels between the workers and the ledger thread.
pub fn channels(queue_depth_max: usize, workers: usize) -> (LedgerClient, Receiver<Submission>, Vec<Sender<Completion>>, Vec<Receiver<Completion>>) {
    let (tx, rx) = crossbeam_channel::bounded(queue_depth_max);
    // Replies are bounded by the submissions in flight (the bounded queue above plus one batch),
    // so an unbounded channel back to each worker cannot grow past that.
    let (reply_tx, reply_rx): (Vec<_>, Vec<_>) = (0..workers).map(|_| crossbeam_channel::unbounded()).unzip();
    (LedgerClient { tx }, rx, reply_tx, reply_rx)
}

/// The ledger's clock: wall time in nanoseconds. The ledger itself keeps timestamps strictly
/// increasing even if this goes backwards.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Runs until every `LedgerClient` is dropped and the queue is drained. Returns Err only for a
/// failed WAL append or fsync, which the caller must treat as fatal: nothing of that batch was
/// acknowledged, and the process stops rather than acknowledge data it may have lost.
pub fn run<S: Storage>(
    ledger: &mut Ledger<S>,
    rx: &Receiver<Submission>,
    replies: &[Sender<Completion>],
    batch_events_max: usize,
    metrics: &Metrics,
    durability: &str,
) -> Result<(), ledger_svc::LedgerError> {
    /// A drained submission: a mutation's index into `ops`, or a query.
    enum Slot {
        Op(usize),
        Query(Command),
    }
    let commit_seconds = metrics.ledger_commit_seconds.with_label_values(&[durability]);
    let mut slots: Vec<(ReplyTo, Slot)> = Vec::new();
    let mut ops: Vec<Operation> = Vec::new();
    while let Ok(first) = rx.recv() {
        let mut events = 0;
        let mut next = Some(first);
        // Group commit: everything already waiting joins this batch, up to the bounds on events
        // and on operations per WAL record.
        while let Some(submission) = next.take() {
            events += command_events(&submission.command);
            match submission.command {
                Command::Mutate(op) => {
                    slots.push((submission.reply_to, Slot::Op(ops.len())));
                    ops.push(op);
                }
                query => slots.push((submission.reply_to, Slot::Query(query))),
            }
            // One more submission adds at most one operation and one request's events.
            if events < batch_events_max && ops.len() < OPERATIONS_PER_RECORD_MAX {
                next = rx.try_recv().ok();
            }
        }
        metrics.ledger_queue_depth.set(rx.len() as i64);
        let started = Instant::now();
        let op_replies = if ops.is_empty() { Vec::new() } else { ledger.submit(now_ns(), &ops)? };
        assert_eq!(op_replies.len(), ops.len(), "one reply per operation");
        // The batch is durable: release the replies, in order.
        for (reply_to, slot) in slots.drain(..) {
            let response = match slot {
                Slot::Op(i) => api::render_reply(&op_replies[i], ledger.state(), &ops[i]),
                Slot::Query(query) => api::query(ledger.state(), &query),
            };
            // A worker that has stopped no longer needs its replies.
            let _ = replies[reply_to.worker].send(Completion { reply_to, response });
        }
        if !ops.is_empty() {
            commit_seconds.observe(started.elapsed().as_secs_f64());
            metrics.ledger_batches.inc();
            metrics.ledger_batch_requests.observe(ops.len() as f64);
            metrics.ledger_requests.inc_by(ops.len() as u64);
        }
        metrics.ledger_events.inc_by(events as u64);
        ops.clear();
    }
    Ok(())
}

fn command_events(command: &Command) -> usize {
    match command {
        Command::Mutate(Operation::CreateAccounts(v)) => v.len(),
        Command::Mutate(Operation::CreateTransfers(v)) => v.len(),
        _ => 1,
    }
}
