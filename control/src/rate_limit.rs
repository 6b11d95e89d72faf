//! Token buckets keyed by caller: how the API says "slow down" (429 with
//! `Retry-After`). Time is an input, so the buckets are tested without a clock.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys beyond this trigger a sweep of idle (full) buckets, so a flood of
/// distinct callers cannot grow the map without bound.
const SWEEP_AT: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Requests allowed per `per`.
    pub count: u32,
    pub per: Duration,
}

impl Rate {
    pub fn per_minute(count: u32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(60),
        }
    }

    pub fn per_second(count: u32) -> Rate {
        Rate {
            count,
            per: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// One rate for many keys. A burst of `count` is allowed, refilled evenly.
pub struct Limiter {
    rate: Rate,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl Limiter {
    pub fn new(rate: Rate) -> Limiter {
        Limiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn per_token(&self) -> Duration {
        self.rate.per / self.rate.count.max(1)
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(self.rate.count.max(1));
        let refill_per_sec = capacity / self.rate.per.as_secs_f64();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= SWEEP_AT {
            buckets.retain(|_, b| {
                let idle = now.saturating_duration_since(b.last).as_secs_f64();
                b.tokens + idle * refill_per_sec < capacity
            });
        }
        let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * refill_per_sec).min(capacity);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let missing = 1.0 - bucket.tokens;
            Err(self
                .per_token()
                .mul_f64(missing)
                .max(Duration::from_millis(1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refill_then_retry_after() {
        let l = Limiter::new(Rate::per_minute(3));
        let t0 = Instant::now();
        for _ in 0..3 {
            l.check("alice", t0).unwrap();
        }
        let wait = l.check("alice", t0).unwrap_err();
        assert_eq!(wait, Duration::from_secs(20));
        // Another key is not affected.
        l.check("bob", t0).unwrap();
        l.check("alice", t0 + Duration::from_secs(20)).unwrap();
        assert!(l.check("alice", t0 + Duration::from_secs(20)).is_err());
    }

    #[test]
    fn idle_keys_are_swept() {
        let l = Limiter::new(Rate::per_second(10));
        let t0 = Instant::now();
        for i in 0..SWEEP_AT {
            l.check(&format!("k{i}"), t0).unwrap();
        }
        l.check("late", t0 + Duration::from_secs(5)).unwrap();
        assert!(l.buckets.lock().unwrap().len() < 10);
    }
}
