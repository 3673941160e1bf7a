//! The chaos workload: lanes of random operations (imports, short and long containers, execs
//! into long-lived containers, attaches, kills, deletes) against a World. Each lane records in
//! a shared [`Model`] what supd acknowledged and what was still in flight when it went down.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use sup_client::api;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::model::{Ctr, Exec, ExecStep, ImageState, Kind, Model, Step};
use super::{Proc, Rng};
use crate::image::name_annotations;
use crate::task::{command, sh, World};
use crate::{Compression, ImageBuilder, LayerBuilder, OciArchive};

/// How long one call may take while supd is up.
const OP_TIMEOUT: Duration = Duration::from_secs(30);

/// One round's workload against a world.
pub struct Workload<'w> {
    pub world: &'w World,
    pub model: Arc<Mutex<Model>>,
    /// Set just before supd is signalled: errors from then on are the fault's doing.
    pub going_down: Arc<AtomicBool>,
    /// Long-lived containers to exec into.
    pub residents: Vec<String>,
    pub round: usize,
}

/// Reads an attach stream to its end: stdout and the exit status if it came.
async fn read_attach(
    mut stream: tonic::Streaming<api::AttachResponse>,
) -> Result<(Vec<u8>, Option<u32>), Status> {
    let mut stdout = Vec::new();
    let mut exit = None;
    while let Some(msg) = stream.message().await? {
        match msg.payload {
            Some(api::attach_response::Payload::Output(f))
                if f.stream == api::StdStream::Stdout as i32 =>
            {
                stdout.extend_from_slice(&f.data)
            }
            Some(api::attach_response::Payload::Exit(e)) => exit = Some(e.exit_status),
            _ => {}
        }
    }
    Ok((stdout, exit))
}

type Attach = (
    mpsc::Sender<api::AttachRequest>,
    tonic::Streaming<api::AttachResponse>,
);

impl Workload<'_> {
    pub fn with<T>(&self, f: impl FnOnce(&mut Model) -> T) -> T {
        let mut model = self.model.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut model)
    }

    fn down(&self) -> bool {
        self.going_down.load(Ordering::SeqCst)
    }

    fn fail(&self, what: String) {
        self.with(|m| m.failures.push(what));
    }

    /// Runs a call; None when it failed, recorded as a failure unless supd is going down.
    async fn call<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Option<T> {
        match tokio::time::timeout(OP_TIMEOUT, call).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(s)) => {
                if !self.down() {
                    self.fail(format!("{what}: {:?}: {}", s.code(), s.message()));
                }
                None
            }
            Err(_) => {
                if !self.down() {
                    self.fail(format!("{what}: no answer within {OP_TIMEOUT:?}"));
                }
                None
            }
        }
    }

    /// A call that moves a container to `step`.
    async fn step<T>(
        &self,
        id: &str,
        step: Step,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Option<T> {
        self.with(|m| {
            if let Some(c) = m.containers.get_mut(id) {
                c.asked = Some(step);
            }
        });
        let r = self.call(&format!("{id}: {step:?}"), call).await;
        if r.is_some() {
            self.with(|m| {
                if let Some(c) = m.containers.get_mut(id) {
                    c.done = Some(step);
                    c.asked = None;
                }
            });
        }
        r
    }

    /// A call that moves exec number `at` to `step`.
    async fn exec_step<T>(
        &self,
        at: usize,
        step: ExecStep,
        call: impl Future<Output = Result<T, Status>>,
    ) -> Option<T> {
        let what = self.with(|m| {
            m.execs[at].asked = Some(step);
            format!(
                "{}/{}: {step:?}",
                m.execs[at].container, m.execs[at].exec_id
            )
        });
        let r = self.call(&what, call).await;
        if r.is_some() {
            self.with(|m| {
                m.execs[at].done = Some(step);
                m.execs[at].asked = None;
            });
        }
        r
    }

    fn check_code(&self, what: &str, got: u32, want: u32) {
        if got != want {
            self.fail(format!("{what}: exit status {got}, expected {want}"));
        }
    }

    async fn attach(&self, id: &str, exec_id: &str) -> Result<Attach, Status> {
        let (tx, rx) = mpsc::channel(4);
        let options = api::AttachOptions {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        tx.send(api::AttachRequest {
            payload: Some(api::attach_request::Payload::Options(options)),
        })
        .await
        .map_err(|_| Status::unknown("attach channel closed (test harness)"))?;
        let stream = self
            .world
            .client
            .tasks()
            .attach(ReceiverStream::new(rx))
            .await?
            .into_inner();
        Ok((tx, stream))
    }

    /// Reads an attached process's output to its end and checks it.
    async fn check_attach(&self, what: &str, attached: Attach, stdout: &str, code: u32) -> bool {
        let (tx, stream) = attached;
        let Some((out, exit)) = self.call(what, read_attach(stream)).await else {
            return false;
        };
        drop(tx);
        if out != stdout.as_bytes() {
            self.fail(format!(
                "{what}: stdout {:?}, expected {stdout:?}",
                String::from_utf8_lossy(&out)
            ));
        }
        if exit != Some(code) {
            self.fail(format!("{what}: exit {exit:?}, expected {code}"));
        }
        true
    }

    async fn wait(&self, id: &str, exec_id: &str) -> Result<api::WaitResponse, Status> {
        let req = api::WaitRequest {
            container_id: id.to_string(),
            exec_id: exec_id.to_string(),
        };
        Ok(self.world.client.tasks().wait(req).await?.into_inner())
    }

    /// Random operations until one fails, supd goes down, or `max_ops` are done.
    pub async fn lane(&self, lane: usize, mut rng: Rng, max_ops: usize) {
        for n in 0..max_ops {
            if self.down() {
                return;
            }
            let ok = match rng.below(100) {
                0..=19 => self.import(lane, n, &mut rng).await,
                20..=49 => self.short(lane, n, &mut rng).await,
                50..=64 => self.long(lane, n).await,
                65..=84 => self.exec(lane, n, &mut rng).await,
                85..=94 => self.stop_long(lane, &mut rng).await,
                _ => self.delete_image(lane, &mut rng).await,
            };
            if !ok {
                return;
            }
            self.with(|m| m.ops += 1);
        }
    }

    async fn import(&self, lane: usize, n: usize, rng: &mut Rng) -> bool {
        let name = format!("example.com/chaos/r{}-l{lane}-{n}:1", self.round);
        let size = 64 + rng.below(4096) as usize;
        let mut layer = LayerBuilder::new();
        layer.file("chaos/data", rng.bytes(size));
        layer.file("chaos/name", name.as_bytes());
        let image = ImageBuilder::new()
            .layer(layer.build(Compression::Gzip))
            .build();
        let archive = OciArchive::new()
            .image(&image, name_annotations(&name))
            .build();
        self.with(|m| m.images.insert(name.clone(), ImageState::Importing));
        let imported =
            crate::rpc::import(&self.world.client, api::ImportOptions::default(), &archive);
        if self
            .call(&format!("import {name}"), imported)
            .await
            .is_none()
        {
            return false;
        }
        self.with(|m| m.images.insert(name, ImageState::Imported));
        true
    }

    async fn delete_image(&self, lane: usize, rng: &mut Rng) -> bool {
        let mine = format!("-l{lane}-");
        let names: Vec<String> = self.with(|m| {
            m.images
                .iter()
                .filter(|(n, s)| n.contains(&mine) && **s == ImageState::Imported)
                .map(|(n, _)| n.clone())
                .collect()
        });
        let Some(name) = names.get(rng.below(names.len() as u64) as usize).cloned() else {
            return true;
        };
        self.with(|m| m.images.insert(name.clone(), ImageState::Deleting));
        let deleted = crate::rpc::delete_image(&self.world.client, &name);
        if self
            .call(&format!("delete {name}"), deleted)
            .await
            .is_none()
        {
            return false;
        }
        self.with(|m| m.images.insert(name, ImageState::Deleted));
        true
    }

    fn new_ctr(&self, id: &str, kind: Kind) {
        let ctr = Ctr {
            kind,
            done: None,
            asked: None,
            pid: None,
            init: None,
        };
        self.with(|m| m.containers.insert(id.to_string(), ctr));
    }

    fn started(&self, id: &str, pid: u32) {
        self.with(|m| {
            if let Some(c) = m.containers.get_mut(id) {
                c.pid = Some(pid);
                c.init = Proc::of(pid);
            }
        });
    }

    async fn short(&self, lane: usize, n: usize, rng: &mut Rng) -> bool {
        let id = format!("r{}l{lane}s{n}", self.round);
        let code = rng.below(120) as u32;
        let (attach, delete_task, delete_container) =
            (rng.chance(50), rng.chance(60), rng.chance(50));
        self.new_ctr(&id, Kind::Short(code));
        let script = format!("echo short-{id}; exit {code}");
        let world = self.world;
        let create = world.create_container(&id, sh(&script));
        if self
            .step(&id, Step::ContainerCreated, create)
            .await
            .is_none()
        {
            return false;
        }
        let Some(pid) = self
            .step(&id, Step::TaskCreated, world.create_task(&id, false))
            .await
        else {
            return false;
        };
        self.started(&id, pid);
        let attached = if attach {
            match self
                .call(&format!("{id}: attach"), self.attach(&id, ""))
                .await
            {
                Some(a) => Some(a),
                None => return false,
            }
        } else {
            None
        };
        match self
            .step(&id, Step::Started, world.try_start(&id, ""))
            .await
        {
            Some(started) => self.check_code(&format!("{id}: start pid"), started, pid),
            None => return false,
        }
        if let Some(a) = attached {
            let stdout = format!("short-{id}\n");
            if !self
                .check_attach(&format!("{id}: attach"), a, &stdout, code)
                .await
            {
                return false;
            }
        }
        match self.step(&id, Step::Waited, self.wait(&id, "")).await {
            Some(w) => self.check_code(&format!("{id}: wait"), w.exit_status, code),
            None => return false,
        }
        if !delete_task {
            return true;
        }
        match self
            .step(&id, Step::TaskDeleted, world.delete_task(&id, false))
            .await
        {
            Some(d) => self.check_code(&format!("{id}: delete"), d.exit_status, code),
            None => return false,
        }
        if !delete_container {
            return true;
        }
        let deleted = world.delete_container(&id);
        self.step(&id, Step::ContainerDeleted, deleted)
            .await
            .is_some()
    }

    async fn long(&self, lane: usize, n: usize) -> bool {
        let id = format!("r{}l{lane}L{n}", self.round);
        self.new_ctr(&id, Kind::Long);
        let world = self.world;
        let create = world.create_container(&id, command(&["sleep", "3600"]));
        if self
            .step(&id, Step::ContainerCreated, create)
            .await
            .is_none()
        {
            return false;
        }
        let Some(pid) = self
            .step(&id, Step::TaskCreated, world.create_task(&id, false))
            .await
        else {
            return false;
        };
        self.started(&id, pid);
        match self
            .step(&id, Step::Started, world.try_start(&id, ""))
            .await
        {
            Some(started) => {
                self.check_code(&format!("{id}: start pid"), started, pid);
                true
            }
            None => false,
        }
    }

    async fn stop_long(&self, lane: usize, rng: &mut Rng) -> bool {
        let mine = format!("r{}l{lane}L", self.round);
        let ids: Vec<String> = self.with(|m| {
            m.containers
                .iter()
                .filter(|(id, c)| {
                    id.starts_with(&mine) && c.done == Some(Step::Started) && c.asked.is_none()
                })
                .map(|(id, _)| id.clone())
                .collect()
        });
        let Some(id) = ids.get(rng.below(ids.len() as u64) as usize).cloned() else {
            return true;
        };
        let world = self.world;
        let mut tasks = world.client.tasks();
        let kill = tasks.kill(api::KillRequest {
            container_id: id.clone(),
            exec_id: String::new(),
            signal: Signal::SIGKILL as u32,
            all: false,
        });
        if self.step(&id, Step::Killed, kill).await.is_none() {
            return false;
        }
        match self.step(&id, Step::Waited, self.wait(&id, "")).await {
            Some(w) => self.check_code(&format!("{id}: wait"), w.exit_status, 137),
            None => return false,
        }
        match self
            .step(&id, Step::TaskDeleted, world.delete_task(&id, false))
            .await
        {
            Some(d) => self.check_code(&format!("{id}: delete"), d.exit_status, 137),
            None => return false,
        }
        let deleted = world.delete_container(&id);
        self.step(&id, Step::ContainerDeleted, deleted)
            .await
            .is_some()
    }

    async fn exec(&self, lane: usize, n: usize, rng: &mut Rng) -> bool {
        let Some(resident) = self
            .residents
            .get(rng.below(self.residents.len() as u64) as usize)
            .cloned()
        else {
            return true;
        };
        let exec_id = format!("r{}l{lane}x{n}", self.round);
        let code = rng.below(120) as u32;
        let attach = rng.chance(40);
        let at = self.with(|m| {
            m.execs.push(Exec {
                container: resident.clone(),
                exec_id: exec_id.clone(),
                code,
                done: None,
                asked: None,
            });
            m.execs.len() - 1
        });
        let what = format!("{resident}/{exec_id}");
        let tasks = self.world.client.tasks();
        let add = async move {
            let mut tasks = tasks;
            let spec = api::ProcessSpec {
                args: vec![
                    "sh".into(),
                    "-c".into(),
                    format!("echo exec-{n}; exit {code}"),
                ],
                ..Default::default()
            };
            tasks
                .exec(api::ExecProcessRequest {
                    container_id: resident.clone(),
                    exec_id: exec_id.clone(),
                    spec: Some(spec),
                    stdin: false,
                })
                .await
                .map(|_| (resident, exec_id))
        };
        let Some((resident, exec_id)) = self.exec_step(at, ExecStep::Added, add).await else {
            return false;
        };
        let attached = if attach {
            match self.call(&what, self.attach(&resident, &exec_id)).await {
                Some(a) => Some(a),
                None => return false,
            }
        } else {
            None
        };
        let start = self.world.try_start(&resident, &exec_id);
        if self.exec_step(at, ExecStep::Started, start).await.is_none() {
            return false;
        }
        if let Some(a) = attached {
            let stdout = format!("exec-{n}\n");
            if !self.check_attach(&what, a, &stdout, code).await {
                return false;
            }
        }
        match self
            .exec_step(at, ExecStep::Waited, self.wait(&resident, &exec_id))
            .await
        {
            Some(w) => self.check_code(&format!("{what}: wait"), w.exit_status, code),
            None => return false,
        }
        let tasks = self.world.client.tasks();
        let delete = async move {
            let mut tasks = tasks;
            let req = api::DeleteProcessRequest {
                container_id: resident,
                exec_id,
            };
            Ok(tasks.delete_process(req).await?.into_inner())
        };
        match self.exec_step(at, ExecStep::Deleted, delete).await {
            Some(d) => {
                self.check_code(&format!("{what}: delete"), d.exit_status, code);
                true
            }
            None => false,
        }
    }
}
