//! The reader task: decodes what the peer sends and acts on it.

use std::io;
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::{mpsc, watch};

use super::frame::{Decoder, Frame, FLAG_FIN, FLAG_UNIDIRECTIONAL};
use super::headers::Decompressor;
use super::{
    Entry, Out, Owner, Shared, State, Stream, FLUSH_TIMEOUT, GOAWAY_PROTOCOL_ERROR, LINGER,
    STREAM_BUFFER,
};

/// Reads the peer's frames until it closes, fails or goes away, then ends the connection.
pub(super) async fn run<R>(
    read: R,
    shared: Arc<Shared>,
    owner: Weak<Owner>,
    incoming: mpsc::Sender<Stream>,
) where
    R: AsyncRead + Unpin,
{
    let mut reader = Reader {
        closed: shared.closed.subscribe(),
        shared,
        owner,
        incoming,
        decompressor: Decompressor::new(),
    };
    let why = reader.serve(read).await;
    tracing::debug!(why, "SPDY connection ended");
    reader.shared.close();
}

struct Reader {
    shared: Arc<Shared>,
    owner: Weak<Owner>,
    incoming: mpsc::Sender<Stream>,
    decompressor: Decompressor,
    closed: watch::Receiver<bool>,
}

/// Whether to read on.
enum Flow {
    Go,
    Stop(&'static str),
}

impl Reader {
    async fn serve<R>(&mut self, mut read: R) -> &'static str
    where
        R: AsyncRead + Unpin,
    {
        let mut decoder = Decoder::default();
        let mut buf = BytesMut::with_capacity(16 << 10);
        let mut closed = self.shared.closed.subscribe();
        let linger = linger(self.shared.flushed.subscribe());
        tokio::pin!(linger);
        loop {
            loop {
                match decoder.decode(&mut buf) {
                    Ok(Some(frame)) => {
                        if let Flow::Stop(why) = self.handle(frame).await {
                            return why;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "SPDY frame from the peer");
                        return self.protocol_error().await;
                    }
                }
            }
            if buf.capacity() - buf.len() < 4 << 10 {
                buf.reserve(16 << 10);
            }
            tokio::select! {
                r = read.read_buf(&mut buf) => match r {
                    Ok(0) => return "peer closed",
                    Ok(_) => {}
                    Err(e) => {
                        tracing::debug!(error = %e, "SPDY read");
                        return "read error";
                    }
                },
                _ = closed.wait_for(|c| *c) => return "closed",
                _ = &mut linger => return "peer did not close after our GOAWAY",
            }
        }
    }

    async fn handle(&mut self, frame: Frame) -> Flow {
        match frame {
            Frame::SynStream {
                stream_id,
                flags,
                block,
                ..
            } => self.syn_stream(stream_id, flags, &block).await,
            Frame::SynReply {
                stream_id,
                flags,
                block,
            } => {
                if self.decompressor.decompress(&block).is_err() {
                    return Flow::Stop(self.protocol_error().await);
                }
                self.syn_reply(stream_id, flags);
                Flow::Go
            }
            Frame::Headers {
                stream_id,
                flags,
                block,
            } => {
                // Read only to keep the decompression context in step with the peer's.
                if self.decompressor.decompress(&block).is_err() {
                    return Flow::Stop(self.protocol_error().await);
                }
                if flags & FLAG_FIN != 0 {
                    finish_remote(&mut self.shared.lock(), stream_id);
                }
                Flow::Go
            }
            Frame::Data {
                stream_id,
                flags,
                data,
            } => self.data(stream_id, flags, data).await,
            Frame::RstStream { stream_id, status } => {
                let entry = self.shared.lock().streams.remove(&stream_id);
                if let Some(reply) = entry.and_then(|e| e.reply) {
                    let refused = io::Error::new(
                        io::ErrorKind::ConnectionRefused,
                        format!("stream reset by the peer (status {status})"),
                    );
                    let _ = reply.send(Err(refused));
                }
                Flow::Go
            }
            Frame::Ping { id } => {
                // Ids of the peer's parity are its pings, to echo; ours would be answers.
                if id % 2 == self.peer_parity() {
                    self.push(Out::Frame(Frame::Ping { id })).await
                } else {
                    Flow::Go
                }
            }
            Frame::GoAway { .. } => Flow::Stop("peer sent GOAWAY"),
            Frame::Settings { .. } | Frame::WindowUpdate { .. } => Flow::Go,
        }
    }

    fn peer_parity(&self) -> u32 {
        u32::from(self.shared.server)
    }

    async fn syn_stream(&mut self, id: u32, flags: u8, block: &[u8]) -> Flow {
        let Ok(headers) = self.decompressor.decompress(block) else {
            return Flow::Stop(self.protocol_error().await);
        };
        // Taken before the lock: dropping the last handle takes the lock too.
        let owner = self.owner.upgrade();
        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
        let (in_order, taken) = {
            let mut state = self.shared.lock();
            let in_order = id % 2 == self.peer_parity() && id > state.last_peer_id;
            // After our GOAWAY new streams are ignored, as the peer knows from its last-good id.
            let taken = in_order && !state.gone_away && owner.is_some();
            if taken {
                let fin = flags & FLAG_FIN != 0;
                state.streams.insert(
                    id,
                    Entry {
                        data: (!fin).then_some(tx),
                        sent_end: flags & FLAG_UNIDIRECTIONAL != 0,
                        recv_end: fin,
                        ..Entry::default()
                    },
                );
            }
            if in_order {
                state.last_peer_id = id;
            }
            (in_order, taken)
        };
        if !in_order {
            tracing::debug!(id, "SPDY stream id out of order or of our parity");
            return Flow::Stop(self.protocol_error().await);
        }
        let (true, Some(owner)) = (taken, owner) else {
            return Flow::Go;
        };
        let stream = Stream {
            id,
            headers,
            rx: Some(rx),
            owner,
            answered: false,
        };
        // A stream nobody takes is dropped, which refuses it.
        tokio::select! {
            _ = self.incoming.send(stream) => Flow::Go,
            _ = self.closed.wait_for(|c| *c) => Flow::Stop("closed"),
        }
    }

    fn syn_reply(&mut self, id: u32, flags: u8) {
        let mut state = self.shared.lock();
        let Some(entry) = state.streams.get_mut(&id) else {
            return;
        };
        if !entry.ours || entry.replied {
            return;
        }
        entry.replied = true;
        if let Some(reply) = entry.reply.take() {
            let _ = reply.send(Ok(()));
        }
        if flags & FLAG_FIN != 0 {
            finish_remote(&mut state, id);
        }
    }

    async fn data(&mut self, id: u32, flags: u8, data: Bytes) -> Flow {
        let (known, tx) = {
            let state = self.shared.lock();
            match state.streams.get(&id) {
                // spdystream drops data on a stream of its own until the reply came.
                Some(e) if !e.ours || e.replied => (true, e.data.clone()),
                _ => (false, None),
            }
        };
        if !known {
            return Flow::Go;
        }
        if let (Some(tx), false) = (tx, data.is_empty()) {
            let delivered = tokio::select! {
                r = tx.send(data) => r.is_ok(),
                _ = self.closed.wait_for(|c| *c) => return Flow::Stop("closed"),
            };
            if !delivered {
                finish_remote(&mut self.shared.lock(), id);
            }
        }
        if flags & FLAG_FIN != 0 {
            finish_remote(&mut self.shared.lock(), id);
        }
        Flow::Go
    }

    async fn push(&mut self, out: Out) -> Flow {
        tokio::select! {
            // After our GOAWAY the writer is gone; reading goes on until the peer closes.
            _ = self.shared.push(out) => Flow::Go,
            _ = self.closed.wait_for(|c| *c) => Flow::Stop("closed"),
        }
    }

    /// Says GOAWAY(PROTOCOL_ERROR), unless a GOAWAY went already, and stops reading.
    async fn protocol_error(&mut self) -> &'static str {
        if let Some(out) = self.shared.begin_go_away(GOAWAY_PROTOCOL_ERROR) {
            let _ = tokio::time::timeout(FLUSH_TIMEOUT, self.shared.push(out)).await;
        }
        "protocol error"
    }
}

/// The peer will send no more on the stream.
fn finish_remote(state: &mut State, id: u32) {
    if let Some(entry) = state.streams.get_mut(&id) {
        entry.data = None;
        entry.recv_end = true;
        state.forget_if_done(id);
    }
}

/// Resolves LINGER after our side closed.
async fn linger(mut flushed: watch::Receiver<bool>) {
    let _ = flushed.wait_for(|f| *f).await;
    tokio::time::sleep(LINGER).await;
}
