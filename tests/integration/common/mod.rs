//! Shared fixtures for the integration tests: real Orthanc servers with the DICOMweb
//! plugin loaded with generated CT studies, a real model API that decodes what it
//! receives with pydicom, and the real `model-proxy` binary.
//!
//! Everything is started once per test binary and stops with it (the Python
//! wrappers watch their parent). A model API remembers what it was sent
//! (`/last`, `/count`), so it is reachable only through [`model()`], which hands
//! each one to one test at a time.

use std::collections::BTreeSet;
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The default server: Orthanc A, no auth.
pub const SERVER_A: &str = "b1407f18-575d-487c-bc0c-640c6da651bc";
/// Orthanc B with the right Basic credentials.
pub const SERVER_B: &str = "63140137-a63d-4ad1-b489-3479bc43387c";
/// Orthanc B with a wrong password.
pub const SERVER_B_WRONG: &str = "73140137-a63d-4ad1-b489-3479bc43387c";
/// A server nothing listens at.
pub const SERVER_DOWN: &str = "83140137-a63d-4ad1-b489-3479bc43387c";
/// A server that accepts connections and never answers.
pub const SERVER_STALL: &str = "93140137-a63d-4ad1-b489-3479bc43387c";

/// Segmentation at every level.
pub const SEG: &str = "1d9508dd-9089-40c3-abdd-15f47120d682";
/// Annotation, series level only.
pub const ANN: &str = "2d9508dd-9089-40c3-abdd-15f47120d682";
/// Prediction, study level only.
pub const PRED: &str = "3d9508dd-9089-40c3-abdd-15f47120d682";
/// Segmentation with a dataFilter of two keys, study level.
pub const FILT: &str = "4d9508dd-9089-40c3-abdd-15f47120d682";
/// A model that always answers 500.
pub const FAIL: &str = "5d9508dd-9089-40c3-abdd-15f47120d682";
/// A model nothing listens at.
pub const MODEL_DOWN: &str = "6d9508dd-9089-40c3-abdd-15f47120d682";
/// A model that takes 3 s to answer.
pub const SLOW: &str = "7d9508dd-9089-40c3-abdd-15f47120d682";

/// Orthanc B's Basic user.
pub const B_USER: &str = "proxyuser";
/// Orthanc B's Basic password.
pub const B_PASSWORD: &str = "s3cr3t-Pa55-w0rd";

/// One generated study: its UID and, per series, the SOP instance UIDs.
#[derive(Debug, Clone)]
pub struct Study {
    pub uid: String,
    pub series: Vec<(String, Vec<String>)>,
}

impl Study {
    /// Every SOP instance UID of the study.
    pub fn all_instances(&self) -> Vec<String> {
        self.series.iter().flat_map(|(_, i)| i.clone()).collect()
    }
}

/// The running PACS-side fixtures; the model API is behind [`model()`].
pub struct Env {
    /// DICOMweb root of the open Orthanc.
    pub pacs_a: String,
    /// DICOMweb root of the Orthanc that wants HTTP Basic.
    pub pacs_b: String,
    /// A port nothing listens on.
    pub closed: String,
    /// A port that accepts connections and never answers.
    pub stall: String,
    pub study_a: Study,
    pub study_b: Study,
}

/// `tests/fixtures/`, where the Python fixtures are.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// The binary under test; MODEL_PROXY_BIN points at another build (e.g. the static one).
pub fn proxy_bin() -> PathBuf {
    match std::env::var_os("MODEL_PROXY_BIN") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_BIN_EXE_model-proxy")),
    }
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A fresh directory for this run; `name` must be unique across all the tests.
pub fn tempdir(name: &str) -> PathBuf {
    // All areas share one process, so a name used twice would wipe another test's files.
    static TAKEN: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
    let fresh = TAKEN
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.to_string());
    assert!(fresh, "tempdir {name:?} is already used by another test");
    let d = std::env::temp_dir().join(format!("model-proxy-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    d
}

/// Runs `cmd` to its end: its stdout, or a panic with what it printed.
pub fn succeed(mut cmd: Command) -> Vec<u8> {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (scripts/setup.sh installs what the tests run)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn python(args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.args(args);
    c
}

pub fn generate(dir: &Path, series: usize, slices: usize, seed: u32) -> Study {
    let script = fixtures().join("gen_study.py");
    let manifest = succeed(python(&[
        script.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
        "--series",
        &series.to_string(),
        "--slices",
        &slices.to_string(),
        "--size",
        "64",
        "--seed",
        &seed.to_string(),
    ]));
    let v: Value = serde_json::from_slice(&manifest).expect("manifest");
    let s = &v["studies"][0];
    Study {
        uid: s["study"].as_str().unwrap().to_string(),
        series: s["series"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| {
                (
                    x["series"].as_str().unwrap().to_string(),
                    x["instances"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|i| i.as_str().unwrap().to_string())
                        .collect(),
                )
            })
            .collect(),
    }
}

/// A Python fixture under supervise.py, which stops it when this test binary goes away.
pub fn supervised(script: &str) -> Command {
    let mut c = Command::new("python3");
    c.arg(fixtures().join("supervise.py"))
        .arg("python3")
        .arg(fixtures().join(script));
    c
}

/// Stops a supervised process: SIGTERM to the supervisor, which passes it on
/// (a SIGKILL would orphan the fixture under it).
pub fn stop(child: &mut Child) {
    if let Ok(None) = child.try_wait() {
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let _ = child.wait();
    }
}

/// The JSON line a fixture prints once it listens (its port, its URL), or what it printed instead.
pub fn announced(child: &mut Child) -> Result<Value, String> {
    let stdout = child.stdout.take().expect("the fixture's stdout is piped");
    let mut line = String::new();
    let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
    serde_json::from_str(&line).map_err(|_| line)
}

fn spawn_logged(mut cmd: Command, log: &Path) -> Child {
    let f = std::fs::File::create(log).expect("log file");
    let f2 = f.try_clone().expect("log file");
    cmd.stdout(Stdio::from(f)).stderr(Stdio::from(f2));
    cmd.spawn().expect("spawn fixture")
}

fn start_orthanc(dir: &Path, port: u16, basic: Option<&str>, data: &Path) -> String {
    let script = fixtures().join("orthanc.py");
    let mut c = supervised("orthanc.py");
    c.args([
        "run",
        "--dir",
        dir.to_str().unwrap(),
        "--http-port",
        &port.to_string(),
    ]);
    if let Some(b) = basic {
        c.args(["--basic-auth", b]);
    }
    // The child is not waited for: it lives as long as this test binary.
    std::mem::forget(spawn_logged(c, &dir.with_extension("log")));
    let url = format!("http://127.0.0.1:{port}");
    let mut up = python(&[script.to_str().unwrap(), "upload", "--url", &url]);
    if let Some(b) = basic {
        up.args(["--basic-auth", b]);
    }
    up.arg(data);
    succeed(up);
    format!("{url}/dicom-web")
}

/// Starts (once) and returns the PACS-side fixtures.
pub fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let dir = tempdir("env");
        let study_a = generate(&dir.join("data-a"), 2, 4, 11);
        let study_b = generate(&dir.join("data-b"), 1, 3, 22);
        let pacs_a = start_orthanc(
            &dir.join("orthanc-a"),
            free_port(),
            None,
            &dir.join("data-a"),
        );
        let basic = format!("{B_USER}:{B_PASSWORD}");
        let pacs_b = start_orthanc(
            &dir.join("orthanc-b"),
            free_port(),
            Some(&basic),
            &dir.join("data-b"),
        );
        // A socket that accepts and then says nothing: a hung PACS.
        let stall = TcpListener::bind("127.0.0.1:0").expect("bind");
        let stall_url = format!("http://{}", stall.local_addr().unwrap());
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in stall.incoming().flatten() {
                held.push(s);
            }
        });
        Env {
            closed: format!("http://127.0.0.1:{}", free_port()),
            stall: stall_url,
            pacs_a,
            pacs_b,
            study_a,
            study_b,
        }
    })
}

/// An HTTP client that returns error statuses as answers.
pub fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(120)))
        .build()
        .new_agent()
}

/// A response, read whole.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    /// The body as JSON; panics with the body if it is not.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
    /// A header by case-insensitive name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    /// The error code of an error body.
    pub fn code(&self) -> String {
        self.json()["code"].as_str().unwrap_or("").to_string()
    }

    /// Asserts an error answer: its status and its code.
    #[track_caller]
    pub fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(
            (self.status, self.code().as_str()),
            (status, code),
            "{}",
            self.body
        );
    }
}

fn into_resp(r: ureq::http::Response<ureq::Body>) -> Resp {
    let status = r.status().as_u16();
    let headers = r
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let mut body = String::new();
    r.into_body()
        .into_reader()
        .read_to_string(&mut body)
        .expect("body");
    Resp {
        status,
        headers,
        body,
    }
}

/// Sends a request and reads the whole answer.
pub fn request(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Resp {
    let mut b = ureq::http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let a = agent();
    let r = match body {
        Some(body) => a.run(b.body(body.to_string()).unwrap()),
        None => a.run(b.body(()).unwrap()),
    };
    into_resp(r.unwrap_or_else(|e| panic!("{method} {url}: {e}")))
}

/// `GET url`, read whole.
pub fn get(url: &str) -> Resp {
    request("GET", url, &[], None)
}

/// Waits until `url` answers 200, or panics after `limit`.
pub fn wait_for(url: &str, limit: Duration) {
    let start = Instant::now();
    let a = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .new_agent();
    while start.elapsed() < limit {
        if let Ok(r) = a.get(url).call() {
            if r.status() == 200 {
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("{url} did not come up within {limit:?}");
}

/// A model API and the proxy configured with it, used by one test at a time.
struct ModelApi {
    /// Numbers the instance, for its directory and its shared proxy's.
    n: usize,
    url: String,
    shared: OnceLock<Proxy>,
}

impl ModelApi {
    fn start(n: usize) -> ModelApi {
        let dir = tempdir(&format!("model-{n}"));
        let port = free_port();
        let mut c = supervised("model_api.py");
        c.args(["--port", &port.to_string()]);
        std::mem::forget(spawn_logged(c, &dir.join("model.log")));
        let url = format!("http://127.0.0.1:{port}");
        wait_for(&format!("{url}/"), Duration::from_secs(60));
        ModelApi {
            n,
            url,
            shared: OnceLock::new(),
        }
    }
}

/// The model APIs started so far and not in use. There are never more than
/// tests running at once, and most runs reuse one or two.
static IDLE: Mutex<Vec<&'static ModelApi>> = Mutex::new(Vec::new());
static STARTED: AtomicUsize = AtomicUsize::new(0);

/// One test's exclusive use of a model API: its URL, what it saw, and every
/// proxy configured with it come from here, so no other test can post to it
/// while this one reads `/last` or `/count`. Dropping it hands the API on.
pub struct Model {
    api: &'static ModelApi,
}

/// Takes an idle model API, or starts one when every one is in use: tests that
/// need the model run in parallel instead of waiting for each other.
pub fn model() -> Model {
    let idle = IDLE.lock().unwrap_or_else(|p| p.into_inner()).pop();
    let api = idle.unwrap_or_else(|| {
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        Box::leak(Box::new(ModelApi::start(n)))
    });
    Model { api }
}

impl Drop for Model {
    fn drop(&mut self) {
        // A test that failed while holding it left the fixture as usable as any other.
        IDLE.lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.api);
    }
}

impl Model {
    /// Base URL of the model API.
    pub fn url(&self) -> &str {
        &self.api.url
    }

    /// What the model API saw last (see tests/fixtures/README.md).
    pub fn last(&self) -> Value {
        get(&format!("{}/last", self.api.url)).json()
    }

    /// How many posts the model API has had.
    pub fn count(&self) -> u64 {
        get(&format!("{}/count", self.api.url)).json()["count"]
            .as_u64()
            .expect("a count")
    }

    /// models.json for this model API.
    pub fn models_json(&self) -> Value {
        models_json(env(), &self.api.url)
    }

    /// The proxy every test can share: status page on, a CORS origin allowed.
    pub fn shared(&self) -> &Proxy {
        self.api.shared.get_or_init(|| {
            Proxy::start(
                self,
                &format!("shared-{}", self.api.n),
                &[
                    "--status-page",
                    "--health-interval",
                    "1",
                    "--pacs-timeout",
                    "2",
                ],
                &[(
                    "ZHIVA_ALLOWED_ORIGINS",
                    "https://*.zhiva.ai,http://localhost:3000",
                )],
            )
        })
    }
}

/// The path of an inference by `model_id` on study A's first series, on `server` if given.
pub fn series_path(model_id: &str, server: Option<&str>) -> String {
    let e = env();
    let (se, _) = &e.study_a.series[0];
    let q = server.map(|s| format!("?server={s}")).unwrap_or_default();
    format!(
        "/segmentations/{model_id}/studies/{}/series/{se}{q}",
        e.study_a.uid
    )
}

/// servers.json for the fixtures (with a password, to prove it never leaks).
pub fn servers_json() -> Value {
    let e = env();
    json!({
        SERVER_A: {"uri": e.pacs_a, "isDefault": true, "statusUri": format!("{}/studies", e.pacs_a), "authType": ""},
        SERVER_B: {"uri": e.pacs_b, "statusUri": format!("{}/studies", e.pacs_b), "authType": "basicAuth", "login": B_USER, "password": B_PASSWORD},
        SERVER_B_WRONG: {"uri": e.pacs_b, "authType": "basicAuth", "login": B_USER, "password": "wrong-password"},
        SERVER_DOWN: {"uri": format!("{}/dicom-web", e.closed), "statusUri": format!("{}/dicom-web/studies", e.closed)},
        SERVER_STALL: {"uri": format!("{}/dicom-web", e.stall)},
    })
}

fn models_json(e: &Env, m: &str) -> Value {
    json!({
        SEG: {"uri": format!("{m}/segmentation"), "task": "segmentation", "statusUri": format!("{m}/"),
              "supports": ["/studies", "/studies/series", "/studies/series/instances"]},
        ANN: {"uri": format!("{m}/annotation"), "task": "annotation", "supports": ["/studies/series"]},
        PRED: {"uri": format!("{m}/prediction"), "task": "prediction", "supports": ["/studies"]},
        FILT: {"uri": format!("{m}/segmentation"), "task": "segmentation", "supports": ["/studies"],
               "dataFilter": [{"dataKey": "series-one", "title": "Series one"}, {"dataKey": "series-two", "title": "Series two"}]},
        FAIL: {"uri": format!("{m}/fail/500"), "task": "segmentation", "supports": ["/studies/series"]},
        MODEL_DOWN: {"uri": format!("{}/segmentation", e.closed), "task": "segmentation", "supports": ["/studies/series"],
                     "statusUri": format!("{}/", e.closed)},
        SLOW: {"uri": format!("{m}/slow/3"), "task": "segmentation", "supports": ["/studies/series"]},
    })
}

/// A running proxy; killed on drop.
pub struct Proxy {
    child: Child,
    pub url: String,
    pub log: PathBuf,
    pub config_dir: PathBuf,
}

impl Proxy {
    /// Starts the proxy on the fixtures' config with extra flags and environment.
    pub fn start(model: &Model, name: &str, args: &[&str], envs: &[(&str, &str)]) -> Proxy {
        let dir = config_dir(
            &format!("proxy-{name}"),
            &servers_json(),
            &model.models_json(),
        );
        Proxy::start_in(&dir, args, envs)
    }

    /// Starts the proxy with `dir/config` as its config directory, on plain HTTP.
    pub fn start_in(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Proxy {
        Proxy::launch(dir, args, envs, false)
    }

    /// Starts the proxy on HTTPS with a fresh self-signed pair in `dir/certs`.
    pub fn start_tls(model: &Model, name: &str, args: &[&str]) -> Proxy {
        let dir = config_dir(
            &format!("proxy-{name}"),
            &servers_json(),
            &model.models_json(),
        );
        make_cert(&dir.join("certs"));
        let cert = dir.join("certs/zhiva.crt");
        let key = dir.join("certs/zhiva.key");
        let mut all = vec![
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        Proxy::launch(&dir, &all, &[], true)
    }

    /// Starts the proxy like [`Proxy::start_in`], on `port` (a replica coming back).
    pub fn start_at(dir: &Path, port: u16, args: &[&str], envs: &[(&str, &str)]) -> Proxy {
        Proxy::launch_at(dir, port, args, envs, false)
    }

    fn launch(dir: &Path, args: &[&str], envs: &[(&str, &str)], tls: bool) -> Proxy {
        Proxy::launch_at(dir, free_port(), args, envs, tls)
    }

    fn launch_at(dir: &Path, port: u16, args: &[&str], envs: &[(&str, &str)], tls: bool) -> Proxy {
        let log = dir.join("proxy.log");
        let mut cmd = Command::new("python3");
        cmd.arg(fixtures().join("supervise.py"))
            .arg(proxy_bin())
            .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
            .args(if tls { &[][..] } else { &["--no-tls"][..] })
            .arg("--config")
            .arg(dir.join("config"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(args)
            .env("ZHIVA_LOG", "debug")
            // The cache is off unless a test turns it on (`--cache-size`): the other
            // tests count what the model sees.
            .env("ZHIVA_CACHE_SIZE", "0");
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let child = spawn_logged(cmd, &log);
        let url = if tls {
            format!("https://localhost:{port}")
        } else {
            format!("http://127.0.0.1:{port}")
        };
        let mut p = Proxy {
            child,
            url,
            log,
            config_dir: dir.join("config"),
        };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = p.child.try_wait() {
                panic!("proxy exited with {status}: {}", p.logs());
            }
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return p;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("proxy did not listen: {}", p.logs());
    }

    /// What the proxy has logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET` a path on this proxy.
    pub fn get(&self, path: &str) -> Resp {
        get(&format!("{}{path}", self.url))
    }

    /// The status page's JSON entry for a server or model (`kind`: "servers" or "models").
    pub fn status_entry(&self, kind: &str, id: &str) -> Value {
        let status = request(
            "GET",
            &format!("{}/status", self.url),
            &[("Accept", "application/json")],
            None,
        )
        .json();
        status[kind]
            .as_array()
            .and_then(|a| a.iter().find(|x| x["id"] == id).cloned())
            .unwrap_or_else(|| panic!("{id} is not on the status page: {status}"))
    }
}

impl Proxy {
    /// Stops the proxy (SIGTERM to the supervisor, which passes it on).
    pub fn stop(&mut self) {
        stop(&mut self.child);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A self-signed pair made the way users make one (`scripts/make-cert.sh`):
/// `zhiva.crt`, `zhiva.key` and `trusted.crt` in `dir`.
pub fn make_cert(dir: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/make-cert.sh");
    let mut cmd = Command::new(script);
    cmd.arg(dir);
    succeed(cmd);
}

/// A fresh temp dir whose `config/` holds `servers` and `models`.
pub fn config_dir(name: &str, servers: &Value, models: &Value) -> PathBuf {
    let dir = tempdir(name);
    write_config(&dir.join("config"), servers, models);
    dir
}

/// A fresh temp dir whose `config/` holds one server nothing answers at and no models.
pub fn bare_config_dir(name: &str) -> PathBuf {
    config_dir(
        name,
        &json!({SERVER_A: {"uri": "http://127.0.0.1:9/dicom-web"}}),
        &json!({}),
    )
}

/// Writes servers.json and models.json into `dir`.
pub fn write_config(dir: &Path, servers: &Value, models: &Value) {
    std::fs::create_dir_all(dir).expect("config dir");
    std::fs::write(
        dir.join("servers.json"),
        serde_json::to_string_pretty(servers).unwrap(),
    )
    .unwrap();
    std::fs::write(
        dir.join("models.json"),
        serde_json::to_string_pretty(models).unwrap(),
    )
    .unwrap();
}

/// The zhiva auth service and its Bearer-checking PACS gateway, in front of Orthanc A.
pub struct AuthService {
    child: Child,
    /// Base URL, e.g. `http://127.0.0.1:P`.
    pub url: String,
}

impl AuthService {
    /// Starts one in front of Orthanc A, with extra `auth_service.py` flags.
    pub fn start(name: &str, args: &[&str]) -> AuthService {
        let e = env();
        let dir = tempdir(&format!("authsvc-{name}"));
        let log = dir.join("auth.log");
        let upstream = e.pacs_a.trim_end_matches("/dicom-web").to_string();
        let mut cmd = supervised("auth_service.py");
        cmd.args(["run", "--port", "0", "--pacs-upstream", &upstream])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        let mut child = cmd.spawn().expect("auth_service.py");
        let v = announced(&mut child).unwrap_or_else(|line| {
            panic!(
                "auth service did not start: {line} {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        });
        AuthService {
            child,
            url: v["url"].as_str().unwrap().to_string(),
        }
    }

    /// Started with HTTPS on the given pair.
    pub fn start_https(name: &str, cert: &Path, key: &Path) -> AuthService {
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        AuthService::start(name, &["--tls-cert", cert, "--tls-key", key])
    }

    /// POSTs to a `/control/` route and returns its JSON answer.
    pub fn control(&self, what: &str, body: Value) -> Value {
        let agent = agent();
        let r = agent
            .post(format!("{}/control/{what}", self.url))
            .header("Content-Type", "application/json")
            .send(body.to_string().as_bytes())
            .unwrap();
        let mut s = String::new();
        r.into_body().into_reader().read_to_string(&mut s).unwrap();
        serde_json::from_str(&s).unwrap_or(Value::Null)
    }

    /// `/control/stats`: what the service has seen.
    pub fn stats(&self) -> Value {
        get(&format!("{}/control/stats", self.url)).json()
    }

    /// A servers.json entry for the gateway.
    /// Addressed by name, as certificates are issued for `localhost`.
    pub fn server(&self, auth: Value) -> Value {
        let url = self.url.replace("127.0.0.1", "localhost");
        let mut s = json!({
            "uri": format!("{url}/zhiva/pacs"),
            "statusUri": format!("{url}/zhiva/pacs/studies"),
            "signInServer": format!("{url}/auth/sign-user"),
            "signInTokenServer": format!("{url}/auth/generate-access-token"),
            "refreshServer": format!("{url}/auth/refresh-token"),
        });
        for (k, v) in auth.as_object().unwrap() {
            s[k] = v.clone();
        }
        s
    }
}

impl Drop for AuthService {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// `faults.py`: a PACS and models that misbehave on purpose (see tests/fixtures/README.md).
pub struct Faults {
    child: Child,
    /// Base URL, e.g. `http://127.0.0.1:P`.
    pub url: String,
}

impl Drop for Faults {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Starts `faults.py` in front of Orthanc A.
pub fn faults() -> Faults {
    let upstream = env().pacs_a.trim_end_matches("/dicom-web").to_string();
    let mut child = supervised("faults.py")
        .args(["--upstream", &upstream])
        .stdout(Stdio::piped())
        .spawn()
        .expect("faults.py");
    let port = announced(&mut child).expect("faults.py did not start")["port"]
        .as_u64()
        .expect("faults.py announces its port");
    Faults {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// An HTTPS client that trusts the certificates in `cert` (PEM) and nothing else.
pub fn agent_trusting(cert: &Path, timeout: Option<Duration>) -> ureq::Agent {
    let pem = std::fs::read(cert).expect("the certificate file");
    let certs: Vec<_> = ureq::tls::parse_pem(&pem)
        .filter_map(|i| match i {
            Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
            _ => None,
        })
        .collect();
    let tls = ureq::tls::TlsConfig::builder()
        .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
        .build();
    ureq::Agent::config_builder()
        .tls_config(tls)
        .http_status_as_error(false)
        .timeout_global(timeout)
        .build()
        .new_agent()
}
