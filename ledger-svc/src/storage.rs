//! Storage behind a small trait, so the write-ahead log and checkpoints run on real files in
//! production and on a simulated disk with torn writes and lost unsynced bytes in tests
//! (TigerBeetle is generic over `Storage` for the same reason).
//!
//! The model is a flat directory of named files:
//! - `append` adds bytes at the end of a file, creating it if needed;
//! - `sync` makes a file's bytes *and its name* durable (fdatasync, plus a directory fsync the
//!   first time, since fdatasync alone does not persist a new directory entry);
//! - `rename` and `remove` are durable only after `sync_dir`;
//! - until synced, bytes may be lost or torn by a crash;
//! - `sync_handle` gives a one-use [`FileSync`] that makes the bytes appended so far (and the
//!   file's name) durable from another thread: the WAL syncer's, so the ledger thread writes
//!   the next batch meanwhile.
//!
//! `FileStorage` and `data_dir` (the superblock and the directory checks) are the only code of
//! this crate that does I/O.
//!
//! `reopen` gives a second handle on the same directory, for the checkpoint writer thread.
//! The ledger guarantees the two handles never touch the same file: the writer only creates
//! `checkpoint.tmp` and renames it, and the ledger's handle leaves that name alone while a
//! checkpoint is in flight.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// An operating error of the storage, with the call and the file it was about.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{call} {path}: {source}")]
    Io {
        call: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("file name {0:?} is not a plain file name")]
    BadName(String),
    #[error("file {0:?} not found")]
    NotFound(String),
    #[error("simulated storage fault ({0})")]
    Fault(&'static str),
}

/// A flat directory of named files. See the module documentation for the durability contract.
pub trait Storage {
    /// The names of all files, sorted.
    fn list(&mut self) -> Result<Vec<String>, StorageError>;
    /// The whole content of a file.
    fn read(&mut self, name: &str) -> Result<Vec<u8>, StorageError>;
    /// Appends `bytes` at the end of `name`, creating it if it does not exist.
    fn append(&mut self, name: &str, bytes: &[u8]) -> Result<(), StorageError>;
    /// Makes the file's content and name durable. An error here is fatal for a WAL: the
    /// kernel may have dropped the dirty pages, so retrying cannot prove anything.
    fn sync(&mut self, name: &str) -> Result<(), StorageError>;
    /// Shortens a file (durable after `sync`).
    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StorageError>;
    /// Atomically renames `from` to `to`, replacing `to` (durable after `sync_dir`).
    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError>;
    /// Removes a file (durable after `sync_dir`); removing a missing file is not an error.
    fn remove(&mut self, name: &str) -> Result<(), StorageError>;
    /// Makes renames and removals durable.
    fn sync_dir(&mut self) -> Result<(), StorageError>;
    /// A human-readable location of a file, for error messages.
    fn describe(&self, name: &str) -> String {
        name.to_string()
    }
    /// Drops any cached open handle of `name`, so that another handle's `remove` frees the
    /// file's blocks then rather than at this handle's last close.
    fn close(&mut self, name: &str) {
        let _ = name;
    }
    /// A handle that makes `name` durable from another thread (the WAL's syncer, so the
    /// ledger thread applies and writes the next batch while this one's fsync runs). It
    /// covers every byte appended to `name` before this call (fdatasync semantics: what is
    /// written later may or may not be covered, and is never claimed), and the file's name
    /// if it is new. `name` must exist.
    fn sync_handle(&mut self, name: &str) -> Result<Box<dyn FileSync>, StorageError>;
    /// A second, independent handle on the same directory (for a checkpoint writer on
    /// another thread). Files it creates, renames or syncs are the same files this handle
    /// sees; it has its own open-file cache.
    fn reopen(&self) -> Result<Self, StorageError>
    where
        Self: Sized;
}

/// Makes one file durable, on any thread ([`Storage::sync_handle`]). Used once: `sync`
/// consumes what it holds (a duplicated descriptor), so it is closed as soon as it is done.
pub trait FileSync: Send + std::fmt::Debug {
    /// Makes durable what the handle covers. An error is fatal for a WAL, as `Storage::sync`.
    fn sync(self: Box<Self>) -> Result<(), StorageError>;
}

fn check_name(name: &str) -> Result<(), StorageError> {
    if name.is_empty() || name.contains('/') || name.contains('\0') || name == "." || name == ".." {
        return Err(StorageError::BadName(name.to_string()));
    }
    Ok(())
}

/// The mode of every file `FileStorage` creates: the owner's only (balances are secrets).
pub const FILE_MODE: u32 = 0o600;
/// The mode of a data directory (`FileStorage::create`, `pantera format`).
pub const DIR_MODE: u32 = 0o700;

/// Real files in one directory, with fdatasync and directory fsync. Files are created with
/// mode `FILE_MODE`.
#[derive(Debug)]
pub struct FileStorage {
    dir: PathBuf,
    dir_handle: File,
    /// Open handles for appending, by name.
    files: HashMap<String, File>,
    /// Files created since the last directory fsync: their first `sync` also syncs the dir.
    created: HashSet<String>,
}

impl FileStorage {
    /// Opens the existing directory `dir`; never creates it (a mistyped path must not become
    /// an empty ledger). The server opens its data directory through `data_dir::open`,
    /// which checks the superblock and the modes first.
    pub fn open(dir: &Path) -> Result<Self, StorageError> {
        let io = |call, source| StorageError::Io {
            call,
            path: dir.to_path_buf(),
            source,
        };
        let dir_handle = File::open(dir).map_err(|e| io("open", e))?;
        Ok(FileStorage {
            dir: dir.to_path_buf(),
            dir_handle,
            files: HashMap::new(),
            created: HashSet::new(),
        })
    }

    /// Creates `dir` (and its missing parents) with mode `DIR_MODE`, then opens it. For
    /// tests and benchmarks; a server's directory is made by `data_dir::format`.
    pub fn create(dir: &Path) -> Result<Self, StorageError> {
        use std::os::unix::fs::DirBuilderExt;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|source| StorageError::Io {
                call: "mkdir",
                path: dir.to_path_buf(),
                source,
            })?;
        FileStorage::open(dir)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io_error(&self, call: &'static str, name: &str, source: io::Error) -> StorageError {
        StorageError::Io {
            call,
            path: self.dir.join(name),
            source,
        }
    }

    fn handle(&mut self, name: &str) -> Result<&mut File, StorageError> {
        check_name(name)?;
        if !self.files.contains_key(name) {
            let path = self.dir.join(name);
            let existed = path.exists();
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .mode(FILE_MODE)
                .open(&path)
                .map_err(|e| self.io_error("open", name, e))?;
            if !existed {
                self.created.insert(name.to_string());
            }
            self.files.insert(name.to_string(), file);
        }
        Ok(self.files.get_mut(name).expect("inserted above"))
    }
}

impl Storage for FileStorage {
    fn list(&mut self) -> Result<Vec<String>, StorageError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| self.io_error("readdir", "", e))?;
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| self.io_error("readdir", "", e))?;
            if entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn read(&mut self, name: &str) -> Result<Vec<u8>, StorageError> {
        check_name(name)?;
        let mut file = File::open(self.dir.join(name)).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                StorageError::NotFound(name.to_string())
            } else {
                self.io_error("open", name, e)
            }
        })?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| self.io_error("read", name, e))?;
        Ok(bytes)
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        let file = self.handle(name)?;
        let result = file.write_all(bytes);
        result.map_err(|e| self.io_error("write", name, e))
    }

    fn sync(&mut self, name: &str) -> Result<(), StorageError> {
        let file = self.handle(name)?;
        let result = file.sync_data();
        result.map_err(|e| self.io_error("fdatasync", name, e))?;
        if self.created.remove(name) {
            self.dir_handle
                .sync_all()
                .map_err(|e| self.io_error("fsync", "", e))?;
        }
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StorageError> {
        let file = self.handle(name)?;
        let result = file.set_len(len);
        result.map_err(|e| self.io_error("ftruncate", name, e))
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        check_name(from)?;
        check_name(to)?;
        self.files.remove(from);
        self.files.remove(to);
        fs::rename(self.dir.join(from), self.dir.join(to))
            .map_err(|e| self.io_error("rename", from, e))
    }

    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        check_name(name)?;
        self.files.remove(name);
        self.created.remove(name);
        match fs::remove_file(self.dir.join(name)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.io_error("unlink", name, e)),
        }
    }

    fn sync_dir(&mut self) -> Result<(), StorageError> {
        self.dir_handle
            .sync_all()
            .map_err(|e| self.io_error("fsync", "", e))?;
        self.created.clear();
        Ok(())
    }

    fn describe(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn close(&mut self, name: &str) {
        self.files.remove(name);
    }

    fn sync_handle(&mut self, name: &str) -> Result<Box<dyn FileSync>, StorageError> {
        let path = self.dir.join(name);
        let file = self.handle(name)?.try_clone();
        let file = file.map_err(|e| self.io_error("dup", name, e))?;
        // A new file's directory entry is made durable by the handle now, not by a later
        // `sync` here: the syncer's fsync of the directory follows its fdatasync.
        let dir = if self.created.remove(name) {
            Some(self.dir_handle.try_clone().map_err(|e| self.io_error("dup", "", e))?)
        } else {
            None
        };
        Ok(Box::new(FileSyncHandle { file, dir, path }))
    }

    fn reopen(&self) -> Result<Self, StorageError> {
        FileStorage::open(&self.dir)
    }
}

/// `FileStorage`'s [`FileSync`]: duplicated descriptors of the file (and of the directory when
/// the file is new), so the syncer thread opens nothing.
#[derive(Debug)]
struct FileSyncHandle {
    file: File,
    dir: Option<File>,
    path: PathBuf,
}

impl FileSync for FileSyncHandle {
    fn sync(self: Box<Self>) -> Result<(), StorageError> {
        let io = |call, path: &Path, source| StorageError::Io { call, path: path.to_path_buf(), source };
        self.file.sync_data().map_err(|e| io("fdatasync", &self.path, e))?;
        if let Some(dir) = &self.dir {
            let parent = self.path.parent().unwrap_or(Path::new(""));
            dir.sync_all().map_err(|e| io("fsync", parent, e))?;
        }
        Ok(())
    }
}

/// A small deterministic PRNG (SplitMix64) for the simulator, so a failing seed replays.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> Self {
        SimRng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
    pub fn chance(&mut self, numerator: u64, denominator: u64) -> bool {
        self.below(denominator) < numerator
    }
}

#[derive(Clone, Debug, Default)]
struct SimFile {
    /// What a read sees now.
    current: Vec<u8>,
    /// What survives a crash for sure (as of the last `sync`).
    durable: Vec<u8>,
}

/// The simulated disk, shared by every handle `reopen` makes.
#[derive(Clone, Debug, Default)]
struct SimDisk {
    files: Vec<SimFile>,
    /// The directory now: name -> file.
    dir: BTreeMap<String, usize>,
    /// The durable directory.
    dir_durable: BTreeMap<String, usize>,
    /// Faults injected on this disk by any handle (a crash starts a new disk, and a new count).
    faults_injected: DiskFaultCounts,
}

/// An in-memory disk for tests. Writes land in `current`; `sync` copies a file to `durable`.
/// `crash` builds the disk a restarted process would see: each file keeps its durable bytes
/// plus a random prefix of its unsynced bytes, with sectors of that prefix torn (zeroed or
/// garbage), and unsynced directory changes either all happen or none do. `fail_after`
/// makes every storage call fail after a number of calls, as if the process died mid-write.
///
/// `reopen` returns a handle on the same disk (with its own call count and fault injection),
/// as a checkpoint writer thread has; `clone` copies the disk (a snapshot).
#[doc(hidden)]
#[derive(Debug)]
pub struct SimStorage {
    disk: Arc<Mutex<SimDisk>>,
    /// Calls made through this handle.
    calls: u64,
    fail_after_calls: Option<u64>,
    /// Random faults of this handle (the simulator's), if any.
    faults: Option<DiskFaults>,
    /// Sector size for tearing.
    pub sector_bytes: usize,
}

/// Random faults a `SimStorage` handle injects, drawn from its own seeded PRNG so a
/// simulation replays them exactly. Rates are per million calls of the kind.
#[derive(Clone, Debug)]
pub struct DiskFaults {
    pub rng: SimRng,
    /// `sync` fails (the kernel reports EIO: the dirty pages may be gone).
    pub sync_failure_ppm: u64,
    /// `read` returns the file with one bit flipped (the disk holds it intact: a transient
    /// read error, or a latent sector error caught on the way up).
    pub read_corruption_ppm: u64,
    /// `append` fails with ENOSPC once the disk holds this many bytes.
    pub capacity_bytes: Option<u64>,
}

/// Faults a `SimStorage` handle injected, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskFaultCounts {
    pub sync_failures: u64,
    pub read_corruptions: u64,
    pub enospc: u64,
}

impl Default for SimStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl SimStorage {
    pub fn new() -> Self {
        Self::with_disk(SimDisk::default(), 512)
    }

    fn with_disk(disk: SimDisk, sector_bytes: usize) -> Self {
        SimStorage {
            disk: Arc::new(Mutex::new(disk)),
            calls: 0,
            fail_after_calls: None,
            faults: None,
            sector_bytes,
        }
    }

    /// The shared disk. A panic in another handle's holder leaves the disk consistent (every
    /// call below mutates it in one step), so a poisoned lock is taken over.
    fn disk(&self) -> MutexGuard<'_, SimDisk> {
        self.disk.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Every call through this handle after `calls` more calls fails with `StorageError::Fault`.
    pub fn fail_after(&mut self, calls: u64) {
        self.fail_after_calls = Some(self.calls + calls);
    }

    /// Injects random faults through this handle from now on (see [`DiskFaults`]).
    pub fn inject(&mut self, faults: DiskFaults) {
        self.faults = Some(faults);
    }

    /// The faults this handle injected so far.
    pub fn fault_counts(&self) -> DiskFaultCounts {
        self.disk().faults_injected
    }

    /// True when every byte of `name` as a read sees it would survive a crash (the file and
    /// its name are synced, nothing written since): what the simulator checks before a
    /// reply is released.
    pub fn is_durable(&self, name: &str) -> bool {
        let disk = self.disk();
        match disk.dir.get(name) {
            Some(&index) => disk.files[index].current == disk.files[index].durable && disk.dir_durable.get(name) == Some(&index),
            None => true,
        }
    }

    /// The bytes of `name` that would survive a crash now (0 when its name would not):
    /// the simulator checks a batch's record ends within them before its replies go.
    pub fn durable_len(&self, name: &str) -> usize {
        let disk = self.disk();
        match (disk.dir.get(name), disk.dir_durable.get(name)) {
            (Some(&index), Some(&durable)) if index == durable => disk.files[index].durable.len(),
            _ => 0,
        }
    }

    /// Bytes held by the files in the directory now.
    pub fn used_bytes(&self) -> u64 {
        let disk = self.disk();
        disk.dir.values().map(|&i| disk.files[i].current.len() as u64).sum()
    }

    /// Storage calls made through this handle so far.
    pub fn calls(&self) -> u64 {
        self.calls
    }

    fn tick(&mut self) -> Result<(), StorageError> {
        self.calls += 1;
        match self.fail_after_calls {
            Some(limit) if self.calls > limit => Err(StorageError::Fault("injected failure")),
            _ => Ok(()),
        }
    }

    /// The disk after a crash at this instant (see the type's documentation).
    pub fn crash(&self, rng: &mut SimRng) -> SimStorage {
        let disk = self.disk();
        let dir = if rng.chance(1, 2) {
            disk.dir.clone()
        } else {
            disk.dir_durable.clone()
        };
        let mut files = Vec::with_capacity(disk.files.len());
        for file in &disk.files {
            let mut survived = file.durable.clone();
            let extends = file.current.len() >= file.durable.len()
                && file.current[..file.durable.len()] == file.durable[..];
            if extends {
                let unsynced = &file.current[file.durable.len()..];
                let kept = if unsynced.is_empty() {
                    0
                } else {
                    rng.below(unsynced.len() as u64 + 1) as usize
                };
                let start = survived.len();
                survived.extend_from_slice(&unsynced[..kept]);
                // Tear some sectors of what reached the disk: each may hold zeros or garbage.
                let mut offset = start;
                while offset < survived.len() {
                    let end = (offset + self.sector_bytes).min(survived.len());
                    match rng.below(8) {
                        0 => survived[offset..end].fill(0),
                        1 => {
                            for byte in &mut survived[offset..end] {
                                *byte = rng.next_u64() as u8;
                            }
                        }
                        _ => {}
                    }
                    offset = end;
                }
            } else if rng.chance(1, 2) {
                // An unsynced truncation (or rewrite) either happened or did not.
                survived = file.current.clone();
            }
            files.push(SimFile {
                current: survived.clone(),
                durable: survived,
            });
        }
        let disk = SimDisk {
            files,
            dir_durable: dir.clone(),
            dir,
            faults_injected: DiskFaultCounts::default(),
        };
        Self::with_disk(disk, self.sector_bytes)
    }

    /// The disk as it is now, with every write and directory change made durable (a clean
    /// stop), and fault injection cleared.
    pub fn crash_clean(&self) -> SimStorage {
        let mut disk = self.disk().clone();
        for file in &mut disk.files {
            file.durable = file.current.clone();
        }
        disk.dir_durable = disk.dir.clone();
        Self::with_disk(disk, self.sector_bytes)
    }

    /// Flips one byte of a file's content (current and durable), for corruption tests.
    pub fn corrupt(&mut self, name: &str, offset: usize) -> Result<(), StorageError> {
        let mut disk = self.disk();
        let index = disk.file(name)?;
        let file = &mut disk.files[index];
        if let Some(byte) = file.current.get_mut(offset) {
            *byte ^= 0x5a;
        }
        if let Some(byte) = file.durable.get_mut(offset) {
            *byte ^= 0x5a;
        }
        Ok(())
    }

    /// Flips one bit of a file's content (current and durable).
    pub fn flip_bit(&mut self, name: &str, offset: usize, bit: u8) -> Result<(), StorageError> {
        let mut disk = self.disk();
        let index = disk.file(name)?;
        let file = &mut disk.files[index];
        if let Some(byte) = file.current.get_mut(offset) {
            *byte ^= 1 << (bit % 8);
        }
        if let Some(byte) = file.durable.get_mut(offset) {
            *byte ^= 1 << (bit % 8);
        }
        Ok(())
    }

    /// Every file's name and content as a read sees them now (to check that a refused
    /// recovery left the disk byte-identical).
    pub fn files(&self) -> BTreeMap<String, Vec<u8>> {
        let disk = self.disk();
        disk.dir
            .iter()
            .map(|(name, &index)| (name.clone(), disk.files[index].current.clone()))
            .collect()
    }

    /// The length of a file now.
    pub fn len_of(&self, name: &str) -> Option<usize> {
        let disk = self.disk();
        disk.dir.get(name).map(|&i| disk.files[i].current.len())
    }
}

/// `SimStorage`'s [`FileSync`]: when it runs, it makes durable exactly the bytes the file
/// held when the handle was made, no more (the least an fdatasync promises, so a caller that
/// claims a later write durable is caught), and the file's name.
#[derive(Debug)]
struct SimSync {
    disk: Arc<Mutex<SimDisk>>,
    name: String,
    index: usize,
    len: usize,
    fails: bool,
}

impl FileSync for SimSync {
    fn sync(self: Box<Self>) -> Result<(), StorageError> {
        let mut disk = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
        if self.fails {
            disk.faults_injected.sync_failures += 1;
            return Err(StorageError::Fault("fsync failed (EIO)"));
        }
        let file = &mut disk.files[self.index];
        let covered = self.len.min(file.current.len());
        if covered >= file.durable.len() && file.current[..file.durable.len()] == file.durable[..] {
            file.durable = file.current[..covered].to_vec();
        } else if covered < file.durable.len() {
            // Already durable past what this handle covers (a later sync ran first).
        } else {
            file.durable = file.current.clone();
        }
        // The name, unless the file was removed or renamed since (then it is not ours).
        if disk.dir.get(&self.name) == Some(&self.index) {
            disk.dir_durable.insert(self.name.clone(), self.index);
        }
        Ok(())
    }
}

impl SimDisk {
    fn file(&self, name: &str) -> Result<usize, StorageError> {
        self.dir
            .get(name)
            .copied()
            .ok_or_else(|| StorageError::NotFound(name.to_string()))
    }
}

impl Clone for SimStorage {
    /// A copy of the disk as it is now (current and durable bytes), independent of this one.
    fn clone(&self) -> Self {
        SimStorage {
            disk: Arc::new(Mutex::new(self.disk().clone())),
            calls: self.calls,
            fail_after_calls: self.fail_after_calls,
            faults: self.faults.clone(),
            sector_bytes: self.sector_bytes,
        }
    }
}

impl Storage for SimStorage {
    fn list(&mut self) -> Result<Vec<String>, StorageError> {
        self.tick()?;
        Ok(self.disk().dir.keys().cloned().collect())
    }

    fn read(&mut self, name: &str) -> Result<Vec<u8>, StorageError> {
        self.tick()?;
        let mut bytes = {
            let disk = self.disk();
            let index = disk.file(name)?;
            disk.files[index].current.clone()
        };
        if let Some(faults) = &mut self.faults {
            if !bytes.is_empty() && faults.rng.chance(faults.read_corruption_ppm, 1_000_000) {
                let offset = faults.rng.below(bytes.len() as u64) as usize;
                bytes[offset] ^= 1 << faults.rng.below(8);
                self.disk().faults_injected.read_corruptions += 1;
            }
        }
        Ok(bytes)
    }

    fn append(&mut self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        check_name(name)?;
        self.tick()?;
        if let Some(faults) = &mut self.faults {
            if let Some(capacity) = faults.capacity_bytes {
                let used = {
                    let disk = self.disk.lock().unwrap_or_else(PoisonError::into_inner);
                    disk.dir.values().map(|&i| disk.files[i].current.len() as u64).sum::<u64>()
                };
                if used + bytes.len() as u64 > capacity {
                    self.disk().faults_injected.enospc += 1;
                    return Err(StorageError::Fault("ENOSPC: no space left on the simulated disk"));
                }
            }
        }
        let mut disk = self.disk();
        let index = match disk.dir.get(name) {
            Some(&index) => index,
            None => {
                disk.files.push(SimFile::default());
                let index = disk.files.len() - 1;
                disk.dir.insert(name.to_string(), index);
                index
            }
        };
        disk.files[index].current.extend_from_slice(bytes);
        Ok(())
    }

    fn sync(&mut self, name: &str) -> Result<(), StorageError> {
        self.tick()?;
        if let Some(faults) = &mut self.faults {
            if faults.rng.chance(faults.sync_failure_ppm, 1_000_000) {
                self.disk().faults_injected.sync_failures += 1;
                return Err(StorageError::Fault("fsync failed (EIO)"));
            }
        }
        let mut disk = self.disk();
        let index = disk.file(name)?;
        let file = &mut disk.files[index];
        let extends = file.current.len() >= file.durable.len()
            && file.current[..file.durable.len()] == file.durable[..];
        if extends {
            let synced = file.durable.len();
            file.durable.extend_from_slice(&file.current[synced..]);
        } else {
            file.durable = file.current.clone();
        }
        disk.dir_durable.insert(name.to_string(), index);
        Ok(())
    }

    fn truncate(&mut self, name: &str, len: u64) -> Result<(), StorageError> {
        self.tick()?;
        let mut disk = self.disk();
        let index = disk.file(name)?;
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        disk.files[index].current.truncate(len);
        Ok(())
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<(), StorageError> {
        check_name(to)?;
        self.tick()?;
        let mut disk = self.disk();
        let index = disk.file(from)?;
        disk.dir.remove(from);
        disk.dir.insert(to.to_string(), index);
        Ok(())
    }

    fn remove(&mut self, name: &str) -> Result<(), StorageError> {
        self.tick()?;
        self.disk().dir.remove(name);
        Ok(())
    }

    fn sync_dir(&mut self) -> Result<(), StorageError> {
        self.tick()?;
        let mut disk = self.disk();
        disk.dir_durable = disk.dir.clone();
        Ok(())
    }

    fn sync_handle(&mut self, name: &str) -> Result<Box<dyn FileSync>, StorageError> {
        self.tick()?;
        // The fault is drawn now, on the caller's thread, so a simulation replays it.
        let fails = match &mut self.faults {
            Some(faults) => faults.rng.chance(faults.sync_failure_ppm, 1_000_000),
            None => false,
        };
        let disk = self.disk();
        let index = disk.file(name)?;
        let len = disk.files[index].current.len();
        drop(disk);
        Ok(Box::new(SimSync { disk: Arc::clone(&self.disk), name: name.to_string(), index, len, fails }))
    }

    fn reopen(&self) -> Result<Self, StorageError> {
        Ok(SimStorage {
            disk: Arc::clone(&self.disk),
            calls: 0,
            fail_after_calls: None,
            faults: None,
            sector_bytes: self.sector_bytes,
        })
    }
}
