//! Latency recording: an HDR histogram (1 ns .. 60 s, 3 significant digits) plus an error
//! count with a few sample messages, summarised as JSON.

use std::future::Future;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{json, Value};

/// Largest recordable latency; slower operations are clamped to it (and show as max = 60 s).
const MAX_NS: u64 = 60_000_000_000;
/// Distinct error messages kept per recorder.
const ERROR_SAMPLES_MAX: usize = 5;

/// Latencies of successful operations and a count of failed ones.
#[derive(Debug, Clone)]
pub struct Lat {
    hist: Histogram<u64>,
    pub errors: u64,
    pub error_samples: Vec<String>,
}

impl Lat {
    pub fn new() -> Lat {
        Lat {
            hist: Histogram::new_with_bounds(1, MAX_NS, 3).expect("1 ns .. 60 s with 3 digits are valid bounds"),
            errors: 0,
            error_samples: Vec::new(),
        }
    }

    pub fn record(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(MAX_NS).clamp(1, MAX_NS);
        self.hist.saturating_record(ns);
    }

    pub fn error(&mut self, msg: impl Into<String>) {
        self.errors += 1;
        let msg = msg.into();
        if self.error_samples.len() < ERROR_SAMPLES_MAX && !self.error_samples.contains(&msg) {
            self.error_samples.push(msg);
        }
    }

    pub fn merge(&mut self, other: &Lat) {
        self.hist.add(&other.hist).expect("histograms built by Lat::new share their bounds");
        self.errors += other.errors;
        for m in &other.error_samples {
            if self.error_samples.len() < ERROR_SAMPLES_MAX && !self.error_samples.contains(m) {
                self.error_samples.push(m.clone());
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// Latency at quantile `q`, in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        self.hist.value_at_quantile(q) as f64 / 1e6
    }

    pub fn max_ms(&self) -> f64 {
        self.hist.max() as f64 / 1e6
    }

    /// ops, ops/s over `window_s`, and p50/p90/p99/p999/max/mean in ms.
    pub fn summary(&self, window_s: f64) -> Value {
        json!({
            "ops": self.count(),
            "ops_per_s": round(self.count() as f64 / window_s, 1),
            "errors": self.errors,
            "error_samples": self.error_samples,
            "p50_ms": round(self.ms(0.50), 3),
            "p90_ms": round(self.ms(0.90), 3),
            "p99_ms": round(self.ms(0.99), 3),
            "p999_ms": round(self.ms(0.999), 3),
            "max_ms": round(self.max_ms(), 3),
            "mean_ms": round(self.hist.mean() / 1e6, 3),
        })
    }
}

/// `x` rounded to `digits` decimals (for readable JSON).
pub fn round(x: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (x * f).round() / f
}

/// Median of `values` (the mean of the middle two for an even count); `None` if empty.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 })
}

/// Run `measure` (one load window on a fresh cluster) until a window had at most
/// `max_other_cores` of foreign CPU load (its row's `cpu.other_cores`), at most `retries`
/// times more; the row says how many `attempts` it took. The machine is shared with builds
/// and tests, and a contaminated window says nothing about the system under test.
pub async fn measure_clean<F, Fut>(
    label: &str,
    max_other_cores: f64,
    retries: usize,
    mut measure: F,
) -> anyhow::Result<Value>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Value>>,
{
    let mut attempt = 0;
    loop {
        let mut row = measure().await?;
        let other = row["cpu"]["other_cores"].as_f64().unwrap_or(0.0);
        if other <= max_other_cores || attempt >= retries {
            row["attempts"] = json!(attempt + 1);
            return Ok(row);
        }
        attempt += 1;
        eprintln!("{label}: {other} cores of foreign load during the window; measuring again ({attempt}/{retries})");
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_merge() {
        let mut a = Lat::new();
        for ms in 1..=100 {
            a.record(Duration::from_millis(ms));
        }
        let mut b = Lat::new();
        b.error("boom");
        b.error("boom");
        a.merge(&b);
        assert_eq!(a.count(), 100);
        assert_eq!(a.errors, 2);
        assert_eq!(a.error_samples, vec!["boom".to_string()]);
        assert!((a.ms(0.5) - 50.0).abs() < 0.1, "p50 {}", a.ms(0.5));
        assert!((a.ms(0.99) - 99.0).abs() < 0.1, "p99 {}", a.ms(0.99));
    }

    #[test]
    fn median_of_odd_even_and_empty() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[]), None);
    }
}
