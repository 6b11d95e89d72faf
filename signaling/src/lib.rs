//! Switchboard signaling protocol v1: every message a client and the server
//! exchange over the one WebSocket per device, as serde types, plus the JSON
//! codec and a small WebSocket client.
//!
//! This crate holds no server logic. It is shared by the server (`sfu`), the
//! client core (`native`) and the bots (`loadtest`). `PROTOCOL.md` documents
//! every message with an example.

mod codec;
mod messages;

pub mod client;

pub use codec::{DEFAULT_MAX_MESSAGE_BYTES, DecodeError, decode_client, decode_server, encode};
pub use messages::*;

/// The protocol version this crate speaks. A client states it in `join`.
pub const PROTOCOL_VERSION: u32 = 1;
