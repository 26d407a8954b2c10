//! Faults: upstreams that die, hang or talk nonsense. Each must give a clear error,
//! free its worker, and leave the proxy serving the next request without a restart.
//! The proxy runs with a single worker, so a worker left stuck would show at once.

use crate::common::*;
use serde_json::json;

const CUT: &str = "c2407f18-575d-487c-bc0c-640c6da651bc";
const GARBAGE: &str = "d2407f18-575d-487c-bc0c-640c6da651bc";
const FLAKY: &str = "e2407f18-575d-487c-bc0c-640c6da651bc";
const CLOSE: &str = "9d9508dd-9089-40c3-abdd-15f47120d682";
const HANG: &str = "ad9508dd-9089-40c3-abdd-15f47120d682";

fn proxy(model: &Model, f: &Faults, name: &str) -> Proxy {
    let mut servers = servers_json();
    servers[CUT] = json!({"uri": format!("{}/cut/20000/dicom-web", f.url)});
    servers[GARBAGE] = json!({"uri": format!("{}/garbage/dicom-web", f.url)});
    servers[FLAKY] = json!({"uri": format!("{}/flaky/dicom-web", f.url)});
    let mut models = model.models_json();
    models[CLOSE] = json!({"uri": format!("{}/model/close", f.url), "task": "segmentation", "supports": ["/studies/series"]});
    models[HANG] = json!({"uri": format!("{}/model/hang", f.url), "task": "segmentation", "supports": ["/studies/series"]});
    let dir = config_dir(name, &servers, &models);
    Proxy::start_in(
        &dir,
        &["--workers", "1", "--queue", "1", "--model-timeout", "2"],
        &[],
    )
}

/// The next request works, and nothing is left queued or running.
fn assert_recovered(p: &Proxy) {
    let e = env();
    let (se, instances) = &e.study_a.series[0];
    let r = p.get(&series_path(SEG, None));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()[&e.study_a.uid][se].as_object().unwrap().len(),
        instances.len() + 1
    );
    let m = p.get("/metrics").body;
    assert!(m.contains("model_proxy_in_flight 0"), "{m}");
    assert!(m.contains("model_proxy_queue_depth 0"), "{m}");
    assert!(m.contains("model_proxy_workers_alive 1"), "{m}");
}

#[test]
fn pacs_stopping_mid_stream_is_502_and_frees_the_worker() {
    let model = model();
    let f = faults();
    let p = proxy(&model, &f, "fault-cut");
    let r = p.get(&series_path(SEG, Some(CUT)));
    r.assert_error(502, "pacs_unreachable");
    assert!(r.body.contains("mid-stream"), "{}", r.body);
    assert_recovered(&p);
}

#[test]
fn malformed_multipart_is_502() {
    let model = model();
    let f = faults();
    let p = proxy(&model, &f, "fault-garbage");
    let r = p.get(&series_path(SEG, Some(GARBAGE)));
    r.assert_error(502, "pacs_bad_response");
    assert_recovered(&p);
}

#[test]
fn model_closing_mid_body_is_502() {
    let model = model();
    let f = faults();
    let p = proxy(&model, &f, "fault-close");
    let r = p.get(&series_path(CLOSE, None));
    r.assert_error(502, "model_unreachable");
    assert_recovered(&p);
}

#[test]
fn hung_model_is_504_at_the_timeout() {
    let model = model();
    let f = faults();
    let p = proxy(&model, &f, "fault-hang");
    let started = std::time::Instant::now();
    let r = p.get(&series_path(HANG, None));
    r.assert_error(504, "model_timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    assert_recovered(&p);
}

#[test]
fn content_length_models_and_concurrency_limits() {
    let model = model();
    let mut models = model.models_json();
    models[SEG]["contentLength"] = json!(true);
    models[SLOW]["maxConcurrent"] = json!(1);
    let dir = config_dir("fault-cl", &servers_json(), &models);
    let p = Proxy::start_in(&dir, &[], &[]);
    let r = p.get(&series_path(SEG, None));
    assert_eq!(r.status, 200, "{}", r.body);
    let last = model.last();
    assert_eq!(last["chunked"], false);
    assert!(last["contentLength"].as_u64().unwrap() > 1000, "{last}");
    // The spool leaves nothing behind.
    let spool = dir.join("state/spool");
    assert_eq!(std::fs::read_dir(&spool).map(|d| d.count()).unwrap_or(0), 0);
    // Two requests on a model limited to one at a time: the second waits its turn.
    let url = format!("{}{}", p.url, series_path(SLOW, None));
    let started = std::time::Instant::now();
    let a = {
        let u = url.clone();
        std::thread::spawn(move || get(&u).status)
    };
    let b = {
        let u = url.clone();
        std::thread::spawn(move || get(&u).status)
    };
    assert_eq!((a.join().unwrap(), b.join().unwrap()), (200, 200));
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(6),
        "the two ran at once"
    );
}

#[test]
fn a_pacs_hiccup_before_any_byte_went_to_the_model_is_retried() {
    let model = model();
    let f = faults();
    let p = proxy(&model, &f, "fault-flaky");
    let r = p.get(&series_path(SEG, Some(FLAKY)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(p.logs().contains("HTTP 503; retrying"), "{}", p.logs());
}

#[test]
fn a_client_stalling_its_body_does_not_hold_a_worker() {
    use std::io::Write;
    let model = model();
    let e = env();
    let dir = config_dir("fault-stall", &servers_json(), &model.models_json());
    let p = Proxy::start_in(&dir, &["--workers", "1", "--body-timeout", "1"], &[]);
    let addr = p.url.trim_start_matches("http://").to_string();
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    // The front reads every body before the request reaches a worker.
    let head = format!(
        "POST /segmentations/{FILT}/studies/{} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\n\r\n{{\"series",
        e.study_a.uid
    );
    stalled.write_all(head.as_bytes()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    // The only worker is free, and the stalled client got 408.
    assert_recovered(&p);
    let mut answer = String::new();
    use std::io::Read;
    stalled.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 408 "), "{answer}");
    assert!(answer.contains("\"body_timeout\""), "{answer}");
    drop(stalled);
}
