//! The key-level changes between two entry sets ([`SetChanges`]): one merge
//! pass over both, what the feed agent hands the sync engine
//! ([`SetChanges::key_changes`]) instead of a whole set. Pure. (The v1
//! writer that applied them to hash maps and tries, `V1Maps`, lives in the
//! bench: `tests/src/bench/v1maps/`.)

use super::contents::{Slot, SlotKey, allow_slot, entry_slot, is_normalized};
use crate::entry::{Action, Entry, EntrySet};
use crate::kernel::layout::IdKey;
use crate::kernel::v2sync::KeyChange;

/// What a key change does, as [`SetChanges::between`] found it: the key
/// is new, its action changed, or it is gone. Public for the bench's v1
/// baseline (`tests/src/bench/v1maps/`), which hands out the ids of adds
/// before any map is touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// A key the previous set lacks, with its action.
    Add(Action),
    /// A key of both sets whose action changed, with its new action.
    Set(Action),
    /// A key the new set lacks.
    Remove,
}

/// The key-level changes from one entry set to another: every key added
/// (with its action), removed, or whose action changed. The feed agent
/// computes them once per sync and hands the engine
/// [`SetChanges::key_changes`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetChanges(pub(super) Vec<(Slot, Change)>);

impl SetChanges {
    /// The changes from `prev` to `new`: one merge pass over both, with no
    /// copy of either.
    ///
    /// Both must be normalised: nets without host bits, entries sorted by
    /// key with one entry per key, the allowlist sorted and unique, as
    /// the agent's merge of its feeds makes them ([`normalized`] makes
    /// them so; this does not, to stay clear of whole-set passes beyond
    /// the one merge pass). Debug builds check it.
    ///
    /// [`normalized`]: super::normalized
    pub fn between(prev: &EntrySet, new: &EntrySet) -> SetChanges {
        debug_assert!(
            is_normalized(prev) && is_normalized(new),
            "SetChanges::between needs normalised sets"
        );
        SetChanges(diff_sets(prev, new))
    }

    /// The changes in map terms: each key's [`Slot`] (its map and typed
    /// key) and what happens to it, in the order of the merge pass
    /// (allowlist first, then entries by key). What the bench's v1
    /// baseline (`tests/src/bench/v1maps/`) applies to its hash maps and
    /// tries.
    pub fn slots(&self) -> &[(Slot, Change)] {
        &self.0
    }

    /// How many keys change.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether nothing changes.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The changes by key in the v2 engine's terms
    /// ([`V2Sync::apply_changes`](crate::kernel::v2sync::V2Sync::apply_changes)):
    /// each key with its action in the new set, `None` when it leaves.
    pub fn key_changes(&self) -> Vec<KeyChange> {
        self.0
            .iter()
            .map(|(slot, ch)| {
                let key = match slot.key() {
                    SlotKey::Allow(n) => IdKey::Allow(n),
                    SlotKey::Entry(e) => IdKey::Entry(e),
                };
                let action = match *ch {
                    Change::Add(a) | Change::Set(a) => Some(a),
                    Change::Remove => None,
                };
                (key, action)
            })
            .collect()
    }

    /// `(added, changed, removed)` keys.
    pub fn counts(&self) -> (usize, usize, usize) {
        self.0
            .iter()
            .fold((0, 0, 0), |(a, c, r), (_, ch)| match ch {
                Change::Add(_) => (a + 1, c, r),
                Change::Set(_) => (a, c + 1, r),
                Change::Remove => (a, c, r + 1),
            })
    }
}

/// Key-level changes from `prev` to `new` (both [`normalized`](super::contents::normalized)): one merge
/// pass over the sorted lists. `None` removes a key.
fn diff_sets(prev: &EntrySet, new: &EntrySet) -> Vec<(Slot, Change)> {
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    let (a, b) = (&prev.allow, &new.allow);
    while i < a.len() || j < b.len() {
        match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) if x == y => {
                i += 1;
                j += 1;
            }
            (Some(x), Some(y)) if x < y => {
                out.push((allow_slot(x), Change::Remove));
                i += 1;
            }
            (Some(x), None) => {
                out.push((allow_slot(x), Change::Remove));
                i += 1;
            }
            (_, Some(y)) => {
                out.push((allow_slot(y), Change::Add(Action::Drop)));
                j += 1;
            }
            (None, None) => break,
        }
    }
    let (a, b) = (&prev.entries[..], &new.entries[..]);
    // Two halves at once (the merge pass streams both sets through memory):
    // split `new` in the middle and `prev` at the same key.
    if b.len() >= PARALLEL_DIFF_MIN {
        let mid = b.len() / 2;
        let key = b[mid].key();
        let pa = a.partition_point(|e| e.key() < key);
        let (lo, hi) = both(
            || diff_entries(&a[..pa], &b[..mid]),
            || diff_entries(&a[pa..], &b[mid..]),
        );
        out.extend(lo);
        out.extend(hi);
    } else {
        out.extend(diff_entries(a, b));
    }
    out
}

/// Below this many entries the diff runs on one thread.
const PARALLEL_DIFF_MIN: usize = 64 * 1024;

/// The entry part of [`diff_sets`] over two sorted slices.
fn diff_entries(a: &[Entry], b: &[Entry]) -> Vec<(Slot, Change)> {
    use std::cmp::Ordering;
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        // Nearly every entry is unchanged: an equality test is cheaper
        // than ordering the keys.
        if a[i] == b[j] {
            i += 1;
            j += 1;
            continue;
        }
        match a[i].key().cmp(&b[j].key()) {
            Ordering::Equal => {
                out.push((entry_slot(&b[j].key()), Change::Set(b[j].action)));
                i += 1;
                j += 1;
            }
            Ordering::Less => {
                out.push((entry_slot(&a[i].key()), Change::Remove));
                i += 1;
            }
            Ordering::Greater => {
                out.push((entry_slot(&b[j].key()), Change::Add(b[j].action)));
                j += 1;
            }
        }
    }
    out.extend(
        a[i..]
            .iter()
            .map(|e| (entry_slot(&e.key()), Change::Remove)),
    );
    out.extend(
        b[j..]
            .iter()
            .map(|e| (entry_slot(&e.key()), Change::Add(e.action))),
    );
    out
}

/// Run `a` and `b` at once (`b` on a scoped thread), returning both
/// results; a panic in either is propagated.
fn both<A: Send, B: Send>(a: impl FnOnce() -> A + Send, b: impl FnOnce() -> B + Send) -> (A, B) {
    std::thread::scope(|sc| {
        let hb = sc.spawn(b);
        let ra = a();
        let rb = hb.join().unwrap_or_else(|p| std::panic::resume_unwind(p));
        (ra, rb)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The changes between sets: adds, removes and action changes only,
    /// whatever runs of equal entries lie between them.
    #[test]
    fn set_changes_are_the_difference() {
        let e = |s: &str, a| Entry::new(s.parse().unwrap(), None, a);
        let prev = EntrySet {
            allow: vec!["192.0.2.0/24".parse().unwrap()],
            entries: vec![
                e("10.0.0.1/32", Action::Drop),
                e("10.0.0.2/32", Action::Drop),
                e("10.0.0.3/32", Action::Monitor),
                e("10.1.0.0/16", Action::Drop),
            ],
        };
        let new = EntrySet {
            allow: vec![],
            entries: vec![
                e("10.0.0.0/32", Action::Drop),
                e("10.0.0.2/32", Action::Drop),
                e("10.0.0.3/32", Action::Drop),
                e("10.1.0.0/16", Action::Drop),
                e("10.2.0.0/16", Action::Monitor),
            ],
        };
        let ch = SetChanges::between(&prev, &new);
        let mut got = ch.0.clone();
        got.sort_by_key(|(s, c)| format!("{s:?} {c:?}"));
        let mut want = vec![
            (Slot::AllowV4(24, [192, 0, 2, 0]), Change::Remove),
            (Slot::AddrV4([10, 0, 0, 0]), Change::Add(Action::Drop)),
            (Slot::AddrV4([10, 0, 0, 1]), Change::Remove),
            (Slot::AddrV4([10, 0, 0, 3]), Change::Set(Action::Drop)),
            (
                Slot::PrefixV4(16, [10, 2, 0, 0]),
                Change::Add(Action::Monitor),
            ),
        ];
        want.sort_by_key(|(s, c)| format!("{s:?} {c:?}"));
        assert_eq!(got, want);
        assert_eq!(ch.len(), 5);
        assert!(SetChanges::between(&new, &new).is_empty());
    }
}
