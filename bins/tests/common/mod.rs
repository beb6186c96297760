//! Helpers shared by the integration tests of this package that run the daemon; the
//! rest (namespaces, topologies, the SOCKS client) is in `mptcp-test-support`.
#![allow(dead_code)]

pub(crate) mod daemon;
