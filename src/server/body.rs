//! Reading a request body, whole and bounded.

use std::io::Read;

use tiny_http::Request;

use crate::error::{Code, ProxyError};
use crate::plan::MAX_BODY;

/// The body, at most [`MAX_BODY`] bytes. It never waits on the client: the
/// front hands a request over only once its whole body has arrived (within
/// `--body-timeout`), on a socket no one else can reach.
pub fn read(rq: &mut Request) -> Result<Vec<u8>, ProxyError> {
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
