//! `pantera serve`: start-up in dependency order, the privilege drop, the threads, and an
//! orderly stop.
//!
//! Order (docs/security.md, "Privileges after start-up"): everything that needs a privilege
//! runs first, in the main thread: configuration (validated) -> data directory opened and
//! locked -> management listener bound -> TLS material -> ledger recovered (a corrupt WAL
//! refuses the start before the network is touched) -> audit file opened -> a leftover XDP
//! program detached -> AF_XDP sockets on every queue (UMEM mapped) -> XDP program attached
//! and sockets registered. Then the drop (`sandbox::privileges::drop`: user, capabilities,
//! no_new_privs, not dumpable, RLIMIT_CORE 0, Landlock), and only then the threads, which
//! inherit it: management, ledger (and its checkpoint writer), audit writer, workers. Each
//! confines itself with its system-call allowlist first thing; the main thread confines
//! itself once they run -> ready (and `READY=1` to systemd). Stop on SIGTERM/SIGINT
//! (`shutdown`): not ready at once, a grace period of normal service, then the workers drain
//! their connections (every request read is answered), bounded by the hard stop; the XDP
//! program is detached (dropping the bpf_link), the ledger commits what was submitted and
//! stops; the management listener stays up until then.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::committer;
use crate::config::{App, Config};
use crate::metrics::{self, Metrics};
use crate::notify::Notifier;
use crate::reload::{self, Reloader};
use crate::shutdown::{self, Phase, Shutdown, Stopped};
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
/// How long a stop waits for the audit writer to write and sync its last records when the hard
/// stop deadline is already near or past.
const AUDIT_FLUSH_MAX: Duration = Duration::from_secs(2);

/// One AF_XDP socket (and its UMEM) per queue.
fn open_ports(interface: &str, queues: &[u32], xsk_config: &dataplane::XskConfig) -> Result<Vec<dataplane::XskPort>> {
    let mut ports = Vec::with_capacity(queues.len());
    for &q in queues {
        let port = dataplane::XskPort::open(interface, q, xsk_config)
            .with_context(|| format!("cannot open an AF_XDP socket on {interface} queue {q}"))?;
        ports.push(port);
    }
    Ok(ports)
}

/// Loads the XDP program. The bpf_link of a process killed a moment ago is released by the
/// kernel asynchronously; until then the interface reports it as held by a live link. Waits
/// for it, bounded.
fn load_steering(steer_config: &dataplane::SteerConfig) -> Result<dataplane::LoadedSteering> {
    let busy_deadline = Instant::now() + LINK_BUSY_WAIT_MAX;
    loop {
        match dataplane::Steering::load(steer_config) {
            Err(dataplane::DataplaneError::Busy { .. }) if Instant::now() < busy_deadline => {
                log::info!("{} still holds another XDP link; retrying", steer_config.ifname);
                thread::sleep(Duration::from_millis(50));
            }
            result => return result.with_context(|| format!("cannot load the XDP program for {}", steer_config.ifname)),
        }
    }
}

/// Runs the appliance until a stop signal. `source` reads the configuration again, as it was
/// read for `config`, when SIGHUP asks for a reload; `config_file` is the file it reads (None
/// with `--lab`), kept readable by the sandbox. Returns how the stop ended: `HardStop` when
/// `shutdown.timeout_ms` passed with work left (the binary exits with
/// [`shutdown::EXIT_HARD_STOP`]).
pub fn serve(config: &Config, lab_home: Option<&Path>, source: reload::Source<'_>, config_file: Option<&Path>) -> Result<Stopped> {
    let started = Instant::now();
    let mut clock = crate::startup::StartClock::new(started);
    // Before anything holding a key is allocated: from here every page is locked when touched.
    if config.tls.lock_memory {
        crate::sandbox::memlock::lock_all()?;
    }
    clock.mark("mlockall");
    let app = config.app()?;
    // The SIGSYS handler before any thread or filter exists (docs/security.md).
    crate::sandbox::seccomp::enable(config.sandbox.enabled).context("cannot prepare the sandbox")?;
    // The data directory before anything else: a missing, unformatted or foreign one (or one
    // others could read) refuses the start with a message, before the network is touched.
    // (The TigerBeetle backend has none: the cluster keeps the books.)
    let storage = if app == App::Ledger { committer::open_storage(config, lab_home)? } else { None };
    clock.mark("data directory");
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(signal, Arc::clone(&stop)).context("cannot install signal handlers")?;
    }
    // Installed first: a SIGHUP during start-up must not end the process (its default);
    // the reload runs once the appliance is ready.
    let hup = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGHUP, Arc::clone(&hup)).context("cannot install signal handlers")?;
    // The phase the workers follow; the stop signal above only starts it.
    let shutdown = Shutdown::new();
    let mut notifier = Notifier::from_env();
    let metrics = Metrics::new();
    let mut reloader = Reloader::new(source, config.clone(), &metrics)?;
    // Bound now (a privileged port needs it), served once the privileges are dropped.
    let management_listener = metrics::bind_management(config.management.listen)?;
    clock.mark("signals and management bind");
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
    clock.mark("interface");

    // The ledger first: if its WAL is corrupt, refuse to start before touching the network.
    let mut recovered = None;
    let mut tls_parts = None;
    // The TLS configuration and client CAs and CRLs loaded at start, for the CRL metrics and
    // the sessions kept across CRL changes.
    let mut started_tls = None;
    let mut crl_trust = None;
    if app == App::Ledger {
        if let Some(home) = lab_home {
            ensure_lab_certificates(home, config)?;
        }
        // The same deep check as `check-config` (the TLS files, the key against the
        // certificate, the chain), before anything is attached; its warnings go to the log.
        for warning in crate::check::deep(config, crate::check::DataDir::Skip, std::time::SystemTime::now())? {
            log::warn!("{warning}");
        }
        // The user the drop switches to can use the data directory and the TLS files.
        crate::check::service_user(config)?;
        clock.mark("deep check");
        let tls_settings = config.tls_settings()?;
        let server_tls = tls_term::server_tls(&tls_settings).context("tls")?;
        crl_trust = server_tls.trust.clone();
        started_tls = Some(Arc::clone(&server_tls.config));
        let tls = server_tls.config;
        // The certificates loaded above: a failure here is a metric missing, not a refusal.
        if let Err(e) = crate::metric_families::record_cert_expiry(&metrics, &tls_settings) {
            log::warn!("cannot read the certificate expiry for the metrics: {e:#}");
        }
        clock.mark("TLS load");
        recovered = Some(committer::prepare(config, storage, queues.len(), &metrics)?);
        clock.mark("ledger recovery");
        tls_parts = Some((tls, config.connection_limits(), Arc::new(config.client_policy(crl_trust.clone())?)));
    }
    // The audit log of the writes, once there is a ledger to write to: a file that cannot be
    // opened refuses the start. Its writer stops after the workers (its handles live in them).
    let audit_file = match &recovered {
        Some(_) if config.audit.enabled => Some(crate::audit::open_from_config(config, &metrics)?),
        _ => None,
    };
    clock.mark("audit open");

    // The dataplane: a leftover program from a killed run goes first.
    if dataplane::detach_leftover(&d.interface)? {
        log::warn!("removed an XDP program left on {} by an earlier run", d.interface);
    }
    clock.mark("XDP leftover check");
    let xsk_config = config.xsk_config();
    let steer_config = dataplane::SteerConfig {
        ifname: d.interface.clone(),
        service_ipv4: config.service.address,
        service_port: config.service.port,
        mode: config.xdp_mode()?,
        edge: config.edge_config()?,
    };
    // The program is loaded (verified) first, then the two slow kernel steps of a start run
    // at once, being independent until the socket is put in the program's map: the link (14 ms
    // in the kernel on the lab's veth) on a second thread, the UMEM registration (the kernel
    // pins every page of it) on this one. The load stays out of the
    // overlap: it allocates, and the registration holds the address space while it pins. The
    // thread is joined, and gone from /proc/self/task, before the privilege drop, which
    // requires a single thread (docs/PERFORMANCE.md, "Start-to-ready").
    let loaded = load_steering(&steer_config)?;
    clock.mark("XDP load");
    let (ports, steering) = thread::scope(|scope| {
        let (running_tx, running_rx) = std::sync::mpsc::sync_channel::<()>(1);
        let attach = thread::Builder::new()
            .name("xdp-attach".to_owned())
            .spawn_scoped(scope, move || {
                // The thread's own start maps memory (its signal stack, its malloc arena): done
                // by now, so the registration below does not hold it up.
                let _ = running_tx.send(());
                loaded.attach().with_context(|| format!("cannot attach the XDP program to {}", d.interface))
            })
            .context("cannot start the XDP attach thread")?;
        let _ = running_rx.recv();
        let ports = open_ports(&d.interface, &queues, &xsk_config);
        let steering = attach.join().map_err(|_| anyhow::anyhow!("the XDP attach thread panicked"))?;
        anyhow::Ok((ports, steering))
    })?;
    // A failed socket after a good attach drops the steering here, which detaches the program.
    let (ports, mut steering) = (ports?, steering?);
    clock.mark("UMEM and XDP link");
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
    // The first read of the XDP counters, before the drop: libbpf learns the number of
    // possible CPUs (for the per-CPU map) from /sys once, which the sandbox does not keep.
    crate::metric_families::sync_xdp(&metrics, &steering.counters());
    clock.mark("XSK register and XDP counters");

    // Everything privileged is done: drop it before any other thread exists, so that every
    // thread started below inherits the drop (capabilities and Landlock are per thread).
    crate::sandbox::privileges::drop(config, config_file, &metrics).context("cannot drop the start-up privileges (sandbox)")?;
    clock.mark("privilege drop");

    // The threads. The management listener answers through the whole drain (/readyz 503):
    // its own stop flag.
    let management_stop = Arc::new(AtomicBool::new(false));
    let management =
        metrics::spawn_management_on(management_listener, metrics.clone(), Arc::clone(&management_stop), metrics::ManagementLimits::default())?;
    let mut ledger_thread = None;
    let mut ledger_parts = None;
    if let (Some(recovered), Some((tls, limits, roles))) = (recovered, tls_parts) {
        let committer::Started { client, replies: reply_rx, thread } = recovered.spawn()?;
        ledger_thread = Some(thread);
        ledger_parts = Some((tls, limits, roles, client, reply_rx));
    }
    let (audit, audit_writer) = match audit_file {
        Some(opened) => {
            let (audit, writer) = opened.spawn().context("cannot start the audit log writer")?;
            (Some(audit), Some(writer))
        }
        None => (None, None),
    };

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
                audit: audit.as_ref().map(|a| a.for_queue(&port.queue_id().to_string())),
            })),
        };
        let shutdown = shutdown.clone();
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
        let watch = reloader.watch();
        workers.push(thread::Builder::new().name(format!("worker-q{label}")).spawn(move || {
            crate::sandbox::confine_thread(crate::sandbox::Kind::Worker);
            // Every line this thread logs names its queue.
            let _span = tracing::info_span!("worker", queue = %label).entered();
            match Worker::new(index, label, port, &stack_config, app, m, busy_poll_turns) {
                Ok(mut worker) => {
                    worker.watch_reloads(watch);
                    let _ = started_tx.send(Ok(()));
                    worker.run(&shutdown);
                }
                Err(e) => {
                    let _ = started_tx.send(Err(e.to_string()));
                }
            }
        })?);
    }
    // Only the workers hold the ledger client now: when they stop, the ledger thread drains.
    drop(ledger_parts);
    drop(audit);
    clock.mark("threads spawned");
    // Only the workers hold senders now: one that dies before it reports ends the wait.
    drop(worker_started_tx);
    for _ in 0..workers.len() {
        match worker_started_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                shutdown.advance_to(Phase::Stop);
                bail!("a worker failed to start: {e}");
            }
            Err(_) => bail!("a worker died while starting"),
        }
    }
    clock.mark("workers started");
    // Every thread runs confined: now the main thread's own allowlist.
    crate::sandbox::confine_thread(crate::sandbox::Kind::Main);
    clock.mark("main thread confined");
    clock.publish(&metrics);
    metrics.ready.set(1);
    log::info!("{}", clock.summary());
    let serving = format!("serving {}:{} on {} queue(s)", config.service.address, config.service.port, queues.len());
    notifier.ready(&serving);

    // Watchdog pings only while every thread's heartbeat is fresh; the XDP counters.
    let tick = |notifier: &mut Notifier, steering: &dataplane::Steering| {
        notifier.watchdog(Instant::now(), metrics.health.check().is_ok());
        // The "suppressed N similar lines" summaries of the rate-limited warnings.
        crate::logging::flush_suppressed();
        crate::metric_families::sync_xdp(&metrics, &steering.counters());
    };
    reloader.started_with(started_tls, crl_trust.as_deref());
    let crl_interval = |c: &Config| Duration::from_millis(c.tls.crl_reload_interval_ms);
    let mut crl_watch = crate::crl::CrlWatch::new(reloader.running().crl_paths(), crl_interval(reloader.running()), Instant::now());
    while !stop.load(Ordering::Relaxed) {
        thread::sleep(Duration::from_millis(100));
        if hup.swap(false, Ordering::Relaxed) {
            #[cfg(feature = "fault-injection")]
            crate::fault::sandbox_point(crate::sandbox::Kind::Main);
            // RELOADING=1 before and READY=1 after, applied or refused (Type=notify-reload).
            notifier.reloading();
            let applied = reloader.reload(|edge| steering.configure_edge(edge));
            notifier.ready(&format!("{serving}; {}", if applied { "configuration reloaded" } else { "reload refused, running configuration kept" }));
            crl_watch.rebase(reloader.running().crl_paths());
        }
        let running = reloader.running();
        if running.app().ok() == Some(App::Ledger) && crl_watch.poll(running.crl_paths(), crl_interval(running), Instant::now()) {
            reloader.refresh_tls();
        }
        tick(&mut notifier, &steering);
    }
    let signalled = Instant::now();
    // As reloaded last (SIGHUP), like every reloadable setting.
    let settings = reloader.running().shutdown;
    let deadline = signalled + settings.timeout();
    let mut stopped = shutdown::drain_workers(&settings, &shutdown, &stop, &metrics, &mut notifier, workers, signalled, |n| tick(n, &steering));
    // Every audit record is written and synced before the stop completes: the workers that
    // held the writer's channel are gone, so it drains and ends. Bounded like the rest.
    if let Some(writer) = audit_writer {
        if !writer.join_until(deadline.max(Instant::now() + AUDIT_FLUSH_MAX)) {
            log::error!("hard stop: the audit log writer was still writing; exiting without it");
            stopped = Stopped::HardStop;
        }
    }
    // Detach the program and clear the map: the host gets its queues back.
    drop(steering);
    // The workers held the only ledger clients: the ledger thread now commits what was
    // submitted, finishes its checkpoint and stops. Bounded by the hard stop too: past it the
    // process exits and the next start recovers from the WAL (nothing acknowledged is lost).
    if let Some(t) = ledger_thread {
        if !shutdown::join_until(t, deadline) {
            log::error!("hard stop: the ledger thread was still finishing at shutdown.timeout_ms; exiting without its clean stop (the next start replays the WAL)");
            stopped = Stopped::HardStop;
        }
    }
    management_stop.store(true, Ordering::Relaxed);
    let _ = management.join();
    match stopped {
        Stopped::Clean => log::info!("stopped cleanly in {:?}", signalled.elapsed()),
        Stopped::HardStop => log::error!("stopped by the hard stop after {:?}", signalled.elapsed()),
    }
    Ok(stopped)
}

/// Eight bytes from the kernel's CSPRNG.
fn os_random_u64() -> std::io::Result<u64> {
    os_random().map(u64::from_ne_bytes)
}

/// `N` bytes from the kernel's CSPRNG: getrandom(2), which needs no file (the sandbox keeps
/// no /dev/urandom).
fn os_random<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut bytes = [0u8; N];
    let mut filled = 0;
    while filled < N {
        // SAFETY: the pointer and length describe the unfilled rest of `bytes`.
        let n = unsafe { libc::getrandom(bytes[filled..].as_mut_ptr().cast(), N - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(bytes)
}
