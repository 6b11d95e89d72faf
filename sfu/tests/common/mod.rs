#![allow(dead_code)] // each test binary uses part of this

pub mod bot;
pub mod live;
pub mod sim;
