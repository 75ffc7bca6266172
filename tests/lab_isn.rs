//! Initial sequence numbers (RFC 6528 §3) on a private lab (root): 1,002 of the appliance's
//! SYN-ACKs, captured with tcpdump in the client namespace, across three starts and two queues.
//! With the stack's seed left at 0 every start (and every queue) produced the same sequence of
//! ISNs; with a random seed smoltcp's PRNG still let one observed ISN predict the next. Now
//! each ISN is a keyed hash of the four-tuple plus a 4 µs clock (docs/tcp.md).

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

/// Connects `count` times to `addr` from the client namespace and returns the ISN of every
/// SYN-ACK the appliance sent meanwhile.
fn capture_isns(lab: &Lab, addr: SocketAddr, count: usize) -> Vec<u32> {
    let filter = format!("src host {} and tcp[tcpflags] & (tcp-syn|tcp-ack) == (tcp-syn|tcp-ack)", addr.ip());
    let mut tcpdump = lab
        .ns_command(&["tcpdump", "-n", "-l", "-S", "-i", &lab.spec.peer_if, "-c", &count.to_string(), &filter])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcpdump");
    // tcpdump says "listening on ..." on stderr once its filter is attached.
    let stderr = tcpdump.stderr.take().expect("stderr");
    let (ready_tx, ready_rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("listening on") {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(10)).expect("tcpdump did not start listening");
    let connects = in_netns(&lab.spec.netns, move || {
        for _ in 0..count {
            // The echo app: connect, then close; only the SYN-ACK matters.
            drop(TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect"));
        }
    });
    connects.join().expect("client");
    let deadline = Instant::now() + Duration::from_secs(10);
    while tcpdump.try_wait().expect("try_wait").is_none() {
        if Instant::now() > deadline {
            let _ = tcpdump.kill();
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let _ = tcpdump.wait();
    let mut out = String::new();
    tcpdump.stdout.take().expect("stdout").read_to_string(&mut out).expect("tcpdump output");
    // "... Flags [S.], seq 1234567890, ack ..."
    let isns: Vec<u32> = out
        .lines()
        .filter_map(|l| l.split_once(", seq ")?.1.split(',').next()?.trim().parse().ok())
        .collect();
    assert_eq!(isns.len(), count, "captured {} of {count} SYN-ACKs:\n{out}", isns.len());
    isns
}

#[test]
fn initial_sequence_numbers_repeat_across_neither_restarts_nor_queues() {
    let lab = lab("isn", 2);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = Server::start(&lab, dir.path(), "echo", "");
    let addr = SocketAddr::from((server.service, PORT));
    let mut starts = Vec::new();
    for start in 0..3 {
        if start > 0 {
            assert!(server.terminate().success(), "clean stop");
            server.spawn();
        }
        starts.push(capture_isns(&lab, addr, 334));
    }
    // Both queues served: flows spread over them.
    let q1 = server.metric_sum("pantera_tcp_connections_accepted_total", &["queue=\"1\""]);
    assert!(q1 >= 1.0, "queue 1 accepted nothing:\n{}", server.metrics());
    let all: Vec<u32> = starts.concat();
    let distinct: HashSet<u32> = all.iter().copied().collect();
    assert_eq!(distinct.len(), all.len(), "repeated ISNs across 3 starts and 2 queues: {starts:?}");
    // No shared sequence: the steps between successive ISNs (successive client ports) are
    // as good as unrelated, not a counter or a PRNG stream replayed with an offset.
    for isns in &starts {
        let steps: HashSet<u32> = isns.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
        assert!(steps.len() * 100 >= (isns.len() - 1) * 99, "repeated steps: {} of {}", steps.len(), isns.len() - 1);
    }
    // No start replays another's sequence, even shifted.
    for (a, b) in [(0, 1), (0, 2), (1, 2)] {
        let first: HashSet<u32> = starts[a].iter().copied().collect();
        assert!(starts[b].iter().all(|isn| !first.contains(isn)), "start {b} shares ISNs with start {a}");
    }
}
