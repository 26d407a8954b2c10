//! One inference, end to end: plan -> fetch -> encode -> post -> relay.

use std::time::{Duration, Instant};

use crate::error::ProxyError;
use crate::model::{self, http::AnswerBody};
use crate::pacs::PacsSource;
use crate::payload::{pipeline, Format, PayloadReader};
use crate::plan::Plan;
use crate::state::App;

/// How long a request waits for a slot on a model with `maxConcurrent`.
const SLOT_WAIT: Duration = Duration::from_secs(120);

/// The model's answer, ready to stream back to the viewer.
pub struct Relay {
    /// The model's HTTP status.
    pub status: u16,
    /// The model's content type.
    pub content_type: Option<String>,
    /// The model's content length, if it gave one.
    pub length: Option<usize>,
    /// The model's body, still on the wire.
    pub body: AnswerBody,
    /// What went through, for the access log.
    pub stats: Stats,
}

/// Numbers for the access log.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// DICOM instances sent to the model.
    pub instances: u64,
    /// DICOM bytes sent to the model.
    pub dicom_bytes: u64,
    /// Time until the PACS answered the first retrieval.
    pub pacs_ms: u64,
    /// Time from the first PACS answer to the model's response headers.
    pub model_ms: u64,
}

/// Runs a planned inference: fetch, encode, post; the answer is ready to relay.
pub fn execute(app: &App, plan: &Plan) -> Result<Relay, ProxyError> {
    // Wait for the model's turn before touching the PACS.
    let _slot = app.slots.take(&plan.model, SLOT_WAIT)?;
    let started = Instant::now();
    let source = PacsSource {
        agent: &app.agents.pacs,
        auth: &app.auth,
        opened: false,
        server: &plan.server,
    };
    let format = if plan.model.multipart {
        Format::multipart()
    } else {
        Format::Json
    };
    let content_type = format.content_type();
    let mut payload = PayloadReader::new(source, &plan.layout, format);
    payload.prime()?;
    let pacs_took = started.elapsed();
    let spool = app.state_dir.sub("spool").map_err(ProxyError::internal)?;
    // The payload is read and encoded on a thread of its own while this one
    // writes it to the model; the scope ends once the body is all sent (or failed).
    let (posted, sent) = std::thread::scope(|s| {
        let mut blocks = match pipeline::start(s, &mut payload) {
            Ok(b) => b,
            Err(e) => return (Err(e), 0),
        };
        let posted = model::post(
            &app.agents.model,
            &plan.model,
            &content_type,
            &mut blocks,
            &spool,
        );
        (posted, blocks.sent)
    });
    app.metrics.bytes("dicom_from_pacs", payload.dicom_bytes);
    app.metrics.bytes("payload_to_model", sent);
    app.metrics.upstream("pacs", &plan.server.id, pacs_took);
    let answer = posted?;
    let model_took = started.elapsed().saturating_sub(pacs_took);
    app.metrics.upstream("model", &plan.model.id, model_took);
    let stats = Stats {
        instances: payload.instances,
        dicom_bytes: payload.dicom_bytes,
        pacs_ms: pacs_took.as_millis() as u64,
        model_ms: model_took.as_millis() as u64,
    };
    let content_type = answer.header("content-type").map(String::from);
    let length = answer.header("content-length").and_then(|v| v.parse().ok());
    Ok(Relay {
        status: answer.status,
        content_type,
        length,
        body: answer.body,
        stats,
    })
}
