//! The largest batch a client may send passes the HTTP layer's default limits: decoded from
//! 16 KiB pieces (as TLS hands records over), mapped to one `create_transfers` of
//! `BATCH_EVENTS_MAX` events, its reply rendered with one result per event. (The `api_cost`
//! benchmark times this path; this test keeps its one check that can fail.)

use ledger_svc::api::{self, Action, Command, Role};
use ledger_svc::http::{Limits, RequestDecoder};
use ledger_svc::{CreateTransferResult, Operation, OperationReply, StateMachine, BATCH_EVENTS_MAX};

fn batch_request(events: usize) -> Vec<u8> {
    let items: Vec<String> = (0..events)
        .map(|i| {
            format!(
                r#"{{"id":"{}","debit_account_id":"1","credit_account_id":"2","amount":"100","ledger":1,"code":1}}"#,
                1_000_000 + i
            )
        })
        .collect();
    let body = format!("[{}]", items.join(","));
    format!(
        "POST /v1/transfers HTTP/1.1\r\nHost: pantera\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[test]
fn the_largest_batch_passes_the_default_http_limits() {
    let stream = batch_request(BATCH_EVENTS_MAX);
    assert!(
        stream.len() > 16 * 1024,
        "the request spans several TLS records"
    );
    let mut decoder = RequestDecoder::new(Limits::default());
    for piece in stream.chunks(16 * 1024) {
        decoder.feed(piece);
    }
    let request = decoder
        .poll_request()
        .expect("within the limits")
        .expect("complete");
    let Action::Ledger(Command::Mutate(operation)) = api::handle(&request, Role::Write) else {
        panic!("not a mutation");
    };
    let Operation::CreateTransfers(transfers) = &operation else {
        panic!("not create_transfers: {operation:?}");
    };
    assert_eq!(transfers.len(), BATCH_EVENTS_MAX);

    // An empty ledger: every result is `exists`, whose rendering needs no lookup.
    let reply =
        OperationReply::CreateTransfers(vec![CreateTransferResult::Exists; transfers.len()]);
    let response = api::render_reply(&reply, &StateMachine::new(), &operation);
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let results: Vec<serde_json::Value> =
        serde_json::from_slice(&response.body).expect("a JSON array");
    assert_eq!(results.len(), BATCH_EVENTS_MAX);
    let mut out = Vec::new();
    decoder.encode_response(&response, &mut out);
    assert!(
        out.starts_with(b"HTTP/1.1 200 "),
        "{}",
        String::from_utf8_lossy(&out[..out.len().min(200)])
    );
}
