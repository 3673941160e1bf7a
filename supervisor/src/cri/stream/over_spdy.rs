//! Exec, attach and port forwarding over SPDY/3.1, as kubelets, crictl and critest speak
//! them: the client opens one stream per purpose (`streamType` header: error, stdin, stdout,
//! stderr, resize; for port forwarding a data and an error stream per connection, paired by
//! `requestID`), and the session starts once the streams the request asked for are open.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::protocol::{Outcome, SizeReader, Version};
use super::session::{Ended, Input, Io, Output};
use super::spdy::{Connection, Incoming, RecvHalf, SendHalf};
use super::{portforward, Session};
use crate::cri::Cri;

/// How long the client may take to open the streams a session needs (the kubelet's figure).
const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Default)]
struct Streams {
    /// Our sides of the client's input streams, held open until the session ends: a client
    /// takes their end as the server's goodbye and stops sending (client-go's stdin copy
    /// does exactly that).
    held: Vec<SendHalf>,
    error: Option<(RecvHalf, SendHalf)>,
    stdin: Option<RecvHalf>,
    stdout: Option<SendHalf>,
    stderr: Option<SendHalf>,
    resize: Option<RecvHalf>,
}

/// Serves one exec or attach session on `io`.
pub async fn serve_session<IO>(io: IO, version: Version, cri: Arc<Cri>, session: Session)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (conn, mut incoming) = Connection::server(io);
    let wants = session.streams();
    let want_resize = wants.tty && version.has_resize();
    let mut s = Streams::default();
    let gathered = tokio::time::timeout(STREAM_CREATION_TIMEOUT, async {
        loop {
            let have = s.error.is_some()
                && (!wants.stdin || s.stdin.is_some())
                && (!wants.stdout || s.stdout.is_some())
                && (!wants.stderr || s.stderr.is_some())
                && (!want_resize || s.resize.is_some());
            if have {
                return true;
            }
            let Some(stream) = incoming.next().await else {
                return false;
            };
            let kind = stream
                .headers()
                .get("streamtype")
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !matches!(
                kind.as_str(),
                "error" | "stdin" | "stdout" | "stderr" | "resize"
            ) {
                tracing::debug!(kind, "refusing a stream of unknown type");
                stream.refuse().await;
                continue;
            }
            let Ok((rx, tx)) = stream.accept().await else {
                return false;
            };
            match kind.as_str() {
                "error" => s.error = Some((rx, tx)),
                "stdin" => {
                    s.stdin = Some(rx);
                    s.held.push(tx);
                }
                "stdout" => s.stdout = Some(tx),
                "stderr" => s.stderr = Some(tx),
                _ => {
                    s.resize = Some(rx);
                    s.held.push(tx);
                }
            }
        }
    })
    .await;
    if !matches!(gathered, Ok(true)) {
        tracing::info!("stream client did not open its streams in time");
        conn.go_away().await;
        return;
    }
    let Some((_error_rx, error_tx)) = s.error.take() else {
        return;
    };

    let (in_tx, in_rx) = mpsc::channel(16);
    // Input ends for the session when the connection does, not when stdin does.
    let watch = {
        let (conn, in_tx) = (conn.clone(), in_tx.clone());
        tokio::spawn(async move {
            conn.closed().await;
            drop(in_tx);
        })
    };
    // Streams opened late, or twice, are answered and ignored (held open, like the rest).
    let late = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Some(stream) = incoming.next().await {
            if let Ok((_, tx)) = stream.accept().await {
                held.push(tx);
            }
        }
    });
    let mut readers = Vec::new();
    if let Some(mut stdin) = s.stdin.take() {
        let tx = in_tx.clone();
        readers.push(tokio::spawn(async move {
            while let Some(data) = stdin.recv().await {
                if tx.send(Input::Stdin(data)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Input::StdinEnd).await;
        }));
    }
    if let Some(mut resize) = s.resize.take() {
        let tx = in_tx.clone();
        readers.push(tokio::spawn(async move {
            let mut sizes = SizeReader::default();
            while let Some(data) = resize.recv().await {
                match sizes.push(&data) {
                    Ok(got) => {
                        for size in got {
                            if tx.send(Input::Resize(size)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "ignoring the rest of a resize stream");
                        return;
                    }
                }
            }
        }));
    }
    drop(in_tx);

    let (out_tx, mut out_rx) = mpsc::channel::<Output>(16);
    let (stdout, stderr) = (s.stdout.take(), s.stderr.take());
    let writer = tokio::spawn(async move {
        while let Some(o) = out_rx.recv().await {
            let (half, data) = match &o {
                Output::Stdout(d) => (&stdout, d),
                Output::Stderr(d) => (&stderr, d),
            };
            if let Some(half) = half {
                if half.send(data).await.is_err() {
                    return;
                }
            }
        }
        for half in [&stdout, &stderr].into_iter().flatten() {
            let _ = half.finish().await;
        }
    });

    let ended = session
        .run(
            &cri,
            Io {
                input: in_rx,
                output: out_tx,
            },
        )
        .await;
    // Every byte of output reaches the client before the status does.
    let _ = writer.await;
    if let Ended::Done(outcome) = &ended {
        let status = outcome.encode(version, session.command());
        if !status.is_empty() {
            let _ = error_tx.send(&status).await;
        }
        let _ = error_tx.finish().await;
        if let Outcome::Failed(msg) = outcome {
            tracing::info!(error = %msg, "stream session failed");
        }
    }
    conn.go_away().await;
    for r in readers {
        r.abort();
    }
    watch.abort();
    late.abort();
    drop(s.held);
}

/// Serves port forwarding on `io`: every data/error stream pair is one connection to the
/// pod's port its `port` header names.
pub async fn serve_portforward<IO>(io: IO, sandbox: String, netns: Option<PathBuf>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (conn, incoming) = Connection::server(io);
    forward_streams(incoming, sandbox, netns).await;
    conn.go_away().await;
}

#[derive(Default)]
struct Pair {
    error: Option<(RecvHalf, SendHalf)>,
    data: Option<(RecvHalf, SendHalf)>,
    port: u16,
}

async fn forward_streams(mut incoming: Incoming, sandbox: String, netns: Option<PathBuf>) {
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    let mut forwards = tokio::task::JoinSet::new();
    while let Some(stream) = incoming.next().await {
        let h = stream.headers();
        let kind = h.get("streamtype").unwrap_or_default().to_ascii_lowercase();
        let port = h.get("port").and_then(|p| p.trim().parse::<u16>().ok());
        let (Some(port), "error" | "data") = (port.filter(|p| *p != 0), kind.as_str()) else {
            tracing::debug!(
                kind,
                "refusing a port-forward stream without a type or port"
            );
            stream.refuse().await;
            continue;
        };
        // Clients older than requestID pair a data stream with the error stream opened
        // just before it.
        let request = match h.get("requestid") {
            Some(r) => r.to_string(),
            None if kind == "error" => stream.id().to_string(),
            None => stream.id().saturating_sub(2).to_string(),
        };
        let Ok(halves) = stream.accept().await else {
            break;
        };
        let pair = pairs.entry(request.clone()).or_default();
        pair.port = port;
        if kind == "error" {
            pair.error = Some(halves);
        } else {
            pair.data = Some(halves);
        }
        if pair.error.is_some() && pair.data.is_some() {
            if let Some(Pair {
                error: Some(error),
                data: Some(data),
                port,
            }) = pairs.remove(&request)
            {
                let (sandbox, netns) = (sandbox.clone(), netns.clone());
                forwards.spawn(async move {
                    forward(&sandbox, netns.as_deref(), port, error, data).await;
                });
            }
        }
    }
    forwards.abort_all();
}

async fn forward(
    sandbox: &str,
    netns: Option<&std::path::Path>,
    port: u16,
    error: (RecvHalf, SendHalf),
    data: (RecvHalf, SendHalf),
) {
    let (_error_rx, error_tx) = error;
    let (mut data_rx, data_tx) = data;
    let tcp = match portforward::dial(netns, port).await {
        Ok(tcp) => tcp,
        Err(e) => {
            let msg = portforward::dial_error(sandbox, port, &e);
            tracing::info!(sandbox, port, error = %e, "port forward");
            let _ = error_tx.send(msg.as_bytes()).await;
            let _ = error_tx.finish().await;
            let _ = data_tx.finish().await;
            return;
        }
    };
    let (mut from_pod, mut to_pod) = tcp.into_split();
    let upstream = tokio::spawn(async move {
        while let Some(chunk) = data_rx.recv().await {
            if to_pod.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to_pod.shutdown().await;
    });
    let mut buf = vec![0u8; 32 << 10];
    loop {
        match from_pod.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => {
                if data_tx.send(&buf[..n]).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                let msg = format!("error forwarding port {port} to pod {sandbox}: {e}");
                let _ = error_tx.send(msg.as_bytes()).await;
                break;
            }
        }
    }
    let _ = data_tx.finish().await;
    let _ = error_tx.finish().await;
    upstream.abort();
}
