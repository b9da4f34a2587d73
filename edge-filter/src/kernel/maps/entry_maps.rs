//! The entry maps of one production program instance ([`EntryMaps`]):
//! datapath v2 (`docs/datapath-v2.md`) behind the API the agent, the ops
//! and the tests use. The v2 tables are written by the sync engine
//! ([`V2Sync`]: a compiled tier, update plans with grace periods); when a
//! set outgrows its tier, a new program instance on maps of the next tier
//! replaces the old one without a gap ([`attach::grow`] for a pinned
//! attachment, a reload for a private one). The per-reason counters and
//! the last verdict are the common maps, reused across tiers.
//!
//! Reading back goes through the catalog ([`decode`]): what the kernel
//! holds, by key and id, as [`Desired`] (the v1 model the ops count and
//! join with). Per-entry counters come from `V2_STATS` (every id has its
//! own: there is no overflow slot); the last hit from `V2_LASTHIT`, which
//! the agent keeps ([`EntryMaps::note_hits`]).

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::{Arc, Weak};

use aya::{
    Ebpf,
    maps::{Map, MapData, MapError, PerCpuArray},
};
use edge_filter_common::{self as abi, Config};

use super::changes::SetChanges;
use super::contents::{Census, Desired, SlotKey, census_of_sets, normalized};
use crate::entry::EntrySet;
use crate::error::{Error, Result};
use crate::kernel::layout::{IdKey, Ids, assign_ids, decode};
use crate::kernel::v2maps::{Sizes, V2Maps};
use crate::kernel::v2sync::{Applied, SharedSet, Tier, V2Sync};
use crate::kernel::{attach, program};

/// The first tier of a set, compiled before the program instance that
/// holds it is loaded (its maps are sized for it).
pub struct Fresh {
    tier: Tier,
    set: EntrySet,
    seed: u64,
}

impl Fresh {
    /// Compile `set` (normalised) into a tier of its own size.
    pub fn for_set(set: &EntrySet) -> Result<Fresh> {
        let set = normalized(set).into_owned();
        let seed = new_seed();
        let tier = Tier::for_set(&set, assign_ids(&set, &Ids::default()), seed)?;
        Ok(Fresh { tier, set, seed })
    }

    /// The maps the tier needs on this machine.
    pub fn sizes(&self) -> Result<Sizes> {
        self.tier.sizes()
    }

    /// Keys (entries and allowlist nets) it holds.
    pub fn keys(&self) -> usize {
        self.set.entries.len() + self.set.allow.len()
    }
}

/// Where the program instance lives, which says how a new tier goes live.
pub enum Home {
    /// A pinned attachment: a new tier is loaded from the production
    /// object, pinned beside the old maps and swapped onto the link.
    Pinned {
        /// The directory of the pinned maps.
        maps_dir: PathBuf,
        /// The pinned XDP link.
        link: PathBuf,
    },
    /// A private instance (BPF_PROG_TEST_RUN, replay): a new tier is a new
    /// instance, held here.
    Private(Box<Ebpf>),
}

/// The v2 maps as a reader or as the engine that writes them.
enum State {
    /// Opened, not written yet: reads decode the catalog; the first apply
    /// adopts the tables ([`V2Sync::adopt`]).
    Reader(Box<V2Maps>),
    /// Written by this process.
    Engine(Box<V2Sync>),
    /// Only while switching between the two.
    Gone,
}

/// Typed handles to the maps of one loaded or pinned program instance.
pub struct EntryMaps {
    state: State,
    counters: PerCpuArray<MapData, abi::Counter>,
    last: PerCpuArray<MapData, abi::LastVerdict>,
    home: Home,
    /// The last apply landed whole ([`EntryMaps::in_sync`]).
    synced: bool,
    /// Hash seed of the tiers this process builds.
    seed: u64,
    /// A set the caller keeps, to share with the engine
    /// ([`EntryMaps::offer`]).
    offered: Option<SharedSet>,
    /// The last offered set found normalised ([`EntryMaps::normalize`]).
    /// Weak: it keeps no set alive, and while it exists no other set can
    /// take that set's address.
    normal: Option<Weak<dyn AsRef<EntrySet> + Send + Sync>>,
}

/// Outcome of a sync.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncStats {
    /// Keys added.
    pub added: usize,
    /// Keys whose value changed.
    pub changed: usize,
    /// Keys removed.
    pub removed: usize,
    /// Keys refused because a map was full. Always 0 with datapath v2: a
    /// set that outgrows its tier gets the next one.
    pub refused: usize,
    /// Human-readable reasons for refusals.
    pub refusals: Vec<String>,
    /// Capacity tiers changed by this sync (a new program instance swapped
    /// in without a gap).
    pub tiers: usize,
}

fn take_map(ebpf: &mut Ebpf, name: &str) -> Result<Map> {
    ebpf.take_map(name).ok_or_else(|| Error::Map {
        op: format!("map {name} missing from the object"),
        source: MapError::InvalidName {
            name: name.to_string(),
        },
    })
}

fn conv<T>(name: &str, r: std::result::Result<T, MapError>) -> Result<T> {
    r.map_err(|source| Error::Map {
        op: format!("opening map {name}"),
        source,
    })
}

/// A hash seed for a new tier (each attachment its own, so that nobody can
/// pick addresses that collide in every filter).
fn new_seed() -> u64 {
    rand::random()
}

/// The ids of `ids` as the contents model keys them.
fn slot_ids(ids: &Ids) -> std::collections::HashMap<SlotKey, u32> {
    ids.iter()
        .map(|(k, id)| {
            let k = match k {
                IdKey::Allow(n) => SlotKey::Allow(n),
                IdKey::Entry(e) => SlotKey::Entry(e),
            };
            (k, id)
        })
        .collect()
}

impl EntryMaps {
    /// A fresh program instance, private to this process (nothing attached
    /// or pinned), its maps a tier for `set` and holding it.
    pub fn private(set: &EntrySet, flags: u32) -> Result<EntryMaps> {
        let fresh = Fresh::for_set(set)?;
        let mut ebpf = program::load(&fresh.sizes()?, &[])?;
        let mut maps = EntryMaps::fresh(
            &mut ebpf,
            fresh,
            flags,
            Home::Pinned {
                maps_dir: PathBuf::new(),
                link: PathBuf::new(),
            },
        )?;
        maps.home = Home::Private(Box::new(ebpf));
        Ok(maps)
    }

    /// Take the maps of a freshly loaded instance (`program::load` with
    /// `fresh.sizes()`) and write the tier into them, before anything is
    /// attached.
    pub fn fresh(ebpf: &mut Ebpf, fresh: Fresh, flags: u32, home: Home) -> Result<EntryMaps> {
        let Fresh { tier, set, seed } = fresh;
        let (state, counters, last) = EntryMaps::parts(ebpf, tier, &set, seed, flags)?;
        Ok(EntryMaps {
            state,
            counters,
            last,
            home,
            synced: true,
            seed,
            offered: None,
            normal: None,
        })
    }

    #[allow(clippy::type_complexity)]
    fn parts(
        ebpf: &mut Ebpf,
        tier: Tier,
        set: &EntrySet,
        seed: u64,
        flags: u32,
    ) -> Result<(
        State,
        PerCpuArray<MapData, abi::Counter>,
        PerCpuArray<MapData, abi::LastVerdict>,
    )> {
        let v2 = V2Maps::take(ebpf)?;
        v2.set_runtime_flags(flags & !abi::CONFIG_SAMPLE_EVENTS);
        let sync = V2Sync::install(v2, tier, set, seed)?;
        Ok((
            State::Engine(Box::new(sync)),
            conv(
                abi::MAP_COUNTERS,
                take_map(ebpf, abi::MAP_COUNTERS)?.try_into(),
            )?,
            conv(abi::MAP_LAST, take_map(ebpf, abi::MAP_LAST)?.try_into())?,
        ))
    }

    /// Open pinned maps: `open(name)` returns the map of that name. Reads
    /// decode what the kernel holds; the first apply adopts it.
    pub fn from_fn(mut open: impl FnMut(&str) -> Result<Map>, home: Home) -> Result<EntryMaps> {
        let counters = conv(abi::MAP_COUNTERS, open(abi::MAP_COUNTERS)?.try_into())?;
        let last = conv(abi::MAP_LAST, open(abi::MAP_LAST)?.try_into())?;
        let v2 = V2Maps::from_fn(open)?;
        Ok(EntryMaps {
            state: State::Reader(Box::new(v2)),
            counters,
            last,
            home,
            synced: false,
            seed: new_seed(),
            offered: None,
            normal: None,
        })
    }

    /// Where the instance lives (how a new tier goes live).
    pub fn set_home(&mut self, home: Home) {
        self.home = home;
    }

    /// The v2 maps.
    pub fn v2(&self) -> &V2Maps {
        match &self.state {
            State::Reader(m) => m,
            State::Engine(s) => s.maps(),
            State::Gone => unreachable!("maps taken mid-switch"),
        }
    }

    /// The sync engine, once this process wrote the maps.
    pub fn engine(&self) -> Option<&V2Sync> {
        match &self.state {
            State::Engine(s) => Some(s),
            _ => None,
        }
    }

    /// The XDP program of a private instance.
    pub fn xdp_mut(&mut self) -> Result<&mut aya::programs::Xdp> {
        match &mut self.home {
            Home::Private(ebpf) => program::xdp_mut(ebpf),
            Home::Pinned { .. } => Err(Error::Pin {
                op: "running the program of a pinned attachment".into(),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            }),
        }
    }

    /// Each logical entry map's capacity in the current tier, in
    /// [`abi::ENTRY_MAPS`] order: exact IPv4/IPv6 records for the address
    /// and address+port maps, ids for the rest (every entry has one).
    /// Tiers grow on their own: this is where the next tier starts, not a
    /// limit.
    pub fn capacities(&self) -> [u32; 10] {
        let s = self.v2().sizes();
        let rec4 = s.buckets4.saturating_mul(8) / 2;
        let rec6 = s.buckets6.saturating_mul(3) / 2;
        let ids = s.catalog;
        [ids, ids, rec4, rec6, ids, ids, rec4, rec6, ids, ids]
    }

    /// Forget what this process wrote: the next apply adopts the kernel's
    /// tables again (after a failed apply).
    pub fn forget_shadow(&mut self) {
        self.synced = false;
        if let State::Engine(_) = self.state
            && let State::Engine(s) = std::mem::replace(&mut self.state, State::Gone)
        {
            self.state = State::Reader(Box::new(s.into_maps()));
        }
    }

    /// What this process last wrote (by key and id), without reading the
    /// kernel; `None` before the first sync.
    pub fn shadow(&self) -> Option<Desired> {
        let s = self.engine()?;
        self.synced
            .then(|| Desired::with_ids(s.set(), &slot_ids(s.ids())))
    }

    /// [`Desired::census`] of `set` against [`EntryMaps::shadow`], counted
    /// straight from the engine's set (the shadow of 1M entries was a hash
    /// map built and dropped after every sync); `None` before the first
    /// sync.
    pub fn shadow_census(&self, set: &EntrySet) -> Option<Census> {
        let s = self.engine()?;
        let normal = self.is_known_normal(set);
        self.synced.then(|| census_of_sets(s.set(), set, normal))
    }

    /// Read the whole current contents back from the kernel (the catalog,
    /// decoded).
    pub fn read(&self) -> Result<Desired> {
        let t = self.v2().read()?;
        let (set, ids) = decode(&t).map_err(|e| Error::Layout(Box::new(e)))?;
        Ok(Desired::with_ids(&set, &slot_ids(&ids)))
    }

    /// The engine, adopting the maps first if this process has not written
    /// them yet. Returns whether the adopted tables had drifted.
    fn engine_mut(&mut self) -> Result<(&mut V2Sync, bool)> {
        let mut drift = false;
        if let State::Reader(_) = self.state {
            let State::Reader(m) = std::mem::replace(&mut self.state, State::Gone) else {
                unreachable!()
            };
            match V2Sync::adopt(*m, self.seed) {
                Ok((s, a)) => {
                    drift = a.drift;
                    self.state = State::Engine(Box::new(s));
                }
                Err(e) => {
                    // Reopen is not possible here: the maps were consumed.
                    return Err(e);
                }
            }
        }
        match &mut self.state {
            State::Engine(s) => Ok((s, drift)),
            _ => unreachable!("state set above"),
        }
    }

    /// The caller keeps `set` and passes it (as `&*set`) to the next
    /// applies: the engine then holds it rather than a copy
    /// ([`V2Sync::offer`]), until [`EntryMaps::withdraw`].
    pub fn offer(&mut self, set: SharedSet) {
        self.offered = Some(set);
    }

    /// End an [`EntryMaps::offer`].
    pub fn withdraw(&mut self) {
        self.offered = None;
        if let State::Engine(sync) = &mut self.state {
            sync.withdraw();
        }
    }

    /// Let the engine hold `set` instead of its equal copy (after a start
    /// or a repair, which copy). Returns whether it holds it.
    pub fn share(&mut self, set: &SharedSet) -> bool {
        match &mut self.state {
            State::Engine(sync) => sync.share(set),
            _ => false,
        }
    }

    /// Whether `set` is a set offered before and found normalised then.
    fn is_known_normal(&self, set: &EntrySet) -> bool {
        self.normal
            .as_ref()
            .and_then(Weak::upgrade)
            .is_some_and(|n| std::ptr::eq((*n).as_ref(), set))
    }

    /// `set` normalised ([`normalized`]). An offered set
    /// ([`EntryMaps::offer`]) is checked once, not again at every sync,
    /// census and reconcile while the caller keeps it (a pass over 1M
    /// keys, 20-50 ms each): it is shared, so it cannot change.
    fn normalize<'a>(&mut self, set: &'a EntrySet) -> Cow<'a, EntrySet> {
        if self.is_known_normal(set) {
            return Cow::Borrowed(set);
        }
        let out = normalized(set);
        if let (Cow::Borrowed(_), Some(o)) = (&out, &self.offered)
            && std::ptr::eq((**o).as_ref(), set)
        {
            self.normal = Some(Arc::downgrade(o));
        }
        out
    }

    /// Make the maps enforce `set` (keeping existing ids).
    pub fn apply(&mut self, set: &EntrySet, flags: u32) -> Result<SyncStats> {
        let set = self.normalize(set);
        let (sync, _) = self.engine_mut()?;
        // An adopted set comes in catalog order.
        let changes = SetChanges::between(&normalized(sync.set()), &set);
        self.apply_inner(&set, &changes, flags, false)
    }

    /// [`EntryMaps::apply`] (kept for the feed agent, which keeps its own
    /// copy of the set).
    pub fn rebuild(&mut self, set: &EntrySet, flags: u32) -> Result<SyncStats> {
        self.apply(set, flags)
    }

    /// Make the maps enforce `new`, given `changes` = `SetChanges::between
    /// (prev, new)` where `prev` is the set the last apply enforced: the
    /// engine applies the changes ([`V2Sync::apply_changes`]), in proportion
    /// to them rather than to the set (the feed agent's deltas). Before the
    /// first sync of this process (adoption), a whole-set apply.
    pub fn apply_changes(
        &mut self,
        new: &EntrySet,
        changes: &SetChanges,
        flags: u32,
    ) -> Result<SyncStats> {
        if !self.synced {
            return self.apply(new, flags);
        }
        let new = self.normalize(new);
        self.apply_inner(&new, changes, flags, true)
    }

    /// Sync to `set`: by `changes` when `delta`, else the whole set (the
    /// engine diffs itself). The counts come from `changes` either way.
    fn apply_inner(
        &mut self,
        set: &EntrySet,
        changes: &SetChanges,
        flags: u32,
        delta: bool,
    ) -> Result<SyncStats> {
        self.synced = false;
        let (added, changed, removed) = changes.counts();
        let mut st = SyncStats {
            added,
            changed,
            removed,
            ..SyncStats::default()
        };
        self.set_config(flags, 0)?;
        // A new tier compiled for the set either lands or fails whole.
        let offered = self.offered.clone();
        let (sync, _) = self.engine_mut()?;
        if let Some(o) = offered {
            sync.offer(o);
        }
        let applied = if delta {
            sync.apply_changes(set, &changes.key_changes())?
        } else {
            sync.apply(set)?
        };
        match applied {
            Applied::Done(_) => {}
            Applied::NewTier(tier) => {
                self.grow(*tier, set)?;
                st.tiers += 1;
            }
        }
        self.synced = true;
        Ok(st)
    }

    /// Bring `tier` (compiled from `set`) live on a new program instance.
    fn grow(&mut self, tier: Tier, set: &EntrySet) -> Result<()> {
        let sizes = tier.sizes()?;
        log::info!(
            "a new capacity tier: {} exact IPv4 buckets, {} IPv6, {} ids (the set no longer fits the old one)",
            sizes.buckets4,
            sizes.buckets6,
            sizes.catalog
        );
        let State::Engine(sync) = &mut self.state else {
            unreachable!("grow runs on the engine")
        };
        match &mut self.home {
            Home::Pinned { maps_dir, link } => {
                let pins = attach::TierPins {
                    maps_dir,
                    link,
                    reuse: &abi::COMMON_MAPS,
                };
                attach::grow(
                    sync,
                    tier,
                    set,
                    program::object()?,
                    abi::PROGRAM_NAME,
                    &pins,
                    &[],
                )
            }
            Home::Private(ebpf) => {
                let mut fresh = program::load(&sizes, &[])?;
                let v2 = V2Maps::take(&mut fresh)?;
                sync.replace(v2, tier, set)?;
                self.counters = conv(
                    abi::MAP_COUNTERS,
                    take_map(&mut fresh, abi::MAP_COUNTERS)?.try_into(),
                )?;
                self.last = conv(
                    abi::MAP_LAST,
                    take_map(&mut fresh, abi::MAP_LAST)?.try_into(),
                )?;
                **ebpf = fresh;
                Ok(())
            }
        }
    }

    /// Store `w` into the v2 maps *without* telling the engine, as another
    /// process would: for drift tests and drills.
    #[doc(hidden)]
    pub fn tamper(&mut self, w: &crate::kernel::layout::Write) -> Result<()> {
        let (sync, _) = self.engine_mut()?;
        sync.tamper(w)
    }

    /// Whether the maps hold exactly what the last apply asked for, so
    /// [`EntryMaps::apply_changes`] can build on it.
    pub fn in_sync(&self) -> bool {
        self.synced
    }

    /// Compare the kernel's maps with what the last sync left there and
    /// repair any difference (someone changed them behind our back): a
    /// drifted table is replaced by a new tier. Returns 1 when the tables
    /// (or the runtime flags) had drifted, else 0.
    pub fn reconcile(&mut self, flags: u32) -> Result<usize> {
        Ok(self.reconcile_with(flags, None)?.0)
    }

    /// [`EntryMaps::reconcile`], and how the kernel's maps (read back) then
    /// stand against `set` (when given).
    pub fn reconcile_with(
        &mut self,
        flags: u32,
        set: Option<&EntrySet>,
    ) -> Result<(usize, Option<Census>)> {
        let mut repaired = 0;
        // Whether the kernel's tables were just proved to be the compile of
        // the engine's set (then the census needs no copy of the kernel).
        let mut verified = false;
        if self.synced {
            let (sync, _) = self.engine_mut()?;
            let checked = sync.in_place();
            if sync.check_drift()? {
                let want = sync.set().clone();
                // `check_drift` dropped the compiler: the apply builds a
                // new tier with the same ids.
                self.apply(&want, flags)?;
                repaired += 1;
            } else {
                verified = checked;
                let mut now = self.v2().runtime_flags();
                now &= !abi::CONFIG_SAMPLE_EVENTS;
                if now != flags & !abi::CONFIG_SAMPLE_EVENTS {
                    self.set_config(flags, 0)?;
                    repaired += 1;
                }
            }
        }
        let census = match (set, self.engine()) {
            (Some(s), Some(e)) if verified => {
                Some(census_of_sets(e.set(), s, self.is_known_normal(s)))
            }
            (Some(s), _) => Some(self.read()?.census(s)),
            (None, _) => None,
        };
        Ok((repaired, census))
    }

    /// The runtime config: the flags of `V2_CONFIG` (the layout's aside)
    /// and, as `nonempty`, the logical maps the engine's set fills (0 for
    /// a reader: the v2 datapath does not use it).
    pub fn config(&self) -> Result<Config> {
        let nonempty = self.engine().map_or(0, |s| {
            Desired::with_ids(s.set(), &slot_ids(s.ids())).nonempty()
        });
        Ok(Config {
            flags: self.v2().runtime_flags(),
            nonempty,
        })
    }

    /// Write the runtime flags. [`abi::CONFIG_SAMPLE_EVENTS`] is owned by
    /// `edge-filter events` (see [`EntryMaps::set_sampling_flag`]): the
    /// kernel's current value of that bit is kept, whatever `flags` says.
    /// `nonempty` is not used by datapath v2 (kept for the API).
    pub fn set_config(&mut self, flags: u32, _nonempty: u32) -> Result<()> {
        let v2 = self.v2();
        let keep = v2.runtime_flags() & abi::CONFIG_SAMPLE_EVENTS;
        v2.set_runtime_flags((flags & !abi::CONFIG_SAMPLE_EVENTS) | keep);
        Ok(())
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
        let v2 = self.v2();
        let flags = v2.runtime_flags();
        let was = flags & abi::CONFIG_SAMPLE_EVENTS != 0;
        v2.set_runtime_flags(if on {
            flags | abi::CONFIG_SAMPLE_EVENTS
        } else {
            flags & !abi::CONFIG_SAMPLE_EVENTS
        });
        Ok(was)
    }

    /// Ids with their own counters: every id of the tier (the stride of
    /// `V2_STATS`).
    pub fn entry_stats_capacity(&self) -> u32 {
        self.v2().config().stats_stride
    }

    /// Hit counters of every id of the tier, summed over CPUs, indexed by
    /// id; `last_jiffies` from `V2_LASTHIT` ([`EntryMaps::note_hits`]):
    /// counters past what the agent's last pass saw read as hit now.
    pub fn entry_stats(&self) -> Result<Vec<abi::EntryStat>> {
        let v2 = self.v2();
        let n = v2.config().stats_stride;
        let stats = v2.stats(n);
        let hits = v2.last_hits(n);
        let now = crate::kernel::clock::jiffies_now().unwrap_or(0);
        Ok(stats
            .iter()
            .zip(&hits)
            .map(|(&(packets, bytes), h)| abi::EntryStat {
                packets,
                bytes,
                last_jiffies: if packets as u32 != h.packets && packets > 0 {
                    now
                } else {
                    widen_jiffies(h.jiffies, now)
                },
            })
            .collect())
    }

    /// Hits on ids without their own counter: none with datapath v2 (every
    /// id of the tier has one), so always zero.
    pub fn stats_overflow(&self) -> Result<abi::EntryStat> {
        Ok(abi::EntryStat::default())
    }

    /// The agent's pass over the per-entry counters: where an id's total
    /// moved since the last pass, record the total and the current jiffies
    /// in `V2_LASTHIT` (the datapath keeps no timestamp: a second line per
    /// hit). Returns how many ids were hit since the last pass.
    pub fn note_hits(&self) -> Result<usize> {
        let Some(now) = crate::kernel::clock::jiffies_now() else {
            return Ok(0);
        };
        Ok(self.v2().note_hits(now as u32))
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

    /// Pin every map of a loaded production object under `dir` (which must
    /// exist).
    pub fn pin_all(ebpf: &Ebpf, dir: &std::path::Path) -> Result<()> {
        for name in abi::ALL_MAPS {
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

    /// The sizes of the current tier's maps.
    pub fn sizes(&self) -> Sizes {
        self.v2().sizes()
    }
}

/// The latest jiffies value at or before `now` whose low 32 bits are `low`
/// (0: never).
fn widen_jiffies(low: u32, now: u64) -> u64 {
    if low == 0 {
        return 0;
    }
    let hi = now & !0xffff_ffff;
    let j = hi | u64::from(low);
    if j <= now {
        j
    } else {
        j.saturating_sub(1 << 32)
    }
}

/// Possible CPUs: the number of values of every per-CPU map element.
pub fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, e)| Error::Pin {
        op: "counting CPUs".into(),
        source: e,
    })
}

#[cfg(test)]
mod tests {
    use super::widen_jiffies;

    #[test]
    fn last_hit_jiffies_are_widened_to_the_latest_before_now() {
        let now = 0x0000_0003_0000_0010;
        assert_eq!(widen_jiffies(0, now), 0);
        assert_eq!(widen_jiffies(0x10, now), now);
        assert_eq!(widen_jiffies(0x5, now), 0x0000_0003_0000_0005);
        // Low bits above now's: the previous wrap.
        assert_eq!(widen_jiffies(0xffff_fff0, now), 0x0000_0002_ffff_fff0);
    }
}
