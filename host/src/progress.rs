//! A progress line on a terminal (`export`, `replay`, `rebuild`, `verify`): done of total,
//! events per second and the time left, redrawn at most five times a second on stderr. Off
//! when stderr is not a terminal, so scripts and pipes see only the results. Drawn by
//! `indicatif`; the figures are ours, so the line reads as it always has:
//!
//! `replay [######                  ] 250/1000 (25%) 250 events/s, ETA 3s`

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle};

/// How many times a second the line is redrawn at most.
const HZ: u8 = 5;

/// A progress line.
pub struct ProgressLine {
    bar: ProgressBar,
}

/// Events per second, done of `elapsed`.
fn rate(done: u64, elapsed: Duration) -> f64 {
    done as f64 / elapsed.as_secs_f64().max(1e-3)
}

/// The share done, in percent (all of nothing is done).
fn percent(done: u64, total: u64) -> f64 {
    if total == 0 { 100.0 } else { done as f64 * 100.0 / total as f64 }
}

/// The time left at the rate so far, `-` when it cannot be told.
fn eta(done: u64, total: u64, elapsed: Duration) -> String {
    let rate = rate(done, elapsed);
    if rate > 0.0 && total > done {
        format!("{:.0}s", (total - done) as f64 / rate)
    } else {
        "-".into()
    }
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{msg} [{bar:24}] {pos}/{len} ({share}%) {rate} events/s, ETA {left}",
    )
    .expect("the template is valid")
    .progress_chars("# ")
    .with_key("share", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        let (done, total) = (s.pos(), s.len().unwrap_or(0));
        let _ = write!(w, "{:.0}", percent(done, total));
    })
    .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        let _ = write!(w, "{:.0}", rate(s.pos(), s.elapsed()));
    })
    .with_key("left", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
        let (done, total) = (s.pos(), s.len().unwrap_or(0));
        let _ = w.write_str(&eta(done, total, s.elapsed()));
    })
}

impl ProgressLine {
    /// A progress line labelled `label`, drawn when stderr is a terminal.
    pub fn new(label: impl Into<String>) -> Self {
        Self::to(label, ProgressDrawTarget::stderr_with_hz(HZ))
    }

    /// A progress line drawn to `target`.
    fn to(label: impl Into<String>, target: ProgressDrawTarget) -> Self {
        // Labelled before it is shown, so that nothing is drawn before the first update.
        let bar = ProgressBar::hidden().with_style(style()).with_message(label.into());
        bar.set_draw_target(target);
        ProgressLine { bar }
    }

    /// Updates the line (redrawn at most five times a second).
    pub fn update(&mut self, done: u64, total: u64) {
        self.bar.update(|state| {
            state.set_len(total);
            state.set_pos(done);
        });
    }

    /// Draws the final figures and leaves the line (what is written next starts below it).
    pub fn finish(&mut self, done: u64, total: u64) {
        self.update(done, total);
        // `abandon`, not `finish`: the latter would show the line as complete.
        self.bar.abandon();
        if !self.bar.is_hidden() {
            // indicatif leaves the cursor at the end of the line, padded to the terminal's
            // width; a terminal that does not wrap there would write on after it.
            eprintln!();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A terminal that keeps what is written to it.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<String>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(&format!("{s}\n"));
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_figures_are_count_rate_and_time_left() {
        assert_eq!(percent(250, 1000), 25.0);
        assert_eq!(percent(0, 0), 100.0);
        assert_eq!(rate(250, Duration::from_secs(1)), 250.0);
        assert_eq!(eta(250, 1000, Duration::from_secs(1)), "3s");
        assert_eq!(eta(0, 1000, Duration::from_secs(1)), "-");
        assert_eq!(eta(1000, 1000, Duration::from_secs(1)), "-");
    }

    #[test]
    fn the_line_reads_as_it_always_has() {
        let screen = Screen::default();
        let target = ProgressDrawTarget::term_like(Box::new(screen.clone()));
        let mut line = ProgressLine::to("replay", target);
        line.finish(250, 1000);
        let drawn = screen.0.lock().unwrap().clone();
        assert!(
            drawn.starts_with("replay [######   "),
            "nothing before the first update: {drawn:?}"
        );
        assert!(drawn.contains("replay [######                  ] 250/1000 (25%) "), "{drawn:?}");
        assert!(drawn.contains(" events/s, ETA "), "{drawn:?}");
        // Finished where it got to, not at its end (as indicatif's `finish` would).
        assert!(!drawn.contains("1000/1000"), "{drawn:?}");
    }

    #[test]
    fn nothing_is_drawn_off_a_terminal() {
        let line = ProgressLine::to("export", ProgressDrawTarget::hidden());
        assert!(line.bar.is_hidden());
        // The test harness's stderr is captured, not a terminal: the real line is off too.
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            assert!(ProgressLine::new("export").bar.is_hidden());
        }
    }
}
