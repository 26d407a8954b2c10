//! The inference path end to end: real Orthanc, real model API, real binary.

use std::thread;
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};

fn seg_url(study: &str) -> String {
    format!("/segmentations/{SEG}/studies/{study}")
}

/// SOP UIDs the model decoded in its last request, sorted.
fn decoded_sops(model: &Model) -> Vec<String> {
    let last = model.last();
    let mut v: Vec<String> = last["instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sop"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[test]
fn series_segmentation_reaches_the_model_and_comes_back() {
    let model = model();
    let e = env();
    let p = model.shared();
    let (series, instances) = &e.study_a.series[0];
    let r = p.get(&series_path(SEG, None));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r
        .header("content-type")
        .unwrap()
        .starts_with("application/json"));
    let body = r.json();
    let per_series = &body[&e.study_a.uid][series];
    for sop in instances {
        assert!(
            per_series[sop]["segments"].is_array(),
            "no segments for {sop}: {body}"
        );
    }
    assert_eq!(decoded_sops(&model), sorted(instances.clone()));
    let last = model.last();
    assert_eq!(last["kind"], "list");
    assert_eq!(last["chunked"], true, "the payload is streamed");
}

#[test]
fn study_level_sends_every_series() {
    let model = model();
    let e = env();
    let r = model.shared().get(&seg_url(&e.study_a.uid));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(decoded_sops(&model), sorted(e.study_a.all_instances()));
}

#[test]
fn instance_level_sends_one_instance() {
    let model = model();
    let e = env();
    let (series, instances) = &e.study_a.series[1];
    let r = model.shared().get(&format!(
        "{}/series/{series}/instances/{}",
        seg_url(&e.study_a.uid),
        instances[2]
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(decoded_sops(&model), vec![instances[2].clone()]);
    // One instance string, not a one-element list (the docs' full instance model).
    assert_eq!(model.last()["kind"], "instance");
}

#[test]
fn annotation_and_prediction_tasks() {
    let model = model();
    let e = env();
    let (series, _) = &e.study_a.series[0];
    let r = model.shared().get(&format!(
        "/annotations/{ANN}/studies/{}/series/{series}",
        e.study_a.uid
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    let text = r.body;
    assert!(text.contains("\"rois\""), "{text}");
    let r = model
        .shared()
        .get(&format!("/predictions/{PRED}/studies/{}", e.study_a.uid));
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.json()[&e.study_a.uid]["metadata"].is_array());
}

#[test]
fn server_parameter_selects_the_pacs_and_its_credentials() {
    let model = model();
    let e = env();
    let study_b = &e.study_b.uid;
    // Only server B holds this study: the default server does not have it.
    let r = model.shared().get(&seg_url(study_b));
    r.assert_error(404, "pacs_not_found");
    let r = model
        .shared()
        .get(&format!("{}?server={SERVER_B}", seg_url(study_b)));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(decoded_sops(&model), sorted(e.study_b.all_instances()));
    // The same PACS with a wrong password.
    let r = model
        .shared()
        .get(&format!("{}?server={SERVER_B_WRONG}", seg_url(study_b)));
    r.assert_error(502, "pacs_auth_failed");
    assert_eq!(r.json()["upstream_status"], 401);
}

#[test]
fn data_filter_post_sends_each_key_its_series() {
    let model = model();
    let e = env();
    let (s1, i1) = &e.study_a.series[0];
    let (s2, i2) = &e.study_a.series[1];
    let body = json!({"series-one": [s1], "series-two": [s2]}).to_string();
    let url = format!(
        "{}/segmentations/{FILT}/studies/{}",
        model.shared().url,
        e.study_a.uid
    );
    let r = request(
        "POST",
        &url,
        &[("Content-Type", "application/json")],
        Some(&body),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let last = model.last();
    assert_eq!(last["kind"], "dataFilter");
    let keyed = |key: &str| -> Vec<String> {
        sorted(
            last["instances"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|i| i["key"] == key)
                .map(|i| i["sop"].as_str().unwrap().to_string())
                .collect(),
        )
    };
    assert_eq!(keyed("series-one"), sorted(i1.clone()));
    assert_eq!(keyed("series-two"), sorted(i2.clone()));
    assert_eq!(r.json()["dataKeys"]["series-one"], i1.len());
}

#[test]
fn bad_data_filter_bodies_never_reach_upstream() {
    let model = model();
    let e = env();
    let (s1, _) = &e.study_a.series[0];
    let url = format!(
        "{}/segmentations/{FILT}/studies/{}",
        model.shared().url,
        e.study_a.uid
    );
    let before = model.count();
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "invalid_body"),
        (json!({"series-one": [s1]}).to_string(), "invalid_body"),
        (
            json!({"series-one": [s1], "series-two": [s1], "extra": [s1]}).to_string(),
            "invalid_body",
        ),
        (
            json!({"series-one": [s1], "series-two": []}).to_string(),
            "invalid_body",
        ),
        (
            json!({"series-one": s1, "series-two": [s1]}).to_string(),
            "invalid_body",
        ),
        (
            json!({"series-one": [s1], "series-two": ["1.2/../3"]}).to_string(),
            "invalid_uid",
        ),
    ];
    for (body, code) in cases {
        let r = request("POST", &url, &[], Some(&body));
        assert_eq!(
            (r.status, r.code()),
            (400, code.to_string()),
            "{body}: {}",
            r.body
        );
    }
    let r = request("GET", &url, &[], None);
    r.assert_error(400, "body_required");
    let big = format!("{{\"series-one\": [\"{}\"]}}", "1".repeat(100_000));
    let r = request("POST", &url, &[], Some(&big));
    r.assert_error(413, "body_too_large");
    let r = request(
        "POST",
        &format!("{}{}", model.shared().url, seg_url(&e.study_a.uid)),
        &[],
        Some("{}"),
    );
    r.assert_error(400, "unexpected_body");
    assert_eq!(
        model.count(),
        before,
        "a rejected request reached the model"
    );
}

#[test]
fn malformed_requests_are_rejected_before_upstream() {
    let model = model();
    let e = env();
    let st = &e.study_a.uid;
    let (se, _) = &e.study_a.series[0];
    let before = model.count();
    let cases = [
        ("/nothing/here".to_string(), 404, "not_found"),
        (format!("/segmentations/{SEG}"), 404, "not_found"),
        (
            format!("/segmentations/{SEG}/studies/{st}/frames/1"),
            404,
            "not_found",
        ),
        (
            format!("/segmentations/0d9508dd-9089-40c3-abdd-15f47120d682/studies/{st}"),
            404,
            "unknown_model",
        ),
        (
            format!(
                "{}?server=0d9508dd-9089-40c3-abdd-15f47120d682",
                seg_url(st)
            ),
            404,
            "unknown_server",
        ),
        (
            format!("/segmentations/not-a-uuid/studies/{st}"),
            400,
            "invalid_model_id",
        ),
        (
            format!("/segmentations/{SEG}/studies/1.2.abc"),
            400,
            "invalid_uid",
        ),
        (
            format!("/segmentations/{SEG}/studies/{st}/series/..%2F..%2Fsystem"),
            400,
            "invalid_uid",
        ),
        (
            format!("/segmentations/{SEG}/studies/{}", "1.".repeat(40) + "1"),
            400,
            "invalid_uid",
        ),
        (
            format!("{}?server=nope", seg_url(st)),
            400,
            "invalid_server_id",
        ),
        (
            format!("/predictions/{SEG}/studies/{st}"),
            400,
            "task_mismatch",
        ),
        (
            format!("/annotations/{ANN}/studies/{st}"),
            400,
            "unsupported_level",
        ),
        (
            format!("/predictions/{PRED}/studies/{st}/series/{se}"),
            400,
            "unsupported_level",
        ),
    ];
    for (path, status, code) in cases {
        let r = model.shared().get(&path);
        assert_eq!(
            (r.status, r.code()),
            (status, code.to_string()),
            "{path}: {}",
            r.body
        );
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
        let v = r.json();
        assert!(!v["message"].as_str().unwrap().is_empty());
        assert_eq!(
            (v["detail"].clone(), v["status"].as_u64()),
            (v["message"].clone(), Some(status as u64))
        );
    }
    let r = request(
        "PATCH",
        &format!("{}{}", model.shared().url, seg_url(st)),
        &[],
        None,
    );
    r.assert_error(405, "method_not_allowed");
    assert_eq!(
        model.count(),
        before,
        "a rejected request reached the model"
    );
}

#[test]
fn pacs_misses_are_404() {
    let model = model();
    let e = env();
    let st = &e.study_a.uid;
    let (se, inst) = &e.study_a.series[0];
    for path in [
        seg_url("1.2.3.4.5"),
        format!("{}/series/1.2.3.4.5", seg_url(st)),
        format!("{}/series/{se}/instances/1.2.3.4.5", seg_url(st)),
        // A real instance under the wrong series.
        format!(
            "{}/series/{}/instances/{}",
            seg_url(st),
            e.study_a.series[1].0,
            inst[0]
        ),
    ] {
        let r = model.shared().get(&path);
        assert_eq!(
            (r.status, r.code().as_str()),
            (404, "pacs_not_found"),
            "{path}: {}",
            r.body
        );
    }
}

#[test]
fn upstream_failures_say_which_and_how() {
    let model = model();
    let e = env();
    let st = &e.study_a.uid;
    let p = model.shared();
    let r = p.get(&format!("{}?server={SERVER_DOWN}", seg_url(st)));
    r.assert_error(502, "pacs_unreachable");
    let r = p.get(&format!("{}?server={SERVER_STALL}", seg_url(st)));
    r.assert_error(504, "pacs_timeout");
    let r = p.get(&series_path(MODEL_DOWN, None));
    r.assert_error(502, "model_unreachable");
    let r = p.get(&series_path(FAIL, None));
    r.assert_error(502, "model_error");
    assert_eq!(r.json()["upstream_status"], 500);
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("forced failure"));
    // And the proxy is still fine.
    let r = p.get(&series_path(SEG, None));
    assert_eq!(r.status, 200);
}

#[test]
fn model_timeout_is_504() {
    let model = model();
    let p = Proxy::start(&model, "model-timeout", &["--model-timeout", "1"], &[]);
    let r = p.get(&series_path(SLOW, None));
    r.assert_error(504, "model_timeout");
}

#[test]
fn cors_on_every_response_and_preflight() {
    let model = model();
    let e = env();
    let p = model.shared();
    let origin = "https://app.zhiva.ai";
    let ok = request(
        "GET",
        &format!("{}{}", p.url, seg_url(&e.study_a.uid)),
        &[("Origin", origin)],
        None,
    );
    assert_eq!(ok.status, 200);
    assert_eq!(ok.header("access-control-allow-origin"), Some(origin));
    let err = request(
        "GET",
        &format!("{}/nope", p.url),
        &[("Origin", "http://localhost:3000")],
        None,
    );
    assert_eq!(err.status, 404);
    assert_eq!(
        err.header("access-control-allow-origin"),
        Some("http://localhost:3000")
    );
    let denied = request(
        "GET",
        &format!("{}/healthz", p.url),
        &[("Origin", "https://evil.example")],
        None,
    );
    assert_eq!(denied.header("access-control-allow-origin"), None);
    assert_eq!(denied.header("vary"), Some("Origin"));
    let pre = request(
        "OPTIONS",
        &format!("{}{}", p.url, seg_url(&e.study_a.uid)),
        &[
            ("Origin", origin),
            ("Access-Control-Request-Method", "POST"),
            ("Access-Control-Request-Headers", "content-type"),
        ],
        None,
    );
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("access-control-allow-origin"), Some(origin));
    assert!(pre
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    assert_eq!(
        pre.header("access-control-allow-headers"),
        Some("content-type")
    );
}

#[test]
fn status_page_reports_health_without_secrets() {
    let model = model();
    let p = model.shared();
    // The poller runs every second: wait for a full round.
    let mut status = Value::Null;
    for _ in 0..100 {
        let r = request(
            "GET",
            &format!("{}/status", p.url),
            &[("Accept", "application/json")],
            None,
        );
        assert_eq!(r.status, 200);
        status = r.json();
        let servers = status["servers"].as_array().unwrap();
        if servers
            .iter()
            .all(|s| s["health"]["state"] != "unknown" || s["statusUri"].is_null())
        {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let find = |kind: &str, id: &str| -> Value {
        status[kind]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(
        find("servers", SERVER_A)["health"]["state"],
        "up",
        "{status}"
    );
    assert_eq!(find("servers", SERVER_A)["health"]["httpStatus"], 200);
    assert!(find("servers", SERVER_A)["health"]["checkedAt"].is_string());
    assert!(find("servers", SERVER_A)["health"]["latencyMs"].is_u64());
    assert_eq!(
        find("servers", SERVER_B)["health"]["state"],
        "up",
        "basic auth is used for the check"
    );
    assert_eq!(find("servers", SERVER_DOWN)["health"]["state"], "down");
    assert!(find("servers", SERVER_DOWN)["health"]["error"].is_string());
    assert_eq!(
        find("servers", SERVER_B_WRONG)["health"]["state"],
        "unknown"
    );
    assert_eq!(find("models", SEG)["health"]["state"], "up");
    assert_eq!(find("models", MODEL_DOWN)["health"]["state"], "down");
    let html = p.get("/status");
    assert!(html
        .header("content-type")
        .unwrap()
        .starts_with("text/html"));
    assert!(html.body.contains(SERVER_A) && html.body.contains(SEG));
    for text in [&html.body, &status.to_string(), &p.logs()] {
        assert!(!text.contains(B_PASSWORD), "the password leaked");
        assert!(!text.contains("wrong-password"), "the password leaked");
    }
}

#[test]
fn status_page_is_off_by_default() {
    let model = model();
    let p = Proxy::start(&model, "no-status", &[], &[]);
    let r = p.get("/status");
    r.assert_error(404, "not_found");
    let p = Proxy::start(
        &model,
        "status-env",
        &[],
        &[("ZHIVA_SHOW_STATUS_PAGE", "true")],
    );
    assert_eq!(p.get("/status").status, 200);
}

#[test]
fn health_answers_while_every_worker_is_busy_and_the_queue_sheds_load() {
    let model = model();
    let p = Proxy::start(&model, "busy", &["--workers", "1", "--queue", "1"], &[]);
    let slow = format!("{}{}", p.url, series_path(SLOW, None));
    // One request occupies the only worker, one waits in the queue.
    let busy: Vec<_> = (0..2)
        .map(|i| {
            let url = slow.clone();
            thread::sleep(Duration::from_millis(300 * i));
            thread::spawn(move || get(&url).status)
        })
        .collect();
    thread::sleep(Duration::from_millis(500));
    let r = p.get(&series_path(SLOW, None));
    r.assert_error(503, "overloaded");
    assert!(r.header("retry-after").is_some());
    assert_eq!(p.get("/healthz").status, 200);
    let ready = p.get("/readyz");
    assert_eq!(ready.status, 200);
    assert_eq!(ready.json()["workers"], 1);
    for b in busy {
        assert_eq!(b.join().unwrap(), 200);
    }
}

#[test]
fn logs_never_hold_the_password() {
    let model = model();
    let e = env();
    let p = Proxy::start(&model, "logs", &[], &[]);
    let r = p.get(&format!("{}?server={SERVER_B}", seg_url(&e.study_b.uid)));
    assert_eq!(r.status, 200);
    let r = p.get(&format!(
        "{}?server={SERVER_B_WRONG}",
        seg_url(&e.study_b.uid)
    ));
    assert_eq!(r.status, 502);
    let logs = p.logs();
    assert!(
        logs.contains("GET /segmentations/"),
        "access log missing: {logs}"
    );
    assert!(!logs.contains(B_PASSWORD) && !logs.contains("wrong-password"));
    assert!(!logs.contains(&auth_b64()), "the Basic credentials leaked");
}

fn auth_b64() -> String {
    // "proxyuser:s3cr3t-Pa55-w0rd" in base64, computed by hand to keep the test independent.
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            &format!("import base64;print(base64.b64encode(b'{B_USER}:{B_PASSWORD}').decode())"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn multipart_payload_opt_in() {
    let model = model();
    let e = env();
    let mut models = model.models_json();
    models[SEG]["payload"] = json!("multipart");
    let dir = config_dir("multipart", &servers_json(), &models);
    let p = Proxy::start_in(&dir, &[], &[]);
    let (series, instances) = &e.study_a.series[1];
    let r = p.get(&format!("{}/series/{series}", seg_url(&e.study_a.uid)));
    assert_eq!(r.status, 200, "{}", r.body);
    let last = model.last();
    assert_eq!(last["kind"], "multipart", "{last}");
    assert_eq!(decoded_sops(&model), sorted(instances.clone()));
    // A third of the zhiva payload's size: the DICOM bytes as they are.
    let dicom: u64 = last["bytes"].as_u64().unwrap();
    assert!(dicom < 50_000, "{dicom} bytes for four 64x64 slices");
}
