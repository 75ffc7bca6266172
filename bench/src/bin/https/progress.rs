//! Live progress of `https load`: an indicatif bar on a terminal (requests, rate, p99 so far,
//! errors, elapsed and remaining), one plain line per second otherwise (logs and CI stay
//! readable), nothing with `--quiet`. All of it on stderr: stdout is the summary's.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::results::{p99_so_far, Merger};

#[derive(Debug)]
enum Display {
    Off,
    Bar(ProgressBar),
    /// Plain lines; the last whole second printed.
    Lines {
        printed_second: u64,
    },
}

#[derive(Debug)]
pub struct Progress {
    display: Display,
    duration: Duration,
    requests_total: Option<u64>,
}

impl Progress {
    pub fn new(
        enabled: bool,
        terminal: bool,
        duration: Duration,
        requests_total: Option<u64>,
    ) -> Progress {
        let display = match (enabled, terminal) {
            (false, _) => Display::Off,
            (true, true) => {
                // The bar counts milliseconds of the run (or requests, when bounded by a count).
                let length = requests_total.unwrap_or(duration.as_millis() as u64);
                let bar = ProgressBar::with_draw_target(
                    Some(length),
                    ProgressDrawTarget::stderr_with_hz(5),
                );
                let style =
                    ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {msg}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar());
                bar.set_style(style);
                Display::Bar(bar)
            }
            (true, false) => Display::Lines { printed_second: 0 },
        };
        Progress {
            display,
            duration,
            requests_total,
        }
    }

    fn line(&self, elapsed: Duration, m: &Merger, done: bool) -> String {
        let t = &m.total;
        let secs = elapsed.as_secs_f64().max(1e-3);
        // While running, the rate of the last finished second; at the end (whose last second is
        // only the drain) and before the first, the mean.
        let rate = match m.series.last() {
            Some(s) if !done => s.ok as f64,
            _ => t.ok as f64 / secs,
        };
        let left = match self.requests_total {
            Some(n) => format!("{} left", n.saturating_sub(t.ok + t.error_count())),
            None => format!(
                "{:.0} s left",
                self.duration.saturating_sub(elapsed).as_secs_f64().ceil()
            ),
        };
        format!(
            "{} ok, {:.0}/s, p99 {:.2} ms, {} errors, {left}",
            t.ok,
            rate,
            p99_so_far(t) as f64 / 1e3,
            t.error_count()
        )
    }

    pub fn update(&mut self, elapsed: Duration, m: &Merger) {
        match &self.display {
            Display::Off => {}
            Display::Bar(bar) => {
                let position = match self.requests_total {
                    Some(_) => m.total.ok + m.total.error_count(),
                    None => elapsed.as_millis() as u64,
                };
                bar.set_position(position.min(bar.length().unwrap_or(u64::MAX)));
                bar.set_message(self.line(elapsed, m, false));
            }
            Display::Lines { printed_second } => {
                let second = elapsed.as_secs();
                if second > *printed_second {
                    eprintln!(
                        "https load: {:>4} s: {}",
                        second,
                        self.line(elapsed, m, false)
                    );
                    self.display = Display::Lines {
                        printed_second: second,
                    };
                }
            }
        }
    }

    pub fn finish(&mut self, elapsed: Duration, m: &Merger) {
        if let Display::Bar(bar) = &self.display {
            bar.finish_with_message(self.line(elapsed, m, true));
            // The bar's line stays; the summary starts on the next.
            eprintln!();
        }
    }
}
