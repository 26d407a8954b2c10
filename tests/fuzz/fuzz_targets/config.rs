//! `config::from_texts` on two arbitrary texts, and `jsonc::to_strict`'s promises:
//! same byte length, same lines, and strict JSON text left untouched.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use model_proxy::parsers::{from_texts, is_uuid, line_col, to_strict};

fuzz_target!(|data: &[u8]| {
    // servers.json and models.json are split at the first 0x00 byte (or in the middle).
    let (s, m) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => data.split_at(data.len() / 2),
    };
    let servers = String::from_utf8_lossy(s);
    let models = String::from_utf8_lossy(m);

    for text in [&*servers, &*models] {
        let strict = to_strict(text);
        assert_eq!(strict.len(), text.len(), "length changed");
        let nl = |t: &str| t.bytes().filter(|&b| b == b'\n').count();
        assert_eq!(nl(&strict), nl(text), "line count changed");
        // Only bytes outside strings become spaces: every other byte is kept.
        for (a, b) in text.bytes().zip(strict.bytes()) {
            assert!(a == b || b == b' ', "{a:?} became {b:?}");
        }
        // Text that is already strict JSON is left alone (and still parses).
        if serde_json::from_str::<serde_json::Value>(text).is_ok() {
            assert_eq!(strict, text, "strict JSON was changed");
        }
        let (l, c) = line_col(text, text.len() / 2);
        assert!(l >= 1 && c >= 1);
    }

    match from_texts(Path::new("x"), &servers, &models) {
        Ok(cfg) => {
            // A valid config always has a default server, and lower-case UUID keys.
            let d = cfg
                .server(None)
                .expect("valid config without a default server");
            assert_eq!(d.id, cfg.default_server);
            for (k, v) in &cfg.servers {
                assert!(is_uuid(k) && *k == k.to_ascii_lowercase(), "{k:?}");
                assert_eq!(&v.id, k);
                assert!(v.uri.starts_with("http://") || v.uri.starts_with("https://"));
            }
            for (k, v) in &cfg.models {
                assert!(is_uuid(k) && *k == k.to_ascii_lowercase(), "{k:?}");
                assert_eq!(&v.id, k);
                assert!(!v.supports.is_empty());
            }
        }
        Err(problems) => {
            assert!(!problems.is_empty());
            for p in &problems {
                let _ = p.to_string();
            }
        }
    }
});
