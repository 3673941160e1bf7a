//! The layer stream as the tar reader sees it: hashed (on a helper thread, so the digest
//! costs the thread writing files nothing), counted, and watched so that its errors can be
//! told apart afterwards.

use std::cell::Cell;
use std::io::{self, Read};
use std::mem;
use std::rc::Rc;
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};
use crate::image::compression;

/// Bytes handed to the hashing thread at a time.
const CHUNK: usize = 1 << 20;
/// Chunks queued for hashing before the reader waits.
const QUEUE: usize = 4;

/// Counts every byte read from the layer and has it hashed in the background.
pub(super) struct Hashing<'a> {
    inner: &'a mut dyn Read,
    size: u64,
    chunk: Vec<u8>,
    full: Option<SyncSender<Vec<u8>>>,
    /// Hashed chunks coming back for reuse.
    spare: Receiver<Vec<u8>>,
    worker: Option<JoinHandle<[u8; 32]>>,
}

impl<'a> Hashing<'a> {
    pub(super) fn new(inner: &'a mut dyn Read) -> Result<Self> {
        let (full_tx, full_rx) = mpsc::sync_channel::<Vec<u8>>(QUEUE);
        let (spare_tx, spare_rx) = mpsc::channel::<Vec<u8>>();
        let worker = std::thread::Builder::new()
            .name("layer-sha256".into())
            .spawn(move || hash_chunks(full_rx, spare_tx))
            .map_err(|e| Error::io("starting the layer hashing thread", e))?;
        Ok(Hashing {
            inner,
            size: 0,
            chunk: Vec::with_capacity(CHUNK),
            full: Some(full_tx),
            spare: spare_rx,
            worker: Some(worker),
        })
    }

    fn send_chunk(&mut self) {
        let next = self
            .spare
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
        let chunk = mem::replace(&mut self.chunk, next);
        if let Some(full) = &self.full {
            // Fails only if the worker died; `finish` reports that.
            let _ = full.send(chunk);
        }
    }

    /// Waits for the digest of everything read: `sha256:<hex>` and the byte count.
    pub(super) fn finish(mut self) -> Result<(String, u64)> {
        if !self.chunk.is_empty() {
            self.send_chunk();
        }
        self.full = None;
        let digest = self
            .worker
            .take()
            .ok_or_else(|| Error::internal("layer hashing thread missing"))?
            .join()
            .map_err(|_| Error::internal("layer hashing thread panicked"))?;
        Ok((format!("sha256:{}", hex::encode(digest)), self.size))
    }
}

fn hash_chunks(full: Receiver<Vec<u8>>, spare: Sender<Vec<u8>>) -> [u8; 32] {
    let mut hasher = Sha256::new();
    for mut chunk in full {
        hasher.update(&chunk);
        chunk.clear();
        // The reader may be gone already; the buffer is then simply freed.
        let _ = spare.send(chunk);
    }
    hasher.finalize().into()
}

impl Read for Hashing<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.size += n as u64;
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let take = rest.len().min(CHUNK - self.chunk.len());
            self.chunk.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.chunk.len() == CHUNK {
                self.send_chunk();
            }
        }
        Ok(n)
    }
}

/// What the tar reader saw of the stream, to classify its errors afterwards: the tar crate
/// rewraps I/O errors and loses their OS error code.
#[derive(Default)]
pub(super) struct StreamState {
    /// The tar reader hit the end of the stream (a complete archive ends at its marker).
    pub(super) eof: Cell<bool>,
    /// The last OS-level read error (a failing disk, not bad data).
    os_error: Cell<Option<i32>>,
}

impl StreamState {
    /// Classifies an error reading the layer: bad bytes are the layer's fault, an OS error
    /// is ours.
    pub(super) fn error(&self, err: io::Error) -> Error {
        if let Some(code) = self.os_error.get().or(err.raw_os_error()) {
            return Error::io("reading the layer", io::Error::from_raw_os_error(code));
        }
        if compression::is_corrupt(&err) {
            return Error::invalid(err.to_string());
        }
        if self.eof.get() || err.kind() == io::ErrorKind::UnexpectedEof {
            Error::invalid(format!("truncated tar: {err}"))
        } else {
            Error::invalid(format!("malformed tar: {err}"))
        }
    }
}

/// Sits between the tar reader and the buffered stream and records what `StreamState`
/// needs.
pub(super) struct Watch<R> {
    pub(super) inner: R,
    pub(super) state: Rc<StreamState>,
}

impl<R: Read> Read for Watch<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inner.read(buf) {
            Ok(0) if !buf.is_empty() => {
                self.state.eof.set(true);
                Ok(0)
            }
            Ok(n) => Ok(n),
            Err(err) => {
                if let Some(code) = err.raw_os_error() {
                    self.state.os_error.set(Some(code));
                }
                Err(err)
            }
        }
    }
}
