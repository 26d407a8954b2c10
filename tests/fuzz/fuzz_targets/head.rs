//! The front's request-head parser and framing rules, the chunked decoder, the
//! response-head parser and the certificate date walk, on arbitrary bytes:
//! nothing panics; a request head that is accepted has one unambiguous framing
//! and is re-written for tiny_http in a form that parses back to the same
//! request; the chunked decoder gives the same result at any read size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model_proxy::parsers::{
    head_end, not_after, parse_request, parse_response, Chunked, Framing, LIMITS,
};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    match sel % 4 {
        0 => request(rest),
        1 => chunked(rest, usize::from(sel >> 2) % 16 + 1),
        2 => {
            let method = if sel & 4 == 0 { "GET" } else { "HEAD" };
            let _ = parse_response(rest, method);
        }
        _ => {
            let _ = not_after(rest);
        }
    }
});

fn request(data: &[u8]) {
    let (head, n) = match parse_request(data, &LIMITS) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => {
            assert!(data.len() <= LIMITS.head);
            assert!(head_end(data).is_none());
            return;
        }
        Err(refused) => {
            assert!(matches!(refused.error.status(), 400 | 413 | 414 | 431));
            return;
        }
    };
    assert!(n <= data.len() && n <= LIMITS.head);
    assert_eq!(head_end(data), Some(n));
    let body = match head.framing {
        Framing::Empty => 0,
        Framing::Length(len) => {
            assert!(len > 0 && len <= LIMITS.body as u64);
            len as usize
        }
        Framing::Chunked => {
            assert_eq!(head.minor, 1, "chunked on HTTP/1.0");
            7
        }
        Framing::UntilClose => panic!("a request framed by the connection's end"),
    };
    if head.framing != Framing::Empty {
        assert!(!["GET", "HEAD", "OPTIONS"].contains(&head.method.as_str()));
    }
    let forwarded = head.to_backend(body, 42, None);
    assert!(forwarded.is_ascii());
    assert!(forwarded.ends_with(b"\r\n\r\n"));
    let text = String::from_utf8_lossy(&forwarded).to_ascii_lowercase();
    assert!(!text.contains("\ntransfer-encoding:"), "{text}");
    assert!(text.matches("\ncontent-length:").count() <= 1, "{text}");
    // Room for the two fields the front adds.
    let roomy = model_proxy::parsers::Limits {
        head: LIMITS.head + 1024,
        headers: LIMITS.headers + 2,
        ..LIMITS
    };
    let (again, m) = parse_request(&forwarded, &roomy)
        .expect("the front's own head is accepted")
        .expect("and complete");
    assert_eq!(m, forwarded.len());
    assert_eq!(
        (&again.method, &again.target, again.minor, &again.headers),
        (&head.method, &head.target, head.minor, &head.headers)
    );
    let expect = if body == 0 {
        Framing::Empty
    } else {
        Framing::Length(body as u64)
    };
    assert_eq!(again.framing, expect);
}

fn chunked(wire: &[u8], step: usize) {
    let run = |step: usize| {
        let mut c = Chunked::default();
        let (mut out, mut used) = (Vec::new(), 0);
        for piece in wire.chunks(step) {
            match c.feed(piece, Some(&mut out)) {
                Ok(n) => {
                    used += n;
                    if n < piece.len() {
                        break;
                    }
                }
                Err(_) => return None,
            }
        }
        assert!(out.len() <= used);
        Some((out, used, c.is_done()))
    };
    let whole = run(wire.len().max(1));
    assert_eq!(run(step), whole);
    if let Some((_, used, done)) = whole {
        assert!(done || used == wire.len());
    }
}
