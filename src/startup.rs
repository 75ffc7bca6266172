//! Where start-up time goes: `serve` marks the end of each step, and once ready the steps are
//! logged ("ready in X ms: ...", INFO) and published as metrics (`pantera_start_seconds`,
//! `pantera_start_step_seconds{step}`), so an operator sees a slow start and its cause without
//! a profiler (docs/PERFORMANCE.md, "Start-to-ready").

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use prometheus::{Gauge, GaugeVec, Opts};

use crate::metrics::Metrics;

/// Steps a start records; a bound so that a mistake (a step marked in a loop) cannot grow the
/// list without end. Start-up has about fifteen.
const STEPS_MAX: usize = 32;

/// The steps of one start, each with the time since the previous mark.
#[derive(Debug)]
pub struct StartClock {
    started: Instant,
    last: Instant,
    steps: Vec<(&'static str, Duration)>,
}

impl StartClock {
    /// Starts the clock at `started` (the first instruction of `serve`).
    pub fn new(started: Instant) -> StartClock {
        StartClock {
            started,
            last: started,
            steps: Vec::with_capacity(STEPS_MAX),
        }
    }

    /// Ends the step `name` now: it took the time since the previous mark. Marking the same
    /// name again adds to it (a step done once per queue).
    pub fn mark(&mut self, name: &'static str) {
        self.mark_at(name, Instant::now());
    }

    fn mark_at(&mut self, name: &'static str, now: Instant) {
        let took = now.saturating_duration_since(self.last);
        self.last = now;
        log::debug!("start-up: {name} took {:.3} ms", took.as_secs_f64() * 1e3);
        if let Some(step) = self.steps.iter_mut().find(|(n, _)| *n == name) {
            step.1 += took;
        } else if self.steps.len() < STEPS_MAX {
            self.steps.push((name, took));
        }
    }

    /// Time from the start to the last mark.
    pub fn total(&self) -> Duration {
        self.last.saturating_duration_since(self.started)
    }

    /// "ready in 12.3 ms: a 1.0 ms, b 0.2 ms, ..." with the steps in the order they ran.
    pub fn summary(&self) -> String {
        let mut line = format!("ready in {:.1} ms:", self.total().as_secs_f64() * 1e3);
        for (i, (name, took)) in self.steps.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            let _ = write!(line, "{sep}{name} {:.1} ms", took.as_secs_f64() * 1e3);
        }
        line
    }

    /// Publishes the total and each step; a registration failure (a name registered twice in
    /// one process, as in tests) loses the metrics, never the start.
    pub fn publish(&self, metrics: &Metrics) {
        if let Err(e) = self.try_publish(metrics) {
            log::warn!("cannot register the start-up metrics: {e}");
        }
    }

    fn try_publish(&self, metrics: &Metrics) -> prometheus::Result<()> {
        let total = Gauge::new(
            "start_seconds",
            "Seconds from the start of serve to ready, at this start.",
        )?;
        total.set(self.total().as_secs_f64());
        let steps = GaugeVec::new(
            Opts::new(
                "start_step_seconds",
                "Seconds each start-up step took, at this start.",
            ),
            &["step"],
        )?;
        for (name, took) in &self.steps {
            steps.with_label_values(&[name]).set(took.as_secs_f64());
        }
        metrics.registry.register(Box::new(total))?;
        metrics.registry.register(Box::new(steps))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_add_up_and_repeat_names_accumulate() {
        let t0 = Instant::now();
        let mut clock = StartClock::new(t0);
        clock.mark_at("config", t0 + Duration::from_millis(2));
        clock.mark_at("socket", t0 + Duration::from_millis(5));
        clock.mark_at("socket", t0 + Duration::from_millis(6));
        assert_eq!(clock.total(), Duration::from_millis(6));
        assert_eq!(
            clock.steps,
            vec![
                ("config", Duration::from_millis(2)),
                ("socket", Duration::from_millis(4))
            ]
        );
        assert_eq!(
            clock.summary(),
            "ready in 6.0 ms: config 2.0 ms, socket 4.0 ms"
        );
    }

    #[test]
    fn the_step_list_is_bounded() {
        let t0 = Instant::now();
        let mut clock = StartClock::new(t0);
        let names: Vec<&'static str> = (0..STEPS_MAX + 5)
            .map(|i| &*Box::leak(format!("s{i}").into_boxed_str()))
            .collect();
        for (i, name) in names.iter().enumerate() {
            clock.mark_at(name, t0 + Duration::from_millis(i as u64 + 1));
        }
        assert_eq!(clock.steps.len(), STEPS_MAX);
        // The total still covers every mark.
        assert_eq!(clock.total(), Duration::from_millis(STEPS_MAX as u64 + 5));
    }

    #[test]
    fn metrics_are_published() {
        let metrics = Metrics::new();
        let t0 = Instant::now();
        let mut clock = StartClock::new(t0);
        clock.mark_at("tls", t0 + Duration::from_millis(3));
        clock.publish(&metrics);
        let text = String::from_utf8(metrics.render()).expect("utf-8");
        assert!(text.contains("pantera_start_seconds 0.003"), "{text}");
        assert!(
            text.contains("pantera_start_step_seconds{step=\"tls\"} 0.003"),
            "{text}"
        );
    }
}
