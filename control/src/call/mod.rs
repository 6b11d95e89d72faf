//! Calls: the pure state machine (`machine`). The store (`crate::store`),
//! the service (`crate::service`), the HTTP API and ringing build on it.

pub mod machine;

pub use machine::{
    Accepted, Call, CallError, CallerDisplay, CallEvent, CallState, CallType, Callee, Effect, EndReason,
    ParticipantState, Ring, RingState, Role, StopReason, Timeouts, UnixMillis,
};
