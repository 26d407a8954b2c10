//! The cache in the request path: hits, single-flight, the tee, purges and prefetches.
//!
//! Where each step runs, and why:
//!
//! - The dispatcher only routes. An inference GET goes to an idle cache reader
//!   (a rendezvous channel: it never queues behind a reader busy with a slow
//!   client), or to the workers' queue when none is idle; a POST goes to a
//!   worker, which reads its body. Whoever gets it plans it first (a bad request
//!   gets its 400 and never touches the cache), then looks its entry up.
//! - A hit is streamed from disk by the thread that found it, a reader or a
//!   worker: never by the dispatcher, which a slow client would stall. Inbound
//!   access checks run in the dispatcher, before any of this.
//! - A miss on a reader waits behind an identical inference already running,
//!   or goes to the workers' queue; a worker takes the lead or waits. A waiting
//!   request holds no thread: it is parked in [`Lanes::flights`]. A client that
//!   gives up is noticed only when its answer is written, and cancels nothing.
//! - The leader relays the model's answer through a tee into a temporary file.
//!   If its client goes away, the worker reads the rest of the answer into the
//!   file anyway, so the inference is not wasted. Only a whole 2xx answer is
//!   renamed into place. Then the parked requests get the entry (streamed by a
//!   reader, or a worker), or the leader's error, or, when the answer could not
//!   be stored, an inference each.
//! - Prefetches (`PUT`, `POST /prefetch`) run on their own few threads, never
//!   on a viewer's worker, and lead flights like a worker; viewer requests that
//!   come meanwhile wait for them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;
use serde_json::{json, Value};
use tiny_http::Request;

use super::body;
use super::pool::{answer, Job, Lanes, Task};
use super::reply::{header, log_path, Arrival, Reply};
use crate::cache::{self, Filled, Hit, Key};
use crate::error::{Code, ProxyError};
use crate::inference::{self, Relay};
use crate::plan::{self, Plan};
use crate::routing::{self, InferenceRequest, Route};
use crate::state::App;

/// A planned inference request.
pub struct Planned {
    /// The client's request.
    pub rq: Request,
    /// When it came and how it is counted.
    pub arrival: Arrival,
    plan: Plan,
    /// `None`: not cacheable (the cache is off, or the model opts out).
    key: Option<Key>,
    /// The client asked for a new inference (`Cache-Control: no-cache`).
    refresh: bool,
    /// Run without single-flight: the leader's answer could not be stored.
    alone: bool,
}

/// A prefetch waiting for a prefetch worker.
pub struct Prefetch {
    plan: Plan,
    key: Key,
}

/// Which kind of thread handles a task: only workers run inferences.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum On {
    /// An inference worker.
    Worker,
    /// A cache reader.
    Reader,
}

/// Does `task` on a worker or a reader.
pub fn handle(app: &Arc<App>, lanes: &Lanes, task: Task, on: On) {
    match task {
        Task::New(job) => {
            if let Some(p) = planned(app, job) {
                decide(app, lanes, p, on);
            }
        }
        Task::Planned(p) => decide(app, lanes, p, on),
        Task::Settled(p) => match p.key.as_ref().and_then(|k| app.cache.open(k)) {
            Some(hit) => serve_hit(app, p, hit),
            // Gone already (purged, or evicted by another replica): ask again.
            None => decide(app, lanes, p, on),
        },
        Task::Purge(rq, arrival, key) => purge(app, rq, arrival, key),
        Task::PrefetchList(rq, arrival) => prefetch_list(app, lanes, rq, arrival),
    }
}

/// Reads the body (if any) and plans; `None` when the request has been answered.
fn planned(app: &Arc<App>, job: Job) -> Option<Planned> {
    let Job {
        mut rq,
        route,
        arrival,
    } = job;
    let body = if route.has_body {
        match body::read(&mut rq) {
            Ok(body) => Some(body),
            Err(e) => {
                answer(app, rq, Reply::error(&e), &arrival);
                return None;
            }
        }
    } else {
        None
    };
    match plan::make(&app.config(), &route, body.as_deref()) {
        Ok(plan) => Some(Planned {
            key: app.cache.key(&plan),
            refresh: no_cache(&rq),
            rq,
            arrival,
            plan,
            alone: false,
        }),
        Err(e) => {
            answer(app, rq, Reply::error(&e), &arrival);
            None
        }
    }
}

/// `Cache-Control: no-cache` (or the HTTP/1.0 `Pragma: no-cache`).
fn no_cache(rq: &Request) -> bool {
    let has = |name: &'static str| {
        header(rq, name).is_some_and(|v| {
            v.split(',')
                .any(|d| d.trim().eq_ignore_ascii_case("no-cache"))
        })
    };
    has("Cache-Control") || has("Pragma")
}

/// A hit, a wait behind an identical inference, or an inference of its own.
fn decide(app: &Arc<App>, lanes: &Lanes, p: Planned, on: On) {
    let Some(key) = p.key else {
        return match on {
            On::Worker => lead(app, p, None),
            On::Reader => lanes.work(app, Task::Planned(p)),
        };
    };
    if !p.refresh {
        if let Some(hit) = app.cache.open(&key) {
            return serve_hit(app, p, hit);
        }
    }
    let joined = || cache::bump(&app.cache.stats().joined);
    // A refresh runs its own inference: one already running may have started
    // before whatever made the client ask for a new one.
    match (on, p.alone || p.refresh) {
        (On::Reader, false) => match lanes.flights.join(&key, p) {
            Ok(()) => joined(),
            Err(p) => lanes.work(app, Task::Planned(p)),
        },
        (On::Reader, true) => lanes.work(app, Task::Planned(p)),
        (On::Worker, true) => lead(app, p, None),
        (On::Worker, false) => match lanes.flights.lead_or_join(&key, p) {
            None => joined(),
            Some(p) => lead(app, p, Some(Leading::new(app, lanes, key))),
        },
    }
}

/// The lead of a flight; landing it hands the waiting requests their outcome.
/// Dropped without landing (a bug), it lands with an internal error, so that
/// nobody waits for ever.
struct Leading<'a> {
    app: &'a App,
    lanes: &'a Lanes,
    key: Key,
    landed: bool,
}

impl<'a> Leading<'a> {
    fn new(app: &'a App, lanes: &'a Lanes, key: Key) -> Leading<'a> {
        Leading {
            app,
            lanes,
            key,
            landed: false,
        }
    }

    fn land(mut self, stored: &Filled) {
        self.landed = true;
        settle(
            self.app,
            self.lanes,
            self.lanes.flights.land(&self.key),
            stored,
        );
    }
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if !self.landed {
            let e = ProxyError::internal(
                "the identical request this one waited for hit a bug in model-proxy; see its log",
            );
            let waiting = self.lanes.flights.land(&self.key);
            settle(self.app, self.lanes, waiting, &Filled::Failed(e));
        }
    }
}

/// Hands the requests that waited for a flight its outcome.
fn settle(app: &App, lanes: &Lanes, waiting: Vec<Planned>, stored: &Filled) {
    for p in waiting {
        match stored {
            Filled::Landed(_) => lanes.read(app, Task::Settled(p)),
            // A small body: written here, it cannot hold this thread.
            Filled::Failed(e) => answer(app, p.rq, miss(Reply::error(e)), &p.arrival),
            // Whole, but not stored: there is nothing to share, so each runs its own.
            Filled::NotStored => lanes.work(app, Task::Planned(Planned { alone: true, ..p })),
        }
    }
}

/// Runs the inference and relays it, through the cache when it is cacheable.
fn lead(app: &App, p: Planned, leading: Option<Leading<'_>>) {
    if let Some(l) = leading.as_ref().filter(|_| !p.refresh) {
        // An answer may have landed between the lookup and taking the lead.
        if let Some(hit) = app.cache.open(&l.key) {
            if let Some(l) = leading {
                l.land(&Filled::Landed(0));
            }
            return serve_hit(app, p, hit);
        }
    }
    let Planned {
        rq,
        arrival,
        plan,
        key,
        ..
    } = p;
    if key.is_some() {
        cache::bump(&app.cache.stats().misses);
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| inference::execute(app, &plan)));
    let relay = match outcome {
        Ok(Ok(relay)) => relay,
        Ok(Err(e)) => return fail(app, leading, rq, &arrival, e),
        Err(_) => {
            let e = ProxyError::internal("the request hit a bug in model-proxy; see its log");
            return fail(app, leading, rq, &arrival, e);
        }
    };
    let Relay {
        status,
        content_type,
        length,
        body,
        stats,
    } = relay;
    let Some(key) = key else {
        let reply = streamed(status, content_type, length, Box::new(body), stats);
        return answer(app, rq, reply, &arrival);
    };
    let (tee, fill) = app.cache.fill(
        &key,
        &plan,
        status,
        content_type.clone(),
        length,
        Box::new(body),
    );
    let reply = streamed(status, content_type, length, Box::new(tee), stats);
    answer(app, rq, reply, &arrival);
    let stored = app.cache.finish(fill);
    if let Some(l) = leading {
        l.land(&stored);
    }
}

fn fail(app: &App, leading: Option<Leading<'_>>, rq: Request, arrival: &Arrival, e: ProxyError) {
    if let Some(l) = leading {
        l.land(&Filled::Failed(e.clone()));
    }
    answer(app, rq, miss(Reply::error(&e)), arrival);
}

/// The model's answer, relayed as it arrives.
fn streamed(
    status: u16,
    content_type: Option<String>,
    length: Option<usize>,
    body: Box<dyn std::io::Read + Send>,
    stats: inference::Stats,
) -> Reply {
    miss(Reply::stream(
        status,
        content_type,
        length,
        body,
        Some(stats),
    ))
}

fn miss(mut r: Reply) -> Reply {
    r.headers.push(("X-Cache", "miss".into()));
    r
}

/// Streams a stored answer: its status, content type and body, with `Age`.
fn serve_hit(app: &App, p: Planned, hit: Hit) {
    cache::bump(&app.cache.stats().hits);
    let h = &hit.header;
    let (status, content_type, length) = (
        h.status,
        h.content_type.clone(),
        usize::try_from(h.length).ok(),
    );
    let age = hit.age.as_secs().to_string();
    let mut reply = Reply::stream(status, content_type, length, Box::new(hit), None);
    reply.headers.push(("X-Cache", "hit".into()));
    reply.headers.push(("Age", age));
    answer(app, p.rq, reply, &p.arrival);
}

/// Plans a request without a body (`PUT`, `DELETE`): its plan and its key, or the client's error.
pub fn plan_only(app: &App, route: &InferenceRequest) -> Result<(Plan, Option<Key>), ProxyError> {
    let plan = plan::make(&app.config(), route, None)?;
    let key = app.cache.key(&plan);
    Ok((plan, key))
}

fn purge(app: &App, rq: Request, arrival: Arrival, key: Option<Key>) {
    let reply = match key.map(|k| app.cache.purge(&k)).unwrap_or(Ok(false)) {
        Ok(purged) => Reply::json(200, &json!({ "purged": purged })),
        Err(e) => Reply::error(&ProxyError::internal(format!(
            "cannot remove the cache entry: {e}"
        ))),
    };
    answer(app, rq, reply, &arrival);
}

/// Why there is nothing to prefetch into.
pub fn not_cached() -> ProxyError {
    ProxyError::new(
        Code::NotCached,
        "the cache is off (--cache-size 0 or --cache-ttl 0): there is nothing to prefetch into",
    )
}

/// Plans a prefetch and queues it; the JSON is the 202's body.
pub fn queue_prefetch(
    app: &App,
    lanes: &Lanes,
    route: &InferenceRequest,
) -> Result<Value, ProxyError> {
    let (plan, key) = plan_only(app, route)?;
    let key = match key {
        Some(k) => k,
        None if app.cache.settings().is_none() => return Err(not_cached()),
        None => {
            return Err(ProxyError::new(
                Code::NotCached,
                format!(
                    "model {} has \"cache\": false in models.json: its answers are never cached",
                    plan.model.id
                ),
            ))
        }
    };
    lanes.prefetch(app, Prefetch { plan, key })?;
    Ok(json!({"status": "queued"}))
}

/// How a prefetch ended.
enum Prefetched {
    Done,
    Skipped,
    Failed,
}

/// A prefetch worker: runs queued prefetches into the cache, one at a time.
pub fn prefetcher(app: &Arc<App>, lanes: &Lanes, rx: &Receiver<Prefetch>) {
    let stats = app.cache.stats();
    while let Ok(p) = rx.recv() {
        cache::drop_one(&stats.prefetch_queued);
        cache::bump(&stats.prefetch_running);
        let outcome = catch_unwind(AssertUnwindSafe(|| prefetch(app, lanes, &p)));
        cache::drop_one(&stats.prefetch_running);
        cache::bump(match outcome {
            Ok(Prefetched::Done) => &stats.prefetch_done,
            Ok(Prefetched::Skipped) => &stats.prefetch_skipped,
            Ok(Prefetched::Failed) | Err(_) => &stats.prefetch_failed,
        });
    }
}

fn prefetch(app: &App, lanes: &Lanes, p: &Prefetch) -> Prefetched {
    // Already there, or already running (for a viewer, or another prefetch).
    if app.shutting_down.load(Ordering::SeqCst)
        || app.cache.open(&p.key).is_some()
        || !lanes.flights.lead(&p.key)
    {
        return Prefetched::Skipped;
    }
    let leading = Leading::new(app, lanes, p.key);
    if app.cache.open(&p.key).is_some() {
        leading.land(&Filled::Landed(0));
        return Prefetched::Skipped;
    }
    let started = Instant::now();
    let what = format!(
        "model {} on {}",
        p.plan.model.id,
        log_path(&p.plan.layout.paths().join(" "))
    );
    let stored = match inference::execute(app, &p.plan) {
        Ok(relay) => {
            let (tee, fill) = app.cache.fill(
                &p.key,
                &p.plan,
                relay.status,
                relay.content_type,
                relay.length,
                Box::new(relay.body),
            );
            // Nobody reads along: finishing reads the whole answer into the entry.
            drop(tee);
            app.cache.finish(fill)
        }
        Err(e) => Filled::Failed(e),
    };
    let took = started.elapsed().as_millis();
    let outcome = match &stored {
        Filled::Landed(n) => {
            log::info!("prefetched {what} in {took}ms: {n} bytes cached");
            Prefetched::Done
        }
        Filled::NotStored => {
            log::warn!("prefetch of {what} ran in {took}ms but its answer could not be cached");
            Prefetched::Failed
        }
        Filled::Failed(e) => {
            log::warn!("prefetch of {what} failed after {took}ms: {e}");
            Prefetched::Failed
        }
    };
    leading.land(&stored);
    outcome
}

/// `POST /prefetch` with a JSON list of inference URLs (or `{"urls": [...]}`).
fn prefetch_list(app: &Arc<App>, lanes: &Lanes, mut rq: Request, arrival: Arrival) {
    let reply = match body::read(&mut rq).and_then(|b| urls(&b)) {
        Ok(urls) => {
            let mut queued = 0;
            let mut rejected = Vec::new();
            for url in &urls {
                match prefetch_url(app, lanes, url) {
                    Ok(()) => queued += 1,
                    Err(e) => rejected.push(json!({
                        "url": log_path(url),
                        "status": e.status(),
                        "code": e.code.as_str(),
                        "message": e.message,
                    })),
                }
            }
            Reply::json(202, &json!({"queued": queued, "rejected": rejected}))
        }
        Err(e) => Reply::error(&e),
    };
    answer(app, rq, reply, &arrival);
}

fn urls(body: &[u8]) -> Result<Vec<String>, ProxyError> {
    let bad = |why: &str| {
        ProxyError::new(
            Code::InvalidBody,
            format!("POST /prefetch takes a JSON list of inference URLs (or {{\"urls\": [...]}}): {why}"),
        )
    };
    let v: Value = serde_json::from_slice(body).map_err(|e| bad(&e.to_string()))?;
    let list = match &v {
        Value::Array(a) => a,
        Value::Object(o) => o
            .get("urls")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("no \"urls\" list"))?,
        _ => return Err(bad("not a list")),
    };
    list.iter()
        .map(|u| {
            u.as_str()
                .map(String::from)
                .ok_or_else(|| bad("an item is not a string"))
        })
        .collect()
}

fn prefetch_url(app: &App, lanes: &Lanes, url: &str) -> Result<(), ProxyError> {
    // An absolute URL (as a script would write it) counts by its path and query.
    let target = match url.split_once("://") {
        Some((_, rest)) if !url.starts_with('/') => rest.find('/').map_or("/", |i| &rest[i..]),
        _ => url,
    };
    match routing::route("PUT", target).route? {
        Route::Prefetch(r) => queue_prefetch(app, lanes, &r).map(|_| ()),
        _ => Err(ProxyError::new(
            Code::NotFound,
            "not an inference URL (/{task}s/{model}/studies/...)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiny_http::TestRequest;

    #[test]
    fn no_cache_is_read_from_either_header() {
        let rq = |h: &str| -> Request {
            TestRequest::new()
                .with_header(h.parse::<tiny_http::Header>().unwrap())
                .into()
        };
        assert!(no_cache(&rq("Cache-Control: no-cache")));
        assert!(no_cache(&rq("cache-control: max-age=0, No-Cache")));
        assert!(no_cache(&rq("Pragma: no-cache")));
        assert!(!no_cache(&rq("Cache-Control: max-age=0")));
        assert!(!no_cache(&rq("X-Other: no-cache")));
    }
}
