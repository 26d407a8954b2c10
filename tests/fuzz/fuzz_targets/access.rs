//! Inbound access control's parsers on arbitrary input: the public key reader
//! (PEM, then SubjectPublicKeyInfo DER), the API key file (lines and JSON), a
//! verified token's claims, and the client-address header as the server
//! reads it. None may panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use model_proxy::parsers::{access_claims, client, parse_keys, parse_pem, rsa_spki};

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
});
