//! Name resolution for CONNECT requests by domain name.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::error::Error;

/// Resolves names asynchronously with the system configuration and `/etc/hosts`.
///
/// getaddrinfo (which fast-socks5's `resolve_dns` uses) would block a runtime thread and
/// keep a single address; this keeps every address so a dead family can be skipped.
pub(crate) struct NameResolver {
    inner: TokioResolver,
}

impl NameResolver {
    /// Reads the system configuration. Without a usable `/etc/resolv.conf` (containers often
    /// have none) it still answers from `/etc/hosts`, so local names keep working.
    ///
    /// # Errors
    ///
    /// When the resolver cannot be built (only possible with TLS transports configured).
    pub(crate) fn from_system() -> io::Result<Self> {
        let mut builder = match TokioResolver::builder_tokio() {
            Ok(builder) => builder,
            Err(err) => {
                tracing::warn!(
                    error = %err,
                    "no usable DNS configuration; resolving names from /etc/hosts only"
                );
                TokioResolver::builder_with_config(
                    ResolverConfig::from_name_servers(Vec::new()),
                    TokioRuntimeProvider::default(),
                )
            }
        };
        let options = builder.options_mut();
        options.use_hosts_file = ResolveHosts::Always;
        // Ask for both families at once; the connect step interleaves them.
        options.ip_strategy = LookupIpStrategy::Ipv6AndIpv4;
        let inner = builder.build().map_err(io::Error::other)?;
        Ok(Self { inner })
    }

    /// All addresses of `name`, in the resolver's order.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownName`] for NXDOMAIN or no A/AAAA records, [`Error::Resolve`] when the
    /// resolver cannot answer within `timeout`.
    pub(crate) async fn lookup(&self, name: &str, timeout: Duration) -> Result<Vec<IpAddr>, Error> {
        let answer = tokio::time::timeout(timeout, self.inner.lookup_ip(name))
            .await
            .map_err(|_| Error::Resolve {
                name: name.to_owned(),
                reason: format!("no answer within {timeout:?}"),
            })?;
        match answer {
            Ok(lookup) => {
                let addrs: Vec<IpAddr> = lookup.iter().collect();
                if addrs.is_empty() {
                    Err(Error::UnknownName {
                        name: name.to_owned(),
                    })
                } else {
                    Ok(addrs)
                }
            }
            Err(err) if err.is_nx_domain() || err.is_no_records_found() => {
                Err(Error::UnknownName {
                    name: name.to_owned(),
                })
            }
            Err(err) => Err(Error::Resolve {
                name: name.to_owned(),
                reason: err.to_string(),
            }),
        }
    }
}

impl fmt::Debug for NameResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NameResolver").finish_non_exhaustive()
    }
}

/// Orders addresses for connect attempts: families alternate, starting with the family the
/// resolver listed first, so one dead family costs at most every other attempt.
pub(crate) fn interleave(addrs: Vec<IpAddr>, limit: usize) -> Vec<IpAddr> {
    let Some(first) = addrs.first() else {
        return addrs;
    };
    let first_is_v6 = first.is_ipv6();
    let (mut primary, mut secondary): (Vec<IpAddr>, Vec<IpAddr>) = addrs
        .into_iter()
        .partition(|addr| addr.is_ipv6() == first_is_v6);
    let mut out = Vec::with_capacity(limit.min(primary.len() + secondary.len()));
    primary.reverse();
    secondary.reverse();
    while out.len() < limit {
        match (primary.pop(), secondary.pop()) {
            (None, None) => break,
            (a, b) => {
                out.extend(a);
                if out.len() < limit {
                    out.extend(b);
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(list: &[&str]) -> Vec<IpAddr> {
        list.iter()
            .map(|s| s.parse().expect("test address"))
            .collect()
    }

    #[test]
    fn families_alternate_within_the_limit() {
        let table: &[(&[&str], usize, &[&str])] = &[
            (&[], 4, &[]),
            (&["::1", "::2", "10.0.0.1"], 4, &["::1", "10.0.0.1", "::2"]),
            (
                &["10.0.0.1", "10.0.0.2", "::1", "::2"],
                4,
                &["10.0.0.1", "::1", "10.0.0.2", "::2"],
            ),
            (
                &["10.0.0.1", "10.0.0.2", "::1", "::2"],
                3,
                &["10.0.0.1", "::1", "10.0.0.2"],
            ),
            (
                &["10.0.0.1", "10.0.0.2", "10.0.0.3"],
                2,
                &["10.0.0.1", "10.0.0.2"],
            ),
            (&["::1", "10.0.0.1"], 1, &["::1"]),
            (&["::1", "10.0.0.1"], 0, &[]),
        ];
        for (input, limit, expected) in table {
            assert_eq!(
                interleave(ips(input), *limit),
                ips(expected),
                "{input:?} limit {limit}"
            );
        }
    }
}
