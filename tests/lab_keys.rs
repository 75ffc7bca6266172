//! Key custody on the real appliance (issue 11, "Key custody"): while serving, the process's
//! memory is locked (`tls.lock_memory`, VmLck > 0) and the session-ticket keys sit in a region
//! of their own that is locked and left out of core dumps (`dd` in its VmFlags); the key
//! file's owner and mode are checked at start: 0644 refuses the start with a message naming the
//! file, root:<service group> 0640 starts.

mod common;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use nix::unistd::Pid;

/// `field` of /proc/PID/status, in kB.
fn status_kb(pid: Pid, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// One mapping of /proc/PID/smaps.
#[derive(Debug, Default)]
struct Mapping {
    /// Read only through `Debug`, in failure messages.
    #[allow(dead_code)]
    range: String,
    size_kb: u64,
    locked_kb: u64,
    flags: Vec<String>,
}

fn mappings(pid: Pid) -> Vec<Mapping> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).expect("/proc smaps");
    let kb = |v: &str| v.split_whitespace().next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let mut out: Vec<Mapping> = Vec::new();
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if first.contains('-') && first.chars().all(|c| c.is_ascii_hexdigit() || c == '-') {
            out.push(Mapping {
                range: first.to_owned(),
                ..Mapping::default()
            });
        } else if let Some(m) = out.last_mut() {
            if let Some(v) = line.strip_prefix("Size:") {
                m.size_kb = kb(v);
            } else if let Some(v) = line.strip_prefix("Locked:") {
                m.locked_kb = kb(v);
            } else if let Some(v) = line.strip_prefix("VmFlags:") {
                m.flags = v.split_whitespace().map(str::to_owned).collect();
            }
        }
    }
    out
}

/// The mappings that hold our secrets: locked in full and marked MADV_DONTDUMP.
fn secret_mappings(pid: Pid) -> Vec<Mapping> {
    mappings(pid)
        .into_iter()
        .filter(|m| m.flags.iter().any(|f| f == "dd") && m.size_kb > 0 && m.locked_kb == m.size_kb)
        .collect()
}

/// A full handshake and one request: the server has issued session tickets by then.
fn one_write(lab: &Lab, dir: &std::path::Path) {
    let config = tls_client_config(&dir.join("tls"), Some("client"));
    let addr = SocketAddr::from((lab.spec.service_ipv4, PORT));
    let config = Arc::clone(&config);
    in_netns(&lab.spec.netns, move || {
        let mut s = tls_connect(&config, addr).expect("connect");
        let (status, body) = request(&mut s, "POST", "/v1/accounts", r#"[{"id":"1","ledger":1,"code":1}]"#).expect("request");
        assert_eq!(status, 200, "{body}");
    })
    .join()
    .expect("client");
}

#[test]
fn memory_and_ticket_keys_are_locked_while_serving() {
    require_root();
    let lab = lab("keys-lock", 1);
    let mut figures = Vec::new();
    for lock_memory in [true, false] {
        let dir = tempfile::tempdir().expect("tempdir");
        let tls_toml = format!("lock_memory = {lock_memory}");
        let mut server = Server::start_with_tls(&lab, dir.path(), "ledger", &tls_toml, "", &[]);
        one_write(&lab, dir.path());
        let pid = server.pid();
        let (locked_kb, rss_kb) = (status_kb(pid, "VmLck"), status_kb(pid, "VmRSS"));
        let secrets = secret_mappings(pid);
        // VmLck counts whole locked mappings, faulted in or not (MCL_ONFAULT); the smaps
        // `Locked:` sum is what is resident and locked.
        let resident_locked_kb: u64 = mappings(pid).iter().map(|m| m.locked_kb).sum();
        println!(
            "lock_memory = {lock_memory}: VmLck {locked_kb} kB, locked and resident {resident_locked_kb} kB, VmRSS {rss_kb} kB, secret mappings {secrets:?}"
        );
        figures.push((locked_kb, rss_kb));
        assert!(locked_kb > 0, "lock_memory = {lock_memory}: VmLck is 0");
        // The ticket keys' page: locked in full and out of core dumps, whether or not the
        // rest of the process is locked.
        assert!(!secrets.is_empty(), "no locked MADV_DONTDUMP mapping: {:?}", mappings(pid));
        for m in &secrets {
            assert!(m.flags.iter().any(|f| f == "lo"), "{m:?}");
        }
        assert!(server.terminate().success(), "clean stop");
    }
    let ((all_locked_kb, _), (keys_only_kb, _)) = (figures[0], figures[1]);
    // With mlockall everything resident is locked; without, only the key pages are.
    assert!(all_locked_kb > keys_only_kb, "{figures:?}");
    assert!(keys_only_kb < 1024, "without lock_memory only key pages are locked: {figures:?}");
}

#[test]
fn the_key_file_owner_and_mode_are_checked_at_start() {
    require_root();
    let lab = lab("keys-mode", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&lab, dir.path(), "ledger", "");
    assert!(server.terminate().success(), "clean stop");
    let key = dir.path().join("tls/server.key");

    // Readable by everyone: refused, with the file, its owner, its mode and what is expected.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let (status, stderr) = server.spawn_refused(Duration::from_secs(30));
    assert!(!status.success(), "started with a 0644 key");
    for part in [
        key.display().to_string().as_str(),
        "0:0",
        "0644",
        "other users may read",
        "mode 0600 or 0400",
    ] {
        assert!(stderr.contains(part), "expected {part:?} in:\n{stderr}");
    }

    // root:<service group> 0640, the service user's group being that group: starts.
    const SERVICE_GID: u32 = 4343;
    std::os::unix::fs::chown(&key, Some(0), Some(SERVICE_GID)).expect("chown");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let mut config = std::fs::read_to_string(server.config_path()).expect("config");
    config.push_str(&format!("\n[sandbox]\nuser = \"0:{SERVICE_GID}\"\n"));
    std::fs::write(server.config_path(), config).expect("write config");
    server.spawn();
    one_write(&lab, dir.path());
    assert!(server.terminate().success(), "clean stop");
}
