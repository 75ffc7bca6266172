//! `pantera backup` and `pantera restore`: the operator's side of `ledger_svc::backup`.
//!
//! Why a file protocol and not a management endpoint: the management listener is plain HTTP
//! without authentication (loopback by default, docs/operations.md), so an endpoint that
//! copies the ledger to a path of the caller's choosing, or streams it, would hand every
//! local user the balances that the data directory's permissions keep from them. Reading the
//! data directory needs exactly the access the ledger's files already demand (the service's
//! user or root), and asks nothing of the running process, so it never pauses it: a backup
//! works the same against a serving appliance and a stopped one.
//!
//! Directories this creates are 0700 and files 0600, as in the data directory.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};
use ledger_svc::backup::{self, Manifest};
use ledger_svc::FileStorage;

/// Creates `dir` (0700) unless it exists; an existing directory must be empty (checked by
/// `ledger_svc::backup`, which never writes into one that holds files).
fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        anyhow::ensure!(dir.is_dir(), "{} exists and is not a directory", dir.display());
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("cannot create {}", dir.display()))
}

/// Makes every file `manifest` lists, and the manifest, readable by the owner only.
fn make_private(dir: &Path, manifest: &Manifest) -> Result<()> {
    let names = manifest.files.iter().map(|f| f.name.as_str()).chain([backup::MANIFEST_NAME]);
    for name in names {
        let path = dir.join(name);
        if path.exists() {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
                .with_context(|| format!("chmod 0600 {}", path.display()))?;
        }
    }
    Ok(())
}

/// Takes a backup of the ledger in `data_dir` (serving or not) into `to`, which must not
/// exist or be empty. Prints what it copied.
pub fn backup(data_dir: &Path, to: &Path) -> Result<Manifest> {
    anyhow::ensure!(data_dir.is_dir(), "the data directory {} does not exist", data_dir.display());
    create_private_dir(to)?;
    let started = Instant::now();
    let mut source = FileStorage::open(data_dir).with_context(|| format!("cannot open {}", data_dir.display()))?;
    let mut target = FileStorage::open(to).with_context(|| format!("cannot open {}", to.display()))?;
    let manifest = backup::take(&mut source, &mut target)
        .with_context(|| format!("backup of {} into {} failed", data_dir.display(), to.display()))?;
    make_private(to, &manifest)?;
    let bytes: u64 = manifest.files.iter().map(|f| f.size).sum();
    println!(
        "backup of {} in {}: batch {}, checkpoint {}, state hash {:016x}, {} files, {} bytes, {:.2} s (verified by recovery)",
        data_dir.display(),
        to.display(),
        manifest.sequence,
        manifest.checkpoint_sequence,
        manifest.state_hash,
        manifest.files.len(),
        bytes,
        started.elapsed().as_secs_f64()
    );
    Ok(manifest)
}

/// Restores the backup in `from` into the data directory `to`, which must not exist or be
/// empty, and verifies it (the manifest's sequence and state hash after recovery).
pub fn restore(from: &Path, to: &Path) -> Result<Manifest> {
    anyhow::ensure!(
        from.join(backup::MANIFEST_NAME).is_file(),
        "{} holds no {}: not a backup, or an incomplete one",
        from.display(),
        backup::MANIFEST_NAME
    );
    create_private_dir(to)?;
    let started = Instant::now();
    let mut source = FileStorage::open(from).with_context(|| format!("cannot open {}", from.display()))?;
    let mut target = FileStorage::open(to).with_context(|| format!("cannot open {}", to.display()))?;
    let manifest = backup::restore(&mut source, &mut target)
        .with_context(|| format!("restore of {} into {} failed", from.display(), to.display()))?;
    make_private(to, &manifest)?;
    println!(
        "restored {} into {}: batch {}, state hash {:016x} (verified), {:.2} s",
        from.display(),
        to.display(),
        manifest.sequence,
        manifest.state_hash,
        started.elapsed().as_secs_f64()
    );
    Ok(manifest)
}
