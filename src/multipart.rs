//! A streaming reader for `multipart/related` bodies (RFC 2046), as WADO-RS returns them.
//!
//! The body is never held whole: a fixed buffer slides over it, and each part's
//! content is handed out through [`Read`] as soon as it is known not to be the
//! start of the next delimiter.

use std::fmt;
use std::io::{self, BufRead, Read};

/// Buffer size; also the largest header block a part may have.
const BUF_SIZE: usize = 256 * 1024;

/// A body that is not valid multipart (as opposed to an I/O error under it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MultipartError {
    /// Not multipart as RFC 2046 has it.
    Malformed(String),
    /// It stopped early: the sender went away mid-stream (a close-delimited body,
    /// as Orthanc sends, ends without an error when the PACS stops).
    Truncated(String),
}

impl fmt::Display for MultipartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MultipartError::Malformed(m) => write!(f, "malformed multipart body: {m}"),
            MultipartError::Truncated(m) => write!(f, "truncated multipart body: {m}"),
        }
    }
}

impl std::error::Error for MultipartError {}

fn truncated(msg: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        MultipartError::Truncated(msg.into()),
    )
}

fn malformed(msg: impl Into<String>) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        MultipartError::Malformed(msg.into()),
    )
}

/// The `boundary` parameter of a `multipart/*` content type, if it is one.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut params = content_type.split(';');
    let mime = params.next()?.trim();
    if !mime.to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    params.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim().trim_matches('"');
        (!v.is_empty() && v.len() <= 200).then(|| v.to_string())
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Before a delimiter: the preamble or the rest of a part's content.
    Content,
    /// The current part's content is exhausted; the buffer starts at a delimiter.
    AtDelimiter,
    /// After the close delimiter.
    Done,
}

/// Iterates over the parts of a multipart body; read each part's content with [`Read`].
pub struct Multipart<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// `\n--boundary`: the CR before it is optional, for servers that end lines with a bare LF.
    delim: Vec<u8>,
    finder: memchr::memmem::Finder<'static>,
    /// `buf[start..clean]` is content already scanned: no delimiter starts in it.
    clean: usize,
    state: State,
    in_part: bool,
    inner_eof: bool,
    part_content_type: Option<String>,
}

impl<R: Read> Multipart<R> {
    /// Wraps a body whose content type carried `boundary`.
    pub fn new(inner: R, boundary: &str) -> Self {
        let mut buf = vec![0u8; BUF_SIZE];
        // The first delimiter has no line break before it; pretending it does makes every delimiter alike.
        buf[0] = b'\n';
        Multipart {
            inner,
            buf,
            start: 0,
            end: 1,
            delim: format!("\n--{boundary}").into_bytes(),
            finder: memchr::memmem::Finder::new(format!("\n--{boundary}").as_bytes()).into_owned(),
            clean: 0,
            state: State::Content,
            in_part: false,
            inner_eof: false,
            part_content_type: None,
        }
    }

    /// The content type of the current part, if it declared one.
    pub fn part_content_type(&self) -> Option<&str> {
        self.part_content_type.as_deref()
    }

    /// Advances to the next part; `false` after the last one.
    pub fn next_part(&mut self) -> io::Result<bool> {
        let mut sink = [0u8; 8192];
        // Skip what is left of the current part (or the preamble).
        while self.state == State::Content && self.read(&mut sink)? > 0 {}
        if self.state == State::Done {
            return Ok(false);
        }
        // At a delimiter: need it plus "--" or the header block.
        let dl = self.delim.len();
        self.fill_at_least(dl + 2)?;
        let after = self.start + dl;
        if &self.buf[after..after + 2] == b"--" {
            self.state = State::Done;
            self.in_part = false;
            return Ok(false);
        }
        let (headers_end, content_start) = loop {
            // Recomputed each time: fill_more may have moved the data to the buffer's front.
            let after = self.start + dl;
            if let Some((end, content)) = header_block(&self.buf[after..self.end]) {
                break (after + end, after + content);
            }
            if self.end - self.start >= self.buf.len() {
                return Err(malformed("part headers larger than the buffer"));
            }
            if !self.fill_more()? {
                return Err(truncated("body ends inside part headers"));
            }
        };
        let after = self.start + dl;
        let block = String::from_utf8_lossy(&self.buf[after..headers_end]);
        let mut lines = block.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
        // The delimiter line may carry transport padding, nothing else.
        if !lines.next().unwrap_or("").trim().is_empty() {
            return Err(malformed("garbage after a boundary delimiter"));
        }
        self.part_content_type = lines.find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        });
        self.start = content_start;
        self.state = State::Content;
        self.in_part = true;
        Ok(true)
    }

    /// Ensures `n` bytes are buffered from `start`, or fails as truncated.
    fn fill_at_least(&mut self, n: usize) -> io::Result<()> {
        if n > self.buf.len() {
            return Err(malformed("boundary longer than the parser's buffer"));
        }
        while self.end - self.start < n {
            if !self.fill_more()? {
                return Err(truncated("body ends before its close delimiter"));
            }
        }
        Ok(())
    }

    /// Reads more from the inner reader, compacting first; `false` at EOF.
    fn fill_more(&mut self) -> io::Result<bool> {
        if self.inner_eof {
            return Ok(false);
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.clean = self.clean.saturating_sub(self.start);
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Ok(true);
        }
        loop {
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => {
                    self.inner_eof = true;
                    return Ok(false);
                }
                Ok(n) => {
                    self.end += n;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl<R: Read> Read for Multipart<R> {
    /// Reads the current part's content (or skips preamble); `Ok(0)` at the part's end.
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if out.is_empty() {
            return Ok(0);
        }
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// The current part's content in place, for readers that need no copy of it
/// (the payload encoder reads the parser's buffer directly).
impl<R: Read> BufRead for Multipart<R> {
    /// Buffered content of the current part, known not to be a delimiter: at
    /// least one byte, or none at the part's end. Preamble is skipped.
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.state != State::Content {
            return Ok(&[]);
        }
        let dl = self.delim.len();
        let content_end = loop {
            // Scanned already: no delimiter starts before `clean`.
            if self.clean > self.start {
                if self.in_part {
                    break self.clean;
                }
                self.start = self.clean;
                continue;
            }
            let avail = &self.buf[self.start..self.end];
            let (usable, at_delim) = match self.finder.find(avail) {
                // The CR of a CRLF before the delimiter belongs to the delimiter.
                Some(i) if i > 0 && avail[i - 1] == b'\r' => (i - 1, true),
                Some(i) => (i, true),
                // A delimiter (and the CR before it) may begin in the last dl bytes: hold those back.
                None => (avail.len().saturating_sub(dl), false),
            };
            if usable > 0 {
                self.clean = self.start + usable;
                continue;
            }
            if at_delim {
                if avail[0] == b'\r' {
                    self.start += 1;
                }
                self.state = State::AtDelimiter;
                self.in_part = false;
                return Ok(&[]);
            }
            if self.end - self.start == self.buf.len() {
                // A full buffer that may all be the start of a delimiter: only a
                // boundary as long as the buffer can do that (boundary() caps it far lower).
                return Err(malformed("boundary longer than the parser's buffer"));
            }
            if !self.fill_more()? {
                return Err(if self.in_part {
                    truncated("body ends inside a part")
                } else {
                    malformed("no boundary delimiter found")
                });
            }
        };
        Ok(&self.buf[self.start..content_end])
    }

    /// Marks `n` bytes of what [`Self::fill_buf`] gave as read.
    fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.clean.max(self.start));
    }
}

/// In `buf` (what follows a boundary), the end of the part's header block and
/// where its content starts: the first empty line, whether lines end in CRLF or LF.
fn header_block(buf: &[u8]) -> Option<(usize, usize)> {
    let mut pos = 0;
    let mut first = true;
    loop {
        let nl = pos + memchr::memchr(b'\n', &buf[pos..])?;
        let line = &buf[pos..nl];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if !first && line.is_empty() {
            return Some((pos.saturating_sub(1), nl + 1));
        }
        first = false;
        pos = nl + 1;
    }
}

/// Position of `needle` in `hay`.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, rest) = needle.split_first()?;
    let mut from = 0;
    while from + needle.len() <= hay.len() {
        let i = from
            + hay[from..=hay.len() - needle.len()]
                .iter()
                .position(|&b| b == first)?;
        if &hay[i + 1..i + needle.len()] == rest {
            return Some(i);
        }
        from = i + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A reader that hands out at most `step` bytes per read, to exercise every split point.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    fn body(parts: &[&[u8]], b: &str) -> Vec<u8> {
        let mut v = b"preamble\r\n".to_vec();
        for p in parts {
            v.extend_from_slice(
                format!("--{b}\r\nContent-Type: application/dicom\r\n\r\n").as_bytes(),
            );
            v.extend_from_slice(p);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(format!("--{b}--\r\n").as_bytes());
        v
    }

    fn parts_of(data: &[u8], b: &str, step: usize) -> io::Result<Vec<Vec<u8>>> {
        let mut m = Multipart::new(Trickle(data, step), b);
        let mut out = Vec::new();
        while m.next_part()? {
            let mut p = Vec::new();
            m.read_to_end(&mut p)?;
            out.push(p);
        }
        Ok(out)
    }

    #[test]
    fn parses_at_every_chunking() {
        let b = "XyZ";
        let parts: Vec<&[u8]> = vec![b"hello", b"", b"\r\n--XyQ not quite\r\n--Xy", &[0u8; 1000]];
        let data = body(&parts, b);
        for step in [1, 2, 3, 7, 64, 100_000] {
            let got = parts_of(&data, b, step).unwrap_or_else(|e| panic!("step {step}: {e}"));
            assert_eq!(got.len(), parts.len());
            for (g, p) in got.iter().zip(&parts) {
                assert_eq!(g.as_slice(), *p);
            }
        }
    }

    #[test]
    fn bare_lf_line_endings() {
        let parts: Vec<&[u8]> = vec![b"one\r", b"two\n", &[7u8; 300]];
        let mut data = b"preamble\n".to_vec();
        for p in &parts {
            data.extend_from_slice(
                b"--b b\nContent-Type: application/dicom\nContent-Length: 4\n\n",
            );
            data.extend_from_slice(p);
            data.extend_from_slice(b"\n");
        }
        data.extend_from_slice(b"--b b--\nepilogue");
        for step in [1, 3, 64, 100_000] {
            let got = parts_of(&data, "b b", step).unwrap();
            // With bare LFs a CR that ends a part is taken for the line break's.
            assert_eq!(
                got,
                vec![b"one".to_vec(), b"two\n".to_vec(), vec![7u8; 300]],
                "step {step}"
            );
        }
    }

    #[test]
    fn a_part_ending_in_cr_keeps_it_with_crlf_framing() {
        let data = body(&[b"ends in cr\r", b"x"], "q");
        assert_eq!(
            parts_of(&data, "q", 2).unwrap(),
            vec![b"ends in cr\r".to_vec(), b"x".to_vec()]
        );
    }

    #[test]
    fn first_delimiter_without_preamble() {
        let data = b"--b\r\n\r\nabc\r\n--b--";
        assert_eq!(parts_of(data, "b", 5).unwrap(), vec![b"abc".to_vec()]);
    }

    #[test]
    fn truncated_is_an_error() {
        let data = body(&[b"hello world"], "b");
        let cut = &data[..data.len() - 12];
        let err = parts_of(cut, "b", 4).unwrap_err();
        let inner = err.get_ref().unwrap().downcast_ref::<MultipartError>();
        assert!(matches!(inner, Some(MultipartError::Truncated(_))));
        assert!(parts_of(b"no delimiter at all", "b", 3).is_err());
    }

    #[test]
    fn content_type_boundary() {
        assert_eq!(
            boundary("multipart/related; type=\"application/dicom\"; boundary=\"abc\"").as_deref(),
            Some("abc")
        );
        assert_eq!(
            boundary("Multipart/Related;boundary=x").as_deref(),
            Some("x")
        );
        assert_eq!(boundary("application/json"), None);
        assert_eq!(boundary("multipart/related"), None);
    }

    #[test]
    fn a_huge_boundary_is_an_error_not_a_hang() {
        let b = "x".repeat(BUF_SIZE + 10);
        let data = vec![b'a'; BUF_SIZE * 2];
        assert!(parts_of(&data, &b, 100_000).is_err());
    }

    #[test]
    fn find_works() {
        assert_eq!(find(b"abcabd", b"abd"), Some(3));
        assert_eq!(find(b"ab", b"abc"), None);
        assert_eq!(find(b"", b"a"), None);
    }
}
