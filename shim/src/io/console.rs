//! The console socket of a terminal process: runc connects to it during `create`/`exec` and
//! passes the pty master over SCM_RIGHTS. It is an abstract unix socket, so its name is short
//! whatever the task dir's path (sun_path holds 108 bytes); only a peer with the shim's own
//! uid is believed.

use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::linux::net::SocketAddrExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
use tokio::io::Interest;
use tokio::net::{UnixListener, UnixStream};

/// How long a connection that sends no descriptor may hold up the wait.
const PEER_TIMEOUT: Duration = Duration::from_secs(5);

static NEXT: AtomicU64 = AtomicU64::new(0);

pub struct ConsoleSocket {
    listener: UnixListener,
    /// The name runc is given: `@` marks an abstract socket.
    name: String,
}

impl ConsoleSocket {
    pub fn bind() -> std::io::Result<ConsoleSocket> {
        let pid = std::process::id();
        loop {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let nanos = chrono::Utc::now().timestamp_subsec_nanos();
            let name = format!("sup-shim/{pid}/{n}/{nanos}");
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            match std::os::unix::net::UnixListener::bind_addr(&addr) {
                Ok(l) => {
                    l.set_nonblocking(true)?;
                    return Ok(ConsoleSocket {
                        listener: UnixListener::from_std(l)?,
                        name: format!("@{name}"),
                    });
                }
                // Someone holds that name: take the next one.
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(e),
            }
        }
    }

    pub fn path(&self) -> &str {
        &self.name
    }

    /// Waits for the runtime to send the pty master.
    pub async fn receive(&self) -> std::io::Result<OwnedFd> {
        let uid = rustix::process::geteuid().as_raw();
        loop {
            let (stream, _) = self.listener.accept().await?;
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == uid => {}
                _ => {
                    tracing::warn!("console socket: ignoring a connection from another user");
                    continue;
                }
            }
            match tokio::time::timeout(PEER_TIMEOUT, receive_fd(&stream)).await {
                Ok(Ok(Some(fd))) => return Ok(fd),
                Ok(Ok(None)) => tracing::warn!("console socket: a peer sent no descriptor"),
                Ok(Err(e)) => tracing::warn!(error = %e, "console socket: receiving failed"),
                Err(_) => tracing::warn!("console socket: a peer sent nothing in time"),
            }
        }
    }
}

async fn receive_fd(stream: &UnixStream) -> std::io::Result<Option<OwnedFd>> {
    stream
        .async_io(Interest::READABLE, || {
            // runc sends the pty's name as the payload; only the descriptor matters.
            let mut name = [0u8; 4096];
            let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
            let mut control = RecvAncillaryBuffer::new(&mut space);
            let mut iov = [IoSliceMut::new(&mut name)];
            rustix::net::recvmsg(stream, &mut iov, &mut control, RecvFlags::CMSG_CLOEXEC)?;
            let mut received = None;
            for msg in control.drain() {
                if let RecvAncillaryMessage::ScmRights(fds) = msg {
                    for fd in fds {
                        // Any extra descriptor is closed on drop.
                        received.get_or_insert(fd);
                    }
                }
            }
            Ok(received)
        })
        .await
}
