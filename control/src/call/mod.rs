//! Calls: the pure state machine (`machine`). The store (`crate::store`),
//! the service (`crate::service`), the HTTP API and ringing build on it.

pub mod machine;

pub use machine::{
    Accepted, Call, CallError, CallEvent, CallState, CallType, Callee, CallerDisplay, Effect,
    EndReason, ParticipantState, Ring, RingState, Role, StopReason, Timeouts, UnixMillis,
};

/// The wall clock in Unix milliseconds: what shells pass to the machine.
pub fn unix_millis() -> UnixMillis {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
