//! The call-control plane. So far: call tokens (`call_token`), API keys and
//! user access tokens (`auth`), the pure call state machine (`call`), the
//! device model (`device`) and the embedded store (`store`). The store, device registry, ringing, push
//! senders and the HTTP API come with their issues; nothing here pretends to
//! do them yet, and `switchboard` does not mount call control.

pub mod api;
pub mod auth;
pub mod call;
pub mod call_token;
pub mod device;
pub mod metrics;
pub mod push;
pub mod rate_limit;
pub mod ringing;
pub mod service;
pub mod store;
