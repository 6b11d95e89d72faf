use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{ClientMessage, ErrorCode, ServerMessage};

/// Group-call SDPs are large (every m-line lists every codec): 256 KiB.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("message of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("not a valid message: {0}")]
    Malformed(String),
}

impl DecodeError {
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::TooLarge { .. } => ErrorCode::MessageTooLarge,
            DecodeError::Malformed(_) => ErrorCode::BadMessage,
        }
    }
}

pub fn decode_client(text: &str, limit: usize) -> Result<ClientMessage, DecodeError> {
    decode(text, limit)
}

pub fn decode_server(text: &str, limit: usize) -> Result<ServerMessage, DecodeError> {
    decode(text, limit)
}

fn decode<T: DeserializeOwned>(text: &str, limit: usize) -> Result<T, DecodeError> {
    if text.len() > limit {
        return Err(DecodeError::TooLarge {
            size: text.len(),
            limit,
        });
    }
    serde_json::from_str(text).map_err(|e| DecodeError::Malformed(e.to_string()))
}

pub fn encode<T: Serialize>(message: &T) -> String {
    // Serializing these plain enums of strings and numbers cannot fail.
    serde_json::to_string(message).expect("signaling messages always serialize")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    #[test]
    fn join_round_trips_with_defaults() {
        let text = r#"{"type":"join","protocolVersion":1,"token":"t"}"#;
        let msg = decode_client(text, DEFAULT_MAX_MESSAGE_BYTES).unwrap();
        assert_eq!(
            msg,
            ClientMessage::Join {
                protocol_version: 1,
                token: "t".into(),
                auto_subscribe: true,
                resume_participant_id: None
            }
        );
        assert_eq!(decode_client(&encode(&msg), 1024).unwrap(), msg);
    }

    #[test]
    fn trickle_uses_browser_field_names() {
        let text = r#"{"type":"trickle","target":"publisher","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}}"#;
        let msg = decode_client(text, DEFAULT_MAX_MESSAGE_BYTES).unwrap();
        let ClientMessage::Trickle { target, candidate } = msg else {
            panic!("decoded {msg:?}");
        };
        assert_eq!(target, PeerTarget::Publisher);
        assert_eq!(candidate.sdp_m_line_index, Some(0));
    }

    #[test]
    fn server_error_has_code_and_message() {
        let text = encode(&ServerMessage::error(ErrorCode::InvalidToken, "expired"));
        assert_eq!(
            text,
            r#"{"type":"error","code":"invalid_token","message":"expired"}"#
        );
    }

    #[test]
    fn unknown_type_is_malformed() {
        let err = decode_client(r#"{"type":"dance"}"#, 1024).unwrap_err();
        assert_eq!(err.code(), ErrorCode::BadMessage);
    }

    #[test]
    fn clients_read_what_newer_servers_add_as_unknown() {
        // A new message type, new enum values and new fields: an app in the
        // stores decodes them all and goes on.
        let new_type = r#"{"type":"reactionSent","reaction":["p1"]}"#;
        assert_eq!(decode_server(new_type, 1024), Ok(ServerMessage::Unknown));
        let new_field = r#"{"type":"speakersChanged","speakers":[{"participantId":"p1","level":0.5,"voice":true}]}"#;
        assert!(matches!(
            decode_server(new_field, 1024),
            Ok(ServerMessage::SpeakersChanged { speakers }) if speakers[0].participant_id == "p1"
        ));
        let new_reason = r#"{"type":"left","reason":"moved_to_another_node","node":"eu-2"}"#;
        assert_eq!(
            decode_server(new_reason, 1024),
            Ok(ServerMessage::Left {
                reason: LeaveReason::Unknown
            })
        );
        let new_code = r#"{"type":"error","code":"region_draining","message":"m","retryIn":3}"#;
        assert_eq!(
            decode_server(new_code, 1024),
            Ok(ServerMessage::error(ErrorCode::Unknown, "m"))
        );
        let new_state = r#"{"type":"participantStateChanged","participantId":"p1","state":"away"}"#;
        assert!(matches!(
            decode_server(new_state, 1024),
            Ok(ServerMessage::ParticipantStateChanged {
                state: ParticipantState::Unknown,
                ..
            })
        ));
    }

    #[test]
    fn oversize_is_refused_before_parsing() {
        let text = format!(r#"{{"type":"publish","sdp":"{}"}}"#, "a".repeat(2000));
        assert_eq!(
            decode_client(&text, 1000).unwrap_err(),
            DecodeError::TooLarge {
                size: text.len(),
                limit: 1000
            }
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".*") {
            let _ = decode_client(&s, DEFAULT_MAX_MESSAGE_BYTES);
            let _ = decode_server(&s, DEFAULT_MAX_MESSAGE_BYTES);
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let s = String::from_utf8_lossy(&b);
            let _ = decode_client(&s, DEFAULT_MAX_MESSAGE_BYTES);
        }
    }
}
