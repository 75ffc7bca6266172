//! Recovery from arbitrary data-directory contents: the superblock, checkpoints, WAL segments
//! and the clean-stop marker as bytes (`pantera_fuzz::decode_files`), opened by the ledger
//! exactly as `serve` opens it (`verify::recover_in_memory`, over the in-memory `SimStorage`).
//!
//! Recovery must return an error or a consistent ledger: never panic, and never allocate
//! without bound (libFuzzer's `-malloc_limit_mb`, set by `cargo xtask fuzz`, catches one
//! allocation sized from a corrupt length). A recovered ledger must also satisfy:
//! - a clean stop, then `verify` over the files: no finding (other than about the superblock
//!   or a checkpoint older than the newest, which recovery does not read), the same state hash;
//! - recovering those files again gives the same state hash (recovery is idempotent).
#![no_main]

use ledger_svc::verify::{self, recover_in_memory};
use ledger_svc::{SimStorage, Storage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut storage = SimStorage::new();
    for (name, bytes) in pantera_fuzz::decode_files(data) {
        if storage.append(&name, &bytes).is_err() {
            return;
        }
    }
    let Ok(ledger) = recover_in_memory(storage) else { return };
    let hash = ledger.state().state_hash();
    let mut stopped = ledger.close().expect("a recovered ledger stops cleanly in memory");

    let report = verify::verify(&mut stopped).expect("in-memory files are readable");
    // Findings that say nothing of recovery are left out: the superblock is checked by `serve`
    // before recovery (data_dir), not by `Ledger::open`; and recovery reads only the newest
    // checkpoint, so damage in an older one (obsolete, deleted at the next checkpoint) is
    // verify's to report, not recovery's to refuse.
    let checkpoint_of = |name: &str| ledger_svc::checkpoint::parse_checkpoint_name(name);
    let newest = stopped.list().expect("list").iter().filter_map(|n| checkpoint_of(n)).max();
    let findings: Vec<_> = report
        .findings
        .iter()
        .filter(|f| f.file != ledger_svc::data_dir::SUPERBLOCK_NAME)
        .filter(|f| checkpoint_of(&f.file).is_none_or(|s| Some(s) == newest))
        .collect();
    assert!(findings.is_empty(), "verify after recovery found {findings:?}");
    assert_eq!(report.state_hash, format!("{hash:016x}"), "verify replays to another state");

    let again = recover_in_memory(stopped).expect("the stopped ledger recovers");
    assert_eq!(again.state().state_hash(), hash, "a second recovery gives another state");
});
