//! The writer task: puts queued frames on the wire in queue order, compressing header
//! blocks as it goes so that the compression context follows the wire.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::frame::Frame;
use super::headers::{Compressor, HeaderError};
use super::{Headers, Out, Shared, BATCH, FLUSH_TIMEOUT};

pub(super) async fn run<W>(mut w: W, mut queued: mpsc::Receiver<Out>, shared: Arc<Shared>)
where
    W: AsyncWrite + Unpin,
{
    let mut compressor = Compressor::new();
    let mut buf = BytesMut::with_capacity(BATCH);
    let mut closed = shared.closed.subscribe();
    let mut abort = shared.abort.subscribe();
    // Once the connection closed, what is queued still goes out, within FLUSH_TIMEOUT.
    let mut deadline: Option<Instant> = None;
    loop {
        if deadline.is_none() && shared.is_closed() {
            deadline = Some(Instant::now() + FLUSH_TIMEOUT);
        }
        let first = if deadline.is_some() {
            match queued.try_recv() {
                Ok(out) => out,
                Err(_) => break,
            }
        } else {
            tokio::select! {
                biased;
                out = queued.recv() => match out {
                    Some(out) => out,
                    None => break,
                },
                _ = closed.wait_for(|c| *c) => continue,
            }
        };
        let mut end = End::No;
        let mut next = Some(first);
        while let Some(out) = next.take() {
            end = encode(out, &mut compressor, &mut buf);
            if end == End::No && buf.len() < BATCH {
                next = queued.try_recv().ok();
            }
        }
        let write = async {
            w.write_all(&buf).await?;
            w.flush().await
        };
        let late = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        let written = tokio::select! {
            r = write => r.is_ok(),
            _ = abort.wait_for(|a| *a) => false,
            _ = late => false,
        };
        buf.clear();
        if !written || end == End::Broken {
            shared.close();
            break;
        }
        if end == End::GoAway {
            break;
        }
    }
    let _ = tokio::time::timeout(FLUSH_TIMEOUT, w.shutdown()).await;
    shared.flushed.send_replace(true);
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    No,
    /// The GOAWAY that ends our side went into the buffer.
    GoAway,
    /// A frame could not be encoded; the header compression context may be lost with it.
    Broken,
}

/// Adds the wire form of `out` to `buf`.
fn encode(out: Out, compressor: &mut Compressor, buf: &mut BytesMut) -> End {
    match frame(out, compressor) {
        Ok((frame, end)) => match frame.encode(buf) {
            Ok(()) => end,
            Err(e) => broken(&e),
        },
        Err(e) => broken(&e),
    }
}

fn broken(e: &dyn std::fmt::Display) -> End {
    tracing::warn!(error = %e, "SPDY frame not sent; ending the connection");
    End::Broken
}

fn frame(out: Out, compressor: &mut Compressor) -> Result<(Frame, End), HeaderError> {
    Ok(match out {
        Out::Frame(frame) => (frame, End::No),
        Out::Syn { stream_id, headers } => {
            let frame = Frame::SynStream {
                stream_id,
                associated_to: 0,
                priority: 0,
                slot: 0,
                flags: 0,
                block: compressor.compress(&headers)?,
            };
            (frame, End::No)
        }
        Out::Reply { stream_id } => {
            let frame = Frame::SynReply {
                stream_id,
                flags: 0,
                block: compressor.compress(&Headers::new())?,
            };
            (frame, End::No)
        }
        Out::GoAway { last_good, status } => (Frame::GoAway { last_good, status }, End::GoAway),
    })
}
