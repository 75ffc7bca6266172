//! The data directory: a formatted directory that holds one ledger (superblock, WAL segments,
//! checkpoints, the clean-stop marker and any torn tails kept aside).
//!
//! `format` makes one; `open` is how a server gets its `FileStorage`, and it refuses a
//! missing directory, one never formatted, one of another cluster, and one that group or
//! other users could read, each with a message that says what to do. A mistyped path must
//! never become an empty ledger that answers "ready".
//!
//! The superblock (`superblock`, 64 bytes, all integers little-endian):
//!
//! ```text
//! offset size field
//!      0    4 checksum        CRC32C of bytes 4..64
//!      4    4 magic           "PSBK"
//!      8    4 format_version  1 (this layout, WAL records of version 2, checkpoints of
//!                             version 1)
//!     12    4 reserved        0
//!     16   16 cluster_id      chosen by the operator at format time; `serve` refuses a
//!                             directory whose cluster is not `ledger.cluster_id`
//!     32   16 ledger_id       random, drawn at format time: names this directory (and,
//!                             later, its backups) so a file from another ledger is told apart
//!     48    8 created_ns      wall clock at format time, nanoseconds since the Unix epoch
//!     56    8 reserved        0
//! ```
//!
//! Modes: the directory is created 0700 and every file 0600 (`storage::DIR_MODE`,
//! `storage::FILE_MODE`); `open` refuses any of them with a group or other permission bit.
//! This module and `storage.rs` are the crate's only I/O.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::storage::{FileStorage, StorageError, DIR_MODE, FILE_MODE};

pub const SUPERBLOCK_NAME: &str = "superblock";
const SUPERBLOCK_TEMP_NAME: &str = "superblock.tmp";
pub const SUPERBLOCK_SIZE: usize = 64;
const SUPERBLOCK_MAGIC: [u8; 4] = *b"PSBK";
/// The data directory format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// What the superblock says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Superblock {
    pub format_version: u32,
    pub cluster_id: u128,
    pub ledger_id: u128,
    pub created_ns: u64,
}

impl Superblock {
    pub fn encode(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut bytes = [0u8; SUPERBLOCK_SIZE];
        bytes[4..8].copy_from_slice(&SUPERBLOCK_MAGIC);
        bytes[8..12].copy_from_slice(&self.format_version.to_le_bytes());
        bytes[16..32].copy_from_slice(&self.cluster_id.to_le_bytes());
        bytes[32..48].copy_from_slice(&self.ledger_id.to_le_bytes());
        bytes[48..56].copy_from_slice(&self.created_ns.to_le_bytes());
        let checksum = crc32c::crc32c(&bytes[4..]);
        bytes[..4].copy_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// Parses a superblock; `Err` says what is wrong with it. The version is returned as
    /// found (the caller refuses one it does not read).
    pub fn parse(bytes: &[u8]) -> Result<Superblock, &'static str> {
        if bytes.len() != SUPERBLOCK_SIZE {
            return Err("has the wrong size");
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
        let u64_at = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        let u128_at =
            |at: usize| u128::from_le_bytes(bytes[at..at + 16].try_into().expect("16 bytes"));
        if crc32c::crc32c(&bytes[4..]) != u32_at(0) {
            return Err("fails its checksum");
        }
        if bytes[4..8] != SUPERBLOCK_MAGIC {
            return Err("has the wrong magic");
        }
        Ok(Superblock {
            format_version: u32_at(8),
            cluster_id: u128_at(16),
            ledger_id: u128_at(32),
            created_ns: u64_at(48),
        })
    }
}

/// Why a data directory cannot be formatted or opened. Each message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("data directory {0} does not exist: create it with `pantera format` (docs/operations.md); serve never creates one, so a mistyped path cannot start an empty ledger")]
    Missing(PathBuf),
    #[error("{0} is not a directory")]
    NotADirectory(PathBuf),
    #[error("{0} is not a formatted Pantera data directory (no superblock){1}: format a new directory with `pantera format`")]
    Unformatted(PathBuf, &'static str),
    #[error("cannot format {0}: it already holds {1} (format only a new or empty directory)")]
    NotEmpty(PathBuf, String),
    #[error("the superblock {0} {1}: the data directory is damaged (restore it from a backup)")]
    SuperblockCorrupt(PathBuf, &'static str),
    #[error(
        "the data directory {0} has format version {1}; this build reads version {FORMAT_VERSION}"
    )]
    Version(PathBuf, u32),
    #[error("the data directory {dir} belongs to cluster {found}, not to the configured ledger.cluster_id {expected}: refusing a foreign ledger")]
    ForeignCluster {
        dir: PathBuf,
        found: u128,
        expected: u128,
    },
    #[error("{path} has mode {mode:04o}: group or other users could read the ledger; make it {want:04o} (`chmod {want:o} {path}`) and check who else could have read it")]
    Mode { path: PathBuf, mode: u32, want: u32 },
    #[error("{call} {path}: {source}")]
    Io {
        call: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Storage(#[from] StorageError),
}

fn io<'a>(call: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> DataDirError + 'a {
    move |source| DataDirError::Io {
        call,
        path: path.to_path_buf(),
        source,
    }
}

/// A random ledger id (128 bits from std's `RandomState`, which getrandom(2) seeds).
pub fn random_ledger_id() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut id = 0u128;
    for i in 0..2u64 {
        let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
        hasher.write_u64(i);
        id = (id << 64) | u128::from(hasher.finish());
    }
    id
}

/// Formats `dir`: creates it (mode 0700; missing parents too) or takes an existing empty
/// one (set to 0700), and writes the superblock (0600) durably: `superblock.tmp`, fsync,
/// rename, fsync of the directory and of its parent. Refuses a directory that holds
/// anything.
pub fn format(
    dir: &Path,
    cluster_id: u128,
    ledger_id: u128,
    created_ns: u64,
) -> Result<Superblock, DataDirError> {
    match fs::symlink_metadata(dir) {
        Ok(meta) if !meta.is_dir() => return Err(DataDirError::NotADirectory(dir.to_path_buf())),
        Ok(_) => {
            let mut entries = fs::read_dir(dir).map_err(io("readdir", dir))?;
            if let Some(entry) = entries.next() {
                let entry = entry.map_err(io("readdir", dir))?;
                return Err(DataDirError::NotEmpty(
                    dir.to_path_buf(),
                    entry.file_name().to_string_lossy().into_owned(),
                ));
            }
            fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
                .map_err(io("chmod", dir))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)
                .map_err(io("mkdir", dir))?;
            // The umask may only have removed bits; make it exactly 0700.
            fs::set_permissions(dir, fs::Permissions::from_mode(DIR_MODE))
                .map_err(io("chmod", dir))?;
        }
        Err(e) => return Err(io("stat", dir)(e)),
    }
    let superblock = Superblock {
        format_version: FORMAT_VERSION,
        cluster_id,
        ledger_id,
        created_ns,
    };
    let temp = dir.join(SUPERBLOCK_TEMP_NAME);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .open(&temp)
        .map_err(io("open", &temp))?;
    file.write_all(&superblock.encode())
        .map_err(io("write", &temp))?;
    file.sync_all().map_err(io("fsync", &temp))?;
    drop(file);
    let path = dir.join(SUPERBLOCK_NAME);
    fs::rename(&temp, &path).map_err(io("rename", &temp))?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", parent))?;
    }
    Ok(superblock)
}

/// Refuses `path` if group or other have any permission on it.
fn check_mode(path: &Path, meta: &fs::Metadata, want: u32) -> Result<(), DataDirError> {
    let mode = meta.mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(DataDirError::Mode {
            path: path.to_path_buf(),
            mode,
            want,
        });
    }
    Ok(())
}

/// Reads and checks the superblock of `dir` (exists, is a directory, formatted, readable
/// version, and of `cluster_id` when given) and the modes of the directory and of every
/// file in it. No file is created or changed.
pub fn check(dir: &Path, cluster_id: Option<u128>) -> Result<Superblock, DataDirError> {
    let meta = match fs::metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(DataDirError::Missing(dir.to_path_buf()))
        }
        Err(e) => return Err(io("stat", dir)(e)),
    };
    if !meta.is_dir() {
        return Err(DataDirError::NotADirectory(dir.to_path_buf()));
    }
    let path = dir.join(SUPERBLOCK_NAME);
    let bytes = match fs::read(&path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let holds_wal = fs::read_dir(dir)
                .map_err(io("readdir", dir))?
                .filter_map(Result::ok)
                .any(|e| e.file_name().to_string_lossy().starts_with("wal-"));
            let note = if holds_wal {
                ", though it holds WAL segments: a WAL directory from before `pantera format`, or a damaged one"
            } else {
                ""
            };
            return Err(DataDirError::Unformatted(dir.to_path_buf(), note));
        }
        Err(e) => return Err(io("read", &path)(e)),
    };
    let superblock = Superblock::parse(&bytes)
        .map_err(|why| DataDirError::SuperblockCorrupt(path.clone(), why))?;
    if superblock.format_version != FORMAT_VERSION {
        return Err(DataDirError::Version(
            dir.to_path_buf(),
            superblock.format_version,
        ));
    }
    if let Some(expected) = cluster_id {
        if superblock.cluster_id != expected {
            return Err(DataDirError::ForeignCluster {
                dir: dir.to_path_buf(),
                found: superblock.cluster_id,
                expected,
            });
        }
    }
    check_mode(dir, &meta, DIR_MODE)?;
    for entry in fs::read_dir(dir).map_err(io("readdir", dir))? {
        let entry = entry.map_err(io("readdir", dir))?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path).map_err(io("stat", &path))?;
        let want = if meta.is_dir() { DIR_MODE } else { FILE_MODE };
        check_mode(&path, &meta, want)?;
    }
    Ok(superblock)
}

/// `check`, then the directory as a `FileStorage` for `Ledger::open`.
pub fn open(
    dir: &Path,
    cluster_id: Option<u128>,
) -> Result<(FileStorage, Superblock), DataDirError> {
    let superblock = check(dir, cluster_id)?;
    Ok((FileStorage::open(dir)?, superblock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn superblock_golden_bytes_and_damage() {
        let sb = Superblock {
            format_version: 1,
            cluster_id: 7,
            ledger_id: 0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10,
            created_ns: 1_700_000_000_000_000_000,
        };
        let bytes = sb.encode();
        assert_eq!(&bytes[4..8], b"PSBK");
        assert_eq!(&bytes[8..12], &1u32.to_le_bytes());
        assert_eq!(&bytes[12..16], &[0; 4]);
        assert_eq!(&bytes[16..32], &7u128.to_le_bytes());
        assert_eq!(&bytes[32..48], &sb.ledger_id.to_le_bytes());
        assert_eq!(&bytes[48..56], &sb.created_ns.to_le_bytes());
        assert_eq!(&bytes[56..64], &[0; 8]);
        assert_eq!(Superblock::parse(&bytes), Ok(sb));
        for at in 0..SUPERBLOCK_SIZE {
            let mut damaged = bytes;
            damaged[at] ^= 0x04;
            assert!(Superblock::parse(&damaged).is_err(), "flip at {at}");
        }
        assert!(Superblock::parse(&bytes[..63]).is_err());
    }

    #[test]
    fn random_ledger_ids_differ() {
        assert_ne!(random_ledger_id(), random_ledger_id());
    }
}
