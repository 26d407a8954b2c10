//! API keys: a file of SHA-256 digests, each with a label (who the audit trail
//! names) and, optionally, the models the key may run. The keys themselves are
//! never stored, so the file is no secret worth stealing.
//!
//! One key a line, `#` starts a comment:
//!
//! ```text
//! sha256:<64 hex digits>  <label>  [<model uuid>,<model uuid>...]
//! ```
//!
//! or a JSON array of `{"sha256": "<hex>", "label": "...", "models": [...]}`.

use std::path::Path;

use serde::Deserialize;

use crate::config::Problem;
use crate::ids::is_uuid;

/// The keys in force.
#[derive(Debug, Default)]
pub struct Keys {
    entries: Vec<Entry>,
}

/// One key: its digest, its label and what it may run.
#[derive(Debug, Clone)]
pub struct Entry {
    digest: [u8; 32],
    /// Who the key belongs to (never the key).
    pub label: String,
    /// The models it may run; `None`: every model.
    pub models: Option<Vec<String>>,
}

impl Keys {
    /// The entry of `key`, comparing digests without an early exit.
    pub fn find(&self, key: &str) -> Option<&Entry> {
        let d = digest(key);
        let mut found = None;
        for e in &self.entries {
            let diff = e
                .digest
                .iter()
                .zip(&d)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if diff == 0 {
                found = Some(e);
            }
        }
        found
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }
}

/// SHA-256 of a key.
pub fn digest(key: &str) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Reads and checks the key file at `path`; every problem is reported.
pub fn load(path: &Path) -> Result<Keys, Vec<Problem>> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        vec![problem(
            path,
            None,
            None,
            format!("cannot read the API key file ({e}); check --api-keys (ZHIVA_API_KEYS)"),
        )]
    })?;
    parse(path, &text)
}

/// Parses a key file's text (lines or JSON).
pub fn parse(path: &Path, text: &str) -> Result<Keys, Vec<Problem>> {
    let mut problems = Vec::new();
    let raw = if text.trim_start().starts_with('[') {
        json(path, text, &mut problems)
    } else {
        lines(text)
    };
    let mut entries: Vec<Entry> = Vec::new();
    for (at, key, r) in raw {
        match r {
            Ok(e) => {
                if entries.iter().any(|x| x.digest == e.digest) {
                    problems.push(problem(
                        path,
                        at,
                        key,
                        "the same key is listed twice".into(),
                    ));
                } else if entries.iter().any(|x| x.label == e.label) {
                    problems.push(problem(
                        path,
                        at,
                        key,
                        format!("label {:?} is used twice; give each key its own", e.label),
                    ));
                } else {
                    entries.push(e);
                }
            }
            Err(m) => problems.push(problem(path, at, key, m)),
        }
    }
    if problems.is_empty() {
        Ok(Keys { entries })
    } else {
        Err(problems)
    }
}

type Raw = (
    Option<(usize, usize)>,
    Option<String>,
    Result<Entry, String>,
);

fn lines(text: &str) -> Vec<Raw> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let content = line.split(" #").next().unwrap_or("");
        let content = content.trim();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let col = line.len() - line.trim_start().len() + 1;
        let fields: Vec<&str> = content.split_whitespace().collect();
        let entry = match fields.as_slice() {
            [d, label] => entry(d, label, None),
            [d, label, models] => entry(
                d,
                label,
                Some(models.split(',').map(str::to_string).collect()),
            ),
            _ => Err(
                "expected `sha256:<hex digest> <label> [<model uuid>,...]` (make the digest with `printf %s \"$KEY\" | sha256sum`)"
                    .into(),
            ),
        };
        out.push((Some((i + 1, col)), None, entry));
    }
    out
}

fn json(path: &Path, text: &str, problems: &mut Vec<Problem>) -> Vec<Raw> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        sha256: String,
        label: String,
        models: Option<Vec<String>>,
    }
    match serde_json::from_str::<Vec<Item>>(text) {
        Ok(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, it)| {
                (
                    None,
                    Some(format!("[{i}]")),
                    entry(&it.sha256, &it.label, it.models),
                )
            })
            .collect(),
        Err(e) => {
            problems.push(problem(
                path,
                Some((e.line(), e.column())),
                None,
                format!("not a JSON list of {{\"sha256\", \"label\", \"models\"?}} objects: {e}"),
            ));
            Vec::new()
        }
    }
}

fn entry(digest: &str, label: &str, models: Option<Vec<String>>) -> Result<Entry, String> {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let bytes = (hex.len() == 64)
        .then(|| {
            (0..32)
                .map(|i| u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok())
                .collect::<Option<Vec<u8>>>()
        })
        .flatten()
        .ok_or_else(|| {
            "the key's digest must be 64 hex digits of SHA-256 (`printf %s \"$KEY\" | sha256sum`), never the key itself".to_string()
        })?;
    let mut d = [0u8; 32];
    d.copy_from_slice(&bytes);
    let label_ok = !label.is_empty()
        && label.len() <= 64
        && label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
    if !label_ok {
        return Err(format!(
            "label {:?}: 1 to 64 letters, digits and . _ @ -",
            crate::ids::truncate(label)
        ));
    }
    let models = match models {
        Some(m) if m.iter().any(|x| x == "*") => None,
        Some(m) => {
            if let Some(bad) = m.iter().find(|x| !is_uuid(x)) {
                return Err(format!(
                    "model {:?} is not a UUID (a key in models.json, or * for all)",
                    crate::ids::truncate(bad)
                ));
            }
            Some(m.iter().map(|x| x.to_ascii_lowercase()).collect())
        }
        None => None,
    };
    Ok(Entry {
        digest: d,
        label: label.to_string(),
        models,
    })
}

fn problem(
    path: &Path,
    at: Option<(usize, usize)>,
    key: Option<String>,
    message: String,
) -> Problem {
    Problem {
        file: path.to_path_buf(),
        key,
        at,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(key: &str) -> String {
        digest(key).iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn lines_with_comments_and_blanks() {
        let m = "1d9508dd-9089-40c3-abdd-15f47120d682";
        let text = format!(
            "# model-proxy API keys\n\n   \nsha256:{}  ward-3   # the ward viewer\n\t# indented comment\nsha256:{} research {}\n",
            hex("k-one"),
            hex("k-two"),
            m.to_uppercase()
        );
        let keys = parse(Path::new("keys"), &text).unwrap();
        assert_eq!(keys.len(), 2);
        let one = keys.find("k-one").unwrap();
        assert_eq!((one.label.as_str(), one.models.is_none()), ("ward-3", true));
        assert_eq!(
            keys.find("k-two").unwrap().models,
            Some(vec![m.to_string()])
        );
        assert!(keys.find("k-three").is_none() && keys.find("").is_none());
    }

    #[test]
    fn json_form() {
        let text = format!(
            r#"[{{"sha256": "{}", "label": "pacs-bot", "models": ["*"]}}]"#,
            hex("k")
        );
        let keys = parse(Path::new("keys.json"), &text).unwrap();
        assert_eq!(keys.find("k").unwrap().label, "pacs-bot");
        let bad = parse(Path::new("keys.json"), r#"[{"sha256": "x", "lable": "y"}]"#).unwrap_err();
        assert_eq!(bad.len(), 1);
        assert!(bad[0].to_string().contains("lable"), "{}", bad[0]);
    }

    #[test]
    fn problems_name_the_line() {
        let text = format!(
            "sha256:{d} a\nmy-plain-secret-key label\nsha256:{d} b\nsha256:{e} a\nsha256:{f} c not-a-uuid\n",
            d = hex("1"),
            e = hex("2"),
            f = hex("3")
        );
        let p = parse(Path::new("/etc/mp/api-keys"), &text).unwrap_err();
        let shown: Vec<String> = p.iter().map(|p| p.to_string()).collect();
        assert_eq!(shown.len(), 4, "{shown:#?}");
        assert!(
            shown[0].starts_with("/etc/mp/api-keys:2:1: ") && shown[0].contains("never the key")
        );
        assert!(shown[1].starts_with("/etc/mp/api-keys:3:1: ") && shown[1].contains("twice"));
        assert!(shown[2].contains("label \"a\""));
        assert!(shown[3].contains("not a UUID"));
        // The plain key is not echoed back.
        assert!(!shown.iter().any(|s| s.contains("my-plain-secret-key")));
    }
}
