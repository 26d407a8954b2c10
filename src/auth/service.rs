//! The zhiva auth service's three calls: sign in, exchange an auth token, refresh.

use serde_json::{json, Value};
use ureq::Agent;

use super::jwt::{audience, bearer_value};

/// How an auth-service call failed.
#[derive(Debug)]
pub(super) enum CallError {
    /// The service answered and said no (this HTTP status): the credential is spent or wrong.
    Rejected(u16),
    /// The service could not be reached, or failed on its side.
    Unavailable(String),
    /// servers.json names no endpoint for this call (this field).
    NotConfigured(&'static str),
}

/// A client of the auth service for one server.
pub(super) struct Service<'a> {
    agent: &'a Agent,
    /// The server's configured `origin`, which beats any token's `aud`.
    origin: Option<&'a str>,
}

impl<'a> Service<'a> {
    /// A client over `agent` (which carries the auth timeouts).
    pub(super) fn new(agent: &'a Agent, origin: Option<&'a str>) -> Service<'a> {
        Service { agent, origin }
    }

    /// Login and password -> a one-off auth token.
    pub(super) fn sign_in(
        &self,
        url: &str,
        login: &str,
        password: &str,
    ) -> Result<String, CallError> {
        let body = json!({"username": login, "password": password});
        let (_, body) = self.call(url, None, Some(&body))?;
        serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| v["token"].as_str().map(String::from))
            .ok_or_else(|| CallError::Unavailable("the answer holds no token".into()))
    }

    /// Auth token -> (access token, refresh token).
    pub(super) fn exchange(
        &self,
        url: Option<&str>,
        token: &str,
    ) -> Result<(String, Option<String>), CallError> {
        let url = url.ok_or(CallError::NotConfigured("signInTokenServer"))?;
        match self.call(url, Some(token), None)? {
            (Some(a), body) => {
                let refresh = body.trim();
                Ok((a, (!refresh.is_empty()).then(|| refresh.to_string())))
            }
            (None, _) => Err(CallError::Unavailable(
                "the answer holds no Authorization header".into(),
            )),
        }
    }

    /// Refresh token -> a new access token; `Ok(None)` when the answer carries none.
    pub(super) fn refresh(&self, url: &str, refresh: &str) -> Result<Option<String>, CallError> {
        self.call(url, Some(refresh), None).map(|(a, _)| a)
    }

    /// POSTs to the auth service; returns the access token of the answer's
    /// `Authorization` header, if any, and the body.
    fn call(
        &self,
        url: &str,
        bearer: Option<&str>,
        body: Option<&Value>,
    ) -> Result<(Option<String>, String), CallError> {
        let mut req = self.agent.post(url);
        if let Some(t) = bearer {
            req = req.header("Authorization", format!("Bearer {t}"));
        }
        // A token with an audience is accepted only from that Origin.
        let origin = self
            .origin
            .map(String::from)
            .or_else(|| bearer.and_then(audience));
        if let Some(o) = origin {
            req = req.header("Origin", o);
        }
        let sent = match body {
            Some(b) => req
                .header("Content-Type", "application/json")
                .send(b.to_string().as_bytes()),
            None => req.send_empty(),
        };
        let resp = sent.map_err(|e| CallError::Unavailable(e.to_string()))?;
        let status = resp.status().as_u16();
        let header = resp
            .headers()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(|v| bearer_value(v).to_string())
            .filter(|v| !v.is_empty());
        match status {
            200..=299 => {
                let mut body = String::new();
                let _ = std::io::Read::read_to_string(
                    &mut std::io::Read::take(resp.into_body().into_reader(), 64 * 1024),
                    &mut body,
                );
                Ok((header, body))
            }
            // zhiva's service answers 500 for an expired token: as much a "no" as a 401.
            400..=500 => Err(CallError::Rejected(status)),
            _ => Err(CallError::Unavailable(format!("HTTP {status}"))),
        }
    }
}
