//! Every HTTP/2 `:authority` a gRPC client may send on the unix socket is answered normally:
//! the socket's path (grpc-go before 1.61, as in kubelets and crictl up to 1.30), the path
//! %-encoded (gRPC-core), `localhost`, empty, and none. Requests go out as bare HTTP/2
//! frames (tests/src/h2raw.rs), since no gRPC library lets a caller send them all, to each
//! kind of service supd serves: sup.v1, the CRI, health and reflection.
#![allow(clippy::unwrap_used)]

use sup_tests::daemon::Daemon;
use sup_tests::h2raw::{Answer, Conn};

/// (path, request message, a string the answer must hold).
const CALLS: [(&str, &[u8], &str); 5] = [
    ("/sup.v1.Version/Version", b"", "0.1"),
    ("/runtime.v1.RuntimeService/Version", b"", "sup"),
    ("/runtime.v1.ImageService/ListImages", b"", ""),
    ("/grpc.health.v1.Health/Check", b"", ""),
    // ServerReflectionRequest { list_services: "" } (field 7).
    (
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
        b"\x3a\x00",
        "sup.v1.Containers",
    ),
];

fn authorities(socket: &str) -> Vec<Option<String>> {
    let encoded: String = socket
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    vec![
        Some(socket.to_string()),
        Some(encoded),
        Some("localhost".into()),
        Some(String::new()),
        None,
        Some("unix:".to_string() + socket),
    ]
}

#[track_caller]
fn check(answer: &Answer, what: &str, want: &str) {
    assert_eq!(answer.reset, None, "{what}: stream reset: {answer:?}");
    assert_eq!(answer.header(":status"), Some("200"), "{what}: {answer:?}");
    assert_eq!(
        answer.header("grpc-status"),
        Some("0"),
        "{what}: {answer:?}"
    );
    let messages = answer.messages();
    assert_eq!(messages.len(), 1, "{what}: {answer:?}");
    assert!(
        String::from_utf8_lossy(&messages[0]).contains(want),
        "{what}: {want:?} not in {:?}",
        String::from_utf8_lossy(&messages[0])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_authority_on_every_service() {
    let daemon = Daemon::start().await;
    let socket = daemon.socket();
    let path = socket.to_string_lossy().into_owned();
    tokio::task::spawn_blocking(move || {
        // One connection per authority form...
        for authority in authorities(&path) {
            let mut conn = Conn::open(&socket).unwrap();
            for (call, message, want) in CALLS {
                let what = format!("{call} with :authority {authority:?}");
                let answer = conn.call(call, authority.as_deref(), message).unwrap();
                check(&answer, &what, want);
            }
        }
        // ...and all of them mixed on one, in both orders, so that the header tables on
        // either side of the server's HTTP/2 layer stay in step whichever comes first.
        for forms in [
            authorities(&path),
            authorities(&path).into_iter().rev().collect(),
        ] {
            let mut conn = Conn::open(&socket).unwrap();
            for round in 0..3 {
                for authority in &forms {
                    for (call, message, want) in CALLS {
                        let what = format!("round {round}: {call} with :authority {authority:?}");
                        let answer = conn.call(call, authority.as_deref(), message).unwrap();
                        check(&answer, &what, want);
                    }
                }
            }
        }
        // Several requests in flight at once on one connection.
        let mut conn = Conn::open(&socket).unwrap();
        let forms = authorities(&path);
        let streams: Vec<(u32, String)> = forms
            .iter()
            .map(|a| {
                let s = conn
                    .send(CALLS[1].0, a.as_deref(), &[], CALLS[1].1)
                    .unwrap();
                (s, format!("{a:?}"))
            })
            .collect();
        for (s, what) in streams {
            check(&conn.answer(s).unwrap(), &what, CALLS[1].2);
        }
    })
    .await
    .unwrap();
    // The daemon said nothing about any of it.
    let log = daemon.log();
    assert!(!log.contains("ERROR"), "supd log:\n{log}");
}
