//! `supctl run`: makes a container from an image and starts its task; in the foreground it
//! relays the task's stdio until the task exits and ends with the container's exit status.
//! A run that fails halfway removes what it made.

use sup_client::api::Container;
use sup_client::api::{
    ContainerConfig, ContainerRuntime, CreateContainerRequest, CreateTaskRequest,
    DeleteContainerRequest, DeleteTaskRequest, MountSpec, Resources, StartRequest, StringList,
    WaitRequest,
};
use sup_client::Client;

use super::args::{env_list, label_map, parse_cpus, parse_env, parse_label, parse_mount};
use super::args::{parse_positive, parse_size};
use super::output::print_text;
use super::stdio::{self, Relayed, Signals, StdioOptions};
use super::{report, Context, Exit};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// Remove the task and the container once it exits
    #[arg(long, conflicts_with = "detach")]
    rm: bool,
    /// Start the container and print its id, without waiting for it
    #[arg(short, long)]
    detach: bool,
    /// Give the container a terminal (with -i, Ctrl-P Ctrl-Q detaches and leaves it running)
    #[arg(short, long)]
    tty: bool,
    /// Connect our stdin to the container's
    #[arg(short, long)]
    interactive: bool,
    /// Set an environment variable; KEY alone passes on supctl's own value (repeatable)
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<String>,
    /// Working directory inside the container
    #[arg(short = 'w', long, value_name = "DIR")]
    cwd: Option<String>,
    /// User to run as: name, uid, uid:gid or name:group
    #[arg(short, long, value_name = "USER")]
    user: Option<String>,
    /// Memory limit: bytes, or with a unit (512k, 64m, 1g)
    #[arg(short, long, value_name = "SIZE", value_parser = parse_size)]
    memory: Option<i64>,
    /// CPU quota in CPUs (1.5 = one and a half)
    #[arg(long, value_name = "N", value_parser = parse_cpus)]
    cpus: Option<f64>,
    /// Most processes the container may have
    #[arg(long, value_name = "N", value_parser = parse_positive)]
    pids_limit: Option<i64>,
    /// Bind mount a host path: SRC:DST[:ro] (repeatable)
    #[arg(long = "mount", value_name = "SRC:DST[:ro]", value_parser = parse_mount)]
    mounts: Vec<MountSpec>,
    /// Use the host's network namespace
    #[arg(long)]
    net_host: bool,
    /// Run in a systemd scope (sup-NAMESPACE-ID.scope in system.slice), through the
    /// runtime's systemd cgroup driver
    #[arg(long)]
    systemd_cgroup: bool,
    /// OCI runtime to run it with (runc, crun, or a path); the daemon's default when not
    /// given
    #[arg(long, value_name = "NAME")]
    runtime: Option<String>,
    /// Snapshotter for the root filesystem; the daemon's default when not given
    #[arg(long, value_name = "NAME")]
    snapshotter: Option<String>,
    /// Mount the root filesystem read-only
    #[arg(long)]
    read_only: bool,
    /// Give the container every capability and access to the host's devices
    #[arg(long)]
    privileged: bool,
    /// Add a capability (NET_ADMIN, CAP_SYS_TIME, ALL) (repeatable)
    #[arg(long = "cap-add", value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability (repeatable)
    #[arg(long = "cap-drop", value_name = "CAP")]
    cap_drop: Vec<String>,
    /// Host name inside the container
    #[arg(long, value_name = "NAME")]
    hostname: Option<String>,
    /// Replace the image's entrypoint ("" clears it); the image's command goes too, as in
    /// docker
    #[arg(long, value_name = "CMD")]
    entrypoint: Option<String>,
    /// Label the container (repeatable)
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// Image to run
    image: String,
    /// Id of the new container
    id: String,
    /// Command and arguments, replacing the image's command; everything after the id
    /// belongs to it
    #[arg(
        value_name = "CMD",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<String>,
}

pub async fn run(ctx: &Context, args: RunArgs) -> anyhow::Result<()> {
    let client = ctx.client().await?;
    let id = args.id.clone();
    // Caught from the start: an interrupt while the container is being set up lets the
    // current step finish, then undoes what was made, instead of leaving it half made.
    let mut signals = Signals::catch()?;
    client.containers().create(create_request(&args)).await?;
    if let Some(signal) = signals.received() {
        discard(client, &id, false).await;
        return Err(stdio::interrupted(signal));
    }

    let task = CreateTaskRequest {
        container_id: id.clone(),
        stdin: args.interactive,
    };
    let created = client.tasks().create(task).await;
    if let Err(status) = created {
        discard(client, &id, false).await;
        return Err(status.into());
    }
    if let Some(signal) = signals.received() {
        discard(client, &id, true).await;
        return Err(stdio::interrupted(signal));
    }

    if args.detach {
        if let Err(err) = start(client, &id).await {
            discard(client, &id, true).await;
            return Err(err);
        }
        return print_text(&format!("{id}\n"));
    }

    let opts = StdioOptions {
        container_id: id.clone(),
        exec_id: String::new(),
        stdin: args.interactive,
        close_stdin: true,
        tty: args.tty,
    };
    // Attached before the start, so that nothing the container prints is missed.
    let attached = match stdio::attach(client, opts).await {
        Ok(attached) => attached,
        Err(err) => {
            discard(client, &id, true).await;
            return Err(err);
        }
    };
    if let Some(signal) = signals.received() {
        drop(attached);
        discard(client, &id, true).await;
        return Err(stdio::interrupted(signal));
    }
    if let Err(err) = start(client, &id).await {
        drop(attached);
        discard(client, &id, true).await;
        return Err(err);
    }
    let relayed = attached.relay(signals).await?;
    let Relayed::Exited(exit) = &relayed else {
        return stdio::conclude(&format!("container {id}"), &relayed);
    };

    let removed = if args.rm {
        remove(client, &id).await
    } else {
        Ok(())
    };
    let finished = stdio::finish(&format!("container {id}"), exit);
    match removed {
        Ok(()) => finished,
        Err(err) => {
            report(&err);
            // A failed cleanup fails the command, but never hides the container's own code.
            Err(finished.err().unwrap_or_else(|| Exit(1).into()))
        }
    }
}

async fn start(client: &Client, id: &str) -> anyhow::Result<()> {
    let request = StartRequest {
        container_id: id.to_string(),
        exec_id: String::new(),
    };
    client.tasks().start(request).await?;
    Ok(())
}

/// The Create request: the container record and the overrides the daemon builds the spec
/// from.
fn create_request(args: &RunArgs) -> CreateContainerRequest {
    let container = Container {
        id: args.id.clone(),
        image: args.image.clone(),
        runtime: args.runtime.as_ref().map(|name| ContainerRuntime {
            name: name.clone(),
            options: Default::default(),
        }),
        snapshotter: args.snapshotter.clone().unwrap_or_default(),
        labels: label_map(&args.labels),
        ..Default::default()
    };
    let entrypoint = args.entrypoint.as_ref().map(|cmd| StringList {
        values: if cmd.is_empty() {
            Vec::new()
        } else {
            vec![cmd.clone()]
        },
    });
    // A new entrypoint makes the image's command meaningless (it was written as the old
    // entrypoint's arguments), so it is cleared unless a command is given.
    let command = if !args.command.is_empty() || entrypoint.is_some() {
        Some(StringList {
            values: args.command.clone(),
        })
    } else {
        None
    };
    let resources = Resources {
        memory_limit: args.memory.unwrap_or(0),
        cpus: args.cpus.unwrap_or(0.0),
        cpu_shares: 0,
        pids_limit: args.pids_limit.unwrap_or(0),
    };
    let config = ContainerConfig {
        entrypoint,
        command,
        env: env_list(&args.env),
        working_dir: args.cwd.clone().unwrap_or_default(),
        user: args.user.clone().unwrap_or_default(),
        tty: args.tty,
        hostname: args.hostname.clone().unwrap_or_default(),
        mounts: args.mounts.clone(),
        readonly_rootfs: args.read_only,
        resources: Some(resources),
        cap_add: args.cap_add.clone(),
        cap_drop: args.cap_drop.clone(),
        privileged: args.privileged,
        host_network: args.net_host,
        systemd_cgroup: args.systemd_cgroup,
        ..Default::default()
    };
    CreateContainerRequest {
        container: Some(container),
        config: Some(config),
    }
}

/// `--rm`: the task (once the daemon has recorded the exit the stream told us about) and
/// then the container.
async fn remove(client: &Client, id: &str) -> anyhow::Result<()> {
    let mut tasks = client.tasks();
    tasks
        .wait(WaitRequest {
            container_id: id.to_string(),
            exec_id: String::new(),
        })
        .await?;
    tasks
        .delete(DeleteTaskRequest {
            container_id: id.to_string(),
            force: false,
        })
        .await?;
    client
        .containers()
        .delete(DeleteContainerRequest {
            id: id.to_string(),
            keep_snapshot: false,
        })
        .await?;
    Ok(())
}

/// Undoes a run that failed halfway: the task (killed if it got going) and the container.
/// What cannot be removed is reported; the failure that got us here stays the one returned.
async fn discard(client: &Client, id: &str, task_made: bool) {
    if task_made {
        let request = DeleteTaskRequest {
            container_id: id.to_string(),
            force: true,
        };
        if let Err(status) = client.tasks().delete(request).await {
            if status.code() != tonic::Code::NotFound {
                report(&anyhow::Error::from(status).context(format!("removing the task of {id}")));
            }
        }
    }
    let request = DeleteContainerRequest {
        id: id.to_string(),
        keep_snapshot: false,
    };
    if let Err(status) = client.containers().delete(request).await {
        if status.code() != tonic::Code::NotFound {
            report(&anyhow::Error::from(status).context(format!("removing container {id}")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    fn parse(args: &[&str]) -> Result<RunArgs, clap::Error> {
        let argv = std::iter::once("run").chain(args.iter().copied());
        Cli::try_parse_from(argv).map(|cli| cli.run)
    }

    #[test]
    fn command_after_id_keeps_its_flags() {
        let args =
            parse(&["--rm", "busybox", "t1", "sh", "-c", "exit 3", "--rm", "-t"]).expect("parses");
        assert!(args.rm && !args.tty);
        assert_eq!((args.image.as_str(), args.id.as_str()), ("busybox", "t1"));
        assert_eq!(args.command, ["sh", "-c", "exit 3", "--rm", "-t"]);
        // A `--` before the command is the usual end of options; after it, it is an argument.
        let args = parse(&["busybox", "t1", "--", "ls"]).expect("parses");
        assert_eq!(args.command, ["ls"]);
        let args = parse(&["busybox", "t1", "echo", "--", "x"]).expect("parses");
        assert_eq!(args.command, ["echo", "--", "x"]);
        let args = parse(&["busybox", "t1", "-la"]).expect("parses");
        assert_eq!(args.command, ["-la"]);
    }

    #[test]
    fn request_carries_overrides() {
        let args = parse(&[
            "-it",
            "-e",
            "A=1",
            "--env",
            "B=2",
            "--cwd",
            "/tmp",
            "--user",
            "1000:1000",
            "--memory",
            "64m",
            "--cpus",
            "0.5",
            "--pids-limit",
            "20",
            "--mount",
            "/data:/mnt:ro",
            "--net-host",
            "--systemd-cgroup",
            "--runtime",
            "crun",
            "--snapshotter",
            "native",
            "--read-only",
            "--cap-add",
            "NET_ADMIN",
            "--cap-drop",
            "CHOWN",
            "--hostname",
            "box",
            "--label",
            "k=v",
            "busybox",
            "t1",
            "echo",
            "hi",
        ])
        .expect("parses");
        let request = create_request(&args);
        let container = request.container.expect("container");
        assert_eq!(container.id, "t1");
        assert_eq!(container.image, "busybox");
        assert_eq!(container.runtime.expect("runtime").name, "crun");
        assert_eq!(container.snapshotter, "native");
        assert_eq!(container.labels.get("k").map(String::as_str), Some("v"));
        let config = request.config.expect("config");
        assert_eq!(config.command.expect("command").values, ["echo", "hi"]);
        assert!(config.entrypoint.is_none());
        assert_eq!(config.env, ["A=1", "B=2"]);
        assert_eq!(config.working_dir, "/tmp");
        assert_eq!(config.user, "1000:1000");
        assert!(config.tty && config.readonly_rootfs && config.host_network);
        assert!(config.systemd_cgroup);
        assert!(!config.privileged);
        let resources = config.resources.expect("resources");
        assert_eq!(resources.memory_limit, 64 << 20);
        assert_eq!(resources.cpus, 0.5);
        assert_eq!(resources.pids_limit, 20);
        assert_eq!(config.mounts.len(), 1);
        assert!(config.mounts[0].readonly);
        assert_eq!(config.cap_add, ["NET_ADMIN"]);
        assert_eq!(config.cap_drop, ["CHOWN"]);
        assert_eq!(config.hostname, "box");
    }

    #[test]
    fn image_defaults_stay_unless_overridden() {
        let args = parse(&["busybox", "t1"]).expect("parses");
        let request = create_request(&args);
        assert!(request.container.expect("container").runtime.is_none());
        let config = request.config.expect("config");
        assert!(config.command.is_none() && config.entrypoint.is_none());
        assert!(!config.tty);
    }

    #[test]
    fn entrypoint_clears_the_image_command() {
        let args = parse(&["--entrypoint", "echo", "busybox", "t1"]).expect("parses");
        let config = create_request(&args).config.expect("config");
        assert_eq!(config.entrypoint.expect("entrypoint").values, ["echo"]);
        assert!(config.command.expect("command").values.is_empty());
        let args = parse(&["--entrypoint", "", "busybox", "t1", "ls"]).expect("parses");
        let config = create_request(&args).config.expect("config");
        assert!(config.entrypoint.expect("entrypoint").values.is_empty());
        assert_eq!(config.command.expect("command").values, ["ls"]);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--rm", "-d", "busybox", "t1"]).is_err());
        assert!(parse(&["--memory", "lots", "busybox", "t1"]).is_err());
        assert!(parse(&["--mount", "/a", "busybox", "t1"]).is_err());
        assert!(parse(&["--cpus", "-1", "busybox", "t1"]).is_err());
        assert!(parse(&["--env", "=x", "busybox", "t1"]).is_err());
        assert!(parse(&["busybox"]).is_err());
    }
}
