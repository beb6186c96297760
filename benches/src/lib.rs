//! Criterion benchmarks live next to this crate: see `policy_lookup.rs`.
