//! What the proxy reads from a JWT it holds: its timing, without verifying it
//! (the PACS and the auth service verify; we only decide when to refresh).

/// Never send an access token with less than this left to live (seconds).
const MIN_REMAINING: u64 = 1;

/// The claims of a JWT, read WITHOUT verifying its signature: only for what the
/// proxy decides on its own side (when to refresh, which Origin to send). The
/// PACS and the auth service verify the tokens we send them.
fn unverified<T: serde::de::DeserializeOwned>(token: &str) -> Option<T> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    let mut v = jsonwebtoken::Validation::new(header.alg);
    v.insecure_disable_signature_validation();
    v.validate_exp = false;
    v.validate_aud = false;
    v.required_spec_claims.clear();
    let key = jsonwebtoken::DecodingKey::from_secret(&[]);
    jsonwebtoken::decode::<T>(token, &key, &v)
        .ok()
        .map(|d| d.claims)
}

/// `exp` and `iat` of a JWT, read without verifying it: used for timing only.
pub fn jwt_times(token: &str) -> (Option<u64>, Option<u64>) {
    #[derive(serde::Deserialize)]
    struct Times {
        exp: Option<u64>,
        iat: Option<u64>,
    }
    unverified::<Times>(token).map_or((None, None), |t| (t.exp, t.iat))
}

/// The `aud` claim of a JWT (the first, if a list), read without verifying it:
/// the zhiva auth service and the PACS accept such a token only from a request
/// whose `Origin` is that audience.
pub(super) fn audience(token: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Aud {
        One(String),
        Many(Vec<String>),
    }
    #[derive(serde::Deserialize)]
    struct Claims {
        aud: Option<Aud>,
    }
    match unverified::<Claims>(token)?.aud? {
        Aud::One(a) => Some(a),
        Aud::Many(list) => list.into_iter().next(),
    }
    .filter(|a| !a.is_empty())
}

/// An access token and its expiry (seconds since the epoch), read unverified from the JWT.
#[derive(Clone)]
pub(super) struct Access {
    pub(super) value: String,
    pub(super) exp: Option<u64>,
    iat: Option<u64>,
}

impl Access {
    /// Reads the timing of `value`.
    pub(super) fn new(value: String) -> Access {
        let (exp, iat) = jwt_times(&value);
        Access { value, exp, iat }
    }

    /// Still worth sending at `now`.
    pub(super) fn usable(&self, now: u64) -> bool {
        self.exp.is_none_or(|exp| now + MIN_REMAINING < exp)
    }

    /// Time to refresh ahead of expiry: a third of the lifetime before it, at most five minutes.
    pub(super) fn due(&self, now: u64) -> bool {
        match self.exp {
            None => false,
            Some(exp) => {
                let life = self.iat.map_or(86_400, |iat| exp.saturating_sub(iat));
                let margin = (life / 3).clamp(1, 300);
                now + margin >= exp
            }
        }
    }

    /// Not expired at `now` (for the status page).
    pub(super) fn alive(&self, now: u64) -> bool {
        self.exp.is_none_or(|exp| now < exp)
    }
}

/// Strips a case-insensitive `Bearer ` prefix.
pub(super) fn bearer_value(header: &str) -> &str {
    let h = header.trim();
    match h.get(..7) {
        Some(p) if p.eq_ignore_ascii_case("bearer ") => h[7..].trim(),
        _ => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_times_unverified() {
        // {"alg":"HS256","typ":"JWT"} . {"exp":2000000000,"iat":1999999000} . (any signature)
        let t = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjIwMDAwMDAwMDAsImlhdCI6MTk5OTk5OTAwMH0.c2ln";
        assert_eq!(jwt_times(t), (Some(2_000_000_000), Some(1_999_999_000)));
        assert_eq!(jwt_times("not a jwt"), (None, None));
        assert_eq!(jwt_times(""), (None, None));
    }

    #[test]
    fn audiences() {
        // {"alg":"HS256"} . {"aud":"https://viewer.example"} . sig
        let one = "eyJhbGciOiJIUzI1NiJ9.eyJhdWQiOiJodHRwczovL3ZpZXdlci5leGFtcGxlIn0.c2ln";
        assert_eq!(audience(one).as_deref(), Some("https://viewer.example"));
        // {"alg":"HS256"} . {"aud":["https://a","https://b"]} . sig
        let many = "eyJhbGciOiJIUzI1NiJ9.eyJhdWQiOlsiaHR0cHM6Ly9hIiwiaHR0cHM6Ly9iIl19.c2ln";
        assert_eq!(audience(many).as_deref(), Some("https://a"));
        let none = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJleHAiOjIwMDAwMDAwMDAsImlhdCI6MTk5OTk5OTAwMH0.c2ln";
        assert_eq!(audience(none), None);
        assert_eq!(audience("junk"), None);
    }

    #[test]
    fn refresh_timing() {
        let a = Access {
            value: String::new(),
            exp: Some(1000),
            iat: Some(997),
        };
        assert!(!a.due(990) && a.due(999));
        assert!(a.usable(998) && !a.usable(999));
        let day = Access {
            value: String::new(),
            exp: Some(86_400),
            iat: Some(0),
        };
        assert!(!day.due(86_000) && day.due(86_100));
    }

    #[test]
    fn bearer_prefix() {
        assert_eq!(bearer_value("Bearer abc"), "abc");
        assert_eq!(bearer_value("bearer  abc "), "abc");
        assert_eq!(bearer_value("abc"), "abc");
    }
}
