//! Data filters: what the viewer's user assigned to each `dataKey` of a model.
//!
//! The published API sends them on a GET as the `data-filters` query parameter,
//! a list of `{"dataKey", "uuid", "dataFilter"?}` objects (`uuid` is a
//! SeriesInstanceUID under a study, a SOPInstanceUID under a series; the nested
//! list assigns instances of that series). Browser clients put that list in the
//! URL in three ways, all accepted:
//!
//! - one URL-encoded JSON array: `data-filters=[...]` (URLSearchParams, curl);
//! - one JSON object per repeated parameter: `data-filters[]={...}` (axios 0.x);
//! - one parameter per field, bracket notation: `data-filters[0][dataKey]=...&
//!   data-filters[0][uuid]=...&data-filters[0][dataFilter][0][dataKey]=...`
//!   (axios 1.x, qs).
//!
//! A POST body may carry the same JSON list instead. This module turns any of
//! those into [`Assigned`] values; whether they fit the model is the plan's business.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::error::{Code, ProxyError};

/// Most assignments (nested ones included) one request may carry.
pub const MAX_ASSIGNED: usize = 256;

/// One assignment: data the user put under a dataKey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assigned {
    /// The model's dataKey.
    pub key: String,
    /// The UID assigned to it.
    pub uuid: String,
    /// Instances assigned under this series' nested keys.
    pub nested: Vec<Assigned>,
}

/// One decoded query parameter: key and value.
pub type Pair = (String, String);

/// What a query key says about the data filters.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    /// `data-filters`, `data-filters[]`, `data-filters[N]`: the value is JSON.
    Json,
    /// `data-filters[i][field]` or `data-filters[i][dataFilter][j][field]`.
    Field(usize, Option<usize>, String),
}

/// Parses a query key; `None` for keys that are not about data filters.
fn key(k: &str) -> Option<Key> {
    let rest = k.strip_prefix("data-filters")?;
    let mut parts = Vec::new();
    let mut r = rest;
    while let Some(after) = r.strip_prefix('[') {
        let close = after.find(']')?;
        parts.push(&after[..close]);
        r = &after[close + 1..];
    }
    if !r.is_empty() {
        return None;
    }
    let index = |s: &str| s.parse::<usize>().ok().filter(|&i| i < MAX_ASSIGNED);
    match parts.as_slice() {
        [] => Some(Key::Json),
        [i] if i.is_empty() || index(i).is_some() => Some(Key::Json),
        [i, f] => Some(Key::Field(index(i)?, None, f.to_string())),
        [i, "dataFilter", j, f] => Some(Key::Field(index(i)?, Some(index(j)?), f.to_string())),
        _ => None,
    }
}

/// True for a query key that carries data filters, in any of the three forms.
pub fn is_query_key(k: &str) -> bool {
    key(k).is_some()
}

/// The fields of one bracket-notation item, and of the items nested in it by index.
type Fields = (Map<String, Value>, BTreeMap<usize, Map<String, Value>>);

/// Parses the decoded `(key, value)` pairs of every `data-filters` query
/// parameter, in order: JSON values (a list, or one object each) first, then
/// the bracket-notation items by index.
pub fn from_query(pairs: &[Pair]) -> Result<Vec<Assigned>, ProxyError> {
    let mut out = Vec::new();
    let mut fields: BTreeMap<usize, Fields> = BTreeMap::new();
    for (k, v) in pairs {
        match key(k) {
            Some(Key::Json) => match serde_json::from_str::<Value>(v) {
                Ok(Value::Array(items)) => {
                    for item in &items {
                        out.push(assigned(item, 0)?);
                    }
                }
                Ok(item @ Value::Object(_)) => out.push(assigned(&item, 0)?),
                _ => {
                    return Err(invalid(
                        "data-filters must be a JSON list of {\"dataKey\", \"uuid\"} objects (or one such object per parameter)",
                    ))
                }
            },
            Some(Key::Field(i, nested, f)) => {
                let (item, inner) = fields.entry(i).or_default();
                let target = match nested {
                    None => item,
                    Some(j) => inner.entry(j).or_default(),
                };
                target.insert(f, Value::String(v.clone()));
            }
            None => {}
        }
    }
    for (_, (mut item, inner)) in fields {
        if !inner.is_empty() {
            item.insert(
                "dataFilter".into(),
                Value::Array(inner.into_values().map(Value::Object).collect()),
            );
        }
        out.push(assigned(&Value::Object(item), 0)?);
    }
    bounded(out)
}

/// A POST body: the same JSON list as the query parameter.
pub fn from_body(body: &[u8]) -> Result<Vec<Assigned>, ProxyError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) => bounded(
            items
                .iter()
                .map(|i| assigned(i, 0))
                .collect::<Result<_, _>>()?,
        ),
        _ => Err(invalid(
            "the body must be the data-filters JSON list: [{\"dataKey\": ..., \"uuid\": ...}, ...]",
        )),
    }
}

fn bounded(v: Vec<Assigned>) -> Result<Vec<Assigned>, ProxyError> {
    let n: usize = v.iter().map(|a| 1 + a.nested.len()).sum();
    if n > MAX_ASSIGNED {
        return Err(invalid(format!(
            "{n} data filters given; at most {MAX_ASSIGNED} per request"
        )));
    }
    Ok(v)
}

fn assigned(v: &Value, depth: usize) -> Result<Assigned, ProxyError> {
    let Value::Object(o) = v else {
        return Err(invalid(
            "each data filter must be an object {\"dataKey\", \"uuid\"}",
        ));
    };
    let key = o.get("dataKey").and_then(Value::as_str).unwrap_or("");
    if key.is_empty() {
        return Err(invalid("a data filter has no string \"dataKey\""));
    }
    let Some(uuid) = o.get("uuid").and_then(Value::as_str) else {
        return Err(invalid(format!(
            "data filter {:?} has no string \"uuid\"",
            crate::ids::truncate(key)
        )));
    };
    let nested = match o.get("dataFilter") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if depth == 0 => items
            .iter()
            .map(|i| assigned(i, 1))
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(invalid(format!(
                "data filter {:?}: \"dataFilter\" must be a list, nested one level only",
                crate::ids::truncate(key)
            )))
        }
    };
    Ok(Assigned {
        key: key.to_string(),
        uuid: uuid.to_string(),
        nested,
    })
}

fn invalid(message: impl Into<String>) -> ProxyError {
    ProxyError::new(Code::InvalidBody, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Result<Vec<Assigned>, ProxyError> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_query(&pairs)
    }

    #[test]
    fn the_three_query_forms_mean_the_same() {
        let list = r#"[{"dataKey":"a","uuid":"1.2"},{"dataKey":"b","uuid":"1.3","dataFilter":[{"dataKey":"c","uuid":"1.4"}]}]"#;
        let one = q(&[("data-filters", list)]).unwrap();
        let each = q(&[
            ("data-filters[]", r#"{"dataKey":"a","uuid":"1.2"}"#),
            (
                "data-filters[]",
                r#"{"dataKey":"b","uuid":"1.3","dataFilter":[{"dataKey":"c","uuid":"1.4"}]}"#,
            ),
        ])
        .unwrap();
        assert_eq!(one, each);
        // What axios 1.x puts in the URL for the same list.
        let brackets = q(&[
            ("data-filters[0][dataKey]", "a"),
            ("data-filters[0][uuid]", "1.2"),
            ("data-filters[1][dataKey]", "b"),
            ("data-filters[1][uuid]", "1.3"),
            ("data-filters[1][dataFilter][0][dataKey]", "c"),
            ("data-filters[1][dataFilter][0][uuid]", "1.4"),
        ])
        .unwrap();
        assert_eq!(one, brackets);
        assert_eq!(one[1].nested[0].uuid, "1.4");
        assert_eq!(from_body(list.as_bytes()).unwrap(), one);
    }

    #[test]
    fn refusals() {
        for bad in [
            "{",
            "3",
            r#"[{"uuid":"1"}]"#,
            r#"[{"dataKey":"a"}]"#,
            r#"[{"dataKey":"a","uuid":1}]"#,
            r#"[{"dataKey":"a","uuid":"1","dataFilter":[{"dataKey":"b","uuid":"2","dataFilter":[]}]}]"#,
        ] {
            let e = q(&[("data-filters", bad)]).unwrap_err();
            assert_eq!(e.code, Code::InvalidBody, "{bad}");
        }
        let many = format!("[{}]", vec![r#"{"dataKey":"a","uuid":"1"}"#; 300].join(","));
        assert!(q(&[("data-filters", &many)]).is_err());
        assert!(q(&[("data-filters[0][dataKey]", "a")]).is_err(), "no uuid");
    }

    #[test]
    fn query_keys() {
        for k in [
            "data-filters",
            "data-filters[]",
            "data-filters[0]",
            "data-filters[12]",
        ] {
            assert!(is_query_key(k), "{k}");
        }
        for k in [
            "data-filter",
            "data-filters[x]",
            "data-filters]",
            "xdata-filters",
        ] {
            assert!(!is_query_key(k), "{k}");
        }
    }
}
