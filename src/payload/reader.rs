//! The payload as a state machine over the PACS streams: [`PayloadReader`] runs
//! a layout's ops, pulls DICOM parts from WADO-RS multipart responses and writes
//! the body straight into the caller's buffer (encoded for JSON, as is for
//! multipart), JSON encoded straight from the multipart parser's buffer. Its
//! only buffer of its own is, for callers reading less than [`DIRECT`] bytes at
//! a time, one output buffer of [`OUT_CAP`] that is refilled only once it is empty.

use std::io::{self, BufRead, Read};

use super::encode::{encode_first, encode_into, MAX_EXPANSION};
use super::layout::{compile, Format, Layout, Op};
use super::Source;
use crate::error::{self, Code, ProxyError, Upstream};
use crate::ids::describe_path;
use crate::multipart::{Multipart, MultipartError};

/// A read into a buffer at least this large is written in place, with no copy.
pub const DIRECT: usize = 4096;

/// The reader's own output buffer, used for reads smaller than [`DIRECT`].
pub const OUT_CAP: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// Run the next op.
    NextOp,
    /// Look for the next part of the current path.
    NextPart,
    /// Copy (or encode) the current part.
    InPart { first_byte: bool },
    /// The last op is done.
    Finished,
}

/// The model request body, generated on demand from PACS streams.
pub struct PayloadReader<S: Source> {
    source: S,
    ops: Vec<Op>,
    oi: usize,
    format: Format,
    /// The current op's path is a `One`: exactly one instance, no list comma.
    one: bool,
    /// Parts found so far under the current path.
    parts: u64,
    first_in_list: bool,
    current: Option<Multipart<S::Body>>,
    step: Step,
    /// Structural text (brackets, keys, part headers) not yet written out.
    text: Vec<u8>,
    text_pos: usize,
    /// Output made for small reads, `out[out_pos..out_len]` not yet handed out.
    out: Vec<u8>,
    out_pos: usize,
    out_len: usize,
    /// Why the stream stopped early: every later read repeats it.
    failure: Option<ProxyError>,
    /// Instances encoded so far.
    pub instances: u64,
    /// DICOM bytes encoded so far.
    pub dicom_bytes: u64,
    /// Payload bytes handed out so far.
    pub sent: u64,
}

impl<S: Source> PayloadReader<S> {
    /// A payload of `layout` in `format`.
    pub fn new(source: S, layout: &Layout, format: Format) -> Self {
        let mut ops = Vec::new();
        compile(layout, &format, &mut ops);
        PayloadReader {
            source,
            ops,
            oi: 0,
            format,
            one: false,
            parts: 0,
            first_in_list: true,
            current: None,
            step: Step::NextOp,
            text: Vec::new(),
            text_pos: 0,
            out: Vec::new(),
            out_pos: 0,
            out_len: 0,
            failure: None,
            instances: 0,
            dicom_bytes: 0,
            sent: 0,
        }
    }

    /// Runs up to the first DICOM byte, so that a missing or empty study or
    /// series, or a PACS that is down, is reported before anything goes to the model.
    pub fn prime(&mut self) -> Result<(), ProxyError> {
        while !matches!(self.step, Step::InPart { .. } | Step::Finished) {
            self.advance()?;
        }
        Ok(())
    }

    /// The bytes the reader holds for itself (output buffer and text), for the caps' tests.
    #[cfg(test)]
    pub fn buffered(&self) -> usize {
        self.out.capacity() + self.text.capacity()
    }

    /// Writes the next part of the body into `dst` (at least 4 bytes), as much
    /// as fits; returns the length written, 0 only at the end of the body.
    fn fill(&mut self, dst: &mut [u8]) -> Result<usize, ProxyError> {
        debug_assert!(dst.len() >= MAX_EXPANSION);
        let mut n = 0;
        loop {
            if self.text_pos < self.text.len() {
                let k = (self.text.len() - self.text_pos).min(dst.len() - n);
                dst[n..n + k].copy_from_slice(&self.text[self.text_pos..self.text_pos + k]);
                n += k;
                self.text_pos += k;
                if self.text_pos < self.text.len() {
                    return Ok(n);
                }
                self.text.clear();
                self.text_pos = 0;
            }
            match self.step {
                Step::Finished => return Ok(n),
                Step::InPart { first_byte } => {
                    let room = dst.len() - n;
                    if room < MAX_EXPANSION {
                        return Ok(n);
                    }
                    n += self.in_part(first_byte, &mut dst[n..])?;
                    if n == dst.len() {
                        return Ok(n);
                    }
                }
                _ => self.advance()?,
            }
        }
    }

    /// Runs the next op or starts the next part, leaving its text in `self.text`.
    fn advance(&mut self) -> Result<(), ProxyError> {
        match self.step {
            Step::NextOp => {
                let Some(op) = self.ops.get(self.oi).cloned() else {
                    if let Format::Multipart(b) = &self.format {
                        self.text.extend_from_slice(b"--");
                        self.text.extend_from_slice(b.as_bytes());
                        self.text.extend_from_slice(b"--\r\n");
                    }
                    self.step = Step::Finished;
                    return Ok(());
                };
                self.oi += 1;
                match op {
                    Op::Text(t) => self.text.extend_from_slice(&t),
                    Op::Open => self.first_in_list = true,
                    Op::Items(path) | Op::One(path) => {
                        self.one = matches!(self.ops[self.oi - 1], Op::One(_));
                        self.parts = 0;
                        self.current = Some(self.source.open(&path)?);
                        self.step = Step::NextPart;
                    }
                }
            }
            Step::NextPart => self.next_part()?,
            Step::InPart { .. } | Step::Finished => {}
        }
        Ok(())
    }

    /// Starts the next part of the current path, or ends the path.
    fn next_part(&mut self) -> Result<(), ProxyError> {
        let path = self.current_path();
        let Some(mp) = self.current.as_mut() else {
            return Err(ProxyError::internal("payload lost its PACS stream"));
        };
        if !mp.next_part().map_err(pacs_read_error)? {
            self.current = None;
            self.step = Step::NextOp;
            if self.parts == 0 {
                return Err(ProxyError::new(
                    Code::PacsNotFound,
                    format!(
                        "{} has no instances on server {}",
                        describe_path(&path),
                        self.source.server()
                    ),
                ));
            }
            return Ok(());
        }
        if self.one && self.parts > 0 {
            return Err(ProxyError::new(
                Code::PacsBadResponse,
                format!(
                    "the pacs sent more than one instance for {}",
                    describe_path(&path)
                ),
            ));
        }
        if let Some(ct) = mp.part_content_type() {
            let mime = ct.split(';').next().unwrap_or("").trim();
            if !mime.eq_ignore_ascii_case("application/dicom") {
                return Err(ProxyError::new(
                    Code::PacsBadResponse,
                    format!("the pacs sent a {mime:?} part where application/dicom was expected"),
                ));
            }
        }
        match &self.format {
            Format::Multipart(b) => {
                self.text.extend_from_slice(b"--");
                self.text.extend_from_slice(b.as_bytes());
                self.text
                    .extend_from_slice(b"\r\nContent-Type: application/dicom\r\n\r\n");
            }
            Format::Json => {
                if !self.one && !self.first_in_list {
                    self.text.push(b',');
                }
                self.text.extend_from_slice(b"\"[");
            }
        }
        self.first_in_list = false;
        self.parts += 1;
        self.instances += 1;
        self.step = Step::InPart { first_byte: true };
        Ok(())
    }

    /// Writes the next piece of the current part into `dst` (at least 4 bytes);
    /// at the part's end, leaves its closing text and moves on. JSON is encoded
    /// straight from the multipart parser's buffer.
    fn in_part(&mut self, first_byte: bool, dst: &mut [u8]) -> Result<usize, ProxyError> {
        let Some(mp) = self.current.as_mut() else {
            return Err(ProxyError::internal("payload lost its PACS stream"));
        };
        let (read, written) = match self.format {
            Format::Multipart(_) => {
                let n = mp.read(dst).map_err(pacs_read_error)?;
                (n, n)
            }
            Format::Json => {
                let input = mp.fill_buf().map_err(pacs_read_error)?;
                let mut n = 0;
                let mut taken = 0;
                if first_byte && !input.is_empty() {
                    let mut first = [0u8; 3];
                    n = encode_first(input[0], &mut first);
                    dst[..n].copy_from_slice(&first[..n]);
                    taken = 1;
                }
                let take = (input.len() - taken).min((dst.len() - n) / MAX_EXPANSION);
                n += encode_into(&input[taken..taken + take], &mut dst[n..]);
                let read = taken + take;
                mp.consume(read);
                (read, n)
            }
        };
        self.dicom_bytes += read as u64;
        if read == 0 {
            let multipart = matches!(self.format, Format::Multipart(_));
            self.text
                .extend_from_slice(if multipart { b"\r\n" } else { b"]\"" });
            self.step = Step::NextPart;
        } else if first_byte {
            self.step = Step::InPart { first_byte: false };
        }
        Ok(written)
    }

    /// The path of the op being read.
    fn current_path(&self) -> String {
        match self.oi.checked_sub(1).and_then(|i| self.ops.get(i)) {
            Some(Op::Items(p) | Op::One(p)) => p.clone(),
            _ => String::new(),
        }
    }

    /// [`Self::fill`], remembering a failure so that every later read repeats it.
    fn fill_or_fail(&mut self, dst: &mut [u8]) -> io::Result<usize> {
        match self.fill(dst) {
            Ok(n) => Ok(n),
            Err(e) => {
                self.failure = Some(e.clone());
                // The cause travels inside the I/O error, through whoever reads us,
                // back to the inference that reports it.
                Err(e.into_io())
            }
        }
    }
}

fn pacs_read_error(e: io::Error) -> ProxyError {
    match e.get_ref().and_then(|i| i.downcast_ref::<MultipartError>()) {
        Some(m @ MultipartError::Malformed(_)) => {
            ProxyError::new(Code::PacsBadResponse, format!("the pacs sent a {m}"))
        }
        Some(t @ MultipartError::Truncated(_)) => ProxyError::new(
            Code::PacsUnreachable,
            format!("the pacs broke off mid-stream ({t})"),
        ),
        None => error::from_io(Upstream::Pacs, &e),
    }
}

impl<S: Source> Read for PayloadReader<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(f) = &self.failure {
            return Err(f.clone().into_io());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        let n = if self.out_pos < self.out_len {
            let n = (self.out_len - self.out_pos).min(buf.len());
            buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
            self.out_pos += n;
            n
        } else if buf.len() >= DIRECT {
            self.fill_or_fail(buf)?
        } else {
            // Refilled only when empty, so it never holds more than its cap
            // however little each read takes.
            let mut out = std::mem::take(&mut self.out);
            out.resize(OUT_CAP, 0);
            let filled = self.fill_or_fail(&mut out);
            self.out = out;
            (self.out_pos, self.out_len) = (0, filled?);
            let n = self.out_len.min(buf.len());
            buf[..n].copy_from_slice(&self.out[..n]);
            self.out_pos = n;
            n
        };
        self.sent += n as u64;
        Ok(n)
    }
}
