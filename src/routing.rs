//! The hand-written router: turns a method and a request target into a validated [`Route`].
//!
//! Everything a client puts in the URL is checked here, before any upstream is
//! contacted: only UUIDs and DICOM UIDs that pass these checks ever reach a PACS URL.

use crate::config::{Level, Task};
use crate::error::{Code, ProxyError};
use crate::filters;
use crate::ids::{invalid_uid, is_dicom_uid, is_uuid, truncate};

/// What a request asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A page the proxy answers itself, at once.
    Page(Page),
    /// An inference, for a worker.
    Inference(InferenceRequest),
    /// `PUT` on an inference URL: run it in the background into the cache.
    Prefetch(InferenceRequest),
    /// `DELETE` on an inference URL: remove its cached answer.
    Purge(InferenceRequest),
    /// `POST /prefetch`: a list of inference URLs to prefetch.
    PrefetchList,
}

/// The proxy's own pages: answered by the dispatcher, never waiting for a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// `GET /healthz`: the process is alive.
    Healthz,
    /// `GET /readyz`: config loaded and workers alive.
    Readyz,
    /// `GET /status`: the status page.
    Status,
    /// `GET /metrics`: Prometheus metrics.
    Metrics,
    /// `OPTIONS *`: a CORS preflight.
    Preflight,
}

/// What a request is counted under in the metrics: known words only, so a
/// hostile URL cannot grow them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// The route word (`segmentations`, `healthz`, ..., or `other`).
    pub route: &'static str,
    /// The model UUID of an inference path, lower case; empty otherwise.
    pub model: String,
}

impl Label {
    fn of(path: &str) -> Label {
        let mut segs = path.trim_start_matches('/').split('/');
        let route = match segs.next().unwrap_or("") {
            "segmentations" => "segmentations",
            "annotations" => "annotations",
            "predictions" => "predictions",
            "healthz" => "healthz",
            "readyz" => "readyz",
            "status" => "status",
            "metrics" => "metrics",
            "prefetch" => "prefetch",
            _ => "other",
        };
        let model = match (Task::from_path_word(route), segs.next()) {
            (Some(_), Some(m)) if is_uuid(m) => m.to_ascii_lowercase(),
            _ => String::new(),
        };
        Label { route, model }
    }
}

/// A routed request: its metric label, and what it asks for or why it is refused.
#[derive(Debug)]
pub struct Routed {
    /// How it is counted, whatever the outcome.
    pub label: Label,
    /// The route, or the client's error.
    pub route: Result<Route, ProxyError>,
}

/// A validated inference request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferenceRequest {
    /// The task named by the path word.
    pub task: Task,
    /// Model UUID, lower case.
    pub model: String,
    /// StudyInstanceUID.
    pub study: String,
    /// SeriesInstanceUID, for series and instance requests.
    pub series: Option<String>,
    /// SOPInstanceUID, for instance requests.
    pub instance: Option<String>,
    /// `?server=` UUID, lower case.
    pub server: Option<String>,
    /// The decoded `(key, value)` pairs of the `data-filters` query parameters, in order.
    pub data_filters: Vec<filters::Pair>,
    /// POST carries the data filters as its body.
    pub has_body: bool,
}

impl InferenceRequest {
    /// The DICOM level the path addresses.
    pub fn level(&self) -> Level {
        match (&self.series, &self.instance) {
            (_, Some(_)) => Level::Instance,
            (Some(_), None) => Level::Series,
            _ => Level::Study,
        }
    }
}

/// Routes a request; unknown paths are 404, wrong methods 405, malformed ids 400.
pub fn route(method: &str, target: &str) -> Routed {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    Routed {
        label: Label::of(path),
        route: route_path(method, path, query),
    }
}

fn route_path(method: &str, path: &str, query: &str) -> Result<Route, ProxyError> {
    if method == "OPTIONS" {
        return Ok(Route::Page(Page::Preflight));
    }
    let page = match path {
        "/healthz" => Some(Page::Healthz),
        "/readyz" => Some(Page::Readyz),
        "/status" => Some(Page::Status),
        "/metrics" => Some(Page::Metrics),
        _ => None,
    };
    if let Some(p) = page {
        return match method {
            "GET" | "HEAD" => Ok(Route::Page(p)),
            _ => Err(method_not_allowed("GET, HEAD, OPTIONS")),
        };
    }
    if path == "/prefetch" {
        return match method {
            "POST" => Ok(Route::PrefetchList),
            _ => Err(method_not_allowed("POST, OPTIONS")),
        };
    }
    let segs: Vec<&str> = path.strip_prefix('/').unwrap_or("").split('/').collect();
    let task = segs.first().and_then(|w| Task::from_path_word(w));
    let (Some(task), true) = (task, shape_ok(&segs)) else {
        return Err(unknown_route(path));
    };
    let (has_body, kind): (bool, fn(InferenceRequest) -> Route) = match method {
        "GET" => (false, Route::Inference),
        "POST" => (true, Route::Inference),
        // The cache's methods on the same URL; they carry no body.
        "PUT" => (false, Route::Prefetch),
        "DELETE" => (false, Route::Purge),
        _ => return Err(method_not_allowed("GET, POST, PUT, DELETE, OPTIONS")),
    };
    let model = segs[1];
    if !is_uuid(model) {
        return Err(ProxyError::new(
            Code::InvalidModelId,
            format!("model id {:?} is not a UUID", truncate(model)),
        ));
    }
    let uid = |i: usize, what: &str| -> Result<Option<String>, ProxyError> {
        match segs.get(i) {
            None => Ok(None),
            Some(s) if is_dicom_uid(s) => Ok(Some(s.to_string())),
            Some(s) => Err(invalid_uid(what, s)),
        }
    };
    let study = uid(3, "study")?.unwrap_or_default();
    let series = uid(5, "series")?;
    let instance = uid(7, "instance")?;
    let (server, data_filters) = query_params(query)?;
    Ok(kind(InferenceRequest {
        task,
        model: model.to_ascii_lowercase(),
        study,
        series,
        instance,
        server,
        data_filters,
        has_body,
    }))
}

/// `{task}/{model}/studies/{s}[/series/{s}[/instances/{s}]]`, ignoring the values.
fn shape_ok(segs: &[&str]) -> bool {
    let n = segs.len();
    matches!(n, 4 | 6 | 8)
        && segs[2] == "studies"
        && (n < 6 || segs[4] == "series")
        && (n < 8 || segs[6] == "instances")
        && segs.iter().all(|s| !s.is_empty())
}

/// `?server=` (one UUID at most) and the `data-filters` values, decoded; other
/// parameters are ignored, as the published API allows.
fn query_params(query: &str) -> Result<(Option<String>, Vec<filters::Pair>), ProxyError> {
    let mut server = None;
    let mut filters = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k).unwrap_or_default();
        if filters::is_query_key(&k) {
            let v = decode(v).ok_or_else(|| {
                ProxyError::new(
                    Code::InvalidBody,
                    "data-filters is not valid percent-encoded UTF-8",
                )
            })?;
            // Bracket notation spends a parameter per field.
            if filters.len() >= 4 * filters::MAX_ASSIGNED {
                return Err(ProxyError::new(
                    Code::InvalidBody,
                    "too many data-filters parameters",
                ));
            }
            filters.push((k, v));
            continue;
        }
        if k != "server" {
            continue;
        }
        let v = decode(v).unwrap_or_default();
        if server.is_some() {
            return Err(ProxyError::new(
                Code::InvalidServerId,
                "`server` is given more than once",
            ));
        }
        if !is_uuid(&v) {
            return Err(ProxyError::new(
                Code::InvalidServerId,
                format!("server id {:?} is not a UUID", truncate(&v)),
            ));
        }
        server = Some(v.to_ascii_lowercase());
    }
    Ok((server, filters))
}

/// Form decoding of one query component: `+` is a space, `%XX` a byte; `None`
/// for a broken escape or bytes that are not UTF-8.
fn decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = b.get(i + 1..i + 3)?;
                if !hex.iter().all(u8::is_ascii_hexdigit) {
                    return None;
                }
                out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn unknown_route(path: &str) -> ProxyError {
    ProxyError::new(Code::NotFound,
        format!(
            "no route for {:?}; inference paths look like /segmentations/{{model}}/studies/{{study}}[/series/{{series}}[/instances/{{instance}}]]",
            truncate(path)
        ),
    )
}

fn method_not_allowed(allow: &'static str) -> ProxyError {
    ProxyError::new(Code::MethodNotAllowed, format!("allowed methods: {allow}"))
        .with_header("Allow", allow)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "1d9508dd-9089-40c3-abdd-15f47120d682";

    fn inf(method: &str, t: &str) -> InferenceRequest {
        match route(method, t).route.unwrap() {
            Route::Inference(i) => i,
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn levels_and_server() {
        let r = inf("GET", &format!("/segmentations/{M}/studies/1.2.3"));
        assert_eq!((r.level(), r.server.as_deref()), (Level::Study, None));
        let r = inf(
            "GET",
            &format!("/annotations/{M}/studies/1.2/series/1.3?server=B1407F18-575D-487C-BC0C-640C6DA651BC"),
        );
        assert_eq!(r.level(), Level::Series);
        assert_eq!(
            r.server.as_deref(),
            Some("b1407f18-575d-487c-bc0c-640c6da651bc")
        );
        let r = inf(
            "POST",
            &format!("/predictions/{M}/studies/1/series/2/instances/3/"),
        );
        assert_eq!((r.level(), r.has_body), (Level::Instance, true));
    }

    #[test]
    fn rejects() {
        let code = |m: &str, t: &str| route(m, t).route.unwrap_err().code.as_str();
        assert_eq!(code("GET", "/nope"), "not_found");
        assert_eq!(
            code("GET", &format!("/segmentations/{M}/studies")),
            "not_found"
        );
        assert_eq!(
            code("GET", &format!("/segmentations/{M}/series/1")),
            "not_found"
        );
        assert_eq!(
            code("GET", "/segmentations/xyz/studies/1.2"),
            "invalid_model_id"
        );
        assert_eq!(
            code("GET", &format!("/segmentations/{M}/studies/1..2")),
            "invalid_uid"
        );
        assert_eq!(
            code("GET", &format!("/segmentations/{M}/studies/1.2%2F..")),
            "invalid_uid"
        );
        assert_eq!(
            code("GET", &format!("/segmentations/{M}/studies/1.2?server=x")),
            "invalid_server_id"
        );
        assert_eq!(
            code("PATCH", &format!("/segmentations/{M}/studies/1.2")),
            "method_not_allowed"
        );
        assert_eq!(code("POST", "/healthz"), "method_not_allowed");
        assert_eq!(code("GET", "/prefetch"), "method_not_allowed");
    }

    #[test]
    fn the_cache_methods() {
        let t = format!(
            "/segmentations/{M}/studies/1.2/series/1.3?server=b1407f18-575d-487c-bc0c-640c6da651bc"
        );
        let Ok(Route::Prefetch(p)) = route("PUT", &t).route else {
            panic!("PUT is a prefetch")
        };
        assert_eq!((p.level(), p.has_body), (Level::Series, false));
        assert!(matches!(route("DELETE", &t).route, Ok(Route::Purge(_))));
        assert_eq!(
            route("DELETE", "/segmentations/x/studies/1")
                .route
                .unwrap_err()
                .code,
            Code::InvalidModelId,
            "the same checks as GET"
        );
        let r = route("POST", "/prefetch/");
        assert_eq!(
            (r.route.unwrap(), r.label.route),
            (Route::PrefetchList, "prefetch")
        );
        let e = route("PATCH", &t).route.unwrap_err();
        assert!(e
            .headers
            .iter()
            .any(|(k, v)| *k == "Allow" && v.contains("PUT, DELETE")));
    }

    #[test]
    fn labels_are_known_words() {
        let label = |t: &str| route("GET", t).label;
        let l = label(&format!("/segmentations/{}/studies/x..y", M.to_uppercase()));
        assert_eq!((l.route, l.model.as_str()), ("segmentations", M));
        assert_eq!(label("/healthz/").route, "healthz");
        assert_eq!(label("/../etc").route, "other");
        assert_eq!(label("/status/not-a-model").model, "");
    }

    #[test]
    fn data_filters_in_the_query() {
        let q = "server=b1407f18-575d-487c-bc0c-640c6da651bc&data-filters%5B%5D=%7B%22dataKey%22%3A%22a%22%7D&data-filters[]={\"b\":+1}&x=y";
        let r = inf("GET", &format!("/segmentations/{M}/studies/1.2?{q}"));
        let values: Vec<&str> = r.data_filters.iter().map(|(_, v)| v.as_str()).collect();
        assert_eq!(values, vec![r#"{"dataKey":"a"}"#, r#"{"b": 1}"#]);
        assert!(r.server.is_some());
        let bad = route(
            "GET",
            &format!("/segmentations/{M}/studies/1.2?data-filters=%ZZ"),
        );
        assert_eq!(bad.route.unwrap_err().code, Code::InvalidBody);
        assert_eq!(decode("a%2Fb+c").as_deref(), Some("a/b c"));
        assert_eq!(decode("%"), None);
        assert_eq!(decode("%C3%28"), None);
    }
}
