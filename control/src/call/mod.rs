//! Calls: the pure state machine (`machine`). The store (`crate::store`),
//! the service (`crate::service`), the HTTP API and ringing build on it.

pub mod machine;

pub use machine::{
    Accepted, Call, CallError, CallEvent, CallState, CallType, Callee, CallerDisplay, Effect,
    EndReason, ParticipantState, Ring, RingState, Role, StopReason, Timeouts, UnixMillis,
};
