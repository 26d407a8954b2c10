//! Upstreams behind the hospital's egress proxy: `HTTP_PROXY` and friends, with
//! a real forward proxy (Debian's tinyproxy) between model-proxy and its
//! upstreams. ureq's agents (PACS, auth, probes) and the hand-written model
//! client must both go through it, and both honour `NO_PROXY`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// tinyproxy on a free port, logging every CONNECT; killed on drop.
struct TinyProxy {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl TinyProxy {
    fn start(name: &str, login: &str, password: &str) -> TinyProxy {
        let dir = tempdir(name);
        let port = free_port();
        let log = dir.join("tinyproxy.log");
        let conf = dir.join("tinyproxy.conf");
        // No ConnectPort line: CONNECT to any port, as a model on 8000 needs.
        std::fs::write(
            &conf,
            format!(
                "Port {port}\nListen 127.0.0.1\nTimeout 60\nMaxClients 64\nLogLevel Connect\n\
                 LogFile \"{}\"\nBasicAuth {login} {password}\n",
                log.display()
            ),
        )
        .unwrap();
        let child = Command::new(tinyproxy_bin())
            .args(["-d", "-c"])
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tinyproxy (scripts/setup.sh installs it)");
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < until, "tinyproxy did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        TinyProxy { child, port, log }
    }

    /// The `host:port` of every CONNECT it was asked for.
    fn tunnels(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split("): CONNECT ").nth(1))
            .filter_map(|rest| rest.split_whitespace().next())
            .map(String::from)
            .collect()
    }

    fn url(&self, login: &str, password: &str) -> String {
        format!("http://{login}:{password}@127.0.0.1:{}", self.port)
    }
}

impl Drop for TinyProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tinyproxy_bin() -> &'static str {
    ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
        .into_iter()
        .find(|p| std::path::Path::new(p).exists())
        .unwrap_or("tinyproxy")
}

/// `host:port` of a URL.
fn authority(url: &str) -> String {
    let rest = url.split("://").nth(1).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_string()
}

#[test]
fn the_pacs_and_the_model_are_reached_through_the_environments_proxy() {
    let model = model();
    let tp = TinyProxy::start("egress-proxy", "mp", "s3cret-egress");
    let p = Proxy::start(
        &model,
        "egress",
        &[],
        &[("HTTP_PROXY", &tp.url("mp", "s3cret-egress"))],
    );
    let r = p.get(&series_path(SEG, None));
    assert_eq!(r.status, 200, "{}\n{}", r.body, p.logs());
    let tunnels = tp.tunnels();
    for upstream in [model.url(), env().pacs_a.as_str()] {
        assert!(
            tunnels.contains(&authority(upstream)),
            "no tunnel to {upstream}: {tunnels:?}"
        );
    }
    let logs = p.logs();
    assert!(logs.contains("go through the proxy 127.0.0.1:"), "{logs}");
    assert!(
        !logs.contains("s3cret-egress"),
        "the proxy password is in the log"
    );
}

#[test]
fn no_proxy_goes_direct_and_a_refused_tunnel_is_a_clear_502() {
    let model = model();
    let tp = TinyProxy::start("egress-refused-proxy", "mp", "right-password");
    // The model by name, the PACS by address: NO_PROXY excepts the address only.
    let mut models = model.models_json();
    let by_name = format!("{}/segmentation", model.url()).replace("127.0.0.1", "localhost");
    models[SEG]["uri"] = by_name.into();
    let dir = config_dir("egress-refused", &servers_json(), &models);
    let p = Proxy::start_in(
        &dir,
        &[],
        &[
            ("HTTP_PROXY", &tp.url("mp", "wrong-password")),
            ("NO_PROXY", "127.0.0.1"),
        ],
    );
    let before = model.count();
    let r = p.get(&series_path(SEG, None));
    r.assert_error(502, "model_unreachable");
    let message = r.json()["message"].as_str().unwrap_or("").to_string();
    assert!(message.contains("credentials"), "{message}");
    assert!(!r.body.contains("wrong-password"), "{}", r.body);
    assert_eq!(model.count(), before);
    let tunnels = tp.tunnels();
    let port = authority(model.url())
        .rsplit(':')
        .next()
        .unwrap()
        .to_string();
    assert_eq!(
        tunnels,
        vec![format!("localhost:{port}")],
        "only the model, by name, goes through the proxy"
    );

    // A model excepted by NO_PROXY is reached directly.
    let direct = Proxy::start(
        &model,
        "egress-direct",
        &[],
        &[
            ("HTTP_PROXY", &tp.url("mp", "wrong-password")),
            ("NO_PROXY", "127.0.0.1,localhost"),
        ],
    );
    assert_eq!(direct.get(&series_path(SEG, None)).status, 200);
    assert_eq!(tp.tunnels().len(), 1, "{:?}", tp.tunnels());
}
