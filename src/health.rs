//! Liveness: heartbeats from the long-lived threads, and the panic policy.
//!
//! Every worker and the ledger thread registers a [`Heartbeat`] and bumps it on each loop turn;
//! both loops turn at least every second even when idle (the worker's idle wait is at most
//! 100 ms, the ledger thread's select has a heartbeat tick). `/healthz` is healthy only while
//! every registered heartbeat is younger than [`HEARTBEAT_STALE_AFTER`]: a thread stuck in a
//! loop, a deadlock or a disk that never returns from fsync turns it to 503, naming the thread.
//!
//! A panic anywhere ends the process ([`install_panic_hook`]): a worker or ledger thread that
//! dies must not leave an appliance that still answers its probes. The heartbeat also notes a
//! thread that unwound (library tests, or a binary without the hook), so that case is unhealthy
//! too rather than invisible.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A registered thread whose last beat is older than this makes the process unhealthy.
/// Five times the longest gap between two beats of a healthy thread
/// ([`HEARTBEAT_INTERVAL_MAX`]), with room for a slow fsync.
pub const HEARTBEAT_STALE_AFTER: Duration = Duration::from_secs(5);

/// The longest a healthy, idle thread goes between two beats.
pub const HEARTBEAT_INTERVAL_MAX: Duration = Duration::from_secs(1);

/// Where heartbeats read the time: the process's monotonic clock in milliseconds, or a
/// manual clock that tests move by hand.
#[derive(Clone, Debug)]
pub enum Clock {
    Monotonic,
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock starting at `ms`.
    pub fn manual(ms: u64) -> Clock {
        Clock::Manual(Arc::new(AtomicU64::new(ms)))
    }

    pub fn now_ms(&self) -> u64 {
        match self {
            Clock::Monotonic => monotonic_ms(),
            Clock::Manual(ms) => ms.load(Ordering::Relaxed),
        }
    }

    /// Moves a manual clock forward; a no-op on the monotonic clock.
    pub fn advance(&self, by: Duration) {
        if let Clock::Manual(ms) = self {
            ms.fetch_add(by.as_millis() as u64, Ordering::Relaxed);
        }
    }
}

/// Milliseconds since the first call in this process (monotonic, never goes backwards).
fn monotonic_ms() -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed().as_millis() as u64
}

const STATE_LIVE: u8 = 0;
const STATE_PANICKED: u8 = 1;

/// One thread's heartbeat. Aligned to a cache line of its own: the owning thread writes it on
/// every loop turn, and no other thread's hot data should share that line.
#[derive(Debug)]
#[repr(align(64))]
struct Beat {
    name: String,
    last_ms: AtomicU64,
    state: AtomicU8,
}

#[derive(Debug)]
struct Inner {
    stale_after_ms: u64,
    clock: Clock,
    /// The registered heartbeats: one per live thread, plus those whose thread panicked.
    beats: Mutex<Vec<Arc<Beat>>>,
}

/// The registry of heartbeats, shared (cloned) by every thread that registers one and by the
/// management listener that reads them.
#[derive(Clone, Debug)]
pub struct Health {
    inner: Arc<Inner>,
}

/// Why the process is unhealthy, per thread.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trouble {
    /// No beat for `age_ms`.
    Stale { age_ms: u64 },
    /// The thread unwound from a panic.
    Panicked,
}

/// A thread that makes the process unhealthy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unhealthy {
    pub thread: String,
    pub trouble: Trouble,
}

impl std::fmt::Display for Unhealthy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.trouble {
            Trouble::Stale { age_ms } => write!(f, "{}: no heartbeat for {:.1} s", self.thread, age_ms as f64 / 1000.0),
            Trouble::Panicked => write!(f, "{}: panicked", self.thread),
        }
    }
}

impl Health {
    /// Heartbeats on the process's monotonic clock, stale after [`HEARTBEAT_STALE_AFTER`].
    pub fn new() -> Health {
        Health::with_clock(HEARTBEAT_STALE_AFTER, Clock::Monotonic)
    }

    pub fn with_clock(stale_after: Duration, clock: Clock) -> Health {
        assert!(stale_after > Duration::ZERO, "a zero threshold makes every thread stale");
        Health { inner: Arc::new(Inner { stale_after_ms: stale_after.as_millis() as u64, clock, beats: Mutex::new(Vec::new()) }) }
    }

    /// Registers the calling thread's heartbeat under `name`, beaten once now. Dropping the
    /// handle unregisters it (a thread that stops cleanly is not stale), unless the thread is
    /// unwinding from a panic: then it stays registered, marked panicked.
    pub fn register(&self, name: impl Into<String>) -> Heartbeat {
        let beat = Arc::new(Beat { name: name.into(), last_ms: AtomicU64::new(self.inner.clock.now_ms()), state: AtomicU8::new(STATE_LIVE) });
        self.beats().push(Arc::clone(&beat));
        Heartbeat { beat, health: self.clone() }
    }

    fn beats(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Beat>>> {
        // A panic while holding this lock leaves the Vec consistent (push, retain).
        self.inner.beats.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every registered thread's name and heartbeat age in milliseconds, now.
    pub fn ages_ms(&self) -> Vec<(String, u64)> {
        let now = self.inner.clock.now_ms();
        self.beats().iter().map(|b| (b.name.clone(), now.saturating_sub(b.last_ms.load(Ordering::Relaxed)))).collect()
    }

    /// Ok while every registered heartbeat is fresh and no registered thread panicked; else
    /// every thread that is not.
    pub fn check(&self) -> Result<(), Vec<Unhealthy>> {
        let now = self.inner.clock.now_ms();
        let troubles: Vec<Unhealthy> = self
            .beats()
            .iter()
            .filter_map(|b| {
                let age_ms = now.saturating_sub(b.last_ms.load(Ordering::Relaxed));
                let trouble = if b.state.load(Ordering::Relaxed) == STATE_PANICKED {
                    Trouble::Panicked
                } else if age_ms > self.inner.stale_after_ms {
                    Trouble::Stale { age_ms }
                } else {
                    return None;
                };
                Some(Unhealthy { thread: b.name.clone(), trouble })
            })
            .collect();
        if troubles.is_empty() {
            Ok(())
        } else {
            Err(troubles)
        }
    }

    pub fn stale_after(&self) -> Duration {
        Duration::from_millis(self.inner.stale_after_ms)
    }
}

impl Default for Health {
    fn default() -> Health {
        Health::new()
    }
}

/// A thread's end of its heartbeat: [`Heartbeat::beat`] on every loop turn.
#[derive(Debug)]
pub struct Heartbeat {
    beat: Arc<Beat>,
    health: Health,
}

impl Heartbeat {
    /// Records that the thread is alive now: one clock read and one relaxed store.
    #[inline]
    pub fn beat(&self) {
        self.beat.last_ms.store(self.health.inner.clock.now_ms(), Ordering::Relaxed);
    }

    pub fn name(&self) -> &str {
        &self.beat.name
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.beat.state.store(STATE_PANICKED, Ordering::Relaxed);
        } else {
            self.health.beats().retain(|b| !Arc::ptr_eq(b, &self.beat));
        }
    }
}

/// Makes a panic on any thread end the process: logs the thread's name, the message and the
/// location (and a backtrace when RUST_BACKTRACE asks for one), then aborts (SIGABRT, so the
/// exit is never 0). Release builds are also compiled with `panic = "abort"`; the hook gives
/// debug builds, which the tests run, the same behaviour, and gives both a log line. Without
/// it a dead worker or ledger thread would leave a process that still answers its probes
/// while its queue or its ledger is gone. Installed first thing in `main`.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("<unnamed>");
        let payload = info.payload();
        let message = payload
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("<non-string panic payload>");
        let location = info.location().map(|l| l.to_string()).unwrap_or_else(|| "<unknown location>".to_owned());
        let backtrace = std::backtrace::Backtrace::capture();
        let backtrace = match backtrace.status() {
            std::backtrace::BacktraceStatus::Captured => format!("\n{backtrace}"),
            _ => String::new(),
        };
        let line = format!("FATAL: thread '{name}' panicked at {location}: {message}; aborting the process{backtrace}");
        if log::log_enabled!(log::Level::Error) {
            log::error!("{line}");
        } else {
            eprintln!("{line}");
        }
        std::process::abort();
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_that_stops_turns_health_stale_and_names_the_thread() {
        let clock = Clock::manual(1_000);
        let health = Health::with_clock(Duration::from_secs(5), clock.clone());
        let worker = health.register("worker-q0");
        let ledger = health.register("ledger");
        assert_eq!(health.check(), Ok(()));
        // Both beat for a while; then the ledger stops.
        for _ in 0..10 {
            clock.advance(Duration::from_secs(1));
            worker.beat();
            ledger.beat();
        }
        assert_eq!(health.check(), Ok(()));
        for _ in 0..5 {
            clock.advance(Duration::from_secs(1));
            worker.beat();
        }
        // Exactly at the threshold: still fresh.
        assert_eq!(health.check(), Ok(()));
        clock.advance(Duration::from_millis(1));
        worker.beat();
        let troubles = health.check().expect_err("the ledger stopped beating");
        assert_eq!(troubles, vec![Unhealthy { thread: "ledger".to_owned(), trouble: Trouble::Stale { age_ms: 5_001 } }]);
        assert_eq!(troubles[0].to_string(), "ledger: no heartbeat for 5.0 s");
        // It beats again: healthy again.
        ledger.beat();
        assert_eq!(health.check(), Ok(()));
        let ages = health.ages_ms();
        assert_eq!(ages, vec![("worker-q0".to_owned(), 0), ("ledger".to_owned(), 0)]);
    }

    #[test]
    fn a_clean_stop_unregisters_and_a_panic_stays_unhealthy() {
        let clock = Clock::manual(0);
        let health = Health::with_clock(Duration::from_secs(5), clock.clone());
        drop(health.register("worker-q0"));
        clock.advance(Duration::from_secs(60));
        assert_eq!(health.check(), Ok(()), "a thread that stopped cleanly is not stale");
        assert!(health.ages_ms().is_empty());

        let h = health.clone();
        let died = std::thread::spawn(move || {
            let heartbeat = h.register("ledger");
            heartbeat.beat();
            panic!("injected");
        })
        .join();
        assert!(died.is_err());
        let troubles = health.check().expect_err("the ledger thread panicked");
        assert_eq!(troubles, vec![Unhealthy { thread: "ledger".to_owned(), trouble: Trouble::Panicked }]);
    }

    #[test]
    fn the_monotonic_clock_does_not_go_backwards() {
        let health = Health::new();
        let a = Clock::Monotonic.now_ms();
        let heartbeat = health.register("t");
        heartbeat.beat();
        assert!(Clock::Monotonic.now_ms() >= a);
        assert_eq!(health.check(), Ok(()));
        assert_eq!(heartbeat.name(), "t");
    }
}
