//! Root lab tests of the system-call allowlists (docs/security.md "System-call allowlists"):
//! from every kind of thread, a forbidden call (execve; an open outside the data directory)
//! triggered by the test-only switch `forbidden-syscall:<kind>:<call>` stops the process with
//! the sandbox's exit status and a line naming the thread kind and the call; a normal serving
//! run (requests, SIGHUP, /metrics, a stop) has every thread confined and exits 0.
//!
//! `measure_syscalls` (ignored; run it by name) regenerates the measured lists: the appliance
//! under `strace -f` with `PANTERA_FAULT=seccomp-measure`, a workload, and a table per kind.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The exit status of a process the sandbox stopped (src/sandbox/seccomp.rs).
const EXIT_SANDBOX: i32 = 72;
/// How long a triggered violation may take to end the process.
const STOP_WAIT: Duration = Duration::from_secs(20);

/// An audit log that rotates within a few records: the rotation's calls are exercised too.
const AUDIT_ROTATES: &str = "[audit]\nmax_bytes = 4096\n";

const TWO_ACCOUNTS: &str = r#"[{"id":"1","ledger":1,"code":1},{"id":"2","ledger":1,"code":1}]"#;

fn service(lab: &Lab) -> SocketAddr {
    SocketAddr::from((lab.spec.service_ipv4, PORT))
}

/// Writes from the client namespace: accounts, then `transfers` transfers (one batch each).
/// Errors are returned, not asserted: a test that stops the server expects them.
fn writes(
    lab: &Lab,
    tls: &std::path::Path,
    transfers: u64,
) -> thread::JoinHandle<Result<(), String>> {
    let (client, addr) = (tls_client_config(tls, Some("client")), service(lab));
    in_netns(&lab.spec.netns, move || {
        let mut s = tls_connect(&client, addr).map_err(|e| format!("connect: {e}"))?;
        let (status, body) = request(&mut s, "POST", "/v1/accounts", TWO_ACCOUNTS)
            .map_err(|e| format!("accounts: {e}"))?;
        if status != 200 {
            return Err(format!("accounts: {status} {body}"));
        }
        for id in 0..transfers {
            let body = format!(
                r#"[{{"id":"{}","debit_account_id":"1","credit_account_id":"2","amount":"1","ledger":1,"code":1}}]"#,
                100 + id
            );
            let (status, reply) = request(&mut s, "POST", "/v1/transfers", &body)
                .map_err(|e| format!("transfer: {e}"))?;
            if status != 200 {
                return Err(format!("transfer: {status} {reply}"));
            }
        }
        let (status, _) =
            request(&mut s, "GET", "/v1/accounts/1", "").map_err(|e| format!("lookup: {e}"))?;
        if status != 200 {
            return Err(format!("lookup: {status}"));
        }
        Ok(())
    })
}

/// Makes the ledger write a checkpoint every other batch (the default is far apart) and sync
/// the WAL on its syncer thread (pipeline depth 2; the default, 1, syncs on the ledger thread):
/// every kind of thread runs.
fn every_thread_busy(config: &std::path::Path) {
    let text = std::fs::read_to_string(config).expect("read config");
    let text = text.replacen(
        "[ledger]\n",
        "[ledger]\ncheckpoint_every_batches = 2\npipeline_depth = 2\n",
        1,
    );
    assert!(text.contains("checkpoint_every_batches = 2"), "{text}");
    std::fs::write(config, text).expect("write config");
}

/// What a kind's violation looks like in the log.
fn expected_line(kind: &str, call: &str) -> String {
    match (kind, call) {
        (_, "execve") => format!(
            "({kind}) made forbidden system call {} (execve); stopping",
            libc::SYS_execve
        ),
        // The workers and the WAL syncer may not open anything: their filter stops the open
        // itself.
        ("worker" | "syncer", "open") => format!(
            "({kind}) made forbidden system call {} (openat); stopping",
            libc::SYS_openat
        ),
        // The kinds that open files in the data directory: Landlock refuses the path.
        (_, _) => format!("({kind}) open of /etc/passwd refused"),
    }
}

/// Starts a server with `forbidden-syscall:<kind>:<call>`, makes the thread of that kind reach
/// its moment, and asserts the stop.
fn violation_stops_the_process(kind: &str, call: &str) {
    let lab = lab(&format!("sbx{}{}", &kind[..2], &call[..1]), 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let fault = format!("forbidden-syscall:{kind}:{call}");
    let env = [("PANTERA_FAULT", fault.as_str())];
    let mut server = Server::start_logged_with_env(&lab, dir.path(), "ledger", "", &env);
    let tls = dir.path().join("tls");
    if kind == "checkpoint" || kind == "syncer" {
        // A checkpoint within the first batches, the WAL syncer thread: restart with the
        // settings.
        assert!(
            server.terminate().success(),
            "a clean stop before the restart"
        );
        every_thread_busy(server.config_path());
        server.spawn();
    }
    // The moment of each kind (src/fault.rs).
    match kind {
        "worker" => {
            let addr = service(&lab);
            let _ = in_netns(&lab.spec.netns, move || {
                connect_with(None, None, addr).map(|_| thread::sleep(Duration::from_secs(1)))
            })
            .join();
        }
        "ledger" | "checkpoint" | "syncer" | "audit" => {
            // Not joined: once the process stops, the client waits for its read timeout.
            drop(writes(&lab, &tls, 4));
        }
        "management" => {
            let _ = http_get(server.management, "/metrics");
        }
        "main" => kill(server.pid(), Signal::SIGHUP).expect("kill -HUP"),
        other => panic!("no such kind {other}"),
    }
    // The switch logs a call the sandbox let through ("injected fault: ..."): that is a hole,
    // reported at once rather than after the whole wait.
    let deadline = Instant::now() + STOP_WAIT;
    let status = loop {
        if let Some(status) = server.wait_exit(Duration::from_millis(200)) {
            break status;
        }
        let log = server.log_text();
        if let Some(hole) = log.lines().find(|l| l.contains("injected fault: thread")) {
            server.kill();
            panic!("{kind}:{call}: the sandbox let the call through: {hole}");
        }
        if Instant::now() >= deadline {
            server.kill();
            panic!("{kind}:{call}: the process still runs {STOP_WAIT:?} after the forbidden call; log:\n{log}");
        }
    };
    let log = server.log_text();
    assert_eq!(
        status.code(),
        Some(EXIT_SANDBOX),
        "{kind}:{call}: {status}; log:\n{log}"
    );
    let expected = expected_line(kind, call);
    let line = log
        .lines()
        .find(|l| l.contains("sandbox: thread"))
        .unwrap_or_else(|| panic!("{kind}:{call}: no sandbox line; log:\n{log}"));
    assert!(
        line.contains("FATAL") && line.contains(&expected),
        "{kind}:{call}: expected {expected:?} in {line:?}"
    );
}

#[test]
fn execve_from_a_worker_stops_the_process() {
    violation_stops_the_process("worker", "execve");
}

#[test]
fn open_from_a_worker_stops_the_process() {
    violation_stops_the_process("worker", "open");
}

#[test]
fn execve_from_the_ledger_stops_the_process() {
    violation_stops_the_process("ledger", "execve");
}

#[test]
fn open_from_the_ledger_stops_the_process() {
    violation_stops_the_process("ledger", "open");
}

#[test]
fn execve_from_the_checkpoint_writer_stops_the_process() {
    violation_stops_the_process("checkpoint", "execve");
}

#[test]
fn open_from_the_checkpoint_writer_stops_the_process() {
    violation_stops_the_process("checkpoint", "open");
}

#[test]
fn execve_from_the_wal_syncer_stops_the_process() {
    violation_stops_the_process("syncer", "execve");
}

#[test]
fn open_from_the_wal_syncer_stops_the_process() {
    violation_stops_the_process("syncer", "open");
}

#[test]
fn execve_from_management_stops_the_process() {
    violation_stops_the_process("management", "execve");
}

#[test]
fn open_from_management_stops_the_process() {
    violation_stops_the_process("management", "open");
}

#[test]
fn execve_from_the_audit_writer_stops_the_process() {
    violation_stops_the_process("audit", "execve");
}

#[test]
fn open_from_the_audit_writer_stops_the_process() {
    violation_stops_the_process("audit", "open");
}

#[test]
fn execve_from_the_main_thread_stops_the_process() {
    violation_stops_the_process("main", "execve");
}

#[test]
fn open_from_the_main_thread_stops_the_process() {
    violation_stops_the_process("main", "open");
}

/// The `Seccomp:` field of each thread's status: thread name -> mode.
fn seccomp_modes(pid: Pid) -> Vec<(String, String)> {
    let mut modes = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let task = task.expect("task").path();
        let name = std::fs::read_to_string(task.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        let status = std::fs::read_to_string(task.join("status")).unwrap_or_default();
        let mode = status
            .lines()
            .find_map(|l| l.strip_prefix("Seccomp:"))
            .unwrap_or("?")
            .trim()
            .to_owned();
        modes.push((name, mode));
    }
    modes
}

#[test]
fn a_normal_run_has_every_thread_confined_and_nothing_legitimate_denied() {
    let lab = lab("sbxok", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start_logged(&lab, dir.path(), "ledger", AUDIT_ROTATES);
    assert!(server.terminate().success());
    every_thread_busy(server.config_path());
    server.spawn();
    let tls = dir.path().join("tls");
    writes(&lab, &tls, 10)
        .join()
        .expect("client")
        .expect("writes before the reload");
    let (status, body) = http_get(server.management, "/metrics").expect("/metrics");
    assert_eq!(status, 200);
    assert!(body.contains("pantera_"), "{body}");
    kill(server.pid(), Signal::SIGHUP).expect("kill -HUP");
    // The reload ran on the confined main thread (reading the certificates and the
    // configuration again) and was applied.
    assert_eq!(
        server.wait_metric("pantera_config_reloads_total", &["result=\"ok\""], 1.0),
        1.0,
        "{}",
        server.log_text()
    );
    writes_more(&lab, &tls);
    for path in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(
            http_get(server.management, path).expect(path).0,
            200,
            "{path}"
        );
    }
    let modes = seccomp_modes(server.pid());
    let names: BTreeSet<&str> = modes.iter().map(|(n, _)| n.as_str()).collect();
    for expected in [
        "worker-q0",
        "worker-q1",
        "ledger",
        "pantera-ckpt",
        "wal-sync",
        "management",
        "management-0",
        "audit",
    ] {
        assert!(names.contains(expected), "no thread {expected}: {modes:?}");
    }
    for (name, mode) in &modes {
        assert_eq!(
            mode, "2",
            "thread {name} is not confined (Seccomp: {mode}): {modes:?}"
        );
    }
    let status = server.terminate();
    let log = server.log_text();
    assert!(status.success(), "{status}; log:\n{log}");
    // The drop's own INFO line says "sandbox: running as ..."; a denial is FATAL.
    assert!(!log.contains("FATAL"), "{log}");
    assert!(
        log.contains("checkpoint"),
        "no checkpoint was written: {log}"
    );
}

/// More writes after the reload, on a new connection (other accounts' ids are not needed:
/// creating existing accounts again answers 200 with per-event results).
fn writes_more(lab: &Lab, tls: &std::path::Path) {
    let (client, addr) = (tls_client_config(tls, Some("client")), service(lab));
    in_netns(&lab.spec.netns, move || {
        let mut s = tls_connect(&client, addr).expect("connect after the reload");
        for id in 0..6u64 {
            let body = format!(r#"[{{"id":"{}","debit_account_id":"1","credit_account_id":"2","amount":"1","ledger":1,"code":1}}]"#, 500 + id);
            let (status, reply) = request(&mut s, "POST", "/v1/transfers", &body).expect("transfer");
            assert_eq!(status, 200, "{reply}");
        }
    })
    .join()
    .expect("client after the reload");
}

// ---------------------------------------------------------------------------------------------
// Measuring the allowlists.

/// The kind of a thread, from its name (src/sandbox/mod.rs `Kind`).
fn kind_of(name: &str) -> &'static str {
    match name {
        n if n.starts_with("worker-q") => "worker",
        "ledger" => "ledger",
        "pantera-ckpt" => "checkpoint",
        "wal-sync" => "syncer",
        n if n.starts_with("management") => "management",
        "audit" => "audit",
        _ => "main",
    }
}

/// Parses `strace -f -o` output: for each thread, the calls it made after its
/// `seccomp(SECCOMP_SET_MODE_FILTER, ...)`, counted per kind. A thread started by a confined
/// thread (the checkpoint writer, by the ledger) runs under its parent's filter until it
/// installs its own: those calls count for the parent's kind.
fn count_by_kind(trace: &str) -> BTreeMap<&'static str, BTreeMap<String, u64>> {
    let mut names: BTreeMap<u32, String> = BTreeMap::new();
    let mut confined: BTreeSet<u32> = BTreeSet::new();
    // Threads whose PR_GET_NAME strace showed unfinished: the name comes with the resumption.
    let mut naming: BTreeSet<u32> = BTreeSet::new();
    // Confined threads in the middle of a clone, and the threads they started (not yet
    // confined themselves): the kind whose filter they run under.
    let mut starting: BTreeMap<u32, &'static str> = BTreeMap::new();
    let mut inherited: BTreeMap<u32, &'static str> = BTreeMap::new();
    let mut counts: BTreeMap<&'static str, BTreeMap<String, u64>> = BTreeMap::new();
    for line in trace.lines() {
        let Some((tid, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(tid) = tid.parse::<u32>() else {
            continue;
        };
        let rest = rest.trim_start();
        // The new thread's id is the result of its parent's clone, finished or resumed.
        if rest.starts_with("clone") || rest.starts_with("<... clone") {
            if let Some(parent_kind) = starting.get(&tid).copied() {
                if let Some(child) = rest
                    .rsplit("= ")
                    .next()
                    .and_then(|r| r.trim().parse::<u32>().ok())
                {
                    inherited.insert(child, parent_kind);
                    starting.remove(&tid);
                }
            }
        }
        if rest.starts_with("<... prctl resumed>") && naming.remove(&tid) {
            // The second half of an interrupted PR_GET_NAME: the name it returned.
            let name = rest.split('"').nth(1).unwrap_or("");
            names.insert(tid, name.to_owned());
        }
        if rest.starts_with("---") || rest.starts_with("+++") || rest.starts_with("<...") {
            // A signal, an exit, or the second half of a call already counted.
            continue;
        }
        let Some(call) = rest
            .split('(')
            .next()
            .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        else {
            continue;
        };
        if let Some(named) = rest.strip_prefix("prctl(PR_GET_NAME, \"") {
            let name = named.split('"').next().unwrap_or("");
            names.insert(tid, name.to_owned());
        } else if rest.starts_with("prctl(PR_GET_NAME,") {
            naming.insert(tid);
        }
        let name = names.get(&tid).map(String::as_str).unwrap_or("");
        let kind = if confined.contains(&tid) {
            Some(kind_of(name))
        } else {
            inherited.get(&tid).copied()
        };
        if let Some(kind) = kind {
            *counts
                .entry(kind)
                .or_default()
                .entry(detailed(call, rest))
                .or_default() += 1;
        }
        if call == "seccomp" && rest.contains("SECCOMP_SET_MODE_FILTER") {
            confined.insert(tid);
        }
        // A thread started by a confined thread runs under its parent's filter until it
        // installs its own.
        if (call == "clone" || call == "clone3") && confined.contains(&tid) {
            starting.insert(tid, kind_of(name));
        }
    }
    counts
}

/// A call with the argument its filter looks at, where one does (bpf's command, ioctl's
/// request, prctl's option, the socket option's level and name).
fn detailed(call: &str, line: &str) -> String {
    let args: Vec<&str> = line
        .split_once('(')
        .map(|(_, a)| a)
        .unwrap_or("")
        .splitn(4, ", ")
        .collect();
    let pick = |i: usize| {
        args.get(i)
            .map(|a| {
                a.trim_end_matches([')', ' ', '<'])
                    .split(' ')
                    .next()
                    .unwrap_or("")
            })
            .unwrap_or("")
    };
    match call {
        "bpf" | "prctl" => format!("{call}({})", pick(0)),
        "ioctl" => format!("{call}({})", pick(1)),
        "getsockopt" | "setsockopt" => format!("{call}({}, {})", pick(1), pick(2)),
        _ => call.to_owned(),
    }
}

#[test]
fn the_trace_parser_counts_after_the_filter_only() {
    let trace = "\
100 prctl(PR_GET_NAME, \"pantera\") = 0
100 seccomp(SECCOMP_SET_MODE_FILTER, 0, {len=30, filter=0x1}) = 0
100 clock_nanosleep(CLOCK_REALTIME, 0, {tv_sec=0, tv_nsec=100000000},  <unfinished ...>
101 mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, -1, 0) = 0x7f
101 prctl(PR_GET_NAME,  <unfinished ...>
100 futex(0x1, FUTEX_WAKE_PRIVATE, 1) = 0
101 <... prctl resumed>\"worker-q0\") = 0
101 seccomp(SECCOMP_SET_MODE_FILTER, 0, {len=30, filter=0x1}) = 0
101 sendto(5, NULL, 0, MSG_DONTWAIT, NULL, 0) = 0
100 <... clock_nanosleep resumed>NULL) = 0
101 --- SIGHUP {si_signo=SIGHUP} ---
101 rt_sigreturn({mask=[]}) = 0
100 clone3({flags=CLONE_VM|CLONE_THREAD, exit_signal=0, stack=0x1, stack_size=0x1}, 88 <unfinished ...>
100 <... clone3 resumed>) = 102
100 bpf(BPF_MAP_LOOKUP_ELEM, {map_fd=3, key=0x1, value=0x2}, 32) = 0
102 set_robust_list(0x7f, 24) = 0
102 prctl(PR_GET_NAME, \"pantera-ckpt\") = 0
102 seccomp(SECCOMP_SET_MODE_FILTER, 0, {len=30, filter=0x1}) = 0
102 fsync(7) = 0
101 +++ exited with 0 +++
";
    let counts = count_by_kind(trace);
    let calls = |kind: &str| {
        counts
            .get(kind)
            .map(|c| {
                c.iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_default()
    };
    assert_eq!(calls("worker"), "rt_sigreturn:1 sendto:1");
    // Thread 102 started under the main thread's filter.
    assert_eq!(calls("main"), "bpf(BPF_MAP_LOOKUP_ELEM):1 clock_nanosleep:1 clone3:1 futex:1 prctl(PR_GET_NAME):1 seccomp:1 set_robust_list:1");
    assert_eq!(calls("checkpoint"), "fsync:1");
}

/// Regenerates the measured allowlists (docs/security.md): run as root with
/// `cargo test -p pantera --features fault-injection --test lab_sandbox_deny -- --ignored measure_syscalls --nocapture`.
/// Prints a table of the calls each kind made after its filter, with counts, and leaves the
/// raw trace in `target/syscalls.strace` and the table in `target/syscalls-by-kind.txt`.
#[test]
#[ignore = "a measurement, not a check: run it by name to regenerate the allowlists"]
fn measure_syscalls() {
    let lab = lab("sbxmeasure", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    // Writes the configuration and certificates and formats the data directory; then the
    // appliance runs again under strace with the same configuration.
    let mut server = Server::start_with_env(
        &lab,
        dir.path(),
        "ledger",
        AUDIT_ROTATES,
        &[("PANTERA_FAULT", "seccomp-measure")],
    );
    assert!(server.terminate().success());
    every_thread_busy(server.config_path());
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let trace_path = target.join("syscalls.strace");
    let log_path = dir.path().join("pantera.log");
    let mut child = Command::new("strace")
        .args(["-f", "-qq", "-s", "64", "-o"])
        .arg(&trace_path)
        .arg(PANTERA)
        .args(["serve", "--config"])
        .arg(server.config_path())
        .env("RUST_LOG", "info")
        .env("PANTERA_FAULT", "seccomp-measure")
        .stdin(Stdio::null())
        .stderr(std::fs::File::create(&log_path).expect("log"))
        .spawn()
        .expect("strace (is it installed?)");
    let deadline = Instant::now() + Duration::from_secs(120);
    while !http_get(server.management, "/readyz")
        .map(|(s, _)| s == 200)
        .unwrap_or(false)
    {
        assert!(Instant::now() < deadline, "not ready under strace");
        assert!(
            child.try_wait().expect("try_wait").is_none(),
            "exited under strace"
        );
        thread::sleep(Duration::from_millis(200));
    }
    // pantera is strace's child: its pid from the management port's owner is not needed,
    // the trace names every thread; the signals go to the appliance, not to strace.
    let pid = pantera_pid(child.id());
    let tls = dir.path().join("tls");
    writes(&lab, &tls, 20)
        .join()
        .expect("client")
        .expect("writes");
    for path in ["/metrics", "/healthz", "/readyz", "/nothing"] {
        let _ = http_get(server.management, path);
    }
    kill(pid, Signal::SIGHUP).expect("kill -HUP");
    thread::sleep(Duration::from_secs(2));
    writes_more(&lab, &tls);
    let _ = http_get(server.management, "/metrics");
    kill(pid, Signal::SIGTERM).expect("kill -TERM");
    let status = wait_exit(&mut child, Duration::from_secs(60)).expect("a stop under strace");
    assert!(
        status.success(),
        "{status}: {}",
        std::fs::read_to_string(&log_path).unwrap_or_default()
    );
    let trace = std::fs::read_to_string(&trace_path).expect("trace");
    let counts = count_by_kind(&trace);
    let mut table = String::from(
        "| kind | system calls after the filter (count in the measured run) |\n|---|---|\n",
    );
    for (kind, calls) in &counts {
        let calls: Vec<String> = calls
            .iter()
            .map(|(call, n)| format!("{call} ({n})"))
            .collect();
        table.push_str(&format!("| {kind} | {} |\n", calls.join(", ")));
    }
    std::fs::write(target.join("syscalls-by-kind.txt"), &table).expect("write the table");
    println!("{table}");
    for kind in [
        "main",
        "worker",
        "ledger",
        "checkpoint",
        "syncer",
        "management",
        "audit",
    ] {
        assert!(
            counts.contains_key(kind),
            "no confined thread of kind {kind} in the trace"
        );
    }
    drop(server);
}

/// The pid of the appliance started by strace (its only child).
fn pantera_pid(strace: u32) -> Pid {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let children = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return Pid::from_raw(pid);
        }
        assert!(Instant::now() < deadline, "strace has no child");
        thread::sleep(Duration::from_millis(50));
    }
}
