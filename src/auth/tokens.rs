//! The token state machine of one `token` or `zhivaAuth` server: which token to
//! send, when to refresh it, how to get a new one, and what to remember.
//!
//! Every method runs with the server's lock held, so concurrent requests never
//! sign in or refresh twice for one server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::jwt::{bearer_value, Access};
use super::service::{CallError, Service};
use super::store::{Stored, TokenStore};
use crate::config::Server;
use crate::time::{now_secs, rfc3339, rfc3339_secs};

/// Longest pause between retries against a failing auth service.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// Why a server cannot be signed in to, and what the operator should do.
#[derive(Clone, Debug)]
pub(super) struct Failure {
    pub(super) message: String,
    pub(super) action: &'static str,
    at: SystemTime,
}

impl Failure {
    fn new(message: impl Into<String>, action: &'static str) -> Failure {
        Failure {
            message: message.into(),
            action,
            at: SystemTime::now(),
        }
    }

    fn unavailable(what: &str, detail: &str) -> Failure {
        Failure::new(
            format!("the auth service is unavailable ({what}: {detail})"),
            "check that the auth service is up and reachable; the proxy keeps retrying",
        )
    }

    fn not_configured(field: &str) -> Failure {
        Failure::new(
            format!("servers.json names no {field} for this server"),
            "set it in servers.json, then reload (SIGHUP) or restart",
        )
    }
}

/// Token events of one server, readable without its lock (the metrics never wait on a sign-in).
#[derive(Default)]
pub(super) struct Counters {
    pub(super) sign_ins: AtomicU64,
    pub(super) refreshes: AtomicU64,
    pub(super) failures: AtomicU64,
}

/// What the token machine uses: the auth service, the store, the counters.
pub(super) struct Ctx<'a> {
    pub(super) service: Service<'a>,
    pub(super) store: &'a TokenStore,
    pub(super) counts: &'a Counters,
}

/// The token state of one server.
#[derive(Default)]
pub(super) struct Tokens {
    loaded: bool,
    access: Option<Access>,
    refresh: Option<String>,
    /// SHA-256 of the last auth token exchanged (the token itself is never stored).
    consumed: Option<String>,
    failure: Option<Failure>,
    retry_at: Option<Instant>,
    backoff: Duration,
    last_success: Option<SystemTime>,
}

/// The state of a token server on the status page: never a secret.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenStatus {
    state: &'static str,
    access_expires_at: Option<String>,
    has_refresh_token: bool,
    last_success_at: Option<String>,
    sign_ins: u64,
    refreshes: u64,
    error: Option<String>,
    action: Option<&'static str>,
    failing_since: Option<String>,
}

impl Tokens {
    /// The access token to send, signing in or refreshing if needed; during a
    /// backoff after a failure, that failure.
    pub(super) fn access(&mut self, server: &Server, ctx: &Ctx) -> Result<String, Failure> {
        self.load(server, ctx.store);
        if let Some(a) = self.access.as_ref().filter(|a| a.usable(now_secs())) {
            return Ok(a.value.clone());
        }
        if let (Some(f), Some(at)) = (&self.failure, self.retry_at) {
            if Instant::now() < at {
                return Err(f.clone());
            }
        }
        self.obtain(server, ctx)
    }

    /// The access token at hand, if any, without any call.
    pub(super) fn current(&self) -> Option<&str> {
        self.access.as_ref().map(|a| a.value.as_str())
    }

    /// The PACS refused `header`: forget that access token so the next call refreshes.
    pub(super) fn rejected(&mut self, header: &str) {
        if self
            .access
            .as_ref()
            .is_some_and(|a| a.value == bearer_value(header))
        {
            self.access = None;
            // A fresh attempt is owed now, whatever the backoff said.
            self.retry_at = None;
        }
    }

    /// After a config reload: re-read the store (a new authToken then wins) and retry at once.
    pub(super) fn reset(&mut self) {
        self.loaded = false;
        self.failure = None;
        self.retry_at = None;
        self.backoff = Duration::ZERO;
    }

    /// Background work: refresh ahead of expiry, retry after a failure's backoff.
    pub(super) fn maintain(&mut self, server: &Server, ctx: &Ctx) {
        self.load(server, ctx.store);
        let due = self.access.as_ref().is_none_or(|a| a.due(now_secs()));
        let waiting = self.retry_at.is_some_and(|at| Instant::now() < at);
        if due && !waiting {
            if let Err(f) = self.obtain(server, ctx) {
                log::warn!("server {}: {} ({})", server.id, f.message, f.action);
            }
        }
    }

    /// The status page's view.
    pub(super) fn status(&self, counts: &Counters) -> TokenStatus {
        let state = match (&self.failure, &self.access) {
            (Some(_), _) => "failing",
            (None, Some(a)) if a.alive(now_secs()) => "ok",
            _ => "pending",
        };
        TokenStatus {
            state,
            access_expires_at: self.access.as_ref().and_then(|a| a.exp).map(rfc3339_secs),
            has_refresh_token: self.refresh.is_some(),
            last_success_at: self.last_success.map(rfc3339),
            sign_ins: counts.sign_ins.load(Ordering::Relaxed),
            refreshes: counts.refreshes.load(Ordering::Relaxed),
            error: self.failure.as_ref().map(|f| f.message.clone()),
            action: self.failure.as_ref().map(|f| f.action),
            failing_since: self.failure.as_ref().map(|f| rfc3339(f.at)),
        }
    }

    fn load(&mut self, server: &Server, store: &TokenStore) {
        if self.loaded {
            return;
        }
        self.loaded = true;
        if let Some(s) = store.load(&server.id) {
            self.access = s.access.map(Access::new);
            self.refresh = s.refresh;
            self.consumed = s.consumed;
        }
        // A newly minted auth token in servers.json wins at once: drop the stored
        // access token so the next call exchanges it (the refresh token stays as a fallback).
        if self.unused_auth_token(server).is_some() {
            self.access = None;
        }
    }

    fn save(&self, server: &Server, store: &TokenStore) {
        let stored = Stored {
            access: self.access.as_ref().map(|a| a.value.clone()),
            refresh: self.refresh.clone(),
            consumed: self.consumed.clone(),
        };
        if let Err(err) = store.save(&server.id, &stored) {
            log::error!(
                "server {}: cannot save its tokens ({err}); a restart will need a new sign-in",
                server.id
            );
        }
    }

    /// Gets a new access token the best way available, and records how that went.
    fn obtain(&mut self, server: &Server, ctx: &Ctx) -> Result<String, Failure> {
        let result = self.try_obtain(server, ctx);
        match &result {
            Ok(_) => {
                self.failure = None;
                self.retry_at = None;
                self.backoff = Duration::ZERO;
                self.last_success = Some(SystemTime::now());
            }
            Err(f) => {
                ctx.counts.failures.fetch_add(1, Ordering::Relaxed);
                self.backoff = (self.backoff * 2).clamp(Duration::from_secs(1), MAX_BACKOFF);
                self.retry_at = Some(Instant::now() + self.backoff);
                self.failure = Some(f.clone());
            }
        }
        self.save(server, ctx.store);
        result
    }

    /// A new auth token from servers.json first, then the refresh token, then a sign-in.
    fn try_obtain(&mut self, server: &Server, ctx: &Ctx) -> Result<String, Failure> {
        let token_url = server.sign_in_token_server.as_deref();
        if let Some((token, fp)) = self.unused_auth_token(server) {
            match ctx.service.exchange(token_url, token) {
                Ok((a, refresh)) => {
                    self.consumed = Some(fp);
                    self.refresh = refresh.or(self.refresh.take());
                    ctx.counts.sign_ins.fetch_add(1, Ordering::Relaxed);
                    log::info!("server {}: exchanged the configured auth token", server.id);
                    return Ok(self.keep(a));
                }
                Err(CallError::Rejected(status)) => {
                    // Spent or invalid: never try this one again.
                    self.consumed = Some(fp);
                    log::warn!(
                        "server {}: the auth service refused the configured auth token (HTTP {status})",
                        server.id
                    );
                }
                Err(CallError::Unavailable(d)) => {
                    return Err(Failure::unavailable("token exchange", &d))
                }
                Err(CallError::NotConfigured(field)) => return Err(Failure::not_configured(field)),
            }
        }
        if let (Some(refresh), Some(url)) = (self.refresh.clone(), server.refresh_server.as_deref())
        {
            match ctx.service.refresh(url, &refresh) {
                Ok(Some(a)) => {
                    ctx.counts.refreshes.fetch_add(1, Ordering::Relaxed);
                    log::debug!("server {}: refreshed its access token", server.id);
                    return Ok(self.keep(a));
                }
                Ok(None) | Err(CallError::Rejected(_) | CallError::NotConfigured(_)) => {
                    log::info!(
                        "server {}: the refresh token was refused; signing in again",
                        server.id
                    );
                    self.refresh = None;
                }
                Err(CallError::Unavailable(d)) => return Err(Failure::unavailable("refresh", &d)),
            }
        }
        let (Some(login), Some(password), Some(url)) = (
            server.login.as_deref(),
            server.password.as_deref(),
            server.sign_in_server.as_deref(),
        ) else {
            return Err(Failure::new(
                "the one-off authToken was already used or refused, and no valid refresh token is left",
                "mint a new auth token, set it as authToken in servers.json, then reload (SIGHUP) or restart",
            ));
        };
        let token = match ctx.service.sign_in(url, login, password) {
            Ok(t) => t,
            Err(CallError::Rejected(status)) => {
                return Err(Failure::new(
                    format!("the auth service refused the login for this server (HTTP {status})"),
                    "check login and password in servers.json (a user without edit rights is enough), then reload",
                ))
            }
            Err(CallError::Unavailable(d)) => return Err(Failure::unavailable("sign-in", &d)),
            Err(CallError::NotConfigured(field)) => return Err(Failure::not_configured(field)),
        };
        match ctx.service.exchange(token_url, &token) {
            Ok((a, refresh)) => {
                self.refresh = refresh;
                ctx.counts.sign_ins.fetch_add(1, Ordering::Relaxed);
                log::info!("server {}: signed in", server.id);
                Ok(self.keep(a))
            }
            Err(CallError::Rejected(status)) => Err(Failure::new(
                format!("the auth service refused its own fresh auth token (HTTP {status})"),
                "check signInTokenServer in servers.json and the auth service's logs",
            )),
            Err(CallError::Unavailable(d)) => Err(Failure::unavailable("token exchange", &d)),
            Err(CallError::NotConfigured(field)) => Err(Failure::not_configured(field)),
        }
    }

    fn keep(&mut self, a: String) -> String {
        self.access = Some(Access::new(a.clone()));
        a
    }

    /// The configured auth token and its fingerprint, if it has not been exchanged yet.
    fn unused_auth_token<'a>(&self, server: &'a Server) -> Option<(&'a str, String)> {
        let token = server.auth_token.as_deref().filter(|t| !t.is_empty())?;
        let fp = fingerprint(token);
        (self.consumed.as_deref() != Some(fp.as_str())).then_some((token, fp))
    }
}

/// SHA-256 in hex: how a consumed auth token is remembered.
fn fingerprint(secret: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}
