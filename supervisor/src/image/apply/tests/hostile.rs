//! Hostile layers: nothing outside the root may be created, changed or deleted. Each case
//! checks that the call fails with InvalidArgument or confines the write, and that the
//! sentinel directory beside the root (and /etc/passwd) is unchanged.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};

use super::{exists, lstat, Env, Layer, Spec};
use crate::error::Error;
use crate::snapshot::ApplyTarget;
use crate::snapshot::WhiteoutMode::{self, Delete, Overlay};

const MODES: [WhiteoutMode; 2] = [Delete, Overlay];

/// Applies `specs` to a fresh env (prepared by `setup`) and checks the sentinel; returns the
/// env and the result for more checks.
fn attempt(
    mode: WhiteoutMode,
    setup: impl FnOnce(&Env),
    specs: impl FnOnce(&Env) -> Vec<Spec>,
) -> (Env, crate::error::Result<super::Applied>) {
    let env = Env::new();
    setup(&env);
    let before = env.sentinel();
    let layer = Layer::with(&specs(&env));
    let result = env.apply(&layer, mode);
    assert_eq!(
        before,
        env.sentinel(),
        "something outside the root changed ({mode:?})"
    );
    (env, result)
}

fn assert_invalid(result: crate::error::Result<super::Applied>, needle: &str) {
    match result {
        Err(Error::InvalidArgument(msg)) => {
            assert!(msg.contains(needle), "{msg:?} lacks {needle:?}")
        }
        other => panic!("expected InvalidArgument containing {needle:?}, got {other:?}"),
    }
}

#[test]
fn dotdot_names_are_refused() {
    for mode in MODES {
        for name in [
            "../escape",
            "../outside/pwned",
            "a/../../x",
            "./../x",
            "../.wh.x",
            "a/../../.wh..wh..opq",
        ] {
            let (_env, result) = attempt(mode, |_| {}, |_| vec![Spec::file(name, b"pwned")]);
            assert_invalid(result, &format!("entry {name:?}: escapes the root"));
        }
    }
}

#[test]
fn long_and_pax_names_are_cleaned_too() {
    let long = format!("{}pwned", "../".repeat(40));
    let (_env, result) = attempt(Delete, |_| {}, |_| vec![Spec::file(&long, b"x")]);
    assert_invalid(result, "escapes the root");
    let (_env, result) = attempt(
        Delete,
        |_| {},
        |_| vec![Spec::file("innocent", b"x").pax("path", b"../../pax-escape")],
    );
    assert_invalid(result, "entry \"../../pax-escape\": escapes the root");
}

#[test]
fn absolute_names_are_confined() {
    for mode in MODES {
        let (env, result) = attempt(
            mode,
            |_| {},
            |env| {
                vec![
                    Spec::file("/abs/path", b"a"),
                    Spec::file(&format!("{}/secret", env.outside.display()), b"pwned"),
                ]
            },
        );
        result.unwrap();
        assert_eq!(fs::read(env.root.join("abs/path")).unwrap(), b"a");
        let confined = env.root.join(env.outside_rel()).join("secret");
        assert_eq!(fs::read(confined).unwrap(), b"pwned");
    }
}

#[test]
fn symlinked_parents_in_the_layer_are_confined() {
    for mode in MODES {
        for target in ["/", "../../../../../../../..", "/../.."] {
            let (env, result) = attempt(
                mode,
                |_| {},
                |env| {
                    vec![
                        Spec::symlink("evil", target),
                        Spec::file(&format!("evil/{}/pwned", env.outside_rel()), b"x"),
                        Spec::file(&format!("evil/{}/secret", env.outside_rel()), b"x"),
                    ]
                },
            );
            result.unwrap();
            let inside = env.root.join(env.outside_rel());
            assert!(exists(&inside.join("pwned")), "{target} {mode:?}");
            assert_eq!(fs::read(inside.join("secret")).unwrap(), b"x");
        }
        // Straight at the outside directory, absolute and relative.
        let (env, result) = attempt(
            mode,
            |_| {},
            |env| {
                vec![
                    Spec::symlink("abs", env.outside.to_str().unwrap()),
                    Spec::file("abs/pwned", b"x"),
                    Spec::symlink("rel", "../outside"),
                    Spec::file("rel/secret", b"x"),
                ]
            },
        );
        result.unwrap();
        assert!(exists(&env.root.join(env.outside_rel()).join("pwned")));
        assert!(exists(&env.root.join("outside/secret")));
    }
}

#[test]
fn symlinks_already_in_the_root_or_lowers_are_confined() {
    // Delete mode: the root is a copy of the parent, which holds the symlink.
    let (env, result) = attempt(
        Delete,
        |env| symlink(&env.outside, env.root.join("lib")).unwrap(),
        |_| {
            vec![
                Spec::file("lib/pwned", b"x"),
                Spec::dir("lib/sub").mode(0o777),
            ]
        },
    );
    result.unwrap();
    assert!(exists(&env.root.join(env.outside_rel()).join("pwned")));

    // Overlay mode: the symlink is in a lower layer.
    let env = Env::new();
    let lower = env.dir("lower");
    symlink(&env.outside, lower.join("lib")).unwrap();
    symlink("../../../../../..", lower.join("up")).unwrap();
    let before = env.sentinel();
    let layer = Layer::with(&[
        Spec::file("lib/pwned", b"x"),
        Spec::file(&format!("up/{}/secret", env.outside_rel()), b"x"),
    ]);
    let target = ApplyTarget {
        root: env.root.clone(),
        lowers: vec![lower.clone()],
        whiteouts: Overlay,
    };
    super::apply_layer(&mut &layer[..], &target).unwrap();
    assert_eq!(before, env.sentinel());
    let inside = env.root.join(env.outside_rel());
    assert!(exists(&inside.join("pwned")));
    assert_eq!(fs::read(inside.join("secret")).unwrap(), b"x");
}

#[test]
fn a_symlink_at_the_final_name_is_replaced_not_followed() {
    for mode in MODES {
        let (env, result) = attempt(
            mode,
            |env| {
                symlink(env.outside.join("secret"), env.root.join("f")).unwrap();
                symlink(&env.outside, env.root.join("d")).unwrap();
                symlink(env.outside.join("secret"), env.root.join("n")).unwrap();
            },
            |_| {
                vec![
                    Spec::file("f", b"pwned").mode(0o777),
                    Spec::dir("d").mode(0o777).owner(1000, 1000),
                    Spec::node("n", tar::EntryType::Fifo, 0, 0).mode(0o777),
                ]
            },
        );
        result.unwrap();
        assert_eq!(fs::read(env.root.join("f")).unwrap(), b"pwned");
        assert!(lstat(&env.root.join("d")).is_dir());
        assert!(!lstat(&env.root.join("n")).file_type().is_symlink());
    }
}

#[test]
fn replacing_a_parent_with_a_symlink_mid_layer_is_confined() {
    for mode in MODES {
        let (env, result) = attempt(
            mode,
            |_| {},
            |env| {
                vec![
                    Spec::dir("a"),
                    Spec::file("a/x", b"x"),
                    Spec::symlink("a", env.outside.to_str().unwrap()),
                    Spec::file("a/pwned", b"x"),
                ]
            },
        );
        result.unwrap();
        assert!(exists(&env.root.join(env.outside_rel()).join("pwned")));
    }
}

#[test]
fn escaping_hardlinks_are_refused() {
    for mode in MODES {
        let (_env, result) = attempt(mode, |_| {}, |_| vec![Spec::hardlink("h", "/etc/passwd")]);
        assert_invalid(result, "hardlink target \"/etc/passwd\" does not exist");

        let (_env, result) = attempt(
            mode,
            |_| {},
            |_| vec![Spec::hardlink("h", "../outside/secret")],
        );
        assert_invalid(result, "escapes the root");

        let (_env, result) = attempt(
            mode,
            |_| {},
            |env| {
                vec![
                    Spec::symlink("evil", env.outside.to_str().unwrap()),
                    Spec::hardlink("h", "evil/secret"),
                ]
            },
        );
        assert_invalid(result, "does not exist");

        let (_env, result) = attempt(
            mode,
            |_| {},
            |env| {
                vec![
                    Spec::symlink("up", ".."),
                    Spec::hardlink("h", &format!("up/up/{}/secret", env.outside_rel())),
                ]
            },
        );
        assert_invalid(result, "does not exist");
    }
}

#[test]
fn hardlink_to_a_symlink_links_the_symlink_itself() {
    for mode in MODES {
        let (env, result) = attempt(
            mode,
            |_| {},
            |env| {
                vec![
                    Spec::symlink("s", env.outside.join("secret").to_str().unwrap()),
                    Spec::hardlink("h", "s"),
                ]
            },
        );
        result.unwrap();
        let h = lstat(&env.root.join("h"));
        assert!(h.file_type().is_symlink());
        assert_eq!(h.ino(), lstat(&env.root.join("s")).ino());
    }
}

#[test]
fn hardlink_to_a_directory_is_refused() {
    let (_env, result) = attempt(
        Delete,
        |_| {},
        |_| vec![Spec::dir("d"), Spec::hardlink("h", "d")],
    );
    assert_invalid(result, "is a directory");
}

#[test]
fn whiteouts_through_symlinks_are_confined() {
    for mode in MODES {
        let (env, result) = attempt(
            mode,
            |env| symlink(&env.outside, env.root.join("pre")).unwrap(),
            |env| {
                vec![
                    Spec::symlink("evil", env.outside.to_str().unwrap()),
                    Spec::whiteout("evil/.wh.secret"),
                    Spec::whiteout("evil/sub/.wh..wh..opq"),
                    Spec::whiteout("pre/.wh.sub"),
                    Spec::whiteout("pre/.wh..wh..opq"),
                ]
            },
        );
        result.unwrap();
        assert!(lstat(&env.root.join("evil")).file_type().is_symlink());
    }
    // Whiting out the symlink itself removes the symlink, not what it points at.
    let (env, result) = attempt(
        Delete,
        |env| symlink(&env.outside, env.root.join("evil")).unwrap(),
        |_| vec![Spec::whiteout(".wh.evil")],
    );
    result.unwrap();
    assert!(!exists(&env.root.join("evil")));
}

#[test]
fn symlink_loops_are_refused() {
    for mode in MODES {
        let (_env, result) = attempt(
            mode,
            |_| {},
            |_| {
                vec![
                    Spec::symlink("a", "b"),
                    Spec::symlink("b", "a"),
                    Spec::file("a/x", b"x"),
                ]
            },
        );
        assert_invalid(result, "too many levels of symbolic links");
    }
}

#[test]
fn a_parent_that_is_a_file_is_refused() {
    let (_env, result) = attempt(
        Delete,
        |_| {},
        |_| vec![Spec::file("f", b"x"), Spec::file("f/x", b"x")],
    );
    assert_invalid(result, "not a directory");
}
