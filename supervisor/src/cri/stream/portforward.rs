//! Port forwarding's one job inside supd: a TCP connection to a port of the pod, made from
//! inside the pod's network namespace (the host's, for a host-network pod), on loopback as
//! the kubelet dials it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::net::TcpStream;

/// How long a connection to the pod may take to be made.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `port` on the pod's loopback: IPv4 first, then IPv6.
pub async fn dial(netns: Option<&Path>, port: u16) -> std::io::Result<TcpStream> {
    let Some(netns) = netns else {
        return connect_loopback(port);
    };
    let netns: PathBuf = netns.to_path_buf();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own, which ends right after: a thread that entered the pod's
    // namespace must never go back to a pool and serve something else.
    std::thread::Builder::new()
        .name("sup-portforward".into())
        .spawn(move || {
            let r = std::fs::File::open(&netns).and_then(|f| {
                nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
            let _ = tx.send(r.and_then(|()| connect_loopback_blocking(port)));
        })?;
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("the dialling thread died"))??;
    stream.set_nonblocking(true)?;
    TcpStream::from_std(stream)
}

fn connect_loopback(port: u16) -> std::io::Result<TcpStream> {
    let s = connect_loopback_blocking(port)?;
    s.set_nonblocking(true)?;
    TcpStream::from_std(s)
}

fn connect_loopback_blocking(port: u16) -> std::io::Result<std::net::TcpStream> {
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    match std::net::TcpStream::connect_timeout(&v4, DIAL_TIMEOUT) {
        Ok(s) => Ok(s),
        Err(e4) => {
            let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
            std::net::TcpStream::connect_timeout(&v6, DIAL_TIMEOUT).map_err(|_| e4)
        }
    }
}

/// What the client is told when the pod's port cannot be reached.
pub fn dial_error(sandbox: &str, port: u16, e: &std::io::Error) -> String {
    format!("error forwarding port {port} to pod {sandbox}: dialing 127.0.0.1:{port} in the pod's network: {e}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn host_network_dials_loopback() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            s.write_all(b"hi").await.unwrap();
        });
        let mut c = dial(None, port).await.unwrap();
        let mut buf = Vec::new();
        c.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"hi");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn a_closed_port_is_an_error_and_a_missing_netns_too() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        drop(l);
        assert!(dial(None, port).await.is_err());
        assert!(dial(Some(Path::new("/nonexistent/netns")), port)
            .await
            .is_err());
    }
}
