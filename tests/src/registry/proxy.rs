//! A TCP proxy on loopback in front of a registry, for the tests that interrupt transfers:
//! it can slow the registry's answers down, pause them altogether, and it logs the request
//! line and Range header of every request that goes through (plain HTTP only).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
struct Shared {
    /// Bytes per second from the registry to the client; 0 for no limit.
    rate: AtomicU64,
    paused: AtomicBool,
    /// Bytes sent from the registry to clients.
    sent: AtomicU64,
    /// "METHOD PATH [range=...]" per request.
    requests: Mutex<Vec<String>>,
}

pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// Forwards connections on a new loopback port to `upstream` (a loopback port).
    pub async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let s = s.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = tokio::spawn(requests(cr, sw, s.clone()));
                    answers(sr, cw, s).await;
                    up.abort();
                });
            }
        });
        Proxy { port, shared, task }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn set_rate(&self, bytes_per_second: u64) {
        self.shared.rate.store(bytes_per_second, Ordering::SeqCst);
    }

    pub fn pause(&self, paused: bool) {
        self.shared.paused.store(paused, Ordering::SeqCst);
    }

    pub fn bytes_sent(&self) -> u64 {
        self.shared.sent.load(Ordering::SeqCst)
    }

    /// The requests logged so far, and a fresh log.
    pub fn take_requests(&self) -> Vec<String> {
        self.shared
            .requests
            .lock()
            .map(|mut r| std::mem::take(&mut *r))
            .unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Client to registry: copied as is, request heads logged.
async fn requests(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    s: Arc<Shared>,
) {
    let mut pending = String::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        // Pulls send only heads (GET and HEAD have no body), so this reads every request.
        pending.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(end) = pending.find("\r\n\r\n") {
            let head: String = pending.drain(..end + 4).collect();
            let mut lines = head.lines();
            let first = lines.next().unwrap_or_default();
            let mut entry: String = first
                .split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" ");
            for l in lines {
                if let Some((k, v)) = l.split_once(':') {
                    if k.eq_ignore_ascii_case("range") {
                        entry.push_str(&format!(" range={}", v.trim()));
                    }
                }
            }
            if let Ok(mut r) = s.requests.lock() {
                r.push(entry);
            }
        }
        if pending.len() > 1 << 20 {
            pending.clear();
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// Registry to client: throttled and pausable.
async fn answers(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    s: Arc<Shared>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        while s.paused.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let rate = s.rate.load(Ordering::SeqCst);
        if rate > 0 {
            tokio::time::sleep(Duration::from_secs_f64(n as f64 / rate as f64)).await;
        }
        while s.paused.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        s.sent.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = to.shutdown().await;
}
