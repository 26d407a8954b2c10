//! Prometheus metrics, rendered in the text exposition format at `GET /metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use crate::auth::TokenCounts;
use crate::cache::Numbers;

/// Latency bucket bounds, seconds: from a cheap health probe to a model thinking for minutes.
const BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

#[derive(Default)]
struct Inner {
    /// (route, status, model) -> count.
    requests: BTreeMap<(String, u16, String), u64>,
    /// (upstream, model or server) -> latency to the upstream's answer.
    upstream: BTreeMap<(&'static str, String), Histogram>,
    /// direction -> bytes.
    bytes: BTreeMap<&'static str, u64>,
}

/// The counters, behind one mutex: updates are a few per request.
#[derive(Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Numbers owned elsewhere, read when rendering.
pub struct Gauges {
    /// Inferences waiting for a worker.
    pub queued: usize,
    /// Inferences queued or running.
    pub in_flight: usize,
    /// Worker threads alive.
    pub workers: usize,
    /// Token events per server.
    pub tokens: Vec<TokenCounts>,
    /// The inference cache's numbers.
    pub cache: Numbers,
    /// Client connections open.
    pub connections: usize,
    /// Client connections closed to make room for new ones.
    pub evicted: u64,
    /// Client connections refused at the cap.
    pub refused: u64,
    /// Seconds until the listener's certificate expires, when serving HTTPS.
    pub tls_seconds_left: Option<i64>,
}

impl Metrics {
    fn with<R>(&self, f: impl FnOnce(&mut Inner) -> R) -> R {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Counts one answered request.
    pub fn request(&self, route: &str, status: u16, model: &str) {
        self.with(|m| {
            *m.requests
                .entry((route.to_string(), status, model.to_string()))
                .or_default() += 1
        });
    }

    /// Records how long an upstream took to answer.
    pub fn upstream(&self, upstream: &'static str, id: &str, took: Duration) {
        self.with(|m| {
            m.upstream
                .entry((upstream, id.to_string()))
                .or_default()
                .observe(took.as_secs_f64())
        });
    }

    /// Adds moved bytes: `dicom_from_pacs`, `payload_to_model`, `response_to_client`.
    pub fn bytes(&self, direction: &'static str, n: u64) {
        self.with(|m| *m.bytes.entry(direction).or_default() += n);
    }

    /// The text exposition.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::new();
        self.with(|m| {
            out.push_str("# HELP model_proxy_requests_total Requests answered, by route, status and model.\n# TYPE model_proxy_requests_total counter\n");
            for ((route, status, model), n) in &m.requests {
                let _ = writeln!(
                    out,
                    "model_proxy_requests_total{{route=\"{}\",status=\"{status}\",model=\"{}\"}} {n}",
                    label(route),
                    label(model)
                );
            }
            out.push_str("# HELP model_proxy_upstream_seconds Time until an upstream answered (PACS: first retrieval; model: response headers).\n# TYPE model_proxy_upstream_seconds histogram\n");
            for ((up, id), h) in &m.upstream {
                let l = format!("upstream=\"{up}\",id=\"{}\"", label(id));
                for (b, c) in BUCKETS.iter().zip(h.counts) {
                    let _ = writeln!(out, "model_proxy_upstream_seconds_bucket{{{l},le=\"{b}\"}} {c}");
                }
                let _ = writeln!(out, "model_proxy_upstream_seconds_bucket{{{l},le=\"+Inf\"}} {}", h.count);
                let _ = writeln!(out, "model_proxy_upstream_seconds_sum{{{l}}} {}", h.sum);
                let _ = writeln!(out, "model_proxy_upstream_seconds_count{{{l}}} {}", h.count);
            }
            out.push_str("# HELP model_proxy_bytes_total Bytes moved.\n# TYPE model_proxy_bytes_total counter\n");
            for (dir, n) in &m.bytes {
                let _ = writeln!(out, "model_proxy_bytes_total{{direction=\"{dir}\"}} {n}");
            }
        });
        let gauge = |out: &mut String, name: &str, help: &str, v: usize| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            );
        };
        gauge(
            &mut out,
            "model_proxy_queue_depth",
            "Inferences waiting for a worker.",
            g.queued,
        );
        gauge(
            &mut out,
            "model_proxy_in_flight",
            "Inferences queued or running.",
            g.in_flight,
        );
        gauge(
            &mut out,
            "model_proxy_workers_alive",
            "Worker threads alive.",
            g.workers,
        );
        gauge(
            &mut out,
            "model_proxy_connections_open",
            "Client connections open.",
            g.connections,
        );
        out.push_str("# HELP model_proxy_connections_closed_total Client connections closed by the proxy at its caps: evicted (the longest idle, to make room) or refused.\n# TYPE model_proxy_connections_closed_total counter\n");
        for (why, n) in [("evicted", g.evicted), ("refused", g.refused)] {
            let _ = writeln!(
                out,
                "model_proxy_connections_closed_total{{reason=\"{why}\"}} {n}"
            );
        }
        if let Some(left) = g.tls_seconds_left {
            let _ = write!(
                out,
                "# HELP model_proxy_tls_cert_expiry_seconds Seconds until the listener's TLS certificate expires (negative: expired).\n# TYPE model_proxy_tls_cert_expiry_seconds gauge\nmodel_proxy_tls_cert_expiry_seconds {left}\n"
            );
        }
        out.push_str("# HELP model_proxy_token_events_total PACS token sign-ins, refreshes and failures, by server.\n# TYPE model_proxy_token_events_total counter\n");
        for t in &g.tokens {
            for (kind, n) in [
                ("sign_in", t.sign_ins),
                ("refresh", t.refreshes),
                ("failure", t.failures),
            ] {
                let _ = writeln!(
                    out,
                    "model_proxy_token_events_total{{server=\"{}\",event=\"{kind}\"}} {n}",
                    label(&t.server)
                );
            }
        }
        cache(&mut out, &g.cache);
        out
    }
}

/// One metric: name, type, help, and its samples (labels, value).
type Family<'a> = (&'a str, &'a str, &'a str, &'a [(&'a str, u64)]);

/// The inference cache's counters and gauges.
fn cache(out: &mut String, c: &Numbers) {
    let (counter, gauge) = ("counter", "gauge");
    let table: [Family; 10] = [
        ("model_proxy_cache_hits_total", counter,
         "Inference answers served from the cache (requests that waited for an identical one included).",
         &[("", c.hits)]),
        ("model_proxy_cache_misses_total", counter, "Inferences run for a cacheable request.", &[("", c.misses)]),
        ("model_proxy_cache_joined_total", counter,
         "Requests that waited for an identical inference already running instead of starting their own.",
         &[("", c.joined)]),
        ("model_proxy_cache_stores_total", counter,
         "Answers stored, and whole answers that could not be (too big, disk).",
         &[("{result=\"stored\"}", c.stored), ("{result=\"not_stored\"}", c.not_stored)]),
        ("model_proxy_cache_evictions_total", counter, "Entries removed, by reason.",
         &[("{reason=\"size\"}", c.evicted), ("{reason=\"ttl\"}", c.expired),
           ("{reason=\"corrupt\"}", c.corrupt), ("{reason=\"purge\"}", c.purged)]),
        ("model_proxy_cache_entries", gauge,
         "Entries in the cache directory (at the last sweep, plus this replica's changes since).",
         &[("", c.entries)]),
        ("model_proxy_cache_bytes", gauge,
         "Bytes in the cache directory (at the last sweep, plus this replica's changes since).",
         &[("", c.bytes)]),
        ("model_proxy_prefetch_queued", gauge, "Prefetches waiting for a prefetch worker.", &[("", c.prefetch_queued)]),
        ("model_proxy_prefetch_running", gauge, "Prefetches running.", &[("", c.prefetch_running)]),
        ("model_proxy_prefetches_total", counter, "Prefetches finished, by outcome.",
         &[("{outcome=\"done\"}", c.prefetch_done), ("{outcome=\"skipped\"}", c.prefetch_skipped),
           ("{outcome=\"failed\"}", c.prefetch_failed)]),
    ];
    for (name, kind, help, rows) in table {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, v) in rows {
            let _ = writeln!(out, "{name}{labels} {v}");
        }
    }
}

/// Escapes a label value.
fn label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        let m = Metrics::default();
        m.request("segmentations", 200, "abc");
        m.request("segmentations", 200, "abc");
        m.upstream("model", "abc", Duration::from_millis(300));
        m.bytes("dicom_from_pacs", 10);
        let text = m.render(&Gauges {
            queued: 1,
            in_flight: 2,
            workers: 3,
            tokens: vec![TokenCounts {
                server: "s".into(),
                sign_ins: 1,
                refreshes: 2,
                failures: 0,
            }],
            cache: Numbers {
                hits: 4,
                prefetch_failed: 1,
                ..Numbers::default()
            },
            connections: 4,
            evicted: 5,
            refused: 0,
            tls_seconds_left: Some(-60),
        });
        assert!(text.contains(
            "model_proxy_requests_total{route=\"segmentations\",status=\"200\",model=\"abc\"} 2"
        ));
        assert!(text.contains(
            "model_proxy_upstream_seconds_bucket{upstream=\"model\",id=\"abc\",le=\"0.25\"} 0"
        ));
        assert!(text.contains(
            "model_proxy_upstream_seconds_bucket{upstream=\"model\",id=\"abc\",le=\"0.5\"} 1"
        ));
        assert!(text.contains("model_proxy_queue_depth 1"));
        assert!(text.contains("model_proxy_token_events_total{server=\"s\",event=\"refresh\"} 2"));
        assert!(text.contains("model_proxy_cache_hits_total 4\n"));
        assert!(text.contains("model_proxy_prefetches_total{outcome=\"failed\"} 1\n"));
        assert!(text.contains("# TYPE model_proxy_cache_bytes gauge\n"));
        assert!(text.contains("model_proxy_connections_open 4"));
        assert!(text.contains("model_proxy_connections_closed_total{reason=\"evicted\"} 5"));
        assert!(text.contains("model_proxy_tls_cert_expiry_seconds -60"));
    }
}
