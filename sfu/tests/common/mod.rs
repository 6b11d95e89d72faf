#![allow(dead_code)] // each test binary uses part of this

pub mod bot;
pub mod sim;
pub mod live;
