//! Name resolution for CONNECT requests by domain name.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, ResolveHosts, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;

use crate::error::Error;

/// Resolves names asynchronously with the system configuration and `/etc/hosts`.
///
/// getaddrinfo (which fast-socks5's `resolve_dns` uses) would block a runtime thread and
/// keep a single address; this keeps every address so a dead family can be skipped.
pub(crate) struct NameResolver {
    hosts: HostsFile,
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
        // /etc/hosts is consulted first, here, as glibc's "hosts: files dns" does: a name
        // it lists gets exactly its addresses, and no DNS query for the family it lacks
        // (which, with no DNS server answering, would cost the whole DNS timeout).
        options.use_hosts_file = ResolveHosts::Never;
        // Ask for both families at once; the connect step interleaves them.
        options.ip_strategy = LookupIpStrategy::Ipv6AndIpv4;
        let inner = builder.build().map_err(io::Error::other)?;
        Ok(Self {
            hosts: HostsFile::new("/etc/hosts".into()),
            inner,
        })
    }

    /// All addresses of `name`, in the resolver's order.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownName`] for NXDOMAIN or no A/AAAA records, [`Error::Resolve`] when the
    /// resolver cannot answer within `timeout`.
    pub(crate) async fn lookup(&self, name: &str, timeout: Duration) -> Result<Vec<IpAddr>, Error> {
        if let Some(addrs) = self.hosts.lookup(name) {
            return Ok(addrs);
        }
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

/// `/etc/hosts`, read again whenever its modification time changes (one `stat` per
/// lookup), so edits apply without a restart.
struct HostsFile {
    path: PathBuf,
    /// The file's modification time when read, and its entries.
    cache: Mutex<(Option<SystemTime>, Hosts)>,
}

/// Name (lowercase, no trailing dot) -> addresses in file order.
type Hosts = HashMap<String, Vec<IpAddr>>;

impl HostsFile {
    fn new(path: PathBuf) -> Self {
        HostsFile {
            path,
            cache: Mutex::new((None, HashMap::new())),
        }
    }

    /// The addresses listed for `name` (lowercase, no trailing dot), in file order.
    fn lookup(&self, name: &str) -> Option<Vec<IpAddr>> {
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.0 != modified || modified.is_none() {
            let text = std::fs::read_to_string(&self.path).unwrap_or_default();
            *cache = (modified, parse_hosts(&text));
        }
        cache.1.get(name).cloned()
    }
}

/// `address name [alias...]` lines; `#` starts a comment; bad lines are skipped, as the
/// C library does.
fn parse_hosts(text: &str) -> Hosts {
    let mut map = Hosts::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        let Some(Ok(addr)) = fields.next().map(str::parse::<IpAddr>) else {
            continue;
        };
        for name in fields {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let addrs = map.entry(name).or_default();
            if !addrs.contains(&addr) {
                addrs.push(addr);
            }
        }
    }
    map
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
    fn hosts_lines_map_names_and_aliases_to_their_addresses() {
        let map = parse_hosts(
            "127.0.0.1 localhost\n::1 localhost ip6-localhost # v6\n\
             # 10.0.0.9 commented.test\n10.0.0.1 Server.Test. alias\nnot-an-ip name\n\n",
        );
        assert_eq!(map.get("localhost"), Some(&ips(&["127.0.0.1", "::1"])));
        assert_eq!(map.get("server.test"), Some(&ips(&["10.0.0.1"])));
        assert_eq!(map.get("alias"), Some(&ips(&["10.0.0.1"])));
        assert_eq!(map.get("ip6-localhost"), Some(&ips(&["::1"])));
        assert!(!map.contains_key("commented.test") && !map.contains_key("name"));
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
