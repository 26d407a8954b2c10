//! Reading a request body without letting a slow client hold a worker.

use std::io::Read;
use std::thread;
use std::time::Duration;

use crossbeam_channel::bounded;
use tiny_http::Request;

use super::reply::{send, Arrival, Reply};
use crate::error::{Code, ProxyError};
use crate::plan::MAX_BODY;
use crate::state::App;

/// Reads the body on a thread of its own, so that a client that stalls its body
/// cannot hold a worker: `None` when it has not arrived within `limit` (the
/// reader thread then answers the late client itself).
pub fn read_within(
    app: &std::sync::Arc<App>,
    mut rq: Request,
    arrival: Arrival,
    limit: Duration,
) -> Option<(Request, Arrival, Result<Vec<u8>, ProxyError>)> {
    let (tx, rx) = bounded(1);
    let late = app.clone();
    let spawned = thread::Builder::new().name("body".into()).spawn(move || {
        let body = read(&mut rq);
        if let Err(crossbeam_channel::SendError((rq, arrival, _))) = tx.send((rq, arrival, body)) {
            // The worker gave up on it: tell the late client why.
            let e = ProxyError::new(
                Code::BodyTimeout,
                "the request body took too long to arrive",
            );
            send(&late, rq, Reply::error(&e), &arrival);
        }
    });
    if let Err(e) = spawned {
        log::error!("cannot start a thread to read a request body: {e}");
        return None;
    }
    rx.recv_timeout(limit).ok()
}

fn read(rq: &mut Request) -> Result<Vec<u8>, ProxyError> {
    let too_large = || {
        ProxyError::new(
            Code::BodyTooLarge,
            format!("the request body exceeds {MAX_BODY} bytes"),
        )
    };
    if rq.body_length().is_some_and(|n| n > MAX_BODY) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    rq.as_reader()
        .take(MAX_BODY as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ProxyError::new(Code::InvalidBody, format!("cannot read the body: {e}")))?;
    if body.len() > MAX_BODY {
        return Err(too_large());
    }
    Ok(body)
}
