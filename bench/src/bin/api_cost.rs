//! `api_cost`: the cost of the HTTP + JSON layer per transfer, without TLS and the ledger:
//! decode a `POST /v1/transfers` request (fed in 16 KiB pieces, as TLS hands records over),
//! map it to a command, render the reply and encode the response, for batches of 1, 100 and
//! the maximum number of transfers. Figures only.
//!
//! ```text
//! cargo run --release -p bench --bin api_cost
//! ```
#![forbid(unsafe_code)]

use std::time::Instant;

use anyhow::{bail, Context, Result};
use ledger_svc::api::{self, Action, Command, Role};
use ledger_svc::http::{Limits, RequestDecoder};
use ledger_svc::{CreateTransferResult, Operation, OperationReply, StateMachine, BATCH_EVENTS_MAX};

fn main() -> Result<()> {
    // An empty ledger: the replies say `exists`, whose rendering needs no lookup.
    let empty = StateMachine::new();
    for (events, rounds) in [(1usize, 200_000usize), (100, 4_000), (BATCH_EVENTS_MAX, 50)] {
        let stream = batch_request(events);
        let mut out = Vec::with_capacity(1 << 20);
        let started = Instant::now();
        for _ in 0..rounds {
            let mut decoder = RequestDecoder::new(Limits::default());
            for piece in stream.chunks(16 * 1024) {
                decoder.feed(piece);
            }
            let request = decoder
                .poll_request()
                .map_err(|e| anyhow::anyhow!("decode: {e:?}"))?
                .context("the request did not decode whole")?;
            let Action::Ledger(Command::Mutate(operation)) = api::handle(&request, Role::Write)
            else {
                bail!("the request is not a mutation");
            };
            let Operation::CreateTransfers(transfers) = &operation else {
                bail!("the request is not create_transfers");
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
    Ok(())
}

/// One HTTP/1.1 request creating `events` transfers from account 1 to account 2.
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
