//! The front door: clients that are idle, slow, pipelining, lying about lengths,
//! smuggling or oversized each get the JSON error (or the connection closed),
//! and never delay anyone else's `/healthz` or inference. One test per finding
//! of issue 9, over raw sockets where a real HTTP client would not misbehave.
//! Outcomes are asserted, never durations: the machine is shared.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use super::common::*;
use serde_json::{json, Value};

/// Generous: a loaded two-core machine answers in milliseconds, this allows seconds.
const PATIENCE: Duration = Duration::from_secs(30);

fn addr(p: &Proxy) -> String {
    p.url
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .replace("localhost", "127.0.0.1")
}

fn connect(addr: &str) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(PATIENCE)).unwrap();
    s.set_write_timeout(Some(PATIENCE)).unwrap();
    s
}

/// One response read off a stream: status, head, body (by Content-Length).
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    #[track_caller]
    fn assert_error(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "{}{}", self.head, self.body);
        assert_eq!(self.json()["code"], code, "{}", self.body);
        assert!(
            self.head
                .to_ascii_lowercase()
                .contains("content-type: application/problem+json"),
            "{}",
            self.head
        );
    }
}

fn read_answer(s: &mut impl Read) -> Answer {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "no complete answer ({other:?}) after {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).unwrap();
    Answer {
        status,
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// Sends `bytes` on a fresh connection and reads one answer.
fn ask(addr: &str, bytes: &[u8]) -> Answer {
    let mut s = connect(addr);
    // A thread writes, so that a refusal can be read while a large request is still going out.
    let mut w = s.try_clone().unwrap();
    let bytes = bytes.to_vec();
    let writer = thread::spawn(move || {
        let _ = w.write_all(&bytes);
    });
    let a = read_answer(&mut s);
    drop(s);
    let _ = writer.join();
    a
}

/// Everything the server sends until it closes the connection; `true` if it did close.
fn read_to_close(s: &mut TcpStream) -> (Vec<u8>, bool) {
    let mut all = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (all, true),
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (all, true),
            Err(_) => return (all, false),
        }
    }
}

fn answers_in(bytes: &[u8]) -> usize {
    String::from_utf8_lossy(bytes).matches("HTTP/1.1 ").count()
}

fn healthz(p: &Proxy) -> u16 {
    p.get("/healthz").status
}

fn series_path(model: &str) -> String {
    let e = env();
    format!(
        "/segmentations/{model}/studies/{}/series/{}",
        e.study_a.uid, e.study_a.series[0].0
    )
}

#[track_caller]
fn assert_inference(p: &Proxy) {
    let r = p.get(&series_path(SEG));
    assert_eq!(r.status, 200, "{}", r.body);
}

/// The proxy's own pid: the process whose command line is the binary serving this config.
fn pid_of(p: &Proxy) -> u32 {
    let dir = p.config_dir.to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmd
            .split(|&b| b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        if args.first().is_some_and(|a| a.ends_with("model-proxy")) && args.contains(&dir) {
            return pid;
        }
    }
    panic!("no model-proxy process serves {dir}");
}

fn threads(pid: u32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap()
}

/// Item 1: a request announcing a body it never sends held the dispatcher (a
/// GET) or a worker (16 of them starved every worker).
#[test]
fn bodies_that_never_come_block_nobody() {
    let model = model();
    let e = env();
    let p = Proxy::start(&model, "front-unsent", &["--workers", "2"], &[]);
    let addr = addr(&p);
    let mut held = Vec::new();
    for target in ["/healthz".to_string(), series_path(SEG)] {
        for _ in 0..16 {
            let mut s = connect(&addr);
            let head =
                format!("GET {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
            s.write_all(head.as_bytes()).unwrap();
            read_answer(&mut s).assert_error(400, "bad_request");
            held.push(s);
        }
    }
    // POSTs whose bodies stall wait at the front, not at a worker.
    for _ in 0..16 {
        let mut s = connect(&addr);
        let head = format!(
            "POST /segmentations/{FILT}/studies/{} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"series",
            e.study_a.uid
        );
        s.write_all(head.as_bytes()).unwrap();
        held.push(s);
    }
    for _ in 0..5 {
        assert_eq!(healthz(&p), 200);
    }
    assert_inference(&p);
    assert!(!p.logs().contains("worker released"), "{}", p.logs());
}

/// Item 2: 2,000 idle connections held 1,024 slots and 3,093 threads and
/// locked everyone else out; slowloris connections were never dropped.
#[test]
fn idle_and_slow_connections_give_way() {
    let model = model();
    let p = Proxy::start(
        &model,
        "front-idle",
        &[
            "--max-connections",
            "64",
            "--max-connections-per-client",
            "48",
            "--idle-timeout",
            "3",
            "--header-timeout",
            "2",
        ],
        &[],
    );
    let addr = addr(&p);
    let pid = pid_of(&p);
    let mut idle: Vec<TcpStream> = (0..400)
        .filter_map(|_| TcpStream::connect(&addr).ok())
        .collect();
    for _ in 0..10 {
        assert_eq!(healthz(&p), 200);
    }
    assert_inference(&p);
    let n = threads(pid);
    // 64 connections, 16 workers, tiny_http's pool and a handful of service threads.
    assert!(n <= 64 + 16 + 40, "{n} threads");
    let metrics = p.get("/metrics").body;
    let evicted = metrics
        .lines()
        .find_map(|l| l.strip_prefix("model_proxy_connections_closed_total{reason=\"evicted\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(evicted > 0, "{metrics}");
    idle.clear();

    // A kept-alive connection left idle is closed after --idle-timeout.
    let mut s = connect(&addr);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(read_answer(&mut s).status, 200);
    let (rest, closed) = read_to_close(&mut s);
    assert!(
        closed && rest.is_empty(),
        "{:?}",
        String::from_utf8_lossy(&rest)
    );

    // Slowloris: a head trickled in gets 408 after --header-timeout, then the connection closes.
    let mut s = connect(&addr);
    let mut w = s.try_clone().unwrap();
    let trickle = thread::spawn(move || {
        let _ = w.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n");
        for i in 0..100 {
            thread::sleep(Duration::from_millis(300));
            if w.write_all(format!("X-{i}: y\r\n").as_bytes()).is_err() {
                break;
            }
        }
    });
    read_answer(&mut s).assert_error(408, "header_timeout");
    assert!(read_to_close(&mut s).1);
    let _ = trickle.join();
}

/// Item 3: CL + TE, duplicate CL and `xchunked` were accepted, and the unread
/// body was served as a second request.
#[test]
fn smuggling_gets_one_json_400_and_a_closed_connection() {
    let model = model();
    let p = model.shared();
    let addr = addr(p);
    let post = format!("POST /segmentations/{FILT}/studies/1.2.3 HTTP/1.1\r\nHost: x\r\n");
    let smuggled = "GET /readyz?smuggled HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases = [
        format!("{post}Content-Length: 48\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("{post}Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("{post}Content-Length: 0\r\nContent-Length: 43\r\n\r\n{smuggled}"),
        format!("{post}Content-Length: 43\r\nContent-Length: 43\r\n\r\n{smuggled}"),
        format!("{post}Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("{post}Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 43\r\n\r\n{smuggled}"),
    ];
    for case in &cases {
        let mut s = connect(&addr);
        s.write_all(case.as_bytes()).unwrap();
        let (out, closed) = read_to_close(&mut s);
        let text = String::from_utf8_lossy(&out);
        assert!(closed, "{case:?}: still open after {text}");
        assert_eq!(answers_in(&out), 1, "{case:?}: {text}");
        assert!(text.starts_with("HTTP/1.1 400 "), "{case:?}: {text}");
        assert!(
            text.contains("\"code\":\"bad_request\""),
            "{case:?}: {text}"
        );
        assert!(text.contains("Connection: close"), "{text}");
    }
    // A well-framed chunked POST is read whole and answered once.
    let chunked = format!(
        "{post}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n"
    );
    let a = ask(&addr, chunked.as_bytes());
    a.assert_error(400, "invalid_body");
    assert!(
        !p.logs().contains("smuggled"),
        "a smuggled request was served"
    );
}

/// Item 4: 10,000 headers, a 1 MB header and a 64 MB header were accepted.
#[test]
fn oversized_heads_are_refused_early() {
    let model = model();
    let p = model.shared();
    let addr = addr(p);
    let mut many = String::from("GET /healthz HTTP/1.1\r\nHost: x\r\n");
    for i in 0..10_000 {
        many.push_str(&format!("X-{i}: y\r\n"));
    }
    many.push_str("\r\n");
    ask(&addr, many.as_bytes()).assert_error(431, "header_too_large");
    let few_but_many = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n",
        "A: b\r\n".repeat(101)
    );
    ask(&addr, few_but_many.as_bytes()).assert_error(431, "header_too_large");
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    ask(&addr, big.as_bytes()).assert_error(431, "header_too_large");
    // 64 MB, streamed: the answer comes long before the header would have ended.
    let mut s = connect(&addr);
    let mut w = s.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let _ = w.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: ");
        let mb = vec![b'a'; 1 << 20];
        for _ in 0..64 {
            if w.write_all(&mb).is_err() {
                return false;
            }
        }
        true
    });
    read_answer(&mut s).assert_error(431, "header_too_large");
    drop(s);
    assert!(!writer.join().unwrap(), "the proxy read all 64 MB");
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    ask(&addr, long.as_bytes()).assert_error(414, "uri_too_long");
    assert_eq!(healthz(p), 200);
}

/// Item 5: pipelined requests were all queued, and a client that never read
/// its answers stalled everyone.
#[test]
fn pipelining_is_answered_in_order_and_a_non_reader_stalls_only_itself() {
    let model = model();
    let p = Proxy::start(&model, "front-pipeline", &[], &[]);
    let addr = addr(&p);
    let mut s = connect(&addr);
    s.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /readyz HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /nope HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_answer(&mut s).body, "{\"status\":\"ok\"}");
    assert!(read_answer(&mut s).body.contains("\"configured\""));
    read_answer(&mut s).assert_error(404, "not_found");
    assert!(read_answer(&mut s)
        .body
        .contains("model_proxy_requests_total"));
    drop(s);

    // Pipelines health checks and never reads an answer.
    let mut greedy = Vec::new();
    for _ in 0..4 {
        let mut w = connect(&addr);
        w.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let many = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".repeat(30_000);
        greedy.push(thread::spawn(move || {
            // Stops once the proxy stops reading (its answers are not taken).
            let _ = w.write_all(many.as_bytes());
            w
        }));
    }
    thread::sleep(Duration::from_secs(1));
    for _ in 0..10 {
        assert_eq!(healthz(&p), 200);
    }
    assert_inference(&p);
    for g in greedy {
        drop(g.join().unwrap());
    }
}

/// Item 6: a stalled body of 1 KB or less was read by tiny_http with no timeout.
#[test]
fn a_stalled_small_body_times_out_at_the_front() {
    let model = model();
    let e = env();
    let p = Proxy::start(
        &model,
        "front-small-body",
        &["--workers", "1", "--body-timeout", "3"],
        &[],
    );
    let mut s = connect(&addr(&p));
    let head = format!(
        "POST /segmentations/{FILT}/studies/{} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n{{\"series",
        e.study_a.uid
    );
    s.write_all(head.as_bytes()).unwrap();
    // The only worker is free meanwhile.
    assert_inference(&p);
    read_answer(&mut s).assert_error(408, "body_timeout");
    assert!(read_to_close(&mut s).1);
}

/// Item 7: malformed request lines and headers got an empty 400/417, and a
/// request line of four words was served.
#[test]
fn malformed_heads_get_the_json_400() {
    let model = model();
    let p = model.shared();
    let addr = addr(p);
    for bad in [
        "GET /healthz HTTP/1.1 extra\r\nHost: x\r\n\r\n",
        "GET /healthz now HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n",
        "HELLO\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nNo Colon Here\r\nHost: x\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\n folded: value\r\n\r\n",
        "GET /healthz HTTP/1.1\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX: caf\u{e9}\r\n\r\n",
        "GET /h\u{e9}althz HTTP/1.1\r\nHost: x\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ] {
        let a = ask(&addr, bad.as_bytes());
        a.assert_error(400, "bad_request");
        assert!(a.head.contains("Connection: close"), "{bad:?}: {}", a.head);
    }
    // A refusal carries CORS, so a browser viewer can read it.
    let a = ask(
        &addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nOrigin: https://app.zhiva.ai\r\nContent-Length: 5\r\n\r\n",
    );
    a.assert_error(400, "bad_request");
    assert!(
        a.head
            .contains("Access-Control-Allow-Origin: https://app.zhiva.ai"),
        "{}",
        a.head
    );
    // An expectation the proxy does not know is ignored, not refused.
    let a = ask(
        &addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: the-unexpected\r\n\r\n",
    );
    assert_eq!(a.status, 200);
    // Expect: 100-continue gets its 100 before the body is sent.
    let mut s = connect(&addr);
    let post = format!(
        "POST /segmentations/{FILT}/studies/1.2 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    );
    s.write_all(post.as_bytes()).unwrap();
    let interim = read_answer(&mut s);
    assert_eq!(interim.status, 100, "{}", interim.head);
    s.write_all(b"{}").unwrap();
    read_answer(&mut s).assert_error(400, "invalid_body");
}

const TRUNC: &str = "ed9508dd-9089-40c3-abdd-15f47120d682";
const TRUNC_CHUNKED: &str = "fd9508dd-9089-40c3-abdd-15f47120d682";

/// Item 8: a model that broke off its answer left the viewer waiting on an open
/// connection, and the access log said 200.
#[test]
fn an_answer_broken_off_mid_body_closes_the_client_connection() {
    let model = model();
    let f = faults();
    let dir = tempdir("front-truncate");
    let mut models = model.models_json();
    for (id, path) in [(TRUNC, "truncate"), (TRUNC_CHUNKED, "truncate-chunked")] {
        models[id] = json!({"uri": format!("{}/model/{path}", f.url), "task": "segmentation", "supports": ["/studies/series"]});
    }
    write_config(&dir.join("config"), &servers_json(), &models);
    let p = Proxy::start_in(&dir, &["--workers", "1"], &[]);
    let addr = addr(&p);
    for model in [TRUNC, TRUNC_CHUNKED] {
        let mut s = connect(&addr);
        let rq = format!("GET {} HTTP/1.1\r\nHost: x\r\n\r\n", series_path(model));
        s.write_all(rq.as_bytes()).unwrap();
        let (out, closed) = read_to_close(&mut s);
        let text = String::from_utf8_lossy(&out);
        assert!(closed, "{model}: the connection stayed open: {text}");
        assert!(text.starts_with("HTTP/1.1 200 "), "{text:?} {}", p.logs());
        let body = &text[text.find("\r\n\r\n").unwrap() + 4..];
        assert!(body.len() < 5000, "{model}: {} bytes", body.len());
        assert!(
            !body.ends_with("0\r\n\r\n"),
            "{model}: looks complete: {body:?}"
        );
    }
    // The access line is written once the server has finished with the request,
    // which may be a moment after the client saw its connection close.
    let cut = |logs: &str| {
        logs.lines()
            .filter(|l| l.contains(" 502 ") && l.contains("error=model_unreachable"))
            .count()
    };
    let until = Instant::now() + PATIENCE;
    while cut(&p.logs()) < 2 && Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
    }
    let logs = p.logs();
    assert_eq!(cut(&logs), 2, "{logs}");
    let metrics = p.get("/metrics").body;
    assert!(
        metrics.contains("status=\"502\",model=\"ed9508dd"),
        "{metrics}"
    );
    // The worker and the proxy carry on.
    assert_inference(&p);
}

/// Item 9: `/metrics` and `/healthz` waited on a lock the token thread held
/// while the auth service hung.
#[test]
fn pages_answer_while_the_auth_service_hangs() {
    let model = model();
    let a = AuthService::start("front-hang", &["--auth-delay", "40"]);
    let dir = tempdir("front-hang");
    let mut servers = servers_json();
    servers["a1407f18-575d-487c-bc0c-640c6da651bc"] = a.server(json!({
        "authType": "zhivaAuth", "login": "alice", "password": "alice-password"
    }));
    write_config(&dir.join("config"), &servers, &model.models_json());
    let p = Proxy::start_in(&dir, &["--status-page"], &[]);
    // The token thread is inside a sign-in for 40 s from now.
    let until = Instant::now() + PATIENCE;
    while a.stats()["auth_in_flight"].as_u64() == Some(0) && Instant::now() < until {
        thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(a.stats()["auth_in_flight"], 1, "no sign-in under way");
    let quick = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(15)))
        .build()
        .new_agent();
    for path in ["/healthz", "/metrics", "/status", "/readyz"] {
        let r = quick.get(format!("{}{path}", p.url)).call();
        let r = r.unwrap_or_else(|e| panic!("{path} did not answer: {e}"));
        assert!(r.status() == 200 || path == "/readyz", "{path}");
    }
}

/// Item 10: `/metrics` grew by a series per random unknown model UUID.
#[test]
fn unknown_models_share_one_metrics_label() {
    let model = model();
    let p = Proxy::start(&model, "front-labels", &[], &[]);
    let e = env();
    for i in 0..40 {
        let model = format!("{i:08x}-0000-4000-8000-000000000000");
        let path = format!("/segmentations/{model}/studies/{}", e.study_a.uid);
        assert_eq!(p.get(&path).status, 404);
    }
    // A known model keeps its own label (here: a malformed study UID, answered 400).
    assert_eq!(
        p.get(&format!("/segmentations/{SEG}/studies/1..2")).status,
        400
    );
    let metrics = p.get("/metrics").body;
    assert!(
        metrics.contains(
            "model_proxy_requests_total{route=\"segmentations\",status=\"404\",model=\"unknown\"} 40"
        ),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("status=\"400\",model=\"{SEG}\"")));
    assert!(!metrics.contains("0000-4000-8000"), "{metrics}");
}

fn make_cert(dir: &std::path::Path, days: i32) {
    let mut cmd = Command::new("python3");
    cmd.arg(fixtures().join("auth_service.py"))
        .args(["make-cert", "--out"])
        .arg(dir)
        .args(["--days", &days.to_string()]);
    succeed(cmd);
}

fn body_json(agent: &ureq::Agent, url: &str) -> Value {
    let r = agent
        .get(url)
        .header("Accept", "application/json")
        .call()
        .unwrap();
    serde_json::from_reader(r.into_body().into_reader()).unwrap()
}

fn expiry_metric(agent: &ureq::Agent, url: &str) -> i64 {
    let mut text = String::new();
    agent
        .get(format!("{url}/metrics"))
        .call()
        .unwrap()
        .into_body()
        .into_reader()
        .read_to_string(&mut text)
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("model_proxy_tls_cert_expiry_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no expiry metric: {text}"))
}

/// Item 11: an expired certificate was served without a word. Now it is a
/// warning at start and on SIGHUP (which also loads a renewed pair), a state on
/// the status page and a metric.
#[test]
fn certificate_expiry_is_announced_and_a_renewed_pair_is_loaded_on_sighup() {
    let dir = tempdir("front-cert");
    let certs = dir.join("mine");
    make_cert(&certs, 5);
    let (cert, key) = (certs.join("zhiva.crt"), certs.join("zhiva.key"));
    let model = model();
    let p = Proxy::start_tls(
        &model,
        "front-cert",
        &[
            "--status-page",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let agent = agent_trusting(&cert, Some(PATIENCE));
    let status = body_json(&agent, &format!("{}/status", p.url));
    assert_eq!(status["tls"]["state"], "expiring", "{status}");
    let left = expiry_metric(&agent, &p.url);
    assert!((3 * 86_400..6 * 86_400).contains(&left), "{left}");
    assert!(p.logs().contains("expires on"), "{}", p.logs());

    // An expired pair, loaded by SIGHUP, is served with a warning.
    make_cert(&certs, -1);
    let pid = pid_of(&p);
    assert!(Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    let until = Instant::now() + PATIENCE;
    while !p.logs().contains("EXPIRED") && Instant::now() < until {
        thread::sleep(Duration::from_millis(100));
    }
    assert!(p.logs().contains("EXPIRED"), "{}", p.logs());
    // A verifying client now refuses the certificate, so read the metric without verifying.
    let insecure = insecure_client();
    let text = tls_get(&insecure, &addr(&p), "/metrics");
    let left: i64 = text
        .lines()
        .find_map(|l| l.strip_prefix("model_proxy_tls_cert_expiry_seconds "))
        .and_then(|v| v.parse().ok())
        .unwrap();
    assert!(left < 0, "{left}");
}

/// A TLS client that accepts any certificate: only for reading an expired one's state.
fn insecure_client() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct Any(Arc<rustls::crypto::CryptoProvider>);
    impl rustls::client::danger::ServerCertVerifier for Any {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn verify_tls13_signature(
            &self,
            m: &[u8],
            c: &rustls::pki_types::CertificateDer<'_>,
            d: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(
                m,
                c,
                d,
                &self.0.signature_verification_algorithms,
            )
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.0.signature_verification_algorithms.supported_schemes()
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Any(provider)))
        .with_no_client_auth();
    Arc::new(config)
}

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

fn tls_connect(config: &Arc<rustls::ClientConfig>, addr: &str) -> TlsStream {
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config.clone(), name).unwrap();
    rustls::StreamOwned::new(conn, connect(addr))
}

fn tls_get(config: &Arc<rustls::ClientConfig>, addr: &str, path: &str) -> String {
    let mut s = tls_connect(config, addr);
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
        .unwrap();
    read_answer(&mut s).body
}

/// The same front on HTTPS: pipelining in order, refusals as JSON.
#[test]
fn the_tls_listener_has_the_same_front_door() {
    let model = model();
    let p = Proxy::start_tls(&model, "front-tls", &[]);
    let config = insecure_client();
    let addr = addr(&p);
    let mut s = tls_connect(&config, &addr);
    s.write_all(
        b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\nGET /nope HTTP/1.1\r\nHost: localhost\r\n\r\n\
          GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .unwrap();
    assert_eq!(read_answer(&mut s).status, 200);
    read_answer(&mut s).assert_error(404, "not_found");
    assert!(read_answer(&mut s).body.contains("\"configured\""));
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n")
        .unwrap();
    read_answer(&mut s).assert_error(400, "bad_request");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // A client that never finishes its handshake is not waited for past the handshake timeout,
    // and meanwhile others are served.
    let _silent = connect(&addr);
    let mut s = tls_connect(&config, &addr);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let a = read_answer(&mut s);
    assert_eq!(a.status, 200);
    assert!(a.head.contains("Connection: close"), "{}", a.head);
}
