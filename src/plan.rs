//! Planning: from a routed request, the config and the body, decide exactly what to
//! fetch and where to send it, or refuse, before anything goes upstream.
//!
//! The dataFilter body (our design; the zhiva docs leave it open) is a JSON object
//! mapping every dataKey of the model to the series UIDs to send under it:
//! `{"series-one": ["1.2.3"], "series-two": ["1.2.4", "1.2.5"]}`.

use serde_json::Value;

use crate::config::{Config, Level, Model, Server};
use crate::error::{Code, ProxyError};
use crate::ids::{invalid_uid, is_dicom_uid};
use crate::payload::Group;
use crate::routing::InferenceRequest;

/// Largest dataFilter body accepted.
pub const MAX_BODY: usize = 64 * 1024;

/// Most series one dataFilter request may name.
const MAX_SERIES: usize = 256;

/// Everything needed to run one inference.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The model to post to.
    pub model: Model,
    /// The PACS to read from.
    pub server: Server,
    /// What to fetch, grouped as the payload will be.
    pub groups: Vec<Group>,
    /// dataFilter object form rather than the plain array.
    pub keyed: bool,
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
    let study_path = format!("/studies/{}", req.study);
    let (groups, keyed) = match (model.data_filter.is_empty(), body) {
        (true, None) => {
            let mut path = study_path;
            if let Some(s) = &req.series {
                path.push_str(&format!("/series/{s}"));
            }
            if let Some(i) = &req.instance {
                path.push_str(&format!("/instances/{i}"));
            }
            (vec![Group { key: None, paths: vec![path] }], false)
        }
        (true, Some(_)) => {
            return Err(ProxyError::new(Code::UnexpectedBody,
                format!("model {} has no dataFilter: use GET without a body", model.id),
            ))
        }
        (false, None) => {
            return Err(ProxyError::new(Code::BodyRequired,
                format!(
                    "model {} has a dataFilter: POST to the study URL a JSON body naming the series for each dataKey, e.g. {}",
                    model.id,
                    example_body(model)
                ),
            ))
        }
        (false, Some(body)) => {
            if level != Level::Study {
                return Err(ProxyError::new(Code::InvalidBody,
                    "dataFilter requests are POSTed to the study URL, not a series or instance URL",
                ));
            }
            (data_filter_groups(model, &study_path, body)?, true)
        }
    };
    Ok(Plan {
        model: model.clone(),
        server: server.clone(),
        groups,
        keyed,
    })
}

fn example_body(model: &Model) -> String {
    let obj: serde_json::Map<String, Value> = model
        .data_filter
        .iter()
        .map(|k| (k.key.clone(), serde_json::json!(["<series uid>"])))
        .collect();
    Value::Object(obj).to_string()
}

fn data_filter_groups(
    model: &Model,
    study_path: &str,
    body: &[u8],
) -> Result<Vec<Group>, ProxyError> {
    let bad = |msg: String| {
        ProxyError::new(
            Code::InvalidBody,
            format!("{msg}; expected {}", example_body(model)),
        )
    };
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(bad("the body is not a JSON object".into()));
    };
    if let Some(k) = obj
        .keys()
        .find(|k| !model.data_filter.iter().any(|d| &d.key == *k))
    {
        return Err(bad(format!("{k:?} is not a dataKey of model {}", model.id)));
    }
    let mut groups = Vec::new();
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
            paths.push(format!("{study_path}/series/{uid}"));
        }
        total += paths.len();
        groups.push(Group {
            key: Some(dk.key.clone()),
            paths,
        });
    }
    if total > MAX_SERIES {
        return Err(bad(format!(
            "{total} series named; at most {MAX_SERIES} per request"
        )));
    }
    Ok(groups)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AuthType, DataKey, Task};
    use std::collections::BTreeMap;

    const M: &str = "1d9508dd-9089-40c3-abdd-15f47120d682";
    const F: &str = "2d9508dd-9089-40c3-abdd-15f47120d682";
    const S: &str = "b1407f18-575d-487c-bc0c-640c6da651bc";

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
        };
        let plain = Model {
            id: M.into(),
            uri: "http://m/seg".into(),
            task: Task::Segmentation,
            supports: vec![Level::Series],
            status_uri: None,
            data_filter: vec![],
            max_concurrent: None,
            content_length: false,
            multipart: false,
        };
        let filtered = Model {
            id: F.into(),
            supports: vec![Level::Study],
            data_filter: vec![
                DataKey {
                    key: "a".into(),
                    title: None,
                },
                DataKey {
                    key: "b".into(),
                    title: None,
                },
            ],
            ..plain.clone()
        };
        Config {
            servers: BTreeMap::from([(S.to_string(), server)]),
            models: BTreeMap::from([(M.to_string(), plain), (F.to_string(), filtered)]),
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
            has_body: false,
        }
    }

    #[test]
    fn plain_series() {
        let p = make(&config(), &req(M, Some("1.3")), None).unwrap();
        assert_eq!(p.groups[0].paths, vec!["/studies/1.2/series/1.3"]);
        assert!(!p.keyed);
    }

    #[test]
    fn refusals() {
        let c = config();
        let code =
            |r: &InferenceRequest, b: Option<&[u8]>| make(&c, r, b).unwrap_err().code.as_str();
        assert_eq!(code(&req(M, None), None), "unsupported_level");
        let mut r = req(M, Some("1.3"));
        r.task = Task::Prediction;
        assert_eq!(code(&r, None), "task_mismatch");
        r = req(M, Some("1.3"));
        r.server = Some("c1407f18-575d-487c-bc0c-640c6da651bc".into());
        assert_eq!(code(&r, None), "unknown_server");
        assert_eq!(
            code(&req("3d9508dd-9089-40c3-abdd-15f47120d682", None), None),
            "unknown_model"
        );
        assert_eq!(code(&req(M, Some("1.3")), Some(b"{}")), "unexpected_body");
        assert_eq!(code(&req(F, None), None), "body_required");
        for body in [
            &b"[]"[..],
            b"{\"a\": [\"1.4\"]}",
            b"{\"a\": [\"1.4\"], \"b\": [], }",
            b"{\"a\": [\"1.4\"], \"b\": [\"1.5\"], \"c\": []}",
            b"not json",
        ] {
            assert_eq!(
                code(&req(F, None), Some(body)),
                "invalid_body",
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(
            code(
                &req(F, None),
                Some(b"{\"a\": [\"1.4\"], \"b\": [\"../x\"]}")
            ),
            "invalid_uid"
        );
    }

    #[test]
    fn data_filter_groups_in_model_order() {
        let p = make(
            &config(),
            &req(F, None),
            Some(br#"{"b": ["1.5", "1.6"], "a": ["1.4"]}"#),
        )
        .unwrap();
        assert!(p.keyed);
        assert_eq!(p.groups[0].key.as_deref(), Some("a"));
        assert_eq!(
            p.groups[1].paths,
            vec!["/studies/1.2/series/1.5", "/studies/1.2/series/1.6"]
        );
    }
}
