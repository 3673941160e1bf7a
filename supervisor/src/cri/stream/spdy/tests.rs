use std::future::Future;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::frame::{Decoder, FLAG_UNIDIRECTIONAL};
use super::headers::{Compressor, Decompressor};
use super::*;

const WAIT: Duration = Duration::from_secs(5);

async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f).await.expect("in time")
}

fn headers(pairs: &[(&str, &str)]) -> Headers {
    let mut h = Headers::new();
    for (n, v) in pairs {
        h.add(n, v);
    }
    h
}

/// The far end of a session, speaking frames by hand.
struct Raw {
    io: DuplexStream,
    buf: BytesMut,
    decoder: Decoder,
    compressor: Compressor,
    decompressor: Decompressor,
}

impl Raw {
    fn new(io: DuplexStream) -> Raw {
        Raw {
            io,
            buf: BytesMut::new(),
            decoder: Decoder::default(),
            compressor: Compressor::new(),
            decompressor: Decompressor::new(),
        }
    }

    async fn write(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("writes");
    }

    async fn send(&mut self, frame: Frame) {
        let mut out = BytesMut::new();
        frame.encode(&mut out).expect("encodes");
        self.write(&out).await;
    }

    async fn syn(&mut self, stream_id: u32, flags: u8, h: &Headers) {
        let block = self.compressor.compress(h).expect("compresses");
        self.send(Frame::SynStream {
            stream_id,
            associated_to: 0,
            priority: 0,
            slot: 0,
            flags,
            block,
        })
        .await;
    }

    async fn data(&mut self, stream_id: u32, flags: u8, data: &'static [u8]) {
        let data = Bytes::from_static(data);
        self.send(Frame::Data {
            stream_id,
            flags,
            data,
        })
        .await;
    }

    /// The next frame, None at EOF.
    async fn next(&mut self) -> Option<Frame> {
        within(async {
            loop {
                if let Some(f) = self.decoder.decode(&mut self.buf).expect("decodes") {
                    return Some(f);
                }
                if self.io.read_buf(&mut self.buf).await.expect("reads") == 0 {
                    return None;
                }
            }
        })
        .await
    }

    /// The next frame, which must be a SYN_REPLY, with its headers.
    async fn reply(&mut self) -> (u32, Headers) {
        match self.next().await {
            Some(Frame::SynReply {
                stream_id, block, ..
            }) => (
                stream_id,
                self.decompressor.decompress(&block).expect("decodes"),
            ),
            other => panic!("expected SYN_REPLY, got {other:?}"),
        }
    }
}

fn server_and_raw() -> (Connection, Incoming, Raw) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let (conn, incoming) = Connection::server(a);
    (conn, incoming, Raw::new(b))
}

fn pair() -> (Connection, Incoming, Connection, Incoming) {
    let (a, b) = tokio::io::duplex(1 << 16);
    let (server, incoming) = Connection::server(a);
    let (client, client_incoming) = Connection::client(b);
    (server, incoming, client, client_incoming)
}

async fn drain(rx: &mut RecvHalf) -> Vec<u8> {
    let mut got = Vec::new();
    while let Some(d) = within(rx.recv()).await {
        got.extend_from_slice(&d);
    }
    got
}

fn data(stream_id: u32, flags: u8, data: &[u8]) -> Frame {
    Frame::Data {
        stream_id,
        flags,
        data: Bytes::copy_from_slice(data),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_server_exchange_data() {
    let (_server, mut incoming, client, _ci) = pair();
    let echo = tokio::spawn(async move {
        let stream = within(incoming.next()).await.expect("a stream");
        assert_eq!(stream.id(), 1);
        assert_eq!(stream.headers().get("streamtype"), Some("stdout"));
        assert_eq!(stream.headers().get("requestid"), Some("7"));
        let (mut rx, tx) = stream.accept().await.expect("accepts");
        let got = drain(&mut rx).await;
        tx.send(&got).await.expect("sends");
        tx.finish().await.expect("finishes");
        tx.finish().await.expect("finishing twice is fine");
    });
    let h = headers(&[("streamType", "stdout"), ("requestID", "7")]);
    let (mut rx, tx) = within(client.open(h)).await.expect("opens");
    let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
    tx.send(b"hello ").await.expect("sends");
    tx.send(&big).await.expect("sends");
    tx.finish().await.expect("finishes");
    assert!(tx.send(b"late").await.is_err());
    let got = drain(&mut rx).await;
    assert_eq!(&got[..6], b"hello ");
    assert_eq!(&got[6..], &big[..]);
    within(echo).await.expect("no panic");
}

#[tokio::test]
async fn frames_keep_call_order_across_streams() {
    let (_conn, mut incoming, mut raw) = server_and_raw();
    raw.syn(1, 0, &headers(&[("streamtype", "stdout")])).await;
    raw.syn(3, 0, &headers(&[("streamtype", "error")])).await;
    let (_out_rx, out) = incoming
        .next()
        .await
        .expect("stream")
        .accept()
        .await
        .expect("ok");
    let (_err_rx, err) = incoming
        .next()
        .await
        .expect("stream")
        .accept()
        .await
        .expect("ok");
    out.send(&[7; 70_000]).await.expect("sends");
    err.send(b"status").await.expect("sends");
    out.finish().await.expect("finishes");
    err.finish().await.expect("finishes");
    assert_eq!(raw.reply().await, (1, Headers::new()));
    assert_eq!(raw.reply().await, (3, Headers::new()));
    for len in [32768, 32768, 4464] {
        assert_eq!(raw.next().await, Some(data(1, 0, &vec![7; len])));
    }
    assert_eq!(raw.next().await, Some(data(3, 0, b"status")));
    assert_eq!(raw.next().await, Some(data(1, FLAG_FIN, b"")));
    assert_eq!(raw.next().await, Some(data(3, FLAG_FIN, b"")));
}

#[tokio::test]
async fn hand_built_bytes_from_a_go_client() {
    let (conn, mut incoming, mut raw) = server_and_raw();
    raw.write(super::headers::tests::GO_SYN_STREAM).await;
    let stream = within(incoming.next()).await.expect("a stream");
    assert_eq!(stream.id(), 1);
    assert_eq!(stream.headers().get("streamtype"), Some("stdout"));
    let (mut rx, _tx) = stream.accept().await.expect("accepts");
    assert_eq!(raw.reply().await, (1, Headers::new()));
    raw.write(b"\x00\x00\x00\x01\x00\x00\x00\x05hello").await;
    raw.write(b"\x80\x03\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01")
        .await;
    raw.write(b"\x00\x00\x00\x01\x01\x00\x00\x00").await;
    assert_eq!(raw.next().await, Some(Frame::Ping { id: 1 }));
    assert_eq!(drain(&mut rx).await, b"hello");
    raw.write(b"\x80\x03\x00\x07\x00\x00\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00")
        .await;
    within(conn.closed()).await;
}

#[tokio::test]
async fn pings_of_the_peer_are_echoed() {
    let (_conn, _incoming, mut raw) = server_and_raw();
    raw.send(Frame::Ping { id: 2 }).await;
    raw.send(Frame::Ping { id: 5 }).await;
    assert_eq!(raw.next().await, Some(Frame::Ping { id: 5 }));
}

#[tokio::test]
async fn other_control_frames_are_ignored() {
    let (_conn, mut incoming, mut raw) = server_and_raw();
    raw.send(Frame::Settings {
        flags: 0,
        settings: vec![frame::Setting {
            flags: 0,
            id: 7,
            value: 1 << 16,
        }],
    })
    .await;
    raw.syn(1, 0, &headers(&[("streamtype", "stdin")])).await;
    raw.send(Frame::WindowUpdate {
        stream_id: 1,
        delta: 1000,
    })
    .await;
    raw.write(b"\x80\x03\x00\x0a\x00\x00\x00\x03abc").await;
    let block = raw.compressor.compress(&headers(&[("x", "y")])).expect("z");
    raw.send(Frame::Headers {
        stream_id: 1,
        flags: 0,
        block,
    })
    .await;
    // Still in step: the next block decodes.
    raw.syn(3, 0, &headers(&[("streamtype", "resize")])).await;
    raw.send(Frame::Ping { id: 9 }).await;
    assert_eq!(raw.next().await, Some(Frame::Ping { id: 9 }));
    let first = incoming.next().await.expect("stream");
    let second = incoming.next().await.expect("stream");
    assert_eq!(first.headers().get("streamtype"), Some("stdin"));
    assert_eq!(second.headers().get("streamtype"), Some("resize"));
}

#[tokio::test]
async fn reset_by_the_peer_ends_the_stream() {
    let (_server, mut incoming, client, _ci) = pair();
    let server_side = tokio::spawn(async move {
        let (mut rx, tx) = incoming
            .next()
            .await
            .expect("s")
            .accept()
            .await
            .expect("ok");
        assert_eq!(within(rx.recv()).await, None);
        let err = tx.send(b"x").await.expect_err("reset");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        assert!(tx.finish().await.is_err());
    });
    let (_rx, tx) = within(client.open(Headers::new())).await.expect("opens");
    tx.reset().await;
    assert!(tx.send(b"x").await.is_err());
    within(server_side).await.expect("no panic");
}

#[tokio::test]
async fn refusing_fails_the_open() {
    let (_server, mut incoming, client, _ci) = pair();
    tokio::spawn(async move {
        incoming.next().await.expect("s").refuse().await;
        // Dropped unanswered: refused as well.
        drop(incoming.next().await.expect("s"));
        // Kept for the third open.
        let _third = incoming.next().await;
        std::future::pending::<()>().await;
    });
    for _ in 0..2 {
        let err = within(client.open(Headers::new()))
            .await
            .expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
    // Unanswered: the open waits.
    let third = tokio::time::timeout(Duration::from_millis(200), client.open(Headers::new()));
    assert!(third.await.is_err());
}

#[tokio::test]
async fn go_away_from_the_server_ends_both_sides() {
    let (server, mut incoming, client, _ci) = pair();
    let (_rx, _tx) = {
        let open = client.open(Headers::new());
        let accept = async { incoming.next().await.expect("s").accept().await };
        let (opened, accepted) = tokio::join!(open, accept);
        accepted.expect("accepts");
        opened.expect("opens")
    };
    within(server.go_away()).await;
    within(server.go_away()).await;
    within(client.closed()).await;
    within(server.closed()).await;
    assert!(client.is_closed() && server.is_closed());
    assert!(client.open(Headers::new()).await.is_err());
    assert!(incoming.next().await.is_none());
}

#[tokio::test]
async fn go_away_names_the_last_stream_and_closes_our_side() {
    let (conn, mut incoming, mut raw) = server_and_raw();
    raw.syn(1, 0, &Headers::new()).await;
    raw.syn(5, 0, &Headers::new()).await;
    let (_rx, tx) = incoming
        .next()
        .await
        .expect("s")
        .accept()
        .await
        .expect("ok");
    tx.send(b"before").await.expect("sends");
    within(conn.go_away()).await;
    within(conn.go_away()).await;
    assert!(tx.send(b"after").await.is_err());
    assert_eq!(raw.reply().await.0, 1);
    assert_eq!(raw.next().await, Some(data(1, 0, b"before")));
    let goaway = Frame::GoAway {
        last_good: 5,
        status: GOAWAY_OK,
    };
    assert_eq!(raw.next().await, Some(goaway));
    assert_eq!(raw.next().await, None);
    drop(raw);
    within(conn.closed()).await;
}

#[tokio::test]
async fn go_away_from_the_client_ends_the_server() {
    let (server, mut incoming, client, _ci) = pair();
    let open = client.open(Headers::new());
    let accept = async { incoming.next().await.expect("s").accept().await };
    let (opened, accepted) = tokio::join!(open, accept);
    let (_crx, _ctx) = opened.expect("opens");
    let (mut rx, tx) = accepted.expect("accepts");
    within(client.go_away()).await;
    within(server.closed()).await;
    assert_eq!(within(rx.recv()).await, None);
    assert!(tx.send(b"x").await.is_err());
    assert!(within(incoming.next()).await.is_none());
}

#[tokio::test]
async fn a_vanished_peer_ends_everything() {
    let (conn, mut incoming, mut raw) = server_and_raw();
    raw.syn(1, 0, &Headers::new()).await;
    let (mut rx, tx) = incoming
        .next()
        .await
        .expect("s")
        .accept()
        .await
        .expect("ok");
    drop(raw);
    assert_eq!(within(rx.recv()).await, None);
    within(conn.closed()).await;
    let err = tx.send(b"x").await.expect_err("gone");
    assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
    assert!(within(incoming.next()).await.is_none());
}

async fn expect_protocol_error(conn: &Connection, raw: &mut Raw) {
    loop {
        match raw.next().await {
            Some(Frame::GoAway { status, .. }) => {
                assert_eq!(status, GOAWAY_PROTOCOL_ERROR);
                break;
            }
            Some(_) => {}
            None => panic!("EOF without GOAWAY"),
        }
    }
    assert_eq!(raw.next().await, None);
    within(conn.closed()).await;
}

#[tokio::test]
async fn an_even_stream_id_from_a_client_is_a_protocol_error() {
    let (conn, _incoming, mut raw) = server_and_raw();
    raw.syn(2, 0, &Headers::new()).await;
    expect_protocol_error(&conn, &mut raw).await;
}

#[tokio::test]
async fn stream_ids_must_grow() {
    let (conn, _incoming, mut raw) = server_and_raw();
    raw.syn(3, 0, &Headers::new()).await;
    raw.syn(1, 0, &Headers::new()).await;
    expect_protocol_error(&conn, &mut raw).await;
}

#[tokio::test]
async fn other_versions_and_bad_blocks_are_protocol_errors() {
    let (conn, _incoming, mut raw) = server_and_raw();
    raw.write(b"\x80\x02\x00\x06\x00\x00\x00\x04\x00\x00\x00\x01")
        .await;
    expect_protocol_error(&conn, &mut raw).await;

    let (conn, _incoming, mut raw) = server_and_raw();
    raw.send(Frame::SynStream {
        stream_id: 1,
        associated_to: 0,
        priority: 0,
        slot: 0,
        flags: 0,
        block: Bytes::from_static(b"not zlib"),
    })
    .await;
    expect_protocol_error(&conn, &mut raw).await;

    let (conn, _incoming, mut raw) = server_and_raw();
    raw.write(b"\x80\x03\x00\x01\x00\x20\x00\x00").await;
    expect_protocol_error(&conn, &mut raw).await;
}

#[tokio::test]
async fn dropped_halves_are_forgotten_and_half_close() {
    let (server, mut incoming, client, _ci) = pair();
    let open = client.open(Headers::new());
    let accept = async { incoming.next().await.expect("s").accept().await };
    let (opened, accepted) = tokio::join!(open, accept);
    let (mut crx, ctx) = opened.expect("opens");
    let (srx, stx) = accepted.expect("accepts");
    let stx2 = stx.clone();
    stx.send(b"last words").await.expect("sends");
    drop((srx, stx, stx2));
    // The server's side ended with a FIN.
    assert_eq!(drain(&mut crx).await, b"last words");
    ctx.finish().await.expect("finishes");
    drop((crx, ctx));
    within(async {
        while server.stream_count() + client.stream_count() > 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_client_drops_data_before_the_reply() {
    let (a, b) = tokio::io::duplex(1 << 16);
    let (client, _incoming) = Connection::client(a);
    let mut raw = Raw::new(b);
    let open = tokio::spawn(async move {
        let (mut rx, _tx) = client.open(headers(&[("a", "b")])).await.expect("opens");
        drain(&mut rx).await
    });
    match raw.next().await {
        Some(Frame::SynStream {
            stream_id, block, ..
        }) => {
            assert_eq!(stream_id, 1);
            let h = raw.decompressor.decompress(&block).expect("decodes");
            assert_eq!(h, headers(&[("a", "b")]));
        }
        other => panic!("expected SYN_STREAM, got {other:?}"),
    }
    raw.data(1, 0, b"early").await;
    let block = raw.compressor.compress(&Headers::new()).expect("z");
    raw.send(Frame::SynReply {
        stream_id: 1,
        flags: 0,
        block,
    })
    .await;
    raw.data(1, FLAG_FIN, b"late").await;
    assert_eq!(within(open).await.expect("no panic"), b"late");
}

#[tokio::test]
async fn syn_flags_end_a_direction() {
    let (_conn, mut incoming, mut raw) = server_and_raw();
    raw.syn(1, FLAG_UNIDIRECTIONAL, &Headers::new()).await;
    raw.syn(3, FLAG_FIN, &Headers::new()).await;
    let (_rx, tx) = incoming
        .next()
        .await
        .expect("s")
        .accept()
        .await
        .expect("ok");
    assert!(tx.send(b"x").await.is_err());
    let (mut rx, tx) = incoming
        .next()
        .await
        .expect("s")
        .accept()
        .await
        .expect("ok");
    assert_eq!(within(rx.recv()).await, None);
    tx.send(b"y").await.expect("sends");
    assert_eq!(raw.reply().await.0, 1);
    assert_eq!(raw.reply().await.0, 3);
    assert_eq!(raw.next().await, Some(data(3, 0, b"y")));
}

#[tokio::test]
async fn dropping_every_handle_says_go_away() {
    let (conn, incoming, mut raw) = server_and_raw();
    drop((conn, incoming));
    let goaway = Frame::GoAway {
        last_good: 0,
        status: GOAWAY_OK,
    };
    assert_eq!(raw.next().await, Some(goaway));
    assert_eq!(raw.next().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_opens_keep_ids_in_order() {
    let (_server, mut incoming, client, _ci) = pair();
    let accept = tokio::spawn(async move {
        let mut last = 0;
        for _ in 0..40 {
            let stream = within(incoming.next()).await.expect("a stream");
            assert!(stream.id() > last);
            last = stream.id();
            let (_rx, tx) = stream.accept().await.expect("accepts");
            tx.finish().await.expect("finishes");
        }
    });
    let mut opens = tokio::task::JoinSet::new();
    for i in 0..40 {
        let client = client.clone();
        opens.spawn(async move {
            let n = i.to_string();
            let (mut rx, _tx) = client.open(headers(&[("n", &n)])).await.expect("opens");
            drain(&mut rx).await
        });
    }
    while let Some(r) = within(opens.join_next()).await {
        assert!(r.expect("no panic").is_empty());
    }
    within(accept).await.expect("no panic");
    assert!(!client.is_closed());
}
