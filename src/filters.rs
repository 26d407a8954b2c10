//! Data filters: what the viewer's user assigned to each `dataKey` of a model.
//!
//! The published API sends them on a GET as the `data-filters` query parameter,
//! a list of `{"dataKey", "uuid", "dataFilter"?}` objects (`uuid` is a
//! SeriesInstanceUID under a study, a SOPInstanceUID under a series; the nested
//! list assigns instances of that series). Browsers send the list in one of two
//! ways: one URL-encoded JSON array (`data-filters=[...]`), or one JSON object per
//! repeated parameter (`data-filters[]={...}`, axios' default). A POST body may
//! carry the same JSON list instead. This module turns any of those into
//! [`Assigned`] values; whether they fit the model is the plan's business.

use serde_json::Value;

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

/// True for a query key that carries data filters: `data-filters`,
/// `data-filters[]` or `data-filters[N]`.
pub fn is_query_key(k: &str) -> bool {
    let Some(rest) = k.strip_prefix("data-filters") else {
        return false;
    };
    rest.is_empty()
        || rest
            .strip_prefix('[')
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|i| i.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses the decoded values of every `data-filters` query parameter, in order:
/// each is a JSON list of assignments or a single assignment object.
pub fn from_query(values: &[String]) -> Result<Vec<Assigned>, ProxyError> {
    let mut out = Vec::new();
    for v in values {
        match serde_json::from_str::<Value>(v) {
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
        }
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

    #[test]
    fn both_query_forms_mean_the_same() {
        let list = r#"[{"dataKey":"a","uuid":"1.2"},{"dataKey":"b","uuid":"1.3","dataFilter":[{"dataKey":"c","uuid":"1.4"}]}]"#;
        let one = from_query(&[list.to_string()]).unwrap();
        let each = from_query(&[
            r#"{"dataKey":"a","uuid":"1.2"}"#.to_string(),
            r#"{"dataKey":"b","uuid":"1.3","dataFilter":[{"dataKey":"c","uuid":"1.4"}]}"#
                .to_string(),
        ])
        .unwrap();
        assert_eq!(one, each);
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
            let e = from_query(&[bad.to_string()]).unwrap_err();
            assert_eq!(e.code, Code::InvalidBody, "{bad}");
        }
        let many = format!("[{}]", vec![r#"{"dataKey":"a","uuid":"1"}"#; 300].join(","));
        assert!(from_query(&[many]).is_err());
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
