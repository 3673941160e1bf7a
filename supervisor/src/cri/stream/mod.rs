//! The CRI streaming server: what Exec, Attach and PortForward hand out. Each call checks its
//! request, keeps it under a single-use token and answers with a URL on this server; the
//! client (crictl, critest, the kubelet relaying kubectl) opens the URL with an HTTP/1.1
//! upgrade to SPDY/3.1 or WebSocket, and the session runs over the services supctl reaches.
//! It listens on loopback by default, TLS when given a certificate.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Request as HttpRequest, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming as Body;
use hyper_util::rt::TokioIo;
use k8s_cri::v1 as cri;

use crate::config::CriConfig;
use crate::cri::Cri;
use crate::error::{Error, Result};

pub mod idle;
pub mod over_spdy;
pub mod portforward;
pub mod protocol;
pub mod requests;
pub mod session;
pub mod spdy;
pub mod tls;
pub mod tokens;
pub mod ws;

use protocol::Version;
use tokens::Request;

/// An exec or attach session, as its token gave it.
#[derive(Debug, Clone)]
pub enum Session {
    Exec(cri::ExecRequest),
    Attach {
        req: cri::AttachRequest,
        /// The container was made with a stdin.
        container_stdin: bool,
        stdin_once: bool,
    },
}

/// The streams a session uses.
#[derive(Debug, Clone, Copy)]
pub struct Wants {
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

impl Session {
    pub fn streams(&self) -> Wants {
        let (stdin, stdout, stderr, tty) = match self {
            Session::Exec(r) => (r.stdin, r.stdout, r.stderr, r.tty),
            Session::Attach { req: r, .. } => (r.stdin, r.stdout, r.stderr, r.tty),
        };
        Wants {
            stdin,
            stdout,
            stderr: stderr && !tty,
            tty,
        }
    }

    /// The command, for the exit message; empty for attach.
    pub fn command(&self) -> &[String] {
        match self {
            Session::Exec(r) => &r.cmd,
            Session::Attach { .. } => &[],
        }
    }

    pub async fn run(&self, cri: &Cri, io: session::Io) -> session::Ended {
        match self {
            Session::Exec(r) => session::exec(cri, r, io).await,
            Session::Attach {
                req,
                container_stdin,
                stdin_once,
            } => session::attach(cri, req, *container_stdin, *stdin_once, io).await,
        }
    }
}

/// The server: its tokens and the base of the URLs it hands out.
pub struct StreamServer {
    pub tokens: tokens::Tokens,
    base: String,
    idle_timeout: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
    listener: std::sync::Mutex<Option<std::net::TcpListener>>,
}

impl StreamServer {
    /// Binds the listening socket (so that a port in use fails supd's start); `serve` then
    /// answers on it.
    pub fn bind(config: &CriConfig) -> Result<StreamServer> {
        let ip: IpAddr = config.stream_address.parse().map_err(|_| {
            Error::invalid(format!(
                "cri stream_address {:?}: must be an IP address",
                config.stream_address
            ))
        })?;
        let idle_timeout = crate::config::parse_duration(&config.stream_idle_timeout)?;
        let tls = match (&config.stream_tls_cert_file, &config.stream_tls_key_file) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            (None, None) => None,
            _ => {
                return Err(Error::invalid(
                    "cri stream_tls_cert_file and stream_tls_key_file: give both or neither",
                ))
            }
        };
        let addr = SocketAddr::new(ip, config.stream_port);
        let listener = std::net::TcpListener::bind(addr)
            .map_err(|e| Error::io(format!("streaming server: listening on {addr}"), e))?;
        listener
            .set_nonblocking(true)
            .map_err(|e| Error::io("streaming server socket", e))?;
        let local = listener
            .local_addr()
            .map_err(|e| Error::io("streaming server socket", e))?;
        // An unspecified address listens everywhere; the URL names loopback, which is
        // where the kubelet that relays the stream is.
        let host = match local.ip() {
            IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
            other => other,
        };
        let scheme = if tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", SocketAddr::new(host, local.port()));
        tracing::info!(address = %local, url = %base, tls = tls.is_some(), "CRI streaming server");
        Ok(StreamServer {
            tokens: tokens::Tokens::default(),
            base,
            idle_timeout,
            tls,
            listener: std::sync::Mutex::new(Some(listener)),
        })
    }

    /// Where a token's session is served.
    pub fn url(&self, request: Request) -> Result<String> {
        let kind = request.kind();
        let token = self.tokens.issue(request)?;
        Ok(format!("{}/{kind}/{token}", self.base))
    }

    /// Starts answering on the bound socket, for as long as the CRI lives.
    pub fn serve(cri: &Arc<Cri>) -> Result<()> {
        let server = &cri.stream;
        let listener = server
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .ok_or_else(|| Error::internal("streaming server already serving"))?;
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|e| Error::io("streaming server socket", e))?;
        let weak = Arc::downgrade(cri);
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "streaming server: accept");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                let Some(cri) = weak.upgrade() else { return };
                let tls = cri.stream.tls.clone();
                drop(cri);
                let weak = weak.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => match acceptor.accept(tcp).await {
                            Ok(t) => serve_connection(t, weak).await,
                            Err(e) => tracing::debug!(%peer, error = %e, "streaming TLS handshake"),
                        },
                        None => serve_connection(tcp, weak).await,
                    }
                });
            }
        });
        Ok(())
    }
}

async fn serve_connection<IO>(io: IO, cri: Weak<Cri>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let cri = cri.clone();
        async move { Ok::<_, std::convert::Infallible>(route(req, cri)) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(30))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "streaming server connection");
    }
}

fn plain(status: StatusCode, text: impl Into<String>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.into() + "\n")));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect()
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case(token))
}

/// What an upgraded connection is to carry.
enum Job {
    Session(Session),
    PortForward {
        sandbox: String,
        netns: Option<PathBuf>,
        ports: Vec<u16>,
    },
}

fn route(mut req: HttpRequest<Body>, weak: Weak<Cri>) -> Response<Full<Bytes>> {
    let Some(cri) = weak.upgrade() else {
        return plain(StatusCode::SERVICE_UNAVAILABLE, "supd is shutting down");
    };
    if req.method() != Method::GET && req.method() != Method::POST {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "use GET or POST");
    }
    let path = req.uri().path().to_string();
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    if !matches!(kind, "exec" | "attach" | "portforward") || token.is_empty() || token.contains('/')
    {
        return plain(StatusCode::NOT_FOUND, "no such stream");
    }
    let headers = req.headers();
    let websocket = has_token(headers, header::UPGRADE, "websocket");
    let spdy = has_token(headers, header::UPGRADE, "SPDY/3.1");
    if !has_token(headers, header::CONNECTION, "upgrade") || !(websocket || spdy) {
        return plain(
            StatusCode::BAD_REQUEST,
            "unable to upgrade: missing upgrade headers in request (want Upgrade: SPDY/3.1 or websocket)",
        );
    }
    // The token is spent by this request, whatever comes of it.
    let Some(request) = cri.stream.tokens.take(token).filter(|r| r.kind() == kind) else {
        return plain(
            StatusCode::NOT_FOUND,
            "unknown, used or expired stream token",
        );
    };
    let (job, known) = match request {
        Request::Exec(r) => (
            Job::Session(Session::Exec(r)),
            if websocket {
                protocol::WS_EXEC
            } else {
                protocol::SPDY_EXEC
            },
        ),
        Request::Attach(r) => {
            let (container_stdin, stdin_once) = cri
                .records
                .container(&r.container_id)
                .map(|rec| (rec.config.stdin, rec.config.stdin_once))
                .unwrap_or((false, false));
            (
                Job::Session(Session::Attach {
                    req: r,
                    container_stdin,
                    stdin_once,
                }),
                if websocket {
                    protocol::WS_EXEC
                } else {
                    protocol::SPDY_EXEC
                },
            )
        }
        Request::PortForward(r) => {
            let netns = match cri.records.sandbox(&r.pod_sandbox_id) {
                Ok(rec) => rec.netns,
                Err(_) => return plain(StatusCode::NOT_FOUND, "the pod sandbox is gone"),
            };
            let mut ports: Vec<u16> = Vec::new();
            if let Some(q) = req.uri().query() {
                for (k, v) in form_pairs(q) {
                    if k == "port" {
                        match v.parse::<u16>() {
                            Ok(p) if p != 0 => ports.push(p),
                            _ => return plain(StatusCode::BAD_REQUEST, format!("bad port {v:?}")),
                        }
                    }
                }
            }
            if ports.is_empty() {
                ports = r
                    .port
                    .iter()
                    .filter_map(|p| u16::try_from(*p).ok())
                    .collect();
            }
            if websocket && ports.is_empty() {
                return plain(
                    StatusCode::BAD_REQUEST,
                    "query parameter \"port\" is required",
                );
            }
            (
                Job::PortForward {
                    sandbox: r.pod_sandbox_id,
                    netns,
                    ports,
                },
                if websocket {
                    protocol::WS_PORTFORWARD
                } else {
                    protocol::SPDY_PORTFORWARD
                },
            )
        }
    };

    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let chosen;
    if websocket {
        let Some(key) = headers
            .get("sec-websocket-key")
            .map(|k| k.as_bytes().to_vec())
        else {
            return plain(
                StatusCode::BAD_REQUEST,
                "websocket: Sec-WebSocket-Key is required",
            );
        };
        let version_ok = headers
            .get("sec-websocket-version")
            .is_some_and(|v| v.as_bytes() == b"13");
        if !version_ok {
            let mut r = plain(
                StatusCode::BAD_REQUEST,
                "websocket: only version 13 is spoken",
            );
            r.headers_mut().insert(
                "sec-websocket-version",
                header::HeaderValue::from_static("13"),
            );
            return r;
        }
        chosen = match protocol::negotiate(&values(headers, "sec-websocket-protocol"), known) {
            Ok(p) => p,
            Err(protocol::NoCommonProtocol) => {
                return plain(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "websocket: none of the requested protocols is supported; supported: {}",
                        known.join(", ")
                    ),
                )
            }
        };
        let accept = tokio_tungstenite::tungstenite::handshake::derive_accept_key(&key);
        let h = resp.headers_mut();
        h.insert(
            header::UPGRADE,
            header::HeaderValue::from_static("websocket"),
        );
        h.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("Upgrade"),
        );
        if let Ok(v) = header::HeaderValue::from_str(&accept) {
            h.insert("sec-websocket-accept", v);
        }
        if let Some(p) = chosen {
            h.insert(
                "sec-websocket-protocol",
                header::HeaderValue::from_static(p),
            );
        }
    } else {
        chosen = match protocol::negotiate(&values(headers, protocol::HEADER_VERSION), known) {
            Ok(p) => p,
            Err(protocol::NoCommonProtocol) => {
                let mut r = plain(
                    StatusCode::FORBIDDEN,
                    format!(
                        "unable to upgrade: unable to negotiate protocol: client supports {:?}, server accepts {:?}",
                        values(headers, protocol::HEADER_VERSION),
                        known
                    ),
                );
                for k in known {
                    r.headers_mut().append(
                        protocol::HEADER_ACCEPTED,
                        header::HeaderValue::from_static(k),
                    );
                }
                return r;
            }
        };
        let h = resp.headers_mut();
        h.insert(
            header::UPGRADE,
            header::HeaderValue::from_static("SPDY/3.1"),
        );
        h.insert(
            header::CONNECTION,
            header::HeaderValue::from_static("Upgrade"),
        );
        if let Some(p) = chosen {
            h.insert(
                protocol::HEADER_VERSION,
                header::HeaderValue::from_static(p),
            );
        }
    }

    let idle_timeout = cri.stream.idle_timeout;
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let upgraded = match upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "stream upgrade");
                return;
            }
        };
        let io = idle::IdleIo::new(TokioIo::new(upgraded), idle_timeout);
        match job {
            Job::Session(session) if websocket => ws::serve_session(io, chosen, cri, session).await,
            Job::Session(session) => {
                over_spdy::serve_session(io, Version::of(chosen), cri, session).await
            }
            Job::PortForward {
                sandbox,
                netns,
                ports,
            } => {
                drop(cri);
                if websocket {
                    ws::serve_portforward(io, chosen, ports, sandbox, netns).await
                } else {
                    over_spdy::serve_portforward(io, sandbox, netns).await
                }
            }
        }
    });
    resp
}

/// `k=v` pairs of a query string, %-decoded.
fn form_pairs(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    fn hex(c: u8) -> Option<u8> {
        char::from(c)
            .to_digit(16)
            .and_then(|d| u8::try_from(d).ok())
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let escaped = (b[i] == b'%' && i + 2 < b.len())
            .then(|| Some(hex(b[i + 1])? * 16 + hex(b[i + 2])?))
            .flatten();
        match (escaped, b[i]) {
            (Some(v), _) => {
                out.push(v);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, c) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_decode() {
        assert_eq!(
            form_pairs("port=80&port=%34%343&x=a+b&flag"),
            vec![
                ("port".to_string(), "80".to_string()),
                ("port".to_string(), "443".to_string()),
                ("x".to_string(), "a b".to_string()),
                ("flag".to_string(), String::new()),
            ]
        );
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
    }
}
