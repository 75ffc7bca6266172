//! The committer's policy as a sans-IO state machine: pipelined group commit, expiry of
//! pending transfers, checkpoint scheduling and the release of replies, with no clock, no
//! channel and no storage of its own.
//!
//! The driver feeds it submissions (`submit`) and asks it what to do next (`poll`, given the
//! time and the ledger's status); it answers with one [`Step`] at a time:
//! - `Write`: apply this batch and append its WAL record, without syncing
//!   (`Ledger::write`), then report it with `written(sequence, replies)`;
//! - `Sync { upto }`: start a sync of every record written so far (`Ledger::begin_sync`, run
//!   on another thread), and report `synced(upto)` when it returned. At most one sync is in
//!   flight, and it covers exactly the records written before it began;
//! - `Release`: a batch's replies, in submission order, handed out only once `synced` has
//!   passed the batch (a reply is never released for a batch that is not durable), batch
//!   after batch in the order they were written;
//! - `Answer`: queries to answer now, from the ledger's state (which includes every batch
//!   written); the driver hands the answers back with `answered`, and they come out as
//!   `Deliver` once every batch that state includes is durable, so a read never shows a
//!   client anything a crash could take back;
//! - `BeginCheckpoint`: a checkpoint is due; it begins only with every written batch durable
//!   and no sync in flight (the checkpoint captures the state, so it must not capture a batch
//!   whose sync may still fail). Until then no further batch is written.
//!
//! The pipeline: while batch N's sync is in flight, batch N+1 is applied and written (up to
//! `batches_unsynced_max` batches written and not durable), so a request waits for one
//! fsync, not for the previous batch's fsync and then its own.
//!
//! An idle committer whose ledger has a pending transfer due to expire writes an empty batch
//! at that time: expiry happens on the ledger's clock, which moves only with a batch, and the
//! empty batch is logged so that replay expires the same transfers at the same instant.
//!
//! The ledger thread (`pantera`'s `committer.rs`) drives it with channels, the wall clock,
//! real files and a syncer thread; the simulator (`sim`) drives it with a simulated clock and
//! a simulated disk whose syncs complete at simulated later times. Both run this same code.

use std::collections::VecDeque;

use crate::api::{Command, Reply};
use crate::model::{Operation, OperationReply};
use crate::wal::OPERATIONS_PER_RECORD_MAX;

/// Batches written and not yet durable, at most: one whose sync is in flight and one written
/// meanwhile. A third would only wait for the same next sync as the second, so it would add
/// latency to its own requests and memory, and take nothing off the disk.
pub const BATCHES_UNSYNCED_MAX: usize = 2;

/// The bounds of one turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CommitterConfig {
    /// Events (accounts, transfers) per batch; one more request may carry it past this.
    pub batch_events_max: usize,
    /// Operations (requests) per batch: one WAL record holds at most this many.
    pub operations_per_batch_max: usize,
    /// Queries answered per turn, after the turn's batch: a reads-only flood delays a write
    /// by at most this many queries, and writes never starve reads.
    pub reads_per_turn_max: usize,
    /// Batches written and not yet durable (1: no pipelining, each batch's sync before the
    /// next batch is written).
    pub batches_unsynced_max: usize,
}

impl CommitterConfig {
    pub fn new(batch_events_max: usize, reads_per_turn_max: usize) -> Self {
        CommitterConfig {
            batch_events_max: batch_events_max.max(1),
            operations_per_batch_max: OPERATIONS_PER_RECORD_MAX,
            reads_per_turn_max: reads_per_turn_max.max(1),
            batches_unsynced_max: BATCHES_UNSYNCED_MAX,
        }
    }
}

/// What the committer needs to know of the ledger, read by the driver before each `poll`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LedgerStatus {
    /// The earliest expiry of a pending transfer, in ledger nanoseconds
    /// (`StateMachine::poll_at`).
    pub next_expiry_ns: Option<u64>,
    /// A checkpoint is due and none is in flight (`Ledger::checkpoint_due`).
    pub checkpoint_due: bool,
}

/// The next thing the driver must do.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<T> {
    /// Apply `ops` as one batch at ledger time `now_ns` and append its record without
    /// syncing (`Ledger::write`), then call [`Committer::written`] with its sequence and
    /// replies (or stop on an error: it is fatal).
    Write { now_ns: u64, ops: Vec<Operation> },
    /// Start a sync of every record written so far, the last being batch `upto`
    /// (`Ledger::begin_sync`), and call [`Committer::synced`] with `upto` once it returned
    /// (or stop on an error: it is fatal, and nothing not yet durable is ever released).
    Sync { upto: u64 },
    /// Send these replies, in this order: batch `sequence` is durable.
    Release { sequence: u64, replies: Vec<Released<T>> },
    /// Answer these queries from the ledger's state as it is now, and hand the answers to
    /// [`Committer::answered`] (they are sent with `Deliver`).
    Answer(Vec<(T, Command)>),
    /// Send these answers: the state they were read from is durable.
    Deliver(Vec<(T, Reply)>),
    /// Begin a checkpoint (`Ledger::begin_checkpoint`) and hand it to the writer.
    BeginCheckpoint,
}

/// One released reply: the submitter's token, its operation and the ledger's result.
#[derive(Debug, PartialEq, Eq)]
pub struct Released<T> {
    pub token: T,
    pub op: Operation,
    pub reply: OperationReply,
}

/// A batch handed out with `Step::Write` and not reported yet.
#[derive(Debug)]
struct Writing<T> {
    tokens: Vec<T>,
    ops: Vec<Operation>,
}

/// A batch written and not yet durable.
#[derive(Debug)]
struct Unsynced<T> {
    sequence: u64,
    tokens: Vec<T>,
    ops: Vec<Operation>,
    replies: Vec<OperationReply>,
}

/// The committer's state; `T` identifies a submitter's request (where its reply goes).
#[derive(Debug)]
pub struct Committer<T> {
    config: CommitterConfig,
    writes: VecDeque<(T, Operation)>,
    reads: VecDeque<(T, Command)>,
    /// Events of the operations in `writes`.
    write_events: usize,
    /// The batch handed out with `Write`, until `written`.
    writing: Option<Writing<T>>,
    /// An `Answer` was handed out and its answers not handed back yet.
    answering: bool,
    /// Batches written and not durable, in the order written (increasing sequences).
    unsynced: VecDeque<Unsynced<T>>,
    /// The `upto` of the `Sync` handed out and not reported yet.
    sync_in_flight: Option<u64>,
    /// Answers read from a state that includes a batch not yet durable: (that batch, the
    /// answers), released with it.
    held: VecDeque<(u64, Vec<(T, Reply)>)>,
    /// Steps decided and not yet polled.
    ready: VecDeque<Step<T>>,
}

impl<T> Committer<T> {
    pub fn new(config: CommitterConfig) -> Self {
        assert!(config.batches_unsynced_max >= 1, "at least the batch being synced");
        Committer {
            config,
            writes: VecDeque::new(),
            reads: VecDeque::new(),
            write_events: 0,
            writing: None,
            answering: false,
            unsynced: VecDeque::new(),
            sync_in_flight: None,
            held: VecDeque::new(),
            ready: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &CommitterConfig {
        &self.config
    }

    /// Queues a command: a mutation joins the next batch, a query the next turn's answers.
    pub fn submit(&mut self, token: T, command: Command) {
        match command {
            Command::Mutate(op) => {
                self.write_events += op.len().max(1);
                self.writes.push_back((token, op));
            }
            query => self.reads.push_back((token, query)),
        }
    }

    /// True while the next batch has room for one more mutation: the driver takes
    /// submissions from its queue only while this holds, so what it leaves queued stays
    /// bounded by its queue and the batch by the configuration.
    pub fn wants_write(&self) -> bool {
        self.write_events < self.config.batch_events_max && self.writes.len() < self.config.operations_per_batch_max
    }

    /// True while the next turn has room for one more query.
    pub fn wants_read(&self) -> bool {
        self.reads.len() < self.config.reads_per_turn_max
    }

    /// Nothing queued, written and not durable, syncing, held or ready: the driver may wait
    /// (until `poll_at`), or stop once its clients are gone.
    pub fn is_idle(&self) -> bool {
        self.writes.is_empty()
            && self.reads.is_empty()
            && self.writing.is_none()
            && !self.answering
            && self.unsynced.is_empty()
            && self.sync_in_flight.is_none()
            && self.held.is_empty()
            && self.ready.is_empty()
    }

    /// Steps already decided wait to be polled (releases and deliveries after `synced`).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// A sync was handed out and not reported yet.
    pub fn is_syncing(&self) -> bool {
        self.sync_in_flight.is_some()
    }

    /// Batches written and not yet durable.
    pub fn unsynced_batches(&self) -> usize {
        self.unsynced.len()
    }

    /// When an idle committer next has something to do on its own: the next expiry.
    pub fn poll_at(&self, status: &LedgerStatus) -> Option<u64> {
        status.next_expiry_ns
    }

    /// The next step at ledger time `now_ns`, or `None` when there is nothing to do until a
    /// submission arrives, a sync is reported, or `poll_at` is reached.
    pub fn poll(&mut self, now_ns: u64, status: &LedgerStatus) -> Option<Step<T>> {
        if let Some(step) = self.ready.pop_front() {
            return Some(step);
        }
        // The driver reports a write or hands answers back before anything else is decided.
        if self.writing.is_some() || self.answering {
            return None;
        }
        // A sync starts as soon as a batch is written and none is in flight: it covers every
        // batch written so far.
        if self.sync_in_flight.is_none() {
            if let Some(last) = self.unsynced.back() {
                let upto = last.sequence;
                self.sync_in_flight = Some(upto);
                return Some(Step::Sync { upto });
            }
        }
        if status.checkpoint_due && self.unsynced.is_empty() {
            debug_assert!(self.sync_in_flight.is_none());
            return Some(Step::BeginCheckpoint);
        }
        // A due checkpoint waits for the pipeline to drain: no batch is written meanwhile.
        if !status.checkpoint_due && self.unsynced.len() < self.config.batches_unsynced_max {
            if let Some(step) = self.next_batch(now_ns, status) {
                return Some(step);
            }
        }
        if !self.reads.is_empty() {
            let take = self.reads.len().min(self.config.reads_per_turn_max);
            self.answering = true;
            return Some(Step::Answer(self.reads.drain(..take).collect()));
        }
        None
    }

    /// Group commit: everything waiting, up to the bounds (one more operation may carry the
    /// events past `batch_events_max`, as a single request may be that large); with nothing
    /// waiting, an empty batch if an expiry is due.
    fn next_batch(&mut self, now_ns: u64, status: &LedgerStatus) -> Option<Step<T>> {
        let mut tokens = Vec::new();
        let mut ops = Vec::new();
        let mut events = 0;
        while events < self.config.batch_events_max && ops.len() < self.config.operations_per_batch_max {
            let Some((token, op)) = self.writes.pop_front() else { break };
            events += op.len().max(1);
            tokens.push(token);
            ops.push(op);
        }
        self.write_events -= events;
        if ops.is_empty() && status.next_expiry_ns.is_none_or(|due| due > now_ns) {
            return None;
        }
        self.writing = Some(Writing { tokens, ops: ops.clone() });
        Some(Step::Write { now_ns, ops })
    }

    /// The batch of the last `Step::Write` is applied and its record appended as batch
    /// `sequence` (the ledger's): its replies wait for a sync to pass it.
    ///
    /// # Panics
    /// When no batch is being written, the number of replies differs from the batch's
    /// operations, or `sequence` does not follow the previous batch's: the driver broke the
    /// protocol, and a reply could reach the wrong client or leave too early.
    pub fn written(&mut self, sequence: u64, replies: Vec<OperationReply>) {
        let batch = self.writing.take().expect("written() without a batch being written");
        assert_eq!(batch.ops.len(), replies.len(), "one reply per operation");
        assert!(self.unsynced.back().is_none_or(|last| last.sequence < sequence), "batch sequences increase");
        assert!(self.sync_in_flight.is_none_or(|upto| upto < sequence), "a batch written after its sync began");
        self.unsynced.push_back(Unsynced { sequence, tokens: batch.tokens, ops: batch.ops, replies });
    }

    /// The answers to the last `Step::Answer`, read from the ledger's state when it was
    /// handed out (which included every batch written): they are delivered once every one
    /// of those batches is durable, right away if all are.
    ///
    /// # Panics
    /// When no `Answer` was handed out.
    pub fn answered(&mut self, answers: Vec<(T, Reply)>) {
        assert!(self.answering, "answered() without an Answer handed out");
        self.answering = false;
        if answers.is_empty() {
            return;
        }
        match self.unsynced.back() {
            Some(last) => self.held.push_back((last.sequence, answers)),
            None => self.ready.push_back(Step::Deliver(answers)),
        }
    }

    /// The sync handed out as `Step::Sync { upto }` returned: every batch up to `upto` is
    /// durable. Their replies are released in the order written, each batch's followed by
    /// the answers that waited for it.
    ///
    /// # Panics
    /// When `upto` is not the sync in flight.
    pub fn synced(&mut self, upto: u64) {
        assert_eq!(self.sync_in_flight.take(), Some(upto), "synced() for a sync that is not in flight");
        while self.unsynced.front().is_some_and(|batch| batch.sequence <= upto) {
            let batch = self.unsynced.pop_front().expect("checked");
            if !batch.ops.is_empty() {
                let replies = batch.tokens.into_iter().zip(batch.ops).zip(batch.replies).map(|((token, op), reply)| Released { token, op, reply }).collect();
                self.ready.push_back(Step::Release { sequence: batch.sequence, replies });
            }
            while self.held.front().is_some_and(|(needs, _)| *needs <= batch.sequence) {
                let (_, answers) = self.held.pop_front().expect("checked");
                self.ready.push_back(Step::Deliver(answers));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Account, CreateAccountResult};

    fn accounts(ids: &[u128]) -> Command {
        Command::Mutate(Operation::CreateAccounts(ids.iter().map(|&id| Account { id, ledger: 1, code: 1, ..Account::default() }).collect()))
    }

    fn ok(n: usize) -> OperationReply {
        OperationReply::CreateAccounts(vec![CreateAccountResult::Ok; n])
    }

    fn answer(id: u128) -> Reply {
        Reply::Account { id, account: None }
    }

    fn tokens(step: Option<Step<u64>>) -> Vec<u64> {
        match step {
            Some(Step::Release { replies, .. }) => replies.iter().map(|r| r.token).collect(),
            Some(Step::Deliver(answers)) => answers.iter().map(|(t, _)| *t).collect(),
            other => panic!("a release or a delivery, not {other:?}"),
        }
    }

    const IDLE: LedgerStatus = LedgerStatus { next_expiry_ns: None, checkpoint_due: false };
    const DUE: LedgerStatus = LedgerStatus { next_expiry_ns: None, checkpoint_due: true };

    #[test]
    fn waiting_mutations_share_one_batch_and_replies_wait_for_durability() {
        let mut c = Committer::new(CommitterConfig::new(8189, 64));
        c.submit(0u64, accounts(&[1, 2]));
        c.submit(1, Command::LookupAccount(1));
        c.submit(2, accounts(&[3]));
        let Some(Step::Write { now_ns: 7, ops }) = c.poll(7, &IDLE) else { panic!("a write") };
        assert_eq!(ops.len(), 2);
        // Nothing is decided until the write is reported.
        assert_eq!(c.poll(7, &IDLE), None);
        c.written(1, vec![ok(2), ok(1)]);
        assert_eq!(c.poll(8, &IDLE), Some(Step::Sync { upto: 1 }));
        // The query is answered from the state the batch left, and held.
        assert_eq!(c.poll(8, &IDLE), Some(Step::Answer(vec![(1, Command::LookupAccount(1))])));
        c.answered(vec![(1, answer(1))]);
        // Until the sync is reported nothing is released, whatever the time or the status.
        assert_eq!(c.poll(9, &IDLE), None);
        assert_eq!(c.poll(u64::MAX, &LedgerStatus { next_expiry_ns: Some(0), checkpoint_due: true }), None);
        assert!(!c.is_idle());
        c.synced(1);
        assert_eq!(tokens(c.poll(9, &IDLE)), vec![0, 2]);
        assert_eq!(tokens(c.poll(9, &IDLE)), vec![1]);
        assert_eq!(c.poll(9, &IDLE), None);
        assert!(c.is_idle());
    }

    #[test]
    fn the_next_batch_is_written_while_the_previous_one_syncs_and_released_after_it() {
        let mut c = Committer::new(CommitterConfig::new(8189, 64));
        c.submit(0u64, accounts(&[1]));
        let Some(Step::Write { .. }) = c.poll(1, &IDLE) else { panic!() };
        c.written(1, vec![ok(1)]);
        assert_eq!(c.poll(1, &IDLE), Some(Step::Sync { upto: 1 }));
        // Batch 2 arrives while batch 1 syncs: it is written at once, not synced yet (one
        // sync in flight), and a third waits: two batches are the pipeline's depth.
        c.submit(1, accounts(&[2]));
        let Some(Step::Write { ops, .. }) = c.poll(2, &IDLE) else { panic!("pipelined write") };
        assert_eq!(ops.len(), 1);
        c.written(2, vec![ok(1)]);
        assert_eq!(c.unsynced_batches(), 2);
        c.submit(2, accounts(&[3]));
        assert_eq!(c.poll(2, &IDLE), None);
        // Batch 1 durable: only its replies go; batch 2's sync starts, batch 3 is written.
        c.synced(1);
        assert_eq!(tokens(c.poll(3, &IDLE)), vec![0]);
        assert_eq!(c.poll(3, &IDLE), Some(Step::Sync { upto: 2 }));
        let Some(Step::Write { .. }) = c.poll(3, &IDLE) else { panic!() };
        c.written(3, vec![ok(1)]);
        assert_eq!(c.poll(3, &IDLE), None);
        c.synced(2);
        assert_eq!(tokens(c.poll(4, &IDLE)), vec![1]);
        assert_eq!(c.poll(4, &IDLE), Some(Step::Sync { upto: 3 }));
        c.synced(3);
        assert_eq!(tokens(c.poll(5, &IDLE)), vec![2]);
        assert!(c.is_idle());
    }

    #[test]
    fn one_sync_covering_several_batches_releases_them_in_order() {
        let mut c = Committer::new(CommitterConfig { batches_unsynced_max: 3, ..CommitterConfig::new(8189, 64) });
        for (token, sequence) in [(0u64, 10), (1, 11), (2, 12)] {
            c.submit(token, accounts(&[u128::from(token) + 1]));
            let Some(Step::Write { .. }) = c.poll(1, &IDLE) else { panic!() };
            c.written(sequence, vec![ok(1)]);
            if sequence == 10 {
                assert_eq!(c.poll(1, &IDLE), Some(Step::Sync { upto: 10 }));
            }
        }
        c.synced(10);
        assert_eq!(tokens(c.poll(1, &IDLE)), vec![0]);
        // The next sync covers both batches written meanwhile.
        assert_eq!(c.poll(1, &IDLE), Some(Step::Sync { upto: 12 }));
        assert_eq!(c.poll(1, &IDLE), None);
        c.synced(12);
        let Some(Step::Release { sequence: 11, .. }) = c.poll(1, &IDLE) else { panic!("batch 11 first") };
        let Some(Step::Release { sequence: 12, .. }) = c.poll(1, &IDLE) else { panic!("then batch 12") };
        assert!(c.is_idle());
    }

    #[test]
    fn a_read_of_a_state_with_an_unsynced_batch_waits_for_that_batch_only() {
        let mut c = Committer::new(CommitterConfig::new(8189, 64));
        c.submit(0u64, accounts(&[1]));
        let Some(Step::Write { .. }) = c.poll(1, &IDLE) else { panic!() };
        c.written(1, vec![ok(1)]);
        assert_eq!(c.poll(1, &IDLE), Some(Step::Sync { upto: 1 }));
        // Batch 2 is written while 1 syncs; a query then reads a state with both.
        c.submit(1, accounts(&[2]));
        let Some(Step::Write { .. }) = c.poll(1, &IDLE) else { panic!() };
        c.written(2, vec![ok(1)]);
        c.submit(2, Command::LookupAccount(2));
        let Some(Step::Answer(reads)) = c.poll(1, &IDLE) else { panic!("answer") };
        assert_eq!(reads.len(), 1);
        c.answered(vec![(2, answer(2))]);
        // Batch 1 durable: its reply goes, the answer does not (it shows batch 2).
        c.synced(1);
        assert_eq!(tokens(c.poll(2, &IDLE)), vec![0]);
        assert_eq!(c.poll(2, &IDLE), Some(Step::Sync { upto: 2 }));
        assert_eq!(c.poll(2, &IDLE), None);
        c.synced(2);
        assert_eq!(tokens(c.poll(3, &IDLE)), vec![1]);
        assert_eq!(tokens(c.poll(3, &IDLE)), vec![2]);
        // With nothing unsynced a query is delivered at once.
        c.submit(3, Command::LookupAccount(1));
        let Some(Step::Answer(_)) = c.poll(4, &IDLE) else { panic!() };
        c.answered(vec![(3, answer(1))]);
        assert_eq!(tokens(c.poll(4, &IDLE)), vec![3]);
        assert!(c.is_idle());
    }

    #[test]
    fn a_sync_that_never_returns_releases_nothing_written_since_the_last_durable_batch() {
        // A failed sync is never reported (the driver stops): whatever else happens, no
        // reply of the batch it covered, of a later batch, or of a read of them goes out.
        let mut c = Committer::new(CommitterConfig::new(8189, 64));
        c.submit(0u64, accounts(&[1]));
        let Some(Step::Write { .. }) = c.poll(1, &IDLE) else { panic!() };
        c.written(1, vec![ok(1)]);
        assert_eq!(c.poll(1, &IDLE), Some(Step::Sync { upto: 1 }));
        c.submit(1, accounts(&[2]));
        let Some(Step::Write { .. }) = c.poll(1, &IDLE) else { panic!() };
        c.written(2, vec![ok(1)]);
        c.submit(2, Command::LookupAccount(1));
        let Some(Step::Answer(_)) = c.poll(1, &IDLE) else { panic!() };
        c.answered(vec![(2, answer(1))]);
        for token in 3..50u64 {
            c.submit(token, if token % 2 == 0 { accounts(&[u128::from(token)]) } else { Command::LookupAccount(1) });
            let expiring = LedgerStatus { next_expiry_ns: Some(0), checkpoint_due: token % 3 == 0 };
            while let Some(step) = c.poll(token, &expiring) {
                match step {
                    Step::Answer(reads) => c.answered(reads.into_iter().map(|(t, _)| (t, answer(1))).collect()),
                    other => panic!("only answers may be decided, not {other:?}"),
                }
            }
        }
        assert!(!c.is_idle());
    }

    #[test]
    fn without_pipelining_each_batch_is_durable_before_the_next_is_written() {
        let mut c = Committer::new(CommitterConfig { batches_unsynced_max: 1, ..CommitterConfig::new(8189, 64) });
        c.submit(0u64, accounts(&[1]));
        c.submit(1, accounts(&[2]));
        let Some(Step::Write { ops, .. }) = c.poll(1, &IDLE) else { panic!() };
        assert_eq!(ops.len(), 2);
        c.written(1, vec![ok(1), ok(1)]);
        c.submit(2, accounts(&[3]));
        assert_eq!(c.poll(1, &IDLE), Some(Step::Sync { upto: 1 }));
        assert_eq!(c.poll(1, &IDLE), None);
        c.synced(1);
        assert_eq!(tokens(c.poll(2, &IDLE)), vec![0, 1]);
        let Some(Step::Write { .. }) = c.poll(2, &IDLE) else { panic!() };
    }

    #[test]
    fn a_batch_stops_at_the_event_bound_and_the_rest_forms_the_next() {
        let mut c = Committer::new(CommitterConfig::new(3, 64));
        for token in 0..4u64 {
            assert!(c.wants_write() || token >= 2);
            c.submit(token, accounts(&[1 + token as u128, 100 + token as u128]));
        }
        // 2 + 2 events reach the bound of 3: the first batch takes two requests.
        let Some(Step::Write { ops, .. }) = c.poll(1, &IDLE) else { panic!() };
        assert_eq!(ops.len(), 2);
        c.written(1, vec![ok(2), ok(2)]);
        assert_eq!(c.poll(1, &IDLE), Some(Step::Sync { upto: 1 }));
        let Some(Step::Write { ops, .. }) = c.poll(2, &IDLE) else { panic!() };
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn a_due_expiry_writes_an_empty_batch_at_its_time_and_not_before() {
        let mut c: Committer<u64> = Committer::new(CommitterConfig::new(8189, 64));
        let status = LedgerStatus { next_expiry_ns: Some(1_000), checkpoint_due: false };
        assert_eq!(c.poll_at(&status), Some(1_000));
        assert_eq!(c.poll(999, &status), None);
        assert_eq!(c.poll(1_000, &status), Some(Step::Write { now_ns: 1_000, ops: vec![] }));
        c.written(1, vec![]);
        // An empty batch is synced like any other, and releases nothing.
        assert_eq!(c.poll(1_001, &IDLE), Some(Step::Sync { upto: 1 }));
        c.synced(1);
        assert_eq!(c.poll(1_001, &IDLE), None);
        assert!(c.is_idle());
    }

    #[test]
    fn a_due_checkpoint_waits_for_every_written_batch_to_be_durable() {
        let mut c = Committer::new(CommitterConfig::new(8189, 64));
        c.submit(0u64, accounts(&[1]));
        let Some(Step::Write { .. }) = c.poll(1, &IDLE) else { panic!() };
        c.written(1, vec![ok(1)]);
        c.submit(1, accounts(&[2]));
        // Due now: the sync starts, but no batch is written until the checkpoint has begun.
        assert_eq!(c.poll(2, &DUE), Some(Step::Sync { upto: 1 }));
        assert_eq!(c.poll(2, &DUE), None);
        c.synced(1);
        assert_eq!(tokens(c.poll(2, &DUE)), vec![0]);
        assert_eq!(c.poll(2, &DUE), Some(Step::BeginCheckpoint));
        let Some(Step::Write { ops, .. }) = c.poll(2, &IDLE) else { panic!() };
        assert_eq!(ops.len(), 1);
    }

    #[test]
    fn queries_alone_are_answered_without_a_batch_and_bounded_per_turn() {
        let mut c = Committer::new(CommitterConfig::new(8189, 2));
        for token in 0..3u64 {
            c.submit(token, Command::LookupTransfer(u128::from(token)));
        }
        assert!(!c.wants_read());
        let Some(Step::Answer(first)) = c.poll(1, &IDLE) else { panic!() };
        assert_eq!(first.len(), 2);
        c.answered(first.into_iter().map(|(t, _)| (t, answer(0))).collect());
        assert_eq!(tokens(c.poll(1, &IDLE)), vec![0, 1]);
        let Some(Step::Answer(second)) = c.poll(1, &IDLE) else { panic!() };
        assert_eq!(second.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    #[should_panic(expected = "one reply per operation")]
    fn a_reply_count_that_does_not_match_the_batch_is_refused() {
        let mut c = Committer::new(CommitterConfig::new(8189, 64));
        c.submit(0u64, accounts(&[1]));
        let _ = c.poll(1, &IDLE);
        c.written(1, vec![]);
    }

    #[test]
    #[should_panic(expected = "not in flight")]
    fn a_sync_reported_twice_is_refused() {
        let mut c = Committer::new(CommitterConfig::new(8189, 64));
        c.submit(0u64, accounts(&[1]));
        let _ = c.poll(1, &IDLE);
        c.written(1, vec![ok(1)]);
        let _ = c.poll(1, &IDLE);
        c.synced(1);
        c.synced(1);
    }

    // The ledger thread's wall-clock tests (a 2.5 s sleep for an expiry; "2 to 10 replies"
    // around a failed checkpoint) as stepped tests with exact outcomes: the committer with a
    // real ledger on a simulated disk, driven by hand, each sync run in line.

    use crate::model::{Transfer, TransferFlags};
    use crate::model::PendingStatus;
    use crate::{Ledger, LedgerConfig, SimStorage, Storage};

    fn status(ledger: &Ledger<SimStorage>) -> LedgerStatus {
        LedgerStatus { next_expiry_ns: ledger.state().poll_at(), checkpoint_due: ledger.checkpoint_due() }
    }

    /// Runs the committer's steps at `now_ns` until it has nothing to do; returns the tokens
    /// released, or the first error.
    fn turn(c: &mut Committer<u64>, ledger: &mut Ledger<SimStorage>, writer: &mut SimStorage, now_ns: u64) -> Result<Vec<u64>, crate::LedgerError> {
        let mut released = Vec::new();
        steps(c, ledger, writer, now_ns, &mut released)?;
        Ok(released)
    }

    /// The steps of `turn`, collecting into `released` the replies sent before an error (of
    /// a write, a sync or a checkpoint write), which stops the turn.
    fn steps(c: &mut Committer<u64>, ledger: &mut Ledger<SimStorage>, writer: &mut SimStorage, now_ns: u64, released: &mut Vec<u64>) -> Result<(), crate::LedgerError> {
        while let Some(step) = c.poll(now_ns, &status(ledger)) {
            match step {
                Step::Write { now_ns, ops } => {
                    let replies = ledger.write(now_ns, &ops)?;
                    c.written(ledger.sequence(), replies);
                }
                Step::Sync { upto } => {
                    if let Some(job) = ledger.begin_sync()? {
                        assert_eq!(ledger.sync_done(job.run())?, upto);
                    }
                    c.synced(upto);
                }
                Step::Release { replies, .. } => released.extend(replies.iter().map(|r| r.token)),
                Step::Answer(reads) => c.answered(reads.into_iter().map(|(t, command)| (t, crate::api::answer(ledger.state(), &command))).collect()),
                Step::Deliver(answers) => released.extend(answers.iter().map(|(t, _)| *t)),
                Step::BeginCheckpoint => {
                    let mut job = ledger.begin_checkpoint()?.expect("none in flight");
                    job.write(writer)?;
                    ledger.finish_checkpoint(job)?;
                }
            }
        }
        Ok(())
    }

    #[test]
    fn a_pending_transfer_expires_at_its_due_time_without_further_requests() {
        let mut ledger = Ledger::open(SimStorage::new(), LedgerConfig::default()).expect("open");
        let mut writer = ledger.storage().reopen().expect("reopen");
        let mut c = Committer::new(CommitterConfig::new(8189, 64));
        c.submit(0u64, accounts(&[1, 2]));
        let pending = Transfer { id: 9, debit_account_id: 1, credit_account_id: 2, amount: 5, ledger: 1, code: 1, timeout: 1, flags: TransferFlags::PENDING, ..Transfer::default() };
        c.submit(1, Command::Mutate(Operation::CreateTransfers(vec![pending])));
        let t0 = 1_000_000_000_000;
        assert_eq!(turn(&mut c, &mut ledger, &mut writer, t0).expect("turn"), vec![0, 1]);
        let due = ledger.state().poll_at().expect("an expiry is scheduled");
        let sequence = ledger.sequence();
        // One nanosecond early: nothing happens.
        assert_eq!(turn(&mut c, &mut ledger, &mut writer, due - 1).expect("turn"), Vec::<u64>::new());
        assert_eq!(ledger.sequence(), sequence);
        assert_eq!(ledger.state().pending_status(9), Some(PendingStatus::Pending));
        // At the due time, with no request: one empty batch, and the transfer has expired.
        assert_eq!(turn(&mut c, &mut ledger, &mut writer, due).expect("turn"), Vec::<u64>::new());
        assert_eq!(ledger.sequence(), sequence + 1);
        assert_eq!(ledger.durable_sequence(), sequence + 1);
        assert_eq!(ledger.state().pending_status(9), Some(PendingStatus::Expired));
        assert_eq!(ledger.state().lookup_account(1).expect("account 1").debits_pending, 0);
        assert!(c.is_idle());
    }

    #[test]
    fn a_failed_checkpoint_write_stops_after_exactly_the_durable_replies() {
        let config = LedgerConfig { checkpoint_every_batches: 2, ..LedgerConfig::default() };
        let mut ledger = Ledger::open(SimStorage::new(), config.clone()).expect("open");
        let mut writer = ledger.storage().reopen().expect("reopen");
        writer.fail_after(0);
        let mut c = Committer::new(CommitterConfig::new(8189, 64));
        let mut released = Vec::new();
        let mut error = None;
        for id in 1..=10u64 {
            c.submit(id, accounts(&[u128::from(id)]));
            match steps(&mut c, &mut ledger, &mut writer, id * 1_000, &mut released) {
                Ok(()) => {}
                Err(e) => {
                    error = Some(e);
                    break;
                }
            }
        }
        // Batch 2's replies go out, then the due checkpoint fails: fatal, before batch 3.
        let error = error.expect("the checkpoint write fails");
        assert!(error.is_fatal(), "{error}");
        assert_eq!(released, vec![1, 2]);
        assert_eq!(ledger.sequence(), 2);
        let recovered = Ledger::open(ledger.storage().crash(&mut crate::storage::SimRng::new(7)), config).expect("recover");
        assert_eq!(recovered.sequence(), 2);
        assert!(recovered.state().lookup_account(2).is_some());
    }

    #[test]
    fn a_failed_sync_poisons_the_ledger_and_nothing_it_covered_is_released() {
        let mut ledger = Ledger::open(SimStorage::new(), LedgerConfig::default()).expect("open");
        let mut c = Committer::new(CommitterConfig::new(8189, 64));
        c.submit(0u64, accounts(&[1]));
        let Some(Step::Write { now_ns, ops }) = c.poll(1, &status(&ledger)) else { panic!() };
        let replies = ledger.write(now_ns, &ops).expect("write");
        c.written(ledger.sequence(), replies);
        let Some(Step::Sync { upto: 1 }) = c.poll(1, &status(&ledger)) else { panic!() };
        let job = ledger.begin_sync().expect("begin").expect("a batch to sync");
        // Batch 2 is written while batch 1's sync runs; then that sync fails.
        c.submit(1, accounts(&[2]));
        let Some(Step::Write { now_ns, ops }) = c.poll(2, &status(&ledger)) else { panic!() };
        let replies = ledger.write(now_ns, &ops).expect("write");
        c.written(ledger.sequence(), replies);
        drop(job);
        let failed = ledger.sync_done(Err(crate::StorageError::Fault("fsync failed (EIO)")));
        assert!(failed.is_err_and(|e| e.is_fatal()));
        assert_eq!(ledger.durable_sequence(), 0);
        assert!(matches!(ledger.write(3, &[]), Err(crate::LedgerError::Poisoned)));
        assert!(matches!(ledger.begin_sync(), Err(crate::LedgerError::Poisoned)));
        // The driver stops without reporting the sync: the committer releases nothing.
        assert_eq!(c.poll(3, &status(&ledger)), None);
    }

    /// docs/ledger.md ("Pipelined group commit", what a crash can leave): batch 3, written
    /// while batch 2 syncs, is staged, not appended, so a crash during batch 2's sync leaves
    /// at most record 2 torn and nothing behind it; recovery cuts the torn tail (neither
    /// batch was acknowledged) instead of refusing for "a valid record follows". Appending
    /// batch 3 at once made that refusal possible (the page cache may write record 3's page
    /// before record 2's).
    #[test]
    fn a_batch_written_during_a_sync_is_staged_so_a_crash_tears_only_the_newest_record() {
        let account = |id| Operation::CreateAccounts(vec![Account { id, ledger: 1, code: 1, ..Account::default() }]);
        let mut ledger = Ledger::open(SimStorage::new(), LedgerConfig::default()).expect("open");
        ledger.write(1, &[account(1)]).expect("write 1");
        let job = ledger.begin_sync().expect("begin").expect("batch 1");
        assert_eq!(ledger.sync_done(job.run()).expect("synced"), 1);
        let end_1 = ledger.wal_position().expect("a segment").1;
        ledger.write(2, &[account(2)]).expect("write 2");
        let _in_flight = ledger.begin_sync().expect("begin").expect("batch 2");
        let end_2 = ledger.wal_position().expect("a segment").1;
        ledger.write(3, &[account(3)]).expect("write 3");
        assert_eq!((ledger.sequence(), ledger.appended_sequence()), (3, 2), "batch 3 is staged");
        assert_eq!(ledger.wal_position().expect("a segment").1, end_2, "nothing appended behind batch 2");
        assert!(matches!(ledger.write(4, &[account(4)]), Err(crate::LedgerError::SyncProtocol(_))), "one staged batch at most");
        // The crash tears record 2: it is the WAL's last record, a torn tail, cut.
        let segment = ledger.wal_position().expect("a segment").0.to_string();
        let mut disk = ledger.storage().crash_clean();
        disk.corrupt(&segment, end_1 as usize + 48).expect("tear record 2");
        let recovered = Ledger::open(disk, LedgerConfig::default()).expect("a torn tail is cut, not refused");
        assert_eq!(recovered.sequence(), 1, "batch 1 (durable) survives; 2 and 3 were never acknowledged");
    }

    #[test]
    fn a_sync_covers_exactly_the_records_written_before_it_began() {
        let mut ledger = Ledger::open(SimStorage::new(), LedgerConfig::default()).expect("open");
        ledger.write(1, &[Operation::CreateAccounts(vec![Account { id: 1, ledger: 1, code: 1, ..Account::default() }])]).expect("write");
        let job = ledger.begin_sync().expect("begin").expect("a batch to sync");
        assert_eq!(job.upto(), 1);
        let (segment, end_1) = ledger.wal_position().map(|(n, l)| (n.to_string(), l)).expect("a segment");
        // Batch 2 lands after the sync began: the sync does not make it durable.
        ledger.write(2, &[Operation::CreateAccounts(vec![Account { id: 2, ledger: 1, code: 1, ..Account::default() }])]).expect("write");
        assert!(matches!(ledger.begin_checkpoint(), Err(crate::LedgerError::CheckpointProtocol(_))));
        assert_eq!(ledger.sync_done(job.run()).expect("synced"), 1);
        assert_eq!(ledger.storage().durable_len(&segment), end_1 as usize);
        assert_eq!(ledger.durable_sequence(), 1);
        let job = ledger.begin_sync().expect("begin").expect("batch 2");
        assert_eq!(ledger.sync_done(job.run()).expect("synced"), 2);
        assert!(ledger.storage().is_durable(&segment));
        assert!(ledger.begin_sync().expect("begin").is_none());
    }
}
