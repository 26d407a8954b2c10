//! `auth::jwt_times` on arbitrary tokens never panics; on a well-formed token
//! built from the input it returns the `exp` and `iat` it was given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model_proxy::parsers::jwt_times;

fn b64url(data: &[u8]) -> String {
    model_proxy::parsers::base64(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

const ALGS: &[&str] = &[
    "HS256", "HS384", "RS256", "RS512", "ES256", "PS256", "EdDSA", "none",
];

fuzz_target!(|data: &[u8]| {
    // Raw: the input as a token.
    let _ = jwt_times(&String::from_utf8_lossy(data));

    // Built: header and claims from the input, so decoding reaches the claims.
    if data.len() < 17 {
        return;
    }
    let alg = ALGS[data[0] as usize % ALGS.len()];
    let exp = u64::from_le_bytes(data[1..9].try_into().unwrap());
    let iat = u64::from_le_bytes(data[9..17].try_into().unwrap());
    let extra = String::from_utf8_lossy(&data[17..]);
    let header = format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#);
    // Arbitrary claim text: whatever it is, it must not make jwt_times panic.
    let wild = format!(
        "{}.{}.c2ln",
        b64url(header.as_bytes()),
        b64url(extra.as_bytes())
    );
    let _ = jwt_times(&wild);
    // Known claims, with an arbitrary string claim beside them.
    let claims = serde_json::json!({"exp": exp, "iat": iat, "name": extra, "iss": "fuzz"});
    let token = format!(
        "{}.{}.{}",
        b64url(header.as_bytes()),
        b64url(claims.to_string().as_bytes()),
        b64url(&data[..17])
    );
    if alg != "none" {
        assert_eq!(jwt_times(&token), (Some(exp), Some(iat)), "{token}");
    } else {
        let _ = jwt_times(&token);
    }
});
