//! The model client: posts a payload stream and classifies the model's answer;
//! limits concurrency per model; spools for models that need a Content-Length.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use ureq::http::Response;
use ureq::{Agent, Body, SendBody};

use crate::config::Model;
use crate::error::{self, Code, ProxyError, Upstream};

/// Posts `body` (of `content_type`) to the model; a 2xx answer is returned for relaying.
///
/// For a model with `contentLength`, the body is first spooled to an unlinked file
/// under `spool_dir` (memory stays bounded; nothing is left behind on a crash).
pub fn post(
    agent: &Agent,
    model: &Model,
    content_type: &str,
    body: &mut dyn Read,
    spool_dir: &Path,
) -> Result<Response<Body>, ProxyError> {
    let req = agent.post(&model.uri).header("Content-Type", content_type);
    let sent = if model.content_length {
        let file = spool(body, spool_dir)?;
        req.send(file)
    } else {
        req.send(SendBody::from_reader(body))
    };
    let resp = sent.map_err(|e| error::from_ureq(Upstream::Model, &e))?;
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

fn spool(body: &mut dyn Read, dir: &Path) -> Result<File, ProxyError> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let fail = |e: io::Error| {
        ProxyError::internal(format!(
            "cannot spool the model's request under {}: {e}",
            dir.display()
        ))
    };
    fs::create_dir_all(dir).map_err(fail)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(fail)?;
    let path = dir.join(format!(
        "{}-{}.json",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(fail)?;
    // The open handle keeps the data; the name is not needed and must not outlive us.
    let _ = fs::remove_file(&path);
    // A failure of the payload (the PACS, mostly) comes back as it was raised.
    io::copy(body, &mut file).map_err(|e| ProxyError::carried_by(&e).unwrap_or_else(|| fail(e)))?;
    file.flush().map_err(fail)?;
    file.rewind().map_err(fail)?;
    Ok(file)
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

/// Inferences running per model, for models with `maxConcurrent`.
#[derive(Default)]
pub struct Slots {
    busy: Mutex<HashMap<String, usize>>,
    freed: Condvar,
}

/// A taken slot; released on drop.
pub struct Slot<'a> {
    slots: &'a Slots,
    model: Option<String>,
}

impl Slots {
    /// Takes a slot on `model`, waiting up to `wait` for one; models without a limit always get one.
    pub fn take(&self, model: &Model, wait: Duration) -> Result<Slot<'_>, ProxyError> {
        let Some(limit) = model.max_concurrent else {
            return Ok(Slot {
                slots: self,
                model: None,
            });
        };
        let until = Instant::now() + wait;
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            let n = busy.entry(model.id.clone()).or_default();
            if *n < limit {
                *n += 1;
                return Ok(Slot {
                    slots: self,
                    model: Some(model.id.clone()),
                });
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProxyError::new(
                    Code::ModelBusy,
                    format!(
                        "model {} already runs its maximum of {limit} inference(s); retry shortly",
                        model.id
                    ),
                )
                .with_header("Retry-After", "10"));
            }
            busy = self
                .freed
                .wait_timeout(busy, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(m) = &self.model {
            let mut busy = self.slots.busy.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = busy.get_mut(m) {
                *n = n.saturating_sub(1);
            }
            self.slots.freed.notify_all();
        }
    }
}
