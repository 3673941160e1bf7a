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
use tokio::sync::{mpsc, oneshot};
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
    ///
    /// `signals` are passed on to the process; take them before the process starts, so that
    /// one that comes in between is not lost.
    pub async fn relay(self, signals: Signals) -> anyhow::Result<Relayed> {
        let output = Output::new(tokio::io::stdout(), tokio::io::stderr());
        self.relay_to(output, signals).await
    }

    async fn relay_to(self, mut output: Output, mut signals: Signals) -> anyhow::Result<Relayed> {
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
        let (detach_tx, detach_rx) = oneshot::channel();
        let mut detach = Some(detach_rx);
        if opts.stdin {
            let detach_keys = raw.then_some(detach_tx);
            spawn_stdin_reader(requests.clone(), opts.close_stdin, detach_keys);
        }
        let mut interrupts = 0;
        loop {
            tokio::select! {
                message = responses.message() => match message {
                    Ok(Some(AttachResponse { payload: Some(payload) })) => match payload {
                        attach_response::Payload::Output(frame) => output.write(frame).await,
                        attach_response::Payload::Exit(exit) => return Ok(Relayed::Exited(exit)),
                    },
                    // A payload this client does not know, from a newer daemon.
                    Ok(Some(_)) => {}
                    // The stream ended without the exit frame (the process exited before the
                    // attach was wired up, or the daemon let go of it): ask for the exit.
                    Ok(None) => return wait(&mut tasks, &opts).await.map(Relayed::Exited),
                    Err(status) => {
                        return match wait(&mut tasks, &opts).await {
                            Ok(exit) => Ok(Relayed::Exited(exit)),
                            Err(_) => Err(status.into()),
                        };
                    }
                },
                () = detach_requested(&mut detach) => return Ok(Relayed::Detached),
                Some(()) = next_signal(&mut window) => send_window_size(&requests, &opts).await,
                received = signals.next() => {
                    if received == Signal::SIGINT {
                        interrupts += 1;
                        if interrupts >= INTERRUPTS_BEFORE_DETACH {
                            // After the terminal's echoed ^C, not glued to it.
                            let _ = std::io::Write::write_all(&mut std::io::stderr(), b"\n");
                            return Err(anyhow::anyhow!(
                                "left {} running after {interrupts} interrupts \
                                 (stop it with: supctl tasks kill -s KILL {})",
                                process_name(&opts),
                                kill_args(&opts)
                            ));
                        }
                    }
                    forward(&mut tasks, &opts, received).await?;
                }
            }
        }
    }
}

/// How a relay ended.
#[derive(Debug)]
pub enum Relayed {
    /// The process exited.
    Exited(WaitResponse),
    /// The user typed the detach keys (Ctrl-P Ctrl-Q): the process goes on without us.
    Detached,
}

/// Docker's detach keys, Ctrl-P then Ctrl-Q, so that fingers that know one know the other.
const DETACH_FIRST: u8 = 0x10;
const DETACH_SECOND: u8 = 0x11;

/// Finds the detach keys in what the user typed. Returns the bytes to pass on and whether
/// the keys were typed; a Ctrl-P at the end of a read is held back (`held`) until the next
/// read tells whether a Ctrl-Q follows it.
fn scan_detach(held: &mut bool, input: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::with_capacity(input.len() + 1);
    for &byte in input {
        if *held {
            *held = false;
            if byte == DETACH_SECOND {
                return (out, true);
            }
            out.push(DETACH_FIRST);
        }
        if byte == DETACH_FIRST {
            *held = true;
        } else {
            out.push(byte);
        }
    }
    (out, false)
}

/// Ends the command for a relay that ended: with the process's exit status, or, detached,
/// with a note that it still runs.
pub fn conclude(name: &str, relayed: &Relayed) -> anyhow::Result<()> {
    match relayed {
        Relayed::Exited(exit) => finish(name, exit),
        Relayed::Detached => {
            // The cursor sits where the process left it, mid-line as often as not.
            let _ = std::io::Write::write_all(&mut std::io::stderr(), b"\n");
            report(&anyhow::anyhow!("detached from {name}; it keeps running"));
            Ok(())
        }
    }
}

/// The `tasks kill` arguments that name the process.
fn kill_args(opts: &StdioOptions) -> String {
    if opts.exec_id.is_empty() {
        opts.container_id.clone()
    } else {
        format!("--exec-id {} {}", opts.exec_id, opts.container_id)
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

/// The signals a foreground supctl catches instead of dying from them: passed on to the
/// process while it runs, and a cue to clean up while it is being set up.
pub struct Signals {
    streams: Vec<(Signal, SignalStream)>,
}

impl Signals {
    pub fn catch() -> anyhow::Result<Signals> {
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
        Ok(Signals { streams })
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

    /// A signal received since the last look, if any.
    pub fn received(&mut self) -> Option<Signal> {
        futures::FutureExt::now_or_never(self.next())
    }
}

/// Fails with the exit code a death by `signal` gives, after the caller cleaned up.
pub fn interrupted(signal: Signal) -> anyhow::Error {
    Exit(128u8.saturating_add(signal as u8)).into()
}

/// Resolves when the stdin reader saw the detach keys; never, once it is gone without them.
async fn detach_requested(receiver: &mut Option<oneshot::Receiver<()>>) {
    if let Some(pending) = receiver.as_mut() {
        if pending.await.is_ok() {
            return;
        }
    }
    // A receiver that has answered must not be polled again.
    *receiver = None;
    std::future::pending().await
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
/// hold up the exit) and queues it for the process. With `detach`, the detach keys are
/// looked for (in raw mode, where no signal can get the user out) and reported there.
fn spawn_stdin_reader(
    requests: mpsc::Sender<AttachRequest>,
    close_at_end: bool,
    detach: Option<oneshot::Sender<()>>,
) {
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; STDIN_CHUNK];
        let mut held = false;
        loop {
            let n = match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
                // A read error (a hung-up terminal) ends our input as EOF does.
                Err(_) => break,
            };
            let (data, detached) = match detach {
                Some(_) => scan_detach(&mut held, &buf[..n]),
                None => (buf[..n].to_vec(), false),
            };
            if !data.is_empty() {
                let chunk = AttachRequest {
                    payload: Some(attach_request::Payload::Stdin(data)),
                };
                if requests.blocking_send(chunk).is_err() {
                    return;
                }
            }
            if detached {
                if let Some(detach) = detach {
                    let _ = detach.send(());
                }
                return;
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

type Sink = Box<dyn tokio::io::AsyncWrite + Unpin + Send>;

/// Where output frames go: our stdout and stderr. A stream whose reader went away
/// (`supctl run ... | head`) is dropped quietly, so that the process still runs to its end
/// and its exit is collected.
struct Output {
    stdout: Option<Sink>,
    stderr: Option<Sink>,
}

impl Output {
    fn new(
        stdout: impl tokio::io::AsyncWrite + Unpin + Send + 'static,
        stderr: impl tokio::io::AsyncWrite + Unpin + Send + 'static,
    ) -> Output {
        Output {
            stdout: Some(Box::new(stdout)),
            stderr: Some(Box::new(stderr)),
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
mod relay_tests;

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
    fn detach_keys() {
        let mut held = false;
        assert_eq!(scan_detach(&mut held, b"ls\r"), (b"ls\r".to_vec(), false));
        assert_eq!(scan_detach(&mut held, b"a\x10\x11b"), (b"a".to_vec(), true));
        // Ctrl-P alone goes through once the next byte shows it is not the sequence.
        let mut held = false;
        assert_eq!(scan_detach(&mut held, b"x\x10"), (b"x".to_vec(), false));
        assert!(held);
        assert_eq!(scan_detach(&mut held, b"y"), (b"\x10y".to_vec(), false));
        assert!(!held);
        assert_eq!(scan_detach(&mut held, b"\x10"), (Vec::new(), false));
        assert_eq!(scan_detach(&mut held, b"\x11"), (Vec::new(), true));
        let mut held = false;
        assert_eq!(
            scan_detach(&mut held, b"\x10\x10\x11"),
            (b"\x10".to_vec(), true)
        );
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
        assert_eq!(kill_args(&opts), "t1");
        opts.exec_id = "e1".into();
        assert_eq!(process_name(&opts), "process e1 of container t1");
        assert_eq!(kill_args(&opts), "--exec-id e1 t1");
    }
}
