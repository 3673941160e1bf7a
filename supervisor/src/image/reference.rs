//! Image references, parsed and normalized as Docker does.
//!
//! The grammar is the one of the distribution project's reference package:
//!
//! ```text
//! reference  := name [ ":" tag ] [ "@" digest ]
//! name       := [ domain "/" ] path-component [ "/" path-component ]*
//! domain     := host [ ":" port ]            host: DNS name, IPv4, or "[" IPv6 "]"
//! path-component := [a-z0-9]+ ( ( "." | "_" | "__" | "-"* ) [a-z0-9]+ )*
//! tag        := [A-Za-z0-9_] [A-Za-z0-9_.-]{0,127}
//! digest     := "sha256:" 64 hex | "sha384:" 96 hex | "sha512:" 128 hex   (lowercase hex)
//! ```
//!
//! Normalizing fills in what Docker users leave out: the `docker.io` registry, the `library/`
//! prefix of official images and the `latest` tag, so that `busybox` and
//! `docker.io/library/busybox:latest` name the same image everywhere in sup.

use std::fmt;
use std::str::FromStr;

use crate::error::{Error, Result};

/// The registry that names without a domain refer to.
pub const DEFAULT_DOMAIN: &str = "docker.io";
/// Docker Hub's legacy name; references using it are rewritten to [`DEFAULT_DOMAIN`].
const LEGACY_DEFAULT_DOMAIN: &str = "index.docker.io";
/// Where Docker Hub keeps its official images, which users name with one component.
const OFFICIAL_REPO_PREFIX: &str = "library/";
pub const DEFAULT_TAG: &str = "latest";
/// Limit on `domain/path`, as in the distribution project.
pub const NAME_MAX: usize = 255;
const TAG_MAX: usize = 128;
/// Longest well-formed reference: a full name, a tag and the longest digest, with separators.
/// Anything longer is rejected before it is echoed back in a message.
const REFERENCE_MAX: usize = NAME_MAX + 1 + TAG_MAX + 1 + "sha512:".len() + 128;

/// A normalized image reference: every part that Docker would fill in is filled in.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with its port if any: `docker.io`, `localhost:5000`, `[::1]:5000`.
    pub domain: String,
    /// Repository path inside the registry: `library/busybox`, `user/app`.
    pub path: String,
    pub tag: Option<String>,
    /// `algorithm:hex`, for example `sha256:` followed by 64 hex digits.
    pub digest: Option<String>,
}

impl Reference {
    /// `domain/path`: the repository, without tag or digest.
    pub fn name(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The repository as Docker shows it: without `docker.io/`, and without `library/` for
    /// official images.
    pub fn familiar_name(&self) -> String {
        if self.domain != DEFAULT_DOMAIN {
            return self.name();
        }
        match self.path.strip_prefix(OFFICIAL_REPO_PREFIX) {
            // `library/a/b` is not an official image; only one component after the prefix is.
            Some(rest) if !rest.contains('/') => rest.to_string(),
            _ => self.path.clone(),
        }
    }

    /// The whole reference as Docker shows it: `busybox:latest`, `user/app:1`,
    /// `localhost:5000/x:latest`.
    pub fn familiar(&self) -> String {
        let mut out = self.familiar_name();
        self.push_tag_and_digest(&mut out);
        out
    }

    fn push_tag_and_digest(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest);
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = self.name();
        self.push_tag_and_digest(&mut out);
        f.write_str(&out)
    }
}

impl FromStr for Reference {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        parse_normalized(s)
    }
}

/// Parses `s` and fills in Docker's defaults: the `docker.io` domain, the `library/` prefix
/// for one-component names on Docker Hub, and the `latest` tag when neither a tag nor a
/// digest is given.
pub fn parse_normalized(s: &str) -> Result<Reference> {
    let bad = |why: String| Error::invalid(format!("reference {}: {why}", shown(s)));

    if s.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    if s.len() > REFERENCE_MAX {
        return Err(bad(format!(
            "is {} bytes long, longer than any valid reference",
            s.len()
        )));
    }
    // Docker refuses these because a bare 64-hex string is how image IDs are written, and
    // guessing which one the user meant could run the wrong image.
    if s.len() == 64 && is_lower_hex(s) {
        return Err(bad(
            "a 64-character hexadecimal string looks like an image ID; name a repository".into(),
        ));
    }

    let (before_digest, digest) = match s.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (s, None),
    };
    // A tag's ':' comes after the last '/'; any ':' before it is the registry's port.
    let last_slash = before_digest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match before_digest[last_slash..].rfind(':') {
        Some(i) => (
            &before_digest[..last_slash + i],
            Some(&before_digest[last_slash + i + 1..]),
        ),
        None => (before_digest, None),
    };

    let (domain, path) = split_domain(name);
    if path.is_empty() {
        return Err(bad("repository name must not be empty".into()));
    }
    if path.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(bad("repository name must be lowercase".into()));
    }
    if let Some(domain) = domain {
        validate_domain(domain).map_err(bad)?;
    }
    for component in path.split('/') {
        validate_path_component(component).map_err(bad)?;
    }
    if let Some(tag) = tag {
        validate_tag(tag).map_err(bad)?;
    }
    if let Some(digest) = digest {
        validate_digest(digest).map_err(bad)?;
    }

    let domain = match domain {
        None | Some(LEGACY_DEFAULT_DOMAIN) => DEFAULT_DOMAIN,
        Some(d) => d,
    };
    let path = if domain == DEFAULT_DOMAIN && !path.contains('/') {
        format!("{OFFICIAL_REPO_PREFIX}{path}")
    } else {
        path.to_string()
    };
    let name_len = domain.len() + 1 + path.len();
    if name_len > NAME_MAX {
        return Err(bad(format!(
            "repository name \"{domain}/{path}\" is {name_len} characters long, more than {NAME_MAX}"
        )));
    }

    let tag = match (tag, digest) {
        (Some(t), _) => Some(t.to_string()),
        (None, None) => Some(DEFAULT_TAG.to_string()),
        // A digest pins the content already; inventing a tag would claim more than was said.
        (None, Some(_)) => None,
    };
    Ok(Reference {
        domain: domain.to_string(),
        path,
        tag,
        digest: digest.map(str::to_string),
    })
}

/// `parse_normalized(s)` written back in full: `busybox` becomes
/// `docker.io/library/busybox:latest`.
pub fn normalize(s: &str) -> Result<String> {
    parse_normalized(s).map(|r| r.to_string())
}

/// Splits `name` into its domain (if the first component is one) and the repository path.
/// Only a first component that looks like a host counts, so `user/app` stays on Docker Hub.
fn split_domain(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn validate_domain(domain: &str) -> std::result::Result<(), String> {
    let invalid = |why: &str| Err(format!("registry {domain:?} {why}"));
    let (host, port) = if let Some(rest) = domain.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return invalid("has an unclosed '['");
        };
        if addr.is_empty() || !addr.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return invalid("must hold an IPv6 address between '[' and ']'");
        }
        match after {
            "" => ("", None),
            _ => match after.strip_prefix(':') {
                Some(port) => ("", Some(port)),
                None => return invalid("must have only a port after ']'"),
            },
        }
    } else {
        match domain.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (domain, None),
        }
    };
    // `host` is empty only for a bracketed IPv6 address, already checked above.
    if !domain.starts_with('[') {
        if host.is_empty() {
            return invalid("must have a host name");
        }
        for label in host.split('.') {
            let bytes = label.as_bytes();
            let edges_ok = matches!(
                (bytes.first(), bytes.last()),
                (Some(a), Some(z)) if a.is_ascii_alphanumeric() && z.is_ascii_alphanumeric()
            );
            if !edges_ok
                || !bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
            {
                return invalid(
                    "must be a host name of letters, digits and '-' in dot-separated labels, \
                     each starting and ending with a letter or digit",
                );
            }
        }
    }
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return invalid("must have a numeric port after ':'");
        }
    }
    Ok(())
}

fn validate_path_component(component: &str) -> std::result::Result<(), String> {
    let invalid = || {
        Err(format!(
            "path component {component:?} must be lowercase letters and digits, separated by \
             one '.', one or two '_', or any number of '-'"
        ))
    };
    let bytes = component.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(a), Some(z)) if alnum(a) && alnum(z) => {}
        _ => return invalid(),
    }
    // Walk runs of separator characters between the alphanumeric runs.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(&bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(&bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = matches!(sep, "." | "_" | "__") || sep.bytes().all(|b| b == b'-');
        if !ok {
            return invalid();
        }
    }
    Ok(())
}

fn validate_tag(tag: &str) -> std::result::Result<(), String> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let ok = match tag.as_bytes().split_first() {
        Some((first, rest)) => {
            word(*first)
                && rest.iter().all(|&b| word(b) || b == b'.' || b == b'-')
                && tag.len() <= TAG_MAX
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag {tag:?} must be 1 to {TAG_MAX} letters, digits, '_', '.' or '-', \
             not starting with '.' or '-'"
        ))
    }
}

fn validate_digest(digest: &str) -> std::result::Result<(), String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!(
            "digest {digest:?} must be written algorithm:hex, as in sha256:<64 hex digits>"
        ));
    };
    let want = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => {
            return Err(format!(
                "digest {digest:?} uses unsupported algorithm {algorithm:?} \
                 (sha256, sha384 or sha512)"
            ))
        }
    };
    if hex.len() != want || !is_lower_hex(hex) {
        return Err(format!(
            "digest {digest:?} must have {want} lowercase hex digits after \"{algorithm}:\""
        ));
    }
    Ok(())
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Quotes input for a message, cut short so that a hostile megabyte is not echoed back.
fn shown(s: &str) -> String {
    const SHOW_MAX: usize = 300;
    if s.len() <= SHOW_MAX {
        return format!("{s:?}");
    }
    let mut end = SHOW_MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn norm(s: &str) -> String {
        normalize(s).unwrap()
    }

    fn reject(s: &str) -> String {
        match parse_normalized(s) {
            Err(Error::InvalidArgument(msg)) => msg,
            other => panic!("{s:?}: expected InvalidArgument, got {other:?}"),
        }
    }

    #[test]
    fn official_image_gets_domain_library_and_tag() {
        let r = parse_normalized("busybox").unwrap();
        assert_eq!(r.domain, "docker.io");
        assert_eq!(r.path, "library/busybox");
        assert_eq!(r.tag.as_deref(), Some("latest"));
        assert_eq!(r.digest, None);
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        assert_eq!(r.name(), "docker.io/library/busybox");
        assert_eq!(r.familiar(), "busybox:latest");
    }

    #[test]
    fn user_repository_stays_on_docker_hub() {
        assert_eq!(norm("user/app"), "docker.io/user/app:latest");
        let r = parse_normalized("user/app:1").unwrap();
        assert_eq!(r.familiar(), "user/app:1");
        assert_eq!(r.familiar_name(), "user/app");
    }

    #[test]
    fn docker_hub_spellings_are_one() {
        for s in [
            "busybox",
            "busybox:latest",
            "library/busybox",
            "docker.io/busybox",
            "docker.io/library/busybox:latest",
            "index.docker.io/busybox",
            "index.docker.io/library/busybox",
        ] {
            assert_eq!(norm(s), "docker.io/library/busybox:latest", "{s}");
        }
        // Only one component after `library/` makes an official image.
        let r = parse_normalized("library/a/b").unwrap();
        assert_eq!(r.familiar(), "library/a/b:latest");
    }

    #[test]
    fn registries_with_hosts_and_ports() {
        let r = parse_normalized("localhost:5000/x").unwrap();
        assert_eq!(r.domain, "localhost:5000");
        assert_eq!(r.path, "x");
        assert_eq!(r.to_string(), "localhost:5000/x:latest");
        assert_eq!(r.familiar(), "localhost:5000/x:latest");

        let r = parse_normalized("registry.example.com/a/b:1.2").unwrap();
        assert_eq!(r.domain, "registry.example.com");
        assert_eq!(r.path, "a/b");
        assert_eq!(r.tag.as_deref(), Some("1.2"));
        assert_eq!(r.familiar(), "registry.example.com/a/b:1.2");

        assert_eq!(norm("localhost/x"), "localhost/x:latest");
        assert_eq!(norm("[::1]:5000/x"), "[::1]:5000/x:latest");
        assert_eq!(norm("[fe80::1]/x"), "[fe80::1]/x:latest");
        // Uppercase is fine in a host name, and kept as written.
        assert_eq!(
            norm("Registry.Example.com/x"),
            "Registry.Example.com/x:latest"
        );
        // Without a '/', a host-like name is a repository on Docker Hub with a tag.
        assert_eq!(norm("localhost:5000"), "docker.io/library/localhost:5000");
        // `localhost` is a registry only when spelled so.
        assert_eq!(norm("localhostx/x"), "docker.io/localhostx/x:latest");
    }

    #[test]
    fn digests_without_and_with_tags() {
        let digest = format!("sha256:{HEX}");
        let r = parse_normalized(&format!("127.0.0.1:5000/x@{digest}")).unwrap();
        assert_eq!(r.domain, "127.0.0.1:5000");
        assert_eq!(r.path, "x");
        assert_eq!(r.tag, None, "a digest alone gets no default tag");
        assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/x@{digest}"));

        let r = parse_normalized(&format!("busybox@{digest}")).unwrap();
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{digest}"));
        assert_eq!(r.familiar(), format!("busybox@{digest}"));

        let r = parse_normalized(&format!("busybox:1@{digest}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(
            r.to_string(),
            format!("docker.io/library/busybox:1@{digest}")
        );
        assert_eq!(r.familiar(), format!("busybox:1@{digest}"));

        let sha512 = format!("sha512:{HEX}{HEX}");
        let r = parse_normalized(&format!("x@{sha512}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(sha512.as_str()));
        let sha384 = format!("sha384:{}", &format!("{HEX}{HEX}")[..96]);
        assert!(parse_normalized(&format!("x@{sha384}")).is_ok());
    }

    #[test]
    fn path_component_separators() {
        for ok in [
            "a.b",
            "a_b",
            "a__b",
            "a-b",
            "a---b",
            "a1.b2_c3__d4-e5",
            "0",
            "a/b/c/d",
        ] {
            assert!(parse_normalized(ok).is_ok(), "{ok} should parse");
        }
        for bad in [
            "a..b", "a___b", "a._b", "-a", "a-", ".a", "a_", "a+b", "a b", "a/", "/a",
        ] {
            let msg = reject(bad);
            assert!(msg.contains("path component"), "{bad}: {msg}");
        }
        assert!(reject("a//b").contains("path component \"\""));
    }

    #[test]
    fn tags() {
        for ok in ["x:1", "x:_a", "x:A.b-C_d", "x:v1.2.3-rc.1"] {
            assert!(parse_normalized(ok).is_ok(), "{ok} should parse");
        }
        let long = format!("x:{}", "a".repeat(128));
        assert!(parse_normalized(&long).is_ok());
        for bad in ["x:", "x:.a", "x:-a", "x:a+b"] {
            let msg = reject(bad);
            assert!(msg.contains("tag"), "{bad}: {msg}");
        }
        let too_long = format!("x:{}", "a".repeat(129));
        assert!(reject(&too_long).contains("tag"));
        // A second ':' leaves a name that is no path component; a '/' makes `x:a` a registry.
        assert!(reject("x:a:b").contains("path component"));
        assert!(reject("x:a/b").contains("registry"));
    }

    #[test]
    fn uppercase_repository_names_are_rejected() {
        assert_eq!(
            reject("Foo/Bar"),
            "reference \"Foo/Bar\": repository name must be lowercase"
        );
        assert!(reject("Busybox").contains("must be lowercase"));
        assert!(reject("example.com/Foo").contains("must be lowercase"));
        // Uppercase in the tag is allowed by the tag grammar.
        assert!(parse_normalized("busybox:Latest").is_ok());
    }

    #[test]
    fn bad_digests() {
        for bad in [
            "x@".to_string(),
            "x@sha256".to_string(),
            format!("x@sha256:{}", &HEX[..63]),
            format!("x@sha256:{HEX}0"),
            format!("x@sha256:{}", HEX.to_uppercase()),
            format!("x@md5:{}", &HEX[..32]),
            format!("x@sha512:{HEX}"),
            format!("x@sha256:{HEX}@sha256:{HEX}"),
        ] {
            let msg = reject(&bad);
            assert!(msg.contains("digest"), "{bad}: {msg}");
        }
    }

    #[test]
    fn bad_domains() {
        for bad in [
            "-a.com/x",
            "a-.com/x",
            "a..com/x",
            "a.com:/x",
            "a.com:50a/x",
            ":5000/x",
            "[::1/x",
            "[:]x/x",
            "[::g]/x",
            "[::1]x/x",
        ] {
            let msg = reject(bad);
            assert!(msg.contains("registry"), "{bad}: {msg}");
        }
    }

    #[test]
    fn empty_and_ambiguous_inputs() {
        assert_eq!(reject(""), "reference \"\": must not be empty");
        assert!(reject(HEX).contains("image ID"));
        // A 64-hex name is fine once it is clearly a repository.
        assert!(parse_normalized(&format!("user/{HEX}")).is_ok());
        assert!(reject(":tag").contains("must not be empty"));
        assert!(reject(&format!("@sha256:{HEX}")).contains("must not be empty"));
        assert!(reject("example.com/").contains("must not be empty"));
    }

    #[test]
    fn length_limits() {
        // docker.io/ + 245 = 255: the longest name.
        let path = format!("a/{}", "b".repeat(243));
        assert_eq!(norm(&path).len(), 255 + ":latest".len());
        let too_long = format!("a/{}", "b".repeat(244));
        assert!(reject(&too_long).contains("more than 255"));
        // The limit applies after normalization adds `docker.io/library/`.
        assert!(reject(&"b".repeat(240)).contains("more than 255"));

        let huge = "a".repeat(1 << 20);
        let msg = reject(&huge);
        assert!(msg.len() < 500, "message echoes the whole input");
    }

    #[test]
    fn round_trips_and_from_str() {
        for s in [
            "docker.io/library/busybox:latest",
            "localhost:5000/a/b:1.2",
            &format!("docker.io/user/app:1@sha256:{HEX}"),
        ] {
            assert_eq!(norm(s), s);
            let r: Reference = s.parse().unwrap();
            assert_eq!(norm(&r.familiar()), s);
        }
    }
}
