//! A task's stdio over gRPC: exact stdout and stderr bytes through Attach and Logs, stdin
//! (closed from the attach stream or with CloseIO), output kept while nobody is attached,
//! logs that follow a running process, and a terminal session with resizes.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use sup_client::api;
use sup_tests::task::{self, command, sh, show, World};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_and_stderr_apart_via_attach_then_logs() {
    let world = World::start().await;
    world
        .prepare("split", sh(r#"printf "out\n"; printf "err" >&2"#), false)
        .await;
    let attached = world.attach("split", "", false).await;
    world.start_task("split", "").await;
    let out = attached.finish(task::EXIT_TIMEOUT).await;
    assert_eq!(out.stdout, b"out\n", "attach stdout {}", show(&out.stdout));
    assert_eq!(out.stderr, b"err", "attach stderr {}", show(&out.stderr));
    let exit = out.exit.expect("the last attach frame carries the exit");
    assert_eq!(exit.exit_status, 0, "{exit:?}");
    let logged = world.logs("split", "").await;
    assert_eq!(
        logged.stdout,
        b"out\n",
        "logs stdout {}",
        show(&logged.stdout)
    );
    assert_eq!(
        logged.stderr,
        b"err",
        "logs stderr {}",
        show(&logged.stderr)
    );
    world.delete_task("split", false).await.unwrap();
    world.finish().await;
}

/// Output written while nobody is attached is kept, and Attach with `logs` replays it before
/// the live output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_nobody_watched_is_kept() {
    let world = World::start().await;
    let script = r#"echo early; printf "warn\n" >&2; read x; echo "late:$x""#;
    world.prepare("unwatched", sh(script), true).await;
    world.start_task("unwatched", "").await;
    let logged = sup_tests::rpc::eventually(Duration::from_secs(20), || async {
        let got = world.logs("unwatched", "").await;
        (got.stdout == b"early\n" && got.stderr == b"warn\n")
            .then_some(())
            .ok_or(got)
    })
    .await;
    assert!(logged.is_ok(), "Logs before attaching: {logged:?}");
    let mut attached = world
        .try_attach(api::AttachOptions {
            container_id: "unwatched".into(),
            exec_id: String::new(),
            stdin: true,
            stdout: true,
            stderr: true,
            logs: true,
        })
        .await
        .unwrap();
    attached.stdout_until(b"early\n").await;
    attached.stdin(b"x\n").await;
    attached.close_stdin().await;
    let out = attached.finish(task::EXIT_TIMEOUT).await;
    assert_eq!(
        out.stdout,
        b"early\nlate:x\n",
        "stdout {}",
        show(&out.stdout)
    );
    assert_eq!(out.stderr, b"warn\n", "stderr {}", show(&out.stderr));
    assert_eq!(world.wait("unwatched", "").await.exit_status, 0);
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_reaches_cat_and_closes_from_attach() {
    let world = World::start().await;
    world.prepare("cat", command(&["cat"]), true).await;
    let mut attached = world.attach("cat", "", true).await;
    world.start_task("cat", "").await;
    attached.stdin(b"hello\n").await;
    // cat echoes a line while stdin is still open: the relay is live, not buffered to EOF.
    attached.stdout_until(b"hello\n").await;
    attached.stdin(b"world").await;
    attached.close_stdin().await;
    let out = attached.finish(task::EXIT_TIMEOUT).await;
    assert_eq!(out.stdout, b"hello\nworld", "stdout {}", show(&out.stdout));
    assert_eq!(out.stderr, b"", "stderr {}", show(&out.stderr));
    assert_eq!(out.exit.map(|e| e.exit_status), Some(0));
    world.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_io_ends_stdin() {
    let world = World::start().await;
    // `read` takes one line and acknowledges it; wc then counts what is left until EOF.
    let script = r#"read l; echo "got:$l"; wc -c"#;
    world.prepare("count", sh(script), true).await;
    let mut attached = world.attach("count", "", true).await;
    world.start_task("count", "").await;
    attached.stdin(b"first\n").await;
    attached.stdout_until(b"got:first\n").await;
    world
        .client
        .tasks()
        .close_io(api::CloseIoRequest {
            container_id: "count".into(),
            exec_id: String::new(),
        })
        .await
        .unwrap();
    let out = attached.finish(task::EXIT_TIMEOUT).await;
    assert_eq!(
        out.stdout,
        b"got:first\n0\n",
        "stdout {}",
        show(&out.stdout)
    );
    assert_eq!(world.wait("count", "").await.exit_status, 0);
    world.finish().await;
}

/// A megabyte of output arrives whole and in order, through Attach and through Logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_megabyte_of_output_is_complete() {
    let world = World::start().await;
    world
        .prepare("flood", sh("yes 0123456789abcdef | head -c 1048576"), false)
        .await;
    let attached = world.attach("flood", "", false).await;
    world.start_task("flood", "").await;
    let out = attached.finish(task::EXIT_TIMEOUT).await;
    let expected: Vec<u8> = b"0123456789abcdef\n"
        .iter()
        .copied()
        .cycle()
        .take(1 << 20)
        .collect();
    assert_eq!(out.stdout.len(), expected.len(), "attach: bytes received");
    assert!(
        out.stdout == expected,
        "attach: the bytes differ from what was written"
    );
    let logged = world.logs("flood", "").await;
    assert_eq!(logged.stdout.len(), expected.len(), "logs: bytes received");
    assert!(
        logged.stdout == expected,
        "logs: the bytes differ from what was written"
    );
    world.finish().await;
}

/// Logs with follow hands over lines while the process runs and ends when it exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_streams_until_exit() {
    let world = World::start().await;
    let script = "i=0; while [ $i -lt 10 ]; do echo line$i; i=$((i+1)); usleep 100000; done";
    world.prepare("ticker", sh(script), false).await;
    world.start_task("ticker", "").await;
    let mut stream = world
        .client
        .tasks()
        .logs(api::LogsRequest {
            container_id: "ticker".into(),
            follow: true,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let follow = async {
        let mut frames: Vec<(Instant, Vec<u8>)> = Vec::new();
        while let Some(frame) = stream.message().await.unwrap() {
            assert_eq!(frame.stream, api::StdStream::Stdout as i32, "{frame:?}");
            frames.push((Instant::now(), frame.data));
        }
        frames
    };
    let exit = async {
        world.wait("ticker", "").await;
        Instant::now()
    };
    let (followed, exited) =
        tokio::join!(tokio::time::timeout(Duration::from_secs(30), follow), exit);
    let frames = followed.expect("Logs with follow did not end after the exit");
    let text: Vec<u8> = frames.iter().flat_map(|(_, d)| d.clone()).collect();
    let expected: String = (0..10).map(|i| format!("line{i}\n")).collect();
    assert_eq!(text, expected.as_bytes(), "followed {}", show(&text));
    let first = frames[0].0;
    assert!(
        exited.duration_since(first) >= Duration::from_millis(500),
        "the first line should arrive while the process runs (about 1 s before it exits); it \
         came {:?} before the exit",
        exited.saturating_duration_since(first)
    );
    world.finish().await;
}

/// A terminal: output comes through the pty (CR LF, stderr merged), and both ways of
/// resizing reach `stty size`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tty_session_with_resizes() {
    let world = World::start().await;
    let mut config = sh("read a; stty size; read b; stty size; printf 'bye' >&2");
    config.tty = true;
    world.prepare("term", config, true).await;
    let got = world.get("term", "").await;
    assert!(
        got.terminal,
        "Tasks.Get should report the terminal: {got:?}"
    );
    let mut attached = world.attach("term", "", true).await;
    world.start_task("term", "").await;
    world
        .client
        .tasks()
        .resize_pty(api::ResizePtyRequest {
            container_id: "term".into(),
            exec_id: String::new(),
            width: 100,
            height: 30,
        })
        .await
        .unwrap();
    attached.stdin(b"a\n").await;
    attached.stdout_until(b"30 100\r\n").await;
    attached.resize(120, 40).await;
    attached.stdin(b"b\n").await;
    let out = attached.finish(task::EXIT_TIMEOUT).await;
    assert_eq!(
        out.stdout,
        b"a\r\n30 100\r\nb\r\n40 120\r\nbye",
        "tty output {}",
        show(&out.stdout)
    );
    assert_eq!(
        out.stderr,
        b"",
        "a tty has no separate stderr: {}",
        show(&out.stderr)
    );
    assert_eq!(out.exit.map(|e| e.exit_status), Some(0));
    world.finish().await;
}
