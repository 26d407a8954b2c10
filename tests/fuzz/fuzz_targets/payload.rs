//! `payload::encode_bytes`: the encoding is a JSON array of the input bytes,
//! and encoding in pieces gives the same text as encoding at once.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model_proxy::parsers::encode_bytes;

fuzz_target!(|data: &[u8]| {
    let mut out = b"[".to_vec();
    encode_bytes(data, true, &mut out);
    out.push(b']');
    let back: Vec<u8> = serde_json::from_slice(&out).expect("not a JSON array of bytes");
    assert_eq!(back, data);

    // Streamed in two pieces, split where the first byte says.
    if let Some(&s) = data.first() {
        let cut = s as usize % (data.len() + 1);
        let mut pieces = b"[".to_vec();
        encode_bytes(&data[..cut], true, &mut pieces);
        encode_bytes(&data[cut..], cut == 0, &mut pieces);
        pieces.push(b']');
        assert_eq!(pieces, out);
    }
});
