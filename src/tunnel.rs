//! Model connections through the forward proxy the environment names.
//!
//! ureq reaches the PACS, the auth service and the probes through `ALL_PROXY`,
//! `HTTPS_PROXY` or `HTTP_PROXY` (minus `NO_PROXY`); the model client writes
//! its requests itself ([`crate::model::http`]), so it opens the same HTTP
//! CONNECT tunnel here, read from the same variables by ureq's own parser, and
//! a model behind a hospital's egress proxy stays reachable.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ureq::http::Uri;
use ureq::{Proxy, ProxyProtocol};

use crate::auth::basic;
use crate::upstream::{Origin, USER_AGENT};

/// The longest CONNECT answer head we read.
const HEAD_LIMIT: usize = 16 * 1024;

/// The proxy from the environment, if it is one the model client can use;
/// a kind it cannot use is said once, at start-up.
pub fn from_env() -> Option<Proxy> {
    let proxy = Proxy::try_from_env()?;
    if proxy.protocol() != ProxyProtocol::Http {
        log::warn!(
            "the environment's proxy ({}:{}, {:?}) is not an http:// CONNECT proxy, the only \
             kind supported: model requests go direct",
            proxy.host(),
            proxy.port(),
            proxy.protocol()
        );
        return None;
    }
    log::info!(
        "upstream requests go through the proxy {}:{} (NO_PROXY excepted)",
        proxy.host(),
        proxy.port()
    );
    Some(proxy)
}

/// Whether a connection to `origin` goes through `proxy` (not excepted by `NO_PROXY`).
pub fn applies(proxy: &Proxy, origin: &Origin) -> bool {
    let scheme = if origin.tls { "https" } else { "http" };
    match format!("{scheme}://{}/", authority(origin)).parse::<Uri>() {
        Ok(uri) => !proxy.is_no_proxy(&uri),
        Err(_) => true,
    }
}

/// `host:port`, with an IPv6 address in brackets.
fn authority(origin: &Origin) -> String {
    if origin.host.contains(':') {
        format!("[{}]:{}", origin.host, origin.port)
    } else {
        format!("{}:{}", origin.host, origin.port)
    }
}

/// Asks the proxy on `tcp` for a tunnel to `origin`, within `limit`; the
/// stream then carries the target's bytes (TLS, if any, is started over it).
pub fn open(
    proxy: &Proxy,
    mut tcp: TcpStream,
    origin: &Origin,
    limit: Duration,
) -> io::Result<TcpStream> {
    let target = authority(origin);
    let mut head =
        format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {USER_AGENT}\r\n");
    if proxy.username().is_some() || proxy.password().is_some() {
        let login = proxy.username().unwrap_or_default();
        let password = proxy.password().unwrap_or_default();
        head.push_str(&format!(
            "Proxy-Authorization: Basic {}\r\n",
            basic::base64(format!("{login}:{password}").as_bytes())
        ));
    }
    head.push_str("\r\n");
    let deadline = Instant::now() + limit;
    tcp.set_write_timeout(Some(limit))?;
    tcp.write_all(head.as_bytes())?;
    let answer = read_head(&mut tcp, deadline)?;
    let status = status_of(&answer)?;
    if !(200..300).contains(&status) {
        let why = match status {
            // tinyproxy says 401 where RFC 9110 says 407.
            401 | 407 => {
                " (the proxy wants other credentials: http://login:password@host:port in HTTPS_PROXY)"
            }
            403 => " (the proxy does not allow a tunnel to this host and port)",
            _ => "",
        };
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!("the proxy answered {status} to CONNECT {target}{why}"),
        ));
    }
    Ok(tcp)
}

/// The proxy's answer head, read a byte at a time: what follows it is the
/// target's, and must be left in the socket.
fn read_head(tcp: &mut TcpStream, deadline: Instant) -> io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(256);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        if head.len() >= HEAD_LIMIT {
            return Err(bad("the proxy's answer to CONNECT has an overlong head"));
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the proxy did not answer CONNECT in time",
            ));
        }
        tcp.set_read_timeout(Some(left))?;
        match tcp.read(&mut byte)? {
            0 => {
                return Err(bad(
                    "the proxy closed the connection before answering CONNECT",
                ))
            }
            _ => head.push(byte[0]),
        }
    }
    Ok(head)
}

/// The status code of an HTTP/1.x status line.
fn status_of(head: &[u8]) -> io::Result<u16> {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let text = String::from_utf8_lossy(line);
    let mut words = text.split_whitespace();
    match (words.next(), words.next().and_then(|c| c.parse().ok())) {
        (Some(v), Some(code)) if v.starts_with("HTTP/1.") => Ok(code),
        _ => Err(bad("the proxy's answer to CONNECT is not HTTP")),
    }
}

fn bad(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::thread;

    fn origin(host: &str, port: u16, tls: bool) -> Origin {
        Origin {
            tls,
            host: host.into(),
            port,
        }
    }

    /// A one-shot proxy: records the CONNECT head, answers `reply`, then
    /// (on 200) says "hello" as the target would.
    fn proxy(reply: &'static str) -> (u16, thread::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let t = thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                head.push_str(&line);
                if line == "\r\n" {
                    break;
                }
            }
            let mut w = s;
            w.write_all(reply.as_bytes()).unwrap();
            if reply.contains(" 200 ") {
                w.write_all(b"hello").unwrap();
            }
            head
        });
        (port, t)
    }

    fn connect(port: u16) -> TcpStream {
        TcpStream::connect(("127.0.0.1", port)).unwrap()
    }

    #[test]
    fn a_tunnel_leaves_the_targets_bytes_in_the_socket() {
        let (port, t) = proxy("HTTP/1.1 200 Connection established\r\nVia: x\r\n\r\n");
        let p = Proxy::new("http://user:s%3Ecret@127.0.0.1:1").unwrap();
        let mut s = open(
            &p,
            connect(port),
            &origin("model.example", 8443, true),
            Duration::from_secs(5),
        )
        .unwrap();
        let mut hello = [0u8; 5];
        s.read_exact(&mut hello).unwrap();
        assert_eq!(&hello, b"hello");
        let head = t.join().unwrap();
        assert!(
            head.starts_with("CONNECT model.example:8443 HTTP/1.1\r\nHost: model.example:8443\r\n"),
            "{head}"
        );
        assert!(head.contains("Proxy-Authorization: Basic "), "{head}");
    }

    #[test]
    fn a_refused_tunnel_says_why() {
        let (port, t) = proxy("HTTP/1.1 407 Proxy Authentication Required\r\n\r\n");
        let p = Proxy::new("http://127.0.0.1:1").unwrap();
        let e = open(
            &p,
            connect(port),
            &origin("::1", 80, false),
            Duration::from_secs(5),
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("407") && e.to_string().contains("credentials"),
            "{e}"
        );
        assert!(e.to_string().contains("[::1]:80"), "{e}");
        assert!(!t.join().unwrap().contains("Proxy-Authorization"));
    }

    #[test]
    fn what_is_not_http_is_an_error() {
        for bad in [&b"SSH-2.0-x\r\n\r\n"[..], b"\r\n\r\n"] {
            assert!(status_of(bad).is_err());
        }
        assert_eq!(status_of(b"HTTP/1.0 200 OK\r\n\r\n").unwrap(), 200);
    }
}
