//! Progress on a terminal: a spinner per step with its elapsed time, nothing
//! when standard error is not a terminal or output is JSON.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
}

impl Progress {
    /// Start a step; `show` is false for `--json`.
    pub fn step(show: bool, message: &str) -> Progress {
        let bar = (show && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                    .expect("valid template"),
            );
            bar.set_message(message.to_string());
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        tracing::info!("{message}");
        Progress {
            bar,
            started: Instant::now(),
        }
    }

    /// End the step with a one-line result.
    pub fn done(self, message: &str) {
        let seconds = self.started.elapsed().as_secs_f64();
        match self.bar {
            Some(bar) => bar.finish_with_message(format!("{message} ({seconds:.1} s)")),
            None => tracing::info!("{message} ({seconds:.1} s)"),
        }
    }
}

/// Bytes moving to or from a repository: how many of how many, the rate and
/// the time left, on a terminal only (logs and `--json` are unchanged).
pub struct Transfer {
    bar: Option<ProgressBar>,
}

impl Transfer {
    pub fn start(what: &str, total: u64) -> Transfer {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template(
                    "{msg} {bytes}/{total_bytes} at {binary_bytes_per_sec}, {eta} left [{wide_bar}]",
                )
                .expect("valid template"),
            );
            bar.set_message(what.to_string());
            bar
        });
        Transfer { bar }
    }

    /// A transfer whose size is known only at its end (a backup streaming
    /// into the repository): bytes and rate, no time left.
    pub fn open_ended(what: &str) -> Transfer {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new_spinner();
            bar.set_style(
                ProgressStyle::with_template("{msg} {bytes} at {binary_bytes_per_sec}")
                    .expect("valid template"),
            );
            bar.set_message(what.to_string());
            bar
        });
        Transfer { bar }
    }

    pub fn advance(&self, bytes: u64) {
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
