//! The payload on a thread of its own: while the request's thread writes one
//! block to the model, this one reads the PACS and encodes the next.
//!
//! Blocks of [`BLOCK`] bytes go round between the two over bounded channels:
//! the producer fills one (reading the payload straight into it), sends it, and
//! takes a written one back; it makes at most [`IN_FLIGHT`] blocks, so a slow
//! model stops it, which stops it reading the PACS (TCP back-pressure). A
//! failure (the PACS's, mostly) ends the stream as the error it is.

use std::io::{self, Read};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::Scope;

use crossbeam_channel::{bounded, Receiver, Sender};

use super::reader::DIRECT;
use crate::error::ProxyError;

/// The size of a block: one chunk to the model, one write to the spool.
pub const BLOCK: usize = 256 * 1024;

/// Blocks per request, at most: being filled, queued, being written.
pub const IN_FLIGHT: usize = 4;

enum Msg {
    /// A block, the length of its data, and whether it is the body's last.
    Data(Vec<u8>, usize, bool),
    Failed(ProxyError),
}

/// The consuming end: the body's blocks in order, then the end or the failure.
pub struct Blocks {
    full: Receiver<Msg>,
    free: Sender<Vec<u8>>,
    current: Option<Vec<u8>>,
    ended: bool,
    failure: Option<ProxyError>,
    #[cfg(test)]
    made: Arc<AtomicUsize>,
    /// Body bytes handed out so far.
    pub sent: u64,
}

/// Starts producing the body of `reader` on a thread of `scope`.
pub fn start<'scope, R>(scope: &'scope Scope<'scope, '_>, reader: R) -> Result<Blocks, ProxyError>
where
    R: Read + Send + 'scope,
{
    let (full_tx, full_rx) = bounded(IN_FLIGHT);
    let (free_tx, free_rx) = bounded(IN_FLIGHT);
    let made = Arc::new(AtomicUsize::new(0));
    let counter = made.clone();
    std::thread::Builder::new()
        .name("payload".into())
        .spawn_scoped(scope, move || produce(reader, &full_tx, &free_rx, &counter))
        .map_err(|e| ProxyError::internal(format!("cannot start the payload thread: {e}")))?;
    Ok(Blocks {
        full: full_rx,
        free: free_tx,
        current: None,
        ended: false,
        failure: None,
        #[cfg(test)]
        made,
        sent: 0,
    })
}

fn produce<R: Read>(
    mut reader: R,
    full: &Sender<Msg>,
    free: &Receiver<Vec<u8>>,
    made: &AtomicUsize,
) {
    loop {
        let block = match free.try_recv() {
            Ok(b) => Some(b),
            Err(_) if made.load(Ordering::Relaxed) < IN_FLIGHT => {
                made.fetch_add(1, Ordering::Relaxed);
                Some(vec![0u8; BLOCK])
            }
            // Every block is out: wait for the writer to give one back.
            Err(_) => free.recv().ok(),
        };
        // No block coming back: the writer has gone (the model failed or answered early).
        let Some(mut block) = block else { return };
        let mut len = 0;
        let mut last = false;
        while BLOCK - len >= DIRECT {
            match reader.read(&mut block[len..]) {
                Ok(0) => {
                    last = true;
                    break;
                }
                Ok(n) => len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let failure = ProxyError::carried_by(&e).unwrap_or_else(|| {
                        ProxyError::internal(format!("the payload failed: {e}"))
                    });
                    let _ = full.send(Msg::Failed(failure));
                    return;
                }
            }
        }
        if full.send(Msg::Data(block, len, last)).is_err() || last {
            return;
        }
    }
}

impl Blocks {
    /// The next piece of the body and whether it is the last; `None` after the last.
    /// The piece before is given back for refilling.
    pub fn next(&mut self) -> Result<Option<(&[u8], bool)>, ProxyError> {
        if let Some(b) = self.current.take() {
            let _ = self.free.send(b);
        }
        if let Some(e) = &self.failure {
            return Err(e.clone());
        }
        if self.ended {
            return Ok(None);
        }
        match self.full.recv() {
            Ok(Msg::Data(block, len, last)) => {
                self.ended = last;
                self.sent += len as u64;
                let block = self.current.insert(block);
                Ok(Some((&block[..len], last)))
            }
            Ok(Msg::Failed(e)) => {
                self.failure = Some(e.clone());
                Err(e)
            }
            Err(_) => {
                let e = ProxyError::internal("the payload thread stopped before the end");
                self.failure = Some(e.clone());
                Err(e)
            }
        }
    }

    /// Blocks made so far (at most [`IN_FLIGHT`]).
    #[cfg(test)]
    pub fn made(&self) -> usize {
        self.made.load(Ordering::Relaxed)
    }
}
