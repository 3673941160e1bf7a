//! The local end of a process's stdio: relays our stdin to it and its output to our stdout
//! and stderr over `Tasks.Attach`, puts our terminal in raw mode for a TTY process, forwards
//! window sizes and termination signals, and hands back how the process exited.

use std::io::{IsTerminal, Read};

use anyhow::Context as _;
use nix::sys::signal::Signal;
use nix::sys::termios::{self, SetArg, Termios};
use sup_client::api::tasks_client::TasksClient;
use sup_client::api::{
    attach_request, attach_response, AttachOptions, AttachRequest, AttachResponse, KillRequest,
    OutputFrame, ResizePtyRequest, StdStream, WaitRequest, WaitResponse,
};
use sup_client::{Client, Svc};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, Signal as SignalStream, SignalKind};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{report, Exit};

/// Requests (stdin chunks, resizes) queued ahead of the network: a fast producer waits
/// rather than growing memory.
const REQUESTS_AHEAD: usize = 16;
/// Bytes read from our stdin per request.
const STDIN_CHUNK: usize = 32 * 1024;
/// Interrupts that go unanswered (a PID 1 without a SIGINT handler ignores them) before we
/// stop waiting and leave the process running.
const INTERRUPTS_BEFORE_DETACH: u32 = 3;

/// Which process to connect to and how.
#[derive(Debug, Clone)]
pub struct StdioOptions {
    pub container_id: String,
    /// Empty for the init process.
    pub exec_id: String,
    /// Connect our stdin to the process's.
    pub stdin: bool,
    /// Close the process's stdin when ours ends, so that a filter like `cat` finishes.
    pub close_stdin: bool,
    /// The process has a terminal: our terminal goes raw and its size follows ours.
    pub tty: bool,
}

/// An open Attach stream, not yet relaying. Opening it before the process starts means no
/// early output goes only to the logs.
pub struct Attached {
    opts: StdioOptions,
    tasks: TasksClient<Svc>,
    requests: mpsc::Sender<AttachRequest>,
    responses: tonic::Streaming<AttachResponse>,
}

/// Opens the Attach stream; the daemon answers once it is connected to the process's stdio.
pub async fn attach(client: &Client, opts: StdioOptions) -> anyhow::Result<Attached> {
    let (requests, rx) = mpsc::channel(REQUESTS_AHEAD);
    let first = AttachRequest {
        payload: Some(attach_request::Payload::Options(AttachOptions {
            container_id: opts.container_id.clone(),
            exec_id: opts.exec_id.clone(),
            stdin: opts.stdin,
            stdout: true,
            stderr: true,
            logs: false,
        })),
    };
    // The channel is new and empty, so this cannot wait.
    requests
        .send(first)
        .await
        .context("queueing the attach options")?;
    let mut tasks = client.tasks();
    let responses = tasks.attach(ReceiverStream::new(rx)).await?.into_inner();
    Ok(Attached {
        opts,
        tasks,
        requests,
        responses,
    })
}

impl Attached {
    /// Moves stdio until the process exits and returns its exit. Our terminal, when made raw,
    /// is restored before this returns, whichever way it returns.
    pub async fn relay(self) -> anyhow::Result<WaitResponse> {
        let Attached {
            opts,
            mut tasks,
            requests,
            mut responses,
        } = self;
        let raw = opts.tty && opts.stdin && std::io::stdin().is_terminal();
        let _terminal = if raw {
            Some(RawTerminal::enter()?)
        } else {
            None
        };
        let mut window = if opts.tty {
            send_window_size(&requests, &opts).await;
            Some(signal(SignalKind::window_change()).context("watching the window size")?)
        } else {
            None
        };
        if opts.stdin {
            spawn_stdin_reader(requests.clone(), opts.close_stdin);
        }
        let mut signals = Forwarded::new()?;
        let mut output = Output::new();
        let mut interrupts = 0;
        loop {
            tokio::select! {
                message = responses.message() => match message {
                    Ok(Some(AttachResponse { payload: Some(payload) })) => match payload {
                        attach_response::Payload::Output(frame) => output.write(frame).await,
                        attach_response::Payload::Exit(exit) => return Ok(exit),
                    },
                    // A payload this client does not know, from a newer daemon.
                    Ok(Some(_)) => {}
                    // The stream ended without the exit frame (the daemon closes it this way
                    // when the process exited before it could say so): ask for the exit.
                    Ok(None) => return wait(&mut tasks, &opts).await,
                    Err(status) => {
                        return match wait(&mut tasks, &opts).await {
                            Ok(exit) => Ok(exit),
                            Err(_) => Err(status.into()),
                        };
                    }
                },
                Some(()) = next_signal(&mut window) => send_window_size(&requests, &opts).await,
                received = signals.next() => {
                    if received == Signal::SIGINT {
                        interrupts += 1;
                        if interrupts >= INTERRUPTS_BEFORE_DETACH {
                            return Err(anyhow::anyhow!(
                                "left {} running after {interrupts} interrupts \
                                 (stop it with supctl tasks kill)",
                                process_name(&opts)
                            ));
                        }
                    }
                    forward(&mut tasks, &opts, received).await?;
                }
            }
        }
    }
}

/// "container t1" or "process e1 of container t1", for messages.
fn process_name(opts: &StdioOptions) -> String {
    if opts.exec_id.is_empty() {
        format!("container {}", opts.container_id)
    } else {
        format!(
            "process {} of container {}",
            opts.exec_id, opts.container_id
        )
    }
}

async fn wait(tasks: &mut TasksClient<Svc>, opts: &StdioOptions) -> anyhow::Result<WaitResponse> {
    let request = WaitRequest {
        container_id: opts.container_id.clone(),
        exec_id: opts.exec_id.clone(),
    };
    Ok(tasks.wait(request).await?.into_inner())
}

/// Passes a signal we received on to the process. One that finds the process gone is
/// moot: its exit is on the way.
async fn forward(
    tasks: &mut TasksClient<Svc>,
    opts: &StdioOptions,
    signal: Signal,
) -> anyhow::Result<()> {
    let request = KillRequest {
        container_id: opts.container_id.clone(),
        exec_id: opts.exec_id.clone(),
        signal: signal as u32,
        all: false,
    };
    match tasks.kill(request).await {
        Ok(_) => Ok(()),
        Err(status)
            if matches!(
                status.code(),
                tonic::Code::NotFound | tonic::Code::FailedPrecondition
            ) =>
        {
            Ok(())
        }
        Err(status) => {
            Err(anyhow::Error::from(status).context(format!("forwarding {}", signal.as_str())))
        }
    }
}

/// The signals a foreground supctl passes on instead of dying from them.
struct Forwarded {
    streams: Vec<(Signal, SignalStream)>,
}

impl Forwarded {
    fn new() -> anyhow::Result<Forwarded> {
        let kinds = [
            (Signal::SIGINT, SignalKind::interrupt()),
            (Signal::SIGTERM, SignalKind::terminate()),
            (Signal::SIGHUP, SignalKind::hangup()),
            (Signal::SIGQUIT, SignalKind::quit()),
        ];
        let mut streams = Vec::with_capacity(kinds.len());
        for (signal, kind) in kinds {
            let stream = tokio::signal::unix::signal(kind)
                .with_context(|| format!("handling {}", signal.as_str()))?;
            streams.push((signal, stream));
        }
        Ok(Forwarded { streams })
    }

    /// The next signal received.
    async fn next(&mut self) -> Signal {
        let pending = self.streams.iter_mut().map(|(signal, stream)| {
            let signal = *signal;
            Box::pin(async move {
                match stream.recv().await {
                    Some(()) => signal,
                    // The driver is gone only when the runtime shuts down: never fire.
                    None => std::future::pending().await,
                }
            })
        });
        futures::future::select_all(pending).await.0
    }
}

async fn next_signal(stream: &mut Option<SignalStream>) -> Option<()> {
    match stream {
        Some(stream) => stream.recv().await,
        None => std::future::pending().await,
    }
}

/// Sends our terminal's size, if we have a terminal; a size we cannot read is left alone.
async fn send_window_size(requests: &mpsc::Sender<AttachRequest>, opts: &StdioOptions) {
    let Some((width, height)) = window_size() else {
        return;
    };
    let resize = AttachRequest {
        payload: Some(attach_request::Payload::Resize(ResizePtyRequest {
            container_id: opts.container_id.clone(),
            exec_id: opts.exec_id.clone(),
            width,
            height,
        })),
    };
    // A closed channel means the relay is over; nothing left to resize.
    let _ = requests.send(resize).await;
}

fn window_size() -> Option<(u32, u32)> {
    let size = rustix::termios::tcgetwinsize(std::io::stdin())
        .or_else(|_| rustix::termios::tcgetwinsize(std::io::stdout()))
        .ok()?;
    (size.ws_col > 0 && size.ws_row > 0).then(|| (u32::from(size.ws_col), u32::from(size.ws_row)))
}

/// Reads our stdin on a thread of its own (a blocking read cannot be cancelled, and must not
/// hold up the exit) and queues it for the process.
fn spawn_stdin_reader(requests: mpsc::Sender<AttachRequest>, close_at_end: bool) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; STDIN_CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let chunk = AttachRequest {
                        payload: Some(attach_request::Payload::Stdin(buf[..n].to_vec())),
                    };
                    if requests.blocking_send(chunk).is_err() {
                        return;
                    }
                }
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                // A read error (a hung-up terminal) ends our input as EOF does.
                Err(_) => break,
            }
        }
        if close_at_end {
            let close = AttachRequest {
                payload: Some(attach_request::Payload::CloseStdin(true)),
            };
            let _ = requests.blocking_send(close);
        }
    });
}

/// Our stdout and stderr. A stream whose reader went away (`supctl run ... | head`) is
/// dropped quietly, so that the process still runs to its end and its exit is collected.
struct Output {
    stdout: Option<tokio::io::Stdout>,
    stderr: Option<tokio::io::Stderr>,
}

impl Output {
    fn new() -> Output {
        Output {
            stdout: Some(tokio::io::stdout()),
            stderr: Some(tokio::io::stderr()),
        }
    }

    async fn write(&mut self, frame: OutputFrame) {
        if frame.data.is_empty() {
            return;
        }
        // Flushed frame by frame: output interleaves as the process wrote it, and a prompt
        // without a newline shows at once.
        if frame.stream == StdStream::Stderr as i32 {
            if let Some(stderr) = &mut self.stderr {
                if write_all(stderr, &frame.data).await.is_err() {
                    self.stderr = None;
                }
            }
        } else if let Some(stdout) = &mut self.stdout {
            if write_all(stdout, &frame.data).await.is_err() {
                self.stdout = None;
            }
        }
    }
}

async fn write_all<W: tokio::io::AsyncWrite + Unpin>(
    out: &mut W,
    data: &[u8],
) -> std::io::Result<()> {
    out.write_all(data).await?;
    out.flush().await
}

/// Our terminal in raw mode (no echo, no line editing, keys like Ctrl-C passed through as
/// bytes), back to its old settings when dropped: on the normal path, on errors, and on
/// signals, which the relay turns into a normal return.
struct RawTerminal {
    saved: Termios,
}

impl RawTerminal {
    fn enter() -> anyhow::Result<RawTerminal> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin).context("reading the terminal settings")?;
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        termios::tcsetattr(&stdin, SetArg::TCSANOW, &raw)
            .context("putting the terminal in raw mode")?;
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // TCSADRAIN: the process's last output is on the screen before echo comes back.
        let _ = termios::tcsetattr(std::io::stdin(), SetArg::TCSADRAIN, &self.saved);
    }
}

/// The exit code supctl passes on for a process's exit status: the status itself (the
/// daemon already reports 128+N for a death by signal N), or 255 for anything that does not
/// fit in the 8 bits an exit code has.
pub fn exit_code(status: u32) -> u8 {
    u8::try_from(status).unwrap_or(u8::MAX)
}

/// Ends the command with the process's exit status, saying why when the daemon knows more
/// than the number (an OOM kill, a shim that died).
pub fn finish(name: &str, exit: &WaitResponse) -> anyhow::Result<()> {
    if exit.exit_status != 0 && !exit.reason.is_empty() {
        report(&anyhow::anyhow!(
            "{name} exited with status {}: {}",
            exit.exit_status,
            exit.reason
        ));
    }
    match exit_code(exit.exit_status) {
        0 => Ok(()),
        code => Err(Exit(code).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(3), 3);
        assert_eq!(exit_code(137), 137);
        assert_eq!(exit_code(255), 255);
        assert_eq!(exit_code(256), 255);
        assert_eq!(exit_code(u32::MAX), 255);
    }

    #[test]
    fn finish_maps_status() {
        let exit = |status: u32| WaitResponse {
            exit_status: status,
            ..Default::default()
        };
        assert!(finish("t", &exit(0)).is_ok());
        let err = finish("t", &exit(130)).expect_err("non-zero");
        assert_eq!(err.downcast_ref::<Exit>().map(|e| e.0), Some(130));
        let err = finish("t", &exit(512)).expect_err("non-zero");
        assert_eq!(err.downcast_ref::<Exit>().map(|e| e.0), Some(255));
    }

    #[test]
    fn names() {
        let mut opts = StdioOptions {
            container_id: "t1".into(),
            exec_id: String::new(),
            stdin: false,
            close_stdin: false,
            tty: false,
        };
        assert_eq!(process_name(&opts), "container t1");
        opts.exec_id = "e1".into();
        assert_eq!(process_name(&opts), "process e1 of container t1");
    }
}
