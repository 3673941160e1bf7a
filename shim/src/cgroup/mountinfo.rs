//! The lines of /proc/self/mountinfo, as far as finding a cgroup hierarchy's mount needs them.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// The fields of a mountinfo line that matter here.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Mount<'a> {
    /// The directory of the filesystem that is mounted (for a cgroup hierarchy: the cgroup).
    pub root: PathBuf,
    pub point: PathBuf,
    pub fstype: &'a str,
    pub super_options: &'a str,
}

impl<'a> Mount<'a> {
    /// `id parent major:minor root point options [optional...] - fstype source super_options`
    pub fn parse(line: &'a str) -> Option<Mount<'a>> {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().skip(6).position(|f| *f == "-")? + 6;
        Some(Mount {
            root: unescape(fields.get(3)?),
            point: unescape(fields.get(4)?),
            fstype: fields.get(separator + 1)?,
            super_options: fields.get(separator + 3).copied().unwrap_or(""),
        })
    }

    /// Whether `option` is one of the super options, whole (`memory`, not `memory_x`).
    pub fn has_option(&self, option: &str) -> bool {
        self.super_options.split(',').any(|o| o == option)
    }
}

/// Undoes mountinfo's escapes: a space, tab, newline or backslash is written `\ooo` (octal).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            let digits = std::str::from_utf8(d).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(b)) => {
                out.push(b);
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    PathBuf::from(OsString::from_vec(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields() {
        let m = Mount::parse("30 27 0:26 / /sys/fs/cgroup rw shared:4 master:1 - cgroup2 none rw");
        assert_eq!(
            m,
            Some(Mount {
                root: "/".into(),
                point: "/sys/fs/cgroup".into(),
                fstype: "cgroup2",
                super_options: "rw",
            })
        );
        assert_eq!(Mount::parse("30 27 0:26 / /x rw"), None);
        assert_eq!(Mount::parse(""), None);
    }

    #[test]
    fn whole_options() {
        let m = Mount::parse("35 31 0:32 / /m rw - cgroup cgroup rw,cpu,memory_x").unwrap();
        assert!(m.has_option("cpu"));
        assert!(!m.has_option("memory"));
    }

    #[test]
    fn escapes() {
        assert_eq!(
            unescape("/run/my\\040cgroups\\134x"),
            PathBuf::from("/run/my cgroups\\x")
        );
        assert_eq!(unescape("a\\04"), PathBuf::from("a\\04"));
        assert_eq!(unescape("\\999"), PathBuf::from("\\999"));
    }
}
