//! HTTPS: the default way the proxy serves, on a current rustls in front of tiny_http.

use std::io::Read;
use std::process::Command;

use crate::common::*;

#[test]
fn inference_over_https() {
    let model = model();
    let e = env();
    let p = Proxy::start_tls(&model, "https", &[]);
    let cert = p.config_dir.parent().unwrap().join("certs/zhiva.crt");
    let agent = agent_trusting(&cert, None);
    let (series, instances) = &e.study_a.series[0];
    let url = format!("{}{}", p.url, series_path(SEG, None));
    // Several requests on one kept-alive connection, then on fresh ones.
    for _ in 0..3 {
        let r = agent
            .get(&url)
            .header("Origin", "https://app.zhiva.ai")
            .call()
            .unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(
            r.headers().get("access-control-allow-origin").unwrap(),
            "https://app.zhiva.ai"
        );
        let mut body = String::new();
        r.into_body()
            .into_reader()
            .read_to_string(&mut body)
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v[&e.study_a.uid][series].as_object().unwrap().len(),
            instances.len() + 1
        );
    }
    let r = agent.get(format!("{}/nope", p.url)).call().unwrap();
    assert_eq!(r.status(), 404);

    // The healthcheck trusts the proxy's own certificate by default.
    let status = Command::new(proxy_bin())
        .args([
            "healthcheck",
            "--url",
            &format!("{}/healthz", p.url),
            "--tls-cert",
        ])
        .arg(&cert)
        .status()
        .unwrap();
    assert!(status.success());
    // Plain HTTP on the HTTPS port gets nowhere.
    let plain = p.url.replace("https://", "http://");
    let r = ureq::Agent::config_builder()
        .timeout_global(Some(std::time::Duration::from_secs(5)))
        .build()
        .new_agent()
        .get(format!("{plain}/healthz"))
        .call();
    assert!(r.is_err());
}

#[test]
fn old_tls_versions_are_refused() {
    let Ok(out) = Command::new("curl").arg("--version").output() else {
        return;
    };
    assert!(out.status.success());
    let model = model();
    let p = Proxy::start_tls(&model, "tls-versions", &[]);
    let cert = p.config_dir.parent().unwrap().join("certs/zhiva.crt");
    let curl = |extra: &[&str]| {
        Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
            .arg(&cert)
            .args(extra)
            .arg(format!("{}/healthz", p.url))
            .output()
            .unwrap()
    };
    assert_eq!(String::from_utf8_lossy(&curl(&["--tlsv1.3"]).stdout), "200");
    assert_eq!(
        String::from_utf8_lossy(&curl(&["--tlsv1.2", "--tls-max", "1.2"]).stdout),
        "200"
    );
    let old = curl(&["--tlsv1.0", "--tls-max", "1.1"]);
    assert_ne!(String::from_utf8_lossy(&old.stdout), "200");
}

#[test]
fn missing_certificate_is_a_clear_startup_error() {
    let d = bare_config_dir("nocert");
    let out = Command::new(proxy_bin())
        .args([
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            "/nonexistent/zhiva.crt",
            "--tls-key",
            "/nonexistent/zhiva.key",
        ])
        .arg("--config")
        .arg(d.join("config"))
        .arg("--state-dir")
        .arg(d.join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read the TLS certificate /nonexistent/zhiva.crt"),
        "{err}"
    );
    assert!(err.contains("--no-tls"), "{err}");
}
