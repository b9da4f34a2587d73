//! Incremental updates as plain data: the key-level changes between two
//! entry sets ([`SetChanges`]), planned against the shadow copy of the maps
//! ([`Planned`], [`HashPlan`]), and applied to that copy, re-flattening only
//! the trie nodes the changed prefixes cover. Pure: writing the result to
//! the kernel is [`super::delta`].

use edge_filter_common::{EntryValue, PORT_PREFIX_FIXED_BITS, PortKeyV4, PortKeyV6};

use super::contents::{Desired, Slot, SlotKey, allow_slot, entry_slot, is_normalized};
use super::trie::{LenFilter, covered, flat_value, lengths_or_empty, value};
use crate::entry::{Action, Entry, EntrySet};
use crate::kernel::layout::IdKey;
use crate::kernel::v2sync::KeyChange;

/// What an incremental update changed: the old and new values of every
/// touched key (a key absent from `new` is removed).
#[derive(Default)]
pub(super) struct Touched {
    pub(super) old: Desired,
    pub(super) new: Desired,
}

/// What a key change does, as [`SetChanges::between`] found it: the key
/// is new, its action changed, or it is gone. Knowing adds in advance lets
/// [`V1Maps::apply_changes`](super::V1Maps::apply_changes) hand out their ids before any map is touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Change {
    Add(Action),
    Set(Action),
    Remove,
}

/// One key change of an incremental update with the id its entry has: a
/// fresh one for an add, the existing one for a change of action.
#[derive(Clone, Copy, Debug)]
pub(super) struct Planned {
    pub(super) slot: Slot,
    pub(super) change: Change,
    pub(super) id: u32,
}

/// Outcome of updating part of the shadow with planned changes.
#[derive(Default)]
pub(super) struct Updated {
    /// Old and new values of touched trie nodes (tries only).
    pub(super) touched: Touched,
    /// Ids of removed keys.
    pub(super) released: Vec<u32>,
    /// Changes that did not fit the shadow (the changes were computed
    /// against another set than the one applied).
    pub(super) mismatched: usize,
}

/// Kernel writes of one hash map for an incremental update, straight from
/// the planned changes: no shadow lookup is needed to write them.
pub(super) struct HashWrites<K> {
    pub(super) keys: Vec<K>,
    pub(super) vals: Vec<EntryValue>,
    /// How many of `keys` exist already (changes of action).
    pub(super) changed: usize,
    /// Keys to delete once every write of the update has landed.
    pub(super) delete: Vec<K>,
}

impl<K> Default for HashWrites<K> {
    fn default() -> Self {
        HashWrites {
            keys: Vec::new(),
            vals: Vec::new(),
            changed: 0,
            delete: Vec::new(),
        }
    }
}

impl<K> HashWrites<K> {
    /// (keys written, of which changes of action).
    pub(super) fn counts(&self) -> (usize, usize) {
        (self.keys.len(), self.changed)
    }

    pub(super) fn push(&mut self, key: K, p: &Planned) {
        match p.change {
            Change::Add(a) | Change::Set(a) => {
                self.keys.push(key);
                self.vals.push(value(a, p.id));
                self.changed += matches!(p.change, Change::Set(_)) as usize;
            }
            Change::Remove => self.delete.push(key),
        }
    }
}

/// [`HashWrites`] for every hash map.
#[derive(Default)]
pub(super) struct HashPlan {
    pub(super) addr_v4: HashWrites<[u8; 4]>,
    pub(super) addr_v6: HashWrites<[u8; 16]>,
    pub(super) port_v4: HashWrites<PortKeyV4>,
    pub(super) port_v6: HashWrites<PortKeyV6>,
}

impl HashPlan {
    /// Add a planned change of a hash slot; `false` for a trie slot.
    pub(super) fn push(&mut self, p: &Planned) -> bool {
        match p.slot {
            Slot::AddrV4(k) => self.addr_v4.push(k, p),
            Slot::AddrV6(k) => self.addr_v6.push(k, p),
            Slot::PortV4(k) => self.port_v4.push(k, p),
            Slot::PortV6(k) => self.port_v6.push(k, p),
            _ => return false,
        }
        true
    }
}

impl Desired {
    /// Split off the tries, so they and the hash maps can be updated on
    /// two threads; [`Desired::put_tries`] puts them back.
    pub(super) fn take_tries(&mut self) -> Desired {
        use std::mem::take;
        Desired {
            allow_v4: take(&mut self.allow_v4),
            allow_v6: take(&mut self.allow_v6),
            prefix_v4: take(&mut self.prefix_v4),
            prefix_v6: take(&mut self.prefix_v6),
            pprefix_v4: take(&mut self.pprefix_v4),
            pprefix_v6: take(&mut self.pprefix_v6),
            ..Default::default()
        }
    }

    pub(super) fn put_tries(&mut self, t: Desired) {
        self.allow_v4 = t.allow_v4;
        self.allow_v6 = t.allow_v6;
        self.prefix_v4 = t.prefix_v4;
        self.prefix_v6 = t.prefix_v6;
        self.pprefix_v4 = t.pprefix_v4;
        self.pprefix_v6 = t.pprefix_v6;
    }

    /// Apply one planned change in place; returns the old and new value.
    /// Counts in `up` a change that does not fit what is here (an add of a
    /// present key, a change or removal of an absent one) and records the
    /// id a removal frees.
    fn apply_planned(
        &mut self,
        p: &Planned,
        up: &mut Updated,
    ) -> (Option<EntryValue>, Option<EntryValue>) {
        let (old, new) = self.replace(p.slot, |old| match p.change {
            Change::Remove => None,
            Change::Add(a) | Change::Set(a) => Some(value(a, old.map_or(p.id, |v| v.id))),
        });
        match (p.change, old) {
            (Change::Add(_), Some(_)) | (Change::Set(_), None) | (Change::Remove, None) => {
                up.mismatched += 1
            }
            _ => {}
        }
        if let (Some(o), None) = (old, new) {
            up.released.push(o.id);
        }
        (old, new)
    }

    /// Apply planned changes to the hash maps of this shadow.
    pub(super) fn update_hashes(&mut self, plan: &[Planned]) -> Updated {
        let mut up = Updated::default();
        for p in plan {
            self.apply_planned(p, &mut up);
        }
        up
    }

    /// Apply planned changes to the tries (the only maps this `Desired`
    /// holds, see [`Desired::take_tries`]), re-flattening only the nodes the
    /// changed prefixes cover. `up.touched` gets the old and new values of
    /// every touched node, for a minimal kernel sync; `filters` follow the
    /// nodes added and removed.
    pub(super) fn update_tries(&mut self, plan: &[Planned], filters: &mut TrieFilters) -> Updated {
        let mut up = Updated::default();
        // Remember the old values of every node a changed prefix covers,
        // before changing anything.
        macro_rules! trie_old {
            ($field:ident, $variant:ident) => {{
                let lens = lengths_or_empty(&self.$field);
                let f = Some(&filters.$field);
                let mut dirty = Vec::new();
                for p in plan {
                    if let Slot::$variant(l, k) = p.slot {
                        dirty.push((l, k));
                        up.touched
                            .old
                            .$field
                            .extend(covered(&self.$field, &lens, f, l, k));
                    }
                }
                dirty
            }};
        }
        let d_prefix_v4 = trie_old!(prefix_v4, PrefixV4);
        let d_prefix_v6 = trie_old!(prefix_v6, PrefixV6);
        let d_pprefix_v4 = trie_old!(pprefix_v4, PPrefixV4);
        let d_pprefix_v6 = trie_old!(pprefix_v6, PPrefixV6);
        for p in plan {
            let (old, new) = self.apply_planned(p, &mut up);
            filters.note(self, &p.slot, old.is_some(), new.is_some());
            if let Some(o) = old {
                up.touched.old.put(p.slot, Some(o));
            }
            if let Some(n) = new {
                up.touched.new.put(p.slot, Some(n));
            }
        }
        // Re-flatten every node a changed prefix covers now: one that it
        // covered before (remembered in `touched.old`) or a changed one.
        macro_rules! trie_new {
            ($field:ident, $dirty:expr, $fixed:expr) => {{
                let lens = lengths_or_empty(&self.$field);
                let f = Some(&filters.$field);
                let t = &mut up.touched;
                let nodes: Vec<_> = t.old.$field.keys().copied().chain($dirty).collect();
                for n in nodes {
                    if let Some(&own) = self.$field.get(&n) {
                        let v = flat_value(&self.$field, &lens, f, $fixed, n.0, n.1, own);
                        self.$field.insert(n, v);
                        t.new.$field.insert(n, v);
                    }
                }
            }};
        }
        trie_new!(prefix_v4, d_prefix_v4, 0);
        trie_new!(prefix_v6, d_prefix_v6, 0);
        trie_new!(pprefix_v4, d_pprefix_v4, PORT_PREFIX_FIXED_BITS);
        trie_new!(pprefix_v6, d_pprefix_v6, PORT_PREFIX_FIXED_BITS);
        up
    }
}

/// The key-level changes from one entry set to another: every key added
/// (with its action), removed, or whose action changed. What
/// [`V1Maps::apply_changes`](super::V1Maps::apply_changes) applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetChanges(pub(super) Vec<(Slot, Change)>);

impl SetChanges {
    /// The changes from `prev` to `new`: one merge pass over both, with no
    /// copy of either.
    ///
    /// Both must be normalised: nets without host bits, entries sorted by
    /// key with one entry per key, the allowlist sorted and unique, as
    /// the agent's merge of its feeds makes them (`V1Maps::apply` normalises its
    /// input; this does not, to stay clear of whole-set passes beyond the
    /// one merge pass). Debug builds check it.
    pub fn between(prev: &EntrySet, new: &EntrySet) -> SetChanges {
        debug_assert!(
            is_normalized(prev) && is_normalized(new),
            "SetChanges::between needs normalised sets"
        );
        SetChanges(diff_sets(prev, new))
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

/// A [`LenFilter`] per flattened trie of a [`Desired`] (the allowlist
/// tries are not flattened, so nothing probes them).
#[derive(Clone, Debug, Default)]
pub(super) struct TrieFilters {
    pub(super) prefix_v4: LenFilter,
    pub(super) prefix_v6: LenFilter,
    pub(super) pprefix_v4: LenFilter,
    pub(super) pprefix_v6: LenFilter,
}

impl TrieFilters {
    pub(super) fn build(d: &Desired) -> TrieFilters {
        TrieFilters {
            prefix_v4: LenFilter::build(&d.prefix_v4),
            prefix_v6: LenFilter::build(&d.prefix_v6),
            pprefix_v4: LenFilter::build(&d.pprefix_v4),
            pprefix_v6: LenFilter::build(&d.pprefix_v6),
        }
    }

    /// Follow a node of `slot` that was (`was`) and is (`is`) in `d`'s
    /// tries (`d` already changed).
    pub(super) fn note(&mut self, d: &Desired, slot: &Slot, was: bool, is: bool) {
        macro_rules! note {
            ($f:ident, $l:expr, $k:expr) => {
                match (was, is) {
                    (false, true) => self.$f.add($l, $k),
                    (true, false) => self.$f.remove(&d.$f, $l, $k),
                    _ => {}
                }
            };
        }
        match slot {
            Slot::PrefixV4(l, k) => note!(prefix_v4, *l, k),
            Slot::PrefixV6(l, k) => note!(prefix_v6, *l, k),
            Slot::PPrefixV4(l, k) => note!(pprefix_v4, *l, k),
            Slot::PPrefixV6(l, k) => note!(pprefix_v6, *l, k),
            _ => {}
        }
    }
}

/// Run `a` and `b` at once (`b` on a scoped thread), returning both
/// results; a panic in either is propagated.
pub(super) fn both<A: Send, B: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
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
