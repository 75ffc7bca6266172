//! systemd's notification protocol (`sd_notify`), without a crate: one datagram per message
//! to the Unix socket named by `$NOTIFY_SOCKET` (docs/operations.md "Running under systemd").
//!
//! - `READY=1` once every worker runs and the ledger has recovered (`Type=notify`);
//! - `STOPPING=1` when a stop signal arrives (the drain begins);
//! - `RELOADING=1` with `MONOTONIC_USEC=` when a reload begins, and `READY=1` when it is done
//!   (`Type=notify-reload`);
//! - `WATCHDOG=1` every `$WATCHDOG_USEC / 2` while every thread's heartbeat is fresh
//!   (`WatchdogSec=`): a worker or the ledger thread that stops turning stops the pings, and
//!   systemd restarts the service;
//! - `STATUS=...`, one line for `systemctl status`.
//!
//! Without `$NOTIFY_SOCKET` (not under systemd) every call is a no-op. A failed send is
//! logged once and never stops the appliance: the service manager's view is advisory.

use std::io;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::{Duration, Instant};

/// Sends the notifications; see the module documentation.
#[derive(Debug)]
pub struct Notifier {
    target: Option<Target>,
    /// Half of `$WATCHDOG_USEC`, when the watchdog is on for this process.
    watchdog_every: Option<Duration>,
    watchdog_last: Option<Instant>,
    /// A send already failed and was logged: later failures are not.
    failed_logged: bool,
}

#[derive(Debug)]
struct Target {
    socket: UnixDatagram,
    address: SocketAddr,
    /// As given in the environment, for the log.
    name: String,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` (the watchdog is for this
    /// process only when `$WATCHDOG_PID` is unset or names it).
    pub fn from_env() -> Notifier {
        let socket = std::env::var("NOTIFY_SOCKET").ok();
        let watchdog_usec = std::env::var("WATCHDOG_USEC").ok();
        let watchdog_pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::new(
            socket.as_deref(),
            watchdog_usec.as_deref(),
            watchdog_pid.as_deref(),
            std::process::id(),
        )
    }

    /// A notifier that sends nothing.
    pub fn disabled() -> Notifier {
        Notifier {
            target: None,
            watchdog_every: None,
            watchdog_last: None,
            failed_logged: false,
        }
    }

    /// As [`Notifier::from_env`], from explicit values (for tests). A value that cannot be
    /// used is logged and ignored.
    pub fn new(
        socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        pid: u32,
    ) -> Notifier {
        let mut notifier = Notifier::disabled();
        let Some(name) = socket.filter(|s| !s.is_empty()) else {
            return notifier;
        };
        match connect(name) {
            Ok((socket, address)) => {
                notifier.target = Some(Target {
                    socket,
                    address,
                    name: name.to_owned(),
                })
            }
            Err(e) => {
                log::warn!("NOTIFY_SOCKET={name:?}: {e}; systemd notifications are off");
                return notifier;
            }
        }
        let for_us = watchdog_pid.is_none_or(|p| p.trim().parse::<u32>().ok() == Some(pid));
        match watchdog_usec.map(|u| u.trim().parse::<u64>()) {
            Some(Ok(usec)) if usec > 0 && for_us => {
                notifier.watchdog_every = Some(Duration::from_micros(usec / 2))
            }
            Some(Ok(_)) | None => {}
            Some(Err(e)) => log::warn!(
                "WATCHDOG_USEC={:?}: {e}; the watchdog pings are off",
                watchdog_usec.unwrap_or_default()
            ),
        }
        notifier
    }

    /// True when `$NOTIFY_SOCKET` named a usable socket.
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// The watchdog interval asked by the service manager, halved (`WATCHDOG=1` is sent this
    /// often).
    pub fn watchdog_every(&self) -> Option<Duration> {
        self.watchdog_every
    }

    /// `READY=1` with a status line: start-up (or a reload) is complete.
    pub fn ready(&mut self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `STOPPING=1`: the stop (grace period, then drain) has begun.
    pub fn stopping(&mut self) {
        self.send("STOPPING=1\nSTATUS=stopping: draining");
    }

    /// `RELOADING=1` and `MONOTONIC_USEC=` (required by `Type=notify-reload`): a reload has
    /// begun; call [`Notifier::ready`] when it is done, whether it applied or was refused.
    pub fn reloading(&mut self) {
        self.send(&format!(
            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
            monotonic_usec()
        ));
    }

    /// `STATUS=...` for `systemctl status`.
    pub fn status(&mut self, status: &str) {
        self.send(&format!("STATUS={}", one_line(status)));
    }

    /// Sends `WATCHDOG=1` if the interval has passed since the last ping and `healthy` (every
    /// thread's heartbeat is fresh). Call it often (every 100 ms or so); an unhealthy
    /// process sends nothing, so the service manager's watchdog fires.
    pub fn watchdog(&mut self, now: Instant, healthy: bool) {
        let Some(every) = self.watchdog_every else {
            return;
        };
        if !healthy
            || self
                .watchdog_last
                .is_some_and(|last| now.saturating_duration_since(last) < every)
        {
            return;
        }
        self.watchdog_last = Some(now);
        self.send("WATCHDOG=1");
    }

    fn send(&mut self, message: &str) {
        let Some(target) = &self.target else { return };
        if let Err(e) = target
            .socket
            .send_to_addr(message.as_bytes(), &target.address)
        {
            if !self.failed_logged {
                self.failed_logged = true;
                log::warn!("cannot notify the service manager on {:?}: {e} (further failures are not logged)", target.name);
            }
        }
    }
}

/// An unbound datagram socket and the address of `$NOTIFY_SOCKET`: a path, or an abstract
/// name when it starts with '@'.
fn connect(name: &str) -> io::Result<(UnixDatagram, SocketAddr)> {
    let address = match name.strip_prefix('@') {
        Some(abstract_name) => {
            use std::os::linux::net::SocketAddrExt;
            SocketAddr::from_abstract_name(abstract_name.as_bytes())?
        }
        None if name.starts_with('/') => SocketAddr::from_pathname(name)?,
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "neither an absolute path nor an abstract name ('@...')",
            ))
        }
    };
    Ok((UnixDatagram::unbound()?, address))
}

/// A status line is one line: newlines would start new assignments.
fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

/// CLOCK_MONOTONIC in microseconds, the clock `MONOTONIC_USEC=` is read against.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A socket standing in for systemd's, bound by the test.
    struct Manager {
        socket: UnixDatagram,
        _dir: tempfile::TempDir,
        path: String,
    }

    impl Manager {
        fn new() -> Manager {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("notify").display().to_string();
            let socket = UnixDatagram::bind(&path).expect("bind");
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .expect("timeout");
            Manager {
                socket,
                _dir: dir,
                path,
            }
        }

        fn recv(&self) -> String {
            let mut buf = [0u8; 4096];
            let n = self.socket.recv(&mut buf).expect("a notification");
            String::from_utf8(buf[..n].to_vec()).expect("utf-8")
        }

        fn nothing_waiting(&self) -> bool {
            self.socket.set_nonblocking(true).expect("nonblocking");
            let mut buf = [0u8; 4096];
            let empty = self.socket.recv(&mut buf).is_err();
            self.socket.set_nonblocking(false).expect("blocking");
            empty
        }
    }

    #[test]
    fn sends_ready_stopping_reloading_and_status_to_the_socket() {
        let manager = Manager::new();
        let mut n = Notifier::new(Some(&manager.path), None, None, 1);
        assert!(n.is_enabled());
        n.ready("serving on 2 queues");
        assert_eq!(manager.recv(), "READY=1\nSTATUS=serving on 2 queues");
        n.status("two\nlines");
        assert_eq!(
            manager.recv(),
            "STATUS=two lines",
            "a status stays one assignment"
        );
        n.reloading();
        let reloading = manager.recv();
        let usec: u64 = reloading
            .strip_prefix("RELOADING=1\nMONOTONIC_USEC=")
            .and_then(|rest| rest.strip_suffix("\nSTATUS=reloading"))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{reloading:?}"));
        assert!(usec > 0);
        n.stopping();
        assert_eq!(manager.recv(), "STOPPING=1\nSTATUS=stopping: draining");
    }

    #[test]
    fn an_abstract_socket_is_reached_by_its_at_name() {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("pantera-notify-test-{}", std::process::id());
        let address = SocketAddr::from_abstract_name(name.as_bytes()).expect("name");
        let socket = UnixDatagram::bind_addr(&address).expect("bind abstract");
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        Notifier::new(Some(&format!("@{name}")), None, None, 1).ready("up");
        let mut buf = [0u8; 64];
        let n = socket.recv(&mut buf).expect("a notification");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=up");
    }

    #[test]
    fn watchdog_pings_every_half_interval_and_only_while_healthy() {
        let manager = Manager::new();
        let mut n = Notifier::new(Some(&manager.path), Some("2000000"), None, 1);
        assert_eq!(n.watchdog_every(), Some(Duration::from_secs(1)));
        let t0 = Instant::now();
        n.watchdog(t0, true);
        assert_eq!(manager.recv(), "WATCHDOG=1");
        n.watchdog(t0 + Duration::from_millis(500), true);
        assert!(manager.nothing_waiting(), "not before half the interval");
        n.watchdog(t0 + Duration::from_millis(1_000), false);
        assert!(manager.nothing_waiting(), "a stuck thread stops the pings");
        n.watchdog(t0 + Duration::from_millis(1_100), true);
        assert_eq!(manager.recv(), "WATCHDOG=1");
    }

    #[test]
    fn the_watchdog_of_another_pid_or_no_socket_sends_nothing_and_bad_values_are_not_fatal() {
        let manager = Manager::new();
        let n = Notifier::new(Some(&manager.path), Some("2000000"), Some("999"), 1);
        assert_eq!(
            n.watchdog_every(),
            None,
            "WATCHDOG_PID names another process"
        );
        let n = Notifier::new(Some(&manager.path), Some("soon"), None, 1);
        assert_eq!(n.watchdog_every(), None);
        assert!(
            n.is_enabled(),
            "a bad WATCHDOG_USEC does not turn notifications off"
        );
        let mut n = Notifier::new(None, Some("2000000"), None, 1);
        assert!(!n.is_enabled());
        n.ready("up");
        n.watchdog(Instant::now(), true);
        let mut n = Notifier::new(Some("relative/path"), None, None, 1);
        assert!(!n.is_enabled());
        n.stopping();
    }

    #[test]
    fn a_socket_that_went_away_is_not_fatal() {
        let manager = Manager::new();
        let mut n = Notifier::new(Some(&manager.path), None, None, 1);
        let path = manager.path.clone();
        drop(manager);
        assert!(!std::path::Path::new(&path).exists());
        n.ready("up");
        n.stopping();
        assert!(n.failed_logged, "the failure was noted once");
    }
}
