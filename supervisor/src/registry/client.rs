//! The distribution API calls for one repository, over the endpoints that serve its registry:
//! the session (authentication on a 401, then once more), manifests by tag or digest, and
//! blobs streamed from an offset; the push side is in `upload`. Errors carry the kind a
//! caller can act on and the registry's own words.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use reqwest::header::{HeaderMap, ACCEPT, CONTENT_TYPE, WWW_AUTHENTICATE};
use reqwest::{StatusCode, Url};

use crate::content::digest;
use crate::error::{printable, Error, Result};
use crate::image::oci::{self, MAX_DOCUMENT};

use super::auth::{self, Authorization};
use super::body::read_limited;
use super::errors::{combine, describe, registry_message};
use super::hosts::HostEndpoint;
use super::progress::Activity;
use super::{Credentials, Intent};

/// What a manifest GET accepts: indexes and manifests, OCI's and Docker's.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";
pub(super) const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
/// Most bytes of an error answer read for its message.
const MAX_ERROR_BODY: usize = 64 << 10;

/// One endpoint with its HTTP client, credentials and current authorization.
pub struct Endpoint {
    pub info: HostEndpoint,
    client: reqwest::Client,
    credentials: Option<Credentials>,
    auth: Mutex<Option<Authorization>>,
}

impl Endpoint {
    pub(super) fn new(
        info: HostEndpoint,
        client: reqwest::Client,
        credentials: Option<Credentials>,
    ) -> Endpoint {
        // A token given as the credential is the authorization itself.
        let auth = credentials
            .as_ref()
            .filter(|c| !c.token.is_empty())
            .map(|c| Authorization::Bearer(c.token.clone()));
        Endpoint {
            info,
            client,
            credentials,
            auth: Mutex::new(auth),
        }
    }

    fn current_auth(&self) -> Option<Authorization> {
        self.auth.lock().ok().and_then(|a| a.clone())
    }

    fn set_auth(&self, a: Authorization) {
        if let Ok(mut cur) = self.auth.lock() {
            *cur = Some(a);
        }
    }
}

/// A manifest or index as the registry served it.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub media_type: String,
    pub digest: String,
    pub data: Vec<u8>,
}

/// A blob being received.
pub struct BlobStream {
    resp: reqwest::Response,
    /// The answer starts at the offset asked for (206), not at 0.
    pub partial: bool,
    stall: Duration,
}

impl BlobStream {
    /// The next bytes, None at the end; an error after `stall` without data.
    pub async fn next(&mut self) -> Result<Option<Bytes>> {
        match tokio::time::timeout(self.stall, self.resp.chunk()).await {
            Err(_) => Err(Error::Unavailable(format!(
                "no data from the registry for {} s: transfer stalled",
                self.stall.as_secs()
            ))),
            Ok(Err(e)) => Err(Error::Unavailable(format!(
                "receiving from the registry: {}",
                describe(&e)
            ))),
            Ok(Ok(c)) => Ok(c),
        }
    }
}

/// A session with one repository.
pub struct Repository {
    name: String,
    pub(super) endpoints: Vec<Endpoint>,
    intent: Intent,
    stall: Duration,
    /// The endpoint that served the last manifest: blobs are asked from it first.
    preferred: AtomicUsize,
}

impl Repository {
    pub(super) fn new(
        name: String,
        endpoints: Vec<Endpoint>,
        intent: Intent,
        stall: Duration,
    ) -> Repository {
        Repository {
            name,
            endpoints,
            intent,
            stall,
            preferred: AtomicUsize::new(0),
        }
    }

    pub fn stall(&self) -> Duration {
        self.stall
    }

    pub(super) fn url(&self, ep: &Endpoint, tail: &str) -> Url {
        let mut u = ep.info.base.clone();
        let path = format!("{}/{}/{tail}", ep.info.base.path(), self.name);
        u.set_path(&path);
        u
    }

    fn scope(&self) -> String {
        match self.intent {
            Intent::Pull => format!("repository:{}:pull", self.name),
            Intent::Push => format!("repository:{}:pull,push", self.name),
        }
    }

    /// Sends the request `build` makes, authenticating and sending again after a 401.
    pub(super) async fn send(
        &self,
        ep: &Endpoint,
        url: &Url,
        build: &(dyn Fn(&reqwest::Client, Url) -> reqwest::RequestBuilder + Sync),
    ) -> Result<reqwest::Response> {
        self.send_watched(ep, url, build, None).await
    }

    /// `send` for a request whose body takes a while: it is given up only when `activity`
    /// (touched as the body is read) stays still for the stall timeout.
    pub(super) async fn send_watched(
        &self,
        ep: &Endpoint,
        url: &Url,
        build: &(dyn Fn(&reqwest::Client, Url) -> reqwest::RequestBuilder + Sync),
        activity: Option<&Activity>,
    ) -> Result<reqwest::Response> {
        // Credentials go only to the endpoint's own host, not wherever a Location points.
        let own_host = url.host_str() == ep.info.base.host_str()
            && url.port_or_known_default() == ep.info.base.port_or_known_default();
        let mut retried = false;
        let mut tries = 0;
        loop {
            tries += 1;
            let mut req = build(&ep.client, url.clone());
            let sent_with = ep.current_auth();
            if own_host {
                if let Some(a) = &sent_with {
                    req = a.apply(req);
                }
            }
            let answer = match activity {
                None => tokio::time::timeout(self.stall, req.send()).await,
                Some(a) => a.watch(self.stall, req.send()).await,
            };
            let resp = match answer {
                Err(_) => {
                    return Err(Error::Unavailable(format!(
                        "{}: no answer within {} s",
                        ep.info.host,
                        self.stall.as_secs()
                    )))
                }
                Ok(Err(e)) => {
                    return Err(Error::Unavailable(format!(
                        "{}: {}",
                        ep.info.host,
                        describe(&e)
                    )))
                }
                Ok(Ok(r)) => r,
            };
            if resp.status() == StatusCode::UNAUTHORIZED && own_host && tries < 4 {
                // A concurrent request authenticated meanwhile: try what it got first.
                if ep.current_auth() != sent_with {
                    continue;
                }
                if !retried {
                    retried = true;
                    if self.authorize(ep, resp.headers()).await? {
                        continue;
                    }
                }
            }
            return Ok(resp);
        }
    }

    /// Picks up a challenge: true when there is something new to try.
    async fn authorize(&self, ep: &Endpoint, headers: &HeaderMap) -> Result<bool> {
        let challenges = auth::parse_challenges(
            headers
                .get_all(WWW_AUTHENTICATE)
                .iter()
                .filter_map(|v| v.to_str().ok()),
        );
        let creds = ep.credentials.as_ref();
        let has_login = creds.is_some_and(|c| !c.username.is_empty());
        if let Some(ch) = challenges.iter().find(|c| c.scheme == "bearer") {
            // A token given by the caller that the registry refuses is not replaced.
            if creds.is_some_and(|c| !c.token.is_empty()) && !has_login {
                return Ok(false);
            }
            let token = auth::fetch_token(
                &ep.client,
                ch,
                &[self.scope()],
                creds,
                &ep.info.host,
                self.stall,
            )
            .await?;
            ep.set_auth(Authorization::Bearer(token));
            return Ok(true);
        }
        if challenges.iter().any(|c| c.scheme == "basic") && has_login {
            let basic = creds.map(|c| Authorization::Basic {
                username: c.username.clone(),
                password: c.password.clone(),
            });
            if let Some(b) = basic {
                if ep.current_auth().as_ref() != Some(&b) {
                    ep.set_auth(b);
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    /// The error an unsuccessful answer stands for, with the registry's own message.
    pub(super) async fn status_error(&self, ep: &Endpoint, resp: reqwest::Response) -> Error {
        let status = resp.status();
        let body = read_limited(resp, MAX_ERROR_BODY, self.stall)
            .await
            .unwrap_or_default();
        let detail = registry_message(&body).unwrap_or_else(|| status.to_string());
        match status {
            StatusCode::UNAUTHORIZED => {
                let who = if ep.credentials.is_some() {
                    "the credentials were refused"
                } else {
                    "authentication required"
                };
                Error::PermissionDenied(format!("{who} ({detail})"))
            }
            StatusCode::FORBIDDEN => Error::PermissionDenied(format!("access denied ({detail})")),
            StatusCode::NOT_FOUND => Error::NotFound(detail),
            StatusCode::REQUEST_TIMEOUT | StatusCode::TOO_MANY_REQUESTS => {
                Error::Unavailable(format!("{detail} ({status})"))
            }
            s if s.is_server_error() => Error::Unavailable(format!("{detail} ({status})")),
            s if s.is_client_error() => Error::InvalidArgument(format!("{detail} ({status})")),
            _ => Error::Unavailable(format!("unexpected answer {status} ({detail})")),
        }
    }

    /// Endpoints able to do `able`, the preferred one first.
    fn candidates(&self, able: impl Fn(&HostEndpoint) -> bool) -> Vec<&Endpoint> {
        let first = self.preferred.load(Ordering::Relaxed);
        let mut out: Vec<&Endpoint> = Vec::new();
        if let Some(ep) = self.endpoints.get(first).filter(|e| able(&e.info)) {
            out.push(ep);
        }
        for (i, ep) in self.endpoints.iter().enumerate() {
            if i != first && able(&ep.info) {
                out.push(ep);
            }
        }
        out
    }

    pub(super) fn no_endpoint(&self, what: &str) -> Error {
        Error::precondition(format!(
            "no endpoint of this registry may {what} (see its hosts.toml capabilities)"
        ))
    }

    /// Fetches the manifest or index `reference` (a tag or a digest) names, trying the
    /// endpoints in order. The content is checked against a digest reference and against
    /// the digest the registry announces.
    pub async fn manifest(&self, reference: &str) -> Result<Fetched> {
        let by_digest = reference.contains(':');
        let eps: Vec<(usize, &Endpoint)> = self
            .endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| {
                if by_digest {
                    e.info.capabilities.pull || e.info.capabilities.resolve
                } else {
                    e.info.capabilities.resolve
                }
            })
            .collect();
        if eps.is_empty() {
            return Err(self.no_endpoint("resolve a tag"));
        }
        let mut errors = Vec::new();
        for (i, ep) in eps {
            match self.manifest_from(ep, reference, by_digest).await {
                Ok(f) => {
                    self.preferred.store(i, Ordering::Relaxed);
                    return Ok(f);
                }
                Err(e) => {
                    tracing::debug!(host = %ep.info.host, error = %e, "manifest fetch failed");
                    errors.push((ep.info.host.clone(), e));
                }
            }
        }
        Err(combine(errors))
    }

    async fn manifest_from(
        &self,
        ep: &Endpoint,
        reference: &str,
        by_digest: bool,
    ) -> Result<Fetched> {
        let url = self.url(ep, &format!("manifests/{reference}"));
        let build = |c: &reqwest::Client, u: Url| c.get(u).header(ACCEPT, MANIFEST_ACCEPT);
        let resp = self.send(ep, &url, &build).await?;
        if !resp.status().is_success() {
            return Err(self.status_error(ep, resp).await);
        }
        let announced = header_str(resp.headers(), DOCKER_CONTENT_DIGEST);
        let content_type = header_str(resp.headers(), CONTENT_TYPE.as_str())
            .map(|t| t.split(';').next().unwrap_or_default().trim().to_string())
            .unwrap_or_default();
        let data = read_limited(resp, MAX_DOCUMENT as usize, self.stall).await?;
        let actual = digest::of_bytes(&data);
        if by_digest && actual != reference {
            return Err(Error::DataLoss(format!(
                "the registry served content with digest {actual} for {reference}"
            )));
        }
        if let Some(a) = announced.filter(|a| a.starts_with("sha256:")) {
            if a != actual {
                return Err(Error::DataLoss(format!(
                    "the registry announced digest {} but served {actual}",
                    printable(&a)
                )));
            }
        }
        let media_type = if oci::is_index(&content_type) || oci::is_manifest(&content_type) {
            content_type
        } else {
            oci::sniff_media_type(&data).unwrap_or(content_type)
        };
        if !oci::is_index(&media_type) && !oci::is_manifest(&media_type) {
            return Err(Error::invalid(format!(
                "media type {:?} is not an OCI or Docker schema 2 manifest or index \
                 (schema 1 is not supported)",
                printable(&media_type)
            )));
        }
        Ok(Fetched {
            media_type,
            digest: actual,
            data,
        })
    }

    /// Opens blob `digest` from `offset` (asking for a range when past 0).
    pub async fn blob(&self, digest: &str, offset: u64) -> Result<BlobStream> {
        let eps = self.candidates(|e| e.capabilities.pull);
        if eps.is_empty() {
            return Err(self.no_endpoint("pull"));
        }
        let mut errors = Vec::new();
        for ep in eps {
            match self.blob_from(ep, digest, offset).await {
                Ok(s) => return Ok(s),
                Err(e) => errors.push((ep.info.host.clone(), e)),
            }
        }
        Err(combine(errors))
    }

    async fn blob_from(&self, ep: &Endpoint, digest: &str, offset: u64) -> Result<BlobStream> {
        let url = self.url(ep, &format!("blobs/{digest}"));
        let ranged = |c: &reqwest::Client, u: Url| {
            let r = c.get(u);
            if offset > 0 {
                r.header(reqwest::header::RANGE, format!("bytes={offset}-"))
            } else {
                r
            }
        };
        let mut resp = self.send(ep, &url, &ranged).await?;
        if resp.status() == StatusCode::RANGE_NOT_SATISFIABLE {
            let whole = |c: &reqwest::Client, u: Url| c.get(u);
            resp = self.send(ep, &url, &whole).await?;
        }
        let partial = resp.status() == StatusCode::PARTIAL_CONTENT;
        if partial {
            // The range must start where we are, or the bytes would land in the wrong place.
            let start = header_str(resp.headers(), "content-range")
                .and_then(|r| r.strip_prefix("bytes ").map(str::to_string))
                .and_then(|r| r.split('-').next().and_then(|s| s.parse::<u64>().ok()));
            if start != Some(offset) {
                return Err(Error::Unavailable(format!(
                    "blob {digest}: the registry answered a range request with another range"
                )));
            }
        } else if !resp.status().is_success() {
            return Err(self.status_error(ep, resp).await);
        }
        Ok(BlobStream {
            resp,
            partial,
            stall: self.stall,
        })
    }

    /// Fetches a small blob (a config) whole and checks it.
    pub async fn small_blob(&self, digest: &str, size: i64) -> Result<Vec<u8>> {
        let mut s = self.blob(digest, 0).await?;
        let mut data = Vec::new();
        while let Some(c) = s.next().await? {
            if data.len() + c.len() > MAX_DOCUMENT as usize || data.len() + c.len() > size as usize
            {
                return Err(Error::DataLoss(format!(
                    "blob {digest}: the registry sent more than the {size} bytes announced"
                )));
            }
            data.extend_from_slice(&c);
        }
        check_blob(digest, size, &data)?;
        Ok(data)
    }
}

/// Checks a whole blob against its descriptor.
pub fn check_blob(d: &str, size: i64, data: &[u8]) -> Result<()> {
    if data.len() as i64 != size {
        return Err(Error::DataLoss(format!(
            "blob {d}: received {} bytes, the descriptor says {size}",
            data.len()
        )));
    }
    let actual = digest::of_bytes(data);
    if actual != d {
        return Err(Error::DataLoss(format!(
            "blob {d}: received content has digest {actual}"
        )));
    }
    Ok(())
}

pub(super) fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}
