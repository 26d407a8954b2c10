//! The state shared by the dispatcher, the workers and the background thread.

use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, RwLock};

use crate::auth::Auth;
use crate::cli::Settings;
use crate::config::Config;
use crate::cors::Cors;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::model::Slots;
use crate::upstream::Agents;

/// Everything a request handler may need.
pub struct App {
    config: RwLock<Arc<Config>>,
    /// PACS credentials and tokens.
    pub auth: Arc<Auth>,
    /// Last health checks.
    pub health: Arc<Health>,
    /// Outgoing HTTP agents.
    pub agents: Agents,
    /// The merged settings.
    pub settings: Settings,
    /// Allowed origins.
    pub cors: Cors,
    /// Worker threads currently running (for /readyz).
    pub workers_alive: AtomicUsize,
    /// Inferences queued or running.
    pub in_flight: AtomicUsize,
    /// Inferences waiting for a worker.
    pub queued: AtomicUsize,
    /// Prometheus counters.
    pub metrics: Metrics,
    /// Per-model concurrency limits.
    pub slots: Slots,
    /// SIGTERM received.
    pub shutting_down: AtomicBool,
}

impl App {
    /// Builds the shared state around a loaded config.
    pub fn new(config: Config, settings: Settings, agents: Agents) -> App {
        App {
            auth: Arc::new(Auth::new(agents.auth.clone(), &settings.state_dir)),
            config: RwLock::new(Arc::new(config)),
            health: Arc::new(Health::default()),
            agents,
            cors: Cors::new(&settings.allowed_origins),
            settings,
            workers_alive: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            metrics: Metrics::default(),
            slots: Slots::default(),
            shutting_down: AtomicBool::new(false),
        }
    }

    /// The config in force; a snapshot, so a reload never changes a request half-way.
    pub fn config(&self) -> Arc<Config> {
        match self.config.read() {
            Ok(c) => c.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the config (after it has been validated).
    pub fn set_config(&self, config: Config) {
        match self.config.write() {
            Ok(mut c) => *c = Arc::new(config),
            Err(poisoned) => *poisoned.into_inner() = Arc::new(config),
        }
    }
}
