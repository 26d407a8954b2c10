//! The zhiva payload encoding, produced as a stream.
//!
//! Models expect a JSON array of strings, each the JSON text of one DICOM file's
//! byte array (`["[0,0,...,68,73,67,77,...]", ...]`), or for models with a
//! `dataFilter` an object `{"<dataKey>": {"data": [...]}}`. [`PayloadReader`]
//! pulls DICOM parts from WADO-RS multipart responses one buffer at a time and
//! hands out the encoded text through [`Read`], so the model request body is
//! written while the PACS is still sending and memory stays a few buffers.

use std::io::{self, Read};

use crate::error::{self, Code, ProxyError, Upstream};
use crate::multipart::{Multipart, MultipartError};

/// Opens the WADO-RS multipart stream behind one PACS path.
pub trait Source {
    /// The raw body reader under the multipart parser.
    type Body: Read;
    /// Starts the retrieval of `path` (relative to the DICOMweb root).
    fn open(&mut self, path: &str) -> Result<Multipart<Self::Body>, ProxyError>;
}

/// How the instances are written for the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// The zhiva array: `["[0,1,...]", ...]`.
    Array,
    /// The zhiva dataFilter object: `{"<key>": {"data": [...]}}`.
    Keyed,
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
            _ => "application/json".into(),
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

/// Instances sent under one key (or, with `key: None`, the plain array).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The dataKey; `None` for the plain array.
    pub key: Option<String>,
    /// WADO-RS paths whose instances go in this group, in order.
    pub paths: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Start,
    GroupStart,
    NextPath,
    NextPart,
    InPart { first_byte: bool },
    GroupEnd,
    End,
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
    groups: Vec<Group>,
    format: Format,
    gi: usize,
    pi: usize,
    first_in_group: bool,
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
    /// A payload over `groups` in `format`.
    pub fn new(source: S, groups: Vec<Group>, format: Format) -> Self {
        PayloadReader {
            source,
            groups,
            format,
            gi: 0,
            pi: 0,
            first_in_group: true,
            current: None,
            step: Step::Start,
            out: Vec::with_capacity(SCRATCH * 4 + 64),
            out_pos: 0,
            scratch: vec![0; SCRATCH],
            failure: None,
            instances: 0,
            dicom_bytes: 0,
            sent: 0,
        }
    }

    /// Opens the first PACS stream now, so that a missing study or a PACS that is
    /// down is reported before a single byte goes to the model.
    pub fn prime(&mut self) -> Result<(), ProxyError> {
        if let Some(path) = self.groups.first().and_then(|g| g.paths.first()) {
            self.current = Some(self.source.open(path)?);
        }
        Ok(())
    }

    /// Produces the next piece of output into `self.out`.
    fn advance(&mut self) -> Result<(), ProxyError> {
        match self.step {
            Step::Start => {
                match self.format {
                    Format::Array => self.out.push(b'['),
                    Format::Keyed => self.out.push(b'{'),
                    Format::Multipart(_) => {}
                }
                self.step = Step::GroupStart;
            }
            Step::GroupStart => {
                let Some(group) = self.groups.get(self.gi) else {
                    self.step = Step::End;
                    return Ok(());
                };
                if let (Format::Keyed, Some(key)) = (&self.format, &group.key) {
                    if self.gi > 0 {
                        self.out.push(b',');
                    }
                    let key = serde_json::to_string(key).unwrap_or_else(|_| "\"\"".into());
                    self.out.extend_from_slice(key.as_bytes());
                    self.out.extend_from_slice(b":{\"data\":[");
                }
                self.first_in_group = true;
                self.pi = 0;
                self.step = Step::NextPath;
            }
            Step::NextPath => {
                let Some(path) = self.groups[self.gi].paths.get(self.pi) else {
                    self.step = Step::GroupEnd;
                    return Ok(());
                };
                if self.current.is_none() {
                    self.current = Some(self.source.open(path)?);
                }
                self.step = Step::NextPart;
            }
            Step::NextPart => {
                let Some(mp) = self.current.as_mut() else {
                    self.step = Step::NextPath;
                    return Ok(());
                };
                if mp.next_part().map_err(pacs_read_error)? {
                    if let Some(ct) = mp.part_content_type() {
                        let mime = ct.split(';').next().unwrap_or("").trim();
                        if !mime.eq_ignore_ascii_case("application/dicom") {
                            return Err(ProxyError::new(Code::PacsBadResponse,
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
                        _ => {
                            if !self.first_in_group {
                                self.out.push(b',');
                            }
                            self.out.extend_from_slice(b"\"[");
                        }
                    }
                    self.first_in_group = false;
                    self.instances += 1;
                    self.step = Step::InPart { first_byte: true };
                } else {
                    self.current = None;
                    self.pi += 1;
                    self.step = Step::NextPath;
                }
            }
            Step::InPart { first_byte } => {
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
            }
            Step::GroupEnd => {
                if self.format == Format::Keyed {
                    self.out.extend_from_slice(b"]}");
                }
                self.gi += 1;
                self.step = Step::GroupStart;
            }
            Step::End => {
                match &self.format {
                    Format::Array => self.out.push(b']'),
                    Format::Keyed => self.out.push(b'}'),
                    Format::Multipart(b) => {
                        self.out.extend_from_slice(b"--");
                        self.out.extend_from_slice(b.as_bytes());
                        self.out.extend_from_slice(b"--\r\n");
                    }
                }
                self.step = Step::Finished;
            }
            Step::Finished => {}
        }
        Ok(())
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
    }

    fn fake() -> Fake {
        let mut m = HashMap::new();
        m.insert(
            "/s1".to_string(),
            vec![vec![0u8, 9, 10, 99, 100, 255], vec![]],
        );
        m.insert("/s2".to_string(), vec![vec![68, 73, 67, 77]]);
        Fake(m)
    }

    fn group(key: Option<&str>, paths: &[&str]) -> Group {
        Group {
            key: key.map(String::from),
            paths: paths.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn encode(groups: Vec<Group>, keyed: bool) -> Result<String, ProxyError> {
        let format = if keyed { Format::Keyed } else { Format::Array };
        let mut r = PayloadReader::new(fake(), groups, format);
        r.prime()?;
        let mut s = String::new();
        match r.read_to_string(&mut s) {
            Ok(_) => Ok(s),
            Err(e) => Err(ProxyError::carried_by(&e).expect("the failure travels in the error")),
        }
    }

    #[test]
    fn plain_array_decodes_as_the_contract_says() {
        let s = encode(vec![group(None, &["/s1", "/s2"])], false).unwrap();
        assert_eq!(s, r#"["[0,9,10,99,100,255]","[]","[68,73,67,77]"]"#);
        let v: Vec<String> = serde_json::from_str(&s).unwrap();
        let bytes: Vec<u8> = serde_json::from_str(&v[0]).unwrap();
        assert_eq!(bytes, vec![0, 9, 10, 99, 100, 255]);
    }

    #[test]
    fn keyed_object() {
        let s = encode(
            vec![group(Some("one"), &["/s1"]), group(Some("t\"wo"), &["/s2"])],
            true,
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["one"]["data"].as_array().unwrap().len(), 2);
        assert_eq!(v["t\"wo"]["data"][0], "[68,73,67,77]");
    }

    #[test]
    fn missing_first_path_fails_before_any_output() {
        let e = encode(vec![group(None, &["/nope"])], false).unwrap_err();
        assert_eq!(e.code, Code::PacsNotFound);
    }

    #[test]
    fn missing_later_path_is_kept_as_the_failure() {
        let e = encode(vec![group(None, &["/s1", "/nope"])], false).unwrap_err();
        assert_eq!(e.code, Code::PacsNotFound);
    }

    #[test]
    fn multipart_round_trips_through_the_parser() {
        let format = Format::multipart();
        let Format::Multipart(b) = format.clone() else {
            unreachable!()
        };
        let mut r = PayloadReader::new(fake(), vec![group(None, &["/s1", "/s2"])], format);
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
