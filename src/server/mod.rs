//! The server: start-up, then a dispatcher loop that answers the proxy's own
//! pages itself and hands inferences to the worker pool.
//!
//! Health, readiness, the status page and CORS preflights never wait for a
//! worker, so they answer even while every worker is busy with a long inference.
//!
//! `pages` answers the built-in routes, `pool` runs inferences, `cached` puts
//! the inference cache in their way, `body` reads a request body within its
//! timeout, and `reply` is the one place that writes an answer, logs it and counts it.

mod body;
mod cached;
mod pages;
mod pool;
mod reply;

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use tiny_http::{Request, Server};

use crate::access::{self, Access, Presented};
use crate::config::{self, Config};
use crate::error::ProxyError;
use crate::front::{self, Tls};
use crate::health;
use crate::routing::{self, Route};
use crate::state::{App, Options, StateDir};
use crate::systemd;
use crate::upstream::{Agents, Timeouts};
use crate::{auth, cors::Cors};
use pool::{Job, Pool};
use reply::{send, Arrival, Reply};

/// Everything the server needs from the command line, decided once at start-up.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Address to listen on.
    pub listen: String,
    /// TLS certificate chain and key (PEM); `None` serves plain HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Persistent state: tokens, the backend socket, the spool.
    pub state_dir: PathBuf,
    /// CORS origin patterns.
    pub allowed_origins: Vec<String>,
    /// Extra CA certificates for upstream HTTPS.
    pub ca_file: Option<PathBuf>,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// What the request path needs.
    pub options: Options,
    /// Who may ask, and the audit trail.
    pub access: access::Settings,
    /// Client connections: caps and timeouts.
    pub connections: front::Connections,
}

/// Loads the config, starts the background threads and the workers, and serves until SIGTERM.
pub fn serve(setup: Setup) -> Result<(), String> {
    let config = load_config(&setup.options.config_dir)?;
    let access = Access::load(setup.access.clone())?;
    let agents = Agents::new(&setup.timeouts, setup.ca_file.as_deref())?;
    let tls = match &setup.tls {
        Some((cert, key)) => Some(Arc::new(Tls::load(cert, key)?)),
        None => None,
    };
    let state_dir = StateDir::new(&setup.state_dir);
    let listener = TcpListener::bind(&setup.listen)
        .map_err(|e| format!("cannot listen on {}: {e}", setup.listen))?;
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let public = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
    if !setup.access.methods.on() && !listener.local_addr().is_ok_and(|a| a.ip().is_loopback()) {
        log::warn!(
            "inbound auth is off and {public} is reachable beyond this machine: anyone who can \
             reach it can run any model on any study with the proxy's PACS credentials; \
             see --inbound-auth and the README's \"Securing the proxy\""
        );
    }
    let sock = front::backend_socket(&state_dir.sub("run")?);
    let server = Server::http_unix(&sock)
        .map_err(|e| format!("cannot open the backend socket {}: {e}", sock.display()))?;
    log::info!(
        "listening on {public} with {} workers; {} servers, {} models from {}",
        setup.options.workers,
        config.servers.len(),
        config.models.len(),
        setup.options.config_dir.display()
    );
    let mut app = App::new(
        config,
        setup.options,
        state_dir,
        agents,
        Cors::new(&setup.allowed_origins),
        access,
    );
    app.tls = tls.clone();
    let app = Arc::new(app);
    app.cache.start()?;
    let refuse_app = app.clone();
    let door = front::Door {
        backend: sock,
        tls,
        connections: setup.connections,
        refuse: Box::new(move |e, seen| reply::refusal(&refuse_app, e, seen)),
        shared: app.front.clone(),
    };
    thread::Builder::new()
        .name("accept".into())
        .spawn(move || front::serve(listener, door))
        .map_err(|e| format!("cannot start the listener: {e}"))?;
    let (poll_app, slots_app) = (app.clone(), app.clone());
    health::spawn(
        app.agents.probe.clone(),
        app.auth.clone(),
        move || poll_app.config(),
        move |model| slots_app.slots.in_use(model),
        app.health.clone(),
        app.options.health_interval,
    );
    let token_app = app.clone();
    auth::spawn(app.auth.clone(), move || token_app.config());
    let pool = Pool::start(&app)?;
    run(&app, &server, pool)
}

/// The dispatcher loop, with signals: SIGHUP reloads, SIGTERM drains and stops.
fn run(app: &Arc<App>, server: &Server, pool: Pool) -> Result<(), String> {
    let signals = Signals::register()?;
    systemd::notify("READY=1");
    let mut pool = Some(pool);
    let mut deadline: Option<Instant> = None;
    loop {
        if signals.hup.swap(false, Ordering::SeqCst) {
            reload(app);
        }
        if deadline.is_none() && signals.term.load(Ordering::SeqCst) {
            let grace = app.options.grace_period;
            log::info!(
                "shutting down: no new inferences; waiting up to {}s for those in flight",
                grace.as_secs()
            );
            systemd::notify("STOPPING=1");
            app.shutting_down.store(true, Ordering::SeqCst);
            app.front.drain();
            // Nothing new is queued; what is queued or waiting still gets its answer.
            pool = None;
            deadline = Some(Instant::now() + grace);
        }
        if let Some(d) = deadline {
            // A running prefetch is an inference too: leaving it would waste its work.
            let stats = app.cache.stats();
            let busy = app.in_flight.load(Ordering::SeqCst)
                + stats.prefetch_running.load(Ordering::SeqCst) as usize;
            if busy == 0 {
                // The front stops handing requests over; what it already has
                // is answered before tiny_http goes (it would answer a bare 500).
                app.front.stop();
                if app.front.relays() == 0 {
                    break;
                }
            }
            if Instant::now() >= d {
                log::warn!(
                    "grace period over with {busy} inference(s) still running \
                     and {} answer(s) being relayed; exiting",
                    app.front.relays()
                );
                break;
            }
        }
        match server.recv_timeout(Duration::from_millis(100)) {
            Ok(Some(rq)) => dispatch(app, pool.as_ref(), rq),
            Ok(None) => {}
            Err(e) => log::warn!("receiving a request failed: {e}"),
        }
    }
    let queued = app.cache.stats().prefetch_queued.load(Ordering::SeqCst);
    if queued > 0 {
        log::warn!("{queued} queued prefetch(es) dropped: they run again when asked again");
    }
    log::info!("stopped");
    Ok(())
}

/// Answers pages at once and queues inferences once their caller is admitted;
/// during shutdown, refuses them.
fn dispatch(app: &App, pool: Option<&Pool>, rq: Request) {
    let started = Instant::now();
    let routed = routing::route(rq.method().as_str(), rq.url());
    let mut arrival = Arrival {
        started,
        label: routed.label,
        audit: None,
        turn: None,
    };
    let route = match routed.route {
        Ok(Route::Inference(route)) => {
            let config = app.config();
            let (audit, admitted) =
                app.access
                    .admit(&presented(&rq), rq.method().as_str(), &route, &config);
            arrival.audit = audit;
            match admitted {
                Ok(turn) => Ok((route, turn)),
                Err(e) => Err(e),
            }
        }
        Ok(route @ (Route::Prefetch(_) | Route::Purge(_) | Route::PrefetchList)) => {
            // Changing the cache affects every caller: under inbound auth, a PUT
            // or DELETE is admitted like the inference it names, and a prefetch
            // list needs a credential limited to no study, PACS or model.
            let who = presented(&rq);
            let checked = match &route {
                Route::Prefetch(r) | Route::Purge(r) => {
                    let (audit, admitted) =
                        app.access
                            .admit(&who, rq.method().as_str(), r, &app.config());
                    arrival.audit = audit;
                    admitted.map(|turn| arrival.turn = turn)
                }
                _ => app.access.unscoped(&who),
            };
            match (checked, pool) {
                (Err(e), _) => send(app, rq, Reply::error(&e), &arrival),
                (Ok(()), Some(pool)) => match route {
                    Route::Prefetch(r) => pool.prefetch(app, rq, r, arrival),
                    Route::Purge(r) => pool.purge(app, rq, r, arrival),
                    _ => pool.prefetch_list(app, rq, arrival),
                },
                (Ok(()), None) => send(
                    app,
                    rq,
                    Reply::error(&ProxyError::shutting_down()),
                    &arrival,
                ),
            }
            return;
        }
        Ok(Route::Page(page)) => {
            let reply = match app.access.page(page, &presented(&rq)) {
                Ok(()) => pages::answer(app, page, &rq),
                Err(e) => Reply::error(&e),
            };
            return send(app, rq, reply, &arrival);
        }
        Err(e) => Err(e),
    };
    match (route, pool) {
        // A cache hit is served on this path too: after the checks made above.
        (Ok((route, turn)), Some(pool)) => {
            arrival.turn = turn;
            pool.submit(app, Job { rq, route, arrival })
        }
        (Ok(_), None) => send(
            app,
            rq,
            Reply::error(&ProxyError::shutting_down()),
            &arrival,
        ),
        (Err(e), _) => send(app, rq, Reply::error(&e), &arrival),
    }
}

/// What a request presents to inbound access control.
fn presented(rq: &Request) -> Presented {
    let stamped = reply::header(rq, access::HEADER).and_then(|v| access::client(&v));
    Presented {
        authorization: reply::header(rq, "Authorization"),
        api_key: reply::header(rq, "api_key"),
        origin: reply::header(rq, "Origin"),
        client: stamped
            .or_else(|| rq.remote_addr().map(|a| a.ip().to_string()))
            .unwrap_or_else(|| "-".into()),
    }
}

/// SIGHUP: load both files (and the TLS pair) again; what fails validation is
/// refused and the old one stays. The inbound keys are read again and the audit
/// file reopened.
fn reload(app: &App) {
    systemd::notify("RELOADING=1");
    app.access.reload();
    if let Some(tls) = &app.tls {
        tls.reload();
    }
    match config::load(&app.options.config_dir) {
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
fn load_config(dir: &std::path::Path) -> Result<Config, String> {
    config::load(dir).map_err(|problems| {
        for p in &problems {
            log::error!("{p}");
        }
        format!(
            "{} problem(s) in the config under {}; nothing started (check with `model-proxy check-config`)",
            problems.len(),
            dir.display()
        )
    })
}
