//! What the kernel maps must hold for an [`EntrySet`], and making them hold it.
//!
//! [`Desired::build`] turns entries into per-map contents: duplicate keys
//! merge (drop beats monitor), ids stay stable per key (taken from the maps
//! themselves, so a restarted agent keeps them), and trie nodes are flattened
//! so a single longest-prefix lookup sees the strongest covering action.
//! [`EntryMaps::sync`] applies it as a diff: adds and changes first, removals
//! last, so an entry present before and after an update is never absent.

use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::os::fd::AsFd;

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
use edge_filter_common::EntryKind;

/// Contents of every entry map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Desired {
    /// ALLOW_V4 by (prefix length, address).
    pub allow_v4: BTreeMap<(u32, [u8; 4]), EntryValue>,
    /// ALLOW_V6.
    pub allow_v6: BTreeMap<(u32, [u8; 16]), EntryValue>,
    /// ADDR_V4.
    pub addr_v4: HashMap<[u8; 4], EntryValue>,
    /// ADDR_V6.
    pub addr_v6: HashMap<[u8; 16], EntryValue>,
    /// PREFIX_V4.
    pub prefix_v4: BTreeMap<(u32, [u8; 4]), EntryValue>,
    /// PREFIX_V6.
    pub prefix_v6: BTreeMap<(u32, [u8; 16]), EntryValue>,
    /// PORT_V4.
    pub port_v4: HashMap<PortKeyV4, EntryValue>,
    /// PORT_V6.
    pub port_v6: HashMap<PortKeyV6, EntryValue>,
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

impl Desired {
    /// Build the contents for `set`. `ids` maps keys already in the kernel to
    /// their ids (see [`EntryMaps::ids`]); new keys get fresh ids above them.
    pub fn build(set: &EntrySet, ids: &HashMap<SlotKey, u32>) -> Desired {
        let mut next = ids.values().copied().max().map_or(0, |m| m + 1);
        let mut id_of = |k: SlotKey| -> u32 {
            if let Some(&id) = ids.get(&k) {
                id
            } else {
                let id = next;
                next += 1;
                id
            }
        };
        // Merge duplicates: strongest action per key.
        let mut merged: BTreeMap<crate::entry::EntryKey, Action> = BTreeMap::new();
        for e in &set.entries {
            let e = Entry::new(e.net, e.port, e.action);
            let a = merged.entry(e.key()).or_insert(e.action);
            *a = (*a).max(e.action);
        }
        let mut d = Desired::default();
        let mut allow: Vec<IpNet> = set.allow.iter().map(|n| n.trunc()).collect();
        allow.sort();
        allow.dedup();
        for net in allow {
            let v = value(Action::Drop, id_of(SlotKey::Allow(net)));
            match net {
                IpNet::V4(_) => d.allow_v4.insert((net.prefix_len() as u32, v4(&net)), v),
                IpNet::V6(_) => d.allow_v6.insert((net.prefix_len() as u32, v6(&net)), v),
            };
        }
        for (key, action) in merged {
            let v = value(action, id_of(SlotKey::Entry(key)));
            let e = Entry {
                net: key.net,
                port: key.port,
                action,
            };
            let plen = key.net.prefix_len() as u32;
            match (e.kind(), key.net, key.port) {
                (EntryKind::Addr, IpNet::V4(_), _) => {
                    d.addr_v4.insert(v4(&key.net), v);
                }
                (EntryKind::Addr, IpNet::V6(_), _) => {
                    d.addr_v6.insert(v6(&key.net), v);
                }
                (EntryKind::Prefix, IpNet::V4(_), _) => {
                    d.prefix_v4.insert((plen, v4(&key.net)), v);
                }
                (EntryKind::Prefix, IpNet::V6(_), _) => {
                    d.prefix_v6.insert((plen, v6(&key.net)), v);
                }
                (EntryKind::AddrPort, IpNet::V4(_), Some(pm)) => {
                    let k = PortKeyV4 {
                        addr: v4(&key.net),
                        proto: pm.proto.number(),
                        side: pm.side.abi(),
                        port: pm.port.to_be_bytes(),
                    };
                    d.port_v4.insert(k, v);
                }
                (EntryKind::AddrPort, IpNet::V6(_), Some(pm)) => {
                    let k = PortKeyV6 {
                        addr: v6(&key.net),
                        proto: pm.proto.number(),
                        side: pm.side.abi(),
                        port: pm.port.to_be_bytes(),
                    };
                    d.port_v6.insert(k, v);
                }
                (EntryKind::PrefixPort, IpNet::V4(_), Some(pm)) => {
                    let k = PortPrefixV4 {
                        proto: pm.proto.number(),
                        side: pm.side.abi(),
                        port: pm.port.to_be_bytes(),
                        addr: v4(&key.net),
                    };
                    d.pprefix_v4.insert((PORT_PREFIX_FIXED_BITS + plen, k), v);
                }
                (EntryKind::PrefixPort, IpNet::V6(_), Some(pm)) => {
                    let k = PortPrefixV6 {
                        proto: pm.proto.number(),
                        side: pm.side.abi(),
                        port: pm.port.to_be_bytes(),
                        addr: v6(&key.net),
                    };
                    d.pprefix_v6.insert((PORT_PREFIX_FIXED_BITS + plen, k), v);
                }
                (EntryKind::AddrPort | EntryKind::PrefixPort, _, None) => {
                    unreachable!("port kinds have a port")
                }
            }
        }
        flatten(&mut d.prefix_v4, |k| k.to_vec(), 0);
        flatten(&mut d.prefix_v6, |k| k.to_vec(), 0);
        flatten(&mut d.pprefix_v4, pp4_bytes, PORT_PREFIX_FIXED_BITS);
        flatten(&mut d.pprefix_v6, pp6_bytes, PORT_PREFIX_FIXED_BITS);
        d
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

    /// Entries per map, in [`crate::program::Capacities::per_map`] order.
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

fn pp4_bytes(k: &PortPrefixV4) -> Vec<u8> {
    let mut v = vec![k.proto, k.side, k.port[0], k.port[1]];
    v.extend_from_slice(&k.addr);
    v
}

fn pp6_bytes(k: &PortPrefixV6) -> Vec<u8> {
    let mut v = vec![k.proto, k.side, k.port[0], k.port[1]];
    v.extend_from_slice(&k.addr);
    v
}

/// Keep the first `bits` bits of `data`, zero the rest.
fn mask(data: &[u8], bits: u32) -> Vec<u8> {
    let mut out = data.to_vec();
    for (i, b) in out.iter_mut().enumerate() {
        let lo = i as u32 * 8;
        if lo >= bits {
            *b = 0;
        } else if lo + 8 > bits {
            *b &= 0xffu8 << (8 - (bits - lo));
        }
    }
    out
}

/// Give every trie node the strongest action among itself and the shorter
/// nodes covering it. Ties keep the most specific node as decider. `fixed`
/// bits (protocol, side, port of prefix+port keys) must always match.
fn flatten<K: Copy + Ord>(
    trie: &mut BTreeMap<(u32, K), EntryValue>,
    bytes: impl Fn(&K) -> Vec<u8>,
    fixed: u32,
) {
    let mut lens: Vec<u32> = trie.keys().map(|(l, _)| *l).collect();
    lens.sort_unstable();
    lens.dedup();
    let by_bytes: HashMap<(u32, Vec<u8>), EntryValue> = trie
        .iter()
        .map(|((l, k), v)| ((*l, bytes(k)), *v))
        .collect();
    for ((len, key), v) in trie.iter_mut() {
        let data = bytes(key);
        let mut best = (v.own_action, v.id);
        // Shorter covering prefixes, longest first, so ties keep the longer.
        for &l in lens.iter().rev().filter(|&&l| l < *len && l >= fixed) {
            if let Some(c) = by_bytes.get(&(l, mask(&data, l)))
                && c.own_action > best.0
            {
                best = (c.own_action, c.id);
            }
        }
        v.action = best.0;
        v.decider = best.1;
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
    /// What the last sync left in the maps, so deltas need not read them
    /// back; [`EntryMaps::reconcile`] checks it against the kernel.
    shadow: Option<Desired>,
    /// Use BPF batch syscalls for hash maps (off only to benchmark).
    batch: bool,
}

/// Every map name, in pin order.
pub const ALL_MAPS: [&str; 13] = [
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
];

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

fn conv<T>(name: &str, r: std::result::Result<T, MapError>) -> Result<T> {
    r.map_err(|source| Error::Map {
        op: format!("opening map {name}"),
        source,
    })
}

impl EntryMaps {
    /// Take the maps out of a freshly loaded object.
    pub fn from_ebpf(ebpf: &mut Ebpf) -> Result<EntryMaps> {
        Self::from_fn(|name| {
            ebpf.take_map(name).ok_or_else(|| Error::Map {
                op: format!("map {name} missing from the object"),
                source: MapError::InvalidName {
                    name: name.to_string(),
                },
            })
        })
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
            shadow: None,
            batch: true,
        })
    }

    /// Use (default) or avoid BPF batch syscalls for hash maps.
    pub fn set_batch(&mut self, on: bool) {
        self.batch = on;
    }

    /// Forget the shadow copy: the next apply reads the kernel first.
    pub fn forget_shadow(&mut self) {
        self.shadow = None;
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

    /// The ids of every key currently in the maps.
    pub fn ids(&self) -> Result<HashMap<SlotKey, u32>> {
        Ok(ids_of(&self.read()?))
    }

    /// Build the contents for `set` (keeping existing ids) and apply them.
    pub fn apply(&mut self, set: &EntrySet, flags: u32) -> Result<SyncStats> {
        let current = match self.shadow.take() {
            Some(s) => s,
            None => self.read()?,
        };
        let desired = Desired::build(set, &ids_of(&current));
        self.sync(&current, &desired, flags)
    }

    /// Change the kernel maps *without* updating the shadow copy, as another
    /// process would: for drift tests and drills.
    #[doc(hidden)]
    pub fn tamper(&mut self, f: impl FnOnce(&mut Desired)) -> Result<()> {
        let shadow = self.shadow.take();
        let now = self.read()?;
        let mut changed = now.clone();
        f(&mut changed);
        let flags = self.config()?.flags;
        self.sync(&now, &changed, flags)?;
        self.shadow = shadow;
        Ok(())
    }

    /// Compare the kernel's maps with what the last sync left there and
    /// repair any difference (someone changed them behind our back).
    /// Returns how many keys had drifted.
    pub fn reconcile(&mut self, flags: u32) -> Result<usize> {
        let Some(want) = self.shadow.take() else {
            // Nothing applied yet: nothing to hold the kernel to.
            return Ok(0);
        };
        let kernel = self.read()?;
        let drift = drift(&kernel, &want);
        if drift == 0 {
            let nonempty = want.nonempty();
            self.shadow = Some(want);
            // The config slot can drift too.
            if self.config()? != (Config { flags, nonempty }) {
                self.set_config(flags, nonempty)?;
                return Ok(1);
            }
            return Ok(0);
        }
        self.sync(&kernel, &want, flags)?;
        Ok(drift)
    }

    /// Make the maps equal `desired`, given that they hold `current`.
    /// Adds and changes go first, then the config, then removals.
    pub fn sync(&mut self, current: &Desired, desired: &Desired, flags: u32) -> Result<SyncStats> {
        let mut st = SyncStats::default();
        let b = self.batch;
        // Widen the nonempty mask first so new entries are looked up as soon
        // as they land; narrow it after removals.
        let grow = current.nonempty() | desired.nonempty();
        self.set_config(flags, grow)?;
        let (c, d) = (current, desired);
        upsert_lpm(
            &mut self.allow_v4,
            &c.allow_v4,
            &d.allow_v4,
            abi::MAP_ALLOW_V4,
            &mut st,
        )?;
        upsert_lpm(
            &mut self.allow_v6,
            &c.allow_v6,
            &d.allow_v6,
            abi::MAP_ALLOW_V6,
            &mut st,
        )?;
        upsert_hash(
            &mut self.addr_v4,
            &c.addr_v4,
            &d.addr_v4,
            abi::MAP_ADDR_V4,
            b,
            &mut st,
        )?;
        upsert_hash(
            &mut self.addr_v6,
            &c.addr_v6,
            &d.addr_v6,
            abi::MAP_ADDR_V6,
            b,
            &mut st,
        )?;
        upsert_lpm(
            &mut self.prefix_v4,
            &c.prefix_v4,
            &d.prefix_v4,
            abi::MAP_PREFIX_V4,
            &mut st,
        )?;
        upsert_lpm(
            &mut self.prefix_v6,
            &c.prefix_v6,
            &d.prefix_v6,
            abi::MAP_PREFIX_V6,
            &mut st,
        )?;
        upsert_hash(
            &mut self.port_v4,
            &c.port_v4,
            &d.port_v4,
            abi::MAP_PORT_V4,
            b,
            &mut st,
        )?;
        upsert_hash(
            &mut self.port_v6,
            &c.port_v6,
            &d.port_v6,
            abi::MAP_PORT_V6,
            b,
            &mut st,
        )?;
        upsert_lpm(
            &mut self.pprefix_v4,
            &c.pprefix_v4,
            &d.pprefix_v4,
            abi::MAP_PPREFIX_V4,
            &mut st,
        )?;
        upsert_lpm(
            &mut self.pprefix_v6,
            &c.pprefix_v6,
            &d.pprefix_v6,
            abi::MAP_PPREFIX_V6,
            &mut st,
        )?;

        remove_lpm(&mut self.allow_v4, &c.allow_v4, &d.allow_v4, &mut st)?;
        remove_lpm(&mut self.allow_v6, &c.allow_v6, &d.allow_v6, &mut st)?;
        remove_hash(&mut self.addr_v4, &c.addr_v4, &d.addr_v4, b, &mut st)?;
        remove_hash(&mut self.addr_v6, &c.addr_v6, &d.addr_v6, b, &mut st)?;
        remove_lpm(&mut self.prefix_v4, &c.prefix_v4, &d.prefix_v4, &mut st)?;
        remove_lpm(&mut self.prefix_v6, &c.prefix_v6, &d.prefix_v6, &mut st)?;
        remove_hash(&mut self.port_v4, &c.port_v4, &d.port_v4, b, &mut st)?;
        remove_hash(&mut self.port_v6, &c.port_v6, &d.port_v6, b, &mut st)?;
        remove_lpm(&mut self.pprefix_v4, &c.pprefix_v4, &d.pprefix_v4, &mut st)?;
        remove_lpm(&mut self.pprefix_v6, &c.pprefix_v6, &d.pprefix_v6, &mut st)?;
        // What landed: the desired state minus refusals. Refusals are rare
        // (a full map), and then the kernel is read back to know exactly.
        let landed = if st.refused == 0 {
            desired.clone()
        } else {
            self.read()?
        };
        self.set_config(flags, landed.nonempty())?;
        self.shadow = Some(landed);
        Ok(st)
    }

    /// Read the runtime config.
    pub fn config(&self) -> Result<Config> {
        self.config.get(&0, 0).map_err(|source| Error::Map {
            op: "reading CONFIG".into(),
            source,
        })
    }

    /// Write the runtime config.
    pub fn set_config(&mut self, flags: u32, nonempty: u32) -> Result<()> {
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
        let n = aya::util::nr_cpus().map_err(|(_, e)| Error::Pin {
            op: "counting CPUs".into(),
            source: e,
        })?;
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

/// Ids by key, from map contents.
pub fn ids_of(d: &Desired) -> HashMap<SlotKey, u32> {
    d.entries().into_iter().map(|(k, v)| (k, v.id)).collect()
}

impl Desired {
    /// Every key with its value, in entry terms (the inverse of [`build`]).
    ///
    /// [`build`]: Desired::build
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
) -> Result<HashMap<K, EntryValue>> {
    if batch {
        match crate::batch::lookup_all::<K, EntryValue>(IterableMap::map(m).fd().as_fd()) {
            Ok(v) => return Ok(v.into_iter().collect()),
            Err(e) if crate::batch::unsupported(&e) => {}
            Err(e) => {
                return Err(Error::Pin {
                    op: "reading a hash map (batch)".into(),
                    source: e,
                });
            }
        }
    }
    let mut out = HashMap::new();
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

fn is_full(e: &MapError) -> bool {
    matches!(e, MapError::SyscallError(s) if s.io_error.raw_os_error() == Some(libc::E2BIG) || s.io_error.raw_os_error() == Some(libc::ENOSPC))
}

fn upsert_hash<K: Pod + Eq + Hash>(
    m: &mut BpfHash<MapData, K, EntryValue>,
    cur: &HashMap<K, EntryValue>,
    want: &HashMap<K, EntryValue>,
    name: &'static str,
    batch: bool,
    st: &mut SyncStats,
) -> Result<()> {
    let mut keys = Vec::new();
    let mut vals = Vec::new();
    let mut changed = 0;
    for (k, v) in want {
        match cur.get(k) {
            Some(old) if old == v => continue,
            Some(_) => changed += 1,
            None => {}
        }
        keys.push(*k);
        vals.push(*v);
    }
    let mut refused = 0;
    let mut start = 0;
    if batch {
        let fd = IterableMap::map(m)
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| Error::Pin {
                op: format!("duplicating the fd of {name}"),
                source,
            })?;
        while start < keys.len() {
            let p = crate::batch::update(fd.as_fd(), &keys[start..], &vals[start..]);
            start += p.done;
            match p.error {
                None => break,
                Some(e) if crate::batch::unsupported(&e) && p.done == 0 => break,
                Some(e) if is_full_io(&e) => {
                    // The element at `start` did not fit; skip it.
                    refused += 1;
                    start += 1;
                }
                Some(e) => {
                    return Err(Error::Pin {
                        op: format!("updating {name} (batch)"),
                        source: e,
                    });
                }
            }
        }
    }
    // Per-element path: batch off, unsupported, or the rest after it.
    for i in start..keys.len() {
        match m.insert(keys[i], vals[i], 0) {
            Ok(()) => {}
            Err(e) if is_full(&e) => refused += 1,
            Err(source) => {
                return Err(Error::Map {
                    op: format!("updating {name}"),
                    source,
                });
            }
        }
    }
    // Refusals are new keys (updates of existing keys always fit).
    st.changed += changed;
    st.added += keys.len() - changed - refused;
    note_refused(name, refused, st);
    Ok(())
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
    m: &mut BpfHash<MapData, K, EntryValue>,
    cur: &HashMap<K, EntryValue>,
    want: &HashMap<K, EntryValue>,
    batch: bool,
    st: &mut SyncStats,
) -> Result<()> {
    let keys: Vec<K> = cur
        .keys()
        .filter(|k| !want.contains_key(k))
        .copied()
        .collect();
    let mut start = 0;
    if batch {
        let fd = IterableMap::map(m)
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|source| Error::Pin {
                op: "duplicating a map fd".into(),
                source,
            })?;
        while start < keys.len() {
            let p = crate::batch::delete(fd.as_fd(), &keys[start..]);
            start += p.done;
            st.removed += p.done;
            match p.error {
                None => break,
                Some(e) if crate::batch::unsupported(&e) && p.done == 0 => break,
                // Already gone (someone else removed it): fine.
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => start += 1,
                Some(e) => {
                    return Err(Error::Pin {
                        op: "removing entries (batch)".into(),
                        source: e,
                    });
                }
            }
        }
    }
    for k in &keys[start..] {
        match m.remove(k) {
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

/// Keys that differ between two contents (present in one only, or with
/// different values).
pub fn drift(a: &Desired, b: &Desired) -> usize {
    fn d<K: Eq + Hash>(x: &HashMap<K, EntryValue>, y: &HashMap<K, EntryValue>) -> usize {
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
