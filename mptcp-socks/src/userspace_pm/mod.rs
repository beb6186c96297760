//! Per-connection path management on upstream Linux: with
//! `net.mptcp.path_manager=userspace` the kernel creates no subflows by itself, and this
//! module creates them for each outbound connection as the rule it matched says.
//!
//! - `default`: one subflow from each local address in the kernel's endpoint list
//!   (`ip mptcp endpoint`) to the server's address: what the in-kernel path manager does;
//! - `fullmesh`: every local address (the initial one and the endpoints) to every remote
//!   address (the initial one and those the server announces);
//! - `ndiffports:N`: N subflows in all over the initial pair of addresses;
//! - a subflow lost because its link went down is destroyed (so the kernel stops
//!   waiting on it) and created again when the link comes back.
//!
//! Connections this process did not open (other MPTCP programs in the namespace) get the
//! `default` treatment, which is what the in-kernel path manager would have given them;
//! connections accepted by a server in the namespace are left alone.
//!
//! The decisions live in [`planner`], which does no I/O and is tested on its own; the
//! [`driver`] talks netlink and carries them out.

mod driver;
mod planner;

pub use driver::{PmError, PmMonitor, UserspacePm, start_userspace_pm};
