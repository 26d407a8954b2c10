//! The client's address, from the public listener to the server.
//!
//! tiny_http sits on a Unix socket behind the front and sees no peer address,
//! so the front stamps every request head it relays with one header of its own,
//! `X-Model-Proxy-Client: <secret> <ip>`, after removing any copy the client
//! sent. The server trusts the header only with this process's random secret
//! in it: where the stamper stops following a connection (a chunked or
//! upgraded body, a huge head) a client's own copy can reach the server, but it
//! cannot know the secret, so its request simply has no address.
//!
//! The stamper frames requests the way tiny_http does: a head ends at the
//! first empty line; a `Transfer-Encoding` header means chunked (the stamper
//! then passes the rest of the connection through untouched), else the first
//! `Content-Length` that parses gives the body's length, else there is none.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::OnceLock;

/// The header's name.
pub const HEADER: &str = "X-Model-Proxy-Client";
/// A head longer than this is passed on unstamped, and so is the rest of its connection.
const MAX_HEAD: usize = 64 * 1024;

/// This process's secret (32 hex digits); `None` if the system has no randomness to give.
fn secret() -> Option<&'static str> {
    static SECRET: OnceLock<Option<String>> = OnceLock::new();
    SECRET
        .get_or_init(|| {
            let mut b = [0u8; 16];
            ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b).ok()?;
            Some(b.iter().map(|x| format!("{x:02x}")).collect())
        })
        .as_deref()
}

/// The client address in a stamp the front made, if `value` is one.
pub fn client(value: &str) -> Option<String> {
    let (s, ip) = value.split_once(' ')?;
    let ours = secret()?;
    let same = s.len() == ours.len()
        && s.bytes()
            .zip(ours.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    (same && ip.parse::<std::net::IpAddr>().is_ok()).then(|| ip.to_string())
}

enum State {
    /// Collecting a request head.
    Head,
    /// Passing on this many body bytes.
    Body(usize),
    /// No longer following the framing.
    Through,
}

/// A writer to the backend that stamps each request head with the client's address.
pub struct Stamp<W: Write> {
    inner: W,
    line: Option<String>,
    head: Vec<u8>,
    state: State,
}

impl<W: Write> Stamp<W> {
    /// Stamps what is written through it with `peer`'s address (nothing if it is unknown).
    pub fn new(inner: W, peer: io::Result<SocketAddr>) -> Stamp<W> {
        let line = match (secret(), peer) {
            (Some(s), Ok(a)) => Some(format!("{HEADER}: {s} {}\r\n", a.ip().to_canonical())),
            _ => None,
        };
        let state = if line.is_some() {
            State::Head
        } else {
            State::Through
        };
        Stamp {
            inner,
            line,
            head: Vec::new(),
            state,
        }
    }

    /// The writer it wraps (for tests).
    pub fn into_inner(self) -> W {
        self.inner
    }

    fn feed(&mut self, mut input: &[u8]) -> io::Result<()> {
        while !input.is_empty() {
            match self.state {
                State::Through => return self.inner.write_all(input),
                State::Body(n) => {
                    let k = n.min(input.len());
                    self.inner.write_all(&input[..k])?;
                    self.state = if k == n {
                        State::Head
                    } else {
                        State::Body(n - k)
                    };
                    input = &input[k..];
                }
                State::Head => {
                    let from = self.head.len().saturating_sub(3);
                    self.head.extend_from_slice(input);
                    let end = find(&self.head[from..], b"\r\n\r\n").map(|i| from + i + 4);
                    if end.unwrap_or(self.head.len()) > MAX_HEAD {
                        self.state = State::Through;
                        let head = std::mem::take(&mut self.head);
                        return self.inner.write_all(&head);
                    }
                    let Some(end) = end else {
                        return Ok(());
                    };
                    let rest = self.head.split_off(end);
                    let head = std::mem::take(&mut self.head);
                    let (stamped, next) = self.stamp(&head);
                    self.inner.write_all(&stamped)?;
                    self.state = next;
                    return self.feed(&rest);
                }
            }
        }
        Ok(())
    }

    /// The head with our header in place of the client's, and what follows it.
    fn stamp(&self, head: &[u8]) -> (Vec<u8>, State) {
        let mut out = Vec::with_capacity(head.len() + 64);
        // Lines end at CRLF only, as tiny_http reads them (a bare LF stays inside a line).
        let mut lines = crlf_lines(&head[..head.len() - 2]);
        out.extend_from_slice(lines.next().unwrap_or_default());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(self.line.as_deref().unwrap_or_default().as_bytes());
        let (mut te, mut cl, mut upgrade) = (false, None, false);
        let (mut seen_cl, mut seen_conn) = (false, false);
        for l in lines {
            let text = String::from_utf8_lossy(l);
            let (name, value) = text.trim().split_once(':').unwrap_or(("", ""));
            let value = value.trim();
            if name.eq_ignore_ascii_case(HEADER) {
                continue;
            }
            if name.eq_ignore_ascii_case("Transfer-Encoding") {
                te = true;
            } else if name.eq_ignore_ascii_case("Content-Length") && !seen_cl {
                seen_cl = true;
                cl = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("Connection") && !seen_conn {
                seen_conn = true;
                upgrade = value.to_ascii_lowercase().contains("upgrade");
            }
            out.extend_from_slice(l);
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b"\r\n");
        let next = match (te || upgrade, cl) {
            (true, _) => State::Through,
            (false, Some(n)) if n > 0 => State::Body(n),
            _ => State::Head,
        };
        (out, next)
    }
}

impl<W: Write> Write for Stamp<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.feed(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The CRLF-terminated lines of `text` (which ends with CRLF), without their CRLF.
fn crlf_lines(mut text: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        let i = find(text, b"\r\n")?;
        let line = &text[..i];
        text = &text[i + 2..];
        Some(line)
    })
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stamped(chunks: &[&[u8]]) -> String {
        let mut s = Stamp::new(
            Vec::new(),
            "10.1.2.3:5555"
                .parse::<SocketAddr>()
                .map_err(io::Error::other),
        );
        for c in chunks {
            s.write_all(c).unwrap();
        }
        String::from_utf8(s.inner).unwrap()
    }

    #[test]
    fn every_head_on_a_connection_is_stamped_and_forgeries_dropped() {
        let secret = secret().unwrap();
        let one = b"POST /a HTTP/1.1\r\nHost: x\r\nx-model-proxy-client: 1 6.6.6.6\r\nContent-Length: 5\r\n\r\nab\r\n\r";
        let two = b"GET /b HTTP/1.1\r\nX-Model-Proxy-Client: forged\r\n\r\n";
        // Split anywhere: the result is the same.
        let whole = stamped(&[one, two]);
        for cut in 1..one.len() {
            assert_eq!(stamped(&[&one[..cut], &one[cut..], two]), whole);
        }
        let ours = format!("{HEADER}: {secret} 10.1.2.3\r\n");
        assert_eq!(
            whole,
            format!("POST /a HTTP/1.1\r\n{ours}Host: x\r\nContent-Length: 5\r\n\r\nab\r\n\rGET /b HTTP/1.1\r\n{ours}\r\n")
        );
        assert_eq!(
            client(&format!("{secret} 10.1.2.3")).as_deref(),
            Some("10.1.2.3")
        );
        assert_eq!(client("0123 6.6.6.6"), None);
        assert_eq!(client(&format!("{secret} not-an-ip")), None);
    }

    #[test]
    fn chunked_and_upgraded_connections_pass_through() {
        let secret = secret().unwrap();
        let head = b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let body = b"5\r\nGET /\r\n0\r\n\r\nGET /b HTTP/1.1\r\nX-Model-Proxy-Client: forged 1.1.1.1\r\n\r\n";
        let out = stamped(&[head, body]);
        assert_eq!(out.matches(secret).count(), 1);
        assert!(out.ends_with("X-Model-Proxy-Client: forged 1.1.1.1\r\n\r\n"));
        assert_eq!(client("forged 1.1.1.1"), None);
    }

    #[test]
    fn unknown_peer_and_huge_heads_are_not_stamped() {
        let mut s = Stamp::new(Vec::new(), Err(io::Error::other("no peer")));
        s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert_eq!(s.inner, b"GET / HTTP/1.1\r\n\r\n");
        let big = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(MAX_HEAD));
        assert_eq!(stamped(&[big.as_bytes()]), big);
        let (start, end) = big.split_at(MAX_HEAD + 1);
        assert_eq!(stamped(&[start.as_bytes(), end.as_bytes()]), big);
    }
}
