//! The v2 sync engine (`docs/datapath-v2.md`, section 7): an entry set
//! compiled by [`Compiler`] with ids stable per key, written into
//! the v2 maps of one program instance by [`V2Maps`], and the decisions a
//! caller that can load programs must act on (a new capacity tier).
//!
//! - [`Tier::for_set`]: the tables of a set in a tier of its own size
//!   ([`HEADROOM`] times what it needs, every table a power of two), for
//!   a program instance about to be loaded.
//! - [`V2Sync::install`]: a fresh instance's maps get a tier's image
//!   before anything attaches to them.
//! - [`V2Sync::apply`]: the next set as an update plan, applied with grace
//!   periods so every packet meanwhile sees the old verdict or the new one;
//!   or, when it does not fit the tier, [`Applied::NewTier`]: the caller
//!   loads a program on maps of [`Sizes::of`] the tier's geometry, hands
//!   them to [`V2Sync::replace`] (image written, counters carried over)
//!   and swaps the program on its link (`bpf_link_update`), without a gap.
//! - [`V2Sync::apply_changes`]: the same from the key changes the agent
//!   computed (its `SetChanges`), in proportion to them: ids of new keys
//!   from a kept bitmap (`IdPool`), the plan from
//!   [`Compiler::update_changes`].
//! - [`V2Sync::adopt`]: maps another agent filled, decoded from their
//!   catalog (set and ids) and checked against a fresh compile (drift).

use std::collections::HashSet;
use std::sync::Arc;

use ipnet::IpNet;

use crate::entry::{Action, EntryKey, EntrySet};
use crate::error::{Error, Result};
use crate::kernel::layout::{
    Compiler, Geometry, IdKey, Ids, KeyValue, LayoutError, assign_ids, canonical, decode,
};
use crate::kernel::v2maps::{LAYOUT_FLAGS, Sizes, V2Maps};

/// Room a new tier leaves for growth: twice what the set needs now, so a
/// set that doubles lands as deltas before the next tier is needed.
pub const HEADROOM: f64 = 2.0;

fn layout_err(e: LayoutError) -> Error {
    Error::Layout(Box::new(e))
}

/// Whether a compiler error means "build the next tier" rather than a set
/// no tier can hold.
fn needs_tier(e: &LayoutError) -> bool {
    matches!(
        e,
        LayoutError::Capacity { .. } | LayoutError::Full { .. } | LayoutError::Poisoned
    )
}

/// Whether `set` (normalised: one entry a key) cannot fit tables of
/// `geo` whatever its ids: more keys than ids, or more exact portless
/// IPv4 addresses than exact records. Checked before an update, which
/// otherwise works in proportion to the set before it finds out: a first
/// sync of 10M keys against the empty start-up tier spent over a minute
/// (and gigabytes of fresh pages) there.
fn outgrows(geo: &Geometry, set: &EntrySet) -> bool {
    let keys = (set.allow.len() + set.entries.len()) as u64;
    if keys > u64::from(geo.ids) {
        return true;
    }
    // Exact addresses are keys: counting them (a pass over the set, at
    // every delta) is needed only when the keys alone could overflow.
    if keys <= geo.capacity4() {
        return false;
    }
    let exact4 = (set.entries.iter())
        .filter(|e| e.port.is_none() && matches!(e.net, IpNet::V4(n) if n.prefix_len() == 32))
        .count() as u64;
    exact4 > geo.capacity4()
}

/// Compiled tables of a set in a tier sized for it.
pub struct Tier {
    /// The compiler holding the tables.
    pub compiler: Compiler,
    /// The ids of the set's keys.
    pub ids: Ids,
}

impl Tier {
    /// Compile `set` with `ids` into a tier of [`HEADROOM`] times its
    /// size. Fails only for sets no tier holds (ids beyond 24 bits, a port
    /// list too long).
    pub fn for_set(set: &EntrySet, ids: Ids, seed: u64) -> Result<Tier> {
        Tier::for_set_with(set, ids, seed, HEADROOM)
    }

    /// [`Tier::for_set`] with `headroom` (>= 1.0) times the room `set`
    /// needs. One update holds the old and the new keys at once (freed
    /// slots wait for the plan to be applied, and keys the update touches
    /// do not move), so a tier meant to take every transition between
    /// sets of some size without a new tier needs about twice the
    /// headroom of one meant to hold them.
    pub fn for_set_with(set: &EntrySet, ids: Ids, seed: u64, headroom: f64) -> Result<Tier> {
        // The geometry comes from the counts of the build's own pass over
        // the set (a separate `counts` pass built a hash map of every key:
        // a third of a 1M-entry start).
        let mut chosen = None;
        let first = Compiler::build_for(set, &ids, |c| {
            *chosen.insert(Geometry::for_counts(c, headroom, seed))
        });
        let (mut g, mut built) = match (chosen, first) {
            (Some(g), r) => (g, Some(r)),
            // The build failed before it counted: an input error.
            (None, Err(e)) => return Err(layout_err(e)),
            (None, Ok(_)) => unreachable!("a build chooses its geometry"),
        };
        // How many heap lines a set needs is known only once it is
        // compiled (a short prefix+port net puts a port list in every /16
        // and record it covers): grow what ran out, then fit the heap.
        let mut last = None;
        for _ in 0..12 {
            let r = match built.take() {
                Some(r) => r,
                None => Compiler::build(set, &ids, g),
            };
            match r {
                Ok(mut compiler) => {
                    compiler.fit_heap(headroom);
                    return Ok(Tier { compiler, ids });
                }
                Err(LayoutError::Full { what }) if what.contains("heap") => {
                    g.heap_lines = g.heap_lines.saturating_mul(4).min(1 << 24);
                    last = Some(LayoutError::Full { what });
                }
                Err(e) if needs_tier(&e) => {
                    g.buckets4 = g.buckets4.saturating_mul(2);
                    g.buckets6 = g.buckets6.saturating_mul(2);
                    last = Some(e);
                }
                Err(e) => return Err(layout_err(e)),
            }
        }
        Err(layout_err(last.unwrap_or(LayoutError::Full {
            what: "every tier tried",
        })))
    }

    /// The tier's geometry.
    pub fn geometry(&self) -> &Geometry {
        self.compiler.geometry()
    }

    /// The maps it needs on this machine.
    pub fn sizes(&self) -> Result<Sizes> {
        Sizes::of(self.geometry())
    }
}

/// What [`V2Sync::apply`] did.
pub enum Applied {
    /// The set landed in the current tier.
    Done(SyncCounts),
    /// The set does not fit the current tier (or the maps hold tables
    /// this agent cannot update in place): load a program instance with
    /// maps of the tier's [`Tier::sizes`], [`V2Sync::replace`] the maps,
    /// then swap the program on the link.
    NewTier(Box<Tier>),
}

/// Counts of one update.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncCounts {
    /// Keys (entries and allowlist nets) added.
    pub added: usize,
    /// Keys removed.
    pub removed: usize,
    /// Word stores made.
    pub writes: usize,
    /// Grace periods waited for.
    pub graces: usize,
    /// Whether the plan came from key changes ([`V2Sync::apply_changes`]),
    /// not from the whole set.
    pub by_changes: bool,
}

/// How adopted maps stand ([`V2Sync::adopt`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Adoption {
    /// The logical content differs from a fresh compile of what the
    /// catalog says (someone changed the maps, or a plan was cut short).
    pub drift: bool,
    /// The maps hold exactly a fresh compile's tables, so updates can go
    /// in place; otherwise the next apply asks for a new tier.
    pub in_place: bool,
}

/// One key change of a delta ([`V2Sync::apply_changes`]): the key and its
/// action in the next set, `None` when it leaves the set (an allowlist
/// net's action is not used).
pub type KeyChange = (IdKey, Option<Action>);

/// The ids a set holds, as a bitmap: where the ids of a delta's new keys
/// come from without a pass over the whole set (1M ids: 16 KiB of words
/// to scan, against a hash map of every key for [`assign_ids`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct IdPool {
    used: Vec<u64>,
}

impl IdPool {
    fn of(ids: &Ids) -> IdPool {
        let mut p = IdPool::default();
        for &id in ids.values() {
            p.mark(id, true);
        }
        p
    }

    fn mark(&mut self, id: u32, on: bool) {
        let (w, b) = (id as usize / 64, id % 64);
        if w >= self.used.len() {
            if !on {
                return;
            }
            self.used.resize(w + 1, 0);
        }
        if on {
            self.used[w] |= 1 << b;
        } else {
            self.used[w] &= !(1 << b);
        }
    }

    /// The `n` lowest ids not in use, ascending: what [`assign_ids`] gives
    /// a set's new keys (in key order), and never an id the same update
    /// frees (those are still marked).
    fn lowest_free(&self, n: usize) -> Vec<u32> {
        let mut out = Vec::with_capacity(n);
        let mut w = 0usize;
        while out.len() < n {
            let mut free = !self.used.get(w).copied().unwrap_or(0);
            while free != 0 && out.len() < n {
                out.push((w * 64) as u32 + free.trailing_zeros());
                free &= free - 1;
            }
            w += 1;
        }
        out
    }
}

/// A delta resolved against the ids the maps hold.
#[derive(Debug)]
struct Delta {
    /// What [`Compiler::update_changes`] takes.
    changes: Vec<(IdKey, Option<KeyValue>)>,
    /// New keys and their ids.
    added: Vec<(IdKey, u32)>,
    /// Keys that leave and the ids they free.
    removed: Vec<(IdKey, u32)>,
}

/// A key as the compiler and [`assign_ids`] name it (nets without host
/// bits).
fn norm_key(k: &IdKey) -> IdKey {
    match k {
        IdKey::Allow(n) => IdKey::Allow(n.trunc()),
        IdKey::Entry(e) => IdKey::Entry(EntryKey {
            net: e.net.trunc(),
            port: e.port,
        }),
    }
}

fn key_value(k: &IdKey, id: u32, action: Action) -> KeyValue {
    match k {
        IdKey::Allow(_) => KeyValue::Allow(id),
        IdKey::Entry(_) => KeyValue::Entry {
            drop: action == Action::Drop,
            id,
        },
    }
}

/// Resolve `changes` against `ids` (the set the maps hold, `pool` its
/// bitmap): kept keys keep their id, new keys take the lowest free ids in
/// key order, exactly as [`assign_ids`] over the whole next set would.
/// `None` when the changes do not follow from that set (a key leaves that
/// it does not hold): the caller then syncs the whole set.
fn resolve(ids: &Ids, pool: &IdPool, changes: &[KeyChange]) -> Option<Delta> {
    let mut list: Vec<(IdKey, Option<Action>)> =
        changes.iter().map(|(k, a)| (norm_key(k), *a)).collect();
    // One change per key, its last (a stable sort keeps the reversed order).
    list.reverse();
    list.sort_by_key(|c| c.0);
    list.dedup_by_key(|c| c.0);
    let mut out = Delta {
        changes: Vec::with_capacity(list.len()),
        added: Vec::new(),
        removed: Vec::new(),
    };
    let mut new_keys = Vec::new();
    for (k, a) in list {
        match (ids.get(&k), a) {
            (Some(&id), Some(a)) => out.changes.push((k, Some(key_value(&k, id, a)))),
            (Some(&id), None) => {
                out.changes.push((k, None));
                out.removed.push((k, id));
            }
            (None, Some(a)) => new_keys.push((k, a)),
            (None, None) => return None,
        }
    }
    // `list` is in key order, so the new keys are too.
    for ((k, a), id) in new_keys.iter().zip(pool.lowest_free(new_keys.len())) {
        out.changes.push((*k, Some(key_value(k, id, *a))));
        out.added.push((*k, id));
    }
    Some(out)
}

/// The ids once `delta` landed.
fn commit(ids: &mut Ids, pool: &mut IdPool, delta: &Delta) {
    for (k, id) in &delta.removed {
        ids.remove(k);
        pool.mark(*id, false);
    }
    for &(k, id) in &delta.added {
        ids.insert(k, id);
        pool.mark(id, true);
    }
}

/// A set the caller keeps and shares with the engine ([`V2Sync::offer`]).
pub type SharedSet = Arc<dyn AsRef<EntrySet> + Send + Sync>;

/// The engine's set: its own copy, or the caller's.
enum HeldSet {
    Own(EntrySet),
    Shared(SharedSet),
}

/// The v2 maps of one program instance and what they hold.
pub struct V2Sync {
    maps: V2Maps,
    /// The compiler whose tables the maps hold (the runtime flags aside);
    /// `None` when updates cannot go in place (adopted tables placed
    /// otherwise than a fresh compile, or a plan that failed part-way).
    compiler: Option<Compiler>,
    /// Ids of the set the maps hold.
    ids: Ids,
    /// The set the maps hold (normalised as the catalog decodes it): a
    /// copy, or the caller's own when it offered it ([`V2Sync::offer`]).
    set: HeldSet,
    /// A set the caller holds and offers to share ([`V2Sync::offer`]).
    offered: Option<SharedSet>,
    /// `ids` as a bitmap, for [`V2Sync::apply_changes`]; built on first
    /// use after anything replaced `ids` whole.
    pool: Option<IdPool>,
    seed: u64,
}

impl V2Sync {
    /// Fresh maps (all zero, nothing attached) given the tables of `tier`.
    pub fn install(mut maps: V2Maps, tier: Tier, set: &EntrySet, seed: u64) -> Result<V2Sync> {
        maps.write_image(tier.compiler.tables())?;
        let mut compiler = tier.compiler;
        compiler.rebase(&maps.backings()).map_err(layout_err)?;
        Ok(V2Sync {
            maps,
            compiler: Some(compiler),
            ids: tier.ids,
            set: HeldSet::Own(set.clone()),
            offered: None,
            pool: None,
            seed,
        })
    }

    /// Adopt maps another agent (or an earlier run) filled: the set and
    /// ids from the catalog, compared with a fresh compile in the same
    /// geometry.
    pub fn adopt(maps: V2Maps, seed: u64) -> Result<(V2Sync, Adoption)> {
        let t = maps.read()?;
        let (set, ids) = decode(&t).map_err(layout_err)?;
        let sizes = maps.sizes();
        let g = Geometry {
            sum4_bits: 32 - t.config.shift4,
            buckets4: t.config.mask4.wrapping_add(1),
            seed4: t.config.seed4,
            sum6_bits: 32 - t.config.shift6,
            buckets6: t.config.mask6.wrapping_add(1),
            seed6: t.config.seed6,
            heap_lines: t.heap.len() as u32,
            ids: t.config.stats_stride,
            catalog6: t.catalog6.len() as u32,
            trie_nodes4: sizes.trie4,
            trie_nodes6: sizes.trie6,
            trie4: false,
        };
        let mut kernel = t;
        kernel.config.flags &= LAYOUT_FLAGS;
        let fresh = if g.buckets4 as usize == kernel.exact4.len()
            && g.buckets6 as usize == kernel.exact6.len()
            && g.ids as usize == kernel.catalog.len()
        {
            Compiler::build(&set, &ids, g).ok()
        } else {
            None
        };
        let (drift, in_place) = match &fresh {
            Some(c) => (
                canonical(c.tables()) != canonical(&kernel),
                *c.tables() == kernel,
            ),
            None => (true, false),
        };
        drop(kernel);
        // Plan against the maps themselves, not a copy of them.
        let compiler = match fresh {
            Some(mut c) if in_place => c.rebase(&maps.backings()).ok().map(|()| c),
            _ => None,
        };
        let sync = V2Sync {
            maps,
            compiler,
            ids,
            set: HeldSet::Own(set),
            offered: None,
            pool: None,
            seed,
        };
        Ok((sync, Adoption { drift, in_place }))
    }

    /// Make the maps enforce `set`: ids of keys the maps hold are kept,
    /// new keys get the lowest free ids (never one this update frees), and
    /// their counters start at zero.
    pub fn apply(&mut self, set: &EntrySet) -> Result<Applied> {
        let ids = assign_ids(set, &self.ids);
        let Some(c) = self
            .compiler
            .as_mut()
            .filter(|c| !outgrows(c.geometry(), set))
        else {
            return Ok(Applied::NewTier(Box::new(Tier::for_set(
                set, ids, self.seed,
            )?)));
        };
        let plan = match c.update(set, &ids) {
            Ok(p) => p,
            Err(e) if needs_tier(&e) => {
                if matches!(e, LayoutError::Poisoned | LayoutError::Full { .. }) {
                    // The tables may be half-updated: no more plans on them.
                    self.compiler = None;
                }
                return Ok(Applied::NewTier(Box::new(Tier::for_set(
                    set, ids, self.seed,
                )?)));
            }
            Err(e) => return Err(layout_err(e)),
        };
        let old: HashSet<u32> = self.ids.values().copied().collect();
        let fresh: Vec<u32> = ids
            .values()
            .copied()
            .filter(|id| !old.contains(id))
            .collect();
        // Zero the counters of new ids before their entries land.
        self.maps.zero_stats(&fresh);
        let removed = self.ids.keys().filter(|k| !ids.contains_key(k)).count();
        let counts = SyncCounts {
            added: fresh.len(),
            removed,
            writes: plan.writes(),
            graces: plan.graces(),
            by_changes: false,
        };
        if let Err(e) = self.maps.apply(&plan) {
            // Part of the plan landed: the compiler's model is ahead of the
            // maps. Only a new tier brings them back together.
            self.compiler = None;
            return Err(e);
        }
        settle(&mut self.compiler)?;
        self.ids = ids;
        self.pool = None;
        self.keep_set(set);
        Ok(Applied::Done(counts))
    }

    /// [`V2Sync::apply`] from the key changes that take the set the maps
    /// hold to `set` (normalised: one entry per key), in proportion to the
    /// changes: the same ids (kept keys keep theirs, new keys get the
    /// lowest free ones in key order, never one this update frees, their
    /// counters zeroed before their entries land) and the same tables as
    /// `apply(set)`, through [`Compiler::update_changes`]. When the changes
    /// do not follow from the set the maps hold (a key leaves that they do
    /// not hold, or the key counts do not add up to `set`'s), or updates
    /// cannot go in place, this is `apply(set)`.
    pub fn apply_changes(&mut self, set: &EntrySet, changes: &[KeyChange]) -> Result<Applied> {
        let Some(c) = self
            .compiler
            .as_mut()
            .filter(|c| !outgrows(c.geometry(), set))
        else {
            return self.apply(set);
        };
        let pool = self.pool.get_or_insert_with(|| IdPool::of(&self.ids));
        let delta = match resolve(&self.ids, pool, changes) {
            Some(d)
                if self.ids.len() + d.added.len() - d.removed.len()
                    == set.allow.len() + set.entries.len() =>
            {
                d
            }
            _ => return self.apply(set),
        };
        let plan = match c.update_changes(&delta.changes) {
            Ok(p) => p,
            Err(e) if needs_tier(&e) => {
                if matches!(e, LayoutError::Poisoned | LayoutError::Full { .. }) {
                    // The tables may be half-updated: no more plans on them.
                    self.compiler = None;
                }
                let ids = assign_ids(set, &self.ids);
                return Ok(Applied::NewTier(Box::new(Tier::for_set(
                    set, ids, self.seed,
                )?)));
            }
            Err(e) => return Err(layout_err(e)),
        };
        let fresh: Vec<u32> = delta.added.iter().map(|&(_, id)| id).collect();
        // Zero the counters of new ids before their entries land.
        self.maps.zero_stats(&fresh);
        let counts = SyncCounts {
            added: fresh.len(),
            removed: delta.removed.len(),
            writes: plan.writes(),
            graces: plan.graces(),
            by_changes: true,
        };
        if let Err(e) = self.maps.apply(&plan) {
            // As in `apply`: only a new tier brings them back together.
            self.compiler = None;
            return Err(e);
        }
        settle(&mut self.compiler)?;
        commit(&mut self.ids, pool, &delta);
        self.keep_set(set);
        Ok(Applied::Done(counts))
    }

    /// Take `maps` (a new program instance's, nothing attached yet) with
    /// `tier`'s tables, carrying the per-entry counters of every id over
    /// (summed onto CPU 0's slots): the caller then swaps the program on
    /// its link. Returns the old maps (hits the old program counts between
    /// this copy and the swap are lost).
    pub fn replace(&mut self, mut maps: V2Maps, tier: Tier, set: &EntrySet) -> Result<V2Maps> {
        maps.set_runtime_flags(self.maps.runtime_flags());
        maps.write_image(tier.compiler.tables())?;
        let n = self.ids.values().copied().max().map_or(0, |m| m + 1);
        let old = self.maps.stats(n);
        let carry: Vec<(u32, u64, u64)> = self
            .ids
            .iter()
            .filter_map(|(k, id)| {
                let &(p, b) = old.get(id as usize)?;
                // Only ids the new tier gives the same key.
                (tier.ids.get(&k) == Some(&id) && p != 0).then_some((id, p, b))
            })
            .collect();
        maps.add_stats_cpu0(&carry);
        // The last-hit records go with the counters (same totals, so a
        // reader does not take the carried counts for new hits).
        let hits = self.maps.last_hits(n);
        for &(id, _, _) in &carry {
            maps.store_last_hit(id, hits[id as usize]);
        }
        let mut compiler = tier.compiler;
        compiler.rebase(&maps.backings()).map_err(layout_err)?;
        let old_maps = std::mem::replace(&mut self.maps, maps);
        self.compiler = Some(compiler);
        self.ids = tier.ids;
        self.pool = None;
        self.keep_set(set);
        Ok(old_maps)
    }

    /// The maps.
    pub fn maps(&self) -> &V2Maps {
        &self.maps
    }

    /// Store `w` into the maps *without* telling the compiler, as another
    /// process would: for drift tests and drills.
    #[doc(hidden)]
    pub fn tamper(&mut self, w: &crate::kernel::layout::Write) -> Result<()> {
        self.maps.store(w)
    }

    /// Take the maps back (the engine is done with them).
    pub fn into_maps(self) -> V2Maps {
        self.maps
    }

    /// The set the maps hold.
    pub fn set(&self) -> &EntrySet {
        match &self.set {
            HeldSet::Own(s) => s,
            HeldSet::Shared(s) => (**s).as_ref(),
        }
    }

    /// The caller keeps `set` (e.g. the agent's desired state) and will
    /// pass it, as `&*set`, to the next apply: the engine then holds a
    /// reference to it rather than a copy (a 1M-entry set is 26 MB). Only
    /// that very set is shared (compared by address); the offer lasts
    /// until [`V2Sync::withdraw`].
    pub fn offer(&mut self, set: SharedSet) {
        self.offered = Some(set);
    }

    /// Hold `set` instead of an equal copy (e.g. the agent's desired state
    /// after a start that copied it). Returns whether the engine now holds
    /// it; a set that differs is not taken.
    pub fn share(&mut self, set: &SharedSet) -> bool {
        match &self.set {
            HeldSet::Shared(s) if Arc::ptr_eq(s, set) => true,
            _ if self.set() == (**set).as_ref() => {
                self.set = HeldSet::Shared(Arc::clone(set));
                true
            }
            _ => false,
        }
    }

    /// End an [`V2Sync::offer`].
    pub fn withdraw(&mut self) {
        self.offered = None;
    }

    /// `set` is now what the maps hold: share it when it is the offered
    /// set, else copy it (into the vectors a copy already has: a 1M set's
    /// pages need not be faulted in at every sync).
    fn keep_set(&mut self, set: &EntrySet) {
        if let Some(o) = &self.offered
            && std::ptr::eq((**o).as_ref(), set)
        {
            self.set = HeldSet::Shared(Arc::clone(o));
            return;
        }
        match &mut self.set {
            HeldSet::Own(to) => {
                to.allow.clone_from(&set.allow);
                to.entries.clone_from(&set.entries);
            }
            HeldSet::Shared(_) => self.set = HeldSet::Own(set.clone()),
        }
    }

    /// The ids of its keys.
    pub fn ids(&self) -> &Ids {
        &self.ids
    }

    /// Whether updates go in place (see [`Adoption::in_place`]).
    pub fn in_place(&self) -> bool {
        self.compiler.is_some()
    }

    /// The current tier's geometry, when updates go in place.
    pub fn geometry(&self) -> Option<&Geometry> {
        self.compiler.as_ref().map(|c| c.geometry())
    }

    /// Compare the maps with what the last sync left there: whether their
    /// logical content differs (someone wrote them behind our back). A
    /// drifted table needs a new tier ([`V2Sync::apply`] then asks for one).
    pub fn check_drift(&mut self) -> Result<bool> {
        let Some(c) = self.compiler.as_ref() else {
            return Ok(false);
        };
        // Byte-identical tables mean the same; only when some byte differs
        // are both sides resolved to their meaning (a placement may differ
        // without a change of verdict).
        if self.maps.holds(c.tables())? {
            return Ok(false);
        }
        // A compiler that reads the maps themselves keeps only a checksum
        // of what they should hold: any difference is drift.
        let drift = c.tables().is_mapped() || {
            let mut kernel = self.maps.read()?;
            kernel.config.flags &= LAYOUT_FLAGS;
            canonical(&kernel) != canonical(c.tables())
        };
        if drift {
            self.compiler = None;
        }
        Ok(drift)
    }
}

/// A plan was applied: the compiler checks the maps hold what it stored.
/// When they do not, only a new tier brings them back together.
fn settle(compiler: &mut Option<Compiler>) -> Result<()> {
    if let Some(c) = compiler.as_mut()
        && let Err(e) = c.settle()
    {
        *compiler = None;
        return Err(layout_err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Action, Entry, PortMatch, Proto, Side};

    fn entry(s: &str, port: Option<u16>) -> Entry {
        let port = port.map(|port| PortMatch {
            proto: Proto::Tcp,
            port,
            side: Side::Dst,
        });
        Entry::new(s.parse().unwrap(), port, Action::Drop)
    }

    /// A set outgrows a tier when it has more keys than ids or more exact
    /// portless IPv4 addresses than records; ported and prefix entries do
    /// not count as records.
    #[test]
    fn outgrows_counts_keys_and_exact_addresses() {
        let set = |n: u32, port: Option<u16>, len: u8| EntrySet {
            allow: Vec::new(),
            entries: (0..n)
                .map(|i| {
                    let a = std::net::Ipv4Addr::from(0x0a00_0000 + (i << 8));
                    entry(&format!("{a}/{len}"), port)
                })
                .collect(),
        };
        let geo = Geometry::for_counts(
            &crate::kernel::layout::Counts {
                records4: 100,
                ids: 100,
                ..Default::default()
            },
            1.0,
            1,
        );
        let (ids, exact) = (u64::from(geo.ids), geo.capacity4());
        assert!(!outgrows(&geo, &set(exact.min(ids) as u32, None, 32)));
        assert!(outgrows(&geo, &set(exact as u32 + 1, None, 32)));
        assert!(outgrows(&geo, &set(ids as u32 + 1, Some(22), 32)));
        // Ported and prefix entries take ids, not exact records.
        assert!(!outgrows(&geo, &set(ids as u32, Some(22), 32)));
        assert!(!outgrows(&geo, &set(ids as u32, None, 24)));
    }

    /// `apply_changes`' core (ids from the kept pool, `update_changes`)
    /// against `apply`'s (`assign_ids` over the whole set, `update`), over
    /// chains of random deltas as the agent's `SetChanges` gives them: the
    /// same ids (so a freed id is not reused by the update that frees it,
    /// only by a later one), the same plan, byte-identical tables.
    #[test]
    fn changes_give_the_ids_and_tables_of_whole_set_applies() {
        use crate::kernel::layout::tests::{add_exact, geometry, mutate, random_set};
        use crate::kernel::maps::{SetChanges, normalized};
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let seed = crate::testing::seed();
        let mut rng = StdRng::seed_from_u64(seed);
        let mut steps = 0;
        let mut reused = 0;
        for round in 0..80 {
            let n = rng.random_range(0..40);
            let mut a = random_set(&mut rng, n);
            if round % 2 == 0 {
                let k = rng.random_range(8..18);
                add_exact(&mut rng, &mut a, k);
            }
            let a = normalized(&a).into_owned();
            let ids_a = assign_ids(&a, &Ids::default());
            let mut sets = vec![(a, ids_a)];
            for _ in 0..6 {
                let (prev, prev_ids) = sets.last().unwrap();
                let k = rng.random_range(1..12);
                let next = normalized(&mutate(&mut rng, prev, k)).into_owned();
                let ids = assign_ids(&next, prev_ids);
                sets.push((next, ids));
            }
            let refs: Vec<(&EntrySet, &Ids)> = sets.iter().map(|(s, i)| (s, i)).collect();
            let g = geometry(&refs, rng.random());
            let Ok(mut by_set) = Compiler::build_lax(&sets[0].0, &sets[0].1, g) else {
                continue;
            };
            let mut by_changes = by_set.clone();
            let mut ids = sets[0].1.clone();
            let mut pool = IdPool::of(&ids);
            // Ids freed by earlier updates of the chain.
            let mut freed = HashSet::new();
            for i in 1..sets.len() {
                let ctx = format!("round {round} step {i} (SEED={seed})");
                let (prev, (next, want_ids)) = (&sets[i - 1].0, &sets[i]);
                let ch = SetChanges::between(prev, next).key_changes();
                let d = resolve(&ids, &pool, &ch).expect(&ctx);
                assert_eq!(
                    ids.len() + d.added.len() - d.removed.len(),
                    next.allow.len() + next.entries.len(),
                    "{ctx}"
                );
                let p1 = match by_set.update(next, want_ids) {
                    Ok(p) => p,
                    Err(LayoutError::Full { .. }) => break,
                    Err(e) => panic!("{ctx}: {e}"),
                };
                let p2 = by_changes
                    .update_changes(&d.changes)
                    .unwrap_or_else(|e| panic!("{ctx}: {e}"));
                reused += d.added.iter().filter(|(_, id)| freed.contains(id)).count();
                freed.extend(d.removed.iter().map(|&(_, id)| id));
                commit(&mut ids, &mut pool, &d);
                assert_eq!(&ids, want_ids, "{ctx}");
                let trim = |p: &IdPool| {
                    let mut w = p.used.clone();
                    while w.last() == Some(&0) {
                        w.pop();
                    }
                    w
                };
                assert_eq!(trim(&pool), trim(&IdPool::of(&ids)), "{ctx}");
                assert_eq!(p1, p2, "{ctx}");
                assert_eq!(by_set.tables(), by_changes.tables(), "{ctx}");
                assert!(
                    canonical(by_set.tables()) == canonical(by_changes.tables()),
                    "{ctx}"
                );
                steps += 1;
            }
        }
        println!("{steps} steps compared, {reused} ids reused");
        // Builds that do not fit the tiny geometry and updates that fill both
        // buckets of a key end a chain early: 175-240 of 480 steps run.
        assert!(steps >= 100, "only {steps} steps compared");
        // Ids freed by an earlier update were handed out again.
        assert!(reused > 0, "no id was reused");
    }

    /// Changes that do not follow from the held set are refused (the
    /// engine then applies the whole set); a key listed twice takes its
    /// last change; new ids skip every held one.
    #[test]
    fn resolve_refuses_changes_to_keys_not_held() {
        let key = |s: &str| {
            IdKey::Entry(EntryKey {
                net: s.parse().unwrap(),
                port: None,
            })
        };
        let mut ids = Ids::default();
        ids.insert(key("10.0.0.1/32"), 0);
        ids.insert(key("10.0.0.2/32"), 2);
        let pool = IdPool::of(&ids);
        assert_eq!(pool.lowest_free(3), vec![1, 3, 4]);
        assert!(resolve(&ids, &pool, &[(key("10.0.0.9/32"), None)]).is_none());
        let d = resolve(
            &ids,
            &pool,
            &[
                (key("10.0.0.1/32"), None),
                (key("10.0.0.3/32"), Some(Action::Drop)),
                (key("10.0.0.4/24"), Some(Action::Monitor)),
                (key("10.0.0.3/32"), Some(Action::Monitor)),
            ],
        )
        .unwrap();
        assert_eq!(d.removed, vec![(key("10.0.0.1/32"), 0)]);
        // In key order (10.0.0.0/24 < 10.0.0.3/32), id 0 is not reused.
        assert_eq!(
            d.added,
            vec![(key("10.0.0.0/24"), 1), (key("10.0.0.3/32"), 3)]
        );
        assert!(d.changes.contains(&(
            key("10.0.0.3/32"),
            Some(KeyValue::Entry { drop: false, id: 3 })
        )));
    }

    #[test]
    fn a_tier_has_headroom_and_room_for_broad_port_nets() {
        let mut set = EntrySet::default();
        for i in 0..1000u32 {
            let a = std::net::Ipv4Addr::from(0x0a00_0000 | (i * 7919));
            set.entries.push(entry(&format!("{a}/32"), None));
        }
        // A /8 with a port: a port list in every /16 and record it covers.
        set.entries.push(entry("10.0.0.0/8", Some(22)));
        set.entries.push(entry("11.0.0.0/8", Some(22)));
        let ids = assign_ids(&set, &Ids::default());
        let t = Tier::for_set(&set, ids.clone(), 7).unwrap();
        assert!(t.geometry().capacity4() >= 2 * 1000, "headroom for growth");
        assert_eq!(t.ids, ids);
        let (back, back_ids) = decode(t.compiler.tables()).unwrap();
        assert_eq!(back_ids, ids);
        assert_eq!(back.entries.len(), set.entries.len());
    }
}
