//! The processes a benchmark run starts, as RAII guards (stopped by pid on drop, also on error),
//! and what is read about them: CPU time from /proc, readiness over plain HTTP.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// How long a server gets to stop after SIGTERM before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Bytes of a management response read (the /metrics page is a few KiB).
const MANAGEMENT_RESPONSE_BYTES_MAX: u64 = 4 * 1024 * 1024;
const MANAGEMENT_TIMEOUT: Duration = Duration::from_secs(2);

/// A server started by the benchmark; SIGTERM (then SIGKILL) by its pid when dropped.
#[derive(Debug)]
pub struct Server {
    pub name: String,
    child: Child,
    pub log: PathBuf,
    pub started: Instant,
}

impl Server {
    /// Starts `program args..` with stdout and stderr to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: PathBuf) -> Result<Server> {
        let out = fs::File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let started = Instant::now();
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {} ({})", name, program.display()))?;
        Ok(Server { name: name.to_owned(), child, log, started })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Err if the process has already exited (it failed to start, or crashed).
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited early ({status}); its log {}:\n{}", self.name, self.log.display(), tail(&self.log, 30));
        }
        Ok(())
    }

    /// SIGTERM, wait up to `STOP_GRACE`, then SIGKILL. Returns the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(status);
        }
        // std has no signal but SIGKILL; `kill` keeps this crate free of unsafe code.
        let _ = Command::new("kill").args(["-TERM", &self.pid().to_string()]).stderr(Stdio::null()).status();
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("https: {} did not stop within {STOP_GRACE:?} of SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        Ok(self.child.wait()?)
    }

    /// Waits until `probe` succeeds, the process dies, or `timeout` passes.
    pub fn wait_ready(&mut self, timeout: Duration, mut probe: impl FnMut() -> bool) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            if probe() {
                return Ok(self.started.elapsed());
            }
            if Instant::now() >= deadline {
                bail!("{} was not ready within {timeout:?}; its log {}:\n{}", self.name, self.log.display(), tail(&self.log, 30));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("https: cannot stop {} (pid {}): {e}", self.name, self.pid());
        }
    }
}

/// The last `lines` lines of a log file, for error messages.
/// `pantera format --data-dir dir` (cluster 0) unless `dir` exists: `serve --config` opens
/// only a formatted data directory.
#[allow(dead_code)] // used by the conns and synflood benches, not by https
pub fn format_data_dir(pantera: &Path, dir: &Path) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    let out = Command::new(pantera).args(["format", "--cluster-id", "0", "--data-dir"]).arg(dir).output().context("run pantera format")?;
    if !out.status.success() {
        bail!("pantera format {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Clock ticks per second of /proc's CPU times (`getconf CLK_TCK`; 100 on Linux everywhere).
pub fn clock_ticks_per_second() -> u64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// (ppid, utime + stime in ticks) from the text of /proc/<pid>/stat (proc(5)). The command
/// name is in parentheses and may hold spaces and parentheses, so fields are counted from the
/// last ')'.
pub fn parse_stat(stat: &str) -> Option<(u32, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After the name: state(3) ppid(4) ... utime(14) stime(15): indices 0, 1, 11, 12.
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((ppid, utime + stime))
}

/// CPU ticks used so far by `pid` (all its threads) and its direct children (nginx's worker
/// is a child of its master).
pub fn cpu_ticks(pid: u32) -> u64 {
    let mut total = 0;
    let Ok(entries) = fs::read_dir("/proc") else { return 0 };
    for entry in entries.flatten() {
        let Some(n) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else { continue };
        if let Some((ppid, ticks)) = parse_stat(&stat) {
            if n == pid || ppid == pid {
                total += ticks;
            }
        }
    }
    total
}

/// `GET path` over plain HTTP/1.1 (the management listener); returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, MANAGEMENT_TIMEOUT)?;
    s.set_read_timeout(Some(MANAGEMENT_TIMEOUT))?;
    s.set_write_timeout(Some(MANAGEMENT_TIMEOUT))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.take(MANAGEMENT_RESPONSE_BYTES_MAX).read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status line in the management response")?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    Ok((status, body))
}

/// The value of an unlabelled series (or the sum over a labelled one) in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> Option<f64> {
    metric_sum_where(text, name, "")
}

/// Like `metric_sum`, over the series whose labels contain `label` (e.g. `resumed="true"`).
pub fn metric_sum_where(text: &str, name: &str, label: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (base, labels) = series.split_once('{').unwrap_or((series, ""));
        if base == name && labels.contains(label) {
            if let Ok(v) = value.parse::<f64>() {
                *found.get_or_insert(0.0) += v;
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "4242 (nginx: worker (x) y) S 4241 4241 4241 0 -1 4194624 100 0 0 0 37 15 0 0 20 0 1 0 100 1000 10";
        assert_eq!(parse_stat(stat), Some((4241, 52)));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) S"), None);
    }

    #[test]
    fn our_own_cpu_time_is_readable() {
        let me = std::process::id();
        let stat = fs::read_to_string(format!("/proc/{me}/stat")).expect("procfs");
        assert!(parse_stat(&stat).is_some());
        // Burn a little CPU so at least the reading is not absurd; ticks never go down.
        let before = cpu_ticks(me);
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(cpu_ticks(me) >= before);
    }

    #[test]
    fn metric_sums_over_labels() {
        let text = "# HELP a b\npantera_ledger_batches_total 12\npantera_http_responses_total{status=\"200\"} 5\npantera_http_responses_total{status=\"503\"} 2\npantera_ledger_batches_total_x 9\n";
        assert_eq!(metric_sum(text, "pantera_ledger_batches_total"), Some(12.0));
        assert_eq!(metric_sum(text, "pantera_http_responses_total"), Some(7.0));
        assert_eq!(metric_sum(text, "pantera_missing"), None);
        assert_eq!(metric_sum_where(text, "pantera_http_responses_total", "status=\"503\""), Some(2.0));
        assert_eq!(metric_sum_where(text, "pantera_ledger_batches_total", "x=\"1\""), None);
    }
}
