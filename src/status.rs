//! The status page: every server and model with its last health check, as JSON or HTML.
//! URIs are shown without credentials; secrets never appear.

use serde_json::{json, Value};

use crate::auth::Auth;
use crate::config::Config;
use crate::health::Health;
use crate::ids::redact_uri;
use crate::time::rfc3339;

fn health_json(health: &Health, id: &str, has_status_uri: bool) -> Value {
    match health.get(id) {
        Some(c) => json!({
            "state": c.state.as_str(),
            "httpStatus": c.http_status,
            "error": c.error,
            "latencyMs": c.latency_ms,
            "checkedAt": rfc3339(c.checked_at),
        }),
        None if has_status_uri => json!({"state": "unknown", "error": "not checked yet"}),
        None => json!({"state": "unknown", "error": "no statusUri configured"}),
    }
}

/// The status as JSON.
pub fn json(config: &Config, health: &Health, auth: &Auth) -> Value {
    let servers: Vec<Value> = config
        .servers
        .values()
        .map(|s| {
            json!({
                "id": s.id,
                "uri": redact_uri(&s.uri),
                "statusUri": s.status_uri.as_deref().map(redact_uri),
                "isDefault": s.id == config.default_server,
                "authType": s.auth.as_str(),
                "health": health_json(health, &s.id, s.status_uri.is_some()),
                "auth": auth.status(s),
            })
        })
        .collect();
    let models: Vec<Value> = config
        .models
        .values()
        .map(|m| {
            json!({
                "id": m.id,
                "uri": redact_uri(&m.uri),
                "task": m.task.as_str(),
                "supports": m.supports.iter().map(|l| l.as_str()).collect::<Vec<_>>(),
                "statusUri": m.status_uri.as_deref().map(redact_uri),
                "dataKeys": m.data_filter.iter().map(|d| d.key.as_str()).collect::<Vec<_>>(),
                "cache": m.cache,
                "health": health_json(health, &m.id, m.status_uri.is_some()),
            })
        })
        .collect();
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "servers": servers,
        "models": models,
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn rows(items: &Value, extra: &str) -> String {
    let mut out = String::new();
    for item in items.as_array().into_iter().flatten() {
        let h = &item["health"];
        let state = h["state"].as_str().unwrap_or("unknown");
        let text = |v: &Value| match v {
            Value::Null => String::new(),
            Value::String(s) => esc(s),
            other => esc(&other.to_string()),
        };
        out.push_str(&format!(
            "<tr class=\"{state}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td><b>{state}</b></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
            text(&item["id"]),
            text(&item["uri"]),
            text(&item[extra]),
            text(&h["httpStatus"]),
            text(&h["latencyMs"]),
            text(&h["checkedAt"]),
            text(&h["error"]),
        ));
    }
    out
}

/// The listener's certificate, when there is one.
fn tls(t: &Value) -> String {
    let state = t["state"].as_str().unwrap_or("off");
    if state == "off" {
        return String::new();
    }
    let class = if state == "ok" { "up" } else { "down" };
    format!(
        "<p class=\"{class}\">TLS certificate <code>{}</code>: <b>{state}</b>, valid until {}</p>",
        esc(t["certificate"].as_str().unwrap_or("")),
        esc(t["notAfter"].as_str().unwrap_or("unknown")),
    )
}

/// The status as a small HTML page.
pub fn html(status: &Value) -> String {
    let head = |third: &str| {
        format!("<tr><th>UUID</th><th>URI</th><th>{third}</th><th>state</th><th>HTTP</th><th>latency ms</th><th>checked</th><th>error</th></tr>")
    };
    let cache = &status["cache"];
    let cache = if cache["enabled"] == true {
        let n = |k: &str| cache[k].as_u64().unwrap_or(0);
        let p = |k: &str| cache["prefetch"][k].as_u64().unwrap_or(0);
        format!(
            "<h2>Cache</h2><p><code>{}</code>: {} entries, {} of {} bytes, TTL {} s; {} hits, {} misses, {} joined a running inference, {} evicted, {} expired; prefetches: {} queued, {} running, {} done, {} skipped, {} failed</p>",
            esc(cache["dir"].as_str().unwrap_or("")),
            n("entries"), n("bytes"), n("maxBytes"), n("ttlSeconds"), n("hits"), n("misses"),
            n("joined"), n("evicted"), n("expired"),
            p("queued"), p("running"), p("done"), p("skipped"), p("failed"),
        )
    } else {
        "<h2>Cache</h2><p>off</p>".to_string()
    };
    format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>model-proxy status</title>\
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}\
tr.up b,p.up b{{color:#080}}tr.busy b{{color:#b60}}tr.down b,p.down b{{color:#b00}}tr.unknown b{{color:#888}}</style></head><body>\
<h1>model-proxy {}</h1>{}<h2>PACS servers</h2><table>{}{}</table><h2>Models</h2><table>{}{}</table>{}</body></html>\n",
        esc(status["version"].as_str().unwrap_or("")),
        tls(&status["tls"]),
        head("auth"),
        rows(&status["servers"], "authType"),
        head("task"),
        rows(&status["models"], "task"),
        cache,
    )
}
