//! What registry failures mean: the message of a distribution error body, a transport
//! error in words, and one error out of the failures of every endpoint tried.

use crate::error::{printable, Error};

/// The message of a distribution error body: `{"errors":[{"code":..,"message":..}]}`.
pub(super) fn registry_message(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let b: Body = serde_json::from_slice(body).ok()?;
    let parts: Vec<String> = b
        .errors
        .iter()
        .take(3)
        .map(|e| {
            if e.message.is_empty() {
                e.code.to_ascii_lowercase().replace('_', " ")
            } else {
                e.message.clone()
            }
        })
        .filter(|m| !m.is_empty())
        .collect();
    (!parts.is_empty()).then(|| printable(&parts.join("; ")))
}

/// A transport error in words: what failed and the innermost cause, without the URL.
pub fn describe(e: &reqwest::Error) -> String {
    let mut causes: Vec<String> = Vec::new();
    let mut src: Option<&dyn std::error::Error> = std::error::Error::source(e);
    while let Some(s) = src {
        let text = s.to_string();
        if !causes.iter().any(|c| c.contains(&text)) {
            causes.push(text);
        }
        src = s.source();
    }
    let what = if e.is_connect() {
        "cannot connect"
    } else if e.is_timeout() {
        "timed out"
    } else if e.is_body() || e.is_decode() {
        "the answer broke off"
    } else {
        "request failed"
    };
    match causes.last() {
        Some(c) => printable(&format!("{what}: {c}")),
        None => what.to_string(),
    }
}

/// One error for a call that failed on every endpoint: the most telling kind (a refusal or
/// a bad blob says more than an unreachable mirror), every endpoint's message.
pub(super) fn combine(mut errors: Vec<(String, Error)>) -> Error {
    if errors.len() == 1 {
        if let Some((_, e)) = errors.pop() {
            return e;
        }
    }
    let rank = |e: &Error| match e {
        Error::PermissionDenied(_) => 0,
        Error::DataLoss(_) => 1,
        Error::InvalidArgument(_) => 2,
        Error::NotFound(_) => 3,
        Error::FailedPrecondition(_) => 4,
        _ => 5,
    };
    let msg = errors
        .iter()
        .map(|(h, e)| format!("{h}: {e}"))
        .collect::<Vec<_>>()
        .join("; ");
    let best = errors.iter().map(|(_, e)| rank(e)).min().unwrap_or(5);
    let kind = errors.into_iter().map(|(_, e)| e).find(|e| rank(e) == best);
    match kind {
        Some(Error::PermissionDenied(_)) => Error::PermissionDenied(msg),
        Some(Error::DataLoss(_)) => Error::DataLoss(msg),
        Some(Error::InvalidArgument(_)) => Error::InvalidArgument(msg),
        Some(Error::NotFound(_)) => Error::NotFound(msg),
        Some(Error::FailedPrecondition(_)) => Error::FailedPrecondition(msg),
        _ => Error::Unavailable(msg),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_errors_are_read() {
        let body =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        assert_eq!(registry_message(body).as_deref(), Some("manifest unknown"));
        let body = br#"{"errors":[{"code":"NAME_UNKNOWN"}]}"#;
        assert_eq!(registry_message(body).as_deref(), Some("name unknown"));
        assert_eq!(registry_message(b"<html>"), None);
    }

    #[test]
    fn combined_errors_keep_the_most_telling_kind() {
        let e = combine(vec![
            ("mirror".into(), Error::Unavailable("cannot connect".into())),
            ("server".into(), Error::NotFound("manifest unknown".into())),
        ]);
        assert!(matches!(e, Error::NotFound(_)));
        assert_eq!(
            e.to_string(),
            "mirror: cannot connect; server: manifest unknown"
        );
    }
}
