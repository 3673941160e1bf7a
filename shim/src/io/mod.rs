//! A process's stdio, held by the shim: pipes or a pty, the pumps that always drain the output
//! into the log and to followers (whether or not anyone is attached, whether or not supd is
//! alive), and the stdin that attachers write to.

pub mod console;
pub mod history;
pub mod log;
pub mod output;

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use chrono::Utc;
use rustix::termios::Winsize;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;

use crate::runc::ChildStdio;
use log::{Chunk, StreamKind};
use output::Output;

/// Largest read from a process's output.
const READ_SIZE: usize = 32 << 10;
/// What a terminal reads as end of input (VEOF, ^D) when stdin is "closed".
const TERMINAL_EOF: u8 = 0x04;

type Fd = Arc<AsyncFd<OwnedFd>>;

pub struct ProcessIo {
    pub terminal: bool,
    pub output: Arc<Output>,
    /// Pipe write end, or the pty master; `None` once closed. The async lock keeps one
    /// writer's data contiguous.
    stdin: tokio::sync::Mutex<Option<Fd>>,
    master: Mutex<Option<Fd>>,
    pumps: Mutex<Vec<JoinHandle<()>>>,
    wants_stdin: bool,
    stdin_closed: AtomicBool,
}

impl ProcessIo {
    /// Pipes for a process without a terminal. The returned ends go to the runtime, which
    /// hands them to the process; the shim must not keep them, or it would never see EOF.
    pub fn pipes(stdin: bool, output: Arc<Output>) -> std::io::Result<(ProcessIo, ChildStdio)> {
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (child_in, our_in) = if stdin {
            let (r, w) = pipe()?;
            (Some(r), Some(async_fd(w)?))
        } else {
            (None, None)
        };
        let out_r = async_fd(out_r)?;
        let err_r = async_fd(err_r)?;
        let pumps = vec![
            tokio::spawn(pump(out_r, StreamKind::Stdout, output.clone())),
            tokio::spawn(pump(err_r, StreamKind::Stderr, output.clone())),
        ];
        let io = ProcessIo {
            terminal: false,
            output,
            stdin: tokio::sync::Mutex::new(our_in),
            master: Mutex::new(None),
            pumps: Mutex::new(pumps),
            wants_stdin: stdin,
            stdin_closed: AtomicBool::new(false),
        };
        let child = ChildStdio {
            stdin: child_in,
            stdout: Some(out_w),
            stderr: Some(err_w),
        };
        Ok((io, child))
    }

    /// A terminal process's IO. The pty exists only once the runtime has started the process
    /// and sent its master (`attach_master`); until then output is empty and input refused.
    pub fn terminal(stdin: bool, output: Arc<Output>) -> ProcessIo {
        ProcessIo {
            terminal: true,
            output,
            stdin: tokio::sync::Mutex::new(None),
            master: Mutex::new(None),
            pumps: Mutex::new(Vec::new()),
            wants_stdin: stdin,
            stdin_closed: AtomicBool::new(false),
        }
    }

    /// Takes the pty master the runtime sent, and starts draining it.
    pub async fn attach_master(&self, master: OwnedFd) -> std::io::Result<()> {
        let master = async_fd(master)?;
        let pump = tokio::spawn(pump(
            master.clone(),
            StreamKind::Stdout,
            self.output.clone(),
        ));
        self.pumps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pump);
        *self.master.lock().unwrap_or_else(|p| p.into_inner()) = Some(master.clone());
        if self.wants_stdin {
            if self.stdin_closed.load(Ordering::SeqCst) {
                // Closed before the terminal existed: the process reads EOF first thing.
                write_all(&master, &[TERMINAL_EOF]).await?;
            } else {
                *self.stdin.lock().await = Some(master);
            }
        }
        Ok(())
    }

    /// Writes to the process's stdin. Fails if it has none, it was closed, or (a terminal)
    /// the process has not started.
    pub async fn write_stdin(&self, data: &[u8]) -> std::io::Result<()> {
        let stdin = self.stdin.lock().await;
        match stdin.as_ref() {
            Some(fd) => write_all(fd, data).await,
            None => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "stdin is closed",
            )),
        }
    }

    /// Closes stdin: the process reads EOF. A terminal has no separate input channel, so it
    /// gets the terminal's end-of-input character instead.
    pub async fn close_stdin(&self) {
        self.stdin_closed.store(true, Ordering::SeqCst);
        let mut stdin = self.stdin.lock().await;
        if let Some(fd) = stdin.take() {
            if self.terminal {
                let _ = write_all(&fd, &[TERMINAL_EOF]).await;
            }
        }
    }

    /// Sets the terminal's size.
    pub fn resize(&self, width: u16, height: u16) -> Result<(), ResizeError> {
        let master = self.master.lock().unwrap_or_else(|p| p.into_inner());
        let Some(fd) = master.as_ref() else {
            return Err(if self.terminal {
                ResizeError::NotStarted
            } else {
                ResizeError::NoTerminal
            });
        };
        let size = Winsize {
            ws_row: height,
            ws_col: width,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(fd.get_ref().as_fd(), size)
            .map_err(|e| ResizeError::Io(e.into()))
    }

    /// Lets go of the input side once the process has exited; the pumps keep draining.
    pub async fn release(&self) {
        self.stdin.lock().await.take();
        self.master.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Stops the pumps (for a process that is forgotten while something, say a background
    /// child, still holds its output open).
    pub fn abort(&self) {
        for p in self
            .pumps
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            p.abort();
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error("the process has no terminal")]
    NoTerminal,
    #[error("the process's terminal does not exist until it starts")]
    NotStarted,
    #[error("setting the terminal size: {0}")]
    Io(std::io::Error),
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    // Close-on-exec: no runtime child but the one that is given an end inherits it.
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC).map_err(Into::into)
}

fn async_fd(fd: OwnedFd) -> std::io::Result<Fd> {
    rustix::io::ioctl_fionbio(&fd, true)?;
    Ok(Arc::new(crate::sys::async_fd(fd)?))
}

/// Reads one chunk; `None` at the end. Kept out of the async code so the buffer lives on the
/// stack only while reading, not in every idle pump.
fn read_chunk(fd: &OwnedFd) -> std::io::Result<Option<Bytes>> {
    let mut buf = [0u8; READ_SIZE];
    loop {
        match rustix::io::read(fd, &mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => return Ok(Some(Bytes::copy_from_slice(&buf[..n]))),
            Err(rustix::io::Errno::INTR) => continue,
            // A pty master reads EIO once no process holds the terminal any more.
            Err(rustix::io::Errno::IO) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

async fn pump(fd: Fd, stream: StreamKind, output: Arc<Output>) {
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!(stream = stream.as_str(), error = %e, "polling output failed");
                break;
            }
        };
        match guard.try_io(|fd| read_chunk(fd.get_ref())) {
            Ok(Ok(Some(data))) => {
                output
                    .emit(Chunk {
                        stream,
                        data,
                        at: Utc::now(),
                    })
                    .await
            }
            Ok(Ok(None)) => break,
            Ok(Err(e)) => {
                tracing::warn!(stream = stream.as_str(), error = %e, "reading output failed");
                break;
            }
            Err(_would_block) => continue,
        }
    }
    output.close_stream();
}

async fn write_all(fd: &AsyncFd<OwnedFd>, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        let mut guard = fd.writable().await?;
        match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(Into::into)) {
            Ok(Ok(n)) => data = &data[n..],
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => {}
        }
    }
    Ok(())
}
