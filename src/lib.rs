//! model-proxy as a library: every concern in its own module. The binary
//! (`main.rs`) only parses the command line and calls into it; the fuzz targets
//! and benchmarks reach the parsers through here.

pub mod auth;
pub mod cli;
pub mod config;
pub mod cors;
pub mod error;
pub mod front;
pub mod health;
pub mod ids;
pub mod inference;
pub mod metrics;
pub mod model;
pub mod multipart;
pub mod pacs;
pub mod payload;
pub mod plan;
pub mod routing;
pub mod server;
pub mod state;
pub mod status;
pub mod systemd;
pub mod time;
pub mod trust;
pub mod upstream;
