//! The data directory through the `pantera` binary (no root, no network: `serve` checks its
//! data directory before it touches an interface): `serve` refuses a missing, unformatted,
//! foreign or group/other-readable directory with a message that says what to do; `format`
//! makes one (0700, superblock 0600) and refuses a directory that holds anything; `wal
//! repair` reports damage without changing a byte, and truncates only when asked, keeping
//! what it takes out.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use ledger_svc::*;

const PANTERA: &str = env!("CARGO_BIN_EXE_pantera");

fn run(args: &[&str]) -> Output {
    Command::new(PANTERA).args(args).env("RUST_LOG", "error").output().expect("run pantera")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A configuration whose interface does not exist: `serve` must refuse on the data directory
/// before it looks for the interface.
fn config(dir: &Path, data: &Path, cluster_id: u128) -> std::path::PathBuf {
    let text = format!(
        r#"
[dataplane]
interface = "nosuchif0"

[service]
address = "10.200.0.2"

[tls]
cert_chain = "{tls}/server.pem"
private_key = "{tls}/server.key"

[ledger]
data_dir = "{data}"
cluster_id = "{cluster_id}"

[management]
listen = "127.0.0.1:0"
"#,
        tls = dir.join("tls").display(),
        data = data.display(),
    );
    let path = dir.join("pantera.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

fn serve(config: &Path) -> Output {
    run(&["serve", "--config", &config.display().to_string()])
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("stat").permissions().mode() & 0o777
}

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("readdir")
        .map(|e| {
            let e = e.expect("entry");
            (e.file_name().to_string_lossy().into_owned(), std::fs::read(e.path()).expect("read"))
        })
        .collect()
}

#[test]
fn serve_refuses_a_missing_unformatted_foreign_or_readable_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let cfg = config(dir.path(), &data, 5);

    // Missing: refused, and not created.
    let out = serve(&cfg);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(e.contains("does not exist") && e.contains("pantera format"), "{e}");
    assert!(!data.exists(), "serve created the data directory");

    // Present but never formatted (empty, or an old WAL directory): refused, untouched.
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let out = serve(&cfg);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("not a formatted Pantera data directory"), "{}", stderr(&out));
    assert!(files(&data).is_empty());
    std::fs::write(data.join("wal-00000000000000000001.log"), b"old").expect("write");
    let out = serve(&cfg);
    assert!(stderr(&out).contains("holds WAL segments"), "{}", stderr(&out));
    // `format` refuses a directory that holds anything.
    let out = run(&["format", "--data-dir", &data.display().to_string(), "--cluster-id", "5"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("already holds"), "{}", stderr(&out));
    std::fs::remove_file(data.join("wal-00000000000000000001.log")).expect("rm");
    std::fs::remove_dir(&data).expect("rmdir");

    // `format` (from the configuration) makes it 0700 with a 0600 superblock.
    let out = run(&["format", "--config", &cfg.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("cluster 5"), "{}", stdout(&out));
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("superblock")), 0o600);
    let superblock = data_dir::check(&data, Some(5)).expect("formatted");
    assert_eq!((superblock.cluster_id, superblock.format_version), (5, 1));
    let out = run(&["format", "--config", &cfg.display().to_string()]);
    assert!(!out.status.success(), "formatted twice");

    // Formatted, right cluster: the data directory passes and serve goes on to the network
    // (and fails there: this test has no interface).
    let out = serve(&cfg);
    assert!(!out.status.success());
    let e = stderr(&out);
    assert!(!e.contains("ledger.data_dir"), "{e}");

    // Another cluster's directory: refused.
    let other = config(dir.path(), &data, 6);
    let e = stderr(&serve(&other));
    assert!(e.contains("belongs to cluster 5") && e.contains("cluster_id 6"), "{e}");
    let cfg = config(dir.path(), &data, 5);

    // Readable by group or other: refused, naming the path and the mode.
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let e = stderr(&serve(&cfg));
    assert!(e.contains("mode 0755") && e.contains(&data.display().to_string()), "{e}");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    std::fs::set_permissions(data.join("superblock"), std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let e = stderr(&serve(&cfg));
    assert!(e.contains("superblock has mode 0640"), "{e}");
    std::fs::set_permissions(data.join("superblock"), std::fs::Permissions::from_mode(0o600)).expect("chmod");

    // A damaged superblock: refused.
    let mut bytes = std::fs::read(data.join("superblock")).expect("read");
    bytes[20] ^= 1;
    std::fs::write(data.join("superblock"), &bytes).expect("write");
    let e = stderr(&serve(&cfg));
    assert!(e.contains("superblock") && e.contains("fails its checksum"), "{e}");
}

#[test]
fn wal_repair_reports_without_changing_and_truncates_only_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let out = run(&["format", "--data-dir", &data.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let (storage, _) = data_dir::open(&data, Some(0)).expect("open");
    let config = LedgerConfig { checkpoint_every_batches: 0, ..LedgerConfig::default() };
    let mut ledger = Ledger::open(storage, config.clone()).expect("ledger");
    let accounts = (1..=2).map(|id| Account { id, ledger: 1, code: 1, ..Default::default() }).collect();
    ledger.submit(1, &[Operation::CreateAccounts(accounts)]).expect("accounts");
    for batch in 1..=5u128 {
        let transfer = Transfer { id: batch, debit_account_id: 1, credit_account_id: 2, amount: 7, ledger: 1, code: 1, ..Default::default() };
        ledger.submit(1 + batch as u64, &[Operation::CreateTransfers(vec![transfer])]).expect("transfer");
    }
    let mut storage = ledger.close().expect("clean stop");
    let scan = repair::scan(&mut storage).expect("scan");
    let (segment, offset, header) = scan.records().nth(3).map(|(n, o, h)| (n.to_string(), o, h)).expect("record 4");
    drop(storage);
    // Every file the ledger made is 0600.
    for name in files(&data).keys() {
        assert_eq!(mode(&data.join(name)), 0o600, "{name}");
    }
    // A flipped bit in the body of record 4 (of 6) after a clean stop.
    let path = data.join(&segment);
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[offset as usize + 50] ^= 0x08;
    std::fs::write(&path, &bytes).expect("write");
    let before = files(&data);

    let out = run(&["wal", "repair", "--data-dir", &data.display().to_string()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains(&format!("{segment} byte offset {offset}: record {}", header.sequence)), "{text}");
    assert!(text.contains("REFUSES") && text.contains("nothing changed"), "{text}");
    assert_eq!(files(&data), before, "a report changed the files");

    let out = run(&["wal", "repair", "--data-dir", &data.display().to_string(), "--truncate-at-damage"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    assert!(text.contains("3 acknowledged batches"), "{text}");
    let after = files(&data);
    let kept = &after[&format!("{segment}.cut-{offset}")];
    assert_eq!(kept[..], before[&segment][offset as usize..]);
    assert!(after.contains_key("clean-stop.cut-0"));
    let ledger = Ledger::open(FileStorage::open(&data).expect("open"), config).expect("recovers after the repair");
    assert_eq!(ledger.sequence(), header.sequence - 1);
    assert_eq!(ledger.state().lookup_account(2).expect("account").credits_posted, 14);
}
