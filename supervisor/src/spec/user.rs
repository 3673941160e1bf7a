//! Resolving a user string ("name", "uid", "uid:gid", "name:group", ...) to ids, with the
//! container's own /etc/passwd and /etc/group (read through `rootfs`, as untrusted files).

use std::path::Path;

use crate::error::{Error, Result};

use super::rootfs;

/// Linux keeps (uid_t)-1 as "no change", so it is never a real id.
const NO_ID: u32 = u32::MAX;
/// The kernel's NGROUPS_MAX.
const MAX_GROUPS: usize = 65536;

/// Who a container's process runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups: every group of /etc/group that lists the user's name.
    pub additional_gids: Vec<u32>,
    /// From /etc/passwd; "/" when the user has no entry there.
    pub home: String,
}

struct PasswdEntry {
    name: String,
    uid: u32,
    gid: u32,
    home: String,
}

struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

/// Resolves `user` (empty: root) inside `rootfs`. A numeric uid needs no passwd entry; a name
/// does.
pub fn resolve(user: &str, rootfs: &Path) -> Result<ResolvedUser> {
    let (user_part, group_part) = parse(user)?;
    let passwd = read_passwd(rootfs)?;

    let (uid, mut gid, name, home) = match user_part.parse::<u32>() {
        Ok(uid) => {
            check_id(user, uid)?;
            match passwd.iter().find(|e| e.uid == uid) {
                Some(e) => (uid, e.gid, Some(e.name.clone()), e.home.clone()),
                None => (uid, 0, None, String::new()),
            }
        }
        Err(_) => match passwd.iter().find(|e| e.name == user_part) {
            Some(e) => (e.uid, e.gid, Some(e.name.clone()), e.home.clone()),
            None => {
                return Err(Error::invalid(format!(
                    "user {user:?}: no such user in the container's /etc/passwd"
                )))
            }
        },
    };

    let groups = if group_part.is_some() || name.is_some() {
        read_group(rootfs)?
    } else {
        Vec::new()
    };
    if let Some(group) = group_part {
        gid = match group.parse::<u32>() {
            Ok(gid) => {
                check_id(user, gid)?;
                gid
            }
            Err(_) => match groups.iter().find(|g| g.name == group) {
                Some(g) => g.gid,
                None => {
                    return Err(Error::invalid(format!(
                    "user {user:?}: group {group:?}: no such group in the container's /etc/group"
                )))
                }
            },
        };
    }

    let mut additional_gids = Vec::new();
    if let Some(name) = &name {
        for g in groups
            .iter()
            .filter(|g| g.members.iter().any(|m| m == name))
        {
            if g.gid != gid && !additional_gids.contains(&g.gid) {
                additional_gids.push(g.gid);
            }
        }
    }
    if additional_gids.len() > MAX_GROUPS {
        return Err(Error::invalid(format!(
            "user {user:?}: member of more than {MAX_GROUPS} groups in the container's /etc/group"
        )));
    }
    let home = if home.is_empty() {
        "/".to_string()
    } else {
        home
    };
    Ok(ResolvedUser {
        uid,
        gid,
        additional_gids,
        home,
    })
}

/// Splits "user[:group]"; empty means root.
fn parse(user: &str) -> Result<(&str, Option<&str>)> {
    if user.is_empty() {
        return Ok(("0", None));
    }
    if user.len() > 256 {
        return Err(Error::invalid(format!(
            "user {:?}...: longer than 256 bytes",
            truncate(user, 32)
        )));
    }
    if user
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '/')
    {
        return Err(Error::invalid(format!(
            "user {user:?}: control characters, spaces and '/' are not allowed"
        )));
    }
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    if u.is_empty() || g.is_some_and(|g| g.is_empty() || g.contains(':')) {
        return Err(Error::invalid(format!(
            "user {user:?}: want name, uid, name:group, uid:gid, name:gid or uid:group"
        )));
    }
    Ok((u, g))
}

fn check_id(user: &str, id: u32) -> Result<()> {
    if id == NO_ID {
        return Err(Error::invalid(format!(
            "user {user:?}: {id} is not a valid id"
        )));
    }
    Ok(())
}

fn truncate(s: &str, max: usize) -> &str {
    let mut end = max.min(s.len());
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn read_passwd(rootfs: &Path) -> Result<Vec<PasswdEntry>> {
    let Some(data) = rootfs::read_file(rootfs, "etc/passwd")? else {
        return Ok(Vec::new());
    };
    Ok(records(&data)
        .filter_map(|f| {
            // name:password:uid:gid:gecos:home:shell; the tail is optional in practice.
            Some(PasswdEntry {
                name: f.first()?.to_string(),
                uid: f.get(2)?.parse().ok()?,
                gid: f.get(3)?.parse().ok()?,
                home: f.get(5).map(|s| s.to_string()).unwrap_or_default(),
            })
        })
        .collect())
}

fn read_group(rootfs: &Path) -> Result<Vec<GroupEntry>> {
    let Some(data) = rootfs::read_file(rootfs, "etc/group")? else {
        return Ok(Vec::new());
    };
    Ok(records(&data)
        .filter_map(|f| {
            // name:password:gid:member,member,...
            Some(GroupEntry {
                name: f.first()?.to_string(),
                gid: f.get(2)?.parse().ok()?,
                members: f
                    .get(3)
                    .map(|m| {
                        m.split(',')
                            .map(str::trim)
                            .filter(|m| !m.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default(),
            })
        })
        .collect())
}

/// The colon-separated fields of each line that is not blank or a comment. A malformed line
/// is skipped (as libc does), never an error: the file belongs to the image.
fn records(data: &[u8]) -> impl Iterator<Item = Vec<&str>> {
    data.split(|b| *b == b'\n')
        .filter_map(|line| std::str::from_utf8(line).ok())
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.trim().is_empty() && !line.starts_with('#'))
        .map(|line| line.split(':').collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const PASSWD: &str = "\
root:x:0:0:root:/root:/bin/sh
# a comment
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
bob:x:1000:1000:Bob:/home/bob:/bin/sh
broken line
nohome:x:1001:1001
";
    const GROUP: &str = "\
root:x:0:
wheel:x:10:root,bob
bob:x:1000:
audio:x:29:alice, bob
video:x:44:bob
staff:x:50:bobby
";

    fn rootfs() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/passwd"), PASSWD).unwrap();
        std::fs::write(dir.path().join("etc/group"), GROUP).unwrap();
        dir
    }

    fn user(uid: u32, gid: u32, groups: &[u32], home: &str) -> ResolvedUser {
        ResolvedUser {
            uid,
            gid,
            additional_gids: groups.to_vec(),
            home: home.to_string(),
        }
    }

    #[test]
    fn every_form() {
        let r = rootfs();
        let p = r.path();
        assert_eq!(resolve("", p).unwrap(), user(0, 0, &[10], "/root"));
        assert_eq!(
            resolve("bob", p).unwrap(),
            user(1000, 1000, &[10, 29, 44], "/home/bob")
        );
        assert_eq!(
            resolve("1000", p).unwrap(),
            user(1000, 1000, &[10, 29, 44], "/home/bob")
        );
        assert_eq!(
            resolve("bob:video", p).unwrap(),
            user(1000, 44, &[10, 29], "/home/bob")
        );
        assert_eq!(
            resolve("bob:7", p).unwrap(),
            user(1000, 7, &[10, 29, 44], "/home/bob")
        );
        assert_eq!(
            resolve("1000:wheel", p).unwrap(),
            user(1000, 10, &[29, 44], "/home/bob")
        );
        assert_eq!(resolve("daemon", p).unwrap(), user(1, 1, &[], "/usr/sbin"));
        assert_eq!(resolve("nohome", p).unwrap(), user(1001, 1001, &[], "/"));
        // Numeric ids need no entry.
        assert_eq!(resolve("4242", p).unwrap(), user(4242, 0, &[], "/"));
        assert_eq!(resolve("4242:99", p).unwrap(), user(4242, 99, &[], "/"));
    }

    #[test]
    fn without_account_files() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(resolve("", dir.path()).unwrap(), user(0, 0, &[], "/"));
        assert_eq!(
            resolve("33:33", dir.path()).unwrap(),
            user(33, 33, &[], "/")
        );
        let err = resolve("www-data", dir.path()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "user \"www-data\": no such user in the container's /etc/passwd"
        );
    }

    #[test]
    fn bad_users() {
        let r = rootfs();
        for bad in [
            "alice",
            "bob:nogroup",
            ":",
            "bob:",
            ":10",
            "a:b:c",
            "bob\0",
            "b ob",
            "4294967295",
            "1:4294967295",
            "../bob",
        ] {
            let err = resolve(bad, r.path()).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}: {err}");
        }
        let long = "a".repeat(300);
        assert!(resolve(&long, r.path()).is_err());
    }

    #[test]
    fn hostile_links_are_not_followed_out() {
        let outer = tempfile::tempdir().unwrap();
        std::fs::write(outer.path().join("passwd"), "evil:x:0:0::/host:/bin/sh\n").unwrap();
        let root = outer.path().join("a/b/rootfs");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        symlink("../../../../passwd", root.join("etc/passwd")).unwrap();
        symlink("/etc/shadow", root.join("etc/group")).unwrap();
        let err = resolve("evil", &root).unwrap_err();
        assert!(err.to_string().contains("no such user"), "{err}");
        // The root filesystem's own /etc/shadow (absent) was looked at, not the host's.
        assert_eq!(resolve("0:0", &root).unwrap(), user(0, 0, &[], "/"));
        // An absolute link resolves inside the root filesystem.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        std::fs::write(root.join("etc/real"), "svc:x:7:7::/srv:/bin/sh\n").unwrap();
        symlink("/etc/real", root.join("etc/passwd")).unwrap();
        assert_eq!(resolve("svc", &root).unwrap(), user(7, 7, &[], "/srv"));
        // ../../etc/passwd from /etc is /etc/passwd again, inside: a loop, not the host's.
        std::fs::remove_file(root.join("etc/passwd")).unwrap();
        symlink("../../../etc/passwd", root.join("etc/passwd")).unwrap();
        let err = resolve("0", &root).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        assert!(err.to_string().contains("loop"), "{err}");
    }
}
