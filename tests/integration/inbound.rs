//! Inbound access control (`--inbound-auth`): zhiva access tokens shaped like the
//! auth service's (RS256 keys generated here, and the auth service fixture's own
//! tokens), API keys from a file, the attacks a security review tries, the
//! audit trail, per-caller concurrency. A refused request must reach neither a
//! PACS nor a model: refused requests go to a "PACS" that counts connections.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::common::*;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

/// An attack: what it is, the headers it sends, the status and code it must get, and
/// a word of the message that shows it was refused for the right reason.
type Case<'a> = (&'a str, Vec<(&'a str, String)>, u16, &'a str, &'a str);

/// A server whose "PACS" only counts the connections it gets.
const COUNTER: &str = "c3140137-a63d-4ad1-b489-3479bc43387c";
const VIEWER: &str = "https://viewer.zhiva.ai";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn b64url(data: &[u8]) -> String {
    model_proxy::parsers::base64(data)
        .trim_end_matches('=')
        .replace('+', "-")
        .replace('/', "_")
}

/// An RSA key pair made with openssl, as the zhiva README has one made.
struct Keypair {
    public: PathBuf,
    public_pem: Vec<u8>,
    private: EncodingKey,
}

fn keypair(dir: &Path, name: &str, bits: u32) -> Keypair {
    let private = dir.join(format!("{name}_priv.pem"));
    let public = dir.join(format!("{name}_pub.pem"));
    let der = dir.join(format!("{name}_priv.der"));
    let run = |args: &[&str]| {
        let mut cmd = Command::new("openssl");
        cmd.args(args);
        succeed(cmd);
    };
    let p = private.to_str().unwrap();
    run(&["genrsa", "-out", p, &bits.to_string()]);
    run(&["rsa", "-in", p, "-pubout", "-out", public.to_str().unwrap()]);
    run(&[
        "rsa",
        "-in",
        p,
        "-traditional",
        "-outform",
        "DER",
        "-out",
        der.to_str().unwrap(),
    ]);
    Keypair {
        public_pem: std::fs::read(&public).unwrap(),
        public,
        private: EncodingKey::from_rsa_der(&std::fs::read(&der).unwrap()),
    }
}

/// The claims the auth service puts in an access token (auth-server/utils/jwt.ts):
/// `expiresIn: "24h"`, issuer zhiva.ai, no jti, `aud` only when bound to an origin.
fn access_claims(user: &str) -> Value {
    let t = now();
    json!({"name": format!("{user} (name)"), "username": user, "canEditResource": false,
           "iat": t, "exp": t + 86_400, "iss": "zhiva.ai"})
}

fn sign(k: &Keypair, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &k.private).unwrap()
}

fn counter() -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/dicom-web", l.local_addr().unwrap());
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    thread::spawn(move || {
        for s in l.incoming() {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (url, n)
}

/// Starts a proxy on the fixtures' config plus the counting server.
fn start(model: &Model, dir: &Path, counter_url: &str, args: &[&str]) -> Proxy {
    let mut servers = servers_json();
    servers[COUNTER] = json!({"uri": counter_url});
    write_config(&dir.join("config"), &servers, &model.models_json());
    Proxy::start_in(dir, args, &[("ZHIVA_ALLOWED_ORIGINS", VIEWER)])
}

fn inference_path(model: &str, server: Option<&str>) -> String {
    let e = env();
    let (se, _) = &e.study_a.series[0];
    let q = server.map(|s| format!("?server={s}")).unwrap_or_default();
    let task = if model == ANN {
        "annotations"
    } else {
        "segmentations"
    };
    format!("/{task}/{model}/studies/{}/series/{se}{q}", e.study_a.uid)
}

fn call(p: &Proxy, path: &str, headers: &[(&str, &str)]) -> Resp {
    request("GET", &format!("{}{path}", p.url), headers, None)
}

/// Asserts that the series inference on `model` succeeds with these headers.
#[track_caller]
fn allowed(p: &Proxy, model: &str, headers: &[(&str, &str)]) {
    let r = call(p, &inference_path(model, None), headers);
    assert_eq!(r.status, 200, "{}", r.body);
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// SHA-256 in hex, as the key file holds an API key.
fn hex(key: &str) -> String {
    ring::digest::digest(&ring::digest::SHA256, key.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The audit lines written so far.
fn audit_lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// The proxy's pid, from the name of its backend socket.
fn proxy_pid(dir: &Path) -> String {
    std::fs::read_dir(dir.join("state/run"))
        .unwrap()
        .flatten()
        .find_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            Some(
                n.strip_prefix("backend-")?
                    .strip_suffix(".sock")?
                    .to_string(),
            )
        })
        .expect("a backend socket")
}

fn hup(dir: &Path) {
    let ok = Command::new("kill")
        .args(["-s", "HUP", &proxy_pid(dir)])
        .status()
        .unwrap();
    assert!(ok.success());
}

#[test]
fn zhiva_tokens_every_attack_is_refused_before_any_upstream() {
    let model = model();
    let e = env();
    let dir = tempdir("inbound-jwt");
    let k1 = keypair(&dir, "k1", 2048);
    let k2 = keypair(&dir, "k2", 2048);
    let other = keypair(&dir, "other", 2048);
    let (counter_url, hits) = counter();
    let audit = dir.join("audit.log");
    let keys = format!("{},{}", k1.public.display(), k2.public.display());
    let p = start(
        &model,
        &dir,
        &counter_url,
        &[
            "--inbound-auth",
            "zhiva-jwt",
            "--jwt-public-key",
            &keys,
            "--audit-log",
            audit.to_str().unwrap(),
            "--status-page",
        ],
    );
    let good = sign(&k1, &access_claims("alice"));

    // The valid token works, with the current and the rotated-in key.
    allowed(&p, SEG, &[("Authorization", &bearer(&good))]);
    let rotated = sign(&k2, &access_claims("bob"));
    allowed(&p, SEG, &[("Authorization", &bearer(&rotated))]);
    // Scoped to this study and PACS (by UUID, and by the server's uri): allowed.
    let mut scoped = access_claims("carol");
    scoped["studyUID"] = json!(e.study_a.uid);
    scoped["pacs"] = json!(SERVER_A);
    allowed(&p, SEG, &[("Authorization", &bearer(&sign(&k1, &scoped)))]);
    scoped["pacs"] = json!(e.pacs_a);
    allowed(&p, SEG, &[("Authorization", &bearer(&sign(&k1, &scoped)))]);

    let models_before = model.count();
    let target = inference_path(SEG, Some(COUNTER));
    let t = now();
    let with = |f: &dyn Fn(&mut Value)| {
        let mut c = access_claims("mallory");
        f(&mut c);
        sign(&k1, &c)
    };
    let header_b64 = |h: &str| b64url(h.as_bytes());
    let payload_of = |tok: &str| tok.split('.').nth(1).unwrap().to_string();
    let alg_none = format!(
        "{}.{}.",
        header_b64(r#"{"alg":"none","typ":"JWT"}"#),
        payload_of(&good)
    );
    // The classic confusion: HS256 with the (public) RSA key as the HMAC secret.
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &access_claims("mallory"),
        &EncodingKey::from_secret(&k1.public_pem),
    )
    .unwrap();
    let tampered = {
        let parts: Vec<&str> = good.split('.').collect();
        let mut c = access_claims("alice");
        c["username"] = json!("admin");
        format!(
            "{}.{}.{}",
            parts[0],
            b64url(c.to_string().as_bytes()),
            parts[2]
        )
    };
    let refresh = with(&|c| c["exp"] = json!(t + 30 * 86_400));
    let auth_token = with(&|c| {
        c["tokenServer"] = json!("https://localhost/auth/generate-access-token");
        c["refreshServer"] = json!("https://localhost/auth/refresh-token");
        c["pacs"] = json!("https://localhost/zhiva/pacs");
    });
    let expired = with(&|c| {
        c["iat"] = json!(t - 90_000);
        c["exp"] = json!(t - 3_600);
    });
    let bound = with(&|c| c["aud"] = json!(VIEWER));
    // A bearer token and what it must get: 401 invalid_credential or 403 forbidden.
    let invalid = |what, token: String, why| -> Case {
        (
            what,
            vec![("Authorization", bearer(&token))],
            401,
            "invalid_credential",
            why,
        )
    };
    let forbidden = |what, token: String, why| -> Case {
        (
            what,
            vec![("Authorization", bearer(&token))],
            403,
            "forbidden",
            why,
        )
    };
    let mut cases: Vec<Case> = vec![
        (
            "no credential",
            vec![],
            401,
            "unauthorized",
            "needs a credential",
        ),
        (
            "basic, not bearer",
            vec![("Authorization", "Basic YTpi".into())],
            401,
            "unauthorized",
            "only Bearer",
        ),
        invalid("expired", expired, "expired"),
        invalid(
            "wrong issuer",
            with(&|c| c["iss"] = json!("evil.example")),
            "issuer",
        ),
        invalid(
            "no issuer",
            with(&|c| {
                c.as_object_mut().unwrap().remove("iss");
            }),
            "issuer",
        ),
        invalid(
            "not yet valid",
            with(&|c| c["nbf"] = json!(t + 3_600)),
            "nbf",
        ),
        invalid("alg none", alg_none, "RS256"),
        invalid(
            "HS256 keyed with the public key",
            hs256,
            "not signed with RS256",
        ),
        invalid("tampered payload", tampered, "signature"),
        invalid(
            "signed by an unknown key",
            sign(&other, &access_claims("alice")),
            "signature",
        ),
        invalid("refresh token", refresh, "refresh token"),
        invalid("one-off auth token", auth_token, "auth token"),
        invalid("garbage", "not.a.jwt".into(), "not a JWT"),
        forbidden("aud without Origin", bound.clone(), "origin"),
        forbidden(
            "other study",
            with(&|c| c["studyUID"] = json!("1.2.3.4.5")),
            "study",
        ),
        forbidden("other PACS", with(&|c| c["pacs"] = json!(SERVER_A)), "PACS"),
        forbidden(
            "scope without read:models",
            with(&|c| c["scope"] = json!("openid")),
            "read:models",
        ),
    ];
    let mut wrong_origin = forbidden("wrong aud", bound, "origin");
    wrong_origin
        .1
        .push(("Origin", "https://evil.example".into()));
    cases.push(wrong_origin);
    let mut secrets = vec![good.clone(), rotated.clone()];
    for (what, headers, status, code, why) in &cases {
        let h: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let r = call(&p, &target, &h);
        assert_eq!(
            (r.status, r.code().as_str()),
            (*status, *code),
            "{what}: {}",
            r.body
        );
        let message = r.json()["message"].to_string();
        assert!(message.contains(why), "{what}: {message}");
        if *status == 401 {
            assert!(
                r.header("WWW-Authenticate")
                    .is_some_and(|v| v.starts_with("Bearer")),
                "{what}: {:?}",
                r.headers
            );
        }
        secrets.extend(
            headers
                .iter()
                .filter(|(k, _)| *k == "Authorization")
                .map(|(_, v)| v.trim_start_matches("Bearer ").to_string()),
        );
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "a refused request reached the PACS"
    );
    assert_eq!(
        model.count(),
        models_before,
        "a refused request reached a model"
    );
    // The same target with a good token does reach it (so the counter counts).
    let r = call(&p, &target, &[("Authorization", &bearer(&good))]);
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(hits.load(Ordering::SeqCst) > 0);

    // The token's aud, from its own origin: allowed; a forged client address is ignored.
    let bound = with(&|c| c["aud"] = json!(VIEWER));
    let r = call(
        &p,
        &inference_path(SEG, None),
        &[
            ("Authorization", &bearer(&bound)),
            ("Origin", VIEWER),
            ("X-Model-Proxy-Client", "x 6.6.6.6"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("Access-Control-Allow-Origin"), Some(VIEWER));

    // Pages: health stays open, status and metrics want a credential.
    assert_eq!(p.get("/healthz").status, 200);
    assert_eq!(p.get("/readyz").status, 200);
    for page in ["/status", "/metrics"] {
        p.get(page).assert_error(401, "unauthorized");
        assert_eq!(
            call(&p, page, &[("Authorization", &bearer(&good))]).status,
            200
        );
    }
    // A browser's preflight for both credentials passes and says so.
    let r = request(
        "OPTIONS",
        &format!("{}{}", p.url, inference_path(SEG, None)),
        &[
            ("Origin", VIEWER),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization,api_key"),
        ],
        None,
    );
    assert_eq!(r.status, 204);
    let allowed = r
        .header("Access-Control-Allow-Headers")
        .unwrap_or("")
        .to_lowercase();
    assert!(
        allowed.contains("authorization") && allowed.contains("api_key"),
        "{allowed}"
    );

    // One audit line per inference request, allowed or refused; never a token.
    // A line is written once its answer is out, so the last may trail the client.
    let want = 4 + cases.len() + 2;
    let until = Instant::now() + Duration::from_secs(5);
    let mut lines = audit_lines(&audit);
    while lines.len() < want && Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
        lines = audit_lines(&audit);
    }
    assert_eq!(lines.len(), want, "{lines:#?}");
    let first = &lines[0];
    assert_eq!(first["caller"], "alice");
    assert_eq!(first["auth"], "zhiva-jwt");
    assert_eq!(first["client"], "127.0.0.1");
    assert_eq!(first["model"], SEG);
    assert_eq!(first["server"], SERVER_A);
    assert_eq!(first["study"], e.study_a.uid.as_str());
    assert_eq!(first["series"], e.study_a.series[0].0.as_str());
    assert_eq!(
        (first["status"].as_u64(), first["outcome"].as_str()),
        (Some(200), Some("ok"))
    );
    assert_eq!(
        first["instances"].as_u64(),
        Some(e.study_a.series[0].1.len() as u64)
    );
    assert!(first["time"].as_str().unwrap().ends_with('Z') && first["duration_ms"].is_u64());
    assert_eq!(lines[1]["caller"], "bob");
    let denied = &lines[4];
    assert_eq!(
        (denied["status"].as_u64(), denied["outcome"].as_str()),
        (Some(401), Some("unauthorized"))
    );
    assert_eq!(
        (
            &denied["caller"],
            &denied["auth"],
            denied["server"].as_str()
        ),
        (&Value::Null, &Value::Null, Some(COUNTER))
    );
    let forged = lines.last().unwrap();
    assert_eq!(
        (forged["client"].as_str(), forged["caller"].as_str()),
        (Some("127.0.0.1"), Some("mallory"))
    );
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&audit).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let audit_text = std::fs::read_to_string(&audit).unwrap();
    for s in secrets.iter().filter(|s| s.len() > 20) {
        let sig = s.rsplit('.').next().unwrap_or(s);
        let probe = if sig.len() > 20 { sig } else { s.as_str() };
        assert!(!audit_text.contains(probe), "a token is in the audit trail");
        assert!(!p.logs().contains(probe), "a token is in the log");
    }
}

#[test]
fn api_keys_from_a_commented_file_limit_models_and_reload_on_sighup() {
    let model = model();
    let dir = tempdir("inbound-keys");
    let (counter_url, hits) = counter();
    let (ward, research, later) = (
        "ward-3-9b1f0c2e7d4a",
        "research-5c8e2a1f9d3b",
        "later-1a2b3c4d5e6f",
    );
    let file = dir.join("api-keys");
    let text = format!(
        "# model-proxy API keys: sha256 digest, label, models (all when absent)\n\n\
         sha256:{}   ward-3          # the ward's viewer\n   \n\
         \t# research may run the segmentation model only\n\
         sha256:{}   research  {SEG}\n",
        hex(ward),
        hex(research)
    );
    std::fs::write(&file, &text).unwrap();
    let p = start(
        &model,
        &dir,
        &counter_url,
        &[
            "--inbound-auth",
            "api-key",
            "--api-keys",
            file.to_str().unwrap(),
        ],
    );
    allowed(&p, SEG, &[("api_key", ward)]);
    allowed(&p, SEG, &[("Authorization", &bearer(ward))]);
    allowed(&p, SEG, &[("api_key", research)]);
    allowed(&p, ANN, &[("api_key", ward)]);
    let models_before = model.count();
    let t = inference_path(ANN, Some(COUNTER));
    call(&p, &t, &[("api_key", research)]).assert_error(403, "forbidden");
    call(&p, &t, &[("api_key", "guessed-key")]).assert_error(401, "invalid_credential");
    call(&p, &t, &[("Authorization", &bearer("guessed-key"))])
        .assert_error(401, "invalid_credential");
    call(&p, &t, &[("api_key", later)]).assert_error(401, "invalid_credential");
    call(&p, &t, &[]).assert_error(401, "unauthorized");
    // The key file is the only credential in this mode: a zhiva token is no key.
    call(
        &p,
        &t,
        &[("Authorization", "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln")],
    )
    .assert_error(401, "invalid_credential");
    assert_eq!(
        (hits.load(Ordering::SeqCst), model.count()),
        (0, models_before)
    );

    // A new key, after SIGHUP; a broken file then keeps the keys in force.
    std::fs::write(&file, format!("{text}sha256:{} later\n", hex(later))).unwrap();
    hup(&dir);
    let until = Instant::now() + Duration::from_secs(5);
    while call(&p, &inference_path(SEG, None), &[("api_key", later)]).status != 200 {
        assert!(
            Instant::now() < until,
            "the key file was not reloaded: {}",
            p.logs()
        );
        thread::sleep(Duration::from_millis(100));
    }
    std::fs::write(&file, format!("{text}{later} plain-key\n")).unwrap();
    hup(&dir);
    let until = Instant::now() + Duration::from_secs(5);
    while !p.logs().contains("previous inbound credentials stay") {
        assert!(Instant::now() < until, "{}", p.logs());
        thread::sleep(Duration::from_millis(100));
    }
    assert!(p.logs().contains("api-keys:7:1: "), "{}", p.logs());
    allowed(&p, SEG, &[("api_key", later)]);

    // The audit trail goes to stderr by default, naming keys by label only.
    // Its line for the last answer is written after the client has read it.
    let until = Instant::now() + Duration::from_secs(5);
    let (logs, audit) = loop {
        let logs = p.logs();
        let audit: Vec<Value> = logs
            .lines()
            .filter(|l| l.starts_with("{\"time\""))
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let inferences = logs
            .lines()
            .filter(|l| l.contains(" GET /segmentations/") || l.contains(" GET /annotations/"))
            .count();
        if audit.len() == inferences {
            break (logs, audit);
        }
        assert!(
            Instant::now() < until,
            "{} audit lines for {inferences} inferences: {logs}",
            audit.len()
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(audit.len() >= 12);
    assert_eq!(
        (audit[0]["caller"].as_str(), audit[0]["auth"].as_str()),
        (Some("ward-3"), Some("api-key"))
    );
    assert_eq!(audit[4]["outcome"], "forbidden");
    for k in [ward, research, later] {
        assert!(!logs.contains(k), "an API key is in the log");
    }
}

#[test]
fn the_auth_service_own_tokens_access_yes_refresh_and_auth_no() {
    let model = model();
    let a = AuthService::start("inbound", &[]);
    let dir = tempdir("inbound-real");
    let public = dir.join("jwt_pub.pem");
    let mut pem = String::new();
    agent()
        .get(format!("{}/control/public-key", a.url))
        .call()
        .unwrap()
        .into_body()
        .into_reader()
        .read_to_string(&mut pem)
        .unwrap();
    std::fs::write(&public, pem).unwrap();
    let (counter_url, _) = counter();
    let p = start(
        &model,
        &dir,
        &counter_url,
        &[
            "--inbound-auth",
            "zhiva-jwt,api-key",
            "--jwt-public-key",
            public.to_str().unwrap(),
            "--api-keys",
            "/dev/null",
        ],
    );
    // The viewer's sign-in: auth token, then access token (header) and refresh token (body).
    let sign_in = |referer: Option<&str>| -> (String, String, String) {
        let mut body = json!({"username": "alice", "password": "alice-password"});
        if let Some(r) = referer {
            body["referer"] = json!(r);
        }
        let r = request(
            "POST",
            &format!("{}/auth/sign-user", a.url),
            &[("Content-Type", "application/json")],
            Some(&body.to_string()),
        );
        let auth = r.json()["token"].as_str().unwrap().to_string();
        let mut h = vec![("Authorization".to_string(), bearer(&auth))];
        if let Some(r) = referer {
            h.push(("Origin".into(), r.to_string()));
        }
        let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let r = request(
            "POST",
            &format!("{}/auth/generate-access-token", a.url),
            &h,
            None,
        );
        assert_eq!(r.status, 200, "{}", r.body);
        let access = r
            .header("Authorization")
            .unwrap()
            .trim_start_matches("Bearer ")
            .to_string();
        (auth, access, r.body)
    };
    let (auth, access, refresh) = sign_in(None);
    let path = inference_path(SEG, None);
    allowed(&p, SEG, &[("Authorization", &bearer(&access))]);
    call(&p, &path, &[("Authorization", &bearer(&refresh))])
        .assert_error(401, "invalid_credential");
    let r = call(&p, &path, &[("Authorization", &bearer(&auth))]);
    r.assert_error(401, "invalid_credential");
    assert!(r.json()["message"].as_str().unwrap().contains("auth token"));
    // A token bound to the viewer's origin (aud), as the service issues it to a browser.
    let (_, bound, _) = sign_in(Some(VIEWER));
    allowed(
        &p,
        SEG,
        &[("Authorization", &bearer(&bound)), ("Origin", VIEWER)],
    );
    call(
        &p,
        &path,
        &[
            ("Authorization", &bearer(&bound)),
            ("Origin", "https://evil.example"),
        ],
    )
    .assert_error(403, "forbidden");
}

#[test]
fn one_caller_holds_at_most_its_share() {
    let model = model();
    let dir = tempdir("inbound-fair");
    let (counter_url, _) = counter();
    let file = dir.join("keys.json");
    std::fs::write(
        &file,
        json!([{"sha256": hex("greedy-key-0001"), "label": "greedy"},
               {"sha256": hex("polite-key-0002"), "label": "polite"}])
        .to_string(),
    )
    .unwrap();
    let p = start(
        &model,
        &dir,
        &counter_url,
        &[
            "--inbound-auth",
            "api-key",
            "--api-keys",
            file.to_str().unwrap(),
            "--caller-concurrency",
            "1",
            "--audit-log",
            "off",
        ],
    );
    let slow = format!("{}{}", p.url, inference_path(SLOW, None));
    let first = {
        let slow = slow.clone();
        thread::spawn(move || request("GET", &slow, &[("api_key", "greedy-key-0001")], None))
    };
    // Wait until the first one holds its turn (it is at the model for 3 s).
    thread::sleep(Duration::from_millis(800));
    let r = request("GET", &slow, &[("api_key", "greedy-key-0001")], None);
    r.assert_error(429, "caller_busy");
    assert!(r.header("Retry-After").is_some());
    let other = request("GET", &slow, &[("api_key", "polite-key-0002")], None);
    assert_eq!(other.status, 200, "{}", other.body);
    assert_eq!(first.join().unwrap().status, 200);
    // Its turn ended with its inference.
    let again = request("GET", &slow, &[("api_key", "greedy-key-0001")], None);
    assert_eq!(again.status, 200, "{}", again.body);
    assert!(
        !p.logs().contains("{\"time\""),
        "--audit-log off writes no audit line"
    );
}

#[test]
fn bad_key_files_are_explained_and_stop_the_start() {
    let dir = tempdir("inbound-bad");

    let model = model();
    write_config(&dir.join("config"), &servers_json(), &model.models_json());
    let check = |args: &[&str]| {
        let out = Command::new(proxy_bin())
            .arg("check-config")
            .arg("--config")
            .arg(dir.join("config"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let keys = dir.join("api-keys");
    std::fs::write(&keys, "# ok\n\nsha256:abc short\n").unwrap();
    let (code, err) = check(&["--api-keys", keys.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!("{}:3:1: ", keys.display())) && err.contains("64 hex"),
        "{err}"
    );
    let weak = keypair(&dir, "weak", 1024);
    let (code, err) = check(&["--jwt-public-key", weak.public.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains("RSA-1024") && err.contains("openssl genrsa"),
        "{err}"
    );
    let private = dir.join("weak_priv.pem");
    let (code, err) = check(&["--jwt-public-key", private.to_str().unwrap()]);
    assert_eq!(code, Some(1));
    assert!(err.contains("private key"), "{err}");
    let good = keypair(&dir, "good", 2048);
    std::fs::write(&keys, "").unwrap();
    let mut cmd = Command::new(proxy_bin());
    cmd.args(["check-config", "--config"])
        .arg(dir.join("config"))
        .args([
            "--jwt-public-key",
            good.public.to_str().unwrap(),
            "--api-keys",
            keys.to_str().unwrap(),
        ]);
    let stdout = succeed(cmd);
    assert!(String::from_utf8_lossy(&stdout).contains("1 JWT public key(s), 0 API key(s)"));

    // serve: a mode without its key refuses to start; none on 0.0.0.0 warns.
    let serve = |args: &[&str]| {
        let log = dir.join("serve.log");
        let mut child = Command::new(proxy_bin())
            .args(["serve", "--no-tls", "--config"])
            .arg(dir.join("config"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()))
            .spawn()
            .unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break Some(s);
            }
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains("listening on") || Instant::now() > until {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            thread::sleep(Duration::from_millis(50));
        };
        (status, std::fs::read_to_string(&log).unwrap_or_default())
    };
    let (status, log) = serve(&["--listen", "127.0.0.1:0", "--inbound-auth", "zhiva-jwt"]);
    assert!(status.is_some_and(|s| !s.success()), "{log}");
    assert!(log.contains("--jwt-public-key"), "{log}");
    let (status, log) = serve(&["--listen", "127.0.0.1:0", "--inbound-auth", "api-key"]);
    assert!(
        status.is_some_and(|s| !s.success()) && log.contains("--api-keys"),
        "{log}"
    );
    let (_, log) = serve(&["--listen", "0.0.0.0:0"]);
    assert!(log.contains("inbound auth is off"), "{log}");
    let (_, log) = serve(&["--listen", "127.0.0.1:0"]);
    assert!(!log.contains("inbound auth is off"), "{log}");
}

/// What a viewer page on another origin sees, in a real browser: the preflight
/// lets `Authorization` and `api_key` through, a 401's challenge is readable,
/// and a token bound (`aud`) to the page's origin is accepted.
#[test]
fn a_browser_on_another_origin_sends_both_credentials() {
    let dir = tempdir("inbound-browser");
    let k = keypair(&dir, "k", 2048);
    std::fs::write(
        dir.join("api-keys"),
        format!("sha256:{} browser\n", hex("browser-key-5e1f")),
    )
    .unwrap();
    let page_port = free_port();
    let origin = format!("http://127.0.0.1:{page_port}");

    let model = model();
    write_config(&dir.join("config"), &servers_json(), &model.models_json());
    let p = Proxy::start_in(
        &dir,
        &[
            "--inbound-auth",
            "zhiva-jwt,api-key",
            "--jwt-public-key",
            k.public.to_str().unwrap(),
            "--api-keys",
            dir.join("api-keys").to_str().unwrap(),
            "--status-page",
        ],
        &[("ZHIVA_ALLOWED_ORIGINS", &origin)],
    );
    let mut claims = access_claims("alice");
    claims["aud"] = json!(origin);
    let token = sign(&k, &claims);
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let inference = format!("{}{}", p.url, inference_path(SEG, None));
    std::fs::write(
        www.join("page.html"),
        format!(
            r#"<!doctype html><pre id="out">pending</pre><script>
async function one(url, headers) {{
  try {{
    const r = await fetch(url, {{headers}});
    const b = await r.text();
    return [r.status, r.headers.get('WWW-Authenticate'), b.slice(0, 40)];
  }} catch (e) {{ return [0, String(e)]; }}
}}
(async () => {{
  const r = [
    await one('{inference}', {{}}),
    await one('{inference}', {{Authorization: 'Bearer {token}'}}),
    await one('{inference}', {{api_key: 'browser-key-5e1f'}}),
    await one('{inference}', {{api_key: 'wrong'}}),
    await one('{status}', {{Authorization: 'Bearer browser-key-5e1f', Accept: 'application/json'}}),
  ];
  document.getElementById('out').textContent = 'RESULT' + JSON.stringify(r) + 'END';
}})();
</script>"#,
            status = p.url.clone() + "/status"
        ),
    )
    .unwrap();
    let mut server = Command::new("python3")
        .args([
            "-m",
            "http.server",
            &page_port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .current_dir(&www)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for(&format!("{origin}/page.html"), Duration::from_secs(10));
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=30000",
            "--dump-dom",
        ])
        .arg(format!(
            "--user-data-dir={}",
            dir.join("chromium").display()
        ))
        .arg(format!("{origin}/page.html"))
        .output();
    let _ = server.kill();
    let _ = server.wait();
    let out = out.expect("chromium (scripts/setup.sh installs it)");
    let dom = String::from_utf8_lossy(&out.stdout);
    let json = dom
        .split("RESULT")
        .nth(1)
        .and_then(|s| s.split("END").next())
        .unwrap_or_else(|| panic!("the page did not finish: {dom}"));
    let r: Value = serde_json::from_str(
        &json
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
    .unwrap_or_else(|e| panic!("{e}: {json}"));
    assert_eq!(r[0][0], 401, "{r}");
    assert_eq!(
        r[0][1], "Bearer realm=\"model-proxy\"",
        "the challenge is readable: {r}"
    );
    assert_eq!(r[1][0], 200, "the token bound to this origin: {r}");
    assert_eq!(r[2][0], 200, "the api_key header: {r}");
    assert_eq!(r[3][0], 401, "{r}");
    assert_eq!(
        r[4][0], 200,
        "the status page with the key as a bearer: {r}"
    );
}

/// Changing the cache changes what every caller gets: under inbound auth a PUT or
/// DELETE is checked like the inference it names, and a prefetch list needs a
/// credential without limits.
#[test]
fn cache_changes_need_a_credential() {
    let model = model();
    let dir = tempdir("inbound-cache");
    let (counter_url, _hits) = counter();
    let (ward, research) = ("ward-8c1d2e3f4a5b", "research-2d3e4f5a6b7c");
    let file = dir.join("api-keys");
    std::fs::write(
        &file,
        format!(
            "sha256:{} ward\nsha256:{} research {SEG}\n",
            hex(ward),
            hex(research)
        ),
    )
    .unwrap();
    let p = start(
        &model,
        &dir,
        &counter_url,
        &[
            "--inbound-auth",
            "api-key",
            "--api-keys",
            file.to_str().unwrap(),
            "--cache-size",
            "64M",
        ],
    );
    let seg = format!("{}{}", p.url, inference_path(SEG, None));
    let ann = format!("{}{}", p.url, inference_path(ANN, None));
    request("DELETE", &seg, &[], None).assert_error(401, "unauthorized");
    request("PUT", &seg, &[], None).assert_error(401, "unauthorized");
    request("PUT", &ann, &[("api_key", research)], None).assert_error(403, "forbidden");
    assert_eq!(
        request("PUT", &seg, &[("api_key", research)], None).status,
        202
    );
    let list = json!([inference_path(SEG, None)]).to_string();
    let prefetch = format!("{}/prefetch", p.url);
    request("POST", &prefetch, &[], Some(&list)).assert_error(401, "unauthorized");
    request("POST", &prefetch, &[("api_key", research)], Some(&list))
        .assert_error(403, "forbidden");
    let r = request(
        "POST",
        &prefetch,
        &[("api_key", ward), ("Content-Type", "application/json")],
        Some(&list),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(
        request("DELETE", &seg, &[("api_key", ward)], None).status / 100,
        2
    );
}
