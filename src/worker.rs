//! The per-queue worker: one thread, one NIC queue, shared-nothing.
//!
//! Loop: rx batch -> poll stack -> TLS -> HTTP decode -> submit to the ledger -> collect replies
//! -> encode -> TLS -> stack -> tx batch. It busy-polls while there is work and blocks in
//! poll(2) when idle, so an idle appliance burns no core.
//!
//! The worker is generic over its port (`Port`): the AF_XDP socket in production, an in-memory
//! link in the whole-stack test.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use ledger_svc::api::{self, Action, Role};
use ledger_svc::http::{self, RequestDecoder, Response};
use smoltcp::phy::Device;
use tcp::{ConnId, Event, Stack};
use tls_term::Session;

use crate::committer::{Completion, LedgerClient, ReplyTo, Submission};
use crate::config::Roles;
use crate::metrics::{status_label, sync_counter, Metrics};

/// A device the worker can drive: the smoltcp `Device` plus the ring upkeep and the idle wait.
pub trait Port: Device {
    /// Refills the fill ring, reaps completions, kicks TX: once per loop turn.
    fn service(&mut self);
    /// Blocks until frames arrive or `timeout` passes.
    fn wait(&mut self, timeout: Duration);
    /// Cumulative counters for the metrics, as (name, value).
    fn counters(&self) -> Vec<(&'static str, u64)>;
    /// True when frames wait in the RX ring or TX frames still need kicks: no time to sleep.
    fn pending(&mut self) -> bool;
}

impl Port for dataplane::XskPort {
    fn service(&mut self) {
        dataplane::XskPort::service(self);
    }

    fn wait(&mut self, timeout: Duration) {
        if let Err(e) = dataplane::XskPort::wait(self, timeout) {
            log::warn!("queue {}: poll failed: {e}", self.queue_id());
            std::thread::sleep(timeout);
        }
    }

    fn pending(&mut self) -> bool {
        self.rx_pending() || self.tx_in_flight() > 0
    }

    fn counters(&self) -> Vec<(&'static str, u64)> {
        let s = self.stats();
        vec![
            ("rx_frames", s.rx_frames),
            ("tx_frames", s.tx_frames),
            ("tx_no_frame", s.tx_no_frame),
            ("rx_dropped", s.rx_dropped),
            ("rx_ring_full", s.rx_ring_full),
            ("fill_ring_empty", s.fill_ring_empty),
            ("rx_invalid", s.rx_invalid),
            ("tx_invalid", s.tx_invalid),
            ("ring_desc_invalid", s.ring_desc_invalid),
            ("wakeup_errors", s.wakeup_errors),
        ]
    }
}

/// What the worker serves over TCP.
#[derive(Debug)]
pub enum AppConfig {
    /// Bytes in, the same bytes out (dataplane tests).
    Echo,
    /// HTTPS: TLS, HTTP/1.1, the JSON API, the ledger.
    Ledger(LedgerApp),
}

#[derive(Debug)]
pub struct LedgerApp {
    pub tls: Arc<rustls::ServerConfig>,
    pub session_limits: tls_term::SessionLimits,
    pub http_limits: http::Limits,
    pub roles: Roles,
    pub ledger: LedgerClient,
    pub completions: Receiver<Completion>,
}

/// Plaintext bytes a connection may hold decrypted but not yet decoded; TLS input stops being
/// read past it, so a slow consumer backs up into the TCP window, not into memory.
const PLAINTEXT_BUFFER_BYTES_MAX: usize = 64 * 1024;
/// Plaintext handed to TLS per call: about one TLS record's worth.
const TLS_WRITE_CHUNK_BYTES: usize = 16 * 1024;
/// Loop turns between metric publications.
const METRICS_EVERY_TURNS: u32 = 1024;
/// The longest a worker blocks in poll(2) while nothing is due, so shutdown is prompt.
const IDLE_WAIT_MAX: Duration = Duration::from_millis(100);
/// While ledger replies are outstanding and no frame is waiting, the worker blocks on its
/// reply channel (a reply does not wake poll(2)) for at most this long before it looks at
/// the rings again: an upper bound on the delay a frame arriving meanwhile can see.
const REPLY_WAIT: Duration = Duration::from_micros(200);

pub struct Worker<P: Port> {
    pub index: usize,
    queue_label: String,
    port: P,
    stack: Stack,
    app: AppConfig,
    conns: Vec<Option<Conn>>,
    /// Slots of the open connections, in no particular order.
    active: Vec<u32>,
    metrics: Metrics,
    busy_poll_turns: u32,
    /// Scratch space for the echo app.
    scratch: Vec<u8>,
    /// Ledger submissions whose replies have not come back, over all connections.
    outstanding: usize,
    /// A reply taken while waiting for one, handled on the next turn.
    parked: Option<Completion>,
}

impl<P: Port> std::fmt::Debug for Worker<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("index", &self.index).field("queue", &self.queue_label).finish()
    }
}

enum Conn {
    Echo(ConnId),
    Tls(Box<TlsConn>),
}

/// One HTTPS connection: its TLS session, its HTTP decoder, and its responses in request order.
struct TlsConn {
    id: ConnId,
    session: Session,
    decoder: RequestDecoder,
    role: Option<Role>,
    plaintext: Vec<u8>,
    /// Responses in request order; a ledger reply fills its slot when it arrives.
    pending: VecDeque<Pending>,
    next_seq: u64,
    /// Encoded responses; `out[out_pos..]` is not yet taken by TLS.
    out: Vec<u8>,
    out_pos: usize,
    /// No more requests will be read: after an HTTP error, `Connection: close` or TLS close.
    closing: bool,
    handshake_counted: bool,
}

enum Pending {
    Ready(Response),
    Waiting(u64),
}

impl<P: Port> Worker<P> {
    pub fn new(
        index: usize,
        queue_label: String,
        mut port: P,
        stack_config: &tcp::StackConfig,
        app: AppConfig,
        metrics: Metrics,
        busy_poll_turns: u32,
    ) -> Result<Worker<P>, tcp::ConfigError> {
        let now = smoltcp_now(Instant::now());
        let mut stack = Stack::new(stack_config, &mut port, now)?;
        // Announce our address so the first SYN of a client is not lost while we ARP (FACTS.md).
        stack.announce(&mut port, now);
        let slots = stack_config.connections_max + stack_config.listen_sockets;
        Ok(Worker {
            index,
            queue_label,
            port,
            stack,
            app,
            conns: (0..slots).map(|_| None).collect(),
            active: Vec::with_capacity(slots),
            metrics,
            busy_poll_turns,
            scratch: vec![0; 64 * 1024],
            outstanding: 0,
            parked: None,
        })
    }

    /// Runs until `stop` is set; then closes every connection politely for a moment.
    pub fn run(&mut self, stop: &AtomicBool) {
        // Beaten every turn (an idle turn waits at most IDLE_WAIT_MAX): /healthz turns 503
        // if this worker stops turning. Unregistered when run returns.
        let heartbeat = self.metrics.health.register(format!("worker-q{}", self.queue_label));
        let mut idle_turns = 0u32;
        let mut turns = 0u32;
        while !stop.load(Ordering::Relaxed) {
            heartbeat.beat();
            #[cfg(feature = "fault-injection")]
            crate::fault::worker_turn(self.stack.counters().accepted);
            let busy = self.turn(Instant::now());
            turns = turns.wrapping_add(1);
            if turns % METRICS_EVERY_TURNS == 0 {
                self.publish_metrics();
            }
            if busy {
                idle_turns = 0;
                continue;
            }
            idle_turns += 1;
            if idle_turns < self.busy_poll_turns {
                continue;
            }
            let now = Instant::now();
            let wait = self
                .stack
                .poll_delay(smoltcp_now(now))
                .map(|d| Duration::from_micros(d.total_micros()))
                .unwrap_or(IDLE_WAIT_MAX)
                .min(IDLE_WAIT_MAX);
            // The metrics stay fresh while idle too.
            self.publish_metrics();
            if self.outstanding > 0 {
                if !self.port.pending() {
                    self.wait_for_reply(wait.min(REPLY_WAIT));
                }
            } else {
                self.port.wait(wait);
            }
        }
        self.shutdown();
        self.publish_metrics();
    }

    /// One loop turn. Returns true if anything moved.
    pub fn turn(&mut self, now: Instant) -> bool {
        let t = smoltcp_now(now);
        self.port.service();
        let mut busy = self.stack.poll(t, &mut self.port);
        self.service_stack(now);
        busy |= self.collect_completions();
        // Only open connections: an empty turn must stay cheap, or busy-polling burns a core.
        for i in 0..self.active.len() {
            busy |= self.drive(self.active[i] as usize, now);
        }
        // Send what the connections wrote. This poll takes in frames too, so the listener pool
        // is re-armed after it as after the first one: smoltcp has no backlog (FACTS.md).
        busy |= self.stack.poll(t, &mut self.port);
        self.service_stack(now);
        self.port.service();
        busy
    }

    /// Re-arms listeners, times out idle connections, and opens or drops connection state.
    fn service_stack(&mut self, now: Instant) {
        let (conns, active, app) = (&mut self.conns, &mut self.active, &self.app);
        self.stack.service(smoltcp_now(now), |event| match event {
            Event::Opened(id) => {
                conns[id.slot()] = Some(match app {
                    AppConfig::Echo => Conn::Echo(id),
                    AppConfig::Ledger(l) => Conn::Tls(Box::new(TlsConn::new(id, l, now))),
                });
                active.push(id.slot() as u32);
            }
            Event::Closed(id) => {
                conns[id.slot()] = None;
                let at = active.iter().position(|&s| s as usize == id.slot()).expect("a closed connection was open");
                active.swap_remove(at);
            }
        });
    }

    /// Sleeps until a ledger reply arrives or `timeout` passes, unless frames are waiting.
    fn wait_for_reply(&mut self, timeout: Duration) {
        let AppConfig::Ledger(app) = &self.app else { return };
        if self.parked.is_none() {
            self.parked = app.completions.recv_timeout(timeout).ok();
        }
    }

    fn collect_completions(&mut self) -> bool {
        let AppConfig::Ledger(app) = &self.app else { return false };
        let mut any = false;
        while let Some(c) = self.parked.take().or_else(|| app.completions.try_recv().ok()) {
            any = true;
            self.outstanding -= 1;
            let Some(Some(Conn::Tls(conn))) = self.conns.get_mut(c.reply_to.slot) else { continue };
            // The connection may have been closed and its slot reused meanwhile.
            if conn.id.generation() != c.reply_to.generation {
                continue;
            }
            if let Some(p) = conn.pending.iter_mut().find(|p| matches!(p, Pending::Waiting(s) if *s == c.reply_to.seq)) {
                *p = Pending::Ready(c.response);
            }
        }
        any
    }

    fn drive(&mut self, slot: usize, now: Instant) -> bool {
        match &mut self.conns[slot] {
            None => false,
            Some(Conn::Echo(id)) => echo(&mut self.stack, *id, &mut self.scratch),
            Some(Conn::Tls(conn)) => {
                let AppConfig::Ledger(app) = &self.app else { unreachable!("TLS conns exist only in the ledger app") };
                conn.drive(&mut self.stack, app, self.index, now, &self.metrics, &mut self.outstanding)
            }
        }
    }

    fn shutdown(&mut self) {
        for &slot in &self.active {
            if let Some(Conn::Tls(conn)) = &mut self.conns[slot as usize] {
                conn.session.close();
                flush_tls(&mut self.stack, conn);
                self.stack.close(conn.id);
            }
        }
        // Give the stack a moment to send the close_notify alerts and FINs.
        let deadline = Instant::now() + Duration::from_millis(200);
        while Instant::now() < deadline {
            self.port.service();
            if !self.stack.poll(smoltcp_now(Instant::now()), &mut self.port) {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    fn publish_metrics(&mut self) {
        let q = self.queue_label.as_str();
        for (name, value) in self.port.counters() {
            sync_counter(&self.metrics.xsk.with_label_values(&[q, name]), value);
        }
        let c = self.stack.counters();
        let stack_counters = [
            ("rx_frames", c.rx_frames),
            ("tx_frames", c.tx_frames),
            ("accepted", c.accepted),
            ("closed", c.closed),
            ("idle_timeouts", c.idle_timeouts),
            ("handshake_timeouts", c.handshake_timeouts),
            ("aborted", c.aborted),
            ("handshakes_failed", c.handshakes_failed),
            ("refused_at_capacity", c.refused_at_capacity),
            ("refused_listen_pool_empty", c.refused_listen_pool_empty),
            ("ingress_limit_hits", c.ingress_limit_hits),
            ("neighbours_learned", c.neighbours_learned),
        ];
        for (name, value) in stack_counters {
            sync_counter(&self.metrics.tcp.with_label_values(&[q, name]), value);
        }
        self.metrics.tcp_connections.with_label_values(&[q]).set(self.stack.connections() as i64);
    }

    pub fn stack(&self) -> &Stack {
        &self.stack
    }

    pub fn port_mut(&mut self) -> &mut P {
        &mut self.port
    }
}

/// Echo: what arrived goes back, as far as the send buffer has room.
fn echo(stack: &mut Stack, id: ConnId, scratch: &mut [u8]) -> bool {
    let room = stack.send_capacity_free(id).min(scratch.len());
    if room == 0 || !stack.can_recv(id) {
        if !stack.may_recv(id) && !stack.can_recv(id) {
            stack.close(id);
        }
        return false;
    }
    let n = stack
        .recv(id, |data| {
            let n = data.len().min(room);
            scratch[..n].copy_from_slice(&data[..n]);
            (n, n)
        })
        .unwrap_or(0);
    if n > 0 {
        let sent = stack.send_slice(id, &scratch[..n]).unwrap_or(0);
        debug_assert_eq!(sent, n, "room was checked");
    }
    n > 0
}

impl TlsConn {
    fn new(id: ConnId, app: &LedgerApp, now: Instant) -> TlsConn {
        TlsConn {
            id,
            session: Session::with_limits(&app.tls, now, app.session_limits).expect("a server session can always be created from a valid config"),
            decoder: RequestDecoder::new(app.http_limits),
            role: None,
            plaintext: Vec::new(),
            pending: VecDeque::new(),
            next_seq: 0,
            out: Vec::new(),
            out_pos: 0,
            closing: false,
            handshake_counted: false,
        }
    }

    /// Moves this connection forward as far as it can go now. Returns true if anything moved.
    fn drive(&mut self, stack: &mut Stack, app: &LedgerApp, worker: usize, now: Instant, metrics: &Metrics, outstanding: &mut usize) -> bool {
        let mut busy = false;
        // 1. Ciphertext in.
        // The session takes less than offered when its plaintext buffer is full: the rest
        // stays in the TCP buffer and backs up into the window.
        while stack.can_recv(self.id) {
            let session = &mut self.session;
            let result = stack.recv(self.id, |data| match session.handle_input(now, data) {
                Ok(n) => (n, Ok(n)),
                Err(e) => (data.len(), Err(e)),
            });
            match result {
                Ok(Ok(0)) => break,
                Ok(Ok(_)) => busy = true,
                Ok(Err(e)) => return self.fail(stack, metrics, &e),
                Err(_) => return false,
            }
        }
        if !stack.may_recv(self.id) && !self.session.peer_closed() {
            self.session.handle_eof();
        }
        if let Err(e) = self.session.handle_timeout(now) {
            return self.fail(stack, metrics, &e);
        }
        if !self.session.is_handshaking() && !self.handshake_counted {
            self.handshake_counted = true;
            self.role = app.roles.of(self.session.identity());
            let version = match self.session.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "1.2",
                _ => "other",
            };
            let resumed = if self.session.resumed() { "true" } else { "false" };
            metrics.tls_handshakes.with_label_values(&[version, resumed]).inc();
        }
        // 2. Plaintext -> requests -> responses or ledger submissions.
        if !self.closing {
            if self.session.read_plaintext(&mut self.plaintext, PLAINTEXT_BUFFER_BYTES_MAX) > 0 {
                self.decoder.feed(&self.plaintext);
                self.plaintext.clear();
                busy = true;
            }
            loop {
                // curl sends `Expect: 100-continue` for bodies over 1 KiB and waits for it.
                if self.decoder.poll_continue() {
                    self.out.extend_from_slice(http::CONTINUE_RESPONSE);
                }
                match self.decoder.poll_request() {
                    Ok(Some(request)) => {
                        busy = true;
                        self.dispatch(request, app, worker, metrics, outstanding);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.pending.push_back(Pending::Ready(Response::from(&e)));
                        self.closing = true;
                        break;
                    }
                }
            }
            if self.decoder.is_closed() || self.session.peer_closed() {
                self.closing = true;
            }
        }
        // 3. Responses out, in request order.
        while let Some(Pending::Ready(_)) = self.pending.front() {
            let Some(Pending::Ready(response)) = self.pending.pop_front() else { unreachable!() };
            metrics.http_responses.with_label_values(&[status_label(response.status)]).inc();
            if self.decoder.encode_response(&response, &mut self.out) {
                self.closing = true;
            }
            busy = true;
        }
        busy |= self.write_out(stack);
        // 4. Close once everything owed has been sent.
        if self.closing && self.pending.is_empty() && self.out.is_empty() {
            self.session.close();
            flush_tls(stack, self);
            if !self.session.wants_output() {
                stack.close(self.id);
            }
        }
        busy
    }

    /// Hands encoded responses to TLS in pieces the session accepts, flushing ciphertext to
    /// TCP as it goes; what does not fit waits for the next turn.
    fn write_out(&mut self, stack: &mut Stack) -> bool {
        let mut busy = false;
        while self.out_pos < self.out.len() {
            let end = self.out.len().min(self.out_pos + TLS_WRITE_CHUNK_BYTES);
            match self.session.write_plaintext(&self.out[self.out_pos..end]) {
                Ok(()) => {
                    self.out_pos = end;
                    busy = true;
                }
                Err(tls_term::SessionError::TxBufferFull { .. }) => {
                    if !flush_tls(stack, self) {
                        break;
                    }
                }
                Err(_) => {
                    // The session is closed: nothing more can be sent.
                    self.out_pos = self.out.len();
                }
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        busy | flush_tls(stack, self)
    }

    fn dispatch(&mut self, request: http::Request, app: &LedgerApp, worker: usize, metrics: &Metrics, outstanding: &mut usize) {
        let Some(role) = self.role else {
            let r = api::error_response(403, "forbidden", "this client identity has no role on this appliance");
            self.pending.push_back(Pending::Ready(r));
            return;
        };
        match api::handle(&request, role) {
            Action::Respond(response) => self.pending.push_back(Pending::Ready(response)),
            Action::Ledger(command) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                let submission = Submission { reply_to: ReplyTo { worker, slot: self.id.slot(), generation: self.id.generation(), seq }, command };
                match app.ledger.submit(submission) {
                    Ok(()) => {
                        *outstanding += 1;
                        self.pending.push_back(Pending::Waiting(seq));
                    }
                    Err(_) => {
                        metrics.ledger_queue_full.inc();
                        let mut r = api::error_response(503, "ledger_busy", "the ledger's queue is full; retry after the indicated delay");
                        r.retry_after_s = Some(1);
                        self.pending.push_back(Pending::Ready(r));
                    }
                }
            }
        }
    }

    /// A TLS error ends the connection: send the alert rustls queued, then close.
    fn fail(&mut self, stack: &mut Stack, metrics: &Metrics, e: &tls_term::SessionError) -> bool {
        log::debug!("connection {:?}: {e}", self.id);
        metrics.tls_errors.with_label_values(&[e.metric_label()]).inc();
        self.closing = true;
        self.pending.clear();
        self.out.clear();
        self.out_pos = 0;
        flush_tls(stack, self);
        stack.close(self.id);
        true
    }
}

/// Moves ciphertext from the session into the TCP send buffer. Returns true if any moved.
fn flush_tls(stack: &mut Stack, conn: &mut TlsConn) -> bool {
    let mut moved = false;
    while conn.session.wants_output() && stack.send_capacity_free(conn.id) > 0 {
        let session = &mut conn.session;
        match stack.send(conn.id, |buf| {
            let n = session.poll_output(buf);
            (n, n)
        }) {
            Ok(0) | Err(_) => break,
            Ok(_) => moved = true,
        }
    }
    moved
}


pub fn smoltcp_now(now: Instant) -> smoltcp::time::Instant {
    // smoltcp wants a monotonic clock; any fixed origin will do.
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    smoltcp::time::Instant::from_micros(now.saturating_duration_since(origin).as_micros() as i64)
}
