//! `payload::encode`: every SIMD encoder the CPU has (AVX2, SSSE3) and the
//! scalar one give the same bytes for any input, at any alignment, and that is
//! the JSON text of the input's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model_proxy::parsers::{encode_at, encode_into, encode_scalar, LEVELS};

fuzz_target!(|data: &[u8]| {
    // The first byte picks where the input starts, so every alignment is tried.
    let skew = data.first().map_or(0, |b| (*b as usize % 32).min(data.len()));
    let src = &data[skew..];
    let mut slow = vec![0x55u8; src.len() * 4];
    let m = encode_scalar(src, &mut slow);
    for level in LEVELS {
        let mut fast = vec![0u8; src.len() * 4];
        if let Some(n) = encode_at(Some(level), src, &mut fast) {
            assert_eq!(fast[..n], slow[..m], "{level:?}");
        }
    }
    let mut best = vec![0u8; src.len() * 4];
    let n = encode_into(src, &mut best);
    assert_eq!(best[..n], slow[..m]);
    let mut text = b"[0".to_vec();
    text.extend_from_slice(&slow[..m]);
    text.push(b']');
    let back: Vec<u8> = serde_json::from_slice(&text).expect("not a JSON array of bytes");
    assert_eq!(back[1..], *src);
});
