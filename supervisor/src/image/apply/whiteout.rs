//! OCI whiteouts: `.wh.<name>` hides a name of the lower layers, `.wh..wh..opq` hides all
//! of a directory's lower contents. Either way the layer's own entries stay, whichever order
//! the tar lists them in.
//!
//! Overlay mode writes what overlayfs reads: a 0:0 character device, or the
//! `trusted.overlay.opaque` xattr. Delete mode removes from the full copy of the parent.
//! Both spare the inodes this layer wrote (`Applier::kept`), so that the order of a whiteout
//! and the layer's own entries in the tar does not matter.

use std::os::fd::{AsFd, BorrowedFd};

use rustix::fs::{FileType, Mode};
use rustix::io::Errno;

use super::fsops::{self, fail, file_type, open_dir, quoted, stat_at};
use super::{xattr, Applier};
use crate::error::Result;

impl Applier {
    /// `.wh.<hidden>` in the directory `key`.
    pub(super) fn whiteout(&mut self, key: &[u8], hidden: &[u8]) -> Result<()> {
        // Nothing to hide below a directory that exists nowhere.
        let Some(parent) = self.parent(key, false)? else {
            return Ok(());
        };
        let dir = parent.fd.as_fd();
        let done = if self.overlay {
            self.overlay_whiteout(dir, hidden)
        } else {
            self.generation += 1;
            fsops::remove_tree(dir, hidden, Some(&self.kept))
        };
        self.release(parent);
        done
    }

    /// `.wh..wh..opq` in the directory `key`.
    pub(super) fn opaque(&mut self, key: &[u8]) -> Result<()> {
        let Some(dir) = self.parent(key, false)? else {
            return Ok(());
        };
        self.generation += 1;
        let done = if self.overlay {
            // The parent may be an O_PATH descriptor, which cannot carry xattr calls.
            open_dir(dir.fd.as_fd(), b"")
                .map_err(|e| fail(format_args!("opening {}", quoted(key)), e))
                .and_then(|fd| xattr::set_opaque(fd.as_fd()))
        } else {
            fsops::remove_children(dir.fd.as_fd(), b"", Some(&self.kept))
        };
        self.release(dir);
        done
    }

    fn overlay_whiteout(&mut self, dir: BorrowedFd<'_>, hidden: &[u8]) -> Result<()> {
        let Some(st) = stat_at(dir, hidden)? else {
            return self.make_whiteout(dir, hidden);
        };
        // A whiteout already, or this layer's own file, which hides the lower one by itself.
        if file_type(&st) != FileType::Directory {
            return Ok(());
        }
        // A directory in the root holds what this layer wrote there, plus copied-up parents
        // and whiteouts: drop the latter, and if something of the layer's is left, keep the
        // directory but hide what the lowers had in it.
        self.generation += 1;
        fsops::remove_tree(dir, hidden, Some(&self.kept))?;
        match open_dir(dir, hidden) {
            Ok(fd) => xattr::set_opaque(fd.as_fd()),
            Err(Errno::NOENT) => self.make_whiteout(dir, hidden),
            Err(e) => Err(fail(format_args!("opening {}", quoted(hidden)), e)),
        }
    }

    fn make_whiteout(&mut self, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
        rustix::fs::mknodat(dir, name, FileType::CharacterDevice, Mode::empty(), 0)
            .map_err(|e| fail(format_args!("creating whiteout {}", quoted(name)), e))?;
        if let Some(st) = stat_at(dir, name)? {
            self.kept.remove(&st.st_ino);
        }
        Ok(())
    }
}
