//! A connection that fails its reads once nothing has crossed it, either way, for the idle
//! timeout: how the streaming server lets go of clients that went quiet without closing.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

pub struct IdleIo<T> {
    inner: T,
    timeout: Option<Duration>,
    deadline: Pin<Box<Sleep>>,
}

impl<T> IdleIo<T> {
    /// `timeout` zero: never idle.
    pub fn new(inner: T, timeout: Duration) -> IdleIo<T> {
        let timeout = (!timeout.is_zero()).then_some(timeout);
        let far = Duration::from_secs(86400 * 365);
        IdleIo {
            inner,
            deadline: Box::pin(tokio::time::sleep(timeout.unwrap_or(far))),
            timeout,
        }
    }

    fn touched(&mut self) {
        if let Some(t) = self.timeout {
            self.deadline.as_mut().reset(Instant::now() + t);
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.timeout.is_some() && self.deadline.as_mut().poll(cx).is_ready()
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "stream connection idle for too long",
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    this.touched();
                }
                Poll::Ready(r)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, data) {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    this.touched();
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(timed_out())),
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn traffic_keeps_it_open_and_silence_ends_it() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut a = IdleIo::new(a, Duration::from_secs(10));
        let mut buf = [0u8; 8];
        for _ in 0..5 {
            tokio::time::sleep(Duration::from_secs(6)).await;
            b.write_all(b"x").await.unwrap();
            assert_eq!(a.read(&mut buf).await.unwrap(), 1);
        }
        let err = a.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn zero_means_never() {
        let (a, _b) = tokio::io::duplex(64);
        let mut a = IdleIo::new(a, Duration::ZERO);
        let mut buf = [0u8; 8];
        let r = tokio::time::timeout(Duration::from_secs(86400 * 30), a.read(&mut buf)).await;
        assert!(r.is_err(), "still waiting after 30 days");
    }
}
