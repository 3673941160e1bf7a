//! Entry names: lexical cleaning (confining `..` and absolute names) and whiteout names.

/// An entry name relative to the layer root, with no empty, `.` or `..` components.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct CleanPath {
    joined: Vec<u8>,
    /// Where the last component starts in `joined`.
    name_at: usize,
}

impl CleanPath {
    /// Cleans `raw` as GNU tar does for extraction: a leading `/` is dropped (the name is
    /// taken relative to the root) and `a/../b` becomes `b`; a name that climbs above the
    /// root is refused rather than clamped, since no honest layer produces one.
    pub(super) fn new(raw: &[u8]) -> Result<Self, &'static str> {
        // Only a PAX record can carry one; no system call takes it.
        if raw.contains(&0) {
            return Err("name contains a NUL byte");
        }
        let mut joined: Vec<u8> = Vec::with_capacity(raw.len());
        for comp in raw.split(|b| *b == b'/') {
            match comp {
                b"" | b"." => {}
                b".." => {
                    if joined.is_empty() {
                        return Err("escapes the root");
                    }
                    let cut = joined.iter().rposition(|b| *b == b'/').unwrap_or(0);
                    joined.truncate(cut);
                }
                _ => {
                    if !joined.is_empty() {
                        joined.push(b'/');
                    }
                    joined.extend_from_slice(comp);
                }
            }
        }
        let name_at = joined.iter().rposition(|b| *b == b'/').map_or(0, |i| i + 1);
        Ok(CleanPath { joined, name_at })
    }

    /// True for the root itself (`/`, `./`, `a/..`).
    pub(super) fn is_root(&self) -> bool {
        self.joined.is_empty()
    }

    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.joined
    }

    /// The directory part (empty for a name directly in the root).
    pub(super) fn parent(&self) -> &[u8] {
        if self.name_at == 0 {
            b""
        } else {
            &self.joined[..self.name_at - 1]
        }
    }

    /// The last component (empty only for the root).
    pub(super) fn name(&self) -> &[u8] {
        &self.joined[self.name_at..]
    }
}

/// What an entry's last component means under the OCI whiteout convention.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Whiteout<'a> {
    /// Not a whiteout: an ordinary entry.
    None,
    /// `.wh.<name>`: hide `<name>` of the lower layers.
    Name(&'a [u8]),
    /// `.wh..wh..opq`: hide everything the lower layers have in the directory.
    Opaque,
    /// Another `.wh..wh.*` name: reserved metadata, ignored.
    Reserved,
}

const PREFIX: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";
const META_PREFIX: &[u8] = b".wh..wh.";

/// Classifies `name` (a last component); a whiteout of nothing (`.wh.`, `.wh..`) is invalid.
pub(super) fn whiteout(name: &[u8]) -> Result<Whiteout<'_>, &'static str> {
    if !name.starts_with(PREFIX) {
        return Ok(Whiteout::None);
    }
    if name == OPAQUE {
        return Ok(Whiteout::Opaque);
    }
    if name.starts_with(META_PREFIX) {
        return Ok(Whiteout::Reserved);
    }
    match &name[PREFIX.len()..] {
        b"" | b"." | b".." => Err("whiteout names no file"),
        hidden => Ok(Whiteout::Name(hidden)),
    }
}

/// An entry name for messages: lossy UTF-8, quoted by the caller's `{:?}`.
pub(super) fn display(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(raw: &str) -> Result<(String, String, String), &'static str> {
        let p = CleanPath::new(raw.as_bytes())?;
        let s = |b: &[u8]| String::from_utf8(b.to_vec()).unwrap();
        Ok((s(p.as_bytes()), s(p.parent()), s(p.name())))
    }

    #[test]
    fn cleans_names() {
        let ok = |raw: &str, full: &str, parent: &str, name: &str| {
            assert_eq!(
                clean(raw).unwrap(),
                (full.to_string(), parent.to_string(), name.to_string()),
                "{raw}"
            );
        };
        ok("a", "a", "", "a");
        ok("./a/b/", "a/b", "a", "b");
        ok("/etc/passwd", "etc/passwd", "etc", "passwd");
        ok("//a//./b", "a/b", "a", "b");
        ok("a/../b", "b", "", "b");
        ok("a/b/../../c/d", "c/d", "c", "d");
        ok("./", "", "", "");
        ok("a/..", "", "", "");
        ok("/", "", "", "");
        assert!(CleanPath::new(b"./").unwrap().is_root());
        assert!(CleanPath::new(b"a\0b").is_err());
        for bad in ["..", "../x", "a/../../x", "/../x", "a/b/../../../x", "./.."] {
            assert_eq!(clean(bad), Err("escapes the root"), "{bad}");
        }
    }

    #[test]
    fn classifies_whiteouts() {
        assert_eq!(whiteout(b"file"), Ok(Whiteout::None));
        assert_eq!(whiteout(b".wh.file"), Ok(Whiteout::Name(b"file")));
        assert_eq!(whiteout(b".wh..hidden"), Ok(Whiteout::Name(b".hidden")));
        assert_eq!(whiteout(b".wh..wh..opq"), Ok(Whiteout::Opaque));
        assert_eq!(whiteout(b".wh..wh.plnk"), Ok(Whiteout::Reserved));
        assert!(whiteout(b".wh.").is_err());
        assert!(whiteout(b".wh..").is_err());
        assert!(whiteout(b".wh...").is_err());
    }
}
