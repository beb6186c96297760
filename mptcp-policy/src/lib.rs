//! Per-destination Multipath TCP policy: which outbound connections a proxy opens as
//! MPTCP, with which scheduler and path manager.
//!
//! This crate has no async runtime and no networking beyond socket options. It holds
//! the rule model ([`Rule`], [`Destination`], [`Settings`]), the rule file ([`Policy`]'s
//! parser and writer), matching a destination to its settings ([`Policy::lookup`]), the
//! kernel probe ([`KernelSupport`]) and opening a socket for a set of settings
//! ([`open_outbound`], [`mptcp_info`], [`transport`]).
//!
//! # The rule file
//!
//! One rule per line: four comma-separated values, each line ending in a comma, and a
//! last line holding a single `.` (the format of the original C proxy, which this crate
//! reads and writes unchanged):
//!
//! ```text
//! 93.184.216.34,1,default,fullmesh,
//! 10.0.0.5,0,default,default,
//! .
//! ```
//!
//! 1. **destination**: an IPv4 or IPv6 address (`93.184.216.34`, `2001:db8::1`), a CIDR
//!    prefix (`10.0.0.0/8`), a DNS name (`example.com`), a wildcard domain
//!    (`*.example.com`: every name below `example.com`, not `example.com` itself) or `*`
//!    (every destination no other rule matches);
//! 2. **enable**: `1` to open the connection with MPTCP (falling back to TCP where the
//!    kernel or the server cannot), `0` for plain TCP;
//! 3. **scheduler**: `default`, `roundrobin` or `redundant`;
//! 4. **path manager**: `default`, `fullmesh`, `ndiffports` (`ndiffports:N` for N
//!    subflows, 1 to 8; 2 without a count) or `binder`.
//!
//! After the four fields a rule may carry options, each `key=value,`; the writer prints
//! them only where they differ from the default, so seed-form lines stay byte for byte:
//!
//! - `access=allow|deny|default`: whether connections may go ahead at all. By default a
//!   destination may be reached unless it is the proxy's own host (loopback, unspecified,
//!   its own addresses) or link-local, checked on the address the proxy connects to.
//!   `allow` on an address or prefix rule opens such an address deliberately; `deny`
//!   refuses the destination (reply 0x02), and on an address or prefix rule it holds for
//!   every name that resolves into it. See [`Policy::check_access`].
//!
//! ```
//! use mptcp_policy::{Policy, Refusal};
//!
//! let policy: Policy = "\
//! 127.0.0.1,0,default,default,access=allow,
//! 10.9.0.0/16,1,default,default,access=deny,
//! .
//! ".parse()?;
//! let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
//! // The caller says whether an address is the host itself (here: loopback).
//! assert_eq!(policy.check_access(None, ip("127.0.0.1"), true), Ok(()));
//! assert_eq!(policy.check_access(None, ip("::1"), true), Err(Refusal::Protected));
//! assert!(policy.check_access(Some("intranet.example"), ip("10.9.1.2"), false).is_err());
//! assert_eq!(policy.to_string().lines().next(), Some("127.0.0.1,0,default,default,access=allow,"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Beyond the original format: `#` starts a comment, blank lines are ignored, the trailing
//! comma and the final `.` are optional, keywords are case-insensitive. Each destination
//! may appear once. The writer ([`Policy`]'s `Display`) always produces the original form
//! (comments are not kept), so writing and reading back gives the same policy.
//!
//! # Which rule applies
//!
//! The most specific rule wins (see [`Policy::lookup`]): for a request by name, the rule
//! for that exact name, then the longest matching wildcard; then the rule for the exact
//! address, then the longest matching prefix; then `*`; then the built-in default, which
//! tries MPTCP and falls back to TCP. A request by address never meets name rules.
//!
//! ```
//! use mptcp_policy::{Policy, Scheduler};
//!
//! let policy: Policy = "\
//! 10.0.0.0/8,0,default,default,
//! 10.1.2.3,1,redundant,fullmesh,
//! *.example.com,1,roundrobin,default,
//! .
//! ".parse()?;
//!
//! let m = policy.lookup(None, "10.1.2.3".parse()?);
//! assert!(m.settings.mptcp);
//! assert_eq!(m.settings.scheduler, Scheduler::Redundant);
//!
//! assert!(!policy.lookup(None, "10.9.9.9".parse()?).settings.mptcp);
//!
//! // A name rule beats the address the name resolved to.
//! let m = policy.lookup(Some("www.example.com"), "10.9.9.9".parse()?);
//! assert_eq!(m.rule.map(|r| r.destination.to_string()).as_deref(), Some("*.example.com"));
//!
//! // Errors name the line and the offending text.
//! let err = "10.0.0.1,1,default,default,\n10.0.0.2,1,fastest,default,\n".parse::<Policy>().unwrap_err();
//! assert_eq!(err.line(), Some(2));
//! assert!(err.to_string().contains("fastest"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Opening sockets
//!
//! [`open_outbound`] creates the socket for a rule's settings: `IPPROTO_MPTCP` on upstream
//! Linux (5.6+), falling back to TCP where the kernel refuses, or a TCP socket with the
//! legacy kernel's `MPTCP_ENABLED` / `MPTCP_SCHEDULER` / `MPTCP_PATH_MANAGER` options.
//! Upstream kernels choose scheduler and path manager per network namespace, not per
//! socket, so there a rule's scheduler and path manager do not change the socket.
//! After connecting, [`transport`] tells MPTCP, fallback and plain TCP apart and
//! [`mptcp_info`] reads the subflow count.

#![warn(missing_docs)]

mod effect;
mod error;
mod kernel;
mod keyword;
mod policy;
mod rule;
#[allow(unsafe_code)] // the one module with system calls
mod sys;
mod via;

pub use effect::{Limitation, PmMode, limitations};
pub use error::{Error, Field};
pub use kernel::{Flavour, KernelSupport};
pub use policy::{Match, Policy, Refusal};
pub use rule::{Access, Destination, DomainName, IpPrefix, PathManager, Rule, Scheduler, Settings};
pub use sys::{
    MptcpInfo, Opened, Pipe, SubflowInfo, Transport, address_interfaces, effective_uid,
    fallback_count, fd_limit, interface_name, is_mptcp, listen, local_address_up, local_addresses,
    mptcp_info, open_outbound, raise_fd_limit, release_free_memory, set_fd_limit, subflows,
    transport,
};
pub use via::{UpstreamName, Via};
