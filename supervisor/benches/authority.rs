//! What accepting any `:authority` costs per call. Two measurements, each with its baseline
//! in the same run:
//!
//! 1. Round trips: gRPC health checks from a tonic client to two servers in this process that
//!    differ only in the filter, the baseline serving the socket as it is. Medians over
//!    SUP_BENCH_CALLS (5000) calls each, interleaved in blocks so that drift hits both.
//! 2. The filter alone, in memory: the frames of a grpc-go unary call (HEADERS with the socket
//!    path as authority, DATA) read through it, against the same bytes read through a plain
//!    reader; nanoseconds per call, for a well-formed authority (passed through) and for the
//!    path (re-encoded).
//!
//! `cargo bench -p sup-supervisor --bench authority`

use std::time::{Duration, Instant};

use futures::TryStreamExt;
use hyper_util::rt::TokioIo;
use sup_supervisor::server::authority::AuthorityFilter;
use tokio::io::AsyncReadExt;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Endpoint, Uri};
use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};

fn calls() -> usize {
    std::env::var("SUP_BENCH_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

async fn health_server(socket: std::path::PathBuf, filtered: bool) {
    let (_reporter, service) = tonic_health::server::health_reporter();
    let listener = UnixListener::bind(&socket).expect("bind");
    let router = tonic::transport::Server::builder().add_service(service);
    let incoming = UnixListenerStream::new(listener);
    tokio::spawn(async move {
        if filtered {
            router
                .serve_with_incoming(incoming.map_ok(AuthorityFilter::new))
                .await
        } else {
            router.serve_with_incoming(incoming).await
        }
    });
}

async fn client(socket: std::path::PathBuf) -> HealthClient<tonic::transport::Channel> {
    let channel = Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                Ok::<_, std::io::Error>(TokioIo::new(
                    tokio::net::UnixStream::connect(socket).await?,
                ))
            }
        }))
        .await
        .expect("connect");
    HealthClient::new(channel)
}

async fn round_trips(c: &mut HealthClient<tonic::transport::Channel>, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        c.check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("Check");
        out.push(started.elapsed());
    }
    out
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_be_bytes();
    let mut f = vec![len[1], len[2], len[3], kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A connection's bytes as grpc-go sends them: `n` unary calls to one method.
fn grpc_go_bytes(n: usize, authority: &str) -> Vec<u8> {
    let mut enc = httlib_hpack::Encoder::default();
    let flags = httlib_hpack::Encoder::HUFFMAN_VALUE
        | httlib_hpack::Encoder::WITH_INDEXING
        | httlib_hpack::Encoder::BEST_FORMAT;
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    for i in 0..n {
        let stream = 1 + 2 * i as u32;
        let id = format!("{i}");
        let headers: [(&[u8], &[u8]); 9] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/runtime.v1.RuntimeService/ContainerStatus"),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"user-agent", b"grpc-go/1.51.0"),
            (b"te", b"trailers"),
            (b"grpc-timeout", b"1999913u"),
            (b"x-request-id", id.as_bytes()),
        ];
        let mut block = Vec::new();
        for (n, v) in headers {
            enc.encode((n.to_vec(), v.to_vec(), flags), &mut block)
                .expect("HPACK");
        }
        out.extend(frame(0x1, 0x4, stream, &block));
        out.extend(frame(0x0, 0x1, stream, &[0, 0, 0, 0, 66, 10, 64, b'x', 0]));
    }
    out
}

async fn read_all(input: &[u8], filtered: bool) -> Duration {
    let mut sink = Vec::with_capacity(input.len() * 2);
    let started = Instant::now();
    if filtered {
        AuthorityFilter::new(input).read_to_end(&mut sink).await
    } else {
        let mut plain = input;
        plain.read_to_end(&mut sink).await
    }
    .expect("read");
    started.elapsed()
}

fn main() {
    let n = calls();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let dir = tempfile::tempdir().expect("tempdir");
        let (plain_sock, filtered_sock) = (dir.path().join("plain.sock"), dir.path().join("filtered.sock"));
        health_server(plain_sock.clone(), false).await;
        health_server(filtered_sock.clone(), true).await;
        let mut plain = client(plain_sock).await;
        let mut filtered = client(filtered_sock).await;
        round_trips(&mut plain, 200).await;
        round_trips(&mut filtered, 200).await;
        let (mut p, mut f) = (Vec::new(), Vec::new());
        for _ in 0..10 {
            p.extend(round_trips(&mut plain, n / 10).await);
            f.extend(round_trips(&mut filtered, n / 10).await);
        }
        let (pm, fm) = (median(p), median(f));
        println!("round trip (tonic client, health Check), median of {n}:");
        println!(
            "  unfiltered {:>8.1} us   filtered {:>8.1} us   ratio {:.3}",
            pm.as_secs_f64() * 1e6,
            fm.as_secs_f64() * 1e6,
            fm.as_secs_f64() / pm.as_secs_f64()
        );

        println!("filter alone, grpc-go unary calls read in memory, per call:");
        for authority in ["localhost", dir.path().join("sup.sock").to_str().unwrap_or("/x")] {
            let bytes = grpc_go_bytes(n, authority);
            let (mut base, mut with) = (Vec::new(), Vec::new());
            for _ in 0..7 {
                base.push(read_all(&bytes, false).await);
                with.push(read_all(&bytes, true).await);
            }
            let per = |d: Duration| d.as_secs_f64() * 1e9 / n as f64;
            let (b, w) = (per(median(base)), per(median(with)));
            println!(
                "  :authority {authority:<28} plain read {b:>7.0} ns   filtered {w:>7.0} ns   added {:>7.0} ns ({:.2}% of the unfiltered round trip)",
                w - b,
                (w - b) / (pm.as_secs_f64() * 1e9) * 100.0
            );
        }
    });
}
