//! `servers.json` and `models.json`: loading, validation, and the typed configuration.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::jsonc;

/// How the proxy logs in to a PACS (`authType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthType {
    /// `""`: no credentials.
    None,
    /// `basicAuth`: HTTP Basic on every request.
    Basic,
    /// `token`: a one-off auth token exchanged for access and refresh tokens.
    Token,
    /// `zhivaAuth`: sign in with login and password at the zhiva auth service.
    Zhiva,
}

impl AuthType {
    /// The spelling used in servers.json.
    pub fn as_str(self) -> &'static str {
        match self {
            AuthType::None => "",
            AuthType::Basic => "basicAuth",
            AuthType::Token => "token",
            AuthType::Zhiva => "zhivaAuth",
        }
    }
}

/// One PACS from servers.json.
#[derive(Clone)]
pub struct Server {
    /// The UUID key, lower case.
    pub id: String,
    /// DICOMweb root without a trailing slash.
    pub uri: String,
    /// Used when a request names no server.
    pub is_default: bool,
    /// GET target for health checks.
    pub status_uri: Option<String>,
    /// Login scheme.
    pub auth: AuthType,
    /// Login for basicAuth and zhivaAuth.
    pub login: Option<String>,
    /// Password for basicAuth and zhivaAuth.
    pub password: Option<String>,
    /// One-off auth token (`authToken`, or `token` as the docs also call it).
    pub auth_token: Option<String>,
    /// zhivaAuth sign-in endpoint.
    pub sign_in_server: Option<String>,
    /// Exchanges an auth token for access and refresh tokens.
    pub sign_in_token_server: Option<String>,
    /// Exchanges a refresh token for a new access token.
    pub refresh_server: Option<String>,
}

// Hand-written so that a `{:?}` can never print a password or a token.
impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("id", &self.id)
            .field("uri", &redact_uri(&self.uri))
            .field("is_default", &self.is_default)
            .field("auth", &self.auth)
            .finish_non_exhaustive()
    }
}

/// What a model does; the path word is the plural.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// `segmentation`, served under `/segmentations/`.
    Segmentation,
    /// `annotation`, served under `/annotations/`.
    Annotation,
    /// `prediction`, served under `/predictions/`.
    Prediction,
}

impl Task {
    /// Parses the models.json spelling.
    pub fn parse(s: &str) -> Option<Task> {
        match s {
            "segmentation" => Some(Task::Segmentation),
            "annotation" => Some(Task::Annotation),
            "prediction" => Some(Task::Prediction),
            _ => None,
        }
    }

    /// Parses the plural used in request paths.
    pub fn from_path_word(s: &str) -> Option<Task> {
        match s {
            "segmentations" => Some(Task::Segmentation),
            "annotations" => Some(Task::Annotation),
            "predictions" => Some(Task::Prediction),
            _ => None,
        }
    }

    /// The models.json spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Segmentation => "segmentation",
            Task::Annotation => "annotation",
            Task::Prediction => "prediction",
        }
    }
}

/// The DICOM level an inference runs on (a `supports` entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// `/studies`
    Study,
    /// `/studies/series`
    Series,
    /// `/studies/series/instances`
    Instance,
}

impl Level {
    /// Parses a `supports` entry.
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim_end_matches('/') {
            "/studies" => Some(Level::Study),
            "/studies/series" => Some(Level::Series),
            "/studies/series/instances" => Some(Level::Instance),
            _ => None,
        }
    }

    /// The `supports` spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Study => "/studies",
            Level::Series => "/studies/series",
            Level::Instance => "/studies/series/instances",
        }
    }
}

/// One `dataFilter` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKey {
    /// The key the model expects in its body.
    pub key: String,
    /// Display title for the viewer.
    pub title: Option<String>,
}

/// One model API from models.json.
#[derive(Debug, Clone)]
pub struct Model {
    /// The UUID key, lower case.
    pub id: String,
    /// POST target.
    pub uri: String,
    /// What the model does.
    pub task: Task,
    /// Levels the model accepts.
    pub supports: Vec<Level>,
    /// GET target for health checks.
    pub status_uri: Option<String>,
    /// Named inputs; empty for a plain model.
    pub data_filter: Vec<DataKey>,
    /// Extension: at most this many inferences at once on this model (`maxConcurrent`).
    pub max_concurrent: Option<usize>,
    /// Extension: send a Content-Length instead of a chunked body (`contentLength`).
    pub content_length: bool,
    /// Extension: `"payload": "multipart"` sends DICOMweb multipart instead of the zhiva JSON.
    pub multipart: bool,
}

/// Both files, validated.
#[derive(Debug, Clone)]
pub struct Config {
    /// Servers by lower-case UUID.
    pub servers: BTreeMap<String, Server>,
    /// Models by lower-case UUID.
    pub models: BTreeMap<String, Model>,
    /// The id of the server used when a request names none.
    pub default_server: String,
}

impl Config {
    /// The server a request means: the named one, or the default.
    pub fn server(&self, id: Option<&str>) -> Option<&Server> {
        self.servers.get(id.unwrap_or(&self.default_server))
    }
}

/// One thing wrong with a config file, precise enough to fix without guessing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file.
    pub file: PathBuf,
    /// The UUID key (and field) concerned, if any.
    pub key: Option<String>,
    /// Line and column, when the problem has a place in the text.
    pub at: Option<(usize, usize)>,
    /// What is wrong and what to do.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some((l, c)) = self.at {
            write!(f, ":{l}:{c}")?;
        }
        if let Some(k) = &self.key {
            write!(f, ": {k}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Loads and validates `servers.json` and `models.json` from `dir`; every problem is reported.
pub fn load(dir: &Path) -> Result<Config, Vec<Problem>> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|e| Problem {
            file: path,
            key: None,
            at: None,
            message: format!(
                "cannot read the file ({e}); create it or point --config (ZHIVA_CONFIG_DIR) at the directory that holds it"
            ),
        })
    };
    match (read("servers.json"), read("models.json")) {
        (Ok(s), Ok(m)) => from_texts(dir, &s, &m),
        (s, m) => Err([s.err(), m.err()].into_iter().flatten().collect()),
    }
}

/// Validates the two files' texts; `dir` only names them in problems.
pub fn from_texts(dir: &Path, servers: &str, models: &str) -> Result<Config, Vec<Problem>> {
    let mut problems = Vec::new();
    let servers_path = dir.join("servers.json");
    let servers = parse_text(&servers_path, servers, &mut problems)
        .map(|f| parse_servers(&f, &mut problems))
        .unwrap_or_default();
    let models = parse_text(&dir.join("models.json"), models, &mut problems)
        .map(|f| parse_models(&f, &mut problems))
        .unwrap_or_default();
    let default_server = pick_default(&servers_path, &servers, &mut problems);
    if problems.is_empty() {
        Ok(Config {
            servers,
            models,
            default_server: default_server.unwrap_or_default(),
        })
    } else {
        Err(problems)
    }
}

/// A parsed file with what is needed to point at places in it.
struct Source {
    path: PathBuf,
    text: String,
    root: Map<String, Value>,
}

impl Source {
    fn problem(&self, key: Option<&str>, field: Option<&str>, message: String) -> Problem {
        let at = key.and_then(|k| self.locate(k, field));
        let key = match (key, field) {
            (Some(k), Some(f)) => Some(format!("{k}.{f}")),
            (Some(k), None) => Some(k.to_string()),
            _ => None,
        };
        Problem {
            file: self.path.clone(),
            key,
            at,
            message,
        }
    }

    /// Where `"key"` first appears, and `"field"` inside its entry (the entry
    /// itself when the field is missing): good enough for a pointer.
    fn locate(&self, key: &str, field: Option<&str>) -> Option<(usize, usize)> {
        let find_key = |k: &str| self.text.find(&format!("\"{k}\""));
        let start = find_key(key)?;
        let end = self
            .root
            .keys()
            .filter_map(|k| find_key(k))
            .filter(|&p| p > start)
            .min()
            .unwrap_or(self.text.len());
        let at = field
            .and_then(|f| self.text[start..end].find(&format!("\"{f}\"")))
            .map_or(start, |i| start + i);
        Some(jsonc::line_col(&self.text, at))
    }
}

fn parse_text(path: &Path, text: &str, problems: &mut Vec<Problem>) -> Option<Source> {
    let fail = |message: String| Problem {
        file: path.to_path_buf(),
        key: None,
        at: None,
        message,
    };
    let strict = jsonc::to_strict(text);
    match serde_json::from_str::<Value>(&strict) {
        Ok(Value::Object(root)) => Some(Source {
            path: path.to_path_buf(),
            text: strict,
            root,
        }),
        Ok(_) => {
            problems.push(fail(
                "the top level must be an object keyed by UUIDs, as in the zhiva docs".into(),
            ));
            None
        }
        Err(e) => {
            problems.push(Problem {
                at: Some((e.line(), e.column())),
                ..fail(format!("not valid JSON: {e}"))
            });
            None
        }
    }
}

/// Checks a key is a UUID and returns it lower-cased.
fn uuid_key(src: &Source, key: &str, problems: &mut Vec<Problem>) -> Option<String> {
    if is_uuid(key) {
        Some(key.to_ascii_lowercase())
    } else {
        problems.push(src.problem(
            Some(key),
            None,
            "the key must be a UUID such as 1d9508dd-9089-40c3-abdd-15f47120d682 (generate one with `uuidgen`)".into(),
        ));
        None
    }
}

/// True for a hyphenated UUID (the only form the zhiva files use).
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// Reads the fields of one entry with uniform error reporting.
struct Entry<'a> {
    src: &'a Source,
    key: &'a str,
    obj: &'a Map<String, Value>,
    problems: &'a mut Vec<Problem>,
}

impl Entry<'_> {
    fn fail(&mut self, field: &str, message: String) {
        let p = self.src.problem(Some(self.key), Some(field), message);
        self.problems.push(p);
    }

    fn string(&mut self, field: &str) -> Option<String> {
        match self.obj.get(field) {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.fail(field, format!("`{field}` must be a string"));
                None
            }
        }
    }

    fn url(&mut self, field: &str, required: bool) -> Option<String> {
        match self.string(field) {
            Some(u) if is_http_url(&u) => Some(u.trim_end_matches('/').to_string()),
            Some(_) => {
                self.fail(
                    field,
                    format!("`{field}` must be an http:// or https:// URL with a host"),
                );
                None
            }
            None if required => {
                self.fail(field, format!("`{field}` is required"));
                None
            }
            None => None,
        }
    }

    fn require(&mut self, field: &str, value: &Option<String>, why: &str) {
        if value.as_deref().is_none_or(str::is_empty) {
            self.fail(field, format!("`{field}` is required {why}"));
        }
    }
}

fn is_http_url(u: &str) -> bool {
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"));
    match rest {
        Some(r) => {
            let host = r.split(['/', '?', '#']).next().unwrap_or("");
            !host.is_empty() && !host.contains(char::is_whitespace)
        }
        None => false,
    }
}

/// The URI with any `user:password@` removed, for logs and the status page.
pub fn redact_uri(u: &str) -> String {
    let (scheme, rest) = match u.find("://") {
        Some(i) => (&u[..i + 3], &u[i + 3..]),
        None => ("", u),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}{}", &rest[at + 1..]),
        None => u.to_string(),
    }
}

fn parse_servers(src: &Source, problems: &mut Vec<Problem>) -> BTreeMap<String, Server> {
    let mut out = BTreeMap::new();
    for (key, value) in &src.root {
        let Some(id) = uuid_key(src, key, problems) else {
            continue;
        };
        let Value::Object(obj) = value else {
            problems.push(src.problem(Some(key), None, "each server must be an object".into()));
            continue;
        };
        let before = problems.len();
        let mut e = Entry {
            src,
            key,
            obj,
            problems,
        };
        let uri = e.url("uri", true);
        let status_uri = e.url("statusUri", false);
        let is_default = match obj.get("isDefault") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                e.fail("isDefault", "`isDefault` must be true or false".into());
                false
            }
        };
        let auth = match e.string("authType").as_deref() {
            None | Some("") => AuthType::None,
            Some("basicAuth") => AuthType::Basic,
            Some("token") => AuthType::Token,
            Some("zhivaAuth") => AuthType::Zhiva,
            Some(other) => {
                e.fail(
                    "authType",
                    format!("unknown authType {other:?}; use \"\", \"basicAuth\", \"token\" or \"zhivaAuth\""),
                );
                AuthType::None
            }
        };
        let login = e.string("login");
        let password = e.string("password");
        let auth_token = match e.string("authToken") {
            Some(t) => Some(t),
            None => e.string("token"),
        };
        let sign_in_server = e.url("signInServer", false);
        let sign_in_token_server = e.url("signInTokenServer", false);
        let refresh_server = e.url("refreshServer", false);
        match auth {
            AuthType::None => {}
            AuthType::Basic => {
                e.require("login", &login, "for basicAuth");
                e.require("password", &password, "for basicAuth");
            }
            AuthType::Token => {
                e.require(
                    "authToken",
                    &auth_token,
                    "for token auth (the one-off auth token)",
                );
                e.require("signInTokenServer", &sign_in_token_server, "for token auth");
            }
            AuthType::Zhiva => {
                if auth_token.is_none() {
                    e.require("login", &login, "for zhivaAuth (or give an authToken)");
                    e.require(
                        "password",
                        &password,
                        "for zhivaAuth (or give an authToken)",
                    );
                    e.require(
                        "signInServer",
                        &sign_in_server,
                        "for zhivaAuth with login and password",
                    );
                }
                e.require("signInTokenServer", &sign_in_token_server, "for zhivaAuth");
            }
        }
        if problems.len() > before {
            continue;
        }
        let Some(uri) = uri else { continue };
        out.insert(
            id.clone(),
            Server {
                id,
                uri,
                is_default,
                status_uri,
                auth,
                login,
                password,
                auth_token,
                sign_in_server,
                sign_in_token_server,
                refresh_server,
            },
        );
    }
    if src.root.is_empty() {
        problems.push(Problem {
            file: src.path.clone(),
            key: None,
            at: None,
            message: "no servers defined; add at least one DICOMweb server".into(),
        });
    }
    out
}

fn pick_default(
    path: &Path,
    servers: &BTreeMap<String, Server>,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let defaults: Vec<&String> = servers
        .values()
        .filter(|s| s.is_default)
        .map(|s| &s.id)
        .collect();
    let problem = |message: String| Problem {
        file: path.to_path_buf(),
        key: None,
        at: None,
        message,
    };
    match (defaults.as_slice(), servers.len()) {
        ([one], _) => Some((*one).clone()),
        ([], 1) => servers.keys().next().cloned(),
        ([], 0) => None,
        ([], _) => {
            problems.push(problem(
                "several servers and none has \"isDefault\": true; mark exactly one as the default"
                    .into(),
            ));
            None
        }
        (many, _) => {
            let ids: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
            problems.push(problem(format!(
                "{} servers have \"isDefault\": true ({}); keep it on exactly one",
                ids.len(),
                ids.join(", ")
            )));
            None
        }
    }
}

fn parse_models(src: &Source, problems: &mut Vec<Problem>) -> BTreeMap<String, Model> {
    let mut out = BTreeMap::new();
    for (key, value) in &src.root {
        let Some(id) = uuid_key(src, key, problems) else {
            continue;
        };
        let Value::Object(obj) = value else {
            problems.push(src.problem(Some(key), None, "each model must be an object".into()));
            continue;
        };
        let before = problems.len();
        let mut e = Entry {
            src,
            key,
            obj,
            problems,
        };
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
        let supports = parse_supports(&mut e);
        let data_filter = parse_data_filter(&mut e);
        let max_concurrent = match obj.get("maxConcurrent") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if n >= 1 => Some(n as usize),
                _ => {
                    e.fail(
                        "maxConcurrent",
                        "`maxConcurrent` must be a whole number of at least 1".into(),
                    );
                    None
                }
            },
        };
        let multipart = match e.string("payload").as_deref() {
            None | Some("zhiva") => false,
            Some("multipart") if obj.get("dataFilter").is_some() => {
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
                    format!(
                        "unknown payload {other:?}; use \"zhiva\" (the default) or \"multipart\""
                    ),
                );
                false
            }
        };
        let content_length = match obj.get("contentLength") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                e.fail(
                    "contentLength",
                    "`contentLength` must be true or false".into(),
                );
                false
            }
        };
        if problems.len() > before {
            continue;
        }
        let (Some(uri), Some(task)) = (uri, task) else {
            continue;
        };
        out.insert(
            id.clone(),
            Model {
                id,
                uri,
                task,
                supports,
                status_uri,
                data_filter,
                max_concurrent,
                content_length,
                multipart,
            },
        );
    }
    out
}

fn parse_supports(e: &mut Entry) -> Vec<Level> {
    let hint = "use \"/studies\", \"/studies/series\" or \"/studies/series/instances\"";
    let Some(Value::Array(items)) = e.obj.get("supports") else {
        e.fail(
            "supports",
            format!("`supports` must be a non-empty list; {hint}"),
        );
        return Vec::new();
    };
    let mut levels = Vec::new();
    for item in items {
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

fn parse_data_filter(e: &mut Entry) -> Vec<DataKey> {
    let items = match e.obj.get("dataFilter") {
        None | Some(Value::Null) => return Vec::new(),
        Some(Value::Array(items)) => items,
        Some(_) => {
            e.fail(
                "dataFilter",
                "`dataFilter` must be a list of {\"dataKey\": ..., \"title\": ...}".into(),
            );
            return Vec::new();
        }
    };
    let mut keys: Vec<DataKey> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let key = item.get("dataKey").and_then(Value::as_str).unwrap_or("");
        if key.is_empty() {
            e.fail(
                "dataFilter",
                format!("entry {i} needs a non-empty string `dataKey`"),
            );
        } else if keys.iter().any(|k| k.key == key) {
            e.fail("dataFilter", format!("dataKey {key:?} appears twice"));
        } else {
            keys.push(DataKey {
                key: key.to_string(),
                title: item.get("title").and_then(Value::as_str).map(String::from),
            });
        }
    }
    if items.is_empty() {
        e.fail(
            "dataFilter",
            "`dataFilter` is empty; remove it or list the dataKeys".into(),
        );
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, servers: &str, models: &str) {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("servers.json"), servers).unwrap();
        std::fs::write(dir.join("models.json"), models).unwrap();
    }

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("mp-config-{}-{name}", std::process::id()))
    }

    const SERVER: &str = r#"{
      // the docs' example, comments and trailing commas included
      "b1407f18-575d-487c-bc0c-640c6da651bc": {
        "uri": "https://localhost/zhiva/pacs/",
        "statusUri": "https://localhost/zhiva/pacs/studies",
        "authType": "basicAuth",
        "login": "zhiva",
        "password": "35&Q39Nj&i@Eyk6P",
      },
    }"#;

    const MODEL: &str = r#"{
      "1d9508dd-9089-40c3-abdd-15f47120d682": {
        "uri": "http://lung_model_api:8011/segmentation",
        "task": "segmentation",
        "supports": ["/studies", "/studies/series"],
        "dataFilter": [{"dataKey": "series-one", "title": "One"}, {"dataKey": "series-two"}],
      }
    }"#;

    #[test]
    fn loads_the_docs_examples() {
        let dir = tmp("ok");
        write(&dir, SERVER, MODEL);
        let c = load(&dir).unwrap();
        let s = c.server(None).unwrap();
        assert_eq!(s.uri, "https://localhost/zhiva/pacs");
        assert_eq!(s.auth, AuthType::Basic);
        let m = &c.models["1d9508dd-9089-40c3-abdd-15f47120d682"];
        assert_eq!(m.supports, vec![Level::Study, Level::Series]);
        assert_eq!(m.data_filter.len(), 2);
        assert!(!format!("{s:?}").contains("Eyk6P"));
    }

    #[test]
    fn reports_every_problem_with_a_place() {
        let dir = tmp("bad");
        write(
            &dir,
            r#"{
  "not-a-uuid": {"uri": "https://x"},
  "b1407f18-575d-487c-bc0c-640c6da651bc": {"uri": "ftp://x", "authType": "basicAuth", "isDefault": true},
  "c1407f18-575d-487c-bc0c-640c6da651bc": {"uri": "http://y", "isDefault": true}
}"#,
            r#"{"1d9508dd-9089-40c3-abdd-15f47120d682": {"uri": "http://m", "task": "guess", "supports": ["/x"], "dataFilter": [{"title": "t"}]}}"#,
        );
        let problems = load(&dir).unwrap_err();
        let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
        let all = text.join("\n");
        for needle in [
            "servers.json:2:3: not-a-uuid: the key must be a UUID",
            "uri: `uri` must be an http",
            "login: `login` is required for basicAuth",
            "task: unknown task",
            "supports: unknown level",
            "needs a non-empty string `dataKey`",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in\n{all}");
        }
    }

    #[test]
    fn model_extensions() {
        let servers = r#"{"b1407f18-575d-487c-bc0c-640c6da651bc": {"uri": "http://a"}}"#;
        let ok = r#"{"1d9508dd-9089-40c3-abdd-15f47120d682": {"uri": "http://m", "task": "segmentation",
            "supports": ["/studies"], "payload": "multipart", "maxConcurrent": 2, "contentLength": true}}"#;
        let c = from_texts(Path::new("x"), servers, ok).unwrap();
        let m = &c.models["1d9508dd-9089-40c3-abdd-15f47120d682"];
        assert!(m.multipart && m.content_length);
        assert_eq!(m.max_concurrent, Some(2));
        let bad = r#"{"1d9508dd-9089-40c3-abdd-15f47120d682": {"uri": "http://m", "task": "segmentation",
            "supports": ["/studies"], "payload": "multipart", "dataFilter": [{"dataKey": "a"}],
            "maxConcurrent": 0, "contentLength": "yes"}}"#;
        let all: Vec<String> = from_texts(Path::new("x"), servers, bad)
            .unwrap_err()
            .iter()
            .map(|p| p.to_string())
            .collect();
        let all = all.join("\n");
        for needle in [
            "not available for models with a dataFilter",
            "`maxConcurrent` must be",
            "`contentLength` must be",
        ] {
            assert!(all.contains(needle), "{needle} missing in {all}");
        }
    }

    #[test]
    fn two_defaults_is_an_error() {
        let dir = tmp("two");
        write(
            &dir,
            r#"{"b1407f18-575d-487c-bc0c-640c6da651bc": {"uri": "http://a", "isDefault": true},
                "c1407f18-575d-487c-bc0c-640c6da651bc": {"uri": "http://b", "isDefault": true}}"#,
            "{}",
        );
        let p = load(&dir).unwrap_err();
        assert!(p[0].message.contains("keep it on exactly one"), "{p:?}");
    }

    #[test]
    fn syntax_error_has_line_and_column() {
        let dir = tmp("syntax");
        write(&dir, "{\n  \"a\": \n}", "{}");
        let p = load(&dir).unwrap_err();
        assert_eq!(p[0].at, Some((3, 1)));
    }

    #[test]
    fn redacts_userinfo() {
        assert_eq!(redact_uri("https://u:p@host/x@y"), "https://host/x@y");
        assert_eq!(redact_uri("http://host/a"), "http://host/a");
    }
}
