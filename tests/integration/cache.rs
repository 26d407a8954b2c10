//! The inference cache end to end: hits, refresh and purge, single-flight,
//! prefetch, corrupt entries, replicas sharing a directory, and two replicas
//! behind a real nginx with one of them restarted under load.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

/// A proxy of its own with the cache on (the harness turns it off by default).
fn cached(m: &Model, name: &str, extra: &[&str]) -> Proxy {
    let mut args = vec!["--cache-size", "64M"];
    args.extend_from_slice(extra);
    Proxy::start(m, &format!("cache-{name}"), &args, &[])
}

fn x_cache(r: &Resp) -> &str {
    r.header("x-cache").unwrap_or("")
}

/// The value of one sample line of /metrics (name with its labels).
fn metric(p: &Proxy, sample: &str) -> u64 {
    let text = p.get("/metrics").body;
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {sample} in /metrics:\n{text}"))
}

fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The entry files under a cache directory.
fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for sub in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if sub.file_name().len() == 2 {
            found.extend(
                std::fs::read_dir(sub.path())
                    .unwrap()
                    .flatten()
                    .map(|f| f.path()),
            );
        }
    }
    found
}

fn cache_dir(p: &Proxy) -> PathBuf {
    p.config_dir.parent().unwrap().join("state/cache")
}

/// A query string of `pairs`, every byte but the unreserved ones percent-encoded.
fn query(pairs: &[(&str, &str)]) -> String {
    let enc = |s: &str| -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    };
    let parts: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{}={}", enc(k), enc(v)))
        .collect();
    parts.join("&")
}

fn filt_path(query: &str) -> String {
    format!(
        "/segmentations/{FILT}/studies/{}?{query}",
        env().study_a.uid
    )
}

#[test]
fn a_repeat_is_a_hit_with_the_same_bytes() {
    let m = model();
    let p = cached(&m, "repeat", &[]);
    let url = series_path(SEG, None);
    let before = m.count();
    let first = p.get(&url);
    assert_eq!(
        (first.status, x_cache(&first)),
        (200, "miss"),
        "{}",
        first.body
    );
    let again = request(
        "GET",
        &format!("{}{url}", p.url),
        &[("Origin", "https://app.zhiva.ai")],
        None,
    );
    assert_eq!((again.status, x_cache(&again)), (200, "hit"));
    assert_eq!(again.body, first.body, "byte-identical");
    assert_eq!(again.header("content-type"), first.header("content-type"));
    assert!(again.header("age").unwrap().parse::<u64>().is_ok());
    assert!(again
        .header("access-control-expose-headers")
        .unwrap()
        .contains("X-Cache"));
    assert_eq!(m.count(), before + 1, "the model ran once");
    assert!(p.logs().contains(" cache=hit"));

    // The same assignment of data in three encodings and as a POST body: one question.
    let e = env();
    let (s1, s2) = (&e.study_a.series[0].0, &e.study_a.series[1].0);
    let list = query(&[(
        "data-filters",
        &json!([{"dataKey": "series-one", "uuid": s1}, {"dataKey": "series-two", "uuid": s2}])
            .to_string(),
    )]);
    let axios0 = query(&[
        (
            "data-filters[]",
            &json!({"uuid": s2, "dataKey": "series-two"}).to_string(),
        ),
        (
            "data-filters[]",
            &json!({"dataKey": "series-one", "uuid": s1}).to_string(),
        ),
    ]);
    let axios1 = query(&[
        ("data-filters[0][dataKey]", "series-two"),
        ("data-filters[0][uuid]", s2),
        ("data-filters[1][dataKey]", "series-one"),
        ("data-filters[1][uuid]", s1),
    ]);
    let r = p.get(&filt_path(&list));
    assert_eq!((r.status, x_cache(&r)), (200, "miss"), "{}", r.body);
    for q in [&axios0, &axios1] {
        let h = p.get(&filt_path(q));
        assert_eq!(
            (h.status, x_cache(&h), &h.body),
            (200, "hit", &r.body),
            "{q}"
        );
    }
    let body =
        json!([{"dataKey": "series-two", "uuid": s2}, {"dataKey": "series-one", "uuid": s1}]);
    let post = request(
        "POST",
        &format!("{}/segmentations/{FILT}/studies/{}", p.url, e.study_a.uid),
        &[("Content-Type", "application/json")],
        Some(&body.to_string()),
    );
    assert_eq!(
        (post.status, x_cache(&post), &post.body),
        (200, "hit", &r.body)
    );
    assert_eq!(m.count(), before + 2);
    assert_eq!(metric(&p, "model_proxy_cache_hits_total"), 4);
    assert_eq!(metric(&p, "model_proxy_cache_entries"), 2);
    assert_eq!(metric(&p, "model_proxy_in_flight"), 0);
}

#[test]
fn no_cache_refreshes_and_delete_purges() {
    let m = model();
    let p = cached(&m, "refresh", &[]);
    let e = env();
    let url = format!(
        "/segmentations/{SEG}/studies/{}/series/{}",
        e.study_a.uid, e.study_a.series[1].0
    );
    let before = m.count();
    assert_eq!(x_cache(&p.get(&url)), "miss");
    let full = format!("{}{url}", p.url);
    let fresh = request("GET", &full, &[("Cache-Control", "no-cache")], None);
    assert_eq!((fresh.status, x_cache(&fresh)), (200, "miss"));
    assert_eq!(m.count(), before + 2, "no-cache runs the model again");
    let hit = p.get(&url);
    assert_eq!((x_cache(&hit), &hit.body), ("hit", &fresh.body));
    let gone = request("DELETE", &full, &[], None);
    assert_eq!(
        (gone.status, gone.json()["purged"].as_bool()),
        (200, Some(true))
    );
    assert_eq!(x_cache(&p.get(&url)), "miss", "purged");
    assert_eq!(m.count(), before + 3);
    wait_until("the entry", Duration::from_secs(5), || {
        entries(&cache_dir(&p)).len() == 1
    });
    request("DELETE", &full, &[], None);
    let none = request("DELETE", &full, &[], None);
    assert_eq!(none.json()["purged"], false);
    assert_eq!(
        metric(&p, "model_proxy_cache_evictions_total{reason=\"purge\"}"),
        2
    );
}

#[test]
fn a_browser_reads_the_cache_headers_and_may_refresh_or_purge() {
    let m = model();
    let p = cached(&m, "browser", &["--allowed-origins", "http://127.0.0.1:*"]);
    let path = series_path(ANN, None).replace("/segmentations/", "/annotations/");
    let fetch = |name: &str, method: &str, headers: serde_json::Value| json!({"name": name, "client": "fetch", "method": method, "path": path, "headers": headers});
    let spec = json!({"proxy": p.url, "requests": [
        fetch("first", "GET", json!({})),
        fetch("again", "GET", json!({})),
        // Not a simple request: Chromium sends a preflight first.
        fetch("refresh", "GET", json!({"Cache-Control": "no-cache"})),
        fetch("purge", "DELETE", json!({})),
        {"name": "axios", "client": "axios1", "path": path},
    ]});
    let r = crate::contract::browser(&spec);
    let seen: Vec<(u64, &str)> = r
        .iter()
        .map(|x| {
            let h = &x["headers"];
            (
                x["status"].as_u64().unwrap_or(0),
                h["x-cache"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        seen[..4],
        [(200, "miss"), (200, "hit"), (200, "miss"), (200, "")],
        "{r:?}"
    );
    // After the purge: a miss, or a hit if the refresh landed just after it.
    assert!(matches!(seen[4], (200, "miss" | "hit")), "{r:?}");
    assert!(
        r[1]["headers"]["age"].as_str().is_some(),
        "Age is readable: {r:?}"
    );
    assert_eq!(r[1]["body"], r[0]["body"]);
    assert!(r[3]["body"].as_str().unwrap().contains("\"purged\":true"));
}

#[test]
fn bad_requests_never_touch_the_cache() {
    let m = model();
    let p = cached(&m, "bad", &[]);
    let e = env();
    let before = m.count();
    let r = p.get(&format!("/segmentations/{SEG}/studies/1..2"));
    r.assert_error(400, "invalid_uid");
    assert_eq!(r.header("x-cache"), None);
    let r = p.get(&format!("/annotations/{SEG}/studies/{}", e.study_a.uid));
    r.assert_error(400, "task_mismatch");
    let unknown = format!("/segmentations/{}/studies/{}", SERVER_A, e.study_a.uid);
    request("DELETE", &format!("{}{unknown}", p.url), &[], None).assert_error(404, "unknown_model");
    request("PUT", &format!("{}{unknown}", p.url), &[], None).assert_error(404, "unknown_model");
    let r = request(
        "PATCH",
        &format!("{}{}", p.url, series_path(SEG, None)),
        &[],
        None,
    );
    r.assert_error(405, "method_not_allowed");
    assert!(r.header("allow").unwrap().contains("PUT, DELETE"));
    let r = request(
        "POST",
        &format!("{}/prefetch", p.url),
        &[],
        Some("{\"not\": \"a list\"}"),
    );
    r.assert_error(400, "invalid_body");
    assert_eq!(m.count(), before);
    assert!(entries(&cache_dir(&p)).is_empty());
    assert_eq!(metric(&p, "model_proxy_cache_misses_total"), 0);
    assert_eq!(metric(&p, "model_proxy_in_flight"), 0);
}

/// Sends a request and hangs up after `after` without reading the answer.
fn give_up(url: &str, path: &str, after: Duration) {
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").unwrap();
    thread::sleep(after);
}

#[test]
fn identical_requests_share_one_inference() {
    let m = model();
    let p = cached(&m, "flight", &[]);
    let path = series_path(SLOW, None);
    let before = m.count();
    let url = format!("{}{path}", p.url);
    let clients: Vec<_> = (0..6)
        .map(|i| {
            let url = url.clone();
            thread::sleep(Duration::from_millis(if i == 0 { 0 } else { 50 }));
            thread::spawn(move || get(&url))
        })
        .collect();
    // One more gives up while it waits: the others are not cancelled.
    give_up(&p.url, &path, Duration::from_millis(500));
    let answers: Vec<Resp> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let misses = answers.iter().filter(|r| x_cache(r) == "miss").count();
    for r in &answers {
        assert_eq!((r.status, r.body.as_str()), (200, answers[0].body.as_str()));
    }
    assert_eq!(misses, 1, "one leader, the rest were served its answer");
    assert_eq!(m.count(), before + 1, "one model call for seven requests");
    assert!(metric(&p, "model_proxy_cache_joined_total") >= 1);
    wait_until("every request answered", Duration::from_secs(10), || {
        metric(&p, "model_proxy_in_flight") == 0
    });
}

#[test]
fn errors_reach_every_waiting_request_and_are_not_stored() {
    let m = model();
    let p = cached(&m, "errors", &["--pacs-timeout", "2"]);
    let url = format!("{}{}", p.url, series_path(SEG, Some(SERVER_STALL)));
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let url = url.clone();
            thread::spawn(move || get(&url))
        })
        .collect();
    for r in waiting {
        let r = r.join().unwrap();
        r.assert_error(504, "pacs_timeout");
        assert_eq!(x_cache(&r), "miss");
    }
    assert!(
        metric(&p, "model_proxy_cache_joined_total") >= 1,
        "{}",
        p.logs()
    );
    // A model error is not stored either: each request asks the model again.
    let before = m.count();
    let fail = format!("{}{}", p.url, series_path(FAIL, None));
    get(&fail).assert_error(502, "model_error");
    get(&fail).assert_error(502, "model_error");
    assert_eq!(m.count(), before + 2);
    assert_eq!(metric(&p, "model_proxy_cache_entries"), 0);
    assert!(entries(&cache_dir(&p)).is_empty());
}

#[test]
fn a_model_may_opt_out_and_the_cache_may_be_off() {
    let m = model();
    let mut models = m.models_json();
    models[SEG]["cache"] = json!(false);
    let dir = config_dir("cache-opt-out", &servers_json(), &models);
    let p = Proxy::start_in(&dir, &["--cache-size", "64M"], &[]);
    let url = series_path(SEG, None);
    let before = m.count();
    for _ in 0..2 {
        assert_eq!(x_cache(&p.get(&url)), "miss");
    }
    assert_eq!(m.count(), before + 2);
    let put = request("PUT", &format!("{}{url}", p.url), &[], None);
    put.assert_error(409, "not_cached");
    assert!(put.json()["message"]
        .as_str()
        .unwrap()
        .contains("\"cache\": false"));
    // Other models of the same proxy are cached.
    let ann = format!(
        "/annotations/{ANN}/studies/{}/series/{}",
        env().study_a.uid,
        env().study_a.series[0].0
    );
    p.get(&ann);
    assert_eq!(x_cache(&p.get(&ann)), "hit");
    // With the cache off, nothing is stored and prefetch says why.
    let off = m.shared();
    assert_eq!(x_cache(&off.get(&url)), "miss");
    request("PUT", &format!("{}{url}", off.url), &[], None).assert_error(409, "not_cached");
}

#[test]
fn a_prefetched_study_is_a_hit_on_first_open() {
    let m = model();
    let p = cached(&m, "prefetch", &[]);
    let e = env();
    let series = series_path(SEG, None);
    let before = m.count();
    let put = request("PUT", &format!("{}{series}", p.url), &[], None);
    assert_eq!(
        (put.status, put.json()["status"].as_str()),
        (202, Some("queued"))
    );
    wait_until("the prefetch", Duration::from_secs(60), || {
        metric(&p, "model_proxy_prefetches_total{outcome=\"done\"}") == 1
    });
    let r = p.get(&series);
    assert_eq!((r.status, x_cache(&r)), (200, "hit"));
    assert_eq!(m.count(), before + 1);

    // A list, as a cron job or an Orthanc Lua hook sends it; absolute URLs are fine.
    let study = format!("/predictions/{PRED}/studies/{}", e.study_a.uid);
    let ann = format!(
        "/annotations/{ANN}/studies/{}/series/{}",
        e.study_a.uid, e.study_a.series[1].0
    );
    let list = json!([
        study,
        format!("http://proxy.example:8002{ann}"),
        series,
        "/nope"
    ]);
    let r = request(
        "POST",
        &format!("{}/prefetch", p.url),
        &[],
        Some(&list.to_string()),
    );
    assert_eq!(r.status, 202, "{}", r.body);
    let v = r.json();
    assert_eq!(v["queued"], 3, "{v}");
    assert_eq!(v["rejected"][0]["code"], "not_found", "{v}");
    wait_until("the list", Duration::from_secs(60), || {
        metric(&p, "model_proxy_prefetches_total{outcome=\"done\"}") == 3
            && metric(&p, "model_proxy_prefetches_total{outcome=\"skipped\"}") == 1
    });
    for u in [&study, &ann] {
        assert_eq!(x_cache(&p.get(u)), "hit", "{u}");
    }
    assert_eq!(m.count(), before + 3, "the cached series was skipped");

    // A viewer that opens the study while its prefetch runs waits for it.
    let slow = series_path(SLOW, None);
    assert_eq!(
        request("PUT", &format!("{}{slow}", p.url), &[], None).status,
        202
    );
    wait_until(
        "the slow prefetch to start",
        Duration::from_secs(10),
        || metric(&p, "model_proxy_prefetch_running") == 1,
    );
    let r = p.get(&slow);
    assert_eq!((r.status, x_cache(&r)), (200, "hit"), "{}", r.body);
    assert_eq!(m.count(), before + 4);
    assert_eq!(metric(&p, "model_proxy_prefetch_queued"), 0);
}

#[test]
fn corrupt_entries_are_misses_and_removed() {
    let m = model();
    let p = cached(&m, "corrupt", &[]);
    let url = series_path(SEG, None);
    let good = p.get(&url);
    // The entry lands just after the answer has gone out.
    wait_until("the entry", Duration::from_secs(5), || {
        entries(&cache_dir(&p)).len() == 1
    });
    let found = entries(&cache_dir(&p));
    let [entry] = &found[..] else {
        panic!("one entry expected: {found:?}")
    };
    let bytes = std::fs::read(entry).unwrap();
    let before = m.count();
    // Cut short, as by a copy that ran out of space.
    std::fs::write(entry, &bytes[..bytes.len() - 3]).unwrap();
    let r = p.get(&url);
    assert_eq!((x_cache(&r), &r.body), ("miss", &good.body));
    wait_until("the entry stored again", Duration::from_secs(5), || {
        std::fs::read(entry).is_ok_and(|b| b.len() == bytes.len())
    });
    assert_eq!(
        std::fs::read(entry).unwrap()[1024..],
        bytes[1024..],
        "whole again"
    );
    // A header that is not ours.
    let mut garbled = bytes.clone();
    garbled[..10].copy_from_slice(b"garbage!!!");
    std::fs::write(entry, &garbled).unwrap();
    assert_eq!(x_cache(&p.get(&url)), "miss");
    wait_until("the entry stored again", Duration::from_secs(5), || {
        std::fs::read(entry).is_ok_and(|b| b.starts_with(b"{"))
    });
    // A flipped byte in the body: the answer is cut, never wrong, and the entry goes.
    let mut flipped = std::fs::read(entry).unwrap();
    let last = flipped.len() - 2;
    flipped[last] ^= 0x20;
    std::fs::write(entry, &flipped).unwrap();
    let agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .new_agent();
    let resp = agent
        .get(format!("{}{url}", p.url))
        .header("Connection", "close")
        .call();
    if let Ok(resp) = resp {
        let mut body = Vec::new();
        let read = resp.into_body().into_reader().read_to_end(&mut body);
        assert!(read.is_err(), "a corrupt body must not arrive whole");
    }
    wait_until("the corrupt entry removed", Duration::from_secs(5), || {
        !entry.exists()
    });
    let r = p.get(&url);
    assert_eq!((x_cache(&r), &r.body), ("miss", &good.body));
    assert_eq!(m.count(), before + 3);
    assert_eq!(
        metric(&p, "model_proxy_cache_evictions_total{reason=\"corrupt\"}"),
        3
    );
}

#[test]
fn replicas_share_a_directory_and_entries_expire() {
    let m = model();
    let shared = tempdir("cache-shared-dir");
    let dir = shared.to_str().unwrap();
    let a = cached(&m, "replica-a", &["--cache-dir", dir]);
    let b = cached(&m, "replica-b", &["--cache-dir", dir]);
    let url = series_path(SEG, None);
    let before = m.count();
    let first = a.get(&url);
    assert_eq!(x_cache(&first), "miss");
    // Between replicas there is no single-flight: B sees the entry once it has landed.
    wait_until("the entry", Duration::from_secs(5), || {
        entries(&shared).len() == 1
    });
    let other = b.get(&url);
    assert_eq!(
        (x_cache(&other), &other.body),
        ("hit", &first.body),
        "written by A, served by B"
    );
    assert_eq!(m.count(), before + 1);
    // A replica with a TTL of 1 s: the entry is too old for it.
    thread::sleep(Duration::from_millis(1100));
    let c = cached(&m, "replica-c", &["--cache-dir", dir, "--cache-ttl", "1"]);
    assert_eq!(x_cache(&c.get(&url)), "miss");
    assert_eq!(m.count(), before + 2);
}

#[test]
fn the_size_limit_evicts_the_least_recently_used() {
    let m = model();
    // Room for two series answers (each ~1.9 KB on disk), not three.
    let p = cached(&m, "lru", &["--cache-size", "4000"]);
    let e = env();
    let series = |i: usize| {
        format!(
            "/segmentations/{SEG}/studies/{}/series/{}",
            e.study_a.uid, e.study_a.series[i].0
        )
    };
    let instance = format!("{}/instances/{}", series(1), e.study_a.series[1].1[0]);
    let sizes = |p: &Proxy| metric(p, "model_proxy_cache_bytes");
    p.get(&series(0));
    p.get(&series(1));
    wait_until("two entries", Duration::from_secs(5), || {
        metric(&p, "model_proxy_cache_entries") == 2
    });
    assert!(sizes(&p) < 4000, "{}", sizes(&p));
    // Entries record their use at most once a minute: make the first one look
    // long unused instead of waiting.
    let files = entries(&cache_dir(&p));
    let first = files
        .iter()
        .find(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .contains(&e.study_a.series[0].1[0])
        })
        .unwrap()
        .clone();
    let old = std::time::SystemTime::now() - Duration::from_secs(600);
    std::fs::File::options()
        .write(true)
        .open(&first)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_accessed(old))
        .unwrap();
    p.get(&instance);
    wait_until("an eviction", Duration::from_secs(10), || {
        metric(&p, "model_proxy_cache_evictions_total{reason=\"size\"}") >= 1
    });
    assert!(!first.exists(), "the least recently used went first");
    assert!(sizes(&p) <= 4000);
    assert_eq!(x_cache(&p.get(&series(0))), "miss");
}

// ---------------------------------------------------------------- nginx

fn nginx_bin() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() {
        "/usr/sbin/nginx"
    } else {
        "nginx"
    }
}

/// `config/nginx.example.conf` as the test runs it: the two replicas' ports,
/// listening on `port` over plain HTTP (the example's TLS lines dropped).
fn nginx_conf(prefix: &Path, port: u16, replicas: [u16; 2]) -> PathBuf {
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/nginx.example.conf"),
    )
    .unwrap();
    let site: String = example
        .lines()
        .filter(|l| !l.contains("# TLS"))
        .map(|l| {
            l.replace("10.0.0.11:8002", &format!("127.0.0.1:{}", replicas[0]))
                .replace("10.0.0.12:8002", &format!("127.0.0.1:{}", replicas[1]))
                .replace("listen 443 ssl;", &format!("listen 127.0.0.1:{port};"))
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        site.contains(&format!("127.0.0.1:{}", replicas[1])),
        "the example's upstream changed"
    );
    std::fs::write(prefix.join("model-proxy.conf"), site).unwrap();
    let p = prefix.display();
    let main = format!(
        "worker_processes 2;\npid {p}/nginx.pid;\nerror_log {p}/error.log info;\nevents {{ worker_connections 1024; }}\n\
         http {{\n  log_format up '$request $status $body_bytes_sent upstream=$upstream_addr:$upstream_status';\n  \
         access_log {p}/access.log up;\n  include {p}/model-proxy.conf;\n}}\n"
    );
    let conf = prefix.join("nginx.conf");
    std::fs::write(&conf, main).unwrap();
    conf
}

/// Status, X-Cache and body of an answer, or what went wrong.
type Fetched = Result<(u16, String, Vec<u8>), String>;

/// One request through nginx.
fn fetch(agent: &ureq::Agent, url: &str, refresh: bool) -> Fetched {
    let mut rq = agent.get(url);
    if refresh {
        rq = rq.header("Cache-Control", "no-cache");
    }
    let r = rq.call().map_err(|e| format!("{url}: {e}"))?;
    let status = r.status().as_u16();
    let xc = r
        .headers()
        .get("x-cache")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut body = Vec::new();
    r.into_body()
        .into_reader()
        .read_to_end(&mut body)
        .map_err(|e| format!("{url}: body cut: {e}"))?;
    Ok((status, xc, body))
}

#[test]
fn two_replicas_behind_nginx_share_a_cache_through_a_restart() {
    let m = model();
    let e = env();
    let (s0, s1) = (&e.study_a.series[0], &e.study_a.series[1]);
    let filters = query(&[(
        "data-filters",
        &json!([{"dataKey": "series-one", "uuid": s0.0}, {"dataKey": "series-two", "uuid": s1.0}])
            .to_string(),
    )]);
    let paths: Vec<String> = vec![
        series_path(SEG, None),
        format!(
            "/segmentations/{SEG}/studies/{}/series/{}",
            e.study_a.uid, s1.0
        ),
        format!("/segmentations/{SEG}/studies/{}", e.study_a.uid),
        format!(
            "/segmentations/{SEG}/studies/{}/series/{}/instances/{}",
            e.study_a.uid, s1.0, s1.1[2]
        ),
        format!(
            "/annotations/{ANN}/studies/{}/series/{}",
            e.study_a.uid, s0.0
        ),
        format!("/predictions/{PRED}/studies/{}", e.study_a.uid),
        filt_path(&filters),
        format!(
            "/segmentations/{SEG}/studies/{}?server={SERVER_B}",
            e.study_b.uid
        ),
    ];
    // What each should answer, from a proxy without a cache.
    let reference: Vec<String> = paths
        .iter()
        .map(|p| {
            let r = m.shared().get(p);
            assert_eq!(r.status, 200, "{p}: {}", r.body);
            r.body
        })
        .collect();

    let shared = tempdir("nginx-shared-cache");
    let args = [
        "--cache-size",
        "64M",
        "--cache-dir",
        shared.to_str().unwrap(),
        "--grace-period",
        "20",
    ];
    let dirs = [
        config_dir("nginx-replica-a", &servers_json(), &m.models_json()),
        config_dir("nginx-replica-b", &servers_json(), &m.models_json()),
    ];
    let ports = [free_port(), free_port()];
    let a = Proxy::start_at(&dirs[0], ports[0], &args, &[]);
    let b = Proxy::start_at(&dirs[1], ports[1], &args, &[]);
    let prefix = tempdir("nginx");
    let port = free_port();
    let conf = nginx_conf(&prefix, port, ports);
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(fixtures().join("supervise.py"))
        .arg(nginx_bin())
        .args(["-p", prefix.to_str().unwrap(), "-c", conf.to_str().unwrap()])
        .args([
            "-e",
            prefix.join("error.log").to_str().unwrap(),
            "-g",
            "daemon off;",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(prefix.join("stderr.log")).unwrap());
    let mut nginx = cmd
        .spawn()
        .expect("nginx (Debian package nginx; scripts/setup.sh installs it)");
    let front = format!("http://127.0.0.1:{port}");
    wait_for(&format!("{front}/readyz"), Duration::from_secs(20));
    let before = m.count();

    // Mixed load from six clients until replica A has been restarted and has
    // served again; every answer is checked against the reference.
    let a = Arc::new(Mutex::new(a));
    let done = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<(usize, bool, Fetched)>>> = Arc::default();
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let (paths, front, stop, sent, results) = (
                paths.clone(),
                front.clone(),
                done.clone(),
                sent.clone(),
                results.clone(),
            );
            thread::spawn(move || {
                let agent = ureq::Agent::config_builder()
                    .http_status_as_error(false)
                    .timeout_global(Some(Duration::from_secs(120)))
                    .build()
                    .new_agent();
                let mut i = c;
                while !stop.load(Ordering::SeqCst) && i < 3000 {
                    let which = (i * 7 + c) % paths.len();
                    // Now and then a viewer forces a new inference.
                    let refresh = i % 23 == 5;
                    let got = fetch(&agent, &format!("{front}{}", paths[which]), refresh);
                    results.lock().unwrap().push((which, refresh, got));
                    sent.fetch_add(1, Ordering::SeqCst);
                    i += 6;
                    thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    wait_until("load before the restart", Duration::from_secs(60), || {
        sent.load(Ordering::SeqCst) >= 40
    });
    {
        let mut a = a.lock().unwrap();
        a.stop();
        *a = Proxy::start_at(&dirs[0], ports[0], &args, &[]);
    }
    let after = sent.load(Ordering::SeqCst);
    wait_until(
        "A serving again after its restart",
        Duration::from_secs(60),
        || {
            a.lock().unwrap().logs().contains(" cache=")
                && sent.load(Ordering::SeqCst) >= after + 40
        },
    );
    done.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    stop(&mut nginx);

    let results = results.lock().unwrap();
    let access = std::fs::read_to_string(prefix.join("access.log")).unwrap_or_default();
    let mut bad = Vec::new();
    let mut tally: BTreeMap<&str, usize> = BTreeMap::new();
    let refreshes = results.iter().filter(|r| r.1).count();
    for (which, _, got) in results.iter() {
        match got {
            Ok((200, xc, body)) if body == reference[*which].as_bytes() => {
                *tally.entry(xc.as_str()).or_default() += 1
            }
            Ok((status, xc, body)) => bad.push(format!(
                "{}: {status} {xc} {}",
                paths[*which],
                String::from_utf8_lossy(&body[..body.len().min(300)])
            )),
            Err(e) => bad.push(e.clone()),
        }
    }
    assert!(
        bad.is_empty(),
        "wrong or cut answers: {bad:#?}\nnginx: {access}"
    );
    let total = results.len();
    let calls = (m.count() - before) as usize;
    let hits = tally.get("hit").copied().unwrap_or(0);
    eprintln!("{total} requests through nginx: {tally:?}, {refreshes} forced refreshes, {calls} model calls");
    assert_eq!(
        hits + tally.get("miss").copied().unwrap_or(0),
        total,
        "{tally:?}"
    );
    assert!(hits * 2 > total, "repeats were hits: {tally:?}");
    // At most one inference per key per replica (two replicas may miss the same
    // key at once), plus the forced refreshes.
    assert!(
        calls <= 2 * paths.len() + refreshes,
        "{calls} model calls for {tally:?}"
    );
    assert!(b.logs().contains(" cache=hit"), "B served hits");
    assert!(
        access.contains(&format!("127.0.0.1:{}", ports[0]))
            && access.contains(&format!("127.0.0.1:{}", ports[1])),
        "nginx used both replicas"
    );
    for f in entries(&shared) {
        let bytes = std::fs::read(&f).unwrap();
        assert!(bytes.len() > 1024, "{} is whole", f.display());
    }
}
