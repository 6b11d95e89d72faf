//! One OpenTelemetry trace per call, as a collector receives it: the
//! process's own telemetry (`sfu::telemetry::init`, as `main` installs it)
//! exports over OTLP/HTTP to a receiver in this test, which decodes the
//! protobuf with `opentelemetry-proto`; a whole call runs (create, FCM
//! push through the stand-in, ack, accept, str0m bots in the room, a
//! device report, hang-up). Alone in its binary: it installs the global
//! logger.

mod common;

#[path = "../../control/tests/support/mod.rs"]
mod push_support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::live::post_json;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use serde_json::json;

/// A received span with its resource's attributes.
type Received = (Vec<KeyValue>, Span);

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf): every span it was
/// sent, with its resource's attributes.
struct Collector {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    async fn start() -> Collector {
        let received: Arc<Mutex<Vec<Received>>> = Arc::default();
        let sink = received.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                let sink = sink.clone();
                async move {
                    let request = ExportTraceServiceRequest::decode(body)
                        .expect("the exporter sends OTLP protobuf");
                    let mut sink = sink.lock().unwrap();
                    for resource_spans in request.resource_spans {
                        let resource = resource_spans.resource.unwrap_or_default().attributes;
                        for scope in resource_spans.scope_spans {
                            for span in scope.spans {
                                sink.push((resource.clone(), span));
                            }
                        }
                    }
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Collector { url, received }
    }

    fn spans(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

fn attribute<'a>(attributes: &'a [KeyValue], key: &str) -> Option<&'a AnyValue> {
    attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
}

fn text<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    match attribute(&span.attributes, key) {
        Some(AnyValue::StringValue(s)) => Some(s),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_one_trace_of_short_spans_under_a_root_named_by_its_call_id() {
    let collector = Collector::start().await;
    let telemetry = sfu::telemetry::init(&sfu::config::Config {
        otlp_endpoint: Some(collector.url.clone()),
        ..sfu::config::Config::default()
    })
    .expect("telemetry installs");
    let fcm = push_support::fcm::FakeFcm::start().await;
    let server = common::live::start_server_with_configured_push(|c| {
        common::live::push_through_fcm_stand_in(
            c,
            &fcm.server.url,
            &fcm.service_account_json,
            &fcm.server.ca_pem,
        );
    })
    .await;
    let node = server.http_addr;
    let call = common::live::answered_video_call(node, push_support::PIXEL_FCM, || {
        !fcm.accepted_for(push_support::PIXEL_FCM).is_empty()
    })
    .await;
    let call_id = call.call_id;
    let report = json!({"deviceId": "bob-phone", "reports": [{"type": "first_audio", "afterAcceptMs": 420}]});
    let path = format!("/v1/calls/{call_id}/reports");
    let (status, body) = post_json(node, &path, "bob", report).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = post_json(
        node,
        &format!("/v1/calls/{call_id}/end"),
        "alice",
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await;
    // As `main` does before it exits: whatever is buffered goes out.
    tokio::task::spawn_blocking(move || telemetry.shutdown())
        .await
        .unwrap();

    let received = collector.spans();
    let trace_id = uuid::Uuid::parse_str(&call_id).unwrap().as_bytes().to_vec();
    let root_id = trace_id[8..].to_vec();
    let names: Vec<&str> = received.iter().map(|(_, s)| s.name.as_str()).collect();
    // Only call spans are exported, and this test made one call.
    for (resource, span) in &received {
        assert_eq!(span.trace_id, trace_id, "{} is in another trace", span.name);
        assert_eq!(text(span, "call_id"), Some(call_id.as_str()), "{span:?}");
        assert_eq!(
            attribute(resource, "service.name"),
            Some(&AnyValue::StringValue("switchboard".into()))
        );
    }
    let count = |name: &str| names.iter().filter(|n| **n == name).count();
    let roots: Vec<&Span> = received
        .iter()
        .map(|(_, s)| s)
        .filter(|s| s.parent_span_id.is_empty())
        .collect();
    assert_eq!(roots.len(), 1, "one root: {names:?}");
    let root = roots[0];
    assert_eq!(
        (root.name.as_str(), &root.span_id),
        ("call.create", &root_id)
    );
    for (key, value) in [
        ("user_id", "alice"),
        ("device_id", "alice-web"),
        ("platform", "web"),
        ("call_type", "video"),
    ] {
        assert_eq!(text(root, key), Some(value), "root's {key}: {root:?}");
    }
    for (_, span) in &received {
        if span.span_id != root_id {
            assert_eq!(span.parent_span_id, root_id, "{} under the root", span.name);
        }
    }
    for (name, at_least) in [
        ("push.send", 1),
        ("call.ack", 1),
        ("call.accept", 1),
        ("media.join", 2),
        ("media.connected", 2),
        ("call.connected", 1),
        ("call.report", 1),
        ("call.hangup", 1),
        ("call.end", 1),
    ] {
        assert!(count(name) >= at_least, "{name} x{at_least} in {names:?}");
    }
    for once in ["call.create", "call.connected", "call.end", "call.accept"] {
        assert_eq!(count(once), 1, "{once} in {names:?}");
    }
    let first = |name: &str| {
        received
            .iter()
            .map(|(_, s)| s)
            .find(|s| s.name == name)
            .unwrap()
    };
    let by_key = |span: &Span| -> HashMap<String, String> {
        span.attributes
            .iter()
            .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                AnyValue::StringValue(s) => Some((kv.key.clone(), s.clone())),
                AnyValue::IntValue(i) => Some((kv.key.clone(), i.to_string())),
                _ => None,
            })
            .collect()
    };
    let ring_push = received
        .iter()
        .map(|(_, s)| s)
        .find(|s| s.name == "push.send" && text(s, "kind") == Some("ring"))
        .unwrap_or_else(|| panic!("no ring push in {names:?}"));
    let push = by_key(ring_push);
    for (key, value) in [
        ("user_id", "bob"),
        ("device_id", "bob-phone"),
        ("platform", "android"),
        ("provider", "fcm"),
        ("outcome", "delivered"),
    ] {
        assert_eq!(push.get(key).map(String::as_str), Some(value), "{push:?}");
    }
    for name in ["call.ack", "call.accept", "call.report"] {
        let attributes = by_key(first(name));
        for (key, value) in [
            ("user_id", "bob"),
            ("device_id", "bob-phone"),
            ("platform", "android"),
        ] {
            assert_eq!(
                attributes.get(key).map(String::as_str),
                Some(value),
                "{name}: {attributes:?}"
            );
        }
    }
    assert_eq!(text(first("call.ack"), "transport"), Some("http"));
    assert_eq!(text(first("call.end"), "reason"), Some("completed"));
    let joins: Vec<&str> = received
        .iter()
        .filter(|(_, s)| s.name == "media.join")
        .filter_map(|(_, s)| text(s, "outcome"))
        .collect();
    assert_eq!(joins, ["joined", "joined"]);
    // No span is open for the call's life: none reaches from the accept
    // to the hang-up.
    let (accepted_at, hung_up_at) = (
        first("call.accept").end_time_unix_nano,
        first("call.hangup").start_time_unix_nano,
    );
    for (_, span) in &received {
        assert!(
            !(span.start_time_unix_nano <= accepted_at && span.end_time_unix_nano >= hung_up_at),
            "{} spans the call",
            span.name
        );
    }
}
