//! Inbound access control: who may make the proxy pull a study with its PACS
//! credentials and run a model on it.
//!
//! The proxy is a deputy holding the PACS's keys, so with `--inbound-auth` on,
//! every inference request must present a credential before anything is queued
//! or fetched: a zhiva access token (`jwt`), verified with the auth service's
//! public key and held to its own scope (study, PACS, origin), or an API key
//! (`keys`), held to its models. Each inference request, allowed or not, leaves
//! one line in the audit trail (`audit`), with the client's address that the
//! front passes on (`stamp`). A caller may hold a bounded number of
//! inferences at once.
//!
//! This is not `auth/`, which holds the proxy's own credentials for the PACS.

mod audit;
mod jwt;
mod keys;
mod stamp;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use crate::config::Config;
use crate::error::{Code, ProxyError};
use crate::routing::{InferenceRequest, Page};

pub use audit::{Outcome, Record, Target};
pub use jwt::{access as access_claims, parse_pem, rsa_spki};
pub use keys::parse as parse_keys;
pub use stamp::{client, stamp, HEADER};

/// Which credentials are accepted (`--inbound-auth`); none: anyone may ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Methods {
    /// zhiva access tokens as `Authorization: Bearer`.
    pub jwt: bool,
    /// API keys in the `api_key` header or as `Authorization: Bearer`.
    pub api_key: bool,
}

impl Methods {
    /// From `none`, `zhiva-jwt`, `api-key` or both, comma-separated.
    pub fn parse(s: &str) -> Result<Methods, String> {
        let mut m = Methods::default();
        for word in s.split(',').map(str::trim) {
            match word {
                "none" if s.trim() == "none" => {}
                "zhiva-jwt" => m.jwt = true,
                "api-key" => m.api_key = true,
                _ => {
                    return Err(format!(
                    "inbound auth must be none, zhiva-jwt, api-key or zhiva-jwt,api-key, not {s:?}"
                ))
                }
            }
        }
        Ok(m)
    }

    /// Whether any credential is asked for.
    pub fn on(self) -> bool {
        self.jwt || self.api_key
    }
}

/// The inbound access settings, from the command line.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// Accepted credentials.
    pub methods: Methods,
    /// PEM files with the auth service's public key(s).
    pub jwt_public_keys: Vec<PathBuf>,
    /// The API key file.
    pub api_keys: Option<PathBuf>,
    /// Where audit lines go; `None`: nowhere.
    pub audit: Option<Target>,
    /// `/status` and `/metrics` without a credential even when inbound auth is on.
    pub public_pages: bool,
    /// Inferences one caller may hold at once; 0: no limit.
    pub caller_concurrency: usize,
}

/// What a request presents, as the server read it.
#[derive(Debug, Clone, Default)]
pub struct Presented {
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The `api_key` header.
    pub api_key: Option<String>,
    /// The `Origin` header.
    pub origin: Option<String>,
    /// The client's address, or `-`.
    pub client: String,
}

/// Who is asking, once their credential checked out.
enum Who {
    Token(jwt::Token),
    Key(keys::Entry),
    /// Inbound auth is off.
    Anyone,
}

impl Who {
    fn auth(&self) -> &'static str {
        match self {
            Who::Token(_) => "zhiva-jwt",
            Who::Key(_) => "api-key",
            Who::Anyone => "none",
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            Who::Token(t) => Some(&t.caller),
            Who::Key(k) => Some(&k.label),
            Who::Anyone => None,
        }
    }
}

/// The inbound access state: keys (reloaded on SIGHUP), the audit writer and
/// the per-caller counts.
pub struct Access {
    settings: Settings,
    jwt_keys: RwLock<Arc<Vec<jwt::PublicKey>>>,
    api_keys: RwLock<Arc<keys::Keys>>,
    audit: audit::Audit,
    callers: Arc<Callers>,
}

impl Access {
    /// Reads the keys and opens the audit trail; any problem stops the start.
    pub fn load(settings: Settings) -> Result<Access, String> {
        let (jwt_keys, api_keys) = credentials(&settings)?;
        let audit = audit::Audit::open(settings.audit.clone())?;
        let m = settings.methods;
        if m.on() {
            let mut what = Vec::new();
            if m.jwt {
                let about: Vec<&str> = jwt_keys.iter().map(|k| k.about.as_str()).collect();
                what.push(format!("zhiva-jwt (keys: {})", about.join(", ")));
            }
            if m.api_key {
                what.push(format!("api-key ({} key(s))", api_keys.len()));
            }
            log::info!("inbound auth: {}", what.join(", "));
        }
        Ok(Access {
            callers: Arc::new(Callers {
                limit: settings.caller_concurrency,
                held: Mutex::new(HashMap::new()),
            }),
            settings,
            jwt_keys: RwLock::new(Arc::new(jwt_keys)),
            api_keys: RwLock::new(Arc::new(api_keys)),
            audit,
        })
    }

    /// No inbound auth, no audit (for tests).
    #[cfg(test)]
    pub fn off() -> Access {
        Access::load(Settings::default()).expect("nothing to load")
    }

    /// SIGHUP: reads the keys again (a bad file keeps the old keys) and reopens the audit file.
    pub fn reload(&self) {
        match credentials(&self.settings) {
            Ok((j, k)) => {
                if self.settings.methods.on() {
                    log::info!(
                        "inbound credentials reloaded: {} public key(s), {} API key(s)",
                        j.len(),
                        k.len()
                    );
                }
                *self.jwt_keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(j);
                *self.api_keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(k);
            }
            Err(e) => log::error!("{e}; the previous inbound credentials stay in force"),
        }
        self.audit.reopen();
    }

    /// Whether `page` may be served to what `p` presents.
    pub fn page(&self, page: Page, p: &Presented) -> Result<(), ProxyError> {
        let guarded = matches!(page, Page::Status | Page::Metrics);
        if !guarded || !self.settings.methods.on() || self.settings.public_pages {
            return Ok(());
        }
        let who = self.identify(p)?;
        origin_ok(&who, p)
    }

    /// Whether `p` may change the cache for any study on any model (`POST
    /// /prefetch`): a credential limited to no study, PACS or model.
    pub fn unscoped(&self, p: &Presented) -> Result<(), ProxyError> {
        let who = self.identify(p)?;
        origin_ok(&who, p)?;
        let limited = match &who {
            Who::Token(t) => t.study.is_some() || t.pacs.is_some(),
            Who::Key(k) => k.models.is_some(),
            Who::Anyone => false,
        };
        if limited {
            return Err(forbidden(
                "a prefetch list may name any study and model: it needs a credential without study, PACS or model limits; PUT each inference URL instead",
            ));
        }
        Ok(())
    }

    /// Checks an inference request before it is queued: its credential (401),
    /// its scope (403) and the caller's concurrency (429). Returns the audit
    /// record to finish when it is answered (when auditing is on) and, when
    /// admitted, the caller's turn, held until the inference ends.
    pub fn admit(
        &self,
        p: &Presented,
        method: &str,
        route: &InferenceRequest,
        config: &Config,
    ) -> (Option<Record>, Result<Option<Turn>, ProxyError>) {
        let server = route
            .server
            .clone()
            .unwrap_or_else(|| config.default_server.clone());
        let mut record = self.audit.on().then(|| Record {
            time: SystemTime::now(),
            caller: None,
            auth: None,
            client: p.client.clone(),
            method: method.to_string(),
            model: route.model.clone(),
            server: server.clone(),
            study: route.study.clone(),
            series: route.series.clone(),
            instance: route.instance.clone(),
        });
        let who = match self.identify(p) {
            Ok(w) => w,
            Err(e) => return (record, Err(e)),
        };
        if let Some(r) = record.as_mut() {
            r.caller = who.name().map(str::to_string);
            r.auth = Some(who.auth());
        }
        let admitted = scope_ok(&who, p, route, &server, config).and_then(|()| {
            let key = match &who {
                Who::Token(t) => format!("jwt:{}", t.caller),
                Who::Key(k) => format!("key:{}", k.label),
                Who::Anyone => format!("addr:{}", p.client),
            };
            self.callers.take(key)
        });
        (record, admitted)
    }

    /// Writes the audit line of a finished request.
    pub fn audit(&self, r: &Record, o: &Outcome) {
        self.audit.write(r, o);
    }

    /// Whose credential `p` carries (401 when none or not a valid one).
    fn identify(&self, p: &Presented) -> Result<Who, ProxyError> {
        let m = self.settings.methods;
        if !m.on() {
            return Ok(Who::Anyone);
        }
        let keys = self
            .api_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let key_header = p.api_key.as_deref().map(str::trim);
        if let Some(k) = key_header.filter(|k| m.api_key && !k.is_empty()) {
            return keys
                .find(k)
                .map(|e| Who::Key(e.clone()))
                .ok_or_else(|| invalid("the api_key is not one of this proxy's keys"));
        }
        let Some(bearer) = p.authorization.as_deref().and_then(bearer) else {
            return Err(missing(m, p.authorization.is_some()));
        };
        if let Some(e) = keys.find(bearer).filter(|_| m.api_key) {
            return Ok(Who::Key(e.clone()));
        }
        if !m.jwt {
            return Err(invalid(
                "the bearer credential is not one of this proxy's API keys",
            ));
        }
        let jwt_keys = self
            .jwt_keys
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        jwt::verify(bearer, &jwt_keys)
            .map(Who::Token)
            .map_err(|r| invalid(&r.describe()))
    }
}

/// The keys the settings name, read and checked (also for `check-config`).
pub fn credentials(s: &Settings) -> Result<(Vec<jwt::PublicKey>, keys::Keys), String> {
    let m = s.methods;
    let jwt_keys = if m.jwt {
        jwt::load_keys(&s.jwt_public_keys)?
    } else {
        Vec::new()
    };
    let api_keys = match (&s.api_keys, m.api_key) {
        (Some(p), true) => keys::load(p).map_err(|problems| {
            let lines: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            format!(
                "{}\n{} problem(s) in the API key file",
                lines.join("\n"),
                problems.len()
            )
        })?,
        (None, true) => {
            return Err("--inbound-auth api-key needs the key file: --api-keys FILE".into())
        }
        _ => keys::Keys::default(),
    };
    Ok((jwt_keys, api_keys))
}

/// The token of `Authorization: Bearer <token>`.
fn bearer(header: &str) -> Option<&str> {
    let h = header.trim();
    let (scheme, rest) = h.split_once(' ')?;
    let token = rest.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// The challenge sent with a 401 (RFC 6750).
const CHALLENGE: &str = "Bearer realm=\"model-proxy\"";

fn missing(m: Methods, other_scheme: bool) -> ProxyError {
    let what = match (m.jwt, m.api_key) {
        (true, true) => {
            "`Authorization: Bearer <zhiva access token>`, or an API key in the `api_key` header"
        }
        (true, false) => "`Authorization: Bearer <zhiva access token>`",
        _ => "an API key in the `api_key` header (or as `Authorization: Bearer <key>`)",
    };
    let why = if other_scheme {
        "only Bearer credentials are accepted"
    } else {
        "this proxy needs a credential"
    };
    ProxyError::new(Code::Unauthorized, format!("{why}: send {what}"))
        .with_header("WWW-Authenticate", CHALLENGE)
}

fn invalid(why: &str) -> ProxyError {
    ProxyError::new(Code::InvalidCredential, why.to_string()).with_header(
        "WWW-Authenticate",
        format!("{CHALLENGE}, error=\"invalid_token\""),
    )
}

fn forbidden(why: impl Into<String>) -> ProxyError {
    ProxyError::new(Code::Forbidden, why)
}

/// The auth service's `aud` rule: a token with `aud` is good only from that `Origin`.
fn origin_ok(who: &Who, p: &Presented) -> Result<(), ProxyError> {
    match who {
        Who::Token(t) if !t.aud.is_empty() => {
            if p.origin.as_ref().is_some_and(|o| t.aud.contains(o)) {
                Ok(())
            } else {
                Err(forbidden(
                    "the token is bound to another origin (aud): send it from the page it was issued to",
                ))
            }
        }
        _ => Ok(()),
    }
}

/// What a valid credential may do: its origin, scope, study, PACS and models.
fn scope_ok(
    who: &Who,
    p: &Presented,
    route: &InferenceRequest,
    server: &str,
    config: &Config,
) -> Result<(), ProxyError> {
    origin_ok(who, p)?;
    match who {
        Who::Token(t) => {
            if t.scope
                .as_ref()
                .is_some_and(|s| !s.iter().any(|x| x == "read:models"))
            {
                return Err(forbidden("the token's scope does not include read:models"));
            }
            if t.study.as_ref().is_some_and(|s| *s != route.study) {
                return Err(forbidden(
                    "the token is limited to another study (studyUID)",
                ));
            }
            if let Some(pacs) = &t.pacs {
                let uri = config.servers.get(server).map(|s| s.uri.as_str());
                let same = pacs.eq_ignore_ascii_case(server)
                    || uri.is_some_and(|u| pacs.trim_end_matches('/') == u);
                if !same {
                    return Err(forbidden(
                        "the token is limited to another PACS (pacs); choose that server with ?server=",
                    ));
                }
            }
            Ok(())
        }
        Who::Key(k) => match &k.models {
            Some(models) if !models.contains(&route.model) => Err(forbidden(format!(
                "API key {:?} may not run model {}",
                k.label, route.model
            ))),
            _ => Ok(()),
        },
        Who::Anyone => Ok(()),
    }
}

/// How many inferences each caller holds.
struct Callers {
    limit: usize,
    held: Mutex<HashMap<String, usize>>,
}

impl Callers {
    /// A turn for `key`, or 429 when it already holds `limit`.
    fn take(self: &Arc<Self>, key: String) -> Result<Option<Turn>, ProxyError> {
        if self.limit == 0 {
            return Ok(None);
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(key.clone()).or_insert(0);
        if *n >= self.limit {
            return Err(ProxyError::new(
                Code::CallerBusy,
                format!(
                    "this caller already has {} inference(s) running, the most one caller may; retry when one ends",
                    self.limit
                ),
            )
            .with_header("Retry-After", "5"));
        }
        *n += 1;
        Ok(Some(Turn {
            callers: self.clone(),
            key,
        }))
    }
}

/// One of a caller's inferences, counted until it is dropped.
pub struct Turn {
    callers: Arc<Callers>,
    key: String,
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut held = self.callers.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Task;

    fn route(study: &str, model: &str) -> InferenceRequest {
        InferenceRequest {
            task: Task::Segmentation,
            model: model.into(),
            study: study.into(),
            series: None,
            instance: None,
            server: Some("b1407f18-575d-487c-bc0c-640c6da651bc".into()),
            data_filters: vec![],
            has_body: false,
        }
    }

    fn config() -> Config {
        crate::config::from_texts(
            std::path::Path::new("c"),
            r#"{"b1407f18-575d-487c-bc0c-640c6da651bc": {"uri": "https://pacs.local/dicom-web"}}"#,
            "{}",
        )
        .unwrap()
    }

    fn token(study: Option<&str>, pacs: Option<&str>, aud: &[&str]) -> Who {
        Who::Token(jwt::Token {
            caller: "alice".into(),
            study: study.map(Into::into),
            pacs: pacs.map(Into::into),
            aud: aud.iter().map(|s| s.to_string()).collect(),
            scope: None,
        })
    }

    #[test]
    fn methods() {
        assert_eq!(Methods::parse("none").unwrap(), Methods::default());
        let both = Methods::parse("zhiva-jwt, api-key").unwrap();
        assert!(both.jwt && both.api_key);
        assert!(Methods::parse("none,api-key").is_err());
        assert!(Methods::parse("jwt").is_err());
    }

    #[test]
    fn bearer_scheme() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer   abc "), Some("abc"));
        assert_eq!(bearer("Basic YTpi"), None);
        assert_eq!(bearer("Bearer "), None);
        assert_eq!(bearer("abc"), None);
    }

    #[test]
    fn token_scope() {
        let c = config();
        let s = "b1407f18-575d-487c-bc0c-640c6da651bc";
        let p = Presented {
            origin: Some("https://viewer.zhiva.ai".into()),
            ..Presented::default()
        };
        let r = route("1.2.3", "m");
        let code = |w: &Who, p: &Presented| scope_ok(w, p, &r, s, &c).err().map(|e| e.code);
        assert_eq!(code(&token(Some("1.2.3"), None, &[]), &p), None);
        assert_eq!(
            code(&token(Some("1.2.4"), None, &[]), &p),
            Some(Code::Forbidden)
        );
        assert_eq!(code(&token(None, Some(s), &[]), &p), None);
        assert_eq!(
            code(&token(None, Some("https://pacs.local/dicom-web/"), &[]), &p),
            None
        );
        assert_eq!(
            code(&token(None, Some("https://other/dicom-web"), &[]), &p),
            Some(Code::Forbidden)
        );
        assert_eq!(
            code(&token(None, None, &["https://viewer.zhiva.ai"]), &p),
            None
        );
        assert_eq!(
            code(&token(None, None, &["https://evil.example"]), &p),
            Some(Code::Forbidden)
        );
        let no_origin = Presented::default();
        assert_eq!(
            code(&token(None, None, &["https://viewer.zhiva.ai"]), &no_origin),
            Some(Code::Forbidden)
        );
        let scoped = Who::Token(jwt::Token {
            caller: "x".into(),
            study: None,
            pacs: None,
            aud: vec![],
            scope: Some(vec!["write:models".into()]),
        });
        assert_eq!(code(&scoped, &p), Some(Code::Forbidden));
    }

    #[test]
    fn callers_are_counted_until_their_turn_ends() {
        let callers = Arc::new(Callers {
            limit: 2,
            held: Mutex::new(HashMap::new()),
        });
        let a = callers.take("a".into()).unwrap();
        let b = callers.take("a".into()).unwrap();
        let e = callers.take("a".into()).err().unwrap();
        assert_eq!(e.code, Code::CallerBusy);
        assert!(e.headers.iter().any(|(k, _)| *k == "Retry-After"));
        assert!(
            callers.take("b".into()).is_ok(),
            "other callers are not held up"
        );
        drop(a);
        assert!(callers.take("a".into()).unwrap().is_some());
        drop(b);
        assert!(callers.held.lock().unwrap().get("b").is_none());
    }
}
