//! Reading a config file: the lenient text into a JSON object, each UUID-keyed
//! entry in turn, and each field with one uniform way of reporting what is wrong.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::{jsonc, Problem};
use crate::ids::is_uuid;

/// A parsed file with what is needed to point at places in it.
pub(super) struct Source {
    pub(super) path: PathBuf,
    text: String,
    root: Map<String, Value>,
}

impl Source {
    /// Parses `text` (comments and trailing commas allowed); `None` after reporting why not.
    pub(super) fn parse(path: &Path, text: &str, problems: &mut Vec<Problem>) -> Option<Source> {
        let strict = jsonc::to_strict(text);
        match serde_json::from_str::<Value>(&strict) {
            Ok(Value::Object(root)) => Some(Source {
                path: path.to_path_buf(),
                text: strict,
                root,
            }),
            Ok(_) => {
                problems.push(Problem::in_file(
                    path,
                    "the top level must be an object keyed by UUIDs, as in the zhiva docs",
                ));
                None
            }
            Err(e) => {
                problems.push(Problem {
                    at: Some((e.line(), e.column())),
                    ..Problem::in_file(path, format!("not valid JSON: {e}"))
                });
                None
            }
        }
    }

    /// True when the file defines no entry at all.
    pub(super) fn is_empty(&self) -> bool {
        self.root.is_empty()
    }

    /// Runs `parse` over every entry whose key is a UUID and whose value is an
    /// object; an entry with any problem is left out (its problems are reported).
    pub(super) fn entries<T>(
        &self,
        what: &str,
        problems: &mut Vec<Problem>,
        mut parse: impl FnMut(&mut Entry) -> Option<T>,
    ) -> BTreeMap<String, T> {
        let mut out = BTreeMap::new();
        for (key, value) in &self.root {
            if !is_uuid(key) {
                problems.push(self.problem(
                    Some(key),
                    None,
                    "the key must be a UUID such as 1d9508dd-9089-40c3-abdd-15f47120d682 (generate one with `uuidgen`)".into(),
                ));
                continue;
            }
            let Value::Object(obj) = value else {
                problems.push(self.problem(
                    Some(key),
                    None,
                    format!("each {what} must be an object"),
                ));
                continue;
            };
            let before = problems.len();
            let id = key.to_ascii_lowercase();
            let item = parse(&mut Entry {
                src: self,
                key,
                id: &id,
                obj,
                problems,
            });
            if problems.len() == before {
                if let Some(item) = item {
                    out.insert(id, item);
                }
            }
        }
        out
    }

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

/// One entry of a file, read field by field; every reader reports its own problems.
pub(super) struct Entry<'a> {
    src: &'a Source,
    key: &'a str,
    /// The entry's UUID, lower case.
    pub(super) id: &'a str,
    obj: &'a Map<String, Value>,
    problems: &'a mut Vec<Problem>,
}

impl Entry<'_> {
    /// Reports a problem with `field` of this entry.
    pub(super) fn fail(&mut self, field: &str, message: String) {
        let p = self.src.problem(Some(self.key), Some(field), message);
        self.problems.push(p);
    }

    /// The raw value of `field`, `None` when absent or null.
    pub(super) fn get(&self, field: &str) -> Option<&Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    /// An optional string field.
    pub(super) fn string(&mut self, field: &str) -> Option<String> {
        match self.get(field) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                self.fail(field, format!("`{field}` must be a string"));
                None
            }
        }
    }

    /// An `http://` or `https://` URL field, without a trailing slash.
    pub(super) fn url(&mut self, field: &str, required: bool) -> Option<String> {
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

    /// An optional boolean field; absent is `false`.
    pub(super) fn boolean(&mut self, field: &str) -> bool {
        match self.get(field) {
            None => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                self.fail(field, format!("`{field}` must be true or false"));
                false
            }
        }
    }

    /// An optional whole number of at least `min`.
    pub(super) fn count(&mut self, field: &str, min: u64) -> Option<usize> {
        let v = self.get(field)?;
        match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
            Some(n) if n as u64 >= min => Some(n),
            _ => {
                self.fail(
                    field,
                    format!("`{field}` must be a whole number of at least {min}"),
                );
                None
            }
        }
    }

    /// Reports `field` as required (`why` says when) if `value` is absent or empty.
    pub(super) fn require(&mut self, field: &str, value: &Option<String>, why: &str) {
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
