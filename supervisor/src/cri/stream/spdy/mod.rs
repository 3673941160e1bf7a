//! SPDY/3.1 sessions as Kubernetes' peers speak them (moby/spdystream): streams the peer
//! opens, answered with SYN_REPLY or RST_STREAM, data both ways, PINGs echoed, GOAWAY; and a
//! small client side. No flow control, as spdystream has none.
//!
//! One writer task owns the write half and the header compressor and takes frames from one
//! bounded queue, so frames reach the wire in the order they were queued. One reader task
//! owns the read half and the decompressor and hands DATA to per-stream bounded channels; a
//! consumer that does not keep up stalls the reader, as it does in spdystream.

pub mod frame;
pub mod headers;
mod reader;
mod writer;

pub use frame::{
    CANCEL, GOAWAY_INTERNAL_ERROR, GOAWAY_OK, GOAWAY_PROTOCOL_ERROR, INTERNAL_ERROR,
    INVALID_STREAM, PROTOCOL_ERROR, REFUSED_STREAM,
};
pub use headers::Headers;

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, oneshot, watch};

use frame::{Frame, FLAG_FIN, MAX_STREAM_ID};

/// Frames waiting for the writer; `send` waits for room beyond this.
const QUEUE: usize = 64;
/// DATA frames buffered per stream before the reader waits for the consumer.
const STREAM_BUFFER: usize = 16;
/// Peer-opened streams waiting for `Incoming::next`.
const INCOMING_BUFFER: usize = 16;
/// The most data one DATA frame carries.
const CHUNK: usize = 32 << 10;
/// Frames the writer gathers into one write.
const BATCH: usize = 64 << 10;
/// How long the last frames may take to reach a peer that does not read them.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long we keep reading after our GOAWAY for the peer to close: closing with its data
/// unread could make the kernel reset the connection before the peer read our last frames.
const LINGER: Duration = Duration::from_secs(5);

/// A session's handle: cheap to clone. The session ends when the peer closes, fails or says
/// GOAWAY; it says GOAWAY itself on `go_away`, or once every handle, stream and half is gone.
#[derive(Clone)]
pub struct Connection {
    owner: Arc<Owner>,
}

/// The streams the peer opens.
pub struct Incoming {
    rx: mpsc::Receiver<Stream>,
    owner: Arc<Owner>,
}

/// A stream the peer opened, not yet answered. Dropping it unanswered refuses it.
pub struct Stream {
    id: u32,
    headers: Headers,
    rx: Option<mpsc::Receiver<Bytes>>,
    owner: Arc<Owner>,
    answered: bool,
}

/// What the peer sends on a stream. Dropping it discards the rest.
pub struct RecvHalf {
    id: u32,
    rx: mpsc::Receiver<Bytes>,
    owner: Arc<Owner>,
}

/// Sending on a stream. When the last clone goes without `finish` or `reset`, the stream is
/// half-closed (FIN) for the peer.
#[derive(Clone)]
pub struct SendHalf {
    inner: Arc<Sender>,
}

struct Sender {
    id: u32,
    done: AtomicBool,
    owner: Arc<Owner>,
}

/// What the handles share; its drop, when the last handle goes, says GOAWAY.
struct Owner {
    shared: Arc<Shared>,
}

struct Shared {
    server: bool,
    state: Mutex<State>,
    /// Held from taking a stream id to queueing its SYN_STREAM, as ids must reach the peer
    /// in increasing order.
    opening: tokio::sync::Mutex<()>,
    queue: mpsc::Sender<Out>,
    closed: watch::Sender<bool>,
    flushed: watch::Sender<bool>,
    abort: watch::Sender<bool>,
}

struct State {
    streams: HashMap<u32, Entry>,
    next_id: u32,
    last_peer_id: u32,
    gone_away: bool,
}

#[derive(Default)]
struct Entry {
    /// Where DATA goes; None once nothing more will be delivered.
    data: Option<mpsc::Sender<Bytes>>,
    /// Who waits for the SYN_REPLY of a stream we opened.
    reply: Option<oneshot::Sender<io::Result<()>>>,
    ours: bool,
    /// A SYN_REPLY went (for the peer's streams) or came (for ours).
    replied: bool,
    /// We sent FIN or may not send at all.
    sent_end: bool,
    /// The peer sent FIN, or no one reads any more.
    recv_end: bool,
}

/// What the writer is asked to put on the wire. Header blocks are compressed by the writer,
/// so that the compression context follows the wire order.
enum Out {
    Frame(Frame),
    Syn { stream_id: u32, headers: Headers },
    Reply { stream_id: u32 },
    GoAway { last_good: u32, status: u32 },
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("server", &self.owner.shared.server)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Stream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("id", &self.id)
            .field("headers", &self.headers)
            .finish()
    }
}

impl std::fmt::Debug for RecvHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvHalf").field("id", &self.id).finish()
    }
}

impl std::fmt::Debug for SendHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendHalf")
            .field("id", &self.inner.id)
            .finish()
    }
}

impl Connection {
    /// Serves SPDY/3.1 as the server over `io`, spawning a reader and a writer task on the
    /// current tokio runtime.
    pub fn server<IO>(io: IO) -> (Connection, Incoming)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Connection::start(io, true)
    }

    /// The client side: same, but our stream ids are odd.
    pub fn client<IO>(io: IO) -> (Connection, Incoming)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        Connection::start(io, false)
    }

    fn start<IO>(io: IO, server: bool) -> (Connection, Incoming)
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (queue, queued) = mpsc::channel(QUEUE);
        let shared = Arc::new(Shared {
            server,
            state: Mutex::new(State {
                streams: HashMap::new(),
                next_id: if server { 2 } else { 1 },
                last_peer_id: 0,
                gone_away: false,
            }),
            opening: tokio::sync::Mutex::new(()),
            queue,
            closed: watch::Sender::new(false),
            flushed: watch::Sender::new(false),
            abort: watch::Sender::new(false),
        });
        let owner = Arc::new(Owner {
            shared: shared.clone(),
        });
        let (incoming_tx, incoming_rx) = mpsc::channel(INCOMING_BUFFER);
        let (read, write) = tokio::io::split(io);
        tokio::spawn(writer::run(write, queued, shared.clone()));
        tokio::spawn(reader::run(
            read,
            shared,
            Arc::downgrade(&owner),
            incoming_tx,
        ));
        let incoming = Incoming {
            rx: incoming_rx,
            owner: owner.clone(),
        };
        (Connection { owner }, incoming)
    }

    /// Opens a stream with these headers and waits for the peer's SYN_REPLY.
    pub async fn open(&self, headers: Headers) -> io::Result<(RecvHalf, SendHalf)> {
        let shared = &self.owner.shared;
        if shared.is_closed() {
            return Err(broken());
        }
        let (reply_tx, reply_rx) = oneshot::channel();
        let (data_tx, data_rx) = mpsc::channel(STREAM_BUFFER);
        let opening = shared.opening.lock().await;
        let stream_id = {
            let mut state = shared.lock();
            if state.gone_away {
                return Err(broken());
            }
            let id = state.next_id;
            if id > MAX_STREAM_ID {
                return Err(io::Error::other("SPDY stream ids exhausted"));
            }
            state.next_id += 2;
            state.streams.insert(
                id,
                Entry {
                    data: Some(data_tx),
                    reply: Some(reply_tx),
                    ours: true,
                    ..Entry::default()
                },
            );
            id
        };
        // Made before the wait, so that a cancelled open still cleans up.
        let halves = self.owner.halves(stream_id, data_rx);
        shared.push(Out::Syn { stream_id, headers }).await?;
        drop(opening);
        match reply_rx.await {
            Ok(Ok(())) => Ok(halves),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(broken()),
        }
    }

    /// Sends GOAWAY (status OK, the last good id the highest peer stream id seen) after every
    /// frame queued before it, flushes, and closes our write side. Idempotent.
    pub async fn go_away(&self) {
        let shared = &self.owner.shared;
        let done = async {
            if let Some(out) = shared.begin_go_away(GOAWAY_OK) {
                let _ = shared.push(out).await;
            }
            let mut flushed = shared.flushed.subscribe();
            let _ = flushed.wait_for(|f| *f).await;
        };
        if tokio::time::timeout(FLUSH_TIMEOUT, done).await.is_err() {
            tracing::debug!("SPDY peer did not take our last frames; dropping the connection");
            shared.abort.send_replace(true);
            shared.close();
        }
    }

    /// Resolves when the connection has ended: peer EOF, read error, protocol error, or GOAWAY
    /// from the peer (or our own GOAWAY, once the peer closed or the linger passed).
    pub async fn closed(&self) {
        let mut closed = self.owner.shared.closed.subscribe();
        let _ = closed.wait_for(|c| *c).await;
    }

    pub fn is_closed(&self) -> bool {
        self.owner.shared.is_closed()
    }

    #[cfg(test)]
    fn stream_count(&self) -> usize {
        self.owner.shared.lock().streams.len()
    }
}

impl Owner {
    fn halves(self: &Arc<Owner>, id: u32, rx: mpsc::Receiver<Bytes>) -> (RecvHalf, SendHalf) {
        let recv = RecvHalf {
            id,
            rx,
            owner: self.clone(),
        };
        let send = SendHalf {
            inner: Arc::new(Sender {
                id,
                done: AtomicBool::new(false),
                owner: self.clone(),
            }),
        };
        (recv, send)
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if let Some(out) = self.shared.begin_go_away(GOAWAY_OK) {
            self.shared.push_detached(out);
        }
    }
}

impl Incoming {
    /// The next stream the peer opened; None once the connection ended.
    pub async fn next(&mut self) -> Option<Stream> {
        if self.owner.shared.is_closed() {
            return None;
        }
        self.rx.recv().await
    }
}

impl Stream {
    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn headers(&self) -> &Headers {
        &self.headers
    }

    /// Answers with SYN_REPLY (no headers) and gives the two halves.
    pub async fn accept(mut self) -> io::Result<(RecvHalf, SendHalf)> {
        self.answered = true;
        let shared = &self.owner.shared;
        {
            let mut state = shared.lock();
            if state.gone_away {
                return Err(broken());
            }
            let Some(entry) = state.streams.get_mut(&self.id) else {
                // Reset by the peer before the answer, or the connection is gone.
                return Err(if shared.is_closed() {
                    broken()
                } else {
                    io::ErrorKind::ConnectionReset.into()
                });
            };
            entry.replied = true;
            state.forget_if_done(self.id);
        }
        // Made before the wait, so that a cancelled accept still cleans up.
        let rx = self.rx.take().unwrap_or_else(|| mpsc::channel(1).1);
        let halves = self.owner.halves(self.id, rx);
        shared.push(Out::Reply { stream_id: self.id }).await?;
        Ok(halves)
    }

    /// Answers with RST_STREAM REFUSED_STREAM.
    pub async fn refuse(self) {
        self.refuse_with(REFUSED_STREAM).await;
    }

    /// Answers with RST_STREAM and this status.
    pub async fn refuse_with(mut self, status: u32) {
        self.answered = true;
        let shared = &self.owner.shared;
        shared.lock().streams.remove(&self.id);
        let _ = shared.push(reset(self.id, status)).await;
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        let shared = &self.owner.shared;
        if shared.lock().streams.remove(&self.id).is_some() {
            shared.push_detached(reset(self.id, REFUSED_STREAM));
        }
    }
}

impl RecvHalf {
    /// The next data received; None after the peer's FIN, a RST_STREAM, or the end of the
    /// connection.
    pub async fn recv(&mut self) -> Option<Bytes> {
        self.rx.recv().await
    }
}

impl Drop for RecvHalf {
    fn drop(&mut self) {
        let mut state = self.owner.shared.lock();
        if let Some(entry) = state.streams.get_mut(&self.id) {
            entry.data = None;
            entry.recv_end = true;
            state.forget_if_done(self.id);
        }
    }
}

impl SendHalf {
    /// Queues data, in DATA frames of at most 32 KiB; returns once the writer has it, in order
    /// with every other frame of the connection. Err(BrokenPipe) once the connection or the
    /// stream is gone.
    pub async fn send(&self, data: &[u8]) -> io::Result<()> {
        let inner = &self.inner;
        for chunk in data.chunks(CHUNK) {
            inner.check()?;
            let frame = Frame::Data {
                stream_id: inner.id,
                flags: 0,
                data: Bytes::copy_from_slice(chunk),
            };
            inner.owner.shared.push(Out::Frame(frame)).await?;
        }
        inner.check()
    }

    /// Half-closes the stream with an empty DATA frame carrying FIN. Idempotent.
    pub async fn finish(&self) -> io::Result<()> {
        let inner = &self.inner;
        if inner.done.load(Ordering::Acquire) {
            return Ok(());
        }
        inner.check()?;
        if inner.done.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        inner.mark_sent_end();
        inner.owner.shared.push(Out::Frame(fin(inner.id))).await
    }

    /// Resets the stream (RST_STREAM CANCEL): both directions end.
    pub async fn reset(&self) {
        let inner = &self.inner;
        if inner.done.swap(true, Ordering::AcqRel) {
            return;
        }
        let shared = &inner.owner.shared;
        if shared.lock().streams.remove(&inner.id).is_some() {
            let _ = shared.push(reset(inner.id, CANCEL)).await;
        }
    }
}

impl Sender {
    fn check(&self) -> io::Result<()> {
        let shared = &self.owner.shared;
        let state = shared.lock();
        match state.streams.get(&self.id) {
            Some(entry) if !entry.sent_end && !state.gone_away && !shared.is_closed() => Ok(()),
            _ => Err(broken()),
        }
    }

    /// Marks our side ended; true if the stream was still open for sending.
    fn mark_sent_end(&self) -> bool {
        let mut state = self.owner.shared.lock();
        let Some(entry) = state.streams.get_mut(&self.id) else {
            return false;
        };
        let was_open = !entry.sent_end;
        entry.sent_end = true;
        state.forget_if_done(self.id);
        was_open
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        if self.done.load(Ordering::Acquire) || self.owner.shared.is_closed() {
            return;
        }
        if self.mark_sent_end() {
            self.owner.shared.push_detached(Out::Frame(fin(self.id)));
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Waits for room in the writer's queue.
    async fn push(&self, out: Out) -> io::Result<()> {
        if self.is_closed() {
            return Err(broken());
        }
        self.queue.send(out).await.map_err(|_| broken())
    }

    /// Queues from where we cannot wait (drops): now if there is room, else from a task, which
    /// still lands after everything this stream queued before.
    fn push_detached(&self, out: Out) {
        if self.is_closed() {
            return;
        }
        match self.queue.try_send(out) {
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            Err(mpsc::error::TrySendError::Full(out)) => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    let queue = self.queue.clone();
                    rt.spawn(async move {
                        let _ = queue.send(out).await;
                    });
                }
            }
        }
    }

    /// The GOAWAY to send, unless one was sent; no peer stream is taken after it.
    fn begin_go_away(&self, status: u32) -> Option<Out> {
        let mut state = self.lock();
        if state.gone_away {
            return None;
        }
        state.gone_away = true;
        Some(Out::GoAway {
            last_good: state.last_peer_id,
            status,
        })
    }

    /// Ends the connection: every stream's data ends, waiting opens fail, the writer sends
    /// what is queued and closes.
    fn close(&self) {
        let streams = std::mem::take(&mut self.lock().streams);
        self.closed.send_replace(true);
        drop(streams);
    }
}

impl State {
    fn forget_if_done(&mut self, id: u32) {
        if let Some(e) = self.streams.get(&id) {
            if e.sent_end && e.recv_end && (e.ours || e.replied) {
                self.streams.remove(&id);
            }
        }
    }
}

fn broken() -> io::Error {
    io::ErrorKind::BrokenPipe.into()
}

fn reset(stream_id: u32, status: u32) -> Out {
    Out::Frame(Frame::RstStream { stream_id, status })
}

fn fin(stream_id: u32) -> Frame {
    Frame::Data {
        stream_id,
        flags: FLAG_FIN,
        data: Bytes::new(),
    }
}

#[cfg(test)]
mod tests;
