//! The pool: the inference workers behind a bounded queue, and, with the cache
//! on, the cache readers and the prefetch workers (see `cached` for what each does).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread;

use crossbeam_channel::{bounded, Receiver, Sender, TrySendError};
use tiny_http::Request;

use super::cached::{self, On, Planned, Prefetch};
use super::reply::{send, Arrival, Reply};
use crate::cache::{self, Flights, Key};
use crate::error::{Code, ProxyError};
use crate::routing::InferenceRequest;
use crate::state::App;

/// Threads that stream cached answers, so a hit never waits behind an inference.
const READERS: usize = 4;

/// Prefetches that may wait for a prefetch worker; beyond, 503.
const PREFETCH_QUEUE: usize = 1024;

/// An inference request as the dispatcher received it.
pub struct Job {
    /// The client's request, answered by the worker.
    pub rq: Request,
    /// What it asks for.
    pub route: InferenceRequest,
    /// When it came and how it is counted.
    pub arrival: Arrival,
}

/// Work for a worker or a cache reader.
pub enum Task {
    /// A request as the dispatcher received it.
    New(Job),
    /// A planned inference.
    Planned(Planned),
    /// A request that waited for an identical inference which stored its answer.
    Settled(Planned),
    /// `DELETE` on an inference URL: the entry to remove (`None`: not cacheable).
    Purge(Request, Arrival, Option<Key>),
    /// `POST /prefetch`.
    PrefetchList(Request, Arrival),
}

impl Task {
    fn into_request(self) -> (Request, Arrival) {
        match self {
            Task::New(j) => (j.rq, j.arrival),
            Task::Planned(p) | Task::Settled(p) => (p.rq, p.arrival),
            Task::Purge(rq, a, _) | Task::PrefetchList(rq, a) => (rq, a),
        }
    }
}

/// The queues, held by the dispatcher and by every thread of the pool (a
/// reader hands a miss to the workers, a worker hands waiting requests to the
/// readers), and the inferences in flight for single-flight.
#[derive(Clone)]
pub struct Lanes {
    work: Sender<Task>,
    /// A rendezvous channel: a send succeeds only when a reader is idle, so a
    /// hit never queues behind a slow client's download.
    read: Option<Sender<Task>>,
    prefetch: Option<Sender<Prefetch>>,
    /// Keys being computed, with the requests waiting for them.
    pub flights: Arc<Flights<Planned>>,
}

impl Lanes {
    /// Queues `task` for a worker, or answers 503 when the queue is full.
    pub fn work(&self, app: &App, task: Task) {
        app.queued.fetch_add(1, Ordering::SeqCst);
        let (task, e) = match self.work.try_send(task) {
            Ok(()) => return,
            Err(TrySendError::Full(task)) => (
                task,
                ProxyError::new(
                    Code::Overloaded,
                    "every worker is busy and the queue is full; retry shortly",
                )
                .with_header("Retry-After", "5"),
            ),
            Err(TrySendError::Disconnected(task)) => (
                task,
                ProxyError::new(
                    Code::NoWorkers,
                    "no worker thread is alive; see the proxy's log and restart it",
                ),
            ),
        };
        app.queued.fetch_sub(1, Ordering::SeqCst);
        let (rq, arrival) = task.into_request();
        answer(app, rq, Reply::error(&e), &arrival);
    }

    /// Hands `task` to an idle cache reader, or else to the workers' queue.
    pub fn read(&self, app: &App, task: Task) {
        let task = match &self.read {
            Some(tx) => match tx.try_send(task) {
                Ok(()) => return,
                Err(e) => e.into_inner(),
            },
            None => task,
        };
        self.work(app, task);
    }

    /// Queues a prefetch; the error is the caller's answer.
    pub fn prefetch(&self, app: &App, p: Prefetch) -> Result<(), ProxyError> {
        let Some(tx) = &self.prefetch else {
            return Err(cached::not_cached());
        };
        let stats = app.cache.stats();
        cache::bump(&stats.prefetch_queued);
        tx.try_send(p).map_err(|_| {
            cache::drop_one(&stats.prefetch_queued);
            ProxyError::new(
                Code::Overloaded,
                format!("{PREFETCH_QUEUE} prefetches are already waiting; retry later"),
            )
            .with_header("Retry-After", "60")
        })
    }
}

/// Answers a request the pool took on, and counts it out of `in_flight`.
pub fn answer(app: &App, rq: Request, reply: Reply, arrival: &Arrival) {
    send(app, rq, reply, arrival);
    app.in_flight.fetch_sub(1, Ordering::SeqCst);
}

/// The dispatcher's handle on the pool; dropping it stops new work (the threads
/// hold the queues too, so they stay; the process exits once nothing is in flight).
pub struct Pool {
    lanes: Lanes,
}

impl Pool {
    /// Starts `app.options.workers` workers behind a queue of `app.options.queue`,
    /// and with the cache on, its readers and prefetch workers.
    pub fn start(app: &Arc<App>) -> Result<Pool, String> {
        let (work, work_rx) = bounded::<Task>(app.options.queue);
        let cache = app.cache.settings().cloned();
        let (read, read_rx) = bounded::<Task>(0);
        let (prefetch, prefetch_rx) = bounded::<Prefetch>(PREFETCH_QUEUE);
        let lanes = Lanes {
            work,
            read: cache.is_some().then_some(read),
            prefetch: cache.is_some().then_some(prefetch),
            flights: Arc::new(Flights::default()),
        };
        let spawn = |name: String, f: Box<dyn FnOnce() + Send>| {
            thread::Builder::new()
                .name(name)
                .spawn(f)
                .map(|_| ())
                .map_err(|e| format!("cannot start worker threads: {e}"))
        };
        for i in 0..app.options.workers {
            let (app, lanes, rx) = (app.clone(), lanes.clone(), work_rx.clone());
            spawn(
                format!("worker-{i}"),
                Box::new(move || worker(&app, &lanes, &rx)),
            )?;
        }
        if let Some(c) = cache {
            for i in 0..READERS {
                let (app, lanes, rx) = (app.clone(), lanes.clone(), read_rx.clone());
                spawn(
                    format!("cache-{i}"),
                    Box::new(move || reader(&app, &lanes, &rx)),
                )?;
            }
            for i in 0..c.prefetch_workers {
                let (app, lanes, rx) = (app.clone(), lanes.clone(), prefetch_rx.clone());
                spawn(
                    format!("prefetch-{i}"),
                    Box::new(move || cached::prefetcher(&app, &lanes, &rx)),
                )?;
            }
        }
        Ok(Pool { lanes })
    }

    /// Takes an inference: to an idle cache reader when it may be a hit (a GET
    /// with the cache on), else to the workers' queue (503 when it is full).
    pub fn submit(&self, app: &App, job: Job) {
        app.in_flight.fetch_add(1, Ordering::SeqCst);
        if job.route.has_body {
            // The body has to be read before anything is known: that is a worker's job.
            self.lanes.work(app, Task::New(job));
        } else {
            self.lanes.read(app, Task::New(job));
        }
    }

    /// `DELETE` on an inference URL.
    pub fn purge(&self, app: &App, rq: Request, route: InferenceRequest, arrival: Arrival) {
        match cached::plan_only(app, &route) {
            Ok((_, key)) => {
                app.in_flight.fetch_add(1, Ordering::SeqCst);
                // Removing a file is disk I/O: not on the dispatcher.
                self.lanes.read(app, Task::Purge(rq, arrival, key));
            }
            Err(e) => send(app, rq, Reply::error(&e), &arrival),
        }
    }

    /// `PUT` on an inference URL: planned here (a bad one is refused at once), then queued.
    pub fn prefetch(&self, app: &App, rq: Request, route: InferenceRequest, arrival: Arrival) {
        let reply = match cached::queue_prefetch(app, &self.lanes, &route) {
            Ok(v) => Reply::json(202, &v),
            Err(e) => Reply::error(&e),
        };
        send(app, rq, reply, &arrival);
    }

    /// `POST /prefetch`: the list is a request body, read off the dispatcher.
    pub fn prefetch_list(&self, app: &App, rq: Request, arrival: Arrival) {
        app.in_flight.fetch_add(1, Ordering::SeqCst);
        self.lanes.read(app, Task::PrefetchList(rq, arrival));
    }
}

/// Counts a worker as alive for as long as it runs, panics included.
struct Alive<'a>(&'a App);

impl Drop for Alive<'_> {
    fn drop(&mut self) {
        self.0.workers_alive.fetch_sub(1, Ordering::SeqCst);
    }
}

fn worker(app: &Arc<App>, lanes: &Lanes, rx: &Receiver<Task>) {
    app.workers_alive.fetch_add(1, Ordering::SeqCst);
    let _alive = Alive(app);
    while let Ok(task) = rx.recv() {
        app.queued.fetch_sub(1, Ordering::SeqCst);
        cached::handle(app, lanes, task, On::Worker);
    }
}

fn reader(app: &Arc<App>, lanes: &Lanes, rx: &Receiver<Task>) {
    while let Ok(task) = rx.recv() {
        // A bug here must not take a reader away for good.
        if catch_unwind(AssertUnwindSafe(|| {
            cached::handle(app, lanes, task, On::Reader)
        }))
        .is_err()
        {
            log::error!("a cache reader hit a bug; see above");
        }
    }
}
