//! The worker's budget for connections that have not finished their TLS handshake, and the
//! pacing of their crypto (issue 8, "edge defence"; docs/limits.md, "TLS"; docs/pipeline.md).
//!
//! A full TLS 1.3 handshake costs the server about 300 µs of CPU (ECDHE and a signature,
//! docs/tls.md "Figures") for one ClientHello that costs its sender a few bytes, and it runs on
//! the worker thread that also serves the queue's established connections. So:
//!
//! - The handshakes a worker holds are bounded (`pending_max`): past it one pending handshake
//!   is evicted, never an established connection: the one that has waited longest for its
//!   client since the server's flight (an honest client answers within a round trip), else
//!   the oldest ClientHello not yet answered.
//! - Handshake steps (every call that hands a handshaking connection its ciphertext: that is
//!   where the crypto runs) wait in FIFOs, clients that answered the server's flight before
//!   new ClientHellos, and a turn runs at most `steps_per_turn_max` of them, after the
//!   established connections have been served.
//! - While established connections are busy, the steps may take at most
//!   `time_share_percent` of the worker's time, measured (quinn-proto's `WorkLimiter` measures
//!   work the same way): a credit grows with the time that passes and each step spends what
//!   it took. When the established connections are quiet the share does not apply, so a
//!   burst of honest connections (a restart, a failover) is served at full speed. The credit
//!   is kept in nanoseconds: a worker turning every microsecond earns its share like one
//!   turning every millisecond. Steps that wait only for credit tell the worker when it will
//!   be earned ([`Handshakes::end_turn`]), so it sleeps until then instead of turning flat
//!   out through the other 90 %.
//!
//! Sans-IO like the stages below it: slots, durations and instants come in, decisions go out;
//! the worker does the aborting and the crypto. All state is allocated at start (links per
//! socket slot).

use std::time::{Duration, Instant};

/// Bounds on the handshakes of one worker (one queue). Validated with the configuration
/// (`tls.handshakes_pending_max`, `tls.handshakes_per_turn_max`,
/// `tls.handshake_time_share_percent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeLimits {
    /// Connections open at TCP whose TLS handshake has not finished. 128: honest handshakes
    /// finish a round trip after the server's flight, so 128 covers a queue's full handshake
    /// rate (~3.4k/s) up to ~37 ms of round trip, 1,000 new connections a second up to
    /// ~120 ms, and a client fleet that keeps 48 handshakes in flight (lab_capacity; 64 reset
    /// some of them). Smaller is cheaper under a flood: every pending handshake is a socket
    /// the stack walks each turn with the server's flight unacknowledged in it (the lab flood
    /// test: 0.90–1.00 of the TCP-only figure at 64, 0.74–0.85 at 128). Each can hold up to
    /// 64 KiB of rustls handshake input: 8 MiB per queue.
    pub pending_max: usize,
    /// Handshake steps (each ~100–300 µs of crypto) per worker turn. 16: at most ~2–5 ms of
    /// handshake work between two looks at the rings while established connections are quiet
    /// (while they are busy the share spaces the steps one at a time anyway); with 4, a turn
    /// that walks 10,000 connections let only ~220 handshakes a second through (lab_capacity),
    /// with 16 ~750.
    pub steps_per_turn_max: usize,
    /// The share of the worker's time handshake steps may take while established
    /// connections are busy. 10: the established connections keep at least 90 % of the
    /// worker, a waiting request finds a step (~150 µs) in progress a tenth of the time, and
    /// the queue still completes ~330 full mTLS handshakes a second (~300 µs each) while
    /// they are busy; raise it for clients that open a connection per request.
    pub time_share_percent: u32,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits { pending_max: 128, steps_per_turn_max: 16, time_share_percent: 10 }
    }
}

/// The most handshake time a busy worker may have saved up: less than one step, so while
/// established connections are busy the steps are spread out one at a time and a waiting
/// request is delayed by one step at most, never by a burst of them.
const CREDIT_MAX: Duration = Duration::from_micros(100);

/// Cumulative counts, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeCounters {
    /// Connections that entered the budget (opened at TCP, handshake not done).
    pub started: u64,
    /// Pending handshakes evicted because the budget was full (oldest first).
    pub evicted: u64,
    /// Handshake steps run.
    pub steps: u64,
    /// Time the steps took, in µs: the worker's CPU spent on handshakes.
    pub step_time_us: u64,
    /// Turns that ended with handshake steps still waiting (per-turn bound or time share).
    pub turns_limited: u64,
}

/// The pending handshakes of one worker, oldest first, and the FIFOs of those whose next step
/// is ready to run. Slots are the TCP stack's socket slots (`ConnId::slot`); the worker calls
/// [`Handshakes::finished`] before a slot is reused.
///
/// Every pending handshake is in exactly one of three lists: waiting for its client, ready
/// after its client answered the server's flight, or ready with its first flight (a
/// ClientHello). Answered ones step first: their client is live and they are nearly done,
/// while a ClientHello costs its sender nothing. The handshake evicted is the one that has
/// waited longest for its client; when none waits on its client, the oldest ClientHello not
/// yet answered; an answered one last.
#[derive(Debug)]
pub struct Handshakes {
    limits: HandshakeLimits,
    /// Every pending handshake, in the order it opened (which is also deadline order).
    pending: SlotList,
    /// Pending handshakes waiting for their client, in the order they started waiting.
    waiting: SlotList,
    /// Ready, after a step of theirs has run: the client answered the server's flight.
    answered: SlotList,
    /// Ready, no step run yet: the client's first flight.
    fresh: SlotList,
    /// Whether a step of the slot's handshake has run.
    stepped: Vec<bool>,
    steps_this_turn: usize,
    contended: bool,
    /// Handshake time the worker may still spend, in hundredths of a nanosecond, so that what
    /// a turn earns (its duration times the share in percent) is exact however short the
    /// turn; a step may overdraw it once.
    credit: i64,
    /// What the steps took, in ns (the counters report µs).
    step_time_ns: u64,
    last_turn: Option<Instant>,
    counters: HandshakeCounters,
}

impl Handshakes {
    /// A budget for a worker with `slots` socket slots.
    pub fn new(limits: HandshakeLimits, slots: usize) -> Handshakes {
        assert!(limits.pending_max >= 1 && limits.steps_per_turn_max >= 1, "validated with the configuration");
        assert!((1..=100).contains(&limits.time_share_percent), "validated with the configuration");
        Handshakes {
            limits,
            pending: SlotList::new(slots),
            waiting: SlotList::new(slots),
            answered: SlotList::new(slots),
            fresh: SlotList::new(slots),
            stepped: vec![false; slots],
            steps_this_turn: 0,
            contended: false,
            credit: 0,
            step_time_ns: 0,
            last_turn: None,
            counters: HandshakeCounters::default(),
        }
    }

    /// New bounds (a configuration reload), from the next turn on. Below the handshakes
    /// pending now, the walk after the next one evicts the excess as for any full budget.
    pub fn set_limits(&mut self, limits: HandshakeLimits) {
        assert!(limits.pending_max >= 1 && limits.steps_per_turn_max >= 1, "validated with the configuration");
        assert!((1..=100).contains(&limits.time_share_percent), "validated with the configuration");
        self.limits = limits;
    }

    /// A connection opened at TCP and starts its TLS handshake.
    pub fn opened(&mut self, slot: usize) {
        self.pending.push_back(slot);
        self.waiting.push_back(slot);
        self.stepped[slot] = false;
        self.counters.started += 1;
    }

    /// The handshake to evict now, if the budget is over its bound: the one that has waited
    /// longest for its client, else the oldest unanswered ClientHello, else the oldest. The
    /// caller aborts it and calls
    /// [`Handshakes::evicted`].
    pub fn over_budget(&self) -> Option<usize> {
        if self.pending.len() <= self.limits.pending_max {
            return None;
        }
        self.waiting.front().or(self.fresh.front()).or(self.pending.front())
    }

    pub fn evicted(&mut self, slot: usize) {
        assert!(self.pending.contains(slot), "only a pending handshake is evicted");
        self.finished(slot);
        self.counters.evicted += 1;
    }

    /// The handshake completed, failed or its connection closed: it leaves the budget. A slot
    /// that is not pending is ignored.
    pub fn finished(&mut self, slot: usize) {
        self.pending.remove(slot);
        self.waiting.remove(slot);
        self.answered.remove(slot);
        self.fresh.remove(slot);
    }

    /// The oldest pending handshake: the first whose deadline passes.
    pub fn oldest(&self) -> Option<usize> {
        self.pending.front()
    }

    pub fn is_pending(&self, slot: usize) -> bool {
        self.pending.contains(slot)
    }

    /// A pending handshake has ciphertext (or a FIN) waiting: its step joins its FIFO (once).
    /// Returns true if it was waiting for its client until now.
    pub fn ready(&mut self, slot: usize) -> bool {
        if !self.waiting.remove(slot) {
            return false;
        }
        if self.stepped[slot] {
            self.answered.push_back(slot);
        } else {
            self.fresh.push_back(slot);
        }
        true
    }

    /// Starts a worker turn at `now`. `contended`: established connections are busy, so the
    /// time share applies.
    pub fn begin_turn(&mut self, now: Instant, contended: bool) {
        let elapsed = self.last_turn.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        self.last_turn = Some(now);
        self.steps_this_turn = 0;
        self.contended = contended;
        let credit_max = CREDIT_MAX.as_nanos() as i64 * 100;
        if contended {
            let elapsed_ns = elapsed.as_nanos().min(i64::MAX as u128 / 100) as i64;
            let earned = elapsed_ns * i64::from(self.limits.time_share_percent);
            self.credit = (self.credit + earned).min(credit_max);
        } else {
            self.credit = credit_max;
        }
    }

    /// Whether [`Handshakes::next_step`] would give a step now.
    pub fn step_ready(&self) -> bool {
        self.ready_len() > 0 && self.steps_this_turn < self.limits.steps_per_turn_max && !(self.contended && self.credit <= 0)
    }

    /// The next handshake step to run this turn: answered ones first, each FIFO oldest ready
    /// first; None when the turn's bound or the time share is spent. Report its cost with
    /// [`Handshakes::step_done`]. The handshake then waits for its client again (unless it
    /// completes: [`Handshakes::finished`]).
    pub fn next_step(&mut self) -> Option<usize> {
        if !self.step_ready() {
            return None;
        }
        let slot = self.answered.pop_front().or_else(|| self.fresh.pop_front())?;
        self.stepped[slot] = true;
        self.waiting.push_back(slot);
        self.steps_this_turn += 1;
        self.counters.steps += 1;
        Some(slot)
    }

    /// What the last step took.
    pub fn step_done(&mut self, cost: Duration) {
        // Capped at a second: a step stalled longer (a stopped process) must not silence the
        // handshakes for ten times as long.
        let ns = cost.as_nanos().min(1_000_000_000) as i64;
        self.credit -= ns * 100;
        self.step_time_ns += ns as u64;
    }

    /// Ends the turn. None when no step waits; else the instant the next one may run, which
    /// the worker must not sleep past: the turn's start when it waits only on the per-turn
    /// bound (or the share does not apply), so at once; when the share's credit is spent,
    /// the instant the time passing will have earned it back (established connections that
    /// go quiet before then lift the share sooner: the worker watches that itself).
    pub fn end_turn(&mut self, now: Instant) -> Option<Instant> {
        if self.ready_len() == 0 {
            return None;
        }
        self.counters.turns_limited += 1;
        let start = self.last_turn.unwrap_or(now);
        if !self.contended || self.credit > 0 {
            return Some(start);
        }
        // The credit is positive once the time since the turn's start has earned the deficit
        // and a hundredth of a nanosecond more; whole nanoseconds, rounded up.
        let owed = (-self.credit) as u64 + 1;
        Some(start + Duration::from_nanos(owed.div_ceil(u64::from(self.limits.time_share_percent))))
    }

    /// Handshakes in the budget now.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Steps waiting to run.
    pub fn ready_len(&self) -> usize {
        self.answered.len() + self.fresh.len()
    }

    pub fn counters(&self) -> HandshakeCounters {
        HandshakeCounters { step_time_us: self.step_time_ns / 1_000, ..self.counters }
    }
}

const NIL: u32 = u32::MAX;

/// A doubly linked list threaded through slot indices, its links allocated at start: O(1)
/// push, pop and removal of any member, nothing allocated afterwards.
#[derive(Debug)]
struct SlotList {
    prev: Vec<u32>,
    next: Vec<u32>,
    member: Vec<bool>,
    head: u32,
    tail: u32,
    len: usize,
}

impl SlotList {
    fn new(slots: usize) -> SlotList {
        assert!(slots < NIL as usize);
        SlotList { prev: vec![NIL; slots], next: vec![NIL; slots], member: vec![false; slots], head: NIL, tail: NIL, len: 0 }
    }

    fn contains(&self, slot: usize) -> bool {
        self.member[slot]
    }

    fn len(&self) -> usize {
        self.len
    }

    fn front(&self) -> Option<usize> {
        (self.head != NIL).then_some(self.head as usize)
    }

    fn push_back(&mut self, slot: usize) {
        assert!(!self.member[slot], "slot {slot} is already listed");
        self.member[slot] = true;
        self.prev[slot] = self.tail;
        self.next[slot] = NIL;
        if self.tail == NIL {
            self.head = slot as u32;
        } else {
            self.next[self.tail as usize] = slot as u32;
        }
        self.tail = slot as u32;
        self.len += 1;
    }

    fn pop_front(&mut self) -> Option<usize> {
        let slot = self.front()?;
        self.remove(slot);
        Some(slot)
    }

    fn remove(&mut self, slot: usize) -> bool {
        if !self.member[slot] {
            return false;
        }
        let (prev, next) = (self.prev[slot], self.next[slot]);
        if prev == NIL {
            self.head = next;
        } else {
            self.next[prev as usize] = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.prev[next as usize] = prev;
        }
        self.member[slot] = false;
        self.prev[slot] = NIL;
        self.next[slot] = NIL;
        self.len -= 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STEP: Duration = Duration::from_micros(300);

    fn limits(pending_max: usize, steps_per_turn_max: usize, time_share_percent: u32) -> HandshakeLimits {
        HandshakeLimits { pending_max, steps_per_turn_max, time_share_percent }
    }

    /// A budget with `n` handshakes opened and ready to step.
    fn ready_handshakes(limits: HandshakeLimits, n: usize) -> Handshakes {
        let mut h = Handshakes::new(limits, 1024);
        for slot in 0..n {
            h.opened(slot);
            let _ = h.ready(slot);
        }
        h
    }

    /// Turns under contention, `gap` of established work apart plus the steps' `STEP` each,
    /// for `turns` turns or until `span` has passed; returns (steps, their share of the time).
    fn contended(h: &mut Handshakes, t0: Instant, gap: Duration, turns: usize, span: Duration) -> (usize, f64) {
        let (mut now, mut steps) = (t0, 0);
        for _ in 0..turns {
            if now - t0 >= span {
                break;
            }
            let stepped = turn(h, now, true).len();
            steps += stepped;
            now += gap + STEP * stepped as u32;
        }
        (steps, (STEP * steps as u32).as_secs_f64() / (now - t0).as_secs_f64())
    }

    /// Runs one turn at `now`; returns the slots stepped, each costing `STEP`.
    fn turn(h: &mut Handshakes, now: Instant, contended: bool) -> Vec<usize> {
        h.begin_turn(now, contended);
        let mut stepped = Vec::new();
        while let Some(slot) = h.next_step() {
            stepped.push(slot);
            h.step_done(STEP);
        }
        let _ = h.end_turn(now);
        stepped
    }

    #[test]
    fn the_oldest_pending_handshake_is_evicted_never_a_finished_one() {
        let mut h = Handshakes::new(limits(3, 4, 25), 16);
        for slot in [5, 2, 9] {
            h.opened(slot);
        }
        assert_eq!(h.over_budget(), None, "at the bound, not over it");
        // Slot 5 finished its handshake: it is an established connection now, out of reach.
        h.finished(5);
        h.opened(7);
        h.opened(1);
        assert_eq!(h.over_budget(), Some(2), "the oldest still pending");
        h.evicted(2);
        assert_eq!(h.over_budget(), None);
        assert_eq!((h.pending(), h.counters().started, h.counters().evicted), (3, 5, 1));
        h.opened(2); // The slot is reused by a new connection: it is the youngest now.
        assert_eq!(h.over_budget(), Some(9));
    }

    #[test]
    fn a_turn_runs_at_most_its_bound_of_steps_and_the_rest_wait_in_order() {
        let mut h = Handshakes::new(limits(64, 4, 25), 64);
        let t0 = Instant::now();
        for slot in 0..10 {
            h.opened(slot);
        }
        for slot in [3, 1, 4, 0, 5, 9, 2, 6] {
            let _ = h.ready(slot);
            let _ = h.ready(slot); // Ready twice in a turn is one step.
        }
        let _ = h.ready(42); // Not pending (established): never a handshake step.
        assert_eq!(turn(&mut h, t0, false), vec![3, 1, 4, 0]);
        assert_eq!(h.ready_len(), 4);
        assert_eq!(h.counters().turns_limited, 1);
        // Newly ready steps queue behind the ones that waited: nobody is starved.
        let _ = h.ready(7);
        assert_eq!(turn(&mut h, t0 + Duration::from_millis(1), false), vec![5, 9, 2, 6]);
        assert_eq!(turn(&mut h, t0 + Duration::from_millis(2), false), vec![7]);
        assert_eq!(h.end_turn(t0 + Duration::from_millis(2)), None, "nothing waits");
        assert_eq!(h.counters().steps, 9);
    }

    #[test]
    fn new_limits_apply_from_the_next_walk_and_lowering_the_bound_evicts_the_excess() {
        let mut h = Handshakes::new(limits(4, 4, 25), 16);
        for slot in [3, 1, 8, 6] {
            h.opened(slot);
        }
        assert_eq!(h.over_budget(), None);
        h.set_limits(limits(2, 4, 25));
        assert_eq!(h.over_budget(), Some(3), "over the new bound: the oldest waiting goes");
        h.evicted(3);
        assert_eq!(h.over_budget(), Some(1));
        h.evicted(1);
        assert_eq!(h.over_budget(), None);
        h.set_limits(limits(8, 4, 25));
        for slot in [2, 4, 5, 7, 9, 10] {
            h.opened(slot);
        }
        assert_eq!((h.pending(), h.over_budget()), (8, None), "a raised bound admits more");
    }

    #[test]
    fn answered_handshakes_step_first_and_the_longest_waiting_for_its_client_is_evicted() {
        let mut h = Handshakes::new(limits(4, 1, 25), 16);
        let t0 = Instant::now();
        for slot in [1, 2, 3] {
            h.opened(slot);
            let _ = h.ready(slot);
        }
        // Slot 1's ClientHello is answered by the server; its client then answers the flight.
        assert_eq!(turn(&mut h, t0, false), vec![1]);
        let _ = h.ready(1);
        assert_eq!(turn(&mut h, t0, false), vec![1], "the answered client goes before the hellos");
        h.finished(1); // Its handshake completed.
        // Slots 2 and 3 get their steps; 2's client never answers, 3's does.
        assert_eq!(turn(&mut h, t0, false), vec![2]);
        assert_eq!(turn(&mut h, t0, false), vec![3]);
        let _ = h.ready(3);
        for slot in [4, 5, 6] {
            h.opened(slot);
            let _ = h.ready(slot);
        }
        // Over the bound: 2 has waited longest for its client; 3 (answered) and the fresh
        // hellos are kept.
        assert_eq!(h.over_budget(), Some(2));
        h.evicted(2);
        assert_eq!(h.over_budget(), None);
        // With nobody waiting on its client, the oldest unanswered hello goes, not 3.
        h.opened(7);
        let _ = h.ready(7);
        assert_eq!(h.over_budget(), Some(4));
    }

    #[test]
    fn a_finished_or_evicted_handshake_leaves_the_fifo() {
        let mut h = Handshakes::new(limits(2, 4, 25), 8);
        for slot in 0..3 {
            h.opened(slot);
            let _ = h.ready(slot);
        }
        h.evicted(h.over_budget().expect("over"));
        h.finished(2);
        assert_eq!(turn(&mut h, Instant::now(), false), vec![1]);
        assert_eq!(h.pending(), 1, "stepped, still pending until it completes");
    }

    #[test]
    fn under_contention_handshakes_take_their_share_of_the_time_and_still_progress() {
        let mut h = ready_handshakes(limits(1024, 4, 25), 1000);
        let t0 = Instant::now();
        // 2,000 turns of 100 µs of established work each, plus whatever the steps take.
        let (steps, share) = contended(&mut h, t0, Duration::from_micros(100), 2000, Duration::MAX);
        assert!((0.22..=0.28).contains(&share), "handshakes took {share:.3} of the time");
        assert!(steps > 200, "handshakes kept completing: {steps}");
        // Never more than one step at a time (the saved-up credit is less than a step).
        let mut h = ready_handshakes(limits(1024, 4, 25), 10);
        h.begin_turn(t0, true);
        let _ = h.end_turn(t0);
        assert_eq!(turn(&mut h, t0 + Duration::from_secs(1), true).len(), 1);
    }

    #[test]
    fn turns_a_fraction_of_a_microsecond_apart_still_earn_the_share() {
        // A worker busy-polling turns every 0.7 µs or so. With the credit counted in whole
        // microseconds each of those turns earned nothing and no handshake ever stepped
        // while established connections were busy.
        let mut h = ready_handshakes(limits(1024, 16, 10), 1000);
        let (steps, share) = contended(&mut h, Instant::now(), Duration::from_nanos(700), usize::MAX, Duration::from_millis(100));
        assert!((0.09..=0.11).contains(&share), "handshakes took {share:.3} of the time in {steps} steps");
    }

    #[test]
    fn steps_waiting_for_credit_name_the_instant_it_is_earned_so_the_worker_can_sleep() {
        for share_percent in [1, 3, 10, 33, 100] {
            let mut h = ready_handshakes(limits(1024, 16, share_percent), 100);
            let t0 = Instant::now();
            // The worker turns only when end_turn says: no turn in between.
            let (mut now, mut steps, mut turns) = (t0, 0, 0);
            for _ in 0..100 {
                if steps == 50 {
                    break;
                }
                h.begin_turn(now, true);
                turns += 1;
                while h.next_step().is_some() {
                    steps += 1;
                    h.step_done(STEP);
                }
                let due = h.end_turn(now).expect("steps still wait");
                assert!(due > now, "a busy worker's steps wait for credit, not for the next turn");
                // A nanosecond earlier the credit is not there yet.
                h.begin_turn(due - Duration::from_nanos(1), true);
                assert!(!h.step_ready(), "share {share_percent}: due a nanosecond too late");
                assert!(h.end_turn(due) > Some(due - Duration::from_nanos(1)));
                now = due;
            }
            assert_eq!(steps, 50, "share {share_percent}: every turn at its due instant stepped");
            assert!(turns <= steps + 1, "share {share_percent}: a turn per step, none wasted: {turns} turns");
            let share = (STEP * steps as u32).as_secs_f64() / (now - t0).as_secs_f64();
            let want = f64::from(share_percent) / 100.0;
            assert!((share - want).abs() < want * 0.05 + 0.01, "share {share_percent}: handshakes took {share:.3} of the time");
            // Quiet established connections lift the share: the steps wait for the next turn only.
            h.begin_turn(now, false);
            let _ = h.next_step();
            assert_eq!(h.end_turn(now), Some(now), "uncontended, the per-turn bound only");
        }
    }

    #[test]
    fn when_established_connections_are_quiet_handshakes_run_at_full_speed() {
        let mut h = ready_handshakes(limits(1024, 4, 25), 100);
        let t0 = Instant::now();
        let mut now = t0;
        let mut steps = 0;
        for _ in 0..25 {
            let n = turn(&mut h, now, false).len();
            assert_eq!(n, 4, "the per-turn bound only");
            steps += n;
            now += STEP * n as u32;
        }
        assert_eq!(steps, 100);
    }

    #[test]
    fn slot_list_links_stay_consistent() {
        let mut l = SlotList::new(8);
        for s in [4, 0, 7, 2] {
            l.push_back(s);
        }
        assert!(l.remove(7) && !l.remove(7));
        assert!(l.remove(4));
        l.push_back(4);
        let mut order = Vec::new();
        while let Some(s) = l.pop_front() {
            order.push(s);
        }
        assert_eq!(order, vec![0, 2, 4]);
        assert_eq!((l.len(), l.front()), (0, None));
    }
}
