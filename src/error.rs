//! The one error type of the proxy: every failure knows its HTTP status and a stable code.

use std::fmt;

/// Which upstream an error came from, so the viewer (and the operator) can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The DICOMweb server.
    Pacs,
    /// The model API.
    Model,
}

impl Upstream {
    /// The lower-case name used in codes and messages.
    pub fn name(self) -> &'static str {
        match self {
            Upstream::Pacs => "pacs",
            Upstream::Model => "model",
        }
    }
}

/// A failure to answer a request, with everything needed to answer it anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    /// HTTP status sent to the client.
    pub status: u16,
    /// Stable machine-readable code (documented in the README).
    pub code: &'static str,
    /// Human message: what went wrong and, where it helps, what to do. Never a secret.
    pub message: String,
    /// The upstream's HTTP status, when an upstream answered with an error.
    pub upstream_status: Option<u16>,
    /// Extra response headers (e.g. `Allow`, `Retry-After`).
    pub headers: Vec<(&'static str, String)>,
}

impl ProxyError {
    /// An error with a status, a code and a message.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        ProxyError {
            status,
            code,
            message: message.into(),
            upstream_status: None,
            headers: Vec::new(),
        }
    }

    /// 400: the request is malformed.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }

    /// 404: something named by the request does not exist.
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(404, code, message)
    }

    /// 500: a bug or an environment problem of the proxy itself.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internal_error", message)
    }

    /// 502: an upstream answered with an HTTP error status.
    pub fn upstream_status(upstream: Upstream, status: u16, detail: &str) -> Self {
        let code = match upstream {
            Upstream::Pacs => "pacs_error",
            Upstream::Model => "model_error",
        };
        let mut msg = format!("the {} answered HTTP {status}", upstream.name());
        if !detail.is_empty() {
            msg.push_str(": ");
            msg.push_str(detail);
        }
        let mut e = Self::new(502, code, msg);
        e.upstream_status = Some(status);
        e
    }

    /// 502 or 504: an upstream could not be reached, broke off, or timed out.
    pub fn upstream_transport(upstream: Upstream, timed_out: bool, detail: &str) -> Self {
        let (status, code) = match (upstream, timed_out) {
            (Upstream::Pacs, true) => (504, "pacs_timeout"),
            (Upstream::Pacs, false) => (502, "pacs_unreachable"),
            (Upstream::Model, true) => (504, "model_timeout"),
            (Upstream::Model, false) => (502, "model_unreachable"),
        };
        let what = if timed_out {
            "timed out"
        } else {
            "could not be reached or broke off"
        };
        Self::new(
            status,
            code,
            format!("the {} {what}: {detail}", upstream.name()),
        )
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// The JSON body: `{"error": {"code": ..., "message": ...}}`.
    pub fn to_json(&self) -> String {
        let mut inner = serde_json::Map::new();
        inner.insert("code".into(), self.code.into());
        inner.insert("message".into(), self.message.clone().into());
        if let Some(s) = self.upstream_status {
            inner.insert("upstream_status".into(), s.into());
        }
        serde_json::json!({ "error": inner }).to_string()
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for ProxyError {}

/// Classifies a ureq error against the upstream it came from.
pub fn from_ureq(upstream: Upstream, err: &ureq::Error) -> ProxyError {
    let timed_out = is_timeout_ureq(err);
    // ureq's messages carry no credentials: those travel in headers, never in our URLs.
    ProxyError::upstream_transport(upstream, timed_out, &err.to_string())
}

/// Classifies an I/O error met while reading an upstream body.
pub fn from_io(upstream: Upstream, err: &std::io::Error) -> ProxyError {
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<ureq::Error>());
    let timed_out = err.kind() == std::io::ErrorKind::TimedOut
        || err.kind() == std::io::ErrorKind::WouldBlock
        || inner.is_some_and(is_timeout_ureq);
    ProxyError::upstream_transport(upstream, timed_out, &err.to_string())
}

fn is_timeout_ureq(err: &ureq::Error) -> bool {
    match err {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(e) => {
            matches!(
                e.kind(),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock
            )
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_shape() {
        let e = ProxyError::upstream_status(Upstream::Model, 500, "boom");
        let v: serde_json::Value = serde_json::from_str(&e.to_json()).unwrap();
        assert_eq!(v["error"]["code"], "model_error");
        assert_eq!(v["error"]["upstream_status"], 500);
        assert_eq!(e.status, 502);
    }

    #[test]
    fn timeouts_are_504() {
        let e = ProxyError::upstream_transport(Upstream::Pacs, true, "x");
        assert_eq!((e.status, e.code), (504, "pacs_timeout"));
    }
}
