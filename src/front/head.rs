//! Request and response heads as the front reads them: `httparse` for the
//! syntax, RFC 9112's framing rules on top, and a streaming chunked decoder.
//!
//! The front forwards a request only after this module has accepted its head,
//! and re-writes that head for tiny_http in one canonical form (CRLF, one
//! `Content-Length`, no hop-by-hop fields), so tiny_http never sees anything a
//! client could frame two ways.

use crate::error::{Code, ProxyError};

/// How large a request head may grow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The whole head, request line and blank line included.
    pub head: usize,
    /// Header fields.
    pub headers: usize,
    /// The request line.
    pub line: usize,
    /// A request body (decoded).
    pub body: usize,
}

/// The limits the proxy runs with.
pub const LIMITS: Limits = Limits {
    head: 32 * 1024,
    headers: 100,
    line: 8 * 1024,
    body: crate::plan::MAX_BODY,
};

/// The largest response head the front accepts from tiny_http.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// A request head the front accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    /// The method, as sent.
    pub method: String,
    /// The request target, as sent.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// The end-to-end header fields, in order (hop-by-hop ones are the front's business).
    pub headers: Vec<(String, String)>,
    /// How the body is delimited.
    pub framing: Framing,
    /// The connection may carry another request after this one.
    pub keep_alive: bool,
    /// The client waits for `100 Continue` before it sends the body.
    pub expects_continue: bool,
}

/// Fields that describe one connection rather than the message: the front
/// decides them itself, so none of the client's reach tiny_http.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "content-length",
    "te",
    "trailer",
    "upgrade",
    "expect",
    RELAY_HEADER,
    // The client's address is the front's to say (see access::stamp).
    crate::access::HEADER,
];

/// The header by which the front tells the server which exchange a request is
/// (see `Shared::broken`); a client's own is dropped.
pub const RELAY_HEADER: &str = "x-model-proxy-relay";

/// Methods that never carry a body here.
const BODILESS: &[&str] = &["GET", "HEAD", "OPTIONS", "DELETE", "TRACE", "CONNECT"];

fn bad(message: impl Into<String>) -> ProxyError {
    ProxyError::new(Code::BadRequest, message)
}

fn too_large(limits: &Limits) -> ProxyError {
    ProxyError::new(
        Code::HeaderTooLarge,
        format!(
            "the request head exceeds {} bytes or {} header fields",
            limits.head, limits.headers
        ),
    )
}

/// Where the head that starts `buf` ends (just past its blank line), if it has arrived.
/// Empty lines before the request line are part of it (RFC 9112 2.2 lets a server skip them).
pub fn head_end(buf: &[u8]) -> Option<usize> {
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let mut at = start;
    while let Some(i) = memchr::memchr(b'\n', &buf[at..]) {
        let nl = at + i;
        match buf.get(nl + 1) {
            Some(b'\n') => return Some(nl + 2),
            Some(b'\r') if buf.get(nl + 2) == Some(&b'\n') => return Some(nl + 3),
            _ => at = nl + 1,
        }
    }
    None
}

/// A request the front answers itself: why, and what of its head could be read
/// (for the access log and the CORS headers of the answer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The answer.
    pub error: ProxyError,
    /// The head, when its syntax was sound.
    pub head: Option<Box<RequestHead>>,
}

impl From<ProxyError> for Refused {
    fn from(error: ProxyError) -> Refused {
        Refused { error, head: None }
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is
/// incomplete and within the limits, else the head and its length in bytes, or
/// the refusal to answer with (the connection is closed after it).
pub fn parse_request(buf: &[u8], limits: &Limits) -> Result<Option<(RequestHead, usize)>, Refused> {
    let Some(end) = head_end(buf) else {
        if buf.len() > limits.head {
            return Err(too_large(limits).into());
        }
        let start = buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        if memchr::memchr(b'\n', &buf[start..]).is_none() && buf.len() - start > limits.line {
            return Err(uri_too_long(limits).into());
        }
        return Ok(None);
    };
    if end > limits.head {
        return Err(too_large(limits).into());
    }
    let mut fields = vec![httparse::EMPTY_HEADER; limits.headers];
    let mut req = httparse::Request::new(&mut fields);
    match req.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(n)) if n == end => {}
        Ok(_) => return Err(bad("the request head is malformed").into()),
        Err(httparse::Error::TooManyHeaders) => return Err(too_large(limits).into()),
        Err(httparse::Error::HeaderName | httparse::Error::HeaderValue) => {
            return Err(bad("a request header field is malformed").into())
        }
        Err(_) => {
            let msg = "the request line is malformed; expected METHOD TARGET HTTP/1.1";
            return Err(bad(msg).into());
        }
    }
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(bad("the request line is malformed").into());
    };
    if method.len() + target.len() + 10 > limits.line {
        return Err(uri_too_long(limits).into());
    }
    if !target.is_ascii() || target.is_empty() {
        return Err(bad("the request target must be ASCII").into());
    }
    let mut head = RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        minor,
        headers: Vec::with_capacity(req.headers.len()),
        framing: Framing::Empty,
        keep_alive: minor == 1,
        expects_continue: false,
    };
    // The first problem is the answer; the rest of the head is still read for its Origin.
    let mut problem = None;
    let (mut lengths, mut encodings, mut hosts) = (Vec::new(), 0, 0);
    for h in req.headers.iter() {
        let value = match std::str::from_utf8(h.value) {
            Ok(v) if v.is_ascii() => v.trim_matches([' ', '\t']),
            _ => {
                problem.get_or_insert_with(|| bad(format!("header {} is not ASCII", h.name)));
                continue;
            }
        };
        let name = h.name.to_ascii_lowercase();
        match name.as_str() {
            "content-length" => match content_length(value) {
                Ok(n) => lengths.push(n),
                Err(e) => {
                    problem.get_or_insert(e);
                }
            },
            "transfer-encoding" => {
                encodings += 1;
                if !value.eq_ignore_ascii_case("chunked") {
                    problem.get_or_insert_with(|| {
                        bad(format!(
                            "Transfer-Encoding {value:?} is not supported; only chunked is"
                        ))
                    });
                }
            }
            "host" => hosts += 1,
            // HTTP/1.0 keep-alive is not offered: such a client gets one answer.
            "connection"
                if value
                    .split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("close")) =>
            {
                head.keep_alive = false
            }
            "expect" => head.expects_continue = value.eq_ignore_ascii_case("100-continue"),
            _ => {}
        }
        if !HOP_BY_HOP.contains(&name.as_str()) {
            head.headers.push((h.name.to_string(), value.to_string()));
        }
    }
    let checked = match problem {
        Some(e) => Err(e),
        None => framing(&head, &lengths, encodings, hosts, limits),
    };
    match checked {
        Ok(f) => {
            head.framing = f;
            Ok(Some((head, end)))
        }
        Err(error) => Err(Refused {
            error,
            head: Some(Box::new(head)),
        }),
    }
}

fn uri_too_long(limits: &Limits) -> ProxyError {
    ProxyError::new(
        Code::UriTooLong,
        format!("the request line exceeds {} bytes", limits.line),
    )
}

fn content_length(value: &str) -> Result<u64, ProxyError> {
    // 1*DIGIT only: no sign, no list, no spaces inside; 19 digits always fit a u64.
    if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(format!("Content-Length {value:?} is not a number")));
    }
    value
        .parse()
        .map_err(|_| bad(format!("Content-Length {value:?} is not a number")))
}

/// RFC 9112 6.3, strictly: any doubt about where the body ends is a 400, never a guess.
fn framing(
    head: &RequestHead,
    lengths: &[u64],
    encodings: usize,
    hosts: usize,
    limits: &Limits,
) -> Result<Framing, ProxyError> {
    if (head.minor == 1 && hosts != 1) || hosts > 1 {
        return Err(bad("an HTTP/1.1 request needs exactly one Host header"));
    }
    if lengths.len() > 1 {
        return Err(bad("the request has more than one Content-Length"));
    }
    if encodings > 1 {
        return Err(bad("the request has more than one Transfer-Encoding"));
    }
    let framing = match (lengths.first(), encodings) {
        (Some(_), 1) => {
            return Err(bad(
                "the request has both Content-Length and Transfer-Encoding",
            ))
        }
        (None, 1) if head.minor == 0 => {
            return Err(bad("HTTP/1.0 has no Transfer-Encoding"));
        }
        (None, 1) => Framing::Chunked,
        (Some(0), _) | (None, _) => Framing::Empty,
        (Some(&n), _) => Framing::Length(n),
    };
    if framing != Framing::Empty && BODILESS.contains(&head.method.as_str()) {
        return Err(bad(format!("a {} request carries no body", head.method)));
    }
    if let Framing::Length(n) = framing {
        if n > limits.body as u64 {
            return Err(ProxyError::new(
                Code::BodyTooLarge,
                format!("the request body exceeds {} bytes", limits.body),
            ));
        }
    }
    Ok(framing)
}

impl RequestHead {
    /// The head as tiny_http gets it: canonical, with the body's exact length
    /// and the exchange's id.
    pub fn to_backend(&self, body: usize, relay: u64, client: Option<&str>) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.target.len());
        out.extend_from_slice(self.method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(if self.minor == 0 {
            b" HTTP/1.0\r\n"
        } else {
            b" HTTP/1.1\r\n"
        });
        for (k, v) in &self.headers {
            push_field(&mut out, k, v);
        }
        if self.framing != Framing::Empty {
            push_field(&mut out, "Content-Length", &body.to_string());
        }
        push_field(&mut out, RELAY_HEADER, &relay.to_string());
        if let Some(c) = client {
            push_field(&mut out, crate::access::HEADER, c);
        }
        out.extend_from_slice(b"\r\n");
        out
    }

    /// The value of header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn push_field(out: &mut Vec<u8>, name: &str, value: &str) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value.as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// A response head from tiny_http.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// The status code.
    pub status: u16,
    /// The status line, without its line end.
    line: String,
    /// Every field but `Connection`, which the front decides.
    headers: Vec<(String, String)>,
    /// How the body is delimited.
    pub framing: Framing,
    /// The server wants the connection closed after this answer.
    pub close: bool,
}

/// Parses the response head at the start of `buf` (the answer to a `method` request).
pub fn parse_response(buf: &[u8], method: &str) -> Result<Option<(ResponseHead, usize)>, String> {
    let mut fields = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut fields);
    let n = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() <= MAX_RESPONSE_HEAD => return Ok(None),
        Ok(httparse::Status::Partial) => return Err("response head too large".into()),
        Err(e) => return Err(format!("malformed response head: {e}")),
    };
    let status = resp.code.unwrap_or(0);
    let line = format!(
        "HTTP/1.{} {status} {}",
        resp.version.unwrap_or(1),
        resp.reason.unwrap_or("")
    );
    let (mut length, mut chunked, mut close) = (None, false, false);
    let mut headers = Vec::with_capacity(resp.headers.len());
    for h in resp.headers.iter() {
        let value = String::from_utf8_lossy(h.value).trim().to_string();
        if h.name.eq_ignore_ascii_case("connection") {
            close |= value.to_ascii_lowercase().contains("close");
            continue;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value.parse::<u64>().map_err(|_| "bad Content-Length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting Content-Length".into());
            }
            length = Some(n);
        }
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().ends_with("chunked");
        }
        headers.push((h.name.to_string(), value));
    }
    let framing = if method == "HEAD" || matches!(status, 100..=199 | 204 | 304) {
        Framing::Empty
    } else if chunked {
        Framing::Chunked
    } else if let Some(n) = length {
        Framing::Length(n)
    } else {
        Framing::UntilClose
    };
    let head = ResponseHead {
        status,
        line,
        headers,
        framing,
        close,
    };
    Ok(Some((head, n)))
}

impl ResponseHead {
    /// The head as the client gets it; `close` adds `Connection: close`.
    pub fn to_client(&self, close: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(self.line.as_bytes());
        out.extend_from_slice(b"\r\n");
        for (k, v) in &self.headers {
            push_field(&mut out, k, v);
        }
        if close {
            push_field(&mut out, "Connection", "close");
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// A whole answer with `Connection: close` added to its head (tiny_http drops that header).
pub fn closing(answer: Vec<u8>, method: &str) -> Vec<u8> {
    match parse_response(&answer, method) {
        Ok(Some((head, n))) => [head.to_client(true), answer[n..].to_vec()].concat(),
        _ => answer,
    }
}

/// Longest chunk-size line extension, and longest trailer section, accepted.
const MAX_CHUNK_EXT: usize = 1024;
const MAX_TRAILERS: usize = 8 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// In the chunk size; `digits` read so far.
    Size {
        digits: u8,
    },
    /// In a chunk extension, this many bytes long.
    Ext(usize),
    /// After the size line's CR.
    SizeLf,
    /// In chunk data, this many bytes left.
    Data(u64),
    DataCr,
    DataLf,
    /// In the trailer section: the current line's length (0: at a line start).
    Trailer(usize),
    TrailerLf,
    EndLf,
    Done,
}

/// A streaming `chunked` decoder (RFC 9112 7.1), strict about line ends.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: State,
    size: u64,
    trailers: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: State::Size { digits: 0 },
            size: 0,
            trailers: 0,
        }
    }
}

impl Chunked {
    /// Consumes bytes of the chunked stream from `input`, appending the data to
    /// `out` when given, and returns how many it consumed: all of `input`, or
    /// fewer once the last chunk and the trailers are complete.
    pub fn feed(&mut self, input: &[u8], mut out: Option<&mut Vec<u8>>) -> Result<usize, String> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            self.state = match self.state {
                State::Done => return Ok(i),
                State::Data(left) => {
                    let take = (input.len() - i).min(usize::try_from(left).unwrap_or(usize::MAX));
                    if let Some(out) = out.as_deref_mut() {
                        out.extend_from_slice(&input[i..i + take]);
                    }
                    i += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                    continue;
                }
                State::Size { digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < 16 => {
                        self.size = self.size << 4 | u64::from(d);
                        State::Size { digits: digits + 1 }
                    }
                    Some(_) => return Err("chunk size too large".into()),
                    None if digits == 0 => return Err("chunk size missing".into()),
                    None if b == b'\r' => State::SizeLf,
                    None if matches!(b, b';' | b' ' | b'\t') => State::Ext(1),
                    None => return Err("malformed chunk size".into()),
                },
                State::Ext(_) if b == b'\r' => State::SizeLf,
                State::Ext(n) if n >= MAX_CHUNK_EXT => {
                    return Err("chunk extension too long".into())
                }
                State::Ext(n) if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => {
                    State::Ext(n + 1)
                }
                State::Ext(_) => return Err("malformed chunk extension".into()),
                State::SizeLf if b == b'\n' => {
                    let size = std::mem::take(&mut self.size);
                    if size == 0 {
                        State::Trailer(0)
                    } else {
                        State::Data(size)
                    }
                }
                State::DataCr if b == b'\r' => State::DataLf,
                State::DataLf if b == b'\n' => State::Size { digits: 0 },
                State::Trailer(0) if b == b'\r' => State::EndLf,
                State::Trailer(_) if b == b'\r' => State::TrailerLf,
                State::Trailer(_) if b == b'\n' => return Err("bare LF in trailers".into()),
                State::Trailer(n) => {
                    self.trailers += 1;
                    if self.trailers > MAX_TRAILERS {
                        return Err("trailers too long".into());
                    }
                    State::Trailer(n + 1)
                }
                State::TrailerLf if b == b'\n' => State::Trailer(0),
                State::EndLf if b == b'\n' => State::Done,
                State::SizeLf | State::DataCr | State::DataLf | State::TrailerLf | State::EndLf => {
                    return Err("malformed chunked line end".into())
                }
            };
            i += 1;
        }
        Ok(i)
    }

    /// The last chunk and its trailers are complete.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> Result<Option<(RequestHead, usize)>, Refused> {
        parse_request(text.as_bytes(), &LIMITS)
    }

    fn code(text: &str) -> Code {
        req(text).expect_err(text).error.code
    }

    #[test]
    fn a_plain_get() {
        let (h, n) = req("GET /healthz HTTP/1.1\r\nHost: a\r\nOrigin: https://x\r\n\r\nGET")
            .unwrap()
            .unwrap();
        assert_eq!(n, 53);
        assert_eq!((h.method.as_str(), h.target.as_str()), ("GET", "/healthz"));
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        assert_eq!(h.header("origin"), Some("https://x"));
        let fwd = String::from_utf8(h.to_backend(0, 7, None)).unwrap();
        assert_eq!(
            fwd,
            "GET /healthz HTTP/1.1\r\nHost: a\r\nOrigin: https://x\r\nx-model-proxy-relay: 7\r\n\r\n"
        );
    }

    #[test]
    fn incomplete_heads_wait_until_a_limit() {
        assert_eq!(req("GET / HTTP/1.1\r\nHost: a\r\n"), Ok(None));
        let refused = req("GET /h HTTP/1.1\r\nContent-Length: 1\r\nOrigin: o\r\nHost: a\r\n\r\n");
        let head = refused.unwrap_err().head.unwrap();
        assert_eq!(
            (head.target.as_str(), head.header("origin")),
            ("/h", Some("o"))
        );
        assert_eq!(req("\r\n\r\nGET / HTTP/1.1\r\nHost"), Ok(None));
        let long_line = format!("GET /{}", "a".repeat(LIMITS.line));
        assert_eq!(code(&long_line), Code::UriTooLong);
        let finished = format!(
            "GET /{} HTTP/1.1\r\nHost: a\r\n\r\n",
            "a".repeat(LIMITS.line)
        );
        assert_eq!(code(&finished), Code::UriTooLong);
        let big = format!("GET / HTTP/1.1\r\nX: {}", "a".repeat(LIMITS.head));
        assert_eq!(code(&big), Code::HeaderTooLarge);
        let many: String = (0..=LIMITS.headers)
            .map(|i| format!("X{i}: y\r\n"))
            .collect();
        assert_eq!(
            code(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            Code::HeaderTooLarge
        );
    }

    #[test]
    fn bare_lf_and_leading_blank_lines_are_read_and_rewritten() {
        let (h, n) = req("\r\nGET / HTTP/1.1\nHost: a\n\n").unwrap().unwrap();
        assert_eq!(n, 26);
        assert!(String::from_utf8(h.to_backend(0, 1, None))
            .unwrap()
            .starts_with("GET / HTTP/1.1\r\nHost: a\r\n"));
    }

    #[test]
    fn malformed_lines_are_400() {
        for text in [
            "GET / HTTP/1.1 extra\r\nHost: a\r\n\r\n",
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            "GET\r\n\r\n",
            "G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nBad Name: x\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            "GET / HTTP/1.1\r\nX: caf\u{e9}\r\nHost: a\r\n\r\n",
            "GET / HTTP/1.1\r\n\r\n",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        ] {
            assert_eq!(code(text), Code::BadRequest, "{text:?}");
        }
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let post = "POST /x HTTP/1.1\r\nHost: a\r\n";
        for extra in [
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
            "Content-Length: 5\r\nContent-Length: 5\r\n",
            "Content-Length: 5\r\nContent-Length: 6\r\n",
            "Content-Length: 5, 5\r\n",
            "Content-Length: +5\r\n",
            "Content-Length: -1\r\n",
            "Content-Length: 99999999999999999999\r\n",
            "Transfer-Encoding: xchunked\r\n",
            "Transfer-Encoding: chunked, gzip\r\n",
            "Transfer-Encoding: gzip, chunked\r\n",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            "Transfer-Encoding : chunked\r\n",
        ] {
            assert_eq!(
                code(&format!("{post}{extra}\r\n")),
                Code::BadRequest,
                "{extra:?}"
            );
        }
        assert_eq!(
            code("POST /x HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Code::BadRequest
        );
        let (h, _) = req(&format!("{post}Transfer-Encoding: Chunked\r\n\r\n"))
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Chunked);
        let (h, _) = req(&format!(
            "{post}Content-Length: 12\r\nExpect: 100-continue\r\n\r\n"
        ))
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Length(12));
        assert!(h.expects_continue);
        let fwd = String::from_utf8(h.to_backend(12, 3, None)).unwrap();
        assert!(!fwd.to_ascii_lowercase().contains("expect"), "{fwd}");
        assert!(fwd.contains("Content-Length: 12\r\n"), "{fwd}");
    }

    #[test]
    fn lookalike_field_names_are_just_fields() {
        let text = "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encodingthoding: ced\r\nContent-Lengthy: 9\r\n\r\n";
        let (h, _) = req(text).unwrap().unwrap();
        assert_eq!(h.framing, Framing::Empty);
        assert_eq!(h.headers.len(), 3);
    }

    #[test]
    fn bodies_on_get_head_options_are_refused_unless_empty() {
        for m in ["GET", "HEAD", "OPTIONS"] {
            let text =
                format!("{m} /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n");
            assert_eq!(code(&text), Code::BadRequest, "{m}");
            let text =
                format!("{m} /healthz HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n");
            assert_eq!(code(&text), Code::BadRequest, "{m}");
            let text = format!("{m} /healthz HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n");
            assert_eq!(req(&text).unwrap().unwrap().0.framing, Framing::Empty);
        }
        let text = "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 65537\r\n\r\n";
        assert_eq!(code(text), Code::BodyTooLarge);
    }

    #[test]
    fn client_headers_cannot_pose_as_the_front() {
        let text = "GET / HTTP/1.1\r\nHost: a\r\nX-Model-Proxy-Relay: 1\r\nConnection: close\r\n\
                    TE: gzip\r\nx-model-proxy-client: forged 6.6.6.6\r\n\r\n";
        let (h, _) = req(text).unwrap().unwrap();
        assert!(!h.keep_alive);
        let fwd = String::from_utf8(h.to_backend(0, 9, Some("s 10.0.0.1"))).unwrap();
        assert_eq!(
            fwd,
            "GET / HTTP/1.1\r\nHost: a\r\nx-model-proxy-relay: 9\r\nx-model-proxy-client: s 10.0.0.1\r\n\r\n"
        );
        let (h, _) = req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!h.keep_alive && h.minor == 0);
    }

    #[test]
    fn responses_and_their_framing() {
        let text = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";
        let (r, n) = parse_response(text, "GET").unwrap().unwrap();
        assert_eq!(
            (r.status, r.framing, r.close, n),
            (200, Framing::Length(5), true, 57)
        );
        assert_eq!(
            String::from_utf8(r.to_client(false)).unwrap(),
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"
        );
        let (r, _) = parse_response(text, "HEAD").unwrap().unwrap();
        assert_eq!(r.framing, Framing::Empty);
        let text = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(
            parse_response(text, "GET").unwrap().unwrap().0.framing,
            Framing::Chunked
        );
        let text = b"HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n";
        assert_eq!(
            parse_response(text, "GET").unwrap().unwrap().0.framing,
            Framing::Empty
        );
        let text = b"HTTP/1.0 200 OK\r\n\r\n";
        assert_eq!(
            parse_response(text, "GET").unwrap().unwrap().0.framing,
            Framing::UntilClose
        );
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n", "GET"), Ok(None));
        assert!(parse_response(b"HTTP/1.1 2x0 OK\r\n\r\n", "GET").is_err());
    }

    fn dechunk(wire: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), String> {
        let mut c = Chunked::default();
        let (mut out, mut used) = (Vec::new(), 0);
        for piece in wire.chunks(step) {
            let n = c.feed(piece, Some(&mut out))?;
            used += n;
            if n < piece.len() {
                break;
            }
        }
        Ok((out, used, c.is_done()))
    }

    #[test]
    fn chunked_bodies_at_any_read_size() {
        let wire =
            b"5;name=v\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, 64] {
            let (out, used, done) = dechunk(wire, step).unwrap();
            assert_eq!(out, b"helloabcdefghijklmnopqrstuvwxyz");
            assert_eq!((used, done), (wire.len() - 4, true), "step {step}");
        }
        let (_, _, done) = dechunk(b"5\r\nhel", 2).unwrap();
        assert!(!done);
        for bad in [
            &b"\r\n"[..],
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloX\r\n0\r\n\r\n",
            b"g\r\n",
            b"11111111111111111\r\n",
            b"0\r\nX\n\r\n",
            b"-5\r\n",
        ] {
            assert!(
                dechunk(bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
