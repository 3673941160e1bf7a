//! The conformance suite every snapshotter must pass, written once over `dyn Snapshotter` and
//! instantiated for each implementation at the bottom. Contents are checked the way a
//! container sees them: through real mounts (see `harness`).

mod harness;

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;

use self::harness::{labels, layer, Env, Impl, NATIVE, NS, OVERLAY};
use super::{Kind, WhiteoutMode};
use crate::error::Error;
use crate::labels::Labels;
use crate::store::snapshots::{self as records, SnapshotRecord};

fn prepare_commit_view_chain(imp: &'static Impl) {
    let env = Env::new(imp);
    let sn = env.sn();
    layer(&env, "base", None, &[("etc/os", "one"), ("bin/sh", "sh")]);
    layer(
        &env,
        "mid",
        Some("base"),
        &[("etc/os", "two"), ("usr/lib", "lib")],
    );
    sn.prepare(NS, "top", Some("mid"), Labels::new()).unwrap();

    let top = env.mount_key(NS, "top");
    assert_eq!(top.read("etc/os").as_deref(), Some("two"));
    assert_eq!(top.read("bin/sh").as_deref(), Some("sh"));
    assert_eq!(top.read("usr/lib").as_deref(), Some("lib"));
    fs::write(top.p("new"), "new").unwrap();
    drop(top);

    let mounts = sn.view(NS, "v-base", Some("base"), Labels::new()).unwrap();
    assert_eq!(sn.mounts(NS, "v-base").unwrap(), mounts);
    let v = env.mount(&mounts);
    assert_eq!(v.read("etc/os").as_deref(), Some("one"));
    assert_eq!(v.read("usr/lib"), None);
    assert_eq!(
        fs::write(v.p("x"), "x").unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    drop(v);

    sn.view(NS, "v-mid", Some("mid"), Labels::new()).unwrap();
    let v = env.mount_key(NS, "v-mid");
    assert_eq!(v.read("etc/os").as_deref(), Some("two"));
    assert_eq!(v.read("bin/sh").as_deref(), Some("sh"));
    assert_eq!(v.read("new"), None);
    assert_eq!(
        fs::write(v.p("x"), "x").unwrap_err().raw_os_error(),
        Some(libc::EROFS)
    );
    drop(v);

    let empty = env.mount(&sn.view(NS, "v-none", None, Labels::new()).unwrap());
    assert_eq!(fs::read_dir(&empty.path).unwrap().count(), 0);
    drop(empty);

    let info = sn.stat(NS, "top").unwrap();
    assert_eq!(
        (info.kind, info.parent.as_deref()),
        (Kind::Active, Some("mid"))
    );
    assert_eq!(sn.stat(NS, "mid").unwrap().kind, Kind::Committed);
    assert_eq!(sn.stat(NS, "v-mid").unwrap().kind, Kind::View);
    assert_eq!(sn.stat(NS, "base").unwrap().parent, None);
    let names: Vec<String> = sn.list(NS).unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["base", "mid", "top", "v-base", "v-mid", "v-none"]);
}

fn active_writes_show_in_committed_view(imp: &'static Impl) {
    let env = Env::new(imp);
    let sn = env.sn();
    layer(&env, "base", None, &[("a", "base")]);
    let mounts = sn.prepare(NS, "work", Some("base"), Labels::new()).unwrap();
    {
        let m = env.mount(&mounts);
        fs::write(m.p("written"), "in active").unwrap();
    }
    let info = sn.commit(NS, "done", "work", Labels::new()).unwrap();
    assert_eq!((info.name.as_str(), info.kind), ("done", Kind::Committed));
    assert!(sn.stat(NS, "work").unwrap_err().is_not_found());
    sn.view(NS, "look", Some("done"), Labels::new()).unwrap();
    let v = env.mount_key(NS, "look");
    assert_eq!(v.read("written").as_deref(), Some("in active"));
    assert_eq!(v.read("a").as_deref(), Some("base"));
}

fn deletion_in_child_hides_file(imp: &'static Impl) {
    let env = Env::new(imp);
    let sn = env.sn();
    layer(
        &env,
        "base",
        None,
        &[("gone", "x"), ("dir/inner", "y"), ("kept", "z")],
    );
    let mounts = sn
        .prepare(NS, "child-a", Some("base"), Labels::new())
        .unwrap();
    {
        let m = env.mount(&mounts);
        fs::remove_file(m.p("gone")).unwrap();
        fs::remove_dir_all(m.p("dir")).unwrap();
    }
    sn.commit(NS, "child", "child-a", Labels::new()).unwrap();
    sn.prepare(NS, "grandchild", Some("child"), Labels::new())
        .unwrap();
    sn.view(NS, "v", Some("child"), Labels::new()).unwrap();
    for key in ["v", "grandchild"] {
        let v = env.mount_key(NS, key);
        assert!(!v.p("gone").exists(), "{key}");
        assert!(!v.p("dir").exists(), "{key}");
        assert_eq!(v.read("kept").as_deref(), Some("z"));
    }
    sn.view(NS, "v-base", Some("base"), Labels::new()).unwrap();
    let v = env.mount_key(NS, "v-base");
    assert_eq!(v.read("gone").as_deref(), Some("x"));
    assert_eq!(v.read("dir/inner").as_deref(), Some("y"));
}

fn remove_refused_while_children_exist(imp: &'static Impl) {
    let env = Env::new(imp);
    let sn = env.sn();
    layer(&env, "base", None, &[("f", "x")]);
    sn.prepare(NS, "child", Some("base"), Labels::new())
        .unwrap();
    sn.view(NS, "view", Some("base"), Labels::new()).unwrap();
    for child in ["child", "view"] {
        let err = sn.remove(NS, "base").unwrap_err();
        assert!(matches!(err, Error::FailedPrecondition(_)), "{err}");
        assert!(err.to_string().contains("\"base\""), "{err}");
        sn.remove(NS, child).unwrap();
    }
    sn.remove(NS, "base").unwrap();
    assert!(sn.remove(NS, "base").unwrap_err().is_not_found());
    assert!(sn.list(NS).unwrap().is_empty());
}

fn errors_have_the_right_kinds(imp: &'static Impl) {
    let env = Env::new(imp);
    let sn = env.sn();
    let none = Labels::new;
    layer(&env, "base", None, &[("f", "x")]);
    sn.prepare(NS, "active", None, none()).unwrap();
    sn.view(NS, "view", None, none()).unwrap();
    let before = sn.list(NS).unwrap();

    let is_invalid = |e: Error| assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    let is_exists = |e: Error| assert!(matches!(e, Error::AlreadyExists(_)), "{e}");
    let is_precondition = |e: Error| assert!(matches!(e, Error::FailedPrecondition(_)), "{e}");

    let err = sn.prepare(NS, "k", Some("missing"), none()).unwrap_err();
    assert!(
        err.is_not_found() && err.to_string().contains("\"missing\""),
        "{err}"
    );
    assert!(sn
        .view(NS, "k", Some("missing"), none())
        .unwrap_err()
        .is_not_found());
    is_invalid(sn.prepare(NS, "k", Some("active"), none()).unwrap_err());
    is_invalid(sn.view(NS, "k", Some("view"), none()).unwrap_err());
    is_exists(sn.prepare(NS, "active", None, none()).unwrap_err());
    is_exists(sn.view(NS, "base", Some("base"), none()).unwrap_err());
    is_precondition(sn.commit(NS, "again", "base", none()).unwrap_err());
    is_precondition(sn.commit(NS, "again", "view", none()).unwrap_err());
    is_exists(sn.commit(NS, "base", "active", none()).unwrap_err());
    assert!(sn
        .commit(NS, "x", "missing", none())
        .unwrap_err()
        .is_not_found());
    is_invalid(sn.mounts(NS, "base").unwrap_err());
    is_invalid(sn.apply_target(NS, "base").unwrap_err());
    is_invalid(sn.apply_target(NS, "view").unwrap_err());
    assert!(sn.stat(NS, "missing").unwrap_err().is_not_found());
    assert!(sn.mounts(NS, "missing").unwrap_err().is_not_found());
    assert!(sn.usage(NS, "missing").unwrap_err().is_not_found());

    let long = "k".repeat(4097);
    for bad in ["", "a\0b", long.as_str()] {
        is_invalid(sn.prepare(NS, bad, None, none()).unwrap_err());
        if !bad.is_empty() {
            is_invalid(sn.prepare(NS, "k", Some(bad), none()).unwrap_err());
        }
        is_invalid(sn.commit(NS, bad, "active", none()).unwrap_err());
        is_invalid(sn.stat(NS, bad).unwrap_err());
    }
    is_invalid(sn.prepare("a/b", "k", None, none()).unwrap_err());
    is_invalid(sn.prepare(NS, "k", None, labels(&[("", "v")])).unwrap_err());

    // Nothing above changed anything, on disk or in the store.
    assert_eq!(sn.list(NS).unwrap(), before);
    assert_eq!(env.data_dirs("snapshots").len(), before.len());
    assert!(env.data_dirs("tmp").is_empty());

    let max = "k".repeat(4096);
    sn.prepare(NS, &max, None, none()).unwrap();
    sn.prepare(NS, "a key/with:odd,chars ü", None, none())
        .unwrap();
    sn.commit(NS, "committed ü", "a key/with:odd,chars ü", none())
        .unwrap();
}

fn labels_update_with_masks(imp: &'static Impl) {
    let env = Env::new(imp);
    let sn = env.sn();
    sn.prepare(NS, "k", None, labels(&[("a", "1"), ("b", "2")]))
        .unwrap();
    let created = sn.stat(NS, "k").unwrap();
    assert_eq!(created.labels, labels(&[("a", "1"), ("b", "2")]));

    let new = labels(&[("a", "9"), ("c", "3")]);
    let info = sn
        .update(
            NS,
            "k",
            new.clone(),
            &["labels.a".into(), "labels.b".into()],
        )
        .unwrap();
    assert_eq!(info.labels, labels(&[("a", "9")]));
    assert!(info.updated_at >= created.updated_at);
    assert_eq!(sn.stat(NS, "k").unwrap().labels, info.labels);

    assert_eq!(
        sn.update(NS, "k", new.clone(), &["labels".into()])
            .unwrap()
            .labels,
        new
    );
    assert_eq!(
        sn.update(NS, "k", labels(&[("z", "0")]), &[])
            .unwrap()
            .labels,
        labels(&[("z", "0")])
    );

    let err = sn
        .update(NS, "k", new.clone(), &["labels.a".into(), "parent".into()])
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    assert_eq!(sn.stat(NS, "k").unwrap().labels, labels(&[("z", "0")]));
    assert!(sn
        .update(NS, "missing", new, &[])
        .unwrap_err()
        .is_not_found());

    // A commit keeps the active snapshot's labels, overridden by its own.
    let info = sn.commit(NS, "c", "k", labels(&[("y", "1")])).unwrap();
    assert_eq!(info.labels, labels(&[("y", "1"), ("z", "0")]));
}

fn namespaces_are_isolated(imp: &'static Impl) {
    let env = Env::new(imp);
    let sn = env.sn();
    for ns in ["one", "two"] {
        let mounts = sn.prepare(ns, "k", None, labels(&[("ns", ns)])).unwrap();
        let m = env.mount(&mounts);
        fs::write(m.p("who"), ns).unwrap();
    }
    for ns in ["one", "two"] {
        let list = sn.list(ns).unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].labels, labels(&[("ns", ns)]));
        assert_eq!(env.mount_key(ns, "k").read("who").as_deref(), Some(ns));
    }
    assert!(sn.list("three").unwrap().is_empty());
    sn.commit("one", "c", "k", Labels::new()).unwrap();
    assert!(sn
        .prepare("two", "x", Some("c"), Labels::new())
        .unwrap_err()
        .is_not_found());
    sn.remove("one", "c").unwrap();
    assert!(sn.list("one").unwrap().is_empty());
    assert_eq!(
        env.mount_key("two", "k").read("who").as_deref(),
        Some("two")
    );
}

fn usage_counts_a_layer(imp: &'static Impl) {
    let env = Env::new(imp);
    let sn = env.sn();
    let mounts = sn.prepare(NS, "k", None, Labels::new()).unwrap();
    let empty = sn.usage(NS, "k").unwrap();
    {
        let m = env.mount(&mounts);
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 251) as u8).collect();
        fs::write(m.p("big"), &data).unwrap();
        fs::hard_link(m.p("big"), m.p("big-again")).unwrap();
    }
    let usage = sn.usage(NS, "k").unwrap();
    assert!(usage.size >= (1 << 20) + empty.size, "{usage:?}");
    assert!(usage.size < 2 << 20, "hardlinks count once: {usage:?}");
    assert_eq!(usage.inodes, empty.inodes + 1, "{usage:?}");
}

fn remove_leaves_nothing_behind(imp: &'static Impl) {
    let env = Env::new(imp);
    let sn = env.sn();
    layer(&env, "base", None, &[("deep/er/file", "x")]);
    layer(&env, "mid", Some("base"), &[("more", "y")]);
    sn.prepare(NS, "top", Some("mid"), Labels::new()).unwrap();
    sn.view(NS, "v", Some("mid"), Labels::new()).unwrap();
    {
        let top = env.mount_key(NS, "top");
        fs::remove_file(top.p("more")).unwrap();
        fs::set_permissions(top.p("deep"), fs::Permissions::from_mode(0o000)).unwrap();
    }
    assert_eq!(env.data_dirs("snapshots").len(), 4);
    for key in ["v", "top", "mid", "base"] {
        sn.remove(NS, key).unwrap();
    }
    assert!(env.data_dirs("snapshots").is_empty());
    assert!(env.data_dirs("tmp").is_empty());
    assert!(env.data_dirs("trash").is_empty());
    assert!(records::list_all(env.store.as_ref().unwrap(), imp.name)
        .unwrap()
        .is_empty());
}

fn snapshots_persist_across_reopen(imp: &'static Impl) {
    let mut env = Env::new(imp);
    layer(&env, "base", None, &[("f", "base")]);
    env.sn()
        .prepare(NS, "work", Some("base"), labels(&[("l", "v")]))
        .unwrap();
    {
        let m = env.mount_key(NS, "work");
        fs::write(m.p("g"), "work").unwrap();
    }
    let before = env.sn().list(NS).unwrap();
    let mounts = env.sn().mounts(NS, "work").unwrap();

    env.reopen();
    let sn = env.sn();
    assert_eq!(sn.list(NS).unwrap(), before);
    assert_eq!(sn.mounts(NS, "work").unwrap(), mounts);
    {
        let m = env.mount_key(NS, "work");
        assert_eq!(m.read("f").as_deref(), Some("base"));
        assert_eq!(m.read("g").as_deref(), Some("work"));
    }
    sn.commit(NS, "done", "work", Labels::new()).unwrap();
    sn.prepare(NS, "next", Some("done"), Labels::new()).unwrap();
    assert_eq!(env.mount_key(NS, "next").read("g").as_deref(), Some("work"));
}

fn crash_leftovers_are_recovered(imp: &'static Impl) {
    let mut env = Env::new(imp);
    layer(&env, "base", None, &[("f", "base")]);
    let store = env.store.clone().unwrap();
    let root = env.root();
    // A crash after the record of "late" was stored, before its data was renamed into place.
    let id = records::next_id(&store).unwrap();
    fs::create_dir_all(root.join(format!("tmp/{id}/fs"))).unwrap();
    fs::write(root.join(format!("tmp/{id}/fs/late")), "late").unwrap();
    fs::create_dir_all(root.join(format!("tmp/{id}/work"))).unwrap();
    let now = std::time::SystemTime::now();
    let record = SnapshotRecord {
        id,
        kind: Kind::Active,
        parent: None,
        labels: Labels::new(),
        created_at: now,
        updated_at: now,
    };
    records::insert_new(&store, imp.name, NS, "late", &record).unwrap();
    // Half-made data without a record, data whose record was removed, an unfinished trash.
    fs::create_dir_all(root.join("tmp/99999/fs/x")).unwrap();
    fs::create_dir_all(root.join("snapshots/88888/fs/y")).unwrap();
    fs::create_dir_all(root.join("trash/77777/fs/z")).unwrap();
    drop(store);

    env.reopen();
    assert_eq!(env.data_dirs("snapshots").len(), 2);
    assert!(env.data_dirs("tmp").is_empty());
    assert!(env.data_dirs("trash").is_empty());
    assert_eq!(
        env.mount_key(NS, "late").read("late").as_deref(),
        Some("late")
    );
    assert_eq!(
        env.mount(&env.sn().view(NS, "v", Some("base"), Labels::new()).unwrap())
            .read("f")
            .as_deref(),
        Some("base")
    );
}

fn apply_target_names_the_documented_dirs(imp: &'static Impl) {
    let env = Env::new(imp);
    let sn = env.sn();
    layer(&env, "base", None, &[("from-base", "1")]);
    layer(&env, "mid", Some("base"), &[("from-mid", "2")]);
    sn.prepare(NS, "top", Some("mid"), Labels::new()).unwrap();
    let t = sn.apply_target(NS, "top").unwrap();
    assert_eq!(t.whiteouts, imp.whiteouts);
    assert!(
        t.root.starts_with(fs::canonicalize(env.root()).unwrap()),
        "{t:?}"
    );
    assert!(t.root.is_dir());
    match imp.whiteouts {
        // Nearest first: the layers' own files are in their own directories.
        WhiteoutMode::Overlay => {
            assert_eq!(t.lowers.len(), 2, "{t:?}");
            assert!(
                t.lowers[0].join("from-mid").exists() && !t.lowers[0].join("from-base").exists()
            );
            assert!(t.lowers[1].join("from-base").exists());
            assert!(!t.root.join("from-base").exists());
        }
        WhiteoutMode::Delete => {
            assert!(t.lowers.is_empty(), "{t:?}");
            assert!(t.root.join("from-base").exists() && t.root.join("from-mid").exists());
        }
    }
    fs::write(t.root.join("applied"), "3").unwrap();
    let m = env.mount_key(NS, "top");
    assert_eq!(m.read("applied").as_deref(), Some("3"));
    assert_eq!(m.read("from-base").as_deref(), Some("1"));
}

fn metadata_survives_into_child_layers(imp: &'static Impl) {
    use rustix::fs::{AtFlags, FileType, Mode, Timespec, Timestamps, XattrFlags};
    let env = Env::new(imp);
    let sn = env.sn();
    let mounts = sn.prepare(NS, "meta-a", None, Labels::new()).unwrap();
    let old = Timestamps {
        last_access: Timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 5,
        },
        last_modification: Timespec {
            tv_sec: 1_000_000_000,
            tv_nsec: 5,
        },
    };
    {
        let m = env.mount(&mounts);
        fs::create_dir(m.p("dir")).unwrap();
        fs::write(m.p("dir/suid"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::chown(m.p("dir/suid"), Some(1234), Some(5678)).unwrap();
        fs::set_permissions(m.p("dir/suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        rustix::fs::setxattr(m.p("dir/suid"), "user.note", b"hello", XattrFlags::empty()).unwrap();
        fs::hard_link(m.p("dir/suid"), m.p("link")).unwrap();
        symlink("/etc/passwd", m.p("abs-link")).unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            m.p("null"),
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o666),
            rustix::fs::makedev(1, 3),
        )
        .unwrap();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            m.p("fifo"),
            FileType::Fifo,
            Mode::from_raw_mode(0o640),
            0,
        )
        .unwrap();
        for p in ["dir/suid", "dir", "abs-link"] {
            rustix::fs::utimensat(rustix::fs::CWD, m.p(p), &old, AtFlags::SYMLINK_NOFOLLOW)
                .unwrap();
        }
    }
    sn.commit(NS, "meta", "meta-a", Labels::new()).unwrap();
    sn.prepare(NS, "child", Some("meta"), Labels::new())
        .unwrap();
    let m = env.mount_key(NS, "child");
    let suid = fs::symlink_metadata(m.p("dir/suid")).unwrap();
    assert_eq!(
        (suid.uid(), suid.gid(), suid.mode() & 0o7777),
        (1234, 5678, 0o4755)
    );
    assert_eq!((suid.mtime(), suid.mtime_nsec()), (1_000_000_000, 5));
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(m.p("dir/suid"), "user.note", &mut buf[..]).unwrap();
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(fs::symlink_metadata(m.p("link")).unwrap().ino(), suid.ino());
    assert_eq!(suid.nlink(), 2);
    assert_eq!(
        fs::read_link(m.p("abs-link")).unwrap(),
        Path::new("/etc/passwd")
    );
    assert_eq!(
        fs::symlink_metadata(m.p("abs-link")).unwrap().mtime(),
        1_000_000_000
    );
    assert_eq!(
        fs::symlink_metadata(m.p("dir")).unwrap().mtime(),
        1_000_000_000
    );
    let null = fs::symlink_metadata(m.p("null")).unwrap();
    assert_eq!(
        (null.mode() & libc::S_IFMT, null.rdev()),
        (libc::S_IFCHR, rustix::fs::makedev(1, 3))
    );
    let fifo = fs::symlink_metadata(m.p("fifo")).unwrap();
    assert_eq!(
        (fifo.mode() & libc::S_IFMT, fifo.mode() & 0o777),
        (libc::S_IFIFO, 0o640)
    );
}

fn concurrent_prepares_of_one_key(imp: &'static Impl) {
    let env = Env::new(imp);
    layer(&env, "base", None, &[("f", "x")]);
    let results: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..4)
            .map(|_| s.spawn(|| env.sn().prepare(NS, "same", Some("base"), Labels::new())))
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1);
    for r in results.into_iter().filter_map(|r| r.err()) {
        assert!(matches!(r, Error::AlreadyExists(_)), "{r}");
    }
    assert_eq!(env.data_dirs("snapshots").len(), 2);
    assert!(env.data_dirs("tmp").is_empty());
}

macro_rules! conformance {
    ($($case:ident),* $(,)?) => {
        mod overlay {
            $(#[test] fn $case() { super::$case(&super::OVERLAY) })*
        }
        mod native {
            $(#[test] fn $case() { super::$case(&super::NATIVE) })*
        }
    };
}

conformance!(
    prepare_commit_view_chain,
    active_writes_show_in_committed_view,
    deletion_in_child_hides_file,
    remove_refused_while_children_exist,
    errors_have_the_right_kinds,
    labels_update_with_masks,
    namespaces_are_isolated,
    usage_counts_a_layer,
    remove_leaves_nothing_behind,
    snapshots_persist_across_reopen,
    crash_leftovers_are_recovered,
    apply_target_names_the_documented_dirs,
    metadata_survives_into_child_layers,
    concurrent_prepares_of_one_key,
);
