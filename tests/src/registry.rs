//! A real OCI registry for one test: Debian's `docker-registry` on a free loopback port with
//! its storage in a temporary directory, open, behind htpasswd or behind token auth; stopped
//! by PID when dropped. Also the Pull and Push calls and the checks the registry tests make.

use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use sup_client::{api, Client};
use tonic::Status;

use crate::image::{name_annotations, Image, ImageBuilder, OciArchive};
use crate::layer::{Compression, LayerBuilder};

pub mod proxy;
pub mod token;

pub use proxy::Proxy;
pub use token::TokenServer;

/// Where Debian's docker-registry package installs the server.
pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
/// How long the registry gets to answer its first request.
const READY_TIMEOUT: Duration = Duration::from_secs(20);
/// How much of the registry's log is printed when a test fails.
const LOG_TAIL: usize = 16 * 1024;

/// How the registry checks who is asking.
pub enum Auth<'a> {
    None,
    /// Basic auth against an htpasswd file holding this one user.
    Htpasswd {
        username: &'a str,
        password: &'a str,
    },
    /// Bearer tokens from `server`.
    Token(&'a TokenServer),
}

pub struct Registry {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
    child: Option<Child>,
    port: u16,
}

impl Registry {
    /// An open registry.
    pub fn start() -> Registry {
        Self::start_with(Auth::None)
    }

    pub fn start_with(auth: Auth<'_>) -> Registry {
        Self::launch(auth, false)
    }

    /// An open registry serving HTTPS with a certificate from its own CA (see `ca_path`).
    pub fn start_tls() -> Registry {
        Self::launch(Auth::None, true)
    }

    fn launch(auth: Auth<'_>, tls: bool) -> Registry {
        assert!(
            Path::new(REGISTRY_BIN).exists(),
            "{REGISTRY_BIN} is missing: install Debian's docker-registry (deploy/install-deps.sh)"
        );
        let dir = tempfile::Builder::new()
            .prefix("supreg")
            .tempdir_in("/tmp")
            .expect("temporary directory for the registry");
        let path = dir.path().to_path_buf();
        let port = free_port();
        let auth_yaml = match auth {
            Auth::None => String::new(),
            Auth::Htpasswd { username, password } => {
                let file = path.join("htpasswd");
                std::fs::write(&file, htpasswd_line(username, password)).expect("htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: sup-test\n    path: {}\n",
                    file.display()
                )
            }
            Auth::Token(server) => format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    \
                 rootcertbundle: {}\n",
                server.realm(),
                token::SERVICE,
                token::ISSUER,
                server.cert_path().display()
            ),
        };
        let tls_yaml = if tls {
            make_tls(&path);
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                path.join("registry.crt").display(),
                path.join("registry.key").display()
            )
        } else {
            String::new()
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n\
             storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n  secret: sup-test-secret\n{tls_yaml}{auth_yaml}",
            path.join("storage").display()
        );
        let config_file = path.join("config.yml");
        std::fs::write(&config_file, config).expect("registry config");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path.join("registry.log"))
            .expect("registry log");
        let mut cmd = Command::new(REGISTRY_BIN);
        cmd.arg("serve")
            .arg(&config_file)
            .env_clear()
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("dup log fd"))
            .stderr(log);
        crate::sys::kill_with_parent(&mut cmd);
        let child = cmd.spawn().expect("spawn docker-registry");
        let mut reg = Registry {
            dir: Some(dir),
            path,
            child: Some(child),
            port,
        };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                panic!(
                    "docker-registry exited with {status}; its log:\n{}",
                    self.log()
                );
            }
            if http_status(self.port, "/v2/").is_some() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not answer on port {} within {READY_TIMEOUT:?}; its log:\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`: the registry part of references.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The CA certificate that signed an HTTPS registry's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.path.join("ca.crt")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path.join("registry.log")).unwrap_or_default()
    }

    /// Where the registry keeps the bytes of blob `digest`.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = crate::digest::hex_part(digest);
        self.path
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Overwrites part of blob `digest` in the registry's storage, keeping its size.
    pub fn corrupt_blob(&self, digest: &str) {
        let path = self.blob_data(digest);
        let mut data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mid = data.len() / 2;
        let end = (mid + 64).min(data.len());
        for b in &mut data[mid..end] {
            *b ^= 0x5a;
        }
        std::fs::write(&path, data).expect("rewrite blob data");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let pid = Pid::from_raw(child.id() as i32);
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if Instant::now() >= deadline {
                    let _ = kill(pid, Signal::SIGKILL);
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if std::thread::panicking() {
            let log = self.log();
            let mut start = log.len().saturating_sub(LOG_TAIL);
            while !log.is_char_boundary(start) {
                start += 1;
            }
            eprintln!("---- registry log ----\n{}\n---- end ----", &log[start..]);
        }
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// A loopback port nobody listens on (just now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The status code of `GET path` on the loopback port, if anything answers.
pub fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).ok()?;
    let line = String::from_utf8_lossy(&head[..n]).into_owned();
    line.split_whitespace().nth(1)?.parse().ok()
}

/// A CA and a server certificate for 127.0.0.1 signed by it, made with openssl in `dir`.
fn make_tls(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=sup-test-ca",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "registry.key",
        "-out",
        "registry.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n\
         keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext.cnf");
    run(&[
        "x509",
        "-req",
        "-in",
        "registry.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "registry.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
}

/// An htpasswd line with a bcrypt hash, made by apache2-utils' htpasswd.
fn htpasswd_line(username: &str, password: &str) -> String {
    let out = Command::new("htpasswd")
        .args(["-nbB", username, password])
        .output()
        .expect("run htpasswd (install apache2-utils)");
    assert!(out.status.success(), "htpasswd failed: {out:?}");
    String::from_utf8(out.stdout).expect("htpasswd output")
}

/// Imports that leave the image packed (the tests unpack by pulling).
pub const NO_UNPACK: bool = true;

/// Busybox and a second layer of `extra` incompressible bytes.
pub fn app_image(extra: usize, seed: u64) -> Image {
    let mut data = LayerBuilder::new();
    data.dir("data");
    data.file("data/blob", noise(extra, seed));
    ImageBuilder::new()
        .layer(crate::busybox::busybox_layer().build(Compression::Gzip))
        .layer(data.build(Compression::Gzip))
        .build()
}

/// Imports `archive` into the client's namespace.
pub async fn import(client: &Client, archive: &OciArchive, no_unpack: bool) {
    let opts = api::ImportOptions {
        no_unpack,
        ..Default::default()
    };
    crate::rpc::import_ok(client, opts, &archive.build()).await;
}

/// Imports one image under `name`, packed.
pub async fn import_image(client: &Client, image: &Image, name: &str) {
    let archive = OciArchive::new().image(image, name_annotations(name));
    import(client, &archive, NO_UNPACK).await;
}

/// The last status of each of `digests` among `blobs`.
pub fn final_statuses(blobs: &[api::BlobProgress], digests: &[&str]) -> Vec<String> {
    digests
        .iter()
        .map(|d| {
            blobs
                .iter()
                .find(|b| b.digest == *d)
                .map(|b| b.status.clone())
                .unwrap_or_else(|| format!("{d} not reported"))
        })
        .collect()
}

/// Content records of the namespace, by digest.
pub async fn content_digests(client: &Client) -> Vec<String> {
    let mut out: Vec<String> = crate::rpc::list_content(client)
        .await
        .into_iter()
        .map(|c| c.digest)
        .collect();
    out.sort();
    out
}

/// No image, no content record and no snapshot in the namespace (ingests may stay), once
/// the failed call has rolled back (10 s at most).
pub async fn assert_nothing_visible(client: &Client, what: &str) {
    let left = crate::rpc::eventually(Duration::from_secs(10), || async {
        let mut left: Vec<String> = crate::rpc::list_images(client)
            .await
            .into_iter()
            .map(|i| format!("image {}", i.name))
            .collect();
        left.extend(
            content_digests(client)
                .await
                .into_iter()
                .map(|d| format!("blob {d}")),
        );
        for s in crate::SNAPSHOTTERS {
            let snaps = crate::rpc::list_snapshots(client, s).await;
            left.extend(
                snaps
                    .into_iter()
                    .map(|i| format!("{s} snapshot {}", i.name)),
            );
        }
        left.is_empty().then_some(()).ok_or(left)
    })
    .await;
    if let Err(left) = left {
        panic!("{what}: still visible: {left:#?}");
    }
}

/// A pull of `reference` over plain HTTP, unpacked into the daemon's default snapshotter.
pub fn pull_request(reference: &str) -> api::PullRequest {
    api::PullRequest {
        reference: reference.to_string(),
        plain_http: true,
        ..Default::default()
    }
}

pub fn auth(username: &str, password: &str) -> Option<api::RegistryAuth> {
    Some(api::RegistryAuth {
        username: username.to_string(),
        password: password.to_string(),
        token: String::new(),
    })
}

/// What a finished pull reported: every progress message, the image last.
pub struct Pulled {
    pub image: api::Image,
    pub messages: Vec<api::PullResponse>,
}

impl Pulled {
    /// The last status reported for blob `digest`.
    pub fn status_of(&self, digest: &str) -> Option<String> {
        self.messages
            .iter()
            .rev()
            .flat_map(|m| m.blobs.iter())
            .find(|b| b.digest == digest)
            .map(|b| b.status.clone())
    }
}

/// Images.Pull, read to the end.
pub async fn pull(client: &Client, req: api::PullRequest) -> Result<Pulled, Status> {
    let mut stream = client.images().pull(req).await?.into_inner();
    let mut messages = Vec::new();
    while let Some(msg) = stream.message().await? {
        let done = msg.image.clone();
        messages.push(msg);
        if let Some(image) = done {
            return Ok(Pulled { image, messages });
        }
    }
    Err(Status::unknown(
        "the pull stream ended without an image (test harness)",
    ))
}

/// Pulls and panics on failure.
pub async fn pull_ok(client: &Client, req: api::PullRequest) -> Pulled {
    let what = req.reference.clone();
    pull(client, req)
        .await
        .unwrap_or_else(|s| panic!("pull {what}: {:?}: {}", s.code(), s.message()))
}

/// Images.Push of local image `name` to `target` over plain HTTP; returns the digest and
/// every progress message.
pub async fn push(
    client: &Client,
    name: &str,
    target: &str,
    auth: Option<api::RegistryAuth>,
) -> Result<(String, Vec<api::PushResponse>), Status> {
    let req = api::PushRequest {
        name: name.to_string(),
        target: target.to_string(),
        auth,
        plain_http: true,
        ..Default::default()
    };
    let mut stream = client.images().push(req).await?.into_inner();
    let mut messages = Vec::new();
    while let Some(msg) = stream.message().await? {
        let digest = msg.digest.clone();
        messages.push(msg);
        if !digest.is_empty() {
            return Ok((digest, messages));
        }
    }
    Err(Status::unknown(
        "the push stream ended without a digest (test harness)",
    ))
}

/// Pushes and panics on failure; returns the digest.
pub async fn push_ok(
    client: &Client,
    name: &str,
    target: &str,
    auth: Option<api::RegistryAuth>,
) -> String {
    match push(client, name, target, auth).await {
        Ok((digest, _)) => digest,
        Err(s) => panic!("push {name} to {target}: {:?}: {}", s.code(), s.message()),
    }
}

/// Bytes that do not compress: layers that take a while to send.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Standard base64 (with padding), or the URL-safe alphabet without padding.
pub fn base64(data: &[u8], url_safe: bool) -> String {
    let table: &[u8; 64] = if url_safe {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(table[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else if !url_safe {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_the_rfc_examples() {
        assert_eq!(base64(b"foobar", false), "Zm9vYmFy");
        assert_eq!(base64(b"fooba", false), "Zm9vYmE=");
        assert_eq!(base64(b"foob", false), "Zm9vYg==");
        assert_eq!(base64(b"foob", true), "Zm9vYg");
        assert_eq!(base64(&[0xfb, 0xff], true), "-_8");
    }
}
