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
//! - [`V2Sync::adopt`]: maps another agent filled, decoded from their
//!   catalog (set and ids) and checked against a fresh compile (drift).

use std::collections::HashSet;

use crate::entry::EntrySet;
use crate::error::{Error, Result};
use crate::kernel::layout::{
    Compiler, Geometry, Ids, LayoutError, assign_ids, canonical, counts, decode,
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
        let c = counts(set, &ids).map_err(layout_err)?;
        let mut g = Geometry::for_counts(&c, HEADROOM, seed);
        // How many heap lines a set needs is known only once it is
        // compiled (a short prefix+port net puts a port list in every /16
        // and record it covers): grow what ran out, then fit the heap.
        let mut last = None;
        for _ in 0..12 {
            match Compiler::build(set, &ids, g) {
                Ok(mut compiler) => {
                    compiler.fit_heap(HEADROOM);
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

/// The v2 maps of one program instance and what they hold.
pub struct V2Sync {
    maps: V2Maps,
    /// The compiler whose tables the maps hold (the runtime flags aside);
    /// `None` when updates cannot go in place (adopted tables placed
    /// otherwise than a fresh compile, or a plan that failed part-way).
    compiler: Option<Compiler>,
    /// Ids of the set the maps hold.
    ids: Ids,
    /// The set the maps hold (normalised as the catalog decodes it).
    set: EntrySet,
    seed: u64,
}

impl V2Sync {
    /// Fresh maps (all zero, nothing attached) given the tables of `tier`.
    pub fn install(mut maps: V2Maps, tier: Tier, set: &EntrySet, seed: u64) -> Result<V2Sync> {
        maps.write_image(tier.compiler.tables())?;
        Ok(V2Sync {
            maps,
            compiler: Some(tier.compiler),
            ids: tier.ids,
            set: set.clone(),
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
        let sync = V2Sync {
            maps,
            compiler: if in_place { fresh } else { None },
            ids,
            set,
            seed,
        };
        Ok((sync, Adoption { drift, in_place }))
    }

    /// Make the maps enforce `set`: ids of keys the maps hold are kept,
    /// new keys get the lowest free ids (never one this update frees), and
    /// their counters start at zero.
    pub fn apply(&mut self, set: &EntrySet) -> Result<Applied> {
        let ids = assign_ids(set, &self.ids);
        let Some(c) = self.compiler.as_mut() else {
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
        };
        if let Err(e) = self.maps.apply(&plan) {
            // Part of the plan landed: the compiler's model is ahead of the
            // maps. Only a new tier brings them back together.
            self.compiler = None;
            return Err(e);
        }
        self.ids = ids;
        self.set = set.clone();
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
            .filter_map(|(k, &id)| {
                let &(p, b) = old.get(id as usize)?;
                // Only ids the new tier gives the same key.
                (tier.ids.get(k) == Some(&id) && p != 0).then_some((id, p, b))
            })
            .collect();
        maps.add_stats_cpu0(&carry);
        // The last-hit records go with the counters (same totals, so a
        // reader does not take the carried counts for new hits).
        let hits = self.maps.last_hits(n);
        for &(id, _, _) in &carry {
            maps.store_last_hit(id, hits[id as usize]);
        }
        let old_maps = std::mem::replace(&mut self.maps, maps);
        self.compiler = Some(tier.compiler);
        self.ids = tier.ids;
        self.set = set.clone();
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
        &self.set
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
        let mut kernel = self.maps.read()?;
        kernel.config.flags &= LAYOUT_FLAGS;
        let drift = canonical(&kernel) != canonical(c.tables());
        if drift {
            self.compiler = None;
        }
        Ok(drift)
    }
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
