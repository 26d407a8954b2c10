//! The published zhiva contract: the six model types as a model written to the
//! docs' schemas (`docs_model.py`) receives them from real Orthanc, data filters
//! as browsers send them (headless Chromium with fetch and axios), the PACS
//! habits of servers other than Orthanc (`pacs_variants.py`), redirects, and
//! tokens with an audience.

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::common::*;

const FULL_STUDY: &str = "a1000000-0000-4000-8000-000000000001";
const FULL_SERIES: &str = "a1000000-0000-4000-8000-000000000002";
const FULL_INSTANCE: &str = "a1000000-0000-4000-8000-000000000003";
const FILTERED_STUDY: &str = "a1000000-0000-4000-8000-000000000004";
const NESTED_STUDY: &str = "a1000000-0000-4000-8000-000000000005";
const FILTERED_SERIES: &str = "a1000000-0000-4000-8000-000000000006";

/// A Python fixture that announces its port on stdout; stopped on drop.
struct Fixture {
    child: Child,
    info: Value,
}

impl Fixture {
    fn start(script: &str, name: &str, args: &[&str]) -> Fixture {
        let log = tempdir(name).join("fixture.log");
        let mut cmd = supervised(script);
        cmd.args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        let mut child = cmd.spawn().expect(script);
        let info = announced(&mut child).unwrap_or_else(|line| {
            panic!(
                "{script} did not start: {line} {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        Fixture { child, info }
    }

    fn url(&self) -> String {
        self.info["url"].as_str().unwrap().to_string()
    }

    fn last(&self) -> Value {
        get(&format!("{}/last", self.url())).json()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// One model of each of the docs' six types, all posting to `docs`.
fn six_models(docs: &str) -> Value {
    let m = |route: &str, supports: &str, filter: Value| {
        let mut v = json!({"uri": format!("{docs}/{route}"), "task": "segmentation",
                           "supports": [supports], "statusUri": format!("{docs}/")});
        if !filter.is_null() {
            v["dataFilter"] = filter;
        }
        v
    };
    json!({
        FULL_STUDY: m("full-study", "/studies", Value::Null),
        FULL_SERIES: m("full-series", "/studies/series", Value::Null),
        FULL_INSTANCE: m("full-instance", "/studies/series/instances", Value::Null),
        FILTERED_STUDY: m("filtered-study", "/studies", json!([
            {"dataKey": "series-one", "title": "First"}, {"dataKey": "series-two"}])),
        NESTED_STUDY: m("filtered-study", "/studies", json!([
            {"dataKey": "series-one", "title": "First", "dataFilter": [
                {"dataKey": "instance-one"}, {"dataKey": "instance-nth"}]},
            {"dataKey": "series-two"}])),
        FILTERED_SERIES: m("filtered-series", "/studies/series", json!([
            {"dataKey": "instance-one"}, {"dataKey": "instance-two"}])),
    })
}

/// `?data-filters=<the list, URL-encoded>`.
fn query(filters: &Value) -> String {
    let text = filters.to_string();
    let mut out = String::from("?data-filters=");
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[test]
fn the_six_model_types_receive_the_docs_bodies() {
    let e = env();
    let docs = Fixture::start("docs_model.py", "contract-docs", &["--port", "0"]);
    let dir = config_dir("contract-six", &servers_json(), &six_models(&docs.url()));
    let proxy = Proxy::start_in(&dir, &["--status-page", "--health-interval", "1"], &[]);
    let st = &e.study_a.uid;
    let (s1, i1) = &e.study_a.series[0];
    let (s2, i2) = &e.study_a.series[1];
    let study = format!("/studies/{st}");
    let series = format!("{study}/series/{s1}");
    let cases: Vec<(&str, String, Value)> = vec![
        (FULL_STUDY, study.clone(), json!(e.study_a.all_instances())),
        (FULL_SERIES, series.clone(), json!(i1)),
        (
            FULL_INSTANCE,
            format!("{series}/instances/{}", i1[2]),
            json!(i1[2]),
        ),
        (
            FILTERED_STUDY,
            format!(
                "{study}{}",
                query(
                    &json!([{"dataKey": "series-two", "uuid": s2}, {"dataKey": "series-one", "uuid": s1}])
                )
            ),
            json!({"series-one": {"data": i1}, "series-two": {"data": i2}}),
        ),
        (
            NESTED_STUDY,
            format!(
                "{study}{}",
                query(&json!([
                    {"dataKey": "series-one", "uuid": s1, "dataFilter": [
                        {"dataKey": "instance-nth", "uuid": i1[3]},
                        {"dataKey": "instance-one", "uuid": i1[0]}]},
                    {"dataKey": "series-two", "uuid": s2}]))
            ),
            json!({"series-one": {"data": {"instance-one": {"data": i1[0]}, "instance-nth": {"data": i1[3]}}},
                   "series-two": {"data": i2}}),
        ),
        (
            FILTERED_SERIES,
            format!(
                "{series}{}",
                query(
                    &json!([{"dataKey": "instance-one", "uuid": i1[1]}, {"dataKey": "instance-two", "uuid": i1[2]}])
                )
            ),
            json!({"instance-one": {"data": i1[1]}, "instance-two": {"data": i1[2]}}),
        ),
    ];
    for (model, path, want) in cases {
        let r = proxy.get(&format!("/segmentations/{model}{path}"));
        assert_eq!(r.status, 200, "{model}: {}", r.body);
        let last = docs.last();
        // Lists come in the PACS's order, which is not the generator's.
        assert_eq!(sorted(&last["received"]), sorted(&want), "{model}: {last}");
        // The model's answer is relayed: the zhiva result keyed by the study.
        assert!(r.json()[st].is_object(), "{model}: {}", r.body);
    }
    // An instance filed under a series it does not belong to: the PACS's 404, named.
    let wrong = query(
        &json!([{"dataKey": "instance-one", "uuid": i2[0]}, {"dataKey": "instance-two", "uuid": i1[0]}]),
    );
    let before = get(&format!("{}/count", docs.url())).json()["count"].clone();
    let r = proxy.get(&format!("/segmentations/{FILTERED_SERIES}{series}{wrong}"));
    r.assert_error(404, "pacs_not_found");
    assert!(
        r.json()["message"].as_str().unwrap().contains(&i2[0]),
        "{}",
        r.body
    );
    let after = get(&format!("{}/count", docs.url())).json()["count"].clone();
    assert_eq!(before, after, "the model was not called");
    // A filter that does not fit the model is refused before anything goes upstream, naming the key.
    let r = proxy.get(&format!(
        "/segmentations/{NESTED_STUDY}{study}{}",
        query(
            &json!([{"dataKey": "series-one", "uuid": s1}, {"dataKey": "series-two", "uuid": s2}])
        )
    ));
    r.assert_error(400, "invalid_body");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("instance-one"),
        "{}",
        r.body
    );
    // The official models' statusUri answers 307 to /docs: up, after the redirect.
    let start = Instant::now();
    loop {
        let s = proxy.status_entry("models", FULL_STUDY);
        if s["health"]["state"] == "up" {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "not up: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `v` with every list of strings sorted.
fn sorted(v: &Value) -> Value {
    match v {
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(sorted).collect();
            items.sort_by_key(|i| i.to_string());
            Value::Array(items)
        }
        Value::Object(o) => Value::Object(o.iter().map(|(k, v)| (k.clone(), sorted(v))).collect()),
        other => other.clone(),
    }
}

/// Runs `tests/browser/viewer.mjs` with `spec`; its results by request name.
pub fn browser(spec: &Value) -> Vec<Value> {
    let dir = tempdir(&format!("browser-{}", free_port()));
    let spec_file = dir.join("spec.json");
    std::fs::write(&spec_file, spec.to_string()).unwrap();
    let browser_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        browser_dir.join("node_modules/playwright-core").is_dir(),
        "tests/browser has no npm packages: run scripts/setup.sh (it installs them and Chromium)"
    );
    let mut cmd = std::process::Command::new("node");
    cmd.arg(browser_dir.join("viewer.mjs"))
        .arg(&spec_file)
        .current_dir(&browser_dir);
    let stdout = succeed(cmd);
    serde_json::from_slice(&stdout).unwrap_or_else(|_| {
        panic!(
            "viewer.mjs printed no JSON: {}",
            String::from_utf8_lossy(&stdout)
        )
    })
}

#[test]
fn data_filters_as_browsers_send_them() {
    let e = env();
    let docs = Fixture::start("docs_model.py", "contract-browser-docs", &["--port", "0"]);
    let dir = config_dir(
        "contract-browser",
        &servers_json(),
        &six_models(&docs.url()),
    );
    let proxy = Proxy::start_in(&dir, &["--allowed-origins", "http://127.0.0.1:*"], &[]);
    let st = &e.study_a.uid;
    let (s1, i1) = &e.study_a.series[0];
    let (s2, i2) = &e.study_a.series[1];
    let filters = json!([
        {"dataKey": "series-one", "uuid": s1, "dataFilter": [
            {"dataKey": "instance-one", "uuid": i1[0]}, {"dataKey": "instance-nth", "uuid": i1[3]}]},
        {"dataKey": "series-two", "uuid": s2}]);
    let path = format!("/segmentations/{NESTED_STUDY}/studies/{st}");
    let want = json!({"series-one": {"data": {"instance-one": {"data": i1[0]}, "instance-nth": {"data": i1[3]}}},
                      "series-two": {"data": i2}});
    // One request at a time, so the model's /last is each request's own.
    for client in ["fetch", "axios0", "axios1"] {
        let spec = json!({"proxy": proxy.url, "requests": [
            {"name": client, "client": client, "path": path, "params": {"data-filters": filters}}]});
        let r = &browser(&spec)[0];
        assert_eq!(r["status"], 200, "{client}: {r}");
        assert_eq!(sorted(&docs.last()["received"]), sorted(&want), "{client}");
    }
    // The error body as a browser reads it: CORS lets it, and `message` is at the top.
    let spec = json!({"proxy": proxy.url, "requests": [
        {"name": "bad", "client": "axios1", "path": path,
         "params": {"data-filters": [{"dataKey": "series-nine", "uuid": s1}]}}]});
    let r = &browser(&spec)[0];
    assert_eq!(r["status"], 400, "{r}");
    let body: Value = serde_json::from_str(r["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["code"], "invalid_body");
    assert!(
        body["message"].as_str().unwrap().contains("series-nine"),
        "{body}"
    );
}

/// Every PACS habit gives a segmentation (or the documented error), through real
/// DICOM files served by `pacs_variants.py` with HTTP Basic on.
#[test]
fn pacs_habits_other_than_orthancs() {
    let data = tempdir("variants-data");
    let study = generate(&data, 1, 3, 33);
    let pacs = Fixture::start(
        "pacs_variants.py",
        "variants",
        &[
            "--dicom-dir",
            data.to_str().unwrap(),
            "--port",
            "0",
            "--second-port",
            "0",
            "--basic-auth",
            "viewer:pw",
        ],
    );
    let model = model();
    let variants = [
        "plain",
        "quoted",
        "preamble",
        "padding",
        "headers",
        "odd-boundary",
        "lf",
        "chunked",
        "sized",
        "close",
        "needs-any-ts",
        "redirect-relative",
        "redirect-root",
        "redirect-307",
        "redirect-chain",
        "redirect-other-origin",
        "empty-multipart",
        "no-content",
        "not-found",
        "redirect-loop",
    ];
    let id = |i: usize| format!("c1000000-0000-4000-8000-{i:012}");
    let mut servers = serde_json::Map::new();
    for (i, v) in variants.iter().enumerate() {
        servers.insert(
            id(i),
            json!({"uri": format!("{}/{v}", pacs.url()), "authType": "basicAuth",
                   "login": "viewer", "password": "pw", "isDefault": i == 0}),
        );
    }
    let dir = config_dir(
        "variants-proxy",
        &Value::Object(servers),
        &model.models_json(),
    );
    let proxy = Proxy::start_in(&dir, &[], &[]);
    let (series, sops) = &study.series[0];
    for (i, v) in variants.iter().enumerate() {
        let before = model.count();
        let r = proxy.get(&format!(
            "/segmentations/{SEG}/studies/{}/series/{series}?server={}",
            study.uid,
            id(i)
        ));
        match *v {
            "empty-multipart" | "no-content" | "not-found" => {
                r.assert_error(404, "pacs_not_found");
                assert_eq!(model.count(), before, "{v}: the model was not called");
            }
            "redirect-loop" => r.assert_error(502, "pacs_bad_response"),
            _ => {
                assert_eq!(r.status, 200, "{v}: {}", r.body);
                let got: Vec<String> = model.last()["instances"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|i| i["sop"].as_str().unwrap().to_string())
                    .collect();
                let mut want = sops.clone();
                let mut got_sorted = got.clone();
                want.sort();
                got_sorted.sort();
                assert_eq!(got_sorted, want, "{v}");
            }
        }
    }
    // Credentials went to the PACS's own origin only, never across the redirect.
    let seen = get(&format!("{}/control/requests", pacs.url())).json();
    let seen = seen.as_array().unwrap();
    assert!(seen
        .iter()
        .filter(|r| r["listener"] == "second")
        .all(|r| r["had_authorization"] == false));
    assert!(seen.iter().any(|r| r["listener"] == "second"));
    assert!(seen
        .iter()
        .filter(|r| r["listener"] == "main")
        .all(|r| r["had_authorization"] == true));
    // The 406 was retried with any transfer syntax, and said so.
    assert!(seen
        .iter()
        .any(|r| r["path"].as_str().unwrap().starts_with("/needs-any-ts")
            && r["accept"].as_str().unwrap().contains("transfer-syntax=*")));
    assert!(proxy.logs().contains("asking for any"));
}

#[test]
fn a_model_that_redirects_its_post() {
    let model = model();
    let mut models = model.models_json();
    let streamed = "e1000000-0000-4000-8000-000000000001";
    let spooled = "e1000000-0000-4000-8000-000000000002";
    models[streamed] = json!({"uri": format!("{}/redirect/307/segmentation", model.url()),
                              "task": "segmentation", "supports": ["/studies/series"]});
    models[spooled] = json!({"uri": format!("{}/redirect/307/segmentation", model.url()),
                             "task": "segmentation", "supports": ["/studies/series"], "contentLength": true});
    let dir = config_dir("model-redirect", &servers_json(), &models);
    let proxy = Proxy::start_in(&dir, &[], &[]);
    let r = proxy.get(&series_path(streamed, None));
    r.assert_error(502, "model_error");
    assert!(
        r.json()["message"]
            .as_str()
            .unwrap()
            .contains("/segmentation"),
        "names the Location: {}",
        r.body
    );
    let r = proxy.get(&series_path(spooled, None));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(model.last()["path"], "/segmentation");
    assert_eq!(model.last()["count"], 4);
}

/// A token minted for a viewer domain (`aud`) is accepted by the auth service and
/// the PACS only with `Origin: <aud>`: the proxy sends it.
#[test]
fn tokens_with_an_audience_get_their_origin() {
    let model = model();
    let auth = AuthService::start("aud", &[]);
    let minted = auth.control(
        "mint-auth-token",
        json!({"username": "alice", "aud": "https://viewer.example"}),
    );
    let token = minted["token"].as_str().unwrap();
    let mut servers = servers_json();
    servers[SERVER_A] =
        auth.server(json!({"authType": "token", "authToken": token, "isDefault": true}));
    let dir = config_dir("aud", &servers, &model.models_json());
    let proxy = Proxy::start_in(&dir, &[], &[]);
    let r = proxy.get(&series_path(SEG, None));
    assert_eq!(r.status, 200, "{}", r.body);
    let stats = auth.stats();
    assert!(stats["pacs_ok"].as_u64().unwrap() >= 1, "{stats}");
}

/// A model whose status probe goes unanswered while this proxy has an inference
/// running on it is busy thinking, not down.
#[test]
fn a_model_thinking_is_busy_not_down() {
    let model = model();
    let e = env();
    let mut models = model.models_json();
    let thinker = "f1000000-0000-4000-8000-000000000001";
    models[thinker] = json!({"uri": format!("{}/slow/9", model.url()), "task": "segmentation",
                             "supports": ["/studies/series"], "statusUri": e.stall});
    let dir = config_dir("busy", &servers_json(), &models);
    let proxy = Proxy::start_in(&dir, &["--status-page", "--health-interval", "1"], &[]);
    let url = format!("{}{}", proxy.url, series_path(thinker, None));
    let running = std::thread::spawn(move || get(&url).status);
    let start = Instant::now();
    let mut seen = Vec::new();
    while start.elapsed() < Duration::from_secs(9) {
        let state = proxy.status_entry("models", thinker)["health"]["state"].clone();
        seen.push(state);
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(running.join().unwrap(), 200);
    assert!(seen.iter().any(|s| s == "busy"), "{seen:?}");
    assert!(!seen.iter().any(|s| s == "up"), "{seen:?}");
}
