//! Exec, attach and port forwarding over WebSocket, in Kubernetes' channel protocols: every
//! message starts with its channel (0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize; for port
//! forwarding 2i data and 2i+1 error of the i-th port), binary or, in the base64 protocols,
//! as text with the channel as a digit. v5 adds closing one channel (`[255, channel]`), which
//! is how a client ends its stdin. `SPDY/3.1+portforward.k8s.io` carries SPDY itself in
//! binary messages.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use super::protocol::{SizeReader, Version};
use super::session::{Ended, Input, Io, Output};
use super::{portforward, Session};
use crate::cri::Cri;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;
const RESIZE: u8 = 4;
/// v5: the rest of the message names a channel the sender has closed.
const CLOSE: u8 = 255;

/// How long the peer has to answer our close before the connection is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy)]
struct Codec {
    base64: bool,
}

impl Codec {
    fn of(protocol: Option<&str>) -> Codec {
        Codec {
            base64: protocol.is_some_and(|p| p.contains("base64")),
        }
    }

    fn encode(self, channel: u8, data: &[u8]) -> Message {
        if self.base64 {
            let mut text = String::with_capacity(1 + data.len() * 4 / 3 + 4);
            text.push(char::from(b'0' + channel % 10));
            base64::engine::general_purpose::STANDARD.encode_string(data, &mut text);
            Message::text(text)
        } else {
            let mut v = Vec::with_capacity(1 + data.len());
            v.push(channel);
            v.extend_from_slice(data);
            Message::binary(v)
        }
    }

    /// A message's channel and data; None for what carries none (pings, bad messages).
    fn decode(self, msg: &Message) -> Option<(u8, Bytes)> {
        match msg {
            Message::Binary(b) if !b.is_empty() => Some((b[0], b.slice(1..))),
            Message::Text(t) if self.base64 && !t.is_empty() => {
                let t = t.as_str();
                let channel = t.as_bytes()[0].checked_sub(b'0').filter(|c| *c < 10)?;
                let data = base64::engine::general_purpose::STANDARD
                    .decode(&t[1..])
                    .ok()?;
                Some((channel, Bytes::from(data)))
            }
            _ => None,
        }
    }
}

fn close_message() -> Message {
    Message::Close(Some(CloseFrame {
        code: CloseCode::Normal,
        reason: "".into(),
    }))
}

/// Serves one exec or attach session on an upgraded connection.
pub async fn serve_session<IO>(
    io: IO,
    protocol: Option<&'static str>,
    cri: Arc<Cri>,
    session: Session,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    let (mut sink, mut source) = ws.split();
    let codec = Codec::of(protocol);
    let version = Version::of(protocol);
    let wants = session.streams();

    let (in_tx, in_rx) = mpsc::channel(16);
    let reader = tokio::spawn(async move {
        let mut sizes = SizeReader::default();
        while let Some(Ok(msg)) = source.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            let Some((channel, data)) = codec.decode(&msg) else {
                continue;
            };
            let input = match channel {
                STDIN if !data.is_empty() => vec![Input::Stdin(data)],
                RESIZE => match sizes.push(&data) {
                    Ok(got) => got.into_iter().map(Input::Resize).collect(),
                    Err(e) => {
                        tracing::debug!(error = %e, "ignoring a resize message");
                        Vec::new()
                    }
                },
                CLOSE if version >= Version::V5 && data.first() == Some(&STDIN) => {
                    vec![Input::StdinEnd]
                }
                _ => Vec::new(),
            };
            for i in input {
                if in_tx.send(i).await.is_err() {
                    return;
                }
            }
        }
    });

    let (out_tx, mut out_rx) = mpsc::channel::<Output>(16);
    let (status_tx, status_rx) = oneshot::channel::<Option<Vec<u8>>>();
    let writer = tokio::spawn(async move {
        // The first (empty) message, on the lowest channel the client reads, tells it the
        // session is up, as the kubelet does.
        let first = if wants.stdout {
            STDOUT
        } else if wants.stderr {
            STDERR
        } else {
            ERROR
        };
        if sink.send(codec.encode(first, &[])).await.is_err() {
            return;
        }
        while let Some(o) = out_rx.recv().await {
            let m = match o {
                Output::Stdout(d) => codec.encode(STDOUT, &d),
                Output::Stderr(d) => codec.encode(STDERR, &d),
            };
            if sink.send(m).await.is_err() {
                return;
            }
        }
        if let Ok(Some(status)) = status_rx.await {
            if !status.is_empty() && sink.send(codec.encode(ERROR, &status)).await.is_err() {
                return;
            }
            let _ = sink.send(close_message()).await;
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
    let status = match &ended {
        Ended::Done(outcome) => Some(outcome.encode(version, session.command())),
        Ended::ClientGone => None,
    };
    let _ = status_tx.send(status);
    let _ = writer.await;
    let _ = tokio::time::timeout(CLOSE_GRACE, reader).await;
}

/// Serves port forwarding on an upgraded connection: for each port, a connection to it in
/// the pod, carried on channels 2i (data) and 2i+1 (error).
pub async fn serve_portforward<IO>(
    io: IO,
    protocol: Option<&'static str>,
    ports: Vec<u16>,
    sandbox: String,
    netns: Option<PathBuf>,
) where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
    if protocol == Some("SPDY/3.1+portforward.k8s.io") {
        return spdy_tunnel(ws, sandbox, netns).await;
    }
    let codec = Codec::of(protocol);
    let (mut sink, mut source) = ws.split();
    let (msg_tx, mut msg_rx) = mpsc::channel::<Message>(16);
    let writer = tokio::spawn(async move {
        while let Some(m) = msg_rx.recv().await {
            if sink.send(m).await.is_err() {
                return;
            }
        }
        let _ = sink.send(close_message()).await;
    });

    let mut to_pods = Vec::new();
    let mut from_pods = tokio::task::JoinSet::new();
    for (i, port) in ports.iter().copied().enumerate() {
        let Ok(data_channel) = u8::try_from(i * 2) else {
            break;
        };
        let error_channel = data_channel + 1;
        for c in [data_channel, error_channel] {
            let _ = msg_tx.send(codec.encode(c, &port.to_le_bytes())).await;
        }
        let (tx, mut rx) = mpsc::channel::<Bytes>(16);
        to_pods.push((data_channel, tx));
        let (msg_tx, sandbox, netns) = (msg_tx.clone(), sandbox.clone(), netns.clone());
        from_pods.spawn(async move {
            let tcp = match portforward::dial(netns.as_deref(), port).await {
                Ok(t) => t,
                Err(e) => {
                    let msg = portforward::dial_error(&sandbox, port, &e);
                    let _ = msg_tx
                        .send(codec.encode(error_channel, msg.as_bytes()))
                        .await;
                    return;
                }
            };
            let (mut from_pod, mut to_pod) = tcp.into_split();
            let upstream = tokio::spawn(async move {
                while let Some(chunk) = rx.recv().await {
                    if to_pod.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                let _ = to_pod.shutdown().await;
            });
            let mut buf = vec![0u8; 32 << 10];
            while let Ok(n) = from_pod.read(&mut buf).await {
                if n == 0
                    || msg_tx
                        .send(codec.encode(data_channel, &buf[..n]))
                        .await
                        .is_err()
                {
                    break;
                }
            }
            upstream.abort();
        });
    }
    drop(msg_tx);
    let reader = async {
        while let Some(Ok(msg)) = source.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
            let Some((channel, data)) = codec.decode(&msg) else {
                continue;
            };
            if let Some((_, tx)) = to_pods.iter().find(|(c, _)| *c == channel) {
                if !data.is_empty() && tx.send(data).await.is_err() {
                    continue;
                }
            }
        }
    };
    // The session lasts while the client is there and some port's connection is open.
    tokio::select! {
        _ = reader => {}
        _ = async { while from_pods.join_next().await.is_some() {} } => {}
    }
    from_pods.abort_all();
    drop(to_pods);
    let _ = tokio::time::timeout(CLOSE_GRACE, writer).await;
}

/// SPDY carried in WebSocket binary messages: bridged to a byte stream and served as plain
/// SPDY port forwarding.
async fn spdy_tunnel<IO>(ws: WebSocketStream<IO>, sandbox: String, netns: Option<PathBuf>)
where
    IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (ours, theirs) = tokio::io::duplex(64 << 10);
    let (mut sink, mut source) = ws.split();
    let (mut read_half, mut write_half) = tokio::io::split(theirs);
    let inbound = tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(b) if write_half.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = write_half.shutdown().await;
    });
    let outbound = tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        while let Ok(n) = read_half.read(&mut buf).await {
            if n == 0 || sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
        let _ = sink.send(close_message()).await;
    });
    super::over_spdy::serve_portforward(ours, sandbox, netns).await;
    let _ = tokio::time::timeout(CLOSE_GRACE, outbound).await;
    inbound.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channels_encode_both_ways() {
        let bin = Codec::of(Some("v4.channel.k8s.io"));
        let m = bin.encode(STDOUT, b"hi");
        assert_eq!(m, Message::binary(vec![1, b'h', b'i']));
        assert_eq!(bin.decode(&m), Some((1, Bytes::from_static(b"hi"))));
        let b64 = Codec::of(Some("v4.base64.channel.k8s.io"));
        let m = b64.encode(STDERR, b"hi");
        assert_eq!(m, Message::text("2aGk="));
        assert_eq!(b64.decode(&m), Some((2, Bytes::from_static(b"hi"))));
        assert_eq!(b64.decode(&Message::text("x!!")), None);
        assert_eq!(bin.decode(&Message::binary(Vec::new())), None);
        assert_eq!(
            bin.decode(&Message::binary(vec![CLOSE, STDIN])),
            Some((CLOSE, Bytes::from_static(&[STDIN])))
        );
    }
}
