//! The hosts directory: which endpoints serve a registry name, in which order, with what TLS
//! settings. `<dir>/<host[:port]>/hosts.toml` (else `<dir>/_default/hosts.toml`) reads:
//!
//! ```toml
//! server = "https://registry-1.docker.io"   # the upstream; default https://<host>
//! capabilities = ["pull", "resolve", "push"] # of the server (this is the default)
//! skip_verify = false                        # of the server
//! ca = "/etc/sup/certs.d/ca.pem"             # of the server: a path or a list
//! mirror_only = false                        # true: never fall back to the server
//!
//! [host."http://127.0.0.1:5000"]             # mirrors, tried in the order written
//! capabilities = ["pull", "resolve"]         # the default for a mirror
//! skip_verify = true
//! ca = ["ca.pem"]                            # relative paths: from the hosts.toml's dir
//! override_path = false                      # true: the URL's path already ends in /v2
//! ```
//!
//! Without a file, a name is served by `https://<host>` alone (`http://` when a request asks
//! for plain HTTP).

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};

/// Where Docker Hub's API lives: the name `docker.io` is not a host that serves it.
const DOCKER_HUB_SERVER: &str = "https://registry-1.docker.io";

/// What an endpoint may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Capabilities {
    /// Fetch manifests and blobs by digest.
    pub pull: bool,
    /// Turn a tag into a digest.
    pub resolve: bool,
    pub push: bool,
}

impl Capabilities {
    const ALL: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: true,
    };
    const MIRROR: Capabilities = Capabilities {
        pull: true,
        resolve: true,
        push: false,
    };

    fn parse(list: &[String], file: &Path) -> Result<Capabilities> {
        let mut c = Capabilities::default();
        for item in list {
            match item.as_str() {
                "pull" => c.pull = true,
                "resolve" => c.resolve = true,
                "push" => c.push = true,
                other => {
                    return Err(Error::invalid(format!(
                        "{}: capability {other:?} is not one of pull, resolve, push",
                        file.display()
                    )))
                }
            }
        }
        Ok(c)
    }
}

/// One place that serves a registry name.
#[derive(Debug, Clone)]
pub struct HostEndpoint {
    /// The API root, ending in `/v2` (no trailing slash).
    pub base: reqwest::Url,
    /// `host[:port]` of `base`, for credentials and messages.
    pub host: String,
    pub capabilities: Capabilities,
    pub skip_verify: bool,
    pub ca: Vec<PathBuf>,
    pub mirror: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HostsFile {
    server: Option<String>,
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
    override_path: Option<bool>,
    #[serde(default)]
    mirror_only: bool,
    // Kept as a table so the order of the mirrors is the file's.
    #[serde(default)]
    host: toml::Table,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HostEntry {
    capabilities: Option<Vec<String>>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
    #[serde(default)]
    override_path: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn paths(self, dir: &Path) -> Vec<PathBuf> {
        let list = match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        list.into_iter().map(|p| dir.join(p)).collect()
    }
}

/// The endpoints for registry `domain`, in the order they are tried.
pub fn endpoints(
    config_dir: &Path,
    domain: &str,
    plain_http: bool,
    skip_verify: bool,
) -> Result<Vec<HostEndpoint>> {
    let Some(file) = hosts_file(config_dir, domain)? else {
        let server = default_server(domain, plain_http);
        return Ok(vec![endpoint(
            &server,
            false,
            plain_http,
            Capabilities::ALL,
            skip_verify,
            Vec::new(),
            false,
        )?]);
    };
    let text = std::fs::read_to_string(&file)
        .map_err(|e| Error::io(format!("reading {}", file.display()), e))?;
    parse(&text, &file, domain, plain_http, skip_verify)
}

/// `<dir>/<domain>/hosts.toml`, else `<dir>/_default/hosts.toml`, if either exists.
fn hosts_file(config_dir: &Path, domain: &str) -> Result<Option<PathBuf>> {
    // The domain comes from a validated reference, but it names a directory here.
    if domain.is_empty() || domain.contains('/') || domain == "." || domain == ".." {
        return Err(Error::invalid(format!(
            "registry {domain:?}: not a host name"
        )));
    }
    for dir in [domain, "_default"] {
        let f = config_dir.join(dir).join("hosts.toml");
        if f.is_file() {
            return Ok(Some(f));
        }
    }
    Ok(None)
}

fn default_server(domain: &str, plain_http: bool) -> String {
    if domain == crate::image::reference::DEFAULT_DOMAIN {
        DOCKER_HUB_SERVER.to_string()
    } else if plain_http {
        format!("http://{domain}")
    } else {
        format!("https://{domain}")
    }
}

/// Parses a hosts.toml found at `file` for registry `domain`.
pub fn parse(
    text: &str,
    file: &Path,
    domain: &str,
    plain_http: bool,
    skip_verify: bool,
) -> Result<Vec<HostEndpoint>> {
    let bad = |e: String| Error::invalid(format!("{}: {e}", file.display()));
    let dir = file.parent().unwrap_or(Path::new("/"));
    let parsed: HostsFile = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for (url, value) in parsed.host {
        let entry: HostEntry = value
            .try_into()
            .map_err(|e: toml::de::Error| bad(format!("host {url:?}: {e}")))?;
        let caps = match &entry.capabilities {
            Some(list) => Capabilities::parse(list, file)?,
            None => Capabilities::MIRROR,
        };
        out.push(endpoint(
            &url,
            entry.override_path,
            plain_http,
            caps,
            skip_verify || entry.skip_verify.unwrap_or(false),
            entry.ca.map(|c| c.paths(dir)).unwrap_or_default(),
            true,
        )?);
    }
    if !parsed.mirror_only {
        let server = parsed
            .server
            .unwrap_or_else(|| default_server(domain, plain_http));
        let caps = match &parsed.capabilities {
            Some(list) => Capabilities::parse(list, file)?,
            None => Capabilities::ALL,
        };
        out.push(endpoint(
            &server,
            parsed.override_path.unwrap_or(false),
            plain_http,
            caps,
            skip_verify || parsed.skip_verify.unwrap_or(false),
            parsed.ca.map(|c| c.paths(dir)).unwrap_or_default(),
            false,
        )?);
    } else if out.is_empty() {
        return Err(Error::precondition(format!(
            "{}: mirror_only is set but no [host] is listed",
            file.display()
        )));
    }
    Ok(out)
}

fn endpoint(
    url: &str,
    override_path: bool,
    plain_http: bool,
    capabilities: Capabilities,
    skip_verify: bool,
    ca: Vec<PathBuf>,
    mirror: bool,
) -> Result<HostEndpoint> {
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else if plain_http {
        format!("http://{url}")
    } else {
        format!("https://{url}")
    };
    let bad = |why: &str| Error::invalid(format!("registry endpoint {url:?}: {why}"));
    let mut base = reqwest::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
    if !matches!(base.scheme(), "http" | "https") {
        return Err(bad("the scheme must be http or https"));
    }
    if base.query().is_some() || base.fragment().is_some() || !base.username().is_empty() {
        return Err(bad("must not carry a query, a fragment or credentials"));
    }
    let host = match (base.host_str(), base.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (Some(h), None) => h.to_string(),
        (None, _) => return Err(bad("has no host")),
    };
    let mut path = base.path().trim_end_matches('/').to_string();
    if !override_path {
        path.push_str("/v2");
    }
    base.set_path(&path);
    Ok(HostEndpoint {
        base,
        host,
        capabilities,
        skip_verify,
        ca,
        mirror,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(text: &str) -> Result<Vec<HostEndpoint>> {
        parse(
            text,
            Path::new("/etc/sup/certs.d/docker.io/hosts.toml"),
            "docker.io",
            false,
            false,
        )
    }

    #[test]
    fn mirrors_come_first_in_file_order() {
        let eps = parse_str(
            r#"
server = "https://registry-1.docker.io"
[host."http://127.0.0.1:5001"]
capabilities = ["pull", "resolve"]
[host."mirror.example:443"]
skip_verify = true
ca = "ca.pem"
[host."http://a.example/prefix"]
"#,
        )
        .expect("parse");
        let bases: Vec<&str> = eps.iter().map(|e| e.base.as_str()).collect();
        assert_eq!(
            bases,
            [
                "http://127.0.0.1:5001/v2",
                "https://mirror.example/v2",
                "http://a.example/prefix/v2",
                "https://registry-1.docker.io/v2"
            ]
        );
        assert_eq!(eps[0].host, "127.0.0.1:5001");
        assert!(eps[1].skip_verify && !eps[0].skip_verify);
        assert_eq!(
            eps[1].ca,
            [PathBuf::from("/etc/sup/certs.d/docker.io/ca.pem")]
        );
        assert!(eps[0].mirror && !eps[3].mirror);
        assert!(!eps[0].capabilities.push && eps[3].capabilities.push);
    }

    #[test]
    fn mirror_only_drops_the_server() {
        let eps =
            parse_str("mirror_only = true\n[host.\"http://127.0.0.1:5001\"]\n").expect("parse");
        assert_eq!(eps.len(), 1);
        assert!(parse_str("mirror_only = true\n").is_err());
    }

    #[test]
    fn bad_files_are_refused() {
        assert!(parse_str("sever = \"x\"\n").is_err());
        assert!(parse_str("[host.\"ftp://x\"]\n").is_err());
        assert!(parse_str("[host.\"http://x\"]\ncapabilities = [\"fly\"]\n").is_err());
        assert!(parse_str("[host.\"http://x\"]\nclient = \"c\"\n").is_err());
    }

    #[test]
    fn default_endpoint_without_a_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let eps = endpoints(dir.path(), "localhost:5000", true, false).expect("endpoints");
        assert_eq!(eps[0].base.as_str(), "http://localhost:5000/v2");
        let eps = endpoints(dir.path(), "docker.io", false, false).expect("endpoints");
        assert_eq!(eps[0].base.as_str(), "https://registry-1.docker.io/v2");
        assert!(endpoints(dir.path(), "..", false, false).is_err());
    }
}
