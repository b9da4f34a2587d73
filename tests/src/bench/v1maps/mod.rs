//! The v1 datapath's entry maps ([`V1Maps`]): the hash maps and LPM tries
//! of the benchmark's "before" programs (`bench::load_v1`), and making them
//! hold a [`Desired`]: read back, written as a diff, counted. The
//! production program is datapath v2 (`edge_filter::kernel::maps::EntryMaps`);
//! this writer moved here from `edge-filter/src/kernel/maps/` when the
//! agent stopped using it (docs/datapath-v2.md, section 7.0, "Left:"
//! item 6), and is
//! kept unchanged as the baseline of `ef-bench sync` and the datapath
//! sections.
//!
//! [`V1Maps::sync`] applies contents as a diff: adds and changes first,
//! removals last, so an entry present before and after an update is never
//! absent; only a map too full to hold old and new keys at once takes its
//! removals first (else a rotation of a near-capacity set could never
//! land). The hash maps are written with batch syscalls
//! ([`edge_filter::kernel::sys`]) on one thread while the LPM tries are
//! written element by element on another. Incremental updates are in
//! `delta`, planned against the shadow copy in `plan`, with the trie
//! probe filters of `trie`.

mod delta;
mod plan;
mod trie;

use std::collections::BTreeMap;
use std::hash::Hash;
use std::os::fd::{AsFd, BorrowedFd};

use aya::{
    Ebpf, Pod,
    maps::{HashMap as BpfHash, IterableMap, LpmTrie, Map, MapData, MapError, lpm_trie::Key},
};
use edge_filter::entry::EntrySet;
use edge_filter::error::{Error, Result};
use edge_filter::kernel::maps::{
    Census, Desired, IdAlloc, KeyMap, SetChanges, drift, normalized, possible_cpus,
};
use edge_filter_common::{
    self as abi, Config, EntryValue, PortKeyV4, PortKeyV6, PortPrefixV4, PortPrefixV6,
};

use plan::TrieFilters;

/// Typed handles to every map of one loaded or pinned program instance.
pub struct V1Maps {
    allow_v4: LpmTrie<MapData, [u8; 4], EntryValue>,
    allow_v6: LpmTrie<MapData, [u8; 16], EntryValue>,
    addr_v4: BpfHash<MapData, [u8; 4], EntryValue>,
    addr_v6: BpfHash<MapData, [u8; 16], EntryValue>,
    prefix_v4: LpmTrie<MapData, [u8; 4], EntryValue>,
    prefix_v6: LpmTrie<MapData, [u8; 16], EntryValue>,
    port_v4: BpfHash<MapData, PortKeyV4, EntryValue>,
    port_v6: BpfHash<MapData, PortKeyV6, EntryValue>,
    pprefix_v4: LpmTrie<MapData, PortPrefixV4, EntryValue>,
    pprefix_v6: LpmTrie<MapData, PortPrefixV6, EntryValue>,
    config: aya::maps::Array<MapData, Config>,
    counters: aya::maps::PerCpuArray<MapData, abi::Counter>,
    last: aya::maps::PerCpuArray<MapData, abi::LastVerdict>,
    entry_stats: aya::maps::PerCpuArray<MapData, abi::EntryStat>,
    stats_overflow: aya::maps::PerCpuArray<MapData, abi::EntryStat>,
    /// `ENTRY_STATS` is known to be all zero (a freshly created map): the
    /// first build need not zero the ids it hands out.
    stats_fresh: bool,
    /// What the last sync left in the maps, so deltas need not read them
    /// back; [`V1Maps::reconcile`] checks it against the kernel.
    shadow: Option<Desired>,
    /// Probe filters of the shadow's tries, for incremental updates; built
    /// with the shadow and dropped with it.
    filters: Option<TrieFilters>,
    /// Use BPF batch syscalls for hash maps (off only to benchmark).
    batch: bool,
    /// The entry set the shadow was built from (sorted, one entry per key),
    /// so the next apply can diff sets instead of rebuilding every map.
    last_set: Option<EntrySet>,
    /// Entry ids in use by the shadow, and the free ones.
    ids: IdAlloc,
    /// Each entry map's capacity (`max_entries`), in [`abi::ENTRY_MAPS`]
    /// order.
    caps: [u32; 10],
}

pub use edge_filter::kernel::maps::SyncStats;

/// The hash maps of [`V1Maps`], borrowed together ([`V1Maps::split`]).
struct HashMaps<'a> {
    addr_v4: &'a mut BpfHash<MapData, [u8; 4], EntryValue>,
    addr_v6: &'a mut BpfHash<MapData, [u8; 16], EntryValue>,
    port_v4: &'a mut BpfHash<MapData, PortKeyV4, EntryValue>,
    port_v6: &'a mut BpfHash<MapData, PortKeyV6, EntryValue>,
}

impl HashMaps<'_> {
    /// Write the keys of `want` whose values differ from `cur`, in the maps
    /// whose `MAPBIT_*` is in `only`.
    fn upsert(
        &self,
        cur: &Desired,
        want: &Desired,
        b: bool,
        st: &mut SyncStats,
        only: u32,
    ) -> Result<()> {
        if only & abi::MAPBIT_ADDR_V4 != 0 {
            let (c, w) = (&cur.addr_v4, &want.addr_v4);
            upsert_hash(self.addr_v4, c, w, abi::MAP_ADDR_V4, b, st)?;
        }
        if only & abi::MAPBIT_ADDR_V6 != 0 {
            let (c, w) = (&cur.addr_v6, &want.addr_v6);
            upsert_hash(self.addr_v6, c, w, abi::MAP_ADDR_V6, b, st)?;
        }
        if only & abi::MAPBIT_PORT_V4 != 0 {
            let (c, w) = (&cur.port_v4, &want.port_v4);
            upsert_hash(self.port_v4, c, w, abi::MAP_PORT_V4, b, st)?;
        }
        if only & abi::MAPBIT_PORT_V6 != 0 {
            let (c, w) = (&cur.port_v6, &want.port_v6);
            upsert_hash(self.port_v6, c, w, abi::MAP_PORT_V6, b, st)?;
        }
        Ok(())
    }

    /// Delete the keys of `cur` that `want` lacks, in the maps in `only`.
    fn remove(
        &self,
        cur: &Desired,
        want: &Desired,
        b: bool,
        st: &mut SyncStats,
        only: u32,
    ) -> Result<()> {
        if only & abi::MAPBIT_ADDR_V4 != 0 {
            remove_hash(self.addr_v4, &cur.addr_v4, &want.addr_v4, b, st)?;
        }
        if only & abi::MAPBIT_ADDR_V6 != 0 {
            remove_hash(self.addr_v6, &cur.addr_v6, &want.addr_v6, b, st)?;
        }
        if only & abi::MAPBIT_PORT_V4 != 0 {
            remove_hash(self.port_v4, &cur.port_v4, &want.port_v4, b, st)?;
        }
        if only & abi::MAPBIT_PORT_V6 != 0 {
            remove_hash(self.port_v6, &cur.port_v6, &want.port_v6, b, st)?;
        }
        Ok(())
    }

    /// Their fds, in [`MAP_INDEX`] order, for writes from two threads.
    fn fds(&self) -> [BorrowedFd<'_>; 4] {
        [
            hash_fd(self.addr_v4),
            hash_fd(self.addr_v6),
            hash_fd(self.port_v4),
            hash_fd(self.port_v6),
        ]
    }
}

/// The LPM tries of [`V1Maps`], borrowed together ([`V1Maps::split`]).
struct TrieMaps<'a> {
    allow_v4: &'a mut LpmTrie<MapData, [u8; 4], EntryValue>,
    allow_v6: &'a mut LpmTrie<MapData, [u8; 16], EntryValue>,
    prefix_v4: &'a mut LpmTrie<MapData, [u8; 4], EntryValue>,
    prefix_v6: &'a mut LpmTrie<MapData, [u8; 16], EntryValue>,
    pprefix_v4: &'a mut LpmTrie<MapData, PortPrefixV4, EntryValue>,
    pprefix_v6: &'a mut LpmTrie<MapData, PortPrefixV6, EntryValue>,
}

impl TrieMaps<'_> {
    /// Write the nodes of `want` whose values differ from `cur`
    /// (per element: LPM tries have no batch operations), in the tries
    /// whose `MAPBIT_*` is in `only`.
    fn upsert(
        &mut self,
        cur: &Desired,
        want: &Desired,
        st: &mut SyncStats,
        only: u32,
    ) -> Result<()> {
        let (c, w) = (cur, want);
        if only & abi::MAPBIT_ALLOW_V4 != 0 {
            upsert_lpm(
                self.allow_v4,
                &c.allow_v4,
                &w.allow_v4,
                abi::MAP_ALLOW_V4,
                st,
            )?;
        }
        if only & abi::MAPBIT_ALLOW_V6 != 0 {
            upsert_lpm(
                self.allow_v6,
                &c.allow_v6,
                &w.allow_v6,
                abi::MAP_ALLOW_V6,
                st,
            )?;
        }
        if only & abi::MAPBIT_PREFIX_V4 != 0 {
            upsert_lpm(
                self.prefix_v4,
                &c.prefix_v4,
                &w.prefix_v4,
                abi::MAP_PREFIX_V4,
                st,
            )?;
        }
        if only & abi::MAPBIT_PREFIX_V6 != 0 {
            upsert_lpm(
                self.prefix_v6,
                &c.prefix_v6,
                &w.prefix_v6,
                abi::MAP_PREFIX_V6,
                st,
            )?;
        }
        if only & abi::MAPBIT_PPREFIX_V4 != 0 {
            let (cm, wm) = (&c.pprefix_v4, &w.pprefix_v4);
            upsert_lpm(self.pprefix_v4, cm, wm, abi::MAP_PPREFIX_V4, st)?;
        }
        if only & abi::MAPBIT_PPREFIX_V6 != 0 {
            let (cm, wm) = (&c.pprefix_v6, &w.pprefix_v6);
            upsert_lpm(self.pprefix_v6, cm, wm, abi::MAP_PPREFIX_V6, st)?;
        }
        Ok(())
    }

    /// Delete the nodes of `cur` that `want` lacks, in the tries in `only`.
    fn remove(
        &mut self,
        cur: &Desired,
        want: &Desired,
        st: &mut SyncStats,
        only: u32,
    ) -> Result<()> {
        let (c, w) = (cur, want);
        if only & abi::MAPBIT_ALLOW_V4 != 0 {
            remove_lpm(self.allow_v4, &c.allow_v4, &w.allow_v4, st)?;
        }
        if only & abi::MAPBIT_ALLOW_V6 != 0 {
            remove_lpm(self.allow_v6, &c.allow_v6, &w.allow_v6, st)?;
        }
        if only & abi::MAPBIT_PREFIX_V4 != 0 {
            remove_lpm(self.prefix_v4, &c.prefix_v4, &w.prefix_v4, st)?;
        }
        if only & abi::MAPBIT_PREFIX_V6 != 0 {
            remove_lpm(self.prefix_v6, &c.prefix_v6, &w.prefix_v6, st)?;
        }
        if only & abi::MAPBIT_PPREFIX_V4 != 0 {
            remove_lpm(self.pprefix_v4, &c.pprefix_v4, &w.pprefix_v4, st)?;
        }
        if only & abi::MAPBIT_PPREFIX_V6 != 0 {
            remove_lpm(self.pprefix_v6, &c.pprefix_v6, &w.pprefix_v6, st)?;
        }
        Ok(())
    }
}

/// Index of each hash map in [`HashMaps::fds`] and in per-map sums.
const MAP_INDEX: [&str; 4] = [
    abi::MAP_ADDR_V4,
    abi::MAP_ADDR_V6,
    abi::MAP_PORT_V4,
    abi::MAP_PORT_V6,
];

fn conv<T>(name: &str, r: std::result::Result<T, MapError>) -> Result<T> {
    r.map_err(|source| Error::Map {
        op: format!("opening map {name}"),
        source,
    })
}

impl V1Maps {
    /// Take the maps out of a freshly loaded object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<V1Maps> {
        let mut maps = Self::from_fn(|name| {
            ebpf.take_map(name).ok_or_else(|| Error::Map {
                op: format!("map {name} missing from the object"),
                source: MapError::InvalidName {
                    name: name.to_string(),
                },
            })
        })?;
        maps.stats_fresh = true;
        Ok(maps)
    }

    /// Open pinned maps: `open(name)` returns the map of that name.
    pub fn from_fn(mut open: impl FnMut(&str) -> Result<Map>) -> Result<V1Maps> {
        macro_rules! m {
            ($name:expr) => {
                conv($name, open($name)?.try_into())?
            };
        }
        Ok(V1Maps {
            allow_v4: m!(abi::MAP_ALLOW_V4),
            allow_v6: m!(abi::MAP_ALLOW_V6),
            addr_v4: m!(abi::MAP_ADDR_V4),
            addr_v6: m!(abi::MAP_ADDR_V6),
            prefix_v4: m!(abi::MAP_PREFIX_V4),
            prefix_v6: m!(abi::MAP_PREFIX_V6),
            port_v4: m!(abi::MAP_PORT_V4),
            port_v6: m!(abi::MAP_PORT_V6),
            pprefix_v4: m!(abi::MAP_PPREFIX_V4),
            pprefix_v6: m!(abi::MAP_PPREFIX_V6),
            config: m!(abi::MAP_CONFIG),
            counters: m!(abi::MAP_COUNTERS),
            last: m!(abi::MAP_LAST),
            entry_stats: m!(abi::MAP_ENTRY_STATS),
            stats_overflow: m!(abi::MAP_STATS_OVERFLOW),
            stats_fresh: false,
            shadow: None,
            filters: None,
            batch: true,
            last_set: None,
            ids: IdAlloc::default(),
            caps: [u32::MAX; 10],
        }
        .with_capacities())
    }

    /// Read each entry map's capacity from the kernel.
    fn with_capacities(mut self) -> Self {
        fn cap<M: IterableMap<K, V>, K: Pod, V: Pod>(m: &M) -> u32 {
            m.map().info().map_or(u32::MAX, |i| i.max_entries())
        }
        self.caps = [
            cap(&self.allow_v4),
            cap(&self.allow_v6),
            cap(&self.addr_v4),
            cap(&self.addr_v6),
            cap(&self.prefix_v4),
            cap(&self.prefix_v6),
            cap(&self.port_v4),
            cap(&self.port_v6),
            cap(&self.pprefix_v4),
            cap(&self.pprefix_v6),
        ];
        self
    }

    /// Each entry map's capacity, in [`abi::ENTRY_MAPS`] order.
    pub fn capacities(&self) -> [u32; 10] {
        self.caps
    }

    /// The per-entry counters are known to be zero (the maps were just
    /// created): the first apply skips zeroing the ids it assigns.
    pub fn assume_fresh_stats(&mut self) {
        self.stats_fresh = true;
    }

    /// Use (default) or avoid BPF batch syscalls for hash maps.
    pub fn set_batch(&mut self, on: bool) {
        self.batch = on;
    }

    /// Forget the shadow copy: the next apply reads the kernel first.
    pub fn forget_shadow(&mut self) {
        self.shadow = None;
        self.filters = None;
        self.last_set = None;
    }

    /// The agent's copy of what the maps hold (after the first sync).
    pub fn shadow(&self) -> Option<&Desired> {
        self.shadow.as_ref()
    }

    /// Read the whole current contents back from the kernel.
    pub fn read(&self) -> Result<Desired> {
        let b = self.batch;
        Ok(Desired {
            allow_v4: read_lpm(&self.allow_v4)?,
            allow_v6: read_lpm(&self.allow_v6)?,
            addr_v4: read_hash(&self.addr_v4, b)?,
            addr_v6: read_hash(&self.addr_v6, b)?,
            prefix_v4: read_lpm(&self.prefix_v4)?,
            prefix_v6: read_lpm(&self.prefix_v6)?,
            port_v4: read_hash(&self.port_v4, b)?,
            port_v6: read_hash(&self.port_v6, b)?,
            pprefix_v4: read_lpm(&self.pprefix_v4)?,
            pprefix_v6: read_lpm(&self.pprefix_v6)?,
        })
    }

    /// Make the maps enforce `set` (keeping existing ids).
    ///
    /// After a first full build, later calls diff the new set against the
    /// previous one (both sorted: one linear pass) and update only the keys
    /// that changed, re-flattening only the trie nodes they cover, so a small
    /// change to a large set costs in proportion to the change. A caller
    /// that already holds the previous set (the feed agent) should use
    /// [`V1Maps::apply_changes`] instead: no copy of the set is kept and
    /// no pass over it is made here.
    pub fn apply(&mut self, set: &EntrySet, flags: u32) -> Result<SyncStats> {
        let set = normalized(set);
        if let Some(prev) = self.last_set.take()
            && self.shadow.is_some()
        {
            let changes = SetChanges::between(&prev, &set);
            drop(prev);
            if let Some(st) = self.apply_slots(changes.slots(), flags)? {
                if self.shadow.is_some() {
                    self.last_set = Some(set.into_owned());
                }
                return Ok(st);
            }
        }
        self.apply_full(&set, flags, true)
    }

    /// Make the maps enforce `set` by reading them back and writing the
    /// difference, keeping no copy of `set` (unlike [`V1Maps::apply`]):
    /// for a caller that keeps its previous set itself and follows up with
    /// [`V1Maps::apply_changes`], as the feed agent does. A copy of a
    /// million-entry set is ~30 MB and a clone on every full sync.
    pub fn rebuild(&mut self, set: &EntrySet, flags: u32) -> Result<SyncStats> {
        self.last_set = None;
        self.apply_full(&normalized(set), flags, false)
    }

    /// Make the maps enforce `new`, given `changes` =
    /// [`SetChanges::between`]`(prev, new)` where `prev` is the set the last
    /// apply to these maps enforced. Costs in proportion to the changes:
    /// the agent computes them once for all its interfaces and keeps no
    /// second copy of the set.
    ///
    /// Without a shadow copy (nothing applied yet, or the last apply failed
    /// or had refusals) this falls back to a full sync of `new`. Changes
    /// against another set than the one last applied are a caller's bug;
    /// when they show (an add of a key the maps hold, a change or removal
    /// of one they lack) this also falls back to a full sync of `new`, but
    /// a change it cannot see (keys the changes do not mention) is missed.
    pub fn apply_changes(
        &mut self,
        new: &EntrySet,
        changes: &SetChanges,
        flags: u32,
    ) -> Result<SyncStats> {
        // `apply` would diff against this copy; it no longer matches.
        self.last_set = None;
        if self.shadow.is_some()
            && let Some(st) = self.apply_slots(changes.slots(), flags)?
        {
            return Ok(st);
        }
        self.apply_full(&normalized(new), flags, false)
    }

    /// Whether the maps hold exactly what the last apply asked for (it
    /// succeeded without refusals), so [`V1Maps::apply_changes`] can
    /// build on it.
    pub fn in_sync(&self) -> bool {
        self.shadow.is_some()
    }

    /// Read the maps back, build the contents for `set` (normalised) and
    /// sync; keep a copy of `set` for the next [`V1Maps::apply`] if
    /// `keep_set`.
    fn apply_full(&mut self, set: &EntrySet, flags: u32, keep_set: bool) -> Result<SyncStats> {
        let current = self.read()?;
        let mut ids = IdAlloc::in_use(current.ids());
        let desired = Desired::build_with(set, &current, &mut ids);
        let assigned = ids.take_assigned();
        if !std::mem::take(&mut self.stats_fresh) {
            self.zero_entry_stats(&assigned)?;
        }
        let landed_ids = IdAlloc::in_use(desired.ids());
        let st = self.sync_owned(&current, desired, flags)?;
        if st.refused == 0 {
            self.ids = landed_ids;
            if keep_set {
                self.last_set = Some(set.clone());
            }
        }
        Ok(st)
    }

    /// Change the kernel maps *without* updating the shadow copy, as another
    /// process would: for drift tests and drills.
    #[doc(hidden)]
    pub fn tamper(&mut self, f: impl FnOnce(&mut Desired)) -> Result<()> {
        let (shadow, filters) = (self.shadow.take(), self.filters.take());
        let now = self.read()?;
        let mut changed = now.clone();
        f(&mut changed);
        let flags = self.config()?.flags;
        self.sync(&now, &changed, flags)?;
        (self.shadow, self.filters) = (shadow, filters);
        Ok(())
    }

    /// Compare the kernel's maps with what the last sync left there and
    /// repair any difference (someone changed them behind our back).
    /// Returns how many keys had drifted.
    pub fn reconcile(&mut self, flags: u32) -> Result<usize> {
        Ok(self.reconcile_with(flags, None)?.0)
    }

    /// [`V1Maps::reconcile`], and from the same read of the kernel,
    /// how the maps then stand against `set` (when given).
    pub fn reconcile_with(
        &mut self,
        flags: u32,
        set: Option<&EntrySet>,
    ) -> Result<(usize, Option<Census>)> {
        let kernel = self.read()?;
        let Some(want) = self.shadow.take() else {
            // Nothing applied yet: nothing to hold the kernel to.
            return Ok((0, set.map(|s| kernel.census(s))));
        };
        let drift = drift(&kernel, &want);
        if drift == 0 {
            let nonempty = want.nonempty();
            let census = set.map(|s| kernel.census(s));
            self.shadow = Some(want);
            // The config slot can drift too (the sampling bit is not ours).
            let mut now = self.config()?;
            now.flags &= !abi::CONFIG_SAMPLE_EVENTS;
            if now != (Config { flags, nonempty }) {
                self.set_config(flags, nonempty)?;
                return Ok((1, census));
            }
            return Ok((0, census));
        }
        self.sync_owned(&kernel, want, flags)?;
        // What landed is now the shadow (read back on refusals).
        let census = set.and_then(|s| Some(self.shadow.as_ref()?.census(s)));
        Ok((drift, census))
    }

    /// Make the maps equal `desired`, given that they hold `current`.
    /// Adds and changes go first, then removals; in a map that cannot hold
    /// its adds on top of its current keys, removals go first.
    pub fn sync(&mut self, current: &Desired, desired: &Desired, flags: u32) -> Result<SyncStats> {
        self.sync_owned(current, desired.clone(), flags)
    }

    /// [`V1Maps::sync`], taking `desired` by value: it becomes the
    /// shadow copy without being cloned (a full set's shadow is tens of MB).
    pub fn sync_owned(
        &mut self,
        current: &Desired,
        desired: Desired,
        flags: u32,
    ) -> Result<SyncStats> {
        self.last_set = None;
        self.shadow = None;
        self.filters = None;
        let grow = current.nonempty() | desired.nonempty();
        let st = self.sync_inner(current, &desired, flags, grow, desired.nonempty())?;
        // What landed: the desired state minus refusals. Refusals are rare
        // (a full map), and then the kernel is read back to know exactly.
        let landed = if st.refused == 0 {
            desired
        } else {
            drop(desired);
            self.read()?
        };
        self.set_config(flags, landed.nonempty())?;
        self.filters = Some(TrieFilters::build(&landed));
        self.shadow = Some(landed);
        Ok(st)
    }

    /// Write the difference between `current` and `desired` (which may be
    /// partial: only the keys they mention are touched). The config's
    /// nonempty mask is `grow_mask` while writing and `final_mask` after.
    fn sync_inner(
        &mut self,
        current: &Desired,
        desired: &Desired,
        flags: u32,
        grow_mask: u32,
        final_mask: u32,
    ) -> Result<SyncStats> {
        let b = self.batch;
        // Widen the nonempty mask first so new entries are looked up as soon
        // as they land; narrow it after removals.
        self.set_config(flags, grow_mask)?;
        let (c, d) = (current, desired);
        let tight = tight_maps(&c.counts(), &new_keys(c, d), &self.caps);
        let all = u32::MAX;
        let (hashes, mut tries) = self.split();
        let mut st = SyncStats::default();
        if tight != 0 {
            // A map that cannot take its adds on top of what it holds: first
            // everything that can land without a removal (a new covering
            // prefix lands before the entries it replaces go), then the
            // tight maps' removals, then their adds. Only an address whose
            // old and new entries are both in a tight map can pass in
            // between.
            let names: Vec<&str> = (abi::ENTRY_MAPS.iter().enumerate())
                .filter(|(i, _)| tight & abi::entry_map_bit(*i) != 0)
                .map(|(_, name)| *name)
                .collect();
            log::info!(
                "{} cannot take the new entries before the old ones leave: removing first",
                names.join(", ")
            );
            tries.upsert(c, d, &mut st, !tight)?;
            hashes.upsert(c, d, b, &mut st, !tight)?;
            tries.remove(c, d, &mut st, tight)?;
            hashes.remove(c, d, b, &mut st, tight)?;
            tries.upsert(c, d, &mut st, tight)?;
            hashes.upsert(c, d, b, &mut st, tight)?;
            tries.remove(c, d, &mut st, !tight)?;
            hashes.remove(c, d, b, &mut st, !tight)?;
            self.set_config(flags, final_mask)?;
            return Ok(st);
        }
        // The LPM tries (per-element syscalls) and the hash maps (batch)
        // are written on two threads: different maps, and the kernel work
        // of each is CPU-bound. Removals start only once every add landed.
        let (hash_up, lpm_up) = both(
            || -> Result<SyncStats> {
                let mut st = SyncStats::default();
                hashes.upsert(c, d, b, &mut st, all)?;
                Ok(st)
            },
            || -> Result<SyncStats> {
                let mut st = SyncStats::default();
                tries.upsert(c, d, &mut st, all)?;
                Ok(st)
            },
        );
        st = merge_stats(st, merge_stats(hash_up?, lpm_up?));
        let (hash_rm, lpm_rm) = both(
            || -> Result<SyncStats> {
                let mut st = SyncStats::default();
                hashes.remove(c, d, b, &mut st, all)?;
                Ok(st)
            },
            || -> Result<SyncStats> {
                let mut st = SyncStats::default();
                tries.remove(c, d, &mut st, all)?;
                Ok(st)
            },
        );
        st = merge_stats(st, hash_rm?);
        st = merge_stats(st, lpm_rm?);
        self.set_config(flags, final_mask)?;
        Ok(st)
    }

    /// The hash maps and the tries, borrowed apart so that two threads can
    /// write them.
    fn split(&mut self) -> (HashMaps<'_>, TrieMaps<'_>) {
        (
            HashMaps {
                addr_v4: &mut self.addr_v4,
                addr_v6: &mut self.addr_v6,
                port_v4: &mut self.port_v4,
                port_v6: &mut self.port_v6,
            },
            TrieMaps {
                allow_v4: &mut self.allow_v4,
                allow_v6: &mut self.allow_v6,
                prefix_v4: &mut self.prefix_v4,
                prefix_v6: &mut self.prefix_v6,
                pprefix_v4: &mut self.pprefix_v4,
                pprefix_v6: &mut self.pprefix_v6,
            },
        )
    }

    /// Read the runtime config.
    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(|source| Error::Map {
            op: "reading CONFIG".into(),
            source,
        })
    }

    /// Write the runtime config. [`abi::CONFIG_SAMPLE_EVENTS`] is owned by
    /// `edge-filter events` (see [`V1Maps::set_sampling_flag`]): the
    /// kernel's current value of that bit is kept, whatever `flags` says.
    pub fn set_config(&mut self, flags: u32, nonempty: u32) -> Result<()> {
        let keep = self
            .config()
            .map_or(0, |c| c.flags & abi::CONFIG_SAMPLE_EVENTS);
        let flags = (flags & !abi::CONFIG_SAMPLE_EVENTS) | keep;
        self.config
            .set(0, Config { flags, nonempty }, 0)
            .map_err(|source| Error::Map {
                op: "writing CONFIG".into(),
                source,
            })
    }

    /// Counters by reason, summed over CPUs.
    pub fn counters(&self) -> Result<Vec<abi::Counter>> {
        let mut out = Vec::with_capacity(abi::REASON_COUNT as usize);
        for r in 0..abi::REASON_COUNT {
            let per_cpu = self.counters.get(&r, 0).map_err(|source| Error::Map {
                op: "reading COUNTERS".into(),
                source,
            })?;
            let mut sum = abi::Counter::default();
            for c in per_cpu.iter() {
                sum.packets += c.packets;
                sum.bytes += c.bytes;
            }
            out.push(sum);
        }
        Ok(out)
    }

    /// Switch event sampling on or off (the one writer of
    /// [`abi::CONFIG_SAMPLE_EVENTS`]); returns whether it was on.
    pub fn set_sampling_flag(&mut self, on: bool) -> Result<bool> {
        let mut c = self.config()?;
        let was = c.flags & abi::CONFIG_SAMPLE_EVENTS != 0;
        if on {
            c.flags |= abi::CONFIG_SAMPLE_EVENTS;
        } else {
            c.flags &= !abi::CONFIG_SAMPLE_EVENTS;
        }
        self.config.set(0, c, 0).map_err(|source| Error::Map {
            op: "writing CONFIG".into(),
            source,
        })?;
        Ok(was)
    }

    /// Capacity of `ENTRY_STATS`: ids below it have their own counters.
    pub fn entry_stats_capacity(&self) -> u32 {
        self.entry_stats.len()
    }

    /// Hit counters of every id below the capacity, summed over CPUs
    /// (`last_jiffies`: the latest CPU's), indexed by id.
    pub fn entry_stats(&self) -> Result<Vec<abi::EntryStat>> {
        let cap = self.entry_stats.len() as usize;
        let ncpus = possible_cpus()?;
        let mut out = vec![abi::EntryStat::default(); cap];
        let fold = |into: &mut abi::EntryStat, s: &abi::EntryStat| {
            into.packets += s.packets;
            into.bytes += s.bytes;
            into.last_jiffies = into.last_jiffies.max(s.last_jiffies);
        };
        if self.batch {
            let fd = self.entry_stats.map().fd().as_fd();
            match edge_filter::kernel::sys::lookup_all_percpu::<abi::EntryStat>(fd, ncpus) {
                Ok((keys, vals)) => {
                    for (i, k) in keys.iter().enumerate() {
                        if let Some(o) = out.get_mut(*k as usize) {
                            for s in &vals[i * ncpus..(i + 1) * ncpus] {
                                fold(o, s);
                            }
                        }
                    }
                    return Ok(out);
                }
                Err(e) if edge_filter::kernel::sys::unsupported(&e) => {}
                Err(source) => {
                    return Err(Error::Pin {
                        op: "reading ENTRY_STATS (batch)".into(),
                        source,
                    });
                }
            }
        }
        for (id, o) in out.iter_mut().enumerate() {
            let per_cpu = self
                .entry_stats
                .get(&(id as u32), 0)
                .map_err(|source| Error::Map {
                    op: "reading ENTRY_STATS".into(),
                    source,
                })?;
            per_cpu.iter().for_each(|s| fold(o, s));
        }
        Ok(out)
    }

    /// Hits on ids beyond the capacity of `ENTRY_STATS`, summed over CPUs.
    pub fn stats_overflow(&self) -> Result<abi::EntryStat> {
        let per_cpu = self
            .stats_overflow
            .get(&0, 0)
            .map_err(|source| Error::Map {
                op: "reading STATS_OVERFLOW".into(),
                source,
            })?;
        let mut sum = abi::EntryStat::default();
        for s in per_cpu.iter() {
            sum.packets += s.packets;
            sum.bytes += s.bytes;
            sum.last_jiffies = sum.last_jiffies.max(s.last_jiffies);
        }
        Ok(sum)
    }

    /// Zero the hit counters of `ids` (those below the capacity) on every
    /// CPU, before entries with these newly assigned ids land.
    fn zero_entry_stats(&mut self, ids: &[u32]) -> Result<()> {
        let cap = self.entry_stats.len();
        let ids: Vec<u32> = ids.iter().copied().filter(|&i| i < cap).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let ncpus = possible_cpus()?;
        let mut start = 0;
        if self.batch {
            let zeros = vec![abi::EntryStat::default(); ids.len() * ncpus];
            let fd = self.entry_stats.map().fd().as_fd();
            let p = edge_filter::kernel::sys::update_percpu(fd, &ids, &zeros, ncpus);
            start = p.done;
            match p.error {
                None => return Ok(()),
                Some(e) if edge_filter::kernel::sys::unsupported(&e) => {}
                Some(source) => {
                    return Err(Error::Pin {
                        op: "zeroing ENTRY_STATS (batch)".into(),
                        source,
                    });
                }
            }
        }
        for id in &ids[start..] {
            let zero = aya::maps::PerCpuValues::try_from(vec![abi::EntryStat::default(); ncpus])
                .map_err(|e| Error::Pin {
                    op: "building per-CPU values".into(),
                    source: e,
                })?;
            self.entry_stats
                .set(*id, zero, 0)
                .map_err(|source| Error::Map {
                    op: "zeroing ENTRY_STATS".into(),
                    source,
                })?;
        }
        Ok(())
    }

    /// The last verdict recorded on each CPU (`CONFIG_RECORD_LAST`).
    pub fn last(&self) -> Result<Vec<abi::LastVerdict>> {
        let per_cpu = self.last.get(&0, 0).map_err(|source| Error::Map {
            op: "reading LAST".into(),
            source,
        })?;
        Ok(per_cpu.iter().copied().collect())
    }

    /// Reset the LAST slot on every CPU to `v`.
    pub fn set_last(&mut self, v: abi::LastVerdict) -> Result<()> {
        let n = possible_cpus()?;
        let vals = aya::maps::PerCpuValues::try_from(vec![v; n]).map_err(|e| Error::Pin {
            op: "building per-CPU values".into(),
            source: e,
        })?;
        self.last.set(0, vals, 0).map_err(|source| Error::Map {
            op: "writing LAST".into(),
            source,
        })
    }

    /// Pin every map under `dir` (which must exist).
    pub fn pin_all(ebpf: &Ebpf, dir: &std::path::Path) -> Result<()> {
        for name in abi::V1_MAPS {
            let map = ebpf.map(name).ok_or_else(|| Error::Map {
                op: format!("map {name} missing from the object"),
                source: MapError::InvalidName {
                    name: name.to_string(),
                },
            })?;
            map.pin(dir.join(name)).map_err(|e| Error::Pin {
                op: format!("pinning map {name} at {}", dir.join(name).display()),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        Ok(())
    }
}

fn read_hash<K: Pod + Eq + Hash + Default>(
    m: &BpfHash<MapData, K, EntryValue>,
    batch: bool,
) -> Result<KeyMap<K>> {
    if batch {
        match edge_filter::kernel::sys::lookup_all::<K, EntryValue>(
            IterableMap::map(m).fd().as_fd(),
        ) {
            Ok(v) => return Ok(v.into_iter().collect()),
            Err(e) if edge_filter::kernel::sys::unsupported(&e) => {}
            Err(e) => {
                return Err(Error::Pin {
                    op: "reading a hash map (batch)".into(),
                    source: e,
                });
            }
        }
    }
    let mut out = KeyMap::default();
    for kv in m.iter() {
        let (k, v) = kv.map_err(|source| Error::Map {
            op: "reading a hash map".into(),
            source,
        })?;
        out.insert(k, v);
    }
    Ok(out)
}

fn read_lpm<K: Pod + Ord>(
    m: &LpmTrie<MapData, K, EntryValue>,
) -> Result<BTreeMap<(u32, K), EntryValue>> {
    let mut out = BTreeMap::new();
    for kv in m.iter() {
        let (k, v) = kv.map_err(|source| Error::Map {
            op: "reading an LPM trie".into(),
            source,
        })?;
        out.insert((k.prefix_len(), k.data()), v);
    }
    Ok(out)
}

fn merge_stats(mut a: SyncStats, b: SyncStats) -> SyncStats {
    a.added += b.added;
    a.changed += b.changed;
    a.removed += b.removed;
    a.refused += b.refused;
    a.refusals.extend(b.refusals);
    a
}

fn is_full(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) || s.io_error.raw_os_error() == Some(libc::ENOSPC))
}

/// Keys per batch syscall when writing a hash map: the keys and values to
/// write are gathered this many at a time, not all at once (a full sync
/// would otherwise hold a second copy of a million keys).
const HASH_CHUNK: usize = 16 * 1024;

fn upsert_hash<K: Pod + Eq + Hash>(
    m: &BpfHash<MapData, K, EntryValue>,
    cur: &KeyMap<K>,
    want: &KeyMap<K>,
    name: &'static str,
    batch: bool,
    st: &mut SyncStats,
) -> Result<()> {
    let fd = hash_fd(m);
    let cap = HASH_CHUNK.min(want.len());
    let (mut keys, mut vals) = (Vec::with_capacity(cap), Vec::with_capacity(cap));
    let (mut changed, mut written, mut refused) = (0, 0, 0);
    for (k, v) in want {
        match cur.get(k) {
            Some(old) if old == v => continue,
            Some(_) => changed += 1,
            None => {}
        }
        keys.push(*k);
        vals.push(*v);
        if keys.len() == HASH_CHUNK {
            refused += write_by_fd(fd, &keys, &vals, name, batch)?;
            written += keys.len();
            keys.clear();
            vals.clear();
        }
    }
    if !keys.is_empty() {
        refused += write_by_fd(fd, &keys, &vals, name, batch)?;
        written += keys.len();
    }
    // Refusals are new keys (updates of existing keys always fit).
    st.changed += changed;
    st.added += written - changed - refused;
    note_refused(name, refused, st);
    Ok(())
}

/// A hash map's fd, for writes through raw syscalls (batch, or from two
/// threads: the kernel serialises per bucket).
fn hash_fd<K: Pod>(m: &BpfHash<MapData, K, EntryValue>) -> BorrowedFd<'_> {
    IterableMap::map(m).fd().as_fd()
}

/// Write `keys[i] -> vals[i]` (batch when `batch` and supported, else one
/// element at a time); returns how many were refused because the map is
/// full. The rest is written.
fn write_by_fd<K: Pod>(
    fd: BorrowedFd<'_>,
    keys: &[K],
    vals: &[EntryValue],
    name: &'static str,
    batch: bool,
) -> Result<usize> {
    let err = |source| Error::Pin {
        op: format!("updating {name}"),
        source,
    };
    let (mut start, mut refused) = (0, 0);
    while batch && start < keys.len() {
        let p = edge_filter::kernel::sys::update(fd, &keys[start..], &vals[start..]);
        start += p.done;
        match p.error {
            None => return Ok(refused),
            Some(e) if edge_filter::kernel::sys::unsupported(&e) && p.done == 0 => break,
            // The element at `start` did not fit; skip it.
            Some(e) if is_full_io(&e) => {
                refused += 1;
                start += 1;
            }
            Some(e) => return Err(err(e)),
        }
    }
    for (k, v) in keys[start..].iter().zip(&vals[start..]) {
        match edge_filter::kernel::sys::update_one(fd, k, v) {
            Ok(()) => {}
            Err(e) if is_full_io(&e) => refused += 1,
            Err(e) => return Err(err(e)),
        }
    }
    Ok(refused)
}

/// Delete `keys` (batch when `batch` and supported, else one element at a
/// time); keys already gone are fine. Returns how many were removed.
fn delete_by_fd<K: Pod>(fd: BorrowedFd<'_>, keys: &[K], batch: bool) -> Result<usize> {
    let err = |source| Error::Pin {
        op: "removing entries".into(),
        source,
    };
    let (mut start, mut removed) = (0, 0);
    while batch && start < keys.len() {
        let p = edge_filter::kernel::sys::delete(fd, &keys[start..]);
        start += p.done;
        removed += p.done;
        match p.error {
            None => return Ok(removed),
            Some(e) if edge_filter::kernel::sys::unsupported(&e) && p.done == 0 => break,
            // Already gone (someone else removed it): fine.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => start += 1,
            Some(e) => return Err(err(e)),
        }
    }
    for k in &keys[start..] {
        match edge_filter::kernel::sys::delete_one(fd, k) {
            Ok(()) => removed += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(removed)
}

fn is_full_io(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::E2BIG) | Some(libc::ENOSPC))
}

fn upsert_lpm<K: Pod + Ord>(
    m: &mut LpmTrie<MapData, K, EntryValue>,
    cur: &BTreeMap<(u32, K), EntryValue>,
    want: &BTreeMap<(u32, K), EntryValue>,
    name: &'static str,
    st: &mut SyncStats,
) -> Result<()> {
    let mut refused = 0;
    for (&(l, k), v) in want {
        let old = cur.get(&(l, k));
        if old == Some(v) {
            continue;
        }
        match m.insert(&Key::new(l, k), v, 0) {
            Ok(()) => {
                if old.is_some() {
                    st.changed += 1
                } else {
                    st.added += 1
                }
            }
            Err(e) if is_full(&e) => refused += 1,
            Err(source) => {
                return Err(Error::Map {
                    op: format!("updating {name}"),
                    source,
                });
            }
        }
    }
    note_refused(name, refused, st);
    Ok(())
}

fn note_refused(name: &'static str, refused: usize, st: &mut SyncStats) {
    if refused > 0 {
        st.refused += refused;
        st.refusals.push(format!(
            "map {name} is full: {refused} entries refused (raise its capacity)"
        ));
    }
}

fn remove_hash<K: Pod + Eq + Hash>(
    m: &BpfHash<MapData, K, EntryValue>,
    cur: &KeyMap<K>,
    want: &KeyMap<K>,
    batch: bool,
    st: &mut SyncStats,
) -> Result<()> {
    let keys: Vec<K> = cur
        .keys()
        .filter(|k| !want.contains_key(k))
        .copied()
        .collect();
    st.removed += delete_by_fd(hash_fd(m), &keys, batch)?;
    Ok(())
}

fn remove_lpm<K: Pod + Ord>(
    m: &mut LpmTrie<MapData, K, EntryValue>,
    cur: &BTreeMap<(u32, K), EntryValue>,
    want: &BTreeMap<(u32, K), EntryValue>,
    st: &mut SyncStats,
) -> Result<()> {
    for &(l, k) in cur.keys().filter(|k| !want.contains_key(k)) {
        match m.remove(&Key::new(l, k)) {
            Ok(()) => st.removed += 1,
            Err(MapError::KeyNotFound) => {}
            Err(source) => {
                return Err(Error::Map {
                    op: "removing an entry".into(),
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The maps (a `MAPBIT_*` mask) that cannot take their adds before their
/// removals: `current` keys plus keys `adds` would add exceed `caps`
/// (in [`abi::ENTRY_MAPS`] order). For those, removals that make room go
/// first, so that a set that fits always lands whole (a feed rotating a
/// near-capacity map to as many different keys, or a sync after a crash
/// in the middle of one).
fn tight_maps(current: &[(&'static str, usize); 10], adds: &[usize; 10], caps: &[u32; 10]) -> u32 {
    let mut tight = 0;
    for i in 0..10 {
        if current[i].1 + adds[i] > caps[i] as usize {
            tight |= abi::entry_map_bit(i);
        }
    }
    tight
}

/// Keys of `want` that `cur` lacks, per map in [`abi::ENTRY_MAPS`] order.
fn new_keys(cur: &Desired, want: &Desired) -> [usize; 10] {
    fn h<K: Eq + Hash>(c: &KeyMap<K>, w: &KeyMap<K>) -> usize {
        w.keys().filter(|k| !c.contains_key(k)).count()
    }
    fn t<K: Ord>(c: &BTreeMap<K, EntryValue>, w: &BTreeMap<K, EntryValue>) -> usize {
        w.keys().filter(|k| !c.contains_key(k)).count()
    }
    [
        t(&cur.allow_v4, &want.allow_v4),
        t(&cur.allow_v6, &want.allow_v6),
        h(&cur.addr_v4, &want.addr_v4),
        h(&cur.addr_v6, &want.addr_v6),
        t(&cur.prefix_v4, &want.prefix_v4),
        t(&cur.prefix_v6, &want.prefix_v6),
        h(&cur.port_v4, &want.port_v4),
        h(&cur.port_v6, &want.port_v6),
        t(&cur.pprefix_v4, &want.pprefix_v4),
        t(&cur.pprefix_v6, &want.pprefix_v6),
    ]
}

/// Run `a` and `b` at once (`b` on a scoped thread), returning both
/// results; a panic in either is propagated. (A copy of the private helper
/// of `SetChanges::between` in edge-filter's `kernel/maps/changes.rs`.)
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
    use edge_filter::entry::{Action, Entry, PortMatch, Proto, Side};

    fn entry(s: &str, port: Option<(Proto, u16, Side)>, action: Action) -> Entry {
        let port = port.map(|(proto, port, side)| PortMatch { proto, port, side });
        Entry::new(s.parse().unwrap(), port, action)
    }

    /// One entry of every kind, both families, an allowlist, a duplicate
    /// key (weaker first) and a monitor prefix inside a drop prefix.
    fn every_kind() -> EntrySet {
        use Action::{Drop, Monitor};
        EntrySet {
            allow: vec![
                "192.0.2.128/25".parse().unwrap(),
                "2001:db8:ffff::/48".parse().unwrap(),
            ],
            entries: vec![
                entry("10.0.0.1/32", None, Monitor),
                entry("10.0.0.1/32", None, Drop),
                entry("2001:db8::1/128", None, Drop),
                entry("10.1.0.0/16", None, Drop),
                entry("10.1.2.0/24", None, Monitor),
                entry("2001:db8:bad::/48", None, Monitor),
                entry("10.0.0.2/32", Some((Proto::Tcp, 443, Side::Src)), Drop),
                entry("2001:db8::2/128", Some((Proto::Udp, 53, Side::Dst)), Drop),
                entry("10.2.0.0/16", Some((Proto::Tcp, 22, Side::Dst)), Monitor),
                entry("2001:db8:2::/64", Some((Proto::Udp, 123, Side::Src)), Drop),
            ],
        }
    }

    #[test]
    fn tight_maps_are_those_that_cannot_take_their_adds_first() {
        let d = Desired::build_from(&every_kind(), &Desired::default());
        let mut caps = [u32::MAX; 10];
        let adds = [0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(tight_maps(&d.counts(), &adds, &caps), 0);
        caps[2] = 1; // ADDR_V4 holds its one key and has no room for another
        assert_eq!(tight_maps(&d.counts(), &adds, &caps), abi::MAPBIT_ADDR_V4);
        let mut more = every_kind();
        more.entries.push(entry("10.0.0.9/32", None, Action::Drop));
        let want = Desired::build_from(&more, &d);
        assert_eq!(new_keys(&d, &want), adds);
    }
}
