//! The shrink guard: a feed update that removes more than
//! [`Safety::max_shrink`] of the feed's entries is held, and the feed's
//! previous entries stay enforced, until the shrink has been seen on
//! [`Safety::hold_refreshes`] consecutive refreshes or the operator forces
//! it.
//!
//! Why: the common way a feed "loses" most of its entries is a broken
//! producer or a truncated download that still parses (a list cut after
//! line 100 is a valid list). Applying that at once unblocks everything the
//! feed was protecting against; a real shrink, by contrast, persists, so
//! waiting a few refreshes costs little. A bigger shrink than the one held
//! restarts the count (the feed is still moving); a smaller one continues it.
//!
//! The guard is plain data ([`Serialize`]/[`Deserialize`]) so the agent
//! persists it in the state directory: a restart must not reset the count
//! and let a held shrink through on the first refresh.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::intel::config::Safety;

/// One feed's held update.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldShrink {
    /// Entry count still enforced.
    pub previous: usize,
    /// Entry count of the latest held update.
    pub proposed: usize,
    /// Consecutive refreshes the shrink has been seen (first sighting = 1).
    pub seen: u32,
}

impl HeldShrink {
    /// Fraction of `previous` the update would remove.
    pub fn shrink_fraction(&self) -> f64 {
        shrink_fraction(self.previous, self.proposed)
    }
}

/// What to do with a feed update.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum GuardDecision {
    /// Apply the new entries.
    Apply,
    /// Keep enforcing the previous entries; report this.
    Hold {
        /// Entry count still enforced.
        previous: usize,
        /// Entry count of the held update.
        proposed: usize,
        /// Fraction of `previous` the update would remove.
        shrink_fraction: f64,
        /// Consecutive refreshes the shrink has been seen so far.
        seen: u32,
        /// Sightings after which it is applied.
        needed: u32,
    },
}

impl GuardDecision {
    /// Whether the update is to be applied.
    pub fn is_apply(&self) -> bool {
        matches!(self, GuardDecision::Apply)
    }
}

/// Held updates by feed name.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ShrinkGuard {
    held: BTreeMap<String, HeldShrink>,
}

impl ShrinkGuard {
    /// No feed held.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decide on an update of `feed` from `previous_count` enforced entries
    /// to `new_count`. Call it once per successful refresh (a 304 Not
    /// Modified of held content is a sighting too) with the counts of the
    /// same unit (e.g. distinct entries). `forced` applies whatever the
    /// shrink, as the operator's override; an update that does not shrink
    /// by more than `max_shrink` applies and clears any hold.
    pub fn evaluate(
        &mut self,
        feed: &str,
        previous_count: usize,
        new_count: usize,
        safety: &Safety,
        forced: bool,
    ) -> GuardDecision {
        let fraction = shrink_fraction(previous_count, new_count);
        if forced || fraction <= safety.max_shrink {
            self.held.remove(feed);
            return GuardDecision::Apply;
        }
        let needed = safety.hold_refreshes.max(1);
        let seen = match self.held.get(feed) {
            // The same or a smaller shrink of the same baseline continues
            // the count; anything else is a new situation.
            Some(h) if h.previous == previous_count && new_count >= h.proposed => {
                h.seen.saturating_add(1)
            }
            _ => 1,
        };
        if seen >= needed {
            self.held.remove(feed);
            return GuardDecision::Apply;
        }
        self.held.insert(
            feed.to_string(),
            HeldShrink {
                previous: previous_count,
                proposed: new_count,
                seen,
            },
        );
        GuardDecision::Hold {
            previous: previous_count,
            proposed: new_count,
            shrink_fraction: fraction,
            seen,
            needed,
        }
    }

    /// The held update of `feed`.
    pub fn get(&self, feed: &str) -> Option<&HeldShrink> {
        self.held.get(feed)
    }

    /// Every held update, by feed name.
    pub fn held(&self) -> impl Iterator<Item = (&str, &HeldShrink)> {
        self.held.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// Forget `feed`'s hold (e.g. its last-known-good was replaced some
    /// other way).
    pub fn clear(&mut self, feed: &str) {
        self.held.remove(feed);
    }

    /// Keep only holds of feeds for which `keep` is true (drop the state of
    /// feeds removed from the configuration).
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.held.retain(|k, _| keep(k));
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

/// Fraction of `previous` that going to `new` removes (0 when it grows or
/// there was nothing).
pub fn shrink_fraction(previous: usize, new: usize) -> f64 {
    if previous == 0 || new >= previous {
        0.0
    } else {
        (previous - new) as f64 / previous as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn safety() -> Safety {
        Safety::default() // max_shrink 0.5, hold_refreshes 3
    }

    fn hold(previous: usize, proposed: usize, seen: u32) -> GuardDecision {
        GuardDecision::Hold {
            previous,
            proposed,
            shrink_fraction: shrink_fraction(previous, proposed),
            seen,
            needed: 3,
        }
    }

    #[test]
    fn growth_and_small_shrinks_apply() {
        let mut g = ShrinkGuard::new();
        let s = safety();
        assert_eq!(g.evaluate("f", 0, 0, &s, false), GuardDecision::Apply);
        assert_eq!(g.evaluate("f", 0, 10, &s, false), GuardDecision::Apply);
        assert_eq!(g.evaluate("f", 10, 20, &s, false), GuardDecision::Apply);
        // Exactly half removed is not "more than half".
        assert_eq!(g.evaluate("f", 10, 5, &s, false), GuardDecision::Apply);
        assert!(g.is_empty());
    }

    #[test]
    fn a_big_shrink_is_held_until_it_persists() {
        let mut g = ShrinkGuard::new();
        let s = safety();
        let d = g.evaluate("f", 1000, 100, &s, false);
        assert_eq!(d, hold(1000, 100, 1));
        if let GuardDecision::Hold {
            shrink_fraction, ..
        } = d
        {
            assert!((shrink_fraction - 0.9).abs() < 1e-9);
        }
        assert!(!d.is_apply());
        assert_eq!(
            g.get("f"),
            Some(&HeldShrink {
                previous: 1000,
                proposed: 100,
                seen: 1
            })
        );
        assert_eq!(g.evaluate("f", 1000, 100, &s, false), hold(1000, 100, 2));
        // Third consecutive sighting: applied, hold cleared.
        assert_eq!(g.evaluate("f", 1000, 100, &s, false), GuardDecision::Apply);
        assert!(g.get("f").is_none());
    }

    #[test]
    fn a_smaller_shrink_continues_a_bigger_one_restarts() {
        let mut g = ShrinkGuard::new();
        let s = safety();
        assert_eq!(g.evaluate("f", 1000, 100, &s, false), hold(1000, 100, 1));
        // Smaller shrink (still too big): continues.
        assert_eq!(g.evaluate("f", 1000, 300, &s, false), hold(1000, 300, 2));
        // Bigger than the one held: restarts.
        assert_eq!(g.evaluate("f", 1000, 200, &s, false), hold(1000, 200, 1));
        assert_eq!(g.evaluate("f", 1000, 200, &s, false), hold(1000, 200, 2));
        // A different baseline (e.g. state replaced) restarts too.
        assert_eq!(g.evaluate("f", 900, 200, &s, false), hold(900, 200, 1));
    }

    #[test]
    fn a_non_shrinking_update_clears_the_hold() {
        let mut g = ShrinkGuard::new();
        let s = safety();
        g.evaluate("f", 1000, 10, &s, false);
        g.evaluate("f", 1000, 10, &s, false);
        assert_eq!(g.evaluate("f", 1000, 990, &s, false), GuardDecision::Apply);
        assert!(g.is_empty());
        // The count starts over.
        assert_eq!(g.evaluate("f", 1000, 10, &s, false), hold(1000, 10, 1));
    }

    #[test]
    fn force_applies_and_clears() {
        let mut g = ShrinkGuard::new();
        let s = safety();
        g.evaluate("f", 1000, 0, &s, false);
        assert_eq!(g.evaluate("f", 1000, 0, &s, true), GuardDecision::Apply);
        assert!(g.get("f").is_none());
        // Forced without a hold is just an apply.
        assert_eq!(g.evaluate("g", 10, 0, &s, true), GuardDecision::Apply);
    }

    #[test]
    fn feeds_are_independent_and_settings_apply() {
        let mut g = ShrinkGuard::new();
        let s = safety();
        g.evaluate("a", 100, 0, &s, false);
        assert_eq!(g.evaluate("b", 100, 0, &s, false), hold(100, 0, 1));
        assert_eq!(g.held().map(|(n, _)| n).collect::<Vec<_>>(), ["a", "b"]);
        g.retain(|n| n == "b");
        assert_eq!(g.held().count(), 1);
        g.clear("b");
        assert!(g.is_empty());
        // max_shrink 1.0 never holds; hold_refreshes 1 applies at once.
        let never = Safety {
            max_shrink: 1.0,
            ..s
        };
        assert_eq!(g.evaluate("a", 100, 0, &never, false), GuardDecision::Apply);
        let once = Safety {
            hold_refreshes: 1,
            ..s
        };
        assert_eq!(g.evaluate("a", 100, 0, &once, false), GuardDecision::Apply);
        let strict = Safety {
            max_shrink: 0.1,
            hold_refreshes: 2,
            ..s
        };
        assert!(matches!(
            g.evaluate("a", 100, 89, &strict, false),
            GuardDecision::Hold {
                seen: 1,
                needed: 2,
                ..
            }
        ));
        assert!(g.evaluate("a", 100, 89, &strict, false).is_apply());
    }

    /// The count survives a restart: persisted as JSON in the state dir.
    #[test]
    fn persists() {
        let mut g = ShrinkGuard::new();
        let s = safety();
        g.evaluate("f", 1000, 100, &s, false);
        g.evaluate("f", 1000, 100, &s, false);
        let json = serde_json::to_string(&g).unwrap();
        assert_eq!(
            json,
            r#"{"held":{"f":{"previous":1000,"proposed":100,"seen":2}}}"#
        );
        let mut back: ShrinkGuard = serde_json::from_str(&json).unwrap();
        assert_eq!(back, g);
        assert_eq!(
            back.evaluate("f", 1000, 100, &s, false),
            GuardDecision::Apply
        );
        let empty: ShrinkGuard = serde_json::from_str(r#"{"held":{}}"#).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn fractions() {
        assert_eq!(shrink_fraction(0, 0), 0.0);
        assert_eq!(shrink_fraction(10, 11), 0.0);
        assert_eq!(shrink_fraction(10, 0), 1.0);
        assert_eq!(shrink_fraction(4, 3), 0.25);
        let h = HeldShrink {
            previous: 4,
            proposed: 1,
            seen: 1,
        };
        assert_eq!(h.shrink_fraction(), 0.75);
    }
}
