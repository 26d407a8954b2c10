//! Health: a background poller that checks every server's and model's `statusUri`
//! into shared state, so the status page never fans out per page view.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ureq::Agent;

use crate::auth::Auth;
use crate::config::Config;
use crate::redirect;

/// What the last probe of one status URI found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// It answered 2xx (after following redirects).
    Up,
    /// It did not answer in time while this proxy had an inference running on
    /// it: a model busy thinking, not one that is down.
    Busy,
    /// Anything else.
    Down,
}

impl State {
    /// The status page's word.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Busy => "busy",
            State::Down => "down",
        }
    }
}

/// The outcome of the last probe of one status URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Up, busy or down.
    pub state: State,
    /// The HTTP status, when it answered at all.
    pub http_status: Option<u16>,
    /// Why it is down, when it did not answer.
    pub error: Option<String>,
    /// How long the probe took.
    pub latency_ms: u64,
    /// When the probe finished.
    pub checked_at: SystemTime,
}

/// Probe results by server or model UUID.
#[derive(Debug, Default)]
pub struct Health {
    checks: Mutex<HashMap<String, Check>>,
}

impl Health {
    /// The last check of `id`, if there was one.
    pub fn get(&self, id: &str) -> Option<Check> {
        self.checks.lock().ok()?.get(id).cloned()
    }

    fn set(&self, id: &str, check: Check) {
        if let Ok(mut m) = self.checks.lock() {
            m.insert(id.to_string(), check);
        }
    }
}

/// Probes one URL, following redirects; `authorization` and `origin` go only to
/// the URL's own origin.
pub fn probe(agent: &Agent, url: &str, authorization: Option<&str>, origin: Option<&str>) -> Check {
    let started = Instant::now();
    let mut at = url.to_string();
    let mut hops = 0;
    let (http_status, error) = loop {
        let mut req = agent.get(&at);
        if redirect::same_origin(&at, url) {
            if let Some(h) = authorization {
                req = req.header("Authorization", h);
            }
            if let Some(o) = origin {
                req = req.header("Origin", o);
            }
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(e) => break (None, Some(e.to_string())),
        };
        let status = resp.status().as_u16();
        if !redirect::is_redirect(status) {
            break (Some(status), None);
        }
        hops += 1;
        let location = resp
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        match redirect::resolve(&at, location) {
            Some(next) if hops <= redirect::MAX_HOPS => at = next,
            _ => {
                break (
                    Some(status),
                    Some("a redirect that cannot be followed".into()),
                )
            }
        }
    };
    let up = http_status.is_some_and(|s| (200..300).contains(&s));
    Check {
        state: if up { State::Up } else { State::Down },
        http_status,
        error,
        latency_ms: started.elapsed().as_millis() as u64,
        checked_at: SystemTime::now(),
    }
}

/// Probes everything once. Token servers are probed with whatever access token
/// is at hand: the poller never signs in itself (the token thread does). A model
/// that does not answer while `in_use` says an inference runs on it is `busy`.
pub fn poll_once(
    agent: &Agent,
    auth: &Auth,
    config: &Config,
    health: &Health,
    in_use: &dyn Fn(&str) -> bool,
) {
    for s in config.servers.values() {
        if let Some(uri) = &s.status_uri {
            let header = auth.current_header(s);
            let origin = auth.origin(s, header.as_deref());
            health.set(
                &s.id,
                probe(agent, uri, header.as_deref(), origin.as_deref()),
            );
        }
    }
    for m in config.models.values() {
        if let Some(uri) = &m.status_uri {
            let mut check = probe(agent, uri, None, None);
            if check.http_status.is_none() && in_use(&m.id) {
                check.state = State::Busy;
            }
            health.set(&m.id, check);
        }
    }
}

/// Starts the poller thread; `config` is read afresh each round so reloads take effect.
pub fn spawn(
    agent: Agent,
    auth: Arc<Auth>,
    config: impl Fn() -> Arc<Config> + Send + 'static,
    in_use: impl Fn(&str) -> bool + Send + 'static,
    health: Arc<Health>,
    interval: Duration,
) {
    let spawned = thread::Builder::new().name("health".into()).spawn(move || {
        auth.wait_first_round(Duration::from_secs(30));
        loop {
            poll_once(&agent, &auth, &config(), &health, &in_use);
            thread::sleep(interval);
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start the health poller: {e}");
    }
}
