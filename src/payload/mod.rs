//! The model's request body, produced as a stream.
//!
//! A [`Layout`] says where each instance goes (the zhiva docs' six model types:
//! a list, one instance string, or objects keyed by dataKey, nested one level).
//! [`PayloadReader`] pulls DICOM parts from WADO-RS multipart responses and
//! writes the encoded text straight into its reader's buffer; [`pipeline`] runs
//! it on a thread of its own, handing the request's thread a few fixed blocks,
//! so the model request body is written while the PACS is still sending and
//! memory stays a few buffers. An "instance string" is the JSON text of one DICOM
//! file's byte array (`"[0,0,...,68,73,67,77,...]"`), made by [`encode`].

pub mod encode;
mod layout;
pub mod pipeline;
mod reader;
#[allow(unsafe_code)]
mod simd;

use std::io::Read;

use crate::error::ProxyError;
use crate::multipart::Multipart;

pub use layout::{Format, Layout};
pub use pipeline::Blocks;
pub use reader::PayloadReader;

/// Opens the WADO-RS multipart stream behind one PACS path.
pub trait Source {
    /// The raw body reader under the multipart parser.
    type Body: Read;
    /// Starts the retrieval of `path` (relative to the DICOMweb root).
    fn open(&mut self, path: &str) -> Result<Multipart<Self::Body>, ProxyError>;
    /// The server's id, for messages.
    fn server(&self) -> &str;
}

#[cfg(test)]
mod tests {
    use super::pipeline::{BLOCK, IN_FLIGHT};
    use super::reader::OUT_CAP;
    use super::*;
    use crate::error::Code;
    use std::collections::HashMap;
    use std::io::{Cursor, Read};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    /// Serves canned multipart bodies by path; an unknown path is a PACS 404.
    #[derive(Clone)]
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
        // Parts larger than a block and than the parser's buffer, at odd sizes.
        let big = |n: usize, seed: u8| -> Vec<u8> {
            (0..n)
                .map(|i| (i as u8).wrapping_mul(seed) ^ (i >> 9) as u8)
                .collect()
        };
        m.insert(
            "/big".to_string(),
            vec![big(BLOCK + 12_345, 7), big(3, 1), big(700_001, 13)],
        );
        m.insert("/bigone".to_string(), vec![big(BLOCK / 3 + 1, 31)]);
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

    /// Every layout shape of the docs, each with small and multi-block instances.
    fn shapes() -> Vec<(&'static str, Layout)> {
        vec![
            ("full study/series", list(&["/s1", "/big", "/s2"])),
            ("full instance", one("/bigone")),
            (
                "filtered study",
                Layout::Keyed(vec![
                    ("series-one".into(), list(&["/big"])),
                    ("series-two".into(), list(&["/s1", "/s2"])),
                ]),
            ),
            (
                "filtered study, nested and mixed",
                Layout::Keyed(vec![
                    (
                        "series-one".into(),
                        Layout::Keyed(vec![
                            ("first".into(), one("/bigone")),
                            ("second".into(), one("/i1")),
                        ]),
                    ),
                    ("whole".into(), list(&["/big"])),
                ]),
            ),
            (
                "filtered series",
                Layout::Keyed(vec![
                    ("a \"quoted\" key".into(), one("/i1")),
                    ("b".into(), one("/bigone")),
                ]),
            ),
            ("no keys", Layout::Keyed(vec![])),
        ]
    }

    /// The contract written out independently of the reader: what the README
    /// says each shape's body is, with serde_json for every string.
    fn oracle(layout: &Layout, src: &Fake) -> String {
        let instance = |bytes: &[u8]| {
            let text = serde_json::to_string(&bytes.to_vec()).unwrap();
            serde_json::to_string(&text).unwrap()
        };
        match layout {
            Layout::List(paths) => {
                let items: Vec<String> = paths
                    .iter()
                    .flat_map(|p| src.0[p].iter().map(|b| instance(b)))
                    .collect();
                format!("[{}]", items.join(","))
            }
            Layout::One(p) => instance(&src.0[p][0]),
            Layout::Keyed(entries) => {
                let items: Vec<String> = entries
                    .iter()
                    .map(|(k, l)| {
                        let key = serde_json::to_string(k).unwrap();
                        format!("{key}:{{\"data\":{}}}", oracle(l, src))
                    })
                    .collect();
                format!("{{{}}}", items.join(","))
            }
        }
    }

    fn read_in(layout: &Layout, format: Format, step: usize) -> (Vec<u8>, usize) {
        let mut r = PayloadReader::new(fake(), layout, format);
        r.prime().unwrap();
        let mut body = Vec::new();
        let mut buf = vec![0u8; step];
        let mut most = 0;
        loop {
            let n = r.read(&mut buf).unwrap();
            most = most.max(r.buffered());
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
        assert_eq!(r.sent, body.len() as u64);
        (body, most)
    }

    fn through_pipeline(layout: &Layout, format: Format) -> Vec<u8> {
        let mut r = PayloadReader::new(fake(), layout, format);
        r.prime().unwrap();
        let (body, made) = std::thread::scope(|s| {
            let mut blocks = pipeline::start(s, &mut r).unwrap();
            let mut body = Vec::new();
            let mut seen_last = false;
            while let Some((data, last)) = blocks.next().unwrap() {
                assert!(!seen_last, "a block after the last");
                assert!(data.len() <= BLOCK);
                seen_last = last;
                body.extend_from_slice(data);
            }
            assert!(seen_last);
            assert_eq!(blocks.sent, body.len() as u64);
            (body, blocks.made())
        });
        assert!(made <= IN_FLIGHT, "{made} blocks");
        body
    }

    /// The fast path (the pipeline's blocks) and the reader at 1-byte, 8 KiB and
    /// 1 MiB reads give the same bytes, which are the contract's, for every shape;
    /// and the reader's own buffer stays within its cap whatever the read size.
    #[test]
    fn every_shape_is_byte_identical_on_every_path() {
        let cap = OUT_CAP + 256;
        for (name, layout) in shapes() {
            let want = oracle(&layout, &fake()).into_bytes();
            let fast = through_pipeline(&layout, Format::Json);
            assert!(
                fast == want,
                "{name}: the pipeline differs from the contract"
            );
            for step in [1, 8 * 1024, 1024 * 1024] {
                if step == 1 && want.len() > 3_000_000 {
                    continue;
                }
                let (body, most) = read_in(&layout, Format::Json, step);
                assert!(body == want, "{name}: {step}-byte reads differ");
                assert!(most <= cap, "{name}: {step}-byte reads held {most} bytes");
            }
            if matches!(layout, Layout::Keyed(ref e) if e.is_empty()) {
                continue;
            }
            let format = Format::multipart();
            let (sized, _) = read_in(&layout, format.clone(), 8 * 1024);
            assert!(
                through_pipeline(&layout, format) == sized,
                "{name}: multipart differs"
            );
        }
    }

    #[test]
    fn one_byte_reads_of_a_multi_block_body_stay_within_the_cap() {
        let (body, most) = read_in(&list(&["/big"]), Format::Json, 1);
        assert!(body.len() > 3 * BLOCK);
        assert!(most <= OUT_CAP + 256, "held {most} bytes");
    }

    /// A PACS body that never ends, counting what has been read from it.
    struct Endless(Arc<AtomicU64>);

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = buf.len().min(16 * 1024);
            buf[..n].fill(200);
            self.0.fetch_add(n as u64, Ordering::Relaxed);
            Ok(n)
        }
    }

    struct EndlessSource(Arc<AtomicU64>);

    impl Source for EndlessSource {
        type Body = std::io::Chain<Cursor<Vec<u8>>, Endless>;
        fn open(&mut self, _: &str) -> Result<Multipart<Self::Body>, ProxyError> {
            let head = b"--B\r\nContent-Type: application/dicom\r\n\r\n".to_vec();
            let body = Cursor::new(head).chain(Endless(self.0.clone()));
            Ok(Multipart::new(body, "B"))
        }
        fn server(&self) -> &str {
            "endless"
        }
    }

    /// A model that stops reading stops the PACS read: what has been read is
    /// bounded by the blocks in flight, not by the series.
    #[test]
    fn a_stalled_writer_stops_the_pacs_read() {
        let read = Arc::new(AtomicU64::new(0));
        let mut r = PayloadReader::new(EndlessSource(read.clone()), &list(&["/x"]), Format::Json);
        r.prime().unwrap();
        std::thread::scope(|s| {
            let mut blocks = pipeline::start(s, &mut r).unwrap();
            let first = blocks.next().unwrap().unwrap().0.len();
            assert!(first > BLOCK - 4096);
            std::thread::sleep(std::time::Duration::from_millis(300));
            let seen = read.load(Ordering::Relaxed);
            // Each block holds BLOCK/4 input bytes ("200," is 4); plus the parser's buffer.
            let bound = (IN_FLIGHT * BLOCK / 4 + 256 * 1024 + 32 * 1024) as u64;
            assert!(seen <= bound, "read {seen} bytes, bound {bound}");
            assert_eq!(blocks.made(), IN_FLIGHT);
            // Dropping the consumer ends the producer: the scope returns.
        });
    }

    #[test]
    fn a_failure_mid_stream_reaches_the_writer_as_it_was_raised() {
        let mut r = PayloadReader::new(fake(), &list(&["/big", "/nope"]), Format::Json);
        r.prime().unwrap();
        let (blocks_before, err) = std::thread::scope(|s| {
            let mut blocks = pipeline::start(s, &mut r).unwrap();
            let mut n = 0;
            loop {
                match blocks.next() {
                    Ok(Some(_)) => n += 1,
                    Ok(None) => panic!("ended without the failure"),
                    Err(e) => {
                        assert_eq!(blocks.next().unwrap_err(), e, "the failure repeats");
                        break (n, e);
                    }
                }
            }
        });
        assert!(blocks_before >= 2, "{blocks_before}");
        assert_eq!(err.code, Code::PacsNotFound);
    }
}
