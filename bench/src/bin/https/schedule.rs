//! When a connection sends, and how long each request is said to have taken: the sans-IO core
//! of `https load`. Time is nanoseconds since the run's start, passed in by the caller, so the
//! tests drive it with a fake clock.
//!
//! Closed loop: a connection sends its next request as soon as it has room (`--pipeline`
//! requests in flight); a request's latency runs from the moment it was sent.
//!
//! Open loop (`--rate`): requests are due on a fixed schedule whatever the server does. A
//! request's latency runs from its *intended* send time, the slot of the schedule, not from the
//! moment the connection got round to sending it: when the server stalls, the requests whose
//! slots passed during the stall are charged the wait. Measuring from the actual send would
//! record one slow request and then fast ones, hiding the stall from every percentile but the
//! top (Gil Tene's "coordinated omission"; wrk2 measures the same way).

use hdrhistogram::Histogram;

pub const NANOS_PER_SECOND: u64 = 1_000_000_000;
/// The slowest latency recorded without saturation (60 s), in microseconds.
pub const LATENCY_US_MAX: u64 = 60_000_000;
/// Significant digits of every latency histogram.
pub const LATENCY_SIGNIFICANT_DIGITS: u8 = 3;

/// An empty latency histogram in microseconds, 1 µs to `LATENCY_US_MAX`.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, LATENCY_SIGNIFICANT_DIGITS)
        .expect("constant bounds are valid")
}

/// A fixed schedule: slot `k` is intended at `offset_ns + k * interval_ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slots {
    offset_ns: u64,
    interval_ns: u64,
    next: u64,
}

impl Slots {
    /// One connection's share of a total rate: `connections` connections at `rate_per_s` in
    /// all each send every `connections / rate` seconds, connection `index` shifted by
    /// `index / rate`, so that together they keep the total schedule evenly spaced.
    pub fn share(rate_per_s: f64, connections: usize, index: usize) -> Slots {
        assert!(rate_per_s > 0.0 && connections > 0 && index < connections);
        let total_interval_ns = NANOS_PER_SECOND as f64 / rate_per_s;
        Slots {
            offset_ns: (total_interval_ns * index as f64) as u64,
            interval_ns: ((total_interval_ns * connections as f64) as u64).max(1),
            next: 0,
        }
    }

    /// The intended time of the next slot not yet taken.
    pub fn next_ns(&self) -> u64 {
        self.offset_ns
            .saturating_add(self.next.saturating_mul(self.interval_ns))
    }

    /// Takes the next slot and returns its intended time.
    fn take(&mut self) -> u64 {
        let at = self.next_ns();
        self.next += 1;
        at
    }
}

/// One connection's sending discipline: when it may send, and each request's start for
/// the latency.
#[derive(Clone, Debug)]
pub struct Pacer {
    slots: Option<Slots>,
    pipeline: usize,
    in_flight: usize,
    /// Requests this connection may still start (`u64::MAX`: until the end of the run).
    budget: u64,
}

impl Pacer {
    /// Closed loop when `slots` is None.
    pub fn new(slots: Option<Slots>, pipeline: usize, budget: u64) -> Pacer {
        assert!(pipeline >= 1);
        Pacer {
            slots,
            pipeline,
            in_flight: 0,
            budget,
        }
    }

    /// If a request may start now, takes it and returns the time its latency counts from:
    /// its slot in the open loop (possibly in the past: the connection was busy), `now_ns`
    /// in the closed loop.
    pub fn poll_send(&mut self, now_ns: u64) -> Option<u64> {
        if self.budget == 0 || self.in_flight >= self.pipeline {
            return None;
        }
        let start_ns = match &mut self.slots {
            Some(slots) if slots.next_ns() > now_ns => return None,
            Some(slots) => slots.take(),
            None => now_ns,
        };
        self.in_flight += 1;
        self.budget -= 1;
        Some(start_ns)
    }

    /// A request taken from `poll_send` ended (answered or failed).
    pub fn on_done(&mut self) {
        assert!(self.in_flight > 0, "a request ended that was not started");
        self.in_flight -= 1;
    }

    /// When `poll_send` can next return a request if nothing else happens: the next slot in the
    /// open loop when there is room; None when only a reply can make room (or nothing is left).
    pub fn next_due_ns(&self) -> Option<u64> {
        if self.budget == 0 || self.in_flight >= self.pipeline {
            return None;
        }
        self.slots.as_ref().map(Slots::next_ns)
    }

    /// True while requests may still be started (the count is not spent).
    pub fn has_budget(&self) -> bool {
        self.budget > 0
    }

    /// Slots of the schedule that came before `now_ns` and were never sent (the connection
    /// was busy until the end): the backlog the run left behind.
    pub fn missed_slots(&self, now_ns: u64) -> u64 {
        match &self.slots {
            Some(s) if now_ns >= s.next_ns() => {
                ((now_ns - s.next_ns()) / s.interval_ns + 1).min(self.budget)
            }
            _ => 0,
        }
    }
}

/// Why a request did not count as ok.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum ErrorKind {
    /// 503: the server shed the load (ledger queue full).
    Status503,
    /// Any other status than 200.
    StatusOther,
    /// A 200 whose result was not `created` (transfers).
    NotCreated,
    /// TCP connect failed.
    Connect,
    /// The TLS handshake or a record failed.
    Tls,
    /// The connection broke (reset, closed early) with the request outstanding.
    Io,
    /// The server's reply could not be parsed.
    BadResponse,
    /// No reply within the client's I/O timeout, or still outstanding when the run ended.
    Timeout,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 8] = [
        ErrorKind::Status503,
        ErrorKind::StatusOther,
        ErrorKind::NotCreated,
        ErrorKind::Connect,
        ErrorKind::Tls,
        ErrorKind::Io,
        ErrorKind::BadResponse,
        ErrorKind::Timeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ErrorKind::Status503 => "status_503",
            ErrorKind::StatusOther => "status_other",
            ErrorKind::NotCreated => "not_created",
            ErrorKind::Connect => "connect",
            ErrorKind::Tls => "tls",
            ErrorKind::Io => "io",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::Timeout => "timeout",
        }
    }
}

/// What one second of the run (by completion time) saw, from one thread or all of them.
#[derive(Clone, Debug)]
pub struct Interval {
    /// Seconds since the start: this interval covers `[second, second + 1)`.
    pub second: u64,
    pub ok: u64,
    pub errors: [u64; ErrorKind::ALL.len()],
    /// Latencies of the answered requests (ok or not) completed in this second.
    pub latency_us: Histogram<u64>,
    pub handshakes_full: u64,
    pub handshakes_resumed: u64,
}

impl Interval {
    pub fn new(second: u64) -> Interval {
        Interval {
            second,
            ok: 0,
            errors: [0; ErrorKind::ALL.len()],
            latency_us: latency_histogram(),
            handshakes_full: 0,
            handshakes_resumed: 0,
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.iter().sum()
    }

    pub fn merge(&mut self, other: &Interval) {
        self.ok += other.ok;
        for (a, b) in self.errors.iter_mut().zip(other.errors) {
            *a += b;
        }
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms of the same bounds");
        self.handshakes_full += other.handshakes_full;
        self.handshakes_resumed += other.handshakes_resumed;
    }
}

/// One thread's accounting: records outcomes into the interval of the current second and hands
/// each finished second over (to the thread that merges them).
#[derive(Debug)]
pub struct Recorder {
    current: Interval,
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder {
            current: Interval::new(0),
        }
    }

    /// Finished seconds before `now_ns`, oldest first (an empty one for each second without
    /// completions, so that a reader can tell a quiet second from a thread that has not
    /// reported yet). Call before recording at `now_ns`.
    pub fn roll(&mut self, now_ns: u64, mut out: impl FnMut(Interval)) {
        let second = now_ns / NANOS_PER_SECOND;
        while self.current.second < second {
            let next = Interval::new(self.current.second + 1);
            out(std::mem::replace(&mut self.current, next));
        }
    }

    /// The last, unfinished interval (at the end of the run).
    pub fn finish(self) -> Interval {
        self.current
    }

    /// A request answered at `answered_ns` whose latency counts from `start_ns` (its intended
    /// time in the open loop); `error` is None for an ok reply.
    pub fn answered(&mut self, start_ns: u64, answered_ns: u64, error: Option<ErrorKind>) {
        let us = (answered_ns.saturating_sub(start_ns) / 1000).clamp(1, LATENCY_US_MAX);
        self.current
            .latency_us
            .record(us)
            .expect("clamped into the bounds");
        match error {
            None => self.current.ok += 1,
            Some(kind) => self.failed(kind),
        }
    }

    /// A request that got no answer (or one that is not counted as answered).
    pub fn failed(&mut self, kind: ErrorKind) {
        self.current.errors[kind as usize] += 1;
    }

    pub fn handshake(&mut self, resumed: bool) {
        if resumed {
            self.current.handshakes_resumed += 1;
        } else {
            self.current.handshakes_full += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn shares_interleave_into_the_total_schedule() {
        // 4 connections at 1000/s in all: each every 4 ms, shifted by 1 ms.
        let mut all: Vec<u64> = Vec::new();
        for i in 0..4 {
            let mut s = Slots::share(1000.0, 4, i);
            for _ in 0..5 {
                all.push(s.take());
            }
        }
        all.sort_unstable();
        let expected: Vec<u64> = (0..20).map(|k| k * MS).collect();
        assert_eq!(all, expected);
    }

    #[test]
    fn closed_loop_sends_while_there_is_room() {
        let mut p = Pacer::new(None, 2, 3);
        assert_eq!(p.poll_send(10), Some(10));
        assert_eq!(p.poll_send(11), Some(11));
        assert_eq!(p.poll_send(12), None, "two in flight is the pipeline");
        assert_eq!(p.next_due_ns(), None);
        p.on_done();
        assert_eq!(p.poll_send(13), Some(13));
        p.on_done();
        assert_eq!(p.poll_send(14), None, "the budget of 3 is spent");
    }

    #[test]
    fn open_loop_waits_for_the_slot_and_charges_from_it() {
        let mut p = Pacer::new(Some(Slots::share(1000.0, 1, 0)), 1, u64::MAX);
        assert_eq!(p.poll_send(0), Some(0));
        assert_eq!(p.poll_send(MS / 2), None, "busy");
        p.on_done();
        assert_eq!(p.poll_send(MS / 2), None, "slot 1 is at 1 ms");
        assert_eq!(p.next_due_ns(), Some(MS));
        // Sent late, at 3.5 ms: it still counts from its slot, 1 ms.
        assert_eq!(p.poll_send(3 * MS + MS / 2), Some(MS));
        p.on_done();
        assert_eq!(
            p.missed_slots(3 * MS + MS / 2),
            2,
            "slots of 2 and 3 ms are due, not sent"
        );
        assert_eq!(p.poll_send(3 * MS + MS / 2), Some(2 * MS));
    }

    /// A fake server answers each request 100 µs after it receives it, except that it stalls
    /// for 100 ms at t = 500 ms; one connection, one request in flight, 1000 requests/s for 1 s.
    /// Returns the latencies recorded, with latency counted from the pacer's start times or
    /// (`from_actual_send`) from when the request was actually sent.
    fn stalled_run(from_actual_send: bool) -> Histogram<u64> {
        let service_ns = 100_000;
        let (stall_from_ns, stall_ns) = (500 * MS, 100 * MS);
        let end_ns = 1000 * MS;
        let mut pacer = Pacer::new(Some(Slots::share(1000.0, 1, 0)), 1, u64::MAX);
        let mut recorder = Recorder::new();
        let mut seconds = Vec::new();
        let mut now = 0u64;
        while now < end_ns {
            match pacer.poll_send(now) {
                Some(start_ns) => {
                    let served_at = if (stall_from_ns..stall_from_ns + stall_ns).contains(&now) {
                        stall_from_ns + stall_ns
                    } else {
                        now
                    };
                    let answered = served_at + service_ns;
                    recorder.roll(answered, |i| seconds.push(i));
                    recorder.answered(
                        if from_actual_send { now } else { start_ns },
                        answered,
                        None,
                    );
                    pacer.on_done();
                    now = answered;
                }
                None => now = pacer.next_due_ns().expect("open loop, room"),
            }
        }
        let mut total = Interval::new(0);
        for i in &seconds {
            total.merge(i);
        }
        total.merge(&recorder.finish());
        assert_eq!(
            total.ok, 1000,
            "every slot of the second was sent and answered"
        );
        total.latency_us
    }

    #[test]
    fn a_stall_is_charged_to_every_request_it_delayed() {
        let h = stalled_run(false);
        // The slots of 500..600 ms all waited for the stall's end, and so did the ~11 that
        // came while that backlog drained (0.1 ms each): ~110 requests with latencies spread
        // from ~100 ms down to ~0.
        let delayed = h.count_between(1_000, LATENCY_US_MAX);
        assert!(
            (100..=120).contains(&delayed),
            "{delayed} requests over 1 ms"
        );
        assert!(h.max() >= 99_000, "max {} µs", h.max());
        assert!(
            h.count_between(50_000, LATENCY_US_MAX) >= 45,
            "half of them waited over 50 ms"
        );
        assert!(
            h.value_at_quantile(0.95) >= 40_000,
            "p95 {} µs",
            h.value_at_quantile(0.95)
        );
        assert!(
            h.value_at_quantile(0.50) < 1_000,
            "p50 {} µs",
            h.value_at_quantile(0.50)
        );
        // Measured from the actual send, the same run hides the stall in one request.
        let naive = stalled_run(true);
        assert!(naive.count_between(1_000, LATENCY_US_MAX) <= 1);
        assert!(naive.value_at_quantile(0.95) < 1_000);
    }

    #[test]
    fn the_recorder_hands_over_every_second_in_order() {
        let mut r = Recorder::new();
        let mut out = Vec::new();
        r.roll(10, |i| out.push(i));
        r.answered(0, 10 * 1000, None);
        r.roll(2 * NANOS_PER_SECOND + 5, |i| out.push(i));
        r.answered(
            2 * NANOS_PER_SECOND,
            2 * NANOS_PER_SECOND + 5_000_000,
            Some(ErrorKind::Status503),
        );
        r.failed(ErrorKind::Io);
        r.handshake(true);
        assert_eq!(out.iter().map(|i| i.second).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!((out[0].ok, out[0].latency_us.len()), (1, 1));
        assert_eq!((out[1].ok, out[1].latency_us.len()), (0, 0));
        let last = r.finish();
        assert_eq!(last.second, 2);
        assert_eq!(last.errors[ErrorKind::Status503 as usize], 1);
        assert_eq!(last.errors[ErrorKind::Io as usize], 1);
        assert_eq!(last.error_count(), 2);
        assert_eq!(
            last.latency_us.len(),
            1,
            "a 503 has a latency, an I/O error has none"
        );
        assert!(last.latency_us.equivalent(last.latency_us.max(), 5_000));
        assert_eq!(last.handshakes_resumed, 1);
    }
}
