//! Prometheus metrics, registered once and shared by the shell's tasks.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Steps shorter than this are not observed (they are the per-packet hot
/// path; a histogram update per datagram would cost more than it tells).
pub const SLOW_ENGINE_STEP: std::time::Duration = std::time::Duration::from_millis(5);

pub struct Metrics {
    pub registry: Registry,
    pub rooms: IntGaugeVec,
    pub participants: IntGaugeVec,
    pub tracks: IntGaugeVec,
    pub udp_packets_in: IntCounter,
    pub udp_bytes_in: IntCounter,
    pub udp_packets_out: IntCounter,
    pub udp_bytes_out: IntCounter,
    pub udp_dropped: IntCounterVec,
    pub rtp_forwarded: IntCounter,
    pub keyframe_requests: IntCounter,
    pub remb_relayed: IntCounter,
    pub ice_connected: IntCounter,
    pub ice_failed: IntCounter,
    pub join_to_first_forward: Histogram,
    pub signaling_connections: IntGauge,
    pub signaling_errors: IntCounterVec,
    /// Panics contained by scope: `participant` (one participant removed) or
    /// `shard` (an engine restarted, its participants told to rejoin).
    pub engine_panics: IntCounterVec,
    /// Engine steps that took at least [`SLOW_ENGINE_STEP`], by what woke
    /// the shard: while one runs, nothing on that shard is forwarded, so
    /// this is the server's own share of a stream's gap.
    pub engine_slow_steps: HistogramVec,
    /// The CPU time of slow steps other than datagrams (those are not
    /// timed on the CPU clock): a step slow in wall time but not here
    /// waited for a busy machine, not for the engine's work.
    pub engine_slow_step_cpu: HistogramVec,
    /// Gaps in published streams as the engine received them (see
    /// `Engine::take_stream_gaps`), by kind.
    pub stream_gaps: HistogramVec,
    /// Loss and jitter of each stream from RTCP receiver reports (every
    /// `STATS_INTERVAL`), by `link` (uplink: a publisher to us, downlink:
    /// us to a subscriber) and `kind`.
    pub stream_loss: HistogramVec,
    pub stream_jitter: HistogramVec,
    /// Signaling sessions cut off for not reading (outbox full or a write
    /// stalled).
    pub signaling_slow_consumers: IntCounter,
    /// HTTP connections closed at accept: over the total or per-IP cap.
    pub http_refused: IntCounterVec,
    /// Subscribers moved between simulcast layers, `up` or `down`.
    pub layer_switches: IntCounterVec,
    pub temporal_switches: IntCounterVec,
    pub srtp_keys: IntCounterVec,
    pub own_egress: IntCounterVec,
    /// Data-channel messages: written by members (`in`), refused, and the
    /// copies relayed (`out`); copies not written, by reason.
    pub data_messages: IntCounterVec,
    pub data_dropped: IntCounterVec,
    /// ICE/TCP connections: open now, and those closed at once, by reason.
    pub ice_tcp_connections: IntGauge,
    pub ice_tcp_refused: IntCounterVec,
    /// The caps in force, after fitting them to the open-file limit.
    pub http_connection_limit: IntGaugeVec,
    pub open_files_limit: IntGauge,
    /// Participant connected / removed signals waiting for the store (Redis
    /// down), and those dropped because too many waited.
    pub media_signals_waiting: IntGauge,
    pub media_signals_dropped: IntCounter,
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let counter_vec = |name: &str, help: &str, label: &str| {
            let c = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let gauge_vec = |name: &str, help: &str, label: &str| {
            let g = IntGaugeVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let shard_gauge = |name: &str, help: &str| gauge_vec(name, help, "shard");
        let join_to_first_forward = Histogram::with_opts(
            HistogramOpts::new(
                "switchboard_join_to_first_forward_seconds",
                "Time from join to the first media packet forwarded to the participant",
            )
            .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .expect("valid metric");
        registry
            .register(Box::new(join_to_first_forward.clone()))
            .expect("unique metric");
        let signaling_connections = IntGauge::new(
            "switchboard_signaling_connections",
            "Open signaling WebSockets",
        )
        .expect("valid metric");
        registry
            .register(Box::new(signaling_connections.clone()))
            .expect("unique metric");
        let engine_panics = counter_vec(
            "switchboard_engine_panics_total",
            "Panics contained in the media engine, by what was lost: one participant or a whole shard (restarted)",
            "scope",
        );
        // Both series exist from the start, so an alert on their rate works.
        for scope in ["participant", "shard"] {
            engine_panics.with_label_values(&[scope]);
        }
        let histogram_vec = |name: &str, help: &str, buckets: &[f64], label: &str| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                &[label],
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let step_buckets = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
        let engine_slow_steps = histogram_vec(
            "switchboard_engine_slow_steps_seconds",
            "Engine steps of 5 ms or more (the shard forwards nothing meanwhile), by what woke it",
            &step_buckets,
            "woke_by",
        );
        let engine_slow_step_cpu = histogram_vec(
            "switchboard_engine_slow_step_cpu_seconds",
            "CPU time of engine steps using 5 ms or more, datagrams not measured, by what woke the shard",
            &step_buckets,
            "woke_by",
        );
        let stream_gaps = histogram_vec(
            "switchboard_stream_gaps_seconds",
            "Pauses of 250 ms or more between two packets of an unmuted published track, as the engine received them, by kind",
            &[0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0],
            "kind",
        );
        let link_histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets.to_vec()),
                &["link", "kind"],
            )
            .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            // Every series from the start: an alert on their rate works.
            for link in ["uplink", "downlink"] {
                for kind in ["audio", "video"] {
                    h.with_label_values(&[link, kind]);
                }
            }
            h
        };
        // The buckets of the devices' own reports
        // (`switchboard_client_packet_loss_ratio`, `_jitter_seconds`), so
        // the two views compare.
        let stream_loss = link_histogram(
            "switchboard_sfu_packet_loss_ratio",
            "Fraction of a stream's packets lost between two RTCP receiver reports, measured at the SFU, by link (uplink: publisher to SFU; downlink: SFU to subscriber) and kind",
            &[0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5],
        );
        let stream_jitter = link_histogram(
            "switchboard_sfu_jitter_seconds",
            "Interarrival jitter of a stream from RTCP receiver reports at the SFU, by link and kind",
            &[0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5],
        );
        let metrics = Metrics {
            rooms: shard_gauge("switchboard_rooms", "Rooms with at least one participant"),
            participants: shard_gauge("switchboard_participants", "Participants in rooms"),
            tracks: shard_gauge("switchboard_tracks", "Published tracks"),
            udp_packets_in: counter("switchboard_udp_packets_in_total", "Datagrams received"),
            udp_bytes_in: counter("switchboard_udp_bytes_in_total", "Bytes received"),
            udp_packets_out: counter("switchboard_udp_packets_out_total", "Datagrams sent"),
            udp_bytes_out: counter("switchboard_udp_bytes_out_total", "Bytes sent"),
            udp_dropped: counter_vec(
                "switchboard_udp_dropped_total",
                "Datagrams (and ICE/TCP frames) dropped before or in the engine",
                "reason",
            ),
            rtp_forwarded: counter(
                "switchboard_rtp_forwarded_total",
                "RTP packets forwarded to subscribers",
            ),
            keyframe_requests: counter(
                "switchboard_keyframe_requests_total",
                "Keyframe requests sent to publishers",
            ),
            remb_relayed: counter(
                "switchboard_remb_relayed_total",
                "Receivers' bandwidth estimates (REMB) passed on to the sender of a 1:1 call",
            ),
            ice_connected: counter(
                "switchboard_ice_connected_total",
                "Participants whose media connected (the first of their connections); with switchboard_ice_failed_total, the ICE failure ratio",
            ),
            ice_failed: counter(
                "switchboard_ice_failed_total",
                "Participants removed without a connection ever coming up",
            ),
            join_to_first_forward,
            signaling_connections,
            signaling_errors: counter_vec(
                "switchboard_signaling_errors_total",
                "Error messages sent to clients",
                "code",
            ),
            engine_panics,
            engine_slow_steps,
            engine_slow_step_cpu,
            stream_gaps,
            stream_loss,
            stream_jitter,
            signaling_slow_consumers: counter(
                "switchboard_signaling_slow_consumers_total",
                "Signaling connections closed because the client did not read (outbox full or a write stalled)",
            ),
            http_connection_limit: gauge_vec(
                "switchboard_http_connections_limit",
                "HTTP connections allowed at once, in total and per client IP",
                "cap",
            ),
            open_files_limit: gauge(
                "switchboard_open_files_limit",
                "The process's soft open-file limit after raising it to the hard one",
            ),
            media_signals_waiting: gauge(
                "switchboard_media_signals_waiting",
                "Participant connected / removed signals from the SFU waiting for the store to answer (replayed in order when it does)",
            ),
            media_signals_dropped: counter(
                "switchboard_media_signals_dropped_total",
                "Participant connected / removed signals dropped because too many waited for the store",
            ),
            http_refused: counter_vec(
                "switchboard_http_connections_refused_total",
                "HTTP connections closed at accept, by the cap they hit (total, per_ip)",
                "cap",
            ),
            layer_switches: counter_vec(
                "switchboard_layer_switches_total",
                "Subscribers moved to a higher (up) or lower (down) simulcast layer, at a keyframe of it",
                "direction",
            ),
            temporal_switches: counter_vec(
                "switchboard_temporal_layer_switches_total",
                "Subscribers that started (up, at a layer sync frame) or stopped (down) receiving a VP8 temporal layer",
                "direction",
            ),
            srtp_keys: counter_vec(
                "switchboard_srtp_keys_captured_total",
                "Subscriber connections up, by the SRTP profile whose keys the server captured of their DTLS handshake (none: no keys seen)",
                "profile",
            ),
            own_egress: counter_vec(
                "switchboard_own_egress_packets_total",
                "Own SRTP egress: RTP copies sealed and sent (rtp), sent again for a NACK (resent), sender-report datagrams (sender_report), copies not sent (dropped: no keys or route yet)",
                "kind",
            ),
            data_messages: counter_vec(
                "switchboard_data_messages_total",
                "Data-channel messages: written by members (in), refused by the server (refused), copies written to recipients (out)",
                "direction",
            ),
            data_dropped: counter_vec(
                "switchboard_data_dropped_total",
                "Data-channel copies not written to a recipient, by reason (not_open: its channel is not open; receiver_slow: its 128 KiB SCTP send buffer is full)",
                "reason",
            ),
            ice_tcp_connections: gauge(
                "switchboard_ice_tcp_connections",
                "ICE/TCP connections open (clients whose UDP is blocked)",
            ),
            ice_tcp_refused: counter_vec(
                "switchboard_ice_tcp_refused_total",
                "ICE/TCP connections closed before carrying media, by reason (total, per_ip, no_stun: no STUN naming one of our ufrags first)",
                "reason",
            ),
            registry,
        };
        // The bounded label values at 0 from the start: a panel or an
        // alert then reads 0 rather than nothing before the first event.
        for reason in [
            "engine_busy",
            "unroutable",
            "unusable",
            "send_failed",
            "tcp_outbox_full",
        ] {
            metrics.udp_dropped.with_label_values(&[reason]);
        }
        for cap in ["total", "per_ip"] {
            metrics.http_refused.with_label_values(&[cap]);
        }
        for direction in ["up", "down"] {
            metrics.layer_switches.with_label_values(&[direction]);
            metrics.temporal_switches.with_label_values(&[direction]);
        }
        for profile in crate::engine::SRTP_KEY_LABELS {
            metrics.srtp_keys.with_label_values(&[profile]);
        }
        for kind in ["rtp", "resent", "sender_report", "dropped"] {
            metrics.own_egress.with_label_values(&[kind]);
        }
        for direction in ["in", "refused", "out"] {
            metrics.data_messages.with_label_values(&[direction]);
        }
        for drop in crate::engine::DataDrop::ALL {
            metrics.data_dropped.with_label_values(&[drop.label()]);
        }
        for reason in ["total", "per_ip", "no_stun"] {
            metrics.ice_tcp_refused.with_label_values(&[reason]);
        }
        for kind in ["audio", "video"] {
            metrics.stream_gaps.with_label_values(&[kind]);
        }
        for code in signaling::ErrorCode::ALL {
            metrics.signaling_errors.with_label_values(&[code.as_str()]);
        }
        // Commands label a step by their own name; these three are fixed.
        for woke_by in ["datagram", "timeout", "control"] {
            metrics.engine_slow_steps.with_label_values(&[woke_by]);
            metrics.engine_slow_step_cpu.with_label_values(&[woke_by]);
        }
        metrics
    }

    pub fn render(&self) -> String {
        TextEncoder::new()
            .encode_to_string(&self.registry.gather())
            .unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics::new()
    }
}
