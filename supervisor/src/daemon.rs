//! Start-up and shutdown of the daemon: the root lock, the stores, the snapshotters and the
//! API socket.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;

use tokio::net::UnixListener;

use crate::config::Config;
use crate::content::ContentStore;
use crate::error::{Error, Result};
use crate::events::Exchange;
use crate::service::Services;
use crate::snapshot::native::NativeSnapshotter;
use crate::snapshot::overlay::OverlaySnapshotter;
use crate::snapshot::Snapshotter;
use crate::store::Store;

/// Holds the root's lock for as long as the daemon runs.
pub struct RootLock {
    _file: File,
}

/// Takes `<root>/supd.lock`, so that two daemons never share a root.
pub fn lock_root(root: &Path) -> Result<RootLock> {
    let path = root.join("supd.lock");
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    if let Err(e) = rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
        if e == rustix::io::Errno::WOULDBLOCK {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(Error::FailedPrecondition(format!(
                "another supd (pid {}) is already running with root {}",
                if pid.is_empty() { "unknown" } else { pid },
                root.display()
            )));
        }
        return Err(Error::io(format!("locking {}", path.display()), e.into()));
    }
    file.set_len(0)
        .and_then(|_| file.rewind())
        .and_then(|_| writeln!(file, "{}", std::process::id()))
        .map_err(|e| Error::io(format!("writing {}", path.display()), e))?;
    Ok(RootLock { _file: file })
}

fn make_dir(path: &Path, mode: u32) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
        .map_err(|e| Error::io(format!("creating {}", path.display()), e))
}

/// Opens everything the services need.
pub fn open_services(cfg: &Config) -> Result<Services> {
    let store = Store::open(&cfg.root.join("meta.db"))?;
    let content = ContentStore::new(&cfg.root, store.clone())?;
    let mut snapshotters: BTreeMap<String, Arc<dyn Snapshotter>> = BTreeMap::new();
    let native = NativeSnapshotter::new(&cfg.root.join("snapshots/native"), store.clone())?;
    snapshotters.insert("native".into(), Arc::new(native));
    let overlay_root = cfg.root.join("snapshots/overlayfs");
    make_dir(&overlay_root, 0o700)?;
    match OverlaySnapshotter::supported(&overlay_root) {
        Ok(()) => {
            let overlay = OverlaySnapshotter::new(&overlay_root, store.clone())?;
            snapshotters.insert("overlayfs".into(), Arc::new(overlay));
        }
        Err(e) => tracing::warn!(error = %e, "overlayfs snapshotter unavailable"),
    }
    let mut default_snapshotter = cfg.default_snapshotter.clone();
    if !snapshotters.contains_key(&default_snapshotter) {
        if default_snapshotter == "overlayfs" {
            tracing::warn!("overlayfs is not usable here; the default snapshotter is native");
            default_snapshotter = "native".into();
        } else {
            return Err(Error::invalid(format!(
                "default snapshotter {default_snapshotter:?}: not available"
            )));
        }
    }
    Ok(Services {
        root: cfg.root.clone(),
        state: cfg.state.clone(),
        store,
        content,
        snapshotters,
        default_snapshotter,
        events: Exchange::new(),
        tasks: Default::default(),
        gc_lock: Default::default(),
        registry: crate::registry::Registry::new(cfg.registry.clone()),
        images_generation: Default::default(),
        containers_generation: Default::default(),
    })
}

/// Prepares the directories and takes the lock.
pub fn prepare(cfg: &Config) -> Result<RootLock> {
    cfg.validate()?;
    make_dir(&cfg.root, 0o711)?;
    make_dir(&cfg.state, 0o711)?;
    let lock = lock_root(&cfg.root)?;
    check_address_free(&cfg.address)?;
    Ok(lock)
}

/// Refuses an address another daemon (of any root) is serving on: taking it over would cut
/// that daemon off from its clients.
fn check_address_free(address: &Path) -> Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let Ok(meta) = fs::symlink_metadata(address) else {
        return Ok(());
    };
    if !meta.file_type().is_socket() {
        return Err(Error::FailedPrecondition(format!(
            "address {}: exists and is not a socket",
            address.display()
        )));
    }
    if std::os::unix::net::UnixStream::connect(address).is_ok() {
        return Err(Error::FailedPrecondition(format!(
            "address {}: another supd is serving on it",
            address.display()
        )));
    }
    Ok(())
}

/// Removes what a crash left in the state dir's scratch space (mount points of spec
/// generation), unmounting first.
pub fn clear_scratch(state: &Path) -> Result<()> {
    let scratch = state.join("scratch");
    let Ok(entries) = fs::read_dir(&scratch) else {
        return Ok(());
    };
    for e in entries.flatten() {
        crate::mount::unmount_all(&e.path())?;
        let _ = fs::remove_dir_all(e.path());
    }
    Ok(())
}

/// Binds the API socket (mode 0660), replacing a stale one left by a crashed daemon (the
/// root lock proves no live daemon owns it).
pub fn bind(address: &Path) -> Result<UnixListener> {
    if let Some(dir) = address.parent() {
        make_dir(dir, 0o711)?;
    }
    match fs::remove_file(address) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(Error::io(
                format!("removing stale {}", address.display()),
                e,
            ))
        }
    }
    let listener = UnixListener::bind(address)
        .map_err(|e| Error::io(format!("listening on {}", address.display()), e))?;
    fs::set_permissions(address, fs::Permissions::from_mode(0o660))
        .map_err(|e| Error::io(format!("chmod {}", address.display()), e))?;
    Ok(listener)
}
