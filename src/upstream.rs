//! Outgoing HTTP: one ureq agent per kind of upstream, each with its own timeouts.

use std::path::Path;
use std::time::Duration;

use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::Agent;

use crate::cli::Settings;

/// The agents for PACS, models and health probes.
#[derive(Clone)]
pub struct Agents {
    /// WADO-RS retrievals.
    pub pacs: Agent,
    /// Model posts.
    pub model: Agent,
    /// Health probes: short timeouts throughout.
    pub probe: Agent,
    /// The auth service.
    pub auth: Agent,
}

impl Agents {
    /// Builds the agents from the settings; fails only on an unreadable CA file.
    pub fn new(s: &Settings) -> Result<Agents, String> {
        let tls = tls_config(s.ca_file.as_deref())?;
        let pacs = base(&tls, s.connect_timeout)
            .timeout_recv_response(Some(s.pacs_timeout))
            .timeout_per_read(Some(s.pacs_timeout))
            .build()
            .new_agent();
        let model = base(&tls, s.connect_timeout)
            // The model reads its body as we write it; a model that stops reading is stuck.
            .timeout_per_write(Some(s.model_timeout))
            // Then it thinks: for minutes, by default.
            .timeout_recv_response(Some(s.model_timeout))
            .timeout_per_read(Some(s.model_timeout))
            .build()
            .new_agent();
        let short = Duration::from_secs(5);
        let probe = base(&tls, s.connect_timeout.min(short))
            .timeout_global(Some(short))
            .build()
            .new_agent();
        let auth = base(&tls, s.connect_timeout)
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .new_agent();
        Ok(Agents {
            pacs,
            model,
            probe,
            auth,
        })
    }
}

fn base(
    tls: &TlsConfig,
    connect: Duration,
) -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    Agent::config_builder()
        // Upstream error statuses are answers to classify, not transport errors.
        .http_status_as_error(false)
        .timeout_connect(Some(connect))
        .max_redirects(0)
        // Orthanc drops idle keep-alive connections after 1 s; reusing one fails the request.
        .max_idle_age(Duration::from_millis(500))
        .user_agent(concat!("model-proxy/", env!("CARGO_PKG_VERSION")))
        .tls_config(tls.clone())
}

/// Mozilla's roots, plus the certificates of `ca_file` when given (e.g. a local
/// PACS's self-signed `trusted.crt`). Nothing is ever accepted unverified.
pub fn tls_config(ca_file: Option<&Path>) -> Result<TlsConfig, String> {
    let Some(path) = ca_file else {
        return Ok(TlsConfig::builder().build());
    };
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read CA file {}: {e}", path.display()))?;
    let extra: Vec<Certificate<'static>> = ureq::tls::parse_pem(&pem)
        .filter_map(|item| match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    if extra.is_empty() {
        return Err(format!(
            "CA file {} holds no PEM certificate",
            path.display()
        ));
    }
    let roots = webpki_root_certs::TLS_SERVER_ROOT_CERTS
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).to_owned())
        .chain(extra);
    Ok(TlsConfig::builder()
        .root_certs(RootCerts::from(roots))
        .build())
}
