//! CORS: the viewer runs on another origin, so every response says which origins may read it.

/// Allowed origin patterns, `*` matching any run of characters (`https://*.zhiva.ai`).
#[derive(Debug, Clone)]
pub struct Cors {
    patterns: Vec<String>,
}

impl Cors {
    /// From the configured patterns.
    pub fn new(patterns: &[String]) -> Self {
        Cors {
            patterns: patterns.iter().map(|p| p.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether `origin` may read responses.
    pub fn allows(&self, origin: &str) -> bool {
        let o = origin.to_ascii_lowercase();
        self.patterns
            .iter()
            .any(|p| wildcard(p.as_bytes(), o.as_bytes()))
    }

    /// Headers for a response to a request from `origin` (always `Vary: Origin`).
    pub fn headers(&self, origin: Option<&str>) -> Vec<(&'static str, String)> {
        let mut h = vec![("Vary", "Origin".to_string())];
        if let Some(o) = origin.filter(|o| self.allows(o)) {
            h.push(("Access-Control-Allow-Origin", o.to_string()));
            h.push((
                "Access-Control-Expose-Headers",
                "Content-Type, Content-Length, Retry-After, WWW-Authenticate, X-Cache, Age".into(),
            ));
        }
        h
    }

    /// The headers an OPTIONS preflight adds to [`Cors::headers`].
    pub fn preflight_headers(
        &self,
        origin: Option<&str>,
        requested: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        let mut h = Vec::new();
        if origin.is_some_and(|o| self.allows(o)) {
            h.push((
                "Access-Control-Allow-Methods",
                "GET, POST, PUT, DELETE, OPTIONS".into(),
            ));
            let allowed = requested
                .filter(|r| {
                    r.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b" ,-_".contains(&b))
                })
                .unwrap_or("Content-Type, Authorization, api_key");
            h.push(("Access-Control-Allow-Headers", allowed.to_string()));
            h.push(("Access-Control-Max-Age", "600".into()));
        }
        h
    }
}

/// Glob match with `*` only, iterative so that no pattern can blow the stack.
fn wildcard(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if pi < p.len() && p[pi] == s[si] {
            pi += 1;
            si += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        let c = Cors::new(&["https://*.zhiva.ai".into(), "http://localhost:3000".into()]);
        assert!(c.allows("https://app.zhiva.ai"));
        assert!(c.allows("https://a.b.zhiva.ai"));
        assert!(!c.allows("https://zhiva.ai.evil.com"));
        assert!(!c.allows("http://app.zhiva.ai"));
        assert!(c.allows("http://localhost:3000"));
        assert!(Cors::new(&["*".into()]).allows("null"));
        assert_eq!(c.headers(Some("https://evil.com")).len(), 1);
    }

    /// A viewer sending a zhiva token or an API key gets through the preflight
    /// and can read the challenge of a 401.
    #[test]
    fn credential_headers_pass_the_preflight() {
        let c = Cors::new(&["https://*.zhiva.ai".into()]);
        let o = Some("https://app.zhiva.ai");
        let allowed = |requested| {
            c.preflight_headers(o, requested)
                .into_iter()
                .find(|(k, _)| *k == "Access-Control-Allow-Headers")
                .map(|(_, v)| v)
        };
        assert_eq!(
            allowed(Some("authorization,api_key")).as_deref(),
            Some("authorization,api_key")
        );
        assert_eq!(
            allowed(None).as_deref(),
            Some("Content-Type, Authorization, api_key")
        );
        let exposed = c.headers(o);
        assert!(exposed
            .iter()
            .any(|(k, v)| *k == "Access-Control-Expose-Headers" && v.contains("WWW-Authenticate")));
    }
}
