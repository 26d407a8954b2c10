//! Planning: from a routed request, the config and the data filters, decide
//! exactly what to fetch and where each instance goes in the model's body (one
//! of the zhiva docs' six model types), or refuse, before anything goes upstream.
//!
//! | model | supports | data filters | body ([`Layout`]) |
//! |---|---|---|---|
//! | full study | `/studies` | none | list of instances |
//! | full series | `/studies/series` | none | list of instances |
//! | full instance | `/studies/series/instances` | none | one instance string |
//! | filtered study | `/studies` | series keys | `{series-key: {"data": [...]}}`, or with nested instance keys `{series-key: {"data": {instance-key: {"data": "..."}}}}` |
//! | filtered series | `/studies/series` | instance keys | `{instance-key: {"data": "..."}}` |
//!
//! The legacy POST body of model-proxy 0.1 (`{"<dataKey>": ["<series uid>", ...]}`)
//! is still accepted for study-level models without nested filters.

use serde_json::Value;

use crate::config::{Config, DataKey, Level, Model, Server};
use crate::error::{Code, ProxyError};
use crate::filters::{self, Assigned};
use crate::ids::{invalid_uid, is_dicom_uid, truncate};
use crate::payload::Layout;
use crate::routing::InferenceRequest;

/// Largest data-filters body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Most series one legacy dataFilter body may name.
const MAX_SERIES: usize = 256;

/// Everything needed to run one inference.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The model to post to.
    pub model: Model,
    /// The PACS to read from.
    pub server: Server,
    /// What to fetch, and where each instance goes in the body.
    pub layout: Layout,
}

/// Resolves and checks a request; the error is the client's answer.
pub fn make(
    config: &Config,
    req: &InferenceRequest,
    body: Option<&[u8]>,
) -> Result<Plan, ProxyError> {
    let model = config.models.get(&req.model).ok_or_else(|| {
        ProxyError::new(
            Code::UnknownModel,
            format!("no model {} in models.json", req.model),
        )
    })?;
    let server = config.server(req.server.as_deref()).ok_or_else(|| {
        ProxyError::new(
            Code::UnknownServer,
            format!(
                "no server {} in servers.json",
                req.server.as_deref().unwrap_or("(default)")
            ),
        )
    })?;
    if model.task != req.task {
        return Err(ProxyError::new(
            Code::TaskMismatch,
            format!(
                "model {} does its {} under /{}s/, not this path",
                model.id,
                model.task.as_str(),
                model.task.as_str()
            ),
        ));
    }
    let level = req.level();
    if !model.supports.contains(&level) {
        let supported: Vec<&str> = model.supports.iter().map(|l| l.as_str()).collect();
        return Err(ProxyError::new(
            Code::UnsupportedLevel,
            format!(
                "model {} does not support {}; it supports {}",
                model.id,
                level.as_str(),
                supported.join(", ")
            ),
        ));
    }
    let study = format!("/studies/{}", req.study);
    let series = req.series.as_ref().map(|s| format!("{study}/series/{s}"));
    let given = !req.data_filters.is_empty() || body.is_some();
    let filtered = !model.data_filter.is_empty() && level != Level::Instance;
    let layout = match (filtered, given) {
        (false, false) => match (&series, &req.instance) {
            (Some(se), Some(i)) => Layout::One(format!("{se}/instances/{i}")),
            (Some(se), None) => Layout::List(vec![se.clone()]),
            _ => Layout::List(vec![study]),
        },
        (false, true) => {
            return Err(ProxyError::new(
                Code::UnexpectedBody,
                format!(
                    "model {} takes no data-filters at this level; send the request without them",
                    model.id
                ),
            ))
        }
        (true, false) => {
            return Err(ProxyError::new(
                Code::BodyRequired,
                format!(
                    "model {} has a dataFilter: assign its keys with the data-filters query parameter, e.g. data-filters={}",
                    model.id,
                    example(model, level)
                ),
            ))
        }
        (true, true) => {
            let assigned = match (req.data_filters.is_empty(), body) {
                (false, None) => filters::from_query(&req.data_filters)?,
                (true, Some(b)) if level == Level::Study && is_legacy(b) => {
                    return Ok(Plan {
                        layout: legacy(model, &study, b)?,
                        model: model.clone(),
                        server: server.clone(),
                    })
                }
                (true, Some(b)) => filters::from_body(b)?,
                _ => {
                    return Err(ProxyError::new(
                        Code::InvalidBody,
                        "give data-filters in the query or in the body, not both",
                    ))
                }
            };
            match &series {
                None => study_layout(model, &study, &assigned)?,
                Some(se) => series_layout(model, se, &assigned)?,
            }
        }
    };
    Ok(Plan {
        model: model.clone(),
        server: server.clone(),
        layout,
    })
}

/// A filtered study: each series key gets its series, or its nested instances.
fn study_layout(model: &Model, study: &str, assigned: &[Assigned]) -> Result<Layout, ProxyError> {
    let matched = match_keys(model, &model.data_filter, assigned, "")?;
    let mut entries = Vec::new();
    for (dk, a) in matched {
        let series = format!("{study}/series/{}", uid(dk, a, "series")?);
        let inner = if dk.nested.is_empty() {
            if !a.nested.is_empty() {
                return Err(invalid(format!(
                    "dataKey {:?} takes a whole series; model {} nests no instance filters under it",
                    dk.key, model.id
                )));
            }
            Layout::List(vec![series])
        } else {
            let what = format!(" under dataKey {:?}", dk.key);
            instances(model, &series, &dk.nested, &a.nested, &what)?
        };
        entries.push((dk.key.clone(), inner));
    }
    Ok(Layout::Keyed(entries))
}

/// A filtered series: each instance key gets one instance of this series.
fn series_layout(model: &Model, series: &str, assigned: &[Assigned]) -> Result<Layout, ProxyError> {
    if let Some(dk) = model.data_filter.iter().find(|d| !d.nested.is_empty()) {
        return Err(invalid(format!(
            "model {} nests instance filters under series filter {:?}: call it at the study level",
            model.id, dk.key
        )));
    }
    instances(model, series, &model.data_filter, assigned, "")
}

/// `{instance-key: {"data": "<instance>"}}` for instance keys `keys` of `series`.
fn instances(
    model: &Model,
    series: &str,
    keys: &[DataKey],
    assigned: &[Assigned],
    what: &str,
) -> Result<Layout, ProxyError> {
    let matched = match_keys(model, keys, assigned, what)?;
    let mut entries = Vec::new();
    for (dk, a) in matched {
        let sop = uid(dk, a, "instance")?;
        if !a.nested.is_empty() {
            return Err(invalid(format!(
                "dataKey {:?} is an instance; it takes no nested data filters",
                dk.key
            )));
        }
        entries.push((
            dk.key.clone(),
            Layout::One(format!("{series}/instances/{sop}")),
        ));
    }
    Ok(Layout::Keyed(entries))
}

/// The UID assigned to `dk`, checked; `what` it names goes in the message.
fn uid<'a>(dk: &DataKey, a: &'a Assigned, what: &str) -> Result<&'a str, ProxyError> {
    if is_dicom_uid(&a.uuid) {
        Ok(&a.uuid)
    } else {
        Err(invalid_uid(
            &format!("dataKey {:?}: {what}", dk.key),
            &a.uuid,
        ))
    }
}

/// Pairs every configured key with exactly one assignment, in config order;
/// `what` places the keys in messages (" under dataKey \"s\"").
fn match_keys<'a>(
    model: &Model,
    keys: &'a [DataKey],
    assigned: &'a [Assigned],
    what: &str,
) -> Result<Vec<(&'a DataKey, &'a Assigned)>, ProxyError> {
    if let Some(a) = assigned
        .iter()
        .find(|a| !keys.iter().any(|k| k.key == a.key))
    {
        return Err(invalid(format!(
            "{:?}{what} is not a dataKey of model {}; its keys{what} are {}",
            truncate(&a.key),
            model.id,
            names(keys)
        )));
    }
    keys.iter()
        .map(|k| {
            let mut it = assigned.iter().filter(|a| a.key == k.key);
            match (it.next(), it.next()) {
                (Some(a), None) => Ok((k, a)),
                (None, _) => Err(invalid(format!(
                    "dataKey {:?}{what} of model {} is not assigned",
                    k.key, model.id
                ))),
                (Some(_), Some(_)) => Err(invalid(format!(
                    "dataKey {:?}{what} is assigned more than once",
                    k.key
                ))),
            }
        })
        .collect()
}

fn names(keys: &[DataKey]) -> String {
    keys.iter()
        .map(|k| format!("{:?}", k.key))
        .collect::<Vec<_>>()
        .join(", ")
}

fn invalid(message: String) -> ProxyError {
    ProxyError::new(Code::InvalidBody, message)
}

/// A data-filters list for `model` at `level`, with placeholders, for messages.
fn example(model: &Model, level: Level) -> String {
    let item = |k: &DataKey, uid: &str| {
        let mut o = serde_json::json!({"dataKey": k.key, "uuid": uid});
        if !k.nested.is_empty() {
            o["dataFilter"] = k
                .nested
                .iter()
                .map(|n| serde_json::json!({"dataKey": n.key, "uuid": "<sop instance uid>"}))
                .collect();
        }
        o
    };
    let uid = if level == Level::Study {
        "<series uid>"
    } else {
        "<sop instance uid>"
    };
    Value::Array(model.data_filter.iter().map(|k| item(k, uid)).collect()).to_string()
}

/// The 0.1 body: a JSON object rather than the list.
fn is_legacy(body: &[u8]) -> bool {
    body.iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{')
}

/// model-proxy 0.1's POST body, `{"<dataKey>": ["<series uid>", ...]}`: every
/// series under a key goes in that key's list.
fn legacy(model: &Model, study: &str, body: &[u8]) -> Result<Layout, ProxyError> {
    if let Some(dk) = model.data_filter.iter().find(|d| !d.nested.is_empty()) {
        return Err(invalid(format!(
            "model {} nests instance filters under {:?}; send the data-filters list, e.g. {}",
            model.id,
            dk.key,
            example(model, Level::Study)
        )));
    }
    let bad = |msg: String| invalid(format!("{msg}; expected {}", example(model, Level::Study)));
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(bad("the body is not a JSON object".into()));
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !model.data_filter.iter().any(|d| &d.key == *k))
    {
        return Err(bad(format!("{k:?} is not a dataKey of model {}", model.id)));
    }
    let mut entries = Vec::new();
    let mut total = 0;
    for dk in &model.data_filter {
        let Some(Value::Array(items)) = obj.get(&dk.key) else {
            return Err(bad(format!(
                "dataKey {:?} needs a list of series UIDs",
                dk.key
            )));
        };
        if items.is_empty() {
            return Err(bad(format!("dataKey {:?} names no series", dk.key)));
        }
        let mut paths = Vec::new();
        for item in items {
            let Some(uid) = item.as_str() else {
                return Err(bad(format!("dataKey {:?} holds a non-string", dk.key)));
            };
            if !is_dicom_uid(uid) {
                return Err(invalid_uid("series", uid));
            }
            paths.push(format!("{study}/series/{uid}"));
        }
        total += paths.len();
        entries.push((dk.key.clone(), Layout::List(paths)));
    }
    if total > MAX_SERIES {
        return Err(bad(format!(
            "{total} series named; at most {MAX_SERIES} per request"
        )));
    }
    Ok(Layout::Keyed(entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthType, Task};
    use std::collections::BTreeMap;

    const M: &str = "1d9508dd-9089-40c3-abdd-15f47120d682";
    const F: &str = "2d9508dd-9089-40c3-abdd-15f47120d682";
    const N: &str = "3d9508dd-9089-40c3-abdd-15f47120d682";
    const S: &str = "b1407f18-575d-487c-bc0c-640c6da651bc";

    fn key(k: &str, nested: &[&str]) -> DataKey {
        DataKey {
            key: k.into(),
            title: None,
            nested: nested.iter().map(|n| key(n, &[])).collect(),
        }
    }

    fn config() -> Config {
        let server = Server {
            id: S.into(),
            uri: "http://pacs/dicom-web".into(),
            is_default: true,
            status_uri: None,
            auth: AuthType::None,
            login: None,
            password: None,
            auth_token: None,
            sign_in_server: None,
            sign_in_token_server: None,
            refresh_server: None,
            origin: None,
        };
        let plain = Model {
            id: M.into(),
            uri: "http://m/seg".into(),
            task: Task::Segmentation,
            supports: vec![Level::Series, Level::Instance],
            status_uri: None,
            data_filter: vec![],
            max_concurrent: None,
            content_length: false,
            multipart: false,
            cache: true,
        };
        let filtered = Model {
            id: F.into(),
            supports: vec![Level::Study, Level::Series],
            data_filter: vec![key("a", &[]), key("b", &[])],
            ..plain.clone()
        };
        let nested = Model {
            id: N.into(),
            supports: vec![Level::Study, Level::Series],
            data_filter: vec![key("s1", &["i1", "i2"]), key("s2", &[])],
            ..plain.clone()
        };
        Config {
            servers: BTreeMap::from([(S.to_string(), server)]),
            models: BTreeMap::from([
                (M.to_string(), plain),
                (F.to_string(), filtered),
                (N.to_string(), nested),
            ]),
            default_server: S.into(),
        }
    }

    fn req(model: &str, series: Option<&str>) -> InferenceRequest {
        InferenceRequest {
            task: Task::Segmentation,
            model: model.into(),
            study: "1.2".into(),
            series: series.map(String::from),
            instance: None,
            server: None,
            data_filters: vec![],
            has_body: false,
        }
    }

    fn with(mut r: InferenceRequest, filters: &str) -> InferenceRequest {
        r.data_filters = vec![("data-filters".into(), filters.to_string())];
        r
    }

    fn one(p: &str) -> Layout {
        Layout::One(p.into())
    }

    #[test]
    fn full_series_and_full_instance() {
        let p = make(&config(), &req(M, Some("1.3")), None).unwrap();
        assert_eq!(
            p.layout,
            Layout::List(vec!["/studies/1.2/series/1.3".into()])
        );
        let mut r = req(M, Some("1.3"));
        r.instance = Some("1.4".into());
        let p = make(&config(), &r, None).unwrap();
        assert_eq!(p.layout, one("/studies/1.2/series/1.3/instances/1.4"));
    }

    #[test]
    fn filtered_study_flat_and_nested_in_config_order() {
        let p = make(
            &config(),
            &with(
                req(F, None),
                r#"[{"dataKey":"b","uuid":"1.5"},{"dataKey":"a","uuid":"1.4"}]"#,
            ),
            None,
        )
        .unwrap();
        assert_eq!(
            p.layout,
            Layout::Keyed(vec![
                (
                    "a".into(),
                    Layout::List(vec!["/studies/1.2/series/1.4".into()])
                ),
                (
                    "b".into(),
                    Layout::List(vec!["/studies/1.2/series/1.5".into()])
                ),
            ])
        );
        let f = r#"[{"dataKey":"s2","uuid":"1.6"},{"dataKey":"s1","uuid":"1.5","dataFilter":[{"dataKey":"i2","uuid":"1.5.2"},{"dataKey":"i1","uuid":"1.5.1"}]}]"#;
        let p = make(&config(), &with(req(N, None), f), None).unwrap();
        assert_eq!(
            p.layout,
            Layout::Keyed(vec![
                (
                    "s1".into(),
                    Layout::Keyed(vec![
                        ("i1".into(), one("/studies/1.2/series/1.5/instances/1.5.1")),
                        ("i2".into(), one("/studies/1.2/series/1.5/instances/1.5.2")),
                    ])
                ),
                (
                    "s2".into(),
                    Layout::List(vec!["/studies/1.2/series/1.6".into()])
                ),
            ])
        );
        // The same list as a POST body.
        let p2 = make(&config(), &req(N, None), Some(f.as_bytes())).unwrap();
        assert_eq!(p2.layout, p.layout);
    }

    #[test]
    fn filtered_series() {
        let f = r#"[{"dataKey":"a","uuid":"1.3.1"},{"dataKey":"b","uuid":"1.3.2"}]"#;
        let p = make(&config(), &with(req(F, Some("1.3")), f), None).unwrap();
        assert_eq!(
            p.layout,
            Layout::Keyed(vec![
                ("a".into(), one("/studies/1.2/series/1.3/instances/1.3.1")),
                ("b".into(), one("/studies/1.2/series/1.3/instances/1.3.2")),
            ])
        );
    }

    #[test]
    fn legacy_post_body() {
        let p = make(
            &config(),
            &req(F, None),
            Some(br#"{"b": ["1.5", "1.6"], "a": ["1.4"]}"#),
        )
        .unwrap();
        let Layout::Keyed(e) = p.layout else {
            panic!("keyed")
        };
        assert_eq!(e[0].0, "a");
        assert_eq!(
            e[1].1,
            Layout::List(vec![
                "/studies/1.2/series/1.5".into(),
                "/studies/1.2/series/1.6".into()
            ])
        );
    }

    #[test]
    fn refusals() {
        let c = config();
        let code = |r: &InferenceRequest, b: Option<&[u8]>| {
            make(&c, r, b).map(|_| ()).unwrap_err().code.as_str()
        };
        let msg = |r: &InferenceRequest| make(&c, r, None).unwrap_err().message;
        assert_eq!(code(&req(M, None), None), "unsupported_level");
        let mut r = req(M, Some("1.3"));
        r.task = Task::Prediction;
        assert_eq!(code(&r, None), "task_mismatch");
        r = req(M, Some("1.3"));
        r.server = Some("c1407f18-575d-487c-bc0c-640c6da651bc".into());
        assert_eq!(code(&r, None), "unknown_server");
        assert_eq!(
            code(&req("4d9508dd-9089-40c3-abdd-15f47120d682", None), None),
            "unknown_model"
        );
        assert_eq!(code(&req(M, Some("1.3")), Some(b"[]")), "unexpected_body");
        assert_eq!(
            code(&with(req(M, Some("1.3")), "[]"), None),
            "unexpected_body"
        );
        assert_eq!(code(&req(F, None), None), "body_required");
        assert!(msg(&req(N, None)).contains(r#""dataFilter":[{"dataKey":"i1""#));
        let both = with(req(F, None), r#"[{"dataKey":"a","uuid":"1"}]"#);
        assert_eq!(code(&both, Some(b"[]")), "invalid_body");
        for (model, f, needle) in [
            (F, r#"[{"dataKey":"a","uuid":"1.4"}]"#, "\"b\" of model"),
            (
                F,
                r#"[{"dataKey":"a","uuid":"1.4"},{"dataKey":"b","uuid":"1.5"},{"dataKey":"c","uuid":"1"}]"#,
                "\"c\" is not a dataKey",
            ),
            (
                F,
                r#"[{"dataKey":"a","uuid":"1.4"},{"dataKey":"a","uuid":"1.5"},{"dataKey":"b","uuid":"1"}]"#,
                "\"a\" is assigned more than once",
            ),
            (
                F,
                r#"[{"dataKey":"a","uuid":"1.4","dataFilter":[{"dataKey":"x","uuid":"1"}]},{"dataKey":"b","uuid":"1"}]"#,
                "takes a whole series",
            ),
            (
                N,
                r#"[{"dataKey":"s1","uuid":"1.5"},{"dataKey":"s2","uuid":"1.6"}]"#,
                "\"i1\" under dataKey \"s1\"",
            ),
            (
                N,
                r#"[{"dataKey":"s1","uuid":"1.5","dataFilter":[{"dataKey":"i1","uuid":"1"},{"dataKey":"i2","uuid":"2"},{"dataKey":"i9","uuid":"3"}]},{"dataKey":"s2","uuid":"1.6"}]"#,
                "\"i9\" under dataKey \"s1\" is not",
            ),
        ] {
            let e = make(&c, &with(req(model, None), f), None).unwrap_err();
            assert_eq!(e.code, Code::InvalidBody, "{f}");
            assert!(e.message.contains(needle), "{needle} not in {}", e.message);
        }
        let e = make(
            &c,
            &with(
                req(F, None),
                r#"[{"dataKey":"a","uuid":"../x"},{"dataKey":"b","uuid":"1"}]"#,
            ),
            None,
        )
        .unwrap_err();
        assert_eq!(e.code, Code::InvalidUid);
        assert!(e.message.contains("dataKey \"a\""));
        let nested_at_series = with(req(N, Some("1.3")), r#"[{"dataKey":"s2","uuid":"1"}]"#);
        assert_eq!(code(&nested_at_series, None), "invalid_body");
        for body in [
            &b"{\"a\": [\"1.4\"]}"[..],
            b"{\"a\": [\"1.4\"], \"b\": [], }",
            b"not json",
        ] {
            assert_eq!(code(&req(F, None), Some(body)), "invalid_body");
        }
    }
}
