//! The event-driven side of `https load`: a few threads, each owning its share of the
//! connections as state machines (rustls `ClientConnection` over a non-blocking mio
//! `TcpStream`) and one epoll instance (mio `Poll`). When to send and what each request's
//! latency is are decided by the sans-IO [`Pacer`] and [`Recorder`] of `schedule.rs`; this file
//! only moves bytes, keeps time and reports each finished second to the thread that merges them.
//!
//! A connection's life: `Idle` (not connected: before its first request in new-connection mode,
//! or waiting to reconnect after an error) → `Connecting` (TCP) → `Handshaking` (TLS) → `Open`.
//! Requests are written into rustls as soon as the connection exists: rustls holds plaintext
//! written during the handshake and sends it when the handshake completes, so a new-connection
//! request costs no extra turn.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use rustls::{ClientConfig, ClientConnection, HandshakeKind};
use rustls_pki_types::ServerName;

use crate::http1::{self, Response};
use crate::schedule::{ErrorKind, Interval, Pacer, Recorder, Slots, NANOS_PER_SECOND};

/// A connect, handshake or request with no progress for this long is an error; it also bounds
/// how long the end of a run waits for the requests still in flight.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);
/// Errors in a row after which a connection gives up for the rest of the run.
const CONSECUTIVE_ERRORS_MAX: u32 = 20;
/// The wait before reconnecting after an error, so a refusing server is not hammered.
const RECONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// How often every connection is checked for timeouts.
const SWEEP_INTERVAL_NS: u64 = 250_000_000;
/// Plaintext read per call.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Readiness events taken per poll.
const EVENTS_MAX: usize = 1024;

/// What a request is and how its answer is judged: the workload, outside this file.
pub trait Requests: Sync {
    /// Appends request `seq` of connection `conn` to `out`; `close` asks the server to close
    /// after answering (new-connection mode).
    fn encode(&self, conn: usize, seq: u64, close: bool, out: &mut Vec<u8>);
    /// None for an ok answer, else why not.
    fn judge(&self, response: &Response) -> Option<ErrorKind>;
}

/// The run, as every thread sees it.
#[derive(Debug)]
pub struct Plan {
    pub target: SocketAddr,
    pub server_name: ServerName<'static>,
    pub tls: Arc<ClientConfig>,
    pub connections: usize,
    pub threads: usize,
    pub pipeline: usize,
    /// One request per connection, then close (`--new-connections`).
    pub new_connections: bool,
    /// Requests per second in all (open loop); None: closed loop.
    pub rate_per_s: Option<f64>,
    /// No request starts after this long.
    pub duration: Duration,
    /// Requests in all (split over the connections); None: until the duration ends.
    pub requests_total: Option<u64>,
}

impl Plan {
    /// The connections thread `thread` owns: every `threads`-th, from `thread`.
    fn connections_of(&self, thread: usize) -> impl Iterator<Item = usize> + '_ {
        (thread..self.connections).step_by(self.threads)
    }

    /// Requests connection `index` may start.
    fn budget(&self, index: usize) -> u64 {
        match self.requests_total {
            None => u64::MAX,
            Some(total) => {
                let n = self.connections as u64;
                total / n + u64::from((index as u64) < total % n)
            }
        }
    }
}

/// What a thread tells the merging thread.
#[derive(Debug)]
pub enum Report {
    /// One finished second of one thread.
    Interval(Interval),
    /// The thread is done: its last, partial second and what else it knows.
    Done(ThreadSummary),
}

#[derive(Debug)]
pub struct ThreadSummary {
    pub last: Interval,
    /// When its last request ended, since the start.
    pub last_end_ns: u64,
    /// Open-loop slots that came before the end and were never sent.
    pub missed_slots: u64,
    /// Connections that gave up after `CONSECUTIVE_ERRORS_MAX` errors in a row.
    pub connections_dead: usize,
    pub first_error: Option<String>,
}

/// The start of the run, shared: threads open their keep-alive connections first (not timed),
/// then all start together.
#[derive(Debug)]
pub struct StartLine {
    pub connected: Barrier,
    pub start: OnceLock<Instant>,
    pub go: Barrier,
}

impl StartLine {
    pub fn new(threads: usize) -> StartLine {
        // The threads and the merging thread.
        StartLine {
            connected: Barrier::new(threads + 1),
            start: OnceLock::new(),
            go: Barrier::new(threads + 1),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Idle,
    Connecting,
    Handshaking,
    Open,
}

/// A request written and not yet answered.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    /// Latency counts from here (the intended time in the open loop).
    start_ns: u64,
    /// When it was handed to the connection (for the timeout).
    sent_ns: u64,
}

struct Io {
    sock: TcpStream,
    tls: ClientConnection,
}

struct Conn {
    /// The connection's number in the run (request ids are unique per connection).
    index: usize,
    seq: u64,
    pacer: Pacer,
    io: Option<Io>,
    phase: Phase,
    /// When the current connect or handshake began.
    phase_since_ns: u64,
    in_flight: VecDeque<InFlight>,
    rx: Vec<u8>,
    retry_at_ns: u64,
    consecutive_errors: u32,
    dead: bool,
    /// The wake-up this connection has in the thread's heap, if any.
    wake_ns: Option<u64>,
}

/// One thread's state: its connections, the poll, its accounting.
struct Worker<'a, R: Requests> {
    plan: &'a Plan,
    requests: &'a R,
    poll: Poll,
    conns: Vec<Conn>,
    recorder: Recorder,
    /// Connections waiting for a time (an open-loop slot, a reconnect), soonest first.
    wakeups: BinaryHeap<Reverse<(u64, usize)>>,
    start: Instant,
    end_ns: u64,
    last_end_ns: u64,
    first_error: Option<String>,
    scratch: Vec<u8>,
    chunk: Box<[u8; READ_CHUNK_BYTES]>,
    /// The tokens of one poll's events (reused).
    ready: Vec<usize>,
}

/// Runs thread `thread`'s connections from the start line to the end; reports go to `tx`.
pub fn run_thread<R: Requests>(
    plan: &Plan,
    requests: &R,
    thread: usize,
    line: &StartLine,
    tx: &Sender<(usize, Report)>,
) {
    let poll = match Poll::new() {
        Ok(p) => p,
        Err(e) => {
            // Still take part in the start line, or the others would wait for ever.
            line.connected.wait();
            line.go.wait();
            let mut last = Interval::new(0);
            last.errors[ErrorKind::Connect as usize] += 1;
            let summary = ThreadSummary {
                last,
                last_end_ns: 0,
                missed_slots: 0,
                connections_dead: plan.connections_of(thread).count(),
                first_error: Some(format!("cannot create an epoll instance: {e}")),
            };
            let _ = tx.send((thread, Report::Done(summary)));
            return;
        }
    };
    let conns = plan
        .connections_of(thread)
        .map(|index| Conn {
            index,
            seq: 0,
            pacer: Pacer::new(
                plan.rate_per_s
                    .map(|r| Slots::share(r, plan.connections, index)),
                if plan.new_connections {
                    1
                } else {
                    plan.pipeline
                },
                plan.budget(index),
            ),
            io: None,
            phase: Phase::Idle,
            phase_since_ns: 0,
            in_flight: VecDeque::with_capacity(plan.pipeline),
            rx: Vec::with_capacity(READ_CHUNK_BYTES),
            retry_at_ns: 0,
            consecutive_errors: 0,
            dead: false,
            wake_ns: None,
        })
        .collect();
    let mut w = Worker {
        plan,
        requests,
        poll,
        conns,
        recorder: Recorder::new(),
        wakeups: BinaryHeap::new(),
        start: Instant::now(),
        end_ns: u64::try_from(plan.duration.as_nanos()).unwrap_or(u64::MAX),
        last_end_ns: 0,
        first_error: None,
        scratch: Vec::with_capacity(1024),
        chunk: Box::new([0; READ_CHUNK_BYTES]),
        ready: Vec::with_capacity(EVENTS_MAX),
    };
    let mut events = Events::with_capacity(EVENTS_MAX);
    if !plan.new_connections {
        w.warm_up(&mut events);
    }
    line.connected.wait();
    line.go.wait();
    w.start = *line
        .start
        .get()
        .expect("the merging thread sets the start before `go`");
    w.drive(&mut events, thread, tx);
    let now = w.now_ns();
    let missed_slots = w
        .conns
        .iter()
        .map(|c| c.pacer.missed_slots(now.min(w.end_ns)))
        .sum();
    let connections_dead = w.conns.iter().filter(|c| c.dead).count();
    w.recorder.roll(now, |i| {
        let _ = tx.send((thread, Report::Interval(i)));
    });
    let summary = ThreadSummary {
        last: w.recorder.finish(),
        last_end_ns: w.last_end_ns,
        missed_slots,
        connections_dead,
        first_error: w.first_error,
    };
    let _ = tx.send((thread, Report::Done(summary)));
}

impl<R: Requests> Worker<'_, R> {
    fn now_ns(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Keep-alive mode: opens every connection before the clock starts, bounded by the I/O
    /// timeout. A connection that fails here is retried in the run.
    fn warm_up(&mut self, events: &mut Events) {
        let deadline = Instant::now() + IO_TIMEOUT;
        for i in 0..self.conns.len() {
            self.connect(i, 0);
        }
        while self
            .conns
            .iter()
            .any(|c| matches!(c.phase, Phase::Connecting | Phase::Handshaking))
        {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                for i in 0..self.conns.len() {
                    if self.conns[i].phase != Phase::Open {
                        self.close(i);
                    }
                }
                break;
            }
            if self.poll.poll(events, Some(left)).is_err() {
                continue;
            }
            let ready: Vec<usize> = events.iter().map(|e| e.token().0).collect();
            for i in ready {
                self.on_ready(i, 0, false);
            }
        }
        // The warm-up's handshakes (and failed connects) stay in the first second's figures.
    }

    fn drive(&mut self, events: &mut Events, thread: usize, tx: &Sender<(usize, Report)>) {
        let drain_end_ns = self.end_ns.saturating_add(IO_TIMEOUT.as_nanos() as u64);
        let mut next_sweep_ns = 0;
        for i in 0..self.conns.len() {
            self.service(i, 0);
        }
        loop {
            let now = self.now_ns();
            self.recorder.roll(now, |i| {
                let _ = tx.send((thread, Report::Interval(i)));
            });
            // Connections whose time came.
            while let Some(&Reverse((at, i))) = self.wakeups.peek() {
                if at > now {
                    break;
                }
                self.wakeups.pop();
                if self.conns[i].wake_ns == Some(at) {
                    self.conns[i].wake_ns = None;
                    self.service(i, now);
                }
            }
            if now >= next_sweep_ns {
                next_sweep_ns = now + SWEEP_INTERVAL_NS;
                for i in 0..self.conns.len() {
                    self.sweep(i, now, now >= drain_end_ns);
                }
            }
            let sending = now < self.end_ns;
            let busy = self.conns.iter().any(|c| !c.in_flight.is_empty());
            let more = sending && self.conns.iter().any(|c| !c.dead && c.pacer_has_budget());
            if !busy && !more {
                break;
            }
            // Sleep until the next event, slot, sweep or second boundary.
            let mut wake = next_sweep_ns.min((now / NANOS_PER_SECOND + 1) * NANOS_PER_SECOND);
            if sending {
                wake = wake.min(self.end_ns);
            }
            if let Some(&Reverse((at, _))) = self.wakeups.peek() {
                wake = wake.min(at);
            }
            let timeout = Duration::from_nanos(wake.saturating_sub(now));
            if let Err(e) = self.poll.poll(events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    self.note_error(|| format!("epoll: {e}"));
                }
                continue;
            }
            let now = self.now_ns();
            let sending = now < self.end_ns;
            let mut ready = std::mem::take(&mut self.ready);
            ready.clear();
            ready.extend(events.iter().map(|e| e.token().0));
            for &i in &ready {
                self.on_ready(i, now, sending);
            }
            self.ready = ready;
        }
        // Polite endings: close_notify on what is still open.
        for i in 0..self.conns.len() {
            self.close(i);
        }
    }

    /// Timeouts and, at the end of the drain, requests still outstanding.
    fn sweep(&mut self, i: usize, now: u64, drain_over: bool) {
        let timeout_ns = IO_TIMEOUT.as_nanos() as u64;
        let c = &self.conns[i];
        let stuck = match c.phase {
            Phase::Connecting | Phase::Handshaking => {
                now.saturating_sub(c.phase_since_ns) > timeout_ns
            }
            Phase::Open => c
                .in_flight
                .front()
                .is_some_and(|f| now.saturating_sub(f.sent_ns) > timeout_ns),
            Phase::Idle => false,
        };
        if stuck || (drain_over && !c.in_flight.is_empty()) {
            let what = match c.phase {
                Phase::Connecting => "connect",
                Phase::Handshaking => "TLS handshake",
                _ => "reply",
            };
            self.fail(
                i,
                now,
                ErrorKind::Timeout,
                &format!("no {what} within {IO_TIMEOUT:?}"),
            );
        }
    }

    /// A readiness event on connection `i`.
    fn on_ready(&mut self, i: usize, now: u64, sending: bool) {
        if i >= self.conns.len() || self.conns[i].io.is_none() {
            return;
        }
        if self.conns[i].phase == Phase::Connecting {
            let io = self.conns[i].io.as_ref().expect("checked above");
            match io.sock.take_error() {
                Ok(None) => {}
                Ok(Some(e)) | Err(e) => {
                    return self.fail(i, now, ErrorKind::Connect, &format!("connect: {e}"))
                }
            }
            match io.sock.peer_addr() {
                Ok(_) => {
                    let _ = io.sock.set_nodelay(true);
                    let c = &mut self.conns[i];
                    c.phase = Phase::Handshaking;
                    c.phase_since_ns = now;
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return self.fail(i, now, ErrorKind::Connect, &format!("connect: {e}")),
            }
        }
        self.receive(i, now);
        if sending {
            self.service(i, now);
        } else {
            self.flush(i, now);
        }
    }

    /// Reads what the socket has, decrypts it and handles every complete reply.
    fn receive(&mut self, i: usize, now: u64) {
        let mut eof = false;
        loop {
            let Some(io) = self.conns[i].io.as_mut() else {
                return;
            };
            // Edge-triggered: read until the socket would block.
            let mut drained = false;
            match io.tls.read_tls(&mut io.sock) {
                Ok(0) => eof = true,
                Ok(_) => {
                    if let Err(e) = io.tls.process_new_packets() {
                        // Send our alert, then give up on the connection.
                        let _ = io.tls.write_tls(&mut io.sock);
                        return self.fail(i, now, ErrorKind::Tls, &format!("TLS: {e}"));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => drained = true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.fail(i, now, ErrorKind::Io, &format!("read: {e}")),
            }
            // The plaintext, before reading more (rustls bounds what it holds undelivered).
            loop {
                let io = self.conns[i].io.as_mut().expect("still open");
                match io.tls.reader().read(&mut self.chunk[..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => self.conns[i].rx.extend_from_slice(&self.chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        // Closed without close_notify.
                        eof = true;
                        break;
                    }
                }
            }
            let c = &mut self.conns[i];
            let io = c.io.as_ref().expect("still open");
            if c.phase == Phase::Handshaking && !io.tls.is_handshaking() {
                c.phase = Phase::Open;
                c.consecutive_errors = 0;
                self.recorder
                    .handshake(io.tls.handshake_kind() == Some(HandshakeKind::Resumed));
            }
            if !self.replies(i, now) {
                return;
            }
            if eof || drained {
                break;
            }
        }
        if eof && self.conns[i].io.is_some() {
            if self.conns[i].in_flight.is_empty() {
                self.close(i);
                self.schedule_reconnect(i, now);
            } else {
                self.fail(
                    i,
                    now,
                    ErrorKind::Io,
                    "the server closed the connection with requests outstanding",
                );
            }
        }
    }

    /// Handles every complete reply in the connection's buffer. False when the connection was
    /// closed meanwhile.
    fn replies(&mut self, i: usize, now: u64) -> bool {
        loop {
            let c = &mut self.conns[i];
            let (response, used) = match http1::parse_response(&c.rx) {
                Ok(Some(r)) => r,
                Ok(None) => return true,
                Err(e) => {
                    self.fail(
                        i,
                        now,
                        ErrorKind::BadResponse,
                        &format!("bad response: {e}"),
                    );
                    return false;
                }
            };
            c.rx.drain(..used);
            let Some(request) = c.in_flight.pop_front() else {
                self.fail(i, now, ErrorKind::BadResponse, "a response to no request");
                return false;
            };
            c.pacer.on_done();
            c.consecutive_errors = 0;
            let verdict = self.requests.judge(&response);
            self.recorder.answered(request.start_ns, now, verdict);
            self.last_end_ns = self.last_end_ns.max(now);
            if let Some(kind) = verdict {
                self.note_error(|| {
                    format!(
                        "{} ({}): {}",
                        response.status,
                        kind.name(),
                        String::from_utf8_lossy(&response.body)
                    )
                });
            }
            if self.plan.new_connections || response.close {
                // New-connection mode, or the server ends the connection: what else is in
                // flight on it is lost.
                let lost = self.conns[i].in_flight.len();
                if lost > 0 {
                    self.fail(
                        i,
                        now,
                        ErrorKind::Io,
                        "the server closed the connection with requests outstanding",
                    );
                } else {
                    self.close(i);
                    if !self.plan.new_connections {
                        self.schedule_reconnect(i, now);
                    }
                }
                return false;
            }
        }
    }

    /// Starts what is due on connection `i` (a connection, requests) and flushes.
    fn service(&mut self, i: usize, now: u64) {
        let sending = now < self.end_ns;
        let c = &mut self.conns[i];
        if c.dead {
            return;
        }
        if sending && c.io.is_none() {
            if self.plan.new_connections {
                // A connection per request: the request's slot opens it.
                let slot = if now >= c.retry_at_ns {
                    c.pacer.poll_send(now)
                } else {
                    None
                };
                if let Some(start_ns) = slot {
                    c.in_flight.push_back(InFlight {
                        start_ns,
                        sent_ns: now,
                    });
                    self.connect(i, now);
                    if self.conns[i].io.is_some() {
                        self.write_request(i, true);
                    }
                }
            } else if now >= c.retry_at_ns && c.pacer_has_budget() {
                self.connect(i, now);
            }
        } else if sending && !self.plan.new_connections && c.phase != Phase::Connecting {
            while let Some(start_ns) = self.conns[i].pacer.poll_send(now) {
                self.conns[i].in_flight.push_back(InFlight {
                    start_ns,
                    sent_ns: now,
                });
                self.write_request(i, false);
            }
        }
        self.flush(i, now);
        self.schedule_wake(i, now);
    }

    fn write_request(&mut self, i: usize, close: bool) {
        let c = &mut self.conns[i];
        let seq = c.seq;
        c.seq += 1;
        self.scratch.clear();
        self.requests.encode(c.index, seq, close, &mut self.scratch);
        let io = c.io.as_mut().expect("a connection to write to");
        // rustls buffers it (also during the handshake) until `flush` writes it out.
        if let Err(e) = io.tls.writer().write_all(&self.scratch) {
            let msg = format!("TLS write: {e}");
            self.note_error(|| msg);
        }
    }

    /// Writes what rustls has for the socket, until it would block (mio then reports the
    /// socket writable again).
    fn flush(&mut self, i: usize, now: u64) {
        let c = &mut self.conns[i];
        if c.phase == Phase::Connecting {
            return;
        }
        let Some(io) = c.io.as_mut() else { return };
        while io.tls.wants_write() {
            match io.tls.write_tls(&mut io.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return self.fail(i, now, ErrorKind::Io, &format!("write: {e}")),
            }
        }
    }

    /// Puts connection `i` in the wake-up heap for its next slot or reconnect, if any (none
    /// after the end: nothing starts then).
    fn schedule_wake(&mut self, i: usize, now: u64) {
        if now >= self.end_ns {
            return;
        }
        let c = &mut self.conns[i];
        let at = if c.dead || c.phase == Phase::Connecting || !c.pacer_has_budget() {
            None
        } else if c.io.is_none() {
            // Not connected: a keep-alive connection reconnects after its backoff; in
            // new-connection mode the next slot opens one, not before the backoff either.
            let due = if self.plan.new_connections {
                c.pacer.next_due_ns().unwrap_or(0)
            } else {
                0
            };
            Some(due.max(c.retry_at_ns))
        } else {
            c.pacer.next_due_ns()
        };
        if let Some(at) = at {
            if c.wake_ns.is_none_or(|w| at < w) {
                c.wake_ns = Some(at);
                self.wakeups.push(Reverse((at, i)));
            }
        }
    }

    /// Opens a TCP connection and its TLS client; the handshake proceeds on readiness events.
    fn connect(&mut self, i: usize, now: u64) {
        let sock = match TcpStream::connect(self.plan.target) {
            Ok(s) => s,
            Err(e) => return self.fail(i, now, ErrorKind::Connect, &format!("connect: {e}")),
        };
        let tls = match ClientConnection::new(
            Arc::clone(&self.plan.tls),
            self.plan.server_name.clone(),
        ) {
            Ok(t) => t,
            Err(e) => return self.fail(i, now, ErrorKind::Tls, &format!("TLS client: {e}")),
        };
        // The pipeline bounds what is queued (at most `--pipeline` requests), not rustls' default
        // 64 KiB limit, which would refuse part of a deep pipeline's writes.
        let mut tls = tls;
        tls.set_buffer_limit(None);
        let mut io = Io { sock, tls };
        if let Err(e) = self.poll.registry().register(
            &mut io.sock,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            return self.fail(i, now, ErrorKind::Connect, &format!("epoll register: {e}"));
        }
        let c = &mut self.conns[i];
        c.io = Some(io);
        c.phase = Phase::Connecting;
        c.phase_since_ns = now;
        c.rx.clear();
    }

    /// Closes connection `i` (close_notify, best effort) without judging anything.
    fn close(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if let Some(mut io) = c.io.take() {
            if c.phase == Phase::Open {
                io.tls.send_close_notify();
                let _ = io.tls.write_tls(&mut io.sock);
            }
            let _ = self.poll.registry().deregister(&mut io.sock);
        }
        c.phase = Phase::Idle;
        c.rx.clear();
    }

    fn schedule_reconnect(&mut self, i: usize, now: u64) {
        self.conns[i].retry_at_ns = now;
        self.schedule_wake(i, now);
    }

    /// Connection `i` failed: its outstanding requests are errors of `kind`, it closes, and it
    /// reconnects after a pause (or gives up after too many errors in a row).
    fn fail(&mut self, i: usize, now: u64, kind: ErrorKind, detail: &str) {
        self.note_error(|| detail.to_owned());
        self.close(i);
        let c = &mut self.conns[i];
        if c.in_flight.is_empty() {
            // A keep-alive connection failing with nothing outstanding still counts once, so
            // a server that refuses every connection shows up as errors.
            self.recorder.failed(kind);
        }
        while c.in_flight.pop_front().is_some() {
            c.pacer.on_done();
            self.recorder.failed(kind);
        }
        self.last_end_ns = self.last_end_ns.max(now);
        c.consecutive_errors += 1;
        if c.consecutive_errors >= CONSECUTIVE_ERRORS_MAX {
            c.dead = true;
            let index = c.index;
            self.note_error(|| {
                format!("connection {index} gave up after {CONSECUTIVE_ERRORS_MAX} errors in a row")
            });
            return;
        }
        c.retry_at_ns = now + RECONNECT_BACKOFF.as_nanos() as u64;
        // Its earlier wake-up (if any) is too early now.
        c.wake_ns = None;
        self.schedule_wake(i, now);
    }

    fn note_error(&mut self, what: impl FnOnce() -> String) {
        if self.first_error.is_none() {
            self.first_error = Some(what());
        }
    }
}

impl Conn {
    fn pacer_has_budget(&self) -> bool {
        self.pacer.has_budget()
    }
}
