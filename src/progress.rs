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
