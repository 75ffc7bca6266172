//! The per-queue worker: one thread, one NIC queue, shared-nothing.
//!
//! Loop: rx batch -> poll stack -> TLS -> HTTP decode -> submit to the ledger -> collect replies
//! -> encode -> TLS -> stack -> tx batch. It busy-polls while there is work and blocks in
//! ppoll(2) when idle, so an idle appliance burns no core.
//!
//! The worker is generic over its port (`Port`): the AF_XDP socket in production, an in-memory
//! link in the whole-stack test.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use ledger_svc::connection::{Budget, Connection, ConnectionLimits};
use smoltcp::phy::Device;
use tcp::{ConnId, Event, Stack};

use crate::committer::{Completion, LedgerClient, ReplyTo, Submission};
use crate::handshake::{HandshakeLimits, Handshakes};
use crate::metrics::{record_events, sync_counter, Metrics};
use crate::shutdown::{Phase, Shutdown};

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
    /// Boxed: the ledger app is large and the worker holds one `AppConfig` for its life.
    Ledger(Box<LedgerApp>),
}

#[derive(Debug)]
pub struct LedgerApp {
    pub tls: Arc<rustls::ServerConfig>,
    pub limits: ConnectionLimits,
    pub roles: Arc<tls_term::ClientPolicy>,
    /// The bound on what all of this worker's connections hold.
    pub budget: Budget,
    /// The bound on this worker's unfinished TLS handshakes and the pacing of their crypto.
    pub handshakes: HandshakeLimits,
    pub ledger: LedgerClient,
    pub completions: Receiver<Completion>,
    /// This worker's handle on the audit log (`None`: `[audit] enabled = false`).
    pub audit: Option<crate::audit::Audit>,
}
/// Loop turns between metric publications.
const METRICS_EVERY_TURNS: u32 = 1024;
/// While ledger replies are awaited the worker idles between every commit's replies, thousands
/// of times a second under load: it publishes its metrics (some forty labelled series) then at
/// most this often. Before it sleeps with nothing awaited it always publishes.
const METRICS_AWAITING_INTERVAL: Duration = Duration::from_millis(1);
/// The longest a worker blocks in ppoll(2) while nothing is due, so shutdown is prompt.
const IDLE_WAIT_MAX: Duration = Duration::from_millis(100);
/// While ledger replies are outstanding and no frame is waiting, the worker blocks on its
/// reply channel (a reply does not wake ppoll(2)) for at most this long before it looks at
/// the rings again: an upper bound on the delay a frame arriving meanwhile can see.
const REPLY_WAIT: Duration = Duration::from_micros(200);
/// Established connections (answered at least once before) that moved within this long
/// count as busy: handshake steps then keep to their share of the worker's time
/// (`src/handshake.rs`).
const CONTENDED_WINDOW: Duration = Duration::from_millis(10);

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
    /// The connections whose TLS handshake is not done: their budget and their steps' FIFO.
    handshakes: Handshakes,
    /// When an established connection last moved.
    established_moved_at: Option<Instant>,
    /// Handshake steps wait for the time share's credit: the worker sleeps no later.
    handshakes_due: Option<Instant>,
    /// The connections to drive at the next turn (docs/pipeline.md, "Work per turn"): a
    /// segment reached them, a ledger reply came, their timer came, they just opened, or
    /// they moved at their last drive (so may move again). The others are not looked at.
    ready: tcp::SlotSet,
    /// Each connection's next deadline (`Connection::poll_at`), as set after its drive.
    timers: tcp::Timers<Instant>,
    /// Connections holding back a request of their client (`Connection::is_held_back`):
    /// another connection's progress may release them, so each turn looks at them.
    held: tcp::SlotSet,
    /// Scratch for one turn's list.
    turn_slots: Vec<u32>,
    /// Settings published by a configuration reload (SIGHUP), for the connections opened
    /// after it.
    reloads: Option<crate::reload::Watch>,
    /// The stop's drain has begun here: connections that open are reset, the others drain.
    draining: bool,
    /// Set by the simulator: the cost of a handshake step, instead of its wall time.
    handshake_step_cost: Option<Duration>,
    /// When the metrics were last published while idle.
    metrics_published_at: Instant,
}

impl<P: Port> std::fmt::Debug for Worker<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker").field("index", &self.index).field("queue", &self.queue_label).finish()
    }
}

enum Conn {
    Echo(ConnId),
    Https(Box<HttpsConn>),
}

/// One HTTPS connection over the userspace stack: the sans-IO connection and its TCP id.
struct HttpsConn {
    id: ConnId,
    conn: Connection,
    /// The TCP peer's FIN was passed on.
    eof_seen: bool,
    /// The TCP close was asked for.
    closed: bool,
    /// Evicted from the handshake budget and reset: nothing more is done with it.
    evicted: bool,
    /// Responses queued so far: a connection that has been answered before is an
    /// established client whose share the handshakes must leave alone.
    responses: u64,
    /// The client's address and port, for the audit log: taken at the first drive, while
    /// the TCP connection surely exists.
    peer: Option<std::net::SocketAddr>,
}

impl<P: Port> Worker<P> {
    pub fn new(
        index: usize,
        queue_label: String,
        port: P,
        stack_config: &tcp::StackConfig,
        app: AppConfig,
        metrics: Metrics,
        busy_poll_turns: u32,
    ) -> Result<Worker<P>, tcp::ConfigError> {
        Self::new_at(index, queue_label, port, stack_config, app, metrics, busy_poll_turns, Instant::now())
    }

    /// [`Worker::new`] at a given time: the simulator's clock instead of the wall clock.
    #[allow(clippy::too_many_arguments)]
    pub fn new_at(
        index: usize,
        queue_label: String,
        mut port: P,
        stack_config: &tcp::StackConfig,
        app: AppConfig,
        metrics: Metrics,
        busy_poll_turns: u32,
        now: Instant,
    ) -> Result<Worker<P>, tcp::ConfigError> {
        let now = smoltcp_now(now);
        let mut stack = Stack::new(stack_config, &mut port, now)?;
        // Announce our address so the first SYN of a client is not lost while we ARP (docs/facts.md).
        stack.announce(&mut port, now);
        let slots = stack_config.connections_max + stack_config.listen_sockets;
        let handshake_limits = match &app {
            AppConfig::Ledger(l) => l.handshakes,
            AppConfig::Echo => HandshakeLimits::default(),
        };
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
            handshakes: Handshakes::new(handshake_limits, slots),
            established_moved_at: None,
            handshakes_due: None,
            ready: tcp::SlotSet::new(slots),
            timers: tcp::Timers::new(slots),
            held: tcp::SlotSet::new(slots),
            turn_slots: Vec::with_capacity(slots),
            reloads: None,
            draining: false,
            handshake_step_cost: None,
            metrics_published_at: Instant::now(),
        })
    }

    /// Under simulation: every handshake step costs `cost` of the worker's time instead of
    /// the wall time it took, so the handshakes' time share is decided by the seed alone.
    pub fn simulate_handshake_step_cost(&mut self, cost: Duration) {
        self.handshake_step_cost = Some(cost);
    }

    /// Takes the settings a configuration reload publishes (`crate::reload`), once per turn.
    pub fn watch_reloads(&mut self, watch: crate::reload::Watch) {
        self.reloads = Some(watch);
    }

    /// New connections get the reloaded TLS configuration, limits, roles and budget bound;
    /// the open ones keep what they were made with.
    fn take_reload(&mut self) {
        let Some(settings) = self.reloads.as_mut().and_then(crate::reload::Watch::changed) else { return };
        if let AppConfig::Ledger(app) = &mut self.app {
            app.tls = Arc::clone(&settings.tls);
            app.limits = settings.limits;
            app.roles = Arc::clone(&settings.roles);
            app.budget = app.budget.with_bytes_max(settings.queue_budget_bytes_max);
            app.handshakes = settings.handshakes;
            self.handshakes.set_limits(settings.handshakes);
        }
    }

    /// Runs until the stop (`shutdown`): serving while the phase is `Running`, then draining
    /// every connection, returning once all are closed; at the hard stop (`Stop`) what is
    /// left is closed at once and counted.
    pub fn run(&mut self, shutdown: &Shutdown) {
        // Beaten every turn (an idle turn waits at most IDLE_WAIT_MAX): /healthz turns 503
        // if this worker stops turning. Unregistered when run returns.
        let heartbeat = self.metrics.health.register(format!("worker-q{}", self.queue_label));
        let mut idle_turns = 0u32;
        let mut turns = 0u32;
        loop {
            match shutdown.phase() {
                Phase::Running => {}
                Phase::Draining if !self.draining => self.begin_drain(Instant::now()),
                Phase::Draining if self.drained() => break,
                Phase::Draining => {}
                Phase::Stop => {
                    let (connections, requests, bytes) = self.unfinished();
                    log::error!(
                        "queue {}: hard stop: cutting {connections} connection(s): {requests} request(s) read and not answered, {bytes} bytes of responses not delivered",
                        self.queue_label
                    );
                    shutdown.record_cut(connections as u64, requests as u64);
                    self.shutdown();
                    break;
                }
            }
            heartbeat.beat();
            self.take_reload();
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
                .min(IDLE_WAIT_MAX)
                .min(self.handshakes_due.map_or(IDLE_WAIT_MAX, |due| due.saturating_duration_since(now)));
            // The metrics stay fresh while idle too.
            if self.outstanding == 0 || now.saturating_duration_since(self.metrics_published_at) >= METRICS_AWAITING_INTERVAL {
                self.metrics_published_at = now;
                self.publish_metrics();
            }
            if self.outstanding > 0 {
                if !self.port.pending() {
                    self.wait_for_reply(wait.min(REPLY_WAIT));
                }
            } else {
                self.port.wait(wait);
            }
        }
        self.publish_metrics();
    }

    /// The drain begins (docs/operations.md "Stopping: drain and hard stop"): each HTTPS
    /// connection answers what it has read and then closes (`Connection::drain`); one still
    /// in its TLS handshake has read nothing and is reset; an echo connection gets a FIN.
    /// From now on a connection that opens is reset at once (`service_stack`).
    fn begin_drain(&mut self, now: Instant) {
        self.draining = true;
        let mut reset = 0usize;
        for i in 0..self.active.len() {
            let slot = self.active[i] as usize;
            match &mut self.conns[slot] {
                Some(Conn::Https(https)) if https.evicted || https.closed => {}
                Some(Conn::Https(https)) if https.conn.is_handshaking() => {
                    self.handshakes.finished(slot);
                    https.evicted = true;
                    https.closed = true;
                    self.stack.abort(https.id);
                    reset += 1;
                }
                Some(Conn::Https(https)) => {
                    https.conn.drain(now);
                    self.ready.insert(slot);
                }
                Some(Conn::Echo(id)) => self.stack.close(*id),
                None => {}
            }
        }
        log::info!("queue {}: draining {} connection(s) ({reset} in their TLS handshake reset)", self.queue_label, self.active.len());
    }

    /// True once the drain is over here: every connection is done (`is_done`) and no ledger
    /// reply is awaited.
    fn drained(&self) -> bool {
        self.outstanding == 0 && self.active.iter().all(|&slot| self.is_done(slot as usize))
    }

    /// A connection is done when it has closed its side and its data and FIN are
    /// acknowledged (or it is gone): what the peer does with its own side is up to the peer.
    fn is_done(&self, slot: usize) -> bool {
        use smoltcp::socket::tcp::State;
        let id = match &self.conns[slot] {
            Some(Conn::Https(https)) if !https.closed => return false,
            Some(Conn::Https(https)) => https.id,
            Some(Conn::Echo(id)) => *id,
            None => return true,
        };
        matches!(self.stack.state(id), None | Some(State::Closed | State::TimeWait | State::FinWait2))
    }

    /// At the hard stop: (connections not done, requests read and not answered, bytes of
    /// responses not yet delivered to those connections' clients).
    fn unfinished(&self) -> (usize, usize, usize) {
        let (mut connections, mut requests, mut bytes) = (0, 0, 0);
        for &slot in &self.active {
            if self.is_done(slot as usize) {
                continue;
            }
            connections += 1;
            if let Some(Conn::Https(https)) = &self.conns[slot as usize] {
                requests += https.conn.unanswered();
                bytes += https.conn.output_bytes() + self.stack.send_queue(https.id);
            }
        }
        (connections, requests, bytes)
    }

    /// One loop turn. Returns true if anything moved.
    pub fn turn(&mut self, now: Instant) -> bool {
        let t = smoltcp_now(now);
        self.port.service();
        let mut busy = self.stack.poll(t, &mut self.port);
        self.service_stack(now);
        busy |= self.collect_completions(now);
        let contended = self.established_moved_at.is_some_and(|at| now.saturating_duration_since(at) < CONTENDED_WINDOW);
        self.handshakes.begin_turn(now, contended);
        busy |= self.expire_handshakes(now);
        // Only the connections that may move (`ready`): an empty turn must stay cheap, or
        // busy-polling burns a core, and a busy one must not pay for the idle connections.
        // Established connections move now; a handshake with ciphertext waiting joins the
        // FIFO of steps, which run after them, a bounded number per turn.
        let (timers, ready) = (&mut self.timers, &mut self.ready);
        timers.expire(now, |slot| ready.insert(slot));
        let mut slots = std::mem::take(&mut self.turn_slots);
        slots.clear();
        self.ready.drain_into(&mut slots);
        // The held-back connections are looked at after the others have moved.
        self.held.drain_into(&mut slots);
        for &slot in &slots {
            busy |= self.drive_ready(slot as usize, now);
        }
        self.turn_slots = slots;
        // Send what the connections wrote. This poll takes in frames too, so the listener pool
        // is re-armed after it as after the first one: smoltcp has no backlog (docs/facts.md).
        busy |= self.stack.poll(t, &mut self.port);
        self.service_stack(now);
        self.port.service();
        // The handshake steps come last, after the established connections' responses have
        // left, so the crypto delays none of them; the flights they write leave at the next
        // turn's first poll, which follows at once (a step makes the turn busy).
        busy |= self.handshake_steps(now);
        // Steps left waiting: the worker turns again at once if only the per-turn bound held
        // them back; if the time share did, it may sleep until the credit is earned or the
        // established connections have been quiet long enough to lift the share, whichever
        // comes first, but not past it.
        self.handshakes_due = None;
        match self.handshakes.end_turn(now) {
            Some(due) if due <= now => busy = true,
            Some(due) => {
                let lifted = self.established_moved_at.map_or(now, |at| at + CONTENDED_WINDOW);
                self.handshakes_due = Some(due.min(lifted));
            }
            None => {}
        }
        // The turn's audit records go to the writer as one batch (src/audit.rs).
        if let AppConfig::Ledger(app) = &self.app {
            if let Some(audit) = &app.audit {
                audit.flush();
            }
        }
        busy || !self.ready.is_empty()
    }

    /// Drives one connection the turn found ready, then files it for the next turn: ready
    /// again if it moved, held if it holds a request back, its deadline as its timer.
    fn drive_ready(&mut self, slot: usize, now: Instant) -> bool {
        let moved = self.drive(slot, now);
        match &self.conns[slot] {
            Some(Conn::Https(https)) if !https.evicted => {
                if moved {
                    self.ready.insert(slot);
                } else if https.conn.is_held_back() {
                    self.held.insert(slot);
                }
                self.timers.set(slot, https.conn.poll_at());
            }
            Some(Conn::Echo(_)) if moved => self.ready.insert(slot),
            _ => self.timers.set(slot, None),
        }
        moved
    }

    /// When an established connection last answered again (a second or later response on
    /// one connection): for 10 ms after it the handshakes' time share applies. For tests.
    #[doc(hidden)]
    pub fn established_busy_at(&self) -> Option<Instant> {
        self.established_moved_at
    }

    /// Connections that may move although none of their events came (`ready`), found by
    /// driving every open connection: empty unless there is a bug. For tests.
    #[doc(hidden)]
    pub fn readiness_violations(&mut self, now: Instant) -> Vec<usize> {
        // What segments brought since the turn's last look is news the next turn takes.
        let ready = &mut self.ready;
        self.stack.take_ingress_ready(|id| ready.insert(id.slot()));
        let mut missed = Vec::new();
        for i in 0..self.active.len() {
            let slot = self.active[i] as usize;
            let covered = self.ready.contains(slot) || self.held.contains(slot) || self.timers.get(slot).is_some_and(|at| at <= now);
            if !covered && self.drive(slot, now) {
                missed.push(slot);
            }
        }
        missed
    }

    /// Re-arms listeners, times out idle connections, and opens or drops connection state.
    fn service_stack(&mut self, now: Instant) {
        let (conns, active, app, handshakes) = (&mut self.conns, &mut self.active, &self.app, &mut self.handshakes);
        let (ready, held) = (&mut self.ready, &mut self.held);
        let draining = self.draining;
        let mut refused = Vec::new();
        self.stack.service(smoltcp_now(now), |event| match event {
            Event::Opened(id) if draining => refused.push(id),
            Event::Opened(id) => {
                let conn = match app {
                    AppConfig::Echo => Some(Conn::Echo(id)),
                    AppConfig::Ledger(l) => match Connection::new(&l.tls, l.limits, Arc::clone(&l.roles), l.budget.clone(), now) {
                        Ok(conn) => {
                            handshakes.opened(id.slot());
                            Some(Conn::Https(Box::new(HttpsConn { id, conn, eof_seen: false, closed: false, evicted: false, responses: 0, peer: None })))
                        }
                        Err(e) => {
                            log::warn!("cannot create a TLS session: {e}");
                            None
                        }
                    },
                };
                if conn.is_some() {
                    conns[id.slot()] = conn;
                    active.push(id.slot() as u32);
                    ready.insert(id.slot());
                }
            }
            Event::Closed(id) => {
                handshakes.finished(id.slot());
                held.remove(id.slot());
                if conns[id.slot()].take().is_some() {
                    let at = active.iter().position(|&s| s as usize == id.slot()).expect("a closed connection was open");
                    active.swap_remove(at);
                }
            }
        });
        // The drain takes no new connection: reset (the client sees its connect succeed, then
        // ECONNRESET before any TLS byte).
        for id in refused {
            self.stack.abort(id);
        }
        // A segment reached these: data, a FIN, room to send, a reset.
        let ready = &mut self.ready;
        self.stack.take_ingress_ready(|id| ready.insert(id.slot()));
        // A full handshake budget evicts one of its members (the one waiting longest for its
        // client: `Handshakes::over_budget`), never an established connection (docs/design.md,
        // "Under attack"): reset, so its slot and buffers are free at once.
        while let Some(slot) = self.handshakes.over_budget() {
            // A candidate whose client has answered since the last walk is not abandoned: it
            // joins the steps' FIFO and another is chosen.
            if let Some(Conn::Https(https)) = &self.conns[slot] {
                if self.stack.can_recv(https.id) && self.handshakes.ready(slot) {
                    continue;
                }
            }
            self.handshakes.evicted(slot);
            if let Some(Conn::Https(https)) = &mut self.conns[slot] {
                https.evicted = true;
                https.closed = true;
                self.stack.abort(https.id);
            }
        }
    }

    /// Times out the pending handshakes whose deadline (`tls.handshake_timeout_ms`) has
    /// passed. They opened in deadline order, so only the oldest are looked at.
    fn expire_handshakes(&mut self, now: Instant) -> bool {
        let AppConfig::Ledger(app) = &self.app else { return false };
        let mut busy = false;
        while let Some(slot) = self.handshakes.oldest() {
            let Some(Conn::Https(https)) = &mut self.conns[slot] else {
                self.handshakes.finished(slot);
                continue;
            };
            if https.conn.poll_at().is_some_and(|at| at > now) && https.conn.is_handshaking() {
                break;
            }
            // Its deadline passed (or its session failed, or it is no longer handshaking):
            // `drive` without the ciphertext times it out, sends the alert and closes.
            busy |= https.drive(&mut self.stack, app, self.index, now, &self.metrics, &mut self.outstanding, false);
            self.handshakes.finished(slot);
        }
        busy
    }

    /// Runs the handshake steps this turn allows, oldest ready first, each timed for the
    /// handshakes' share of the worker's time.
    fn handshake_steps(&mut self, now: Instant) -> bool {
        let AppConfig::Ledger(app) = &self.app else { return false };
        let mut busy = false;
        while let Some(slot) = self.handshakes.next_step() {
            let started = Instant::now();
            let Some(Conn::Https(https)) = &mut self.conns[slot] else {
                self.handshakes.finished(slot);
                continue;
            };
            let moved = https.drive(&mut self.stack, app, self.index, now, &self.metrics, &mut self.outstanding, true);
            if https.closed || !https.conn.is_handshaking() {
                self.handshakes.finished(slot);
            }
            if moved {
                // It may move again (its first request may be in): the next turn drives it.
                self.ready.insert(slot);
            }
            busy |= moved;
            self.handshakes.step_done(self.handshake_step_cost.unwrap_or_else(|| started.elapsed()));
        }
        busy
    }

    /// Sleeps until a ledger reply arrives or `timeout` passes, unless frames are waiting.
    fn wait_for_reply(&mut self, timeout: Duration) {
        let AppConfig::Ledger(app) = &self.app else { return };
        if self.parked.is_none() {
            self.parked = app.completions.recv_timeout(timeout).ok();
        }
    }

    fn collect_completions(&mut self, now: Instant) -> bool {
        let AppConfig::Ledger(app) = &self.app else { return false };
        let mut any = false;
        while let Some(c) = self.parked.take().or_else(|| app.completions.try_recv().ok()) {
            any = true;
            self.outstanding -= 1;
            let Some(Some(Conn::Https(https))) = self.conns.get_mut(c.reply_to.slot) else { continue };
            // The connection may have been closed and its slot reused meanwhile.
            if https.id.generation() != c.reply_to.generation {
                continue;
            }
            https.conn.handle_reply(now, c.reply_to.seq, &c.reply);
            self.ready.insert(c.reply_to.slot);
        }
        any
    }

    fn drive(&mut self, slot: usize, now: Instant) -> bool {
        match &mut self.conns[slot] {
            None => false,
            Some(Conn::Echo(id)) => echo(&mut self.stack, *id, &mut self.scratch),
            Some(Conn::Https(https)) => {
                let AppConfig::Ledger(app) = &self.app else { return false };
                if !self.handshakes.is_pending(slot) {
                    // Only a connection answering again counts as busy established work: the
                    // one request of a client that connects per request, and its close, are
                    // the rest of its connection's cost, and must not hold the next clients'
                    // handshakes back.
                    let answered = https.responses;
                    let moved = https.drive(&mut self.stack, app, self.index, now, &self.metrics, &mut self.outstanding, true);
                    if answered > 0 && https.responses > answered {
                        self.established_moved_at = Some(now);
                    }
                    return moved;
                }
                // A pending handshake is only looked at here: ciphertext or a FIN waiting makes
                // it ready for its step (which takes both in), output it could not send at
                // its step goes out. Its deadline is watched oldest first
                // (`expire_handshakes`). So a full budget of handshakes waiting for their
                // clients costs a turn two lookups each.
                let id = https.id;
                if https.evicted {
                    return false;
                }
                if self.stack.can_recv(id) || !self.stack.may_recv(id) {
                    let _ = self.handshakes.ready(slot);
                }
                https.conn.wants_ciphertext() && https.flush(&mut self.stack)
            }
        }
    }

    /// The hard stop: every connection gets what is ready, close_notify and a FIN, now.
    fn shutdown(&mut self) {
        for &slot in &self.active {
            if let (Some(Conn::Https(https)), AppConfig::Ledger(app)) = (&mut self.conns[slot as usize], &self.app) {
                https.conn.close();
                https.flush(&mut self.stack);
                let _ = https.record_events(app, &self.metrics, &self.stack);
                self.stack.close(https.id);
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
        self.metrics.xsk.sync(q, &self.port.counters());
        self.metrics.tcp.sync(q, self.stack.counters());
        self.metrics.tcp_connections.with_label_values(&[q]).set(self.stack.connections() as i64);
        if let AppConfig::Ledger(app) = &self.app {
            self.metrics.https_held_bytes.with_label_values(&[q]).set(app.budget.held() as i64);
            self.metrics.ledger_replies_awaited.with_label_values(&[q]).set(self.outstanding as i64);
            let h = self.handshakes.counters();
            sync_counter(&self.metrics.tls_handshakes_started.with_label_values(&[q]), h.started);
            sync_counter(&self.metrics.tls_handshakes_evicted.with_label_values(&[q]), h.evicted);
            sync_counter(&self.metrics.tls_handshake_steps.with_label_values(&[q]), h.steps);
            crate::metric_families::sync_seconds_from_us(&self.metrics.tls_handshake_step_seconds.with_label_values(&[q]), h.step_time_us);
            sync_counter(&self.metrics.tls_handshake_turns_limited.with_label_values(&[q]), h.turns_limited);
            self.metrics.tls_handshakes_pending.with_label_values(&[q]).set(self.handshakes.pending() as i64);
        }
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

impl HttpsConn {
    /// Moves this connection forward as far as it can go now. Returns true if anything moved.
    /// `read`: whether to take ciphertext in (a pending handshake's waits for its step).
    #[allow(clippy::too_many_arguments)]
    fn drive(&mut self, stack: &mut Stack, app: &LedgerApp, worker: usize, now: Instant, metrics: &Metrics, outstanding: &mut usize, read: bool) -> bool {
        if self.evicted {
            return false;
        }
        let mut busy = false;
        if self.peer.is_none() {
            self.peer = stack.remote_endpoint(self.id).map(std::net::SocketAddr::from);
        }
        let (id, conn) = (self.id, &mut self.conn);
        // 1. Ciphertext in, as far as the connection takes it: under backpressure it takes
        // less, the rest stays in the TCP buffer and the window closes.
        while read && stack.can_recv(id) {
            match stack.recv(id, |data| {
                let n = conn.handle_ciphertext(now, data);
                (n, n)
            }) {
                Ok(0) | Err(_) => break,
                Ok(_) => busy = true,
            }
        }
        if !self.eof_seen && !stack.may_recv(id) && !stack.can_recv(id) {
            self.eof_seen = true;
            conn.handle_eof(now);
            busy = true;
        }
        if conn.poll_at().is_some_and(|at| at <= now) {
            conn.handle_timeout(now);
            busy = true;
        }
        if conn.is_held_back() {
            conn.resume(now);
        }
        // 2. Commands to the ledger thread.
        while let Some(s) = conn.poll_submission() {
            busy = true;
            let reply_to = ReplyTo { worker, slot: id.slot(), generation: id.generation(), seq: s.seq };
            match app.ledger.submit(Submission { reply_to, command: s.command }) {
                Ok(()) => *outstanding += 1,
                Err(_) => {
                    metrics.ledger_queue_full.inc();
                    conn.handle_busy(now, s.seq);
                }
            }
        }
        // 3. Ciphertext out.
        busy |= self.flush(stack);
        self.responses += self.record_events(app, metrics, stack) as u64;
        // 4. Close once everything owed has been sent.
        if self.conn.is_closed() && !self.closed {
            self.closed = true;
            stack.close(id);
            busy = true;
        }
        busy
    }

    /// Counts the connection's events and adds each write's record to the turn's audit batch
    /// (sending it may block this worker while the audit channel is full: src/audit.rs).
    /// Returns the responses queued.
    fn record_events(&mut self, app: &LedgerApp, metrics: &Metrics, stack: &Stack) -> usize {
        let (id, peer) = (self.id, self.peer);
        let fields = || crate::logging::ConnFields { slot: id.slot(), peer: peer.or_else(|| conn_fields(stack, id).peer) };
        record_events(&mut self.conn, metrics, fields, |answered| {
            if let Some(audit) = &app.audit {
                audit.record(peer, answered);
            }
        })
    }

    /// Moves ciphertext from the connection into the TCP send buffer. Returns true if any moved.
    fn flush(&mut self, stack: &mut Stack) -> bool {
        let mut moved = false;
        while self.conn.wants_ciphertext() && stack.send_capacity_free(self.id) > 0 {
            let conn = &mut self.conn;
            match stack.send(self.id, |buf| {
                let n = conn.poll_ciphertext(buf);
                (n, n)
            }) {
                Ok(0) | Err(_) => break,
                Ok(_) => moved = true,
            }
        }
        moved
    }
}

/// The connection's slot and peer for a log line (looked up only when a line is written).
fn conn_fields(stack: &Stack, id: ConnId) -> crate::logging::ConnFields {
    crate::logging::ConnFields { slot: id.slot(), peer: stack.remote_endpoint(id).map(Into::into) }
}

pub fn smoltcp_now(now: Instant) -> smoltcp::time::Instant {
    // smoltcp wants a monotonic clock; any fixed origin will do.
    smoltcp::time::Instant::from_micros(now.saturating_duration_since(clock_origin()).as_micros() as i64)
}

/// The origin of the stack's clock (`smoltcp_now(clock_origin())` is 0): the simulator counts
/// its time from here, so the stack sees the same times in every run of a seed.
pub fn clock_origin() -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *ORIGIN.get_or_init(Instant::now)
}
