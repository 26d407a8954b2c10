//! Health: a background poller that checks every server's and model's `statusUri`
//! into shared state, so the status page never fans out per page view.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use ureq::Agent;

use crate::auth::Auth;
use crate::config::Config;

/// The outcome of the last probe of one status URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Answered 200.
    pub up: bool,
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

/// Probes one URL with an optional Authorization header.
pub fn probe(agent: &Agent, url: &str, authorization: Option<&str>) -> Check {
    let started = Instant::now();
    let mut req = agent.get(url);
    if let Some(h) = authorization {
        req = req.header("Authorization", h);
    }
    let (http_status, error) = match req.call() {
        Ok(resp) => (Some(resp.status().as_u16()), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Check {
        up: http_status == Some(200),
        http_status,
        error,
        latency_ms: started.elapsed().as_millis() as u64,
        checked_at: SystemTime::now(),
    }
}

/// Probes everything once. Token servers are probed with whatever access token
/// is at hand: the poller never signs in itself (the token thread does).
pub fn poll_once(agent: &Agent, auth: &Auth, config: &Config, health: &Health) {
    for s in config.servers.values() {
        if let Some(uri) = &s.status_uri {
            let header = auth.current_header(s);
            health.set(&s.id, probe(agent, uri, header.as_deref()));
        }
    }
    for m in config.models.values() {
        if let Some(uri) = &m.status_uri {
            health.set(&m.id, probe(agent, uri, None));
        }
    }
}

/// Starts the poller thread; `config` is read afresh each round so reloads take effect.
pub fn spawn(
    agent: Agent,
    auth: Arc<Auth>,
    config: impl Fn() -> Arc<Config> + Send + 'static,
    health: Arc<Health>,
    interval: Duration,
) {
    let spawned = thread::Builder::new().name("health".into()).spawn(move || {
        auth.wait_first_round(Duration::from_secs(30));
        loop {
            poll_once(&agent, &auth, &config(), &health);
            thread::sleep(interval);
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start the health poller: {e}");
    }
}
