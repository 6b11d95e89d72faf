//! The media plane: a sans-IO SFU engine (`engine`) on str0m, and the tokio
//! shell (`server`) that owns the UDP socket, the WebSocket sessions, the
//! HTTP endpoints and the engine threads, and the process's logs and
//! traces (`telemetry`), and the operator's checks (`doctor`,
//! `push_test`). `main.rs` composes them.

pub mod config;
pub mod doctor;
pub mod engine;
pub mod metrics;
pub mod push_test;
pub mod server;
pub mod srtp;
pub mod telemetry;
