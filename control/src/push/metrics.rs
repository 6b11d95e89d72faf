//! Push metrics, registered into the server's Prometheus registry. Labels
//! are bounded: provider, platform, kind and provider reasons passed through
//! `reason_label`.

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

pub struct PushMetrics {
    /// Requests made to a provider (each attempt).
    pub sent: IntCounterVec,
    /// Pushes the provider accepted.
    pub delivered: IntCounterVec,
    /// Pushes given up on, by why.
    pub failed: IntCounterVec,
    pub retried: IntCounterVec,
    /// Tokens forgotten because the provider said they are dead.
    pub tokens_removed: IntCounterVec,
    /// From the ringer asking to the provider accepting.
    pub latency: HistogramVec,
}

fn counter(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> prometheus::Result<IntCounterVec> {
    let c = IntCounterVec::new(Opts::new(name, help), labels)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

impl PushMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<PushMetrics> {
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "switchboard_push_latency_seconds",
                "From the push being queued to the provider accepting it",
            )
            .buckets(vec![
                0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["provider"],
        )?;
        registry.register(Box::new(latency.clone()))?;
        Ok(PushMetrics {
            sent: counter(
                registry,
                "switchboard_push_sent_total",
                "Push requests made, by provider, platform and kind (ring or cancel)",
                &["provider", "platform", "kind"],
            )?,
            delivered: counter(
                registry,
                "switchboard_push_delivered_total",
                "Pushes the provider accepted, by provider, platform and kind",
                &["provider", "platform", "kind"],
            )?,
            failed: counter(
                registry,
                "switchboard_push_failed_total",
                "Pushes given up on, by provider, platform and reason",
                &["provider", "platform", "reason"],
            )?,
            retried: counter(
                registry,
                "switchboard_push_retried_total",
                "Push attempts retried, by provider and reason",
                &["provider", "reason"],
            )?,
            tokens_removed: counter(
                registry,
                "switchboard_push_tokens_removed_total",
                "Push tokens forgotten because the provider called them dead",
                &["provider"],
            )?,
            latency,
        })
    }
}
