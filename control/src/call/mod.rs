//! Calls: the pure state machine (`machine`). The store, the HTTP API and
//! ringing build on it (issue #3, in progress); none of them exists yet.

pub mod machine;

pub use machine::{
    Accepted, Call, CallError, CallEvent, CallState, CallType, Callee, Effect, EndReason,
    ParticipantState, Ring, RingState, Role, StopReason, Timeouts, UnixMillis,
};
