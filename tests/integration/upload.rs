//! The upload to the model: the proxy's memory stays flat however big the
//! series, in the spooled (`contentLength`) mode too, and models served over
//! HTTPS are reached through the proxy's own TLS client (rustls, `--ca-file`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::common::*;

/// A fixture process, stopped on drop.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        stop(&mut self.0);
    }
}

/// `gen_study.py` at full CT size: one study of one series of `slices` 512x512 slices.
fn big_series(dir: &Path, slices: usize, seed: u32) -> (String, String) {
    let mut gen = Command::new("python3");
    gen.arg(fixtures().join("gen_study.py"))
        .args([
            "--out",
            dir.to_str().unwrap(),
            "--series",
            "1",
            "--size",
            "512",
        ])
        .args(["--slices", &slices.to_string(), "--seed", &seed.to_string()]);
    let stdout = succeed(gen);
    let v: Value = serde_json::from_slice(&stdout).unwrap();
    let s = &v["studies"][0];
    (
        s["study"].as_str().unwrap().to_string(),
        s["series"][0]["series"].as_str().unwrap().to_string(),
    )
}

/// An Orthanc of its own holding `data`: the big series stay out of the shared one.
fn orthanc(dir: &Path, data: &Path) -> (Running, String) {
    let port = free_port();
    let mut c = supervised("orthanc.py");
    c.args(["run", "--dir", dir.to_str().unwrap()])
        .args(["--http-port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let running = Running(c.spawn().expect("orthanc.py"));
    let url = format!("http://127.0.0.1:{port}");
    let mut up = Command::new("python3");
    up.arg(fixtures().join("orthanc.py"))
        .args(["upload", "--wait", "60", "--url", &url])
        .arg(data);
    succeed(up);
    (running, format!("{url}/dicom-web"))
}

/// The pid of the proxy started with `state` as its state directory (it runs
/// under supervise.py, so it is not our child).
fn proxy_pid(state: &Path) -> u32 {
    let want = state.to_str().unwrap();
    let bin = std::fs::canonicalize(proxy_bin()).unwrap();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        if exe.as_deref() == Some(bin.as_path()) && args.contains(&want.as_bytes()) {
            return pid;
        }
    }
    panic!("no model-proxy process with --state-dir {want}");
}

/// VmRSS and VmHWM of `pid`, in KiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap()
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Peak RSS of `pid` during one inference (the high-water mark reset first), in KiB above its RSS before.
fn peak_during(pid: u32, url: &str) -> (u64, Resp) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let (before, _) = memory(pid);
    let r = get(url);
    let (_, peak) = memory(pid);
    (peak.saturating_sub(before), r)
}

#[test]
fn spooled_uploads_keep_memory_flat_as_the_series_grows() {
    let model = model();
    let dir = tempdir("upload-flat");
    let small = big_series(&dir.join("data/small"), 15, 601);
    let large = big_series(&dir.join("data/large"), 60, 602);
    let (_orthanc, pacs) = orthanc(&dir.join("orthanc"), &dir.join("data"));
    let spooled = "f2000000-0000-4000-8000-000000000001";
    let servers = json!({SERVER_A: {"uri": pacs, "isDefault": true}});
    let models = json!({spooled: {"uri": format!("{}/sink", model.url()), "task": "segmentation",
                                  "supports": ["/studies/series"], "contentLength": true}});
    write_config(&dir.join("config"), &servers, &models);
    let p = Proxy::start_in(&dir, &[], &[]);
    let pid = proxy_pid(&dir.join("state"));
    let url = |(study, series): &(String, String)| {
        format!(
            "{}/segmentations/{spooled}/studies/{study}/series/{series}",
            p.url
        )
    };
    // Once, so that what every request allocates (a worker's stack, its buffers) is in place.
    assert_eq!(get(&url(&small)).status, 200);
    let mut growth = Vec::new();
    for series in [&small, &large] {
        let (grew, r) = peak_during(pid, &url(series));
        assert_eq!(r.status, 200, "{}", r.body);
        let last = model.last();
        assert_eq!(last["chunked"], false);
        assert_eq!(last["contentLength"], r.json()["bytes"], "{last}");
        growth.push((grew, last["bytes"].as_u64().unwrap()));
    }
    let ((small_kib, small_bytes), (large_kib, large_bytes)) = (growth[0], growth[1]);
    assert!(large_bytes > 3 * small_bytes && large_bytes > 70_000_000);
    // Before, a spool reading 8 KiB at a time made the payload buffer grow
    // with the series: +100 MB here. Now it is a few fixed blocks.
    assert!(
        large_kib < 24 * 1024,
        "the request took {large_kib} KiB over its start for a {large_bytes}-byte body"
    );
    assert!(
        large_kib < small_kib + 4 * 1024,
        "{small_kib} KiB for {small_bytes} bytes, {large_kib} KiB for {large_bytes} bytes"
    );
    // The spool leaves nothing behind.
    let spool = dir.join("state/spool");
    assert_eq!(std::fs::read_dir(spool).map(|d| d.count()).unwrap_or(0), 0);
}

/// A model served over HTTPS with a self-signed certificate: reached when
/// `--ca-file` trusts it (chunked and spooled alike), refused otherwise.
#[test]
fn a_model_over_https_is_verified_with_the_ca_file() {
    let e = env();
    let dir = tempdir("upload-https");
    make_cert(&dir.join("certs"));
    let port = free_port();
    let mut c = supervised("model_api.py");
    c.args(["--port", &port.to_string()])
        .arg("--tls-cert")
        .arg(dir.join("certs/zhiva.crt"))
        .arg("--tls-key")
        .arg(dir.join("certs/zhiva.key"))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let _model = Running(c.spawn().expect("model_api.py"));
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "model_api.py did not listen"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let https = format!("https://localhost:{port}/segmentation");
    let streamed = "f2000000-0000-4000-8000-000000000002";
    let spooled = "f2000000-0000-4000-8000-000000000003";
    let models = json!({
        streamed: {"uri": https, "task": "segmentation", "supports": ["/studies/series"]},
        spooled: {"uri": https, "task": "segmentation", "supports": ["/studies/series"], "contentLength": true},
    });
    write_config(&dir.join("config"), &servers_json(), &models);
    let ca: PathBuf = dir.join("certs/trusted.crt");
    let p = Proxy::start_in(&dir, &["--ca-file", ca.to_str().unwrap()], &[]);
    let (series, instances) = &e.study_a.series[0];
    for model in [streamed, spooled, streamed] {
        let r = p.get(&series_path(model, None));
        assert_eq!(r.status, 200, "{}", r.body);
        let sops = r.json()[&e.study_a.uid][series].as_object().unwrap().len();
        assert_eq!(sops, instances.len() + 1, "{}", r.body);
    }
    // Without the CA file, the same model is refused, and the viewer is told why.
    let other = tempdir("upload-https-untrusted");
    write_config(&other.join("config"), &servers_json(), &models);
    let p = Proxy::start_in(&other, &[], &[]);
    let r = p.get(&series_path(streamed, None));
    r.assert_error(502, "model_unreachable");
    assert!(r.body.contains("certificate"), "{}", r.body);
}
