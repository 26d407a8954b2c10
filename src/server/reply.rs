//! Answers: every handler returns a [`Reply`]; [`send`] writes it with the CORS
//! headers, then logs the access line and counts it. Nothing else answers a client.

use std::io::{Cursor, Read};
use std::time::Instant;

use serde_json::Value;
use tiny_http::{HTTPVersion, Header, Request, Response, StatusCode};

use crate::access::{Outcome, Record, Turn};
use crate::error::{self, ProxyError, Upstream, PROBLEM_JSON};
use crate::front::{Seen, Shared, RELAY_HEADER};
use crate::inference::Stats;
use crate::routing::{self, Label};
use crate::state::App;

/// A response body.
pub enum Body {
    /// Small and complete.
    Full(Vec<u8>),
    /// The model's answer, still on the wire, with its length when it gave one.
    Stream(Box<dyn Read + Send>, Option<usize>),
}

/// What a handler answers.
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Headers besides CORS.
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Body,
    /// The error answered, for the access log.
    pub error: Option<ProxyError>,
    /// The inference's numbers, for the access log.
    pub stats: Option<Stats>,
}

impl Reply {
    /// A page of the proxy's own, never cached.
    pub fn page(status: u16, content_type: &str, body: String) -> Reply {
        Reply {
            status,
            headers: vec![
                ("Content-Type", content_type.to_string()),
                ("Cache-Control", "no-store".into()),
            ],
            body: Body::Full(body.into_bytes()),
            error: None,
            stats: None,
        }
    }

    /// A JSON page of the proxy's own.
    pub fn json(status: u16, value: &Value) -> Reply {
        Reply::page(status, "application/json", value.to_string())
    }

    /// No body, with these headers.
    pub fn empty(status: u16, headers: Vec<(&'static str, String)>) -> Reply {
        Reply {
            status,
            headers,
            body: Body::Full(Vec::new()),
            error: None,
            stats: None,
        }
    }

    /// The JSON error, with its status and headers.
    pub fn error(e: &ProxyError) -> Reply {
        let mut headers = vec![("Content-Type", PROBLEM_JSON.to_string())];
        headers.extend(e.headers.iter().cloned());
        Reply {
            status: e.status(),
            headers,
            body: Body::Full(e.to_json().into_bytes()),
            error: Some(e.clone()),
            stats: None,
        }
    }

    /// An answer relayed as it arrives (the model's, or a cached one), with its
    /// status, content type and length when known.
    pub fn stream(
        status: u16,
        content_type: Option<String>,
        length: Option<usize>,
        body: Box<dyn Read + Send>,
        stats: Option<Stats>,
    ) -> Reply {
        Reply {
            status,
            headers: content_type
                .map(|ct| vec![("Content-Type", ct)])
                .unwrap_or_default(),
            body: Body::Stream(body, length),
            error: None,
            stats,
        }
    }
}

/// How a request came in: when, and what it is counted under.
pub struct Arrival {
    /// When the dispatcher received it.
    pub started: Instant,
    /// Its metric label.
    pub label: Label,
    /// An inference's audit record, finished when it is answered.
    pub audit: Option<Record>,
    /// The caller's turn (`--caller-concurrency`), held until the request is
    /// answered: it travels with the request through the pool and the cache.
    pub turn: Option<Turn>,
}

/// Writes `reply` to the client, then logs and counts it.
pub fn send(app: &App, rq: Request, reply: Reply, arrival: &Arrival) {
    let cache = reply
        .headers
        .iter()
        .find(|(k, _)| *k == "X-Cache")
        .map(|(_, v)| v.clone());
    let headers = tiny_headers(app, header(&rq, "Origin").as_deref(), reply.headers);
    let (method, url) = (rq.method().to_string(), rq.url().to_string());
    let relay = header(&rq, RELAY_HEADER).and_then(|v| v.parse().ok());
    let (body, length): (Box<dyn Read + Send>, Option<usize>) = match reply.body {
        Body::Full(b) => {
            let n = b.len();
            (Box::new(Cursor::new(b)), Some(n))
        }
        Body::Stream(r, n) => (r, n),
    };
    let mut body = Counting {
        inner: body,
        n: 0,
        failed: None,
        on_failure: relay.map(|id| (app.front.as_ref(), id)),
    };
    let written = rq.respond(Response::new(
        StatusCode(reply.status),
        headers,
        &mut body,
        length,
        None,
    ));
    // A model answer that broke off mid-body is what the viewer got, whatever the status sent.
    let broke_off = body.failed.take();
    let (status, error) = match &broke_off {
        Some(e) => (None, Some(error::from_io(Upstream::Model, e))),
        None => (Some(reply.status), reply.error),
    };
    let status = status.unwrap_or_else(|| error.as_ref().map_or(502, ProxyError::status));
    let mut line = access_line(&method, &url, status, arrival.started, body.n);
    if let Some(s) = &reply.stats {
        line.push_str(&format!(
            " instances={} dicom_bytes={} pacs_ms={} model_ms={}",
            s.instances, s.dicom_bytes, s.pacs_ms, s.model_ms
        ));
    }
    if let Some(c) = &cache {
        line.push_str(&format!(" cache={c}"));
    }
    if let Some(e) = &error {
        line.push_str(&format!(" error={}", e.code));
    }
    log::info!("{line}");
    if let Some(r) = &arrival.audit {
        let code = error.as_ref().map_or("ok", |e| e.code.as_str());
        let outcome = Outcome {
            status,
            code,
            duration_ms: arrival.started.elapsed().as_millis(),
            instances: reply.stats.as_ref().map(|s| s.instances),
        };
        app.access.audit(r, &outcome);
    }
    count(app, &arrival.label, status);
    if reply.stats.is_some() || cache.as_deref() == Some("hit") {
        app.metrics.bytes("response_to_client", body.n);
        if let (Err(e), None) = (written, broke_off) {
            log::warn!(
                "the client did not take the answer for {}: {e}",
                log_path(&url)
            );
        }
    }
    if let Some(e) = error.filter(|e| e.status() >= 500) {
        log::warn!("{} {}: {}", log_path(&url), e.code, e.message);
    }
}

/// The bytes of the answer to a request the front refuses before tiny_http
/// sees it (malformed, oversized, too slow, or framed two ways), with CORS and
/// `Connection: close`; logged and counted like every other answer.
pub fn refusal(app: &App, e: &ProxyError, seen: &Seen) -> Vec<u8> {
    let mut reply = Reply::error(e);
    reply.headers.push(("Connection", "close".into()));
    let headers = tiny_headers(app, seen.origin.as_deref(), reply.headers);
    let body = e.to_json().into_bytes();
    let n = body.len();
    let response = Response::new(
        StatusCode(e.status()),
        headers,
        Cursor::new(body),
        Some(n),
        None,
    );
    let mut out = Vec::with_capacity(n + 512);
    let head_only = seen.method == "HEAD";
    if let Err(err) = response.raw_print(&mut out, HTTPVersion(1, 1), &[], head_only, None) {
        log::error!("cannot build an error answer: {err}");
    }
    let sent = if head_only { 0 } else { n as u64 };
    let line = access_line(&seen.method, &seen.target, e.status(), seen.started, sent);
    log::info!("{line} error={}", e.code);
    count(
        app,
        &routing::route(&seen.method, &seen.target).label,
        e.status(),
    );
    out
}

/// CORS for `origin`, then `extra`, as tiny_http headers.
fn tiny_headers(
    app: &App,
    origin: Option<&str>,
    extra: Vec<(&'static str, String)>,
) -> Vec<Header> {
    let mut headers = app.cors.headers(origin);
    headers.extend(extra);
    headers
        .into_iter()
        .filter_map(|(k, v)| Header::from_bytes(k.as_bytes(), v.as_bytes()).ok())
        .collect()
}

/// The start of an access-log line: method, path, status, time, bytes.
fn access_line(method: &str, url: &str, status: u16, started: Instant, bytes: u64) -> String {
    format!(
        "{method} {} {status} {}ms {bytes}B",
        log_path(url),
        started.elapsed().as_millis(),
    )
}

/// Counts a request that could not be answered (its client is gone or stalled).
/// A model the config does not know is counted as `unknown`, so URLs cannot grow the metrics.
pub fn count(app: &App, label: &Label, status: u16) {
    let known = label.model.is_empty() || app.config().models.contains_key(&label.model);
    let model = if known {
        label.model.as_str()
    } else {
        "unknown"
    };
    app.metrics.request(label.route, status, model);
}

/// Counts what a relayed body has passed on, and keeps the error that broke it off.
struct Counting<'a, R> {
    inner: R,
    n: u64,
    failed: Option<std::io::Error>,
    /// Where to mark the exchange broken, before tiny_http ends the body as if it were whole.
    on_failure: Option<(&'a Shared, u64)>,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.n += n as u64;
                Ok(n)
            }
            Err(e) => {
                if let Some((shared, id)) = self.on_failure {
                    shared.break_off(id);
                }
                let kind = e.kind();
                let message = e.to_string();
                self.failed = Some(e);
                Err(std::io::Error::new(kind, message))
            }
        }
    }
}

/// The request target as logged: bounded, and without anything that is not printable.
pub fn log_path(url: &str) -> String {
    url.chars()
        .take(300)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// The value of request header `name`, if present.
pub fn header(rq: &Request, name: &'static str) -> Option<String> {
    rq.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_string())
}
