//! Incremental updates as plain data: key-level changes
//! ([`SetChanges::slots`](edge_filter::kernel::maps::SetChanges::slots))
//! planned against the shadow copy of the maps ([`Planned`], [`HashPlan`])
//! and applied to that copy, re-flattening only the trie nodes the changed
//! prefixes cover. Pure: writing the result to the kernel is
//! [`super::delta`].

use std::collections::{btree_map, hash_map};

use edge_filter::kernel::maps::{Change, Desired, Slot, value};
use edge_filter_common::{self as abi, EntryValue, PORT_PREFIX_FIXED_BITS, PortKeyV4, PortKeyV6};

use super::trie::{LenFilter, covered, flat_value, lengths_or_empty};

/// What an incremental update changed: the old and new values of every
/// touched key (a key absent from `new` is removed).
#[derive(Default)]
pub(super) struct Touched {
    pub(super) old: Desired,
    pub(super) new: Desired,
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

/// The shadow copy's updates: [`Desired`] as [`V1Maps`](super::V1Maps)
/// keeps it, changed key by key.
pub(super) trait Shadow {
    /// Set `slot` to `f(old value)` (`None` removes) with one lookup;
    /// returns the old and the new value.
    fn replace(
        &mut self,
        slot: Slot,
        f: impl FnOnce(Option<EntryValue>) -> Option<EntryValue>,
    ) -> (Option<EntryValue>, Option<EntryValue>);

    /// Split off the tries, so they and the hash maps can be updated on
    /// two threads; [`Shadow::put_tries`] puts them back.
    fn take_tries(&mut self) -> Desired;

    /// Put back the tries [`Shadow::take_tries`] split off.
    fn put_tries(&mut self, t: Desired);

    /// Apply one planned change in place; returns the old and new value.
    fn apply_planned(
        &mut self,
        p: &Planned,
        up: &mut Updated,
    ) -> (Option<EntryValue>, Option<EntryValue>);

    /// Apply planned changes to the hash maps of this shadow.
    fn update_hashes(&mut self, plan: &[Planned]) -> Updated;

    /// Apply planned changes to the tries, re-flattening only the nodes
    /// the changed prefixes cover.
    fn update_tries(&mut self, plan: &[Planned], filters: &mut TrieFilters) -> Updated;
}

impl Shadow for Desired {
    /// Set `slot` to `f(old value)` (`None` removes) with one lookup;
    /// returns the old and the new value.
    fn replace(
        &mut self,
        slot: Slot,
        f: impl FnOnce(Option<EntryValue>) -> Option<EntryValue>,
    ) -> (Option<EntryValue>, Option<EntryValue>) {
        macro_rules! replace {
            ($m:expr, $k:expr, $mod:ident) => {
                match $m.entry($k) {
                    $mod::Entry::Occupied(mut o) => {
                        let old = *o.get();
                        let new = f(Some(old));
                        match new {
                            Some(v) => *o.get_mut() = v,
                            None => {
                                o.remove();
                            }
                        }
                        (Some(old), new)
                    }
                    $mod::Entry::Vacant(e) => {
                        let new = f(None);
                        if let Some(v) = new {
                            e.insert(v);
                        }
                        (None, new)
                    }
                }
            };
        }
        match slot {
            Slot::AllowV4(l, k) => replace!(self.allow_v4, (l, k), btree_map),
            Slot::AllowV6(l, k) => replace!(self.allow_v6, (l, k), btree_map),
            Slot::AddrV4(k) => replace!(self.addr_v4, k, hash_map),
            Slot::AddrV6(k) => replace!(self.addr_v6, k, hash_map),
            Slot::PrefixV4(l, k) => replace!(self.prefix_v4, (l, k), btree_map),
            Slot::PrefixV6(l, k) => replace!(self.prefix_v6, (l, k), btree_map),
            Slot::PortV4(k) => replace!(self.port_v4, k, hash_map),
            Slot::PortV6(k) => replace!(self.port_v6, k, hash_map),
            Slot::PPrefixV4(l, k) => replace!(self.pprefix_v4, (l, k), btree_map),
            Slot::PPrefixV6(l, k) => replace!(self.pprefix_v6, (l, k), btree_map),
        }
    }

    /// Split off the tries, so they and the hash maps can be updated on
    /// two threads; [`Shadow::put_tries`] puts them back.
    fn take_tries(&mut self) -> Desired {
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

    fn put_tries(&mut self, t: Desired) {
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
    fn update_hashes(&mut self, plan: &[Planned]) -> Updated {
        let mut up = Updated::default();
        for p in plan {
            self.apply_planned(p, &mut up);
        }
        up
    }

    /// Apply planned changes to the tries (the only maps this `Desired`
    /// holds, see [`Shadow::take_tries`]), re-flattening only the nodes the
    /// changed prefixes cover. `up.touched` gets the old and new values of
    /// every touched node, for a minimal kernel sync; `filters` follow the
    /// nodes added and removed.
    fn update_tries(&mut self, plan: &[Planned], filters: &mut TrieFilters) -> Updated {
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

/// Where a [`Slot`] lives among the entry maps.
pub(super) trait SlotMap {
    /// The slot's map: its index in [`abi::ENTRY_MAPS`].
    fn map_index(&self) -> usize;
    /// The slot's map's `MAPBIT_*`.
    fn map_bit(&self) -> u32;
}

impl SlotMap for Slot {
    /// The slot's map: its index in [`abi::ENTRY_MAPS`].
    fn map_index(&self) -> usize {
        match self {
            Slot::AllowV4(..) => 0,
            Slot::AllowV6(..) => 1,
            Slot::AddrV4(_) => 2,
            Slot::AddrV6(_) => 3,
            Slot::PrefixV4(..) => 4,
            Slot::PrefixV6(..) => 5,
            Slot::PortV4(_) => 6,
            Slot::PortV6(_) => 7,
            Slot::PPrefixV4(..) => 8,
            Slot::PPrefixV6(..) => 9,
        }
    }

    /// The slot's map's `MAPBIT_*`.
    fn map_bit(&self) -> u32 {
        abi::entry_map_bit(self.map_index())
    }
}
