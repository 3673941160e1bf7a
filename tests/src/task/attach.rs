//! Attach streams as tests use them: stdin, close and resize going in, stdout, stderr and
//! the exit frame collected, with deadlines on every read.

use std::time::Duration;

use sup_client::api;
use tokio::sync::mpsc;
use tonic::Status;

use super::{show, EXIT_TIMEOUT};

/// What a process wrote, and how it ended when that was seen.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub exit: Option<api::WaitResponse>,
}

/// Reads frames of an attached process as a test asks for them.
pub struct Attached {
    pub(super) tx: mpsc::Sender<api::AttachRequest>,
    pub(super) stream: tonic::Streaming<api::AttachResponse>,
    /// Everything received so far.
    pub seen: Captured,
    pub(super) ended: bool,
}

impl Attached {
    async fn send(&self, payload: api::attach_request::Payload) {
        self.tx
            .send(api::AttachRequest {
                payload: Some(payload),
            })
            .await
            .expect("the attach call is gone");
    }

    pub async fn stdin(&self, data: &[u8]) {
        self.send(api::attach_request::Payload::Stdin(data.to_vec()))
            .await
    }

    pub async fn close_stdin(&self) {
        self.send(api::attach_request::Payload::CloseStdin(true))
            .await
    }

    pub async fn resize(&self, width: u32, height: u32) {
        self.send(api::attach_request::Payload::Resize(
            api::ResizePtyRequest {
                width,
                height,
                ..Default::default()
            },
        ))
        .await
    }

    /// Reads the next frame into `seen`; false once the stream has ended.
    async fn next(&mut self) -> Result<bool, Status> {
        if self.ended {
            return Ok(false);
        }
        match self.stream.message().await? {
            None => {
                self.ended = true;
                Ok(false)
            }
            Some(msg) => {
                match msg.payload {
                    Some(api::attach_response::Payload::Output(frame)) => {
                        match api::StdStream::try_from(frame.stream) {
                            Ok(api::StdStream::Stderr) => {
                                self.seen.stderr.extend_from_slice(&frame.data)
                            }
                            _ => self.seen.stdout.extend_from_slice(&frame.data),
                        }
                    }
                    Some(api::attach_response::Payload::Exit(exit)) => self.seen.exit = Some(exit),
                    None => {}
                }
                Ok(true)
            }
        }
    }

    /// Reads until `done` holds of what was seen; panics if the stream ends or fails first,
    /// or after `timeout`.
    pub async fn read_until(
        &mut self,
        what: &str,
        timeout: Duration,
        done: impl Fn(&Captured) -> bool,
    ) {
        let work = async {
            while !done(&self.seen) {
                if !self.next().await? {
                    return Err(Status::unknown("the attach stream ended"));
                }
            }
            Ok(())
        };
        let result = tokio::time::timeout(timeout, work).await;
        let why = match result {
            Ok(Ok(())) => return,
            Ok(Err(s)) => format!("{:?}: {}", s.code(), s.message()),
            Err(_) => format!("nothing more within {timeout:?}"),
        };
        panic!(
            "waiting for {what} on attach: {why}; stdout so far {}, stderr so far {}",
            show(&self.seen.stdout),
            show(&self.seen.stderr)
        );
    }

    /// Reads until stdout ends with `tail`.
    pub async fn stdout_until(&mut self, tail: &[u8]) {
        let what = format!("stdout ending in {}", show(tail));
        self.read_until(&what, EXIT_TIMEOUT, |c| c.stdout.ends_with(tail))
            .await
    }

    /// Reads to the end of the stream (the process exited) and returns all that was seen.
    pub async fn finish(mut self, timeout: Duration) -> Captured {
        let work = async {
            while self.next().await? {}
            Ok::<_, Status>(())
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(())) => self.seen,
            Ok(Err(s)) => panic!(
                "attach stream failed: {:?}: {}; stdout so far {}, stderr so far {}",
                s.code(),
                s.message(),
                show(&self.seen.stdout),
                show(&self.seen.stderr)
            ),
            Err(_) => panic!(
                "attach stream did not end within {timeout:?}; stdout so far {}, stderr so far {}",
                show(&self.seen.stdout),
                show(&self.seen.stderr)
            ),
        }
    }
}
