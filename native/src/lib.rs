//! The client core: everything about a call that is the same on every
//! platform, once, in Rust; the platform layers implement the ports.
//!
//! - `call_engine`: the sans-IO state machine of one device's calls (start
//!   reading here); its outputs are port calls, API requests and media
//!   commands.
//! - `ports`: the traits a platform implements (system call UI, media,
//!   audio route, push tokens), exported with UniFFI.
//! - `client`: the shell that owns the engine and its I/O: `events` (the
//!   device's events connection), `api` (the call HTTP API), `rtc_session`
//!   (a call's media signaling with session resume).
//! - `str0m_media` + `bot`: the media port over str0m for bots, tests and
//!   the Python binding (feature `bot-media`, on by default; phone builds
//!   leave it out).

#[cfg(target_os = "android")]
mod android;
pub mod api;
#[cfg(feature = "bot-media")]
pub mod bot;
pub mod call_engine;
pub mod client;
pub mod credentials;
pub mod events;
pub mod ports;
pub mod push;
pub mod remote_tracks;
pub mod rtc_session;
#[cfg(feature = "bot-media")]
pub mod str0m_media;
pub mod tls;

uniffi::setup_scaffolding!();

/// Unix milliseconds now (ring deadlines are wall-clock).
pub fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
