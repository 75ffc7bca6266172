//! One HTTPS connection, sans-IO: the TLS session, the HTTP/1.1 decoder, the requests waiting
//! for the ledger and the responses owed, in request order (quinn-proto's `Connection` is the
//! model).
//!
//! The driver (the appliance's worker over smoltcp, or `serve-kernel` over a kernel socket)
//! moves bytes and time in and out and never looks inside:
//!
//! - [`Connection::handle_ciphertext`] with bytes from TCP; it returns how many it took (fewer
//!   under backpressure: the rest stays in TCP and the window closes);
//! - [`Connection::poll_submission`] for commands to queue on the ledger thread, then
//!   [`Connection::handle_reply`] with each typed reply (or [`Connection::handle_busy`] when
//!   the ledger's queue refused it);
//! - [`Connection::poll_ciphertext`] for bytes to send;
//! - [`Connection::handle_timeout`] at [`Connection::poll_at`];
//! - [`Connection::poll_event`] for what the metrics, logs and audit log record (each response
//!   as an [`Answered`]: route, timing, sizes, and for a write its identity and result codes);
//!   [`Connection::is_closed`] when the
//!   TCP connection can be closed;
//! - [`Connection::drain`] when the appliance stops: what was read is answered, then it closes.
//!
//! Every byte a client can make the connection hold is bounded: a request is decoded only
//! while the connection's unsent output plus the replies it awaits stay under
//! [`ConnectionLimits::output_bytes_max`] and the worker's shared [`Budget`] has room; a body is
//! admitted against that budget, its whole `Content-Length` counted, before it is read; buffers
//! grow with bytes received, never from a header's promise; and a request's head and body each
//! have a deadline, so a client that trickles bytes is cut off whatever it sends.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tls_term::{ClientPolicy, Session, SessionError, SessionLimits};

use crate::api::{self, Action, Command, Reply, Role};
use crate::http::{self, Phase, RequestDecoder, Response};
use crate::model::Operation;

/// Plaintext moved from TLS to the decoder per step: about one TLS record.
const PLAINTEXT_CHUNK_BYTES: usize = 16 * 1024;
/// Plaintext handed to TLS per call: about one TLS record's worth.
const TLS_WRITE_CHUNK_BYTES: usize = 16 * 1024;
/// Capacity the emptied output queue may keep; a larger one (after a big reply) is freed, so
/// an idle connection holds no large buffer.
const IDLE_OUTPUT_CAPACITY_MAX: usize = 4 * 1024;
/// Bytes a ready response holds besides its body (status line and headers), for accounting.
const RESPONSE_HEAD_BYTES_MAX: usize = 512;
/// Capacity a request's or a reply's buffer may keep for reuse by the next one; a larger one
/// (a big batch, a long page) is freed, so an idle connection holds no large buffer.
const REUSED_BUFFER_CAPACITY_MAX: usize = 4 * 1024;

/// Per-connection bounds (docs/limits.md, "HTTPS connection").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Unsent output plus the replies the connection awaits (each counted at its largest,
    /// [`api::reply_bytes_max`]): past it no further request is decoded, so a client that
    /// pipelines and never reads backs up into its own TCP window.
    pub output_bytes_max: usize,
    /// Queries (GETs) of one connection waiting for the ledger thread: past it no further
    /// request is decoded.
    pub queries_in_flight_max: usize,
    /// From the first byte of a request head to its end. A client still sending its head
    /// after this gets 408 and is closed (counted `head`).
    pub head_timeout: Duration,
    /// From the end of a request head to the end of its body (counted `body`).
    pub body_timeout: Duration,
    /// A keep-alive connection with no request under way is closed after this.
    pub idle_timeout: Duration,
    pub http: http::Limits,
    pub session: SessionLimits,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            output_bytes_max: 256 * 1024,
            queries_in_flight_max: 8,
            head_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            http: http::Limits::default(),
            session: SessionLimits::default(),
        }
    }
}

/// A [`ConnectionLimits`] value that cannot work, found at startup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionLimitsError {
    #[error("{name} is {value}; it must be in {min}..={max}")]
    OutOfRange { name: &'static str, value: u64, min: u64, max: u64 },
    #[error(transparent)]
    Http(#[from] http::LimitsError),
}

impl ConnectionLimits {
    pub fn validate(&self) -> Result<(), ConnectionLimitsError> {
        self.http.validate()?;
        let ms = |d: Duration| d.as_millis() as u64;
        let checks: [(&'static str, u64, u64, u64); 5] = [
            // One full reply must fit: a 503 or a lookup is under 1 KiB.
            ("http.output_bytes_max", self.output_bytes_max as u64, 4 * 1024, 1 << 30),
            ("http.queries_in_flight_max", self.queries_in_flight_max as u64, 1, 1 << 16),
            ("http.head_timeout_ms", ms(self.head_timeout), 100, 3_600_000),
            ("http.body_timeout_ms", ms(self.body_timeout), 100, 3_600_000),
            ("http.idle_timeout_ms", ms(self.idle_timeout), 100, 86_400_000),
        ];
        for (name, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                return Err(ConnectionLimitsError::OutOfRange { name, value, min, max });
            }
        }
        Ok(())
    }
}

/// Bytes held by all the connections of one worker (unsent output, awaited replies, decoder
/// buffers), against one bound: past it no connection starts decoding a new request until
/// others drain. Clones share the count.
#[derive(Debug, Clone)]
pub struct Budget {
    held: Arc<AtomicUsize>,
    bytes_max: usize,
}

impl Budget {
    pub fn new(bytes_max: usize) -> Budget {
        Budget { held: Arc::new(AtomicUsize::new(0)), bytes_max }
    }

    /// Bytes held now by every connection sharing this budget.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub fn bytes_max(&self) -> usize {
        self.bytes_max
    }

    /// The same count under another bound (a configuration reload): connections made with
    /// it are held to `bytes_max`, those made before keep theirs, and all share one count.
    pub fn with_bytes_max(&self, bytes_max: usize) -> Budget {
        Budget { held: Arc::clone(&self.held), bytes_max }
    }

    fn has_room(&self) -> bool {
        self.held() < self.bytes_max
    }

    /// Adds `extra` to the count if it fits under the bound, or if the caller (which holds
    /// `charged` of it) is the only holder, so one request can always go forward.
    fn try_grow(&self, charged: usize, extra: usize) -> bool {
        self.held
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                (held + extra <= self.bytes_max || held <= charged).then_some(held + extra)
            })
            .is_ok()
    }
}

/// What happened, for the driver's metrics, logs and audit trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The TLS handshake completed.
    Handshake { version: &'static str, resumed: bool },
    /// A response was queued for sending.
    Response(Answered),
    /// The TLS session failed (the label names the reason); the connection is closing.
    TlsFailed { reason: &'static str },
    /// A request deadline passed: `phase` is "head" or "body"; the client got 408.
    DeadlineCut { phase: &'static str },
    /// The connection sat idle between requests past `idle_timeout`.
    IdleClosed,
}

/// One request and its response, as the driver's metrics, logs and audit log see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub status: u16,
    /// The request method (`GET`, `POST`, ...; `-` when the request could not be decoded).
    pub method: &'static str,
    /// The route's path template (`api::route_label`): a bounded label.
    pub route: &'static str,
    /// From the request's first byte to its response queued for sending.
    pub duration: Duration,
    /// The request body's length.
    pub request_bytes: usize,
    /// The encoded response, head and body.
    pub response_bytes: usize,
    /// Set for every POST (a write, whether or not it reached the ledger).
    pub write: Option<WriteRecord>,
}

/// What a write request asked and got: what the audit log records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteRecord {
    /// `create_accounts`, `create_transfers`, or `none` when the request was refused before
    /// its body was decoded (403, 400, ...).
    pub operation: &'static str,
    /// Events in the batch (0 when it was refused before decoding).
    pub events: usize,
    /// The client certificate's identity (`None`: no certificate).
    pub identity: Option<Arc<str>>,
    pub role: Option<Role>,
    /// The ledger's result codes and how many events got each, in first-seen order; empty when
    /// the request never reached the ledger (refused, or the ledger's queue was full).
    pub results: Vec<(&'static str, u32)>,
}

/// What a pending response answers, kept until it is queued for sending.
#[derive(Debug)]
struct Exchange {
    method: &'static str,
    route: &'static str,
    started: Instant,
    request_bytes: usize,
    write: Option<WriteRecord>,
}

/// A command for the ledger thread; its reply comes back through
/// [`Connection::handle_reply`] with the same `seq`.
#[derive(Debug)]
pub struct Submission {
    pub seq: u64,
    pub command: Command,
}

/// A response in its request's place: ready, or waiting for the ledger's reply `seq`.
#[derive(Debug)]
enum Pending {
    Ready(Response),
    /// Submitted (or queued for submission); `reserved` bytes are counted as held until the
    /// reply arrives.
    Waiting { seq: u64, reserved: usize, query: bool },
}

/// The connection's closing state: one, not a set of flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Reading and answering requests.
    Open,
    /// No further request is read; the responses owed are still sent, then close_notify.
    Draining,
    /// close_notify (or a fatal alert) is queued; closed once the ciphertext is out.
    Closed,
}

/// One HTTPS connection. See the module documentation for the call sequence.
#[derive(Debug)]
pub struct Connection {
    session: Session,
    decoder: RequestDecoder,
    limits: ConnectionLimits,
    /// Known once the handshake is complete.
    role: Option<Role>,
    /// The client certificate's identity, known once the handshake is complete.
    identity: Option<Arc<str>>,
    /// When the request being received sent its first byte.
    request_started: Instant,
    handshake_done: bool,
    /// Responses in request order, each beside the request it answers.
    pending: VecDeque<(Exchange, Pending)>,
    /// Commands decoded and not yet taken by `poll_submission`.
    submissions: VecDeque<Submission>,
    next_seq: u64,
    /// Queries decoded whose replies have not arrived (bounded by `queries_in_flight_max`).
    queries_waiting: usize,
    /// Submissions taken by `poll_submission` whose replies have not arrived, by kind.
    submitted_mutations: usize,
    submitted_queries: usize,
    /// Encoded responses; `out[out_pos..]` is not yet taken by TLS.
    out: Vec<u8>,
    out_pos: usize,
    /// Bytes of ready responses in `pending` plus the reservations of waiting ones.
    pending_bytes: usize,
    /// What this connection has charged to `budget`.
    charged: usize,
    budget: Budget,
    closing: Closing,
    events: VecDeque<Event>,
    /// The latest time a driver passed in.
    now: Instant,
    /// The decoder's phase and since when (the deadline clock of the current request).
    phase: Phase,
    phase_since: Instant,
    /// Whether the last step could decode: while the connection itself holds a request back
    /// (backpressure), the client is not on the clock.
    reading: bool,
    /// The `Content-Length` of the body being received, once admitted against the budget.
    body_reserved: usize,
    /// The request being decoded into: its target and body buffers serve every request of
    /// the connection (no allocation per request in steady state).
    request: http::Request,
    /// The body buffer of the last response sent, reused for the next reply rendered.
    spare_body: Vec<u8>,
}

impl Connection {
    /// A connection whose TLS handshake starts now.
    pub fn new(tls: &Arc<rustls::ServerConfig>, limits: ConnectionLimits, policy: Arc<ClientPolicy>, budget: Budget, now: Instant) -> Result<Connection, tls_term::TlsError> {
        Ok(Connection {
            session: Session::with_policy(tls, now, limits.session, policy)?,
            decoder: RequestDecoder::new(limits.http),
            limits,
            role: None,
            identity: None,
            request_started: now,
            handshake_done: false,
            pending: VecDeque::new(),
            submissions: VecDeque::new(),
            next_seq: 0,
            queries_waiting: 0,
            submitted_mutations: 0,
            submitted_queries: 0,
            out: Vec::new(),
            out_pos: 0,
            pending_bytes: 0,
            charged: 0,
            budget,
            closing: Closing::Open,
            events: VecDeque::new(),
            now,
            phase: Phase::Idle,
            phase_since: now,
            reading: true,
            body_reserved: 0,
            request: http::Request::empty(),
            spare_body: Vec::new(),
        })
    }

    /// Takes ciphertext received from TCP; returns how many bytes were consumed. Fewer than
    /// offered means the connection is holding back (backpressure): keep the rest in TCP and
    /// offer it again after the connection has sent something or received replies.
    pub fn handle_ciphertext(&mut self, now: Instant, ciphertext: &[u8]) -> usize {
        self.now = now;
        if self.closing == Closing::Closed {
            // Nothing more is read; what arrives is discarded so TCP does not stall the close.
            return ciphertext.len();
        }
        // TLS takes what its plaintext buffer has room for; decoding drains that buffer, so
        // offer the rest again until TLS takes nothing twice in a row (the connection is
        // holding back) or everything is in.
        let (mut consumed, mut stalls) = (0, 0);
        while consumed < ciphertext.len() && stalls < 2 {
            let n = match self.session.handle_input(now, &ciphertext[consumed..]) {
                Ok(n) => n,
                Err(e) => {
                    self.fail(&e);
                    return ciphertext.len();
                }
            };
            consumed += n;
            self.advance();
            stalls = if n == 0 { stalls + 1 } else { 0 };
            if self.closing == Closing::Closed || self.is_held_back() {
                break;
            }
        }
        consumed
    }

    /// The TCP peer sent FIN: no more requests will come; the responses owed are still sent.
    pub fn handle_eof(&mut self, now: Instant) {
        self.now = now;
        self.session.handle_eof();
        self.advance();
    }

    /// Deadlines: the TLS handshake, a request's head and body, the idle keep-alive.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = now;
        if self.closing == Closing::Closed {
            return;
        }
        if let Err(e) = self.session.handle_timeout(now) {
            self.fail(&e);
            return;
        }
        if self.closing == Closing::Open && self.reading {
            match self.phase {
                Phase::Head if now >= self.phase_since + self.limits.head_timeout => self.cut("head"),
                Phase::Body if now >= self.phase_since + self.limits.body_timeout => self.cut("body"),
                Phase::Idle if self.handshake_done && self.pending.is_empty() && now >= self.phase_since + self.limits.idle_timeout => {
                    self.events.push_back(Event::IdleClosed);
                    self.closing = Closing::Draining;
                }
                _ => {}
            }
        }
        self.advance();
    }

    /// The ledger's reply to submission `seq`. A reply for a request this connection no longer
    /// waits for (it failed meanwhile) is dropped.
    pub fn handle_reply(&mut self, now: Instant, seq: u64, reply: &Reply) {
        self.now = self.now.max(now);
        let body = std::mem::take(&mut self.spare_body);
        self.complete(seq, Some(reply), move || api::render_into(reply, body));
    }

    /// The ledger's queue was full when submission `seq` was offered: the client gets 503 with
    /// Retry-After, and nothing was done.
    pub fn handle_busy(&mut self, now: Instant, seq: u64) {
        self.now = self.now.max(now);
        self.complete(seq, None, || {
            let mut r = api::error_response(503, "ledger_busy", "the ledger's queue is full; retry after the indicated delay");
            r.retry_after_s = Some(1);
            r
        });
    }

    /// The next command for the ledger thread, in request order.
    ///
    /// Mutations and queries travel in separate queues to the ledger thread, which could
    /// answer a later query before an earlier mutation is applied, or the reverse. So a
    /// submission of one kind waits while the connection awaits replies of the other kind:
    /// a client that pipelines a transfer and then a lookup sees its own transfer.
    pub fn poll_submission(&mut self) -> Option<Submission> {
        let query = !self.submissions.front()?.command.is_mutation();
        let other_kind_awaited = if query { self.submitted_mutations } else { self.submitted_queries };
        if other_kind_awaited > 0 {
            return None;
        }
        if query {
            self.submitted_queries += 1;
        } else {
            self.submitted_mutations += 1;
        }
        self.submissions.pop_front()
    }

    /// Writes ciphertext to send into `buf` (typically the free room of the TCP send buffer);
    /// returns how many bytes.
    pub fn poll_ciphertext(&mut self, buf: &mut [u8]) -> usize {
        let mut written = 0;
        while written < buf.len() {
            self.write_out();
            let n = self.session.poll_output(&mut buf[written..]);
            if n == 0 {
                break;
            }
            written += n;
        }
        if written > 0 {
            // Room in TLS may let responses and further requests move.
            self.advance();
        }
        written
    }

    /// True while the connection holds back a request of its client (its output cap, its
    /// queries in flight, or the worker's budget): the driver calls [`Connection::resume`]
    /// after other connections have moved, since no byte from this client will wake it.
    pub fn is_held_back(&self) -> bool {
        self.closing == Closing::Open && self.handshake_done && !self.reading
    }

    /// Looks again at what was held back (see [`Connection::is_held_back`]).
    pub fn resume(&mut self, now: Instant) {
        self.now = now;
        self.advance();
    }

    /// Whether [`Connection::poll_ciphertext`] has something to write now.
    pub fn wants_ciphertext(&self) -> bool {
        self.session.wants_output() || (self.out_pos < self.out.len() && !self.session.is_handshaking())
    }

    /// The next deadline; call [`Connection::handle_timeout`] then.
    pub fn poll_at(&self) -> Option<Instant> {
        let tls = self.session.poll_at();
        let request = match (self.closing, self.reading, self.phase) {
            (Closing::Open, true, Phase::Head) => Some(self.phase_since + self.limits.head_timeout),
            (Closing::Open, true, Phase::Body) => Some(self.phase_since + self.limits.body_timeout),
            (Closing::Open, true, Phase::Idle) if self.handshake_done && self.pending.is_empty() => Some(self.phase_since + self.limits.idle_timeout),
            _ => None,
        };
        match (tls, request) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// What happened since the last call, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// True once everything owed is sent (close_notify or an alert included): the driver
    /// closes the TCP connection.
    pub fn is_closed(&self) -> bool {
        self.closing == Closing::Closed && !self.session.wants_output()
    }

    /// Ends the connection now (the appliance's hard stop; [`Connection::drain`] is the
    /// graceful one): no further request is read; what is ready is sent, then close_notify.
    /// Replies still awaited are not waited for.
    pub fn close(&mut self) {
        if self.closing == Closing::Closed {
            return;
        }
        while let Some((_, Pending::Ready(_))) = self.pending.front() {
            self.encode_front();
        }
        self.write_out();
        self.clear_pending();
        self.closing = Closing::Closed;
        self.session.close();
        self.charge();
    }

    /// Starts a graceful stop (the appliance is draining, nginx's "graceful shutdown"): the
    /// requests already read are answered and no further one is.
    ///
    /// "Read" means decoded: the complete requests already taken from TLS are dispatched
    /// first, so each of them is answered, including those waiting for the ledger (their
    /// replies are still delivered through [`Connection::handle_reply`]). A request only
    /// partly received, or one the connection's bounds still hold back, is not answered: the
    /// last response carries `Connection: close`, which tells the client that no later
    /// request on this connection was processed (RFC 9112 §9.6), so it may retry it
    /// elsewhere. Then close_notify, and [`Connection::is_closed`]. An idle keep-alive
    /// connection (or one still in its TLS handshake) closes at once. Idempotent.
    pub fn drain(&mut self, now: Instant) {
        self.now = self.now.max(now);
        if self.closing != Closing::Open {
            return;
        }
        // Dispatch what is already decodable while the connection is still open.
        self.advance();
        if self.closing == Closing::Open {
            self.closing = Closing::Draining;
        }
        self.advance();
    }

    /// Whether [`Connection::drain`] or a close has begun: no further request is read.
    pub fn is_draining(&self) -> bool {
        self.closing != Closing::Open
    }

    /// Requests read whose response is not yet encoded for sending (awaiting the ledger, or
    /// queued behind one that is): what a hard stop leaves unanswered.
    pub fn unanswered(&self) -> usize {
        self.pending.len()
    }

    /// Submissions taken by `poll_submission` whose replies have not arrived.
    pub fn awaiting(&self) -> usize {
        self.submitted_mutations + self.submitted_queries
    }

    /// Bytes this connection holds for its client (see [`Budget`]): its output, and the
    /// request bytes received and not yet decoded or, for an admitted body, its whole length.
    pub fn held_bytes(&self) -> usize {
        self.output_bytes() + self.decoder.buffered_bytes().max(self.body_reserved)
    }

    /// Unsent output plus the replies awaited, each at its largest: what
    /// `output_bytes_max` bounds.
    pub fn output_bytes(&self) -> usize {
        (self.out.len() - self.out_pos) + self.pending_bytes
    }

    pub fn role(&self) -> Option<Role> {
        self.role
    }

    pub fn is_handshaking(&self) -> bool {
        self.session.is_handshaking()
    }

    // --- Internals ------------------------------------------------------------------------

    /// Moves everything as far as it can go: handshake completion, requests decoded and
    /// dispatched, responses encoded and handed to TLS, and the close once nothing is owed.
    fn advance(&mut self) {
        if self.closing == Closing::Closed {
            self.charge();
            return;
        }
        if !self.handshake_done && !self.session.is_handshaking() {
            self.handshake_done = true;
            self.identity = self.session.identity().map(Arc::from);
            self.role = self.session.role();
            let version = match self.session.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
                _ => "other",
            };
            self.events.push_back(Event::Handshake { version, resumed: self.session.resumed() });
            self.phase_since = self.now;
        }
        if self.handshake_done {
            self.decode();
        }
        while let Some((_, Pending::Ready(_))) = self.pending.front() {
            self.encode_front();
        }
        self.write_out();
        if self.session.peer_closed() && self.closing == Closing::Open {
            self.closing = Closing::Draining;
        }
        if self.closing == Closing::Draining && self.pending.is_empty() && self.out_pos == self.out.len() {
            self.closing = Closing::Closed;
            self.session.close();
        }
        self.charge();
    }

    /// Whether a new request may be taken in now.
    fn may_decode(&self) -> bool {
        let in_progress = self.decoder.phase() != Phase::Idle;
        self.closing == Closing::Open
            && self.output_bytes() <= self.limits.output_bytes_max
            && self.queries_waiting < self.limits.queries_in_flight_max
            && self.decoder.in_flight() < self.decoder.limits().requests_in_flight_max
            // The queue's budget holds back new requests; a head under way may finish (it is
            // at most `header_bytes_max`), and a body is admitted on its own (`admit_body`).
            && (in_progress || self.budget.has_room())
    }

    /// Decodes and dispatches requests while the bounds allow, pulling plaintext out of TLS
    /// only when the decoder needs more.
    fn decode(&mut self) {
        loop {
            let reading = self.may_decode();
            if reading && !self.reading {
                // The connection held the client back; its clock restarts now.
                self.phase_since = self.now;
            }
            self.reading = reading;
            if !reading {
                break;
            }
            // curl sends `Expect: 100-continue` for bodies over 1 KiB and waits for it.
            if self.decoder.poll_continue() {
                self.out.extend_from_slice(http::CONTINUE_RESPONSE);
            }
            match self.decoder.poll_request_into(&mut self.request) {
                Ok(true) => {
                    self.body_reserved = 0;
                    // Taken out for `dispatch` (which needs the whole connection) and put back,
                    // unless a big body made it large.
                    let mut request = std::mem::replace(&mut self.request, http::Request::empty());
                    self.dispatch(&request);
                    if request.body.capacity() > REUSED_BUFFER_CAPACITY_MAX {
                        request.body = Vec::new();
                    }
                    if request.target.capacity() > REUSED_BUFFER_CAPACITY_MAX {
                        request.target = String::new();
                    }
                    self.request = request;
                    self.set_phase(Phase::Idle, true);
                }
                Ok(false) => {
                    if !self.admit_body() {
                        // The queue's budget has no room for this body yet: hold it back (its
                        // deadline waits too) until other connections drain.
                        self.reading = false;
                        break;
                    }
                    let session = &mut self.session;
                    let moved = self.decoder.fill(|buffer| session.read_plaintext(buffer, PLAINTEXT_CHUNK_BYTES));
                    let phase = self.decoder.phase();
                    self.set_phase(phase, false);
                    if moved == 0 {
                        break;
                    }
                }
                Err(e) => {
                    // Answer what came before, then the error, then close (RFC 9112 §9.6).
                    let exchange = self.exchange("-", "other", 0, None);
                    self.push_ready(Response::from(&e), exchange);
                    self.closing = Closing::Draining;
                    break;
                }
            }
        }
        if self.decoder.is_closed() && self.closing == Closing::Open {
            self.closing = Closing::Draining;
        }
    }

    /// Admission of a request body against the queue's budget: once the head is known, its
    /// whole `Content-Length` is counted (reserved in the accounting, not allocated: the
    /// buffer still grows with the bytes that arrive) before more of it is read. A body that
    /// does not fit waits, unless nothing else holds any of the budget, so one body can always
    /// go forward. Returns true when reading may go on.
    fn admit_body(&mut self) -> bool {
        let Some(length) = self.decoder.body_length() else { return true };
        if self.body_reserved > 0 || length == 0 {
            return true;
        }
        let buffered = self.decoder.buffered_bytes();
        let extra = length.saturating_sub(buffered);
        if !self.budget.try_grow(self.charged, extra) {
            return false;
        }
        self.charged += extra;
        self.body_reserved = length;
        true
    }

    /// Tracks the decoder's phase; `restart` starts the clock again (a request completed).
    fn set_phase(&mut self, phase: Phase, restart: bool) {
        if self.phase == Phase::Idle && phase != Phase::Idle {
            self.request_started = self.now;
        }
        if restart || phase != self.phase {
            self.phase = phase;
            self.phase_since = self.now;
        }
    }

    fn dispatch(&mut self, request: &http::Request) {
        let route = api::route_label(request.path());
        let write = (request.method == http::Method::Post).then(|| WriteRecord {
            operation: "none",
            events: 0,
            identity: self.identity.clone(),
            role: self.role,
            results: Vec::new(),
        });
        let mut exchange = self.exchange(request.method.as_str(), route, request.body.len(), write);
        let Some(role) = self.role else {
            self.push_ready(api::error_response(403, "forbidden", "this client identity has no role on this appliance"), exchange);
            return;
        };
        match api::handle(request, role) {
            Action::Respond(response) => self.push_ready(response, exchange),
            Action::Ledger(command) => {
                if let (Some(write), Command::Mutate(operation)) = (&mut exchange.write, &command) {
                    write.operation = match operation {
                        Operation::CreateAccounts(_) => "create_accounts",
                        Operation::CreateTransfers(_) => "create_transfers",
                    };
                    write.events = operation.len();
                }
                let seq = self.next_seq;
                self.next_seq += 1;
                let query = !command.is_mutation();
                let reserved = api::reply_bytes_max(&command) + RESPONSE_HEAD_BYTES_MAX;
                self.queries_waiting += usize::from(query);
                self.pending_bytes += reserved;
                self.pending.push_back((exchange, Pending::Waiting { seq, reserved, query }));
                self.submissions.push_back(Submission { seq, command });
            }
        }
    }

    /// What a request being answered was, started at its first byte.
    fn exchange(&self, method: &'static str, route: &'static str, request_bytes: usize, write: Option<WriteRecord>) -> Exchange {
        Exchange { method, route, started: self.request_started.min(self.now), request_bytes, write }
    }

    fn push_ready(&mut self, response: Response, exchange: Exchange) {
        self.pending_bytes += response.body.len() + RESPONSE_HEAD_BYTES_MAX;
        self.pending.push_back((exchange, Pending::Ready(response)));
    }

    /// Fills the ready slot of submission `seq`; `reply` is the ledger's, `None` when the
    /// ledger never saw it.
    fn complete(&mut self, seq: u64, reply: Option<&Reply>, response: impl FnOnce() -> Response) {
        let Some(at) = self.pending.iter().position(|(_, p)| matches!(p, Pending::Waiting { seq: s, .. } if *s == seq)) else {
            return;
        };
        let (exchange, state) = &mut self.pending[at];
        let Pending::Waiting { reserved, query, .. } = *state else { unreachable!("matched Waiting above") };
        let response = response();
        if let (Some(write), Some(Reply::Created(results))) = (&mut exchange.write, reply) {
            write.results = summarize(results);
        }
        self.pending_bytes -= reserved;
        self.queries_waiting -= usize::from(query);
        if query {
            self.submitted_queries -= 1;
        } else {
            self.submitted_mutations -= 1;
        }
        self.pending_bytes += response.body.len() + RESPONSE_HEAD_BYTES_MAX;
        self.pending[at].1 = Pending::Ready(response);
        self.advance();
    }

    /// Encodes the oldest response (which is ready) into the output queue.
    fn encode_front(&mut self) {
        let Some((exchange, Pending::Ready(mut response))) = self.pending.pop_front() else { unreachable!("the caller checked the front is ready") };
        self.pending_bytes -= response.body.len() + RESPONSE_HEAD_BYTES_MAX;
        // The last response of a closing connection says so: the client learns that nothing
        // it sent after this request was processed (RFC 9112 §9.6).
        if self.closing == Closing::Draining && self.pending.is_empty() {
            response.close = true;
        }
        let encoded_from = self.out.len();
        if self.decoder.encode_response(&response, &mut self.out) && self.closing == Closing::Open {
            self.closing = Closing::Draining;
        }
        self.events.push_back(Event::Response(Answered {
            status: response.status,
            method: exchange.method,
            route: exchange.route,
            duration: self.now.saturating_duration_since(exchange.started),
            request_bytes: exchange.request_bytes,
            response_bytes: self.out.len() - encoded_from,
            write: exchange.write,
        }));
        // Its buffer serves the next reply rendered.
        if self.spare_body.capacity() == 0 && response.body.capacity() <= REUSED_BUFFER_CAPACITY_MAX {
            self.spare_body = response.body;
        }
    }

    /// Hands encoded responses to TLS in pieces it accepts; the rest waits for room.
    fn write_out(&mut self) {
        if self.session.is_handshaking() {
            return;
        }
        while self.out_pos < self.out.len() {
            let end = self.out.len().min(self.out_pos + TLS_WRITE_CHUNK_BYTES);
            match self.session.write_plaintext(&self.out[self.out_pos..end]) {
                Ok(()) => self.out_pos = end,
                Err(SessionError::TxBufferFull { .. }) => break,
                // The session is closed: nothing more can be sent.
                Err(_) => self.out_pos = self.out.len(),
            }
        }
        if self.out_pos == self.out.len() {
            if self.out.capacity() > IDLE_OUTPUT_CAPACITY_MAX {
                self.out = Vec::new();
            } else {
                self.out.clear();
            }
            self.out_pos = 0;
        }
    }

    /// A request deadline passed: 408 after the responses owed, then close.
    fn cut(&mut self, phase: &'static str) {
        self.events.push_back(Event::DeadlineCut { phase });
        let mut response = api::error_response(408, "request_timeout", &format!("the request {phase} did not arrive in time"));
        response.close = true;
        let exchange = self.exchange("-", "other", 0, None);
        self.push_ready(response, exchange);
        self.closing = Closing::Draining;
    }

    /// A TLS error ends the connection: the alert rustls queued goes out, nothing else.
    fn fail(&mut self, e: &SessionError) {
        log::debug!("connection: {e}");
        self.events.push_back(Event::TlsFailed { reason: e.metric_label() });
        self.clear_pending();
        self.out = Vec::new();
        self.out_pos = 0;
        self.closing = Closing::Closed;
        self.charge();
    }

    fn clear_pending(&mut self) {
        self.body_reserved = 0;
        self.pending.clear();
        self.submissions.clear();
        self.pending_bytes = 0;
        self.queries_waiting = 0;
        self.submitted_mutations = 0;
        self.submitted_queries = 0;
    }

    /// Brings this connection's share of the worker's budget up to date.
    fn charge(&mut self) {
        let held = if self.closing == Closing::Closed { 0 } else { self.held_bytes() };
        if held > self.charged {
            self.budget.held.fetch_add(held - self.charged, Ordering::Relaxed);
        } else if held < self.charged {
            self.budget.held.fetch_sub(self.charged - held, Ordering::Relaxed);
        }
        self.charged = held;
    }
}

/// The result codes of a create batch and how many events got each, in first-seen order.
fn summarize(results: &[api::EventResult]) -> Vec<(&'static str, u32)> {
    let mut summary: Vec<(&'static str, u32)> = Vec::new();
    for result in results {
        match summary.iter_mut().find(|(status, _)| *status == result.status) {
            Some((_, count)) => *count += 1,
            None => summary.push((result.status, 1)),
        }
    }
    summary
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.budget.held.fetch_sub(self.charged, Ordering::Relaxed);
    }
}
