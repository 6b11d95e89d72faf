//! The media plane: a sans-IO SFU engine (`engine`) on str0m, and the tokio
//! shell (`server`) that owns the UDP socket, the WebSocket sessions, the
//! HTTP endpoints and the engine threads, and the process's logs and
//! traces (`telemetry`). `main.rs` composes them.

pub mod config;
pub mod engine;
pub mod metrics;
pub mod server;
pub mod telemetry;
