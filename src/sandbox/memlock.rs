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
//! drops after start-up. With `MCL_FUTURE`, every later allocation must fit under that limit or
//! fail (mmap and brk return ENOMEM and the allocator aborts the process). So the limit is
//! raised to unlimited here, while the process is still privileged: the limit stays with the
//! process when it changes user, and from then on the bound on its memory is the one the
//! operator sets on memory (systemd's MemoryMax=), not a lock limit sized by guess.

use std::io;

use anyhow::{bail, Result};

/// Locks the process's memory, present and future. Called once at start-up, before the keys
/// are loaded and the threads started. A failure refuses the start: a key that may be
/// swapped out is what `lock_memory = true` promises not to have (set it to false to run
/// without, e.g. in a container that may not lock memory).
pub fn lock_all() -> Result<()> {
    raise_memlock_limit()?;
    // SAFETY: mlockall changes how the kernel backs our pages; it touches no memory of ours.
    if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } != 0 {
        let e = io::Error::last_os_error();
        bail!(
            "tls.lock_memory: cannot lock the process's memory (mlockall: {e}); \
             start with CAP_IPC_LOCK and CAP_SYS_RESOURCE (or as root), or set tls.lock_memory = false"
        );
    }
    Ok(())
}

/// RLIMIT_MEMLOCK to unlimited (needs CAP_SYS_RESOURCE when above the hard limit). Already
/// unlimited: nothing to do, and no privilege needed.
fn raise_memlock_limit() -> Result<()> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `limit` is a valid rlimit for getrlimit to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } != 0 {
        bail!("tls.lock_memory: cannot read RLIMIT_MEMLOCK: {}", io::Error::last_os_error());
    }
    if limit.rlim_cur == libc::RLIM_INFINITY && limit.rlim_max == libc::RLIM_INFINITY {
        return Ok(());
    }
    let unlimited = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: `unlimited` is a valid rlimit; setrlimit only reads it.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        let e = io::Error::last_os_error();
        bail!(
            "tls.lock_memory: cannot raise RLIMIT_MEMLOCK (soft {}, hard {}) to unlimited: {e}; \
             every allocation after the privilege drop would have to fit under it. Start as root or with \
             CAP_SYS_RESOURCE, set LimitMEMLOCK=infinity in the unit, or set tls.lock_memory = false",
            show(limit.rlim_cur),
            show(limit.rlim_max)
        );
    }
    Ok(())
}

fn show(limit: libc::rlim_t) -> String {
    if limit == libc::RLIM_INFINITY {
        "unlimited".to_owned()
    } else {
        format!("{limit} bytes")
    }
}
