//! Feature flags through the operator API, on a real server: the API key
//! sets and reads them, a user token may not, every change is recorded
//! with the key that made it, and a change decided on a stale version is
//! refused. Bad settings get typed errors and change nothing.

mod common;

#[path = "../../control/tests/support/mod.rs"]
mod push_support;

use common::live::{operator_auth, request, start_server, start_server_with, user_token};
use serde_json::{Value, json};

async fn operator(
    server: &sfu::server::Running,
    method: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let auth = operator_auth();
    let body = if body.is_null() {
        String::new()
    } else {
        body.to_string()
    };
    let (status, text) = request(
        server.http_addr,
        method,
        path,
        &[("Authorization", &auth)],
        &body,
    )
    .await;
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// Sets flag `name` to `body` through the operator API; it must take it.
async fn set_flag(server: &sfu::server::Running, name: &str, body: Value) {
    let (status, answer) = operator(server, "PUT", &format!("/v1/flags/{name}"), body).await;
    assert_eq!(status, 200, "{name}: {answer}");
}

fn named<'a>(list: &'a Value, name: &str) -> &'a Value {
    list["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no {name} in {list}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_set_flags_by_version_and_every_change_is_recorded() {
    let server = start_server().await;
    let (status, list) = operator(&server, "GET", "/v1/flags", Value::Null).await;
    assert_eq!(status, 200, "{list}");
    for built_in in ["calling", "incoming_call_ui", "audio_calls", "video_calls"] {
        let flag = named(&list, built_in);
        assert_eq!(
            (&flag["state"], &flag["version"], &flag["builtIn"]),
            (&json!("on"), &json!(0), &json!(true)),
            "{flag}"
        );
    }

    let ten = json!({"state": "rollout", "percent": 10, "platforms": ["ios"], "appVersions": {"min": "2.14"}, "expectedVersion": 0});
    let (status, set) = operator(&server, "PUT", "/v1/flags/video_calls", ten).await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(
        (&set["version"], &set["percent"], &set["platforms"]),
        (&json!(1), &json!(10.0), &json!(["ios"])),
        "{set}"
    );
    // Decided on version 0, which is gone: refused, nothing changes.
    let stale = json!({"state": "off", "expectedVersion": 0});
    let (status, body) = operator(&server, "PUT", "/v1/flags/video_calls", stale).await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("version_mismatch")),
        "{body}"
    );
    set_flag(
        &server,
        "video_calls",
        json!({"state": "on", "percent": 40}),
    )
    .await;
    assert!(
        body.get("percent").is_none(),
        "a percent means nothing to `on`: {body}"
    );

    // Refused with a typed error, and nothing recorded.
    for (path, bad) in [
        ("/v1/flags/video_calls", json!({"state": "rollout"})),
        (
            "/v1/flags/video_calls",
            json!({"state": "rollout", "percent": 120}),
        ),
        (
            "/v1/flags/video_calls",
            json!({"state": "on", "appVersions": {"min": "2.x"}}),
        ),
        (
            "/v1/flags/video_calls",
            json!({"state": "on", "percent": null}),
        ),
        (
            "/v1/flags/video_calls",
            json!({"state": "on", "colour": "red"}),
        ),
        ("/v1/flags/Video-Calls", json!({"state": "on"})),
    ] {
        let (status, body) = operator(&server, "PUT", path, bad.clone()).await;
        assert_eq!(
            (status, &body["code"]),
            (400, &json!("bad_request")),
            "{bad}: {body}"
        );
    }
    // Devices do not operate flags.
    let (status, body) = common::live::http_with(
        &server,
        "PUT",
        "/v1/flags/calling",
        &[("Authorization", &format!("Bearer {}", user_token("alice")))],
        r#"{"state": "off"}"#,
    )
    .await;
    assert_eq!(status, 403, "{body}");

    let (status, changes) =
        operator(&server, "GET", "/v1/flags/changes?limit=10", Value::Null).await;
    assert_eq!(status, 200, "{changes}");
    let changes = changes["changes"].as_array().unwrap();
    assert_eq!(changes.len(), 2, "{changes:?}");
    assert_eq!(changes[0]["new"]["state"], "on");
    assert_eq!(changes[0]["old"]["state"], "rollout");
    assert_eq!(
        changes[1]["old"],
        Value::Null,
        "first set: from its default"
    );
    for change in changes {
        assert_eq!(change["by"], common::live::API_KEY_ID);
        assert_eq!(change["name"], "video_calls");
        assert!(change["at"].as_u64().unwrap() > 1_700_000_000_000);
    }
    let (_, list) = operator(&server, "GET", "/v1/flags", Value::Null).await;
    assert_eq!(named(&list, "video_calls")["version"], 2);
    assert_eq!(named(&list, "calling")["version"], 0);
    server.shutdown().await;
}

/// Flags of one's own are bounded (each is read on every registration);
/// built-in flags do not count, and changing an existing flag is always
/// allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_64_flags_of_ones_own() {
    let server = start_server().await;
    let set = |name: String| {
        let server = &server;
        async move {
            operator(
                server,
                "PUT",
                &format!("/v1/flags/{name}"),
                json!({"state": "on"}),
            )
            .await
        }
    };
    for i in 0..64 {
        let (status, body) = set(format!("own_{i}")).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = set("own_64".into()).await;
    assert_eq!(
        (status, &body["code"]),
        (409, &json!("too_many_flags")),
        "{body}"
    );
    for still_fine in ["own_3", "calling"] {
        let (status, body) = set(still_fine.into()).await;
        assert_eq!(status, 200, "{still_fine}: {body}");
    }
    server.shutdown().await;
}

/// The server acts on the flags at once: a callee for whom calling is off
/// is not pushed and the call ends `unsupported`; with the call UI off on
/// Android only, the phone is not pushed while the browser still rings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_ring_only_the_devices_the_flags_let_ring() {
    use common::live::post_as;
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
    for device in [
        json!({"deviceId": "bob-phone", "platform": "android", "appVersion": "2.14.0", "push": {"fcm": push_support::PIXEL_FCM}}),
        json!({"deviceId": "bob-laptop", "platform": "web"}),
    ] {
        let (status, body) = post_as(&server, "/v1/devices", "bob", device).await;
        assert_eq!(status, 200, "{body}");
    }
    let call_bob = || async {
        let call = json!({"calleeUserIds": ["bob"], "type": "audio", "deviceId": "alice-web"});
        post_as(&server, "/v1/calls", "alice", call).await
    };

    set_flag(
        &server,
        "calling",
        json!({"state": "on", "denyUsers": ["bob"]}),
    )
    .await;
    let (status, created) = call_bob().await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(
        (&created["call"]["state"], &created["call"]["endReason"]),
        (&json!("ended"), &json!("unsupported")),
        "{created}"
    );

    set_flag(&server, "calling", json!({"state": "on"})).await;
    let ui_off_on_android = json!({"state": "on", "platforms": ["web", "ios"]});
    set_flag(&server, "incoming_call_ui", ui_off_on_android).await;
    let (status, created) = call_bob().await;
    assert_eq!(
        (status, &created["call"]["state"]),
        (201, &json!("ringing")),
        "{created}"
    );
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert!(
        fcm.accepted_for(push_support::PIXEL_FCM).is_empty(),
        "the phone's call UI is off: no push"
    );
    let (status, body) = post_as(
        &server,
        &format!("/v1/calls/{call_id}/cancel"),
        "alice",
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Back on for Android: the phone rings again (its first push).
    set_flag(&server, "incoming_call_ui", json!({"state": "on"})).await;
    let (status, created) = call_bob().await;
    assert_eq!(
        (status, &created["call"]["state"]),
        (201, &json!("ringing")),
        "{created}"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while fcm.accepted_for(push_support::PIXEL_FCM).is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the phone was never pushed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    server.shutdown().await;
}

/// A device learns its flags when it registers and when its events socket
/// authenticates, and is told at once when one changes for it; a change
/// that does not concern it (another platform) says nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_get_their_flags_and_hear_when_they_change() {
    let server = start_server().await;
    let phone = json!({"deviceId": "bob-phone", "platform": "android", "appVersion": "3.1.0"});
    let (status, registered) = common::live::post_as(&server, "/v1/devices", "bob", phone).await;
    assert_eq!(status, 200, "{registered}");
    assert_eq!(
        registered["flags"],
        json!({"audio_calls": true, "calling": true, "incoming_call_ui": true, "video_calls": true})
    );
    let mut socket = EventsSocket::open(&server, "bob", "bob-phone").await;
    assert_eq!(
        socket.authenticated["flags"]["video_calls"], true,
        "{}",
        socket.authenticated
    );

    // Narrowed to Android: nothing changes for this phone, nothing is said
    // (the next message is the change below).
    let android_only = json!({"state": "on", "platforms": ["android"]});
    set_flag(&server, "video_calls", android_only).await;
    // Narrowed to versions below 3: this phone (3.1.0) is out, and hears it.
    let old_apps = json!({"state": "on", "appVersions": {"max": "3"}});
    set_flag(&server, "video_calls", old_apps).await;
    let told = socket.next().await;
    assert_eq!(told["type"], "flags", "{told}");
    assert_eq!(told["flags"]["video_calls"], false, "{told}");
    assert_eq!(told["flags"]["calling"], true, "{told}");
    server.shutdown().await;
}

/// A device's events socket, authenticated.
struct EventsSocket {
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    authenticated: Value,
}

impl EventsSocket {
    async fn open(server: &sfu::server::Running, user: &str, device: &str) -> EventsSocket {
        use futures_util::SinkExt;
        use tokio_tungstenite::tungstenite::Message;
        let url = format!("ws://{}/v1/events", server.http_addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        let auth = json!({"type": "auth", "token": user_token(user), "deviceId": device});
        ws.send(Message::text(auth.to_string())).await.unwrap();
        let mut socket = EventsSocket {
            ws,
            authenticated: Value::Null,
        };
        socket.authenticated = socket.next().await;
        assert_eq!(
            socket.authenticated["type"], "authenticated",
            "{}",
            socket.authenticated
        );
        socket
    }

    /// The next message, within 5 s.
    async fn next(&mut self) -> Value {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        let msg = tokio::time::timeout(std::time::Duration::from_secs(5), self.ws.next())
            .await
            .expect("a message within 5 s");
        match msg {
            Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    /// The next message of `kind`, skipping others (bounded: 20 messages).
    async fn next_of(&mut self, kind: &str) -> Value {
        for _ in 0..20 {
            let message = self.next().await;
            if message["type"] == kind {
                return message;
            }
        }
        panic!("no {kind} in 20 messages");
    }
}

async fn alice_calls_bob(server: &sfu::server::Running, kind: &str) -> Value {
    let call = json!({"calleeUserIds": ["bob"], "type": kind, "deviceId": "alice-web"});
    let (status, created) = common::live::post_as(server, "/v1/calls", "alice", call).await;
    assert_eq!(status, 201, "{created}");
    created
}

async fn call_state(server: &sfu::server::Running, call_id: &str) -> Value {
    let (status, body) = common::live::http_with(
        server,
        "GET",
        &format!("/v1/calls/{call_id}"),
        &[("Authorization", &format!("Bearer {}", user_token("alice")))],
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// Work in flight and old apps: an app below `min_app_version` is told
/// `call.unsupported` instead of rung; turning video off stops a ringing
/// video call (`call.cancelled` `unsupported`, the call ends
/// `unsupported`), the next video call is offered as audio, and a call
/// already answered goes on when calling is turned off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_reach_calls_in_flight_and_old_apps_are_told() {
    use common::live::post_as;
    let server = start_server_with(|c| c.min_app_version = Some("3.0".into())).await;
    for device in [
        json!({"deviceId": "bob-old", "platform": "web", "appVersion": "2.9.4"}),
        json!({"deviceId": "bob-new", "platform": "web", "appVersion": "3.0.1"}),
    ] {
        let (status, body) = post_as(&server, "/v1/devices", "bob", device).await;
        assert_eq!(status, 200, "{body}");
    }
    let mut old = EventsSocket::open(&server, "bob", "bob-old").await;
    let mut new = EventsSocket::open(&server, "bob", "bob-new").await;

    let created = alice_calls_bob(&server, "video").await;
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    let ring = new.next_of("call.ringing").await;
    assert_eq!(ring["callId"], call_id);
    let told = old.next().await;
    assert_eq!(
        told,
        json!({"type": "call.unsupported", "callId": call_id, "fromUserId": "alice", "callType": "video"})
    );

    // Video off while it rings: the ring stops, the call ends unsupported.
    set_flag(&server, "video_calls", json!({"state": "off"})).await;
    let cancelled = new.next_of("call.cancelled").await;
    assert_eq!(
        (&cancelled["callId"], &cancelled["reason"]),
        (&json!(call_id), &json!("unsupported")),
        "{cancelled}"
    );
    let ended = call_state(&server, &call_id).await;
    assert_eq!(
        (&ended["state"], &ended["endReason"]),
        (&json!("ended"), &json!("unsupported")),
        "{ended}"
    );

    // The next video call is offered as audio (the default fallback).
    let created = alice_calls_bob(&server, "video").await;
    assert_eq!(
        (&created["call"]["type"], &created["call"]["state"]),
        (&json!("audio"), &json!("ringing")),
        "{created}"
    );
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    let ring = new.next_of("call.ringing").await;
    assert_eq!(
        (&ring["callId"], &ring["callType"]),
        (&json!(call_id), &json!("audio"))
    );
    let (status, body) = post_as(
        &server,
        &format!("/v1/calls/{call_id}/accept"),
        "bob",
        json!({"deviceId": "bob-new"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    // Answered calls go on to their end whatever the flags say.
    set_flag(&server, "calling", json!({"state": "off"})).await;
    let flags = new.next_of("flags").await;
    assert_eq!(flags["flags"]["calling"], false, "{flags}");
    let answered = call_state(&server, &call_id).await;
    assert_eq!(answered["state"], "connecting", "{answered}");
    server.shutdown().await;

    // Configured to refuse: a video call nobody can take as video ends.
    let server = start_server_with(|c| {
        c.video_fallback = control::service::VideoFallback::Refuse;
    })
    .await;
    let device = json!({"deviceId": "bob-new", "platform": "web"});
    let (status, body) = post_as(&server, "/v1/devices", "bob", device).await;
    assert_eq!(status, 200, "{body}");
    set_flag(&server, "video_calls", json!({"state": "off"})).await;
    let created = alice_calls_bob(&server, "video").await;
    assert_eq!(
        (&created["call"]["type"], &created["call"]["endReason"]),
        (&json!("video"), &json!("unsupported")),
        "{created}"
    );
    let created = alice_calls_bob(&server, "audio").await;
    assert_eq!(created["call"]["state"], "ringing", "{created}");
    server.shutdown().await;
}

/// Rollout cohorts: with `new_ringer` designated, each callee's outcome,
/// their ring's time to the call UI and their first audio are counted in
/// the cohort the flag puts them in (bob on, by the allow list; carol
/// off), and nowhere else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_metrics_split_by_the_designated_flags_cohort() {
    use common::live::post_as;
    let server = start_server_with(|c| c.rollout_metrics_flag = Some("new_ringer".into())).await;
    let rollout = json!({"state": "rollout", "percent": 0, "allowUsers": ["bob"]});
    set_flag(&server, "new_ringer", rollout).await;
    for (user, device) in [("bob", "bob-web"), ("carol", "carol-web")] {
        let device = json!({"deviceId": device, "platform": "web"});
        let (status, body) = post_as(&server, "/v1/devices", user, device).await;
        assert_eq!(status, 200, "{body}");
    }
    let outcome = |cohort: &str, outcome: &str| {
        format!(
            "switchboard_rollout_callee_outcomes_total{{cohort=\"{cohort}\",flag=\"new_ringer\",outcome=\"{outcome}\"}}"
        )
    };
    assert_eq!(
        common::live::series(&server, &outcome("on", "not_answered")).await,
        0.0
    );

    // Bob (on): acknowledged, answered, first audio reported, hung up
    // before media connected.
    let created = alice_calls_bob(&server, "audio").await;
    let call_id = created["call"]["callId"].as_str().unwrap().to_string();
    for (path, body) in [
        ("ack", json!({"deviceId": "bob-web"})),
        ("accept", json!({"deviceId": "bob-web"})),
        (
            "reports",
            json!({"deviceId": "bob-web", "reports": [{"type": "first_audio", "afterAcceptMs": 700}]}),
        ),
        ("end", json!({})),
    ] {
        let (status, answer) =
            post_as(&server, &format!("/v1/calls/{call_id}/{path}"), "bob", body).await;
        assert!(status < 300, "{path}: {status} {answer}");
    }
    // Carol (off): rung, never answered.
    let call = json!({"calleeUserIds": ["carol"], "type": "audio", "deviceId": "alice-web"});
    let (status, created) = post_as(&server, "/v1/calls", "alice", call).await;
    assert_eq!(status, 201, "{created}");
    let call_id = created["call"]["callId"].as_str().unwrap();
    let cancel = format!("/v1/calls/{call_id}/cancel");
    let (status, body) = post_as(&server, &cancel, "alice", json!({})).await;
    assert_eq!(status, 200, "{body}");

    for (cohort, name, value) in [
        ("on", "answered_not_connected", 1.0),
        ("on", "not_answered", 0.0),
        ("on", "connected", 0.0),
        ("off", "not_answered", 1.0),
        ("off", "answered_not_connected", 0.0),
    ] {
        assert_eq!(
            common::live::series(&server, &outcome(cohort, name)).await,
            value,
            "{cohort} {name}"
        );
    }
    let ttfa = |cohort: &str, part: &str| {
        format!(
            "switchboard_rollout_time_to_first_audio_seconds_{part}{{cohort=\"{cohort}\",flag=\"new_ringer\"}}"
        )
    };
    assert_eq!(
        common::live::series(&server, &ttfa("on", "count")).await,
        1.0
    );
    assert!((common::live::series(&server, &ttfa("on", "sum")).await - 0.7).abs() < 1e-9);
    assert_eq!(
        common::live::series(&server, &ttfa("off", "count")).await,
        0.0
    );
    let shown = |cohort: &str| {
        format!(
            "switchboard_rollout_ring_to_ui_shown_seconds_count{{cohort=\"{cohort}\",flag=\"new_ringer\"}}"
        )
    };
    assert_eq!(common::live::series(&server, &shown("on")).await, 1.0);
    assert_eq!(common::live::series(&server, &shown("off")).await, 0.0);
    server.shutdown().await;
}
