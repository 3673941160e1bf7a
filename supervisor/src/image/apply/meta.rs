//! Entry metadata: owner, mode, times and xattrs, from the tar header and its PAX records.

use std::ffi::CString;
use std::io::Read;

use rustix::fs::{Timespec, Timestamps};

use crate::error::{Error, Result};

/// What an entry says about the file it creates, besides its name, type and data.
pub(super) struct Meta {
    pub(super) uid: u32,
    pub(super) gid: u32,
    /// Permission bits including setuid, setgid and sticky.
    pub(super) mode: u32,
    pub(super) times: Timestamps,
    pub(super) xattrs: Vec<(CString, Vec<u8>)>,
}

const XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

impl Meta {
    /// Reads the header (the tar crate has already applied PAX `uid`/`gid`/`size`) and the
    /// PAX records it does not interpret: `mtime`/`atime` with sub-second precision and
    /// `SCHILY.xattr.*`.
    pub(super) fn read<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<Self> {
        let header = entry.header();
        let uid = id(header.uid().map_err(bad_header)?, "uid")?;
        let gid = id(header.gid().map_err(bad_header)?, "gid")?;
        let mode = header.mode().map_err(bad_header)? & 0o7777;
        let mut mtime = seconds(header.mtime().map_err(bad_header)?);
        // Old GNU headers carry an atime; ustar ones do not.
        let mut atime = header
            .as_gnu()
            .and_then(|gnu| gnu.atime().ok())
            .filter(|t| *t != 0)
            .map(seconds);
        let mut xattrs = Vec::new();
        if let Some(records) = entry.pax_extensions().map_err(bad_header)? {
            for record in records {
                let record = record.map_err(bad_header)?;
                let key = record.key_bytes();
                if key == b"mtime" {
                    if let Some(t) = pax_time(record.value_bytes()) {
                        mtime = t;
                    }
                } else if key == b"atime" {
                    if let Some(t) = pax_time(record.value_bytes()) {
                        atime = Some(t);
                    }
                } else if let Some(name) = key.strip_prefix(XATTR_PREFIX) {
                    let name = CString::new(name)
                        .ok()
                        .filter(|n| !n.is_empty())
                        .ok_or_else(|| Error::invalid("malformed xattr name in PAX record"))?;
                    xattrs.push((name, record.value_bytes().to_vec()));
                }
            }
        }
        Ok(Meta {
            uid,
            gid,
            mode,
            times: Timestamps {
                last_access: atime.unwrap_or(mtime),
                last_modification: mtime,
            },
            xattrs,
        })
    }
}

fn bad_header(err: std::io::Error) -> Error {
    Error::invalid(format!("malformed tar header: {err}"))
}

/// An owner id that chown can take: `u32::MAX` means "leave unchanged" to the kernel.
fn id(raw: u64, what: &str) -> Result<u32> {
    u32::try_from(raw)
        .ok()
        .filter(|v| *v != u32::MAX)
        .ok_or_else(|| Error::invalid(format!("{what} {raw} out of range")))
}

fn seconds(secs: u64) -> Timespec {
    Timespec {
        tv_sec: i64::try_from(secs).unwrap_or(i64::MAX),
        tv_nsec: 0,
    }
}

/// Parses a PAX time (`[-]seconds[.fraction]`); `None` for anything malformed, in which
/// case the header's whole seconds stand.
pub(super) fn pax_time(value: &[u8]) -> Option<Timespec> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let (negative, s) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s),
    };
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |t: &str| t.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && frac.is_empty()) || !digits(whole) || !digits(frac) {
        return None;
    }
    let secs: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let mut nanos: i64 = 0;
    for i in 0..9 {
        let digit = frac.as_bytes().get(i).map_or(0, |b| i64::from(b - b'0'));
        nanos = nanos * 10 + digit;
    }
    let (tv_sec, tv_nsec) = match (negative, nanos) {
        (false, _) => (secs, nanos),
        (true, 0) => (-secs, 0),
        (true, n) => (-secs - 1, 1_000_000_000 - n),
    };
    Some(Timespec { tv_sec, tv_nsec })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &str) -> Option<(i64, i64)> {
        pax_time(v.as_bytes()).map(|t| (t.tv_sec, t.tv_nsec))
    }

    #[test]
    fn parses_pax_times() {
        assert_eq!(t("1700000000"), Some((1_700_000_000, 0)));
        assert_eq!(t("1700000000.5"), Some((1_700_000_000, 500_000_000)));
        assert_eq!(
            t("1700000000.123456789123"),
            Some((1_700_000_000, 123_456_789))
        );
        assert_eq!(t("-1.25"), Some((-2, 750_000_000)));
        assert_eq!(t("-3"), Some((-3, 0)));
        assert_eq!(t(".5"), Some((0, 500_000_000)));
        assert_eq!(t(""), None);
        assert_eq!(t("12a"), None);
        assert_eq!(t("1.2.3"), None);
    }

    #[test]
    fn refuses_ids_chown_cannot_take() {
        assert_eq!(id(1000, "uid").unwrap(), 1000);
        assert!(id(u64::from(u32::MAX), "uid").is_err());
        assert!(id(1 << 40, "gid").is_err());
    }
}
