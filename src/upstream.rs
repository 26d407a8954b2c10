//! Outgoing HTTP: one ureq agent per kind of upstream, each with its own timeouts.

use std::time::Duration;

use ureq::Agent;

use crate::cli::Settings;
use crate::trust;

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
        let tls = trust::client_config(s.ca_file.as_deref())?;
        let pacs = base(s.connect_timeout)
            .timeout_recv_response(Some(s.pacs_timeout))
            .timeout_per_read(Some(s.pacs_timeout))
            .timeout_global(Some(s.pacs_total_timeout))
            .build();
        let model = base(s.connect_timeout)
            // The model reads its body as we write it; a model that stops reading is stuck.
            .timeout_per_write(Some(s.model_timeout))
            // Then it thinks: for minutes, by default.
            .timeout_recv_response(Some(s.model_timeout))
            .timeout_per_read(Some(s.model_timeout))
            .timeout_global(Some(s.model_total_timeout))
            .build();
        let short = Duration::from_secs(5);
        let probe = base(s.connect_timeout.min(short))
            .timeout_global(Some(short))
            .build();
        let auth = base(s.connect_timeout)
            .timeout_global(Some(s.auth_timeout))
            .build();
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
