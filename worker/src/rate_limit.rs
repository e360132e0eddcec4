//! Per-caller token buckets in IDs per second (docs/design.md "Liveness"): one greedy caller
//! cannot use up a worker's sequence space for everyone. Time comes from the worker's
//! [`Clock`], so tests drive it by hand.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::{Clock, MonoTime};
use crate::limits::{
    DEFAULT_RATE_LIMIT_BURST, DEFAULT_RATE_LIMIT_IDS_PER_SEC, MAX_BATCH_COUNT, MAX_RATE_LIMITED_CALLERS,
};

/// The limit every caller gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Sustained IDs per second per caller; 0 turns rate limiting off.
    pub ids_per_sec: u64,
    /// IDs a caller may take at once after being idle.
    pub burst: u64,
}

impl Default for RateLimitConfig {
    fn default() -> RateLimitConfig {
        RateLimitConfig { ids_per_sec: DEFAULT_RATE_LIMIT_IDS_PER_SEC, burst: DEFAULT_RATE_LIMIT_BURST }
    }
}

/// A limit that could never admit some valid request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("--rate-limit-burst {burst} is below the largest batch ({MAX_BATCH_COUNT}), which could then never be served")]
pub struct RateLimitConfigError {
    pub burst: u64,
}

impl RateLimitConfig {
    pub fn validate(&self) -> Result<(), RateLimitConfigError> {
        if self.ids_per_sec > 0 && self.burst < u64::from(MAX_BATCH_COUNT) {
            return Err(RateLimitConfigError { burst: self.burst });
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    refilled_at: MonoTime,
}

/// Token buckets of every recent caller.
pub struct RateLimiter {
    config: RateLimitConfig,
    clock: Arc<dyn Clock>,
    /// At most [`MAX_RATE_LIMITED_CALLERS`] entries.
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter").field("config", &self.config).finish()
    }
}

impl RateLimiter {
    pub fn new(config: RateLimitConfig, clock: Arc<dyn Clock>) -> Result<RateLimiter, RateLimitConfigError> {
        config.validate()?;
        Ok(RateLimiter { config, clock, buckets: Mutex::new(HashMap::new()) })
    }

    /// Take `cost` IDs from `caller`'s bucket, or say how long until it could.
    pub fn admit(&self, caller: &str, cost: u64) -> Result<(), Duration> {
        if self.config.ids_per_sec == 0 {
            return Ok(());
        }
        let now = self.clock.mono();
        let rate = self.config.ids_per_sec as f64;
        let burst = self.config.burst as f64;
        // A panic while holding this lock can only come from HashMap itself.
        let mut buckets = self.buckets.lock().expect("rate limiter lock poisoned");
        if !buckets.contains_key(caller) && buckets.len() >= MAX_RATE_LIMITED_CALLERS {
            evict_idlest(&mut buckets);
        }
        let bucket = buckets.entry(caller.to_string()).or_insert(Bucket { tokens: burst, refilled_at: now });
        let elapsed = now.duration_since(bucket.refilled_at).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
        bucket.refilled_at = now;
        let cost = cost as f64;
        if bucket.tokens >= cost {
            bucket.tokens -= cost;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((cost - bucket.tokens) / rate))
        }
    }
}

/// Drop the caller idle longest: it has refilled the most, so forgetting it (a new bucket
/// starts full) gives it the least it did not already have.
fn evict_idlest(buckets: &mut HashMap<String, Bucket>) {
    if let Some(key) = buckets.iter().min_by_key(|(_, b)| b.refilled_at).map(|(k, _)| k.clone()) {
        buckets.remove(&key);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::clock::ManualClock;

    /// Goal: a caller gets its burst, is then refused with a retry hint that is exactly the
    /// refill time, and callers do not share buckets.
    #[test]
    fn buckets_refill_per_caller() {
        let clock = Arc::new(ManualClock::new(0));
        let limiter = RateLimiter::new(RateLimitConfig { ids_per_sec: 1_000, burst: 100_000 }, clock.clone()).unwrap();
        assert_eq!(limiter.admit("a", 100_000), Ok(()));
        assert_eq!(limiter.admit("a", 500), Err(Duration::from_millis(500)));
        assert_eq!(limiter.admit("b", 1), Ok(()), "b paid for a");
        clock.advance(Duration::from_millis(500));
        assert_eq!(limiter.admit("a", 500), Ok(()));
        clock.advance(Duration::from_secs(3_600));
        assert_eq!(limiter.admit("a", 100_000), Ok(()), "refill beyond the burst");
        assert_eq!(limiter.admit("a", 1), Err(Duration::from_millis(1)));
    }

    /// Goal: 0 disables the limit; a burst below one maximal batch is refused; the caller
    /// table stays bounded however many callers appear.
    #[test]
    fn disabled_refused_and_bounded() {
        let clock = Arc::new(ManualClock::new(0));
        let off = RateLimiter::new(RateLimitConfig { ids_per_sec: 0, burst: 0 }, clock.clone()).unwrap();
        assert_eq!(off.admit("x", u64::MAX), Ok(()));
        assert!(RateLimiter::new(RateLimitConfig { ids_per_sec: 10, burst: 10 }, clock.clone()).is_err());
        let limiter = RateLimiter::new(RateLimitConfig::default(), clock.clone()).unwrap();
        for i in 0..MAX_RATE_LIMITED_CALLERS + 50 {
            clock.advance(Duration::from_micros(1));
            limiter.admit(&format!("caller-{i}"), 1).unwrap();
        }
        assert_eq!(limiter.buckets.lock().unwrap().len(), MAX_RATE_LIMITED_CALLERS);
        assert!(!limiter.buckets.lock().unwrap().contains_key("caller-0"), "the idlest caller was kept");
    }
}
