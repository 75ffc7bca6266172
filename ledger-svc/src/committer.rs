//! The committer's policy as a sans-IO state machine: group commit, expiry of pending
//! transfers, checkpoint scheduling and the release of replies, with no clock, no channel and
//! no storage of its own.
//!
//! The driver feeds it submissions (`submit`) and asks it what to do next (`poll`, given the
//! time and the ledger's status); it answers with one [`Step`] at a time:
//! - `Commit`: apply this batch and make it durable (`Ledger::submit`: one WAL record, one
//!   fsync), then report the result with `committed`;
//! - `Release`: the batch's replies, in submission order, handed out only after `committed`,
//!   that is after the record's fsync returned (a reply is never released for a batch that is
//!   not durable);
//! - `Answer`: the turn's queries, to answer from the state the batch left;
//! - `BeginCheckpoint`: a checkpoint is due (after the replies, so its pause delays only
//!   requests still queued).
//!
//! An idle committer whose ledger has a pending transfer due to expire commits an empty batch
//! at that time: expiry happens on the ledger's clock, which moves only with a batch, and the
//! empty batch is logged so that replay expires the same transfers at the same instant.
//!
//! The ledger thread (`pantera`'s `committer.rs`) drives it with channels, the wall clock and
//! real files; the simulator (`sim`) drives it with a simulated clock and a simulated disk.
//! Both run this same code.

use std::collections::VecDeque;

use crate::api::Command;
use crate::model::{Operation, OperationReply};
use crate::wal::OPERATIONS_PER_RECORD_MAX;

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
}

impl CommitterConfig {
    pub fn new(batch_events_max: usize, reads_per_turn_max: usize) -> Self {
        CommitterConfig { batch_events_max: batch_events_max.max(1), operations_per_batch_max: OPERATIONS_PER_RECORD_MAX, reads_per_turn_max: reads_per_turn_max.max(1) }
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
    /// Apply `ops` as one batch at ledger time `now_ns` and make it durable, then call
    /// [`Committer::committed`] with the replies (or stop on an error: it is fatal).
    Commit { now_ns: u64, ops: Vec<Operation> },
    /// Send these replies, in this order: the batch is durable.
    Release(Vec<Released<T>>),
    /// Answer these queries from the ledger's state as it is now (after the turn's batch).
    Answer(Vec<(T, Command)>),
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

/// A batch handed out with `Step::Commit` and not reported yet.
#[derive(Debug)]
struct InFlight<T> {
    tokens: Vec<T>,
    ops: Vec<Operation>,
    reads: Vec<(T, Command)>,
}

/// The committer's state; `T` identifies a submitter's request (where its reply goes).
#[derive(Debug)]
pub struct Committer<T> {
    config: CommitterConfig,
    writes: VecDeque<(T, Operation)>,
    reads: VecDeque<(T, Command)>,
    /// Events of the operations in `writes`.
    write_events: usize,
    in_flight: Option<InFlight<T>>,
    /// Steps decided and not yet polled.
    ready: VecDeque<Step<T>>,
}

impl<T> Committer<T> {
    pub fn new(config: CommitterConfig) -> Self {
        Committer { config, writes: VecDeque::new(), reads: VecDeque::new(), write_events: 0, in_flight: None, ready: VecDeque::new() }
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

    /// Nothing queued, in flight or ready: the driver may wait (until `poll_at`).
    pub fn is_idle(&self) -> bool {
        self.writes.is_empty() && self.reads.is_empty() && self.in_flight.is_none() && self.ready.is_empty()
    }

    /// Steps already decided wait to be polled (a committed batch's `Release` and `Answer`).
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// A batch was handed out and not reported yet.
    pub fn is_committing(&self) -> bool {
        self.in_flight.is_some()
    }

    /// When an idle committer next has something to do on its own: the next expiry.
    pub fn poll_at(&self, status: &LedgerStatus) -> Option<u64> {
        status.next_expiry_ns
    }

    /// The next step at ledger time `now_ns`, or `None` when there is nothing to do until a
    /// submission arrives, a batch is reported, or `poll_at` is reached.
    pub fn poll(&mut self, now_ns: u64, status: &LedgerStatus) -> Option<Step<T>> {
        if let Some(step) = self.ready.pop_front() {
            return Some(step);
        }
        if self.in_flight.is_some() {
            return None;
        }
        if status.checkpoint_due {
            return Some(Step::BeginCheckpoint);
        }
        // Group commit: everything waiting, up to the bounds (one more operation may carry
        // the events past `batch_events_max`, as a single request may be that large).
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
        let take = self.reads.len().min(self.config.reads_per_turn_max);
        let reads: Vec<(T, Command)> = self.reads.drain(..take).collect();
        if ops.is_empty() {
            if !reads.is_empty() {
                return Some(Step::Answer(reads));
            }
            // Idle: a due expiry moves the ledger's clock with an empty batch.
            return match status.next_expiry_ns {
                Some(due) if due <= now_ns => {
                    self.in_flight = Some(InFlight { tokens, ops: Vec::new(), reads });
                    Some(Step::Commit { now_ns, ops: Vec::new() })
                }
                _ => None,
            };
        }
        self.in_flight = Some(InFlight { tokens, ops: ops.clone(), reads });
        Some(Step::Commit { now_ns, ops })
    }

    /// The batch of the last `Step::Commit` is durable and applied: its replies (one per
    /// operation, in order) are released, then the turn's queries are answered.
    ///
    /// # Panics
    /// When no batch is in flight or the number of replies differs from the batch's
    /// operations: the driver broke the protocol, and a reply could reach the wrong client.
    pub fn committed(&mut self, replies: Vec<OperationReply>) {
        let batch = self.in_flight.take().expect("committed() without a batch in flight");
        assert_eq!(batch.ops.len(), replies.len(), "one reply per operation");
        if !batch.ops.is_empty() {
            let released = batch.tokens.into_iter().zip(batch.ops).zip(replies).map(|((token, op), reply)| Released { token, op, reply }).collect();
            self.ready.push_back(Step::Release(released));
        }
        if !batch.reads.is_empty() {
            self.ready.push_back(Step::Answer(batch.reads));
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

    const IDLE: LedgerStatus = LedgerStatus { next_expiry_ns: None, checkpoint_due: false };

    #[test]
    fn waiting_mutations_share_one_batch_and_replies_wait_for_durability() {
        let mut c = Committer::new(CommitterConfig::new(8189, 64));
        c.submit(0u64, accounts(&[1, 2]));
        c.submit(1, Command::LookupAccount(1));
        c.submit(2, accounts(&[3]));
        let Some(Step::Commit { now_ns: 7, ops }) = c.poll(7, &IDLE) else { panic!("a commit") };
        assert_eq!(ops.len(), 2);
        // Until the batch is reported durable nothing is released, whatever the time.
        assert_eq!(c.poll(8, &IDLE), None);
        assert_eq!(c.poll(u64::MAX, &LedgerStatus { next_expiry_ns: Some(0), checkpoint_due: true }), None);
        c.committed(vec![ok(2), ok(1)]);
        let Some(Step::Release(released)) = c.poll(9, &IDLE) else { panic!("release") };
        assert_eq!(released.iter().map(|r| r.token).collect::<Vec<_>>(), vec![0, 2]);
        assert_eq!(c.poll(9, &IDLE), Some(Step::Answer(vec![(1, Command::LookupAccount(1))])));
        assert_eq!(c.poll(9, &IDLE), None);
        assert!(c.is_idle());
    }

    #[test]
    fn a_batch_stops_at_the_event_bound_and_the_rest_forms_the_next() {
        let mut c = Committer::new(CommitterConfig::new(3, 64));
        for token in 0..4u64 {
            assert!(c.wants_write() || token >= 2);
            c.submit(token, accounts(&[1 + token as u128, 100 + token as u128]));
        }
        // 2 + 2 events reach the bound of 3: the first batch takes two requests.
        let Some(Step::Commit { ops, .. }) = c.poll(1, &IDLE) else { panic!() };
        assert_eq!(ops.len(), 2);
        c.committed(vec![ok(2), ok(2)]);
        assert!(matches!(c.poll(1, &IDLE), Some(Step::Release(r)) if r.len() == 2));
        let Some(Step::Commit { ops, .. }) = c.poll(2, &IDLE) else { panic!() };
        assert_eq!(ops.len(), 2);
    }

    #[test]
    fn a_due_expiry_commits_an_empty_batch_at_its_time_and_not_before() {
        let mut c: Committer<u64> = Committer::new(CommitterConfig::new(8189, 64));
        let status = LedgerStatus { next_expiry_ns: Some(1_000), checkpoint_due: false };
        assert_eq!(c.poll_at(&status), Some(1_000));
        assert_eq!(c.poll(999, &status), None);
        assert_eq!(c.poll(1_000, &status), Some(Step::Commit { now_ns: 1_000, ops: vec![] }));
        c.committed(vec![]);
        // An empty batch releases nothing.
        assert_eq!(c.poll(1_001, &IDLE), None);
        assert!(c.is_idle());
    }

    #[test]
    fn a_due_checkpoint_begins_after_the_replies_and_before_the_next_batch() {
        let mut c = Committer::new(CommitterConfig::new(8189, 64));
        c.submit(0u64, accounts(&[1]));
        let Some(Step::Commit { .. }) = c.poll(1, &IDLE) else { panic!() };
        c.submit(1, accounts(&[2]));
        c.committed(vec![ok(1)]);
        let due = LedgerStatus { next_expiry_ns: None, checkpoint_due: true };
        assert!(matches!(c.poll(2, &due), Some(Step::Release(_))));
        assert_eq!(c.poll(2, &due), Some(Step::BeginCheckpoint));
        let Some(Step::Commit { ops, .. }) = c.poll(2, &IDLE) else { panic!() };
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
        let Some(Step::Answer(second)) = c.poll(1, &IDLE) else { panic!() };
        assert_eq!(second.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![2]);
    }

    #[test]
    #[should_panic(expected = "one reply per operation")]
    fn a_reply_count_that_does_not_match_the_batch_is_refused() {
        let mut c = Committer::new(CommitterConfig::new(8189, 64));
        c.submit(0u64, accounts(&[1]));
        let _ = c.poll(1, &IDLE);
        c.committed(vec![]);
    }

    // The ledger thread's wall-clock tests (a 2.5 s sleep for an expiry; "2 to 10 replies"
    // around a failed checkpoint) as stepped tests with exact outcomes: the committer with a
    // real ledger on a simulated disk, driven by hand.

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
    /// a commit or a checkpoint write), which stops the turn.
    fn steps(c: &mut Committer<u64>, ledger: &mut Ledger<SimStorage>, writer: &mut SimStorage, now_ns: u64, released: &mut Vec<u64>) -> Result<(), crate::LedgerError> {
        while let Some(step) = c.poll(now_ns, &status(ledger)) {
            match step {
                Step::Commit { now_ns, ops } => c.committed(ledger.submit(now_ns, &ops)?),
                Step::Release(r) => released.extend(r.iter().map(|r| r.token)),
                Step::Answer(_) => {}
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
}
