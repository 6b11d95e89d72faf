//! Token buckets keyed by caller: how the API says "slow down" (429 with
//! `Retry-After`). Time is an input, so the buckets are tested without a clock.
//! A limiter is local to the node, or [`Limiter::shared`] by every node of a
//! cluster (its buckets in Redis: `store::RedisStore`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Keys beyond this trigger a sweep of idle (full) buckets, so a flood of
/// distinct callers cannot grow the map without bound...
const SWEEP_AT: usize = 10_000;
/// ...at most this often: a sweep walks every key, and a map that holds
/// `SWEEP_AT` live keys must not be walked on every check (that stalled the
/// API's async workers for seconds).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

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

/// Buckets every node shares (a cluster). The same rule as the local
/// buckets, kept as GCRA's "theoretical arrival time" per key, on the wall
/// clock (Unix ms: nodes share no `Instant`).
pub trait SharedBuckets: Send + Sync {
    /// Takes one token from each of `keys` in the limiter named `name`, or
    /// none and says how long until the scarcest has one.
    fn take(
        &self,
        name: &str,
        keys: &[&str],
        rate: Rate,
        now_ms: u64,
    ) -> Result<Result<(), Duration>, crate::store::StoreError>;
    fn give_back(
        &self,
        name: &str,
        key: &str,
        rate: Rate,
        now_ms: u64,
    ) -> Result<(), crate::store::StoreError>;
}

/// One rate for many keys. A burst of `count` is allowed, refilled evenly.
pub struct Limiter {
    rate: Rate,
    buckets: Mutex<Buckets>,
    /// Set: the buckets live there (by this name), not in `buckets`.
    shared: Option<(String, std::sync::Arc<dyn SharedBuckets>)>,
}

#[derive(Default)]
struct Buckets {
    by_key: HashMap<String, Bucket>,
    last_sweep: Option<Instant>,
}

impl Limiter {
    pub fn new(rate: Rate) -> Limiter {
        Limiter {
            rate,
            buckets: Mutex::new(Buckets::default()),
            shared: None,
        }
    }

    /// A limiter whose buckets every node shares. Blocking (a round trip
    /// to the store): call it off the async threads. When the store fails,
    /// the request is let through (and logged): the write it guards fails
    /// on the same store anyway.
    pub fn shared(rate: Rate, name: &str, buckets: std::sync::Arc<dyn SharedBuckets>) -> Limiter {
        Limiter {
            shared: Some((name.to_string(), buckets)),
            ..Limiter::new(rate)
        }
    }

    /// Whether checks are a round trip to the shared store.
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    fn per_token(&self) -> Duration {
        self.rate.per / self.rate.count.max(1)
    }

    fn capacity(&self) -> f64 {
        f64::from(self.rate.count.max(1))
    }

    fn refill_per_sec(&self) -> f64 {
        self.capacity() / self.rate.per.as_secs_f64()
    }

    fn lock(&self, now: Instant) -> std::sync::MutexGuard<'_, Buckets> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        let due = buckets
            .last_sweep
            .is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_EVERY);
        if buckets.by_key.len() >= SWEEP_AT && due {
            let (capacity, refill_per_sec) = (self.capacity(), self.refill_per_sec());
            buckets.by_key.retain(|_, b| {
                let idle = now.saturating_duration_since(b.last).as_secs_f64();
                b.tokens + idle * refill_per_sec < capacity
            });
            buckets.last_sweep = Some(now);
        }
        buckets
    }

    /// `key`'s bucket, refilled up to `now`.
    fn refilled<'a>(&self, buckets: &'a mut Buckets, key: &str, now: Instant) -> &'a mut Bucket {
        let (capacity, refill_per_sec) = (self.capacity(), self.refill_per_sec());
        let bucket = buckets.by_key.entry(key.to_string()).or_insert(Bucket {
            tokens: capacity,
            last: now,
        });
        let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * refill_per_sec).min(capacity);
        bucket.last = now;
        bucket
    }

    fn wait_for(&self, tokens: f64) -> Duration {
        let missing = 1.0 - tokens;
        self.per_token()
            .mul_f64(missing)
            .max(Duration::from_millis(1))
    }

    /// Takes one token for `key`, or says how long until one is available.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        self.check_all(&[key], now)
    }

    /// Takes one token for each of `keys` (distinct), or none of them and
    /// says how long until the scarcest has one.
    pub fn check_all(&self, keys: &[&str], now: Instant) -> Result<(), Duration> {
        if let Some((name, shared)) = &self.shared {
            return shared
                .take(name, keys, self.rate, crate::unix_millis())
                .unwrap_or_else(|e| {
                    tracing::warn!(limiter = %name, error = %e, "shared rate limit unavailable: allowed");
                    Ok(())
                });
        }
        let mut buckets = self.lock(now);
        let mut wait = None;
        for key in keys {
            let tokens = self.refilled(&mut buckets, key, now).tokens;
            if tokens < 1.0 {
                wait = wait.max(Some(self.wait_for(tokens)));
            }
        }
        if let Some(wait) = wait {
            return Err(wait);
        }
        for key in keys {
            self.refilled(&mut buckets, key, now).tokens -= 1.0;
        }
        Ok(())
    }

    /// Gives back a token taken for work that did not happen (a request
    /// refused after the check), so it is charged only for what was done.
    pub fn refund(&self, key: &str, now: Instant) {
        if let Some((name, shared)) = &self.shared {
            if let Err(e) = shared.give_back(name, key, self.rate, crate::unix_millis()) {
                tracing::warn!(limiter = %name, error = %e, "shared rate limit: token not given back");
            }
            return;
        }
        let capacity = self.capacity();
        let mut buckets = self.lock(now);
        let bucket = self.refilled(&mut buckets, key, now);
        bucket.tokens = (bucket.tokens + 1.0).min(capacity);
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
        assert!(l.buckets.lock().unwrap().by_key.len() < 10);
    }

    #[test]
    fn a_full_map_of_live_keys_is_swept_once_per_interval() {
        let l = Limiter::new(Rate::per_minute(1));
        let t0 = Instant::now();
        for i in 0..SWEEP_AT {
            l.check(&format!("k{i}"), t0).unwrap();
        }
        l.check("a", t0).unwrap();
        let swept = l.buckets.lock().unwrap().last_sweep;
        assert_eq!(swept, Some(t0), "the first check over the limit sweeps");
        // Every key is still live (empty bucket): nothing removed, and the
        // next checks within SWEEP_EVERY do not walk the map again.
        l.check("b", t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(l.buckets.lock().unwrap().last_sweep, Some(t0));
        l.check("c", t0 + SWEEP_EVERY).unwrap();
        assert_eq!(l.buckets.lock().unwrap().last_sweep, Some(t0 + SWEEP_EVERY));
    }

    #[test]
    fn all_or_nothing_and_refunds() {
        let l = Limiter::new(Rate::per_minute(1));
        let t0 = Instant::now();
        l.check("bob", t0).unwrap();
        // bob has no token: carol is not charged either.
        assert!(l.check_all(&["carol", "bob"], t0).is_err());
        l.check("carol", t0).unwrap();
        l.refund("carol", t0);
        l.check("carol", t0).unwrap();
        assert!(l.check("carol", t0).is_err());
    }
}
