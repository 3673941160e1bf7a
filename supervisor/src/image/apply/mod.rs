//! Applies one uncompressed layer tarball to a snapshot directory, confined to it.
//!
//! Layers are hostile input. Every name is cleaned lexically (`names`), every parent is
//! resolved with the kernel's `RESOLVE_IN_ROOT` or an equivalent confined walk (`resolve`),
//! and every change is an `*at` call on the last component relative to that parent,
//! never following it. Whiteouts become overlayfs whiteouts or deletions depending on the
//! snapshotter (`whiteout`). The stream is hashed as it is read, to the end, so the caller
//! can check the diff ID.
//!
//! Errors: a malformed or hostile layer is InvalidArgument naming the entry; a failure of
//! the filesystem is an I/O error (ResourceExhausted when full). Nothing is rolled back: the
//! caller discards the snapshot.

mod create;
mod fsops;
mod meta;
mod names;
mod resolve;
mod stream;
mod whiteout;
mod xattr;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::io::{self, BufReader, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{FileType, Mode, OFlags, Stat, Timespec, Timestamps};
use rustix::io::Errno;
use tar::EntryType;

use self::meta::Meta;
use self::names::{CleanPath, Whiteout};
use self::resolve::Parent;
use self::stream::{Hashing, StreamState, Watch};
use crate::error::{Error, Result};
use crate::snapshot::{ApplyTarget, WhiteoutMode};

/// What applying a layer produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// `sha256:<hex>` of the uncompressed tar stream as read (to check against `diff_ids`).
    pub diff_id: String,
    /// Uncompressed bytes read.
    pub size: u64,
}

/// Read-ahead on the layer stream: large, so that decompression and hashing run in big
/// batches and small entries cost no extra reads.
const READ_BUFFER: usize = 1 << 20;
/// Buffer file data is copied through.
const COPY_BUFFER: usize = 1 << 20;

/// Applies the uncompressed tar stream `layer` to `target`.
///
/// Nothing is synced: call [`sync_dir`] once when all layers of a snapshot are in.
pub fn apply_layer(layer: &mut dyn Read, target: &ApplyTarget) -> Result<Applied> {
    let mut applier = Applier::open(target)?;
    let stream = Rc::new(StreamState::default());
    let hashing = Hashing::new(layer)?;
    let watched = Watch {
        inner: BufReader::with_capacity(READ_BUFFER, hashing),
        state: Rc::clone(&stream),
    };
    let mut archive = tar::Archive::new(watched);
    for entry in archive.entries().map_err(|e| stream.error(e))? {
        let mut entry = entry.map_err(|e| stream.error(e))?;
        applier.apply_entry(&mut entry, &stream)?;
    }
    if stream.eof.get() {
        return Err(Error::invalid(
            "truncated tar: the stream ends without an end-of-archive marker",
        ));
    }
    // What follows the end-of-archive marker (its second block, record padding) is part of
    // the blob the diff ID covers.
    let mut rest = archive.into_inner().inner;
    io::copy(&mut rest, &mut io::sink()).map_err(|e| stream.error(e))?;
    applier.finish()?;
    let (diff_id, size) = rest.into_inner().finish()?;
    Ok(Applied { diff_id, size })
}

/// Flushes the filesystem holding `path` to disk (one `syncfs` rather than an fsync per
/// file).
pub fn sync_dir(path: &Path) -> Result<()> {
    let dir = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| fsops::fail(format_args!("opening {}", path.display()), e))?;
    rustix::fs::syncfs(&dir).map_err(|e| fsops::fail(format_args!("syncing {}", path.display()), e))
}

/// The state of one application.
struct Applier {
    root: OwnedFd,
    /// The parents' directories, nearest first (overlay mode only).
    lowers: Vec<OwnedFd>,
    overlay: bool,
    /// The last parent directory, reused while entries stay in it.
    cache: Option<Parent>,
    /// Bumped by every removal, which invalidates resolved paths.
    generation: u64,
    /// Inodes this layer wrote, which its own whiteouts must spare (copied-up parents and
    /// whiteout devices are not among them).
    kept: HashSet<u64>,
    /// Directory times, set at the end, after their children are written.
    dir_times: Vec<(Vec<u8>, Timestamps)>,
    buf: Vec<u8>,
}

impl Applier {
    fn open(target: &ApplyTarget) -> Result<Self> {
        let open = |path: &Path| {
            rustix::fs::open(
                path,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| fsops::fail(format_args!("opening {}", path.display()), e))
        };
        let overlay = target.whiteouts == WhiteoutMode::Overlay;
        Ok(Applier {
            root: open(&target.root)?,
            lowers: if overlay {
                target
                    .lowers
                    .iter()
                    .map(|p| open(p))
                    .collect::<Result<_>>()?
            } else {
                Vec::new()
            },
            overlay,
            cache: None,
            generation: 0,
            kept: HashSet::new(),
            dir_times: Vec::new(),
            buf: vec![0; COPY_BUFFER],
        })
    }

    fn apply_entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        stream: &StreamState,
    ) -> Result<()> {
        let raw = entry.path_bytes().into_owned();
        self.apply_named(entry, &raw, stream)
            .map_err(|e| e.context(format_args!("entry {}", fsops::quoted(&raw))))
    }

    fn apply_named<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
        stream: &StreamState,
    ) -> Result<()> {
        let entry_type = entry.header().entry_type();
        if entry_type.is_pax_global_extensions() {
            return Ok(());
        }
        let path = CleanPath::new(raw).map_err(Error::invalid)?;
        match names::whiteout(path.name()).map_err(Error::invalid)? {
            Whiteout::None => {}
            Whiteout::Name(hidden) => return self.whiteout(path.parent(), hidden),
            Whiteout::Opaque => return self.opaque(path.parent()),
            Whiteout::Reserved => return Ok(()),
        }
        let Some(kind) = Kind::of(entry_type) else {
            let shown = names::display(raw);
            tracing::warn!(entry = %shown, ?entry_type, "skipping unsupported tar entry type");
            return Ok(());
        };
        let meta = Meta::read(entry)?;
        if path.is_root() {
            return match kind {
                Kind::Dir => self.root_meta(&meta),
                _ => Err(Error::invalid("names the root but is not a directory")),
            };
        }
        let parent = self.must_parent(path.parent())?;
        let name = path.name();
        let done = match kind {
            Kind::File => self.make_file(&parent, name, &meta, entry, stream),
            Kind::Dir => self.make_dir(&parent, name, &meta),
            Kind::Symlink => {
                link_name(entry).and_then(|target| self.make_symlink(&parent, name, &target, &meta))
            }
            Kind::Hardlink => {
                link_name(entry).and_then(|target| self.make_hardlink(&parent, name, &target))
            }
            // Fifos often leave the device fields blank.
            Kind::Node(FileType::Fifo) => self.make_node(&parent, name, FileType::Fifo, 0, &meta),
            Kind::Node(node) => device(entry.header())
                .and_then(|dev| self.make_node(&parent, name, node, dev, &meta)),
        };
        self.release(parent);
        done
    }

    /// The parent of an entry being created: made if missing.
    fn must_parent(&mut self, key: &[u8]) -> Result<Parent> {
        self.parent(key, true)?
            .ok_or_else(|| Error::internal("parent directory vanished while being created"))
    }

    /// Remembers an inode this layer wrote.
    fn keep_ino(&mut self, ino: u64) {
        self.kept.insert(ino);
    }

    fn keep_fd(&mut self, fd: BorrowedFd<'_>) -> Result<()> {
        let st = rustix::fs::fstat(fd).map_err(|e| fsops::fail("inspecting a new file", e))?;
        self.keep_ino(st.st_ino);
        Ok(())
    }

    /// Forgets the inode of something the applier made on its own (a copied-up parent, a
    /// whiteout): its number may have been freed by an earlier removal of a kept inode.
    fn unkeep(&mut self, fd: BorrowedFd<'_>) -> Result<()> {
        let st = rustix::fs::fstat(fd).map_err(|e| fsops::fail("inspecting a new file", e))?;
        self.kept.remove(&st.st_ino);
        Ok(())
    }

    fn keep_at(&mut self, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        if let Some(st) = fsops::stat_at(dir, name)? {
            self.keep_ino(st.st_ino);
        }
        Ok(())
    }

    /// Sets directory times last, since writing their children changed them.
    fn finish(&mut self) -> Result<()> {
        for (path, times) in &self.dir_times {
            let dir = match resolve::open_in_root(
                self.root.as_fd(),
                path,
                OFlags::RDONLY | OFlags::NOFOLLOW,
            ) {
                Ok(dir) => dir,
                // Replaced by a later entry of the layer: its times no longer apply.
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                Err(e) => {
                    return Err(fsops::fail(
                        format_args!("opening {}", fsops::quoted(path)),
                        e,
                    ))
                }
            };
            rustix::fs::futimens(&dir, times).map_err(|e| {
                fsops::fail(format_args!("setting times of {}", fsops::quoted(path)), e)
            })?;
        }
        Ok(())
    }
}

/// What an entry creates.
#[derive(Clone, Copy)]
enum Kind {
    File,
    Dir,
    Symlink,
    Hardlink,
    /// A device node or fifo.
    Node(FileType),
}

impl Kind {
    fn of(t: EntryType) -> Option<Kind> {
        Some(match t {
            // The tar crate turns GNU sparse files into their full contents.
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => Kind::File,
            EntryType::Directory => Kind::Dir,
            EntryType::Symlink => Kind::Symlink,
            EntryType::Link => Kind::Hardlink,
            EntryType::Char => Kind::Node(FileType::CharacterDevice),
            EntryType::Block => Kind::Node(FileType::BlockDevice),
            EntryType::Fifo => Kind::Node(FileType::Fifo),
            _ => return None,
        })
    }
}

/// The device number of a character or block device entry.
fn device(header: &tar::Header) -> Result<u64> {
    let bad = |e: io::Error| Error::invalid(format!("malformed device number: {e}"));
    let major = header.device_major().map_err(bad)?.unwrap_or(0);
    let minor = header.device_minor().map_err(bad)?.unwrap_or(0);
    Ok(rustix::fs::makedev(major, minor))
}

fn link_name<R: Read>(entry: &tar::Entry<'_, R>) -> Result<Vec<u8>> {
    match entry.link_name_bytes() {
        Some(target) if target.contains(&0) => {
            Err(Error::invalid("link target contains a NUL byte"))
        }
        Some(target) if !target.is_empty() => Ok(target.into_owned()),
        _ => Err(Error::invalid("link without a target")),
    }
}

/// The access and modification times of `st`.
fn stat_times(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec {
            tv_sec: st.st_atime as _,
            tv_nsec: st.st_atime_nsec as _,
        },
        last_modification: Timespec {
            tv_sec: st.st_mtime as _,
            tv_nsec: st.st_mtime_nsec as _,
        },
    }
}
