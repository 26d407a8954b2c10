//! The model's request body, produced as a stream.
//!
//! A [`Layout`] says where each instance goes (the zhiva docs' six model types:
//! a list, one instance string, or objects keyed by dataKey, nested one level).
//! [`PayloadReader`] pulls DICOM parts from WADO-RS multipart responses one
//! buffer at a time and hands out the encoded text through [`Read`], so the
//! model request body is written while the PACS is still sending and memory
//! stays a few buffers. An "instance string" is the JSON text of one DICOM file's
//! byte array (`"[0,0,...,68,73,67,77,...]"`).

use std::io::{self, Read};

use crate::error::{self, Code, ProxyError, Upstream};
use crate::ids::describe_path;
use crate::multipart::{Multipart, MultipartError};

/// Opens the WADO-RS multipart stream behind one PACS path.
pub trait Source {
    /// The raw body reader under the multipart parser.
    type Body: Read;
    /// Starts the retrieval of `path` (relative to the DICOMweb root).
    fn open(&mut self, path: &str) -> Result<Multipart<Self::Body>, ProxyError>;
    /// The server's id, for messages.
    fn server(&self) -> &str;
}

/// Where the instances of WADO-RS paths go in the model's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// `["<instance>", ...]`: every instance these paths return, in order.
    List(Vec<String>),
    /// `"<instance>"`: the one instance this path returns.
    One(String),
    /// `{"<key>": {"data": <layout>}, ...}`, in this order.
    Keyed(Vec<(String, Layout)>),
}

impl Layout {
    /// Every WADO-RS path, in body order.
    pub fn paths(&self) -> Vec<&str> {
        match self {
            Layout::List(p) => p.iter().map(String::as_str).collect(),
            Layout::One(p) => vec![p.as_str()],
            Layout::Keyed(entries) => entries.iter().flat_map(|(_, l)| l.paths()).collect(),
        }
    }
}

/// How the instances are written for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// The zhiva JSON of the layout.
    Json,
    /// DICOMweb's `multipart/related; type="application/dicom"`, with this boundary
    /// (a model's opt-in: the DICOM bytes as they are, a third of the zhiva size).
    Multipart(String),
}

impl Format {
    /// The request's content type.
    pub fn content_type(&self) -> String {
        match self {
            Format::Multipart(b) => {
                format!("multipart/related; type=\"application/dicom\"; boundary={b}")
            }
            Format::Json => "application/json".into(),
        }
    }

    /// A multipart format with a fresh random boundary (it must not occur in the data).
    pub fn multipart() -> Format {
        let mut bytes = [0u8; 16];
        // Should the system RNG fail, the clock still makes a boundary no DICOM file holds by chance.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            bytes = t.to_le_bytes();
        }
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        Format::Multipart(format!("model-proxy-{hex}"))
    }
}

/// One step of writing a layout.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    /// Structural JSON, as is.
    Text(Vec<u8>),
    /// A list starts: its first item gets no comma.
    Open,
    /// Every instance of this path, as list items (at least one).
    Items(String),
    /// The one instance of this path, as a JSON string.
    One(String),
}

/// The layout as a flat program of ops.
fn compile(layout: &Layout, format: &Format, ops: &mut Vec<Op>) {
    if matches!(format, Format::Multipart(_)) {
        ops.extend(layout.paths().into_iter().map(|p| Op::Items(p.to_string())));
        return;
    }
    match layout {
        Layout::List(paths) => {
            ops.push(Op::Text(b"[".to_vec()));
            ops.push(Op::Open);
            ops.extend(paths.iter().map(|p| Op::Items(p.clone())));
            ops.push(Op::Text(b"]".to_vec()));
        }
        Layout::One(path) => ops.push(Op::One(path.clone())),
        Layout::Keyed(entries) => {
            for (i, (key, inner)) in entries.iter().enumerate() {
                let mut t = if i == 0 {
                    b"{".to_vec()
                } else {
                    b"},".to_vec()
                };
                // A dataKey is a JSON string whatever it holds.
                let key = serde_json::to_string(key).unwrap_or_else(|_| "\"\"".into());
                t.extend_from_slice(key.as_bytes());
                t.extend_from_slice(b":{\"data\":");
                ops.push(Op::Text(t));
                compile(inner, format, ops);
            }
            ops.push(Op::Text(if entries.is_empty() {
                b"{}".to_vec()
            } else {
                b"}}".to_vec()
            }));
        }
    }
}

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

/// Bytes read from the PACS per step; the encoded output is at most four times this.
const SCRATCH: usize = 64 * 1024;

/// A read hands out at least this much (or all that is left).
const MIN_READ: usize = 16 * 1024;

/// `,0` .. `,255` for every byte value, so encoding is one table lookup per byte.
static DECIMALS: [([u8; 4], u8); 256] = {
    let mut t = [([0u8; 4], 0u8); 256];
    let mut b = 0;
    while b < 256 {
        let mut s = [b',', 0, 0, 0];
        let len = if b >= 100 {
            s[1] = b'0' + (b / 100) as u8;
            s[2] = b'0' + (b / 10 % 10) as u8;
            s[3] = b'0' + (b % 10) as u8;
            4
        } else if b >= 10 {
            s[1] = b'0' + (b / 10) as u8;
            s[2] = b'0' + (b % 10) as u8;
            3
        } else {
            s[1] = b'0' + b as u8;
            2
        };
        t[b] = (s, len);
        b += 1;
    }
    t
};

/// Encodes DICOM bytes as comma-separated decimals; `first` drops the leading comma.
pub fn encode_bytes(bytes: &[u8], first: bool, out: &mut Vec<u8>) {
    let mut rest = bytes;
    if first {
        if let Some((&b, tail)) = bytes.split_first() {
            let (s, len) = DECIMALS[b as usize];
            out.extend_from_slice(&s[1..len as usize]);
            rest = tail;
        }
    }
    let start = out.len();
    // Every entry is stored as a fixed 4-byte write and the cursor advances by its
    // real length: one store per byte instead of a variable-length copy.
    out.resize(start + rest.len() * 4, 0);
    let mut pos = start;
    for &b in rest {
        let (s, len) = DECIMALS[b as usize];
        out[pos..pos + 4].copy_from_slice(&s);
        pos += len as usize;
    }
    out.truncate(pos);
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
    out: Vec<u8>,
    out_pos: usize,
    scratch: Vec<u8>,
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
            out: Vec::with_capacity(SCRATCH * 4 + 64),
            out_pos: 0,
            scratch: vec![0; SCRATCH],
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

    /// Produces the next piece of output into `self.out`.
    fn advance(&mut self) -> Result<(), ProxyError> {
        match self.step {
            Step::NextOp => {
                let Some(op) = self.ops.get(self.oi).cloned() else {
                    if let Format::Multipart(b) = &self.format {
                        self.out.extend_from_slice(b"--");
                        self.out.extend_from_slice(b.as_bytes());
                        self.out.extend_from_slice(b"--\r\n");
                    }
                    self.step = Step::Finished;
                    return Ok(());
                };
                self.oi += 1;
                match op {
                    Op::Text(t) => self.out.extend_from_slice(&t),
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
            Step::InPart { first_byte } => self.in_part(first_byte)?,
            Step::Finished => {}
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
                self.out.extend_from_slice(b"--");
                self.out.extend_from_slice(b.as_bytes());
                self.out
                    .extend_from_slice(b"\r\nContent-Type: application/dicom\r\n\r\n");
            }
            Format::Json => {
                if !self.one && !self.first_in_list {
                    self.out.push(b',');
                }
                self.out.extend_from_slice(b"\"[");
            }
        }
        self.first_in_list = false;
        self.parts += 1;
        self.instances += 1;
        self.step = Step::InPart { first_byte: true };
        Ok(())
    }

    /// Copies or encodes the next buffer of the current part.
    fn in_part(&mut self, first_byte: bool) -> Result<(), ProxyError> {
        let Some(mp) = self.current.as_mut() else {
            return Err(ProxyError::internal("payload lost its PACS stream"));
        };
        // Fill the scratch buffer before encoding: big chunks to the model
        // cost it (and us) far less than one per network read.
        let mut filled = 0;
        let mut ended = false;
        while filled < self.scratch.len() {
            let n = mp
                .read(&mut self.scratch[filled..])
                .map_err(pacs_read_error)?;
            if n == 0 {
                ended = true;
                break;
            }
            filled += n;
        }
        let data = &self.scratch[..filled];
        let multipart = matches!(self.format, Format::Multipart(_));
        if multipart {
            self.out.extend_from_slice(data);
        } else {
            encode_bytes(data, first_byte && filled > 0, &mut self.out);
        }
        self.dicom_bytes += filled as u64;
        if ended {
            self.out
                .extend_from_slice(if multipart { b"\r\n" } else { b"]\"" });
            self.step = Step::NextPart;
        } else {
            self.step = Step::InPart {
                first_byte: first_byte && filled == 0,
            };
        }
        Ok(())
    }

    /// The path of the op being read.
    fn current_path(&self) -> String {
        match self.oi.checked_sub(1).and_then(|i| self.ops.get(i)) {
            Some(Op::Items(p) | Op::One(p)) => p.clone(),
            _ => String::new(),
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
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
        }
        // Gather the small structural pieces (`,"[`, `]"`, keys) with the data around
        // them, so the model gets a few large chunks rather than many tiny ones.
        while self.out.len() - self.out_pos < buf.len().min(MIN_READ) && self.step != Step::Finished
        {
            // The cause travels inside the I/O error, through whoever reads us
            // (ureq, the spool), back to the inference that reports it.
            if let Err(e) = self.advance() {
                self.failure = Some(e.clone());
                return Err(e.into_io());
            }
        }
        if self.out_pos == self.out.len() {
            return Ok(0);
        }
        let n = (self.out.len() - self.out_pos).min(buf.len());
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        self.sent += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::Cursor;

    /// Serves canned multipart bodies by path; an unknown path is a PACS 404.
    struct Fake(HashMap<String, Vec<Vec<u8>>>);

    impl Source for Fake {
        type Body = Cursor<Vec<u8>>;
        fn open(&mut self, path: &str) -> Result<Multipart<Self::Body>, ProxyError> {
            let parts = self
                .0
                .get(path)
                .ok_or_else(|| ProxyError::new(Code::PacsNotFound, path))?;
            let mut body = Vec::new();
            for p in parts {
                body.extend_from_slice(b"--B\r\nContent-Type: application/dicom\r\n\r\n");
                body.extend_from_slice(p);
                body.extend_from_slice(b"\r\n");
            }
            body.extend_from_slice(b"--B--");
            Ok(Multipart::new(Cursor::new(body), "B"))
        }
        fn server(&self) -> &str {
            "s"
        }
    }

    fn fake() -> Fake {
        let mut m = HashMap::new();
        m.insert(
            "/s1".to_string(),
            vec![vec![0u8, 9, 10, 99, 100, 255], vec![]],
        );
        m.insert("/s2".to_string(), vec![vec![68, 73, 67, 77]]);
        m.insert("/i1".to_string(), vec![vec![1, 2]]);
        m.insert("/empty".to_string(), vec![]);
        Fake(m)
    }

    fn list(paths: &[&str]) -> Layout {
        Layout::List(paths.iter().map(|p| p.to_string()).collect())
    }

    fn one(p: &str) -> Layout {
        Layout::One(p.to_string())
    }

    fn encode(layout: Layout) -> Result<String, ProxyError> {
        let mut r = PayloadReader::new(fake(), &layout, Format::Json);
        r.prime()?;
        let mut s = String::new();
        match r.read_to_string(&mut s) {
            Ok(_) => Ok(s),
            Err(e) => Err(ProxyError::carried_by(&e).expect("the failure travels in the error")),
        }
    }

    #[test]
    fn plain_array_decodes_as_the_contract_says() {
        let s = encode(list(&["/s1", "/s2"])).unwrap();
        assert_eq!(s, r#"["[0,9,10,99,100,255]","[]","[68,73,67,77]"]"#);
        let v: Vec<String> = serde_json::from_str(&s).unwrap();
        let bytes: Vec<u8> = serde_json::from_str(&v[0]).unwrap();
        assert_eq!(bytes, vec![0, 9, 10, 99, 100, 255]);
    }

    #[test]
    fn one_instance_is_a_string_not_a_list() {
        assert_eq!(encode(one("/i1")).unwrap(), r#""[1,2]""#);
        let e = encode(one("/s1")).unwrap_err();
        assert_eq!(e.code, Code::PacsBadResponse);
    }

    #[test]
    fn keyed_flat_nested_and_mixed() {
        let s = encode(Layout::Keyed(vec![
            ("one".into(), list(&["/s1"])),
            ("t\"wo".into(), list(&["/s2"])),
        ]))
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["one"]["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["t\"wo"]["data"][0], "[68,73,67,77]");
        let s = encode(Layout::Keyed(vec![
            (
                "series".into(),
                Layout::Keyed(vec![("i".into(), one("/i1")), ("j".into(), one("/s2"))]),
            ),
            ("whole".into(), list(&["/s2"])),
        ]))
        .unwrap();
        assert_eq!(
            s,
            r#"{"series":{"data":{"i":{"data":"[1,2]"},"j":{"data":"[68,73,67,77]"}}},"whole":{"data":["[68,73,67,77]"]}}"#
        );
        let s = encode(Layout::Keyed(vec![("i".into(), one("/i1"))])).unwrap();
        assert_eq!(s, r#"{"i":{"data":"[1,2]"}}"#);
    }

    #[test]
    fn missing_or_empty_first_path_fails_before_any_output() {
        for (path, code) in [
            ("/nope", Code::PacsNotFound),
            ("/empty", Code::PacsNotFound),
        ] {
            let mut r = PayloadReader::new(fake(), &list(&[path]), Format::Json);
            assert_eq!(r.prime().unwrap_err().code, code, "{path}");
        }
        let e = encode(list(&["/empty"])).unwrap_err();
        assert!(
            e.message.contains("/empty has no instances"),
            "{}",
            e.message
        );
    }

    #[test]
    fn missing_later_path_is_kept_as_the_failure() {
        let e = encode(list(&["/s1", "/nope"])).unwrap_err();
        assert_eq!(e.code, Code::PacsNotFound);
    }

    #[test]
    fn multipart_round_trips_through_the_parser() {
        let format = Format::multipart();
        let Format::Multipart(b) = format.clone() else {
            unreachable!()
        };
        let mut r = PayloadReader::new(fake(), &list(&["/s1", "/s2"]), format);
        r.prime().unwrap();
        let mut body = Vec::new();
        r.read_to_end(&mut body).unwrap();
        let mut m = Multipart::new(Cursor::new(body), &b);
        let mut parts = Vec::new();
        while m.next_part().unwrap() {
            assert_eq!(m.part_content_type(), Some("application/dicom"));
            let mut p = Vec::new();
            m.read_to_end(&mut p).unwrap();
            parts.push(p);
        }
        assert_eq!(
            parts,
            vec![vec![0u8, 9, 10, 99, 100, 255], vec![], vec![68, 73, 67, 77]]
        );
    }

    #[test]
    fn all_byte_values() {
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        encode_bytes(&all, true, &mut out);
        let back: Vec<u8> = serde_json::from_slice(&[b"[", &out[..], b"]"].concat()).unwrap();
        assert_eq!(back, all);
    }
}
