//! `switchboard-loadtest`: bots that join over the real WebSocket protocol
//! with real call tokens and publish synthetic media (`bot`, driven on
//! sockets by `runner`), scenarios (`scenario`), statistics and the report
//! (`report`, `progress`), scenario files (`scenario_file`), and a bare-UDP
//! baseline (`baseline`) and a Janus videoroom driver (`janus`), so the same
//! bots measure Janus. The SFU's tests use the same bot.

pub mod baseline;
pub use native::bot;
pub mod janus;
pub mod pinning;
pub mod progress;
pub mod report;
pub mod runner;
pub mod scenario;
pub mod scenario_file;
pub mod server_stats;
