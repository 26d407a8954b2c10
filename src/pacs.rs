//! The PACS client: WADO-RS retrievals, checked and handed out as multipart streams.

use std::time::Duration;

use ureq::{Agent, BodyReader};

use crate::auth::Auth;
use crate::config::{AuthType, Server};
use crate::error::{self, Code, ProxyError, Upstream};
use crate::ids::describe_path;
use crate::multipart::{self, Multipart};
use crate::payload::Source;

/// The Accept header of a WADO-RS retrieve of DICOM files.
pub const ACCEPT_DICOM: &str = "multipart/related; type=\"application/dicom\"";

/// Pauses before retrying a failed PACS read that is safe to repeat.
const BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(800)];

/// Starts a WADO-RS retrieval of `path` (e.g. `/studies/1.2/series/1.3`) on `server`.
/// A token the PACS refuses is refreshed and the request retried once. With
/// `retry`, a connection failure or a 502/503/504 is retried with backoff: only
/// safe before any byte has gone to the model, so the caller decides.
pub fn retrieve(
    agent: &Agent,
    auth: &Auth,
    server: &Server,
    path: &str,
    retry: bool,
) -> Result<Multipart<BodyReader<'static>>, ProxyError> {
    let url = format!("{}{}", server.uri, path);
    let uses_tokens = matches!(server.auth, AuthType::Token | AuthType::Zhiva);
    let mut refreshed = false;
    let mut pauses = BACKOFF.iter().filter(|_| retry);
    let (resp, status) = loop {
        let header = auth.header(server)?;
        let mut req = agent.get(&url).header("Accept", ACCEPT_DICOM);
        if let Some(h) = &header {
            req = req.header("Authorization", h);
        }
        let resp = match req.call() {
            Ok(r) => r,
            Err(e) => {
                let err = error::from_ureq(Upstream::Pacs, &e);
                // A timeout is not retried: it would multiply the wait.
                match pauses.next() {
                    Some(p) if err.code == Code::PacsUnreachable => {
                        log::info!("server {}: {}; retrying", server.id, err.message);
                        std::thread::sleep(*p);
                        continue;
                    }
                    _ => return Err(err),
                }
            }
        };
        let status = resp.status().as_u16();
        match (status, header) {
            (401 | 403, Some(h)) if uses_tokens && !refreshed => {
                refreshed = true;
                auth.rejected(server, &h);
            }
            (502..=504, _) => match pauses.next() {
                Some(p) => {
                    log::info!("server {}: HTTP {status}; retrying", server.id);
                    std::thread::sleep(*p);
                }
                None => break (resp, status),
            },
            _ => break (resp, status),
        }
    };
    match status {
        200 => {}
        404 => {
            return Err(ProxyError::new(
                Code::PacsNotFound,
                format!("{} not found on server {}", describe_path(path), server.id),
            ))
        }
        401 | 403 => {
            let e = ProxyError::new(Code::PacsAuthFailed,
                format!(
                    "server {} refused the proxy's credentials (HTTP {status}); check its login settings in servers.json",
                    server.id
                ),
            );
            return Err(e.with_upstream_status(status));
        }
        _ => return Err(ProxyError::upstream_status(Upstream::Pacs, status, "")),
    }
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let Some(boundary) = multipart::boundary(&content_type) else {
        return Err(ProxyError::new(
            Code::PacsBadResponse,
            format!("the pacs answered {content_type:?} where multipart/related was expected"),
        ));
    };
    Ok(Multipart::new(resp.into_body().into_reader(), &boundary))
}

/// A payload source reading one server.
pub struct PacsSource<'a> {
    /// The PACS agent.
    pub agent: &'a Agent,
    /// Credentials.
    pub auth: &'a Auth,
    /// Whether a retrieval has been started (later ones are not retried).
    pub opened: bool,
    /// The server to read.
    pub server: &'a Server,
}

impl Source for PacsSource<'_> {
    type Body = BodyReader<'static>;

    fn open(&mut self, path: &str) -> Result<Multipart<Self::Body>, ProxyError> {
        // Only the first retrieval comes before any byte has gone to the model.
        let retry = !self.opened;
        self.opened = true;
        retrieve(self.agent, self.auth, self.server, path, retry)
    }

    fn server(&self) -> &str {
        &self.server.id
    }
}
