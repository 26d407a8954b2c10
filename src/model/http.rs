//! One HTTP/1.1 exchange with a model, written by hand over a pooled connection.
//!
//! Why not ureq, as for the PACS: ureq copies every body byte twice (into its
//! buffer, then into its output buffer with the chunk framing), which for a
//! zhiva payload (three times the DICOM size) was a sixth of the request
//! thread's time. Here a chunk's header, the payload block and its CRLF go out
//! in one `writev`, and a spooled body a block per write. The answer's
//! head is parsed here too (status, headers, body framing), and its body is
//! handed out as a `Read` for relaying; once read to its end, the connection
//! goes back to the pool.
//!
//! Timeouts are ureq's: the connect timeout for TCP and TLS each, the model
//! timeout for any silence (a write the model does not take, an answer that
//! does not come), and the total for the whole exchange, body relayed included.

use std::fs::File;
use std::io::{self, IoSlice, Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{self, ProxyError, Upstream};
use crate::ids::redact_uri;
use crate::payload::pipeline::BLOCK;
use crate::payload::Blocks;
use crate::upstream::{Conn, Dialer, Origin, Pool, USER_AGENT};

/// The longest answer head accepted.
const MAX_HEAD: usize = 64 * 1024;

/// The answer's read buffer (the head may grow it to [`MAX_HEAD`]).
const READ_BUF: usize = 16 * 1024;

/// The longest chunk-size or trailer line accepted.
const MAX_LINE: usize = 8 * 1024;

/// How long an answer is waited for once the request could not be sent whole.
const EARLY_ANSWER_WAIT: Duration = Duration::from_secs(1);

/// Posts to models.
#[derive(Clone)]
pub struct Client {
    dialer: Dialer,
    silence: Duration,
    total: Duration,
}

/// A request body.
pub enum Upload<'a> {
    /// Streamed from the payload pipeline, chunked.
    Blocks(&'a mut Blocks),
    /// A spooled file of this length (read from where it is), sized.
    File(&'a mut File, u64),
}

/// The model's answer: status and headers read, body still on the wire.
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    headers: Vec<(String, String)>,
    /// The body.
    pub body: AnswerBody,
}

impl Answer {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Client {
    /// A client connecting through `dialer`, with the model's silence and total timeouts.
    pub fn new(dialer: Dialer, silence: Duration, total: Duration) -> Client {
        Client {
            dialer,
            silence,
            total,
        }
    }

    /// POSTs `upload` to `url` and reads the answer's head.
    ///
    /// A failure of the payload (the PACS's) is returned as it was raised; a
    /// model that stops taking the body but has answered (a 413, a 401) gives
    /// that answer.
    pub fn post(
        &self,
        url: &str,
        content_type: &str,
        upload: Upload<'_>,
    ) -> Result<Answer, ProxyError> {
        let t = Target::parse(url).map_err(|why| {
            ProxyError::internal(format!("the model uri {} {why}", redact_uri(url)))
        })?;
        let clock = Clock {
            silence: self.silence,
            deadline: Instant::now() + self.total,
        };
        let mut conn = self.dialer.get(&t.origin).map_err(transport)?;
        let framing = match &upload {
            Upload::Blocks(_) => "Transfer-Encoding: chunked".to_string(),
            Upload::File(_, len) => format!("Content-Length: {len}"),
        };
        let head = format!(
            "POST {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\nContent-Type: {content_type}\r\n{framing}\r\n\r\n",
            t.path, t.authority
        );
        let sent = match upload {
            Upload::Blocks(blocks) => send_chunked(&mut conn, &clock, head.as_bytes(), blocks),
            Upload::File(file, len) => send_file(&mut conn, &clock, head.as_bytes(), file, len),
        };
        let mut incoming = Incoming::new(conn, clock);
        let failed = match sent {
            Ok(()) => None,
            Err(Unsent::Payload(e)) => return Err(e),
            Err(Unsent::Io(e)) => Some(e),
        };
        let sent_whole = failed.is_none();
        if !sent_whole {
            // An early answer is already here; a model that just stopped is not waited for again.
            incoming.clock.silence = incoming.clock.silence.min(EARLY_ANSWER_WAIT);
        }
        let head = match (incoming.answer_head(), failed) {
            (Ok(h), _) => h,
            (Err(_), Some(e)) => return Err(transport(e)),
            (Err(e), None) => return Err(e),
        };
        let framing = Framing::of(&head).map_err(malformed)?;
        // A close-delimited body, or a request not sent whole, leaves nothing to reuse.
        let keep_alive = head.keep_alive && sent_whole && !matches!(framing, Framing::Close);
        let mut body = AnswerBody {
            io: Some(incoming),
            framing,
            keep_alive,
            home: Some((self.dialer.pool.clone(), t.origin)),
            spool: None,
        };
        if matches!(body.framing, Framing::Length(0)) {
            body.finish();
        }
        Ok(Answer {
            status: head.status,
            headers: head.headers,
            body,
        })
    }
}

/// Why a request body did not all go out.
enum Unsent {
    /// The payload failed (the PACS, mostly): that is the error to report.
    Payload(ProxyError),
    /// The connection failed.
    Io(io::Error),
}

impl From<io::Error> for Unsent {
    fn from(e: io::Error) -> Unsent {
        Unsent::Io(e)
    }
}

fn transport(e: io::Error) -> ProxyError {
    error::from_io(Upstream::Model, &e)
}

fn malformed(why: String) -> ProxyError {
    ProxyError::upstream_transport(
        Upstream::Model,
        false,
        &format!("its answer is not HTTP/1.1 ({why})"),
    )
}

/// Every block as a chunk: size, data and CRLF in one `writev`, with the
/// request head before the first block and the last chunk after the last one.
fn send_chunked(
    conn: &mut Conn,
    clock: &Clock,
    head: &[u8],
    blocks: &mut Blocks,
) -> Result<(), Unsent> {
    let mut head = Some(head);
    while let Some((data, last)) = blocks.next().map_err(Unsent::Payload)? {
        let size = format!("{:x}\r\n", data.len());
        let mut parts = Vec::with_capacity(5);
        parts.extend(head.take().map(IoSlice::new));
        if !data.is_empty() {
            parts.extend([
                IoSlice::new(size.as_bytes()),
                IoSlice::new(data),
                IoSlice::new(b"\r\n"),
            ]);
        }
        if last {
            parts.push(IoSlice::new(b"0\r\n\r\n"));
        }
        write_all(conn, clock, &mut parts)?;
        if last {
            break;
        }
    }
    conn.flush()?;
    Ok(())
}

/// The head, then the file, a block per write (std's `io::copy` does not
/// `sendfile` a file to a socket, and `sendfile` itself would need unsafe FFI).
fn send_file(
    conn: &mut Conn,
    clock: &Clock,
    head: &[u8],
    file: &mut File,
    len: u64,
) -> Result<(), Unsent> {
    let mut buf = vec![0u8; BLOCK];
    let mut head = Some(head);
    let mut left = len;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let got = file.read(&mut buf[..want])?;
        if got == 0 {
            return Err(Unsent::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the spooled request is shorter than its length",
            )));
        }
        let mut parts = Vec::with_capacity(2);
        parts.extend(head.take().map(IoSlice::new));
        parts.push(IoSlice::new(&buf[..got]));
        write_all(conn, clock, &mut parts)?;
        left -= got as u64;
    }
    if let Some(h) = head {
        write_all(conn, clock, &mut [IoSlice::new(h)])?;
    }
    conn.flush()?;
    Ok(())
}

/// Writes all of `bufs`, each write within the clock.
fn write_all(conn: &mut Conn, clock: &Clock, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    while !bufs.is_empty() {
        clock.arm_write(conn)?;
        match conn.write_vectored(bufs) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    "the model stopped taking the request",
                ))
            }
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The model's silence and total timeouts, as socket timeouts for each read or write.
#[derive(Debug, Clone, Copy)]
struct Clock {
    silence: Duration,
    deadline: Instant,
}

impl Clock {
    fn left(&self) -> io::Result<Duration> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the whole exchange took longer than the model's total timeout",
            ));
        }
        Ok(left.min(self.silence))
    }

    fn arm_write(&self, conn: &Conn) -> io::Result<()> {
        conn.socket().set_write_timeout(Some(self.left()?))
    }

    fn arm_read(&self, conn: &Conn) -> io::Result<()> {
        conn.socket().set_read_timeout(Some(self.left()?))
    }
}

/// Where a model URL points.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    origin: Origin,
    /// The `Host` header: the URL's host and port as written.
    authority: String,
    /// Path and query.
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, &'static str> {
        let uri: ureq::http::Uri = url.parse().map_err(|_| "is not a URL")?;
        let tls = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            _ => return Err("is neither http:// nor https://"),
        };
        let authority = uri.authority().ok_or("has no host")?.as_str();
        // Credentials never go in a Host header (the config refuses them anyway).
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let host = uri.host().ok_or("has no host")?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        Ok(Target {
            origin: Origin {
                tls,
                host: host.to_string(),
                port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            },
            authority: authority.to_string(),
            path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
        })
    }
}

/// An answer's head.
#[derive(Debug)]
struct Head {
    status: u16,
    keep_alive: bool,
    headers: Vec<(String, String)>,
}

/// Parses a head (status line and header lines, without the empty line).
fn parse_head(block: &[u8]) -> Result<Head, String> {
    let text = String::from_utf8_lossy(block);
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let status_line = lines.next().unwrap_or("");
    let mut words = status_line.splitn(3, ' ');
    let version = words.next().unwrap_or("");
    let http11 = match version {
        "HTTP/1.1" => true,
        "HTTP/1.0" => false,
        _ => {
            return Err(format!(
                "status line {:?}",
                crate::ids::truncate(status_line)
            ))
        }
    };
    let status = words
        .next()
        .filter(|c| c.len() == 3)
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|c| (100..600).contains(c))
        .ok_or_else(|| format!("status line {:?}", crate::ids::truncate(status_line)))?;
    let mut headers = Vec::new();
    for line in lines {
        if line.starts_with([' ', '\t']) {
            return Err("a folded header line".into());
        }
        let (k, v) = line
            .split_once(':')
            .ok_or_else(|| format!("header line {:?}", crate::ids::truncate(line)))?;
        if k.is_empty() || k.contains([' ', '\t']) {
            return Err(format!("header name {:?}", crate::ids::truncate(k)));
        }
        headers.push((k.to_string(), v.trim().to_string()));
    }
    let close = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("connection")
            && v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
    });
    Ok(Head {
        status,
        keep_alive: http11 && !close,
        headers,
    })
}

/// Where a head ends: (its length without the empty line, where the body starts).
fn head_end(buf: &[u8]) -> Option<(usize, usize)> {
    let i = memchr::memmem::find(buf, b"\n\r\n")
        .map(|i| (i, i + 3))
        .into_iter()
        .chain(memchr::memmem::find(buf, b"\n\n").map(|i| (i, i + 2)))
        .min_by_key(|(i, _)| *i)?;
    let end = if i.0 > 0 && buf[i.0 - 1] == b'\r' {
        i.0 - 1
    } else {
        i.0
    };
    Some((end, i.1))
}

/// How an answer's body is delimited, and where its reading is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// This many bytes left (`Content-Length`).
    Length(u64),
    /// Until the connection closes.
    Close,
    /// Chunked: before a chunk-size line.
    Size,
    /// Chunked: this many bytes left of the current chunk.
    Data(u64),
    /// Chunked: the CRLF after a chunk's data.
    DataEnd,
    /// Chunked: after the last chunk, up to the empty line.
    Trailers,
}

impl Framing {
    /// RFC 9112 section 6.3, for an answer to a POST.
    fn of(head: &Head) -> Result<Framing, String> {
        if (100..200).contains(&head.status) || head.status == 204 || head.status == 304 {
            return Ok(Framing::Length(0));
        }
        if let Some(te) = header(&head.headers, "transfer-encoding") {
            let last = te.rsplit(',').next().unwrap_or("").trim();
            return Ok(if last.eq_ignore_ascii_case("chunked") {
                Framing::Size
            } else {
                Framing::Close
            });
        }
        let mut length = None;
        for (_, v) in head
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        {
            for n in v.split(',') {
                let n: u64 = n
                    .trim()
                    .parse()
                    .map_err(|_| format!("Content-Length {:?}", crate::ids::truncate(v)))?;
                if length.is_some_and(|l| l != n) {
                    return Err("two different Content-Lengths".into());
                }
                length = Some(n);
            }
        }
        Ok(length.map_or(Framing::Close, Framing::Length))
    }
}

/// The connection, read through a small buffer, within the clock.
struct Incoming {
    conn: Conn,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    clock: Clock,
}

impl Incoming {
    fn new(conn: Conn, clock: Clock) -> Incoming {
        Incoming {
            conn,
            buf: vec![0; READ_BUF],
            start: 0,
            end: 0,
            clock,
        }
    }

    /// Reads more into the buffer (moving what is left to its front; growing
    /// it up to `limit`); `Ok(0)` at the end of the stream.
    fn fill(&mut self, limit: usize) -> io::Result<usize> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() && self.buf.len() < limit {
            self.buf.resize(limit, 0);
        }
        self.clock.arm_read(&self.conn)?;
        loop {
            match self.conn.read(&mut self.buf[self.end..]) {
                Ok(n) => {
                    self.end += n;
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The final answer's head, after any 1xx interim ones.
    fn answer_head(&mut self) -> Result<Head, ProxyError> {
        loop {
            let head = self.head()?;
            if !(100..200).contains(&head.status) {
                return Ok(head);
            }
            if head.status == 101 {
                return Err(malformed("it switched protocols".into()));
            }
        }
    }

    fn head(&mut self) -> Result<Head, ProxyError> {
        loop {
            if let Some((len, body)) = head_end(&self.buf[self.start..self.end]) {
                let head =
                    parse_head(&self.buf[self.start..self.start + len]).map_err(malformed)?;
                self.start += body;
                return Ok(head);
            }
            if self.end - self.start >= MAX_HEAD {
                return Err(malformed("a head over 64 KiB".into()));
            }
            if self.fill(MAX_HEAD).map_err(transport)? == 0 {
                return Err(transport(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the model closed the connection without answering",
                )));
            }
        }
    }

    /// Body bytes: what is buffered, else straight from the connection into a large `out`.
    fn read_some(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.start == self.end {
            if out.len() >= self.buf.len() {
                self.clock.arm_read(&self.conn)?;
                return self.conn.read(out);
            }
            if self.fill(READ_BUF)? == 0 {
                return Ok(0);
            }
        }
        let n = (self.end - self.start).min(out.len());
        out[..n].copy_from_slice(&self.buf[self.start..self.start + n]);
        self.start += n;
        Ok(n)
    }

    /// The next line (chunk size, CRLF, trailer), without its line end.
    fn line(&mut self) -> io::Result<String> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                let line = &self.buf[self.start..self.start + i];
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let text = String::from_utf8_lossy(line).into_owned();
                self.start += i + 1;
                return Ok(text);
            }
            if self.end - self.start >= MAX_LINE {
                return Err(bad_body("a chunk line over 8 KiB"));
            }
            if self.fill(READ_BUF)? == 0 {
                return Err(ended_early());
            }
        }
    }
}

fn bad_body(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("the model's answer has {why}"),
    )
}

fn ended_early() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the model's answer ended early",
    )
}

/// The answer's body, for relaying; at its end, the connection goes back to the pool.
pub struct AnswerBody {
    io: Option<Incoming>,
    framing: Framing,
    keep_alive: bool,
    home: Option<(Arc<Pool>, Origin)>,
    /// The spooled request, closed with the body: after the relay, since
    /// freeing a big unlinked file's pages takes tens of milliseconds.
    spool: Option<File>,
}

impl AnswerBody {
    /// Keeps `file` open until the body is dropped.
    pub fn hold(&mut self, file: File) {
        self.spool = Some(file);
    }

    /// The body has been read whole: the connection is reused if it can be.
    fn finish(&mut self) {
        let io = self.io.take();
        if let (Some(io), Some((pool, origin))) = (io, self.home.take()) {
            if self.keep_alive && io.start == io.end {
                pool.put(&origin, io.conn);
            }
        }
    }
}

impl Read for AnswerBody {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        loop {
            let Some(io) = self.io.as_mut() else {
                return Ok(0);
            };
            match self.framing {
                Framing::Length(0) => {
                    self.finish();
                    return Ok(0);
                }
                Framing::Length(left) | Framing::Data(left) => {
                    let want = out.len().min(usize::try_from(left).unwrap_or(usize::MAX));
                    let n = io.read_some(&mut out[..want])?;
                    if n == 0 {
                        return Err(ended_early());
                    }
                    let left = left - n as u64;
                    self.framing = match self.framing {
                        Framing::Data(_) if left == 0 => Framing::DataEnd,
                        Framing::Data(_) => Framing::Data(left),
                        _ => Framing::Length(left),
                    };
                    if self.framing == Framing::Length(0) {
                        self.finish();
                    }
                    return Ok(n);
                }
                Framing::Close => {
                    let n = io.read_some(out)?;
                    if n == 0 {
                        self.io = None;
                    }
                    return Ok(n);
                }
                Framing::Size => {
                    let line = io.line()?;
                    let hex = line.split(';').next().unwrap_or("").trim();
                    let size =
                        u64::from_str_radix(hex, 16).map_err(|_| bad_body("a bad chunk size"))?;
                    self.framing = if size == 0 {
                        Framing::Trailers
                    } else {
                        Framing::Data(size)
                    };
                }
                Framing::DataEnd => {
                    if !io.line()?.is_empty() {
                        return Err(bad_body("a chunk longer than its size"));
                    }
                    self.framing = Framing::Size;
                }
                Framing::Trailers => {
                    if io.line()?.is_empty() {
                        self.finish();
                        return Ok(0);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Code;
    use crate::payload::pipeline;
    use crate::upstream::Pool;
    use std::io::{BufRead, BufReader, Cursor};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// A model on loopback: `script` handles each accepted connection (numbered from 0).
    struct Model {
        url: String,
        accepted: Arc<AtomicUsize>,
    }

    fn model<F>(script: F) -> Model
    where
        F: Fn(usize, TcpStream) + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/infer?x=1", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let script = Arc::new(script);
        std::thread::spawn(move || {
            for s in listener.incoming().flatten() {
                let n = counter.fetch_add(1, Ordering::SeqCst);
                let script = script.clone();
                std::thread::spawn(move || script(n, s));
            }
        });
        Model { url, accepted }
    }

    /// Reads one request: its head and its body (chunked or sized), or `None` at EOF.
    fn request(r: &mut impl BufRead) -> Option<(String, Vec<u8>)> {
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if r.read_line(&mut line).ok()? == 0 {
                return None;
            }
            if line == "\r\n" {
                break;
            }
            head.push_str(&line);
        }
        let lower = head.to_ascii_lowercase();
        let mut body = Vec::new();
        if lower.contains("transfer-encoding: chunked") {
            loop {
                let mut size = String::new();
                r.read_line(&mut size).ok()?;
                let n = usize::from_str_radix(size.trim(), 16).ok()?;
                let mut data = vec![0; n + 2];
                r.read_exact(&mut data).ok()?;
                assert_eq!(&data[n..], b"\r\n");
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&data[..n]);
            }
        } else if let Some(l) = lower.split("content-length: ").nth(1) {
            let n: usize = l.split("\r\n").next()?.parse().ok()?;
            body.resize(n, 0);
            r.read_exact(&mut body).ok()?;
        }
        Some((head, body))
    }

    fn client(silence: Duration, total: Duration) -> Client {
        let tls = crate::trust::client_config(None).unwrap();
        let pool = Pool::new(4, 8, Duration::from_secs(5));
        Client::new(
            Dialer::new(tls, Duration::from_secs(2), pool),
            silence,
            total,
        )
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Posts `data` through a real pipeline.
    fn post(c: &Client, url: &str, data: &[u8]) -> Result<(u16, String), ProxyError> {
        std::thread::scope(|s| {
            let mut blocks = pipeline::start(s, Cursor::new(data.to_vec()))?;
            let mut a = c.post(url, "application/json", Upload::Blocks(&mut blocks))?;
            let mut body = String::new();
            a.body.read_to_string(&mut body).map_err(transport)?;
            Ok((a.status, body))
        })
    }

    #[test]
    fn a_chunked_body_arrives_whole_and_the_connection_is_reused() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        let m = model(move |_, s| {
            let mut r = BufReader::new(&s);
            while let Some((head, body)) = request(&mut r) {
                seen.lock().unwrap().push((head, body));
                (&s).write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\":true}").unwrap();
            }
        });
        let c = client(secs(5), secs(10));
        let data: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            post(&c, &m.url, &data).unwrap(),
            (200, "{\"ok\":true}".into())
        );
        assert_eq!(post(&c, &m.url, b"[1,2]").unwrap().0, 200);
        assert_eq!(
            m.accepted.load(Ordering::SeqCst),
            1,
            "kept alive and reused"
        );
        let got = got.lock().unwrap();
        let (head, body) = &got[0];
        assert!(head.starts_with("POST /infer?x=1 HTTP/1.1\r\n"), "{head}");
        assert!(head.contains("Host: 127.0.0.1:"), "{head}");
        assert!(
            head.contains("Content-Type: application/json\r\n"),
            "{head}"
        );
        assert!(head.contains("Transfer-Encoding: chunked\r\n"), "{head}");
        assert!(body == &data);
        assert_eq!(got[1].1, b"[1,2]");
    }

    #[test]
    fn a_connection_the_model_closed_is_not_reused() {
        let m = model(|_, s| {
            let mut r = BufReader::new(&s);
            if request(&mut r).is_some() {
                (&s).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .unwrap();
            }
            // Closes after one answer, without saying so.
        });
        let c = client(secs(5), secs(10));
        for _ in 0..3 {
            assert_eq!(post(&c, &m.url, b"x").unwrap(), (200, "ok".into()));
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(m.accepted.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn answers_chunked_close_delimited_interim_and_empty() {
        for (answer, want, status) in [
            (
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nTrailer: x\r\n\r\n",
                "abcde",
                200,
            ),
            ("HTTP/1.0 200 OK\r\n\r\nuntil the end", "until the end", 200),
            (
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nhi",
                "hi",
                201,
            ),
            ("HTTP/1.1 204 No Content\r\n\r\n", "", 204),
            ("HTTP/1.1 200 OK\nContent-Length: 3\n\nbar", "bar", 200),
        ] {
            let m = model(move |_, s| {
                let mut r = BufReader::new(&s);
                if request(&mut r).is_some() {
                    (&s).write_all(answer.as_bytes()).unwrap();
                }
            });
            let c = client(secs(5), secs(10));
            assert_eq!(post(&c, &m.url, b"x").unwrap(), (status, want.into()), "{answer:?}");
        }
    }

    #[test]
    fn what_is_not_http_is_a_clear_error() {
        for answer in [
            "SMTP ready\r\n\r\n",
            "HTTP/1.1 2000 OK\r\n\r\n",
            "HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ] {
            let m = model(move |_, s| {
                let mut r = BufReader::new(&s);
                if request(&mut r).is_some() {
                    (&s).write_all(answer.as_bytes()).unwrap();
                }
            });
            let e = post(&client(secs(5), secs(10)), &m.url, b"x").unwrap_err();
            assert_eq!(e.code, Code::ModelUnreachable, "{answer:?}");
            assert!(e.message.contains("not HTTP/1.1"), "{}", e.message);
        }
        let m = model(|_, s| {
            let mut r = BufReader::new(&s);
            if request(&mut r).is_some() {
                (&s).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")
                    .unwrap();
            }
        });
        let e = post(&client(secs(5), secs(10)), &m.url, b"x").unwrap_err();
        assert_eq!(e.code, Code::ModelUnreachable);
        assert!(e.message.contains("ended early"), "{}", e.message);
    }

    #[test]
    fn a_silent_model_times_out_at_the_silence_timeout() {
        let m = model(|_, s| {
            let mut r = BufReader::new(&s);
            let _ = request(&mut r);
            std::thread::sleep(secs(5));
        });
        let started = Instant::now();
        let e = post(&client(Duration::from_millis(300), secs(30)), &m.url, b"x").unwrap_err();
        assert_eq!(e.code, Code::ModelTimeout, "{}", e.message);
        assert!(started.elapsed() < secs(4));
    }

    #[test]
    fn a_trickling_answer_times_out_at_the_total_timeout() {
        let m = model(|_, s| {
            let mut r = BufReader::new(&s);
            let _ = request(&mut r);
            let _ = (&s).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n");
            for _ in 0..100 {
                std::thread::sleep(Duration::from_millis(50));
                if (&s).write_all(b"x").is_err() {
                    return;
                }
            }
        });
        let c = client(secs(2), Duration::from_millis(600));
        let started = Instant::now();
        let e = post(&c, &m.url, b"x").unwrap_err();
        assert_eq!(e.code, Code::ModelTimeout, "{}", e.message);
        assert!(started.elapsed() < secs(3));
    }

    #[test]
    fn a_payload_failure_stops_the_body_and_is_the_error() {
        /// Gives some bytes, then the PACS error a payload reader raises.
        struct Failing(usize);
        impl Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0 == 0 {
                    return Err(ProxyError::new(Code::PacsUnreachable, "cut").into_io());
                }
                let n = buf.len().min(self.0);
                buf[..n].fill(b'7');
                self.0 -= n;
                Ok(n)
            }
        }
        let truncated = Arc::new(AtomicUsize::new(0));
        let t = truncated.clone();
        let m = model(move |_, s| {
            let mut r = BufReader::new(&s);
            if request(&mut r).is_none() {
                t.fetch_add(1, Ordering::SeqCst);
            }
        });
        let c = client(secs(5), secs(10));
        let e = std::thread::scope(|s| {
            let mut blocks = pipeline::start(s, Failing(600_000)).unwrap();
            c.post(&m.url, "application/json", Upload::Blocks(&mut blocks))
                .err()
                .unwrap()
        });
        assert_eq!((e.code, e.message.as_str()), (Code::PacsUnreachable, "cut"));
        let started = Instant::now();
        while truncated.load(Ordering::SeqCst) == 0 && started.elapsed() < secs(5) {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            truncated.load(Ordering::SeqCst),
            1,
            "the model saw a cut body"
        );
    }

    /// A model that answers without taking the body (a 413) gets its answer
    /// relayed, not "could not be reached".
    #[test]
    fn an_answer_before_the_body_is_taken_is_the_answer() {
        let m = model(|_, s| {
            let mut r = BufReader::new(&s);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok() && line != "\r\n" {
                line.clear();
            }
            let _ = (&s).write_all(
                b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!",
            );
            let _ = s.shutdown(std::net::Shutdown::Write);
            std::thread::sleep(secs(10));
        });
        let c = client(Duration::from_millis(500), secs(30));
        let data = vec![b'1'; 40 << 20];
        let started = Instant::now();
        assert_eq!(post(&c, &m.url, &data).unwrap(), (413, "big!".into()));
        assert!(started.elapsed() < secs(5));
    }

    #[test]
    fn a_sized_body_goes_from_the_file() {
        let got = Arc::new(Mutex::new(None));
        let seen = got.clone();
        let m = model(move |_, s| {
            let mut r = BufReader::new(&s);
            if let Some(req) = request(&mut r) {
                *seen.lock().unwrap() = Some(req);
                (&s).write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .unwrap();
            }
        });
        let path = std::env::temp_dir().join(format!("model-proxy-http-{}", std::process::id()));
        let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 253) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        let mut f = File::open(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let c = client(secs(5), secs(10));
        let mut a = c
            .post(
                &m.url,
                "application/json",
                Upload::File(&mut f, data.len() as u64),
            )
            .unwrap();
        let mut body = String::new();
        a.body.read_to_string(&mut body).unwrap();
        assert_eq!((a.status, body.as_str()), (200, "ok"));
        let (head, body) = got.lock().unwrap().take().unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}\r\n", data.len())),
            "{head}"
        );
        assert!(!head.to_ascii_lowercase().contains("chunked"));
        assert!(body == data);
    }

    #[test]
    fn nobody_listening_is_unreachable() {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = post(
            &client(secs(5), secs(10)),
            &format!("http://127.0.0.1:{port}/"),
            b"x",
        )
        .unwrap_err();
        assert_eq!(e.code, Code::ModelUnreachable, "{}", e.message);
    }

    #[test]
    fn targets() {
        let t = Target::parse("https://Model.example/v1/seg?a=b&c").unwrap();
        assert_eq!(
            t,
            Target {
                origin: Origin {
                    tls: true,
                    host: "Model.example".into(),
                    port: 443
                },
                authority: "Model.example".into(),
                path: "/v1/seg?a=b&c".into(),
            }
        );
        let t = Target::parse("http://[::1]:8011").unwrap();
        assert_eq!((t.origin.host.as_str(), t.origin.port), ("::1", 8011));
        assert_eq!((t.authority.as_str(), t.path.as_str()), ("[::1]:8011", "/"));
        let t = Target::parse("http://user:pw@h:81/x").unwrap();
        assert_eq!(t.authority, "h:81");
        assert!(Target::parse("ftp://h/x").is_err());
        assert!(Target::parse("not a url").is_err());
    }

    #[test]
    fn the_pool_keeps_few_and_fresh_connections() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let held =
            std::thread::spawn(move || listener.incoming().take(4).flatten().collect::<Vec<_>>());
        let origin = Origin {
            tls: false,
            host: "127.0.0.1".into(),
            port: addr.port(),
        };
        let pool = Pool::new(2, 8, Duration::from_millis(300));
        for _ in 0..3 {
            pool.put(&origin, Conn::Plain(TcpStream::connect(addr).unwrap()));
        }
        assert_eq!(pool.idle(&origin), 2, "two per host at most");
        assert!(pool.take(&origin).is_some());
        std::thread::sleep(Duration::from_millis(400));
        assert!(pool.take(&origin).is_none(), "too old to reuse");
        // A connection the server has closed is dropped, not handed out.
        pool.put(&origin, Conn::Plain(TcpStream::connect(addr).unwrap()));
        drop(held.join().unwrap());
        std::thread::sleep(Duration::from_millis(50));
        assert!(pool.take(&origin).is_none(), "closed by the server");
    }
}
