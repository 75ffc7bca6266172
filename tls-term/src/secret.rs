//! Memory for the secrets this crate owns (the server key file, its DER form, the
//! session-ticket keys): pages of their own, locked, out of core dumps, zeroed before they are
//! given back. docs/security.md ("Key custody") says what is covered and what is not.
//!
//! Each region is an anonymous `mmap` of whole pages (page-aligned, shared with nothing else):
//! - `mlock`: never written to swap, where it would outlive the process on disk;
//! - `MADV_DONTDUMP`: left out of a core dump (belt and braces: the process is also made not
//!   dumpable, and RLIMIT_CORE is 0);
//! - `MADV_WIPEONFORK`: a child forked from this process sees zeros, not the key;
//! - on drop, zeroed with volatile writes (`zeroize`) before `munmap`, so the
//!   freed pages the kernel hands to someone else no longer hold the key.
//!
//! This is the one module of the crate with `unsafe`: the system calls and the typed access to
//! the mapped pages. Every block says why it is sound.
#![allow(unsafe_code)]

use std::fmt;
use std::io::{self, Read};
use std::marker::PhantomData;
use std::mem;
use std::ops::{Deref, DerefMut};
use std::ptr::{self, NonNull};

use zeroize::Zeroize;

/// Whole pages of locked, undumpable memory, zeroed on drop.
struct Region {
    ptr: NonNull<u8>,
    /// Bytes mapped: a multiple of the page size, at least one page.
    size: usize,
}

// SAFETY: the region is plain memory owned by this value alone; access goes through `&self` /
// `&mut self`, so the usual borrow rules make sharing and sending sound.
unsafe impl Send for Region {}
// SAFETY: as above; `&Region` only gives shared reads.
unsafe impl Sync for Region {}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if page > 0 {
        page as usize
    } else {
        4096
    }
}

/// Locked regions kept for reuse: mapped and locked at start-up while the process may still
/// lock memory ([`reserve`]), and given back here, zeroed, when a secret is dropped. Once the
/// privileges are dropped, `mlock` may no longer fit RLIMIT_MEMLOCK (all of start-up's memory
/// can be locked already, `tls.lock_memory`): a reload's key then takes a reserved region.
struct Reserve {
    free: Vec<(NonNull<u8>, usize)>,
}

// SAFETY: the pointers are mappings owned by the reserve alone (nothing else refers to them).
unsafe impl Send for Reserve {}

static RESERVE: std::sync::Mutex<Reserve> = std::sync::Mutex::new(Reserve { free: Vec::new() });

/// At most this many regions are kept for reuse; more are unmapped.
const RESERVE_REGIONS_MAX: usize = 64;

/// Maps and locks one region of at least each of `sizes` bytes into the reserve (start-up,
/// before the privileges are dropped). Secrets allocated later take the smallest reserved
/// region that fits before they map a new one.
pub fn reserve(sizes: &[usize]) -> io::Result<()> {
    for &len in sizes {
        let region = Region::map(len)?;
        // Dropping it zeroes it (already zero) and keeps it in the reserve.
        drop(region);
    }
    Ok(())
}

impl Region {
    /// At least `len` bytes (one page when `len` is 0): the smallest reserved region that fits,
    /// else a new mapping.
    fn new(len: usize) -> io::Result<Region> {
        let mut reserve = RESERVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let fit = reserve
            .free
            .iter()
            .enumerate()
            .filter(|(_, (_, size))| *size >= len.max(1))
            .min_by_key(|(_, (_, size))| *size)
            .map(|(i, _)| i);
        if let Some(i) = fit {
            let (ptr, size) = reserve.free.swap_remove(i);
            return Ok(Region { ptr, size });
        }
        drop(reserve);
        Region::map(len)
    }

    /// Maps, advises and locks at least `len` bytes (one page when `len` is 0).
    fn map(len: usize) -> io::Result<Region> {
        let page = page_size();
        let size = len
            .max(1)
            .checked_next_multiple_of(page)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "secret too large"))?;
        // SAFETY: an anonymous private mapping at an address of the kernel's choosing touches
        // no existing memory.
        let raw = unsafe {
            libc::mmap(
                ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(raw.cast::<u8>()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
        // From here on, `region`'s Drop unmaps on every error path.
        let region = Region { ptr, size };
        for (advice, name) in [
            (libc::MADV_DONTDUMP, "MADV_DONTDUMP"),
            (libc::MADV_WIPEONFORK, "MADV_WIPEONFORK"),
        ] {
            // SAFETY: the range is exactly our mapping.
            if unsafe { libc::madvise(raw, size, advice) } != 0 {
                let e = io::Error::last_os_error();
                return Err(io::Error::new(e.kind(), format!("madvise({name}): {e}")));
            }
        }
        // mlock also faults the pages in: the region is resident and counted in VmLck from now.
        // SAFETY: the range is exactly our mapping.
        if unsafe { libc::mlock(raw, size) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "mlock of {size} bytes: {e} (RLIMIT_MEMLOCK too low, or CAP_IPC_LOCK missing)"
                ),
            ));
        }
        Ok(region)
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: `size` bytes mapped readable for as long as `self` lives; zero-filled by
        // the kernel, so always initialised.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.size) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.size) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // Volatile writes and a compiler fence: the zeroing is not optimised away although
        // nothing reads the bytes afterwards.
        self.bytes_mut().zeroize();
        // Kept for reuse while the reserve has room: no system call, and the region stays
        // locked for a secret allocated after the privileges are dropped.
        {
            let mut reserve = RESERVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if reserve.free.len() < RESERVE_REGIONS_MAX {
                reserve.free.push((self.ptr, self.size));
                return;
            }
        }
        // munmap also unlocks: no munlock call, one system call fewer for the allowlists of
        // the threads that may drop a key (a worker releasing the last reference to a
        // configuration replaced by a reload).
        // SAFETY: our mapping, unmapped exactly once, here; no reference into it survives
        // `self`. munmap fails only on a bad range, which this is not.
        unsafe { libc::munmap(self.ptr.as_ptr().cast::<libc::c_void>(), self.size) };
    }
}

/// Secret bytes (a key file, a DER key) in a locked region; `Debug` shows only the length.
pub struct SecretBytes {
    region: Region,
    len: usize,
}

impl SecretBytes {
    /// An empty buffer that can hold `capacity` bytes (rounded up to whole pages).
    pub fn with_capacity(capacity: usize) -> io::Result<SecretBytes> {
        Ok(SecretBytes {
            region: Region::new(capacity)?,
            len: 0,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.region.bytes()[..self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes that can still be added.
    pub fn capacity(&self) -> usize {
        self.region.size
    }

    /// Appends one byte; false when full.
    pub fn push(&mut self, byte: u8) -> bool {
        if self.len == self.region.size {
            return false;
        }
        let at = self.len;
        self.region.bytes_mut()[at] = byte;
        self.len += 1;
        true
    }

    /// Reads `reader` to its end straight into the locked pages (no intermediate buffer).
    /// `Ok(false)` when it holds more than the capacity: the caller reports the file as too
    /// large; what was read is zeroed with the rest on drop.
    pub fn read_to_end_from(&mut self, reader: &mut impl Read) -> io::Result<bool> {
        loop {
            let at = self.len;
            if at == self.region.size {
                // Full: one more byte means too large.
                let mut probe = [0u8; 1];
                return Ok(reader.read(&mut probe)? == 0);
            }
            match reader.read(&mut self.region.bytes_mut()[at..]) {
                Ok(0) => return Ok(true),
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBytes({} bytes, locked)", self.len)
    }
}

/// A value of type `T` kept in a locked region of its own; on drop, `T` is dropped in place and
/// every byte of the region zeroed. For types whose secret state is inline (ring's AEAD keys,
/// byte arrays): memory that `T` itself allocates on the heap is not covered.
pub struct Locked<T> {
    region: Region,
    _value: PhantomData<T>,
}

// SAFETY: `Locked<T>` owns its `T` like a `Box<T>` does.
unsafe impl<T: Send> Send for Locked<T> {}
// SAFETY: as above; `&Locked<T>` gives only `&T`.
unsafe impl<T: Sync> Sync for Locked<T> {}

impl<T> Locked<T> {
    /// Moves `value` into a fresh locked region. The moved-from copy (a stack temporary) is
    /// the caller's: build the value as close to this call as possible.
    pub fn new(value: T) -> io::Result<Locked<T>> {
        assert!(
            mem::align_of::<T>() <= page_size(),
            "page alignment suffices for any secret type"
        );
        let region = Region::new(mem::size_of::<T>())?;
        // SAFETY: the region is page-aligned (so aligned for T, asserted above), at least
        // size_of::<T>() bytes, and holds no value yet.
        unsafe { ptr::write(region.ptr.as_ptr().cast::<T>(), value) };
        Ok(Locked {
            region,
            _value: PhantomData,
        })
    }
}

impl<T> Deref for Locked<T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: a valid T was written in `new` and stays until drop.
        unsafe { &*self.region.ptr.as_ptr().cast::<T>() }
    }
}

impl<T> DerefMut for Locked<T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`; `&mut self` makes the access exclusive.
        unsafe { &mut *self.region.ptr.as_ptr().cast::<T>() }
    }
}

impl<T> Drop for Locked<T> {
    fn drop(&mut self) {
        // SAFETY: the T written in `new` is dropped exactly once; the region's own Drop then
        // zeroes the bytes it occupied.
        unsafe { ptr::drop_in_place(self.region.ptr.as_ptr().cast::<T>()) };
    }
}

impl<T> fmt::Debug for Locked<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Locked<{}>({} bytes)",
            std::any::type_name::<T>(),
            mem::size_of::<T>()
        )
    }
}

/// Replaces `*slot` with `value`, zeroing every byte of the old value (padding included) in
/// between: a plain assignment would drop the old value but could leave bytes of it behind
/// where the new one has padding or a shorter enum variant.
pub fn overwrite<T>(slot: &mut T, value: T) {
    let p: *mut T = slot;
    // SAFETY: `p` comes from a unique reference, so it is valid, aligned and exclusive. The
    // old value is dropped once; its bytes are then zeroed while no T is live there (nothing
    // reads them: no code runs between these three steps that could panic or observe the
    // slot); the new value is written before the reference is used again.
    unsafe {
        ptr::drop_in_place(p);
        std::slice::from_raw_parts_mut(p.cast::<u8>(), mem::size_of::<T>()).zeroize();
        ptr::write(p, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `VmFlags` and `Locked:` of the mapping that holds `addr` (/proc/self/smaps; the
    /// kernel may merge neighbouring regions with the same flags into one mapping).
    fn smaps_entry(addr: usize) -> (String, u64, u64) {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let holds = |line: &str| {
            let range = line.split_whitespace().next().unwrap_or("");
            let Some((start, end)) = range.split_once('-') else { return false };
            match (usize::from_str_radix(start, 16), usize::from_str_radix(end, 16)) {
                (Ok(start), Ok(end)) => start <= addr && addr < end,
                _ => false,
            }
        };
        let mut lines = smaps.lines().skip_while(|l| !holds(l));
        assert!(lines.next().is_some(), "mapping {addr:x} not found");
        let (mut flags, mut size_kb, mut locked_kb) = (String::new(), 0, 0);
        for line in lines {
            if let Some(v) = line.strip_prefix("VmFlags:") {
                flags = v.trim().to_owned();
                break;
            }
            let kb = |v: &str| {
                v.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .unwrap()
            };
            if let Some(v) = line.strip_prefix("Size:") {
                size_kb = kb(v);
            }
            if let Some(v) = line.strip_prefix("Locked:") {
                locked_kb = kb(v);
            }
        }
        (flags, size_kb, locked_kb)
    }

    #[test]
    fn secret_bytes_are_locked_and_not_dumped() {
        let mut secret = SecretBytes::with_capacity(100).unwrap();
        assert_eq!(secret.capacity() % page_size(), 0);
        assert!(secret.push(7));
        let (flags, size_kb, locked_kb) = smaps_entry(secret.as_slice().as_ptr() as usize);
        // The kernel may merge our mapping with a neighbour of identical flags; the whole
        // merged mapping is locked and undumpable all the same.
        assert!(size_kb * 1024 >= secret.capacity() as u64);
        assert_eq!(locked_kb, size_kb, "every page locked");
        let flags: Vec<&str> = flags.split_whitespace().collect();
        assert!(flags.contains(&"dd"), "MADV_DONTDUMP: {flags:?}");
        assert!(flags.contains(&"lo"), "mlock: {flags:?}");
        assert!(flags.contains(&"wf"), "MADV_WIPEONFORK: {flags:?}");
    }

    #[test]
    fn read_fills_and_bounds() {
        let mut secret = SecretBytes::with_capacity(10).unwrap();
        let data = vec![0x5a; secret.capacity()];
        assert!(secret.read_to_end_from(&mut &data[..]).unwrap());
        assert_eq!(secret.as_slice(), &data[..]);
        let mut small = SecretBytes::with_capacity(10).unwrap();
        let more = vec![1u8; small.capacity() + 1];
        assert!(
            !small.read_to_end_from(&mut &more[..]).unwrap(),
            "one byte over is too large"
        );
        assert!(!small.push(1), "full");
    }

    #[test]
    fn dropped_regions_are_reused_zeroed() {
        // Seven pages: a size no other test asks for, so the reserve's smallest fit is ours.
        let page = page_size();
        reserve(&[7 * page]).unwrap();
        let mut secret = SecretBytes::with_capacity(6 * page + 1).unwrap();
        assert_eq!(secret.capacity(), 7 * page, "the reserved region is taken");
        for _ in 0..100 {
            assert!(secret.push(0xA5));
        }
        let addr = secret.as_slice().as_ptr() as usize;
        drop(secret);
        let again = SecretBytes::with_capacity(6 * page + 1).unwrap();
        assert_eq!(again.as_slice().as_ptr() as usize, addr, "given back to the reserve and reused");
        assert!(again.region.bytes().iter().all(|b| *b == 0), "a reused region starts zeroed");
    }

    #[test]
    fn debug_never_shows_the_bytes() {
        let mut secret = SecretBytes::with_capacity(16).unwrap();
        for b in b"hunter2" {
            secret.push(*b);
        }
        let text = format!("{secret:?}");
        assert!(!text.contains("hunter2") && !text.contains("104"), "{text}");
        let locked = Locked::new([0x42u8; 32]).unwrap();
        let text = format!("{locked:?}");
        assert!(!text.contains("66"), "{text}");
        assert_eq!(locked[31], 0x42);
    }

    #[test]
    fn overwrite_replaces_the_value() {
        let mut locked = Locked::new((Some([9u8; 32]), 1u64)).unwrap();
        overwrite(&mut locked.0, None);
        assert_eq!(locked.0, None);
        overwrite(&mut *locked, (Some([3u8; 32]), 2));
        assert_eq!(*locked, (Some([3u8; 32]), 2));
    }
}
