//! The typed configuration: one PACS server, one model API, and their enumerations.

use std::fmt;

use crate::ids::redact_uri;

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
    /// `Origin` sent with every request of this server (auth service and PACS);
    /// without it, the `aud` of the server's tokens is used.
    pub origin: Option<String>,
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

/// One `dataFilter` entry: a named input the viewer's user assigns data to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataKey {
    /// The key the model expects in its body.
    pub key: String,
    /// Display title for the viewer.
    pub title: Option<String>,
    /// The instance filters nested under a series filter (one level deep).
    pub nested: Vec<DataKey>,
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
    /// Extension: `"cache": false` keeps this model's answers out of the inference cache.
    pub cache: bool,
}
