//! What the chaos workload knows: each container's, exec's and image's last step that supd
//! acknowledged and the step in flight when it went down; and how the state listed after a
//! restart is judged against that: certain where supd answered, either way where it did not.

use std::collections::BTreeMap;

use sup_client::api;
use tonic::{Code, Status};

use super::{status_name, Proc};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `sleep 3600`: runs until killed.
    Long,
    /// Prints a line and exits with this code.
    Short(u32),
}

/// A container's life, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Step {
    ContainerCreated,
    TaskCreated,
    Started,
    Killed,
    Waited,
    TaskDeleted,
    ContainerDeleted,
}

/// What the test knows of a container it made.
#[derive(Debug, Clone)]
pub struct Ctr {
    pub kind: Kind,
    /// The last step supd acknowledged.
    pub done: Option<Step>,
    /// A step asked for and not answered.
    pub asked: Option<Step>,
    pub pid: Option<u32>,
    pub init: Option<Proc>,
}

/// An exec'd process's life, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ExecStep {
    Added,
    Started,
    Waited,
    Deleted,
}

/// What the test knows of a process it exec'd.
#[derive(Debug, Clone)]
pub struct Exec {
    pub container: String,
    pub exec_id: String,
    pub code: u32,
    pub done: Option<ExecStep>,
    pub asked: Option<ExecStep>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageState {
    Importing,
    Imported,
    Deleting,
    Deleted,
}

/// Everything the workload did, for the checks after a restart.
#[derive(Debug, Default, Clone)]
pub struct Model {
    pub containers: BTreeMap<String, Ctr>,
    pub execs: Vec<Exec>,
    pub images: BTreeMap<String, ImageState>,
    /// Wrong answers, and errors while supd was up: bugs.
    pub failures: Vec<String>,
    /// Operations completed.
    pub ops: usize,
}

impl Model {
    /// What was asked and not answered, for messages.
    pub fn in_flight(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .containers
            .iter()
            .filter_map(|(id, c)| c.asked.map(|s| format!("{id}: {s:?}")))
            .collect();
        out.extend(
            self.execs
                .iter()
                .filter_map(|e| Some(format!("{}/{}: {:?}", e.container, e.exec_id, e.asked?))),
        );
        out.extend(
            self.images
                .iter()
                .filter(|(_, s)| matches!(s, ImageState::Importing | ImageState::Deleting))
                .map(|(name, s)| format!("{name}: {s:?}")),
        );
        out
    }
}

/// Whether the container must exist (Some(true)), must not (Some(false)), or may either way.
pub fn expect_container(c: &Ctr) -> Option<bool> {
    match (c.done, c.asked) {
        (_, Some(Step::ContainerCreated | Step::ContainerDeleted)) => None,
        (Some(Step::ContainerDeleted) | None, _) => Some(false),
        (Some(_), _) => Some(true),
    }
}

/// Whether the container's task must exist, must not, or may either way.
pub fn expect_task(c: &Ctr) -> Option<bool> {
    match (c.done, c.asked) {
        (_, Some(Step::TaskCreated | Step::TaskDeleted)) => None,
        (Some(d), _) => Some((Step::TaskCreated..Step::TaskDeleted).contains(&d)),
        (None, _) => Some(false),
    }
}

/// What is wrong with a listed task, given what supd acknowledged about it.
pub fn judge_task(id: &str, c: &Ctr, p: &api::Process) -> Vec<String> {
    let long = c.kind == Kind::Long;
    let allowed: &[&str] = match (c.done, c.asked) {
        (_, Some(Step::TaskCreated)) => &["created"],
        (Some(Step::TaskCreated), None) => &["created"],
        (Some(Step::TaskCreated), _) if long => &["created", "running"],
        (Some(Step::TaskCreated), _) => &["created", "running", "stopped"],
        (Some(Step::Started), None) if long => &["running"],
        (Some(Step::Started), _) => &["running", "stopped"],
        _ => &["stopped"],
    };
    let status = status_name(p);
    let mut wrong = Vec::new();
    if !allowed.contains(&status) {
        wrong.push(format!(
            "task {id} ({:?}, acknowledged {:?}, in flight {:?}) is {status}, expected one of \
             {allowed:?}: {p:?}",
            c.kind, c.done, c.asked
        ));
    }
    if c.pid.is_some_and(|pid| pid != p.pid) {
        wrong.push(format!(
            "task {id}: pid {}, created with {:?}",
            p.pid, c.pid
        ));
    }
    if status == "running" && !c.init.is_some_and(|i| i.alive()) {
        wrong.push(format!(
            "task {id} reported running, but its init {} is not the process it started as",
            p.pid
        ));
    }
    let code = match c.kind {
        Kind::Long => 137,
        Kind::Short(code) => code,
    };
    if status == "stopped" && p.exit_status != code {
        wrong.push(format!(
            "task {id}: exit status {}, expected {code}",
            p.exit_status
        ));
    }
    wrong
}

/// What is wrong with an exec'd process's Tasks.Get, given what supd acknowledged.
pub fn judge_exec(e: &Exec, got: &Result<api::Process, Status>) -> Vec<String> {
    let name = format!("exec {}/{}", e.container, e.exec_id);
    let p = match got {
        Err(s) if s.code() == Code::NotFound => {
            let may_be_gone =
                e.done.is_none_or(|d| d == ExecStep::Deleted) || e.asked == Some(ExecStep::Deleted);
            return if may_be_gone {
                vec![]
            } else {
                vec![format!(
                    "{name} ({:?}, in flight {:?}) is gone",
                    e.done, e.asked
                )]
            };
        }
        Err(s) => {
            return vec![format!(
                "{name}: Tasks.Get: {}",
                format!("{:?}: {}", s.code(), s.message())
            )]
        }
        Ok(p) => p,
    };
    let allowed: &[&str] = match (e.done, e.asked) {
        (Some(ExecStep::Deleted), None) => &[],
        (None, _) | (Some(ExecStep::Added), None) => &["created"],
        (Some(ExecStep::Added), _) => &["created", "running", "stopped"],
        (Some(ExecStep::Started), _) => &["running", "stopped"],
        _ => &["stopped"],
    };
    let status = status_name(p);
    let mut wrong = Vec::new();
    if !allowed.contains(&status) {
        wrong.push(format!(
            "{name} (acknowledged {:?}, in flight {:?}) is {status}, expected {allowed:?}",
            e.done, e.asked
        ));
    }
    if status == "stopped" && p.exit_status != e.code {
        wrong.push(format!(
            "{name}: exit status {}, expected {}",
            p.exit_status, e.code
        ));
    }
    wrong
}
