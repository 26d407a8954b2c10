//! `routing::route(method, target)` on arbitrary input: never panics, and every
//! inference route it accepts carries only ids that are safe to put in a PACS URL.
#![no_main]

use libfuzzer_sys::fuzz_target;
use model_proxy::parsers::{is_dicom_uid, is_uuid, route, InferenceRequest, Page, Route};

const METHODS: &[&str] = &["GET", "POST", "OPTIONS", "HEAD", "PUT", "DELETE", "get", ""];

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    // Mostly a known method; from 0xF0 up, the method is arbitrary (up to the first space).
    let (method, target) = if sel < 0xF0 {
        (METHODS[sel as usize % METHODS.len()].to_string(), rest)
    } else {
        let cut = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        let m = String::from_utf8_lossy(&rest[..cut]).into_owned();
        (m, rest.get(cut + 1..).unwrap_or(&[]))
    };
    let target = String::from_utf8_lossy(target);
    check(&method, &target);
});

fn check(method: &str, target: &str) {
    match route(method, target).route {
        Ok(Route::Page(Page::Preflight)) => assert_eq!(method, "OPTIONS"),
        Ok(Route::Inference(r)) => {
            assert!(method == "GET" || method == "POST", "{method:?}");
            assert_eq!(r.has_body, method == "POST");
            inference(&r, target);
        }
        // The cache's methods on an inference URL: the same checks, no body.
        Ok(Route::Prefetch(r)) | Ok(Route::Purge(r)) => {
            assert!(method == "PUT" || method == "DELETE", "{method:?}");
            assert!(!r.has_body);
            inference(&r, target);
        }
        Ok(Route::PrefetchList) => assert_eq!(method, "POST"),
        // The fixed pages (healthz, readyz, status, metrics, ...).
        Ok(_) => assert!(method == "GET" || method == "HEAD", "{method:?}"),
        Err(e) => {
            assert!(matches!(e.status(), 400 | 404 | 405), "{e:?}");
            // Echoed input is truncated: an error never grows with the URL.
            assert!(e.message.len() <= 2048, "{} byte message", e.message.len());
        }
    }
}

/// Every id is safe for a PACS URL and came from the target's path, verbatim up to case.
fn inference(r: &InferenceRequest, target: &str) {
    safe_uuid(&r.model);
    if let Some(s) = &r.server {
        safe_uuid(s);
    }
    safe_uid(&r.study);
    if let Some(s) = &r.series {
        safe_uid(s);
    }
    if let Some(s) = &r.instance {
        safe_uid(s);
        assert!(r.series.is_some(), "instance without series");
    }
    let path = target.split('?').next().unwrap_or("");
    let lower = path.to_ascii_lowercase();
    assert!(lower.contains(&format!("/{}/", r.model)));
    assert!(path.contains(&format!("/studies/{}", r.study)));
    assert!(path.starts_with(&format!("/{}s/", r.task.as_str())));
}

fn safe_uuid(s: &str) {
    assert!(is_uuid(s), "{s:?}");
    assert_eq!(s.len(), 36, "{s:?}");
    for (i, b) in s.bytes().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            assert_eq!(b, b'-', "{s:?}");
        } else {
            assert!(
                matches!(b, b'0'..=b'9' | b'a'..=b'f'),
                "{s:?} not lower-case hex"
            );
        }
    }
}

fn safe_uid(s: &str) {
    assert!(is_dicom_uid(s), "{s:?}");
    assert!(!s.is_empty() && s.len() <= 64, "{s:?}");
    assert!(s.bytes().all(|b| b.is_ascii_digit() || b == b'.'), "{s:?}");
    assert!(
        !s.starts_with('.') && !s.ends_with('.') && !s.contains(".."),
        "{s:?}"
    );
    for bad in ["/", "%", "?", "#", "\\", "&", ";"] {
        assert!(!s.contains(bad), "{s:?} contains {bad:?}");
    }
}
