//! `payload::encode`: the SIMD encoder (when the CPU has SSSE3) and the scalar
//! one give the same bytes for any input, at any alignment, and both are the
//! JSON text of the input's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model_proxy::parsers::{encode_into, encode_scalar};

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the input starts, so every alignment is tried.
    let skew = data.first().map_or(0, |b| (*b as usize % 16).min(data.len()));
    let src = &data[skew..];
    let mut fast = vec![0u8; src.len() * 4];
    let mut slow = vec![0x55u8; src.len() * 4];
    let n = encode_into(src, &mut fast);
    let m = encode_scalar(src, &mut slow);
    assert_eq!(fast[..n], slow[..m]);
    let mut text = b"[0".to_vec();
    text.extend_from_slice(&fast[..n]);
    text.push(b']');
    let back: Vec<u8> = serde_json::from_slice(&text).expect("not a JSON array of bytes");
    assert_eq!(back[1..], *src);
});
