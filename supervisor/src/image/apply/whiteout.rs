//! OCI whiteouts: `.wh.<name>` hides a name of the lower layers, `.wh..wh..opq` hides all
//! of a directory's lower contents. Either way the layer's own entries stay, whichever order
//! the tar lists them in.
//!
//! Overlay mode writes what overlayfs reads: a 0:0 character device, or the
//! `trusted.overlay.opaque` xattr. Since the root only holds this layer's changes, neither
//! touches anything the layer wrote. Delete mode removes from the full copy of the parent,
//! sparing the inodes this layer wrote (`Applier::kept`).

use std::os::fd::AsFd;

use rustix::fs::{FileType, Mode};

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
            match stat_at(dir, hidden)? {
                None => rustix::fs::mknodat(dir, hidden, FileType::CharacterDevice, Mode::empty(), 0)
                    .map_err(|e| fail(format_args!("creating whiteout {}", quoted(hidden)), e)),
                // This layer's directory: keep it, hide what the lowers had in it.
                Some(st) if file_type(&st) == FileType::Directory => open_dir(dir, hidden)
                    .map_err(|e| fail(format_args!("opening {}", quoted(hidden)), e))
                    .and_then(|fd| xattr::set_opaque(fd.as_fd())),
                // A whiteout already, or this layer's file, which hides the lower one itself.
                Some(_) => Ok(()),
            }
        } else {
            self.generation += 1;
            fsops::remove_tree(dir, hidden, self.kept.as_ref())
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
            fsops::remove_children(dir.fd.as_fd(), b"", self.kept.as_ref())
        };
        self.release(dir);
        done
    }
}
