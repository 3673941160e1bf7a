//! `supctl tasks`: list, start, signal, wait for, pause, resume, measure and remove the
//! running side of containers.

use serde_json::{json, Value};
use sup_client::api::{
    DeleteResponse, DeleteTaskRequest, KillRequest, ListPidsRequest, ListTasksRequest,
    MetricsRequest, PauseTaskRequest, Process, ResumeTaskRequest, StartRequest, TaskMetrics,
    TaskStatus, WaitRequest,
};

use super::args::parse_signal;
use super::output::{human_size, print_json, print_text, time_json, Format, OutputArg, Table};
use super::Context;

#[derive(Debug, clap::Subcommand)]
pub enum TasksCommand {
    /// List tasks
    #[command(visible_alias = "list")]
    Ls {
        /// Only tasks matching the filter (e.g. status==running); repeat to match any
        #[arg(long = "filter", value_name = "FILTER")]
        filters: Vec<String>,
        /// Print the ids only
        #[arg(short, long)]
        quiet: bool,
        #[command(flatten)]
        out: OutputArg,
    },
    /// List a task's processes
    Ps {
        id: String,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Start a task that was created but not started
    Start { id: String },
    /// Send a signal to a task's init (or another of its processes)
    Kill {
        /// Signal by name (TERM, SIGKILL) or number
        #[arg(short, long, value_name = "SIG", default_value = "TERM", value_parser = parse_signal)]
        signal: u32,
        /// Signal every process of the container
        #[arg(short, long, conflicts_with = "exec_id")]
        all: bool,
        /// Signal this exec'd process instead of the init
        #[arg(long, value_name = "ID")]
        exec_id: Option<String>,
        id: String,
    },
    /// Wait for a task's init (or an exec'd process) to exit and print its exit status
    Wait {
        /// Wait for this exec'd process instead of the init
        #[arg(long, value_name = "ID")]
        exec_id: Option<String>,
        id: String,
    },
    /// Freeze every process of a task
    Pause { id: String },
    /// Thaw a paused task
    Resume { id: String },
    /// Show CPU, memory and process counts from the task's cgroup
    #[command(visible_alias = "stats")]
    Metrics {
        /// Tasks to measure; every task of the namespace when none is named
        ids: Vec<String>,
        #[command(flatten)]
        out: OutputArg,
    },
    /// Remove an exited task and print the exit status it collected
    #[command(visible_alias = "remove", visible_alias = "delete")]
    Rm {
        /// Kill the task first if it still runs
        #[arg(short, long)]
        force: bool,
        id: String,
        #[command(flatten)]
        out: OutputArg,
    },
}

pub async fn run(ctx: &Context, cmd: TasksCommand) -> anyhow::Result<()> {
    let mut tasks = ctx.client().await?.tasks();
    match cmd {
        TasksCommand::Ls {
            filters,
            quiet,
            out,
        } => {
            let mut list = tasks
                .list(ListTasksRequest { filters })
                .await?
                .into_inner()
                .tasks;
            list.sort_by(|a, b| a.container_id.cmp(&b.container_id));
            if quiet {
                let ids: String = list
                    .iter()
                    .map(|p| format!("{}\n", p.container_id))
                    .collect();
                return print_text(&ids);
            }
            match ctx.format(&out) {
                Format::Table => print_text(&tasks_table(&list)),
                Format::Json => print_json(&Value::Array(list.iter().map(process_json).collect())),
            }
        }
        TasksCommand::Ps { id, out } => {
            let mut processes = tasks
                .list_pids(ListPidsRequest { container_id: id })
                .await?
                .into_inner()
                .processes;
            processes.sort_by_key(|p| p.pid);
            match ctx.format(&out) {
                Format::Table => {
                    let mut table = Table::new(&["PID", "EXEC ID"]);
                    for p in &processes {
                        let exec_id = if p.exec_id.is_empty() {
                            "-"
                        } else {
                            &p.exec_id
                        };
                        table.row(vec![p.pid.to_string(), exec_id.to_string()]);
                    }
                    table.print()
                }
                Format::Json => print_json(&Value::Array(
                    processes
                        .iter()
                        .map(|p| json!({"pid": p.pid, "exec_id": p.exec_id}))
                        .collect(),
                )),
            }
        }
        TasksCommand::Start { id } => {
            let request = StartRequest {
                container_id: id.clone(),
                exec_id: String::new(),
            };
            tasks.start(request).await?;
            print_text(&format!("{id}\n"))
        }
        TasksCommand::Kill {
            signal,
            all,
            exec_id,
            id,
        } => {
            let request = KillRequest {
                container_id: id,
                exec_id: exec_id.unwrap_or_default(),
                signal,
                all,
            };
            tasks.kill(request).await?;
            Ok(())
        }
        TasksCommand::Wait { exec_id, id } => {
            let request = WaitRequest {
                container_id: id,
                exec_id: exec_id.unwrap_or_default(),
            };
            let exit = tasks.wait(request).await?.into_inner();
            print_text(&format!("{}\n", exit.exit_status))
        }
        TasksCommand::Pause { id } => {
            tasks.pause(PauseTaskRequest { container_id: id }).await?;
            Ok(())
        }
        TasksCommand::Resume { id } => {
            tasks.resume(ResumeTaskRequest { container_id: id }).await?;
            Ok(())
        }
        TasksCommand::Metrics { ids, out } => {
            let mut metrics = tasks
                .metrics(MetricsRequest { container_ids: ids })
                .await?
                .into_inner()
                .metrics;
            metrics.sort_by(|a, b| a.container_id.cmp(&b.container_id));
            match ctx.format(&out) {
                Format::Table => print_text(&metrics_table(&metrics)),
                Format::Json => {
                    print_json(&Value::Array(metrics.iter().map(metrics_json).collect()))
                }
            }
        }
        TasksCommand::Rm { force, id, out } => {
            let request = DeleteTaskRequest {
                container_id: id,
                force,
            };
            let deleted = tasks.delete(request).await?.into_inner();
            match ctx.format(&out) {
                Format::Table => print_text(&format!("{}\n", deleted.exit_status)),
                Format::Json => print_json(&deleted_json(&deleted)),
            }
        }
    }
}

/// The status as scripts match it: lowercase words.
pub fn status_name(status: i32) -> &'static str {
    match TaskStatus::try_from(status) {
        Ok(TaskStatus::Created) => "created",
        Ok(TaskStatus::Running) => "running",
        Ok(TaskStatus::Stopped) => "stopped",
        Ok(TaskStatus::Paused) => "paused",
        Ok(TaskStatus::Pausing) => "pausing",
        Ok(TaskStatus::Unknown) | Err(_) => "unknown",
    }
}

fn tasks_table(list: &[Process]) -> String {
    let mut table = Table::new(&["ID", "PID", "STATUS"]);
    for p in list {
        let mut status = status_name(p.status).to_string();
        if p.status == TaskStatus::Stopped as i32 {
            status = format!("{status} ({})", p.exit_status);
        }
        table.row(vec![p.container_id.clone(), p.pid.to_string(), status]);
    }
    table.render()
}

pub fn process_json(p: &Process) -> Value {
    json!({
        "id": p.container_id,
        "exec_id": p.exec_id,
        "pid": p.pid,
        "status": status_name(p.status),
        "terminal": p.terminal,
        "exit_status": p.exit_status,
        "exited_at": time_json(p.exited_at.as_ref()),
        "reason": p.reason,
    })
}

fn deleted_json(d: &DeleteResponse) -> Value {
    json!({
        "id": d.container_id,
        "pid": d.pid,
        "exit_status": d.exit_status,
        "exited_at": time_json(d.exited_at.as_ref()),
    })
}

/// Limits from this size up mean "none": cgroup v1 writes "no limit" as the largest
/// page-aligned i64 (0x7FFFFFFFFFFFF000), v2's "max" may reach us as u64::MAX.
const UNLIMITED: u64 = 1 << 62;

/// A cgroup limit, or `None` for no limit (0, or one of the huge "no limit" values).
fn limit_text(limit: u64, show: impl Fn(u64) -> String) -> Option<String> {
    (limit != 0 && limit < UNLIMITED).then(|| show(limit))
}

fn size_text(bytes: u64) -> String {
    human_size(i64::try_from(bytes).unwrap_or(i64::MAX))
}

fn metrics_table(metrics: &[TaskMetrics]) -> String {
    let mut table = Table::new(&["ID", "CPU", "MEMORY", "PIDS"]);
    for m in metrics {
        let cpu = m.cpu.as_ref().map_or_else(
            || "-".to_string(),
            |cpu| format!("{:.3}s", cpu.usage_total as f64 / 1e9),
        );
        let memory = m.memory.as_ref().map_or_else(
            || "-".to_string(),
            |mem| match limit_text(mem.limit, size_text) {
                Some(limit) => format!("{} / {limit}", size_text(mem.usage)),
                None => size_text(mem.usage),
            },
        );
        let pids = m.pids.as_ref().map_or_else(
            || "-".to_string(),
            |pids| match limit_text(pids.limit, |n| n.to_string()) {
                Some(limit) => format!("{} / {limit}", pids.current),
                None => pids.current.to_string(),
            },
        );
        table.row(vec![m.container_id.clone(), cpu, memory, pids]);
    }
    table.render()
}

fn metrics_json(m: &TaskMetrics) -> Value {
    json!({
        "id": m.container_id,
        "timestamp": time_json(m.timestamp.as_ref()),
        "cpu": m.cpu.as_ref().map(|c| json!({
            "usage_total": c.usage_total,
            "usage_user": c.usage_user,
            "usage_kernel": c.usage_kernel,
            "throttled_periods": c.throttled_periods,
            "throttled_time": c.throttled_time,
            "pressure": c.pressure.as_ref().map(pressure_json),
        })),
        "memory": m.memory.as_ref().map(|mem| json!({
            "usage": mem.usage,
            "limit": mem.limit,
            "max_usage": mem.max_usage,
            "rss": mem.rss,
            "cache": mem.cache,
            "oom_kills": mem.oom_kills,
            "pressure": mem.pressure.as_ref().map(pressure_json),
        })),
        "pids": m.pids.as_ref().map(|p| json!({"current": p.current, "limit": p.limit})),
        "io": m.io.as_ref().map(|io| json!({
            "read_bytes": io.read_bytes,
            "write_bytes": io.write_bytes,
            "pressure": io.pressure.as_ref().map(pressure_json),
        })),
    })
}

fn pressure_json(p: &sup_client::api::Pressure) -> Value {
    json!({
        "some": {"avg10": p.some_avg10, "avg60": p.some_avg60, "avg300": p.some_avg300,
                 "total_usec": p.some_total},
        "full": {"avg10": p.full_avg10, "avg60": p.full_avg60, "avg300": p.full_avg300,
                 "total_usec": p.full_total},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sup_client::api::{CpuStats, MemoryStats, PidsStats};

    #[test]
    fn statuses() {
        assert_eq!(status_name(TaskStatus::Running as i32), "running");
        assert_eq!(status_name(TaskStatus::Pausing as i32), "pausing");
        assert_eq!(status_name(TaskStatus::Created as i32), "created");
        assert_eq!(status_name(99), "unknown");
    }

    #[test]
    fn list_shapes() {
        let running = Process {
            container_id: "a".into(),
            pid: 10,
            status: TaskStatus::Running as i32,
            ..Default::default()
        };
        let stopped = Process {
            container_id: "bb".into(),
            pid: 11,
            status: TaskStatus::Stopped as i32,
            exit_status: 137,
            ..Default::default()
        };
        assert_eq!(
            tasks_table(&[running.clone(), stopped.clone()]),
            "ID   PID   STATUS\na    10    running\nbb   11    stopped (137)\n"
        );
        let value = process_json(&stopped);
        assert_eq!(value["id"], "bb");
        assert_eq!(value["pid"], 11);
        assert_eq!(value["status"], "stopped");
        assert_eq!(value["exit_status"], 137);
        assert_eq!(process_json(&running)["exited_at"], Value::Null);
    }

    #[test]
    fn metrics_rows() {
        let m = TaskMetrics {
            container_id: "a".into(),
            cpu: Some(CpuStats {
                usage_total: 1_500_000_000,
                ..Default::default()
            }),
            memory: Some(MemoryStats {
                usage: 2 << 20,
                limit: 64 << 20,
                ..Default::default()
            }),
            pids: Some(PidsStats {
                current: 3,
                limit: 0,
            }),
            ..Default::default()
        };
        let unlimited = TaskMetrics {
            container_id: "b".into(),
            memory: Some(MemoryStats {
                usage: 100,
                limit: 0x7FFF_FFFF_FFFF_F000,
                ..Default::default()
            }),
            pids: Some(PidsStats {
                current: 1,
                limit: 20,
            }),
            ..Default::default()
        };
        assert_eq!(
            metrics_table(&[m.clone(), unlimited]),
            "ID   CPU      MEMORY               PIDS\n\
             a    1.500s   2.0 MiB / 64.0 MiB   3\n\
             b    -        100 B                1 / 20\n"
        );
        assert_eq!(metrics_json(&m)["memory"]["limit"], 64 << 20);
        assert_eq!(metrics_json(&m)["io"], Value::Null);
    }
}
