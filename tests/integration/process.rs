//! Process behaviour as systemd and container runtimes drive it: readiness
//! notification, graceful SIGTERM/SIGINT, SIGHUP reload.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

/// The proxy run directly (not supervised), so the test sees its own exit status.
struct Direct {
    child: Child,
    url: String,
    log: std::path::PathBuf,
}

impl Direct {
    fn start(dir: &Path, args: &[&str], notify: Option<&Path>) -> Direct {
        let port = free_port();
        let log = dir.join("proxy.log");
        let mut cmd = Command::new(proxy_bin());
        cmd.args([
            "serve",
            "--no-tls",
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .arg("--config")
        .arg(dir.join("config"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::from(std::fs::File::create(&log).unwrap()));
        if let Some(n) = notify {
            cmd.env("NOTIFY_SOCKET", n);
        }
        let child = cmd.spawn().unwrap();
        let url = format!("http://127.0.0.1:{port}");
        wait_for(&format!("{url}/healthz"), Duration::from_secs(20));
        Direct { child, url, log }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s.code();
            }
            thread::sleep(Duration::from_millis(50));
        }
        None
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Direct {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn tells_systemd_it_is_ready() {
    let model = model();
    let dir = config_dir("notify", &servers_json(), &model.models_json());
    let sock_path = dir.join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut p = Direct::start(&dir, &[], Some(&sock_path));
    let mut buf = [0u8; 128];
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"READY=1");
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    let n = sock.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"STOPPING=1");
}

#[test]
fn sigterm_lets_in_flight_inferences_finish_then_exits_0() {
    let model = model();
    let dir = config_dir("sigterm", &servers_json(), &model.models_json());
    let mut p = Direct::start(&dir, &["--grace-period", "20"], None);
    let slow = format!("{}{}", p.url, series_path(SLOW, None));
    let in_flight = thread::spawn(move || get(&slow).status);
    thread::sleep(Duration::from_millis(700));
    p.signal("TERM");
    thread::sleep(Duration::from_millis(300));
    // New inferences are refused while the old one finishes; readiness says so too.
    let fast = format!("{}{}", p.url, series_path(SEG, None));
    if let Ok(r) = agent().get(&fast).call() {
        assert_eq!(r.status(), 503);
        // The connection is not kept: the client's next one goes to another replica.
        let close = r.headers().get("connection").and_then(|v| v.to_str().ok());
        assert_eq!(close, Some("close"));
    }
    if let Ok(r) = agent().get(format!("{}/readyz", p.url)).call() {
        assert_eq!(r.status(), 503);
    }
    assert_eq!(
        in_flight.join().unwrap(),
        200,
        "the in-flight inference was cut off"
    );
    assert_eq!(
        p.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        p.logs()
    );
    assert!(p.logs().contains("shutting down"));
}

#[test]
fn sigterm_lets_a_running_prefetch_land_in_the_cache() {
    let model = model();
    let dir = config_dir("sigterm-prefetch", &servers_json(), &model.models_json());
    let mut p = Direct::start(&dir, &["--grace-period", "20", "--cache-size", "64M"], None);
    let slow = format!("{}{}", p.url, series_path(SLOW, None));
    assert_eq!(request("PUT", &slow, &[], None).status, 202);
    thread::sleep(Duration::from_millis(700));
    p.signal("TERM");
    assert_eq!(
        p.wait_exit(Duration::from_secs(15)),
        Some(0),
        "{}",
        p.logs()
    );
    assert!(p.logs().contains("prefetched model"), "{}", p.logs());
}

#[test]
fn sigint_exits_0_and_grace_period_bounds_the_wait() {
    let model = model();
    let dir = config_dir("sigint", &servers_json(), &model.models_json());
    let mut p = Direct::start(&dir, &["--grace-period", "1"], None);
    let slow = format!("{}{}", p.url, series_path(SLOW, None));
    let _in_flight = thread::spawn(move || agent().get(&slow).call().map(|r| r.status().as_u16()));
    thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the grace period was not honoured"
    );
    assert!(p.logs().contains("grace period over"), "{}", p.logs());
}

#[test]
fn sighup_reloads_and_refuses_a_bad_config() {
    let model = model();
    let dir = config_dir("sighup", &servers_json(), &model.models_json());
    let mut p = Direct::start(&dir, &[], None);
    let new_model = "8d9508dd-9089-40c3-abdd-15f47120d682";
    let url = format!("{}{}", p.url, series_path(new_model, None));
    assert_eq!(get(&url).code(), "unknown_model");
    let mut models = model.models_json();
    models[new_model] = json!({"uri": format!("{}/segmentation", model.url()), "task": "segmentation", "supports": ["/studies/series"]});
    write_config(&dir.join("config"), &servers_json(), &models);
    p.signal("HUP");
    let until = Instant::now() + Duration::from_secs(5);
    while get(&url).status != 200 {
        assert!(Instant::now() < until, "reload did not take: {}", p.logs());
        thread::sleep(Duration::from_millis(100));
    }
    // A broken file is refused; the config in force stays.
    std::fs::write(dir.join("config/models.json"), "{ \"broken\": ").unwrap();
    p.signal("HUP");
    let until = Instant::now() + Duration::from_secs(5);
    while !p.logs().contains("config reload refused") {
        assert!(Instant::now() < until, "{}", p.logs());
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(get(&url).status, 200);
    assert!(p.logs().contains("models.json:1:"), "{}", p.logs());
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
}
