//! model-proxy: between a DICOM viewer, DICOMweb PACS servers and AI model APIs.
//!
//! A request flows one way:
//! `request -> route -> plan -> fetch -> encode -> post -> relay`.
//! The router validates every id in the URL; the plan resolves the model and the
//! server and refuses what cannot work, before any upstream is contacted; the
//! PACS answer is parsed as it streams in and each DICOM part is re-encoded on
//! the fly into the model's request body; the model's answer is relayed as it
//! arrives.
//!
//! The module map (the README's Development section opens with the same; a
//! test keeps the two equal):
//!
//! ```text
//! src/
//!   main.rs        calls cli::run, nothing else
//!   cli.rs         flags and ZHIVA_* environment; check-config, healthcheck, serve
//!   config/        servers.json and models.json: fields (the lenient reader), servers,
//!                  models, schema (the typed config), jsonc (comments, trailing commas)
//!   ids.rs         UUID and DICOM UID checks; URIs without credentials
//!   routing.rs     method + target -> Route (a page or an inference) and its metric label
//!   filters.rs     data-filters: the query's two browser encodings and the POST body
//!   plan.rs        inference + config + data filters -> the body's layout, checked
//!   pacs.rs        WADO-RS client (auth, retries before the first byte, 406, empty answers)
//!   redirect.rs    Location resolution, hop limit, credentials only to the same origin
//!   multipart.rs   streaming multipart/related parser
//!   payload/       the model's body: layout (the six model types), encode (scalar, SSSE3,
//!                  AVX2), reader (the state machine), pipeline (its own thread)
//!   model/         the model client: post, spool, per-model concurrency; http (the
//!                  HTTP/1.1 exchange, written by hand over pooled connections)
//!   inference.rs   plan -> fetch -> encode -> post -> relay
//!   access/        who may ask: inbound zhiva tokens (jwt) and API keys (keys), the
//!                  audit trail (audit), the client address from the front (stamp)
//!   cache/         the inference cache: key (what a plan means), entry (one file:
//!                  tee, atomic rename, checked reads), flight (single-flight),
//!                  janitor (TTL, LRU by size, from the directory alone)
//!   auth/          PACS credentials: facade -> tokens (state machine) -> service
//!                  (auth service calls), jwt (timing), store (0600 files), basic
//!   health.rs      background health poller
//!   status.rs      the status page
//!   server/        start-up and dispatcher, pool (workers, cache readers, queues),
//!                  cached (hits, single-flight, tee, purge, prefetch), body (bounded
//!                  reads), pages (healthz, readyz, status, metrics, preflight), reply
//!                  (the one writer: CORS, access log, metrics)
//!   front/         the public listener in front of tiny_http: head (request and response
//!                  heads, framing rules, chunked), conn (one connection, one request at a
//!                  time), conns (caps, eviction), tls (certificate, expiry)
//!   trust.rs       upstream TLS verification (roots, CA file, pinning)
//!   tunnel.rs      model connections through the environment's HTTP CONNECT proxy
//!   upstream.rs    a ureq agent per kind of upstream, with its timeouts; the model
//!                  connections (plain or TLS) and their keep-alive pool
//!   state.rs       App (the shared state), Options, StateDir
//!   error.rs       Code (the closed set of error codes) and ProxyError
//!   metrics.rs     Prometheus counters and histograms
//!   cors.rs, time.rs, systemd.rs
//! ```
//!
//! The library exposes only [`run`] (the whole program, for `main.rs`) and
//! [`parsers`] (the code that faces untrusted input, for the fuzz targets).

#![deny(unsafe_code)]

mod access;
mod auth;
mod cache;
mod cli;
mod config;
mod cors;
mod error;
mod filters;
mod front;
mod health;
mod ids;
mod inference;
mod metrics;
mod model;
mod multipart;
mod pacs;
mod payload;
mod plan;
mod redirect;
mod routing;
mod server;
mod state;
mod status;
mod systemd;
mod time;
mod trust;
mod tunnel;
mod upstream;

pub use cli::run;

/// The code that parses untrusted input, for the fuzz targets in `tests/fuzz`.
pub mod parsers {
    pub use crate::access::{access_claims, client, parse_keys, parse_pem, rsa_spki};
    pub use crate::auth::{base64, jwt_times};
    pub use crate::config::from_texts;
    pub use crate::config::jsonc::{line_col, to_strict};
    pub use crate::error::Code;
    pub use crate::front::head::{
        head_end, parse_request, parse_response, Chunked, Framing, Limits, RequestHead, LIMITS,
    };
    pub use crate::front::not_after;
    pub use crate::ids::{is_dicom_uid, is_uuid};
    pub use crate::multipart::{boundary, find, Multipart};
    pub use crate::payload::encode::{
        encode_at, encode_bytes, encode_into, encode_scalar, Level, LEVELS,
    };
    pub use crate::routing::{route, InferenceRequest, Page, Route};
}

#[cfg(test)]
mod tests {
    /// The module map in the crate doc above and in the README are the same text,
    /// and every module declared here is on it.
    #[test]
    fn module_map_matches_the_readme() {
        let lib = include_str!("lib.rs");
        let doc: String = lib
            .lines()
            .filter_map(|l| l.strip_prefix("//!"))
            .map(|l| l.strip_prefix(' ').unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let block = |text: &str, open: &str| -> String {
            let start = text.find(open).expect("a module map block") + open.len();
            let end = start + text[start..].find("```").expect("closed block");
            text[start..end].trim().to_string()
        };
        let ours = block(&doc, "```text\n");
        let readme = include_str!("../README.md");
        let dev = &readme[readme
            .find("\n## Development")
            .expect("README Development section")..];
        // The README's map goes on with tests/ and scripts/.
        assert!(
            block(dev, "```\n").starts_with(&ours),
            "README and lib.rs module maps differ"
        );
        for line in lib.lines() {
            if let Some(m) = line.strip_prefix("mod ").and_then(|m| m.strip_suffix(';')) {
                assert!(
                    ours.contains(&format!("{m}.rs")) || ours.contains(&format!("{m}/")),
                    "module {m} is not on the map"
                );
            }
        }
    }
}
