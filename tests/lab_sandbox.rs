//! The vault on the real appliance (docs/security.md, "Privileges after start-up"): while it
//! serves, no thread holds a capability, every thread has no_new_privs, no core file can be
//! written; requests, a SIGHUP reload that rewrites the XDP maps, the metrics and the stop
//! all work without privileges; with `sandbox.user` the process runs as that user and is not
//! dumpable.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

const TWO_ACCOUNTS: &str = r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#;

fn service(lab: &Lab) -> SocketAddr {
    SocketAddr::from((lab.spec.service_ipv4, PORT))
}

/// One field of a /proc status file (`Name:\tvalue`), trimmed.
fn field<'a>(status: &'a str, name: &str) -> &'a str {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in:\n{status}"))
        .trim()
}

/// Every thread of `pid`: its name and its /proc status.
fn threads(pid: Pid) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).expect("/proc/PID/task") {
        let task = entry.expect("task").path();
        // A thread may end between the listing and the read (a management handler does not);
        // the ones read are enough as long as every kind is among them (asserted below).
        let (Ok(comm), Ok(status)) = (
            std::fs::read_to_string(task.join("comm")),
            std::fs::read_to_string(task.join("status")),
        ) else {
            continue;
        };
        found.push((comm.trim().to_owned(), status));
    }
    found
}

/// Pipeline depth 2, so the WAL syncer thread runs beside the others (at the default, 1, the
/// ledger thread syncs and no syncer is started).
fn with_syncer_thread(config: String) -> String {
    config.replacen("[ledger]\n", "[ledger]\npipeline_depth = 2\n", 1)
}

/// What every thread of a serving appliance shows, whatever its user.
fn assert_every_thread_confined(pid: Pid) {
    let threads = threads(pid);
    let names: Vec<&str> = threads.iter().map(|(n, _)| n.as_str()).collect();
    for kind in [
        "pantera",
        "worker-q0",
        "ledger",
        "pantera-ckpt",
        "wal-sync",
        "audit",
        "management",
        "management-0",
    ] {
        assert!(names.contains(&kind), "no {kind} thread among {names:?}");
    }
    for (name, status) in &threads {
        for set in ["CapEff", "CapPrm", "CapAmb", "CapInh"] {
            assert_eq!(
                field(status, set),
                "0000000000000000",
                "{set} of thread {name}"
            );
        }
        assert_eq!(
            field(status, "NoNewPrivs"),
            "1",
            "NoNewPrivs of thread {name}"
        );
        assert_seccomp_filtered(name, status);
    }
    println!(
        "{} threads, every one without capabilities and with no_new_privs: {names:?}",
        threads.len()
    );
}

/// `Seccomp: 2` (a filter) in `status`.
fn assert_seccomp_filtered(name: &str, status: &str) {
    assert_eq!(field(status, "Seccomp"), "2", "Seccomp of thread {name}");
}

/// `Max core file size` of /proc/PID/limits: soft and hard.
fn core_limit(pid: Pid) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("/proc/PID/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core line");
    let mut values = line["Max core file size".len()..].split_whitespace();
    (
        values.next().expect("soft").to_owned(),
        values.next().expect("hard").to_owned(),
    )
}

/// The Landlock ABI of this kernel (0: none), as the appliance should report it.
fn kernel_landlock_abi() -> i64 {
    // SAFETY: the ABI query: no ruleset, size 0, flag LANDLOCK_CREATE_RULESET_VERSION.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32,
        )
    };
    rc.max(0)
}

/// POST two accounts then GET one, over one mTLS connection from `local`: the statuses.
fn write_and_read(lab: &Lab, tls: &Path, local: Ipv4Addr) -> Result<(u16, u16), String> {
    let config = tls_client_config(tls, Some("client"));
    let to = service(lab);
    in_netns(&lab.spec.netns, move || {
        let tcp = connect_from(local, to).map_err(|e| format!("connect: {e}"))?;
        tcp.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::IpAddress(to.ip().into());
        let conn =
            rustls::ClientConnection::new(Arc::clone(&config), name).map_err(|e| e.to_string())?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        let (created, body) = request(&mut s, "POST", "/v1/accounts", TWO_ACCOUNTS)
            .map_err(|e| format!("POST: {e}"))?;
        let created = if created == 200 {
            created
        } else {
            return Err(format!("POST {created}: {body}"));
        };
        let (read, _) =
            request(&mut s, "GET", "/v1/accounts/1", "").map_err(|e| format!("GET: {e}"))?;
        Ok((created, read))
    })
    .join()
    .expect("client thread")
}

/// One GET over a new connection from `local`.
fn get_from(lab: &Lab, tls: &Path, local: Ipv4Addr) -> Result<u16, String> {
    let config = tls_client_config(tls, Some("client"));
    let to = service(lab);
    in_netns(&lab.spec.netns, move || one_request(&config, local, to))
        .join()
        .expect("client thread")
}

#[test]
fn serving_threads_hold_no_capability_and_reload_metrics_and_stop_still_work() {
    let lab = lab("sandbox", 1);
    let allowed = add_client_address(&lab, 4);
    let stranger = lab.spec.peer_ipv4;
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = dir.path().join("tls");
    let mut server = Server::start_logged_edited(&lab, dir.path(), "ledger", "", with_syncer_thread);
    let pid = server.pid();

    assert_every_thread_confined(pid);
    assert_eq!(
        core_limit(pid),
        ("0".to_owned(), "0".to_owned()),
        "RLIMIT_CORE"
    );
    assert_eq!(server.metric_sum("pantera_sandbox_enabled", &[]), 1.0);
    assert_eq!(
        server.metric_sum("pantera_sandbox_landlock_abi", &[]) as i64,
        kernel_landlock_abi().min(8)
    );

    // Requests: the WAL is written (data directory) and the audit log too.
    assert_eq!(
        write_and_read(&lab, &tls, stranger),
        Ok((200, 200)),
        "{}",
        server.log_text()
    );
    // The XDP counters are read after the drop (bpf map lookups on the fd held): the
    // redirected frames of the request show.
    assert!(
        server.wait_metric("pantera_xdp_packets_total", &["action=\"redirect\""], 1.0) >= 1.0,
        "{}",
        server.log_text()
    );
    // The process metrics (/proc/self) still read.
    assert!(
        server.metric_sum("process_open_fds", &[]) > 0.0,
        "{}",
        server.metrics()
    );
    assert!(server.metric_sum("process_resident_memory_bytes", &[]) > 0.0);

    // A SIGHUP reload reads the configuration and the TLS files again and rewrites the edge
    // maps (bpf map updates, no capability).
    let open = std::fs::read_to_string(server.config_path()).expect("read config");
    std::fs::write(
        server.config_path(),
        format!("{open}\n[edge]\nallow_sources = [\"{allowed}/32\"]\n"),
    )
    .expect("write config");
    kill(pid, Signal::SIGHUP).expect("kill -HUP");
    assert_eq!(
        server.wait_metric("pantera_config_reloads_total", &["result=\"ok\""], 1.0),
        1.0,
        "{}",
        server.log_text()
    );
    assert_eq!(
        get_from(&lab, &tls, allowed),
        Ok(200),
        "the allowed source is served"
    );
    let refused = get_from(&lab, &tls, stranger);
    assert!(
        matches!(&refused, Err(e) if e.starts_with("connect:")),
        "the other source got {refused:?}"
    );
    assert_every_thread_confined(pid);

    // The stop: clean, and the program is detached (the bpf_link closed, no capability).
    let interface = server.interface.clone();
    let status = server.terminate();
    assert!(
        status.success(),
        "exit {status}: {}",
        std::fs::read_to_string(dir.path().join("pantera.log")).unwrap_or_default()
    );
    assert!(
        !xdp_still_attached(&interface),
        "XDP still attached to {interface} after the stop"
    );
    let log = std::fs::read_to_string(dir.path().join("pantera.log")).expect("log");
    assert!(log.contains("sandbox: running as uid 0"), "{log}");
    assert!(
        !log.contains("Permission denied"),
        "something was refused while serving:\n{log}"
    );
}

/// The uid and gid of `nobody` (Debian's user database), the service user of these tests.
const NOBODY: u32 = 65534;

#[test]
fn with_sandbox_user_the_process_serves_as_that_user_and_is_not_dumpable() {
    let lab = lab("sandboxu", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = dir.path().join("tls");
    // A first start as root writes the configuration, certificates and data directory. At
    // the default pipeline depth (1) the ledger thread runs the WAL's fsyncs within its own
    // filter (a write is answered, so they were allowed) and no syncer thread is started.
    let mut server = Server::start_logged(&lab, dir.path(), "ledger", "");
    assert_eq!(write_and_read(&lab, &tls, lab.spec.peer_ipv4), Ok((200, 200)));
    let names: Vec<String> = threads(server.pid()).into_iter().map(|(name, _)| name).collect();
    assert!(names.iter().any(|n| n == "ledger") && !names.iter().any(|n| n == "wal-sync"), "{names:?}");
    assert!(server.terminate().success());
    // Then what an operator does for a service user: the files become its own, and the
    // configuration names it (a name: the user database is read before the drop, and a reload
    // after it must not need it). A checkpoint after every batch and a small audit log make
    // the checkpoint writer and the audit rotation create files as that user; pipeline depth
    // 2 starts the WAL syncer thread (depth 1, the default, syncs on the ledger thread).
    let config = std::fs::read_to_string(server.config_path()).expect("read config");
    let config = config.replacen("[ledger]\n", "[ledger]\ncheckpoint_every_batches = 1\npipeline_depth = 2\n", 1)
        + "\n[sandbox]\nuser = \"nobody\"\n\n[audit]\nmax_bytes = 4096\n";
    std::fs::write(server.config_path(), config).expect("write config");
    let chown = Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(dir.path())
        .status()
        .expect("chown");
    assert!(chown.success());
    server.spawn();
    let pid = server.pid();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let ids = format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}");
    assert_eq!(
        field(&status, "Uid"),
        ids,
        "real, effective, saved, filesystem uid"
    );
    assert_eq!(field(&status, "Gid"), ids);
    assert_eq!(
        field(&status, "Groups"),
        NOBODY.to_string(),
        "supplementary groups"
    );
    // Not dumpable: /proc/PID stays owned by root although the process runs as nobody.
    let owner = std::fs::metadata(format!("/proc/{pid}/status"))
        .expect("stat /proc/PID/status")
        .uid();
    assert_eq!(
        owner, 0,
        "/proc/PID/status of a non-dumpable process is root's"
    );
    assert_every_thread_confined(pid);

    assert_eq!(
        write_and_read(&lab, &tls, lab.spec.peer_ipv4),
        Ok((200, 200)),
        "{}",
        server.log_text()
    );
    // Enough audited writes to rotate the 4 KiB audit log, each batch checkpointed.
    for id in 0..20u32 {
        let body = format!(r#"[{{"id":"{}","ledger":1,"code":1}}]"#, 100 + id);
        let config = tls_client_config(&tls, Some("client"));
        let to = service(&lab);
        let status = in_netns(&lab.spec.netns, move || {
            let mut s = tls_connect(&config, to).map_err(|e| e.to_string())?;
            request(&mut s, "POST", "/v1/accounts", &body)
                .map(|(status, _)| status)
                .map_err(|e| e.to_string())
        })
        .join()
        .expect("client thread");
        assert_eq!(status, Ok(200), "{}", server.log_text());
    }
    assert!(
        server.wait_metric("pantera_ledger_checkpoints_total", &[], 1.0) >= 1.0,
        "{}",
        server.log_text()
    );
    assert!(
        server.wait_metric("pantera_audit_rotations_total", &[], 1.0) >= 1.0,
        "{}",
        server.log_text()
    );
    assert_eq!(
        server.metric_sum("pantera_audit_errors_total", &[]),
        0.0,
        "{}",
        server.log_text()
    );
    // A reload after the switch: the user database is out of reach now and not needed.
    kill(pid, Signal::SIGHUP).expect("kill -HUP");
    assert_eq!(
        server.wait_metric("pantera_config_reloads_total", &["result=\"ok\""], 1.0),
        1.0,
        "{}",
        server.log_text()
    );
    let owner = std::fs::metadata(dir.path().join("audit.log"))
        .expect("audit.log")
        .uid();
    assert_eq!(
        owner, NOBODY,
        "the audit log after a rotation is the service user's"
    );
    let status = server.terminate();
    assert!(
        status.success(),
        "exit {status}: {}",
        server_log(dir.path())
    );
    assert!(
        server_log(dir.path()).contains(&format!("sandbox: running as uid {NOBODY} gid {NOBODY}"))
    );
}

fn server_log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("pantera.log")).unwrap_or_default()
}

/// The capabilities docs/pantera.service grants (`AmbientCapabilities=`).
fn unit_ambient_capabilities() -> Vec<String> {
    const UNIT: &str = include_str!("../docs/pantera.service");
    let line = UNIT
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities= in the unit");
    line.split_whitespace()
        .map(|c| c.strip_prefix("CAP_").expect("CAP_ name").to_lowercase())
        .collect()
}

/// The start the systemd unit makes: a user without privileges holding only the unit's
/// ambient capabilities, no_new_privs set before the exec (`NoNewPrivileges=yes`). Start-up works with exactly those, and the drop clears them (the
/// ambient set too) in every thread. (RLIMIT_MEMLOCK stays the test's: CAP_IPC_LOCK covers
/// the UMEM, as it does under the unit with `LimitMEMLOCK=infinity` too.)
#[test]
fn started_as_a_user_with_only_the_units_ambient_capabilities_it_serves_and_clears_them() {
    let lab = lab("sandboxa", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let tls = dir.path().join("tls");
    // Writes the configuration, certificates and data directory, and proves they serve.
    let mut first = Server::start_logged_edited(&lab, dir.path(), "ledger", "", with_syncer_thread);
    assert!(first.terminate().success());
    let (config_path, management) = (first.config_path().to_owned(), first.management);
    drop(first);
    let chown = Command::new("chown")
        .args(["-R", &format!("{NOBODY}:{NOBODY}")])
        .arg(dir.path())
        .status()
        .expect("chown");
    assert!(chown.success());

    let caps = unit_ambient_capabilities();
    let plus = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    println!("ambient capabilities of the unit: {caps:?}");
    let log_path = dir.path().join("pantera-user.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let mut child = Command::new("setpriv")
        .args([
            "--reuid",
            &NOBODY.to_string(),
            "--regid",
            &NOBODY.to_string(),
            "--clear-groups",
            "--no-new-privs",
        ])
        .args(["--inh-caps", &plus, "--ambient-caps", &plus, "--"])
        .arg(PANTERA)
        .args(["serve", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start pantera through setpriv");
    let pid = Pid::from_raw(child.id() as i32);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !http_get(management, "/readyz").is_ok_and(|(s, _)| s == 200) {
        if let Some(status) = child.try_wait().expect("try_wait") {
            panic!(
                "pantera exited ({status}) before it was ready:\n{}",
                server_log_named(&log_path)
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not ready:\n{}",
            server_log_named(&log_path)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    assert_eq!(
        field(&status, "Uid"),
        format!("{NOBODY}\t{NOBODY}\t{NOBODY}\t{NOBODY}")
    );
    assert_every_thread_confined(pid);
    assert_eq!(
        write_and_read(&lab, &tls, lab.spec.peer_ipv4),
        Ok((200, 200)),
        "{}",
        server_log_named(&log_path)
    );
    kill(pid, Signal::SIGTERM).expect("kill -TERM");
    let exit = wait_exit(&mut child, std::time::Duration::from_secs(20)).unwrap_or_else(|| {
        let _ = child.kill();
        panic!("no stop within 20 s")
    });
    assert!(
        exit.success(),
        "exit {exit}:\n{}",
        server_log_named(&log_path)
    );
    assert!(
        !xdp_still_attached(&lab.spec.host_if),
        "XDP still attached after the stop"
    );
}

fn server_log_named(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}
