//! The integration tests, one binary: each module drives the real `model-proxy`
//! binary over HTTP against real Orthanc servers and the Python fixtures in
//! `tests/fixtures/`. One binary, so the fixtures `common` shares (Orthanc, the
//! model API) start once per run instead of once per area.
//!
//! `cargo test --test integration -- inference::` runs one area.

mod common;

mod auth;
mod cache;
mod cli;
mod contract;
mod egress;
mod faults;
mod front;
mod fuzz_regressions;
mod inbound;
mod inference;
mod process;
mod tls;
mod upload;
