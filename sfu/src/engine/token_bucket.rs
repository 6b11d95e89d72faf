//! A token bucket with the time as an input: signaling messages per socket
//! (`server::session`), data-channel messages and bytes per sender
//! (`data.rs`).

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// Full at `now`: a burst of `burst`, then `per_second`.
    pub fn new(per_second: f64, burst: f64, now: Instant) -> TokenBucket {
        TokenBucket {
            per_second,
            burst,
            tokens: burst,
            last: now,
        }
    }

    /// Takes `cost` tokens if the bucket holds them; takes nothing if not.
    pub fn take(&mut self, cost: f64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let t0 = crate::engine::tests::start();
        let mut bucket = TokenBucket::new(10.0, 20.0, t0);
        assert_eq!((0..100).filter(|_| bucket.take(1.0, t0)).count(), 20);
        assert!(!bucket.take(1.0, t0 + Duration::from_millis(50)));
        assert!(bucket.take(1.0, t0 + Duration::from_millis(150)));
    }

    #[test]
    fn a_cost_it_cannot_pay_takes_nothing() {
        let t0 = crate::engine::tests::start();
        let mut bucket = TokenBucket::new(100.0, 100.0, t0);
        assert!(!bucket.take(101.0, t0));
        assert!(bucket.take(100.0, t0));
        assert!(!bucket.take(1.0, t0));
    }
}
