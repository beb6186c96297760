//! Runnable examples live next to this crate: see `embed.rs`.
