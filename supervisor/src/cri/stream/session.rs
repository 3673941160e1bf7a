//! One exec or attach session, whatever carries it: the client's input (stdin, its end,
//! terminal sizes) goes to the process through the shim's Attach stream, the process's
//! output comes back, and the session ends with how the process ended. A client that goes
//! away mid-exec takes its process with it: killed, waited for and deleted.

use bytes::Bytes;
use futures::StreamExt;
use k8s_cri::v1 as cri;
use tokio::sync::mpsc;

use super::protocol::{Outcome, Size};
use crate::cri::{Cri, NAMESPACE};
use crate::service::tasks::attach::{AttachInput, AttachOptions, AttachOutput, Attached};

/// What the client sends.
#[derive(Debug)]
pub enum Input {
    Stdin(Bytes),
    /// The client closed its stdin.
    StdinEnd,
    Resize(Size),
}

/// What the process writes.
#[derive(Debug)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
}

/// The client's side of a session. `input` ends (None) when the client has gone; a send on
/// `output` fails when it has.
pub struct Io {
    pub input: mpsc::Receiver<Input>,
    pub output: mpsc::Sender<Output>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Done(Outcome),
    ClientGone,
}

/// Which process, and what to do with the client's stdin end.
struct Target<'a> {
    id: &'a str,
    exec_id: &'a str,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    /// Close the process's stdin when the client closes its own.
    close_stdin_at_end: bool,
}

/// Runs `req.cmd` in its container for the client on `io`.
pub async fn exec(cri: &Cri, req: &cri::ExecRequest, io: Io) -> Ended {
    let svc = &cri.services;
    let exec_id = match crate::cri::new_id() {
        Ok(n) => format!("exec-{n}"),
        Err(e) => return Ended::Done(Outcome::Failed(e.to_string())),
    };
    let process = crate::service::tasks::ExecProcess {
        args: req.cmd.clone(),
        terminal: req.tty,
        ..Default::default()
    };
    let id = req.container_id.as_str();
    if let Err(e) = svc
        .task_exec(NAMESPACE, id, &exec_id, &process, req.stdin)
        .await
    {
        return Ended::Done(Outcome::Failed(e.to_string()));
    }
    let target = Target {
        id,
        exec_id: &exec_id,
        stdin: req.stdin,
        stdout: req.stdout,
        stderr: req.stderr && !req.tty,
        close_stdin_at_end: true,
    };
    let ended = follow(cri, &target, io, true).await;
    let ended = match ended {
        Followed::Exited(code) => Ended::Done(if code == 0 {
            Outcome::Success
        } else {
            Outcome::Exited(code)
        }),
        Followed::Failed(msg) => Ended::Done(Outcome::Failed(msg)),
        Followed::ClientGone => {
            tracing::info!(container = %id, exec = %exec_id, "stream client gone: killing its exec");
            if let Err(e) = svc.task_kill(NAMESPACE, id, &exec_id, 9, false).await {
                tracing::debug!(error = %e, "killing an abandoned exec");
            }
            let _ = svc.task_wait(NAMESPACE, id, &exec_id).await;
            Ended::ClientGone
        }
    };
    if let Err(e) = svc.task_delete_process(NAMESPACE, id, &exec_id).await {
        tracing::warn!(container = %id, exec = %exec_id, error = %e, "deleting an exec");
    }
    ended
}

/// Connects the client on `io` to the container's own stdio until the container exits or
/// the client leaves. `container_stdin`: the container was made with a stdin to write to.
pub async fn attach(
    cri: &Cri,
    req: &cri::AttachRequest,
    container_stdin: bool,
    stdin_once: bool,
    io: Io,
) -> Ended {
    let target = Target {
        id: &req.container_id,
        exec_id: "",
        stdin: req.stdin && container_stdin,
        stdout: req.stdout,
        stderr: req.stderr && !req.tty,
        close_stdin_at_end: stdin_once,
    };
    match follow(cri, &target, io, false).await {
        Followed::Exited(_) => Ended::Done(Outcome::Success),
        Followed::Failed(msg) => Ended::Done(Outcome::Failed(msg)),
        Followed::ClientGone => Ended::ClientGone,
    }
}

enum Followed {
    Exited(i32),
    Failed(String),
    ClientGone,
}

/// Attaches to the process (starting it first when `start`) and relays until it exits.
async fn follow(cri: &Cri, t: &Target<'_>, mut io: Io, start: bool) -> Followed {
    let svc = &cri.services;
    let opts = AttachOptions {
        exec_id: t.exec_id.to_string(),
        stdin: t.stdin,
        stdout: t.stdout,
        stderr: t.stderr,
        // An exec is attached before it starts: nothing is missed. An attach sees what the
        // container writes from now on, as the kubelet's does.
        logs: start,
    };
    let Attached {
        input: tx,
        mut output,
    } = match svc.task_attach(NAMESPACE, t.id, &opts).await {
        Ok(a) => a,
        Err(e) => return Followed::Failed(e.to_string()),
    };
    if start {
        if let Err(e) = svc.task_start(NAMESPACE, t.id, t.exec_id).await {
            return Followed::Failed(e.to_string());
        }
    }
    let mut exit = None;
    let mut stdin_open = t.stdin;
    loop {
        tokio::select! {
            msg = output.next() => match msg {
                Some(Ok(AttachOutput::Exit(w))) => {
                    exit = Some(w.exit_status);
                    break;
                }
                Some(Ok(AttachOutput::Stdout(data))) => {
                    if io.output.send(Output::Stdout(Bytes::from(data))).await.is_err() {
                        return Followed::ClientGone;
                    }
                }
                Some(Ok(AttachOutput::Stderr(data))) => {
                    if io.output.send(Output::Stderr(Bytes::from(data))).await.is_err() {
                        return Followed::ClientGone;
                    }
                }
                None => break,
                Some(Err(e)) => {
                    tracing::debug!(container = %t.id, error = %e, "attach stream ended");
                    break;
                }
            },
            input = io.input.recv() => match input {
                Some(Input::Stdin(data)) if stdin_open => {
                    let _ = tx.send(AttachInput::Stdin(data.to_vec())).await;
                }
                Some(Input::Stdin(_)) => {}
                Some(Input::StdinEnd) => {
                    if stdin_open && t.close_stdin_at_end {
                        let _ = tx.send(AttachInput::CloseStdin).await;
                    }
                    stdin_open = false;
                }
                Some(Input::Resize(size)) => {
                    let resize = AttachInput::Resize {
                        width: u32::from(size.width),
                        height: u32::from(size.height),
                    };
                    let _ = tx.send(resize).await;
                }
                None => return Followed::ClientGone,
            },
        }
    }
    drop(tx);
    let code = match exit {
        Some(code) => code,
        None => match svc.task_wait(NAMESPACE, t.id, t.exec_id).await {
            Ok(w) => w.exit_status,
            Err(e) => return Followed::Failed(e.to_string()),
        },
    };
    Followed::Exited(i32::try_from(code).unwrap_or(255))
}
