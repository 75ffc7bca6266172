//! The whole appliance in the deterministic simulator (feature `sim`, test tooling only):
//! N clients (smoltcp interfaces and rustls clients with the client certificate) and the
//! appliance's real code — the worker with its userspace TCP stack, TLS, HTTP and the API,
//! the sans-IO committer and `Ledger<SimStorage>` with its WAL — over `tcp::sim::SimLink`
//! with loss, duplication, reordering, corruption and partitions, and the simulated disk's
//! faults (crash and recovery, torn writes, fsync failures, read corruption, ENOSPC). One
//! thread, a simulated clock, every random choice from one seed: a seed replays byte for
//! byte (`StackReport::digest` hashes every frame and every event).
//!
//! There is no ledger thread: between worker turns the driver takes the worker's
//! submissions from its channel without blocking, runs the committer's steps on the
//! simulated disk and sends the completions back (`ledger_turn`). The checker is ledger-svc's
//! `sim_audit::Auditor`. docs/simulation.md says what is covered and what is not.

pub mod crypto;

use std::cell::RefCell;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use ledger_svc::api;
use ledger_svc::committer::{Committer, CommitterConfig, LedgerStatus, Step};
pub use ledger_svc::sim::Bug;
use ledger_svc::sim_workload::{Kind, Workload, WorkloadConfig};
use ledger_svc::storage::{SimRng, SimStorage};
use ledger_svc::{Ledger, Storage};
use smoltcp::iface::{Config as IfaceConfig, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{Device, DeviceCapabilities, Medium, RxToken, TxToken};
use smoltcp::socket::tcp as stcp;
use smoltcp::wire::{EthernetAddress, HardwareAddress, IpAddress, IpCidr};
use tcp::sim::{Side, SimConfig, SimLink};

use crate::committer::{self, Completion, Queues, ReplyTo, READS_PER_TURN_MAX};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::worker::{clock_origin, smoltcp_now, AppConfig, LedgerApp, Port, Worker};

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const SERVER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 2];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
/// Ledger time at step 0.
const EPOCH_NS: u64 = 1_700_000_000_000_000_000;
/// A client gives up on a request after this long without its response: it drops the
/// connection and sends the same bytes (same ids) on a new one.
const RETRY_AFTER_MS: u64 = 3_000;
/// An idle client makes its next request with a chance of 1 in this per step (20 ms on
/// average: each request here also costs TCP and TLS work).
const REQUEST_ONE_IN: u64 = 20;
/// How often the checker audits the live ledger.
const AUDIT_EVERY_MS: u64 = 250;
/// Refused starts in a row before the run ends (the service manager's burst limit).
const START_ATTEMPTS_MAX: u32 = 3;
/// Worker turns per simulated millisecond at most (each with a ledger turn between).
const TURNS_PER_MS_MAX: usize = 8;
/// What a TLS handshake step costs the worker, in simulated time.
const HANDSHAKE_STEP_COST: Duration = Duration::from_micros(500);

/// One run's parameters.
#[derive(Clone, Debug)]
pub struct StackSimConfig {
    pub seed: u64,
    /// Simulated milliseconds (one step each); bounds the run.
    pub steps: u64,
    pub clients: usize,
    /// Requests each client makes (retries not counted).
    pub requests_per_client: u64,
    /// Wall time a run may take; past it the run stops with a violation.
    pub wall_max: Duration,
    /// An injected bug the checker must catch (only with the `sim-bugs` feature).
    pub bug: Option<Bug>,
}

impl StackSimConfig {
    pub fn new(seed: u64) -> Self {
        StackSimConfig {
            seed,
            steps: 20_000,
            clients: 4,
            requests_per_client: 100,
            wall_max: Duration::from_secs(60),
            bug: None,
        }
    }
}

/// Faults injected in one run, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StackFaults {
    pub crashes: u64,
    pub sync_failures: u64,
    pub read_corruptions: u64,
    pub enospc: u64,
    pub frames_lost: u64,
    pub frames_duplicated: u64,
    pub frames_reordered: u64,
    pub frames_corrupted: u64,
    pub partitions: u64,
}

impl StackFaults {
    pub fn add(&mut self, o: &StackFaults) {
        self.crashes += o.crashes;
        self.sync_failures += o.sync_failures;
        self.read_corruptions += o.read_corruptions;
        self.enospc += o.enospc;
        self.frames_lost += o.frames_lost;
        self.frames_duplicated += o.frames_duplicated;
        self.frames_reordered += o.frames_reordered;
        self.frames_corrupted += o.frames_corrupted;
        self.partitions += o.partitions;
    }

    pub fn total(&self) -> u64 {
        self.crashes
            + self.sync_failures
            + self.read_corruptions
            + self.enospc
            + self.frames_lost
            + self.frames_duplicated
            + self.frames_reordered
            + self.frames_corrupted
            + self.partitions
    }

    fn add_disk(&mut self, disk: ledger_svc::storage::DiskFaultCounts) {
        self.sync_failures += disk.sync_failures;
        self.read_corruptions += disk.read_corruptions;
        self.enospc += disk.enospc;
    }
}

/// The outcome of one run.
#[derive(Clone, Debug, Default)]
pub struct StackReport {
    pub seed: u64,
    pub steps: u64,
    /// FNV-1a over every frame delivered and every event, in order.
    pub digest: u64,
    pub faults: StackFaults,
    /// Responses clients got to their requests (first tries and retries).
    pub replies: u64,
    /// Transfers acknowledged (`created` or `exists`).
    pub acknowledged: u64,
    /// Connections clients opened (first ones and reconnections after a failure).
    pub connections: u64,
    /// Requests sent again (same bytes) on a new connection.
    pub retries: u64,
    pub recoveries: u64,
    pub refused: bool,
    pub refusal: Option<String>,
    /// Requests every client finished (all answered) before the run ended.
    pub finished: bool,
    pub violations: Vec<String>,
}

/// The network beyond `SimLink`'s loss, reordering and duplication: corruption and
/// partitions, drawn from the run's seed, and the trace every delivered frame goes into.
#[derive(Debug)]
struct Wire {
    link: SimLink,
    rng: SimRng,
    /// Frames are lost both ways until then (smoltcp time, µs).
    partition_until: i64,
    corrupted: u64,
    partitioned: u64,
    /// Frames that reached the appliance while it was down.
    to_dead: u64,
    digest: u64,
}

impl Wire {
    fn trace(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.digest ^= u64::from(b);
            self.digest = self.digest.wrapping_mul(0x0100_0000_01b3);
        }
    }

    fn send(&mut self, toward: Side, now: smoltcp::time::Instant, frame: &mut [u8]) {
        if now.total_micros() < self.partition_until {
            self.partitioned += 1;
            return;
        }
        // One bit flipped in 1 frame of 500: the Ethernet, IP or TCP checksum catches it
        // (or the TLS record's MAC, or the frame goes to no one).
        if self.rng.chance(1, 500) && !frame.is_empty() {
            let at = self.rng.below(frame.len() as u64) as usize;
            frame[at] ^= 1 << self.rng.below(8);
            self.corrupted += 1;
        }
        self.link.inject(toward, now, frame);
    }
}

/// One end of the link for smoltcp (the worker's port, or the clients' interface).
struct End {
    wire: Rc<RefCell<Wire>>,
    side: Side,
}

struct Rx(Vec<u8>);

struct Tx {
    wire: Rc<RefCell<Wire>>,
    toward: Side,
    now: smoltcp::time::Instant,
}

impl Device for End {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx;

    fn receive(&mut self, now: smoltcp::time::Instant) -> Option<(Rx, Tx)> {
        let mut wire = self.wire.borrow_mut();
        let frame = wire.link.take(self.side, now)?;
        wire.trace(&frame);
        Some((
            Rx(frame),
            Tx {
                wire: Rc::clone(&self.wire),
                toward: self.side.peer(),
                now,
            },
        ))
    }

    fn transmit(&mut self, now: smoltcp::time::Instant) -> Option<Tx> {
        Some(Tx {
            wire: Rc::clone(&self.wire),
            toward: self.side.peer(),
            now,
        })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = 1514;
        caps
    }
}

impl RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl TxToken for Tx {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut frame = vec![0; len];
        let r = f(&mut frame);
        self.wire
            .borrow_mut()
            .send(self.toward, self.now, &mut frame);
        r
    }
}

impl Port for End {
    fn service(&mut self) {}
    fn wait(&mut self, _timeout: Duration) {}
    fn counters(&self) -> Vec<(&'static str, u64)> {
        Vec::new()
    }
    fn pending(&mut self) -> bool {
        false
    }
}

/// What every start of the appliance is made from (the run's configuration and TLS).
struct Setup {
    config: Config,
    server_tls: Arc<rustls::ServerConfig>,
    roles: Arc<tls_term::ClientPolicy>,
    stack_config: tcp::StackConfig,
    client_tls: Arc<rustls::ClientConfig>,
    /// The temporary directory holding the run's certificate and key files.
    dir: std::path::PathBuf,
}

impl Drop for Setup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The running appliance: its worker, and the ledger the driver runs in line.
struct Appliance {
    worker: Worker<End>,
    ledger: Ledger<SimStorage>,
    core: Committer<ReplyTo>,
    queues: Queues,
    replies: Sender<Completion>,
    /// The WAL sync in flight (the `wal-sync` thread's job): when it completes (ms), the job,
    /// and the batch it covers.
    syncing: Option<(u64, ledger_svc::SyncJob, u64)>,
    /// Where each written batch's record ends in the WAL (segment, length), until released:
    /// the checker's "a batch's replies leave only when its record is durable".
    written: ledger_svc::sim::WalRecords,
}

struct Request {
    bytes: Vec<u8>,
    kind: Kind,
    /// When it was last written on a connection (None: not on the current one yet).
    sent_at: Option<u64>,
}

struct ClientConn {
    handle: SocketHandle,
    tls: rustls::ClientConnection,
    /// Ciphertext rustls wrote that the socket had no room for yet.
    out: Vec<u8>,
    received: Vec<u8>,
}

#[derive(Default)]
struct Client {
    conn: Option<ClientConn>,
    request: Option<Request>,
    /// No new connection before then (ms): a failed one is not retried in a tight loop.
    connect_after: u64,
}

struct World {
    config: StackSimConfig,
    rng: SimRng,
    now: u64,
    base: Instant,
    setup: Setup,
    wire: Rc<RefCell<Wire>>,
    server: Option<Appliance>,
    down: Option<(SimStorage, u64)>,
    refusals: u32,
    iface: Interface,
    client_end: End,
    sockets: SocketSet<'static>,
    clients: Vec<Client>,
    next_port: u16,
    /// What the clients ask, and the checker's record of what they were told (ledger-svc's,
    /// shared with its simulator).
    workload: Workload,
    report: StackReport,
}

/// Runs one seed to completion (bounded by `config.steps` and `config.wall_max`).
pub fn run(config: StackSimConfig) -> StackReport {
    let mut report = StackReport {
        seed: config.seed,
        ..StackReport::default()
    };
    let mut world = match World::new(config) {
        Ok(world) => world,
        Err(e) => {
            report
                .violations
                .push(format!("the simulation could not be set up: {e}"));
            return report;
        }
    };
    let started = Instant::now();
    for _ in 0..world.config.steps {
        world.step();
        world.report.steps += 1;
        if world.report.steps % 256 == 0 && started.elapsed() > world.config.wall_max {
            let why = format!(
                "over its wall-time bound of {:?} after {} steps",
                world.config.wall_max, world.report.steps
            );
            world.violation(why);
            break;
        }
        if world.report.refused || world.report.violations.len() >= 8 || world.done() {
            break;
        }
    }
    world.report.finished = world.done();
    // The end: crash once more and recover, so every run also checks a recovery.
    if world.server.is_some() {
        world.crash("final");
    }
    if world.down.is_some() && !world.report.refused {
        world.restart();
    }
    if let Some(server) = &world.server {
        world
            .report
            .faults
            .add_disk(server.ledger.storage().fault_counts());
        let violations = world
            .workload
            .audit()
            .check_state(server.ledger.state(), "end");
        world.report.violations.extend(violations);
    }
    let stats = world.wire.borrow().link.stats().clone();
    let wire = world.wire.borrow();
    world.report.faults.frames_lost =
        stats.lost + stats.queue_full + wire.partitioned + wire.to_dead;
    world.report.faults.frames_duplicated = stats.duplicated;
    world.report.faults.frames_reordered = stats.reordered;
    world.report.faults.frames_corrupted = wire.corrupted;
    world.report.digest = wire.digest;
    drop(wire);
    world.report.acknowledged = world.workload.audit().acknowledged_count();
    world.report.clone()
}

impl World {
    fn new(config: StackSimConfig) -> anyhow::Result<World> {
        let mut rng = SimRng::new(config.seed);
        let random = crypto::SeededRandom::new(rng.next_u64());
        let setup = setup(&random, config.seed)?;
        let wire = Rc::new(RefCell::new(Wire {
            link: SimLink::new(SimConfig {
                seed: rng.next_u64(),
                loss_ppm: 10_000,
                reorder_ppm: 10_000,
                duplicate_ppm: 5_000,
                latency: smoltcp::time::Duration::from_micros(500),
                reorder_delay: smoltcp::time::Duration::from_millis(3),
                ..SimConfig::default()
            }),
            rng: SimRng::new(rng.next_u64()),
            partition_until: 0,
            corrupted: 0,
            partitioned: 0,
            to_dead: 0,
            digest: 0xcbf2_9ce4_8422_2325,
        }));
        // The simulated clock starts one second past the stack clock's origin, so the stack
        // sees the same times in every run, whatever the wall clock says.
        let base = clock_origin() + Duration::from_secs(1);
        let mut client_end = End {
            wire: Rc::clone(&wire),
            side: Side::B,
        };
        let mut iface_config =
            IfaceConfig::new(HardwareAddress::Ethernet(EthernetAddress(CLIENT_MAC)));
        iface_config.random_seed = rng.next_u64();
        let mut iface = Interface::new(iface_config, &mut client_end, smoltcp_now(base));
        iface.update_ip_addrs(|a| {
            a.push(IpCidr::new(IpAddress::Ipv4(CLIENT_IP), 24))
                .expect("room for one address")
        });
        let mut disk = SimStorage::new();
        disk.inject(ledger_svc::sim::disk_faults(&mut rng));
        let clients = (0..config.clients).map(|_| Client::default()).collect();
        let workload = Workload::new(WorkloadConfig {
            clients: config.clients,
            requests_per_client: config.requests_per_client,
            request_one_in: REQUEST_ONE_IN,
        });
        let mut world = World {
            config,
            rng,
            now: 0,
            base,
            setup,
            wire,
            server: None,
            down: None,
            refusals: 0,
            iface,
            client_end,
            sockets: SocketSet::new(Vec::new()),
            clients,
            next_port: 40_000,
            workload,
            report: StackReport::default(),
        };
        world.report.seed = world.config.seed;
        let server = world
            .start(disk)
            .map_err(|e| anyhow::anyhow!("a fresh ledger on an empty disk did not open: {e}"))?;
        world.server = Some(server);
        Ok(world)
    }

    fn instant(&self) -> Instant {
        self.base + Duration::from_millis(self.now)
    }

    fn trace(&mut self, bytes: &[u8]) {
        self.wire.borrow_mut().trace(bytes);
    }

    fn violation(&mut self, what: String) {
        self.trace(what.as_bytes());
        self.report
            .violations
            .push(format!("t={}ms: {what}", self.now));
    }

    fn done(&self) -> bool {
        self.clients
            .iter()
            .enumerate()
            .all(|(i, c)| self.workload.exhausted(i) && c.request.is_none())
    }

    /// Starts the appliance on `disk`: recovery (`Err(Refused)`: allowed, it serves
    /// nothing), then a worker as `serve` makes one (`Err(Broken)`: a bug of the run).
    fn start(&mut self, disk: SimStorage) -> Result<Appliance, StartError> {
        let ledger =
            Ledger::open(disk, ledger_svc::sim::ledger_config()).map_err(StartError::Refused)?;
        let committer::Channels {
            client,
            submissions,
            replies_tx,
            mut replies_rx,
        } = committer::channels(self.setup.config.ledger.queue_depth_max, 1);
        let config = &self.setup.config;
        let app = AppConfig::Ledger(Box::new(LedgerApp {
            roles: Arc::clone(&self.setup.roles),
            tls: Arc::clone(&self.setup.server_tls),
            limits: config.connection_limits(),
            budget: config.queue_budget(),
            handshakes: config.handshake_limits(),
            ledger: client,
            completions: replies_rx.remove(0),
            audit: None,
        }));
        let port = End {
            wire: Rc::clone(&self.wire),
            side: Side::A,
        };
        let mut worker = Worker::new_at(
            0,
            "0".to_owned(),
            port,
            &self.setup.stack_config,
            app,
            Metrics::new(),
            0,
            self.instant(),
        )
        .map_err(|e| StartError::Broken(format!("the worker did not start: {e}")))?;
        worker.simulate_handshake_step_cost(HANDSHAKE_STEP_COST);
        let core = Committer::new(CommitterConfig {
            batches_unsynced_max: config.ledger.pipeline_depth,
            ..CommitterConfig::new(config.ledger.batch_events_max, READS_PER_TURN_MAX)
        });
        let replies = replies_tx
            .into_iter()
            .next()
            .expect("one worker, one reply channel");
        Ok(Appliance {
            worker,
            ledger,
            core,
            queues: submissions,
            replies,
            syncing: None,
            written: ledger_svc::sim::WalRecords::default(),
        })
    }

    fn step(&mut self) {
        self.now += 1;
        if self.server.is_some() && self.rng.chance(1, 4_000) {
            self.crash("power loss");
        }
        if self.rng.chance(1, 3_000) {
            let until = smoltcp_now(self.instant()).total_micros()
                + (50 + self.rng.below(400) as i64) * 1_000;
            self.wire.borrow_mut().partition_until = until;
            self.report.faults.partitions += 1;
            self.trace(b"partition");
        }
        if matches!(&self.down, Some((_, at)) if *at <= self.now) {
            self.restart();
        }
        self.serve();
        self.clients_turn();
        if self.now % AUDIT_EVERY_MS == 0 {
            if let Some(server) = &self.server {
                for v in self.workload.audit().check_state(server.ledger.state(), "live") {
                    self.violation(v);
                }
            }
        }
    }

    /// The appliance's share of a millisecond: worker turns, each followed by a ledger turn.
    fn serve(&mut self) {
        let now = self.instant();
        let (now_ms, ledger_ns) = (self.now, EPOCH_NS + self.now * 1_000_000);
        let Some(server) = &mut self.server else {
            // Nobody takes the frames sent to a dead appliance.
            let t = smoltcp_now(now);
            let mut wire = self.wire.borrow_mut();
            while wire.link.take(Side::A, t).is_some() {
                wire.to_dead += 1;
            }
            return;
        };
        let mut outcome = LedgerTurn::default();
        for _ in 0..TURNS_PER_MS_MAX {
            let busy = server.worker.turn(now);
            let missed = server.worker.readiness_violations(now);
            if !missed.is_empty() {
                outcome.violations.push(format!(
                    "connections with work no event would have driven: {missed:?}"
                ));
            }
            let turn = ledger_turn(server, now_ms, ledger_ns, &mut self.rng, self.config.bug);
            let moved = turn.replies > 0;
            outcome.violations.extend(turn.violations);
            outcome.fatal = outcome.fatal.or(turn.fatal);
            if outcome.fatal.is_some() || (!busy && !moved) {
                break;
            }
        }
        for v in outcome.violations {
            self.violation(v);
        }
        if let Some(why) = outcome.fatal {
            self.crash(&format!("fatal {why}"));
        }
    }

    /// The process dies: the disk keeps what a crash leaves, every connection is gone.
    fn crash(&mut self, why: &str) {
        let Some(server) = self.server.take() else {
            return;
        };
        self.report.faults.crashes += 1;
        if let Some(violation) = server.written.check_crash(&server.ledger) {
            self.violation(violation);
        }
        self.report
            .faults
            .add_disk(server.ledger.storage().fault_counts());
        let disk = server.ledger.storage().crash(&mut self.rng);
        let restart_at = self.now + 10 + self.rng.below(200);
        self.down = Some((disk, restart_at));
        self.trace(format!("crash {why}").as_bytes());
    }

    /// Recovery from what the disk holds: everything acknowledged comes back, or it refuses.
    fn restart(&mut self) {
        let Some((mut disk, _)) = self.down.take() else {
            return;
        };
        let mut faults = ledger_svc::sim::disk_faults(&mut self.rng);
        // The operator made room after a full disk: a restart never starts out of space.
        faults.capacity_bytes = faults
            .capacity_bytes
            .map(|c| c.max(disk.used_bytes() * 2 + 20_000));
        disk.inject(faults);
        self.report.recoveries += 1;
        let probe = disk.reopen().expect("a simulated disk reopens");
        match self.start(disk) {
            Ok(server) => {
                for v in self
                    .workload
                    .audit()
                    .check_state(server.ledger.state(), "after recovery")
                {
                    self.violation(v);
                }
                self.trace(format!("recovered {}", server.ledger.state().state_hash()).as_bytes());
                self.refusals = 0;
                self.server = Some(server);
            }
            Err(StartError::Broken(why)) => self.violation(why),
            Err(StartError::Refused(error)) => {
                self.report.faults.add_disk(probe.fault_counts());
                self.trace(format!("refused {error}").as_bytes());
                self.refusals += 1;
                if self.refusals < START_ATTEMPTS_MAX {
                    self.down = Some((probe, self.now + 100));
                } else {
                    self.report.refused = true;
                    self.report.refusal = Some(error.to_string());
                    // Refusing is right only for damage the injected read errors made.
                    if let Err(error) =
                        Ledger::open(probe.clone(), ledger_svc::sim::ledger_config())
                    {
                        self.violation(format!("the disk a crash left cannot be recovered even without read errors: {error}"));
                    }
                }
            }
        }
    }

    /// The clients' share of a millisecond: their interface, their TLS, their requests.
    fn clients_turn(&mut self) {
        let t = smoltcp_now(self.instant());
        self.iface.poll(t, &mut self.client_end, &mut self.sockets);
        for c in 0..self.clients.len() {
            self.client_turn(c);
        }
        self.iface.poll(t, &mut self.client_end, &mut self.sockets);
    }

    fn client_turn(&mut self, c: usize) {
        let now = self.now;
        // A new request, now and then.
        if self.clients[c].request.is_none() {
            if let Some(request) = self.workload.next_request(&mut self.rng, c) {
                self.clients[c].request = Some(Request {
                    bytes: request.bytes,
                    kind: request.kind,
                    sent_at: None,
                });
            }
        }
        // A request without its response for too long: the connection is given up, the same
        // bytes go out on a new one.
        let stale = self.clients[c]
            .request
            .as_ref()
            .and_then(|r| r.sent_at)
            .is_some_and(|at| now - at >= RETRY_AFTER_MS);
        if stale {
            self.trace(format!("retry {c}").as_bytes());
            self.report.retries += 1;
            self.drop_conn(c);
        }
        if self.clients[c].conn.is_none() {
            if self.clients[c].request.is_none() || now < self.clients[c].connect_after {
                return;
            }
            self.connect(c);
        }
        if !self.pump(c) {
            self.trace(format!("connection lost {c}").as_bytes());
            self.drop_conn(c);
            self.clients[c].connect_after = now + 50 + self.rng.below(200);
        }
    }

    /// Moves bytes between one client's socket and its TLS session, writes its request,
    /// takes its responses. False when the connection failed (reset, closed, TLS error).
    fn pump(&mut self, c: usize) -> bool {
        let client = &mut self.clients[c];
        let Some(conn) = client.conn.as_mut() else {
            return true;
        };
        let socket = self.sockets.get_mut::<stcp::Socket>(conn.handle);
        while socket.can_recv() {
            let tls = &mut conn.tls;
            let read = socket.recv(|data| {
                let n = tls.read_tls(&mut &data[..]).unwrap_or(0);
                (n, n)
            });
            if read.unwrap_or(0) == 0 {
                break;
            }
            if conn.tls.process_new_packets().is_err() {
                return false;
            }
        }
        let mut plain = Vec::new();
        let _ = conn.tls.reader().read_to_end(&mut plain);
        conn.received.extend_from_slice(&plain);
        let mut responses = Vec::new();
        while let Some((status, body, used)) = parse_response(&conn.received) {
            responses.push((status, body));
            conn.received.drain(..used);
        }
        if let Some(request) = client.request.as_mut() {
            if request.sent_at.is_none() && !conn.tls.is_handshaking() && socket.may_send() {
                if conn.tls.writer().write_all(&request.bytes).is_err() {
                    return false;
                }
                request.sent_at = Some(self.now);
            }
        }
        while conn.tls.wants_write() {
            if conn.tls.write_tls(&mut conn.out).is_err() {
                return false;
            }
        }
        if !conn.out.is_empty() && socket.can_send() {
            let sent = socket.send_slice(&conn.out).unwrap_or(0);
            conn.out.drain(..sent);
        }
        // Reset, or closed by the appliance (an idle or failed connection): a new one.
        use stcp::State;
        let alive = !matches!(
            socket.state(),
            State::Closed | State::Closing | State::CloseWait | State::LastAck | State::TimeWait
        ) || socket.can_recv();
        for (status, body) in responses {
            self.response(c, status, &body);
        }
        alive
    }

    fn connect(&mut self, c: usize) {
        let mut socket = stcp::Socket::new(
            stcp::SocketBuffer::new(vec![0; 65_535]),
            stcp::SocketBuffer::new(vec![0; 65_535]),
        );
        self.next_port = if self.next_port >= 60_000 {
            40_000
        } else {
            self.next_port + 1
        };
        if socket
            .connect(
                self.iface.context(),
                (IpAddress::Ipv4(SERVER_IP), self.setup.config.service.port),
                self.next_port,
            )
            .is_err()
        {
            return;
        }
        let name = rustls_pki_types::ServerName::IpAddress(IpAddr::V4(SERVER_IP).into());
        let Ok(tls) = rustls::ClientConnection::new(Arc::clone(&self.setup.client_tls), name)
        else {
            return;
        };
        let handle = self.sockets.add(socket);
        self.report.connections += 1;
        self.trace(format!("connect {c} {}", self.next_port).as_bytes());
        self.clients[c].conn = Some(ClientConn {
            handle,
            tls,
            out: Vec::new(),
            received: Vec::new(),
        });
        if let Some(request) = self.clients[c].request.as_mut() {
            request.sent_at = None;
        }
    }

    fn drop_conn(&mut self, c: usize) {
        if let Some(conn) = self.clients[c].conn.take() {
            self.sockets.get_mut::<stcp::Socket>(conn.handle).abort();
            // The reset goes out at the next poll; the socket's slot is freed now.
            self.iface.poll(
                smoltcp_now(self.instant()),
                &mut self.client_end,
                &mut self.sockets,
            );
            self.sockets.remove(conn.handle);
        }
        if let Some(request) = self.clients[c].request.as_mut() {
            request.sent_at = None;
        }
    }

    /// A response reached client `c`: the checker looks at it.
    fn response(&mut self, c: usize, status: u16, body: &[u8]) {
        self.trace(format!("response {c} {status}").as_bytes());
        let Some(request) = self.clients[c].request.as_mut() else {
            self.violation(format!("client {c}: a response to no request"));
            return;
        };
        if status == 503 {
            // Busy: the same bytes again, on the same connection, a little later.
            request.sent_at = None;
            return;
        }
        let kind = request.kind.clone();
        self.clients[c].request = None;
        self.report.replies += 1;
        for problem in self.workload.reply(c, &kind, status, body) {
            self.violation(problem);
        }
    }
}

/// Why the appliance did not start.
#[derive(Debug)]
enum StartError {
    /// Recovery refused the disk.
    Refused(ledger_svc::LedgerError),
    /// Something that must never fail did (the worker's construction).
    Broken(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Refused(e) => write!(f, "recovery refused: {e}"),
            StartError::Broken(why) => f.write_str(why),
        }
    }
}

/// What one ledger turn did.
#[derive(Debug, Default)]
struct LedgerTurn {
    /// Completions sent back to the worker.
    replies: usize,
    violations: Vec<String>,
    /// A fatal storage error: the process stops (as the ledger thread exits).
    fatal: Option<String>,
}

/// The ledger thread's work, in line: finish the sync in flight once its simulated time has
/// come (the `wal-sync` thread's), take the worker's submissions without blocking, run the
/// committer's steps on the simulated disk (write, sync, release, answer, deliver,
/// checkpoint), send the completions back. The one place the simulation drives the committer
/// core.
fn ledger_turn(
    server: &mut Appliance,
    now_ms: u64,
    ledger_ns: u64,
    rng: &mut SimRng,
    bug: Option<Bug>,
) -> LedgerTurn {
    let mut turn = LedgerTurn::default();
    let early_release = bug == Some(Bug::EarlyRelease) && cfg!(feature = "sim-bugs");
    // The sync in flight completes after its simulated time (the syncer thread's fdatasync).
    if let Some((done_at, job, upto)) = server.syncing.take() {
        if done_at > now_ms {
            server.syncing = Some((done_at, job, upto));
        } else {
            match server.ledger.sync_done(job.run()) {
                // With the bug the committer was told when the sync began.
                Ok(_) if early_release => {}
                Ok(_) => server.core.synced(upto),
                Err(error) => {
                    turn.fatal = Some(format!("sync {error}"));
                    return turn;
                }
            }
        }
    }
    while server.core.wants_write() {
        let Ok(s) = server.queues.writes.try_recv() else {
            break;
        };
        server.core.submit(s.reply_to, s.command);
    }
    while server.core.wants_read() {
        let Ok(s) = server.queues.reads.try_recv() else {
            break;
        };
        server.core.submit(s.reply_to, s.command);
    }
    loop {
        let status = LedgerStatus {
            next_expiry_ns: server.ledger.state().poll_at(),
            checkpoint_due: server.ledger.checkpoint_due(),
        };
        let Some(step) = server.core.poll(ledger_ns, &status) else {
            break;
        };
        match step {
            // ledger-svc's simulator's write: `Ledger::write`, or an injected bug's variant.
            Step::Write { now_ns, ops } => match ledger_svc::sim::write(&mut server.ledger, now_ns, &ops, bug) {
                Ok(replies) => {
                    let sequence = server.ledger.sequence();
                    server.core.written(sequence, replies);
                    server.written.written(&server.ledger);
                }
                Err(error) => {
                    turn.fatal = Some(format!("write {error}"));
                    break;
                }
            },
            Step::Sync { upto } => match server.ledger.begin_sync() {
                Ok(Some(job)) => {
                    server.written.sync_begun(&server.ledger);
                    // The fsync takes 0-7 ms on its own thread; the next requests form the
                    // next batch meanwhile (pipelined group commit).
                    server.syncing = Some((now_ms + rng.below(8), job, upto));
                    if early_release {
                        // The bug: replies go once the batch is written.
                        server.core.synced(upto);
                    }
                }
                // Nothing to sync (only with the skip-fsync bug): durable already.
                Ok(None) => server.core.synced(upto),
                Err(error) => {
                    turn.fatal = Some(format!("sync {error}"));
                    break;
                }
            },
            Step::Release { sequence, replies } => {
                // The checker: a batch's replies leave only when its WAL record is durable.
                turn.violations.extend(server.written.check_release(&server.ledger, sequence));
                for r in replies {
                    let reply = api::reply_of(&r.reply, server.ledger.state(), &r.op);
                    let _ = server.replies.send(Completion { reply_to: r.token, reply });
                    turn.replies += 1;
                }
            }
            Step::Answer(reads) => {
                let answers = reads.into_iter().map(|(reply_to, command)| (reply_to, api::answer(server.ledger.state(), &command))).collect();
                server.core.answered(answers);
            }
            Step::Deliver(answers) => {
                for (reply_to, reply) in answers {
                    let _ = server.replies.send(Completion { reply_to, reply });
                    turn.replies += 1;
                }
            }
            Step::BeginCheckpoint => {
                if let Err(error) = ledger_svc::sim::checkpoint(&mut server.ledger) {
                    turn.fatal = Some(format!("checkpoint {error}"));
                    break;
                }
            }
        }
    }
    turn
}

/// The run's configuration (the lab's, resumption off: see `crypto::client_config`), its
/// certificates in a temporary directory, and both TLS configurations.
fn setup(random: &crypto::SeededRandom, seed: u64) -> anyhow::Result<Setup> {
    use anyhow::Context;
    use std::os::unix::fs::OpenOptionsExt;
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let run = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "pantera-stack-sim-{}-{seed}-{run}",
        std::process::id()
    ));
    let tls_dir = dir.join("tls");
    std::fs::create_dir_all(&tls_dir).with_context(|| format!("create {}", tls_dir.display()))?;
    let mut config = Config::lab(&dir);
    config.tls.resumption_max_age_s = 0;
    // Both commit pipelines, by seed, as the ledger-path simulator: even seeds write the next
    // batch while one syncs (2), odd seeds sync each batch before the next (1).
    config.ledger.pipeline_depth = ledger_svc::sim::pipeline_depth(seed);
    let certs = crypto::certs(random, IpAddr::V4(SERVER_IP)).context("the run's certificates")?;
    let write = |name: &str, text: &str| -> anyhow::Result<()> {
        let path = tls_dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("create {}", path.display()))?;
        file.write_all(text.as_bytes())
            .with_context(|| format!("write {}", path.display()))
    };
    write("server.pem", &certs.server_pem)?;
    write("server.key", &certs.server_key_pem)?;
    write("ca.pem", &certs.ca_pem)?;
    let settings = config.tls_settings()?;
    let server = tls_term::server_tls_with_provider(&settings, crypto::provider(random))?;
    let roles = Arc::new(config.client_policy(server.trust.clone())?);
    let client_tls = crypto::client_config(crypto::provider(random), &certs)?;
    let mut stack_config = config.stack_config(SERVER_MAC);
    stack_config.connections_max = 32;
    stack_config.listen_sockets = 8;
    stack_config.random_seed = seed;
    stack_config.secret = u128::from(seed)
        .wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835)
        .to_le_bytes();
    Ok(Setup {
        config,
        server_tls: server.config,
        roles,
        stack_config,
        client_tls,
        dir,
    })
}

/// (status, body, bytes used) of the first complete response in `buf`.
fn parse_response(buf: &[u8]) -> Option<(u16, Vec<u8>, usize)> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let length: usize = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse().ok())
    })??;
    if buf.len() < end + length {
        return None;
    }
    Some((status, buf[end..end + length].to_vec(), end + length))
}

/// Totals over many runs, for the command line.
#[derive(Debug, Default)]
pub struct Totals {
    pub runs: u64,
    pub steps: u64,
    pub acknowledged: u64,
    pub connections: u64,
    pub recoveries: u64,
    pub refused: u64,
    pub unfinished: u64,
    pub faults: StackFaults,
    pub failed: Vec<u64>,
}

impl Totals {
    pub fn add(&mut self, r: &StackReport) {
        self.runs += 1;
        self.steps += r.steps;
        self.acknowledged += r.acknowledged;
        self.connections += r.connections;
        self.recoveries += r.recoveries;
        self.refused += u64::from(r.refused);
        self.unfinished += u64::from(!r.finished);
        self.faults.add(&r.faults);
        if !r.violations.is_empty() {
            self.failed.push(r.seed);
        }
    }
}
