//! Where a process's output goes: its log file (and a CRI file, if asked), and live to whoever
//! follows it. One lock orders the two, so a reader that takes a view of the log and subscribes
//! under that lock gets every chunk exactly once: in the files up to the view, or live after.
//!
//! Followers get every chunk: each has a bounded queue, and a full queue holds the output pump
//! back (the container then waits on its pipe, as it would writing to a slow terminal). A
//! follower that takes nothing for `FOLLOWER_STALL` is cut off and told so, so a client that
//! hangs cannot stop the container for long. With nobody following, output only goes to the
//! log and never waits.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::history::History;
use super::log::{format_chunk, Chunk, CriLog, LogFile};

/// Chunks queued for one follower before the output waits for it.
const FOLLOWER_QUEUE: usize = 64;

/// How long one follower may hold the output back before it is cut off.
const FOLLOWER_STALL: Duration = Duration::from_secs(10);

/// The sending side of one follower's queue.
#[derive(Clone)]
struct Feed {
    tx: mpsc::Sender<Chunk>,
    cut: Arc<AtomicBool>,
}

/// The receiving side: chunks, and whether the follower was cut off for stalling.
pub struct Live {
    rx: mpsc::Receiver<Chunk>,
    cut: Arc<AtomicBool>,
}

pub struct Output {
    inner: Mutex<Inner>,
    drained: watch::Sender<bool>,
}

struct Inner {
    log: Option<LogFile>,
    cri: Option<CriLog>,
    followers: Vec<Feed>,
    /// Streams still open (pumps running).
    open: usize,
    /// A write error is reported once, not for every chunk of a full disk.
    failing: bool,
    scratch: Vec<u8>,
}

/// What a reader gets: the log up to now and, while output may still come, the rest live.
pub struct View {
    pub history: History,
    pub live: Option<Live>,
}

impl Output {
    pub fn new(log: LogFile, cri: Option<CriLog>, streams: usize) -> Arc<Output> {
        let (drained, _) = watch::channel(streams == 0);
        Arc::new(Output {
            inner: Mutex::new(Inner {
                log: Some(log),
                cri,
                followers: Vec::new(),
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

    /// Logs a chunk and hands it to the followers, waiting (boundedly) for any whose queue is
    /// full.
    pub async fn emit(&self, chunk: Chunk) {
        let feeds = self.record(&chunk);
        for feed in feeds {
            let pending = match feed.tx.try_send(chunk.clone()) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => continue,
                Err(mpsc::error::TrySendError::Full(c)) => c,
            };
            if tokio::time::timeout(FOLLOWER_STALL, feed.tx.send(pending))
                .await
                .is_err()
            {
                tracing::warn!("a follower took no output for {FOLLOWER_STALL:?}; cutting it off");
                feed.cut.store(true, Ordering::Relaxed);
                self.lock()
                    .followers
                    .retain(|f| !Arc::ptr_eq(&f.cut, &feed.cut));
            }
        }
    }

    /// Writes a chunk to the log files and returns the followers to hand it to.
    fn record(&self, chunk: &Chunk) -> Vec<Feed> {
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.scratch.clear();
        format_chunk(chunk, &mut inner.scratch);
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
        inner.followers.retain(|f| !f.tx.is_closed());
        inner.followers.clone()
    }

    /// One stream reached its end.
    pub fn close_stream(&self) {
        let mut inner = self.lock();
        inner.open = inner.open.saturating_sub(1);
        if inner.open == 0 {
            // Followers see the end once they have taken what is queued.
            inner.followers.clear();
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
            let (tx, rx) = mpsc::channel(FOLLOWER_QUEUE);
            let cut = Arc::new(AtomicBool::new(false));
            inner.followers.push(Feed {
                tx,
                cut: cut.clone(),
            });
            Some(Live { rx, cut })
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
    /// It took no output for too long and was cut off (the log still has everything).
    CutOff,
    /// The process has exited and its output is drained.
    End,
}

/// Follows live output until the process is finished: its exit reported (which happens only
/// once its output has drained, or a bounded time after) or itself deleted unstarted; then
/// hands out what is still buffered.
pub struct Follower {
    live: Option<Live>,
    finished: watch::Receiver<bool>,
    exit_seen: bool,
}

impl Follower {
    pub fn new(live: Option<Live>, finished: watch::Receiver<bool>) -> Self {
        Follower {
            live,
            finished,
            exit_seen: false,
        }
    }

    pub async fn next(&mut self) -> Next {
        loop {
            if self.exit_seen {
                return match self.live.as_mut().map(|l| (l.rx.try_recv(), l.cut.clone())) {
                    Some((Ok(c), _)) => Next::Chunk(c),
                    Some((Err(_), cut)) if cut.load(Ordering::Relaxed) => Next::CutOff,
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
                r = live.rx.recv() => match r {
                    Some(c) => return Next::Chunk(c),
                    None if live.cut.load(Ordering::Relaxed) => return Next::CutOff,
                    None => self.live = None,
                },
                _ = self.finished.wait_for(|f| *f) => self.exit_seen = true,
            }
        }
    }
}
