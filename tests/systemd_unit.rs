//! docs/pantera.service is a unit systemd accepts, its stop timeout leaves the appliance's own
//! hard stop room to run first, and it is hardened (docs/security.md).

use std::path::Path;
use std::process::Command;

const UNIT: &str = include_str!("../docs/pantera.service");
const PANTERA: &str = env!("CARGO_BIN_EXE_pantera");
/// The binary the unit names; the test points it at the one just built.
const INSTALLED_BINARY: &str = "/usr/local/bin/pantera";

/// The value of `key=` in the unit (the last assignment wins, as in systemd).
fn setting(key: &str) -> Option<&'static str> {
    UNIT.lines().rev().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

/// "45s", "2min", "10" (seconds) as seconds: the forms this unit uses.
fn seconds(value: &str) -> u64 {
    let value = value.trim();
    if let Some(min) = value.strip_suffix("min") {
        return min.parse::<u64>().expect("minutes") * 60;
    }
    value
        .strip_suffix('s')
        .unwrap_or(value)
        .parse()
        .unwrap_or_else(|_| panic!("not a duration this test reads: {value:?}"))
}

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let Ok(found) = Command::new("systemd-analyze").arg("--version").output() else {
        // `cargo xtask deps` installs systemd; a machine without it cannot check the unit.
        println!("systemd-analyze not installed: skipped");
        return;
    };
    assert!(found.status.success());
    assert!(
        UNIT.contains(&format!("ExecStart={INSTALLED_BINARY} ")),
        "the unit's ExecStart changed; update this test"
    );
    // verify checks that ExecStart's binary exists: point it at the one just built.
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("pantera.service");
    std::fs::write(&unit, UNIT.replace(INSTALLED_BINARY, PANTERA)).expect("write the unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // Warnings about other units of this machine are not ours; every line about this unit
    // (an unknown key, a value systemd ignores) is an error here.
    let ours: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("pantera.service"))
        .collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify {}:\n{stderr}",
        unit.display()
    );
    assert!(Path::new(PANTERA).exists());
}

#[test]
fn the_unit_notifies_and_its_stop_timeout_exceeds_the_hard_stop() {
    assert_eq!(setting("Type"), Some("notify"));
    assert!(
        setting("ExecReload").is_some_and(|v| v.contains("-HUP")),
        "systemctl reload must send SIGHUP"
    );
    assert!(setting("WatchdogSec").is_some_and(|v| seconds(v) > 0));
    assert_eq!(setting("KillSignal"), Some("SIGTERM"));
    assert_eq!(setting("Restart"), Some("on-failure"));
    assert_eq!(setting("LimitMEMLOCK"), Some("infinity"));
    let stop_s = seconds(setting("TimeoutStopSec").expect("TimeoutStopSec"));
    let hard_stop_ms = pantera::config::ShutdownSection::default().timeout_ms;
    // Room above the hard stop for the ledger's last commit and the exit.
    assert!(
        stop_s * 1000 >= hard_stop_ms + 10_000,
        "TimeoutStopSec={stop_s}s vs shutdown.timeout_ms {hard_stop_ms}"
    );
}

#[test]
fn the_unit_runs_as_a_plain_user_with_only_the_start_up_capabilities_and_the_hardening() {
    assert_eq!(setting("User"), Some("pantera"));
    assert_eq!(setting("Group"), Some("pantera"));
    // Exactly what start-up needs (tests/lab_sandbox.rs starts the appliance with this list),
    // and the bounding set no wider.
    let start_up = "CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_PERFMON CAP_IPC_LOCK";
    assert_eq!(setting("AmbientCapabilities"), Some(start_up));
    assert_eq!(setting("CapabilityBoundingSet"), Some(start_up));
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictRealtime", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectKernelLogs", "yes"),
        ("ProtectControlGroups", "yes"),
        ("ProtectClock", "yes"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX AF_NETLINK AF_XDP"),
        ("SystemCallArchitectures", "native"),
        ("ReadWritePaths", "/var/lib/pantera"),
        ("UMask", "0077"),
        ("LimitCORE", "0"),
    ] {
        assert_eq!(setting(key), Some(value), "{key}=");
    }
    let filter = setting("SystemCallFilter").expect("SystemCallFilter=");
    let groups: Vec<&str> = filter.split_whitespace().collect();
    assert_eq!(groups.first(), Some(&"@system-service"), "an allowlist, not a denylist: {filter}");
    for call in ["bpf", "seccomp", "landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"] {
        assert!(groups.contains(&call), "{call} is not in @system-service and start-up needs it: {filter}");
    }
    assert!(setting("SystemCallErrorNumber").is_none(), "a call outside the filter kills the process");
}

/// `systemd-analyze security --offline` scores the unit as a file; its exposure (0 best, 10
/// worst) must stay in the "OK" band. Skipped where systemd cannot score offline.
#[test]
fn the_units_exposure_stays_ok() {
    let dir = tempfile::tempdir().expect("tempdir");
    let unit = dir.path().join("pantera.service");
    std::fs::write(&unit, UNIT.replace(INSTALLED_BINARY, PANTERA)).expect("write the unit");
    let Ok(out) = Command::new("systemd-analyze").args(["security", "--offline=yes", "--no-pager"]).arg(&unit).output() else {
        println!("systemd-analyze not installed: skipped");
        return;
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let Some(score) = text.lines().find_map(|l| l.split("Overall exposure level for pantera.service:").nth(1)) else {
        println!("systemd-analyze cannot score a unit offline here: skipped\n{}", String::from_utf8_lossy(&out.stderr));
        return;
    };
    let score: f64 = score.split_whitespace().next().and_then(|s| s.parse().ok()).expect("a number");
    println!("exposure {score}");
    assert!(score <= 3.0, "exposure {score}:\n{text}");
}
