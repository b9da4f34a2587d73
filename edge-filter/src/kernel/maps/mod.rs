//! What the kernel maps must hold for an [`EntrySet`], and making them hold it.
//!
//! [`Desired::build_from`] turns entries into per-map contents: duplicate keys
//! merge (drop beats monitor), ids stay stable per key (taken from the maps
//! themselves, so a restarted agent keeps them), and trie nodes are flattened
//! so a single longest-prefix lookup sees the strongest covering action.
//! [`EntryMaps::sync`] applies it as a diff: adds and changes first, removals
//! last, so an entry present before and after an update is never absent;
//! only a map too full to hold old and new keys at once takes its removals
//! first (else a rotation of a near-capacity set could never land).

use std::collections::{BTreeMap, HashMap, btree_map, hash_map};
use std::hash::Hash;
use std::net::IpAddr;
use std::os::fd::{AsFd, BorrowedFd};

use aya::{
    Ebpf, Pod,
    maps::{HashMap as BpfHash, IterableMap, LpmTrie, Map, MapData, MapError, lpm_trie::Key},
};
use edge_filter_common::{
    self as abi, Config, EntryValue, PORT_PREFIX_FIXED_BITS, PortKeyV4, PortKeyV6, PortPrefixV4,
    PortPrefixV6,
};
use ipnet::IpNet;

use crate::entry::{Action, Entry, EntrySet};
use crate::error::{Error, Result};

mod delta;
mod ids;
mod trie;

pub use delta::SetChanges;
pub use ids::IdAlloc;
use trie::{TrieFilters, flatten};

/// A hash map's contents by key. FxHash instead of SipHash: the keys are
/// addresses and ports we put there ourselves (no HashDoS concern), and a
/// full sync hashes every one of a million keys at least twice.
pub type KeyMap<K> = HashMap<K, EntryValue, rustc_hash::FxBuildHasher>;

/// Contents of every entry map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// ALLOW_V4 by (prefix length, address).
    pub allow_v4: BTreeMap<(u32, [u8; 4]), EntryValue>,
    /// ALLOW_V6.
    pub allow_v6: BTreeMap<(u32, [u8; 16]), EntryValue>,
    /// ADDR_V4.
    pub addr_v4: KeyMap<[u8; 4]>,
    /// ADDR_V6.
    pub addr_v6: KeyMap<[u8; 16]>,
    /// PREFIX_V4.
    pub prefix_v4: BTreeMap<(u32, [u8; 4]), EntryValue>,
    /// PREFIX_V6.
    pub prefix_v6: BTreeMap<(u32, [u8; 16]), EntryValue>,
    /// PORT_V4.
    pub port_v4: KeyMap<PortKeyV4>,
    /// PORT_V6.
    pub port_v6: KeyMap<PortKeyV6>,
    /// PPREFIX_V4 by (trie prefix length, data).
    pub pprefix_v4: BTreeMap<(u32, PortPrefixV4), EntryValue>,
    /// PPREFIX_V6.
    pub pprefix_v6: BTreeMap<(u32, PortPrefixV6), EntryValue>,
}

/// A map key in entry terms, for id bookkeeping across maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SlotKey {
    /// An allowlist net.
    Allow(IpNet),
    /// A block/monitor entry key.
    Entry(crate::entry::EntryKey),
}

fn v4(net: &IpNet) -> [u8; 4] {
    match net.addr() {
        IpAddr::V4(a) => a.octets(),
        IpAddr::V6(_) => unreachable!("v4 net"),
    }
}

fn v6(net: &IpNet) -> [u8; 16] {
    match net.addr() {
        IpAddr::V6(a) => a.octets(),
        IpAddr::V4(_) => unreachable!("v6 net"),
    }
}

fn value(action: Action, id: u32) -> EntryValue {
    EntryValue {
        action: action.abi(),
        own_action: action.abi(),
        _pad: [0; 2],
        id,
        decider: id,
    }
}

/// Where one entry lives: its map and typed key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Slot {
    AllowV4(u32, [u8; 4]),
    AllowV6(u32, [u8; 16]),
    AddrV4([u8; 4]),
    AddrV6([u8; 16]),
    PrefixV4(u32, [u8; 4]),
    PrefixV6(u32, [u8; 16]),
    PortV4(PortKeyV4),
    PortV6(PortKeyV6),
    PPrefixV4(u32, PortPrefixV4),
    PPrefixV6(u32, PortPrefixV6),
}

impl Slot {
    /// The slot's map's `MAPBIT_*`.
    fn map_bit(&self) -> u32 {
        match self {
            Slot::AllowV4(..) => abi::MAPBIT_ALLOW_V4,
            Slot::AllowV6(..) => abi::MAPBIT_ALLOW_V6,
            Slot::AddrV4(_) => abi::MAPBIT_ADDR_V4,
            Slot::AddrV6(_) => abi::MAPBIT_ADDR_V6,
            Slot::PrefixV4(..) => abi::MAPBIT_PREFIX_V4,
            Slot::PrefixV6(..) => abi::MAPBIT_PREFIX_V6,
            Slot::PortV4(_) => abi::MAPBIT_PORT_V4,
            Slot::PortV6(_) => abi::MAPBIT_PORT_V6,
            Slot::PPrefixV4(..) => abi::MAPBIT_PPREFIX_V4,
            Slot::PPrefixV6(..) => abi::MAPBIT_PPREFIX_V6,
        }
    }
}

fn allow_slot(net: &IpNet) -> Slot {
    let l = net.prefix_len() as u32;
    match net {
        IpNet::V4(_) => Slot::AllowV4(l, v4(net)),
        IpNet::V6(_) => Slot::AllowV6(l, v6(net)),
    }
}

fn entry_slot(key: &crate::entry::EntryKey) -> Slot {
    let net = &key.net;
    let plen = net.prefix_len() as u32;
    let exact = net.prefix_len() == net.max_prefix_len();
    match (key.port, net, exact) {
        (None, IpNet::V4(_), true) => Slot::AddrV4(v4(net)),
        (None, IpNet::V6(_), true) => Slot::AddrV6(v6(net)),
        (None, IpNet::V4(_), false) => Slot::PrefixV4(plen, v4(net)),
        (None, IpNet::V6(_), false) => Slot::PrefixV6(plen, v6(net)),
        (Some(pm), IpNet::V4(_), true) => Slot::PortV4(PortKeyV4 {
            addr: v4(net),
            proto: pm.proto.number(),
            side: pm.side.abi(),
            port: pm.port.to_be_bytes(),
        }),
        (Some(pm), IpNet::V6(_), true) => Slot::PortV6(PortKeyV6 {
            addr: v6(net),
            proto: pm.proto.number(),
            side: pm.side.abi(),
            port: pm.port.to_be_bytes(),
        }),
        (Some(pm), IpNet::V4(_), false) => Slot::PPrefixV4(
            PORT_PREFIX_FIXED_BITS + plen,
            PortPrefixV4 {
                proto: pm.proto.number(),
                side: pm.side.abi(),
                port: pm.port.to_be_bytes(),
                addr: v4(net),
            },
        ),
        (Some(pm), IpNet::V6(_), false) => Slot::PPrefixV6(
            PORT_PREFIX_FIXED_BITS + plen,
            PortPrefixV6 {
                proto: pm.proto.number(),
                side: pm.side.abi(),
                port: pm.port.to_be_bytes(),
                addr: v6(net),
            },
        ),
    }
}

impl Desired {
    /// Build the contents for `set`, keeping the ids `current` gives its
    /// keys (typed lookups: no id table of the whole set is built); new
    /// keys get the lowest ids `current` leaves free.
    pub fn build_from(set: &EntrySet, current: &Desired) -> Desired {
        Self::build_with(set, current, &mut IdAlloc::from_desired(current))
    }

    /// [`Desired::build_from`] with new ids from `ids`.
    pub fn build_with(set: &EntrySet, current: &Desired, ids: &mut IdAlloc) -> Desired {
        let mut d = Desired::default();
        d.fill_typed(set, current, ids);
        d
    }

    /// Call `f` with every id in use.
    pub fn for_each_id(&self, mut f: impl FnMut(u32)) {
        self.allow_v4.values().for_each(|v| f(v.id));
        self.allow_v6.values().for_each(|v| f(v.id));
        self.addr_v4.values().for_each(|v| f(v.id));
        self.addr_v6.values().for_each(|v| f(v.id));
        self.prefix_v4.values().for_each(|v| f(v.id));
        self.prefix_v6.values().for_each(|v| f(v.id));
        self.port_v4.values().for_each(|v| f(v.id));
        self.port_v6.values().for_each(|v| f(v.id));
        self.pprefix_v4.values().for_each(|v| f(v.id));
        self.pprefix_v6.values().for_each(|v| f(v.id));
    }

    /// The largest id in use.
    pub fn max_id(&self) -> Option<u32> {
        fn h<K>(m: &KeyMap<K>) -> Option<u32> {
            m.values().map(|v| v.id).max()
        }
        fn t<K>(m: &BTreeMap<K, EntryValue>) -> Option<u32> {
            m.values().map(|v| v.id).max()
        }
        [
            t(&self.allow_v4),
            t(&self.allow_v6),
            h(&self.addr_v4),
            h(&self.addr_v6),
            t(&self.prefix_v4),
            t(&self.prefix_v6),
            h(&self.port_v4),
            h(&self.port_v6),
            t(&self.pprefix_v4),
            t(&self.pprefix_v6),
        ]
        .into_iter()
        .flatten()
        .max()
    }

    fn get(&self, slot: &Slot) -> Option<EntryValue> {
        match slot {
            Slot::AllowV4(l, k) => self.allow_v4.get(&(*l, *k)),
            Slot::AllowV6(l, k) => self.allow_v6.get(&(*l, *k)),
            Slot::AddrV4(k) => self.addr_v4.get(k),
            Slot::AddrV6(k) => self.addr_v6.get(k),
            Slot::PrefixV4(l, k) => self.prefix_v4.get(&(*l, *k)),
            Slot::PrefixV6(l, k) => self.prefix_v6.get(&(*l, *k)),
            Slot::PortV4(k) => self.port_v4.get(k),
            Slot::PortV6(k) => self.port_v6.get(k),
            Slot::PPrefixV4(l, k) => self.pprefix_v4.get(&(*l, *k)),
            Slot::PPrefixV6(l, k) => self.pprefix_v6.get(&(*l, *k)),
        }
        .copied()
    }

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

    fn put(&mut self, slot: Slot, v: Option<EntryValue>) {
        macro_rules! put {
            ($m:expr, $k:expr) => {
                match v {
                    Some(v) => {
                        $m.insert($k, v);
                    }
                    None => {
                        $m.remove(&$k);
                    }
                }
            };
        }
        match slot {
            Slot::AllowV4(l, k) => put!(self.allow_v4, (l, k)),
            Slot::AllowV6(l, k) => put!(self.allow_v6, (l, k)),
            Slot::AddrV4(k) => put!(self.addr_v4, k),
            Slot::AddrV6(k) => put!(self.addr_v6, k),
            Slot::PrefixV4(l, k) => put!(self.prefix_v4, (l, k)),
            Slot::PrefixV6(l, k) => put!(self.prefix_v6, (l, k)),
            Slot::PortV4(k) => put!(self.port_v4, k),
            Slot::PortV6(k) => put!(self.port_v6, k),
            Slot::PPrefixV4(l, k) => put!(self.pprefix_v4, (l, k)),
            Slot::PPrefixV6(l, k) => put!(self.pprefix_v6, (l, k)),
        }
    }

    /// Own values of every key of `set` (duplicates merge: drop wins), ids
    /// looked up in `current` by typed key (new keys get free ids from `ids`);
    /// then flatten the tries.
    fn fill_typed(&mut self, set: &EntrySet, current: &Desired, ids: &mut IdAlloc) {
        let mut id_of =
            |slot: &Slot| -> u32 { current.get(slot).map_or_else(|| ids.alloc(), |v| v.id) };
        let mut allow: Vec<IpNet> = set.allow.iter().map(|n| n.trunc()).collect();
        allow.sort_unstable();
        allow.dedup();
        for net in allow {
            let slot = allow_slot(&net);
            let v = value(Action::Drop, id_of(&slot));
            self.put(slot, Some(v));
        }
        // Presize by kind counts: no rehashing while a million keys go in.
        let (mut n_addr_v4, mut n_addr_v6, mut n_port_v4, mut n_port_v6) = (0, 0, 0, 0);
        for e in &set.entries {
            let exact = e.net.prefix_len() == e.net.max_prefix_len();
            match (exact, e.port.is_some(), matches!(e.net, IpNet::V4(_))) {
                (true, false, true) => n_addr_v4 += 1,
                (true, false, false) => n_addr_v6 += 1,
                (true, true, true) => n_port_v4 += 1,
                (true, true, false) => n_port_v6 += 1,
                _ => {}
            }
        }
        self.addr_v4.reserve(n_addr_v4);
        self.addr_v6.reserve(n_addr_v6);
        self.port_v4.reserve(n_port_v4);
        self.port_v6.reserve(n_port_v6);
        for e in &set.entries {
            let key = crate::entry::EntryKey {
                net: e.net.trunc(),
                port: e.port,
            };
            let slot = entry_slot(&key);
            let a = e.action.abi();
            // One lookup per key: a duplicate key keeps its id and takes
            // the strongest action.
            macro_rules! merge {
                ($m:expr, $k:expr, $mod:ident) => {
                    match $m.entry($k) {
                        $mod::Entry::Occupied(mut o) => {
                            let v = o.get_mut();
                            if a > v.own_action {
                                v.own_action = a;
                                v.action = a;
                            }
                        }
                        $mod::Entry::Vacant(v) => {
                            v.insert(value(e.action, id_of(&slot)));
                        }
                    }
                };
            }
            match slot {
                Slot::AllowV4(..) | Slot::AllowV6(..) => {
                    unreachable!("entries are not allow slots")
                }
                Slot::AddrV4(k) => merge!(self.addr_v4, k, hash_map),
                Slot::AddrV6(k) => merge!(self.addr_v6, k, hash_map),
                Slot::PrefixV4(l, k) => merge!(self.prefix_v4, (l, k), btree_map),
                Slot::PrefixV6(l, k) => merge!(self.prefix_v6, (l, k), btree_map),
                Slot::PortV4(k) => merge!(self.port_v4, k, hash_map),
                Slot::PortV6(k) => merge!(self.port_v6, k, hash_map),
                Slot::PPrefixV4(l, k) => merge!(self.pprefix_v4, (l, k), btree_map),
                Slot::PPrefixV6(l, k) => merge!(self.pprefix_v6, (l, k), btree_map),
            }
        }
        self.flatten_all();
    }

    fn flatten_all(&mut self) {
        flatten(&mut self.prefix_v4);
        flatten(&mut self.prefix_v6);
        flatten(&mut self.pprefix_v4);
        flatten(&mut self.pprefix_v6);
    }

    /// The `Config::nonempty` bitmask for these contents.
    pub fn nonempty(&self) -> u32 {
        let mut m = 0;
        let bits = [
            (self.allow_v4.is_empty(), abi::MAPBIT_ALLOW_V4),
            (self.allow_v6.is_empty(), abi::MAPBIT_ALLOW_V6),
            (self.addr_v4.is_empty(), abi::MAPBIT_ADDR_V4),
            (self.addr_v6.is_empty(), abi::MAPBIT_ADDR_V6),
            (self.prefix_v4.is_empty(), abi::MAPBIT_PREFIX_V4),
            (self.prefix_v6.is_empty(), abi::MAPBIT_PREFIX_V6),
            (self.port_v4.is_empty(), abi::MAPBIT_PORT_V4),
            (self.port_v6.is_empty(), abi::MAPBIT_PORT_V6),
            (self.pprefix_v4.is_empty(), abi::MAPBIT_PPREFIX_V4),
            (self.pprefix_v6.is_empty(), abi::MAPBIT_PPREFIX_V6),
        ];
        for (empty, bit) in bits {
            if !empty {
                m |= bit;
            }
        }
        m
    }

    /// How these contents (read back from the kernel) stand against the
    /// entry set that should be enforced: entries held, and entries of
    /// `set` missing or held with another action (allowlist nets
    /// included).
    pub fn census(&self, set: &EntrySet) -> Census {
        let set = normalized(set);
        let held = self
            .counts()
            .iter()
            .zip(MAP_BITS)
            .filter(|(_, bit)| *bit & (abi::MAPBIT_ALLOW_V4 | abi::MAPBIT_ALLOW_V6) == 0)
            .map(|((_, n), _)| n)
            .sum();
        let allow_missing = set
            .allow
            .iter()
            .filter(|n| self.get(&allow_slot(n)).is_none())
            .count();
        let entries_missing = set
            .entries
            .iter()
            .filter(|e| {
                self.get(&entry_slot(&e.key()))
                    .is_none_or(|v| v.own_action != e.action.abi())
            })
            .count();
        Census {
            entries: held,
            missing: allow_missing + entries_missing,
        }
    }

    /// Entries per map, in [`crate::kernel::program::Capacities::per_map`] order.
    pub fn counts(&self) -> [(&'static str, usize); 10] {
        [
            (abi::MAP_ALLOW_V4, self.allow_v4.len()),
            (abi::MAP_ALLOW_V6, self.allow_v6.len()),
            (abi::MAP_ADDR_V4, self.addr_v4.len()),
            (abi::MAP_ADDR_V6, self.addr_v6.len()),
            (abi::MAP_PREFIX_V4, self.prefix_v4.len()),
            (abi::MAP_PREFIX_V6, self.prefix_v6.len()),
            (abi::MAP_PORT_V4, self.port_v4.len()),
            (abi::MAP_PORT_V6, self.port_v6.len()),
            (abi::MAP_PPREFIX_V4, self.pprefix_v4.len()),
            (abi::MAP_PPREFIX_V6, self.pprefix_v6.len()),
        ]
    }
}

/// Typed handles to every map of one loaded or pinned program instance.
pub struct EntryMaps {
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
    /// back; [`EntryMaps::reconcile`] checks it against the kernel.
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
    /// Each entry map's capacity (`max_entries`), in [`Desired::counts`]
    /// order.
    caps: [u32; 10],
}

/// Every map name, in pin order.
pub const ALL_MAPS: [&str; 18] = [
    abi::MAP_ALLOW_V4,
    abi::MAP_ALLOW_V6,
    abi::MAP_ADDR_V4,
    abi::MAP_ADDR_V6,
    abi::MAP_PREFIX_V4,
    abi::MAP_PREFIX_V6,
    abi::MAP_PORT_V4,
    abi::MAP_PORT_V6,
    abi::MAP_PPREFIX_V4,
    abi::MAP_PPREFIX_V6,
    abi::MAP_CONFIG,
    abi::MAP_COUNTERS,
    abi::MAP_LAST,
    abi::MAP_ENTRY_STATS,
    abi::MAP_STATS_OVERFLOW,
    abi::MAP_EVENTS,
    abi::MAP_SAMPLE,
    abi::MAP_SAMPLE_STATE,
];

/// The kernel's maps against the set they should enforce
/// ([`Desired::census`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Census {
    /// Block and monitor entries held (allowlist nets not counted).
    pub entries: usize,
    /// Entries and allowlist nets of the set that are not held as they
    /// should be.
    pub missing: usize,
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
    /// Keys refused because a map was full.
    pub refused: usize,
    /// Human-readable reasons for refusals.
    pub refusals: Vec<String>,
}

/// The hash maps of [`EntryMaps`], borrowed together ([`EntryMaps::split`]).
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

/// The LPM tries of [`EntryMaps`], borrowed together ([`EntryMaps::split`]).
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

/// Every entry map's `MAPBIT_*`, in [`Desired::counts`] order.
const MAP_BITS: [u32; 10] = [
    abi::MAPBIT_ALLOW_V4,
    abi::MAPBIT_ALLOW_V6,
    abi::MAPBIT_ADDR_V4,
    abi::MAPBIT_ADDR_V6,
    abi::MAPBIT_PREFIX_V4,
    abi::MAPBIT_PREFIX_V6,
    abi::MAPBIT_PORT_V4,
    abi::MAPBIT_PORT_V6,
    abi::MAPBIT_PPREFIX_V4,
    abi::MAPBIT_PPREFIX_V6,
];

/// The maps (a `MAPBIT_*` mask) that cannot take their adds before their
/// removals: `current` keys plus keys `adds` would add exceed `caps`
/// (in [`Desired::counts`] order). For those, removals that make room go
/// first, so that a set that fits always lands whole (a feed rotating a
/// near-capacity map to as many different keys, or a sync after a crash
/// in the middle of one).
fn tight_maps(current: &[(&'static str, usize); 10], adds: &[usize; 10], caps: &[u32; 10]) -> u32 {
    let mut tight = 0;
    for i in 0..10 {
        if current[i].1 + adds[i] > caps[i] as usize {
            tight |= MAP_BITS[i];
        }
    }
    tight
}

/// Keys of `want` that `cur` lacks, per map in [`Desired::counts`] order.
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

impl EntryMaps {
    /// Take the maps out of a freshly loaded object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<EntryMaps> {
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
    pub fn from_fn(mut open: impl FnMut(&str) -> Result<Map>) -> Result<EntryMaps> {
        macro_rules! m {
            ($name:expr) => {
                conv($name, open($name)?.try_into())?
            };
        }
        Ok(EntryMaps {
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

    /// Each entry map's capacity, in [`Desired::counts`] order.
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
    /// [`EntryMaps::apply_changes`] instead: no copy of the set is kept and
    /// no pass over it is made here.
    pub fn apply(&mut self, set: &EntrySet, flags: u32) -> Result<SyncStats> {
        let set = normalized(set);
        if let Some(prev) = self.last_set.take()
            && self.shadow.is_some()
        {
            let changes = SetChanges::between(&prev, &set);
            drop(prev);
            if let Some(st) = self.apply_slots(&changes.0, flags)? {
                if self.shadow.is_some() {
                    self.last_set = Some(set.into_owned());
                }
                return Ok(st);
            }
        }
        self.apply_full(&set, flags, true)
    }

    /// Make the maps enforce `set` by reading them back and writing the
    /// difference, keeping no copy of `set` (unlike [`EntryMaps::apply`]):
    /// for a caller that keeps its previous set itself and follows up with
    /// [`EntryMaps::apply_changes`], as the feed agent does. A copy of a
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
            && let Some(st) = self.apply_slots(&changes.0, flags)?
        {
            return Ok(st);
        }
        self.apply_full(&normalized(new), flags, false)
    }

    /// Whether the maps hold exactly what the last apply asked for (it
    /// succeeded without refusals), so [`EntryMaps::apply_changes`] can
    /// build on it.
    pub fn in_sync(&self) -> bool {
        self.shadow.is_some()
    }

    /// Read the maps back, build the contents for `set` (normalised) and
    /// sync; keep a copy of `set` for the next [`EntryMaps::apply`] if
    /// `keep_set`.
    fn apply_full(&mut self, set: &EntrySet, flags: u32, keep_set: bool) -> Result<SyncStats> {
        let current = self.read()?;
        let mut ids = IdAlloc::from_desired(&current);
        let desired = Desired::build_with(set, &current, &mut ids);
        let assigned = ids.take_assigned();
        if !std::mem::take(&mut self.stats_fresh) {
            self.zero_entry_stats(&assigned)?;
        }
        let landed_ids = IdAlloc::from_desired(&desired);
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

    /// [`EntryMaps::reconcile`], and from the same read of the kernel,
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

    /// [`EntryMaps::sync`], taking `desired` by value: it becomes the
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
            let names: Vec<&str> = MAP_BITS
                .iter()
                .zip(c.counts())
                .filter(|(bit, _)| tight & **bit != 0)
                .map(|(_, (n, _))| n)
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
    /// `edge-filter events` (see [`EntryMaps::set_sampling_flag`]): the
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
            match crate::kernel::sys::lookup_all_percpu::<abi::EntryStat>(fd, ncpus) {
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
                Err(e) if crate::kernel::sys::unsupported(&e) => {}
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
            let p = crate::kernel::sys::update_percpu(fd, &ids, &zeros, ncpus);
            start = p.done;
            match p.error {
                None => return Ok(()),
                Some(e) if crate::kernel::sys::unsupported(&e) => {}
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
        for name in ALL_MAPS {
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

/// Possible CPUs: the number of values of every per-CPU map element.
pub fn possible_cpus() -> Result<usize> {
    aya::util::nr_cpus().map_err(|(_, e)| Error::Pin {
        op: "counting CPUs".into(),
        source: e,
    })
}

/// Ids by key, from map contents.
pub fn ids_of(d: &Desired) -> HashMap<SlotKey, u32> {
    d.entries().into_iter().map(|(k, v)| (k, v.id)).collect()
}

impl Desired {
    /// Every key with its value, in entry terms (the inverse of [`build_from`]).
    ///
    /// [`build_from`]: Desired::build_from
    pub fn entries(&self) -> Vec<(SlotKey, EntryValue)> {
        use crate::entry::{EntryKey, PortMatch, Proto, Side};
        use std::net::{Ipv4Addr, Ipv6Addr};
        let n4 =
            |a: [u8; 4], l: u32| IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), l as u8).expect("len");
        let n6 =
            |a: [u8; 16], l: u32| IpNet::new(IpAddr::V6(Ipv6Addr::from(a)), l as u8).expect("len");
        let pm = |proto: u8, side: u8, port: [u8; 2]| PortMatch {
            proto: if proto == abi::PROTO_TCP {
                Proto::Tcp
            } else {
                Proto::Udp
            },
            port: u16::from_be_bytes(port),
            side: if side == abi::SIDE_DST {
                Side::Dst
            } else {
                Side::Src
            },
        };
        let ek = |net, port| SlotKey::Entry(EntryKey { net, port });
        let mut out = Vec::new();
        out.extend(
            self.allow_v4
                .iter()
                .map(|(&(l, a), v)| (SlotKey::Allow(n4(a, l)), *v)),
        );
        out.extend(
            self.allow_v6
                .iter()
                .map(|(&(l, a), v)| (SlotKey::Allow(n6(a, l)), *v)),
        );
        out.extend(self.addr_v4.iter().map(|(&a, v)| (ek(n4(a, 32), None), *v)));
        out.extend(
            self.addr_v6
                .iter()
                .map(|(&a, v)| (ek(n6(a, 128), None), *v)),
        );
        out.extend(
            self.prefix_v4
                .iter()
                .map(|(&(l, a), v)| (ek(n4(a, l), None), *v)),
        );
        out.extend(
            self.prefix_v6
                .iter()
                .map(|(&(l, a), v)| (ek(n6(a, l), None), *v)),
        );
        out.extend(
            self.port_v4
                .iter()
                .map(|(k, v)| (ek(n4(k.addr, 32), Some(pm(k.proto, k.side, k.port))), *v)),
        );
        out.extend(
            self.port_v6
                .iter()
                .map(|(k, v)| (ek(n6(k.addr, 128), Some(pm(k.proto, k.side, k.port))), *v)),
        );
        out.extend(self.pprefix_v4.iter().map(|(&(l, k), v)| {
            (
                ek(
                    n4(k.addr, l - PORT_PREFIX_FIXED_BITS),
                    Some(pm(k.proto, k.side, k.port)),
                ),
                *v,
            )
        }));
        out.extend(self.pprefix_v6.iter().map(|(&(l, k), v)| {
            (
                ek(
                    n6(k.addr, l - PORT_PREFIX_FIXED_BITS),
                    Some(pm(k.proto, k.side, k.port)),
                ),
                *v,
            )
        }));
        out
    }

    /// The entry set these contents enforce (own actions, not flattened).
    pub fn to_entry_set(&self) -> EntrySet {
        let mut set = EntrySet::default();
        for (k, v) in self.entries() {
            match k {
                SlotKey::Allow(n) => set.allow.push(n),
                SlotKey::Entry(key) => set.entries.push(Entry {
                    net: key.net,
                    port: key.port,
                    action: if v.own_action == abi::ACTION_DROP {
                        Action::Drop
                    } else {
                        Action::Monitor
                    },
                }),
            }
        }
        set.allow.sort();
        set.entries.sort();
        set
    }
}

fn read_hash<K: Pod + Eq + Hash + Default>(
    m: &BpfHash<MapData, K, EntryValue>,
    batch: bool,
) -> Result<KeyMap<K>> {
    if batch {
        match crate::kernel::sys::lookup_all::<K, EntryValue>(IterableMap::map(m).fd().as_fd()) {
            Ok(v) => return Ok(v.into_iter().collect()),
            Err(e) if crate::kernel::sys::unsupported(&e) => {}
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
        let p = crate::kernel::sys::update(fd, &keys[start..], &vals[start..]);
        start += p.done;
        match p.error {
            None => return Ok(refused),
            Some(e) if crate::kernel::sys::unsupported(&e) && p.done == 0 => break,
            // The element at `start` did not fit; skip it.
            Some(e) if is_full_io(&e) => {
                refused += 1;
                start += 1;
            }
            Some(e) => return Err(err(e)),
        }
    }
    for (k, v) in keys[start..].iter().zip(&vals[start..]) {
        match crate::kernel::sys::update_one(fd, k, v) {
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
        let p = crate::kernel::sys::delete(fd, &keys[start..]);
        start += p.done;
        removed += p.done;
        match p.error {
            None => return Ok(removed),
            Some(e) if crate::kernel::sys::unsupported(&e) && p.done == 0 => break,
            // Already gone (someone else removed it): fine.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => start += 1,
            Some(e) => return Err(err(e)),
        }
    }
    for k in &keys[start..] {
        match crate::kernel::sys::delete_one(fd, k) {
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

/// Keys that differ between two contents (present in one only, or with
/// different values).
pub fn drift(a: &Desired, b: &Desired) -> usize {
    fn d<K: Eq + Hash>(x: &KeyMap<K>, y: &KeyMap<K>) -> usize {
        x.iter().filter(|(k, v)| y.get(k) != Some(v)).count()
            + y.keys().filter(|k| !x.contains_key(k)).count()
    }
    fn t<K: Ord>(x: &BTreeMap<K, EntryValue>, y: &BTreeMap<K, EntryValue>) -> usize {
        x.iter().filter(|(k, v)| y.get(k) != Some(v)).count()
            + y.keys().filter(|k| !x.contains_key(k)).count()
    }
    t(&a.allow_v4, &b.allow_v4)
        + t(&a.allow_v6, &b.allow_v6)
        + d(&a.addr_v4, &b.addr_v4)
        + d(&a.addr_v6, &b.addr_v6)
        + t(&a.prefix_v4, &b.prefix_v4)
        + t(&a.prefix_v6, &b.prefix_v6)
        + d(&a.port_v4, &b.port_v4)
        + d(&a.port_v6, &b.port_v6)
        + t(&a.pprefix_v4, &b.pprefix_v4)
        + t(&a.pprefix_v6, &b.pprefix_v6)
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

/// Whether `set` is already what [`normalized`] makes of it.
fn is_normalized(set: &EntrySet) -> bool {
    set.entries.iter().all(|e| e.net == e.net.trunc())
        && set.entries.windows(2).all(|w| w[0].key() < w[1].key())
        && set.allow.iter().all(|n| *n == n.trunc())
        && set.allow.windows(2).all(|w| w[0] < w[1])
}

/// `set` with normalised nets, entries sorted by key with one entry per key
/// (drop wins), and the allowlist sorted and unique. Borrowed when it
/// already is (the agent's merged desired state always is).
fn normalized(set: &EntrySet) -> std::borrow::Cow<'_, EntrySet> {
    if is_normalized(set) {
        return std::borrow::Cow::Borrowed(set);
    }
    let mut entries: Vec<Entry> = set
        .entries
        .iter()
        .map(|e| Entry::new(e.net, e.port, e.action))
        .collect();
    // Sort by key, drop first among equal keys, then keep the first.
    entries.sort_unstable_by(|a, b| a.key().cmp(&b.key()).then(b.action.cmp(&a.action)));
    entries.dedup_by(|b, a| a.key() == b.key());
    let mut allow: Vec<IpNet> = set.allow.iter().map(|n| n.trunc()).collect();
    allow.sort_unstable();
    allow.dedup();
    std::borrow::Cow::Owned(EntrySet { allow, entries })
}
