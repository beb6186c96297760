//! Helpers shared by the integration tests of this package.
#![allow(dead_code)]

pub mod daemon;
pub mod netns;
pub mod socks;
