//! Root lab test of the stateless tier (issue 14, "two appliances, one cluster"): two
//! appliances on two lab links in front of one 3-replica TigerBeetle cluster, under load, lose
//! first the cluster's primary replica, then one appliance. Clients retry an unanswered
//! transfer with the same id through either appliance. Afterwards, read straight from the
//! cluster: every acknowledged transfer is there exactly once, nothing was applied twice,
//! Σ debits = Σ credits, and service resumed by itself after each loss (the gaps are printed).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use cluster::client::BlockingClient;
use cluster::local::LocalCluster;
use cluster::wire::{self, Op};
use common::*;

/// Logical clients; each alternates its first choice of appliance.
const CLIENTS: u128 = 6;
/// Accounts: client k debits account 2k+1 and credits 2k+2.
const ACCOUNTS: u128 = 2 * CLIENTS;
/// Every load phase is bounded in time, every client in requests.
const REQUESTS_PER_CLIENT_MAX: u128 = 20_000;
/// The pause before retrying an unanswered transfer through the other appliance.
const RETRY_PAUSE: Duration = Duration::from_millis(50);
/// How long a client waits for an answer before it retries through the other appliance.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);
const CLUSTER_READY: Duration = Duration::from_secs(90);
const CLUSTER_REQUEST: Duration = Duration::from_secs(30);


/// One way to an appliance: the client namespace of its lab, its service address and a client
/// configuration its CA accepts.
#[derive(Clone)]
struct Route {
    netns: String,
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

/// What the load saw: for each acknowledged transfer, when and through which appliance, and
/// whether the answer was `created` or `exists` (a retry of a transfer that had committed).
#[derive(Default)]
struct Seen {
    acked: BTreeMap<u128, (Instant, usize, &'static str)>,
    attempted: BTreeSet<u128>,
    retries: u64,
}

fn post(stream: &mut TlsStream, id: u128, debit: u128, credit: u128) -> std::io::Result<(u16, String)> {
    let body = format!(
        r#"[{{"id":"{id}","debit_account_id":"{debit}","credit_account_id":"{credit}","amount":"1","ledger":1,"code":1}}]"#
    );
    request(stream, "POST", "/v1/transfers", &body)
}

/// Client `k`: transfers with ids `(k + 1) << 32 ..`, one at a time, each until acknowledged
/// (through either appliance) or the load stops.
fn client(k: u128, routes: Vec<Route>, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let (debit, credit) = (2 * k + 1, 2 * k + 2);
    let mut streams: Vec<Option<TlsStream>> = routes.iter().map(|_| None).collect();
    let mut choice = (k % routes.len() as u128) as usize;
    for n in 0..REQUESTS_PER_CLIENT_MAX {
        let id = ((k + 1) << 32) + n;
        seen.lock().unwrap().attempted.insert(id);
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let route = &routes[choice];
            if streams[choice].is_none() {
                enter_netns(&route.netns);
                streams[choice] = tls_connect(&route.tls, route.addr).ok();
                // A dead appliance sends nothing, not even a reset: a client gives up on an
                // answer after its own timeout and retries elsewhere.
                if let Some(stream) = streams[choice].as_mut() {
                    stream.sock.set_read_timeout(Some(ANSWER_TIMEOUT)).expect("read timeout");
                }
            }
            let answer = match streams[choice].as_mut() {
                Some(stream) => post(stream, id, debit, credit),
                None => Err(std::io::Error::other("no connection")),
            };
            match answer {
                Ok((200, body)) if body.contains(r#""status":"created""#) || body.contains(r#""status":"exists""#) => {
                    let how = if body.contains("created") { "created" } else { "exists" };
                    seen.lock().unwrap().acked.insert(id, (Instant::now(), choice, how));
                    break;
                }
                Ok((200, body)) => panic!("transfer {id}: an unexpected result {body}"),
                Ok((503, _)) => {}
                Ok((status, body)) => panic!("transfer {id}: {status} {body}"),
                Err(_) => streams[choice] = None,
            }
            // Unanswered: the same transfer through the other appliance.
            seen.lock().unwrap().retries += 1;
            choice = (choice + 1) % routes.len();
            thread::sleep(RETRY_PAUSE);
        }
    }
}

/// The longest time between two consecutive acknowledgements in `[from, to]`.
fn longest_gap(acks: &[Instant], from: Instant, to: Instant) -> Duration {
    let inside: Vec<Instant> = acks.iter().copied().filter(|t| *t >= from && *t <= to).collect();
    let mut gap = Duration::ZERO;
    let mut last = from;
    for t in inside {
        gap = gap.max(t - last);
        last = t;
    }
    gap.max(to - last)
}

/// Every transfer the cluster holds with ids in `attempted` (looked up in batches).
fn cluster_transfers(client: &mut BlockingClient, attempted: &BTreeSet<u128>) -> BTreeMap<u128, ledger_svc::Transfer> {
    let ids: Vec<u128> = attempted.iter().copied().collect();
    let mut found = BTreeMap::new();
    for chunk in ids.chunks(8000) {
        let mut body = Vec::new();
        wire::encode_ids(chunk, &mut body);
        let reply = client.request(Op::LookupTransfers, body, CLUSTER_REQUEST).expect("lookup transfers");
        for t in wire::transfers(Op::LookupTransfers, &reply, chunk.len()).expect("transfers") {
            assert!(found.insert(t.id, t).is_none(), "transfer {} returned twice", t.id);
        }
    }
    found
}

/// An appliance with `ledger.backend = "tigerbeetle"` in front of `cluster`
/// (docs/cluster-backend.md): a 1 s deadline, so a request caught by the view change is
/// answered 503 and retried rather than waited on.
fn start_appliance(lab: &Lab, dir: &Path, cluster: &LocalCluster) -> Server {
    let extra = format!("[ledger.tigerbeetle]\naddresses = \"{}\"\nrequest_timeout_ms = 1000\nsessions = 2\n", cluster.addresses());
    Server::start_logged_edited(lab, dir, "ledger", &extra, |text| text.replace("[ledger]\n", "[ledger]\nbackend = \"tigerbeetle\"\n"))
}

#[test]
fn two_appliances_lose_the_primary_then_an_appliance_and_nothing_is_lost_or_doubled() {
    let mut cluster = LocalCluster::start(3).expect("start a 3-replica cluster");
    cluster.wait_ready(CLUSTER_READY).expect("the cluster serves");
    let labs = [lab("tbfa", 1), lab("tbfb", 1)];
    let dirs = [tempfile::tempdir().expect("tempdir"), tempfile::tempdir().expect("tempdir")];
    let mut servers: Vec<Server> = labs.iter().zip(&dirs).map(|(lab, dir)| start_appliance(lab, dir.path(), &cluster)).collect();
    let routes: Vec<Route> = labs
        .iter()
        .zip(&dirs)
        .map(|(lab, dir)| Route {
            netns: lab.spec.netns.clone(),
            addr: SocketAddr::from((lab.spec.service_ipv4, PORT)),
            tls: tls_client_config(&dir.path().join("tls"), Some("client")),
        })
        .collect();

    // The accounts, through the first appliance.
    {
        let route = routes[0].clone();
        let accounts: Vec<String> = (1..=ACCOUNTS).map(|id| format!(r#"{{"id":"{id}","ledger":1,"code":1}}"#)).collect();
        let body = format!("[{}]", accounts.join(","));
        in_netns(&route.netns, move || {
            let mut s = tls_connect(&route.tls, route.addr).expect("connect");
            let (status, body) = request(&mut s, "POST", "/v1/accounts", &body).expect("accounts");
            assert_eq!(status, 200, "{body}");
            assert_eq!(body.matches("created").count(), ACCOUNTS as usize, "{body}");
        })
        .join()
        .expect("accounts");
    }

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|k| {
            let (routes, stop, seen) = (routes.clone(), Arc::clone(&stop), Arc::clone(&seen));
            thread::spawn(move || client(k, routes, stop, seen))
        })
        .collect();

    // Steady load, then the primary dies.
    thread::sleep(Duration::from_secs(3));
    let primary = cluster.primary();
    let primary_killed_at = Instant::now();
    cluster.kill(primary);
    thread::sleep(Duration::from_secs(10));
    // Then one appliance dies (SIGKILL: no drain); its clients retry through the other.
    let appliance_killed_at = Instant::now();
    servers[0].kill();
    thread::sleep(Duration::from_secs(6));
    let ended_at = Instant::now();
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().expect("a client panicked");
    }
    let seen = Arc::try_unwrap(seen).ok().expect("clients joined").into_inner().unwrap();

    // The gaps, and service resumed after each loss.
    let acks: Vec<Instant> = {
        let mut v: Vec<Instant> = seen.acked.values().map(|(t, _, _)| *t).collect();
        v.sort();
        v
    };
    let primary_gap = longest_gap(&acks, primary_killed_at, appliance_killed_at);
    let appliance_gap = longest_gap(&acks, appliance_killed_at, ended_at);
    let after_primary = acks.iter().filter(|t| **t > primary_killed_at && **t < appliance_killed_at).count();
    let after_appliance_via_b = seen.acked.values().filter(|(t, via, _)| *t > appliance_killed_at && *via == 1).count();
    let exists = seen.acked.values().filter(|(_, _, how)| *how == "exists").count();
    println!(
        "acknowledged {} transfers ({} as exists after a retry), {} retries; primary {primary} killed: longest gap {:?}, {} acknowledged before the appliance died; appliance killed: longest gap {:?}, {} acknowledged through the other after",
        seen.acked.len(),
        exists,
        seen.retries,
        primary_gap,
        after_primary,
        appliance_gap,
        after_appliance_via_b
    );
    assert!(after_primary > 0, "service resumed after the primary died");
    assert!(after_appliance_via_b > 0, "service went on through the surviving appliance");
    // Every client whose first choice was the killed appliance got through the other.
    for k in (0..CLIENTS).filter(|k| k % 2 == 0) {
        let base = (k + 1) << 32;
        assert!(
            seen.acked.iter().any(|(id, (t, via, _))| *id >= base && *id < base + (1 << 32) && *t > appliance_killed_at && *via == 1),
            "client {k} got nothing through the surviving appliance"
        );
    }

    // Straight from the cluster (two replicas of three still up).
    let mut reader = BlockingClient::connect(cluster.cluster_id(), &cluster.addresses()).expect("connect");
    let found = cluster_transfers(&mut reader, &seen.attempted);
    for id in seen.acked.keys() {
        let t = found.get(id).unwrap_or_else(|| panic!("acknowledged transfer {id} is not in the cluster"));
        let k = (id >> 32) - 1;
        assert_eq!((t.debit_account_id, t.credit_account_id, t.amount), (2 * k + 1, 2 * k + 2, 1), "transfer {id}");
    }
    // Nothing applied twice: each account's posted balances are exactly the transfers the
    // cluster holds for it (a double application would post an amount with no transfer).
    let mut body = Vec::new();
    wire::encode_ids(&(1..=ACCOUNTS).collect::<Vec<_>>(), &mut body);
    let reply = reader.request(Op::LookupAccounts, body, CLUSTER_REQUEST).expect("lookup accounts");
    let accounts = wire::accounts(Op::LookupAccounts, &reply, ACCOUNTS as usize).expect("accounts");
    assert_eq!(accounts.len(), ACCOUNTS as usize);
    let (mut debits, mut credits) = (0u128, 0u128);
    for a in &accounts {
        let debited = found.values().filter(|t| t.debit_account_id == a.id).map(|t| t.amount).sum::<u128>();
        let credited = found.values().filter(|t| t.credit_account_id == a.id).map(|t| t.amount).sum::<u128>();
        assert_eq!((a.debits_posted, a.credits_posted), (debited, credited), "account {}", a.id);
        debits += a.debits_posted;
        credits += a.credits_posted;
    }
    assert_eq!(debits, credits, "Σ debits = Σ credits");
    assert!(found.len() >= seen.acked.len());
    let _ = std::io::stdout().flush();
    drop(servers);
}
