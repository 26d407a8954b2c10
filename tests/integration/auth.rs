//! PACS authentication against a fixture that speaks the zhiva auth protocol (RS256
//! JWTs, one-off auth tokens, short-lived access tokens) in front of a real Orthanc.

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::{json, Value};

const Z: &str = "a1407f18-575d-487c-bc0c-640c6da651bc";
const USER: &str = "alice";
const PASSWORD: &str = "alice-password";

/// The inference every test here makes: through the gateway, as server `Z`.
fn inference_url(p: &Proxy) -> String {
    format!("{}{}", p.url, series_path(SEG, Some(Z)))
}

fn start(model: &Model, dir: &Path, servers: Value, args: &[&str]) -> Proxy {
    let mut all = servers_json();
    for (k, v) in servers.as_object().unwrap() {
        all[k] = v.clone();
    }
    write_config(&dir.join("config"), &all, &model.models_json());
    Proxy::start_in(dir, args, &[])
}

fn zhiva(a: &AuthService, password: &str) -> Value {
    a.server(json!({"authType": "zhivaAuth", "login": USER, "password": password}))
}

/// Asserts nothing secret is in the proxy's log, the status page or the given texts.
fn assert_no_secrets(p: &Proxy, dir: &Path, extra: &[&str]) {
    let mut secrets = vec![PASSWORD.to_string(), "wrong-password".to_string()];
    for entry in std::fs::read_dir(dir.join("state/tokens"))
        .into_iter()
        .flatten()
        .flatten()
    {
        if let Ok(v) = serde_json::from_str::<Value>(
            &std::fs::read_to_string(entry.path()).unwrap_or_default(),
        ) {
            for k in ["access", "refresh"] {
                if let Some(t) = v[k].as_str() {
                    secrets.push(t.to_string());
                }
            }
        }
    }
    secrets.extend(extra.iter().map(|s| s.to_string()));
    let status = request(
        "GET",
        &format!("{}/status", p.url),
        &[("Accept", "application/json")],
        None,
    )
    .body;
    for s in &secrets {
        let head = &s[..s.len().min(40)];
        assert!(!p.logs().contains(head), "a secret is in the log");
        assert!(!status.contains(head), "a secret is on the status page");
    }
}

#[test]
fn zhiva_auth_signs_in_once_under_concurrency_and_refreshes_silently() {
    let model = model();
    let a = AuthService::start("zhiva", &["--access-ttl", "3", "--auth-delay", "0.2"]);
    let dir = tempdir("auth-zhiva");
    let p = start(
        &model,
        &dir,
        json!({Z: zhiva(&a, PASSWORD)}),
        &["--status-page"],
    );
    let url = inference_url(&p);
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let u = url.clone();
            thread::spawn(move || get(&u).status)
        })
        .collect();
    for c in clients {
        assert_eq!(c.join().unwrap(), 200);
    }
    let s = a.stats();
    assert_eq!(s["sign_in"], 1, "{s}");
    assert_eq!(
        s["max_concurrent_auth"], 1,
        "parallel sign-ins or refreshes: {s}"
    );
    // Several access-token lifetimes later, requests still just work.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let r = get(&url);
        assert_eq!(r.status, 200, "{}", r.body);
        thread::sleep(Duration::from_millis(700));
    }
    let s = a.stats();
    assert!(s["refresh_ok"].as_u64().unwrap() >= 2, "no refreshes: {s}");
    assert_eq!(s["sign_in"], 1, "refresh tokens should have sufficed: {s}");
    assert_eq!(s["max_concurrent_auth"], 1, "{s}");
    // A PACS that refuses the access token: refreshed and retried once, unnoticed.
    a.control("revoke-access-tokens", json!({}));
    let r = get(&url);
    assert_eq!(r.status, 200, "{}", r.body);
    // The refresh token refused too: signs in again.
    a.control("revoke-refresh-tokens", json!({}));
    a.control("revoke-access-tokens", json!({}));
    assert_eq!(get(&url).status, 200);
    assert_eq!(a.stats()["sign_in"], 2);
    let z = p.status_entry("servers", Z);
    assert_eq!(z["auth"]["state"], "ok", "{z}");
    assert_eq!(z["auth"]["hasRefreshToken"], true);
    assert_no_secrets(&p, &dir, &[]);
    // The token store: one file per server, 0600.
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(dir.join(format!("state/tokens/{Z}.json"))).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
}

#[test]
fn token_mode_survives_restarts_and_a_new_token_wins() {
    let model = model();
    let a = AuthService::start("token", &["--access-ttl", "3"]);
    let dir = tempdir("auth-token");
    let minted = a.control("mint-auth-token", json!({"username": USER}))["token"]
        .as_str()
        .unwrap()
        .to_string();
    let cfg = |t: &str| json!({Z: a.server(json!({"authType": "token", "authToken": t}))});
    let mut p = start(&model, &dir, cfg(&minted), &[]);
    assert_eq!(get(&inference_url(&p)).status, 200);
    assert_eq!(a.stats()["token_exchange_ok"], 1);
    p.stop();
    thread::sleep(Duration::from_secs(4)); // the stored access token has expired meanwhile
                                           // Restarted with the consumed token still in servers.json: the store carries on.
    let p2 = start(&model, &dir, cfg(&minted), &[]);
    assert_eq!(get(&inference_url(&p2)).status, 200, "{}", p2.logs());
    assert_eq!(
        a.stats()["token_exchange"],
        1,
        "the consumed auth token was used again"
    );
    drop(p2);
    // The docs' spelling `token` is accepted, and a newly minted token wins over the store.
    let fresh = a.control("mint-auth-token", json!({"username": USER}))["token"]
        .as_str()
        .unwrap()
        .to_string();
    let p3 = start(
        &model,
        &dir,
        json!({Z: a.server(json!({"authType": "token", "token": fresh}))}),
        &[],
    );
    assert_eq!(get(&inference_url(&p3)).status, 200);
    assert_eq!(a.stats()["token_exchange_ok"], 2);
    assert_no_secrets(&p3, &dir, &[&minted, &fresh]);
    drop(p3);
    // Consumed token, refresh tokens revoked: a clear failure that says what to do.
    a.control("revoke-refresh-tokens", json!({}));
    a.control("revoke-access-tokens", json!({}));
    let p4 = start(&model, &dir, cfg(&fresh), &["--status-page"]);
    let r = get(&inference_url(&p4));
    r.assert_error(502, "pacs_auth_failed");
    assert!(r.body.contains("mint a new auth token"), "{}", r.body);
    let z = p4.status_entry("servers", Z);
    assert_eq!(z["auth"]["state"], "failing", "{z}");
    assert!(z["auth"]["action"].as_str().unwrap().contains("authToken"));
    assert_no_secrets(&p4, &dir, &[&minted, &fresh]);
}

#[test]
fn wrong_password_is_pacs_auth_failed() {
    let model = model();
    let a = AuthService::start("wrong", &[]);
    let dir = tempdir("auth-wrong");
    let p = start(
        &model,
        &dir,
        json!({Z: zhiva(&a, "wrong-password")}),
        &["--status-page"],
    );
    let r = get(&inference_url(&p));
    r.assert_error(502, "pacs_auth_failed");
    assert!(r.body.contains("login and password"), "{}", r.body);
    // Requests during the backoff fail fast without hammering the auth service.
    let before = a.stats()["sign_in"].as_u64().unwrap();
    for _ in 0..5 {
        assert_eq!(get(&inference_url(&p)).status, 502);
    }
    assert!(a.stats()["sign_in"].as_u64().unwrap() <= before + 1);
    assert_no_secrets(&p, &dir, &[]);
}

#[test]
fn corrupt_store_is_logged_and_ignored() {
    let model = model();
    let a = AuthService::start("corrupt", &[]);
    let dir = tempdir("auth-corrupt");
    std::fs::create_dir_all(dir.join("state/tokens")).unwrap();
    std::fs::write(
        dir.join(format!("state/tokens/{Z}.json")),
        "{\"access\": \"abc\", \"refr",
    )
    .unwrap();
    let p = start(&model, &dir, json!({Z: zhiva(&a, PASSWORD)}), &[]);
    assert_eq!(get(&inference_url(&p)).status, 200);
    assert!(p.logs().contains("is corrupt"), "{}", p.logs());
    // And the store is whole again.
    let v: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join(format!("state/tokens/{Z}.json"))).unwrap(),
    )
    .unwrap();
    assert!(v["refresh"].is_string());
}

#[test]
fn auth_service_down_and_back() {
    let model = model();
    let a = AuthService::start("downup", &["--access-ttl", "3"]);
    let dir = tempdir("auth-downup");
    let p = start(
        &model,
        &dir,
        json!({Z: zhiva(&a, PASSWORD)}),
        &["--status-page"],
    );
    let url = inference_url(&p);
    assert_eq!(get(&url).status, 200);
    a.control("down", json!({}));
    thread::sleep(Duration::from_secs(4)); // the access token expires; refreshes fail
    let r = get(&url);
    r.assert_error(502, "pacs_auth_failed");
    assert!(r.body.contains("unavailable"), "{}", r.body);
    let z = p.status_entry("servers", Z);
    assert_eq!(z["auth"]["state"], "failing", "{z}");
    a.control("up", json!({}));
    // The background thread retries with backoff; soon requests work again.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let r = get(&url);
        if r.status == 200 {
            break;
        }
        assert!(Instant::now() < until, "never recovered: {}", r.body);
        thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn https_auth_service_with_an_extra_ca_file() {
    let model = model();
    let dir = tempdir("auth-https");
    make_cert(&dir.join("certs"));
    let a = AuthService::start_https(
        "https",
        &dir.join("certs/zhiva.crt"),
        &dir.join("certs/zhiva.key"),
    );
    assert!(a.url.starts_with("https://"));
    let server = || json!({Z: zhiva(&a, PASSWORD)});
    // Without the CA file the self-signed certificate is not trusted: no silent "accept anything".
    let p = start(&model, &dir, server(), &[]);
    let r = get(&inference_url(&p));
    r.assert_error(502, "pacs_auth_failed");
    drop(p);
    let trusted = dir.join("certs/trusted.crt");
    let p = start(
        &model,
        &dir,
        server(),
        &["--ca-file", trusted.to_str().unwrap()],
    );
    let r = get(&inference_url(&p));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn local_pacs_certificate_made_the_docs_way_is_trusted_through_the_ca_file() {
    // `openssl req -x509 ... -subj .../CN=localhost` as the zhiva docs say: no
    // subjectAltName, CA:TRUE. Pinned through the CA file, it is trusted as itself.
    let model = model();
    let dir = tempdir("auth-seedcert");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(fixtures().join("auth_service.py"))
        .args(["make-cert", "--style", "seed", "--out"])
        .arg(dir.join("certs"));
    succeed(cmd);
    let cert = dir.join("certs/trusted.crt");
    let key = dir.join("certs/server.key");
    let a = AuthService::start_https("seedcert", &cert, &key);
    let p = start(
        &model,
        &dir,
        json!({Z: zhiva(&a, PASSWORD)}),
        &["--ca-file", cert.to_str().unwrap()],
    );
    let r = get(&inference_url(&p));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn the_real_services_status_codes_work_too() {
    // `--zhiva-quirks`: the real gateway answers 403 for a dead access token, the
    // real auth service 500 for an expired token and 400 for a wrong login.
    let model = model();
    let a = AuthService::start("quirks", &["--zhiva-quirks", "--access-ttl", "3"]);
    let dir = tempdir("auth-quirks");
    let p = start(&model, &dir, json!({Z: zhiva(&a, PASSWORD)}), &[]);
    let url = inference_url(&p);
    assert_eq!(get(&url).status, 200);
    a.control("revoke-access-tokens", json!({}));
    let r = get(&url);
    assert_eq!(
        r.status, 200,
        "a 403 from the gateway is refreshed and retried: {}",
        r.body
    );
    a.control("revoke-refresh-tokens", json!({}));
    a.control("revoke-access-tokens", json!({}));
    assert_eq!(
        get(&url).status,
        200,
        "a refused refresh falls back to signing in"
    );
    drop(p);
    let dir = tempdir("auth-quirks-wrong");
    let p = start(&model, &dir, json!({Z: zhiva(&a, "wrong-password")}), &[]);
    let r = get(&inference_url(&p));
    r.assert_error(502, "pacs_auth_failed");
    assert!(r.body.contains("login and password"), "{}", r.body);
}
