//! What devices report about their calls (`POST /v1/calls/{id}/reports`):
//! when the first audio and video played, the user answering on the
//! system UI, CallKit / Telecom refusals, media failures and periodic
//! quality from the device's WebRTC stats.
//!
//! Reports are telemetry, never call state: they feed metrics and logs and
//! change nothing else. Durations are measured on the device's monotonic
//! clock (`afterAcceptMs`), never as wall-clock timestamps: phone clocks
//! drift, and a skewed clock would turn into a skewed metric.
//!
//! Every label a report can set is bounded: codes and reasons outside the
//! lists below count as `other` (the raw value stays in the log line).

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde::Deserialize;
use serde_json::Value;

use crate::device::Platform;

/// Reports in one request, at most.
pub const MAX_REPORTS_PER_REQUEST: usize = 20;
/// Durations beyond this are not a slow call but a broken clock or client.
const MAX_DURATION_MS: u64 = 10 * 60 * 1000;
/// Jitter and round-trip times beyond this are nonsense.
const MAX_DELAY_MS: f64 = 60_000.0;

/// One report, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    /// The first decoded audio frame played: time to first audio (TTFA),
    /// from the user's accept (callee) or the callee's answer (caller).
    FirstAudio {
        after_accept_ms: u64,
    },
    FirstVideo {
        after_accept_ms: u64,
    },
    /// The user answered on the system UI, this long after it appeared.
    AnsweredOnDevice {
        after_ui_shown_ms: u64,
    },
    /// The system call UI refused or failed (CallKit on iOS, Telecom on
    /// Android): `code` is the platform's error, in snake case.
    CallUiError {
        system: CallUiSystem,
        code: String,
    },
    /// The device gave up on the call's media.
    MediaFailed {
        reason: String,
    },
    /// The device's view of its inbound media since its last report.
    Quality {
        loss_ratio: f64,
        jitter_ms: f64,
        rtt_ms: Option<f64>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallUiSystem {
    CallKit,
    Telecom,
}

impl CallUiSystem {
    fn as_str(self) -> &'static str {
        match self {
            CallUiSystem::CallKit => "callkit",
            CallUiSystem::Telecom => "telecom",
        }
    }
}

/// `CXErrorCodeIncomingCallError` and `CXErrorCodeRequestTransactionError`
/// in snake case.
pub const CALLKIT_CODES: &[&str] = &[
    "unknown",
    "unentitled",
    "call_uuid_already_exists",
    "filtered_by_do_not_disturb",
    "filtered_by_block_list",
    "unknown_call_provider",
    "empty_transaction",
    "unknown_call_uuid",
    "invalid_action",
    "maximum_call_groups_reached",
    "call_is_protected",
    // The adapter's own: the notification that rings without CallKit
    // (a region where CallKit is off) could not be posted.
    "notification_not_added",
];

/// `androidx.core.telecom.CallException` error codes in snake case, and
/// the platform-side refusals the adapter sees before Telecom answers.
pub const TELECOM_CODES: &[&str] = &[
    "error_unknown",
    "error_cannot_hold_current_active_call",
    "error_call_is_not_being_tracked",
    "error_call_cannot_be_set_to_active",
    "error_call_not_permitted_at_present_time",
    "error_operation_timed_out",
    "error_call_does_not_support_hold",
    "error_bluetooth_device_is_null",
    "permission_denied",
    "full_screen_intent_denied",
];

/// Why a device gave up on media.
pub const MEDIA_FAILURE_REASONS: &[&str] = &[
    "ice_failed",
    "dtls_failed",
    "no_microphone",
    "no_camera",
    "audio_session",
    "signaling_lost",
    "join_refused",
    "connect_timeout",
    "media_unavailable",
];

/// Report types as their wire names: the values of the `type` label.
pub const REPORT_TYPES: &[&str] = &[
    "first_audio",
    "first_video",
    "answered_on_device",
    "callkit_error",
    "telecom_error",
    "media_failed",
    "quality",
];

impl Report {
    pub fn type_name(&self) -> &'static str {
        match self {
            Report::FirstAudio { .. } => "first_audio",
            Report::FirstVideo { .. } => "first_video",
            Report::AnsweredOnDevice { .. } => "answered_on_device",
            Report::CallUiError {
                system: CallUiSystem::CallKit,
                ..
            } => "callkit_error",
            Report::CallUiError {
                system: CallUiSystem::Telecom,
                ..
            } => "telecom_error",
            Report::MediaFailed { .. } => "media_failed",
            Report::Quality { .. } => "quality",
        }
    }

    /// Reported once per call and device: a retried request must not count
    /// twice (periodic quality and repeated failures may come again).
    pub fn once_per_call(&self) -> bool {
        matches!(
            self,
            Report::FirstAudio { .. } | Report::FirstVideo { .. } | Report::AnsweredOnDevice { .. }
        )
    }
}

/// A report that is not valid: the request is refused whole (400), so a
/// client bug shows up as errors rather than as quietly skewed metrics.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("report {index}: {problem}")]
pub struct InvalidReport {
    pub index: usize,
    pub problem: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AfterAccept {
    #[serde(rename = "type")]
    _type: String,
    after_accept_ms: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AfterUiShown {
    #[serde(rename = "type")]
    _type: String,
    after_ui_shown_ms: f64,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WithCode {
    #[serde(rename = "type")]
    _type: String,
    code: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WithReason {
    #[serde(rename = "type")]
    _type: String,
    reason: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct QualityBody {
    #[serde(rename = "type")]
    _type: String,
    loss_ratio: f64,
    jitter_ms: f64,
    #[serde(default)]
    rtt_ms: Option<f64>,
}

/// A code or reason: 1-64 characters of `[a-z0-9_]`.
fn valid_code(code: &str) -> bool {
    (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Reads one report. `Ok(None)`: a type this server does not know (a newer
/// client's), skipped rather than refused.
pub fn parse(index: usize, value: &Value) -> Result<Option<Report>, InvalidReport> {
    let invalid = |problem: String| InvalidReport { index, problem };
    let Some(kind) = value.get("type").and_then(Value::as_str) else {
        return Err(invalid(
            "each report is an object with a string `type`".into(),
        ));
    };
    fn read<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, String> {
        serde_json::from_value(value.clone()).map_err(|e| e.to_string())
    }
    // JSON has one number type: `840.0` is the integer 840 (as JSON Schema
    // says), `840.5` is not.
    let duration = |ms: f64| {
        if ms.fract() != 0.0 || !(0.0..=MAX_DURATION_MS as f64).contains(&ms) {
            Err(invalid(format!(
                "durations are whole milliseconds, 0-{MAX_DURATION_MS}"
            )))
        } else {
            Ok(ms as u64)
        }
    };
    let code = |code: String| {
        if valid_code(&code) {
            Ok(code)
        } else {
            Err(invalid(
                "codes and reasons are 1-64 characters of [a-z0-9_]".into(),
            ))
        }
    };
    let report = match kind {
        "first_audio" | "first_video" => {
            let body: AfterAccept = read(value).map_err(invalid)?;
            let after_accept_ms = duration(body.after_accept_ms)?;
            if kind == "first_audio" {
                Report::FirstAudio { after_accept_ms }
            } else {
                Report::FirstVideo { after_accept_ms }
            }
        }
        "answered_on_device" => {
            let body: AfterUiShown = read(value).map_err(invalid)?;
            Report::AnsweredOnDevice {
                after_ui_shown_ms: duration(body.after_ui_shown_ms)?,
            }
        }
        "callkit_error" | "telecom_error" => {
            let body: WithCode = read(value).map_err(invalid)?;
            Report::CallUiError {
                system: if kind == "callkit_error" {
                    CallUiSystem::CallKit
                } else {
                    CallUiSystem::Telecom
                },
                code: code(body.code)?,
            }
        }
        "media_failed" => {
            let body: WithReason = read(value).map_err(invalid)?;
            Report::MediaFailed {
                reason: code(body.reason)?,
            }
        }
        "quality" => {
            if value.get("rttMs").is_some_and(Value::is_null) {
                return Err(invalid("rttMs is a number, or left out".into()));
            }
            let body: QualityBody = read(value).map_err(invalid)?;
            let delay_ok = |ms: f64| (0.0..=MAX_DELAY_MS).contains(&ms);
            if !(0.0..=1.0).contains(&body.loss_ratio)
                || !delay_ok(body.jitter_ms)
                || !body.rtt_ms.is_none_or(delay_ok)
            {
                return Err(invalid(format!(
                    "lossRatio is 0-1; jitterMs and rttMs are 0-{MAX_DELAY_MS}"
                )));
            }
            Report::Quality {
                loss_ratio: body.loss_ratio,
                jitter_ms: body.jitter_ms,
                rtt_ms: body.rtt_ms,
            }
        }
        _ => return Ok(None),
    };
    Ok(Some(report))
}

const PLATFORMS: [Platform; 3] = [Platform::Ios, Platform::Android, Platform::Web];

/// `value` if it is on `known`, else `other`: a label stays bounded
/// whatever a client sends.
fn bounded<'a>(value: &'a str, known: &[&str]) -> &'a str {
    if known.contains(&value) {
        value
    } else {
        "other"
    }
}

/// The metrics reports feed.
pub struct ReportMetrics {
    /// Reports taken, by type and platform (`type="duplicate"`: a
    /// once-per-call report seen again; `type="unknown"`: a newer
    /// client's type, skipped).
    pub received: IntCounterVec,
    pub time_to_first_audio: HistogramVec,
    pub time_to_first_video: HistogramVec,
    pub ui_shown_to_answer: HistogramVec,
    pub call_ui_errors: IntCounterVec,
    pub media_failures: IntCounterVec,
    pub loss: HistogramVec,
    pub jitter: HistogramVec,
    pub rtt: HistogramVec,
}

impl ReportMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<ReportMetrics> {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            let h = HistogramVec::new(
                HistogramOpts::new(name, help).buckets(buckets),
                &["platform"],
            )?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let first_media = vec![0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0];
        let metrics = ReportMetrics {
            received: counter(
                "switchboard_client_reports_total",
                "Reports devices sent about their calls, by type and platform",
                &["type", "platform"],
            )?,
            time_to_first_audio: histogram(
                "switchboard_call_time_to_first_audio_seconds",
                "Device-reported: from accept (the callee's tap, or the caller hearing the answer) to the first decoded audio frame",
                first_media.clone(),
            )?,
            time_to_first_video: histogram(
                "switchboard_call_time_to_first_video_seconds",
                "Device-reported: from accept to the first decoded video frame",
                first_media,
            )?,
            ui_shown_to_answer: histogram(
                "switchboard_call_ui_shown_to_answer_seconds",
                "Device-reported: from the system call UI appearing to the user answering on it",
                vec![1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0],
            )?,
            call_ui_errors: counter(
                "switchboard_call_ui_errors_total",
                "Device-reported CallKit and Telecom failures, by system and error code",
                &["platform", "system", "code"],
            )?,
            media_failures: counter(
                "switchboard_client_media_failures_total",
                "Device-reported media failures, by reason",
                &["platform", "reason"],
            )?,
            loss: histogram(
                "switchboard_client_packet_loss_ratio",
                "Device-reported inbound packet loss per quality report",
                vec![0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5],
            )?,
            jitter: histogram(
                "switchboard_client_jitter_seconds",
                "Device-reported inbound jitter per quality report",
                vec![0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5],
            )?,
            rtt: histogram(
                "switchboard_client_rtt_seconds",
                "Device-reported round-trip time per quality report",
                vec![0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0],
            )?,
        };
        // Every bounded label value at 0 from the start, so rates read 0.
        for platform in PLATFORMS.map(Platform::as_str) {
            for kind in REPORT_TYPES.iter().chain(&["duplicate", "unknown"]) {
                metrics.received.with_label_values(&[kind, platform]);
            }
            for h in [
                &metrics.time_to_first_audio,
                &metrics.time_to_first_video,
                &metrics.ui_shown_to_answer,
                &metrics.loss,
                &metrics.jitter,
                &metrics.rtt,
            ] {
                h.with_label_values(&[platform]);
            }
            for (system, codes) in [("callkit", CALLKIT_CODES), ("telecom", TELECOM_CODES)] {
                for code in codes.iter().chain(&["other"]) {
                    metrics
                        .call_ui_errors
                        .with_label_values(&[platform, system, code]);
                }
            }
            for reason in MEDIA_FAILURE_REASONS.iter().chain(&["other"]) {
                metrics
                    .media_failures
                    .with_label_values(&[platform, reason]);
            }
        }
        Ok(metrics)
    }

    pub fn observe(&self, platform: Platform, report: &Report) {
        let platform = platform.as_str();
        self.received
            .with_label_values(&[report.type_name(), platform])
            .inc();
        let secs = |ms: u64| ms as f64 / 1000.0;
        match report {
            Report::FirstAudio { after_accept_ms } => self
                .time_to_first_audio
                .with_label_values(&[platform])
                .observe(secs(*after_accept_ms)),
            Report::FirstVideo { after_accept_ms } => self
                .time_to_first_video
                .with_label_values(&[platform])
                .observe(secs(*after_accept_ms)),
            Report::AnsweredOnDevice { after_ui_shown_ms } => self
                .ui_shown_to_answer
                .with_label_values(&[platform])
                .observe(secs(*after_ui_shown_ms)),
            Report::CallUiError { system, code } => {
                let known = match system {
                    CallUiSystem::CallKit => CALLKIT_CODES,
                    CallUiSystem::Telecom => TELECOM_CODES,
                };
                self.call_ui_errors
                    .with_label_values(&[platform, system.as_str(), bounded(code, known)])
                    .inc();
            }
            Report::MediaFailed { reason } => self
                .media_failures
                .with_label_values(&[platform, bounded(reason, MEDIA_FAILURE_REASONS)])
                .inc(),
            Report::Quality {
                loss_ratio,
                jitter_ms,
                rtt_ms,
            } => {
                self.loss
                    .with_label_values(&[platform])
                    .observe(*loss_ratio);
                self.jitter
                    .with_label_values(&[platform])
                    .observe(jitter_ms / 1000.0);
                if let Some(rtt) = rtt_ms {
                    self.rtt
                        .with_label_values(&[platform])
                        .observe(rtt / 1000.0);
                }
            }
        }
    }

    /// A report skipped: `duplicate` or `unknown`.
    pub fn skipped(&self, platform: Platform, why: &str) {
        self.received
            .with_label_values(&[why, platform.as_str()])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn each_report_type_reads_from_its_wire_form() {
        let cases = [
            (
                json!({"type": "first_audio", "afterAcceptMs": 840}),
                Report::FirstAudio {
                    after_accept_ms: 840,
                },
            ),
            (
                json!({"type": "first_video", "afterAcceptMs": 1200}),
                Report::FirstVideo {
                    after_accept_ms: 1200,
                },
            ),
            (
                json!({"type": "answered_on_device", "afterUiShownMs": 4000}),
                Report::AnsweredOnDevice {
                    after_ui_shown_ms: 4000,
                },
            ),
            (
                json!({"type": "callkit_error", "code": "filtered_by_do_not_disturb"}),
                Report::CallUiError {
                    system: CallUiSystem::CallKit,
                    code: "filtered_by_do_not_disturb".into(),
                },
            ),
            (
                json!({"type": "telecom_error", "code": "error_unknown"}),
                Report::CallUiError {
                    system: CallUiSystem::Telecom,
                    code: "error_unknown".into(),
                },
            ),
            (
                json!({"type": "media_failed", "reason": "ice_failed"}),
                Report::MediaFailed {
                    reason: "ice_failed".into(),
                },
            ),
            (
                json!({"type": "quality", "lossRatio": 0.02, "jitterMs": 12.5}),
                Report::Quality {
                    loss_ratio: 0.02,
                    jitter_ms: 12.5,
                    rtt_ms: None,
                },
            ),
        ];
        let mut types = Vec::new();
        for (wire, expected) in cases {
            let report = parse(0, &wire).unwrap().unwrap();
            assert_eq!(report, expected);
            assert_eq!(wire["type"], report.type_name());
            types.push(report.type_name());
        }
        for kind in REPORT_TYPES {
            assert!(types.contains(kind), "{kind} has no case");
        }
    }

    #[test]
    fn out_of_range_or_malformed_reports_are_refused_and_unknown_types_skipped() {
        let refused = [
            json!({"type": "first_audio", "afterAcceptMs": -1}),
            json!({"type": "first_audio", "afterAcceptMs": 600_001}),
            json!({"type": "first_audio", "afterAcceptMs": 840.5}),
            json!({"type": "quality", "lossRatio": 0.1, "jitterMs": 3, "rttMs": null}),
            json!({"type": "first_audio"}),
            json!({"type": "first_audio", "afterAcceptMs": 10, "at": 1}),
            json!({"type": "callkit_error", "code": "Filtered By DND"}),
            json!({"type": "media_failed", "reason": ""}),
            json!({"type": "quality", "lossRatio": 1.5, "jitterMs": 1}),
            json!({"type": "quality", "lossRatio": 0.1, "jitterMs": -3}),
            json!({"type": "quality", "lossRatio": 0.1, "jitterMs": 3, "rttMs": 1e9}),
            json!({"type": 7}),
            json!(["first_audio"]),
        ];
        for (i, wire) in refused.iter().enumerate() {
            let e = parse(i, wire).expect_err(&wire.to_string());
            assert_eq!(e.index, i);
        }
        assert_eq!(parse(0, &json!({"type": "hologram_shown"})), Ok(None));
        let whole = json!({"type": "answered_on_device", "afterUiShownMs": 260.0});
        assert_eq!(
            parse(0, &whole),
            Ok(Some(Report::AnsweredOnDevice {
                after_ui_shown_ms: 260
            }))
        );
    }

    fn sample(registry: &Registry, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let family = registry.gather().into_iter().find(|f| f.name() == name)?;
        let metric = family.get_metric().iter().find(|m| {
            labels.iter().all(|(k, v)| {
                m.get_label()
                    .iter()
                    .any(|l| l.name() == *k && l.value() == *v)
            })
        })?;
        Some(
            if family.get_field_type() == prometheus::proto::MetricType::COUNTER {
                metric.get_counter().get_value()
            } else {
                metric.get_histogram().get_sample_count() as f64
            },
        )
    }

    #[test]
    fn labels_stay_bounded_whatever_a_client_sends() {
        let registry = Registry::new();
        let metrics = ReportMetrics::register(&registry).unwrap();
        let series =
            |r: &Registry| -> usize { r.gather().iter().map(|f| f.get_metric().len()).sum() };
        let before = series(&registry);
        for i in 0..100 {
            metrics.observe(
                Platform::Ios,
                &Report::CallUiError {
                    system: CallUiSystem::CallKit,
                    code: format!("made_up_{i}"),
                },
            );
            metrics.observe(
                Platform::Android,
                &Report::MediaFailed {
                    reason: format!("weird_{i}"),
                },
            );
        }
        assert_eq!(series(&registry), before, "no new series");
        let other = [
            ("platform", "ios"),
            ("system", "callkit"),
            ("code", "other"),
        ];
        assert_eq!(
            sample(&registry, "switchboard_call_ui_errors_total", &other),
            Some(100.0)
        );
        let ttfa = [("platform", "web")];
        assert_eq!(
            sample(
                &registry,
                "switchboard_call_time_to_first_audio_seconds",
                &ttfa
            ),
            Some(0.0),
            "exported before the first report"
        );
        metrics.observe(
            Platform::Web,
            &Report::FirstAudio {
                after_accept_ms: 700,
            },
        );
        assert_eq!(
            sample(
                &registry,
                "switchboard_call_time_to_first_audio_seconds",
                &ttfa
            ),
            Some(1.0)
        );
    }
}
