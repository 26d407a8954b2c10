//! The PACS client: WADO-RS retrievals, checked and handed out as multipart streams.

use std::time::Duration;

use ureq::{Agent, BodyReader};

use crate::auth::Auth;
use crate::config::{AuthType, Server};
use crate::error::{self, Code, ProxyError, Upstream};
use crate::ids::{describe_path, redact_uri, truncate};
use crate::multipart::{self, Multipart};
use crate::payload::Source;
use crate::redirect;

/// The Accept header of a WADO-RS retrieve of DICOM files.
pub const ACCEPT_DICOM: &str = "multipart/related; type=\"application/dicom\"";

/// The same, accepting the stored transfer syntax: for a PACS that cannot
/// transcode and answers 406 to the default (explicit VR little endian).
pub const ACCEPT_DICOM_ANY: &str =
    "multipart/related; type=\"application/dicom\"; transfer-syntax=*";

/// Pauses before retrying a failed PACS read that is safe to repeat.
const BACKOFF: [Duration; 2] = [Duration::from_millis(200), Duration::from_millis(800)];

/// Starts a WADO-RS retrieval of `path` (e.g. `/studies/1.2/series/1.3`) on `server`.
///
/// A token the PACS refuses is refreshed and the request retried once; a 406 is
/// retried once accepting any transfer syntax; redirects are followed (credentials
/// only to the server's own origin). With `retry`, a connection failure or a
/// 502/503/504 is retried with backoff: only safe before any byte has gone to
/// the model, so the caller decides.
pub fn retrieve(
    agent: &Agent,
    auth: &Auth,
    server: &Server,
    path: &str,
    retry: bool,
) -> Result<Multipart<BodyReader<'static>>, ProxyError> {
    let first = format!("{}{}", server.uri, path);
    let mut url = first.clone();
    let mut accept = ACCEPT_DICOM;
    let mut hops = 0;
    let uses_tokens = matches!(server.auth, AuthType::Token | AuthType::Zhiva);
    let mut refreshed = false;
    let mut pauses = BACKOFF.iter().filter(|_| retry);
    let (resp, status) = loop {
        // Credentials (and the Origin a token needs) go to the server's own origin only.
        let own = redirect::same_origin(&url, &first);
        let header = if own { auth.header(server)? } else { None };
        let mut req = agent.get(&url).header("Accept", accept);
        if let Some(h) = &header {
            req = req.header("Authorization", h);
        }
        if let Some(o) = auth.origin(server, header.as_deref()).filter(|_| own) {
            req = req.header("Origin", o);
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
            (406, _) if accept == ACCEPT_DICOM => {
                log::info!(
                    "server {}: HTTP 406 for the default transfer syntax; asking for any",
                    server.id
                );
                accept = ACCEPT_DICOM_ANY;
            }
            (s, _) if redirect::is_redirect(s) => {
                url = follow(server, &url, &resp, &mut hops)?;
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
        204 | 404 => {
            return Err(ProxyError::new(
                Code::PacsNotFound,
                format!("{} not found on server {}", describe_path(path), server.id),
            )
            .with_upstream_status(status))
        }
        401 | 403 => {
            return Err(ProxyError::new(
                Code::PacsAuthFailed,
                format!(
                    "server {} refused the proxy's credentials (HTTP {status}); check its login settings in servers.json",
                    server.id
                ),
            )
            .with_upstream_status(status))
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

/// The next URL of a redirect chain, or why it cannot be followed.
fn follow(
    server: &Server,
    url: &str,
    resp: &ureq::http::Response<ureq::Body>,
    hops: &mut usize,
) -> Result<String, ProxyError> {
    *hops += 1;
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bad = |why: String| {
        ProxyError::new(
            Code::PacsBadResponse,
            format!("server {} redirected (HTTP {status}) {why}", server.id),
        )
        .with_upstream_status(status)
    };
    if *hops > redirect::MAX_HOPS {
        return Err(bad(format!("more than {} times", redirect::MAX_HOPS)));
    }
    let next = redirect::resolve(url, location).ok_or_else(|| {
        bad(format!(
            "to {:?}, which cannot be followed",
            truncate(location)
        ))
    })?;
    log::info!(
        "server {}: HTTP {status}, following the redirect to {}",
        server.id,
        redact_uri(&next)
    );
    Ok(next)
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
