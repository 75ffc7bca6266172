//! Test-only fault switches, compiled in only with the `fault-injection` feature.
//!
//! `PANTERA_FAULT` names the fault, read once:
//! - `worker-panic`: a worker panics on the first loop turn after it has accepted a TCP
//!   connection (so start-up and readiness are not affected, and a test triggers it by
//!   connecting);
//! - `ledger-panic`: the ledger thread panics when it drains its first submission.
//!
//! The tests use them to prove that a dead thread ends the whole process (health.rs).

use std::sync::OnceLock;

/// The environment variable that arms a fault.
pub const FAULT_ENV: &str = "PANTERA_FAULT";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    WorkerPanic,
    LedgerPanic,
}

/// The fault armed by `PANTERA_FAULT`, if any. An unknown name is a test's mistake: panic.
pub fn armed() -> Option<Fault> {
    static ARMED: OnceLock<Option<Fault>> = OnceLock::new();
    *ARMED.get_or_init(|| match std::env::var(FAULT_ENV).ok()?.as_str() {
        "" => None,
        "worker-panic" => Some(Fault::WorkerPanic),
        "ledger-panic" => Some(Fault::LedgerPanic),
        other => panic!("{FAULT_ENV}={other}: not a known fault (worker-panic, ledger-panic)"),
    })
}

/// Called by a worker on each loop turn with its accepted-connection count.
pub fn worker_turn(accepted: u64) {
    if accepted > 0 && armed() == Some(Fault::WorkerPanic) {
        panic!("injected fault: worker-panic ({FAULT_ENV})");
    }
}

/// Called by the ledger thread with each drained batch, before it is applied.
pub fn ledger_batch() {
    if armed() == Some(Fault::LedgerPanic) {
        panic!("injected fault: ledger-panic ({FAULT_ENV})");
    }
}
