//! Shared, swappable policy.

use std::fmt;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use mptcp_policy::Policy;

/// The policy the server consults, replaceable while it runs.
///
/// Each connection loads the policy once, at its connect step, so a [`PolicyHandle::store`]
/// applies from the next connection on; readers never wait for writers and connections in
/// flight keep what they had (a live socket cannot be re-configured anyway).
#[derive(Clone)]
pub struct PolicyHandle(Arc<ArcSwap<Policy>>);

impl PolicyHandle {
    /// Wraps `policy` for sharing between the server and whoever edits it.
    #[must_use]
    pub fn new(policy: Policy) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(policy)))
    }

    /// The current policy.
    #[must_use]
    pub fn load(&self) -> Arc<Policy> {
        self.0.load_full()
    }

    /// Replaces the policy for all connections that reach their connect step from now on.
    pub fn store(&self, policy: Policy) {
        self.0.store(Arc::new(policy));
    }

    /// Edits a copy of the current policy and stores it, as one atomic step: two concurrent
    /// edits (two REST requests) both land, neither overwrites the other. `edit` runs again
    /// on the newer policy if another store came in between, so it should only compute.
    pub fn update<R>(&self, mut edit: impl FnMut(&mut Policy) -> R) -> R {
        let mut current = self.0.load_full();
        loop {
            let mut next = Policy::clone(&current);
            let result = edit(&mut next);
            let previous = self.0.compare_and_swap(&current, Arc::new(next));
            if Arc::ptr_eq(&previous, &current) {
                return result;
            }
            current = Guard::into_inner(previous);
        }
    }
}

impl Default for PolicyHandle {
    fn default() -> Self {
        Self::new(Policy::default())
    }
}

impl fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyHandle")
            .field("rules", &self.load().rules().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mptcp_policy::Rule;

    #[test]
    fn concurrent_updates_all_land() -> Result<(), mptcp_policy::Error> {
        let handle = PolicyHandle::default();
        let rules: Vec<Rule> = (0..16)
            .map(|i| Rule::from_fields(&format!("10.0.0.{i}"), "0", "default", "default"))
            .collect::<Result<_, _>>()?;
        std::thread::scope(|scope| {
            for rule in &rules {
                let handle = handle.clone();
                scope.spawn(move || handle.update(|policy| policy.upsert(rule.clone())));
            }
        });
        assert_eq!(handle.load().rules().len(), rules.len());
        Ok(())
    }

    #[test]
    fn store_replaces_what_load_returns() -> Result<(), mptcp_policy::Error> {
        let handle = PolicyHandle::default();
        let before = handle.load();
        handle.store("127.0.0.1,0,default,default,\n.\n".parse()?);
        assert!(
            before.rules().is_empty(),
            "a loaded policy must not change under its reader"
        );
        assert!(
            !handle
                .load()
                .lookup(None, [127, 0, 0, 1].into())
                .settings
                .mptcp
        );
        Ok(())
    }
}
