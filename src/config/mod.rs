//! `servers.json` and `models.json`: loading, validation, and the typed configuration.
//!
//! `fields` reads a lenient file entry by entry and field by field, reporting
//! each problem with its place; `servers` and `models` say what each file holds;
//! `schema` is what the rest of the proxy sees.

mod fields;
pub mod jsonc;
mod models;
mod schema;
mod servers;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use schema::{AuthType, DataKey, Level, Model, Server, Task};

use fields::Source;

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

impl Problem {
    /// A problem with the file as a whole.
    fn in_file(file: &Path, message: impl Into<String>) -> Problem {
        Problem {
            file: file.to_path_buf(),
            key: None,
            at: None,
            message: message.into(),
        }
    }
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
        std::fs::read_to_string(&path).map_err(|e| {
            Problem::in_file(
                &path,
                format!(
                    "cannot read the file ({e}); create it or point --config (ZHIVA_CONFIG_DIR) at the directory that holds it"
                ),
            )
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
    let servers = Source::parse(&servers_path, servers, &mut problems)
        .map(|f| servers::parse(&f, &mut problems))
        .unwrap_or_default();
    let models = Source::parse(&dir.join("models.json"), models, &mut problems)
        .map(|f| models::parse(&f, &mut problems))
        .unwrap_or_default();
    let default_server = servers::pick_default(&servers_path, &servers, &mut problems);
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
    fn nested_data_filters_one_level_deep() {
        let servers = r#"{"b1407f18-575d-487c-bc0c-640c6da651bc": {"uri": "http://a", "origin": "https://viewer.example"}}"#;
        let ok = r#"{"1d9508dd-9089-40c3-abdd-15f47120d682": {"uri": "http://m", "task": "segmentation",
            "supports": ["/studies"], "dataFilter": [
              {"dataKey": "series-one", "title": "One", "description": "d",
               "dataFilter": [{"dataKey": "instance-one"}, {"dataKey": "instance-nth"}]},
              {"dataKey": "series-two"}]}}"#;
        let c = from_texts(Path::new("x"), servers, ok).unwrap();
        let m = &c.models["1d9508dd-9089-40c3-abdd-15f47120d682"];
        assert_eq!(m.data_filter[0].nested.len(), 2);
        assert!(m.data_filter[1].nested.is_empty());
        assert_eq!(
            c.server(None).unwrap().origin.as_deref(),
            Some("https://viewer.example")
        );
        let bad = r#"{"1d9508dd-9089-40c3-abdd-15f47120d682": {"uri": "http://m", "task": "segmentation",
            "supports": ["/studies"], "dataFilter": [
              {"dataKey": "a", "dataFilter": [{"dataKey": "b", "dataFilter": [{"dataKey": "c"}]}, {"dataKey": "a"}]}]}}"#;
        let all: Vec<String> = from_texts(Path::new("x"), servers, bad)
            .unwrap_err()
            .iter()
            .map(|p| p.to_string())
            .collect();
        let all = all.join("\n");
        assert!(all.contains("nest one level only"), "{all}");
        assert!(all.contains("dataKey \"a\" appears twice"), "{all}");
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
}
