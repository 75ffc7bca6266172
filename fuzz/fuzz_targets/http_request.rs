//! Bytes from a client into the HTTP/1.1 request decoder (ledger-svc `http`), and each decoded
//! request through the API's routing and validation (`api::handle`) for both roles.
//!
//! Input: a split byte, then the stream. Properties beyond "no panic":
//! - the decoder's results do not depend on how TCP split the stream: fed at once, or in
//!   pieces of the split byte's size, it yields the same requests and the same error;
//! - a decoded request re-encoded in canonical form (request line, Host, Content-Length,
//!   Connection) decodes to the same request;
//! - the buffer stays within the head and body limits plus one piece.
#![no_main]

use ledger_svc::api::{self, Role};
use ledger_svc::http::{HttpError, Limits, Method, Request, RequestDecoder, Response, Version};
use libfuzzer_sys::fuzz_target;

/// Small limits, so the fuzzer reaches them with short inputs.
const LIMITS: Limits = Limits {
    header_bytes_max: 1024,
    headers_count_max: 16,
    body_bytes_max: 4096,
    requests_in_flight_max: 4,
};

#[derive(Debug, PartialEq)]
enum Outcome {
    Request(Request),
    Error(HttpError),
}

/// Feeds `pieces` in order, polling after each, answering every request (so the pipelining
/// bound is about depth, not the input's length); stops at the first error.
fn decode<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Vec<Outcome> {
    let mut decoder = RequestDecoder::new(LIMITS);
    let mut outcomes = Vec::new();
    let mut out = Vec::new();
    for piece in pieces {
        decoder.feed(piece);
        loop {
            match decoder.poll_request() {
                Ok(Some(request)) => {
                    outcomes.push(Outcome::Request(request));
                    out.clear();
                    decoder.encode_response(&Response::json(200, b"{}".to_vec()), &mut out);
                }
                Ok(None) => break,
                Err(error) => {
                    outcomes.push(Outcome::Error(error));
                    return outcomes;
                }
            }
        }
        let bound = LIMITS.header_bytes_max + LIMITS.body_bytes_max + piece.len();
        assert!(decoder.buffered_bytes() <= bound, "{} bytes buffered", decoder.buffered_bytes());
    }
    outcomes
}

/// The request in canonical form.
fn encode(request: &Request) -> Vec<u8> {
    let method = match request.method {
        Method::Other => "FROB",
        other => other.as_str(),
    };
    let version = match request.version {
        Version::Http10 => "HTTP/1.0",
        Version::Http11 => "HTTP/1.1",
    };
    let mut out = format!("{method} {} {version}\r\nHost: ledger\r\n", request.target);
    out.push_str(&format!("Content-Length: {}\r\n", request.body.len()));
    match (request.version, request.keep_alive) {
        (Version::Http11, false) => out.push_str("Connection: close\r\n"),
        (Version::Http10, true) => out.push_str("Connection: keep-alive\r\n"),
        _ => {}
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&request.body);
    bytes
}

fuzz_target!(|data: &[u8]| {
    let Some((&split, stream)) = data.split_first() else { return };
    let whole = decode(std::iter::once(stream));
    let pieces = decode(stream.chunks(usize::from(split).max(1)));
    assert_eq!(whole, pieces, "the result depends on how the stream was split");

    for outcome in &whole {
        let Outcome::Request(request) = outcome else { continue };
        let again = decode(std::iter::once(&encode(request)[..]));
        assert_eq!(again.first(), Some(outcome), "re-encoded request decodes differently");
        for role in [Role::Read, Role::Write] {
            let _ = api::handle(request, role);
        }
    }
});
