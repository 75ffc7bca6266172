//! Test-only fault switches, compiled in only with the `fault-injection` feature.
//!
//! `PANTERA_FAULT` names the fault, read once:
//! - `worker-panic`: a worker panics on the first loop turn after it has accepted a TCP
//!   connection (so start-up and readiness are not affected, and a test triggers it by
//!   connecting);
//! - `ledger-panic`: the ledger thread panics when it drains its first submission;
//! - `forbidden-syscall:<kind>:<execve|open>`: a thread of that kind (src/sandbox, `Kind`)
//!   calls `execve("/bin/true")` or opens `/etc/passwd` (outside the data directory) at a
//!   defined moment: a worker after its first accepted connection, the ledger on its first
//!   batch, the checkpoint writer on its first checkpoint job, a management thread on a request
//!   to /metrics, the audit writer on its first record, the main thread on SIGHUP. The sandbox
//!   must stop the process (docs/security.md);
//! - `seccomp-measure`: every thread installs its seccomp filter with "allow" as the default
//!   action, so `strace` shows where each thread confines itself and what it calls afterwards
//!   without anything being stopped (how the allowlists are measured, docs/security.md).
//!
//! The tests use them to prove that a dead thread ends the whole process (health.rs) and that
//! the sandbox holds from every kind of thread.

use std::sync::OnceLock;

use crate::sandbox::Kind;

/// The environment variable that arms a fault.
pub const FAULT_ENV: &str = "PANTERA_FAULT";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    WorkerPanic,
    LedgerPanic,
    ForbiddenSyscall(Kind, Forbidden),
    SeccompMeasure,
}

/// What `forbidden-syscall` makes a thread try.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forbidden {
    /// `execve("/bin/true")`: no kind may execute anything.
    Execve,
    /// Opening `/etc/passwd` for reading: outside every path the sandbox lets a thread open.
    Open,
}

/// The fault armed by `PANTERA_FAULT`, if any. An unknown name is a test's mistake: panic.
pub fn armed() -> Option<Fault> {
    static ARMED: OnceLock<Option<Fault>> = OnceLock::new();
    *ARMED.get_or_init(|| {
        let value = std::env::var(FAULT_ENV).ok()?;
        match parse(&value) {
            Ok(fault) => fault,
            Err(()) => panic!(
                "{FAULT_ENV}={value}: not a known fault (worker-panic, ledger-panic, forbidden-syscall:<kind>:<execve|open>, seccomp-measure)"
            ),
        }
    })
}

fn parse(value: &str) -> Result<Option<Fault>, ()> {
    Ok(Some(match value {
        "" => return Ok(None),
        "worker-panic" => Fault::WorkerPanic,
        "ledger-panic" => Fault::LedgerPanic,
        "seccomp-measure" => Fault::SeccompMeasure,
        other => {
            let rest = other.strip_prefix("forbidden-syscall:").ok_or(())?;
            let (kind, call) = rest.split_once(':').ok_or(())?;
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.as_str() == kind)
                .ok_or(())?;
            let call = match call {
                "execve" => Forbidden::Execve,
                "open" => Forbidden::Open,
                _ => return Err(()),
            };
            Fault::ForbiddenSyscall(kind, call)
        }
    }))
}

/// Called by a worker on each loop turn with its accepted-connection count.
pub fn worker_turn(accepted: u64) {
    if accepted > 0 {
        if armed() == Some(Fault::WorkerPanic) {
            panic!("injected fault: worker-panic ({FAULT_ENV})");
        }
        sandbox_point(Kind::Worker);
    }
}

/// Called by the ledger thread with each drained batch, before it is applied.
pub fn ledger_batch() {
    if armed() == Some(Fault::LedgerPanic) {
        panic!("injected fault: ledger-panic ({FAULT_ENV})");
    }
    sandbox_point(Kind::Ledger);
}

/// Called by a thread of `kind` at its defined moment (see the module's documentation): with
/// `forbidden-syscall:<kind>:...` armed, makes the forbidden call. A call the sandbox lets
/// through is logged and the thread goes on, so the test that armed it sees the hole.
pub fn sandbox_point(kind: Kind) {
    let Some(Fault::ForbiddenSyscall(armed_kind, call)) = armed() else {
        return;
    };
    // Once: a moment that recurs (every /metrics request, every batch) tries it only once.
    static TRIED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if armed_kind != kind || TRIED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    let thread = std::thread::current();
    let name = thread.name().unwrap_or("?");
    match call {
        Forbidden::Execve => {
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            // SAFETY: NUL-terminated strings and arrays. With the sandbox on, the filter stops
            // the process here; without it this process becomes /bin/true, which a test notices.
            unsafe { libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr()) };
            log::error!("injected fault: thread {name:?} ({kind}): execve(/bin/true) failed: {}", std::io::Error::last_os_error());
        }
        Forbidden::Open => match std::fs::File::open("/etc/passwd") {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                // Landlock refused it: the same stop as a seccomp violation.
                log::error!(
                    "FATAL: sandbox: thread {name:?} ({kind}) open of /etc/passwd refused ({e}); stopping"
                );
                std::process::exit(crate::sandbox::seccomp::EXIT_SANDBOX);
            }
            Err(e) => log::error!("injected fault: thread {name:?} ({kind}): open of /etc/passwd failed otherwise: {e}"),
            Ok(_) => log::error!("injected fault: thread {name:?} ({kind}): open of /etc/passwd SUCCEEDED: the sandbox let it through"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse() {
        assert_eq!(parse(""), Ok(None));
        assert_eq!(parse("ledger-panic"), Ok(Some(Fault::LedgerPanic)));
        assert_eq!(parse("seccomp-measure"), Ok(Some(Fault::SeccompMeasure)));
        assert_eq!(
            parse("forbidden-syscall:checkpoint:open"),
            Ok(Some(Fault::ForbiddenSyscall(
                Kind::Checkpoint,
                Forbidden::Open
            )))
        );
        assert_eq!(
            parse("forbidden-syscall:main:execve"),
            Ok(Some(Fault::ForbiddenSyscall(Kind::Main, Forbidden::Execve)))
        );
        assert_eq!(parse("forbidden-syscall:nobody:execve"), Err(()));
        assert_eq!(parse("forbidden-syscall:worker:fork"), Err(()));
        assert_eq!(parse("forbidden-syscall:worker"), Err(()));
        assert_eq!(parse("worker-pani"), Err(()));
    }
}
