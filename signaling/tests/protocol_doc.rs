//! Every JSON example in PROTOCOL.md decodes as the message type of its
//! section, and every message type has an example.

use std::collections::BTreeSet;

use signaling::{DEFAULT_MAX_MESSAGE_BYTES, DataReceived, DataSend, decode_client, decode_server};

fn examples(section: &str) -> Vec<String> {
    section
        .split("```json\n")
        .skip(1)
        .map(|block| block.split("\n```").next().unwrap().to_string())
        .collect()
}

fn type_of(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v["type"].as_str().unwrap().to_string()
}

#[test]
fn every_documented_example_decodes_and_every_type_is_documented() {
    let doc = include_str!("../PROTOCOL.md");
    let (_, rest) = doc.split_once("## Client → server").unwrap();
    let (client, rest) = rest.split_once("## Server → client").unwrap();
    let (server, data) = rest.split_once("## Data channels").unwrap();

    let mut client_types = BTreeSet::new();
    for ex in examples(client) {
        decode_client(&ex, DEFAULT_MAX_MESSAGE_BYTES).unwrap_or_else(|e| panic!("{ex}: {e}"));
        client_types.insert(type_of(&ex));
    }
    let mut server_types = BTreeSet::new();
    for ex in examples(server) {
        decode_server(&ex, DEFAULT_MAX_MESSAGE_BYTES).unwrap_or_else(|e| panic!("{ex}: {e}"));
        server_types.insert(type_of(&ex));
    }
    let data = examples(data);
    assert_eq!(data.len(), 3, "two sends and one receipt");
    for ex in &data[..2] {
        serde_json::from_str::<DataSend>(ex).unwrap_or_else(|e| panic!("{ex}: {e}"));
    }
    let received: DataReceived = serde_json::from_str(&data[2]).unwrap();
    assert!(!received.from.is_empty());
    let want = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        client_types,
        want(&[
            "join",
            "publish",
            "unpublish",
            "subscriberAnswer",
            "trickle",
            "subscribe",
            "unsubscribe",
            "mute",
            "restartIce",
            "leave",
            "ping",
            "updateSubscription"
        ])
    );
    assert_eq!(
        server_types,
        want(&[
            "joined",
            "publishAnswer",
            "subscriberOffer",
            "trickle",
            "participantJoined",
            "participantLeft",
            "participantStateChanged",
            "trackPublished",
            "trackUnpublished",
            "trackMuted",
            "speakersChanged",
            "qualityUpdate",
            "streamStateChanged",
            "left",
            "pong",
            "error"
        ])
    );
}
