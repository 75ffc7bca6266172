//! Per-thread system-call allowlists (seccomp-bpf), docs/security.md "System-call allowlists".
//!
//! Every thread the appliance starts calls [`enter`] (or [`confine`]) first thing with its
//! [`Kind`]; the main thread does once it has started the others. From then on the thread may
//! make only the system calls its kind was measured to make. Anything else is answered with
//! SIGSYS (`SECCOMP_RET_TRAP`); the handler installed by [`enable`], before any filter, writes
//! one line naming the thread, its kind and the call, and ends the process with
//! [`EXIT_SANDBOX`]. A filter cannot be removed, and a thread started by a confined thread
//! inherits its filter.
//!
//! Arguments are checked where the kernel can see them: no `mmap`/`mprotect` that makes
//! memory executable; `clone` only with the thread flags, and only for kinds that start a
//! thread; `clone3` (whose flags sit in memory the filter cannot read) is answered ENOSYS so
//! the C library falls back to `clone`; `bpf` only on the main thread and only for map
//! element commands; `ioctl`, `prctl`, `getsockopt`, `setsockopt` only for what was measured.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen as Len, SeccompCmpOp as Op,
    SeccompCondition as Cond, SeccompFilter, SeccompRule,
};

use super::Kind;

/// The exit status of a process stopped by the sandbox (docs/operations.md): a thread made a
/// system call outside its allowlist, or an open the sandbox must refuse was attempted.
pub const EXIT_SANDBOX: i32 = 72;

/// Set by [`enable`]: confinement is on for this process (`sandbox.enabled`).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Who the calling thread is, for the SIGSYS handler (which may not allocate or lock). A
/// `const` thread-local of a `Copy` type without a destructor is a plain TLS slot: reading it
/// from a signal handler is safe.
#[derive(Clone, Copy)]
struct Identity {
    /// The thread's name as the kernel knows it (15 bytes and a NUL at most).
    name: [u8; 16],
    kind: Option<Kind>,
}

thread_local! {
    static IDENTITY: Cell<Identity> = const { Cell::new(Identity { name: [0; 16], kind: None }) };
}

/// Turns confinement on or off for the process. On: installs the SIGSYS handler (before any
/// filter, so a violation is always reported), after which [`confine`] installs filters.
/// Called once by the main thread before it starts any other thread.
pub fn enable(on: bool) -> io::Result<()> {
    if on {
        install_sigsys_handler()?;
        pin_malloc_arena_limit();
    }
    ENABLED.store(on, Ordering::Release);
    Ok(())
}

/// glibc's malloc decides its arena limit lazily: the first time a thread needs a new arena
/// past the eighth, it reads `/sys/devices/system/cpu/online`. A confined thread may not open
/// files (nor may Landlock let it), so that read would stop the process; it happened to the
/// TigerBeetle client's I/O threads, which allocate in the completion callback. Setting the
/// limit now, to glibc's own default (8 arenas per CPU on 64-bit), leaves nothing to read
/// later.
fn pin_malloc_arena_limit() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        let arenas = libc::c_int::try_from(cpus.saturating_mul(8)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt with an integer option; called before any other thread exists.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, arenas) };
    }
}

/// Installs the allowlist of `kind` on the calling thread. Called first thing by every
/// thread the appliance starts after start-up, and by the main thread once they are started.
/// Does nothing when the sandbox is off ([`enable`] not called with true), as in unit tests
/// of the threads' code.
pub fn confine(kind: Kind) -> io::Result<()> {
    if !ENABLED.load(Ordering::Acquire) {
        return Ok(());
    }
    let filters = Filters::compile(kind)?;
    filters.apply()
}

/// [`confine`], and a thread that cannot be confined stops the process: running unconfined
/// would be a quiet hole.
pub fn enter(kind: Kind) {
    if let Err(e) = confine(kind) {
        let thread = std::thread::current();
        log::error!(
            "FATAL: sandbox: thread {:?} ({kind}) cannot install its system-call allowlist: {e}; stopping",
            thread.name().unwrap_or("?")
        );
        std::process::exit(EXIT_SANDBOX);
    }
}

/// The compiled filters of one kind, ready to be applied without allocating (a forked child
/// of a test applies them with async-signal-safe calls only).
#[derive(Debug)]
pub struct Filters {
    kind: Kind,
    /// The allowlist.
    allow: BpfProgram,
    /// For kinds that start threads: answers `clone3` with ENOSYS (everything else allowed).
    /// Stacked filters give the strictest answer, so this only turns the allowlist's "allow"
    /// for `clone3` into ENOSYS.
    clone3_enosys: Option<BpfProgram>,
}

impl Filters {
    /// Compiles `kind`'s allowlist for this architecture.
    pub fn compile(kind: Kind) -> io::Result<Filters> {
        Filters::compile_with(kind, measuring())
    }

    fn compile_with(kind: Kind, measure: bool) -> io::Result<Filters> {
        let arch = target_arch()?;
        let rules = allowlist(kind)?;
        // Measuring (a test-only switch): the filter is installed, so `strace` shows where
        // each thread confines itself, but a call outside the list is only logged by the
        // kernel (SECCOMP_RET_LOG), not stopped.
        let mismatch = if measure {
            SeccompAction::Log
        } else {
            SeccompAction::Trap
        };
        let allow = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
            .and_then(BpfProgram::try_from)
            .map_err(|e| io::Error::other(format!("the {kind} allowlist does not compile: {e}")))?;
        let clone3_enosys = if spawns_threads(kind) {
            let rules = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
            let program = SeccompFilter::new(
                rules,
                SeccompAction::Allow,
                SeccompAction::Errno(libc::ENOSYS as u32),
                arch,
            )
            .and_then(BpfProgram::try_from)
            .map_err(|e| io::Error::other(format!("the clone3 filter does not compile: {e}")))?;
            Some(program)
        } else {
            None
        };
        Ok(Filters {
            kind,
            allow,
            clone3_enosys,
        })
    }

    /// Installs the filters on the calling thread; only system calls, no allocation.
    pub fn apply(&self) -> io::Result<()> {
        // The name for the SIGSYS line, read now (the filter may not allow prctl later).
        let mut name = [0u8; 16];
        // SAFETY: PR_GET_NAME writes at most 16 bytes into the buffer.
        unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr(), 0, 0, 0) };
        name[15] = 0;
        IDENTITY.with(|id| {
            id.set(Identity {
                name,
                kind: Some(self.kind),
            })
        });
        // Required to install a filter without CAP_SYS_ADMIN, and wanted anyway: nothing this
        // thread executes could gain privileges. Setting it twice is harmless.
        // SAFETY: plain prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(program) = &self.clone3_enosys {
            install(program)?;
        }
        install(&self.allow)
    }
}

/// `seccomp(SECCOMP_SET_MODE_FILTER)` with `program` on the calling thread.
fn install(program: &BpfProgram) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(program.len()).map_err(|_| io::Error::other("filter too long"))?,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the kernel copies the program; `prog` and `program` outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &prog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn target_arch() -> io::Result<seccompiler::TargetArch> {
    #[cfg(target_arch = "x86_64")]
    return Ok(seccompiler::TargetArch::x86_64);
    #[cfg(target_arch = "aarch64")]
    return Ok(seccompiler::TargetArch::aarch64);
    #[allow(unreachable_code)]
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "seccomp allowlists exist for x86_64 and aarch64 only",
    ))
}

/// The kinds that start a thread after confining themselves: the ledger thread starts the
/// checkpoint writer and the WAL syncer.
fn spawns_threads(kind: Kind) -> bool {
    kind == Kind::Ledger || kind == Kind::Cluster
}

#[cfg(feature = "fault-injection")]
fn measuring() -> bool {
    crate::fault::armed() == Some(crate::fault::Fault::SeccompMeasure)
}

#[cfg(not(feature = "fault-injection"))]
fn measuring() -> bool {
    false
}

// ---------------------------------------------------------------------------------------------
// The allowlists. Measured with `strace` in the lab (docs/security.md tells how to regenerate
// them), then reviewed: what a kind reaches only on an error or a rare path it must survive
// (a panic, a signal, a log line) is listed with a comment.

/// A rule set under construction: system call number -> conditions (empty: any arguments).
type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn allow(rules: &mut Rules, calls: &[i64]) {
    for &call in calls {
        rules.insert(call, Vec::new());
    }
}

/// Allows `call` when argument `arg` has none of the bits of `mask` set.
fn allow_without_bits(rules: &mut Rules, call: i64, arg: u8, mask: u64) -> io::Result<()> {
    let rule = SeccompRule::new(vec![cond(arg, Len::Qword, Op::MaskedEq(mask), 0)?])
        .map_err(compile_error)?;
    rules.insert(call, vec![rule]);
    Ok(())
}

/// Allows `call` when argument `arg` (32 bits) is one of `values`.
fn allow_values(rules: &mut Rules, call: i64, arg: u8, values: &[u64]) -> io::Result<()> {
    let mut alternatives = Vec::with_capacity(values.len());
    for &value in values {
        alternatives.push(
            SeccompRule::new(vec![cond(arg, Len::Dword, Op::Eq, value)?]).map_err(compile_error)?,
        );
    }
    rules.insert(call, alternatives);
    Ok(())
}

fn cond(arg: u8, len: Len, op: Op, value: u64) -> io::Result<Cond> {
    Cond::new(arg, len, op, value).map_err(compile_error)
}

fn compile_error(e: seccompiler::BackendError) -> io::Error {
    io::Error::other(format!("seccomp rule: {e}"))
}

/// What every thread needs: memory (the allocator; never executable), locks and waits, time,
/// log lines to stderr, a signal handler's return, a thread's own exit, the panic path
/// (abort: rt_sigprocmask, gettid/getpid, tgkill) and the SIGSYS line itself (write,
/// exit_group).
fn common(rules: &mut Rules) -> io::Result<()> {
    allow(
        rules,
        &[
            libc::SYS_write,
            // Not measured: the standard library writes vectored output with it.
            libc::SYS_writev,
            libc::SYS_futex,
            // crossbeam's channels back off with it.
            libc::SYS_sched_yield,
            // Normally answered by the vDSO without a system call.
            libc::SYS_clock_gettime,
            libc::SYS_clock_nanosleep,
            libc::SYS_restart_syscall,
            libc::SYS_brk,
            libc::SYS_munmap,
            libc::SYS_mremap,
            libc::SYS_madvise,
            libc::SYS_rt_sigprocmask,
            // A signal handler's return (SIGTERM, SIGHUP land on any thread).
            libc::SYS_rt_sigreturn,
            // A thread's exit: Rust removes its alternate signal stack, then the thread exits.
            libc::SYS_sigaltstack,
            libc::SYS_exit,
            libc::SYS_exit_group,
            // abort() after a panic signals the thread itself.
            libc::SYS_getpid,
            libc::SYS_gettid,
            libc::SYS_tgkill,
            // The standard library's hash maps seed themselves once per thread; rustls.
            libc::SYS_getrandom,
        ],
    );
    // W^X: memory is never mapped or made executable after start-up.
    let exec = libc::PROT_EXEC as u64;
    allow_without_bits(rules, libc::SYS_mmap, 2, exec)?;
    allow_without_bits(rules, libc::SYS_mprotect, 2, exec)?;
    Ok(())
}

/// Opening and reading files: the reload's certificate and configuration files on the main
/// thread, /proc/self for the management thread's process metrics (Landlock limits where).
fn read_files(rules: &mut Rules) {
    allow(
        rules,
        &[
            libc::SYS_openat,
            libc::SYS_close,
            libc::SYS_read,
            libc::SYS_lseek,
            libc::SYS_fcntl,
            libc::SYS_statx,
            libc::SYS_newfstatat,
        ],
    );
}

/// Writing files in the data directory: the WAL, checkpoints, the audit log and its rotation
/// (Landlock limits where).
fn write_files(rules: &mut Rules) {
    read_files(rules);
    allow(rules, &[libc::SYS_fsync, libc::SYS_fdatasync]);
    #[cfg(target_arch = "x86_64")]
    allow(rules, &[libc::SYS_rename, libc::SYS_unlink]);
    #[cfg(not(target_arch = "x86_64"))]
    allow(rules, &[libc::SYS_renameat2, libc::SYS_unlinkat]);
}

// bpf(2) commands (`enum bpf_cmd` in the kernel's uapi linux/bpf.h); the libc crate lacks them.
const BPF_MAP_LOOKUP_ELEM: u64 = 1;
const BPF_MAP_UPDATE_ELEM: u64 = 2;
const BPF_MAP_DELETE_ELEM: u64 = 3;
const BPF_MAP_GET_NEXT_KEY: u64 = 4;

/// The allowlist of `kind` (docs/security.md has the same lists as a table).
fn allowlist(kind: Kind) -> io::Result<Rules> {
    let mut rules = Rules::new();
    common(&mut rules)?;
    match kind {
        Kind::Main => {
            // Reload (SIGHUP): the configuration, certificate, key and CRL files.
            read_files(&mut rules);
            // A reload's key in locked memory when the reserve locked at start is used up
            // (tls-term's secret.rs); it then fits RLIMIT_MEMLOCK or fails the reload.
            allow(&mut rules, &[libc::SYS_mlock]);
            // The key file's owner rule compares with the user the process serves as (a
            // reload, and the CRL timer's rebuild of the TLS settings).
            allow(&mut rules, &[libc::SYS_geteuid, libc::SYS_getegid]);
            // systemd notifications (READY, RELOADING, WATCHDOG, STOPPING) on the socket
            // opened at start; not measured in the lab, which runs without systemd.
            allow(&mut rules, &[libc::SYS_sendto]);
            // The XDP counters (lookups every 100 ms) and edge-policy updates on SIGHUP: map
            // element commands only (no loading, attaching or creating anything).
            allow_values(
                &mut rules,
                libc::SYS_bpf,
                0,
                &[
                    BPF_MAP_LOOKUP_ELEM,
                    BPF_MAP_UPDATE_ELEM,
                    BPF_MAP_DELETE_ELEM,
                    BPF_MAP_GET_NEXT_KEY,
                ],
            )?;
        }
        Kind::Worker => {
            // AF_XDP: kick the kernel (sendto), wait for frames (ppoll: a timeout finer than
            // poll's milliseconds), read the ring offsets and the socket's drop counters
            // (getsockopt at level SOL_XDP only). close: the socket, when the worker ends.
            allow(&mut rules, &[libc::SYS_sendto, libc::SYS_close, libc::SYS_ppoll]);
            allow_values(&mut rules, libc::SYS_getsockopt, 1, &[libc::SOL_XDP as u64])?;
        }
        Kind::Cluster => {
            // Measured with strace around a real cluster (the in-process backend test): the
            // backend thread opens its client sessions (the kernel version check, one io_uring
            // and one eventfd each) and starts one I/O thread per session; those inherit this
            // filter and talk TCP to the replicas. Sockets are made with socket(2) and tuned
            // with setsockopt(2); connect, send and receive go through io_uring (which seccomp
            // does not see: Landlock's TCP connect rule, for the replicas' ports only, still
            // applies to them), some sends directly with sendto(2). The rings are mmap'd
            // shared, never executable (the common list's mmap rule).
            allow(
                &mut rules,
                &[
                    libc::SYS_uname,
                    libc::SYS_io_uring_setup,
                    libc::SYS_io_uring_enter,
                    libc::SYS_eventfd2,
                    libc::SYS_socket,
                    libc::SYS_setsockopt,
                    libc::SYS_sendto,
                    libc::SYS_close,
                    // TigerBeetle's message bus ends a broken connection with shutdown(2)
                    // before closing it (a replica that died).
                    libc::SYS_shutdown,
                ],
            );
            // The client library's debug checks read a few words of this process's own memory
            // through process_vm_readv (safe probing of a stack address); any other process
            // is refused.
            allow_values(&mut rules, libc::SYS_process_vm_readv, 0, &[u64::from(std::process::id())])?;
            thread_start(&mut rules)?;
        }
        Kind::Ledger => {
            write_files(&mut rules);
            // Recovery's directory listing; cutting a torn tail.
            allow(&mut rules, &[libc::SYS_getdents64, libc::SYS_ftruncate]);
            thread_start(&mut rules)?;
        }        Kind::Checkpoint => write_files(&mut rules),
        // The WAL syncer opens nothing: the ledger thread hands it duplicated descriptors of
        // the segment (and of the directory for a new segment), which it syncs and closes.
        // fcntl: the standard library's debug builds check a descriptor is open (F_GETFD)
        // before closing it.
        Kind::Syncer => allow(&mut rules, &[libc::SYS_fdatasync, libc::SYS_fsync, libc::SYS_close, libc::SYS_fcntl]),
        Kind::Management => {
            // /metrics reads the process's own statistics from /proc.
            read_files(&mut rules);
            // The listener was bound at start: accept, read, answer, close. The accepted
            // connection is made blocking (FIONBIO) with timeouts (SO_RCVTIMEO, SO_SNDTIMEO).
            allow(
                &mut rules,
                &[
                    libc::SYS_accept4,
                    libc::SYS_recvfrom,
                    libc::SYS_sendto,
                    libc::SYS_shutdown,
                ],
            );
            allow_values(&mut rules, libc::SYS_ioctl, 1, &[libc::FIONBIO])?;
            // The acceptor waits for a connection in poll(2) on the listener.
            #[cfg(target_arch = "x86_64")]
            allow(&mut rules, &[libc::SYS_poll]);
            #[cfg(not(target_arch = "x86_64"))]
            allow(&mut rules, &[libc::SYS_ppoll]);
            let mut timeouts = Vec::new();
            for option in [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO] {
                let level = cond(1, Len::Dword, Op::Eq, libc::SOL_SOCKET as u64)?;
                let option = cond(2, Len::Dword, Op::Eq, option as u64)?;
                timeouts.push(SeccompRule::new(vec![level, option]).map_err(compile_error)?);
            }
            rules.insert(libc::SYS_setsockopt, timeouts);
        }
        Kind::Audit => write_files(&mut rules),
    }
    Ok(rules)
}


/// Starting a thread (nothing else: a process could escape the filters' per-thread
/// bookkeeping), and what the new thread does before it installs its own filter, if any.
fn thread_start(rules: &mut Rules) -> io::Result<()> {
    // The ledger thread starts the checkpoint writer and the WAL syncer; the cluster
    // backend's thread starts tb_client's I/O threads.
    let thread = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD) as u64;
    let rule = SeccompRule::new(vec![cond(0, Len::Qword, Op::MaskedEq(thread), thread)?])
        .map_err(compile_error)?;
    rules.insert(libc::SYS_clone, vec![rule]);
    // clone3 is in the allowlist so the stacked filter answers it ENOSYS (the C
    // library then uses clone, whose flags the rule above checks).
    allow(rules, &[libc::SYS_clone3]);
    // What the new thread does before it installs its own, narrower filter: the C
    // library's thread start, naming, and the confinement itself.
    allow(
        rules,
        &[
            libc::SYS_set_robust_list,
            libc::SYS_rseq,
            libc::SYS_sched_getaffinity,
            libc::SYS_seccomp,
        ],
    );
    allow_values(
        rules,
        libc::SYS_prctl,
        0,
        &[
            libc::PR_SET_NAME as u64,
            libc::PR_GET_NAME as u64,
            libc::PR_SET_NO_NEW_PRIVS as u64,
        ],
    )?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The SIGSYS handler.

fn install_sigsys_handler() -> io::Result<()> {
    // SAFETY: an all-zero sigaction is valid; the handler is async-signal-safe (see below).
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigsys
            as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void)
            as usize;
        action.sa_flags = libc::SA_SIGINFO;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The offset of `si_syscall` in a SIGSYS `siginfo_t` on 64-bit Linux: after si_signo,
/// si_errno, si_code and padding (16 bytes) comes `_sigsys { void *call_addr; int syscall; }`.
const SI_SYSCALL_OFFSET: usize = 24;

/// Writes the line and ends the process. Async-signal-safe: a stack buffer, a TLS read,
/// write(2) and exit_group(2), both in every allowlist.
extern "C" fn on_sigsys(
    _signal: libc::c_int,
    info: *mut libc::siginfo_t,
    _context: *mut libc::c_void,
) {
    // SAFETY: the kernel passes a valid siginfo_t for SA_SIGINFO; for SIGSYS the syscall
    // number is at SI_SYSCALL_OFFSET.
    let call = unsafe {
        std::ptr::read_unaligned((info as *const u8).add(SI_SYSCALL_OFFSET) as *const libc::c_int)
    };
    let identity = IDENTITY.with(|id| id.get());
    let mut line = Line::new();
    line.push(b"pantera: FATAL: sandbox: thread \"");
    let len = identity
        .name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(identity.name.len());
    line.push(&identity.name[..len]);
    line.push(b"\" (");
    line.push(identity.kind.map_or("unconfined", Kind::as_str).as_bytes());
    line.push(b") made forbidden system call ");
    line.push_number(i64::from(call));
    line.push(b" (");
    line.push(syscall_name(i64::from(call)).unwrap_or("?").as_bytes());
    line.push(b"); stopping\n");
    // SAFETY: write and exit_group with valid arguments.
    unsafe {
        libc::write(2, line.buf.as_ptr().cast(), line.len);
        libc::syscall(libc::SYS_exit_group, EXIT_SANDBOX);
    }
}

/// A fixed-size line built without allocating.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn new() -> Line {
        Line {
            buf: [0; 256],
            len: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    fn push_number(&mut self, n: i64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut v = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        if n < 0 {
            self.push(b"-");
        }
        self.push(&digits[i..]);
    }
}

/// Names for the calls a violation is likely to be (and those most worth recognising).
fn syscall_name(call: i64) -> Option<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        let legacy: &[(i64, &str)] = &[
            (libc::SYS_open, "open"),
            (libc::SYS_fork, "fork"),
            (libc::SYS_vfork, "vfork"),
            (libc::SYS_poll, "poll"),
            (libc::SYS_stat, "stat"),
            (libc::SYS_access, "access"),
            (libc::SYS_chmod, "chmod"),
            (libc::SYS_rename, "rename"),
            (libc::SYS_unlink, "unlink"),
        ];
        if let Some((_, name)) = legacy.iter().find(|(n, _)| *n == call) {
            return Some(name);
        }
    }
    NAMES
        .iter()
        .find(|(n, _)| *n == call)
        .map(|(_, name)| *name)
}

const NAMES: &[(i64, &str)] = &[
    (libc::SYS_execve, "execve"),
    (libc::SYS_execveat, "execveat"),
    (libc::SYS_geteuid, "geteuid"),
    (libc::SYS_getegid, "getegid"),
    (libc::SYS_openat, "openat"),
    (libc::SYS_openat2, "openat2"),
    (libc::SYS_open_by_handle_at, "open_by_handle_at"),
    (libc::SYS_socket, "socket"),
    (libc::SYS_socketpair, "socketpair"),
    (libc::SYS_connect, "connect"),
    (libc::SYS_bind, "bind"),
    (libc::SYS_listen, "listen"),
    (libc::SYS_accept4, "accept4"),
    (libc::SYS_sendto, "sendto"),
    (libc::SYS_sendmsg, "sendmsg"),
    (libc::SYS_recvfrom, "recvfrom"),
    (libc::SYS_clone, "clone"),
    (libc::SYS_clone3, "clone3"),
    (libc::SYS_ptrace, "ptrace"),
    (libc::SYS_process_vm_readv, "process_vm_readv"),
    (libc::SYS_process_vm_writev, "process_vm_writev"),
    (libc::SYS_bpf, "bpf"),
    (libc::SYS_ioctl, "ioctl"),
    (libc::SYS_mmap, "mmap"),
    (libc::SYS_mprotect, "mprotect"),
    (libc::SYS_pkey_mprotect, "pkey_mprotect"),
    (libc::SYS_mount, "mount"),
    (libc::SYS_umount2, "umount2"),
    (libc::SYS_kexec_load, "kexec_load"),
    (libc::SYS_kexec_file_load, "kexec_file_load"),
    (libc::SYS_keyctl, "keyctl"),
    (libc::SYS_add_key, "add_key"),
    (libc::SYS_perf_event_open, "perf_event_open"),
    (libc::SYS_init_module, "init_module"),
    (libc::SYS_finit_module, "finit_module"),
    (libc::SYS_setuid, "setuid"),
    (libc::SYS_setgid, "setgid"),
    (libc::SYS_capset, "capset"),
    (libc::SYS_prctl, "prctl"),
    (libc::SYS_seccomp, "seccomp"),
    (libc::SYS_rt_sigaction, "rt_sigaction"),
    (libc::SYS_kill, "kill"),
    (libc::SYS_unlinkat, "unlinkat"),
    (libc::SYS_renameat2, "renameat2"),
    (libc::SYS_mkdirat, "mkdirat"),
    (libc::SYS_fchmodat, "fchmodat"),
    (libc::SYS_fchownat, "fchownat"),
    (libc::SYS_read, "read"),
    (libc::SYS_close, "close"),
    (libc::SYS_getdents64, "getdents64"),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_compiles() {
        for kind in Kind::ALL {
            let filters =
                Filters::compile_with(kind, false).unwrap_or_else(|e| panic!("{kind}: {e}"));
            assert!(!filters.allow.is_empty(), "{kind}");
            assert_eq!(
                filters.clone3_enosys.is_some(),
                matches!(kind, Kind::Ledger | Kind::Cluster),
                "{kind}"
            );
        }
    }

    #[test]
    fn nothing_dangerous_is_allowed_anywhere() {
        let forbidden = [
            libc::SYS_execve,
            libc::SYS_execveat,
            libc::SYS_ptrace,
            libc::SYS_process_vm_readv,
            libc::SYS_process_vm_writev,
            libc::SYS_open_by_handle_at,
            libc::SYS_kexec_load,
            libc::SYS_mount,
            libc::SYS_keyctl,
            libc::SYS_perf_event_open,
            libc::SYS_socket,
            libc::SYS_rt_sigaction,
        ];
        for kind in Kind::ALL {
            let rules = allowlist(kind).expect("rules");
            for call in forbidden {
                // The TigerBeetle client's threads open TCP sockets to the replicas (Landlock
                // allows connecting to their ports only) and read their own process's memory
                // (the rule pins the pid: checked below).
                if kind == Kind::Cluster && (call == libc::SYS_socket || call == libc::SYS_process_vm_readv) {
                    continue;
                }
                assert!(
                    !rules.contains_key(&call),
                    "{kind} allows {}",
                    syscall_name(call).unwrap_or("?")
                );
            }
            assert_eq!(
                rules.contains_key(&libc::SYS_bpf),
                kind == Kind::Main,
                "{kind}: bpf"
            );
            assert_eq!(
                rules.contains_key(&libc::SYS_clone),
                matches!(kind, Kind::Ledger | Kind::Cluster),
                "{kind}: clone"
            );
            // Only so the checkpoint writer it starts can narrow its own filter further.
            assert_eq!(
                rules.contains_key(&libc::SYS_seccomp),
                matches!(kind, Kind::Ledger | Kind::Cluster),
                "{kind}: seccomp"
            );
            assert_eq!(
                rules.contains_key(&libc::SYS_ioctl),
                kind == Kind::Management,
                "{kind}: ioctl"
            );
            // The workers, the WAL syncer and the TigerBeetle backend open nothing after
            // start-up.
            assert_eq!(
                rules.contains_key(&libc::SYS_openat),
                !matches!(kind, Kind::Worker | Kind::Syncer | Kind::Cluster),
                "{kind}: openat"
            );
        }
        let cluster = allowlist(Kind::Cluster).expect("rules");
        assert_eq!(cluster[&libc::SYS_process_vm_readv].len(), 1, "process_vm_readv only with this process's pid");
    }

    #[test]
    fn the_line_formats_numbers() {
        let mut line = Line::new();
        line.push_number(0);
        line.push(b" ");
        line.push_number(59);
        line.push(b" ");
        line.push_number(-12);
        assert_eq!(&line.buf[..line.len], b"0 59 -12");
    }

    /// What a forked child confined as a worker did: its exit status and its stderr.
    fn in_confined_child(filters: &Filters, call: fn()) -> (i32, String) {
        let mut fds = [0; 2];
        // SAFETY: a pipe into a valid array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: the child does only async-signal-safe work (dup2, prctl, sigaction,
        // seccomp, the call under test, _exit): the filters were compiled before the fork.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork");
        if pid == 0 {
            unsafe {
                libc::dup2(fds[1], 2);
                libc::prctl(libc::PR_SET_NAME, c"worker-q7".as_ptr(), 0, 0, 0);
                if install_sigsys_handler().is_err() || filters.apply().is_err() {
                    libc::_exit(99);
                }
                call();
                libc::_exit(0);
            }
        }
        // SAFETY: closing our copy of the write end, reading the read end, reaping the child.
        unsafe { libc::close(fds[1]) };
        let mut out = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            out.extend_from_slice(&buf[..n as usize]);
        }
        unsafe { libc::close(fds[0]) };
        let mut status = 0;
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        (status, String::from_utf8_lossy(&out).into_owned())
    }

    /// As [`in_confined_child`]: the child must have exited; its exit status.
    fn exit_of_confined_child(filters: &Filters, call: fn()) -> (i32, String) {
        let (status, stderr) = in_confined_child(filters, call);
        assert!(
            libc::WIFEXITED(status),
            "the child did not exit normally: status {status:#x}; {stderr}"
        );
        (libc::WEXITSTATUS(status), stderr)
    }

    #[test]
    fn a_confined_worker_that_calls_execve_is_stopped_with_the_line() {
        let filters = Filters::compile_with(Kind::Worker, false).expect("compile");
        let (status, stderr) = exit_of_confined_child(&filters, || unsafe {
            let argv = [c"/bin/true".as_ptr(), std::ptr::null()];
            let envp = [std::ptr::null()];
            libc::execve(c"/bin/true".as_ptr(), argv.as_ptr(), envp.as_ptr());
            // Reached only if execve was allowed and failed.
            libc::_exit(1);
        });
        assert_eq!(status, EXIT_SANDBOX, "stderr: {stderr}");
        assert_eq!(
            stderr,
            format!("pantera: FATAL: sandbox: thread \"worker-q7\" (worker) made forbidden system call {} (execve); stopping\n", libc::SYS_execve)
        );
    }

    #[test]
    fn a_confined_worker_cannot_map_executable_memory() {
        let filters = Filters::compile_with(Kind::Worker, false).expect("compile");
        let (status, stderr) = exit_of_confined_child(&filters, || unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
        });
        assert_eq!(status, EXIT_SANDBOX, "stderr: {stderr}");
        assert!(
            stderr.contains("(worker) made forbidden system call") && stderr.contains("(mmap)"),
            "{stderr}"
        );
    }

    #[test]
    fn abort_still_ends_a_confined_thread_with_sigabrt() {
        // A panic aborts the process (health::install_panic_hook): under every filter the
        // abort must be the C library's SIGABRT, not a sandbox stop.
        for kind in Kind::ALL {
            let filters = Filters::compile_with(kind, false).expect("compile");
            let (status, stderr) = in_confined_child(&filters, || unsafe { libc::abort() });
            assert!(
                libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGABRT,
                "{kind}: status {status:#x}; {stderr}"
            );
        }
    }

    #[test]
    fn a_confined_syncer_may_sync_and_close_but_not_open() {
        let filters = Filters::compile_with(Kind::Syncer, false).expect("compile");
        // The descriptor would be a duplicate the ledger thread made; here the child's
        // stderr (a pipe: fdatasync answers EINVAL, which is no sandbox stop).
        let (status, stderr) = exit_of_confined_child(&filters, || unsafe {
            libc::fdatasync(2);
            libc::fsync(2);
            libc::close(100);
            libc::write(2, b"ok".as_ptr().cast(), 2);
        });
        assert_eq!((status, stderr.as_str()), (0, "ok"));
        let (status, stderr) = exit_of_confined_child(&filters, || unsafe {
            libc::openat(libc::AT_FDCWD, c"/etc/passwd".as_ptr(), libc::O_RDONLY);
            libc::_exit(1);
        });
        assert_eq!(status, EXIT_SANDBOX, "stderr: {stderr}");
        assert!(stderr.contains("(syncer) made forbidden system call") && stderr.contains("(openat)"), "{stderr}");
    }

    #[test]
    fn a_confined_worker_may_make_its_allowed_calls() {
        let filters = Filters::compile_with(Kind::Worker, false).expect("compile");
        let (status, stderr) = exit_of_confined_child(&filters, || unsafe {
            libc::getpid();
            let page = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if page == libc::MAP_FAILED {
                libc::_exit(2);
            }
            libc::write(2, b"ok".as_ptr().cast(), 2);
        });
        assert_eq!((status, stderr.as_str()), (0, "ok"));
    }
}
