//! `supctl images mount` and `unmount`: a read-only view snapshot of an unpacked image,
//! mounted by supctl itself at a directory of the (same) host, and its undoing.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use nix::errno::Errno;
use nix::mount::MsFlags;
use sup_client::api::{
    Mount, MountsRequest, Platform, RemoveSnapshotRequest, UnpackImageRequest, ViewSnapshotRequest,
};
use sup_client::Client;
use tonic::Code;

use crate::cmd::args::parse_platform;
use crate::cmd::output::print_text;
use crate::cmd::{report, Context};

/// Prefix of the view snapshots' keys; the rest is the canonical mount directory, so that
/// `unmount DIR` finds the snapshot again from the directory alone.
const KEY_PREFIX: &str = "supctl-mount:";
/// Label naming where the view is mounted, for whoever lists snapshots.
const TARGET_LABEL: &str = "sup.mount-target";

#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// Image reference
    reference: String,
    /// Existing directory to mount the image's tree on
    dir: PathBuf,
    /// Snapshotter to unpack into and view from; the daemon's default when not given
    #[arg(long, value_name = "NAME")]
    snapshotter: Option<String>,
    /// Platform of the image to mount (OS/ARCH[/VARIANT]); the host's by default
    #[arg(long, value_parser = parse_platform)]
    platform: Option<Platform>,
}

#[derive(Debug, clap::Args)]
pub struct UnmountArgs {
    /// Directory given to `images mount`
    dir: PathBuf,
    /// Snapshotter given to `images mount`
    #[arg(long, value_name = "NAME")]
    snapshotter: Option<String>,
}

pub async fn mount(ctx: &Context, args: MountArgs) -> anyhow::Result<()> {
    let dir = mount_dir(&args.dir)?;
    let key = view_key(&dir)?;
    let snapshotter = args.snapshotter.unwrap_or_default();
    let client = ctx.client().await?;
    let chain_id = client
        .images()
        .unpack(UnpackImageRequest {
            name: args.reference,
            snapshotter: snapshotter.clone(),
            platform: args.platform,
        })
        .await?
        .into_inner()
        .chain_id;
    let view = ViewSnapshotRequest {
        snapshotter: snapshotter.clone(),
        key: key.clone(),
        parent: chain_id,
        labels: HashMap::from([(TARGET_LABEL.to_string(), dir.display().to_string())]),
    };
    let mounts = match client.snapshots().view(view).await {
        Ok(response) => response.into_inner().mounts,
        Err(status) if status.code() == Code::AlreadyExists => bail!(
            "{} is already mounted by supctl (snapshot {key:?}); `supctl images unmount {}` first",
            dir.display(),
            dir.display()
        ),
        Err(status) => return Err(status.into()),
    };
    if let Err(err) = mount_all(&mounts, &dir) {
        // Leave nothing behind: the view is useless without its mount.
        if let Err(status) = remove_view(client, &snapshotter, &key).await {
            report(&anyhow::Error::from(status).context(format!("removing snapshot {key:?}")));
        }
        return Err(err);
    }
    print_text(&format!("{}\n", dir.display()))
}

pub async fn unmount(ctx: &Context, args: UnmountArgs) -> anyhow::Result<()> {
    let dir = mount_dir(&args.dir)?;
    let key = view_key(&dir)?;
    let snapshotter = args.snapshotter.unwrap_or_default();
    // Unmounting works without the daemon; only the snapshot's removal needs it.
    let client = ctx.client().await;
    let mounts = match &client {
        Ok(client) => {
            let request = MountsRequest {
                snapshotter: snapshotter.clone(),
                key: key.clone(),
            };
            client
                .snapshots()
                .mounts(request)
                .await
                .ok()
                .map(|r| r.into_inner().mounts)
        }
        Err(_) => None,
    };
    // As many mounts as the view has (stacked ones in reverse), or one when unknown.
    let targets: Vec<PathBuf> = match &mounts {
        Some(mounts) if !mounts.is_empty() => {
            let mut targets = mounts
                .iter()
                .map(|m| mount_target(&dir, m))
                .collect::<anyhow::Result<Vec<_>>>()?;
            targets.reverse();
            targets
        }
        _ => vec![dir.clone()],
    };
    let mut unmounted = false;
    for target in &targets {
        match nix::mount::umount(target) {
            Ok(()) => unmounted = true,
            Err(Errno::EBUSY) => bail!(
                "{} is busy: a process has files open or its working directory under it \
                 (see `fuser -vm {}`)",
                target.display(),
                target.display()
            ),
            Err(Errno::EINVAL) => {}
            Err(err) => {
                return Err(anyhow!(err).context(format!("unmounting {}", target.display())))
            }
        }
    }
    let client = client?;
    match remove_view(client, &snapshotter, &key).await {
        Ok(()) => Ok(()),
        Err(status) if status.code() == Code::NotFound => {
            if !unmounted {
                bail!("{} is not mounted by supctl", dir.display());
            }
            // Likely mounted from another snapshotter: its view would stay behind unseen.
            if mounts.is_none() {
                report(&anyhow!(
                    "warning: unmounted {}, but the snapshotter has no view {key:?}; if it was \
                     mounted with --snapshotter NAME, run `supctl snapshots rm --snapshotter \
                     NAME {key}`",
                    dir.display()
                ));
            }
            Ok(())
        }
        Err(status) => Err(status.into()),
    }
}

async fn remove_view(client: &Client, snapshotter: &str, key: &str) -> Result<(), tonic::Status> {
    let request = RemoveSnapshotRequest {
        snapshotter: snapshotter.to_string(),
        key: key.to_string(),
    };
    client.snapshots().remove(request).await.map(|_| ())
}

/// The directory as an absolute path without symlinks, so that one directory always maps to
/// one snapshot key however it is spelled.
fn mount_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    let canonical = std::fs::canonicalize(dir).with_context(|| format!("{}", dir.display()))?;
    if !canonical.is_dir() {
        bail!("{} is not a directory", dir.display());
    }
    Ok(canonical)
}

fn view_key(dir: &Path) -> anyhow::Result<String> {
    let dir = dir
        .to_str()
        .ok_or_else(|| anyhow!("{} is not valid UTF-8", dir.display()))?;
    Ok(format!("{KEY_PREFIX}{dir}"))
}

/// Where one mount goes: the directory, or a path below it the daemon named. Anything that
/// would climb out of the directory is refused.
fn mount_target(dir: &Path, mount: &Mount) -> anyhow::Result<PathBuf> {
    let relative = Path::new(&mount.target);
    let mut target = dir.to_path_buf();
    for component in relative.components() {
        match component {
            Component::Normal(part) => target.push(part),
            Component::CurDir | Component::RootDir => {}
            Component::ParentDir | Component::Prefix(_) => {
                bail!(
                    "supd sent a mount target outside the directory: {:?}",
                    mount.target
                )
            }
        }
    }
    Ok(target)
}

/// mount(2) flags and the filesystem-specific data string for a list of `-o` options.
#[derive(Debug, PartialEq, Eq)]
struct MountPlan {
    flags: MsFlags,
    data: Vec<String>,
}

fn plan(options: &[String]) -> MountPlan {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for option in options {
        match option.as_str() {
            "ro" => flags.insert(MsFlags::MS_RDONLY),
            "rw" => flags.remove(MsFlags::MS_RDONLY),
            "bind" => flags.insert(MsFlags::MS_BIND),
            "rbind" => flags.insert(MsFlags::MS_BIND | MsFlags::MS_REC),
            "nosuid" => flags.insert(MsFlags::MS_NOSUID),
            "suid" => flags.remove(MsFlags::MS_NOSUID),
            "nodev" => flags.insert(MsFlags::MS_NODEV),
            "dev" => flags.remove(MsFlags::MS_NODEV),
            "noexec" => flags.insert(MsFlags::MS_NOEXEC),
            "exec" => flags.remove(MsFlags::MS_NOEXEC),
            "noatime" => flags.insert(MsFlags::MS_NOATIME),
            "nodiratime" => flags.insert(MsFlags::MS_NODIRATIME),
            "relatime" => flags.insert(MsFlags::MS_RELATIME),
            "sync" => flags.insert(MsFlags::MS_SYNCHRONOUS),
            "defaults" => {}
            other => data.push(other.to_string()),
        }
    }
    MountPlan { flags, data }
}

/// Applies the mounts in order; on failure undoes the ones made, newest first.
fn mount_all(mounts: &[Mount], dir: &Path) -> anyhow::Result<()> {
    if mounts.is_empty() {
        bail!("supd returned no mounts for the view");
    }
    let mut done: Vec<PathBuf> = Vec::new();
    for m in mounts {
        let result = mount_target(dir, m).and_then(|target| {
            mount_one(m, &target)?;
            Ok(target)
        });
        match result {
            Ok(target) => done.push(target),
            Err(err) => {
                for target in done.iter().rev() {
                    let _ = nix::mount::umount(target);
                }
                return Err(err);
            }
        }
    }
    Ok(())
}

fn mount_one(m: &Mount, target: &Path) -> anyhow::Result<()> {
    let plan = plan(&m.options);
    let what = || {
        format!(
            "mounting {} ({}) on {}",
            m.source,
            m.r#type,
            target.display()
        )
    };
    let data = plan.data.join(",");
    let data = (!data.is_empty()).then_some(data.as_str());
    if m.r#type == "bind" || plan.flags.contains(MsFlags::MS_BIND) {
        let bind = plan.flags & (MsFlags::MS_BIND | MsFlags::MS_REC) | MsFlags::MS_BIND;
        nix::mount::mount(
            Some(m.source.as_str()),
            target,
            None::<&str>,
            bind,
            None::<&str>,
        )
        .with_context(what)?;
        // A bind mount ignores the other flags; only a remount applies them.
        let rest = plan.flags - (MsFlags::MS_BIND | MsFlags::MS_REC);
        if !rest.is_empty() {
            let remount = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | rest;
            if let Err(err) =
                nix::mount::mount(None::<&str>, target, None::<&str>, remount, None::<&str>)
            {
                let _ = nix::mount::umount(target);
                return Err(anyhow!(err).context(format!(
                    "making the bind mount on {} read-only",
                    target.display()
                )));
            }
        }
        return Ok(());
    }
    nix::mount::mount(
        Some(m.source.as_str()),
        target,
        Some(m.r#type.as_str()),
        plan.flags,
        data,
    )
    .with_context(what)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlay_options_split_into_flags_and_data() {
        let p = plan(&opts(&["ro", "lowerdir=/a:/b", "index=off"]));
        assert_eq!(p.flags, MsFlags::MS_RDONLY);
        assert_eq!(p.data, opts(&["lowerdir=/a:/b", "index=off"]));
    }

    #[test]
    fn bind_options() {
        let p = plan(&opts(&["rbind", "ro", "nosuid"]));
        assert!(p
            .flags
            .contains(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_NOSUID));
        assert!(p.flags.contains(MsFlags::MS_RDONLY));
        assert!(p.data.is_empty());
        assert!(!plan(&opts(&["ro", "rw"]))
            .flags
            .contains(MsFlags::MS_RDONLY));
    }

    #[test]
    fn targets_stay_inside() {
        let dir = Path::new("/mnt/x");
        let m = |target: &str| Mount {
            target: target.to_string(),
            ..Default::default()
        };
        assert_eq!(mount_target(dir, &m("")).expect("ok"), dir);
        assert_eq!(
            mount_target(dir, &m("proc")).expect("ok"),
            Path::new("/mnt/x/proc")
        );
        assert_eq!(
            mount_target(dir, &m("/etc")).expect("ok"),
            Path::new("/mnt/x/etc")
        );
        assert!(mount_target(dir, &m("../etc")).is_err());
        assert!(mount_target(dir, &m("a/../../b")).is_err());
    }

    #[test]
    fn key_names_the_directory() {
        assert_eq!(
            view_key(Path::new("/mnt/x")).expect("utf-8"),
            "supctl-mount:/mnt/x"
        );
    }
}
