//! ExecSync: a process run in a container through the Tasks service, its output collected
//! over the shim's Attach stream, bounded in time and size.

use std::time::Duration;

use futures::StreamExt;
use k8s_cri::v1 as cri;

use super::{Cri, NAMESPACE};
use crate::error::Result;
use crate::service::tasks::attach::{AttachOptions, AttachOutput, Attached};

/// Output kept per stream; the rest is dropped (the CRI's own limit is 16 MiB).
const MAX_OUTPUT: usize = 16 << 20;

#[derive(Default)]
struct Collected {
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    exit: Option<u32>,
}

fn keep(buf: &mut Vec<u8>, data: &[u8]) {
    let room = MAX_OUTPUT.saturating_sub(buf.len());
    buf.extend_from_slice(&data[..data.len().min(room)]);
}

impl Cri {
    /// Runs `cmd` in the container and returns its output and exit code; None when it did
    /// not finish within `timeout` seconds (0: no limit) and was killed.
    pub async fn exec_sync(
        &self,
        id: &str,
        cmd: Vec<String>,
        timeout: i64,
    ) -> Result<Option<cri::ExecSyncResponse>> {
        let id = self.resolve_container(id)?;
        let exec_id = format!("exec-{}", super::new_id()?);
        let process = crate::service::tasks::ExecProcess {
            args: cmd,
            ..Default::default()
        };
        let svc = &self.services;
        svc.task_exec(NAMESPACE, &id, &exec_id, &process, false)
            .await?;
        let result = self.run_exec(&id, &exec_id, timeout).await;
        if let Err(e) = svc.task_delete_process(NAMESPACE, &id, &exec_id).await {
            tracing::warn!(container = %id, exec = %exec_id, error = %e, "deleting an exec");
        }
        result
    }

    async fn run_exec(
        &self,
        id: &str,
        exec_id: &str,
        timeout: i64,
    ) -> Result<Option<cri::ExecSyncResponse>> {
        let svc = &self.services;
        let opts = AttachOptions {
            exec_id: exec_id.to_string(),
            stdin: false,
            stdout: true,
            stderr: true,
            logs: true,
        };
        // Kept until the output is read: the attachment lasts while the caller's half is open.
        let Attached { input, mut output } = svc.task_attach(NAMESPACE, id, &opts).await?;
        svc.task_start(NAMESPACE, id, exec_id).await?;
        let collect = async {
            let mut c = Collected::default();
            while let Some(Ok(out)) = output.next().await {
                match out {
                    AttachOutput::Stderr(data) => keep(&mut c.stderr, &data),
                    AttachOutput::Stdout(data) => keep(&mut c.stdout, &data),
                    AttachOutput::Exit(w) => c.exit = Some(w.exit_status),
                }
            }
            c
        };
        let collected = if timeout > 0 {
            let limit = Duration::from_secs(u64::try_from(timeout).unwrap_or(0));
            match tokio::time::timeout(limit, collect).await {
                Ok(c) => c,
                Err(_) => {
                    let _ = svc.task_kill(NAMESPACE, id, exec_id, 9, false).await;
                    let _ = svc.task_wait(NAMESPACE, id, exec_id).await;
                    return Ok(None);
                }
            }
        } else {
            collect.await
        };
        drop(input);
        let code = match collected.exit {
            Some(c) => c,
            None => svc.task_wait(NAMESPACE, id, exec_id).await?.exit_status,
        };
        Ok(Some(cri::ExecSyncResponse {
            stdout: collected.stdout,
            stderr: collected.stderr,
            exit_code: i32::try_from(code).unwrap_or(255),
        }))
    }
}
