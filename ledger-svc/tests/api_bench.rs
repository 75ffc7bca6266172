//! Cost of the HTTP + JSON layer per transfer, without TLS and the ledger. Prints figures and
//! asserts none (a test never asserts a wall-clock time). Run with
//! `cargo test --release -p ledger-svc --test api_bench -- --ignored --nocapture`.

use std::time::Instant;

use ledger_svc::api::{self, Action, Command, Role};
use ledger_svc::http::{Limits, RequestDecoder};
use ledger_svc::{CreateTransferResult, Operation, OperationReply, StateMachine, BATCH_EVENTS_MAX};

fn batch_request(events: usize) -> Vec<u8> {
    let mut body = b"[".to_vec();
    for i in 0..events {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(
            format!(
                r#"{{"id":"{}","debit_account_id":"1","credit_account_id":"2","amount":"100","ledger":1,"code":1}}"#,
                1_000_000 + i
            )
            .as_bytes(),
        );
    }
    body.push(b']');
    let mut request = format!(
        "POST /v1/transfers HTTP/1.1\r\nHost: pantera\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    request
}

#[test]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
fn bench_decode_handle_render() {
    // An empty ledger: the replies say `exists`, whose rendering needs no lookup.
    let empty = StateMachine::new();
    for (events, rounds) in [(1usize, 200_000usize), (100, 4_000), (BATCH_EVENTS_MAX, 50)] {
        let stream = batch_request(events);
        let mut out = Vec::with_capacity(1 << 20);
        let started = Instant::now();
        for _ in 0..rounds {
            let mut decoder = RequestDecoder::new(Limits::default());
            // TLS hands over records of at most 16 KiB.
            for piece in stream.chunks(16 * 1024) {
                decoder.feed(piece);
            }
            let request = decoder.poll_request().unwrap().unwrap();
            let Action::Ledger(Command::Mutate(operation)) = api::handle(&request, Role::Write)
            else {
                panic!("not a mutation");
            };
            let Operation::CreateTransfers(transfers) = &operation else {
                panic!()
            };
            let reply = OperationReply::CreateTransfers(vec![
                CreateTransferResult::Exists;
                transfers.len()
            ]);
            let response = api::render_reply(&reply, &empty, &operation);
            out.clear();
            decoder.encode_response(&response, &mut out);
        }
        let elapsed = started.elapsed();
        let per_event_ns = elapsed.as_nanos() as f64 / (rounds * events) as f64;
        println!(
            "batch of {events:>5} transfers ({:>7} request bytes): {:>8.1} µs per request, {per_event_ns:>6.0} ns per transfer, {:>5.0} MB/s of request",
            stream.len(),
            elapsed.as_secs_f64() * 1e6 / rounds as f64,
            (stream.len() * rounds) as f64 / elapsed.as_secs_f64() / 1e6
        );
    }
}
