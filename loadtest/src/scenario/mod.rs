//! Scenarios: who joins what, with which media, for how long.

pub mod calls;
pub mod churn;
pub mod room;
