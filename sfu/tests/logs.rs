//! The JSON log of a whole call, as an operator's log pipeline reads it:
//! the real binary (`log_format = "json"`, `RUST_LOG=info`) rings an
//! Android phone through the FCM stand-in, the phone acks and accepts,
//! both sides join the room with str0m bots, the phone reports, the caller
//! hangs up and the node stops. Every line about the call carries its
//! `call_id`, and the `user_id`, `device_id` and `platform` it is about
//! (mission 9.2), in the line's own fields (what `jq '.fields'` reads);
//! and no line carries a secret, a token or SDP.

mod common;

#[path = "../../control/tests/support/mod.rs"]
mod push_support;

use std::time::{Duration, Instant};

use common::live::{Spawn, free_port, post_json, scratch_dir, spawn_switchboard_with};
use serde_json::{Value, json};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_about_a_call_names_the_call_the_user_the_device_and_the_platform() {
    let fcm = push_support::fcm::FakeFcm::start().await;
    let dir = scratch_dir();
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("service-account.json"), &fcm.service_account_json).unwrap();
    std::fs::write(dir.join("fcm-ca.pem"), &fcm.server.ca_pem).unwrap();
    let config = format!(
        "log_format = \"json\"\npush_extra_root_cert = {:?}\n\n[fcm]\nservice_account_file = {:?}\nurl = {:?}\n",
        dir.join("fcm-ca.pem"),
        dir.join("service-account.json"),
        fcm.server.url
    );
    std::fs::write(dir.join("switchboard.toml"), config).unwrap();
    let log_path = dir.join("switchboard.log");
    let config_path = dir.join("switchboard.toml");
    let config_arg = config_path.to_string_lossy();
    let mut server = spawn_switchboard_with(
        Spawn {
            args: &["--config", &config_arg],
            stdout: Some(std::fs::File::create(&log_path).unwrap()),
            ..Spawn::default()
        },
        &dir.join("data"),
        (free_port(), free_port()),
        &[("RUST_LOG", "info")],
    )
    .await;
    let node = server.http;

    let call = common::live::answered_video_call(node, push_support::PIXEL_FCM, || {
        !fcm.accepted_for(push_support::PIXEL_FCM).is_empty()
    })
    .await;
    let call_id = call.call_id;
    let report = json!({"deviceId": "bob-phone", "reports": [{"type": "first_audio", "afterAcceptMs": 380}]});
    let (status, body) =
        post_json(node, &format!("/v1/calls/{call_id}/reports"), "bob", report).await;
    assert_eq!(status, 202, "{body}");
    let (status, body) = post_json(
        node,
        &format!("/v1/calls/{call_id}/end"),
        "alice",
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Stop it as an orchestrator does: SIGTERM, and it drains and exits.
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the node did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let about_the_call: Vec<&Value> = lines
        .iter()
        .filter(|l| l["fields"]["call_id"] == call_id.as_str())
        .collect();
    let mut missing = Vec::new();
    for line in &about_the_call {
        for key in ["user_id", "device_id", "platform"] {
            let value = line["fields"][key].as_str().unwrap_or_default();
            if value.is_empty() {
                missing.push(format!("{key} in {line}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "{} lines lack what they are about:\n{}",
        missing.len(),
        missing.join("\n")
    );
    // The whole call was seen: control, push, the SFU engine and shell.
    for (target, message) in [
        ("control::api", "call created"),
        ("control::push::dispatch", "push delivered"),
        ("control::api", "call action"),
        ("sfu::engine::commands", "joined"),
        ("sfu::engine", "left"),
        ("sfu::server", "media signal"),
        ("control::api", "device report"),
    ] {
        assert!(
            about_the_call
                .iter()
                .any(|l| l["target"] == target && l["fields"]["message"] == message),
            "no {target} \"{message}\" line about the call:\n{log}"
        );
    }
    // Lines that belong to another call or to no call never carry this one.
    let other_call = lines
        .iter()
        .filter(|l| l.to_string().contains(&call_id))
        .filter(|l| {
            l["fields"]["call_id"] != call_id.as_str() && l["span"]["call_id"] != call_id.as_str()
        })
        .count();
    assert_eq!(
        other_call, 0,
        "the callId only in a line's own fields or span"
    );
    // Nothing secret: no tokens, no SDP.
    let call_token = call.created["callToken"].as_str().unwrap();
    for secret in [
        call_token,
        push_support::PIXEL_FCM,
        "a=fingerprint",
        "v=0\\r\\n",
        "BEGIN PRIVATE KEY",
    ] {
        assert!(!log.contains(secret), "the log holds {secret:?}");
    }
}
