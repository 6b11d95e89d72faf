//! Scenarios: who joins what, with which media, for how long.

pub mod room;
