//! The vault: what the process may still do once start-up is over (docs/security.md).
//!
//! Start-up runs with the privileges it needs (XDP attach, AF_XDP sockets and their UMEM, the
//! data directory, the keys, the management listener). Then, in this order:
//! 1. [`privileges`]: the process switches to `sandbox.user` when started as root, drops every
//!    capability, sets no_new_privs, is made not dumpable with RLIMIT_CORE 0, and confines the
//!    filesystem with Landlock (data and audit directories read-write; the directories of the
//!    configuration, certificate, key and CRL files read-only, for SIGHUP; `/proc/self`).
//!    The threads started afterwards inherit all of it.
//! 2. [`seccomp`]: each thread, first thing, installs the system-call allowlist of its
//!    [`Kind`]. A call outside it stops the process with a line naming the thread and call.

pub mod memlock;
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
    /// `wal-sync`: the WAL's fdatasync, on descriptors the ledger thread hands it.
    Syncer,
    /// `management` and `management-N`: /metrics, /healthz, /readyz.
    Management,
    /// `audit`: the audit log writer.
    Audit,
    /// `ledger` with `ledger.backend = "tigerbeetle"`: the backend thread and the I/O threads
    /// of its TigerBeetle client sessions, which inherit its filter (TCP to the replicas
    /// through io_uring).
    Cluster,
}

impl Kind {
    /// Every kind, in a fixed order (docs, tests).
    pub const ALL: [Kind; 8] = [Kind::Main, Kind::Worker, Kind::Ledger, Kind::Checkpoint, Kind::Syncer, Kind::Management, Kind::Audit, Kind::Cluster];

    /// The name used in configuration, logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Main => "main",
            Kind::Worker => "worker",
            Kind::Ledger => "ledger",
            Kind::Checkpoint => "checkpoint",
            Kind::Syncer => "syncer",
            Kind::Management => "management",
            Kind::Audit => "audit",
            Kind::Cluster => "cluster",
        }
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The first thing every thread the appliance starts does: installs its [`Kind`]'s
/// system-call allowlist ([`seccomp::confine`]). A thread that cannot be confined must not
/// run: the process stops (exit status 72, `seccomp::EXIT_SANDBOX`).
pub fn confine_thread(kind: Kind) {
    // A failure stops the process with the sandbox's exit status (seccomp::EXIT_SANDBOX).
    seccomp::enter(kind);
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

/// The user the process serves as: `sandbox.user` resolved, or the user it was started as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ServiceUser {
    pub uid: u32,
    pub gid: u32,
}

impl ServiceUser {
    /// Resolves `sandbox.user` (a name from the user database, or `uid:gid`); empty or the
    /// sandbox off: the effective user and group of this process.
    pub fn resolve(section: &SandboxSection) -> Result<ServiceUser, String> {
        let spec = section.user.trim();
        if !section.enabled || spec.is_empty() {
            // SAFETY: geteuid/getegid cannot fail and touch no memory.
            return Ok(unsafe { ServiceUser { uid: libc::geteuid(), gid: libc::getegid() } });
        }
        if let Some((uid, gid)) = spec.split_once(':') {
            let uid = uid.parse::<u32>().map_err(|_| format!("sandbox.user {spec:?}: the uid is not a number"))?;
            let gid = gid.parse::<u32>().map_err(|_| format!("sandbox.user {spec:?}: the gid is not a number"))?;
            return Ok(ServiceUser { uid, gid });
        }
        lookup_user(spec)?.ok_or_else(|| format!("sandbox.user {spec:?}: no such user"))
    }
}

/// The uid and primary gid of `name` in the user database. Remembered per name: once the
/// process is confined it cannot read the database again (Landlock), and a reload resolves the
/// same `sandbox.user` (restart-only) through the same call.
fn lookup_user(name: &str) -> Result<Option<ServiceUser>, String> {
    static KNOWN: std::sync::Mutex<Vec<(String, ServiceUser)>> = std::sync::Mutex::new(Vec::new());
    let mut known = KNOWN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some((_, user)) = known.iter().find(|(n, _)| n == name) {
        return Ok(Some(*user));
    }
    let found = read_user_database(name)?;
    if let Some(user) = found {
        known.push((name.to_owned(), user));
    }
    Ok(found)
}

fn read_user_database(name: &str) -> Result<Option<ServiceUser>, String> {
    let cname = std::ffi::CString::new(name).map_err(|_| format!("sandbox.user {name:?}: holds a NUL byte"))?;
    let mut buffer = vec![0u8; 16 * 1024];
    // SAFETY: an all-zero passwd is a valid value for getpwnam_r to fill.
    let mut entry: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; `buffer` outlives the use of `entry`.
    let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut entry, buffer.as_mut_ptr().cast(), buffer.len(), &mut found) };
    if rc != 0 {
        return Err(format!("sandbox.user {name:?}: cannot read the user database: {}", std::io::Error::from_raw_os_error(rc)));
    }
    Ok((!found.is_null()).then_some(ServiceUser { uid: entry.pw_uid, gid: entry.pw_gid }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_user_resolves() {
        let section = |user: &str| SandboxSection { enabled: true, user: user.to_owned() };
        assert_eq!(ServiceUser::resolve(&section("65534:65533")), Ok(ServiceUser { uid: 65534, gid: 65533 }));
        assert_eq!(ServiceUser::resolve(&section("root")), Ok(ServiceUser { uid: 0, gid: 0 }));
        assert!(ServiceUser::resolve(&section("no-such-user-pantera")).unwrap_err().contains("no such user"));
        assert!(ServiceUser::resolve(&section("x:1")).unwrap_err().contains("uid"));
        // SAFETY: no memory is touched.
        let me = unsafe { ServiceUser { uid: libc::geteuid(), gid: libc::getegid() } };
        assert_eq!(ServiceUser::resolve(&section("")), Ok(me));
    }
}
