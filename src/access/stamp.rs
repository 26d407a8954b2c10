//! The client's address, from the public listener to the server.
//!
//! tiny_http sits on a Unix socket behind the front and sees no peer address,
//! so the front writes every request head it relays with one header of its
//! own, `X-Model-Proxy-Client: <secret> <ip>`, having dropped any copy the
//! client sent (the front rebuilds each head). The server also checks this
//! process's random secret in it, so that nothing but the front can name an
//! address, should another way to tiny_http's socket ever open.

use std::io;
use std::net::SocketAddr;
use std::sync::OnceLock;

/// The header's name (lower case, as the front's list of fields it drops has it).
pub const HEADER: &str = "x-model-proxy-client";

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

/// The header's value for a client at `peer`; `None` if the address or randomness is missing.
pub fn stamp(peer: io::Result<SocketAddr>) -> Option<String> {
    Some(format!("{} {}", secret()?, peer.ok()?.ip().to_canonical()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stamp_names_the_client_and_forgeries_name_nobody() {
        let peer = "10.1.2.3:5555"
            .parse::<SocketAddr>()
            .map_err(io::Error::other);
        let value = stamp(peer).unwrap();
        assert_eq!(client(&value).as_deref(), Some("10.1.2.3"));
        let mapped = "[::ffff:10.9.8.7]:1"
            .parse::<SocketAddr>()
            .map_err(io::Error::other);
        assert_eq!(client(&stamp(mapped).unwrap()).as_deref(), Some("10.9.8.7"));
        let secret = secret().unwrap();
        assert_eq!(client("0123 6.6.6.6"), None);
        assert_eq!(client("forged"), None);
        assert_eq!(client(&format!("{secret} not-an-ip")), None);
        assert_eq!(stamp(Err(io::Error::other("no peer"))), None);
    }
}
