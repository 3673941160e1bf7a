//! Writes tar entries byte by byte, without the checks a tar library makes on names: the
//! hostile fixtures need `..`, absolute names and link targets that escape, exactly as given.
//!
//! Names that do not fit the 100-byte header field, names forced to PAX, and xattrs
//! (`SCHILY.xattr.<name>`) travel in a PAX extended header before the entry.

use std::io::{self, Write};

use tar::{EntryType, Header};

/// What an entry is, with what only that kind carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File(Vec<u8>),
    Symlink(String),
    /// Hard link to another path of the same archive.
    Hardlink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

/// One tar entry. Fields are public so that a test can make any header it wants.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// Name as written, without the trailing `/` of directories (added when writing).
    pub path: String,
    pub kind: EntryKind,
    /// Permission bits, setuid/setgid/sticky included.
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Put the name (and link name) in a PAX header even when it fits the ustar field.
    pub pax_path: bool,
    /// What the ustar name field says when the name travels in PAX (default: the name,
    /// truncated): lets a test make the two disagree.
    pub ustar_name: Option<String>,
}

impl Entry {
    pub fn mode(&mut self, mode: u32) -> &mut Self {
        self.mode = mode;
        self
    }

    pub fn owner(&mut self, uid: u64, gid: u64) -> &mut Self {
        self.uid = uid;
        self.gid = gid;
        self
    }

    pub fn mtime(&mut self, mtime: u64) -> &mut Self {
        self.mtime = mtime;
        self
    }

    pub fn xattr(&mut self, name: &str, value: impl AsRef<[u8]>) -> &mut Self {
        self.xattrs
            .push((name.to_string(), value.as_ref().to_vec()));
        self
    }

    pub fn pax_path(&mut self) -> &mut Self {
        self.pax_path = true;
        self
    }

    /// Puts the name in PAX and `decoy` in the ustar name field.
    pub fn ustar_decoy(&mut self, decoy: &str) -> &mut Self {
        self.pax_path = true;
        self.ustar_name = Some(decoy.to_string());
        self
    }

    fn type_and_data(&self) -> (EntryType, &[u8]) {
        match &self.kind {
            EntryKind::Dir => (EntryType::Directory, &[]),
            EntryKind::File(data) => (EntryType::Regular, data),
            EntryKind::Symlink(_) => (EntryType::Symlink, &[]),
            EntryKind::Hardlink(_) => (EntryType::Link, &[]),
            EntryKind::Char(..) => (EntryType::Char, &[]),
            EntryKind::Block(..) => (EntryType::Block, &[]),
            EntryKind::Fifo => (EntryType::Fifo, &[]),
        }
    }

    fn link_name(&self) -> Option<&str> {
        match &self.kind {
            EntryKind::Symlink(t) | EntryKind::Hardlink(t) => Some(t),
            _ => None,
        }
    }
}

/// One PAX record: "<len> <key>=<value>\n", where <len> counts itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3;
    let mut len = body + 1;
    while len != body + len.to_string().len() {
        len = body + len.to_string().len();
    }
    let mut out = format!("{len} {key}=").into_bytes();
    out.extend_from_slice(value);
    out.push(b'\n');
    out
}

/// Copies `value` into a fixed header field, truncating what does not fit.
fn put(field: &mut [u8], value: &[u8]) {
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

/// Appends `entry` to `builder` exactly as described.
pub fn append<W: Write>(builder: &mut tar::Builder<W>, entry: &Entry) -> io::Result<()> {
    let mut name = entry.path.clone().into_bytes();
    if entry.kind == EntryKind::Dir && !name.ends_with(b"/") {
        name.push(b'/');
    }
    let link = entry.link_name().map(|l| l.as_bytes().to_vec());

    let mut records = Vec::new();
    if entry.pax_path || name.len() > 100 {
        records.extend(pax_record("path", &name));
    }
    if let Some(link) = &link {
        if entry.pax_path || link.len() > 100 {
            records.extend(pax_record("linkpath", link));
        }
    }
    for (key, value) in &entry.xattrs {
        records.extend(pax_record(&format!("SCHILY.xattr.{key}"), value));
    }
    if !records.is_empty() {
        let mut pax = Header::new_ustar();
        put(&mut pax.as_old_mut().name, b"././@PaxHeader");
        pax.set_entry_type(EntryType::XHeader);
        pax.set_mode(0o644);
        pax.set_mtime(entry.mtime);
        pax.set_size(records.len() as u64);
        pax.set_cksum();
        builder.append(&pax, records.as_slice())?;
    }

    let (entry_type, data) = entry.type_and_data();
    let mut header = Header::new_ustar();
    match &entry.ustar_name {
        Some(decoy) => put(&mut header.as_old_mut().name, decoy.as_bytes()),
        None => put(&mut header.as_old_mut().name, &name),
    }
    if let Some(link) = &link {
        put(&mut header.as_old_mut().linkname, link);
    }
    header.set_entry_type(entry_type);
    header.set_mode(entry.mode);
    header.set_uid(entry.uid);
    header.set_gid(entry.gid);
    header.set_mtime(entry.mtime);
    header.set_size(data.len() as u64);
    if let EntryKind::Char(major, minor) | EntryKind::Block(major, minor) = entry.kind {
        header.set_device_major(major)?;
        header.set_device_minor(minor)?;
    }
    header.set_cksum();
    builder.append(&header, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        assert_eq!(pax_record("path", b"a"), b"9 path=a\n");
        let long = vec![b'x'; 95];
        let rec = pax_record("path", &long);
        let (len, _) = std::str::from_utf8(&rec).unwrap().split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), rec.len());
    }
}
