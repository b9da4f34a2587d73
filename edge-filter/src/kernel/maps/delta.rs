//! Incremental updates: the key-level changes between two entry sets
//! ([`SetChanges`]) and applying them to the shadow copy and the kernel in
//! proportion to the change, on two threads.

use aya::Pod;
use edge_filter_common::{EntryValue, PORT_PREFIX_FIXED_BITS, PortKeyV4, PortKeyV6};

use super::trie::{TrieFilters, covered, flat_value, lengths_or_empty};
use super::{
    Desired, EntryMaps, MAP_INDEX, Slot, SyncStats, allow_slot, both, delete_by_fd, entry_slot,
    is_normalized, merge_stats, note_refused, value, write_by_fd,
};
use crate::entry::{Action, Entry, EntrySet};
use crate::error::Result;

/// What an incremental update changed: the old and new values of every
/// touched key (a key absent from `new` is removed).
#[derive(Default)]
pub(super) struct Touched {
    old: Desired,
    new: Desired,
}

/// What a key change does, as [`SetChanges::between`] found it: the key
/// is new, its action changed, or it is gone. Knowing adds in advance lets
/// [`EntryMaps::apply_changes`] hand out their ids before any map is touched.
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
    slot: Slot,
    change: Change,
    id: u32,
}

/// Outcome of updating part of the shadow with planned changes.
#[derive(Default)]
pub(super) struct Updated {
    /// Old and new values of touched trie nodes (tries only).
    touched: Touched,
    /// Ids of removed keys.
    released: Vec<u32>,
    /// Changes that did not fit the shadow (the changes were computed
    /// against another set than the one applied).
    mismatched: usize,
}

/// Kernel writes of one hash map for an incremental update, straight from
/// the planned changes: no shadow lookup is needed to write them.
pub(super) struct HashWrites<K> {
    keys: Vec<K>,
    vals: Vec<EntryValue>,
    /// How many of `keys` exist already (changes of action).
    changed: usize,
    /// Keys to delete once every write of the update has landed.
    delete: Vec<K>,
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
    fn counts(&self) -> (usize, usize) {
        (self.keys.len(), self.changed)
    }

    fn push(&mut self, key: K, p: &Planned) {
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
    addr_v4: HashWrites<[u8; 4]>,
    addr_v6: HashWrites<[u8; 16]>,
    port_v4: HashWrites<PortKeyV4>,
    port_v6: HashWrites<PortKeyV6>,
}

impl HashPlan {
    /// Add a planned change of a hash slot; `false` for a trie slot.
    fn push(&mut self, p: &Planned) -> bool {
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
    /// holds, see [`Desired::take_tries`]), re-flattening only the nodes the
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

impl EntryMaps {
    /// Apply key-level changes to the shadow and the kernel, in
    /// proportion to the changes. The shadow must exist; it is dropped on
    /// refusals or errors (the next apply reads the kernel back). `None`
    /// when the changes do not fit the shadow: the caller must do a full
    /// sync.
    ///
    /// Ids of added keys are handed out first, in change order (as a
    /// full build would), and their counters zeroed. Then two threads:
    /// one updates the hash maps in the shadow and writes them, straight
    /// from the changes (an add's value needs only its id); the other
    /// updates the tries in the shadow, writes the trie nodes whose values
    /// changed, then takes its share of the hash writes (they are cut in
    /// [`Jobs`]). Removals start once both have written every add and
    /// change, so an entry present before and after is never absent in
    /// between; they are shared the same way.
    pub(super) fn apply_slots(
        &mut self,
        changes: &[(Slot, Change)],
        flags: u32,
    ) -> Result<Option<SyncStats>> {
        let mut shadow = self.shadow.take().expect("apply_slots needs the shadow");
        let mut filters = self
            .filters
            .take()
            .unwrap_or_else(|| TrieFilters::build(&shadow));
        let mut ids = self.ids.clone();
        let mut grow_mask = shadow.nonempty();
        let mut hash_plan = HashPlan::default();
        let (mut hash_changes, mut trie_changes) = (Vec::new(), Vec::new());
        for &(slot, change) in changes {
            let id = match change {
                Change::Add(_) => {
                    grow_mask |= slot.map_bit();
                    ids.alloc()
                }
                Change::Set(_) => match shadow.get(&slot) {
                    Some(v) => v.id,
                    None => {
                        // Not the set last applied: nothing touched yet.
                        self.shadow = Some(shadow);
                        self.filters = Some(filters);
                        return Ok(None);
                    }
                },
                Change::Remove => 0,
            };
            let p = Planned { slot, change, id };
            if hash_plan.push(&p) {
                hash_changes.push(p);
            } else {
                trie_changes.push(p);
            }
        }
        // A map that cannot take its adds before its removals needs the
        // removals-first order of a full sync: nothing is touched here.
        let mut adds = [0usize; 10];
        for p in hash_changes.iter().chain(&trie_changes) {
            if let Change::Add(_) = p.change {
                let i = super::MAP_BITS
                    .iter()
                    .position(|b| *b == p.slot.map_bit())
                    .expect("every slot has a map bit");
                adds[i] += 1;
            }
        }
        if super::tight_maps(&shadow.counts(), &adds, &self.caps) != 0 {
            self.shadow = Some(shadow);
            self.filters = Some(filters);
            return Ok(None);
        }
        // A new entry must not inherit the hits of the one that had its id.
        self.zero_entry_stats(&ids.take_assigned())?;
        // Widen the nonempty mask first so new entries are looked up as soon
        // as they land; narrow it after removals.
        self.set_config(flags, grow_mask)?;
        let b = self.batch;
        let mut tries = shadow.take_tries();
        let (hashes, mut trie_maps) = self.split();
        let fds = hashes.fds();
        let p = &hash_plan;
        let mut jobs = Vec::new();
        write_jobs(&mut jobs, 0, fds[0], &p.addr_v4, b);
        write_jobs(&mut jobs, 1, fds[1], &p.addr_v6, b);
        write_jobs(&mut jobs, 2, fds[2], &p.port_v4, b);
        write_jobs(&mut jobs, 3, fds[3], &p.port_v6, b);
        let writes = Jobs::new(jobs);
        let (hash_up, trie_up) = both(
            || -> Result<([usize; 4], Updated)> {
                // The hash maps' shadow (quick), then the writes.
                let h_up = shadow.update_hashes(&hash_changes);
                Ok((writes.run()?, h_up))
            },
            || -> Result<(SyncStats, Updated, [usize; 4])> {
                let t_up = tries.update_tries(&trie_changes, &mut filters);
                let mut st = SyncStats::default();
                trie_maps.upsert(&t_up.touched.old, &t_up.touched.new, &mut st, u32::MAX)?;
                // Then help the other thread with the hash writes.
                let refused = writes.run()?;
                Ok((st, t_up, refused))
            },
        );
        drop(writes);
        let (mut st, t_up, refused_t) = trie_up?;
        let (refused_h, h_up) = hash_up?;
        for (i, w) in [
            p.addr_v4.counts(),
            p.addr_v6.counts(),
            p.port_v4.counts(),
            p.port_v6.counts(),
        ]
        .into_iter()
        .enumerate()
        {
            let name = MAP_INDEX[i];
            let refused = refused_h[i] + refused_t[i];
            // Refusals are new keys (updates of existing keys always fit).
            st.changed += w.1;
            st.added += w.0 - w.1 - refused;
            note_refused(name, refused, &mut st);
        }
        shadow.put_tries(tries);
        let mut jobs = Vec::new();
        delete_jobs(&mut jobs, 0, fds[0], &p.addr_v4.delete, b);
        delete_jobs(&mut jobs, 1, fds[1], &p.addr_v6.delete, b);
        delete_jobs(&mut jobs, 2, fds[2], &p.port_v4.delete, b);
        delete_jobs(&mut jobs, 3, fds[3], &p.port_v6.delete, b);
        let deletes = Jobs::new(jobs);
        let (hash_rm, lpm_rm) = both(
            || deletes.run(),
            || -> Result<(SyncStats, [usize; 4])> {
                let mut st = SyncStats::default();
                trie_maps.remove(&t_up.touched.old, &t_up.touched.new, &mut st, u32::MAX)?;
                let removed = deletes.run()?;
                Ok((st, removed))
            },
        );
        drop(deletes);
        let (lpm_st, removed_t) = lpm_rm?;
        let removed_h = hash_rm?;
        st = merge_stats(st, lpm_st);
        st.removed += removed_h.iter().chain(&removed_t).sum::<usize>();
        self.set_config(flags, shadow.nonempty())?;
        if t_up.mismatched + h_up.mismatched > 0 {
            // Changes against another set: the kernel got them, the shadow
            // is no account of it. The caller syncs in full.
            self.last_set = None;
            return Ok(None);
        }
        if st.refused == 0 {
            self.shadow = Some(shadow);
            self.filters = Some(filters);
            for id in t_up.released.into_iter().chain(h_up.released) {
                ids.release(id);
            }
            ids.commit();
            self.ids = ids;
        } else {
            // Refusals: the kernel differs from the plan; rebuild the
            // shadow from what landed next time.
            self.last_set = None;
        }
        Ok(Some(st))
    }
}

/// Keys per job of an incremental update's hash-map writes: small enough
/// that the thread done first with its own work takes a fair share.
const JOB_KEYS: usize = 1024;

/// One chunk of hash-map writes or deletes: the map's index (0..4, as in
/// [`HashPlan`]) and the work, returning how many keys it refused (writes)
/// or removed (deletes).
type Job<'a> = (usize, Box<dyn Fn() -> Result<usize> + Send + Sync + 'a>);

/// Jobs either thread takes in turn, so two threads share the hash-map
/// writes of an incremental update however long their other work takes.
struct Jobs<'a> {
    jobs: Vec<Job<'a>>,
    next: std::sync::atomic::AtomicUsize,
}

impl<'a> Jobs<'a> {
    fn new(jobs: Vec<Job<'a>>) -> Self {
        Jobs {
            jobs,
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Take and run jobs until none is left; per-map sums of their results.
    fn run(&self) -> Result<[usize; 4]> {
        let mut sum = [0; 4];
        loop {
            let i = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some((map, job)) = self.jobs.get(i) else {
                return Ok(sum);
            };
            sum[*map] += job()?;
        }
    }
}

/// Queue the writes of `w` to hash map `map` ([`MAP_INDEX`]) in
/// [`JOB_KEYS`] chunks.
fn write_jobs<'a, K: Pod + Sync>(
    jobs: &mut Vec<Job<'a>>,
    map: usize,
    fd: std::os::fd::BorrowedFd<'a>,
    w: &'a HashWrites<K>,
    batch: bool,
) {
    let name = MAP_INDEX[map];
    for (keys, vals) in w.keys.chunks(JOB_KEYS).zip(w.vals.chunks(JOB_KEYS)) {
        jobs.push((
            map,
            Box::new(move || write_by_fd(fd, keys, vals, name, batch)),
        ));
    }
}

/// Queue the deletion of `keys` in [`JOB_KEYS`] chunks.
fn delete_jobs<'a, K: Pod + Sync>(
    jobs: &mut Vec<Job<'a>>,
    map: usize,
    fd: std::os::fd::BorrowedFd<'a>,
    keys: &'a [K],
    batch: bool,
) {
    for keys in keys.chunks(JOB_KEYS) {
        jobs.push((map, Box::new(move || delete_by_fd(fd, keys, batch))));
    }
}

/// The key-level changes from one entry set to another: every key added
/// (with its action), removed, or whose action changed. What
/// [`EntryMaps::apply_changes`] applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetChanges(pub(super) Vec<(Slot, Change)>);

impl SetChanges {
    /// The changes from `prev` to `new`: one merge pass over both, with no
    /// copy of either.
    ///
    /// Both must be normalised: nets without host bits, entries sorted by
    /// key with one entry per key, the allowlist sorted and unique, as
    /// [`crate::intel::desired::merge`] makes them (`EntryMaps::apply` normalises its
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
}

/// Key-level changes from `prev` to `new` (both [`normalized`]): one merge
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
