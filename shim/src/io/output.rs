//! Where a process's output goes: its log file (and a CRI file, if asked), and live to whoever
//! follows it. One lock orders the two, so a reader that takes a view of the log and subscribes
//! under that lock gets every chunk exactly once: in the files up to the view, or live after.

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{broadcast, watch};

use super::history::History;
use super::log::{format_chunk, Chunk, CriLog, LogFile};

/// Chunks a follower may fall behind by before it misses some. The buffer exists only while
/// somebody follows, and a chunk is freed once every follower has seen it.
const LIVE_BUFFER: usize = 256;

pub struct Output {
    inner: Mutex<Inner>,
    drained: watch::Sender<bool>,
}

struct Inner {
    log: Option<LogFile>,
    cri: Option<CriLog>,
    live: Option<broadcast::Sender<Chunk>>,
    /// Streams still open (pumps running).
    open: usize,
    /// A write error is reported once, not for every chunk of a full disk.
    failing: bool,
    scratch: Vec<u8>,
}

/// What a reader gets: the log up to now and, while output may still come, the rest live.
pub struct View {
    pub history: History,
    pub live: Option<broadcast::Receiver<Chunk>>,
}

impl Output {
    pub fn new(log: LogFile, cri: Option<CriLog>, streams: usize) -> Arc<Output> {
        let (drained, _) = watch::channel(streams == 0);
        Arc::new(Output {
            inner: Mutex::new(Inner {
                log: Some(log),
                cri,
                live: None,
                open: streams,
                failing: false,
                scratch: Vec::new(),
            }),
            drained,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Logs a chunk and hands it to the followers. Never blocks on a reader: the container's
    /// output must always drain.
    pub fn emit(&self, chunk: Chunk) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.scratch.clear();
        format_chunk(&chunk, &mut inner.scratch);
        let mut result = Ok(());
        if let Some(log) = &mut inner.log {
            result = log
                .write(&inner.scratch)
                .map_err(|e| (log.path().to_owned(), e));
        }
        if let Some(cri) = &mut inner.cri {
            let r = cri.write(&inner.scratch);
            if result.is_ok() {
                result = r.map_err(|e| (cri.path().to_owned(), e));
            }
        }
        // Chunks are short-lived; a big one must not pin its capacity here.
        if inner.scratch.capacity() > 64 << 10 {
            inner.scratch = Vec::new();
        }
        match result {
            Ok(()) => inner.failing = false,
            Err((path, e)) if !inner.failing => {
                inner.failing = true;
                tracing::warn!(path = %path.display(), error = %e, "writing output to the log failed");
            }
            Err(_) => {}
        }
        if let Some(live) = &inner.live {
            if live.send(chunk).is_err() {
                // Nobody follows any more: free the buffer.
                inner.live = None;
            }
        }
    }

    /// One stream reached its end.
    pub fn close_stream(&self) {
        let mut inner = self.lock();
        inner.open = inner.open.saturating_sub(1);
        if inner.open == 0 {
            // Followers see the end once they have taken what is buffered.
            inner.live = None;
            drop(inner);
            self.drained.send_replace(true);
        }
    }

    /// The log so far and, if asked and output may still come, a subscription to the rest.
    pub fn view(&self, follow: bool) -> std::io::Result<View> {
        let mut inner = self.lock();
        let history = match &inner.log {
            Some(log) => History::new(log.open_view()?),
            None => History::default(),
        };
        let live = if follow && inner.open > 0 {
            Some(
                inner
                    .live
                    .get_or_insert_with(|| broadcast::channel(LIVE_BUFFER).0)
                    .subscribe(),
            )
        } else {
            None
        };
        Ok(View { history, live })
    }

    /// Resolves once every stream has ended.
    pub async fn drained(&self) {
        let mut rx = self.drained.subscribe();
        let _ = rx.wait_for(|d| *d).await;
    }

    /// Removes the log files (a deleted exec's).
    pub fn remove_log(&self) {
        if let Some(log) = self.lock().log.take() {
            log.remove();
        }
    }
}

/// What a follower gets next.
#[derive(Debug)]
pub enum Next {
    Chunk(Chunk),
    /// It fell this many chunks behind and they are lost to it (not to the log).
    Lagged(u64),
    /// The process has exited and its output is drained.
    End,
}

/// Follows live output until the process is finished: its exit reported (which happens only
/// once its output has drained, or a bounded time after) or itself deleted unstarted; then
/// hands out what is still buffered.
pub struct Follower {
    live: Option<broadcast::Receiver<Chunk>>,
    finished: watch::Receiver<bool>,
    exit_seen: bool,
}

impl Follower {
    pub fn new(live: Option<broadcast::Receiver<Chunk>>, finished: watch::Receiver<bool>) -> Self {
        Follower {
            live,
            finished,
            exit_seen: false,
        }
    }

    pub async fn next(&mut self) -> Next {
        use tokio::sync::broadcast::error::{RecvError, TryRecvError};
        loop {
            if self.exit_seen {
                return match self.live.as_mut().map(|l| l.try_recv()) {
                    Some(Ok(c)) => Next::Chunk(c),
                    Some(Err(TryRecvError::Lagged(n))) => Next::Lagged(n),
                    _ => Next::End,
                };
            }
            let Some(live) = self.live.as_mut() else {
                // Every stream has ended; the exit is on its way.
                let _ = self.finished.wait_for(|f| *f).await;
                self.exit_seen = true;
                continue;
            };
            tokio::select! {
                biased;
                r = live.recv() => match r {
                    Ok(c) => return Next::Chunk(c),
                    Err(RecvError::Lagged(n)) => return Next::Lagged(n),
                    Err(RecvError::Closed) => self.live = None,
                },
                _ = self.finished.wait_for(|f| *f) => self.exit_seen = true,
            }
        }
    }
}
