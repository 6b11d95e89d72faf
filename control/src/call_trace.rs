//! One OpenTelemetry trace per call, joined by every node without
//! propagation: the trace id *is* the callId (both are 16 bytes), and the
//! root span's id is the callId's last 8 bytes. Any node, after any
//! restart, and the app backend reading a webhook, can name a call's trace
//! and its root from the callId alone.
//!
//! No span lives as long as the call. The root, `call.create`, covers the
//! `POST /v1/calls` request; every later step is a short span of its own,
//! a child of the root: `push.send` (per device), `call.ack`,
//! `call.accept`, `call.decline`, `call.cancel`, `call.hangup`,
//! `media.join`, `media.connected`, `media.left`, `call.connected`,
//! `call.end`, `call.report`. Each carries `call_id` and, where known,
//! `user_id`, `device_id` and `platform`.
//!
//! Steps are `tracing` spans of target [`TARGET`] (the process's
//! `tracing-opentelemetry` layer exports those, and only those). The root
//! is the exception: a `tracing` span cannot choose its own span id, so it
//! is started on the OpenTelemetry tracer directly, its ids handed to
//! [`CallTraceIds`] for that one start. Without an exporter (no
//! `otlp_endpoint`) nothing here costs more than a disabled span.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::SystemTime;

use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator, SdkTracer};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The `tracing` target of call spans: what the exporting layer keeps.
pub const TARGET: &str = "call_trace";

/// A span in the trace of `call_id`, a child of the call's root:
/// `call_span!("call.accept", call_id, user_id = %user, ...)`. The span is
/// entered (or instrumented) by the caller; it ends when dropped.
#[macro_export]
macro_rules! call_span {
    ($name:literal, $call_id:expr $(, $($fields:tt)*)?) => {{
        let call_id: &str = $call_id;
        $crate::call_trace::in_trace_of(
            ::tracing::info_span!(target: "call_trace", $name, call_id = %call_id $(, $($fields)*)?),
            call_id,
        )
    }};
}

/// The call's trace id: its callId's bytes. None for an id that is not a
/// UUID (only ever a client's typo: the server makes every callId).
pub fn trace_id(call_id: &str) -> Option<TraceId> {
    uuid::Uuid::parse_str(call_id)
        .ok()
        .map(|u| TraceId::from_bytes(*u.as_bytes()))
}

/// The root span's id: the callId's last 8 bytes (never zero: a UUID's
/// variant bits are there).
pub fn root_span_id(call_id: &str) -> Option<SpanId> {
    let bytes = *uuid::Uuid::parse_str(call_id).ok()?.as_bytes();
    let mut last = [0u8; 8];
    last.copy_from_slice(&bytes[8..]);
    Some(SpanId::from_bytes(last))
}

/// The call's root as a parent context, on any node. Marked sampled: the
/// sampler decides by trace id alone (`TraceIdRatioBased`), so every node
/// keeps or drops the same calls.
fn root_context(call_id: &str) -> Option<Context> {
    let root = SpanContext::new(
        trace_id(call_id)?,
        root_span_id(call_id)?,
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    Some(Context::new().with_remote_span_context(root))
}

/// Makes `span` a child of `call_id`'s root (if the span is exported at
/// all; a callId that is not a UUID leaves it where it is).
pub fn in_trace_of(span: tracing::Span, call_id: &str) -> tracing::Span {
    if let Some(parent) = root_context(call_id) {
        // Fails only when no OpenTelemetry layer is installed: no traces.
        let _ = span.set_parent(parent);
    }
    span
}

/// The tracer the root spans start on; set once by the process that
/// exports traces.
static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Called once by the process when it exports traces.
pub fn install(tracer: SdkTracer) {
    let _ = TRACER.set(tracer);
}

/// Whether this process exports traces (worth a lookup for an attribute).
pub fn enabled() -> bool {
    TRACER.get().is_some()
}

/// Records the root span `call.create` of a call this request created:
/// from `started` to now, with the caller's attributes. Only for a call
/// actually created (never for an idempotent replay: one root per trace).
pub fn record_root(call_id: &str, started: SystemTime, attributes: Vec<KeyValue>) {
    let (Some(tracer), Some(trace_id), Some(span_id)) =
        (TRACER.get(), trace_id(call_id), root_span_id(call_id))
    else {
        return;
    };
    let mut attributes = attributes;
    attributes.push(KeyValue::new("call_id", call_id.to_string()));
    NEXT_IDS.with(|next| next.set(Some((trace_id, span_id))));
    let mut root = tracer
        .span_builder("call.create")
        .with_kind(SpanKind::Server)
        .with_start_time(started)
        .with_attributes(attributes)
        // An explicit empty context: the root has no parent, whatever
        // span this thread is in.
        .start_with_context(tracer, &Context::new());
    NEXT_IDS.with(|next| next.set(None));
    opentelemetry::trace::Span::end(&mut root);
}

thread_local! {
    /// The ids of the root span being started on this thread, if any.
    static NEXT_IDS: Cell<Option<(TraceId, SpanId)>> = const { Cell::new(None) };
}

/// The process's id generator: random ids, except while [`record_root`]
/// starts a call's root (synchronously, on its own thread), which gets the
/// ids derived from its callId.
#[derive(Debug, Default)]
pub struct CallTraceIds(RandomIdGenerator);

impl IdGenerator for CallTraceIds {
    fn new_trace_id(&self) -> TraceId {
        match NEXT_IDS.with(Cell::get) {
            Some((trace_id, _)) => trace_id,
            None => self.0.new_trace_id(),
        }
    }

    fn new_span_id(&self) -> SpanId {
        match NEXT_IDS.with(Cell::get) {
            Some((_, span_id)) => span_id,
            None => self.0.new_span_id(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_and_root_ids_are_the_call_ids_bytes() {
        let call_id = "0b8e4f2a-6c1d-4e9b-a7f3-5d2c8b1e9f40";
        assert_eq!(
            trace_id(call_id).unwrap().to_string(),
            "0b8e4f2a6c1d4e9ba7f35d2c8b1e9f40"
        );
        assert_eq!(
            root_span_id(call_id).unwrap().to_string(),
            "a7f35d2c8b1e9f40"
        );
        assert_eq!(trace_id("not-a-uuid"), None);
        assert_eq!(root_span_id(""), None);
    }

    #[test]
    fn only_a_root_being_started_gets_the_calls_ids() {
        let ids = CallTraceIds::default();
        let call_id = "0b8e4f2a-6c1d-4e9b-a7f3-5d2c8b1e9f40";
        let (t, s) = (trace_id(call_id).unwrap(), root_span_id(call_id).unwrap());
        assert_ne!(ids.new_span_id(), s);
        NEXT_IDS.with(|n| n.set(Some((t, s))));
        assert_eq!((ids.new_trace_id(), ids.new_span_id()), (t, s));
        NEXT_IDS.with(|n| n.set(None));
        assert_ne!(ids.new_trace_id(), t);
    }
}
