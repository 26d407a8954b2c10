//! The model client: posts a payload stream and classifies the model's answer.

use std::io::Read;

use ureq::http::Response;
use ureq::{Agent, Body, SendBody};

use crate::config::Model;
use crate::error::{self, ProxyError, Upstream};

/// Posts `body` as the model's JSON request; a 2xx answer is returned for relaying.
pub fn post(
    agent: &Agent,
    model: &Model,
    body: &mut dyn Read,
) -> Result<Response<Body>, ProxyError> {
    let resp = agent
        .post(&model.uri)
        .header("Content-Type", "application/json")
        .send(SendBody::from_reader(body))
        .map_err(|e| error::from_ureq(Upstream::Model, &e))?;
    let status = resp.status().as_u16();
    if (200..300).contains(&status) {
        return Ok(resp);
    }
    let detail = excerpt(resp.into_body());
    Err(ProxyError::upstream_status(
        Upstream::Model,
        status,
        &detail,
    ))
}

/// The start of an error body, on one line, for the viewer's error message.
fn excerpt(body: Body) -> String {
    let mut buf = Vec::new();
    let _ = body.into_reader().take(512).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    one_line.trim().to_string()
}
