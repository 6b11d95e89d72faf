//! Scenarios: who joins what, with which media, for how long.

mod api;
pub mod calls;
pub mod churn;
pub mod idle;
pub mod room;
