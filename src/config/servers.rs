//! `servers.json`: the PACS servers, their login settings, and the default one.

use std::collections::BTreeMap;
use std::path::Path;

use super::fields::{Entry, Source};
use super::schema::{AuthType, Server};
use super::Problem;

/// Every valid server of the file; problems are reported, not fatal here.
pub(super) fn parse(src: &Source, problems: &mut Vec<Problem>) -> BTreeMap<String, Server> {
    let out = src.entries("server", problems, server);
    if src.is_empty() {
        problems.push(Problem::in_file(
            &src.path,
            "no servers defined; add at least one DICOMweb server",
        ));
    }
    out
}

fn server(e: &mut Entry) -> Option<Server> {
    let uri = e.url("uri", true);
    let status_uri = e.url("statusUri", false);
    let is_default = e.boolean("isDefault");
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
    let origin = e.url("origin", false);
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
    Some(Server {
        id: e.id.to_string(),
        uri: uri?,
        is_default,
        status_uri,
        auth,
        login,
        password,
        auth_token,
        sign_in_server,
        sign_in_token_server,
        refresh_server,
        origin,
    })
}

/// The id of the default server: the one marked `isDefault`, or the only one.
pub(super) fn pick_default(
    path: &Path,
    servers: &BTreeMap<String, Server>,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    let defaults: Vec<&String> = servers
        .values()
        .filter(|s| s.is_default)
        .map(|s| &s.id)
        .collect();
    match (defaults.as_slice(), servers.len()) {
        ([one], _) => Some((*one).clone()),
        ([], 1) => servers.keys().next().cloned(),
        ([], 0) => None,
        ([], _) => {
            problems.push(Problem::in_file(
                path,
                "several servers and none has \"isDefault\": true; mark exactly one as the default",
            ));
            None
        }
        (many, _) => {
            let ids: Vec<&str> = many.iter().map(|s| s.as_str()).collect();
            problems.push(Problem::in_file(
                path,
                format!(
                    "{} servers have \"isDefault\": true ({}); keep it on exactly one",
                    ids.len(),
                    ids.join(", ")
                ),
            ));
            None
        }
    }
}
