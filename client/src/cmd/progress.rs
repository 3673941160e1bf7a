//! Progress bars on stderr for long work (archive transfers, unpacking). A bar made for a
//! non-terminal is hidden, so callers update it the same way in both modes.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

const BYTES_KNOWN: &str = "{prefix:>9} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
                           {binary_bytes_per_sec} eta {eta} {msg}";
const BYTES_UNKNOWN: &str = "{prefix:>9} {spinner} {binary_bytes} {binary_bytes_per_sec} {msg}";
const STEPS: &str = "{prefix:>9} [{bar:30}] {pos}/{len} {msg}";
const WAITING: &str = "{prefix:>9} {spinner} {elapsed} {msg}";
const TICK: Duration = Duration::from_millis(120);

/// One line that goes through stages: bytes moved, then steps (layers), then waiting. Each
/// stage gets a bar of its own, built complete before it is shown, so that no frame mixes
/// one stage's numbers with another's layout.
#[derive(Clone)]
pub struct Bar {
    current: Option<Arc<Mutex<ProgressBar>>>,
}

fn style(template: &str) -> ProgressStyle {
    // The templates are constants; a typo shows as a plain bar rather than a failure.
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Bar {
    /// A byte counter, with a bar and an ETA when the total is known.
    pub fn bytes(enabled: bool, total: Option<u64>, stage: &str) -> Bar {
        if !enabled {
            return Bar { current: None };
        }
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(style(BYTES_KNOWN)),
            None => ProgressBar::no_length().with_style(style(BYTES_UNKNOWN)),
        }
        .with_prefix(stage.to_string());
        bar.enable_steady_tick(TICK);
        Bar {
            current: Some(Arc::new(Mutex::new(bar))),
        }
    }

    fn with_bar(&self, f: impl FnOnce(&mut ProgressBar)) {
        if let Some(current) = &self.current {
            // A poisoned lock only means a panic elsewhere; the bar itself is still usable.
            let mut bar = current
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            f(&mut bar);
        }
    }

    fn replace(&self, next: ProgressBar) {
        self.with_bar(|bar| {
            bar.finish_and_clear();
            next.enable_steady_tick(TICK);
            *bar = next;
        });
    }

    pub fn inc(&self, bytes: u64) {
        self.with_bar(|bar| bar.inc(bytes));
    }

    /// Switches to counting steps, e.g. layer 2 of 5.
    pub fn step(&self, stage: &str, position: u64, total: u64, message: String) {
        if self.current.is_none() {
            return;
        }
        let next = ProgressBar::new(total)
            .with_style(style(STEPS))
            .with_prefix(stage.to_string())
            .with_message(message)
            .with_position(position);
        self.replace(next);
    }

    /// Switches to a spinner while the other side works on its own.
    pub fn wait(&self, stage: &str, message: String) {
        let mut same_stage = self.current.is_none();
        self.with_bar(|bar| {
            if bar.prefix() == stage {
                bar.set_message(message.clone());
                same_stage = true;
            }
        });
        if same_stage {
            return;
        }
        let next = ProgressBar::new_spinner()
            .with_style(style(WAITING))
            .with_prefix(stage.to_string())
            .with_message(message);
        self.replace(next);
    }

    /// Removes the bar, leaving the terminal for the command's output.
    pub fn finish(&self) {
        self.with_bar(|bar| bar.finish_and_clear());
    }
}
