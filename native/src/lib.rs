//! The client core (issue #6, in progress). Built so far: the call engine
//! (`call_engine`), a sans-IO state machine of one device's calls whose
//! outputs drive the ports (system call UI, call API, media session), and
//! the device's events connection (`events`: auth, ring acknowledgement,
//! keepalive, reconnect with backoff). Not built yet: the media signaling
//! client, the port traits, UniFFI bindings, the Capacitor plugin and the
//! demo page.

pub mod call_engine;
pub mod events;
