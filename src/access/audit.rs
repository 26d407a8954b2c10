//! The audit trail: one JSON line per inference request, allowed or denied, to a
//! private file (mode 0600, appended, reopened on SIGHUP for logrotate) or to stderr.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::SystemTime;

use serde::Serialize;

/// Where audit lines go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Standard error, beside the log.
    Stderr,
    /// A file of their own.
    File(PathBuf),
}

/// The audit writer; off when there is no target.
pub struct Audit {
    target: Option<Target>,
    file: Mutex<Option<File>>,
}

/// What is known of an inference request when it arrives.
#[derive(Debug, Clone)]
pub struct Record {
    /// When it arrived.
    pub time: SystemTime,
    /// Who asked: the token's `username` (or `name`), the key's label; `None` when refused as unknown.
    pub caller: Option<String>,
    /// How the caller proved it: `zhiva-jwt`, `api-key`, `none` (inbound auth
    /// off); `None` when the credential was refused.
    pub auth: Option<&'static str>,
    /// The client's address.
    pub client: String,
    /// The HTTP method.
    pub method: String,
    /// The model UUID.
    pub model: String,
    /// The server UUID (the default one when the request names none).
    pub server: String,
    /// StudyInstanceUID.
    pub study: String,
    /// SeriesInstanceUID.
    pub series: Option<String>,
    /// SOPInstanceUID.
    pub instance: Option<String>,
}

/// How it ended.
#[derive(Debug, Clone, Copy)]
pub struct Outcome<'a> {
    /// The HTTP status answered.
    pub status: u16,
    /// The error code, or `ok`.
    pub code: &'a str,
    /// From arrival to the end of the answer.
    pub duration_ms: u128,
    /// DICOM instances sent to the model, when it got that far.
    pub instances: Option<u64>,
}

#[derive(Serialize)]
struct Line<'a> {
    time: String,
    caller: Option<&'a str>,
    auth: Option<&'a str>,
    client: &'a str,
    method: &'a str,
    model: &'a str,
    server: &'a str,
    study: &'a str,
    series: Option<&'a str>,
    instance: Option<&'a str>,
    status: u16,
    outcome: &'a str,
    duration_ms: u128,
    instances: Option<u64>,
}

/// The audit line for `r` ending with `o` (no newline).
pub fn line(r: &Record, o: &Outcome) -> String {
    let l = Line {
        time: millis(r.time),
        caller: r.caller.as_deref(),
        auth: r.auth,
        client: &r.client,
        method: &r.method,
        model: &r.model,
        server: &r.server,
        study: &r.study,
        series: r.series.as_deref(),
        instance: r.instance.as_deref(),
        status: o.status,
        outcome: o.code,
        duration_ms: o.duration_ms,
        instances: o.instances,
    };
    serde_json::to_string(&l).unwrap_or_default()
}

/// RFC 3339 UTC with milliseconds.
fn millis(t: SystemTime) -> String {
    let s = crate::time::rfc3339(t);
    let ms = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.subsec_millis())
        .unwrap_or(0);
    format!("{}.{ms:03}Z", s.trim_end_matches('Z'))
}

impl Audit {
    /// Opens the target (a file is created 0600 if missing).
    pub fn open(target: Option<Target>) -> Result<Audit, String> {
        let file = match &target {
            Some(Target::File(p)) => Some(open_file(p)?),
            _ => None,
        };
        Ok(Audit {
            target,
            file: Mutex::new(file),
        })
    }

    /// Whether lines are written at all.
    pub fn on(&self) -> bool {
        self.target.is_some()
    }

    /// Opens the file again (after logrotate moved it); on failure the old handle stays.
    pub fn reopen(&self) {
        let Some(Target::File(p)) = &self.target else {
            return;
        };
        match open_file(p) {
            Ok(f) => *self.file.lock().unwrap_or_else(|e| e.into_inner()) = Some(f),
            Err(e) => log::error!("{e}; audit lines still go to the previous file"),
        }
    }

    /// Writes one line.
    pub fn write(&self, r: &Record, o: &Outcome) {
        let mut text = line(r, o);
        text.push('\n');
        let written = match &self.target {
            None => Ok(()),
            Some(Target::Stderr) => std::io::stderr().lock().write_all(text.as_bytes()),
            Some(Target::File(_)) => {
                let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
                match f.as_mut() {
                    Some(f) => f.write_all(text.as_bytes()),
                    None => Ok(()),
                }
            }
        };
        if let Err(e) = written {
            log::error!(
                "cannot write the audit line for a request by {:?}: {e}",
                r.caller
            );
        }
    }
}

fn open_file(p: &PathBuf) -> Result<File, String> {
    let f = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(p)
        .map_err(|e| format!("cannot open the audit log {}: {e}", p.display()))?;
    // A file that existed with a wider mode is narrowed: the trail names people and studies.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("cannot make the audit log {} private: {e}", p.display()))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn one_json_line_with_escaped_fields() {
        let r = Record {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_795_392_003_042),
            caller: Some("eve\"\n{\"forged\":1}".into()),
            auth: Some("zhiva-jwt"),
            client: "10.0.0.7".into(),
            method: "GET".into(),
            model: "m".into(),
            server: "s".into(),
            study: "1.2".into(),
            series: None,
            instance: None,
        };
        let o = Outcome {
            status: 403,
            code: "forbidden",
            duration_ms: 3,
            instances: None,
        };
        let l = line(&r, &o);
        assert!(!l.contains('\n'));
        assert!(
            l.starts_with(r#"{"time":"2026-11-23T00:00:03.042Z","caller":"eve\"\n{\"forged\":1}""#),
            "{l}"
        );
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(
            (v["status"].as_u64(), v["outcome"].as_str()),
            (Some(403), Some("forbidden"))
        );
    }

    #[test]
    fn file_is_private_and_reopened() {
        let dir = std::env::temp_dir().join(format!("mp-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("audit.log");
        std::fs::write(&p, "").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let a = Audit::open(Some(Target::File(p.clone()))).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let r = Record {
            time: SystemTime::now(),
            caller: None,
            auth: None,
            client: "-".into(),
            method: "GET".into(),
            model: String::new(),
            server: String::new(),
            study: String::new(),
            series: None,
            instance: None,
        };
        let o = Outcome {
            status: 401,
            code: "unauthorized",
            duration_ms: 0,
            instances: None,
        };
        a.write(&r, &o);
        std::fs::rename(&p, dir.join("audit.log.1")).unwrap();
        a.reopen();
        a.write(&r, &o);
        let count = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .unwrap()
                .lines()
                .count()
        };
        assert_eq!((count("audit.log.1"), count("audit.log")), (1, 1));
    }
}
