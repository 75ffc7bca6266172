//! Dropping what start-up needed: user, capabilities, no_new_privs, dumpability, Landlock.
//!
//! [`drop`] runs once, in the main thread, after every privileged step of start-up and before
//! any other thread exists (docs/security.md, "Privileges after start-up"). Capabilities,
//! no_new_privs and the Landlock domain belong to a thread and are inherited by the threads it
//! starts afterwards; the user switch is applied to every thread by glibc, but there are no
//! others yet, and [`drop`] refuses to run if there are.
//!
//! What still reaches the kernel afterwards needs no capability: operations on file
//! descriptors start-up opened (the AF_XDP sockets, the bpf maps and link, the management
//! listener, the data directory's files), files in the directories Landlock keeps, and
//! `/proc/self`.

use std::io;
use std::path::{Path, PathBuf};

use landlock::{
    Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetCreated, RulesetCreatedAttr,
    RulesetStatus, Scope, ABI,
};
use prometheus::IntGauge;

use super::ServiceUser;
use crate::config::Config;
use crate::metrics::Metrics;

/// The newest Landlock ABI whose rights this process hands to the kernel. ABI 9 adds the
/// right to connect to pathname Unix sockets, which would cut the systemd notification
/// socket (`$NOTIFY_SOCKET`, src/notify.rs) unless it were listed; the ABIs up to 8 leave
/// Unix sockets alone. Older kernels get the subset they know (best effort).
const LANDLOCK_ABI: ABI = ABI::V8;

/// The filesystem the process keeps once start-up is over (Landlock).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Paths {
    /// Directories the process creates, renames, writes and removes files in: the data
    /// directory (WAL segments, checkpoints) and the audit log's directory (rotation).
    pub read_write: Vec<PathBuf>,
    /// Directories (or files) it only reads: where the configuration and the TLS files live
    /// (a SIGHUP reload reads them again), and `/proc/<pid>` (the process metrics).
    pub read_only: Vec<PathBuf>,
    /// TCP ports the process may connect to: the TigerBeetle replicas' with
    /// `ledger.backend = "tigerbeetle"` (Landlock's network rules name ports, not addresses),
    /// none otherwise.
    pub connect_ports: Vec<u16>,
}

/// The files a SIGHUP reload reads again: the configuration file (when there is one) and the
/// TLS files. Files the TLS configuration adds (CRLs) belong here too.
pub fn reload_files(config: &Config, config_file: Option<&Path>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = config_file.map(Path::to_path_buf).into_iter().collect();
    files.push(config.tls.cert_chain.clone());
    files.push(config.tls.private_key.clone());
    files.extend(config.tls.client_ca.clone());
    // Re-read on SIGHUP and by the CRL timer (src/crl.rs).
    files.extend(config.crl_paths().iter().cloned());
    files
}

/// What Landlock keeps for `config`. A reload file is kept through its directory, not its
/// inode: certificates are renewed by writing a new file and renaming it over the old one, and
/// a rule on the old inode would refuse the new file. When the path is a symbolic link (a
/// certificate manager's `live/` directory), the directory of its target is kept too.
/// The echo application (dataplane tests) uses no data directory, audit log or TLS file:
/// only the configuration file's directory is kept then.
pub fn paths(config: &Config, config_file: Option<&Path>) -> Paths {
    let ledger = config
        .app()
        .is_ok_and(|app| app == crate::config::App::Ledger);
    let data_dir = config.ledger.data_dir.clone();
    let mut read_write = Vec::new();
    if ledger {
        // The TigerBeetle backend opens no data directory: `ledger.data_dir` is then at most
        // the audit log's default home, and may not exist (`serve --lab --tigerbeetle`), so
        // only the audit log's directory is kept for it.
        let embedded = !matches!(config.backend(), Ok(crate::config::Backend::TigerBeetle));
        if embedded && !data_dir.as_os_str().is_empty() {
            read_write.push(data_dir.clone());
        }
        if config.audit.enabled {
            read_write.push(parent_dir(&config.audit.path_for(&data_dir)));
        }
    }
    let files = if ledger {
        reload_files(config, config_file)
    } else {
        config_file.map(Path::to_path_buf).into_iter().collect()
    };
    let mut read_only = Vec::new();
    for file in files {
        read_only.push(parent_dir(&file));
        if let Ok(target) = std::fs::canonicalize(&file) {
            read_only.push(parent_dir(&target));
        }
    }
    // `/proc/self` is a link to `/proc/<pid>`; a rule is on what a path resolves to.
    read_only.push(PathBuf::from(format!("/proc/{}", std::process::id())));
    dedup(&mut read_write);
    dedup(&mut read_only);
    read_only.retain(|p| !read_write.contains(p));
    let mut connect_ports: Vec<u16> = match config.backend() {
        Ok(crate::config::Backend::TigerBeetle) if ledger => config
            .ledger
            .tigerbeetle
            .as_ref()
            .and_then(|t| crate::config::parse_tb_addresses(&t.addresses).ok())
            .map(|addresses| addresses.iter().map(std::net::SocketAddr::port).collect())
            .unwrap_or_default(),
        _ => Vec::new(),
    };
    connect_ports.sort_unstable();
    connect_ports.dedup();
    Paths {
        read_write,
        read_only,
        connect_ports,
    }
}

/// The directory `file` is in (`.` for a bare name).
fn parent_dir(file: &Path) -> PathBuf {
    match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn dedup(paths: &mut Vec<PathBuf>) {
    let mut seen = Vec::with_capacity(paths.len());
    paths.retain(|p| {
        let new = !seen.contains(p);
        if new {
            seen.push(p.clone());
        }
        new
    });
}

/// Why the drop refused the start.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error("the privilege drop must run before any other thread starts; {0} threads are running")]
    Threads(usize),
    #[error("{step}: {source}")]
    Step {
        step: &'static str,
        source: io::Error,
    },
    #[error("Landlock: {0}")]
    Landlock(String),
    #[error("the sandbox metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

fn step(step: &'static str) -> impl FnOnce(io::Error) -> DropError {
    move |source| DropError::Step { step, source }
}

/// What [`drop`] achieved, for the log and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The Landlock ABI enforced; 0: the kernel has no Landlock (the filesystem is not
    /// confined).
    pub landlock_abi: i32,
    /// The user the process runs as from now on.
    pub user: ServiceUser,
}

/// The sandbox gauges: whether the drop ran and the Landlock ABI it enforced.
#[derive(Clone, Debug)]
pub struct SandboxMetrics {
    enabled: IntGauge,
    landlock_abi: IntGauge,
}

impl SandboxMetrics {
    /// Registers the gauges (the registry adds the `pantera_` prefix).
    pub fn register(metrics: &Metrics) -> prometheus::Result<SandboxMetrics> {
        let enabled = IntGauge::new(
            "sandbox_enabled",
            "1 when the process dropped its privileges after start-up (sandbox.enabled), 0 when it runs unconfined.",
        )?;
        let landlock_abi = IntGauge::new(
            "sandbox_landlock_abi",
            "The Landlock ABI confining the filesystem; 0: not confined (no Landlock in the kernel, or the sandbox off).",
        )?;
        metrics.registry.register(Box::new(enabled.clone()))?;
        metrics.registry.register(Box::new(landlock_abi.clone()))?;
        Ok(SandboxMetrics {
            enabled,
            landlock_abi,
        })
    }
}

/// Single pages kept locked for the session-ticket keys of configurations a reload builds
/// after the drop (one per configuration still in use by a connection).
const SECRET_PAGES_RESERVED: usize = 16;

/// Drops everything start-up needed, or skips it with a warning when `sandbox.enabled` is
/// false. Runs in the main thread with no other thread started (checked). Every step is
/// checked: an error refuses the start. See the module documentation.
pub fn drop(
    config: &Config,
    config_file: Option<&Path>,
    metrics: &Metrics,
) -> Result<Option<Dropped>, DropError> {
    let gauges = SandboxMetrics::register(metrics)?;
    if !config.sandbox.enabled {
        log::warn!(
            "sandbox.enabled = false: the process keeps the user, capabilities and filesystem it was started with (a diagnostic setting, never for production)"
        );
        return Ok(None);
    }
    let threads = single_thread().map_err(step("counting the threads in /proc/self/task"))?;
    if threads != 1 {
        return Err(DropError::Threads(threads));
    }
    let target = ServiceUser::resolve(&config.sandbox).map_err(|e| DropError::Step {
        step: "sandbox.user",
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    let paths = paths(config, config_file);
    // The ruleset's paths are opened now, with the start-up user's rights: the service user
    // may not be able to walk to them itself, and needs only the opened descriptors.
    let ruleset = landlock_ruleset(&paths)?;
    // SAFETY: geteuid and getegid cannot fail and touch no memory.
    let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let switch = !config.sandbox.user.trim().is_empty() && (target.uid, target.gid) != (euid, egid);
    if switch && euid != 0 {
        // Only root may switch; a service manager that started the process as another user
        // than the configured one is a mistake to report, not to run with.
        return Err(DropError::Step {
            step: "sandbox.user",
            source: io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{:?} is uid {} gid {}, but the process runs as uid {euid} gid {egid} and only root can switch (leave sandbox.user empty when the service manager sets the user)",
                    config.sandbox.user.trim(),
                    target.uid,
                    target.gid
                ),
            ),
        });
    }
    // Locked memory for the secrets of later reloads (a key file and its DER form, and
    // session-ticket key pages), while it can still be locked whatever RLIMIT_MEMLOCK says.
    let key_region = tls_term::KEY_FILE_BYTES_MAX + 4096;
    let mut reserved = vec![key_region, key_region];
    reserved.extend([4096; SECRET_PAGES_RESERVED]);
    tls_term::reserve_locked_memory(&reserved).map_err(step("locking memory for the secrets of reloads"))?;
    // Without CAP_IPC_LOCK, memory locked from now on counts against RLIMIT_MEMLOCK: where it
    // could not be raised, stop locking future mappings (memlock.rs) before the drop.
    crate::sandbox::memlock::before_privilege_drop().map_err(|e| DropError::Step {
        step: "mlockall before the drop",
        source: io::Error::other(format!("{e:#}")),
    })?;
    // The bounding set needs CAP_SETPCAP, which the user switch takes away.
    drop_bounding_set()?;
    if switch {
        switch_user(target)?;
    }
    drop_capabilities()?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(step("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    // Not dumpable: no core file, no ptrace attach by the same user, /proc/PID owned by root.
    // After the user switch, which resets it.
    prctl(libc::PR_SET_DUMPABLE, 0).map_err(step("prctl(PR_SET_DUMPABLE)"))?;
    let no_core = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid rlimit is passed by reference.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &no_core) } != 0 {
        return Err(step("setrlimit(RLIMIT_CORE, 0)")(io::Error::last_os_error()));
    }
    let landlock_abi = restrict_filesystem(ruleset)?;
    gauges.enabled.set(1);
    gauges.landlock_abi.set(i64::from(landlock_abi));
    log::info!(
        "sandbox: running as uid {} gid {} with no capabilities, no_new_privs, not dumpable; Landlock ABI {landlock_abi}: read-write {:?}, read-only {:?}, TCP connect to ports {:?}",
        target.uid,
        target.gid,
        paths.read_write,
        paths.read_only,
        paths.connect_ports
    );
    Ok(Some(Dropped {
        landlock_abi,
        user: target,
    }))
}

/// The threads of this process.
fn thread_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/task")?.count())
}

/// How long the drop waits for threads already joined to leave /proc/self/task.
const REAP_WAIT_MAX: std::time::Duration = std::time::Duration::from_millis(100);

/// The number of threads, once it is 1 or [`REAP_WAIT_MAX`] has passed. Start-up joins its
/// helper thread (the XDP attach) just before the drop; a joined thread has finished, but the
/// kernel removes its task a moment after the join returns.
fn single_thread() -> io::Result<usize> {
    let deadline = std::time::Instant::now() + REAP_WAIT_MAX;
    loop {
        let threads = thread_count()?;
        if threads == 1 || std::time::Instant::now() >= deadline {
            return Ok(threads);
        }
        std::thread::sleep(std::time::Duration::from_micros(100));
    }
}

/// Supplementary groups to `user.gid` only, then the real, effective and saved gid and uid
/// (glibc applies each to every thread of the process).
fn switch_user(user: ServiceUser) -> Result<(), DropError> {
    let groups = [user.gid as libc::gid_t];
    // SAFETY: `groups` is valid for one entry.
    if unsafe { libc::setgroups(1, groups.as_ptr()) } != 0 {
        return Err(step("setgroups to the service user's group")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: plain system calls without memory arguments.
    if unsafe { libc::setresgid(user.gid, user.gid, user.gid) } != 0 {
        return Err(step("setresgid to sandbox.user's group")(
            io::Error::last_os_error(),
        ));
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(user.uid, user.uid, user.uid) } != 0 {
        return Err(step("setresuid to sandbox.user")(io::Error::last_os_error()));
    }
    Ok(())
}

/// Empties the capability bounding set, so that nothing this process or a child executes can
/// regain a capability. Needs CAP_SETPCAP: a process started without it (a service manager's
/// ambient capabilities) keeps the bounding set it was given; no_new_privs and an empty
/// permitted set already make that set unusable.
fn drop_bounding_set() -> Result<(), DropError> {
    if !has_effective(CAP_SETPCAP)? {
        log::info!("sandbox: no CAP_SETPCAP, the capability bounding set stays as the service manager set it");
        return Ok(());
    }
    for cap in 0..64 {
        // SAFETY: prctl with integer arguments.
        let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            let e = io::Error::last_os_error();
            // Past the kernel's last capability.
            if e.raw_os_error() == Some(libc::EINVAL) {
                return Ok(());
            }
            return Err(step("prctl(PR_CAPBSET_DROP)")(e));
        }
    }
    Ok(())
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;
/// linux/capability.h
const CAP_SETPCAP: u32 = 8;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's capability sets (64 bits in two words).
fn capget() -> io::Result<[CapData; 2]> {
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: a version 3 header and two data words, as the kernel expects.
    if unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

fn has_effective(cap: u32) -> Result<bool, DropError> {
    let data = capget().map_err(step("capget"))?;
    Ok(data[(cap / 32) as usize].effective & (1 << (cap % 32)) != 0)
}

/// Clears every capability the thread still has: the ambient set, then the effective,
/// permitted and inheritable sets. Checked afterwards with capget.
fn drop_capabilities() -> Result<(), DropError> {
    // SAFETY: prctl with integer arguments.
    if unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    } != 0
    {
        return Err(step("prctl(PR_CAP_AMBIENT_CLEAR_ALL)")(
            io::Error::last_os_error(),
        ));
    }
    let mut header = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let data = [CapData::default(); 2];
    // SAFETY: a version 3 header and two data words, as the kernel expects.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } != 0 {
        return Err(step("capset (clearing every capability)")(
            io::Error::last_os_error(),
        ));
    }
    let left = capget().map_err(step("capget"))?;
    if left
        .iter()
        .any(|d| d.effective != 0 || d.permitted != 0 || d.inheritable != 0)
    {
        return Err(step("capset")(io::Error::other(
            "capabilities remain after clearing them",
        )));
    }
    Ok(())
}

fn prctl(option: libc::c_int, value: libc::c_ulong) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(option, value, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The Landlock ruleset for `paths`, its rules' paths opened now. Every filesystem right of
/// [`LANDLOCK_ABI`] is handled (denied unless a rule grants it), TCP bind and connect are
/// handled with no rule for bind (the only listening socket, the management listener, is bound
/// already) and a connect rule only for the TigerBeetle replicas' ports (`connect_ports`), and
/// abstract Unix sockets and signals are scoped to the process.
fn landlock_ruleset(paths: &Paths) -> Result<RulesetCreated, DropError> {
    let e = |e: landlock::RulesetError| DropError::Landlock(e.to_string());
    let all = AccessFs::from_all(LANDLOCK_ABI);
    let read = AccessFs::from_read(LANDLOCK_ABI);
    let mut ruleset = Ruleset::default()
        .handle_access(all)
        .map_err(e)?
        .handle_access(AccessNet::BindTcp | AccessNet::ConnectTcp)
        .map_err(e)?
        .scope(Scope::AbstractUnixSocket | Scope::Signal)
        .map_err(e)?
        .create()
        .map_err(e)?;
    for (list, access) in [(&paths.read_write, all), (&paths.read_only, read)] {
        for path in list {
            let fd = landlock::PathFd::new(path).map_err(|source| {
                DropError::Landlock(format!(
                    "cannot open {} for its rule: {source}",
                    path.display()
                ))
            })?;
            ruleset = ruleset
                .add_rule(landlock::PathBeneath::new(fd, access))
                .map_err(e)?;
        }
    }
    for &port in &paths.connect_ports {
        ruleset = ruleset.add_rule(landlock::NetPort::new(port, AccessNet::ConnectTcp)).map_err(e)?;
    }
    Ok(ruleset)
}

/// Enforces `ruleset` on the calling thread (and so on every thread started later). Returns
/// the ABI enforced, 0 when the kernel has no Landlock (logged as a warning).
fn restrict_filesystem(ruleset: RulesetCreated) -> Result<i32, DropError> {
    let status = ruleset
        .restrict_self()
        .map_err(|e| DropError::Landlock(e.to_string()))?;
    let abi = kernel_abi();
    match status.ruleset {
        RulesetStatus::FullyEnforced | RulesetStatus::PartiallyEnforced => {
            Ok(abi.clamp(1, LANDLOCK_ABI as i32))
        }
        RulesetStatus::NotEnforced => {
            log::warn!(
                "sandbox: this kernel has no Landlock (or it is disabled): the filesystem is NOT confined after start-up (pantera_sandbox_landlock_abi 0)"
            );
            Ok(0)
        }
    }
}

/// The Landlock ABI of the running kernel; 0 without Landlock.
fn kernel_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: the documented way to ask for the ABI version: no ruleset, size 0.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    i32::try_from(rc).unwrap_or(0).max(0)
}

/// Applies the Landlock part of the sandbox alone, for tests: the calling thread (and what it
/// starts) keeps only `paths`. Returns the ABI enforced (0: no Landlock).
pub fn confine_filesystem(paths: &Paths) -> Result<i32, DropError> {
    let ruleset = landlock_ruleset(paths)?;
    prctl(libc::PR_SET_NO_NEW_PRIVS, 1).map_err(step("prctl(PR_SET_NO_NEW_PRIVS)"))?;
    restrict_filesystem(ruleset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn with_the_tigerbeetle_backend_landlock_keeps_the_audit_directory_but_no_data_directory() {
        if !cfg!(feature = "tigerbeetle") {
            // Without the feature the backend is refused at validation; nothing to confine.
            return;
        }
        let mut config = Config::lab(Path::new("/srv/pantera"));
        config.ledger.data_dir = PathBuf::from("/srv/pantera/data");
        config.ledger.backend = "tigerbeetle".to_owned();
        config.ledger.tigerbeetle = Some(crate::config::TigerBeetleSection::with_addresses("3000,3001"));
        let kept = paths(&config, None);
        assert_eq!(kept.read_write, [PathBuf::from("/srv/pantera")]);
        assert_eq!(kept.connect_ports, [3000, 3001]);
    }

    #[test]
    fn landlock_keeps_the_reload_files_directories_the_data_and_audit_directories_and_proc_self() {
        let mut config = Config::lab(Path::new("/srv/pantera"));
        config.ledger.data_dir = PathBuf::from("/var/lib/pantera/data");
        config.tls.cert_chain = PathBuf::from("/etc/pantera/tls/server.pem");
        config.tls.private_key = PathBuf::from("/etc/pantera/keys/server.key");
        config.tls.client_ca = Some(PathBuf::from("/etc/pantera/tls/ca.pem"));
        let file = Path::new("/etc/pantera/pantera.toml");
        assert_eq!(
            reload_files(&config, Some(file)),
            [
                file,
                Path::new("/etc/pantera/tls/server.pem"),
                Path::new("/etc/pantera/keys/server.key"),
                Path::new("/etc/pantera/tls/ca.pem")
            ]
        );
        let kept = paths(&config, Some(file));
        // The audit log defaults to the data directory's parent.
        assert_eq!(
            kept.read_write,
            [
                PathBuf::from("/var/lib/pantera/data"),
                PathBuf::from("/var/lib/pantera")
            ]
        );
        assert_eq!(
            kept.read_only,
            [
                PathBuf::from("/etc/pantera"),
                PathBuf::from("/etc/pantera/tls"),
                PathBuf::from("/etc/pantera/keys"),
                PathBuf::from(format!("/proc/{}", std::process::id())),
            ]
        );
        config.audit.enabled = false;
        assert_eq!(
            paths(&config, None).read_write,
            [PathBuf::from("/var/lib/pantera/data")]
        );
        config.service.app = "echo".to_owned();
        let echo = paths(&config, Some(file));
        assert!(echo.read_write.is_empty(), "{echo:?}");
        assert_eq!(
            echo.read_only,
            [
                PathBuf::from("/etc/pantera"),
                PathBuf::from(format!("/proc/{}", std::process::id()))
            ]
        );
    }

    #[test]
    fn the_drop_refuses_to_run_beside_another_thread_and_the_switch_off_skips_it() {
        let config = Config::lab(Path::new("/srv/pantera"));
        // A second thread alive for the whole call (the test itself may run on the main one).
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || {
            let _ = stop_rx.recv();
        });
        let refused = drop(&config, None, &Metrics::new());
        stop_tx.send(()).expect("the other thread waits");
        other.join().expect("other thread");
        assert!(
            matches!(refused, Err(DropError::Threads(n)) if n >= 2),
            "{refused:?}"
        );
        let mut off = config.clone();
        off.sandbox.enabled = false;
        let metrics = Metrics::new();
        assert!(matches!(drop(&off, None, &metrics), Ok(None)));
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        assert!(text.contains("pantera_sandbox_enabled 0"), "{text}");
        assert!(text.contains("pantera_sandbox_landlock_abi 0"), "{text}");
    }

    /// The ruleset applied to one thread (Landlock, like no_new_privs, is per thread: the test
    /// process and its other threads stay free): the data directory works, a file outside is
    /// refused, a read-only directory cannot be written, TCP connect is refused.
    #[test]
    fn landlock_refuses_a_write_outside_the_kept_paths() {
        let root = tempfile::tempdir().expect("tempdir");
        let (data, tls, outside) = (
            root.path().join("data"),
            root.path().join("tls"),
            root.path().join("elsewhere"),
        );
        for d in [&data, &tls, &outside] {
            std::fs::create_dir(d).expect("mkdir");
        }
        std::fs::write(tls.join("server.pem"), "certificate").expect("write");
        std::fs::write(outside.join("secret"), "not yours").expect("write");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // A TigerBeetle replica's port: the one connect the ruleset allows.
        let replica = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let replica_port = replica.local_addr().expect("addr").port();
        let kept = Paths {
            read_write: vec![data.clone()],
            read_only: vec![tls.clone()],
            connect_ports: vec![replica_port],
        };
        let elsewhere = outside.clone();
        let confined = std::thread::spawn(move || {
            let outside = elsewhere;
            let abi = confine_filesystem(&kept).expect("confine");
            if abi == 0 {
                return None;
            }
            let denied = |r: io::Result<()>| matches!(r, Err(e) if e.kind() == io::ErrorKind::PermissionDenied);
            let in_data = (|| -> io::Result<()> {
                let mut f = std::fs::File::create(data.join("wal.tmp"))?;
                f.write_all(b"record")?;
                f.sync_all()?;
                std::fs::rename(data.join("wal.tmp"), data.join("wal.log"))?;
                std::fs::remove_file(data.join("wal.log"))
            })();
            let read_tls = std::fs::read_to_string(tls.join("server.pem")).map(|_| ());
            let write_tls = std::fs::write(tls.join("server.pem"), "replaced");
            let create_outside = std::fs::File::create(outside.join("new")).map(|_| ());
            let read_outside = std::fs::read(outside.join("secret")).map(|_| ());
            let read_etc = std::fs::read("/etc/passwd").map(|_| ());
            let connect = std::net::TcpStream::connect(("127.0.0.1", port)).map(|_| ());
            let connect_replica = std::net::TcpStream::connect(("127.0.0.1", replica_port)).map(|_| ());
            assert!(abi < 4 || connect_replica.is_ok(), "the replica's port is allowed: {connect_replica:?}");
            Some((abi, in_data, read_tls, denied(write_tls), denied(create_outside), denied(read_outside), denied(read_etc), denied(connect)))
        })
        .join()
        .expect("confined thread");
        let Some((
            abi,
            in_data,
            read_tls,
            write_tls,
            create_outside,
            read_outside,
            read_etc,
            connect,
        )) = confined
        else {
            println!("this kernel has no Landlock: nothing to check");
            return;
        };
        println!("Landlock ABI {abi}");
        in_data.expect("create, write, sync, rename and remove in the data directory");
        read_tls.expect("read a TLS file");
        assert!(
            write_tls,
            "a write to a read-only directory must be refused"
        );
        assert!(
            create_outside,
            "a file outside the kept paths must not be created"
        );
        assert!(
            read_outside,
            "a file outside the kept paths must not be read"
        );
        assert!(read_etc, "/etc/passwd must not be read");
        if abi >= 4 {
            assert!(connect, "TCP connect must be refused (Landlock ABI 4+)");
        }
        // This thread was never confined.
        std::fs::File::create(outside.join("new")).expect("the test's own thread is free");
    }
}
