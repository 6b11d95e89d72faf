//! The embedded TURN relay (issue #5). Not built yet: this crate holds only
//! its README and compiles so the workspace layout is complete. Nothing here
//! relays anything; `switchboard` starts no TURN listener.
