//! What a run measured, as a table for people or one JSON object for scripts.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::{Load, Scenario};

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub concurrency: usize,
    pub channels: usize,
    pub duration_s: f64,
    pub requests: u64,
    pub requests_per_second: f64,
    /// Items checked or written per second (members, for batch checks).
    pub items_per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    /// Failed calls by gRPC code.
    pub errors: BTreeMap<String, u64>,
}

impl Report {
    pub(super) fn new(
        scenario: Scenario,
        load: &Load,
        h: &Histogram<u64>,
        errors: BTreeMap<String, u64>,
        items_per_call: usize,
    ) -> Self {
        let seconds = load.duration.as_secs_f64();
        let requests = h.len();
        let rps = requests as f64 / seconds;
        let ms = |micros: u64| micros as f64 / 1000.0;
        Self {
            scenario: scenario.name(),
            concurrency: load.concurrency,
            channels: load.channels,
            duration_s: seconds,
            requests,
            requests_per_second: rps,
            items_per_second: rps * items_per_call as f64,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p90_ms: ms(h.value_at_quantile(0.90)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            max_ms: ms(h.max()),
            errors,
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    /// One line for a table, with the ratio to the baseline's requests/s when given.
    pub fn line(&self, baseline_rps: Option<f64>) -> String {
        let ratio = baseline_rps
            .filter(|b| *b > 0.0)
            .map_or_else(String::new, |b| {
                format!("{:>6.1}%", 100.0 * self.requests_per_second / b)
            });
        format!(
            "{:<20} {:>10.0} req/s {:>12.0} items/s  p50 {:>7.2}  p90 {:>7.2}  p99 {:>7.2}  max {:>8.2} ms  errors {:<5} {ratio}{}",
            self.scenario,
            self.requests_per_second,
            self.items_per_second,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.max_ms,
            self.error_count(),
            if self.errors.is_empty() {
                String::new()
            } else {
                format!("  {:?}", self.errors)
            },
        )
    }
}
