//! A tiny token server on loopback for the bearer-token flow: it checks basic credentials
//! and answers `{"token": ...}` with a JWT (RS256, certificate in `x5c`) granting the scopes
//! asked for, signed with a key and self-signed certificate made by `openssl` per test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::base64;

/// The `service` the registry names in its challenge and expects as the token's audience.
pub const SERVICE: &str = "sup-test-registry";
pub const ISSUER: &str = "sup-test-issuer";

pub struct TokenServer {
    dir: tempfile::TempDir,
    port: u16,
    /// Token requests answered with a token.
    granted: Arc<AtomicUsize>,
    /// Token requests refused.
    refused: Arc<AtomicUsize>,
    /// Query strings received.
    queries: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

struct Keys {
    key: PathBuf,
    cert_der_b64: String,
}

impl TokenServer {
    /// Starts a token server that grants tokens to `username`/`password` only.
    pub async fn start(username: &str, password: &str) -> TokenServer {
        let dir = tempfile::Builder::new()
            .prefix("suptok")
            .tempdir_in("/tmp")
            .expect("temporary directory for the token server");
        let keys = make_keys(dir.path());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let expected = format!(
            "Basic {}",
            base64(format!("{username}:{password}").as_bytes(), false)
        );
        let (granted, refused) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let queries = Arc::new(Mutex::new(Vec::new()));
        let keys = Arc::new(keys);
        let (g, r, q) = (granted.clone(), refused.clone(), queries.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let (expected, keys, g, r, q) = (
                    expected.clone(),
                    keys.clone(),
                    g.clone(),
                    r.clone(),
                    q.clone(),
                );
                tokio::spawn(async move {
                    let Some(head) = read_head(&mut conn).await else {
                        return;
                    };
                    let query = head
                        .lines()
                        .next()
                        .and_then(|l| l.split_whitespace().nth(1))
                        .and_then(|p| p.split_once('?'))
                        .map(|(_, q)| q.to_string())
                        .unwrap_or_default();
                    if let Ok(mut list) = q.lock() {
                        list.push(query.clone());
                    }
                    let authorized = head.lines().any(|l| {
                        l.split_once(':').is_some_and(|(k, v)| {
                            k.eq_ignore_ascii_case("authorization") && v.trim() == expected
                        })
                    });
                    let reply = if authorized {
                        g.fetch_add(1, Ordering::SeqCst);
                        let token = tokio::task::spawn_blocking(move || sign(&keys, &query))
                            .await
                            .expect("signing");
                        let body = json!({"token": token, "expires_in": 300}).to_string();
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        r.fetch_add(1, Ordering::SeqCst);
                        "HTTP/1.1 401 Unauthorized\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                            .to_string()
                    };
                    let _ = conn.write_all(reply.as_bytes()).await;
                    let _ = conn.shutdown().await;
                });
            }
        });
        TokenServer {
            dir,
            port,
            granted,
            refused,
            queries,
            task,
        }
    }

    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// The certificate the registry trusts tokens from.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("token.crt")
    }

    pub fn granted(&self) -> usize {
        self.granted.load(Ordering::SeqCst)
    }

    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().map(|q| q.clone()).unwrap_or_default()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_head(conn: &mut tokio::net::TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

fn openssl(args: &[&str], dir: &Path) -> Vec<u8> {
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
    out.stdout
}

/// An RSA key and a self-signed certificate for it.
fn make_keys(dir: &Path) -> Keys {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "token.key",
            "-out",
            "token.crt",
            "-days",
            "2",
            "-subj",
            "/CN=sup-test-token",
        ],
        dir,
    );
    let der = openssl(&["x509", "-in", "token.crt", "-outform", "DER"], dir);
    Keys {
        key: dir.join("token.key"),
        cert_der_b64: base64(&der, false),
    }
}

/// A JWT granting the scopes of `query` (`scope=repository:NAME:ACTIONS`, repeated).
fn sign(keys: &Keys, query: &str) -> String {
    let mut access = Vec::new();
    for pair in query.split('&') {
        let Some(("scope", value)) = pair.split_once('=') else {
            continue;
        };
        let value = percent_decode(value);
        let parts: Vec<&str> = value.split(':').collect();
        if parts.len() == 3 && parts[0] == "repository" {
            let actions: Vec<&str> = parts[2].split(',').collect();
            access.push(json!({"type": "repository", "name": parts[1], "actions": actions}));
        }
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let header = json!({"typ": "JWT", "alg": "RS256", "x5c": [keys.cert_der_b64]});
    let claims = json!({
        "iss": ISSUER,
        "sub": "sup-test",
        "aud": SERVICE,
        "exp": now + 600,
        "nbf": now - 60,
        "iat": now - 60,
        "jti": format!("{now}-{}", access.len()),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        base64(header.to_string().as_bytes(), true),
        base64(claims.to_string().as_bytes(), true)
    );
    let mut child = Command::new("openssl")
        .args(["dgst", "-sha256", "-sign"])
        .arg(&keys.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run openssl dgst");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(input.as_bytes()).expect("feed openssl");
    }
    let out = child.wait_with_output().expect("openssl dgst");
    assert!(out.status.success(), "openssl dgst: {out:?}");
    format!("{input}.{}", base64(&out.stdout, true))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
