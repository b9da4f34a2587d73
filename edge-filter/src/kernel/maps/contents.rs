//! What the kernel maps must hold for an [`EntrySet`], as plain data:
//! [`Desired`] is the contents of every entry map, by typed key.
//!
//! [`Desired::build_from`] turns entries into per-map contents: duplicate
//! keys merge (drop beats monitor), ids stay stable per key (taken from the
//! contents the maps hold, so a restarted agent keeps them), and trie nodes
//! are flattened so a single longest-prefix lookup sees the strongest
//! covering action ([`super::trie`]). [`Desired::entries`] is the inverse;
//! [`Desired::census`] and [`drift`] compare contents with a set or with
//! each other. Pure: no kernel, no syscalls (the maps themselves are
//! [`super::EntryMaps`]).

use std::collections::{BTreeMap, HashMap, btree_map, hash_map};
use std::hash::Hash;
use std::net::IpAddr;

use edge_filter_common::{
    self as abi, EntryValue, PORT_PREFIX_FIXED_BITS, PortKeyV4, PortKeyV6, PortPrefixV4,
    PortPrefixV6,
};
use ipnet::IpNet;

use super::ids::IdAlloc;
use super::trie::{flatten, value};
use crate::entry::{Action, Entry, EntryKey, EntrySet};

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
    Entry(EntryKey),
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

/// Where one entry lives: its map and typed key, as in the fields of
/// [`Desired`] (tries by prefix length and key). [`SetChanges::slots`]
/// names its changes by it, for the bench's v1 baseline
/// (`tests/src/bench/v1maps/`).
///
/// [`SetChanges::slots`]: super::SetChanges::slots
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Slot {
    /// In `ALLOW_V4`.
    AllowV4(u32, [u8; 4]),
    /// In `ALLOW_V6`.
    AllowV6(u32, [u8; 16]),
    /// In `ADDR_V4`.
    AddrV4([u8; 4]),
    /// In `ADDR_V6`.
    AddrV6([u8; 16]),
    /// In `PREFIX_V4`.
    PrefixV4(u32, [u8; 4]),
    /// In `PREFIX_V6`.
    PrefixV6(u32, [u8; 16]),
    /// In `PORT_V4`.
    PortV4(PortKeyV4),
    /// In `PORT_V6`.
    PortV6(PortKeyV6),
    /// In `PPREFIX_V4` (the length counts the fixed protocol, side and
    /// port bits).
    PPrefixV4(u32, PortPrefixV4),
    /// In `PPREFIX_V6`.
    PPrefixV6(u32, PortPrefixV6),
}

pub(super) fn allow_slot(net: &IpNet) -> Slot {
    let l = net.prefix_len() as u32;
    match net {
        IpNet::V4(_) => Slot::AllowV4(l, v4(net)),
        IpNet::V6(_) => Slot::AllowV6(l, v6(net)),
    }
}

pub(super) fn entry_slot(key: &EntryKey) -> Slot {
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
        Self::build_with(set, current, &mut IdAlloc::in_use(current.ids()))
    }

    /// [`Desired::build_from`] with new ids from `ids`.
    pub fn build_with(set: &EntrySet, current: &Desired, ids: &mut IdAlloc) -> Desired {
        let mut d = Desired::default();
        d.fill_typed(set, &mut |slot, _| {
            current.get(slot).map_or_else(|| ids.alloc(), |v| v.id)
        });
        d
    }

    /// The contents of `set` with the ids `ids` gives its keys (what the
    /// v2 catalog decodes to); a key without one gets the lowest free id.
    pub fn with_ids(set: &EntrySet, ids: &HashMap<SlotKey, u32>) -> Desired {
        let mut alloc = IdAlloc::in_use(ids.values().copied());
        let mut d = Desired::default();
        d.fill_typed(set, &mut |_, key| {
            ids.get(&key).copied().unwrap_or_else(|| alloc.alloc())
        });
        d
    }

    /// Every id in use.
    pub fn ids(&self) -> impl Iterator<Item = u32> + '_ {
        (self.allow_v4.values())
            .chain(self.allow_v6.values())
            .chain(self.addr_v4.values())
            .chain(self.addr_v6.values())
            .chain(self.prefix_v4.values())
            .chain(self.prefix_v6.values())
            .chain(self.port_v4.values())
            .chain(self.port_v6.values())
            .chain(self.pprefix_v4.values())
            .chain(self.pprefix_v6.values())
            .map(|v| v.id)
    }

    /// The value at `slot`, if it holds one.
    pub fn get(&self, slot: &Slot) -> Option<EntryValue> {
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

    /// Set `slot` to `v` (`None` removes it), as is: no trie is
    /// re-flattened.
    pub fn put(&mut self, slot: Slot, v: Option<EntryValue>) {
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
    /// from `id_of` (given the typed slot and the key); then flatten the
    /// tries.
    fn fill_typed(&mut self, set: &EntrySet, id_of: &mut dyn FnMut(&Slot, SlotKey) -> u32) {
        let mut allow: Vec<IpNet> = set.allow.iter().map(|n| n.trunc()).collect();
        allow.sort_unstable();
        allow.dedup();
        for net in allow {
            let slot = allow_slot(&net);
            let v = value(Action::Drop, id_of(&slot, SlotKey::Allow(net)));
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
            let key = EntryKey {
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
                            v.insert(value(e.action, id_of(&slot, SlotKey::Entry(key))));
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
        (self.lens().iter().enumerate())
            .filter(|(_, n)| **n > 0)
            .fold(0, |m, (i, _)| m | abi::entry_map_bit(i))
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
            .filter(|(map, _)| ![abi::MAP_ALLOW_V4, abi::MAP_ALLOW_V6].contains(map))
            .map(|(_, n)| n)
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

    /// Entries per map, by name, in [`abi::ENTRY_MAPS`] order.
    pub fn counts(&self) -> [(&'static str, usize); 10] {
        let lens = self.lens();
        std::array::from_fn(|i| (abi::ENTRY_MAPS[i], lens[i]))
    }

    /// Entries per map, in [`abi::ENTRY_MAPS`] order.
    fn lens(&self) -> [usize; 10] {
        [
            self.allow_v4.len(),
            self.allow_v6.len(),
            self.addr_v4.len(),
            self.addr_v6.len(),
            self.prefix_v4.len(),
            self.prefix_v6.len(),
            self.port_v4.len(),
            self.port_v6.len(),
            self.pprefix_v4.len(),
            self.pprefix_v6.len(),
        ]
    }
}

/// [`Desired::census`] from a set known to be what the kernel holds (the
/// engine's set, once the drift check proved the kernel's tables
/// byte-identical to the compile of it): the same counts with no copy of
/// the kernel's maps (at 1M entries that copy took about 200 MB).
/// `normal`: `set` is known to be normalised (not checked again).
pub fn census_of_sets(held: &EntrySet, set: &EntrySet, normal: bool) -> Census {
    // The engine holds the agent's own set after a sync (`V2Sync::offer`):
    // nothing to compare.
    if std::ptr::eq(held, set) && (normal || is_normalized(set)) {
        return Census {
            entries: set.entries.len(),
            missing: 0,
        };
    }
    let held = normalized(held);
    let set = normalized(set);
    // After a sync the two are equal: one comparison, no search.
    if held.entries == set.entries && held.allow == set.allow {
        return Census {
            entries: held.entries.len(),
            missing: 0,
        };
    }
    let allow_missing = set
        .allow
        .iter()
        .filter(|n| held.allow.binary_search(n).is_err())
        .count();
    // Both sorted by key, one entry a key: a merge.
    let mut entries_missing = 0;
    let mut h = held.entries.iter().peekable();
    for e in &set.entries {
        let k = e.key();
        while h.next_if(|x| x.key() < k).is_some() {}
        match h.peek() {
            Some(x) if x.key() == k && x.action == e.action => {}
            _ => entries_missing += 1,
        }
    }
    Census {
        entries: held.entries.len(),
        missing: allow_missing + entries_missing,
    }
}

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

/// Ids by key, from map contents.
pub fn ids_of(d: &Desired) -> HashMap<SlotKey, u32> {
    d.entries().into_iter().map(|(k, v)| (k, v.id)).collect()
}

/// An IPv4 net from a map key's address and length.
fn n4(a: [u8; 4], l: u32) -> IpNet {
    IpNet::new(IpAddr::V4(std::net::Ipv4Addr::from(a)), l as u8).expect("len")
}

/// An IPv6 net from a map key's address and length.
fn n6(a: [u8; 16], l: u32) -> IpNet {
    IpNet::new(IpAddr::V6(std::net::Ipv6Addr::from(a)), l as u8).expect("len")
}

/// A port match from a map key's protocol, side and port.
fn pm(proto: u8, side: u8, port: [u8; 2]) -> crate::entry::PortMatch {
    use crate::entry::{PortMatch, Proto, Side};
    PortMatch {
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
    }
}

/// An entry key in entry terms.
fn ek(net: IpNet, port: Option<crate::entry::PortMatch>) -> SlotKey {
    SlotKey::Entry(EntryKey { net, port })
}

impl Slot {
    /// The key in entry terms (the inverse of [`allow_slot`] and
    /// [`entry_slot`]): what the v2 engine names keys by.
    pub(super) fn key(&self) -> SlotKey {
        match *self {
            Slot::AllowV4(l, a) => SlotKey::Allow(n4(a, l)),
            Slot::AllowV6(l, a) => SlotKey::Allow(n6(a, l)),
            Slot::AddrV4(a) => ek(n4(a, 32), None),
            Slot::AddrV6(a) => ek(n6(a, 128), None),
            Slot::PrefixV4(l, a) => ek(n4(a, l), None),
            Slot::PrefixV6(l, a) => ek(n6(a, l), None),
            Slot::PortV4(k) => ek(n4(k.addr, 32), Some(pm(k.proto, k.side, k.port))),
            Slot::PortV6(k) => ek(n6(k.addr, 128), Some(pm(k.proto, k.side, k.port))),
            Slot::PPrefixV4(l, k) => ek(
                n4(k.addr, l - PORT_PREFIX_FIXED_BITS),
                Some(pm(k.proto, k.side, k.port)),
            ),
            Slot::PPrefixV6(l, k) => ek(
                n6(k.addr, l - PORT_PREFIX_FIXED_BITS),
                Some(pm(k.proto, k.side, k.port)),
            ),
        }
    }
}

impl Desired {
    /// Every key with its value, in entry terms (the inverse of [`build_from`]).
    ///
    /// [`build_from`]: Desired::build_from
    pub fn entries(&self) -> Vec<(SlotKey, EntryValue)> {
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

/// Whether `set` is already what [`normalized`] makes of it.
pub(super) fn is_normalized(set: &EntrySet) -> bool {
    // `addr == network` rather than `net == net.trunc()`: trunc builds and
    // validates a new net, and this runs over 1M entries at every sync.
    set.entries.iter().all(|e| e.net.addr() == e.net.network())
        && set.entries.windows(2).all(|w| w[0].key() < w[1].key())
        && set.allow.iter().all(|n| n.addr() == n.network())
        && set.allow.windows(2).all(|w| w[0] < w[1])
}

/// `set` with normalised nets, entries sorted by key with one entry per key
/// (drop wins), and the allowlist sorted and unique. Borrowed when it
/// already is (the agent's merged desired state always is). Public for the
/// bench's v1 baseline (`tests/src/bench/v1maps/`), which syncs any set.
pub fn normalized(set: &EntrySet) -> std::borrow::Cow<'_, EntrySet> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{PortMatch, Proto, Side};

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn entry(s: &str, port: Option<(Proto, u16, Side)>, action: Action) -> Entry {
        let port = port.map(|(proto, port, side)| PortMatch { proto, port, side });
        Entry::new(net(s), port, action)
    }

    /// One entry of every kind, both families, an allowlist, a duplicate
    /// key (weaker first) and a monitor prefix inside a drop prefix.
    fn every_kind() -> EntrySet {
        use Action::{Drop, Monitor};
        EntrySet {
            allow: vec![net("192.0.2.128/25"), net("2001:db8:ffff::/48")],
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
    fn every_kind_lands_in_its_map_and_duplicates_merge() {
        let d = Desired::build_from(&every_kind(), &Desired::default());
        let counts: Vec<usize> = d.counts().iter().map(|(_, n)| *n).collect();
        // ALLOW v4/v6, ADDR, PREFIX, PORT, PPREFIX; the duplicate is one key.
        assert_eq!(counts, [1, 1, 1, 1, 2, 1, 1, 1, 1, 1]);
        assert_eq!(d.nonempty(), (1 << abi::ENTRY_MAPS.len()) - 1);
        let v = d.addr_v4[&[10, 0, 0, 1]];
        assert_eq!(v.own_action, Action::Drop.abi(), "drop beats monitor");
        let mut ids = Vec::new();
        ids.extend(d.ids());
        ids.sort_unstable();
        assert_eq!(ids, (0..11).collect::<Vec<u32>>(), "one id per key");
        assert_eq!(Desired::default().nonempty(), 0);
    }

    #[test]
    fn tries_are_flattened_to_the_strongest_covering_action() {
        let d = Desired::build_from(&every_kind(), &Desired::default());
        // The monitor /24 inside the drop /16: looked up alone it must drop.
        let inner = d.prefix_v4[&(24, [10, 1, 2, 0])];
        assert_eq!(inner.own_action, Action::Monitor.abi());
        assert_eq!(inner.action, Action::Drop.abi());
        let outer = d.prefix_v4[&(16, [10, 1, 0, 0])];
        assert_eq!(inner.decider, outer.id, "the covering prefix decides");
    }

    #[test]
    fn entries_are_the_inverse_of_build() {
        let set = every_kind();
        let d = Desired::build_from(&set, &Desired::default());
        let back = d.to_entry_set();
        assert_eq!(back, normalized(&set).into_owned());
        assert_eq!(Desired::build_from(&back, &d), d, "same ids, same values");
        let ids = ids_of(&d);
        assert_eq!(ids.len(), 11);
        assert_eq!(
            ids[&SlotKey::Allow(net("192.0.2.128/25"))],
            d.allow_v4[&(25, [192, 0, 2, 128])].id
        );
    }

    #[test]
    fn contents_with_given_ids_keep_them() {
        let set = every_kind();
        let d = Desired::build_from(&set, &Desired::default());
        // The ids reversed: every key gets another id than a fresh build's.
        let ids: HashMap<SlotKey, u32> = ids_of(&d).into_iter().map(|(k, v)| (k, 10 - v)).collect();
        let w = Desired::with_ids(&set, &ids);
        assert_eq!(ids_of(&w), ids);
        assert_eq!(w.to_entry_set(), d.to_entry_set());
        let outer = w.prefix_v4[&(16, [10, 1, 0, 0])];
        assert_eq!(w.prefix_v4[&(24, [10, 1, 2, 0])].decider, outer.id);
    }

    #[test]
    fn census_counts_what_is_held_and_what_is_missing() {
        let set = every_kind();
        let d = Desired::build_from(&set, &Desired::default());
        let c = d.census(&set);
        assert_eq!(
            c,
            Census {
                entries: 9,
                missing: 0
            },
            "allowlist not counted"
        );
        let mut held = d.clone();
        held.addr_v6.clear();
        held.allow_v4.clear();
        // A key held with another action counts as missing too.
        held.addr_v4.get_mut(&[10, 0, 0, 1]).unwrap().own_action = Action::Monitor.abi();
        assert_eq!(
            held.census(&set),
            Census {
                entries: 8,
                missing: 3
            }
        );
        assert_eq!(drift(&d, &held), 3);
        assert_eq!(drift(&held, &d), 3);
        assert_eq!(drift(&d, &d), 0);
    }

    /// [`census_of_sets`] counts as [`Desired::census`] of the held set's
    /// contents, whatever is missing, added or held with another action.
    #[test]
    fn census_of_sets_agrees_with_the_contents_census() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let full = every_kind();
        let mut rng = StdRng::seed_from_u64(7);
        for round in 0..200 {
            let mut held = full.clone();
            let mut want = full.clone();
            for s in [&mut held, &mut want] {
                s.entries.retain(|_| rng.random_bool(0.7));
                s.allow.retain(|_| rng.random_bool(0.7));
                for e in &mut s.entries {
                    if rng.random_bool(0.2) {
                        e.action = if e.action == Action::Drop {
                            Action::Monitor
                        } else {
                            Action::Drop
                        };
                    }
                }
            }
            let by_contents = Desired::build_from(&held, &Desired::default()).census(&want);
            assert_eq!(
                census_of_sets(&held, &want, false),
                by_contents,
                "round {round}: held {held:?}, want {want:?}"
            );
        }
        // Equal sets (the census after a sync).
        assert_eq!(
            census_of_sets(&full, &full, false),
            Desired::build_from(&full, &Desired::default()).census(&full)
        );
    }

    #[test]
    fn normalized_sorts_dedups_and_clears_host_bits() {
        use Action::{Drop, Monitor};
        let set = EntrySet {
            allow: vec![net("192.0.2.7/24"), net("192.0.2.0/24")],
            entries: vec![
                Entry {
                    net: net("10.9.9.9/16"),
                    port: None,
                    action: Monitor,
                },
                entry("10.0.0.1/32", None, Monitor),
                entry("10.0.0.1/32", None, Drop),
            ],
        };
        assert!(!is_normalized(&set));
        // Host bits alone (sorted, one entry a key) are not normalised,
        // in either family, in entries or the allowlist.
        for (allow, e) in [
            ("192.0.2.0/24", "10.9.9.9/16"),
            ("192.0.2.0/24", "2001:db8::1/64"),
            ("192.0.2.7/24", "10.9.0.0/16"),
            ("2001:db8::1/48", "10.9.0.0/16"),
        ] {
            // Not `entry()`: `Entry::new` clears host bits.
            let one = EntrySet {
                allow: vec![net(allow)],
                entries: vec![Entry {
                    net: net(e),
                    port: None,
                    action: Drop,
                }],
            };
            assert!(!is_normalized(&one), "{allow} {e}");
        }
        let clean = EntrySet {
            allow: vec![net("2001:db8::/48")],
            entries: vec![entry("10.9.0.0/16", None, Drop)],
        };
        assert!(is_normalized(&clean));
        let n = normalized(&set);
        assert!(is_normalized(&n));
        assert_eq!(n.allow, [net("192.0.2.0/24")]);
        assert_eq!(
            n.entries,
            [
                entry("10.0.0.1/32", None, Drop),
                entry("10.9.0.0/16", None, Monitor)
            ]
        );
        assert!(matches!(normalized(&n), std::borrow::Cow::Borrowed(_)));
    }
}

#[cfg(test)]
mod id_alloc_tests {
    use super::super::ids::IdAlloc;
    use super::*;

    fn set(addrs: &[&str]) -> EntrySet {
        EntrySet {
            allow: Vec::new(),
            entries: addrs
                .iter()
                .map(|a| Entry::new(a.parse().unwrap(), None, Action::Drop))
                .collect(),
        }
    }

    fn id_of(d: &Desired, a: &str) -> u32 {
        let k: IpNet = a.parse().unwrap();
        d.entries()
            .into_iter()
            .find(|(s, _)| matches!(s, SlotKey::Entry(e) if e.net == k))
            .unwrap()
            .1
            .id
    }

    #[test]
    fn lowest_free_first_and_released_ids_wait_for_commit() {
        let d = Desired::build_from(
            &set(&["10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32"]),
            &Desired::default(),
        );
        let mut ids = IdAlloc::in_use(d.ids());
        assert_eq!(ids.alloc(), 3);
        ids.release(1);
        // Not reusable in the sync that released it.
        assert_eq!(ids.alloc(), 4);
        ids.commit();
        assert_eq!(ids.alloc(), 1);
        assert_eq!(ids.take_assigned(), vec![3, 4, 1]);
        assert!(ids.take_assigned().is_empty());
    }

    #[test]
    fn build_fills_gaps_and_keeps_existing_ids() {
        let d = Desired::build_from(
            &set(&["10.0.0.1/32", "10.0.0.2/32", "10.0.0.3/32"]),
            &Desired::default(),
        );
        let two = id_of(&d, "10.0.0.2/32");
        // 10.0.0.2 gone: its id is a gap the next new key fills.
        let d2 = Desired::build_from(&set(&["10.0.0.1/32", "10.0.0.3/32"]), &d);
        let d3 = Desired::build_from(&set(&["10.0.0.1/32", "10.0.0.3/32", "10.0.0.9/32"]), &d2);
        assert_eq!(id_of(&d3, "10.0.0.9/32"), two);
        for a in ["10.0.0.1/32", "10.0.0.3/32"] {
            assert_eq!(id_of(&d3, a), id_of(&d, a));
        }
    }
}
