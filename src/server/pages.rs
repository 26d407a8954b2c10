//! The proxy's own pages: health, readiness, status, metrics and CORS preflights.
//! Each is a function from the shared state and the request to a [`Reply`].

use std::sync::atomic::Ordering;

use serde_json::json;
use tiny_http::Request;

use super::reply::{header, Reply};
use crate::error::{Code, ProxyError};
use crate::metrics::Gauges;
use crate::routing::Page;
use crate::state::App;
use crate::status;

/// Whether this instance should get traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Readiness {
    Ready,
    /// Some worker threads are gone.
    Degraded,
    /// SIGTERM received: load balancers should drain this instance.
    ShuttingDown,
}

impl Readiness {
    fn of(app: &App, alive: usize) -> Readiness {
        if app.shutting_down.load(Ordering::SeqCst) {
            Readiness::ShuttingDown
        } else if alive == app.options.workers {
            Readiness::Ready
        } else {
            Readiness::Degraded
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Readiness::Ready => "ready",
            Readiness::Degraded => "degraded",
            Readiness::ShuttingDown => "shutting_down",
        }
    }

    fn status(self) -> u16 {
        match self {
            Readiness::Ready => 200,
            Readiness::Degraded | Readiness::ShuttingDown => 503,
        }
    }
}

/// Answers `page` for `rq`.
pub fn answer(app: &App, page: Page, rq: &Request) -> Reply {
    match page {
        Page::Healthz => Reply::json(200, &json!({"status": "ok"})),
        Page::Readyz => {
            let alive = app.workers_alive.load(Ordering::SeqCst);
            let r = Readiness::of(app, alive);
            let body =
                json!({"status": r.as_str(), "workers": alive, "configured": app.options.workers});
            Reply::json(r.status(), &body)
        }
        Page::Status if !app.options.status_page => Reply::error(&ProxyError::new(
            Code::NotFound,
            "the status page is off; start with ZHIVA_SHOW_STATUS_PAGE=true to turn it on",
        )),
        Page::Status => {
            let mut v = status::json(&app.config(), &app.health, &app.auth);
            v["cache"] = app.cache.status();
            v["tls"] = app
                .tls
                .as_ref()
                .map_or_else(|| json!({"state": "off"}), |t| t.status());
            if header(rq, "Accept").is_some_and(|a| a.contains("application/json")) {
                Reply::json(200, &v)
            } else {
                Reply::page(200, "text/html; charset=utf-8", status::html(&v))
            }
        }
        Page::Metrics => Reply::page(
            200,
            "text/plain; version=0.0.4",
            app.metrics.render(&Gauges {
                queued: app.queued.load(Ordering::SeqCst),
                in_flight: app.in_flight.load(Ordering::SeqCst),
                workers: app.workers_alive.load(Ordering::SeqCst),
                tokens: app.auth.counters(),
                cache: app.cache.stats().numbers(),
                connections: app.front.open(),
                evicted: app.front.evicted.load(Ordering::Relaxed),
                refused: app.front.refused.load(Ordering::Relaxed),
                tls_seconds_left: app.tls.as_ref().and_then(|t| t.seconds_left()),
            }),
        ),
        Page::Preflight => Reply::empty(
            204,
            app.cors.preflight_headers(
                header(rq, "Origin").as_deref(),
                header(rq, "Access-Control-Request-Headers").as_deref(),
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::reply::Body;
    use crate::state::tests::app;
    use tiny_http::TestRequest;

    fn body(r: &Reply) -> String {
        match &r.body {
            Body::Full(b) => String::from_utf8_lossy(b).into_owned(),
            Body::Stream(..) => panic!("a page is never a stream"),
        }
    }

    #[test]
    fn readiness_follows_the_workers_and_shutdown() {
        let app = app();
        let rq: Request = TestRequest::new().with_path("/readyz").into();
        let r = answer(&app, Page::Readyz, &rq);
        assert_eq!(r.status, 503, "no worker has started");
        app.workers_alive
            .store(app.options.workers, Ordering::SeqCst);
        let r = answer(&app, Page::Readyz, &rq);
        assert_eq!((r.status, body(&r).contains("\"ready\"")), (200, true));
        app.shutting_down.store(true, Ordering::SeqCst);
        let r = answer(&app, Page::Readyz, &rq);
        assert!(r.status == 503 && body(&r).contains("shutting_down"));
    }

    #[test]
    fn status_page_off_is_404_and_preflight_is_empty() {
        let app = app();
        let rq: Request = TestRequest::new().with_path("/status").into();
        let r = answer(&app, Page::Status, &rq);
        assert_eq!(r.error.map(|e| e.code), Some(Code::NotFound));
        let rq: Request = TestRequest::new()
            .with_method(tiny_http::Method::Options)
            .with_header(
                "Origin: https://app.zhiva.ai"
                    .parse::<tiny_http::Header>()
                    .unwrap(),
            )
            .into();
        let r = answer(&app, Page::Preflight, &rq);
        assert_eq!((r.status, body(&r).as_str()), (204, ""));
        assert!(r
            .headers
            .iter()
            .any(|(k, v)| *k == "Access-Control-Allow-Methods" && v.contains("GET")));
    }

    #[test]
    fn metrics_render() {
        let app = app();
        let rq: Request = TestRequest::new().with_path("/metrics").into();
        let r = answer(&app, Page::Metrics, &rq);
        assert!(body(&r).contains("model_proxy_workers_alive 0"));
    }
}
