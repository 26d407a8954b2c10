//! Identifiers and addresses: the checks every id from a request or a config file
//! passes before it is used, and how a URI is shown without its credentials.

use crate::error::{Code, ProxyError};

/// True for a hyphenated UUID (the only form the zhiva files use).
pub fn is_uuid(s: &str) -> bool {
    s.len() == 36 && uuid::Uuid::try_parse(s).is_ok()
}

/// A DICOM UID: 1-64 characters, digits and dots, no empty component.
pub fn is_dicom_uid(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.split('.')
            .all(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_digit()))
}

/// The 400 for a malformed DICOM UID.
pub fn invalid_uid(what: &str, s: &str) -> ProxyError {
    ProxyError::new(
        Code::InvalidUid,
        format!(
            "{what} UID {:?} is not a DICOM UID (digits and dots, no empty component, at most 64 characters)",
            truncate(s)
        ),
    )
}

/// Echoed input is cut short so an error body never grows with a hostile URL.
pub fn truncate(s: &str) -> String {
    s.chars().take(80).collect()
}

/// A WADO-RS path in words, for messages: "series 1.3 of study 1.2".
pub fn describe_path(path: &str) -> String {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["studies", st, "series", se, "instances", i] => {
            format!("instance {i} of series {se} of study {st}")
        }
        ["studies", st, "series", se] => format!("series {se} of study {st}"),
        ["studies", st] => format!("study {st}"),
        _ => path.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_rules() {
        assert!(is_dicom_uid("1.2.840.10008.5.1.4.1.1.2"));
        assert!(!is_dicom_uid(""));
        assert!(!is_dicom_uid(".1"));
        assert!(!is_dicom_uid("1."));
        assert!(!is_dicom_uid("1.a"));
        assert!(!is_dicom_uid(&"1".repeat(65)));
        assert!(is_dicom_uid(&"1".repeat(64)));
    }

    #[test]
    fn uuids() {
        assert!(is_uuid("1d9508dd-9089-40c3-abdd-15f47120d682"));
        assert!(!is_uuid("1d9508dd908940c3abdd15f47120d682"));
        assert!(!is_uuid("xyz"));
    }

    #[test]
    fn redacts_userinfo() {
        assert_eq!(redact_uri("https://u:p@host/x@y"), "https://host/x@y");
        assert_eq!(redact_uri("http://host/a"), "http://host/a");
    }
}
