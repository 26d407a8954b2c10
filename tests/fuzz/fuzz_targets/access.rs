//! Inbound access control's parsers on arbitrary input: the public key reader
//! (PEM, then SubjectPublicKeyInfo DER), the API key file (lines and JSON), a
//! verified token's claims, and the client-address stamper. None may panic; the
//! stamper must pass every byte on, framing requests the way tiny_http does.
#![no_main]

use std::io::Write;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use model_proxy::parsers::{access_claims, client, parse_keys, parse_pem, rsa_spki, Stamp};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let f = Path::new("fuzz.pem");

    // Keys: PEM text as given, the bytes as DER, and the bytes wrapped as a PEM block.
    let _ = parse_pem(data, f);
    if let Ok((n, e)) = rsa_spki(data) {
        assert!(n.len() <= data.len() && e.len() <= data.len());
    }
    let pem = format!(
        "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
        model_proxy::parsers::base64(data)
    );
    let _ = parse_pem(pem.as_bytes(), f);

    // The API key file: whatever it holds, a result; problems are never empty.
    if let Err(problems) = parse_keys(Path::new("api-keys"), &text) {
        assert!(!problems.is_empty());
    }

    // Claims of a token whose signature checked out: any JSON object.
    if let Ok(serde_json::Value::Object(claims)) = serde_json::from_slice(data) {
        if let Ok(t) = access_claims(&claims) {
            assert!(t.caller.chars().count() <= 128);
        }
    }

    // The stamp header as the server reads it.
    let _ = client(&text);

    // The stamper, fed in uneven pieces, passes every byte on in order, holding back
    // only an unfinished head, and adds only whole stamp lines (when the client sent
    // none of its own, which it drops).
    let mut s = Stamp::new(
        Vec::new(),
        "10.0.0.1:1".parse().map_err(std::io::Error::other),
    );
    let mut at = 0;
    for (i, &b) in data.iter().enumerate() {
        if b % 7 == 0 || i + 1 == data.len() {
            s.write_all(&data[at..=i]).unwrap();
            at = i + 1;
        }
    }
    s.flush().unwrap();
    let out = s.into_inner();
    let name = b"x-model-proxy-client";
    if !data
        .to_ascii_lowercase()
        .windows(name.len())
        .any(|w| w == name)
    {
        // Held back is only an unfinished head (no empty line yet).
        let passed = without_stamps(&out);
        assert!(data.starts_with(&passed), "bytes changed or reordered");
        let held = &data[passed.len()..];
        assert!(
            !held.windows(4).any(|w| w == b"\r\n\r\n"),
            "a complete head was held back"
        );
    }
});

/// `out` with every `X-Model-Proxy-Client: ...\r\n` line cut out.
fn without_stamps(out: &[u8]) -> Vec<u8> {
    let tag = b"X-Model-Proxy-Client: ";
    let mut kept = Vec::with_capacity(out.len());
    let mut i = 0;
    while i < out.len() {
        if out[i..].starts_with(tag) {
            let end = out[i..]
                .windows(2)
                .position(|w| w == b"\r\n")
                .map_or(out.len(), |p| i + p + 2);
            i = end;
        } else {
            kept.push(out[i]);
            i += 1;
        }
    }
    kept
}
