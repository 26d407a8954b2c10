//! One client connection: read a request head and check it, read its body,
//! hand the request to tiny_http on a fresh backend connection, relay the
//! answer while reading its framing, and only then read the next request.
//!
//! So pipelined requests are answered in order with at most one in flight, a
//! client that does not read its answers stalls only its own connection, and
//! tiny_http never sees a request it would have to frame, wait for or drain.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use super::conns::{Phase, Slot};
use super::head::{self, Chunked, Framing, RequestHead, LIMITS};
use super::{Door, Seen};
use crate::access;
use crate::error::{Code, ProxyError};

/// After answering a refused request, how long the rest of what the client
/// sends is read and dropped, so that closing does not reset the connection
/// under the answer before the client has read it.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

/// A client's byte stream: plain TCP, or TLS over it.
pub trait Wire: Read + Write {
    /// The socket underneath, for timeouts and shutdown.
    fn tcp(&self) -> &TcpStream;
    /// Ends our direction politely (TLS: close_notify).
    fn finish(&mut self) {
        let _ = self.flush();
    }
}

impl Wire for &TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl Wire for rustls::StreamOwned<rustls::ServerConnection, &TcpStream> {
    fn tcp(&self) -> &TcpStream {
        self.sock
    }
    fn finish(&mut self) {
        self.conn.send_close_notify();
        let _ = self.flush();
    }
}

/// Why an exchange ended the connection.
enum End {
    /// The client closed, went silent while idle, or stopped taking the answer.
    Gone,
    /// The proxy refuses the request with this error (then closes).
    Refuse(Box<(ProxyError, Seen)>),
    /// The answer was sent and says the connection closes.
    Close,
    /// The server's answer broke off: close at once so the client sees it cut.
    Cut(String),
}

impl From<io::Error> for End {
    fn from(_: io::Error) -> End {
        End::Gone
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// One connection being served.
pub struct Conn<'a, W: Wire> {
    wire: W,
    /// What the client has sent that is not used yet (a pipelined request, say).
    buf: Vec<u8>,
    slot: &'a Slot,
    door: &'a Door,
}

impl<'a, W: Wire> Conn<'a, W> {
    /// A connection whose handshake (if any) is done.
    pub fn new(wire: W, slot: &'a Slot, door: &'a Door) -> Self {
        Conn {
            wire,
            buf: Vec::with_capacity(4096),
            slot,
            door,
        }
    }

    /// Serves requests until the connection ends.
    pub fn serve(mut self) {
        let end = loop {
            match self.exchange() {
                Ok(()) => continue,
                Err(end) => break end,
            }
        };
        match end {
            End::Gone => {}
            End::Close => self.linger(),
            End::Refuse(refused) => {
                let (e, seen) = *refused;
                let answer = head::closing((self.door.refuse)(&e, &seen), &seen.method);
                if self.send(&answer).is_ok() {
                    self.linger();
                }
            }
            End::Cut(why) => {
                log::warn!("an answer broke off ({why}); closing its client connection");
                let _ = self.wire.tcp().shutdown(Shutdown::Both);
            }
        }
    }

    /// One request and its answer.
    fn exchange(&mut self) -> Result<(), End> {
        self.slot.set(Phase::Idle);
        let (rq, started) = self.read_head()?;
        let seen = Seen::of(&rq, started);
        let body = match self.read_body(&rq) {
            Ok(body) => body,
            Err(End::Refuse(refused)) => return Err(refusal(refused.0, seen)),
            Err(end) => return Err(end),
        };
        self.slot.set(Phase::Backend);
        let Some(relay) = self.door.shared.open_relay() else {
            return Err(refusal(ProxyError::shutting_down(), seen));
        };
        let mut unix = match UnixStream::connect(&self.door.backend) {
            Ok(u) => u,
            Err(e) => {
                log::error!("cannot reach the request handler's socket: {e}");
                let e = ProxyError::internal(
                    "the proxy's request handler is not reachable; see its log",
                );
                return Err(refusal(e, seen));
            }
        };
        // The client's address travels in a header of our own (see access::stamp).
        let client = access::stamp(self.wire.tcp().peer_addr());
        unix.write_all(&rq.to_backend(body.len(), relay.id, client.as_deref()))?;
        unix.write_all(&body)?;
        // tiny_http then sees no further request on this connection and closes it after the answer.
        let _ = unix.shutdown(Shutdown::Write);
        self.relay(&rq, &mut unix, relay.id, seen)
    }

    /// Reads more from the client into `buf`, waiting until `deadline` at most.
    fn fill(&mut self, deadline: Instant) -> io::Result<usize> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        self.wire.tcp().set_read_timeout(Some(left))?;
        let mut chunk = [0u8; 8192];
        let n = self.wire.read(&mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// The next request head: waits `idle` for its first byte, then `header` for the rest.
    fn read_head(&mut self) -> Result<(RequestHead, Instant), End> {
        let times = &self.door.connections;
        let idle_until = Instant::now() + times.idle;
        let mut started: Option<Instant> = None;
        loop {
            if !self.buf.is_empty() {
                let at = *started.get_or_insert_with(|| {
                    self.slot.set(Phase::Reading);
                    Instant::now()
                });
                match head::parse_request(&self.buf, &LIMITS) {
                    Ok(Some((rq, n))) => {
                        self.buf.drain(..n);
                        return Ok((rq, at));
                    }
                    Ok(None) => {}
                    Err(r) => {
                        let seen = r.head.map_or(Seen::unparsed(at), |h| Seen::of(&h, at));
                        return Err(refusal(r.error, seen));
                    }
                }
            }
            let deadline = started.map_or(idle_until, |s| s + times.header);
            match self.fill(deadline) {
                Ok(0) => return Err(End::Gone),
                Ok(_) => {}
                Err(e) if timed_out(&e) => {
                    let Some(at) = started else {
                        log::debug!("closing a connection idle for {}s", times.idle.as_secs());
                        return Err(End::Gone);
                    };
                    let e = ProxyError::new(
                        Code::HeaderTimeout,
                        format!(
                            "the request head took longer than {}s to arrive",
                            times.header.as_secs()
                        ),
                    );
                    return Err(refusal(e, Seen::unparsed(at)));
                }
                Err(_) => return Err(End::Gone),
            }
        }
    }

    /// The whole body, decoded, within `--body-timeout`.
    fn read_body(&mut self, rq: &RequestHead) -> Result<Vec<u8>, End> {
        if rq.framing == Framing::Empty {
            return Ok(Vec::new());
        }
        if rq.expects_continue {
            self.send(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        let limit = self.door.connections.body;
        let deadline = Instant::now() + limit;
        let late = || {
            let msg = format!(
                "the request body took longer than {}s to arrive",
                limit.as_secs()
            );
            refuse(Code::BodyTimeout, msg)
        };
        let mut body = Vec::new();
        let mut chunked = Chunked::default();
        loop {
            match rq.framing {
                Framing::Length(n) => {
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    if self.buf.len() >= n {
                        return Ok(self.buf.drain(..n).collect());
                    }
                }
                _ => {
                    let used = chunked.feed(&self.buf, Some(&mut body)).map_err(|e| {
                        refuse(
                            Code::BadRequest,
                            format!("the chunked body is malformed: {e}"),
                        )
                    })?;
                    self.buf.drain(..used);
                    if body.len() > LIMITS.body {
                        let msg = format!("the request body exceeds {} bytes", LIMITS.body);
                        return Err(refuse(Code::BodyTooLarge, msg));
                    }
                    if chunked.is_done() {
                        return Ok(body);
                    }
                }
            }
            match self.fill(deadline) {
                Ok(0) => return Err(End::Gone),
                Ok(_) => {}
                Err(e) if timed_out(&e) => return Err(late()),
                Err(_) => return Err(End::Gone),
            }
        }
    }

    /// Relays tiny_http's answer to `rq`; `Ok` when the connection may carry another request.
    fn relay(
        &mut self,
        rq: &RequestHead,
        unix: &mut UnixStream,
        relay: u64,
        seen: Seen,
    ) -> Result<(), End> {
        let mut pending = Vec::with_capacity(16 * 1024);
        let mut chunk = vec![0u8; 64 * 1024];
        let resp = loop {
            match head::parse_response(&pending, &rq.method) {
                Ok(Some((r, n))) => {
                    pending.drain(..n);
                    // Interim answers were never asked for (the front answers Expect itself).
                    if (100..200).contains(&r.status) {
                        continue;
                    }
                    break r;
                }
                Ok(None) => {}
                Err(e) => return Err(End::Cut(e)),
            }
            let n = match unix.read(&mut chunk) {
                Ok(n) => n,
                Err(e) => return Err(End::Cut(format!("reading the answer: {e}"))),
            };
            if n == 0 {
                log::error!("the request handler closed without answering");
                let e = ProxyError::internal("the proxy gave no answer; see its log");
                return Err(refusal(e, seen));
            }
            pending.extend_from_slice(&chunk[..n]);
        };
        let close = !rq.keep_alive
            || resp.close
            || resp.framing == Framing::UntilClose
            || self.door.shared.draining();
        self.slot.set(Phase::Writing);
        let mut out = resp.to_client(close);
        let mut left = match resp.framing {
            Framing::Length(n) => n,
            _ => u64::MAX,
        };
        let mut chunked = Chunked::default();
        loop {
            match resp.framing {
                Framing::Empty => left = 0,
                Framing::Length(_) => {
                    let take = pending
                        .len()
                        .min(usize::try_from(left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&pending[..take]);
                    left -= take as u64;
                }
                Framing::Chunked => {
                    let used = chunked.feed(&pending, None).map_err(End::Cut)?;
                    out.extend_from_slice(&pending[..used]);
                    if chunked.is_done() {
                        // tiny_http ends a chunked body cleanly even when the model's
                        // answer broke off; the server marks such an exchange before that.
                        if self.door.shared.broken(relay) {
                            // Pass on what came, but not the end, so the client sees it cut.
                            if out.ends_with(b"0\r\n\r\n") {
                                out.truncate(out.len() - 5);
                            }
                            self.send(&out)?;
                            return Err(End::Cut("the model's answer broke off".into()));
                        }
                        left = 0;
                    }
                }
                Framing::UntilClose => out.extend_from_slice(&pending),
            }
            pending.clear();
            if !out.is_empty() {
                self.send(&out)?;
                out.clear();
            }
            if left == 0 {
                return if close { Err(End::Close) } else { Ok(()) };
            }
            let n = match unix.read(&mut chunk) {
                Ok(n) => n,
                Err(e) => return Err(End::Cut(format!("reading the answer: {e}"))),
            };
            if n == 0 {
                return match resp.framing {
                    Framing::UntilClose => Err(End::Close),
                    _ => Err(End::Cut("the answer ended early".into())),
                };
            }
            pending.extend_from_slice(&chunk[..n]);
        }
    }

    /// Writes to the client; a client that takes nothing for the write timeout is gone.
    fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.wire.write_all(bytes)?;
        self.wire.flush()?;
        self.slot.progress();
        Ok(())
    }

    /// Closes after a last answer: our side first, then what the client still
    /// sends is read and dropped for a moment, so the answer is not lost to a reset.
    fn linger(mut self) {
        self.slot.lingering();
        self.wire.finish();
        let mut tcp = self.wire.tcp();
        let _ = tcp.shutdown(Shutdown::Write);
        let until = Instant::now() + LINGER;
        let mut drained = 0;
        let mut chunk = [0u8; 8192];
        while drained < LINGER_BYTES {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() || tcp.set_read_timeout(Some(left)).is_err() {
                break;
            }
            match tcp.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => drained += n,
            }
        }
    }
}

fn refusal(e: ProxyError, seen: Seen) -> End {
    End::Refuse(Box::new((e, seen)))
}

/// A refusal whose request the caller knows better (see `exchange`).
fn refuse(code: Code, message: String) -> End {
    refusal(
        ProxyError::new(code, message),
        Seen::unparsed(Instant::now()),
    )
}
