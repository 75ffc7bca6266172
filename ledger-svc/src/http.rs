//! HTTP/1.1 server-side codec (RFC 9112), sans-IO.
//!
//! One [`RequestDecoder`] per connection is fed the plaintext bytes that come out of TLS and
//! yields complete [`Request`]s in order: keep-alive and pipelining (RFC 9112 §9.3, §9.3.2) are
//! the normal case, not an afterthought. Responses are written with [`encode_response`] (or
//! [`RequestDecoder::encode_response`], which also applies the connection's keep-alive state).
//!
//! Only what the ledger API needs is accepted, and everything accepted is bounded by [`Limits`]:
//! bodies are framed by `Content-Length` alone; any `Transfer-Encoding` is refused with 411, so
//! there is exactly one framing rule and no request-smuggling ambiguity between two
//! (RFC 9112 §6.1, §11.2). A protocol violation is an [`HttpError`], which maps to one status
//! code, one error code and one message, after which the decoder is poisoned and the connection
//! is closed once the requests already in flight have been answered.

use std::collections::VecDeque;
use std::fmt;
use std::io::Write as _;

/// Upper bound for [`Limits::headers_count_max`]: the header table lives on the stack while a
/// request head is parsed.
pub const HEADERS_COUNT_CEILING: usize = 256;

/// The interim response that tells a client waiting on `Expect: 100-continue` to send its body
/// (RFC 9110 §10.1.1).
pub const CONTINUE_RESPONSE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Capacity an emptied decoder buffer may keep for the next request; a larger one is freed.
const IDLE_BUFFER_CAPACITY_MAX: usize = 4 * 1024;

/// Where the decoder is in a request (see [`RequestDecoder::phase`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// No byte of the next request has arrived.
    Idle,
    /// Part of a request head has arrived.
    Head,
    /// The head is complete; the body is still arriving.
    Body,
}

/// Bounds on what one connection may make the decoder hold or do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of a request head: request line, header fields and the empty line. Beyond it: 431.
    /// 8 KiB is what nginx and most proxies allow; our clients send a handful of short headers.
    pub header_bytes_max: usize,
    /// Header fields in one request head. Beyond it: 431.
    pub headers_count_max: usize,
    /// Bytes of one request body. Beyond it: 413, answered from the head alone, before the body
    /// is received. The default fits a full batch of `BATCH_EVENTS_MAX` (8189) transfers with
    /// every field at its widest value in compact JSON (about 640 bytes each, 5.2 MB in all;
    /// see the test `body_limit_fits_a_full_batch_of_widest_transfers` in `api.rs`).
    pub body_bytes_max: usize,
    /// Requests decoded on one connection whose responses are not written yet (pipelining
    /// depth). One more complete request head is refused with 503 and the connection closes,
    /// so one connection cannot queue unbounded work ahead of the others on the ledger thread.
    pub requests_in_flight_max: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_bytes_max: 8 * 1024,
            headers_count_max: 64,
            body_bytes_max: 8 * 1024 * 1024,
            requests_in_flight_max: 32,
        }
    }
}

/// A [`Limits`] value that cannot work, found at startup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LimitsError {
    #[error("http limit {name} is {value}; it must be in {min}..={max}")]
    OutOfRange {
        name: &'static str,
        value: usize,
        min: usize,
        max: usize,
    },
}

impl Limits {
    /// Checks every bound, so a configuration mistake stops the process at startup rather than
    /// refusing every request later.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let checks: [(&'static str, usize, usize, usize); 4] = [
            // A request line with a short target and a Host header needs about 64 bytes.
            ("header_bytes_max", self.header_bytes_max, 64, 1 << 20),
            (
                "headers_count_max",
                self.headers_count_max,
                1,
                HEADERS_COUNT_CEILING,
            ),
            ("body_bytes_max", self.body_bytes_max, 1, 1 << 30),
            (
                "requests_in_flight_max",
                self.requests_in_flight_max,
                1,
                1 << 16,
            ),
        ];
        for (name, value, min, max) in checks {
            if !(min..=max).contains(&value) {
                return Err(LimitsError::OutOfRange {
                    name,
                    value,
                    min,
                    max,
                });
            }
        }
        Ok(())
    }
}

/// Request methods (RFC 9110 §9). Method names are case-sensitive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Patch,
    Options,
    /// Any other token; the API answers it with 405 or 404.
    Other,
}

impl Method {
    fn from_token(token: &str) -> Method {
        match token {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "PATCH" => Method::Patch,
            "OPTIONS" => Method::Options,
            _ => Method::Other,
        }
    }

    /// Methods whose requests carry content, so a missing length cannot mean "no body"
    /// (RFC 9112 §6.3 rule 7 makes it zero, but for these we require it: 411).
    fn requires_length(self) -> bool {
        matches!(self, Method::Post | Method::Put | Method::Patch)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Patch => "PATCH",
            Method::Options => "OPTIONS",
            Method::Other => "(other)",
        }
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    Http10,
    Http11,
}

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The request target in origin form (`/v1/accounts/1?limit=5`); an absolute-form target
    /// (RFC 9112 §3.2.2) is reduced to its path and query.
    pub target: String,
    pub version: Version,
    /// False when this is the last request of the connection: `Connection: close`, or HTTP/1.0
    /// without `Connection: keep-alive` (RFC 9112 §9.3).
    pub keep_alive: bool,
    pub body: Vec<u8>,
}

impl Request {
    /// A request with nothing in it, to be filled by [`RequestDecoder::poll_request_into`]
    /// (which reuses its buffers, so a keep-alive connection allocates none per request).
    pub fn empty() -> Request {
        Request { method: Method::Get, target: String::new(), version: Version::Http11, keep_alive: true, body: Vec::new() }
    }

    /// The target without its query.
    pub fn path(&self) -> &str {
        match self.target.find('?') {
            Some(at) => &self.target[..at],
            None => &self.target,
        }
    }

    /// The query after `?`, if there is one.
    pub fn query(&self) -> Option<&str> {
        self.target.find('?').map(|at| &self.target[at + 1..])
    }
}

/// A response; bodies are always JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// Close the connection after this response.
    pub close: bool,
    /// `Retry-After` in seconds (RFC 9110 §10.2.3), for 503.
    pub retry_after_s: Option<u32>,
    /// `Allow` (RFC 9110 §10.2.1), required with 405.
    pub allow: Option<&'static str>,
    /// The target of the next page of a paged result, sent as
    /// `Link: <target>; rel="next"` (RFC 8288 §3).
    pub next_page: Option<String>,
}

impl Response {
    pub fn json(status: u16, body: Vec<u8>) -> Response {
        Response {
            status,
            body,
            close: false,
            retry_after_s: None,
            allow: None,
            next_page: None,
        }
    }
}

/// Reason phrases for the status codes this server sends (RFC 9110 §15).
fn reason_phrase(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    }
}

/// Writes `response` (status line, headers, body) to `out`.
///
/// Always `Content-Type: application/json` and `Content-Length`, since every body is JSON and
/// length framing is the only framing this server speaks. `Connection: close` when
/// `response.close`.
pub fn encode_response(response: &Response, out: &mut Vec<u8>) {
    encode_response_with(response, response.close, false, out);
}

fn encode_response_with(
    response: &Response,
    close: bool,
    keep_alive_header: bool,
    out: &mut Vec<u8>,
) {
    // Writing into a Vec<u8> cannot fail.
    let _ = write!(
        out,
        "HTTP/1.1 {} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        response.status,
        reason_phrase(response.status),
        response.body.len()
    );
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if keep_alive_header {
        // An HTTP/1.0 client assumes close unless told otherwise (RFC 9112 §9.3).
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    if let Some(seconds) = response.retry_after_s {
        let _ = write!(out, "Retry-After: {seconds}\r\n");
    }
    if let Some(allow) = response.allow {
        let _ = write!(out, "Allow: {allow}\r\n");
    }
    if let Some(next) = &response.next_page {
        let _ = write!(out, "Link: <{next}>; rel=\"next\"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&response.body);
}

/// A request the peer should not have sent. Each maps to one status code and error code
/// ([`HttpError::status`], [`HttpError::code`]); the decoder is poisoned after it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("request head is larger than header_bytes_max ({limit} bytes)")]
    HeadTooLarge { limit: usize },
    #[error("request has more than headers_count_max ({limit}) header fields")]
    TooManyHeaders { limit: usize },
    #[error("request body of {length} bytes is larger than body_bytes_max ({limit} bytes)")]
    BodyTooLarge { length: u64, limit: usize },
    #[error("Transfer-Encoding is not supported; send the body with Content-Length")]
    TransferEncoding,
    #[error("{method} request needs a Content-Length")]
    LengthRequired { method: Method },
    #[error("more than one Content-Length field")]
    DuplicateContentLength,
    #[error("Content-Length is not a decimal number of bytes")]
    InvalidContentLength,
    #[error("malformed request head: {reason}")]
    MalformedHead { reason: &'static str },
    #[error("only HTTP/1.0 and HTTP/1.1 are supported")]
    VersionNotSupported,
    #[error("an HTTP/1.1 request needs exactly one Host field (RFC 9112 §3.2)")]
    Host,
    #[error("request target must be in origin form (/path?query) or absolute form")]
    Target,
    #[error(
        "more than requests_in_flight_max ({limit}) pipelined requests in flight on one connection"
    )]
    TooManyInFlight { limit: usize },
}

impl HttpError {
    /// The status code the peer gets.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeadTooLarge { .. } | HttpError::TooManyHeaders { .. } => 431,
            HttpError::BodyTooLarge { .. } => 413,
            HttpError::TransferEncoding | HttpError::LengthRequired { .. } => 411,
            HttpError::DuplicateContentLength
            | HttpError::InvalidContentLength
            | HttpError::MalformedHead { .. }
            | HttpError::Host
            | HttpError::Target => 400,
            HttpError::VersionNotSupported => 505,
            HttpError::TooManyInFlight { .. } => 503,
        }
    }

    /// The machine-readable error code in the body.
    pub fn code(&self) -> &'static str {
        match self {
            HttpError::HeadTooLarge { .. } => "header_too_large",
            HttpError::TooManyHeaders { .. } => "too_many_headers",
            HttpError::BodyTooLarge { .. } => "body_too_large",
            HttpError::TransferEncoding => "transfer_encoding_not_supported",
            HttpError::LengthRequired { .. } => "length_required",
            HttpError::DuplicateContentLength => "duplicate_content_length",
            HttpError::InvalidContentLength => "invalid_content_length",
            HttpError::MalformedHead { .. } => "malformed_request",
            HttpError::VersionNotSupported => "http_version_not_supported",
            HttpError::Host => "invalid_host",
            HttpError::Target => "invalid_target",
            HttpError::TooManyInFlight { .. } => "too_many_requests_in_flight",
        }
    }
}

/// The wire action for a protocol violation: an error response that closes the connection.
impl From<&HttpError> for Response {
    fn from(error: &HttpError) -> Response {
        let mut response = error_body_response(error.status(), error.code(), &error.to_string());
        response.close = true;
        if let HttpError::TooManyInFlight { .. } = error {
            response.retry_after_s = Some(1);
        }
        response
    }
}

/// `{"error":{"code":"...","message":"..."}}` with `status`.
pub(crate) fn error_body_response(status: u16, code: &str, message: &str) -> Response {
    let mut body = Vec::with_capacity(32 + code.len() + message.len());
    body.extend_from_slice(b"{\"error\":{\"code\":");
    write_json_string(&mut body, code);
    body.extend_from_slice(b",\"message\":");
    write_json_string(&mut body, message);
    body.extend_from_slice(b"}}");
    Response::json(status, body)
}

/// Writes `s` as a JSON string with the escapes RFC 8259 §7 requires.
pub(crate) fn write_json_string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut from = 0;
    for (at, &byte) in bytes.iter().enumerate() {
        let escape: &[u8] = match byte {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[from..at]);
        if escape.is_empty() {
            let _ = write!(out, "\\u{byte:04x}");
        } else {
            out.extend_from_slice(escape);
        }
        from = at + 1;
    }
    out.extend_from_slice(&bytes[from..]);
    out.push(b'"');
}

/// What the decoder keeps of a request until its response is written.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    version: Version,
    keep_alive: bool,
}

/// A parsed request head, kept while its body arrives.
#[derive(Debug)]
struct Head {
    method: Method,
    version: Version,
    keep_alive: bool,
    expect_continue: bool,
}

#[derive(Debug)]
enum State {
    /// Looking for the end of a request head. No end of head starts before `scanned`, so new
    /// bytes are scanned once, not once per arrival (a head fed a byte at a time stays linear).
    Head { scanned: usize },
    /// The head is parsed; waiting for `length` body bytes from `start`.
    Body {
        head: Head,
        length: usize,
        continue_sent: bool,
    },
    /// After the last request of the connection, or a protocol error: nothing more is decoded.
    Closed,
}

/// Per-connection HTTP/1.1 request decoder.
///
/// Use: after every [`feed`](Self::feed), call [`poll_request`](Self::poll_request) until it
/// returns `Ok(None)`; then the buffer holds at most one partial request, bounded by
/// `header_bytes_max + body_bytes_max`. Answer each request, in order, with
/// [`encode_response`](Self::encode_response). On `Err`, answer the requests already in flight,
/// then write `Response::from(&error)` and close the connection.
#[derive(Debug)]
pub struct RequestDecoder {
    limits: Limits,
    /// Received bytes; those before `start` are consumed.
    buffer: Vec<u8>,
    start: usize,
    state: State,
    /// The target of the request being decoded (parsed with its head); swapped into the
    /// request yielded, so its buffer is reused from request to request.
    target: String,
    /// Requests yielded whose responses are not written yet, oldest first.
    in_flight: VecDeque<InFlight>,
}

impl RequestDecoder {
    /// `limits` should have passed [`Limits::validate`]; out-of-range values are clamped so the
    /// decoder itself never panics.
    pub fn new(limits: Limits) -> RequestDecoder {
        let limits = Limits {
            headers_count_max: limits.headers_count_max.clamp(1, HEADERS_COUNT_CEILING),
            requests_in_flight_max: limits.requests_in_flight_max.max(1),
            ..limits
        };
        RequestDecoder {
            limits,
            buffer: Vec::new(),
            start: 0,
            state: State::Head { scanned: 0 },
            target: String::new(),
            in_flight: VecDeque::with_capacity(limits.requests_in_flight_max),
        }
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Requests yielded and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// True once no further request will be decoded: after the last request of the connection
    /// or a protocol error. The connection closes when `in_flight()` reaches zero.
    pub fn is_closed(&self) -> bool {
        matches!(self.state, State::Closed)
    }

    /// Appends received plaintext. Bytes after the end of the connection's last request are
    /// discarded (RFC 9112 §9.6: a server does not process requests after `close`).
    pub fn feed(&mut self, bytes: &[u8]) {
        self.fill(|buffer| {
            buffer.extend_from_slice(bytes);
            bytes.len()
        });
    }

    /// Lets `append` add received plaintext to the end of the buffer directly (no copy through
    /// a scratch buffer); returns what it returns. Nothing is appended after the connection's
    /// last request.
    pub fn fill(&mut self, append: impl FnOnce(&mut Vec<u8>) -> usize) -> usize {
        if self.is_closed() {
            return 0;
        }
        self.compact();
        append(&mut self.buffer)
    }

    /// Bytes received and not yet consumed by a request.
    pub fn buffered_bytes(&self) -> usize {
        self.buffer.len() - self.start
    }

    /// The `Content-Length` of the request whose body is being received.
    pub fn body_length(&self) -> Option<usize> {
        match self.state {
            State::Body { length, .. } => Some(length),
            _ => None,
        }
    }

    /// Where the decoder is in the current request: waiting for its first byte, inside its
    /// head, or inside its body. The connection puts a deadline on each.
    pub fn phase(&self) -> Phase {
        match self.state {
            State::Closed => Phase::Idle,
            State::Head { .. } if self.buffered_bytes() == 0 => Phase::Idle,
            State::Head { .. } => Phase::Head,
            State::Body { .. } => Phase::Body,
        }
    }

    /// Drops consumed bytes when that is cheap relative to what was consumed, so copying stays
    /// amortised linear in the bytes received.
    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        if self.start == self.buffer.len() {
            // Between requests an idle connection keeps no large buffer: the capacity a big
            // batch needed goes back to the allocator.
            if self.buffer.capacity() > IDLE_BUFFER_CAPACITY_MAX {
                self.buffer = Vec::new();
            } else {
                self.buffer.clear();
            }
        } else if self.start >= self.buffer.len() / 2 {
            self.buffer.drain(..self.start);
        } else {
            return;
        }
        if let State::Head { scanned } = &mut self.state {
            *scanned -= self.start;
        }
        self.start = 0;
    }

    /// True when the client is waiting on `Expect: 100-continue` before sending the body of the
    /// current request; the caller then writes [`CONTINUE_RESPONSE`]. Returns true once per
    /// request, and only when no earlier response is pending, since an interim response must
    /// not overtake the final response of an earlier request (RFC 9112 §9.3.2).
    pub fn poll_continue(&mut self) -> bool {
        let no_response_pending = self.in_flight.is_empty();
        match &mut self.state {
            State::Body {
                head,
                continue_sent,
                length,
            } => {
                let waiting = self.buffer.len() - self.start < *length;
                if head.expect_continue && !*continue_sent && waiting && no_response_pending {
                    *continue_sent = true;
                    true
                } else {
                    false
                }
            }
            _ => false,
        }
    }

    /// The next complete request, `Ok(None)` when more bytes are needed (or the connection has
    /// ended), or the protocol error that ends the connection.
    pub fn poll_request(&mut self) -> Result<Option<Request>, HttpError> {
        let mut request = Request::empty();
        Ok(self.poll_request_into(&mut request)?.then_some(request))
    }

    /// As [`poll_request`](Self::poll_request), into `request`: true when a request was
    /// decoded into it. Its target and body buffers are reused (a body larger than the
    /// idle buffer bound is handed over instead of copied), so a connection that keeps one
    /// `Request` for its life allocates nothing per request here in steady state.
    pub fn poll_request_into(&mut self, request: &mut Request) -> Result<bool, HttpError> {
        match self.poll_inner(request) {
            Ok(decoded) => Ok(decoded),
            Err(error) => {
                self.state = State::Closed;
                self.buffer = Vec::new();
                self.start = 0;
                Err(error)
            }
        }
    }

    fn poll_inner(&mut self, request: &mut Request) -> Result<bool, HttpError> {
        loop {
            match &mut self.state {
                State::Closed => return Ok(false),
                State::Head { scanned } => {
                    // RFC 9112 §2.2: ignore empty lines received before the request line.
                    if *scanned <= self.start {
                        loop {
                            match &self.buffer[self.start..] {
                                [b'\n', ..] => self.start += 1,
                                [b'\r', b'\n', ..] => self.start += 2,
                                _ => break,
                            }
                        }
                        *scanned = self.start;
                        if self.buffer[self.start..] == *b"\r" {
                            // Maybe the first half of one more empty line: decide on the next byte.
                            return Ok(false);
                        }
                    }
                    let from = scanned.saturating_sub(2).max(self.start);
                    let Some(end) = find_head_end(&self.buffer, from) else {
                        *scanned = self.buffer.len();
                        if self.buffer.len() - self.start > self.limits.header_bytes_max {
                            return Err(HttpError::HeadTooLarge {
                                limit: self.limits.header_bytes_max,
                            });
                        }
                        return Ok(false);
                    };
                    if end - self.start > self.limits.header_bytes_max {
                        return Err(HttpError::HeadTooLarge {
                            limit: self.limits.header_bytes_max,
                        });
                    }
                    let (head, length) = parse_head(&self.buffer[self.start..end], &self.limits, &mut self.target)?;
                    if self.in_flight.len() >= self.limits.requests_in_flight_max {
                        return Err(HttpError::TooManyInFlight {
                            limit: self.limits.requests_in_flight_max,
                        });
                    }
                    self.start = end;
                    // Nothing is reserved from `Content-Length`: the buffer grows with the
                    // bytes that arrive, so a head that announces 8 MiB costs nothing until
                    // the body is really sent.
                    self.state = State::Body {
                        head,
                        length,
                        continue_sent: false,
                    };
                }
                State::Body { length, .. } => {
                    let length = *length;
                    if self.buffer.len() - self.start < length {
                        return Ok(false);
                    }
                    if self.start + length == self.buffer.len() && length > IDLE_BUFFER_CAPACITY_MAX {
                        // The body is the rest of the buffer (the usual case for a large batch):
                        // hand the buffer itself over instead of copying it, so a batch is never
                        // held twice, and the idle connection keeps no buffer at all.
                        let mut rest = std::mem::take(&mut self.buffer);
                        rest.drain(..self.start);
                        self.start = 0;
                        request.body = rest;
                    } else {
                        // A small body: copied into the request's own buffer, reused.
                        request.body.clear();
                        request.body.extend_from_slice(&self.buffer[self.start..self.start + length]);
                        self.start += length;
                    }
                    let State::Body { head, .. } = std::mem::replace(
                        &mut self.state,
                        State::Head {
                            scanned: self.start,
                        },
                    ) else {
                        unreachable!("matched State::Body above");
                    };
                    if !head.keep_alive {
                        self.state = State::Closed;
                        self.buffer = Vec::new();
                        self.start = 0;
                    }
                    self.in_flight.push_back(InFlight {
                        version: head.version,
                        keep_alive: head.keep_alive,
                    });
                    if self.start == self.buffer.len() {
                        self.compact();
                    }
                    request.method = head.method;
                    request.version = head.version;
                    request.keep_alive = head.keep_alive;
                    std::mem::swap(&mut request.target, &mut self.target);
                    return Ok(true);
                }
            }
        }
    }

    /// Writes the response to the oldest request in flight and returns true when the
    /// connection must be closed once `out` is sent. With no request in flight (the response
    /// to a protocol error) the response closes the connection.
    pub fn encode_response(&mut self, response: &Response, out: &mut Vec<u8>) -> bool {
        let (close, keep_alive_header) = match self.in_flight.pop_front() {
            Some(request) => {
                let close = response.close || !request.keep_alive;
                (close, !close && request.version == Version::Http10)
            }
            None => (true, false),
        };
        if close {
            self.state = State::Closed;
            self.buffer = Vec::new();
            self.start = 0;
        }
        encode_response_with(response, close, keep_alive_header, out);
        close
    }
}

/// The offset just past the empty line that ends a request head: the first `\n\n` or `\n\r\n`
/// at or after `from` (RFC 9112 §2.2 lets a recipient accept a bare LF as a line terminator,
/// and httparse does).
fn find_head_end(buffer: &[u8], from: usize) -> Option<usize> {
    let mut at = from;
    while let Some(offset) = buffer.get(at..)?.iter().position(|&b| b == b'\n') {
        let lf = at + offset;
        match buffer.get(lf + 1..) {
            Some([b'\n', ..]) => return Some(lf + 2),
            Some([b'\r', b'\n', ..]) => return Some(lf + 3),
            _ => at = lf + 1,
        }
    }
    None
}

/// Parses one request head (which ends with its empty line) and returns it with the body length.
/// The request target goes into `target` (cleared first; its buffer is reused).
fn parse_head(bytes: &[u8], limits: &Limits, target: &mut String) -> Result<(Head, usize), HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; HEADERS_COUNT_CEILING];
    let mut request = httparse::Request::new(&mut headers[..limits.headers_count_max]);
    match request.parse(bytes) {
        Ok(httparse::Status::Complete(length)) if length == bytes.len() => {}
        Ok(_) => {
            return Err(HttpError::MalformedHead {
                reason: "incomplete request head",
            })
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HttpError::TooManyHeaders {
                limit: limits.headers_count_max,
            })
        }
        Err(httparse::Error::Version) => return Err(HttpError::VersionNotSupported),
        Err(httparse::Error::HeaderName) => {
            return Err(HttpError::MalformedHead {
                reason: "invalid header name",
            })
        }
        Err(httparse::Error::HeaderValue) => {
            return Err(HttpError::MalformedHead {
                reason: "invalid header value",
            })
        }
        Err(httparse::Error::NewLine) => {
            return Err(HttpError::MalformedHead {
                reason: "invalid line ending",
            })
        }
        Err(_) => {
            return Err(HttpError::MalformedHead {
                reason: "invalid request line",
            })
        }
    }
    // A complete parse fills in all three.
    let (Some(method), Some(path), Some(minor)) = (request.method, request.path, request.version)
    else {
        return Err(HttpError::MalformedHead {
            reason: "invalid request line",
        });
    };
    let method = Method::from_token(method);
    let version = if minor == 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    origin_form(path, target).ok_or(HttpError::Target)?;

    let mut content_length: Option<u64> = None;
    let mut hosts = 0usize;
    let mut close = false;
    let mut keep_alive = false;
    let mut expect_continue = false;
    for header in request.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            // RFC 9112 §6.3 rule 5: several or invalid lengths make the framing unknowable.
            // Even equal duplicates are refused: one value, one meaning.
            if content_length.is_some() {
                return Err(HttpError::DuplicateContentLength);
            }
            content_length = Some(parse_content_length(header.value)?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::TransferEncoding);
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("connection") {
            // RFC 9110 §7.6.1: a comma-separated list of case-insensitive options.
            for option in header.value.split(|&b| b == b',') {
                let option = option.trim_ascii();
                close |= option.eq_ignore_ascii_case(b"close");
                keep_alive |= option.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue |= header
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue");
        }
    }
    if version == Version::Http11 && hosts != 1 {
        return Err(HttpError::Host);
    }
    let length = match content_length {
        Some(length) => length,
        None if method.requires_length() => return Err(HttpError::LengthRequired { method }),
        None => 0,
    };
    let length = match usize::try_from(length) {
        Ok(length) if length <= limits.body_bytes_max => length,
        _ => {
            return Err(HttpError::BodyTooLarge {
                length,
                limit: limits.body_bytes_max,
            })
        }
    };
    let keep_alive = match version {
        Version::Http11 => !close,
        Version::Http10 => keep_alive && !close,
    };
    // RFC 9110 §10.1.1: an HTTP/1.0 request's 100-continue expectation is ignored.
    let expect_continue = expect_continue && version == Version::Http11 && length > 0;
    Ok((
        Head {
            method,
            version,
            keep_alive,
            expect_continue,
        },
        length,
    ))
}

/// `Content-Length = 1*DIGIT` (RFC 9110 §8.6), with overflow treated as invalid.
fn parse_content_length(value: &[u8]) -> Result<u64, HttpError> {
    if value.is_empty() {
        return Err(HttpError::InvalidContentLength);
    }
    let mut length: u64 = 0;
    for &byte in value {
        if !byte.is_ascii_digit() {
            return Err(HttpError::InvalidContentLength);
        }
        length = length
            .checked_mul(10)
            .and_then(|l| l.checked_add(u64::from(byte - b'0')))
            .ok_or(HttpError::InvalidContentLength)?;
    }
    Ok(length)
}

/// Writes the origin-form of a request target into `out` (cleared first). An absolute-form
/// target, which a server must accept (RFC 9112 §3.2.2), is reduced to its path and query;
/// other forms are refused (None).
fn origin_form(target: &str, out: &mut String) -> Option<()> {
    out.clear();
    if target.starts_with('/') {
        out.push_str(target);
        return Some(());
    }
    let lower = target
        .get(..8)
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    let rest = if lower.starts_with("http://") {
        &target[7..]
    } else if lower.starts_with("https://") {
        &target[8..]
    } else {
        return None;
    };
    match rest.find(['/', '?']) {
        Some(at) if rest.as_bytes()[at] == b'/' => out.push_str(&rest[at..]),
        Some(at) => {
            out.push('/');
            out.push_str(&rest[at..]);
        }
        None => out.push('/'),
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn decode_all(decoder: &mut RequestDecoder) -> Result<Vec<Request>, HttpError> {
        let mut requests = Vec::new();
        while let Some(request) = decoder.poll_request()? {
            requests.push(request);
        }
        Ok(requests)
    }

    fn decode(bytes: &[u8]) -> Result<Vec<Request>, HttpError> {
        let mut decoder = RequestDecoder::new(Limits::default());
        decoder.feed(bytes);
        decode_all(&mut decoder)
    }

    fn decode_one_error(bytes: &[u8]) -> HttpError {
        decode(bytes).expect_err("request must be refused")
    }

    #[test]
    fn golden_post_request() {
        let requests = decode(
            b"POST /v1/transfers HTTP/1.1\r\nHost: 10.99.0.2:8443\r\nContent-Type: application/json\r\n\
              Content-Length: 2\r\n\r\n[]",
        )
        .unwrap();
        assert_eq!(
            requests,
            vec![Request {
                method: Method::Post,
                target: "/v1/transfers".into(),
                version: Version::Http11,
                keep_alive: true,
                body: b"[]".to_vec(),
            }]
        );
    }

    #[test]
    fn a_large_body_is_not_kept_once_consumed() {
        let mut decoder = RequestDecoder::new(Limits::default());
        let body = vec![b' '; 1 << 20];
        decoder.feed(
            format!(
                "POST /v1/transfers HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        decoder.feed(&body);
        let request = decoder.poll_request().unwrap().expect("a whole request");
        assert_eq!(request.body.len(), 1 << 20);
        assert_eq!(
            decoder.buffer.capacity(),
            0,
            "the idle connection holds no buffer"
        );
        // The connection is still usable, with bytes split across feeds.
        decoder.feed(b"GET /v1/accounts/1 HTTP/1.1\r\nHo");
        assert!(decoder.poll_request().unwrap().is_none());
        decoder.feed(b"st: a\r\n\r\n");
        assert_eq!(
            decoder
                .poll_request()
                .unwrap()
                .expect("second request")
                .path(),
            "/v1/accounts/1"
        );
        assert!(decoder.buffer.capacity() <= Limits::default().header_bytes_max);
    }

    #[test]
    fn golden_get_request_with_query_and_bare_lf() {
        let requests =
            decode(b"\r\nGET /v1/accounts/1/transfers?limit=5&reversed=true HTTP/1.1\nHost: a\n\n")
                .unwrap();
        assert_eq!(requests.len(), 1);
        let request = &requests[0];
        assert_eq!(request.method, Method::Get);
        assert_eq!(request.path(), "/v1/accounts/1/transfers");
        assert_eq!(request.query(), Some("limit=5&reversed=true"));
        assert!(request.body.is_empty());
        assert!(request.keep_alive);
    }

    #[test]
    fn golden_response_bytes() {
        let mut out = Vec::new();
        encode_response(&Response::json(200, b"[]".to_vec()), &mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"
        );

        let mut out = Vec::new();
        encode_response(
            &Response::from(&HttpError::TooManyInFlight { limit: 32 }),
            &mut out,
        );
        let expected = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
            Content-Length: 145\r\nConnection: close\r\nRetry-After: 1\r\n\r\n\
            {\"error\":{\"code\":\"too_many_requests_in_flight\",\"message\":\"more than \
            requests_in_flight_max (32) pipelined requests in flight on one connection\"}}";
        assert_eq!(String::from_utf8(out).unwrap(), expected);
    }

    #[test]
    fn json_string_escapes() {
        let mut out = Vec::new();
        write_json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, "\"a\\\"b\\\\c\\nd\\u0001é\"".as_bytes());
    }

    #[test]
    fn pipelined_requests_decode_in_order() {
        let stream = b"GET /a HTTP/1.1\r\nHost: h\r\n\r\nPOST /b HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nxyzGET /c HTTP/1.1\r\nHost: h\r\n\r\n";
        let requests = decode(stream).unwrap();
        let targets: Vec<&str> = requests.iter().map(|r| r.target.as_str()).collect();
        assert_eq!(targets, ["/a", "/b", "/c"]);
        assert_eq!(requests[1].body, b"xyz");
    }

    #[test]
    fn responses_follow_keep_alive_state() {
        let mut decoder = RequestDecoder::new(Limits::default());
        decoder.feed(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /b HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /ignored HTTP/1.1\r\nHost: h\r\n\r\n");
        let requests = decode_all(&mut decoder).unwrap();
        assert_eq!(
            requests.len(),
            2,
            "nothing after Connection: close is decoded"
        );
        assert!(requests[0].keep_alive && !requests[1].keep_alive);
        assert!(decoder.is_closed());
        assert_eq!(decoder.in_flight(), 2);
        let mut out = Vec::new();
        assert!(!decoder.encode_response(&Response::json(200, b"{}".to_vec()), &mut out));
        assert!(String::from_utf8_lossy(&out).contains("Connection: keep-alive\r\n"));
        out.clear();
        assert!(decoder.encode_response(&Response::json(200, b"{}".to_vec()), &mut out));
        assert!(String::from_utf8_lossy(&out).contains("Connection: close\r\n"));
        assert_eq!(decoder.in_flight(), 0);
    }

    #[test]
    fn http10_closes_by_default() {
        let requests = decode(b"GET / HTTP/1.0\r\n\r\n").unwrap();
        assert!(!requests[0].keep_alive);
    }

    #[test]
    fn absolute_form_target_is_reduced() {
        let requests =
            decode(b"GET https://bank.example:8443/v1/accounts/1 HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
        assert_eq!(requests[0].target, "/v1/accounts/1");
        assert_eq!(
            decode_one_error(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n"),
            HttpError::Target
        );
    }

    #[test]
    fn limit_header_bytes_431() {
        let limits = Limits::default();
        let mut head = b"GET / HTTP/1.1\r\nHost: h\r\nX-Pad: ".to_vec();
        head.resize(limits.header_bytes_max + 1, b'a');
        // Refused before the head is even complete: the buffer does not grow past the limit.
        let mut decoder = RequestDecoder::new(limits);
        decoder.feed(&head);
        let error = decode_all(&mut decoder).unwrap_err();
        assert_eq!(error, HttpError::HeadTooLarge { limit: 8192 });
        assert_eq!(error.status(), 431);
        // A complete head one byte over is refused too.
        head.truncate(limits.header_bytes_max - 3);
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(decode_one_error(&head).status(), 431);
        // One byte under passes.
        head.truncate(limits.header_bytes_max - 5);
        head.extend_from_slice(b"\r\n\r\n");
        assert_eq!(head.len(), limits.header_bytes_max - 1);
        assert_eq!(decode(&head).unwrap().len(), 1);
    }

    #[test]
    fn limit_headers_count_431() {
        let mut head = b"GET / HTTP/1.1\r\nHost: h\r\n".to_vec();
        for i in 0..64 {
            head.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        let error = decode_one_error(&head);
        assert_eq!(error, HttpError::TooManyHeaders { limit: 64 });
        assert_eq!(error.status(), 431);
    }

    #[test]
    fn limit_body_bytes_413_from_head_alone() {
        let limits = Limits {
            body_bytes_max: 10,
            ..Limits::default()
        };
        let mut decoder = RequestDecoder::new(limits);
        decoder.feed(b"POST /v1/transfers HTTP/1.1\r\nHost: h\r\nContent-Length: 11\r\n\r\n");
        let error = decoder.poll_request().unwrap_err();
        assert_eq!(
            error,
            HttpError::BodyTooLarge {
                length: 11,
                limit: 10
            }
        );
        assert_eq!(error.status(), 413);
        // A length beyond u64 is not a number of bytes at all.
        assert_eq!(
            decode_one_error(
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 99999999999999999999\r\n\r\n"
            ),
            HttpError::InvalidContentLength
        );
    }

    #[test]
    fn limit_requests_in_flight_503() {
        let limits = Limits {
            requests_in_flight_max: 2,
            ..Limits::default()
        };
        let mut decoder = RequestDecoder::new(limits);
        decoder.feed(&b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".repeat(3));
        assert!(decoder.poll_request().unwrap().is_some());
        assert!(decoder.poll_request().unwrap().is_some());
        let error = decoder.poll_request().unwrap_err();
        assert_eq!(error.status(), 503);
        assert!(decoder.is_closed());
        assert_eq!(decoder.poll_request(), Ok(None), "poisoned");
        // Answering in time keeps the connection going.
        let mut decoder = RequestDecoder::new(limits);
        let mut out = Vec::new();
        for _ in 0..10 {
            decoder.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
            assert!(decoder.poll_request().unwrap().is_some());
            assert!(!decoder.encode_response(&Response::json(200, b"{}".to_vec()), &mut out));
        }
    }

    #[test]
    fn length_required_411() {
        assert_eq!(
            decode_one_error(
                b"POST /v1/accounts HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            ),
            HttpError::TransferEncoding
        );
        assert_eq!(
            decode_one_error(b"POST /v1/accounts HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nTransfer-Encoding: gzip\r\n\r\n[]")
                .status(),
            411
        );
        let error = decode_one_error(b"POST /v1/accounts HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(
            error,
            HttpError::LengthRequired {
                method: Method::Post
            }
        );
        assert_eq!(error.status(), 411);
    }

    #[test]
    fn bad_requests_400() {
        let cases: &[(&[u8], HttpError)] = &[
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n[]",
                HttpError::DuplicateContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n[]",
                HttpError::DuplicateContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
                HttpError::InvalidContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1,1\r\n\r\n",
                HttpError::InvalidContentLength,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length:\r\n\r\n",
                HttpError::InvalidContentLength,
            ),
            (b"GET / HTTP/1.1\r\n\r\n", HttpError::Host),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
                HttpError::Host,
            ),
            (
                b"GET / HTTP/1.1\r\nBad Name: a\r\n\r\n",
                HttpError::MalformedHead {
                    reason: "invalid header name",
                },
            ),
            (
                b"G@T / HTTP/1.1\r\nHost: a\r\n\r\n",
                HttpError::MalformedHead {
                    reason: "invalid request line",
                },
            ),
            (
                b"GET relative HTTP/1.1\r\nHost: a\r\n\r\n",
                HttpError::Target,
            ),
        ];
        for (bytes, expected) in cases {
            let error = decode_one_error(bytes);
            assert_eq!(&error, expected, "{}", String::from_utf8_lossy(bytes));
            assert_eq!(error.status(), 400);
            let response = Response::from(&error);
            assert!(response.close);
        }
        assert_eq!(decode_one_error(b"GET / HTTP/2.0\r\n\r\n").status(), 505);
    }

    #[test]
    fn error_poisons_decoder() {
        let mut decoder = RequestDecoder::new(Limits::default());
        decoder.feed(b"GET / HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert!(decoder.poll_request().is_err());
        decoder.feed(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n");
        assert_eq!(decoder.poll_request(), Ok(None));
        let mut out = Vec::new();
        assert!(decoder.encode_response(&Response::from(&HttpError::Host), &mut out));
        assert!(out.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
    }

    #[test]
    fn expect_continue_is_signalled_once() {
        let mut decoder = RequestDecoder::new(Limits::default());
        decoder.feed(b"POST /v1/accounts HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(decoder.poll_request(), Ok(None));
        assert!(decoder.poll_continue());
        assert!(!decoder.poll_continue());
        decoder.feed(b"[]");
        assert_eq!(decoder.poll_request().unwrap().unwrap().body, b"[]");
        assert!(!decoder.poll_continue());
    }

    #[test]
    fn large_body_in_small_pieces_is_linear() {
        // 4 MiB fed 100 bytes at a time: each poll is O(piece), not O(buffer), or this test
        // would take minutes rather than milliseconds.
        let body = vec![b'x'; 4 << 20];
        let mut stream = format!(
            "POST /v1/transfers HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        stream.extend_from_slice(&body);
        let mut decoder = RequestDecoder::new(Limits::default());
        let mut requests = Vec::new();
        for piece in stream.chunks(100) {
            decoder.feed(piece);
            requests.extend(decode_all(&mut decoder).unwrap());
        }
        assert_eq!(requests.len(), 1);
        assert_eq!(requests[0].body.len(), body.len());
    }

    #[test]
    fn limits_validate() {
        assert_eq!(Limits::default().validate(), Ok(()));
        let bad = Limits {
            headers_count_max: 0,
            ..Limits::default()
        };
        assert!(matches!(
            bad.validate(),
            Err(LimitsError::OutOfRange {
                name: "headers_count_max",
                ..
            })
        ));
    }

    fn valid_stream() -> impl Strategy<Value = Vec<u8>> {
        let request = (0usize..3, "[a-z0-9/?=&]{0,20}", proptest::collection::vec(any::<u8>(), 0..40), any::<bool>())
            .prop_map(|(kind, path, body, lf)| {
                let eol = if lf { "\n" } else { "\r\n" };
                let mut bytes = match kind {
                    0 => format!("GET /{path} HTTP/1.1{eol}Host: h{eol}{eol}").into_bytes(),
                    1 => format!("POST /{path} HTTP/1.1{eol}Host: h{eol}Content-Length: {}{eol}{eol}", body.len())
                        .into_bytes(),
                    _ => format!("{eol}PUT /{path} HTTP/1.1{eol}host:h{eol}X-A: b{eol}content-length:{}{eol}{eol}", body.len())
                        .into_bytes(),
                };
                if kind != 0 {
                    bytes.extend_from_slice(&body);
                }
                bytes
            });
        proptest::collection::vec(request, 1..6).prop_map(|requests| requests.concat())
    }

    proptest! {
        #[test]
        fn decoder_never_panics_on_random_bytes(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..200), 0..8),
            prefix in proptest::sample::select(vec![&b""[..], b"GET / HTTP/1.1\r\n", b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n"]),
        ) {
            let limits = Limits { header_bytes_max: 256, headers_count_max: 4, body_bytes_max: 64, requests_in_flight_max: 2 };
            let mut decoder = RequestDecoder::new(limits);
            decoder.feed(prefix);
            for chunk in &chunks {
                decoder.feed(chunk);
                while let Ok(Some(_)) = decoder.poll_request() {}
                let _ = decoder.poll_continue();
                let mut out = Vec::new();
                decoder.encode_response(&Response::json(200, Vec::new()), &mut out);
            }
        }

        #[test]
        fn any_split_decodes_the_same(stream in valid_stream(), cut_a in any::<prop::sample::Index>(), cut_b in any::<prop::sample::Index>()) {
            let whole = decode(&stream).unwrap();
            let (mut a, mut b) = (cut_a.index(stream.len() + 1), cut_b.index(stream.len() + 1));
            if a > b { std::mem::swap(&mut a, &mut b); }
            let mut decoder = RequestDecoder::new(Limits::default());
            let mut split = Vec::new();
            for piece in [&stream[..a], &stream[a..b], &stream[b..]] {
                decoder.feed(piece);
                split.extend(decode_all(&mut decoder).unwrap());
            }
            prop_assert_eq!(&split, &whole);
            // And byte by byte.
            let mut decoder = RequestDecoder::new(Limits::default());
            let mut bytewise = Vec::new();
            for byte in &stream {
                decoder.feed(std::slice::from_ref(byte));
                bytewise.extend(decode_all(&mut decoder).unwrap());
            }
            prop_assert_eq!(&bytewise, &whole);
        }
    }

    #[test]
    fn a_head_announcing_a_large_body_reserves_nothing_and_an_emptied_buffer_is_freed() {
        let mut decoder = RequestDecoder::new(Limits::default());
        decoder.feed(b"POST /v1/transfers HTTP/1.1\r\nHost: x\r\nContent-Length: 8000000\r\n\r\n[");
        assert_eq!(decoder.poll_request(), Ok(None));
        assert_eq!(decoder.phase(), Phase::Body);
        // The attack this stops: 8 MB reserved per connection for one byte sent.
        assert!(decoder.buffer.capacity() < 64 * 1024, "{} bytes reserved", decoder.buffer.capacity());
        // A large body received in full, then consumed: the buffer it needed is freed.
        let mut decoder = RequestDecoder::new(Limits::default());
        let body = vec![b' '; 1 << 20];
        decoder.feed(format!("POST /v1/transfers HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n", body.len()).as_bytes());
        decoder.feed(&body);
        let request = decoder.poll_request().expect("valid").expect("complete");
        assert_eq!(request.body.len(), body.len());
        assert_eq!(decoder.phase(), Phase::Idle);
        assert!(decoder.buffer.capacity() <= IDLE_BUFFER_CAPACITY_MAX, "{} bytes kept", decoder.buffer.capacity());
    }
}
