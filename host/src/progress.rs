//! A progress line on a terminal (`export`, `replay`, `rebuild`, `verify`): done of total,
//! events per second and the time left, redrawn at most five times a second on stderr. Off
//! when stderr is not a terminal, so scripts and pipes see only the results.

use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

/// A progress line.
pub struct ProgressLine {
    label: String,
    started: Instant,
    drawn: Option<Instant>,
    enabled: bool,
}

impl ProgressLine {
    /// A progress line labelled `label`, drawn when stderr is a terminal.
    pub fn new(label: impl Into<String>) -> Self {
        ProgressLine {
            label: label.into(),
            started: Instant::now(),
            drawn: None,
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// The line for `done` of `total` after `elapsed`.
    pub fn render(label: &str, done: u64, total: u64, elapsed: Duration) -> String {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let rate = done as f64 / secs;
        let percent = if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 };
        let width = 24usize;
        let filled = ((percent / 100.0) * width as f64).round().clamp(0.0, width as f64) as usize;
        let eta = if rate > 0.0 && total > done {
            format!("{:.0}s", (total - done) as f64 / rate)
        } else {
            "-".into()
        };
        format!(
            "{label} [{}{}] {done}/{total} ({percent:.0}%) {rate:.0} events/s, ETA {eta}",
            "#".repeat(filled),
            " ".repeat(width - filled)
        )
    }

    /// Updates the line (throttled).
    pub fn update(&mut self, done: u64, total: u64) {
        if !self.enabled || self.drawn.is_some_and(|t| t.elapsed() < Duration::from_millis(200)) {
            return;
        }
        self.drawn = Some(Instant::now());
        let line = Self::render(&self.label, done, total, self.started.elapsed());
        let _ = write!(std::io::stderr(), "\r\x1b[2K{line}");
    }

    /// Draws the final figures and ends the line.
    pub fn finish(&mut self, done: u64, total: u64) {
        if self.enabled {
            let line = Self::render(&self.label, done, total, self.started.elapsed());
            let _ = writeln!(std::io::stderr(), "\r\x1b[2K{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_shows_count_rate_and_time_left() {
        let line = ProgressLine::render("replay", 250, 1000, Duration::from_secs(1));
        assert!(line.contains("250/1000 (25%)"), "{line}");
        assert!(line.contains("250 events/s"), "{line}");
        assert!(line.contains("ETA 3s"), "{line}");
        assert!(line.contains("[######                  ]"), "{line}");
    }
}
