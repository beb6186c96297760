//! A set of rules, the rule file, and matching a destination to its settings.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;

use crate::error::{Error, excerpt};
use crate::rule::{Access, Destination, Rule, Settings, mask};

/// A set of rules with at most one rule per destination, kept in file order and indexed
/// for lookup.
///
/// Lookup costs a few hash probes whatever the number of rules: one per distinct prefix
/// length of the address family and one per label of a name, never a scan of the rules.
///
/// A policy read from text remembers the line each rule came from
/// ([`Policy::rules_with_lines`]), so that what is said about a rule later (a warning, a
/// refusal) can point at the line an operator wrote. Equality ignores those lines.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    rules: Vec<Rule>,
    /// For each rule, the 1-based line of the text it was parsed from; `None` for a rule
    /// given at run time. Always as long as `rules`.
    lines: Vec<Option<usize>>,
    index: Index,
}

/// The result of a lookup: the settings to use and the rule they come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Match<'a> {
    /// The settings to open the connection with.
    pub settings: Settings,
    /// The rule that matched, or `None` for the built-in default (try MPTCP, fall back
    /// to TCP).
    pub rule: Option<&'a Rule>,
}

/// Why [`Policy::check_access`] refused a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// A rule with `access=deny` covers the destination: the rule's destination.
    Denied(Destination),
    /// The address is the proxy's own host or link-local, and no address or prefix rule
    /// with `access=allow` covers it.
    Protected,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Denied(rule) => write!(f, "the rule for {rule} says access=deny"),
            Refusal::Protected => f.write_str(
                "the proxy's own host and link-local addresses are refused unless an address \
                 or prefix rule says access=allow",
            ),
        }
    }
}

#[derive(Debug, Clone, Default)]
struct Index {
    addrs: HashMap<IpAddr, usize>,
    /// Per prefix length, longest first: network address -> rule. IPv4 and IPv6 apart.
    prefixes_v4: Vec<(u8, HashMap<IpAddr, usize>)>,
    prefixes_v6: Vec<(u8, HashMap<IpAddr, usize>)>,
    names: HashMap<String, usize>,
    /// Keyed by the suffix after `*.`.
    wildcards: HashMap<String, usize>,
    any: Option<usize>,
}

impl Index {
    fn build(rules: &[Rule]) -> Index {
        let mut index = Index::default();
        for (i, rule) in rules.iter().enumerate() {
            index.insert(&rule.destination, i);
        }
        index
    }

    /// Points `destination` at rule `i`. Two destinations share an entry only when they
    /// are one IPv4 address and its IPv4-mapped IPv6 form; then the later rule in the
    /// file has it, as rules are inserted in file order.
    fn insert(&mut self, destination: &Destination, i: usize) {
        match destination {
            Destination::Addr(a) => {
                self.addrs.insert(a.to_canonical(), i);
            }
            Destination::Prefix(p) => {
                let list = self.prefixes_mut(p.addr());
                // Longest first.
                let at = list.partition_point(|(len, _)| *len > p.len());
                if list.get(at).is_none_or(|(len, _)| *len != p.len()) {
                    list.insert(at, (p.len(), HashMap::new()));
                }
                list[at].1.insert(p.addr(), i);
            }
            Destination::Name(n) => {
                self.names.insert(n.as_str().to_owned(), i);
            }
            Destination::Wildcard(n) => {
                self.wildcards.insert(n.as_str().to_owned(), i);
            }
            Destination::Any => self.any = Some(i),
        }
    }

    /// The rule the entry of `destination` points at: that destination's rule, or for an
    /// address possibly its IPv4/IPv4-mapped twin (see [`Index::insert`]).
    fn get(&self, destination: &Destination) -> Option<usize> {
        match destination {
            Destination::Addr(a) => self.addrs.get(&a.to_canonical()).copied(),
            Destination::Prefix(p) => self
                .prefixes(p.addr())
                .iter()
                .find(|(len, _)| *len == p.len())
                .and_then(|(_, networks)| networks.get(&p.addr()).copied()),
            Destination::Name(n) => self.names.get(n.as_str()).copied(),
            Destination::Wildcard(n) => self.wildcards.get(n.as_str()).copied(),
            Destination::Any => self.any,
        }
    }

    /// Rule `i` (for `destination`) has been taken out of `rules` (the rules left): drops
    /// its entry, hands the entry to an address twin if one is left, and moves every
    /// later rule's entry down by one.
    fn remove(&mut self, destination: &Destination, i: usize, rules: &[Rule]) {
        let held = self.get(destination) == Some(i);
        for at in self.positions_mut() {
            if *at > i {
                *at -= 1;
            }
        }
        if !held {
            return;
        }
        match destination {
            Destination::Addr(a) => {
                let key = a.to_canonical();
                self.addrs.remove(&key);
                // The last twin left takes the entry, as a rebuild would give it.
                let twin = rules.iter().rposition(|rule| {
                    matches!(rule.destination, Destination::Addr(b) if b.to_canonical() == key)
                });
                if let Some(twin) = twin {
                    self.addrs.insert(key, twin);
                }
            }
            Destination::Prefix(p) => {
                let list = self.prefixes_mut(p.addr());
                if let Some(at) = list.iter().position(|(len, _)| *len == p.len()) {
                    list[at].1.remove(&p.addr());
                    if list[at].1.is_empty() {
                        list.remove(at);
                    }
                }
            }
            Destination::Name(n) => {
                self.names.remove(n.as_str());
            }
            Destination::Wildcard(n) => {
                self.wildcards.remove(n.as_str());
            }
            Destination::Any => self.any = None,
        }
    }

    /// The prefix rules of `network`'s address family.
    fn prefixes(&self, network: IpAddr) -> &[(u8, HashMap<IpAddr, usize>)] {
        if network.is_ipv4() {
            &self.prefixes_v4
        } else {
            &self.prefixes_v6
        }
    }

    fn prefixes_mut(&mut self, network: IpAddr) -> &mut Vec<(u8, HashMap<IpAddr, usize>)> {
        if network.is_ipv4() {
            &mut self.prefixes_v4
        } else {
            &mut self.prefixes_v6
        }
    }

    /// Every rule position the index holds.
    fn positions_mut(&mut self) -> impl Iterator<Item = &mut usize> {
        self.addrs
            .values_mut()
            .chain(
                self.prefixes_v4
                    .iter_mut()
                    .chain(self.prefixes_v6.iter_mut())
                    .flat_map(|(_, networks)| networks.values_mut()),
            )
            .chain(self.names.values_mut())
            .chain(self.wildcards.values_mut())
            .chain(self.any.as_mut())
    }
}

impl Policy {
    /// A policy from rules.
    ///
    /// # Errors
    /// [`Error::Duplicate`] when two rules have the same destination.
    pub fn new(rules: Vec<Rule>) -> Result<Policy, Error> {
        let mut seen: HashMap<&Destination, usize> = HashMap::new();
        for (i, rule) in rules.iter().enumerate() {
            if let Some(first) = seen.insert(&rule.destination, i) {
                return Err(Error::Duplicate {
                    destination: rule.destination.to_string(),
                    line: 0,
                    first_line: first,
                });
            }
        }
        let index = Index::build(&rules);
        let lines = vec![None; rules.len()];
        Ok(Policy {
            rules,
            lines,
            index,
        })
    }

    /// Parses a rule file (see the crate documentation for the syntax).
    ///
    /// # Errors
    /// [`Error::Parse`] or [`Error::Duplicate`] with the 1-based line number and the
    /// offending text. Nothing is partially accepted: a file with one bad line yields
    /// no policy, so the caller can keep the last good one.
    pub fn parse(text: &str) -> Result<Policy, Error> {
        let mut rules = Vec::new();
        let mut lines = Vec::new();
        let mut lines_of: HashMap<Destination, usize> = HashMap::new();
        let mut end: Option<usize> = None;
        for (i, raw) in text.lines().enumerate() {
            let line_no = i + 1;
            let content = raw.split_once('#').map_or(raw, |(before, _)| before).trim();
            if content.is_empty() {
                continue;
            }
            if let Some(end_line) = end {
                return Err(Error::Parse {
                    line: line_no,
                    text: excerpt(raw),
                    reason: format!("text after the final '.' on line {end_line}"),
                });
            }
            if content == "." {
                end = Some(line_no);
                continue;
            }
            let rule: Rule = content.parse().map_err(|e| Error::Parse {
                line: line_no,
                text: excerpt(raw),
                reason: match e {
                    // `input` is an excerpt already; compare it as one.
                    Error::Invalid {
                        reason,
                        field,
                        input,
                    } if input != excerpt(content) => {
                        format!("invalid {field} \"{input}\": {reason}")
                    }
                    Error::Invalid { reason, .. } => reason,
                    other => other.to_string(),
                },
            })?;
            if let Some(first_line) = lines_of.insert(rule.destination.clone(), line_no) {
                return Err(Error::Duplicate {
                    destination: rule.destination.to_string(),
                    line: line_no,
                    first_line,
                });
            }
            rules.push(rule);
            lines.push(Some(line_no));
        }
        let index = Index::build(&rules);
        Ok(Policy {
            rules,
            lines,
            index,
        })
    }

    /// The rules in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// The rules in file order, each with the 1-based line of the text it was parsed from
    /// ([`Policy::parse`]), or `None` for a rule given at run time ([`Policy::new`], and
    /// [`Policy::upsert`], which also clears the line of a rule it replaces).
    ///
    /// The lines are those of the text parsed: a policy written out since (its `Display`
    /// drops comments and blank lines) keeps the numbers of the text it was read from.
    pub fn rules_with_lines(&self) -> impl ExactSizeIterator<Item = (&Rule, Option<usize>)> {
        self.rules.iter().zip(self.lines.iter().copied())
    }

    /// The number of rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// Whether there are no rules (every destination gets the built-in default).
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rule for exactly this destination, if any.
    pub fn get(&self, destination: &Destination) -> Option<&Rule> {
        self.position(destination).map(|i| &self.rules[i])
    }

    /// Where the rule for exactly this destination is in [`Policy::rules`] (file order),
    /// if there is one. A few hash probes, as for [`Policy::lookup`].
    pub fn position(&self, destination: &Destination) -> Option<usize> {
        match self.index.get(destination) {
            Some(i) if self.rules[i].destination == *destination => Some(i),
            // The entry is an address twin's (or none): this destination, if present,
            // is not the last of its twins.
            Some(_) if matches!(destination, Destination::Addr(_)) => self
                .rules
                .iter()
                .position(|r| &r.destination == destination),
            _ => None,
        }
    }

    /// Adds a rule at the end, or replaces the rule for the same destination in place.
    /// Returns the rule it replaced. The rule has no line (see
    /// [`Policy::rules_with_lines`]).
    ///
    /// Costs a few hash probes whatever the number of rules (the index is updated, not
    /// rebuilt), so that one change to a large policy stays cheap.
    pub fn upsert(&mut self, rule: Rule) -> Option<Rule> {
        match self.position(&rule.destination) {
            Some(i) => {
                // Same destination, same index entry.
                self.lines[i] = None;
                Some(std::mem::replace(&mut self.rules[i], rule))
            }
            None => {
                self.index.insert(&rule.destination, self.rules.len());
                self.rules.push(rule);
                self.lines.push(None);
                None
            }
        }
    }

    /// Removes the rule for this destination and returns it. The rules after it move up
    /// by one: this costs a pass over the rules, but no rebuild of the index.
    pub fn remove(&mut self, destination: &Destination) -> Option<Rule> {
        let i = self.position(destination)?;
        let old = self.rules.remove(i);
        self.lines.remove(i);
        self.index.remove(&old.destination, i, &self.rules);
        Some(old)
    }

    /// The settings for a connection to `addr`, requested by `name` if the client gave
    /// a name. Precedence, first hit wins:
    ///
    /// 1. if a name was given: the rule for exactly that name, then the wildcard rule
    ///    with the longest suffix of it;
    /// 2. the rule for exactly `addr`, then the prefix rule with the longest prefix
    ///    containing it;
    /// 3. the catch-all rule `*`;
    /// 4. the built-in default: try MPTCP, fall back to TCP.
    ///
    /// A request by address never meets name rules (the proxy does not look names up
    /// in reverse). A request by name that no name rule matches still meets the address
    /// rules of the address it resolved to, so the seed's address-only files keep
    /// working for clients that send names.
    pub fn lookup(&self, name: Option<&str>, addr: IpAddr) -> Match<'_> {
        let hit = name
            .and_then(|n| self.match_name(n))
            .or_else(|| self.match_addr(addr))
            .or(self.index.any);
        self.matched(hit)
    }

    /// Whether an address or prefix rule says `access=deny`: then a name must be resolved
    /// before a connection to it goes anywhere, so that the block holds under every name.
    pub fn denies_addresses(&self) -> bool {
        self.rules.iter().any(|rule| {
            rule.access == Access::Deny
                && matches!(
                    rule.destination,
                    Destination::Addr(_) | Destination::Prefix(_)
                )
        })
    }

    /// The match for a request by `name` when no address can change it: a name rule
    /// matches, or the policy has no address or prefix rules (then `*` or the built-in
    /// default). `None` means the answer depends on the address: resolve the name and use
    /// [`Policy::lookup`]. Lets a proxy hand a name to an upstream without resolving it.
    pub fn lookup_name(&self, name: &str) -> Option<Match<'_>> {
        let index = &self.index;
        let hit = match self.match_name(name) {
            Some(i) => Some(i),
            None if index.addrs.is_empty()
                && index.prefixes_v4.is_empty()
                && index.prefixes_v6.is_empty() =>
            {
                index.any
            }
            None => return None,
        };
        Some(self.matched(hit))
    }

    /// The match for rule `hit`, or the built-in default.
    fn matched(&self, hit: Option<usize>) -> Match<'_> {
        match hit {
            Some(i) => Match {
                settings: self.rules[i].settings,
                rule: Some(&self.rules[i]),
            },
            None => Match {
                settings: Settings::default(),
                rule: None,
            },
        }
    }

    /// Whether a connection to `addr`, requested by `name` if the client gave a name, may
    /// go ahead. `protected` says whether `addr` is the proxy's own host or link-local
    /// (the caller knows the host's addresses; this crate does not look).
    ///
    /// 1. The rule [`Policy::lookup`] picks says `access=deny`: refused.
    /// 2. The address's own rules (exact address, then longest prefix; never name rules
    ///    or `*`) say `access=deny`: refused, so a blocked network stays blocked under
    ///    any name. They say `access=allow`: allowed, even when protected.
    /// 3. `protected`: refused. Only an address or prefix rule can open the host itself,
    ///    because a name can be made to resolve anywhere (DNS rebinding).
    /// 4. Allowed.
    ///
    /// # Errors
    /// The [`Refusal`] that applies.
    pub fn check_access(
        &self,
        name: Option<&str>,
        addr: IpAddr,
        protected: bool,
    ) -> Result<(), Refusal> {
        let denied = |i: usize| Refusal::Denied(self.rules[i].destination.clone());
        if let Some(rule) = self.lookup(name, addr).rule
            && rule.access == Access::Deny
        {
            return Err(Refusal::Denied(rule.destination.clone()));
        }
        match self.match_addr(addr) {
            Some(i) if self.rules[i].access == Access::Deny => Err(denied(i)),
            Some(i) if self.rules[i].access == Access::Allow => Ok(()),
            _ if protected => Err(Refusal::Protected),
            _ => Ok(()),
        }
    }

    fn match_name(&self, name: &str) -> Option<usize> {
        let name = name.strip_suffix('.').unwrap_or(name);
        let lowered;
        let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
            lowered = name.to_ascii_lowercase();
            lowered.as_str()
        } else {
            name
        };
        if let Some(&i) = self.index.names.get(name) {
            return Some(i);
        }
        if self.index.wildcards.is_empty() {
            return None;
        }
        // Longest suffix first: for a.b.example.com try b.example.com, example.com, com.
        name.match_indices('.')
            .find_map(|(dot, _)| self.index.wildcards.get(&name[dot + 1..]).copied())
    }

    fn match_addr(&self, addr: IpAddr) -> Option<usize> {
        let addr = addr.to_canonical();
        if let Some(&i) = self.index.addrs.get(&addr) {
            return Some(i);
        }
        self.index
            .prefixes(addr)
            .iter()
            .find_map(|(len, networks)| networks.get(&mask(addr, *len)).copied())
    }
}

impl PartialEq for Policy {
    /// The same rules in the same order. Where they were read from does not count: the
    /// rule store compares the file it reads with the policy in force to tell whether
    /// anything changed, and a comment added above a rule (which moves its line) or the
    /// store's own rewrite of a commented file (which drops comments) changes nothing.
    fn eq(&self, other: &Self) -> bool {
        self.rules == other.rules
    }
}

impl Eq for Policy {}

impl fmt::Display for Policy {
    /// The seed's file form: one `destination,enable,scheduler,path_manager,` line per
    /// rule and a final `.` line. Comments are not kept.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for rule in &self.rules {
            writeln!(f, "{rule}")?;
        }
        writeln!(f, ".")
    }
}

impl std::str::FromStr for Policy {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Policy::parse(text)
    }
}

#[cfg(test)]
mod tests;
