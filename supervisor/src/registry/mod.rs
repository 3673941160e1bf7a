//! Client of OCI distribution registries: supd's `[registry]` settings, the hosts directory
//! that maps a registry name to the endpoints serving it (mirrors first), authentication
//! (basic and bearer tokens), and the HTTP calls pull and push are made of.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::image::reference::Reference;

pub mod auth;
pub mod body;
pub mod client;
pub mod errors;
pub mod fetch;
pub mod hosts;
pub mod progress;
pub mod upload;

pub use client::Repository;

/// The `[registry]` section of supd's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct RegistryConfig {
    /// Directory of `<host>/hosts.toml` files (as containerd's `certs.d`).
    pub config_path: PathBuf,
    /// Layers of one pull downloaded at the same time.
    pub max_concurrent_downloads: usize,
    /// Blobs of one push uploaded at the same time.
    pub max_concurrent_uploads: usize,
    /// Seconds without a byte from the registry after which a transfer is given up.
    pub stall_timeout: u64,
    /// Blobs larger than this many bytes are uploaded in chunks of this size; smaller ones in
    /// one request.
    pub upload_chunk_size: u64,
    /// Credentials by registry host (`[registry."host:port"]`), used when a request brings
    /// none.
    #[serde(flatten, deserialize_with = "host_tables")]
    pub hosts: BTreeMap<String, HostCredentials>,
}

/// The `[registry."host"]` tables; any other unknown key is a mistake worth naming.
fn host_tables<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<BTreeMap<String, HostCredentials>, D::Error> {
    use serde::de::Error as _;
    let raw: BTreeMap<String, toml::Value> = BTreeMap::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| match v {
            toml::Value::Table(t) => t
                .try_into::<HostCredentials>()
                .map(|c| (k.clone(), c))
                .map_err(|e| D::Error::custom(format!("[registry.{k:?}]: {e}"))),
            _ => Err(D::Error::custom(format!(
                "unknown setting {k:?} (credentials go in [registry.\"host\"] tables)"
            ))),
        })
        .collect()
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            config_path: PathBuf::from("/etc/sup/certs.d"),
            max_concurrent_downloads: 3,
            max_concurrent_uploads: 3,
            stall_timeout: 60,
            upload_chunk_size: 32 << 20,
            hosts: BTreeMap::new(),
        }
    }
}

impl RegistryConfig {
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::invalid(format!("registry config: {m}")));
        if !self.config_path.is_absolute() {
            return bad(format!(
                "config_path {}: must be an absolute path",
                self.config_path.display()
            ));
        }
        if !(1..=64).contains(&self.max_concurrent_downloads) {
            return bad("max_concurrent_downloads: must be 1 to 64".into());
        }
        if !(1..=64).contains(&self.max_concurrent_uploads) {
            return bad("max_concurrent_uploads: must be 1 to 64".into());
        }
        if !(1..=86_400).contains(&self.stall_timeout) {
            return bad("stall_timeout: must be 1 to 86400 seconds".into());
        }
        if self.upload_chunk_size < (64 << 10) {
            return bad("upload_chunk_size: must be at least 65536 bytes".into());
        }
        for host in self.hosts.keys() {
            if host.is_empty() || host.contains('/') || host.contains(char::is_whitespace) {
                return bad(format!(
                    "{host:?}: not a registry host (\"host\" or \"host:port\")"
                ));
            }
        }
        Ok(())
    }

    pub fn stall(&self) -> Duration {
        Duration::from_secs(self.stall_timeout.max(1))
    }
}

/// `[registry."host"]`: who to be at that registry.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HostCredentials {
    pub username: String,
    pub password: String,
    /// A registry bearer token, sent as is instead of username and password.
    pub token: String,
}

// Secrets never reach a log line through Debug.
impl std::fmt::Debug for HostCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCredentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("token", &"<redacted>")
            .finish()
    }
}

/// Credentials for one registry, from a request or from the configuration.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    pub token: String,
}

impl Credentials {
    pub fn is_empty(&self) -> bool {
        self.username.is_empty() && self.password.is_empty() && self.token.is_empty()
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

impl From<&HostCredentials> for Credentials {
    fn from(h: &HostCredentials) -> Self {
        Credentials {
            username: h.username.clone(),
            password: h.password.clone(),
            token: h.token.clone(),
        }
    }
}

/// How a request asks to reach the registry.
#[derive(Debug, Clone, Default)]
pub struct Access {
    pub credentials: Option<Credentials>,
    /// Plain HTTP to endpoints whose scheme the hosts configuration does not fix.
    pub plain_http: bool,
    pub skip_verify: bool,
}

/// What a session with a repository may do; it sets the scope of bearer tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    Pull,
    Push,
}

/// TLS settings an HTTP client is built for; clients are shared between pulls.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct TlsKey {
    skip_verify: bool,
    ca: Vec<PathBuf>,
}

/// The registry side of supd: settings and HTTP clients.
pub struct Registry {
    config: RegistryConfig,
    clients: Mutex<HashMap<TlsKey, reqwest::Client>>,
}

impl Registry {
    pub fn new(config: RegistryConfig) -> Registry {
        Registry {
            config,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.config
    }

    /// Opens a session with the repository `reference` names, over the endpoints the hosts
    /// configuration gives its registry.
    pub fn repository(
        &self,
        reference: &Reference,
        access: &Access,
        intent: Intent,
    ) -> Result<Repository> {
        let endpoints = hosts::endpoints(
            &self.config.config_path,
            &reference.domain,
            access.plain_http,
            access.skip_verify,
        )?;
        let mut sessions = Vec::with_capacity(endpoints.len());
        for ep in endpoints {
            let client = self.client(ep.skip_verify, &ep.ca)?;
            let credentials = self.credentials_for(&ep.host, &reference.domain, access);
            sessions.push(client::Endpoint::new(ep, client, credentials));
        }
        Ok(Repository::new(
            reference.path.clone(),
            sessions,
            intent,
            self.config.stall(),
        ))
    }

    /// The request's credentials, else the configured ones of the endpoint's host, else
    /// those of the registry name (a mirror may have its own).
    fn credentials_for(&self, host: &str, domain: &str, access: &Access) -> Option<Credentials> {
        if let Some(c) = access.credentials.as_ref().filter(|c| !c.is_empty()) {
            return Some(c.clone());
        }
        self.config
            .hosts
            .get(host)
            .or_else(|| self.config.hosts.get(domain))
            .map(Credentials::from)
            .filter(|c| !c.is_empty())
    }

    fn client(&self, skip_verify: bool, ca: &[PathBuf]) -> Result<reqwest::Client> {
        let key = TlsKey {
            skip_verify,
            ca: ca.to_vec(),
        };
        let mut clients = self
            .clients
            .lock()
            .map_err(|_| Error::internal("registry client table poisoned"))?;
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(concat!("sup/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(self.config.stall().min(Duration::from_secs(30)))
            .pool_idle_timeout(Duration::from_secs(60))
            .danger_accept_invalid_certs(skip_verify);
        for path in ca {
            // A CA file named by the hosts configuration that cannot be used is the
            // configuration's fault, not the request's.
            let unusable = |e: String| {
                Error::precondition(format!("registry CA file {}: {e}", path.display()))
            };
            let pem = std::fs::read(path).map_err(|e| unusable(e.to_string()))?;
            let certs =
                reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| unusable(e.to_string()))?;
            if certs.is_empty() {
                return Err(Error::precondition(format!(
                    "registry CA file {}: holds no PEM certificate",
                    path.display()
                )));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let client = b
            .build()
            .map_err(|e| Error::internal(format!("building the registry HTTP client: {e}")))?;
        clients.insert(key, client.clone());
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_host_credentials() {
        let c: RegistryConfig = toml::from_str("").expect("empty");
        assert_eq!(c.max_concurrent_downloads, 3);
        assert_eq!(c.stall_timeout, 60);
        c.validate().expect("defaults are valid");
        let c: RegistryConfig = toml::from_str(
            "stall_timeout = 5\n[\"localhost:5000\"]\nusername = \"u\"\npassword = \"p\"\n",
        )
        .expect("parse");
        assert_eq!(c.stall_timeout, 5);
        assert_eq!(c.hosts["localhost:5000"].username, "u");
        assert!(!format!("{c:?}").contains("\"p\""));
        assert!(toml::from_str::<RegistryConfig>("[\"h\"]\nuser = \"u\"\n").is_err());
        let typo = toml::from_str::<RegistryConfig>("stall_timout = 5\n").expect_err("typo");
        assert!(
            typo.to_string()
                .contains("unknown setting \"stall_timout\""),
            "{typo}"
        );
        assert!(toml::from_str::<RegistryConfig>("stall_timeout = \"x\"\n").is_err());
    }
}
