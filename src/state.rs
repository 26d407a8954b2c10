//! The state shared by the dispatcher, the workers and the background threads,
//! and the options and directories it was built from.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::access::Access;
use crate::auth::Auth;
use crate::cache::{self, Cache};
use crate::config::Config;
use crate::cors::Cors;
use crate::front::{self, Tls};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::model::Slots;
use crate::upstream::Agents;

/// What the request path needs from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    /// Directory with servers.json and models.json (read again on SIGHUP).
    pub config_dir: PathBuf,
    /// Inference worker threads.
    pub workers: usize,
    /// Inferences that may wait for a worker before 503.
    pub queue: usize,
    /// Serve GET /status.
    pub status_page: bool,
    /// Pause between health polls.
    pub health_interval: Duration,
    /// How long in-flight inferences may run on after SIGTERM.
    pub grace_period: Duration,
    /// The inference cache; `None` when it is off.
    pub cache: Option<cache::Settings>,
}

/// The persistent state directory; it owns its private (0700) sub-directories.
#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// The directory at `root` (created on first use).
    pub fn new(root: &Path) -> StateDir {
        StateDir {
            root: root.to_path_buf(),
        }
    }

    /// The root, for stores that manage their own sub-directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `root/name`, created if missing and readable by this user only.
    pub fn sub(&self, name: &str) -> Result<PathBuf, String> {
        use std::os::unix::fs::PermissionsExt;
        let dir = self.root.join(name);
        std::fs::create_dir_all(&dir).map_err(|e| {
            format!(
                "the proxy needs a writable --state-dir: cannot create {}: {e}",
                dir.display()
            )
        })?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot restrict {}: {e}", dir.display()))?;
        Ok(dir)
    }
}

/// Everything a request handler may need.
pub struct App {
    config: RwLock<Arc<Config>>,
    /// PACS credentials and tokens.
    pub auth: Arc<Auth>,
    /// Who may ask: inbound credentials, the audit trail, per-caller counts.
    pub access: Access,
    /// Last health checks.
    pub health: Arc<Health>,
    /// Outgoing HTTP agents.
    pub agents: Agents,
    /// The options in force.
    pub options: Options,
    /// Where state lives.
    pub state_dir: StateDir,
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
    /// The inference cache (off when `options.cache` is `None`).
    pub cache: Cache,
    /// The listener's certificate, when serving HTTPS.
    pub tls: Option<Arc<Tls>>,
    /// Client connection counts, and answers that broke off.
    pub front: Arc<front::Shared>,
}

impl App {
    /// Builds the shared state around a loaded config.
    pub fn new(
        config: Config,
        options: Options,
        state_dir: StateDir,
        agents: Agents,
        cors: Cors,
        access: Access,
    ) -> App {
        App {
            cache: Cache::new(options.cache.clone()),
            auth: Arc::new(Auth::new(agents.auth.clone(), state_dir.root())),
            access,
            config: RwLock::new(Arc::new(config)),
            health: Arc::new(Health::default()),
            agents,
            options,
            state_dir,
            cors,
            workers_alive: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            queued: AtomicUsize::new(0),
            metrics: Metrics::default(),
            slots: Slots::default(),
            shutting_down: AtomicBool::new(false),
            tls: None,
            front: Arc::default(),
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

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::upstream::Timeouts;

    /// An App over an empty config, for handler tests.
    pub(crate) fn app() -> App {
        let config = Config {
            servers: Default::default(),
            models: Default::default(),
            default_server: String::new(),
        };
        let options = Options {
            config_dir: PathBuf::from("config"),
            workers: 2,
            queue: 4,
            status_page: false,
            health_interval: Duration::from_secs(30),
            grace_period: Duration::from_secs(30),
            cache: None,
        };
        let dir = std::env::temp_dir().join(format!("mp-state-{}", std::process::id()));
        let agents = Agents::new(&Timeouts::default(), None).expect("agents without a CA file");
        let cors = Cors::new(&["https://*.zhiva.ai".to_string()]);
        App::new(
            config,
            options,
            StateDir::new(&dir),
            agents,
            cors,
            Access::off(),
        )
    }
}
