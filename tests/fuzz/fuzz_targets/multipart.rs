//! `multipart::Multipart` over arbitrary bytes delivered in short reads: never
//! panics, never loops forever; errors are fine. A second mode builds a
//! well-formed body from the input and checks every part comes back intact.
//! `multipart::boundary(content_type)` is exercised on the same input.
#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use model_proxy::parsers::{boundary, find, Multipart};

/// Hands out at most `step` bytes per read, and an `Interrupted` error now and then.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
    interrupt: bool,
    reads: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.reads += 1;
        if self.interrupt && self.reads % 3 == 0 {
            return Err(io::ErrorKind::Interrupted.into());
        }
        let n = self.data.len().min(self.step).min(out.len());
        out[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// Boundary characters allowed by RFC 2046 (`bchars`, without the space).
const BCHARS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=?";

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let (mode, blen, step) = (data[0], data[1] as usize, data[2] as usize % 64 + 1);
    let rest = &data[3..];
    let interrupt = mode & 0x40 != 0;

    // boundary(): the text before the first newline as a content type.
    let ct_end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let ct = String::from_utf8_lossy(&rest[..ct_end]);
    if let Some(b) = boundary(&ct) {
        assert!(!b.is_empty() && b.len() <= 200, "{b:?}");
        assert!(ct.contains(b.as_str()));
    }

    if mode & 0x80 == 0 {
        raw(rest, blen, step, interrupt);
    } else {
        roundtrip(rest, blen, step, interrupt);
    }
});

/// Arbitrary bytes. If `rest` starts with a multipart content-type line, its
/// boundary is used and the body follows the line; otherwise the first
/// `blen % 72` bytes (lossy UTF-8) are the boundary.
fn raw(rest: &[u8], blen: usize, step: usize, interrupt: bool) {
    let line_end = rest.iter().position(|&b| b == b'\n');
    let from_ct = line_end.and_then(|e| Some((boundary(&String::from_utf8_lossy(&rest[..e]))?, e)));
    let (b, needle, body) = match from_ct {
        Some((b, e)) => (b.clone(), b.into_bytes(), &rest[e + 1..]),
        None => {
            let blen = (blen % 72).min(rest.len());
            let b = String::from_utf8_lossy(&rest[..blen]).into_owned();
            (b, rest[..blen].to_vec(), &rest[blen..])
        }
    };
    let needle = &needle[..];
    // find() agrees with a naive search.
    let naive = if needle.is_empty() {
        None
    } else {
        body.windows(needle.len()).position(|w| w == needle)
    };
    assert_eq!(find(body, needle), naive, "find({needle:?})");
    let mut m = Multipart::new(
        Trickle {
            data: body,
            step,
            interrupt,
            reads: 0,
        },
        &b,
    );
    let mut total = 0usize;
    let mut parts = 0usize;
    loop {
        match m.next_part() {
            Ok(true) => {}
            Ok(false) => break,
            Err(_) => return,
        }
        parts += 1;
        let _ = m.part_content_type();
        let mut p = Vec::new();
        match m.read_to_end(&mut p) {
            Ok(n) => total += n,
            Err(_) => return,
        }
        // Content is handed out once: never more than the body held.
        assert!(
            total <= body.len(),
            "{total} content bytes from a {}-byte body",
            body.len()
        );
        assert!(
            parts <= body.len() + 1,
            "{parts} parts from {} bytes",
            body.len()
        );
    }
    // After the close delimiter, it stays done.
    assert!(!m.next_part().unwrap());
    let mut sink = [0u8; 16];
    assert_eq!(m.read(&mut sink).unwrap(), 0);
}

/// A well-formed body: boundary from `bchars`, parts split at 0xFF bytes.
fn roundtrip(rest: &[u8], blen: usize, step: usize, interrupt: bool) {
    let blen = blen % 70 + 1;
    if rest.len() < blen {
        return;
    }
    let b: String = rest[..blen]
        .iter()
        .map(|&c| BCHARS[c as usize % BCHARS.len()] as char)
        .collect();
    let payload = &rest[blen..];
    let mut it = payload.split(|&c| c == 0xFF);
    let preamble = it.next().unwrap_or(&[]);
    let parts: Vec<&[u8]> = it.collect();

    // The parser takes a delimiter's CR as optional (servers that end lines with
    // a bare LF), so any "\n--boundary" is a delimiter.
    let delim = format!("\n--{b}").into_bytes();
    let mut body = Vec::new();
    let mut expected_delims = Vec::new(); // positions of the "\n" in "\r\n" + body
    body.extend_from_slice(preamble);
    if !preamble.is_empty() {
        body.extend_from_slice(b"\r\n");
    }
    for (i, p) in parts.iter().enumerate() {
        expected_delims.push(body.len() + 1);
        body.extend_from_slice(format!("--{b}").as_bytes());
        if i % 2 == 1 {
            body.extend_from_slice(b" \t"); // transport padding
        }
        body.extend_from_slice(
            format!("\r\nContent-Type: application/dicom;n={i}\r\n\r\n").as_bytes(),
        );
        body.extend_from_slice(p);
        body.extend_from_slice(b"\r\n");
    }
    expected_delims.push(body.len() + 1);
    body.extend_from_slice(format!("--{b}--\r\nepilogue").as_bytes());

    // Skip inputs whose content contains the delimiter (RFC 2046 forbids it).
    let mut virt = b"\r\n".to_vec();
    virt.extend_from_slice(&body);
    // A naive search, independent of multipart::find.
    let found: Vec<usize> = virt
        .windows(delim.len())
        .enumerate()
        .filter(|(_, w)| *w == &delim[..])
        .map(|(i, _)| i)
        .collect();
    if found != expected_delims {
        return;
    }

    let mut m = Multipart::new(
        Trickle {
            data: &body,
            step,
            interrupt,
            reads: 0,
        },
        &b,
    );
    for (i, p) in parts.iter().enumerate() {
        assert!(m.next_part().unwrap(), "part {i} missing");
        let ct = format!("application/dicom;n={i}");
        assert_eq!(m.part_content_type(), Some(ct.as_str()));
        let mut got = Vec::new();
        m.read_to_end(&mut got).unwrap();
        assert_eq!(&got[..], *p, "part {i}");
    }
    assert!(!m.next_part().unwrap(), "extra part");
}
