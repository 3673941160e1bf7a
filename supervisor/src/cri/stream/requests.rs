//! Exec, Attach and PortForward as the CRI calls them: the request is checked now, so that
//! a bad one gets its gRPC error before any connection, and answered with a stream URL.

use k8s_cri::v1 as cri;

use super::tokens::Request;
use crate::cri::{Cri, NAMESPACE};
use crate::error::{Error, Result};

fn check_streams(what: &str, stdin: bool, stdout: bool, stderr: bool, tty: bool) -> Result<()> {
    if tty && stderr {
        return Err(Error::invalid(format!(
            "{what}: tty and stderr cannot both be set (a terminal has one output)"
        )));
    }
    if !stdin && !stdout && !stderr {
        return Err(Error::invalid(format!(
            "{what}: one of stdin, stdout and stderr must be set"
        )));
    }
    Ok(())
}

impl Cri {
    async fn running_container(&self, what: &str, id: &str) -> Result<String> {
        let id = self.resolve_container(id)?;
        let running = match self.services.process_status(NAMESPACE, &id, "").await {
            Ok(st) => matches!(st.status, crate::service::tasks::TaskStatus::Running),
            Err(Error::NotFound(_)) => false,
            Err(e) => return Err(e),
        };
        if !running {
            return Err(Error::FailedPrecondition(format!(
                "{what}: container {id:?} is not running"
            )));
        }
        Ok(id)
    }

    pub async fn exec_url(&self, mut req: cri::ExecRequest) -> Result<String> {
        if req.cmd.is_empty() || req.cmd[0].is_empty() {
            return Err(Error::invalid("exec: cmd is required"));
        }
        check_streams("exec", req.stdin, req.stdout, req.stderr, req.tty)?;
        req.container_id = self.running_container("exec", &req.container_id).await?;
        self.stream.url(Request::Exec(req))
    }

    pub async fn attach_url(&self, mut req: cri::AttachRequest) -> Result<String> {
        check_streams("attach", req.stdin, req.stdout, req.stderr, req.tty)?;
        req.container_id = self.running_container("attach", &req.container_id).await?;
        let rec = self.records.container(&req.container_id)?;
        if rec.config.tty != req.tty {
            return Err(Error::invalid(format!(
                "attach: tty {} does not match container {:?}, made with tty {}",
                req.tty, req.container_id, rec.config.tty
            )));
        }
        self.stream.url(Request::Attach(req))
    }

    pub async fn port_forward_url(&self, mut req: cri::PortForwardRequest) -> Result<String> {
        req.pod_sandbox_id = self.resolve_sandbox(&req.pod_sandbox_id)?;
        if let Some(bad) = req.port.iter().find(|p| !(1..=65535).contains(*p)) {
            return Err(Error::invalid(format!(
                "port forward: port {bad} is not a TCP port"
            )));
        }
        let rec = self.records.sandbox(&req.pod_sandbox_id)?;
        if rec.stopped || !self.sandbox_ready(&rec).await {
            return Err(Error::FailedPrecondition(format!(
                "port forward: pod sandbox {:?} is not ready",
                req.pod_sandbox_id
            )));
        }
        self.stream.url(Request::PortForward(req))
    }
}
