//! The worker pool: a bounded queue of inferences and the threads that run them.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use tiny_http::Request;

use super::body;
use super::reply::{send, Arrival, Reply};
use crate::access::Turn;
use crate::error::{Code, ProxyError};
use crate::inference;
use crate::routing::InferenceRequest;
use crate::state::App;

/// An inference waiting for a worker.
pub struct Job {
    /// The client's request, answered by the worker.
    pub rq: Request,
    /// What it asks for.
    pub route: InferenceRequest,
    /// When it came and how it is counted.
    pub arrival: Arrival,
    /// The caller's turn (per-caller concurrency), held until the job ends.
    pub turn: Option<Turn>,
}

/// The queue in front of the workers; dropping it lets them finish the queue and stop.
pub struct Pool {
    tx: Sender<Job>,
}

impl Pool {
    /// Starts `app.options.workers` threads behind a queue of `app.options.queue`.
    pub fn start(app: &Arc<App>) -> Result<Pool, String> {
        let (tx, rx) = bounded::<Job>(app.options.queue);
        for i in 0..app.options.workers {
            let (app, rx) = (app.clone(), rx.clone());
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || worker(&app, &rx))
                .map_err(|e| format!("cannot start worker threads: {e}"))?;
        }
        Ok(Pool { tx })
    }

    /// Queues `job`, or answers at once when the queue is full or no worker is left.
    pub fn submit(&self, app: &App, job: Job) {
        app.in_flight.fetch_add(1, Ordering::SeqCst);
        app.queued.fetch_add(1, Ordering::SeqCst);
        let (job, e) = match self.tx.try_send(job) {
            Ok(()) => return,
            Err(TrySendError::Full(job)) => (
                job,
                ProxyError::new(
                    Code::Overloaded,
                    "every worker is busy and the queue is full; retry shortly",
                )
                .with_header("Retry-After", "5"),
            ),
            Err(TrySendError::Disconnected(job)) => (
                job,
                ProxyError::new(
                    Code::NoWorkers,
                    "no worker thread is alive; see the proxy's log and restart it",
                ),
            ),
        };
        app.in_flight.fetch_sub(1, Ordering::SeqCst);
        app.queued.fetch_sub(1, Ordering::SeqCst);
        send(app, job.rq, Reply::error(&e), &job.arrival);
    }
}

/// Counts a worker as alive for as long as it runs, panics included.
struct Alive<'a>(&'a App);

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        self.0.workers_alive.fetch_sub(1, Ordering::SeqCst);
    }
}

fn worker(app: &Arc<App>, rx: &Receiver<Job>) {
    app.workers_alive.fetch_add(1, Ordering::SeqCst);
    let _alive = Alive(app);
    while let Ok(job) = rx.recv() {
        app.queued.fetch_sub(1, Ordering::SeqCst);
        handle(app, job);
        app.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs one queued inference and answers it (or gives up on a client that stalls its body).
fn handle(app: &Arc<App>, job: Job) {
    // The turn ends with this function, also when a stalled body is left to its reader.
    let Job {
        rq,
        route,
        arrival,
        turn: _turn,
    } = job;
    let (rq, arrival, body) = if route.has_body {
        let limit = app.options.body_timeout;
        match body::read_within(app, rq, arrival, limit) {
            Some((rq, arrival, Ok(body))) => (rq, arrival, Some(body)),
            Some((rq, arrival, Err(e))) => return send(app, rq, Reply::error(&e), &arrival),
            None => {
                // The request stays with its reader thread, which answers it if the
                // client ever finishes; this worker moves on.
                return log::warn!(
                    "a client sent no complete request body within {}s; worker released",
                    limit.as_secs()
                );
            }
        }
    } else {
        (rq, arrival, None)
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        inference::run(app, &route, body.as_deref())
    }));
    let reply = match outcome {
        Ok(Ok(relay)) => Reply::relay(relay),
        Ok(Err(e)) => Reply::error(&e),
        Err(_) => Reply::error(&ProxyError::internal(
            "the request hit a bug in model-proxy; see its log",
        )),
    };
    send(app, rq, reply, &arrival);
}
