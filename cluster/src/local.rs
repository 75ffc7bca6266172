//! A TigerBeetle cluster on loopback for tests and benchmarks: formatted and started in a
//! directory of its own, stopped and removed when the guard drops (also when a test panics).
//!
//! It runs the server `cargo xtask tigerbeetle build` installs (docs/cluster.md). Replicas are
//! started with [`START_OPTIONS`]: `--development` (no direct I/O requirement, the lab's disks;
//! smallest caches), requests of up to 1 MiB (TigerBeetle's full 8189-event batch, which
//! `--development` alone cuts to 32 KiB) and a 16 MiB manifest (~115 MiB less per replica than
//! the default). A replica still takes ~1.7 GiB RSS, most of it fixed at compile time, and a
//! 1.06 GiB data file (docs/cluster.md "Memory and disk per replica").
//!
//! Only the processes this guard started are ever signalled, by their pid.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use std::{env, fs};

use crate::ClusterError;

pub use crate::pins::{RELEASE as TIGERBEETLE_RELEASE, SERVER_PATH, START_OPTIONS};

/// How long `tigerbeetle format` may take before the start is abandoned.
const FORMAT_TIMEOUT: Duration = Duration::from_secs(60);

/// The server binary: `PANTERA_TIGERBEETLE` if set, else the one `cargo xtask tigerbeetle
/// build` installed under the workspace's target directory.
pub fn server_binary() -> Result<PathBuf, ClusterError> {
    if let Some(path) = env::var_os("PANTERA_TIGERBEETLE") {
        return Ok(PathBuf::from(path));
    }
    // This crate lives one level below the workspace root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("cluster/ has a parent");
    let path = root.join(SERVER_PATH);
    if path.is_file() {
        Ok(path)
    } else {
        Err(ClusterError::Connect(format!(
            "no TigerBeetle server at {} (run `cargo xtask tigerbeetle build`, or set PANTERA_TIGERBEETLE)",
            path.display()
        )))
    }
}

/// A running local cluster. Dropping it kills its replicas and removes its directory.
#[derive(Debug)]
pub struct LocalCluster {
    binary: PathBuf,
    dir: PathBuf,
    cluster_id: u128,
    ports: Vec<u16>,
    replicas: Vec<Option<Child>>,
}

impl LocalCluster {
    /// Formats and starts `replicas` replicas (1–6) on free loopback ports. Returns once the
    /// processes run; whether the cluster serves yet is the caller's question
    /// (`wait_ready` with the `tigerbeetle` feature).
    pub fn start(replicas: u8) -> Result<LocalCluster, ClusterError> {
        assert!((1..=6).contains(&replicas), "a TigerBeetle cluster has 1 to 6 replicas");
        let binary = server_binary()?;
        let dir = env::temp_dir().join(format!("pantera-tb-{}-{}", std::process::id(), unique()));
        fs::create_dir_all(&dir).map_err(|e| io("create", &dir, e))?;
        // Free ports: bind port 0, note it, release it. Another process could take one in
        // between; the replica then fails to start and the test says so.
        let listeners: Vec<TcpListener> = (0..replicas)
            .map(|_| TcpListener::bind("127.0.0.1:0"))
            .collect::<Result<_, _>>()
            .map_err(|e| io("bind", Path::new("127.0.0.1:0"), e))?;
        let ports = listeners.iter().map(|l| l.local_addr().expect("bound").port()).collect();
        drop(listeners);
        let mut cluster = LocalCluster { binary, dir, cluster_id: 0, ports, replicas: Vec::new() };
        for replica in 0..replicas {
            cluster.format(replica)?;
        }
        for replica in 0..replicas {
            let child = cluster.spawn(replica)?;
            cluster.replicas.push(Some(child));
        }
        Ok(cluster)
    }

    pub fn cluster_id(&self) -> u128 {
        self.cluster_id
    }

    /// `127.0.0.1:P0,127.0.0.1:P1,...`, in replica order: what clients and replicas are given.
    pub fn addresses(&self) -> String {
        self.ports.iter().map(|p| format!("127.0.0.1:{p}")).collect::<Vec<_>>().join(",")
    }

    pub fn replicas(&self) -> usize {
        self.ports.len()
    }

    /// The pid of replica `i`, if it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.replicas[i].as_ref().map(Child::id)
    }

    /// Kills replica `i` (SIGKILL, as a power cut would) and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.replicas[i].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts replica `i` again on its data file.
    pub fn restart(&mut self, i: usize) -> Result<(), ClusterError> {
        self.kill(i);
        let child = self.spawn(i as u8)?;
        self.replicas[i] = Some(child);
        Ok(())
    }

    /// The replica that leads the newest view any replica has logged entering (VSR: the
    /// primary of view v is replica v mod n). A fresh cluster starts in view 0 without logging
    /// a view change, so no such line means replica 0. A view change under way and not yet
    /// logged is not seen: call it once the cluster serves.
    pub fn primary(&self) -> usize {
        let view = (0..self.replicas())
            .filter_map(|i| fs::read_to_string(self.dir.join(format!("replica-{i}.log"))).ok())
            .flat_map(|log| log.lines().filter_map(logged_view).collect::<Vec<_>>())
            .max()
            .unwrap_or(0);
        (view % self.replicas() as u64) as usize
    }

    /// The directory holding the data files and logs (`replica-I.log`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn data_file(&self, replica: u8) -> PathBuf {
        self.dir.join(format!("{}_{replica}.tigerbeetle", self.cluster_id))
    }

    fn format(&self, replica: u8) -> Result<(), ClusterError> {
        let mut child = Command::new(&self.binary)
            .arg("format")
            .arg(format!("--cluster={}", self.cluster_id))
            .arg(format!("--replica={replica}"))
            .arg(format!("--replica-count={}", self.ports.len()))
            .arg("--development")
            .arg(self.data_file(replica))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| io("run", &self.binary, e))?;
        let deadline = Instant::now() + FORMAT_TIMEOUT;
        loop {
            match child.try_wait().map_err(|e| io("wait for", &self.binary, e))? {
                Some(status) if status.success() => return Ok(()),
                Some(status) => {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
                    }
                    return Err(ClusterError::Connect(format!("tigerbeetle format of replica {replica}: {status}: {}", stderr.trim())));
                }
                None if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(ClusterError::Connect(format!("tigerbeetle format of replica {replica} took over {FORMAT_TIMEOUT:?}")));
                }
                None => std::thread::sleep(Duration::from_millis(20)),
            }
        }
    }

    fn spawn(&self, replica: u8) -> Result<Child, ClusterError> {
        let log_path = self.dir.join(format!("replica-{replica}.log"));
        let log = fs::OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| io("open", &log_path, e))?;
        let log_err = log.try_clone().map_err(|e| io("open", &log_path, e))?;
        Command::new(&self.binary)
            .arg("start")
            .arg(format!("--addresses={}", self.addresses()))
            .args(START_OPTIONS)
            .arg(self.data_file(replica))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| io("start", &self.binary, e))
    }
}

#[cfg(feature = "tigerbeetle")]
impl LocalCluster {
    /// Waits until the cluster answers a request (a lookup of one account), at most `timeout`.
    pub fn wait_ready(&self, timeout: Duration) -> Result<(), ClusterError> {
        let mut client = crate::client::BlockingClient::connect(self.cluster_id, &self.addresses())?;
        let mut body = Vec::new();
        crate::wire::encode_ids(&[1], &mut body);
        client.request(crate::wire::Op::LookupAccounts, body, timeout).map(drop)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.replicas.len() {
            self.kill(i);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// The view a replica's log line says it entered in normal status:
/// `...: transition_to_normal_from_view_change_status: view=A..B primary` gives B.
fn logged_view(line: &str) -> Option<u64> {
    let rest = line.split("transition_to_normal_from_view_change_status: view=").nth(1)?;
    let range = rest.split_whitespace().next()?;
    range.rsplit("..").next()?.parse().ok()
}

fn io(what: &str, path: &Path, e: std::io::Error) -> ClusterError {
    ClusterError::Connect(format!("cannot {what} {}: {e}", path.display()))
}

/// A number no other cluster of this process has used.
fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod log_tests {
    #[test]
    fn the_view_entered_is_read_from_a_replica_log_line() {
        let line = "info(replica): 1: transition_to_normal_from_view_change_status: view=3..4 primary";
        assert_eq!(super::logged_view(line), Some(4));
        assert_eq!(super::logged_view("info(replica): 1: on_start_view_change: view=4 quorum received"), None);
        assert_eq!(super::logged_view("transition_to_normal_from_view_change_status: view=x..y backup"), None);
    }
}

#[cfg(all(test, feature = "tigerbeetle"))]
mod tests {
    use super::*;
    use crate::client::BlockingClient;
    use crate::wire::{self, Op};
    use ledger_svc::model::{Account, CreateAccountResult, Operation, OperationReply};

    const READY: Duration = Duration::from_secs(60);
    const REQUEST: Duration = Duration::from_secs(30);

    #[test]
    fn an_account_survives_a_replica_killed_and_restarted() {
        let mut cluster = LocalCluster::start(1).expect("start");
        cluster.wait_ready(READY).expect("ready");
        let mut client = BlockingClient::connect(cluster.cluster_id(), &cluster.addresses()).expect("connect");
        let account = Account { id: 42, ledger: 1, code: 1, ..Default::default() };
        let mut body = Vec::new();
        let op = wire::encode_operation(&Operation::CreateAccounts(vec![account]), &mut body);
        let reply = client.request(op, body.clone(), REQUEST).expect("create");
        assert_eq!(wire::create_results(op, 1, &reply).unwrap(), OperationReply::CreateAccounts(vec![CreateAccountResult::Ok]));
        // The same event again: TigerBeetle's idempotency.
        let reply = client.request(op, body, REQUEST).expect("create again");
        assert_eq!(wire::create_results(op, 1, &reply).unwrap(), OperationReply::CreateAccounts(vec![CreateAccountResult::Exists]));
        drop(client);

        let pid = cluster.pid(0).expect("running");
        cluster.kill(0);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "replica 0 was killed and reaped");
        cluster.restart(0).expect("restart");
        cluster.wait_ready(READY).expect("ready again");
        let mut client = BlockingClient::connect(cluster.cluster_id(), &cluster.addresses()).expect("connect");
        let mut ids = Vec::new();
        wire::encode_ids(&[42, 43], &mut ids);
        let reply = client.request(Op::LookupAccounts, ids, REQUEST).expect("lookup");
        let found = wire::accounts(Op::LookupAccounts, &reply, 2).unwrap();
        assert_eq!(found.len(), 1, "account 42 is durable, 43 never existed");
        assert_eq!(found[0].id, 42);
        assert_ne!(found[0].timestamp, 0, "the cluster assigned a timestamp");
    }

    #[test]
    fn three_replicas_elect_a_new_primary_when_the_primary_dies() {
        let mut cluster = LocalCluster::start(3).expect("start");
        cluster.wait_ready(READY).expect("ready");
        let old = cluster.primary();
        let mut client = BlockingClient::connect(cluster.cluster_id(), &cluster.addresses()).expect("connect");
        let mut body = Vec::new();
        let op = wire::encode_operation(&Operation::CreateAccounts(vec![Account { id: 7, ledger: 1, code: 1, ..Default::default() }]), &mut body);
        let reply = client.request(op, body, REQUEST).expect("create");
        assert_eq!(wire::create_results(op, 1, &reply).unwrap(), OperationReply::CreateAccounts(vec![CreateAccountResult::Ok]));
        cluster.kill(old);
        // The survivors' view change: the same session's next request waits for it.
        let mut ids = Vec::new();
        wire::encode_ids(&[7], &mut ids);
        let reply = client.request(Op::LookupAccounts, ids, READY).expect("lookup after the view change");
        assert_eq!(wire::accounts(Op::LookupAccounts, &reply, 1).unwrap().len(), 1);
        assert_ne!(cluster.primary(), old, "a replica logged leading a newer view");
    }

    #[test]
    fn a_dropped_cluster_leaves_no_process_and_no_files() {
        let cluster = LocalCluster::start(1).expect("start");
        let pid = cluster.pid(0).expect("running");
        let dir = cluster.dir().to_owned();
        assert!(dir.exists());
        drop(cluster);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(!dir.exists());
    }
}
