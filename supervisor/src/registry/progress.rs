//! Progress of the blobs of a pull or push, reported to the caller as whole snapshots: at
//! once on every change of status, at most every 200 ms while bytes flow. Also the
//! cancellation signal transfers watch, the stall watchdog of request bodies, and bounded
//! concurrency.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::store::Descriptor;

/// How often a transfer's byte count is reported at most.
const OFFSET_REPORT_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobStatus {
    Waiting,
    Downloading,
    /// Already held locally (pull) or by the registry (push): not transferred.
    Exists,
    Done,
    Unpacking,
    Unpacked,
    Uploading,
}

impl BlobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            BlobStatus::Waiting => "waiting",
            BlobStatus::Downloading => "downloading",
            BlobStatus::Exists => "exists",
            BlobStatus::Done => "done",
            BlobStatus::Unpacking => "unpacking",
            BlobStatus::Unpacked => "unpacked",
            BlobStatus::Uploading => "uploading",
        }
    }

    fn finished(self) -> bool {
        !matches!(
            self,
            BlobStatus::Waiting | BlobStatus::Downloading | BlobStatus::Uploading
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobProgress {
    pub digest: String,
    pub media_type: String,
    pub size: i64,
    pub offset: i64,
    pub status: BlobStatus,
}

/// Receives progress snapshots; must not block.
pub type ProgressFn = Arc<dyn Fn(Vec<BlobProgress>) + Send + Sync>;

/// Becomes true when the caller gives up (its stream went away).
pub type Cancel = watch::Receiver<bool>;

pub struct Tracker {
    state: Mutex<State>,
    sink: ProgressFn,
}

struct State {
    blobs: Vec<BlobProgress>,
    last: Instant,
}

impl Tracker {
    pub fn new(sink: ProgressFn) -> Arc<Tracker> {
        Arc::new(Tracker {
            state: Mutex::new(State {
                blobs: Vec::new(),
                last: Instant::now(),
            }),
            sink,
        })
    }

    /// Adds a blob (or sets its status if already listed).
    pub fn add(&self, d: &Descriptor, status: BlobStatus) {
        self.change(|s| {
            if !s.blobs.iter().any(|b| b.digest == d.digest) {
                s.blobs.push(BlobProgress {
                    digest: d.digest.clone(),
                    media_type: d.media_type.clone(),
                    size: d.size,
                    offset: 0,
                    status,
                });
            }
            set_status(s, &d.digest, status);
            true
        });
    }

    pub fn status(&self, digest: &str, status: BlobStatus) {
        self.change(|s| set_status(s, digest, status));
    }

    /// Bytes transferred so far; reported now and then, not every time.
    pub fn offset(&self, digest: &str, offset: i64) {
        self.change(|s| {
            if let Some(b) = s.blobs.iter_mut().find(|b| b.digest == digest) {
                b.offset = offset.min(b.size);
            }
            s.last.elapsed() >= OFFSET_REPORT_INTERVAL
        });
    }

    /// Adds `n` bytes to the blob's count.
    pub fn add_offset(&self, digest: &str, n: u64) {
        self.change(|s| {
            if let Some(b) = s.blobs.iter_mut().find(|b| b.digest == digest) {
                b.offset = b.offset.saturating_add(n as i64).min(b.size);
            }
            s.last.elapsed() >= OFFSET_REPORT_INTERVAL
        });
    }

    pub fn snapshot(&self) -> Vec<BlobProgress> {
        self.with(|s| s.blobs.clone())
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        match self.state.lock() {
            Ok(mut s) => f(&mut s),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// Applies `f`; reports a snapshot when it says so.
    fn change(&self, f: impl FnOnce(&mut State) -> bool) {
        let snapshot = self.with(|s| {
            if f(s) {
                s.last = Instant::now();
                Some(s.blobs.clone())
            } else {
                None
            }
        });
        if let Some(blobs) = snapshot {
            (self.sink)(blobs);
        }
    }
}

fn set_status(s: &mut State, digest: &str, status: BlobStatus) -> bool {
    let Some(b) = s.blobs.iter_mut().find(|b| b.digest == digest) else {
        return false;
    };
    if status.finished() {
        b.offset = b.size;
    }
    let changed = b.status != status;
    b.status = status;
    changed
}

/// Resolves when `cancel` turns true; never if its sender goes away first.
pub async fn cancelled(cancel: &mut Cancel) {
    if cancel.wait_for(|c| *c).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs `fut` unless `cancel` fires first.
pub async fn unless_cancelled<T>(
    cancel: &mut Cancel,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        r = fut => r,
        _ = cancelled(cancel) => Err(Error::Cancelled("cancelled by the caller".into())),
    }
}

/// When a request body last made progress.
#[derive(Clone)]
pub struct Activity(Arc<Mutex<Instant>>);

impl Activity {
    pub fn new() -> Activity {
        Activity(Arc::new(Mutex::new(Instant::now())))
    }

    pub fn touch(&self) {
        if let Ok(mut t) = self.0.lock() {
            *t = Instant::now();
        }
    }

    fn idle(&self) -> Duration {
        self.0.lock().map(|t| t.elapsed()).unwrap_or_default()
    }

    /// Runs `fut` until it ends, or until no progress was made for `stall`.
    pub async fn watch<T>(
        &self,
        stall: Duration,
        fut: impl std::future::Future<Output = T>,
    ) -> std::result::Result<T, tokio::time::error::Elapsed> {
        self.touch();
        let tick = (stall / 4).max(Duration::from_millis(100));
        tokio::pin!(fut);
        loop {
            match tokio::time::timeout(tick, &mut fut).await {
                Ok(out) => return Ok(out),
                Err(elapsed) if self.idle() >= stall => return Err(elapsed),
                Err(_) => {}
            }
        }
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// Runs `futs` with at most `limit` of them in flight; outputs in completion order.
pub async fn bounded<F: Future>(futs: Vec<F>, limit: usize) -> Vec<F::Output> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let mut pending = futs.into_iter();
    let mut running = FuturesUnordered::new();
    running.extend(pending.by_ref().take(limit.max(1)));
    let mut out = Vec::new();
    while let Some(o) = running.next().await {
        out.push(o);
        running.extend(pending.next());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_changes_are_reported_and_offsets_throttled() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let t = Tracker::new(Arc::new(move |b| s2.lock().expect("lock").push(b)));
        let d = Descriptor {
            media_type: "m".into(),
            digest: "sha256:aa".into(),
            size: 10,
            annotations: Default::default(),
            platform: None,
        };
        t.add(&d, BlobStatus::Waiting);
        t.status("sha256:aa", BlobStatus::Downloading);
        t.offset("sha256:aa", 5);
        t.status("sha256:aa", BlobStatus::Done);
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[2][0].offset, 10);
        assert_eq!(seen[2][0].status, BlobStatus::Done);
    }
}
