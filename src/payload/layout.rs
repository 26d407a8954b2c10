//! What the body holds and in which format: the zhiva docs' six model types as a
//! [`Layout`], compiled into a flat program of [`Op`]s for the reader.

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
pub(super) enum Op {
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
pub(super) fn compile(layout: &Layout, format: &Format, ops: &mut Vec<Op>) {
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
