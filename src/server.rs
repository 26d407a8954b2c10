//! The server loop: a dispatcher thread that answers cheap routes itself and hands
//! inferences to a fixed pool of workers through a bounded queue.
//!
//! Health, readiness, the status page and CORS preflights never wait for a
//! worker, so they answer even while every worker is busy with a long inference.

use std::io::{Cursor, Read};
use std::net::TcpListener;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use tiny_http::{Header, Request, Response, Server, StatusCode};

use crate::auth;
use crate::cli::Settings;
use crate::config::{self, Config};
use crate::error::{Code, ProxyError};
use crate::front;
use crate::health;
use crate::inference::{self, Stats};
use crate::metrics::Gauges;
use crate::plan::MAX_BODY;
use crate::routing::{self, InferenceRequest, Route};
use crate::state::App;
use crate::status;
use crate::systemd;
use crate::upstream::Agents;

/// An inference waiting for a worker.
struct Job {
    rq: Request,
    route: InferenceRequest,
    started: Instant,
}

/// Loads the config, starts the background thread and the workers, and serves until the listener closes.
pub fn serve(settings: Settings) -> Result<(), String> {
    let config = load_config(&settings)?;
    let agents = Agents::new(&settings)?;
    let tls = if settings.no_tls {
        None
    } else {
        Some(front::server_config(&settings.tls_cert, &settings.tls_key)?)
    };
    let listener = TcpListener::bind(&settings.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", settings.listen))?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let public = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
    let sock = front::backend_socket(&settings.state_dir)?;
    let server = Server::http_unix(&sock)
        .map_err(|e| format!("cannot open the backend socket {}: {e}", sock.display()))?;
    thread::Builder::new()
        .name("accept".into())
        .spawn(move || front::serve(listener, tls, sock))
        .map_err(|e| format!("cannot start the listener: {e}"))?;
    log::info!(
        "listening on {public} with {} workers; {} servers, {} models from {}",
        settings.workers,
        config.servers.len(),
        config.models.len(),
        settings.config_dir.display()
    );
    let app = Arc::new(App::new(config, settings, agents));
    let poll_app = app.clone();
    health::spawn(
        app.agents.probe.clone(),
        app.auth.clone(),
        move || poll_app.config(),
        app.health.clone(),
        app.settings.health_interval,
    );
    let token_app = app.clone();
    auth::spawn(app.auth.clone(), move || token_app.config());
    let (tx, rx) = bounded::<Job>(app.settings.queue);
    for i in 0..app.settings.workers {
        let app = app.clone();
        let rx = rx.clone();
        thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || worker(&app, &rx))
            .map_err(|e| format!("cannot start worker threads: {e}"))?;
    }
    let signals = Signals::register()?;
    systemd::notify("READY=1");
    let mut tx = Some(tx);
    let mut deadline: Option<Instant> = None;
    loop {
        if signals.hup.swap(false, Ordering::SeqCst) {
            reload(&app);
        }
        if deadline.is_none() && signals.term.load(Ordering::SeqCst) {
            let grace = app.settings.grace_period;
            log::info!(
                "shutting down: no new inferences; waiting up to {}s for those in flight",
                grace.as_secs()
            );
            systemd::notify("STOPPING=1");
            app.shutting_down.store(true, Ordering::SeqCst);
            // Workers drain the queue, then see the channel closed and stop.
            tx = None;
            deadline = Some(Instant::now() + grace);
        }
        if let Some(d) = deadline {
            let busy = app.in_flight.load(Ordering::SeqCst);
            if busy == 0 {
                break;
            }
            if Instant::now() >= d {
                log::warn!("grace period over with {busy} inference(s) still running; exiting");
                break;
            }
        }
        let rq = match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(rq)) => rq,
            Ok(None) => continue,
            Err(e) => {
                log::warn!("receiving a request failed: {e}");
                continue;
            }
        };
        dispatch(&app, tx.as_ref(), rq);
    }
    log::info!("stopped");
    Ok(())
}

/// Answers cheap routes at once and queues inferences; during shutdown, refuses them.
fn dispatch(app: &App, tx: Option<&Sender<Job>>, rq: Request) {
    let started = Instant::now();
    let route = match routing::route(rq.method().as_str(), rq.url()) {
        Ok(Route::Inference(route)) => route,
        Ok(route) => return answer_inline(app, rq, &route, started),
        Err(e) => return reply_error(app, rq, &e, started),
    };
    let Some(tx) = tx else {
        let e = ProxyError::new(
            Code::ShuttingDown,
            "the proxy is shutting down; retry on another instance",
        )
        .with_header("Retry-After", "5")
        .with_header("Connection", "close");
        return reply_error(app, rq, &e, started);
    };
    app.in_flight.fetch_add(1, Ordering::SeqCst);
    app.queued.fetch_add(1, Ordering::SeqCst);
    if let Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) =
        tx.try_send(Job { rq, route, started })
    {
        app.in_flight.fetch_sub(1, Ordering::SeqCst);
        app.queued.fetch_sub(1, Ordering::SeqCst);
        let e = ProxyError::new(
            Code::Overloaded,
            "every worker is busy and the queue is full; retry shortly",
        )
        .with_header("Retry-After", "5");
        reply_error(app, job.rq, &e, started);
    }
}

/// SIGHUP: load both files again; a config that fails validation is refused and the old one stays.
fn reload(app: &App) {
    systemd::notify("RELOADING=1");
    match config::load(&app.settings.config_dir) {
        Ok(c) => {
            log::info!(
                "config reloaded: {} servers, {} models",
                c.servers.len(),
                c.models.len()
            );
            app.set_config(c);
            app.auth.reload();
        }
        Err(problems) => {
            for p in &problems {
                log::error!("{p}");
            }
            log::error!(
                "config reload refused ({} problem(s)); the previous config stays in force",
                problems.len()
            );
        }
    }
    systemd::notify("READY=1");
}

/// The signals the server acts on, as flags the dispatcher polls.
struct Signals {
    term: Arc<AtomicBool>,
    hup: Arc<AtomicBool>,
}

impl Signals {
    fn register() -> Result<Signals, String> {
        let s = Signals {
            term: Arc::new(AtomicBool::new(false)),
            hup: Arc::new(AtomicBool::new(false)),
        };
        let reg = |sig, flag: &Arc<AtomicBool>| {
            signal_hook::flag::register(sig, flag.clone())
                .map_err(|e| format!("cannot handle signal {sig}: {e}"))
        };
        reg(signal_hook::consts::SIGTERM, &s.term)?;
        reg(signal_hook::consts::SIGINT, &s.term)?;
        reg(signal_hook::consts::SIGHUP, &s.hup)?;
        Ok(s)
    }
}

/// Loads and validates the config, logging every problem.
pub fn load_config(settings: &Settings) -> Result<Config, String> {
    config::load(&settings.config_dir).map_err(|problems| {
        for p in &problems {
            log::error!("{p}");
        }
        format!(
            "{} problem(s) in the config under {}; nothing started (check with `model-proxy check-config`)",
            problems.len(),
            settings.config_dir.display()
        )
    })
}

/// Counts a worker as alive for as long as it runs, panics included.
struct Alive<'a>(&'a App);

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        self.0.workers_alive.fetch_sub(1, Ordering::SeqCst);
    }
}

fn worker(app: &App, rx: &Receiver<Job>) {
    app.workers_alive.fetch_add(1, Ordering::SeqCst);
    let _alive = Alive(app);
    while let Ok(job) = rx.recv() {
        app.queued.fetch_sub(1, Ordering::SeqCst);
        handle(app, job);
        app.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs one queued inference and answers it (or gives up on a client that stalls its body).
fn handle(app: &App, mut job: Job) {
    let body = if job.route.has_body {
        match read_body_within(job.rq, app.settings.body_timeout) {
            Some((rq, Ok(body))) => {
                job.rq = rq;
                Some(body)
            }
            Some((rq, Err(e))) => return reply_error(app, rq, &e, job.started),
            None => {
                // The request stays with its reader thread until the client goes
                // away; this worker moves on. There is no one to answer.
                log::warn!(
                    "a client sent no complete request body within {}s; worker released",
                    app.settings.body_timeout.as_secs()
                );
                return app.metrics.request("stalled_body", 408, "");
            }
        }
    } else {
        None
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        inference::run(app, &job.route, body.as_deref())
    }));
    match outcome {
        Ok(Ok(relay)) => {
            let mut headers = cors(app, &job.rq);
            if let Some(ct) = relay.content_type {
                headers.push(("Content-Type", ct));
            }
            let status = relay.status;
            let sent = job.rq.url().to_string();
            let method = job.rq.method().to_string();
            let mut body = Counting {
                inner: relay.body,
                n: 0,
            };
            let result = respond(job.rq, status, headers, &mut body, relay.length);
            let done = Done {
                status,
                started: job.started,
                bytes: body.n,
                code: None,
            };
            finish(app, &method, &sent, &done, Some(&relay.stats));
            if let Err(e) = result {
                log::warn!(
                    "relaying the model's answer for {} failed: {e}",
                    log_path(&sent)
                );
            }
        }
        Ok(Err(e)) => reply_error(app, job.rq, &e, job.started),
        Err(_) => {
            let e = ProxyError::internal("the request hit a bug in model-proxy; see its log");
            reply_error(app, job.rq, &e, job.started);
        }
    }
}

/// Reads the body on a thread of its own, so that a client that stalls its body
/// cannot hold a worker: `None` when it has not arrived within `limit`.
fn read_body_within(
    mut rq: Request,
    limit: Duration,
) -> Option<(Request, Result<Vec<u8>, ProxyError>)> {
    let (tx, rx) = bounded(1);
    let spawned = thread::Builder::new().name("body".into()).spawn(move || {
        let body = read_body(&mut rq);
        if let Err(crossbeam_channel::SendError((rq, _))) = tx.send((rq, body)) {
            // The worker gave up on it: tell the late client why.
            let e = ProxyError::new(
                Code::BodyTimeout,
                "the request body took too long to arrive",
            );
            let body = e.to_json().into_bytes();
            let len = body.len();
            let headers = vec![("Content-Type", "application/json".to_string())];
            let _ = respond(rq, 408, headers, Cursor::new(body), Some(len));
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start a thread to read a request body: {e}");
        return None;
    }
    rx.recv_timeout(limit).ok()
}

fn read_body(rq: &mut Request) -> Result<Vec<u8>, ProxyError> {
    let too_large = || {
        ProxyError::new(
            Code::BodyTooLarge,
            format!("the request body exceeds {MAX_BODY} bytes"),
        )
    };
    if rq.body_length().is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    rq.as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ProxyError::new(Code::InvalidBody, format!("cannot read the body: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(too_large());
    }
    Ok(body)
}

fn answer_inline(app: &App, rq: Request, route: &Route, started: Instant) {
    let json = |v: serde_json::Value| (200, "application/json".to_string(), v.to_string());
    let (status, content_type, body) = match route {
        Route::Healthz => json(serde_json::json!({"status": "ok"})),
        Route::Readyz => {
            let alive = app.workers_alive.load(Ordering::SeqCst);
            let want = app.settings.workers;
            // While shutting down, report not ready so load balancers drain this instance.
            let state = if app.shutting_down.load(Ordering::SeqCst) {
                "shutting_down"
            } else if alive == want {
                "ready"
            } else {
                "degraded"
            };
            let body = serde_json::json!({"status": state, "workers": alive, "configured": want});
            (
                if state == "ready" { 200 } else { 503 },
                "application/json".into(),
                body.to_string(),
            )
        }
        Route::Status if !app.settings.status_page => {
            let e = ProxyError::new(
                Code::NotFound,
                "the status page is off; start with ZHIVA_SHOW_STATUS_PAGE=true to turn it on",
            );
            return reply_error(app, rq, &e, started);
        }
        Route::Status => {
            let v = status::json(&app.config(), &app.health, &app.auth);
            if header(&rq, "Accept").is_some_and(|a| a.contains("application/json")) {
                json(v)
            } else {
                (200, "text/html; charset=utf-8".into(), status::html(&v))
            }
        }
        Route::Preflight => {
            let headers = app.cors.preflight_headers(
                header(&rq, "Origin").as_deref(),
                header(&rq, "Access-Control-Request-Headers").as_deref(),
            );
            let (m, u) = (rq.method().to_string(), rq.url().to_string());
            let _ = respond(rq, 204, headers, std::io::empty(), Some(0));
            let done = Done {
                status: 204,
                started,
                bytes: 0,
                code: None,
            };
            return finish(app, &m, &u, &done, None);
        }
        Route::Metrics => (
            200,
            "text/plain; version=0.0.4".into(),
            app.metrics.render(&Gauges {
                queued: app.queued.load(Ordering::SeqCst),
                in_flight: app.in_flight.load(Ordering::SeqCst),
                workers: app.workers_alive.load(Ordering::SeqCst),
                tokens: app.auth.counters(),
            }),
        ),
        // Inferences go to the workers; the dispatcher never sends one here.
        Route::Inference(_) => {
            let e = ProxyError::internal("an inference was misrouted");
            return reply_error(app, rq, &e, started);
        }
    };
    let mut headers = cors(app, &rq);
    headers.push(("Content-Type", content_type));
    headers.push(("Cache-Control", "no-store".into()));
    let (m, u) = (rq.method().to_string(), rq.url().to_string());
    let len = body.len();
    let _ = respond(
        rq,
        status,
        headers,
        Cursor::new(body.into_bytes()),
        Some(len),
    );
    let done = Done {
        status,
        started,
        bytes: len as u64,
        code: None,
    };
    finish(app, &m, &u, &done, None);
}

fn reply_error(app: &App, rq: Request, e: &ProxyError, started: Instant) {
    let mut headers = cors(app, &rq);
    headers.push(("Content-Type", "application/json".into()));
    headers.extend(e.headers.iter().cloned());
    let body = e.to_json().into_bytes();
    let (m, u) = (rq.method().to_string(), rq.url().to_string());
    let len = body.len();
    let _ = respond(rq, e.status(), headers, Cursor::new(body), Some(len));
    let done = Done {
        status: e.status(),
        started,
        bytes: len as u64,
        code: Some(e.code),
    };
    finish(app, &m, &u, &done, None);
    if e.status() >= 500 {
        log::warn!("{} {}: {}", log_path(&u), e.code, e.message);
    }
}

/// How a request was answered.
struct Done {
    status: u16,
    started: Instant,
    bytes: u64,
    code: Option<Code>,
}

/// The access log line and the request metrics, for every answered request.
fn finish(app: &App, method: &str, url: &str, done: &Done, stats: Option<&Stats>) {
    let mut line = format!(
        "{method} {} {} {}ms {}B",
        log_path(url),
        done.status,
        done.started.elapsed().as_millis(),
        done.bytes
    );
    if let Some(s) = stats {
        line.push_str(&format!(
            " instances={} dicom_bytes={} pacs_ms={} model_ms={}",
            s.instances, s.dicom_bytes, s.pacs_ms, s.model_ms
        ));
    }
    if let Some(code) = done.code {
        line.push_str(&format!(" error={code}"));
    }
    log::info!("{line}");
    let (route, model) = metric_labels(url);
    app.metrics.request(route, done.status, model);
    if stats.is_some() {
        app.metrics.bytes("response_to_client", done.bytes);
    }
}

/// The route and model labels of a request target: known words only, so a
/// hostile URL cannot grow the metrics.
fn metric_labels(url: &str) -> (&'static str, &str) {
    let path = url.split('?').next().unwrap_or("");
    let mut segs = path.trim_start_matches('/').split('/');
    let route = match segs.next().unwrap_or("") {
        "segmentations" => "segmentations",
        "annotations" => "annotations",
        "predictions" => "predictions",
        "healthz" => "healthz",
        "readyz" => "readyz",
        "status" => "status",
        "metrics" => "metrics",
        _ => "other",
    };
    let model = match (route, segs.next()) {
        ("segmentations" | "annotations" | "predictions", Some(m)) if crate::ids::is_uuid(m) => m,
        _ => "",
    };
    (route, model)
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
fn log_path(url: &str) -> String {
    url.chars()
        .take(300)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn header(rq: &Request, name: &'static str) -> Option<String> {
    rq.headers()
        .iter()
        .find(|h| h.field.equiv(name))
        .map(|h| h.value.as_str().to_string())
}

fn cors(app: &App, rq: &Request) -> Vec<(&'static str, String)> {
    app.cors.headers(header(rq, "Origin").as_deref())
}

fn respond<R: Read>(
    rq: Request,
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: R,
    length: Option<usize>,
) -> std::io::Result<()> {
    let headers: Vec<Header> = headers
        .into_iter()
        .filter_map(|(k, v)| Header::from_bytes(k.as_bytes(), v.as_bytes()).ok())
        .collect();
    rq.respond(Response::new(
        StatusCode(status),
        headers,
        body,
        length,
        None,
    ))
}
