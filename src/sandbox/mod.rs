//! The vault: what the process may still do once start-up is over (docs/security.md).
//!
//! Start-up runs with the privileges it needs (XDP attach, AF_XDP sockets and their UMEM, the
//! data directory, the keys, the management listener). Then, in this order:
//! 1. [`privileges`]: the process switches to `sandbox.user` when started as root, drops every
//!    capability, sets no_new_privs, is made not dumpable with RLIMIT_CORE 0, and confines the
//!    filesystem with Landlock (data directory read-write; certificate, key and CRL files
//!    read-only for SIGHUP). The threads started afterwards inherit all of it.
//! 2. [`seccomp`]: each thread, first thing, installs the system-call allowlist of its
//!    [`Kind`]. A call outside it stops the process with a line naming the thread and call.

pub mod privileges;
pub mod seccomp;

use serde::{Deserialize, Serialize};

/// The kinds of thread the appliance runs; each has its own system-call allowlist.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    /// The thread that started the process: signals, reload, the XDP counters, the stop.
    Main,
    /// `worker-qN`: one per queue, the packet path (AF_XDP, TCP, TLS, HTTP).
    Worker,
    /// `ledger`: group commit, the WAL.
    Ledger,
    /// `pantera-ckpt`: writes checkpoints into the data directory.
    Checkpoint,
    /// `management` and `management-N`: /metrics, /healthz, /readyz.
    Management,
    /// `audit`: the audit log writer.
    Audit,
}

impl Kind {
    /// Every kind, in a fixed order (docs, tests).
    pub const ALL: [Kind; 6] = [Kind::Main, Kind::Worker, Kind::Ledger, Kind::Checkpoint, Kind::Management, Kind::Audit];

    /// The name used in configuration, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Main => "main",
            Kind::Worker => "worker",
            Kind::Ledger => "ledger",
            Kind::Checkpoint => "checkpoint",
            Kind::Management => "management",
            Kind::Audit => "audit",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[sandbox]`: the confinement after start-up. Restart-only.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SandboxSection {
    /// Confine the process after start-up (the default). Off only to diagnose.
    #[serde(default = "default_enabled")]
    pub enabled: bool,
    /// When started as root: the user to run as after start-up, a name or `uid:gid`.
    /// Empty: keep the user the process was started as (capabilities are dropped all the same).
    #[serde(default)]
    pub user: String,
}

fn default_enabled() -> bool {
    true
}

impl Default for SandboxSection {
    fn default() -> Self {
        SandboxSection { enabled: true, user: String::new() }
    }
}
