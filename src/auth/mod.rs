//! PACS credentials and the token lifecycle.
//!
//! `""` and `basicAuth` need no state. `token` and `zhivaAuth` exchange a one-off
//! auth token (given, or obtained by signing in) for a short-lived access token
//! and a refresh token, keep them fresh from a background thread, persist them in
//! the token store so a restart does not need the consumed auth token again, and
//! serialise every sign-in and refresh per server behind that server's lock.
//! No token, password or auth token is ever logged, shown or put in an error.
//!
//! Calls flow one way: this facade -> `tokens` (the state machine of one server)
//! -> `service` (the auth service), `jwt` (token timing), `store` (the files).

pub mod basic;
mod jwt;
mod service;
mod store;
mod tokens;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use serde::Serialize;
use ureq::Agent;

pub use basic::base64;
pub use jwt::jwt_times;
pub use tokens::TokenStatus;

use crate::config::{AuthType, Config, Server};
use crate::error::{Code, ProxyError};
use service::Service;
use store::TokenStore;
use tokens::{Counters, Ctx, Failure, Tokens};

/// One token server: its state behind its lock, its counters beside it.
#[derive(Default)]
struct Entry {
    tokens: Mutex<Tokens>,
    counts: Counters,
}

/// The credentials of every server, and the token lifecycle of those that use tokens.
pub struct Auth {
    agent: Agent,
    store: TokenStore,
    servers: Mutex<HashMap<String, Arc<Entry>>>,
    /// Set after the token thread's first round, so the first health poll has tokens to use.
    first_round: AtomicBool,
}

/// The auth state of one server on the status page.
#[derive(Serialize)]
#[serde(untagged)]
pub enum AuthStatus {
    /// No credentials, or static ones (`{"state": "none" | "static"}`).
    Fixed {
        /// `none` or `static`.
        state: &'static str,
    },
    /// A token server whose sign-in is under way right now.
    Busy {
        /// `signing-in`.
        state: &'static str,
    },
    /// A token server.
    Tokens(TokenStatus),
}

/// Token events of one server, for the metrics.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokenCounts {
    /// The server's id.
    pub server: String,
    /// Sign-ins and auth-token exchanges that succeeded.
    pub sign_ins: u64,
    /// Refreshes that succeeded.
    pub refreshes: u64,
    /// Attempts that failed.
    pub failures: u64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn uses_tokens(server: &Server) -> bool {
    matches!(server.auth, AuthType::Token | AuthType::Zhiva)
}

impl Auth {
    /// Credentials, calling the auth service through `agent`, with the token store under `state_dir`.
    pub fn new(agent: Agent, state_dir: &Path) -> Auth {
        Auth {
            agent,
            store: TokenStore::new(state_dir),
            servers: Mutex::new(HashMap::new()),
            first_round: AtomicBool::new(false),
        }
    }

    fn entry(&self, id: &str) -> Arc<Entry> {
        lock(&self.servers)
            .entry(id.to_string())
            .or_default()
            .clone()
    }

    fn ctx<'a>(&'a self, entry: &'a Entry, server: &'a Server) -> Ctx<'a> {
        Ctx {
            service: Service::new(&self.agent, server.origin.as_deref()),
            store: &self.store,
            counts: &entry.counts,
        }
    }

    /// The `Authorization` header value for requests to `server`, signing in or refreshing if needed.
    pub fn header(&self, server: &Server) -> Result<Option<String>, ProxyError> {
        match server.auth {
            AuthType::None => Ok(None),
            AuthType::Basic => Ok(Some(basic::header(server))),
            AuthType::Token | AuthType::Zhiva => {
                let entry = self.entry(&server.id);
                let access = lock(&entry.tokens).access(server, &self.ctx(&entry, server));
                access
                    .map(|a| Some(format!("Bearer {a}")))
                    .map_err(|f| auth_failed(server, &f))
            }
        }
    }

    /// The `Origin` to send with a request of `server` that carries `authorization`:
    /// the server's configured `origin`, else the `aud` of the token sent.
    pub fn origin(&self, server: &Server, authorization: Option<&str>) -> Option<String> {
        server.origin.clone().or_else(|| {
            authorization
                .filter(|_| uses_tokens(server))
                .and_then(|a| jwt::audience(jwt::bearer_value(a)))
        })
    }

    /// The header to probe with, without signing in or waiting for a sign-in in progress.
    pub fn current_header(&self, server: &Server) -> Option<String> {
        match server.auth {
            AuthType::None => None,
            AuthType::Basic => Some(basic::header(server)),
            AuthType::Token | AuthType::Zhiva => {
                let entry = self.entry(&server.id);
                let tokens = entry.tokens.try_lock().ok()?;
                tokens.current().map(|a| format!("Bearer {a}"))
            }
        }
    }

    /// The PACS refused `header`: forget that access token so the next call refreshes.
    pub fn rejected(&self, server: &Server, header: &str) {
        if uses_tokens(server) {
            lock(&self.entry(&server.id).tokens).rejected(header);
        }
    }

    /// Token events per server, sorted by server; never waits for a sign-in.
    pub fn counters(&self) -> Vec<TokenCounts> {
        let servers = lock(&self.servers);
        let mut v: Vec<_> = servers
            .iter()
            .map(|(id, e)| TokenCounts {
                server: id.clone(),
                sign_ins: e.counts.sign_ins.load(Ordering::Relaxed),
                refreshes: e.counts.refreshes.load(Ordering::Relaxed),
                failures: e.counts.failures.load(Ordering::Relaxed),
            })
            .collect();
        v.sort();
        v
    }

    /// After a config reload: re-read the store (a new authToken then wins) and retry failures at once.
    pub fn reload(&self) {
        let entries: Vec<Arc<Entry>> = lock(&self.servers).values().cloned().collect();
        for e in entries {
            lock(&e.tokens).reset();
        }
    }

    /// Waits (up to `limit`) for the token thread's first round.
    pub fn wait_first_round(&self, limit: Duration) {
        let until = Instant::now() + limit;
        while !self.first_round.load(Ordering::SeqCst) && Instant::now() < until {
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Background work for one round: refresh what is due, retry what failed.
    pub fn maintain(&self, config: &Config) {
        for server in config.servers.values().filter(|s| uses_tokens(s)) {
            let entry = self.entry(&server.id);
            lock(&entry.tokens).maintain(server, &self.ctx(&entry, server));
        }
    }

    /// The auth state of `server` for the status page: never a secret, never a wait.
    pub fn status(&self, server: &Server) -> AuthStatus {
        match server.auth {
            AuthType::None => AuthStatus::Fixed { state: "none" },
            AuthType::Basic => AuthStatus::Fixed { state: "static" },
            AuthType::Token | AuthType::Zhiva => {
                let entry = self.entry(&server.id);
                let status = match entry.tokens.try_lock() {
                    Ok(t) => AuthStatus::Tokens(t.status(&entry.counts)),
                    Err(_) => AuthStatus::Busy {
                        state: "signing-in",
                    },
                };
                status
            }
        }
    }
}

fn auth_failed(server: &Server, f: &Failure) -> ProxyError {
    ProxyError::new(
        Code::PacsAuthFailed,
        format!(
            "cannot sign in to server {}: {}; {}",
            server.id, f.message, f.action
        ),
    )
}

/// Starts the thread that keeps tokens fresh; `config` is read afresh each round.
pub fn spawn(auth: Arc<Auth>, config: impl Fn() -> Arc<Config> + Send + 'static) {
    let spawned = thread::Builder::new()
        .name("tokens".into())
        .spawn(move || loop {
            auth.maintain(&config());
            auth.first_round.store(true, Ordering::SeqCst);
            thread::sleep(Duration::from_secs(1));
        });
    if let Err(e) = spawned {
        log::error!("cannot start the token thread: {e}");
    }
}
