//! End to end in memory: request bytes -> RequestDecoder -> api::handle -> StateMachine ->
//! api::query / api::render_reply -> response bytes, as a worker and the ledger thread do it
//! (without TLS and the WAL).

use ledger_svc::api::{self, Action, Command, Role};
use ledger_svc::http::{Limits, RequestDecoder};
use ledger_svc::{Operation, OperationReply, StateMachine};

/// One parsed response.
#[derive(Debug)]
struct Reply {
    status: u16,
    close: bool,
    json: serde_json::Value,
}

/// Serves every request in `stream` (fed `piece` bytes at a time) and returns the raw output.
fn serve(state: &mut StateMachine, role: Role, stream: &[u8], piece: usize) -> Vec<u8> {
    let mut decoder = RequestDecoder::new(Limits::default());
    let mut out = Vec::new();
    let mut now_ns = 1_000;
    for chunk in stream.chunks(piece.max(1)) {
        decoder.feed(chunk);
        loop {
            let request = match decoder.poll_request() {
                Ok(Some(request)) => request,
                Ok(None) => break,
                Err(error) => {
                    decoder.encode_response(&(&error).into(), &mut out);
                    return out;
                }
            };
            let response = match api::handle(&request, role) {
                Action::Respond(response) => response,
                Action::Ledger(Command::Mutate(operation)) => {
                    now_ns += 1_000;
                    let reply = match &operation {
                        Operation::CreateAccounts(events) => {
                            OperationReply::CreateAccounts(state.create_accounts(now_ns, events))
                        }
                        Operation::CreateTransfers(events) => {
                            OperationReply::CreateTransfers(state.create_transfers(now_ns, events))
                        }
                    };
                    api::render_reply(&reply, state, &operation)
                }
                Action::Ledger(command) => api::query(state, &command),
            };
            if decoder.encode_response(&response, &mut out) {
                return out;
            }
        }
    }
    out
}

/// Splits `out` into responses.
fn parse_replies(mut out: &[u8]) -> Vec<Reply> {
    let mut replies = Vec::new();
    while !out.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = response.parse(out).unwrap() else {
            panic!("partial response");
        };
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| std::str::from_utf8(h.value).unwrap())
        };
        let length: usize = header("content-length").unwrap().parse().unwrap();
        assert_eq!(header("content-type"), Some("application/json"));
        let close = header("connection") == Some("close");
        let json = serde_json::from_slice(&out[head..head + length]).unwrap();
        replies.push(Reply {
            status: response.code.unwrap(),
            close,
            json,
        });
        out = &out[head + length..];
    }
    replies
}

fn post(path: &str, body: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: pantera\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: pantera\r\n\r\n")
}

fn session() -> String {
    [
        post(
            "/v1/accounts",
            r#"[{"id":"1","ledger":1,"code":10},{"id":"2","ledger":1,"code":10},
                {"id":"3","ledger":1,"code":10,"flags":["debits_must_not_exceed_credits"]},
                {"id":"0","ledger":1,"code":10}]"#,
        ),
        post(
            "/v1/transfers",
            r#"[{"id":"7","debit_account_id":"1","credit_account_id":"2","amount":"100","ledger":1,"code":1},
                {"id":"8","debit_account_id":"3","credit_account_id":"2","amount":"1","ledger":1,"code":1},
                {"id":"7","debit_account_id":"1","credit_account_id":"2","amount":"100","ledger":1,"code":1},
                {"id":"7","debit_account_id":"1","credit_account_id":"2","amount":"101","ledger":1,"code":1}]"#,
        ),
        get("/v1/accounts/1"),
        get("/v1/transfers/7"),
        get("/v1/transfers/99"),
        get("/v1/accounts/2/transfers?reversed=true&limit=10"),
        post("/v1/transfers", r#"[{"id":"9","debit_account_id":"1","credit_account_id":"2","amount":"5","ledger":1,"code":1,"colour":"red"}]"#),
        get("/v1/accounts/1"),
    ]
    .concat()
}

fn check_session(replies: &[Reply]) {
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 404, 200, 400, 200]);

    let accounts = replies[0].json.as_array().unwrap();
    assert_eq!(accounts[0]["status"], "created");
    assert!(
        accounts[0]["timestamp"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            > 0
    );
    assert_eq!(
        accounts[3],
        serde_json::json!({"index":3,"status":"id_must_not_be_zero"})
    );

    let transfers = &replies[1].json;
    assert_eq!(transfers[0]["status"], "created");
    assert_eq!(
        transfers[1],
        serde_json::json!({"index":1,"status":"exceeds_credits"})
    );
    assert_eq!(
        transfers[2],
        serde_json::json!({"index":2,"status":"exists"})
    );
    assert_eq!(
        transfers[3],
        serde_json::json!({"index":3,"status":"exists_with_different_amount"})
    );

    let account = &replies[2].json;
    assert_eq!(account["id"], "1");
    assert_eq!(account["debits_posted"], "100");
    assert_eq!(account["credits_posted"], "0");
    assert_eq!(account["flags"], serde_json::json!([]));

    let transfer = &replies[3].json;
    assert_eq!(transfer["amount"], "100");
    assert_eq!(transfer["timestamp"], transfers[0]["timestamp"]);

    assert_eq!(replies[4].json["error"]["code"], "transfer_not_found");
    assert_eq!(replies[5].json.as_array().unwrap().len(), 1);
    assert_eq!(replies[5].json[0]["id"], "7");

    let error = &replies[6].json["error"];
    assert_eq!(error["code"], "invalid_event");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `colour`"),
        "{error}"
    );
    // The refused batch changed nothing.
    assert_eq!(replies[7].json, replies[2].json);
    assert!(replies.iter().all(|r| !r.close));
}

#[test]
fn pipelined_session_against_the_state_machine() {
    let stream = session();
    let mut state = StateMachine::new();
    let replies = parse_replies(&serve(
        &mut state,
        Role::Write,
        stream.as_bytes(),
        usize::MAX,
    ));
    check_session(&replies);

    // The same stream in pieces of 7 bytes gives the same answers and the same state.
    let mut pieces = StateMachine::new();
    let replies = parse_replies(&serve(&mut pieces, Role::Write, stream.as_bytes(), 7));
    check_session(&replies);
    assert_eq!(pieces.accounts_count(), state.accounts_count());
    assert_eq!(pieces.transfers_count(), state.transfers_count());
}

#[test]
fn reader_role_reads_but_cannot_write() {
    let mut state = StateMachine::new();
    serve(
        &mut state,
        Role::Write,
        post("/v1/accounts", r#"[{"id":"1","ledger":1,"code":1}]"#).as_bytes(),
        usize::MAX,
    );
    let stream = [
        post("/v1/accounts", r#"[{"id":"2","ledger":1,"code":1}]"#),
        get("/v1/accounts/1"),
        get("/v1/accounts/2"),
    ]
    .concat();
    let replies = parse_replies(&serve(
        &mut state,
        Role::Read,
        stream.as_bytes(),
        usize::MAX,
    ));
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [403, 200, 404]);
    assert_eq!(replies[0].json["error"]["code"], "forbidden");
    assert_eq!(state.accounts_count(), 1);
}

#[test]
fn protocol_error_answers_then_closes() {
    let mut state = StateMachine::new();
    let stream = [
        get("/v1/accounts/1"),
        "POST /v1/accounts HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n".to_owned(),
        get("/v1/accounts/1"),
    ]
    .concat();
    let replies = parse_replies(&serve(
        &mut state,
        Role::Write,
        stream.as_bytes(),
        usize::MAX,
    ));
    assert_eq!(replies.len(), 2);
    assert_eq!((replies[0].status, replies[0].close), (404, false));
    assert_eq!((replies[1].status, replies[1].close), (411, true));
    assert_eq!(
        replies[1].json["error"]["code"],
        "transfer_encoding_not_supported"
    );
}

#[test]
fn connection_close_ends_the_session() {
    let mut state = StateMachine::new();
    let stream = format!(
        "GET /v1/accounts/1 HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n{}",
        get("/v1/accounts/2")
    );
    let replies = parse_replies(&serve(
        &mut state,
        Role::Read,
        stream.as_bytes(),
        usize::MAX,
    ));
    assert_eq!(replies.len(), 1);
    assert!(replies[0].close);
}

/// TigerBeetle's imported events and queries in JSON, through the decoder and the state
/// machine: a migration with client timestamps, then query_accounts, query_transfers,
/// get_account_balances and the filtered account transfers, read back by a reader.
#[test]
fn imported_events_and_queries_over_json() {
    let mut state = StateMachine::new();
    let stream = [
        post(
            "/v1/accounts",
            r#"[{"id":"1","ledger":1,"code":10,"user_data_64":"7","flags":["imported","history"],"timestamp":"100"},
                {"id":"2","ledger":1,"code":10,"flags":["imported"],"timestamp":"200"},
                {"id":"3","ledger":2,"code":10,"flags":["imported"],"timestamp":"150"},
                {"id":"4","ledger":1,"code":10}]"#,
        ),
        post(
            "/v1/transfers",
            r#"[{"id":"10","debit_account_id":"2","credit_account_id":"1","amount":"50","ledger":1,"code":1,"user_data_128":"9","flags":["imported"],"timestamp":"300"},
                {"id":"11","debit_account_id":"1","credit_account_id":"2","amount":"20","ledger":1,"code":2,"flags":["imported"],"timestamp":"400"},
                {"id":"12","debit_account_id":"1","credit_account_id":"2","amount":"1","ledger":1,"code":2,"flags":["imported"],"timestamp":"400"},
                {"id":"13","debit_account_id":"1","credit_account_id":"2","amount":"1","ledger":1,"code":2,"flags":["imported","pending"],"timeout":5,"timestamp":"500"},
                {"id":"14","debit_account_id":"1","credit_account_id":"2","amount":"1","ledger":1,"code":2,"timestamp":"0"}]"#,
        ),
    ]
    .concat();
    let replies = parse_replies(&serve(&mut state, Role::Write, stream.as_bytes(), usize::MAX));
    let statuses = |json: &serde_json::Value| -> Vec<String> {
        json.as_array().unwrap().iter().map(|r| r["status"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(
        statuses(&replies[0].json),
        ["created", "created", "imported_event_timestamp_must_not_regress", "imported_event_expected"]
    );
    // A created import answers the client's own timestamp.
    assert_eq!(replies[0].json[1]["timestamp"], "200");
    assert_eq!(
        statuses(&replies[1].json),
        [
            "created",
            "created",
            "imported_event_timestamp_must_not_regress",
            "imported_event_timeout_must_be_zero",
            "imported_event_expected"
        ]
    );

    let queries = [
        get("/v1/accounts?ledger=1&user_data_64=7"),
        get("/v1/transfers?code=2"),
        get("/v1/transfers?user_data_128=9&reversed=true"),
        get("/v1/accounts/1/balances"),
        get("/v1/accounts/1/transfers?code=1"),
        get("/v1/accounts/2/balances"),
        get("/v1/transfers?timestamp_min=301&timestamp_max=400"),
        post("/v1/accounts", r#"[{"id":"5","ledger":1,"code":1}]"#),
    ]
    .concat();
    let replies = parse_replies(&serve(&mut state, Role::Read, queries.as_bytes(), 5));
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 403]);
    let ids = |json: &serde_json::Value| -> Vec<String> {
        json.as_array().unwrap().iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
    };
    assert_eq!(ids(&replies[0].json), ["1"]);
    assert_eq!(replies[0].json[0]["flags"], serde_json::json!(["history", "imported"]));
    assert_eq!(replies[0].json[0]["timestamp"], "100");
    assert_eq!(ids(&replies[1].json), ["11"]);
    assert_eq!(ids(&replies[2].json), ["10"]);
    assert_eq!(
        replies[3].json,
        serde_json::json!([
            {"debits_pending":"0","debits_posted":"0","credits_pending":"0","credits_posted":"50","timestamp":"300"},
            {"debits_pending":"0","debits_posted":"20","credits_pending":"0","credits_posted":"50","timestamp":"400"}
        ])
    );
    assert_eq!(ids(&replies[4].json), ["10"]);
    // Account 2 has no `history`: no balances, as in TigerBeetle.
    assert_eq!(replies[5].json, serde_json::json!([]));
    assert_eq!(ids(&replies[6].json), ["11"]);
    assert_eq!(replies[7].json["error"]["code"], "forbidden");
}
