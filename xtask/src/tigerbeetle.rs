//! `cargo xtask tigerbeetle build|up|down`: the pinned TigerBeetle server, built from source,
//! and a cluster of it on loopback (docs/cluster.md, "Tooling" and "Operations").
//!
//! No registry ships the TigerBeetle server, so it is built here from the source that the
//! pinned client crate vendors, with the exact zig that source pins (from PyPI). Everything
//! lives under `target/tigerbeetle/`: the build is cached there and `cargo clean` removes it.
//!
//! `up` leaves the replicas running after xtask exits, so `down` finds them again only through
//! the pid files `up` wrote; it signals a pid only if that process is still our server binary.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{env, fs, thread};

use anyhow::{bail, ensure, Context, Result};

// The release, the server's path and the replicas' start options, shared with the test
// clusters of the `cluster` crate (this crate cannot depend on it: std and anyhow only).
#[path = "../../cluster/src/pins.rs"]
mod pins;
use pins::{RELEASE, SERVER_PATH as SERVER, START_OPTIONS};
/// The commit of that release: the server reports it, and replicas compare it.
const GIT_COMMIT: &str = "c3d9b09dc88e94dde9ac915c6e94a4c650332080";
/// The oldest client release the server accepts (what TigerBeetle's own 0.16.78 release sets).
const CLIENT_RELEASE_MIN: &str = "0.16.4";
/// The zig TigerBeetle 0.16.78 pins; PyPI's `ziglang` ships exactly this build.
const ZIG_VERSION: &str = "0.14.1";
/// The crate whose vendored `tigerbeetle/` directory is TigerBeetle 0.16.78's full source.
const SYS_CRATE_DIR: &str = "tigerbeetle-unofficial-sys-0.14.28+0.16.78";

/// Where the pinned zig is installed; .cargo/config.toml points `ZIG_PATH` at its binary.
const ZIG_DIR: &str = "target/tigerbeetle/zig-0.14.1";
/// The copy of the vendored source that zig builds in (it writes `.zig-cache` and `zig-out`
/// inside the tree, which must never happen in the cargo registry).
const SOURCE_DIR: &str = "target/tigerbeetle/src-0.16.78";
/// zig's global cache for the server build, kept beside the rest so `cargo clean` removes it.
const ZIG_CACHE_DIR: &str = "target/tigerbeetle/zig-cache";
/// Data files, pid files and logs of the cluster `up` starts.
const CLUSTER_DIR: &str = "target/tigerbeetle/cluster";

/// The cluster id `up` formats with.
const CLUSTER_ID: u32 = 0;
/// TigerBeetle's own bound on the replicas of a cluster.
const REPLICAS_MAX: u8 = 6;
/// The first replica's port unless `--base-port` says otherwise (TigerBeetle's examples use
/// 3000 and up).
const BASE_PORT_DEFAULT: u16 = 3000;


/// How long `tigerbeetle format` of one replica may take (it takes well under a second).
const FORMAT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `up` waits for the cluster to serve (a 3-replica cluster takes ~5–11 s).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one readiness probe may take: the REPL's client retries forever, so each probe is
/// killed at this deadline and the next one starts.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `down` waits for replicas to exit after SIGTERM, then again after SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub const USAGE: &str = "  tigerbeetle build    install the pinned zig (PyPI ziglang 0.14.1) and build the TigerBeetle
                       0.16.78 server from the pinned crate's vendored source (cached)
  tigerbeetle up [--replicas N] [--base-port P]
                       format and start N replicas (1-6, default 1) on 127.0.0.1:P.. (default
                       3000), wait until the cluster serves, print its addresses
  tigerbeetle down     stop the replicas `up` started, remove their data files";

/// `cargo xtask tigerbeetle ARGS`.
pub fn main(args: &[&str]) -> Result<()> {
    match args {
        ["build"] => build().map(drop),
        ["up", rest @ ..] => {
            let (mut replicas, mut base_port) = (1u8, BASE_PORT_DEFAULT);
            let mut rest = rest.iter();
            while let Some(flag) = rest.next() {
                let value = rest.next().with_context(|| format!("{flag} takes a value"))?;
                match *flag {
                    "--replicas" => replicas = value.parse().context("--replicas takes a number")?,
                    "--base-port" => base_port = value.parse().context("--base-port takes a port number")?,
                    _ => bail!("unknown option {flag} of `tigerbeetle up`"),
                }
            }
            up(replicas, base_port)
        }
        ["down"] => down(),
        _ => bail!("usage:\n{USAGE}"),
    }
}

/// Installs the pinned zig unless it is there, and builds the server unless the installed one
/// is already the pinned release; returns the server's absolute path. Each step prints what it
/// did and how long it took.
///
/// zig is checked even when the server is cached: the `cluster` crate's client library is
/// built with it (ZIG_PATH), so a target directory holding the server but not zig must still
/// get zig.
pub fn build() -> Result<PathBuf> {
    let total = Instant::now();
    let zig = absolute(&format!("{ZIG_DIR}/ziglang/zig"))?;
    let server = absolute(SERVER)?;
    if zig_version(&zig).as_deref() == Some(ZIG_VERSION) {
        if server_release_matches(&server) {
            println!("xtask tigerbeetle: zig {ZIG_VERSION} and TigerBeetle {RELEASE} at {} (cached)", server.display());
            return Ok(server);
        }
        println!("xtask tigerbeetle: zig {ZIG_VERSION} already at {}", zig.display());
    } else {
        let started = Instant::now();
        install_zig()?;
        let found = zig_version(&zig);
        ensure!(
            found.as_deref() == Some(ZIG_VERSION),
            "the installed zig at {} reports {found:?}, not {ZIG_VERSION}",
            zig.display()
        );
        println!("xtask tigerbeetle: installed zig {ZIG_VERSION} from PyPI ({:.1?})", started.elapsed());
        if server_release_matches(&server) {
            println!("xtask tigerbeetle: TigerBeetle {RELEASE} at {} (cached)", server.display());
            return Ok(server);
        }
    }

    let started = Instant::now();
    // The crate is a dependency of `cluster` (through tigerbeetle-unofficial-core, behind a
    // feature): `cargo fetch` puts every locked package, optional ones included, in the registry.
    crate::status(crate::cargo().arg("fetch"))?;
    let vendored = vendored_source()?;
    println!("xtask tigerbeetle: cargo fetch, source at {} ({:.1?})", vendored.display(), started.elapsed());

    let started = Instant::now();
    let source = absolute(SOURCE_DIR)?;
    let complete = source.join(".pantera-copy-complete");
    if complete.is_file() {
        println!("xtask tigerbeetle: source copy at {} already complete", source.display());
    } else {
        // Copy to a temporary name and rename, so an interrupted copy is never taken for a
        // complete one.
        let partial = absolute(&format!("{SOURCE_DIR}.partial"))?;
        remove_dir_if_exists(&partial)?;
        remove_dir_if_exists(&source)?;
        fs::create_dir_all(partial.parent().expect("under target/")).context("cannot create target/tigerbeetle")?;
        crate::status(Command::new("cp").arg("-R").arg(&vendored).arg(&partial))?;
        fs::write(partial.join(".pantera-copy-complete"), RELEASE).context("cannot mark the source copy complete")?;
        fs::rename(&partial, &source).with_context(|| format!("cannot rename {} to {}", partial.display(), source.display()))?;
        println!("xtask tigerbeetle: copied the vendored source to {} ({:.1?})", source.display(), started.elapsed());
    }

    let started = Instant::now();
    let target = format!("-Dtarget={}-linux", env::consts::ARCH);
    crate::status(
        Command::new(&zig)
            .current_dir(&source)
            .env("ZIG_GLOBAL_CACHE_DIR", absolute(ZIG_CACHE_DIR)?)
            .args(["build", "-Drelease", &target])
            .arg(format!("-Dgit-commit={GIT_COMMIT}"))
            .arg(format!("-Dconfig-release={RELEASE}"))
            .arg(format!("-Dconfig-release-client-min={CLIENT_RELEASE_MIN}")),
    )?;
    println!("xtask tigerbeetle: zig build -Drelease {target} ({:.1?})", started.elapsed());

    // Install atomically: a half-copied binary must never sit at the path the tests use.
    let built = source.join("zig-out/bin/tigerbeetle");
    let partial = server.with_extension("partial");
    fs::create_dir_all(server.parent().expect("under target/")).context("cannot create target/tigerbeetle/bin")?;
    fs::copy(&built, &partial).with_context(|| format!("cannot copy {} to {}", built.display(), partial.display()))?;
    fs::rename(&partial, &server).with_context(|| format!("cannot rename {} to {}", partial.display(), server.display()))?;
    ensure!(server_release_matches(&server), "the server built at {} does not report release {RELEASE}", server.display());
    println!("xtask tigerbeetle: installed {} (TigerBeetle {RELEASE}); build took {:.1?}", server.display(), total.elapsed());
    Ok(server)
}

/// Formats and starts `replicas` replicas on 127.0.0.1:`base_port`.., waits until the
/// cluster serves, and leaves it running.
fn up(replicas: u8, base_port: u16) -> Result<()> {
    ensure!((1..=REPLICAS_MAX).contains(&replicas), "--replicas must be 1..={REPLICAS_MAX}");
    let port_last = u32::from(base_port) + u32::from(replicas) - 1;
    ensure!(base_port >= 1024 && port_last <= u32::from(u16::MAX), "--base-port must leave {replicas} ports in 1024..=65535");
    let server = build()?;
    let running = running_replicas(&server)?;
    ensure!(
        running.is_empty(),
        "a cluster from an earlier `up` is still running (pids {:?}); run `cargo xtask tigerbeetle down` first",
        running.iter().map(|(_, pid)| *pid).collect::<Vec<_>>()
    );
    let ports: Vec<u16> = (0..u16::from(replicas)).map(|i| base_port + i).collect();
    for port in &ports {
        // A clear error now rather than a replica that dies with "address in use" later.
        TcpListener::bind(("127.0.0.1", *port)).with_context(|| format!("port {port} on 127.0.0.1 is taken"))?;
    }
    let dir = absolute(CLUSTER_DIR)?;
    // Nothing of ours runs: whatever is left (data files, stale pid files, logs) is stale.
    remove_dir_if_exists(&dir)?;
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let addresses = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",");

    let started = Instant::now();
    for replica in 0..replicas {
        format_replica(&server, &dir, replica, replicas)?;
    }
    println!("xtask tigerbeetle: formatted {replicas} data file(s) in {} ({:.1?})", dir.display(), started.elapsed());

    let started = Instant::now();
    let mut children = Vec::new();
    for replica in 0..replicas {
        match start_replica(&server, &dir, replica, &addresses) {
            Ok(child) => children.push(child),
            Err(e) => {
                stop_children(&mut children);
                return Err(e);
            }
        }
    }
    if let Err(e) = wait_serving(&server, &dir, &addresses, &mut children) {
        stop_children(&mut children);
        let logs = log_tails(&dir, replicas);
        let _ = fs::remove_dir_all(&dir);
        return Err(e.context(format!("the cluster was stopped and removed; its logs ended with:\n{logs}")));
    }
    println!("xtask tigerbeetle: {replicas} replica(s) serving after {:.1?}", started.elapsed());
    println!("cluster {CLUSTER_ID} up: --addresses={addresses}");
    println!("  logs and data files in {}; stop it with `cargo xtask tigerbeetle down`", dir.display());
    Ok(())
}

/// Stops the replicas `up` started and removes their data files, pid files and logs.
fn down() -> Result<()> {
    let server = absolute(SERVER)?;
    let dir = absolute(CLUSTER_DIR)?;
    let running = running_replicas(&server)?;
    for (replica, pid) in &running {
        println!("xtask tigerbeetle: stopping replica {replica} (pid {pid})");
        signal(*pid, "TERM");
    }
    let mut left = wait_gone(&server, &running, STOP_TIMEOUT);
    if !left.is_empty() {
        for (_, pid) in &left {
            signal(*pid, "KILL");
        }
        left = wait_gone(&server, &left, STOP_TIMEOUT);
    }
    ensure!(left.is_empty(), "replicas {left:?} (replica, pid) did not stop; {} kept", dir.display());
    remove_dir_if_exists(&dir)?;
    println!("xtask tigerbeetle: {} replica(s) stopped, {} removed", running.len(), dir.display());
    Ok(())
}

/// The replicas named by pid files whose process still runs our server: (replica, pid).
/// A pid file whose process is gone, or is now some other program, names nothing of ours.
fn running_replicas(server: &Path) -> Result<Vec<(u8, u32)>> {
    let dir = absolute(CLUSTER_DIR)?;
    let mut running = Vec::new();
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(running),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dir.display())),
    };
    for entry in entries {
        let path = entry.with_context(|| format!("cannot read {}", dir.display()))?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let Some(replica) = name.strip_prefix("replica-").and_then(|n| n.strip_suffix(".pid")) else { continue };
        let Ok(replica) = replica.parse::<u8>() else { continue };
        let text = fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let Ok(pid) = text.trim().parse::<u32>() else { continue };
        if is_our_replica(server, pid) {
            running.push((replica, pid));
        }
    }
    running.sort_unstable();
    Ok(running)
}

/// Whether `pid` is a live `SERVER start` process: its argv[0] is the absolute path `up`
/// started it with. A reaped pid has no /proc entry; a zombie has an empty cmdline.
fn is_our_replica(server: &Path, pid: u32) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let mut argv = cmdline.split(|b| *b == 0);
    argv.next() == Some(server.as_os_str().as_encoded_bytes()) && argv.next() == Some(b"start".as_slice())
}

/// Sends a signal with kill(1): xtask links no libc.
fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill").arg(format!("-{name}")).arg(pid.to_string()).stderr(Stdio::null()).status();
}

/// Waits up to `timeout` until none of `replicas` is our replica any more; returns those left.
fn wait_gone(server: &Path, replicas: &[(u8, u32)], timeout: Duration) -> Vec<(u8, u32)> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<_> = replicas.iter().copied().filter(|(_, pid)| is_our_replica(server, *pid)).collect();
        if left.is_empty() || Instant::now() >= deadline {
            return left;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

fn data_file(dir: &Path, replica: u8) -> PathBuf {
    dir.join(format!("{CLUSTER_ID}_{replica}.tigerbeetle"))
}

fn format_replica(server: &Path, dir: &Path, replica: u8, replicas: u8) -> Result<()> {
    let log = dir.join(format!("format-{replica}.log"));
    let out = fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut child = Command::new(server)
        .arg("format")
        .arg(format!("--cluster={CLUSTER_ID}"))
        .arg(format!("--replica={replica}"))
        .arg(format!("--replica-count={replicas}"))
        .arg("--development")
        .arg(data_file(dir, replica))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("cannot run {}", server.display()))?;
    let st = wait_bounded(&mut child, FORMAT_TIMEOUT)?;
    let text = fs::read_to_string(&log).unwrap_or_default();
    match st {
        Some(st) if st.success() => Ok(()),
        Some(st) => bail!("tigerbeetle format of replica {replica} failed ({st}):\n{}", text.trim()),
        None => bail!("tigerbeetle format of replica {replica} took over {FORMAT_TIMEOUT:?}"),
    }
}

fn start_replica(server: &Path, dir: &Path, replica: u8, addresses: &str) -> Result<Child> {
    let log_path = dir.join(format!("replica-{replica}.log"));
    let log = fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;
    let child = Command::new(server)
        .arg("start")
        .arg(format!("--addresses={addresses}"))
        .args(START_OPTIONS)
        .arg(data_file(dir, replica))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: the replica outlives xtask, and a Ctrl-C meant for a later
        // command in the same terminal must not reach it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {}", server.display()))?;
    // Written after the start: a pid file always names a process that was ours. Written under
    // a temporary name and renamed, so `down` never reads half a number.
    let pid_path = dir.join(format!("replica-{replica}.pid"));
    let partial = dir.join(format!("replica-{replica}.pid.partial"));
    fs::write(&partial, format!("{}\n", child.id()))
        .and_then(|()| fs::rename(&partial, &pid_path))
        .with_context(|| format!("cannot write {}", pid_path.display()))?;
    Ok(child)
}

/// Waits until the cluster answers a lookup, at most READY_TIMEOUT. A probe is TigerBeetle's
/// REPL looking up account 1: it exits with "No accounts were found." (status 1) or the
/// account once the cluster serves, and retries forever before that, so each probe is
/// killed at its own deadline.
fn wait_serving(server: &Path, dir: &Path, addresses: &str, children: &mut [Child]) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let probe_log = dir.join("probe.log");
    loop {
        for (replica, child) in children.iter_mut().enumerate() {
            if let Some(st) = child.try_wait()? {
                bail!("replica {replica} exited before the cluster served: {st}");
            }
        }
        let now = Instant::now();
        ensure!(now < deadline, "the cluster did not serve within {READY_TIMEOUT:?}");
        let out = fs::File::create(&probe_log).with_context(|| format!("cannot create {}", probe_log.display()))?;
        let mut probe = Command::new(server)
            .arg("repl")
            .arg(format!("--cluster={CLUSTER_ID}"))
            .arg(format!("--addresses={addresses}"))
            .arg("--command=lookup_accounts id=1")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("cannot run {} repl", server.display()))?;
        let st = wait_bounded(&mut probe, PROBE_TIMEOUT.min(deadline - now))?;
        let text = fs::read_to_string(&probe_log).unwrap_or_default();
        if st.is_some_and(|st| st.success()) || text.contains("No accounts were found") {
            let _ = fs::remove_file(&probe_log);
            return Ok(());
        }
        if let Some(st) = st {
            // The REPL gave up by itself: not a slow cluster but a failure worth showing.
            bail!("tigerbeetle repl failed ({st}):\n{}", text.trim());
        }
    }
}

/// Waits for `child` at most `timeout`; kills and reaps it at the deadline (returns None).
fn wait_bounded(child: &mut Child, timeout: Duration) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(st) = child.try_wait()? {
            return Ok(Some(st));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Kills and reaps replicas this process started (a failed `up`).
fn stop_children(children: &mut [Child]) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The last lines of each replica's log, for an error message.
fn log_tails(dir: &Path, replicas: u8) -> String {
    let mut tails = String::new();
    for replica in 0..replicas {
        let text = fs::read_to_string(dir.join(format!("replica-{replica}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        tails.push_str(&format!("== replica {replica}\n"));
        for line in &lines[lines.len().saturating_sub(5)..] {
            tails.push_str(line);
            tails.push('\n');
        }
    }
    tails
}

/// Installs PyPI's ziglang into ZIG_DIR, through a temporary directory and a rename.
fn install_zig() -> Result<()> {
    let dir = absolute(ZIG_DIR)?;
    let partial = absolute(&format!("{ZIG_DIR}.partial"))?;
    remove_dir_if_exists(&partial)?;
    let has_pip = Command::new("pip").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success());
    let mut pip = if has_pip {
        Command::new("pip")
    } else {
        let mut python = Command::new("python3");
        python.args(["-m", "pip"]);
        python
    };
    // --target installs into a plain directory: no virtual environment, and Debian's
    // "externally managed" guard does not apply. Only the wheel: never a build from source.
    crate::status(
        pip.args(["install", "--quiet", "--disable-pip-version-check", "--root-user-action=ignore", "--no-deps", "--only-binary=:all:"])
            .arg("--target")
            .arg(&partial)
            .arg(format!("ziglang=={ZIG_VERSION}")),
    )?;
    remove_dir_if_exists(&dir)?;
    fs::rename(&partial, &dir).with_context(|| format!("cannot rename {} to {}", partial.display(), dir.display()))?;
    Ok(())
}

/// `zig version`, trimmed, if that zig runs.
fn zig_version(zig: &Path) -> Option<String> {
    let out = Command::new(zig).arg("version").stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Whether `server` runs and reports the pinned release ("TigerBeetle version 0.16.78+c3d9b09").
fn server_release_matches(server: &Path) -> bool {
    let Ok(out) = Command::new(server).arg("version").stderr(Stdio::null()).output() else { return false };
    let text = String::from_utf8_lossy(&out.stdout);
    out.status.success() && text.split_whitespace().any(|w| w.starts_with(&format!("{RELEASE}+")) || w == RELEASE)
}

/// The vendored TigerBeetle tree of the pinned sys crate in cargo's registry.
fn vendored_source() -> Result<PathBuf> {
    let cargo_home = match env::var_os("CARGO_HOME") {
        Some(home) => PathBuf::from(home),
        None => PathBuf::from(env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?).join(".cargo"),
    };
    let registry = cargo_home.join("registry/src");
    // One directory per registry index (crates.io's is index.crates.io-<hash>).
    let indexes = fs::read_dir(&registry).with_context(|| format!("cannot read {}", registry.display()))?;
    for index in indexes {
        let tree = index?.path().join(SYS_CRATE_DIR).join("tigerbeetle");
        if tree.join("build.zig").is_file() {
            return Ok(tree);
        }
    }
    bail!("no {SYS_CRATE_DIR}/tigerbeetle under {} after `cargo fetch`", registry.display())
}

fn absolute(relative: &str) -> Result<PathBuf> {
    // main() made the workspace root the current directory.
    Ok(env::current_dir().context("no current directory")?.join(relative))
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_refuses_bad_options_before_touching_anything() {
        for args in [
            &["up", "--replicas", "0"][..],
            &["up", "--replicas", "7"],
            &["up", "--replicas", "3", "--base-port", "65534"],
            &["up", "--base-port", "80"],
            &["up", "--replicas"],
            &["up", "--queues", "2"],
            &["sideways"],
        ] {
            let err = main(args).expect_err("refused");
            let text = format!("{err:#}");
            assert!(
                text.contains("--replicas") || text.contains("--base-port") || text.contains("option") || text.contains("usage"),
                "{args:?}: {text}"
            );
        }
    }

    #[test]
    fn only_a_live_start_of_our_binary_counts_as_a_replica() {
        // A stand-in replica: a shell whose argv is exactly "<server> start" (argv[0] set by
        // hand, "start" a script in a directory of its own that sleeps).
        let dir = env::temp_dir().join(format!("tbtool-xtask-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("start"), "sleep 30\n").unwrap();
        let server = Path::new("/nonexistent/tigerbeetle-test");
        let mut child = Command::new("sh").arg0(server).arg("start").current_dir(&dir).spawn().unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !is_our_replica(server, pid) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        assert!(is_our_replica(server, pid), "a live '<server> start'");
        assert!(!is_our_replica(Path::new("/nonexistent/other"), pid), "another binary's pid is not ours");
        assert!(!is_our_replica(server, std::process::id()), "this test is not a replica");
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_our_replica(server, pid), "a reaped pid is nobody's");
        fs::remove_dir_all(&dir).unwrap();
    }
}
