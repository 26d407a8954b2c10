//! Answers: every handler returns a [`Reply`]; [`send`] writes it with the CORS
//! headers, then logs the access line and counts it. Nothing else answers a client.

use std::io::{Cursor, Read};
use std::time::Instant;

use serde_json::Value;
use tiny_http::{Header, Request, Response, StatusCode};

use crate::access::{Outcome, Record, Turn};
use crate::error::{ProxyError, PROBLEM_JSON};
use crate::inference::Stats;
use crate::routing::Label;
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
    let mut headers = app.cors.headers(header(&rq, "Origin").as_deref());
    let cache = reply
        .headers
        .iter()
        .find(|(k, _)| *k == "X-Cache")
        .map(|(_, v)| v.clone());
    headers.extend(reply.headers);
    let (method, url) = (rq.method().to_string(), rq.url().to_string());
    let (body, length): (Box<dyn Read + Send>, Option<usize>) = match reply.body {
        Body::Full(b) => {
            let n = b.len();
            (Box::new(Cursor::new(b)), Some(n))
        }
        Body::Stream(r, n) => (r, n),
    };
    let mut body = Counting { inner: body, n: 0 };
    let headers: Vec<Header> = headers
        .into_iter()
        .filter_map(|(k, v)| Header::from_bytes(k.as_bytes(), v.as_bytes()).ok())
        .collect();
    let written = rq.respond(Response::new(
        StatusCode(reply.status),
        headers,
        &mut body,
        length,
        None,
    ));
    let mut line = format!(
        "{method} {} {} {}ms {}B",
        log_path(&url),
        reply.status,
        arrival.started.elapsed().as_millis(),
        body.n
    );
    if let Some(s) = &reply.stats {
        line.push_str(&format!(
            " instances={} dicom_bytes={} pacs_ms={} model_ms={}",
            s.instances, s.dicom_bytes, s.pacs_ms, s.model_ms
        ));
    }
    if let Some(c) = &cache {
        line.push_str(&format!(" cache={c}"));
    }
    if let Some(e) = &reply.error {
        line.push_str(&format!(" error={}", e.code));
    }
    log::info!("{line}");
    if let Some(r) = &arrival.audit {
        let code = reply.error.as_ref().map_or("ok", |e| e.code.as_str());
        let outcome = Outcome {
            status: reply.status,
            code,
            duration_ms: arrival.started.elapsed().as_millis(),
            instances: reply.stats.as_ref().map(|s| s.instances),
        };
        app.access.audit(r, &outcome);
    }
    count(app, &arrival.label, reply.status);
    if reply.stats.is_some() || cache.as_deref() == Some("hit") {
        app.metrics.bytes("response_to_client", body.n);
        if let Err(e) = written {
            log::warn!("relaying the answer for {} failed: {e}", log_path(&url));
        }
    }
    if let Some(e) = reply.error.filter(|e| e.status() >= 500) {
        log::warn!("{} {}: {}", log_path(&url), e.code, e.message);
    }
}

/// Counts a request that could not be answered (its client is gone or stalled).
pub fn count(app: &App, label: &Label, status: u16) {
    app.metrics.request(label.route, status, &label.model);
}

/// Counts what a relayed body has passed on.
struct Counting<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        Ok(n)
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
