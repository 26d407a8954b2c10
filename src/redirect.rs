//! Redirects, followed the way a browser client follows them: a relative
//! `Location` is resolved against the URL that answered, at most [`MAX_HOPS`]
//! hops, and credentials go only where the origin (scheme, host, port) is the one
//! they were configured for.

/// Most redirects followed for one request.
pub const MAX_HOPS: usize = 5;

/// True for the statuses that carry a `Location` to follow.
pub fn is_redirect(status: u16) -> bool {
    matches!(status, 301 | 302 | 303 | 307 | 308)
}

/// `location` resolved against `base` (RFC 3986 section 5.2, without dot-segment
/// removal beyond what a server needs); `None` when it is not http(s).
pub fn resolve(base: &str, location: &str) -> Option<String> {
    let location = location.trim();
    if location.is_empty() || location.chars().any(char::is_control) {
        return None;
    }
    let lower = location.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Some(location.to_string());
    }
    if has_scheme(&lower) {
        // Another scheme (`ftp:`, `javascript:`): not followed.
        return None;
    }
    let (scheme, rest) = base.split_once("://")?;
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let origin = format!("{scheme}://{}", &rest[..authority_end]);
    if let Some(net) = location.strip_prefix("//") {
        return Some(format!("{scheme}://{net}"));
    }
    if location.starts_with('/') {
        return Some(format!("{origin}{}", normalize(location)));
    }
    let path = rest[authority_end..].split(['?', '#']).next().unwrap_or("");
    if let Some(q) = location.strip_prefix('?') {
        return Some(format!("{origin}{path}?{q}"));
    }
    let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
    let dir = if dir.is_empty() { "/" } else { dir };
    Some(format!(
        "{origin}{}",
        normalize(&format!("{dir}{location}"))
    ))
}

/// RFC 3986 `scheme ":"` at the start.
fn has_scheme(s: &str) -> bool {
    match s.find(':') {
        Some(i) => {
            let scheme = &s[..i];
            scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        }
        None => false,
    }
}

/// Removes `.` and `..` segments from an absolute path (its query kept as is).
fn normalize(path: &str) -> String {
    let (p, query) = match path.find(['?', '#']) {
        Some(i) => (&path[..i], &path[i..]),
        None => (path, ""),
    };
    let mut out: Vec<&str> = Vec::new();
    let segs: Vec<&str> = p.split('/').skip(1).collect();
    for (i, s) in segs.iter().enumerate() {
        let last = i + 1 == segs.len();
        match *s {
            "." => {
                if last {
                    out.push("");
                }
            }
            ".." => {
                out.pop();
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    format!("/{}{query}", out.join("/"))
}

/// Scheme, host and port of an http(s) URL, lower case, the port made explicit.
fn origin(url: &str) -> Option<(String, String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let default = match scheme.as_str() {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    // A bracketed IPv6 host holds colons of its own.
    let split_at = match authority.rfind(']') {
        Some(close) => authority[close..].find(':').map(|i| close + i),
        None => authority.rfind(':'),
    };
    let (host, port) = match split_at {
        Some(i) if i + 1 == authority.len() => (&authority[..i], default),
        Some(i) => (&authority[..i], authority[i + 1..].parse().ok()?),
        None => (authority, default),
    };
    Some((scheme, host.to_ascii_lowercase(), port))
}

/// Same scheme, host and port: where credentials may follow a redirect.
pub fn same_origin(a: &str, b: &str) -> bool {
    matches!((origin(a), origin(b)), (Some(x), Some(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_a_browser() {
        let base = "http://pacs:8042/dicom-web/studies/1.2/series/1.3?x=1";
        for (loc, want) in [
            ("https://other/a", "https://other/a"),
            ("//mirror:81/b", "http://mirror:81/b"),
            ("/root/studies/1.2", "http://pacs:8042/root/studies/1.2"),
            ("1.4", "http://pacs:8042/dicom-web/studies/1.2/series/1.4"),
            (
                "../../1.5/series/1.6",
                "http://pacs:8042/dicom-web/studies/1.5/series/1.6",
            ),
            ("./x/", "http://pacs:8042/dicom-web/studies/1.2/series/x/"),
            (
                "?y=2",
                "http://pacs:8042/dicom-web/studies/1.2/series/1.3?y=2",
            ),
            ("/a/../../b?q=..", "http://pacs:8042/b?q=.."),
        ] {
            assert_eq!(resolve(base, loc).as_deref(), Some(want), "{loc}");
        }
        assert_eq!(resolve(base, "javascript:alert(1)"), None);
        assert_eq!(resolve(base, ""), None);
        assert_eq!(resolve(base, "/a\r\nX: y"), None);
    }

    #[test]
    fn origins() {
        assert!(same_origin("http://Pacs/a", "http://pacs:80/b"));
        assert!(same_origin("https://u:p@h:443/", "https://h/x"));
        assert!(!same_origin("http://h/a", "https://h/a"));
        assert!(!same_origin("http://h:8042/a", "http://h:8043/a"));
        assert!(!same_origin("http://h/a", "http://h.evil/a"));
        assert!(same_origin("http://[::1]:80/a", "http://[::1]/b"));
        assert!(!same_origin("ftp://h/a", "ftp://h/a"));
    }
}
