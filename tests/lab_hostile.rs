//! Hostile clients with valid certificates, on a private lab (root): a client that pipelines
//! and never reads, and clients that trickle their requests a byte a second. Each attack is
//! bounded in count and time and stops by itself.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

fn two_accounts(stream: &mut TlsStream) {
    let (status, body) = request(stream, "POST", "/v1/accounts", r#"[{"id":"1","ledger":1,"code":10},{"id":"2","ledger":1,"code":10}]"#).expect("create accounts");
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_client_that_pipelines_and_never_reads_cannot_grow_memory_and_others_are_served() {
    let lab = lab("hostile-pipe", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, dir.path(), "ledger", "");
    let addr = SocketAddr::from((server.service, PORT));
    let config = tls_client_config(&dir.path().join("tls"), Some("client"));
    let attack_for = Duration::from_secs(60);

    // The honest client, and the appliance's memory once it is warm.
    let honest = {
        let config = Arc::clone(&config);
        in_netns(&lab.spec.netns, move || {
            let mut s = tls_connect(&config, addr).expect("connect");
            two_accounts(&mut s);
            for _ in 0..200 {
                assert_eq!(request(&mut s, "GET", "/v1/accounts/1", "").expect("GET").0, 200);
            }
            s
        })
        .join()
        .expect("honest client")
    };
    let rss_start = rss_bytes(server.pid());

    // The attacker: 404s with 4 KB paths, pipelined without end, never reading a byte.
    let stop = Arc::new(AtomicBool::new(false));
    let attacker = {
        let (config, stop) = (Arc::clone(&config), Arc::clone(&stop));
        in_netns(&lab.spec.netns, move || {
            let mut s = tls_connect(&config, addr).expect("attacker connects");
            s.sock.set_write_timeout(Some(Duration::from_millis(500))).expect("timeout");
            let request = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(4096));
            let mut sent = 0usize;
            while !stop.load(Ordering::Relaxed) {
                match s.write_all(request.as_bytes()) {
                    Ok(()) => sent += request.len(),
                    // The window is closed: the appliance stopped reading us. Keep pushing.
                    Err(_) => thread::sleep(Duration::from_millis(50)),
                }
            }
            sent
        })
    };

    // Meanwhile the honest client keeps going; the appliance's memory is sampled each second.
    let honest = {
        let stop = Arc::clone(&stop);
        in_netns(&lab.spec.netns, move || {
            let mut s = honest;
            let mut per_second = Vec::new();
            let started = Instant::now();
            while started.elapsed() < attack_for {
                let second = Instant::now();
                let mut n = 0;
                while second.elapsed() < Duration::from_secs(1) {
                    let (status, body) = request(&mut s, "GET", "/v1/accounts/1", "").expect("the honest client is served");
                    assert_eq!(status, 200, "{body}");
                    n += 1;
                }
                per_second.push(n);
            }
            stop.store(true, Ordering::Relaxed);
            per_second
        })
    };
    let mut rss_max = rss_start;
    while !stop.load(Ordering::Relaxed) {
        rss_max = rss_max.max(rss_bytes(server.pid()));
        thread::sleep(Duration::from_millis(250));
    }
    let per_second = honest.join().expect("honest client");
    let sent = attacker.join().expect("attacker");
    let grown = rss_max.saturating_sub(rss_start);
    println!(
        "attacker pushed {} MB in {attack_for:?}; appliance RSS {} MiB at start, max {} MiB (+{} KiB); honest client {:?} requests/s",
        sent / 1_000_000,
        rss_start >> 20,
        rss_max >> 20,
        grown >> 10,
        per_second
    );
    assert!(grown <= 16 << 20, "RSS grew by {} KiB under the attack", grown >> 10);
    assert!(per_second.iter().all(|&n| n > 0), "the honest client went a whole second unserved: {per_second:?}");
}

#[test]
fn five_hundred_clients_trickling_a_byte_a_second_are_cut_and_the_others_served() {
    let lab = lab("hostile-slow", 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let server = Server::start(&lab, dir.path(), "ledger", "[http]\nhead_timeout_ms = 3000\n");
    let addr = SocketAddr::from((server.service, PORT));
    let config = tls_client_config(&dir.path().join("tls"), Some("client"));
    let slow_count = 500;

    let slow = {
        let config = Arc::clone(&config);
        in_netns(&lab.spec.netns, move || {
            let mut streams: Vec<TlsStream> = (0..slow_count).map(|_| tls_connect(&config, addr).expect("slow client connects")).collect();
            // A head that never ends, one byte a second on every connection, for 8 s.
            let head = b"GET /v1/accounts/1 HTTP/1.1\r\nX-Slow: ";
            let mut cut = 0;
            for second in 0..8 {
                let byte = [head.get(second).copied().unwrap_or(b'a')];
                for s in streams.iter_mut() {
                    let _ = s.write_all(&byte).and_then(|()| s.flush());
                }
                thread::sleep(Duration::from_secs(1));
            }
            // Each was answered 408 and closed.
            for s in streams.iter_mut() {
                s.sock.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
                if let Ok((408, _)) = read_response(s) {
                    cut += 1;
                }
            }
            cut
        })
    };
    // Meanwhile an honest client is served throughout.
    let honest = {
        let config = Arc::clone(&config);
        in_netns(&lab.spec.netns, move || {
            let mut s = tls_connect(&config, addr).expect("honest client connects");
            two_accounts(&mut s);
            let started = Instant::now();
            let mut served = 0;
            while started.elapsed() < Duration::from_secs(8) {
                let (status, body) = request(&mut s, "GET", "/v1/accounts/2", "").expect("the honest client is served");
                assert_eq!(status, 200, "{body}");
                served += 1;
            }
            served
        })
    };
    let cut = slow.join().expect("slow clients");
    let served = honest.join().expect("honest client");
    println!("{cut} of {slow_count} slow clients got 408; the honest client was served {served} times meanwhile");
    assert_eq!(cut, slow_count, "every slow client is cut at its head deadline");
    assert!(served > 0);
    // The counters say why, and the slots come back.
    assert!(server.wait_metric("pantera_http_deadlines_total", &["phase=\"head\""], slow_count as f64) >= slow_count as f64);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open = server.metric_sum("pantera_tcp_connections", &[]);
        if open <= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{open} connections still open after the deadlines");
        thread::sleep(Duration::from_millis(200));
    }
}
