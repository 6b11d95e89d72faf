//! Relay metrics, registered into the server's Prometheus registry.

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug)]
pub struct TurnMetrics {
    pub allocations_active: IntGauge,
    pub allocations_created: IntCounter,
    pub allocation_failures: IntCounterVec,
    pub auth_failures: IntCounter,
    pub permission_denied: IntCounter,
    pub relayed_bytes: IntCounterVec,
    pub relayed_packets: IntCounterVec,
    pub dropped: IntCounterVec,
}

impl TurnMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<TurnMetrics> {
        fn reg<C: prometheus::core::Collector + Clone + 'static>(
            registry: &Registry,
            c: C,
        ) -> prometheus::Result<C> {
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        }
        let metrics = TurnMetrics {
            allocations_active: reg(
                registry,
                IntGauge::new(
                    "switchboard_turn_allocations_active",
                    "TURN allocations alive",
                )?,
            )?,
            allocations_created: reg(
                registry,
                IntCounter::new(
                    "switchboard_turn_allocations_created_total",
                    "TURN allocations made",
                )?,
            )?,
            allocation_failures: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "switchboard_turn_allocation_failures_total",
                        "Allocate requests refused, by reason",
                    ),
                    &["reason"],
                )?,
            )?,
            auth_failures: reg(
                registry,
                IntCounter::new(
                    "switchboard_turn_auth_failures_total",
                    "Requests refused 401 by the credential checks",
                )?,
            )?,
            permission_denied: reg(
                registry,
                IntCounter::new(
                    "switchboard_turn_permission_denied_total",
                    "Permissions, channels and packets refused by the peer rules",
                )?,
            )?,
            relayed_bytes: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "switchboard_turn_relayed_bytes_total",
                        "Payload bytes relayed",
                    ),
                    &["direction"],
                )?,
            )?,
            relayed_packets: reg(
                registry,
                IntCounterVec::new(
                    Opts::new("switchboard_turn_relayed_packets_total", "Packets relayed"),
                    &["direction"],
                )?,
            )?,
            dropped: reg(
                registry,
                IntCounterVec::new(
                    Opts::new(
                        "switchboard_turn_dropped_total",
                        "Packets dropped by the relay, by reason",
                    ),
                    &["reason"],
                )?,
            )?,
        };
        // At 0 from the start, so an alert's ratio reads 0, not nothing.
        for reason in ALLOCATION_FAILURE_REASONS {
            metrics.allocation_failures.with_label_values(&[reason]);
        }
        for direction in ["to_peer", "to_client"] {
            metrics.relayed_bytes.with_label_values(&[direction]);
            metrics.relayed_packets.with_label_values(&[direction]);
        }
        for reason in [
            "bandwidth",
            "unauthenticated_over_budget",
            "stream_clients_full",
            "stream_unauthenticated",
            "stream_client_not_reading",
        ] {
            metrics.dropped.with_label_values(&[reason]);
        }
        Ok(metrics)
    }
}

/// Every `reason` of `switchboard_turn_allocation_failures_total`: the
/// username expired or is malformed, a wrong password, a transport other
/// than UDP, the user's own quota, the relay's capacity, no relay socket.
pub const ALLOCATION_FAILURE_REASONS: [&str; 7] = [
    "expired",
    "bad_username",
    "bad_password",
    "transport",
    "user_quota",
    "capacity",
    "socket",
];
