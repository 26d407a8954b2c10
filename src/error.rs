//! The one error type of the proxy: a closed set of codes, each with its HTTP status.

use std::fmt;
use std::io;

/// Which upstream an error came from, so the viewer (and the operator) can tell them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upstream {
    /// The DICOMweb server.
    Pacs,
    /// The model API.
    Model,
}

impl Upstream {
    /// The lower-case name used in messages.
    pub fn name(self) -> &'static str {
        match self {
            Upstream::Pacs => "pacs",
            Upstream::Model => "model",
        }
    }
}

macro_rules! codes {
    ($($variant:ident = $status:literal $text:literal,)*) => {
        /// Every error the proxy answers with: the stable, documented `code` of the JSON
        /// body. The HTTP status follows from the code, so the two cannot disagree.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum Code {
            $(
                #[doc = concat!("`", $text, "` (HTTP ", stringify!($status), ")")]
                $variant,
            )*
        }

        impl Code {
            /// Every code, in the README's order.
            pub const ALL: &'static [Code] = &[$(Code::$variant),*];

            /// The code as it appears in error bodies and logs.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Code::$variant => $text,)*
                }
            }

            /// The HTTP status answered with this code.
            pub fn status(self) -> u16 {
                match self {
                    $(Code::$variant => $status,)*
                }
            }
        }
    };
}

codes! {
    InvalidModelId = 400 "invalid_model_id",
    InvalidServerId = 400 "invalid_server_id",
    InvalidUid = 400 "invalid_uid",
    TaskMismatch = 400 "task_mismatch",
    UnsupportedLevel = 400 "unsupported_level",
    BodyRequired = 400 "body_required",
    UnexpectedBody = 400 "unexpected_body",
    InvalidBody = 400 "invalid_body",
    BadRequest = 400 "bad_request",
    Unauthorized = 401 "unauthorized",
    InvalidCredential = 401 "invalid_credential",
    Forbidden = 403 "forbidden",
    NotFound = 404 "not_found",
    UnknownModel = 404 "unknown_model",
    UnknownServer = 404 "unknown_server",
    PacsNotFound = 404 "pacs_not_found",
    MethodNotAllowed = 405 "method_not_allowed",
    BodyTimeout = 408 "body_timeout",
    HeaderTimeout = 408 "header_timeout",
    NotCached = 409 "not_cached",
    BodyTooLarge = 413 "body_too_large",
    UriTooLong = 414 "uri_too_long",
    CallerBusy = 429 "caller_busy",
    HeaderTooLarge = 431 "header_too_large",
    InternalError = 500 "internal_error",
    PacsUnreachable = 502 "pacs_unreachable",
    PacsError = 502 "pacs_error",
    PacsBadResponse = 502 "pacs_bad_response",
    PacsAuthFailed = 502 "pacs_auth_failed",
    ModelUnreachable = 502 "model_unreachable",
    ModelError = 502 "model_error",
    Overloaded = 503 "overloaded",
    ModelBusy = 503 "model_busy",
    ShuttingDown = 503 "shutting_down",
    NoWorkers = 503 "no_workers",
    PacsTimeout = 504 "pacs_timeout",
    ModelTimeout = 504 "model_timeout",
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failure to answer a request, with everything needed to answer it anyway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    /// Stable machine-readable code (documented in the README); decides the status.
    pub code: Code,
    /// Human message: what went wrong and, where it helps, what to do. Never a secret.
    pub message: String,
    /// The upstream's HTTP status, when an upstream answered with an error.
    pub upstream_status: Option<u16>,
    /// Extra response headers (e.g. `Allow`, `Retry-After`).
    pub headers: Vec<(&'static str, String)>,
}

impl ProxyError {
    /// An error with a code and a message.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        ProxyError {
            code,
            message: message.into(),
            upstream_status: None,
            headers: Vec::new(),
        }
    }

    /// The HTTP status sent to the client.
    pub fn status(&self) -> u16 {
        self.code.status()
    }

    /// 503: a request that comes in after SIGTERM. (Its connection is closed by
    /// the front, which does so for every answer while draining.)
    pub fn shutting_down() -> Self {
        Self::new(
            Code::ShuttingDown,
            "the proxy is shutting down; retry on another instance",
        )
        .with_header("Retry-After", "5")
    }

    /// 500: a bug or an environment problem of the proxy itself.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(Code::InternalError, message)
    }

    /// 502: an upstream answered with an HTTP error status.
    pub fn upstream_status(upstream: Upstream, status: u16, detail: &str) -> Self {
        let code = match upstream {
            Upstream::Pacs => Code::PacsError,
            Upstream::Model => Code::ModelError,
        };
        let mut msg = format!("the {} answered HTTP {status}", upstream.name());
        if !detail.is_empty() {
            msg.push_str(": ");
            msg.push_str(detail);
        }
        Self::new(code, msg).with_upstream_status(status)
    }

    /// 502 or 504: an upstream could not be reached, broke off, or timed out.
    pub fn upstream_transport(upstream: Upstream, timed_out: bool, detail: &str) -> Self {
        let code = match (upstream, timed_out) {
            (Upstream::Pacs, true) => Code::PacsTimeout,
            (Upstream::Pacs, false) => Code::PacsUnreachable,
            (Upstream::Model, true) => Code::ModelTimeout,
            (Upstream::Model, false) => Code::ModelUnreachable,
        };
        let what = if timed_out {
            "timed out"
        } else {
            "could not be reached or broke off"
        };
        Self::new(code, format!("the {} {what}: {detail}", upstream.name()))
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }

    /// Records the status an upstream answered with.
    pub fn with_upstream_status(mut self, status: u16) -> Self {
        self.upstream_status = Some(status);
        self
    }

    /// The body: an RFC 7807 Problem (`type`, `title`, `status`, `detail`) with
    /// the viewer's top-level `message` (the same text as `detail`), our stable
    /// `code`, and `upstream_status` when an upstream answered with an error.
    pub fn to_json(&self) -> String {
        let mut body = serde_json::json!({
            "type": "about:blank",
            "title": reason(self.status()),
            "status": self.status(),
            "detail": self.message,
            "message": self.message,
            "code": self.code.as_str(),
        });
        if let (Some(s), Some(obj)) = (self.upstream_status, body.as_object_mut()) {
            obj.insert("upstream_status".into(), s.into());
        }
        body.to_string()
    }

    /// Wraps the error in an `io::Error`, so it can travel through a `Read` (the
    /// payload's) and a client that only knows I/O errors (ureq) back to us.
    pub fn into_io(self) -> io::Error {
        io::Error::other(self)
    }

    /// The error an `io::Error` carries, when [`ProxyError::into_io`] made it.
    pub fn carried_by(err: &io::Error) -> Option<ProxyError> {
        err.get_ref()?.downcast_ref::<ProxyError>().cloned()
    }
}

/// The media type of an error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The HTTP reason phrase: a Problem's `title` when its `type` is `about:blank`.
pub fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        414 => "URI Too Long",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status(), self.code, self.message)
    }
}

impl std::error::Error for ProxyError {}

/// Classifies a ureq error against the upstream it came from; an error the
/// request body (our payload) raised is returned as it was raised.
pub fn from_ureq(upstream: Upstream, err: &ureq::Error) -> ProxyError {
    if let ureq::Error::Io(io) = err {
        if let Some(carried) = ProxyError::carried_by(io) {
            return carried;
        }
    }
    let timed_out = is_timeout_ureq(err);
    // ureq's messages carry no credentials: those travel in headers, never in our URLs.
    ProxyError::upstream_transport(upstream, timed_out, &err.to_string())
}

/// Classifies an I/O error met while reading an upstream body.
pub fn from_io(upstream: Upstream, err: &io::Error) -> ProxyError {
    if let Some(carried) = ProxyError::carried_by(err) {
        return carried;
    }
    let inner = err.get_ref().and_then(|e| e.downcast_ref::<ureq::Error>());
    let timed_out = err.kind() == io::ErrorKind::TimedOut
        || err.kind() == io::ErrorKind::WouldBlock
        || inner.is_some_and(is_timeout_ureq);
    ProxyError::upstream_transport(upstream, timed_out, &err.to_string())
}

fn is_timeout_ureq(err: &ureq::Error) -> bool {
    match err {
        ureq::Error::Timeout(_) => true,
        ureq::Error::Io(e) => {
            matches!(
                e.kind(),
                io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
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
        assert_eq!(v["code"], "model_error");
        assert_eq!(v["upstream_status"], 500);
        assert_eq!((v["status"].as_u64(), e.status()), (Some(502), 502));
        assert_eq!(v["title"], "Bad Gateway");
        assert_eq!(v["message"], v["detail"]);
        assert!(v["message"].as_str().unwrap().contains("boom"));
    }

    #[test]
    fn every_code_has_a_reason_phrase() {
        for c in Code::ALL {
            assert_ne!(reason(c.status()), "Error", "{c}");
        }
    }

    #[test]
    fn timeouts_are_504() {
        let e = ProxyError::upstream_transport(Upstream::Pacs, true, "x");
        assert_eq!((e.status(), e.code), (504, Code::PacsTimeout));
    }

    #[test]
    fn travels_through_io_and_ureq() {
        let e = ProxyError::new(Code::PacsNotFound, "series 1.2");
        let io = e.clone().into_io();
        assert_eq!(from_io(Upstream::Model, &io), e);
        let u = ureq::Error::from(e.clone().into_io());
        assert_eq!(from_ureq(Upstream::Model, &u), e);
    }

    /// The README's error table is the contract: it lists exactly these codes with these statuses.
    #[test]
    fn readme_table_matches_the_codes() {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n### Errors\n")
            .nth(1)
            .and_then(|s| s.split("\n### ").next())
            .expect("README has an Errors section");
        let documented: Vec<(u16, String)> = section
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                let status = cells.get(1)?.parse().ok()?;
                Some((status, cells.get(2)?.trim_matches('`').to_string()))
            })
            .collect();
        let ours: Vec<(u16, String)> = Code::ALL
            .iter()
            .map(|c| (c.status(), c.as_str().to_string()))
            .collect();
        assert_eq!(documented, ours);
    }
}
