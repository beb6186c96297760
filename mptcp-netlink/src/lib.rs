//! Client for the MPTCP path-manager netlink family: being written.
