//! The little HTTP/1.1 the load generator speaks: one request out, one response in, framed by
//! `Content-Length` alone (RFC 9112 §6.3), which is all the three servers under test send.

use std::fmt;
use std::io::Write as _;

/// Bytes of a response head the client accepts; our servers send about 120.
pub const RESPONSE_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Bytes of a response body the client accepts; a one-transfer reply is under 100 bytes and an
/// account query under 400.
pub const RESPONSE_BODY_BYTES_MAX: usize = 1024 * 1024;

/// A complete response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
    /// The server will close the connection after this response (`Connection: close`).
    pub close: bool,
}

/// A response the client cannot use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    HeadTooLarge,
    BodyTooLarge { length: u64 },
    StatusLine,
    /// No `Content-Length`, or one that is not a number: the client cannot frame the body.
    ContentLength,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::HeadTooLarge => write!(f, "response head larger than {RESPONSE_HEAD_BYTES_MAX} bytes"),
            ParseError::BodyTooLarge { length } => {
                write!(f, "response body of {length} bytes is larger than {RESPONSE_BODY_BYTES_MAX}")
            }
            ParseError::StatusLine => f.write_str("malformed status line"),
            ParseError::ContentLength => f.write_str("missing or invalid Content-Length"),
        }
    }
}

impl std::error::Error for ParseError {}

/// Parses one response from the front of `buffer`. `Ok(None)` means more bytes are needed;
/// `Ok(Some((response, consumed)))` hands back the response and how many bytes it took.
pub fn parse_response(buffer: &[u8]) -> Result<Option<(Response, usize)>, ParseError> {
    let Some(head_end) = buffer.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4) else {
        if buffer.len() > RESPONSE_HEAD_BYTES_MAX {
            return Err(ParseError::HeadTooLarge);
        }
        return Ok(None);
    };
    if head_end > RESPONSE_HEAD_BYTES_MAX {
        return Err(ParseError::HeadTooLarge);
    }
    // The head is ASCII by RFC 9112 §2.2; anything else is not a response we sent for.
    let head = std::str::from_utf8(&buffer[..head_end - 4]).map_err(|_| ParseError::StatusLine)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(ParseError::StatusLine)?;
    // status-line = HTTP-version SP status-code SP [ reason-phrase ] (RFC 9112 §4)
    let mut parts = status_line.splitn(3, ' ');
    let version = parts.next().ok_or(ParseError::StatusLine)?;
    if !version.starts_with("HTTP/1.") {
        return Err(ParseError::StatusLine);
    }
    let code = parts.next().ok_or(ParseError::StatusLine)?;
    if code.len() != 3 {
        return Err(ParseError::StatusLine);
    }
    let status: u16 = code.parse().map_err(|_| ParseError::StatusLine)?;
    let mut length: Option<u64> = None;
    let mut close = version == "HTTP/1.0";
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { return Err(ParseError::StatusLine) };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            if length.is_some() {
                return Err(ParseError::ContentLength);
            }
            length = Some(value.parse().map_err(|_| ParseError::ContentLength)?);
        } else if name.eq_ignore_ascii_case("connection") {
            for option in value.split(',') {
                let option = option.trim();
                if option.eq_ignore_ascii_case("close") {
                    close = true;
                } else if option.eq_ignore_ascii_case("keep-alive") {
                    close = false;
                }
            }
        }
    }
    let length = length.ok_or(ParseError::ContentLength)?;
    if length > RESPONSE_BODY_BYTES_MAX as u64 {
        return Err(ParseError::BodyTooLarge { length });
    }
    let end = head_end + length as usize;
    if buffer.len() < end {
        return Ok(None);
    }
    let response = Response { status, body: buffer[head_end..end].to_vec(), close };
    Ok(Some((response, end)))
}

/// Writes one request. `close` asks the server to close after answering (one request per
/// connection, for the handshake runs).
pub fn encode_request(out: &mut Vec<u8>, method: &str, path: &str, host: &str, body: &[u8], close: bool) {
    // Writing into a Vec<u8> cannot fail.
    let _ = write!(out, "{method} {path} HTTP/1.1\r\nHost: {host}\r\n");
    if !body.is_empty() || method == "POST" {
        let _ = write!(out, "Content-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    }
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_bytes_are_exact() {
        let mut out = Vec::new();
        encode_request(&mut out, "POST", "/v1/transfers", "pantera.lab", b"[]", false);
        assert_eq!(
            out,
            b"POST /v1/transfers HTTP/1.1\r\nHost: pantera.lab\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]"
        );
        out.clear();
        encode_request(&mut out, "GET", "/v1/accounts/7", "pantera.lab", b"", true);
        assert_eq!(out, b"GET /v1/accounts/7 HTTP/1.1\r\nHost: pantera.lab\r\nConnection: close\r\n\r\n");
    }

    #[test]
    fn parses_a_response_split_anywhere() {
        let wire: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n[1,2]HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
        let first_end = wire.iter().position(|&b| b == b']').expect("literal") + 1;
        for cut in 0..first_end {
            assert_eq!(parse_response(&wire[..cut]), Ok(None), "cut at {cut}");
        }
        let (first, used) = parse_response(wire).expect("valid").expect("complete");
        assert_eq!(used, first_end);
        assert_eq!(first, Response { status: 200, body: b"[1,2]".to_vec(), close: false });
        let (second, used2) = parse_response(&wire[used..]).expect("valid").expect("complete");
        assert_eq!(used + used2, wire.len());
        assert_eq!(second, Response { status: 503, body: Vec::new(), close: true });
    }

    #[test]
    fn refuses_what_it_cannot_frame() {
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n\r\n"), Err(ParseError::ContentLength));
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n"), Err(ParseError::ContentLength));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"),
            Err(ParseError::ContentLength)
        );
        assert_eq!(parse_response(b"SSH-2.0 hello\r\n\r\n"), Err(ParseError::StatusLine));
        assert_eq!(parse_response(b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"), Err(ParseError::StatusLine));
        assert_eq!(
            parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n"),
            Err(ParseError::BodyTooLarge { length: 99_999_999_999 })
        );
        let endless = vec![b'a'; RESPONSE_HEAD_BYTES_MAX + 1];
        assert_eq!(parse_response(&endless), Err(ParseError::HeadTooLarge));
    }
}
