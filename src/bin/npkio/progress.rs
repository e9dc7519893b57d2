//! The progress bar: drawn on standard error when it is a terminal, never otherwise.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{BinaryBytes, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The bar's layout: what it does, a bar as wide as the terminal allows, bytes done of
/// total, rate and time left.
const TEMPLATE: &str =
    "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec}, ETA {eta}";

/// A byte-counting progress bar, or nothing when standard error is not a terminal or the
/// user asked for quiet.
pub struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
}

impl Progress {
    /// A bar for `total` bytes labelled `label` (`"converting"`), drawn at once.
    pub fn new(total: u64, label: &'static str, quiet: bool) -> Progress {
        let start = Instant::now();
        if quiet || !std::io::stderr().is_terminal() {
            return Progress { bar: None, start };
        }
        let style = ProgressStyle::with_template(TEMPLATE)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr())
            .with_style(style)
            .with_message(label);
        bar.tick();
        Progress {
            bar: Some(bar),
            start,
        }
    }

    /// The callback for `Options::progress`: moves the bar to the bytes copied so far.
    pub fn callback(&self) -> Option<npkio::Progress> {
        let bar = self.bar.clone()?;
        Some(Arc::new(move |done, _total| bar.set_position(done)))
    }

    /// Advances the bar by `n` bytes.
    pub fn inc(&self, n: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(n);
        }
    }

    /// Clears the bar and, if one was drawn, leaves `summary(bytes, elapsed)` in its place:
    /// a user who saw a bar sees how it ended.
    pub fn finish(self, summary: impl FnOnce(Duration) -> String) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
            eprintln!("{}", summary(self.start.elapsed()));
        }
    }

    /// Clears the bar without a summary (before an error message).
    pub fn clear(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}

/// `"1.50 GiB in 2.1 s (731.43 MiB/s)"`.
pub fn rate_summary(bytes: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        format!(" ({}/s)", BinaryBytes((bytes as f64 / secs) as u64))
    } else {
        String::new()
    };
    format!("{} in {secs:.1} s{rate}", BinaryBytes(bytes))
}
