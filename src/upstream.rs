//! Outgoing HTTP: one ureq agent per kind of upstream, each with its own timeouts.

use std::time::Duration;

use ureq::Agent;

use crate::trust;

/// How long each kind of upstream may take.
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP/TLS connect, every upstream.
    pub connect: Duration,
    /// Longest silence from a PACS (waiting for headers or between reads).
    pub pacs: Duration,
    /// Longest silence from a model (it may think this long before answering).
    pub model: Duration,
    /// Longest whole exchange with a PACS.
    pub pacs_total: Duration,
    /// Longest whole exchange with a model (upload, thinking, answer).
    pub model_total: Duration,
    /// Longest exchange with the auth service.
    pub auth: Duration,
}

impl Default for Timeouts {
    /// The documented defaults.
    fn default() -> Timeouts {
        let s = Duration::from_secs;
        Timeouts {
            connect: s(10),
            pacs: s(60),
            model: s(600),
            pacs_total: s(1800),
            model_total: s(3600),
            auth: s(30),
        }
    }
}

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
    /// Builds the agents; fails only on an unreadable CA file.
    pub fn new(t: &Timeouts, ca_file: Option<&std::path::Path>) -> Result<Agents, String> {
        let tls = trust::client_config(ca_file)?;
        let pacs = base(t.connect)
            .timeout_recv_response(Some(t.pacs))
            .timeout_per_read(Some(t.pacs))
            .timeout_global(Some(t.pacs_total))
            .build();
        let model = base(t.connect)
            // The model reads its body as we write it; a model that stops reading is stuck.
            .timeout_per_write(Some(t.model))
            // Then it thinks: for minutes, by default.
            .timeout_recv_response(Some(t.model))
            .timeout_per_read(Some(t.model))
            .timeout_global(Some(t.model_total))
            .build();
        let short = Duration::from_secs(5);
        let probe = base(t.connect.min(short))
            .timeout_global(Some(short))
            .build();
        let auth = base(t.connect).timeout_global(Some(t.auth)).build();
        let agent = |c| trust::agent(c, tls.clone());
        Ok(Agents {
            pacs: agent(pacs),
            model: agent(model),
            probe: agent(probe),
            auth: agent(auth),
        })
    }
}

fn base(connect: Duration) -> ureq::config::ConfigBuilder<ureq::typestate::AgentScope> {
    Agent::config_builder()
        // Upstream error statuses are answers to classify, not transport errors.
        .http_status_as_error(false)
        .timeout_connect(Some(connect))
        .max_redirects(0)
        // Orthanc drops idle keep-alive connections after 1 s; reusing one fails the request.
        .max_idle_age(Duration::from_millis(500))
        .user_agent(concat!("model-proxy/", env!("CARGO_PKG_VERSION")))
}
