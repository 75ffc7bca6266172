//! `tls.lock_memory`: the whole process's memory locked, so that what tls-term cannot place in
//! its own locked pages (ring's parsed server key, rustls' session secrets, connection state)
//! is never written to swap either. docs/security.md, "Key custody".
//!
//! `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`: what is mapped now and what is mapped
//! later is locked, each page when it is first touched (`MCL_ONFAULT`), so a thread's 8 MiB
//! stack reservation or a large `Vec` capacity costs only the pages actually used, not the
//! whole reservation.
//!
//! Locked memory is bounded by RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK, which it
//! drops after start-up. With `MCL_FUTURE`, every later mapping is counted against that limit
//! by its full length (a thread stack: 8 MiB) and fails past it (mmap and brk return ENOMEM
//! and the allocator aborts the process). So:
//! - the limit is raised to unlimited here, while the process is still privileged
//!   (CAP_SYS_RESOURCE, or `LimitMEMLOCK=infinity` in the unit): the limit stays with the
//!   process when it changes user, and `MCL_FUTURE` stays on for its whole life;
//! - when it cannot be raised (a container without CAP_SYS_RESOURCE), the process still locks
//!   everything start-up maps (the keys, ring's parsed key, the tables, the rings) while it
//!   holds CAP_IPC_LOCK, and [`before_privilege_drop`] turns `MCL_FUTURE` off just before the
//!   drop: what is locked stays locked, what is mapped later (new threads' stacks, new malloc
//!   arenas) is not. A warning says so at start.
//!
//! A failure of mlockall itself refuses the start: a key that may be swapped out is what
//! `lock_memory = true` promises not to have (set it to false to run without).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};

/// Set when `MCL_FUTURE` is on but RLIMIT_MEMLOCK is not unlimited: it must go before the
/// process loses CAP_IPC_LOCK.
static FUTURE_NEEDS_PRIVILEGE: AtomicBool = AtomicBool::new(false);

/// Locks the process's memory, present and future. Called once at start-up, before the keys
/// are loaded and the threads started.
pub fn lock_all() -> Result<()> {
    let unlimited = raise_memlock_limit()?;
    // SAFETY: mlockall changes how the kernel backs our pages; it touches no memory of ours.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } != 0 {
        let e = io::Error::last_os_error();
        bail!(
            "tls.lock_memory: cannot lock the process's memory (mlockall: {e}); \
             start with CAP_IPC_LOCK (or as root), or set tls.lock_memory = false"
        );
    }
    if !unlimited {
        FUTURE_NEEDS_PRIVILEGE.store(true, Ordering::Relaxed);
        log::warn!(
            "tls.lock_memory: RLIMIT_MEMLOCK cannot be raised to unlimited (no CAP_SYS_RESOURCE; set LimitMEMLOCK=infinity in the unit): \
             memory mapped during start-up (keys included) is locked, memory mapped after the privilege drop is not"
        );
    }
    Ok(())
}

/// Called just before the process gives up CAP_IPC_LOCK: when RLIMIT_MEMLOCK could not be
/// raised, turns `MCL_FUTURE` off (every later allocation would otherwise fail against the
/// limit) and keeps what is locked locked. Nothing to do otherwise, or without [`lock_all`].
pub fn before_privilege_drop() -> Result<()> {
    if !FUTURE_NEEDS_PRIVILEGE.swap(false, Ordering::Relaxed) {
        return Ok(());
    }
    // SAFETY: as in `lock_all`. MCL_CURRENT again (still privileged): the mappings made since
    // stay locked; MCL_FUTURE, absent from the flags, is cleared.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_ONFAULT) } != 0 {
        bail!(
            "tls.lock_memory: mlockall before the privilege drop: {}",
            io::Error::last_os_error()
        );
    }
    Ok(())
}

/// RLIMIT_MEMLOCK to unlimited (needs CAP_SYS_RESOURCE above the hard limit); true when it is
/// unlimited afterwards. Without the privilege, the soft limit goes up to the hard one.
fn raise_memlock_limit() -> Result<bool> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        bail!("tls.lock_memory: cannot read RLIMIT_MEMLOCK: {}", io::Error::last_os_error());
    }
    if limit.rlim_cur == libc::RLIM_INFINITY {
        return Ok(true);
    }
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `unlimited` is a valid rlimit; setrlimit only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        return Ok(true);
    }
    log::info!(
        "tls.lock_memory: RLIMIT_MEMLOCK stays at soft {}, hard {}: {}",
        show(limit.rlim_cur),
        show(limit.rlim_max),
        io::Error::last_os_error()
    );
    let to_hard = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: as above. Raising the soft limit to the hard one needs no privilege.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &to_hard) };
    Ok(limit.rlim_max == libc::RLIM_INFINITY)
}

fn show(limit: libc::rlim_t) -> String {
    if limit == libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        format!("{limit} bytes")
    }
}
