//! The model client: posts the payload and classifies the model's answer;
//! limits concurrency per model; spools for models that need a Content-Length.
//! The HTTP exchange itself is [`http`].

pub mod http;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::config::Model;
use crate::error::{Code, ProxyError, Upstream};
use crate::ids::redact_uri;
use crate::payload::Blocks;
use crate::redirect;
use http::{Answer, AnswerBody, Client, Upload};

/// Posts `body` (of `content_type`) to the model; a 2xx answer is returned for relaying.
///
/// For a model with `contentLength`, the body is first spooled to an unlinked file
/// under `spool_dir` (memory stays bounded; nothing is left behind on a crash);
/// such a body can be sent again, so a 307 or 308 is followed. Any other redirect
/// of the POST is a clear error naming where it points: a streamed body cannot
/// be replayed.
pub fn post(
    client: &Client,
    model: &Model,
    content_type: &str,
    body: &mut Blocks,
    spool_dir: &Path,
) -> Result<Answer, ProxyError> {
    let mut url = model.uri.clone();
    let answer = if model.content_length {
        let mut file = spool(body, spool_dir)?;
        let len = file
            .metadata()
            .map_err(|e| ProxyError::internal(format!("cannot size the spooled request: {e}")))?
            .len();
        let mut hops = 0;
        let mut answer = loop {
            let answer = client.post(&url, content_type, Upload::File(&mut file, len))?;
            let status = answer.status;
            if !matches!(status, 307 | 308) || hops == redirect::MAX_HOPS {
                break answer;
            }
            let Some(next) = location(&url, &answer) else {
                break answer;
            };
            hops += 1;
            log::info!(
                "model {}: HTTP {status}, sending the request again to {}",
                model.id,
                redact_uri(&next)
            );
            file.rewind().map_err(|e| {
                ProxyError::internal(format!("cannot rewind the spooled request: {e}"))
            })?;
            url = next;
        };
        answer.body.hold(file);
        answer
    } else {
        client.post(&url, content_type, Upload::Blocks(body))?
    };
    let status = answer.status;
    if (200..300).contains(&status) {
        return Ok(answer);
    }
    if redirect::is_redirect(status) {
        let to = location(&url, &answer).unwrap_or_else(|| "nowhere it could follow".into());
        let why = if model.content_length && matches!(status, 307 | 308) {
            format!("more than {} times", redirect::MAX_HOPS)
        } else {
            "a POST whose body was streamed cannot be replayed; set the model's uri to the target, or contentLength: true for 307/308".into()
        };
        return Err(ProxyError::new(
            Code::ModelError,
            format!(
                "the model redirected its POST (HTTP {status}) to {}: {why}",
                redact_uri(&to)
            ),
        )
        .with_upstream_status(status));
    }
    let detail = excerpt(answer.body);
    Err(ProxyError::upstream_status(
        Upstream::Model,
        status,
        &detail,
    ))
}

/// Where a redirect points, resolved against the URL that answered.
fn location(url: &str, answer: &Answer) -> Option<String> {
    redirect::resolve(url, answer.header("location")?)
}

/// Writes the payload to an unlinked file, a block per write.
fn spool(body: &mut Blocks, dir: &Path) -> Result<File, ProxyError> {
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
    while let Some((block, _)) = body.next()? {
        file.write_all(block).map_err(fail)?;
    }
    file.rewind().map_err(fail)?;
    Ok(file)
}

/// The start of an error body, on one line, for the viewer's error message.
fn excerpt(body: AnswerBody) -> String {
    let mut buf = Vec::new();
    let _ = body.take(512).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    one_line.trim().to_string()
}

/// Inferences running per model: bounded for models with `maxConcurrent`, and
/// known for every model (the health poller tells "busy" from "down" by it).
#[derive(Default)]
pub struct Slots {
    busy: Mutex<HashMap<String, usize>>,
    freed: Condvar,
}

/// A taken slot; released on drop.
pub struct Slot<'a> {
    slots: &'a Slots,
    model: String,
}

impl Slots {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.busy.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes a slot on `model`, waiting up to `wait` for one; models without a limit always get one.
    pub fn take(&self, model: &Model, wait: Duration) -> Result<Slot<'_>, ProxyError> {
        let limit = model.max_concurrent.unwrap_or(usize::MAX);
        let until = Instant::now() + wait;
        let mut busy = self.lock();
        loop {
            let n = busy.entry(model.id.clone()).or_default();
            if *n < limit {
                *n += 1;
                return Ok(Slot {
                    slots: self,
                    model: model.id.clone(),
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

    /// Whether an inference is running on `model` right now.
    pub fn in_use(&self, model: &str) -> bool {
        self.lock().get(model).is_some_and(|n| *n > 0)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut busy = self.slots.lock();
        if let Some(n) = busy.get_mut(&self.model) {
            *n = n.saturating_sub(1);
        }
        self.slots.freed.notify_all();
    }
}
