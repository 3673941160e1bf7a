//! Progress bars on stderr for long work (archive transfers, unpacking). A bar made for a
//! non-terminal is hidden, so callers update it the same way in both modes.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

const BYTES_KNOWN: &str = "{prefix:>9} [{bar:30}] {binary_bytes}/{binary_total_bytes} \
                           {binary_bytes_per_sec} eta {eta} {msg}";
const BYTES_UNKNOWN: &str = "{prefix:>9} {spinner} {binary_bytes} {binary_bytes_per_sec} {msg}";
const STEPS: &str = "{prefix:>9} [{bar:30}] {pos}/{len} {msg}";
const WAITING: &str = "{prefix:>9} {spinner} {elapsed} {msg}";

/// One bar that goes through stages: bytes moved, then steps (layers), then waiting.
#[derive(Clone)]
pub struct Bar {
    bar: ProgressBar,
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
            return Bar {
                bar: ProgressBar::hidden(),
            };
        }
        let bar = match total {
            Some(total) => ProgressBar::new(total).with_style(style(BYTES_KNOWN)),
            None => ProgressBar::no_length().with_style(style(BYTES_UNKNOWN)),
        };
        bar.set_prefix(stage.to_string());
        bar.enable_steady_tick(Duration::from_millis(120));
        Bar { bar }
    }

    pub fn inc(&self, bytes: u64) {
        self.bar.inc(bytes);
    }

    /// Switches to counting steps, e.g. layer 2 of 5.
    pub fn step(&self, stage: &str, position: u64, total: u64, message: String) {
        if self.bar.is_hidden() {
            return;
        }
        // Numbers first, style last: a frame drawn in between must not show the layer count
        // against the byte count of the previous stage.
        self.bar.set_prefix(stage.to_string());
        self.bar.set_message(message);
        self.bar.set_length(total);
        self.bar.set_position(position);
        self.bar.set_style(style(STEPS));
    }

    /// Switches to a spinner while the other side works on its own.
    pub fn wait(&self, stage: &str, message: String) {
        if self.bar.is_hidden() {
            return;
        }
        self.bar.set_prefix(stage.to_string());
        self.bar.set_message(message);
        self.bar.set_style(style(WAITING));
    }

    /// Removes the bar, leaving the terminal for the command's output.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
