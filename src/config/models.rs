//! `models.json`: the model APIs, what they do, and the inputs they name.

use std::collections::BTreeMap;

use serde_json::Value;

use super::fields::{Entry, Source};
use super::schema::{DataKey, Level, Model, Task};
use super::Problem;

/// Every valid model of the file; problems are reported, not fatal here.
pub(super) fn parse(src: &Source, problems: &mut Vec<Problem>) -> BTreeMap<String, Model> {
    src.entries("model", problems, model)
}

fn model(e: &mut Entry) -> Option<Model> {
    let uri = e.url("uri", true);
    let status_uri = e.url("statusUri", false);
    let task = match e.string("task") {
        Some(t) => match Task::parse(&t) {
            Some(t) => Some(t),
            None => {
                e.fail(
                    "task",
                    format!("unknown task {t:?}; use \"segmentation\", \"annotation\" or \"prediction\""),
                );
                None
            }
        },
        None => {
            e.fail("task", "`task` is required".into());
            None
        }
    };
    let supports = supports(e);
    let data_filter = data_filter(e);
    let max_concurrent = e.count("maxConcurrent", 1);
    let has_filter = e.get("dataFilter").is_some();
    let multipart = match e.string("payload").as_deref() {
        None | Some("zhiva") => false,
        Some("multipart") if has_filter => {
            e.fail(
                "payload",
                "`payload: \"multipart\"` is not available for models with a dataFilter".into(),
            );
            false
        }
        Some("multipart") => true,
        Some(other) => {
            e.fail(
                "payload",
                format!("unknown payload {other:?}; use \"zhiva\" (the default) or \"multipart\""),
            );
            false
        }
    };
    let content_length = e.boolean("contentLength");
    let cache = e.get("cache").is_none() || e.boolean("cache");
    Some(Model {
        id: e.id.to_string(),
        uri: uri?,
        task: task?,
        supports,
        status_uri,
        data_filter,
        max_concurrent,
        content_length,
        multipart,
        cache,
    })
}

fn supports(e: &mut Entry) -> Vec<Level> {
    let hint = "use \"/studies\", \"/studies/series\" or \"/studies/series/instances\"";
    let Some(Value::Array(items)) = e.get("supports").cloned() else {
        e.fail(
            "supports",
            format!("`supports` must be a non-empty list; {hint}"),
        );
        return Vec::new();
    };
    let mut levels = Vec::new();
    for item in &items {
        match item.as_str().and_then(Level::parse) {
            Some(l) if !levels.contains(&l) => levels.push(l),
            Some(_) => {}
            None => e.fail("supports", format!("unknown level {item}; {hint}")),
        }
    }
    if items.is_empty() {
        e.fail("supports", format!("`supports` is empty; {hint}"));
    }
    levels
}

fn data_filter(e: &mut Entry) -> Vec<DataKey> {
    match e.get("dataFilter").cloned() {
        None => Vec::new(),
        Some(v) => {
            let mut seen = Vec::new();
            data_keys(e, &v, 0, &mut seen)
        }
    }
}

/// One level of `dataFilter` entries (`depth` 0: series or instances; 1: instances
/// nested under a series); `seen` holds every key of the model, which must be unique.
fn data_keys(e: &mut Entry, v: &Value, depth: usize, seen: &mut Vec<String>) -> Vec<DataKey> {
    let Value::Array(items) = v else {
        e.fail(
            "dataFilter",
            "`dataFilter` must be a list of {\"dataKey\": ..., \"title\": ...}".into(),
        );
        return Vec::new();
    };
    if items.is_empty() {
        e.fail(
            "dataFilter",
            "`dataFilter` is empty; remove it or list the dataKeys".into(),
        );
    }
    let mut keys = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = item.get("dataKey").and_then(Value::as_str).unwrap_or("");
        if key.is_empty() {
            e.fail(
                "dataFilter",
                format!("entry {i} needs a non-empty string `dataKey`"),
            );
            continue;
        }
        if seen.iter().any(|k| k == key) {
            e.fail("dataFilter", format!("dataKey {key:?} appears twice"));
            continue;
        }
        seen.push(key.to_string());
        let nested = match item.get("dataFilter").filter(|v| !v.is_null()) {
            None => Vec::new(),
            Some(_) if depth > 0 => {
                e.fail(
                    "dataFilter",
                    format!(
                        "dataKey {key:?}: filters nest one level only (instances under a series)"
                    ),
                );
                Vec::new()
            }
            Some(v) => data_keys(e, v, depth + 1, seen),
        };
        keys.push(DataKey {
            key: key.to_string(),
            title: item.get("title").and_then(Value::as_str).map(String::from),
            nested,
        });
    }
    keys
}
