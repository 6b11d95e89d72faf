#![allow(dead_code)] // each test binary uses part of this

pub mod live;
pub mod process;
pub mod sim;
