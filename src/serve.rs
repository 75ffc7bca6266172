//! `pantera serve`: start-up in dependency order, the threads, and an orderly stop.
//!
//! Order: configuration (validated) -> TLS material -> ledger recovery -> AF_XDP sockets on
//! every queue -> XDP program attached and sockets registered -> workers -> ready. Stop on
//! SIGTERM/SIGINT: workers close their connections, the XDP program is detached (dropping the
//! bpf_link), the ledger drains what was submitted and stops.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::committer;
use crate::config::{App, Config};
use crate::metrics::{self, Metrics};
use crate::worker::{AppConfig, LedgerApp, Worker};

/// Creates the lab's dev certificates under `home/tls` when they are missing (`--lab`).
pub fn ensure_lab_certificates(home: &Path, config: &Config) -> Result<()> {
    let tls_dir = home.join("tls");
    tls_term::certs::init(&tls_dir, std::net::IpAddr::V4(config.service.address), false)
        .with_context(|| format!("cannot create the lab certificates in {}", tls_dir.display()))?;
    Ok(())
}

/// How long start-up waits for an XDP link left by a process killed a moment ago.
const LINK_BUSY_WAIT_MAX: Duration = Duration::from_secs(5);

/// Runs the appliance until a stop signal. Returns after a clean stop.
pub fn serve(config: &Config, lab_home: Option<&Path>) -> Result<()> {
    let started = Instant::now();
    let app = config.app()?;
    // The data directory before anything else: a missing, unformatted or foreign one (or one
    // others could read) refuses the start with a message, before the network is touched.
    let storage = if app == App::Ledger { Some(committer::open_data_dir(config, lab_home)?) } else { None };
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("cannot install signal handlers")?;
    }
    let metrics = Metrics::new();
    let management = metrics::spawn_management(config.management.listen, metrics.clone(), Arc::clone(&stop))?;
    let d = &config.dataplane;

    // The queues: as configured, or every rx queue of the interface (a queue without a socket
    // would lose its flows silently).
    let queues: Vec<u32> = if d.queues.is_empty() {
        let n = dataplane::interface_queues(&d.interface).with_context(|| format!("dataplane.interface {:?}", d.interface))?;
        (0..n).collect()
    } else {
        d.queues.clone()
    };
    let mac = dataplane::interface_mac(&d.interface).with_context(|| format!("dataplane.interface {:?}", d.interface))?;
    let stack_config = config.stack_config(mac);

    // The ledger first: if its WAL is corrupt, refuse to start before touching the network.
    let mut ledger_thread = None;
    let mut ledger_parts = None;
    if let Some(storage) = storage {
        if let Some(home) = lab_home {
            ensure_lab_certificates(home, config)?;
        }
        let tls_settings = config.tls_settings()?;
        let tls = tls_term::server_config(&tls_settings).context("tls")?;
        // The certificates loaded above: a failure here is a metric missing, not a refusal.
        if let Err(e) = crate::metric_families::record_cert_expiry(&metrics, &tls_settings) {
            log::warn!("cannot read the certificate expiry for the metrics: {e:#}");
        }
        let committer::Started { client, replies: reply_rx, thread } = committer::start(config, storage, queues.len(), &metrics)?;
        ledger_thread = Some(thread);
        ledger_parts = Some((tls, config.connection_limits(), Arc::new(config.roles()), client, reply_rx));
    }

    // The dataplane: a leftover program from a killed run goes first.
    if dataplane::detach_leftover(&d.interface)? {
        log::warn!("removed an XDP program left on {} by an earlier run", d.interface);
    }
    let xsk_config = config.xsk_config();
    let mut ports = Vec::with_capacity(queues.len());
    for &q in &queues {
        let port = dataplane::XskPort::open(&d.interface, q, &xsk_config)
            .with_context(|| format!("cannot open an AF_XDP socket on {} queue {q}", d.interface))?;
        ports.push(port);
    }
    let steer_config = dataplane::SteerConfig {
        ifname: d.interface.clone(),
        service_ipv4: config.service.address,
        service_port: config.service.port,
        mode: config.xdp_mode()?,
        edge: config.edge_config()?,
    };
    // The bpf_link of a process killed a moment ago is released by the kernel asynchronously;
    // until then the interface reports it as held by a live link. Wait for it, bounded.
    let busy_deadline = Instant::now() + LINK_BUSY_WAIT_MAX;
    let mut steering = loop {
        match dataplane::Steering::attach(&steer_config) {
            Err(dataplane::DataplaneError::Busy { .. }) if Instant::now() < busy_deadline => {
                log::info!("{} still holds another XDP link; retrying", d.interface);
                thread::sleep(Duration::from_millis(50));
            }
            result => break result.with_context(|| format!("cannot attach the XDP program to {}", d.interface))?,
        }
    };
    for port in &ports {
        steering.register(port.queue_id(), port)?;
    }
    log::info!(
        "XDP program attached to {} ({:?} mode); serving {}:{} on queue(s) {:?}",
        d.interface,
        steering.mode(),
        config.service.address,
        config.service.port,
        queues
    );

    let mut workers = Vec::with_capacity(ports.len());
    let (worker_started_tx, worker_started_rx) = crossbeam_channel::bounded::<Result<(), String>>(ports.len());
    for (index, port) in ports.into_iter().enumerate() {
        let app = match &ledger_parts {
            None => AppConfig::Echo,
            Some((tls, limits, roles, client, reply_rx)) => AppConfig::Ledger(Box::new(LedgerApp {
                tls: Arc::clone(tls),
                limits: *limits,
                roles: Arc::clone(roles),
                budget: config.queue_budget(),
                handshakes: config.handshake_limits(),
                ledger: client.clone(),
                completions: reply_rx[index].clone(),
            })),
        };
        let stop = Arc::clone(&stop);
        let m = metrics.clone();
        let mut stack_config = stack_config.clone();
        // Fresh secrets from the OS per queue and per start: the key of the RFC 6528 ISNs and
        // the SYN cookies, and smoltcp's PRNG seed (ephemeral ports). Nothing is shared
        // between queues or starts (seed 0 once gave every start the same ISNs).
        stack_config.random_seed = os_random_u64().context("cannot read randomness for the TCP stack's seed")?;
        stack_config.secret = os_random().context("cannot read randomness for the TCP stack's secret")?;
        let busy_poll_turns = d.busy_poll_turns;
        let started_tx = worker_started_tx.clone();
        let label = port.queue_id().to_string();
        workers.push(thread::Builder::new().name(format!("worker-q{label}")).spawn(move || {
            match Worker::new(index, label, port, &stack_config, app, m, busy_poll_turns) {
                Ok(mut worker) => {
                    let _ = started_tx.send(Ok(()));
                    worker.run(&stop);
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e.to_string()));
                }
            }
        })?);
    }
    // Only the workers hold the ledger client now: when they stop, the ledger thread drains.
    drop(ledger_parts);
    for _ in 0..workers.len() {
        match worker_started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                stop.store(true, Ordering::Relaxed);
                bail!("a worker failed to start: {e}");
            }
            Err(_) => bail!("a worker died while starting"),
        }
    }
    metrics.ready.set(1);
    log::info!("ready in {:?}", started.elapsed());

    while !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(100));
        crate::metric_families::sync_xdp(&metrics, &steering.counters());
    }
    log::info!("stopping");
    metrics.ready.set(0);
    for w in workers {
        let _ = w.join();
    }
    // Detach the program and clear the map: the host gets its queues back.
    drop(steering);
    if let Some(t) = ledger_thread {
        let _ = t.join();
    }
    let _ = management.join();
    log::info!("stopped cleanly");
    Ok(())
}

/// Eight bytes from the kernel's CSPRNG.
fn os_random_u64() -> std::io::Result<u64> {
    os_random().map(u64::from_ne_bytes)
}

/// `N` bytes from the kernel's CSPRNG.
fn os_random<const N: usize>() -> std::io::Result<[u8; N]> {
    use std::io::Read;
    let mut bytes = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes)
}
