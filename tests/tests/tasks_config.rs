//! Containers.Create overrides seen from inside the container: user and groups, environment,
//! working directory, bind mounts (read-write and read-only), a read-only root filesystem and
//! the host name.
#![allow(clippy::unwrap_used)]

use futures::future::join_all;
use sup_client::api;
use sup_tests::rpc::expect_code;
use sup_tests::task::{sh, show, Ran, World};
use tonic::Code;

/// The PATH the test image's config sets.
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[track_caller]
fn assert_output(ran: &Ran, stdout: &str, stderr: &str, code: u32, what: &str) {
    assert_eq!(
        (ran.output.stdout.as_slice(), ran.output.stderr.as_slice()),
        (stdout.as_bytes(), stderr.as_bytes()),
        "{what}: stdout {} stderr {}",
        show(&ran.output.stdout),
        show(&ran.output.stderr)
    );
    assert_eq!(ran.wait.exit_status, code, "{what}: {:?}", ran.wait);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_override() {
    let world = World::start().await;
    let cases = [
        ("root", "", "0\n0\n/root\n"),
        ("uid", "1000", "1000\n1000\n/home/user\n"),
        ("name", "user", "1000\n1000\n/home/user\n"),
        ("uid-gid", "1000:1000", "1000\n1000\n/home/user\n"),
        ("name-group", "user:root", "1000\n0\n/home/user\n"),
        ("unlisted", "4242", "4242\n0\n/\n"),
    ];
    let runs = cases.iter().map(|(id, user, _)| {
        let world = &world;
        let mut config = sh(r#"id -u; id -G; echo "$HOME""#);
        config.user = user.to_string();
        async move { world.run(id, config).await }
    });
    for ((id, user, expected), ran) in cases.iter().zip(join_all(runs).await) {
        assert_output(&ran, expected, "", 0, &format!("{id}: user {user:?}"));
    }
    let mut config = sh("id -u");
    config.user = "ghost".into();
    let message = expect_code(
        world.create_container("ghost", config).await,
        Code::InvalidArgument,
        "a user missing from the image's /etc/passwd",
    );
    assert!(message.contains("ghost"), "names the user: {message}");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_override() {
    let world = World::start().await;
    let mut added = sh(r#"printf "%s|%s" "$GREETING" "$PATH""#);
    added.env = vec!["GREETING=hello world".into()];
    let ran = world.run("added", added).await;
    assert_output(
        &ran,
        &format!("hello world|{IMAGE_PATH}"),
        "",
        0,
        "a variable added beside the image's",
    );
    let mut replaced = sh(r#"printf "%s|" "$PATH"; env | grep -c '^PATH='"#);
    replaced.env = vec!["PATH=/bin".into()];
    let ran = world.run("replaced", replaced).await;
    assert_output(&ran, "/bin|1\n", "", 0, "the image's PATH replaced, once");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_dir_override() {
    let world = World::start().await;
    let ran = world.run("default", sh("pwd")).await;
    assert_output(&ran, "/\n", "", 0, "the image's working dir (none: /)");
    let mut config = sh("pwd");
    config.working_dir = "/home/user".into();
    let ran = world.run("moved", config).await;
    assert_output(&ran, "/home/user\n", "", 0, "working_dir /home/user");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bind_mounts_read_write_and_read_only() {
    let world = World::start().await;
    let rw = world.daemon.dir().join("bind-rw");
    let ro = world.daemon.dir().join("bind-ro");
    for dir in [&rw, &ro] {
        std::fs::create_dir(dir).unwrap();
        std::fs::write(dir.join("data.txt"), "from host\n").unwrap();
    }
    let mut config = sh(
        "cat /data/data.txt; echo written > /data/new.txt; cat /rodata/data.txt; \
         touch /rodata/x",
    );
    config.mounts = vec![
        api::MountSpec {
            source: rw.to_string_lossy().into_owned(),
            destination: "/data".into(),
            r#type: "bind".into(),
            ..Default::default()
        },
        api::MountSpec {
            source: ro.to_string_lossy().into_owned(),
            destination: "/rodata".into(),
            readonly: true,
            ..Default::default()
        },
    ];
    let ran = world.run("binds", config).await;
    assert_output(
        &ran,
        "from host\nfrom host\n",
        "touch: /rodata/x: Read-only file system\n",
        1,
        "bind mounts",
    );
    assert_eq!(
        std::fs::read_to_string(rw.join("new.txt")).unwrap(),
        "written\n",
        "the write through the read-write mount reached the host"
    );
    assert!(!ro.join("x").exists(), "the read-only mount was written");
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_rootfs() {
    let world = World::start().await;
    let script = "touch /made && echo made";
    let ran = world.run("writable", sh(script)).await;
    assert_output(&ran, "made\n", "", 0, "a writable root filesystem");
    let mut config = sh(script);
    config.readonly_rootfs = true;
    let ran = world.run("frozen", config).await;
    assert_output(
        &ran,
        "",
        "touch: /made: Read-only file system\n",
        1,
        "readonly_rootfs",
    );
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostname_override() {
    let world = World::start().await;
    let ran = world.run("named-by-id", sh("hostname")).await;
    assert_output(
        &ran,
        "named-by-id\n",
        "",
        0,
        "the default host name is the id",
    );
    let mut config = sh("hostname");
    config.hostname = "box1".into();
    let ran = world.run("renamed", config).await;
    assert_output(&ran, "box1\n", "", 0, "hostname box1");
    world.finish().await;
}
