//! The command line as scripts and service managers use it.

use std::process::Command;

use crate::common::*;

fn run(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(proxy_bin())
        .args(args)
        .output()
        .expect("run model-proxy");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD_SERVERS: &str = r#"{
  // pasted from the zhiva docs: comments and trailing commas
  "b1407f18-575d-487c-bc0c-640c6da651bc": {
    "uri": "https://localhost/zhiva/pacs",
    "isDefault": true,
    "statusUri": "https://localhost/zhiva/pacs/studies",
    "authType": "basicAuth",
    "login": "zhiva",
    "password": "35&Q39Nj&i@Eyk6P",
  },
}"#;

const GOOD_MODELS: &str = r#"{
  "1d9508dd-9089-40c3-abdd-15f47120d682": {
    "uri": "http://lung_model_api:8011/segmentation",
    "task": "segmentation",
    "supports": ["/studies/series"],
    "statusUri": "http://lung_model_api:8011", //optional
  }
}"#;

/// A temp dir holding servers.json and models.json as written, comments and errors included.
fn config_files(name: &str, servers: &str, models: &str) -> std::path::PathBuf {
    let d = tempdir(name);
    std::fs::write(d.join("servers.json"), servers).unwrap();
    std::fs::write(d.join("models.json"), models).unwrap();
    d
}

#[test]
fn check_config_accepts_the_docs_examples() {
    let d = config_files("good", GOOD_SERVERS, GOOD_MODELS);
    let (code, out, _) = run(&["check-config", "--config", d.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.starts_with("ok: 1 server(s)"), "{out}");
    assert_eq!(out.lines().count(), 1);
}

#[test]
fn check_config_lists_every_problem_with_its_place() {
    let servers = r#"{
  "b1407f18-575d-487c-bc0c-640c6da651bc": {"uri": "https://a", "isDefault": true},
  "c1407f18-575d-487c-bc0c-640c6da651bc": {"uri": "https://b", "isDefault": true},
  "d1407f18-575d-487c-bc0c-640c6da651bc": {"uri": "https://c", "authType": "zhivaAuth", "login": "x"}
}"#;
    let models = r#"{
  "model-one": {"uri": "http://m", "task": "segmentation", "supports": ["/studies"]},
  "1d9508dd-9089-40c3-abdd-15f47120d682": {"uri": "http://m", "task": "classification", "supports": ["/series"]}
}"#;
    let d = config_files("bad", servers, models);
    let (code, _, err) = run(&["check-config", "--config", d.to_str().unwrap()]);
    assert_eq!(code, 1);
    for needle in [
        "servers.json:4:3: d1407f18-575d-487c-bc0c-640c6da651bc.password: `password` is required for zhivaAuth",
        "signInServer",
        "2 servers have \"isDefault\": true",
        "models.json:2:3: model-one: the key must be a UUID",
        "task: unknown task \"classification\"",
        "supports: unknown level \"/series\"",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    let d = config_files("syntax", "{\n  \"a\": [1, 2\n}", "{}");
    let (code, _, err) = run(&["check-config", "--config", d.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("servers.json:3:1: not valid JSON"), "{err}");
    let (code, _, err) = run(&["check-config", "--config", "/nonexistent/dir"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot read the file"), "{err}");
}

#[test]
fn serve_refuses_a_bad_config() {
    let d = config_files("refuse", "{}", GOOD_MODELS);
    let (code, _, err) = run(&[
        "serve",
        "--no-tls",
        "--listen",
        "127.0.0.1:0",
        "--config",
        d.to_str().unwrap(),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("no servers defined"), "{err}");
}

#[test]
fn healthcheck_exit_codes() {
    let d = bare_config_dir("hc");
    let p = Proxy::start_in(&d, &[], &[]);
    let (code, _, _) = run(&["healthcheck", "--url", &format!("{}/healthz", p.url)]);
    assert_eq!(code, 0);
    let (code, _, _) = run(&["healthcheck", "--url", &format!("{}/readyz", p.url)]);
    assert_eq!(code, 0);
    let (code, _, err) = run(&["healthcheck", "--url", &format!("{}/status", p.url)]);
    assert_eq!(code, 1, "404 is not healthy");
    assert!(err.contains("404"));
    let (code, _, _) = run(&[
        "healthcheck",
        "--url",
        &format!("http://127.0.0.1:{}/healthz", free_port()),
    ]);
    assert_eq!(code, 1);
    let env_url = Command::new(proxy_bin())
        .arg("healthcheck")
        .env("ZHIVA_HEALTHCHECK_URL", format!("{}/healthz", p.url))
        .status()
        .unwrap();
    assert!(env_url.success());
}

#[test]
fn help_version_and_usage_errors() {
    let (code, out, _) = run(&["--version"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("model-proxy "));
    let (code, out, _) = run(&["--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--config",
        "--listen",
        "--workers",
        "--state-dir",
        "--tls-cert",
        "--tls-key",
        "--no-tls",
        "ZHIVA_SHOW_STATUS_PAGE",
        "check-config",
        "healthcheck",
    ] {
        assert!(out.contains(flag), "help lacks {flag}");
    }
    let (code, _, err) = run(&["--frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("unknown option --frobnicate"));
}

#[test]
fn shipped_example_configs_are_valid() {
    let d = tempdir("examples");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    std::fs::copy(root.join("servers.example.json"), d.join("servers.json")).unwrap();
    std::fs::copy(root.join("models.example.json"), d.join("models.json")).unwrap();
    let (code, out, err) = run(&["check-config", "--config", d.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn metrics_are_prometheus_text() {
    let d = bare_config_dir("metrics");
    let p = Proxy::start_in(&d, &[], &[]);
    assert_eq!(p.get("/healthz").status, 200);
    assert_eq!(p.get("/nope/x").status, 404);
    let m = p.get("/metrics");
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().starts_with("text/plain"));
    for needle in [
        "model_proxy_requests_total{route=\"healthz\",status=\"200\",model=\"\"} 1",
        "model_proxy_requests_total{route=\"other\",status=\"404\",model=\"\"} 1",
        "# TYPE model_proxy_queue_depth gauge",
        "model_proxy_workers_alive 16",
    ] {
        assert!(m.body.contains(needle), "missing {needle} in\n{}", m.body);
    }
}
