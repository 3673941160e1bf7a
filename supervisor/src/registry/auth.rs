//! Registry authentication: the `WWW-Authenticate` challenges of a 401 answer, and the
//! bearer-token flow of Docker's token specification (ask the challenge's realm for a token
//! for a service and scope, with basic credentials if any; send it as `Authorization: Bearer`).

use std::time::Duration;

use serde::Deserialize;

use crate::error::{printable, Error, Result};

use super::Credentials;

/// Most bytes of a token server's answer read.
const MAX_TOKEN_RESPONSE: usize = 1 << 20;

/// One challenge of a `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased: "basic", "bearer".
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(key))
            .map(|(_, v)| v.as_str())
    }
}

/// What is sent in `Authorization`.
#[derive(Clone, PartialEq, Eq)]
pub enum Authorization {
    Basic { username: String, password: String },
    Bearer(String),
}

impl std::fmt::Debug for Authorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Authorization::Basic { username, .. } => write!(f, "Basic({username})"),
            Authorization::Bearer(_) => f.write_str("Bearer(..)"),
        }
    }
}

impl Authorization {
    pub fn apply(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Authorization::Basic { username, password } => req.basic_auth(username, Some(password)),
            Authorization::Bearer(t) => req.bearer_auth(t),
        }
    }
}

/// Parses the challenges of `WWW-Authenticate` header values: `scheme k=v, k="v", ...`,
/// possibly several challenges per value.
pub fn parse_challenges<'a>(values: impl IntoIterator<Item = &'a str>) -> Vec<Challenge> {
    let mut out = Vec::new();
    for value in values {
        let mut p = Parser {
            s: value.as_bytes(),
            i: 0,
        };
        let mut current: Option<Challenge> = None;
        loop {
            p.skip(|c| c == b' ' || c == b'\t' || c == b',');
            let Some(word) = p.token() else { break };
            p.skip(|c| c == b' ' || c == b'\t');
            if p.peek() == Some(b'=') {
                p.i += 1;
                p.skip(|c| c == b' ' || c == b'\t');
                let value = if p.peek() == Some(b'"') {
                    p.quoted()
                } else {
                    p.token().unwrap_or_default()
                };
                if let Some(c) = current.as_mut() {
                    c.params.push((word.to_ascii_lowercase(), value));
                }
            } else {
                if let Some(c) = current.take() {
                    out.push(c);
                }
                current = Some(Challenge {
                    scheme: word.to_ascii_lowercase(),
                    params: Vec::new(),
                });
            }
        }
        out.extend(current);
    }
    out
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn skip(&mut self, f: impl Fn(u8) -> bool) {
        while self.peek().is_some_and(&f) {
            self.i += 1;
        }
    }

    fn token(&mut self) -> Option<String> {
        let start = self.i;
        self.skip(|c| !matches!(c, b' ' | b'\t' | b',' | b'=' | b'"'));
        (self.i > start).then(|| String::from_utf8_lossy(&self.s[start..self.i]).into_owned())
    }

    fn quoted(&mut self) -> String {
        self.i += 1;
        let mut out = Vec::new();
        while let Some(c) = self.peek() {
            self.i += 1;
            match c {
                b'"' => break,
                b'\\' => {
                    if let Some(n) = self.peek() {
                        out.push(n);
                        self.i += 1;
                    }
                }
                other => out.push(other),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
}

/// Asks the realm of a bearer challenge for a token covering `scopes` (and the challenge's
/// own scope). `host` names the registry in messages.
pub async fn fetch_token(
    client: &reqwest::Client,
    challenge: &Challenge,
    scopes: &[String],
    credentials: Option<&Credentials>,
    host: &str,
    timeout: Duration,
) -> Result<String> {
    let realm = challenge.param("realm").ok_or_else(|| {
        Error::Unavailable(format!(
            "bearer challenge from {host} names no realm to ask for a token"
        ))
    })?;
    let mut url = reqwest::Url::parse(realm).map_err(|e| {
        Error::Unavailable(format!("token realm {:?} of {host}: {e}", printable(realm)))
    })?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::Unavailable(format!(
            "token realm {:?} of {host} is not an http(s) URL",
            printable(realm)
        )));
    }
    {
        let mut q = url.query_pairs_mut();
        if let Some(service) = challenge.param("service") {
            q.append_pair("service", service);
        }
        let mut all: Vec<&str> = scopes.iter().map(String::as_str).collect();
        if let Some(s) = challenge.param("scope") {
            all.extend(s.split(' ').filter(|s| !s.is_empty()));
        }
        all.sort_unstable();
        all.dedup();
        for s in all {
            q.append_pair("scope", s);
        }
    }
    let mut req = client.get(url.clone());
    if let Some(c) = credentials.filter(|c| !c.username.is_empty()) {
        req = req.basic_auth(&c.username, Some(&c.password));
    }
    let realm_host = url.host_str().unwrap_or_default().to_string();
    let send = tokio::time::timeout(timeout, req.send());
    let resp = match send.await {
        Err(_) => {
            return Err(Error::Unavailable(format!(
                "token server {realm_host}: no answer within {timeout:?}"
            )))
        }
        Ok(Err(e)) => {
            return Err(Error::Unavailable(format!(
                "token server {realm_host}: {}",
                super::errors::describe(&e)
            )))
        }
        Ok(Ok(r)) => r,
    };
    let status = resp.status();
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(Error::PermissionDenied(format!(
            "token server {realm_host} refused {} ({status})",
            if credentials.is_some() {
                "the credentials"
            } else {
                "anonymous access"
            }
        )));
    }
    if !status.is_success() {
        return Err(Error::Unavailable(format!(
            "token server {realm_host} answered {status}"
        )));
    }
    let body = super::body::read_limited(resp, MAX_TOKEN_RESPONSE, timeout)
        .await
        .map_err(|e| e.context(format!("token server {realm_host}")))?;
    let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
        Error::Unavailable(format!(
            "token server {realm_host}: not a token answer: {e}"
        ))
    })?;
    let token = if parsed.token.is_empty() {
        parsed.access_token
    } else {
        parsed.token
    };
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::Unavailable(format!(
            "token server {realm_host} gave no usable token"
        )));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_and_basic_challenges() {
        let c = parse_challenges([
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        ]);
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example/token"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));
        let c = parse_challenges([r#"Basic realm="Registry Realm", Bearer realm=x"#]);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("Registry Realm"));
        assert_eq!(c[1].param("realm"), Some("x"));
        let c = parse_challenges([r#"Bearer realm="a\"b""#, ""]);
        assert_eq!(c[0].param("realm"), Some("a\"b"));
        assert!(parse_challenges(["=,=\""]).is_empty());
    }
}
