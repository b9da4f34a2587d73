//! What the kernel maps must hold for an [`EntrySet`], and making them hold it.
//!
//! [`Desired::build_from`] turns entries into per-map contents: duplicate keys
//! merge (drop beats monitor), ids stay stable per key (taken from the maps
//! themselves, so a restarted agent keeps them), and trie nodes are flattened
//! so a single longest-prefix lookup sees the strongest covering action.
//! [`EntryMaps::sync`] applies it as a diff: adds and changes first, removals
//! last, so an entry present before and after an update is never absent.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, btree_map, hash_map};
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

/// Trie keys whose leading `bits` can be kept (masked) or filled (the last
/// key a prefix covers), for flattening and for finding covered nodes.
trait TrieKey: Copy + Ord {
    /// Where [`TrieKey::bucket`] starts: the bits before it are the same
    /// for every node a prefix of this length or longer covers.
    const BUCKET_AT: u32;
    /// Keep the first `bits` bits, zero the rest.
    fn masked(&self, bits: u32) -> Self;
    /// Keep the first `bits` bits, set the rest to one.
    fn filled(&self, bits: u32) -> Self;
    /// The 32 bits from [`TrieKey::BUCKET_AT`], whose leading bits are the
    /// key's bucket in a [`LenFilter`].
    fn window(&self) -> u32;
}

fn mask_bytes<const N: usize>(mut b: [u8; N], bits: u32, fill: bool) -> [u8; N] {
    for (i, x) in b.iter_mut().enumerate() {
        let lo = i as u32 * 8;
        let keep: u8 = if lo >= bits {
            0
        } else if lo + 8 > bits {
            0xffu8 << (8 - (bits - lo))
        } else {
            0xff
        };
        *x = if fill { *x | !keep } else { *x & keep };
    }
    b
}

impl<const N: usize> TrieKey for [u8; N] {
    const BUCKET_AT: u32 = 0;
    fn masked(&self, bits: u32) -> Self {
        mask_bytes(*self, bits, false)
    }
    fn filled(&self, bits: u32) -> Self {
        mask_bytes(*self, bits, true)
    }
    fn window(&self) -> u32 {
        u32::from_be_bytes([self[0], self[1], self[2], self[3]])
    }
}

macro_rules! port_prefix_key {
    ($t:ty, $n:expr) => {
        impl TrieKey for $t {
            const BUCKET_AT: u32 = PORT_PREFIX_FIXED_BITS;
            fn masked(&self, bits: u32) -> Self {
                self.with(bits, false)
            }
            fn filled(&self, bits: u32) -> Self {
                self.with(bits, true)
            }
            fn window(&self) -> u32 {
                u32::from_be_bytes([self.addr[0], self.addr[1], self.addr[2], self.addr[3]])
            }
        }
        impl PortPrefixBytes for $t {
            fn with(&self, bits: u32, fill: bool) -> Self {
                let mut b = [0u8; $n];
                b[0] = self.proto;
                b[1] = self.side;
                b[2..4].copy_from_slice(&self.port);
                b[4..].copy_from_slice(&self.addr);
                let b = mask_bytes(b, bits, fill);
                let mut out = *self;
                out.proto = b[0];
                out.side = b[1];
                out.port = [b[2], b[3]];
                out.addr.copy_from_slice(&b[4..]);
                out
            }
        }
    };
}

trait PortPrefixBytes {
    fn with(&self, bits: u32, fill: bool) -> Self;
}

port_prefix_key!(PortPrefixV4, 8);
port_prefix_key!(PortPrefixV6, 20);

/// Distinct prefix lengths of a trie, longest first: one range seek per
/// distinct length (keys are ordered by length first), not a walk over
/// every node, so an incremental update stays proportional to the change.
fn lengths_or_empty<K: TrieKey>(trie: &BTreeMap<(u32, K), EntryValue>) -> Vec<u32> {
    let Some((&(_, any), _)) = trie.first_key_value() else {
        return Vec::new();
    };
    // All bits zero: the smallest key data of any length.
    let zero = any.masked(0);
    let mut lens: Vec<u32> = Vec::new();
    let mut from = 0;
    while let Some((&(l, _), _)) = trie.range((from, zero)..).next() {
        lens.push(l);
        match l.checked_add(1) {
            Some(n) => from = n,
            None => break,
        }
    }
    lens.reverse();
    lens
}

/// The strongest action among node `(len, key)` and the shorter nodes
/// covering it (ties keep the longer, more specific node as decider).
fn flat_value<K: TrieKey>(
    trie: &BTreeMap<(u32, K), EntryValue>,
    lens: &[u32],
    filter: Option<&LenFilter>,
    fixed: u32,
    len: u32,
    key: K,
    own: EntryValue,
) -> EntryValue {
    let mut best = (own.own_action, own.id);
    for &l in lens.iter().filter(|&&l| l < len && l >= fixed) {
        let k = key.masked(l);
        if filter.is_some_and(|f| !f.may_hold(l, &k)) {
            continue;
        }
        if let Some(c) = trie.get(&(l, k))
            && c.own_action > best.0
        {
            best = (c.own_action, c.id);
        }
    }
    EntryValue {
        action: best.0,
        decider: best.1,
        ..own
    }
}

/// Flatten every node of a trie: the same result as [`flat_value`] for each
/// node, in one sweep. Sorted by (data, length), a node comes right after
/// the chain of nodes covering it, so a stack of that chain, each with the
/// best (action, decider) of the chain down to it, gives every node's
/// value from its nearest covering node: O(n log n) instead of one lookup
/// per node and length. (Every node of a port-prefix trie has at least the
/// fixed bits, so no covering node is shorter than them.)
fn flatten<K: TrieKey>(trie: &mut BTreeMap<(u32, K), EntryValue>) {
    if trie.is_empty() {
        return;
    }
    let nodes: Vec<(u32, K, EntryValue)> = trie.iter().map(|(&(l, k), &v)| (l, k, v)).collect();
    let mut order: Vec<u32> = (0..nodes.len() as u32).collect();
    order.sort_unstable_by(|&a, &b| {
        let (a, b) = (&nodes[a as usize], &nodes[b as usize]);
        a.1.cmp(&b.1).then(a.0.cmp(&b.0))
    });
    // (length, data, best action, its id) of the covering chain.
    let mut stack: Vec<(u32, K, u8, u32)> = Vec::new();
    let mut flat: Vec<(u8, u32)> = vec![(0, 0); nodes.len()];
    for i in order {
        let (l, k, own) = nodes[i as usize];
        while let Some(&(tl, tk, _, _)) = stack.last() {
            if tl <= l && k.masked(tl) == tk {
                break;
            }
            stack.pop();
        }
        // Strictly stronger beats; a tie keeps the longer node.
        let best = match stack.last() {
            Some(&(_, _, a, id)) if a > own.own_action => (a, id),
            _ => (own.own_action, own.id),
        };
        flat[i as usize] = best;
        stack.push((l, k, best.0, best.1));
    }
    for (v, (action, decider)) in trie.values_mut().zip(flat) {
        v.action = action;
        v.decider = decider;
    }
}

/// Every existing node covered by prefix `(len, key)`, itself included.
fn covered<'a, K: TrieKey>(
    trie: &'a BTreeMap<(u32, K), EntryValue>,
    lens: &'a [u32],
    filter: Option<&'a LenFilter>,
    len: u32,
    key: K,
) -> impl Iterator<Item = ((u32, K), EntryValue)> + 'a {
    let (lo, hi) = (key.masked(len), key.filled(len));
    lens.iter()
        .filter(move |&&l| l >= len && filter.is_none_or(|f| f.may_cover(l, len, &lo)))
        .flat_map(move |&l| trie.range((l, lo)..=(l, hi)).map(|(k, v)| (*k, *v)))
}

/// Which buckets of a trie's keys hold nodes, per prefix length: a filter
/// in front of the per-length probes of an incremental update
/// ([`flat_value`], [`covered`]). With ~100k prefixes over 23 lengths,
/// nearly every probe for a changed prefix finds nothing; a B-tree seek
/// costs ~200 ns, a look at this filter a few.
///
/// A node of length `l` falls in the bucket given by its first
/// `min(l, 20)` bits after [`TrieKey::BUCKET_AT`] (at most 2^20 bits, 128 KiB,
/// per length in use). A bit is set when a node arrives and cleared when
/// the last node of its bucket leaves (one range query), so the filter
/// never hides a node. Port-prefix tries (whose buckets mix ports) only
/// ever set bits. Valid only together with the trie it follows:
/// [`EntryMaps`] keeps it next to its shadow copy.
#[derive(Clone, Debug, Default)]
struct LenFilter {
    by_len: Vec<Option<Box<[u64]>>>,
}

impl LenFilter {
    const MAX_BITS: u32 = 20;
    /// Longest bucket range [`LenFilter::may_cover`] scans.
    const MAX_SCAN: usize = 4096;

    fn width<K: TrieKey>(len: u32) -> u32 {
        len.saturating_sub(K::BUCKET_AT).min(Self::MAX_BITS)
    }

    fn bucket<K: TrieKey>(len: u32, key: &K) -> usize {
        match Self::width::<K>(len) {
            0 => 0,
            w => (key.window() >> (32 - w)) as usize,
        }
    }

    fn build<K: TrieKey>(trie: &BTreeMap<(u32, K), EntryValue>) -> LenFilter {
        let mut f = LenFilter::default();
        for (l, k) in trie.keys() {
            f.add(*l, k);
        }
        f
    }

    /// Node `(len, key)` arrived.
    fn add<K: TrieKey>(&mut self, len: u32, key: &K) {
        let l = len as usize;
        if self.by_len.len() <= l {
            self.by_len.resize_with(l + 1, || None);
        }
        let words = ((1usize << Self::width::<K>(len)) / 64).max(1);
        let bits = self.by_len[l].get_or_insert_with(|| vec![0; words].into());
        let b = Self::bucket(len, key);
        bits[b / 64] |= 1 << (b % 64);
    }

    /// Node `(len, key)` left `trie` (already removed from it).
    fn remove<K: TrieKey>(&mut self, trie: &BTreeMap<(u32, K), EntryValue>, len: u32, key: &K) {
        if K::BUCKET_AT != 0 {
            return;
        }
        let Some(Some(bits)) = self.by_len.get_mut(len as usize) else {
            return;
        };
        let w = Self::width::<K>(len);
        let (lo, hi) = (key.masked(w), key.filled(w));
        if trie.range((len, lo)..=(len, hi)).next().is_none() {
            let b = Self::bucket(len, key);
            bits[b / 64] &= !(1 << (b % 64));
        }
    }

    fn any(&self, len: u32, lo: usize, hi: usize) -> bool {
        let Some(Some(bits)) = self.by_len.get(len as usize) else {
            return false;
        };
        (lo / 64..=hi / 64).any(|i| {
            let mut w = bits[i];
            if i == lo / 64 {
                w &= !0u64 << (lo % 64);
            }
            if i == hi / 64 {
                w &= !0u64 >> (63 - hi % 64);
            }
            w != 0
        })
    }

    /// Whether node `(len, key)` (key masked to `len`) may exist.
    fn may_hold<K: TrieKey>(&self, len: u32, key: &K) -> bool {
        let b = Self::bucket(len, key);
        self.any(len, b, b)
    }

    /// Whether a node of length `len` may lie under prefix `(from, key)`.
    fn may_cover<K: TrieKey>(&self, len: u32, from: u32, key: &K) -> bool {
        let lo = Self::bucket(len, &key.masked(from));
        let hi = Self::bucket(len, &key.filled(from));
        hi - lo > Self::MAX_SCAN || self.any(len, lo, hi)
    }
}

/// A [`LenFilter`] per flattened trie of a [`Desired`] (the allowlist
/// tries are not flattened, so nothing probes them).
#[derive(Clone, Debug, Default)]
struct TrieFilters {
    prefix_v4: LenFilter,
    prefix_v6: LenFilter,
    pprefix_v4: LenFilter,
    pprefix_v6: LenFilter,
}

impl TrieFilters {
    fn build(d: &Desired) -> TrieFilters {
        TrieFilters {
            prefix_v4: LenFilter::build(&d.prefix_v4),
            prefix_v6: LenFilter::build(&d.prefix_v6),
            pprefix_v4: LenFilter::build(&d.pprefix_v4),
            pprefix_v6: LenFilter::build(&d.pprefix_v6),
        }
    }

    /// Follow a node of `slot` that was (`was`) and is (`is`) in `d`'s
    /// tries (`d` already changed).
    fn note(&mut self, d: &Desired, slot: &Slot, was: bool, is: bool) {
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

/// Entry id allocation. Ids index the per-entry hit counters
/// (`ENTRY_STATS`), so they are kept dense: the lowest free id is handed out
/// first, and ids of removed entries are reused. An id released by a sync
/// becomes free only once that sync has landed ([`IdAlloc::commit`]): the
/// old key is gone from the kernel before a new key gets its id. Every id
/// handed out is recorded, so its counters can be zeroed before its entry
/// lands and a new entry never inherits an old one's hits.
#[derive(Clone, Debug, Default)]
pub struct IdAlloc {
    /// Free ids below `next`, lowest on top. A heap rather than a
    /// `BTreeSet`: a 1% delta frees ~10k scattered ids at once, and
    /// pushing them onto an array-backed heap costs a quarter of the
    /// B-tree inserts.
    free: BinaryHeap<Reverse<u32>>,
    /// Every id at or above this is free.
    next: u32,
    /// Released by the sync in progress (free after `commit`).
    released: Vec<u32>,
    /// Handed out since the last `take_assigned`.
    assigned: Vec<u32>,
}

impl IdAlloc {
    /// The allocator for maps holding `d`: the gaps between its ids are free.
    pub fn from_desired(d: &Desired) -> IdAlloc {
        let mut used: Vec<u64> = Vec::new();
        let mut max: Option<u32> = None;
        d.for_each_id(|id| {
            let (w, b) = ((id / 64) as usize, id % 64);
            if used.len() <= w {
                used.resize(w + 1, 0);
            }
            used[w] |= 1 << b;
            max = Some(max.map_or(id, |m| m.max(id)));
        });
        let next = max.map_or(0, |m| m + 1);
        let free = (0..next)
            .filter(|&id| used[(id / 64) as usize] & (1 << (id % 64)) == 0)
            .map(Reverse)
            .collect();
        IdAlloc {
            free,
            next,
            ..Default::default()
        }
    }

    /// The lowest free id.
    pub fn alloc(&mut self) -> u32 {
        let id = self.free.pop().map(|Reverse(id)| id).unwrap_or_else(|| {
            self.next += 1;
            self.next - 1
        });
        self.assigned.push(id);
        id
    }

    /// `id` is no longer used once the sync in progress lands.
    pub fn release(&mut self, id: u32) {
        self.released.push(id);
    }

    /// The sync landed: released ids become free.
    pub fn commit(&mut self) {
        self.free.extend(self.released.drain(..).map(Reverse));
    }

    /// Ids handed out since the last call.
    pub fn take_assigned(&mut self) -> Vec<u32> {
        std::mem::take(&mut self.assigned)
    }
}

#[cfg(test)]
mod id_alloc_tests {
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
        let mut ids = IdAlloc::from_desired(&d);
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

/// What an incremental update changed: the old and new values of every
/// touched key (a key absent from `new` is removed).
#[derive(Default)]
struct Touched {
    old: Desired,
    new: Desired,
}

/// What a key change does, as [`SetChanges::between`] found it: the key
/// is new, its action changed, or it is gone. Knowing adds in advance lets
/// [`EntryMaps::apply_changes`] hand out their ids before any map is touched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Change {
    Add(Action),
    Set(Action),
    Remove,
}

/// One key change of an incremental update with the id its entry has: a
/// fresh one for an add, the existing one for a change of action.
#[derive(Clone, Copy, Debug)]
struct Planned {
    slot: Slot,
    change: Change,
    id: u32,
}

/// Outcome of updating part of the shadow with planned changes.
#[derive(Default)]
struct Updated {
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
struct HashWrites<K> {
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
struct HashPlan {
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
        })
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
    fn apply_slots(&mut self, changes: &[(Slot, Change)], flags: u32) -> Result<Option<SyncStats>> {
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
        // A new entry must not inherit the hits of the one that had its id.
        self.zero_entry_stats(&ids.take_assigned())?;
        // Widen the nonempty mask first so new entries are looked up as soon
        // as they land; narrow it after removals.
        self.set_config(flags, grow_mask)?;
        let b = self.batch;
        let mut tries = shadow.take_tries();
        let EntryMaps {
            allow_v4,
            allow_v6,
            addr_v4,
            addr_v6,
            prefix_v4,
            prefix_v6,
            port_v4,
            port_v6,
            pprefix_v4,
            pprefix_v6,
            ..
        } = self;
        let fds = [
            hash_fd(addr_v4),
            hash_fd(addr_v6),
            hash_fd(port_v4),
            hash_fd(port_v6),
        ];
        let p = &hash_plan;
        let mut jobs = Vec::new();
        write_jobs(&mut jobs, 0, fds[0], &p.addr_v4, abi::MAP_ADDR_V4, b);
        write_jobs(&mut jobs, 1, fds[1], &p.addr_v6, abi::MAP_ADDR_V6, b);
        write_jobs(&mut jobs, 2, fds[2], &p.port_v4, abi::MAP_PORT_V4, b);
        write_jobs(&mut jobs, 3, fds[3], &p.port_v6, abi::MAP_PORT_V6, b);
        let writes = Jobs::new(jobs);
        let (hash_up, trie_up) = both(
            || -> Result<([usize; 4], Updated)> {
                // The hash maps' shadow (quick), then the writes.
                let h_up = shadow.update_hashes(&hash_changes);
                Ok((writes.run()?, h_up))
            },
            || -> Result<(SyncStats, Updated, [usize; 4])> {
                let t_up = tries.update_tries(&trie_changes, &mut filters);
                let (c, d) = (&t_up.touched.old, &t_up.touched.new);
                let mut st = SyncStats::default();
                upsert_lpm(
                    allow_v4,
                    &c.allow_v4,
                    &d.allow_v4,
                    abi::MAP_ALLOW_V4,
                    &mut st,
                )?;
                upsert_lpm(
                    allow_v6,
                    &c.allow_v6,
                    &d.allow_v6,
                    abi::MAP_ALLOW_V6,
                    &mut st,
                )?;
                upsert_lpm(
                    prefix_v4,
                    &c.prefix_v4,
                    &d.prefix_v4,
                    abi::MAP_PREFIX_V4,
                    &mut st,
                )?;
                upsert_lpm(
                    prefix_v6,
                    &c.prefix_v6,
                    &d.prefix_v6,
                    abi::MAP_PREFIX_V6,
                    &mut st,
                )?;
                upsert_lpm(
                    pprefix_v4,
                    &c.pprefix_v4,
                    &d.pprefix_v4,
                    abi::MAP_PPREFIX_V4,
                    &mut st,
                )?;
                upsert_lpm(
                    pprefix_v6,
                    &c.pprefix_v6,
                    &d.pprefix_v6,
                    abi::MAP_PPREFIX_V6,
                    &mut st,
                )?;
                // Then help the other thread with the hash writes.
                let refused = writes.run()?;
                Ok((st, t_up, refused))
            },
        );
        drop(writes);
        let (mut st, t_up, refused_t) = trie_up?;
        let (refused_h, h_up) = hash_up?;
        for (i, (name, w)) in [
            (abi::MAP_ADDR_V4, p.addr_v4.counts()),
            (abi::MAP_ADDR_V6, p.addr_v6.counts()),
            (abi::MAP_PORT_V4, p.port_v4.counts()),
            (abi::MAP_PORT_V6, p.port_v6.counts()),
        ]
        .into_iter()
        .enumerate()
        {
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
                let (c, d) = (&t_up.touched.old, &t_up.touched.new);
                let mut st = SyncStats::default();
                remove_lpm(allow_v4, &c.allow_v4, &d.allow_v4, &mut st)?;
                remove_lpm(allow_v6, &c.allow_v6, &d.allow_v6, &mut st)?;
                remove_lpm(prefix_v4, &c.prefix_v4, &d.prefix_v4, &mut st)?;
                remove_lpm(prefix_v6, &c.prefix_v6, &d.prefix_v6, &mut st)?;
                remove_lpm(pprefix_v4, &c.pprefix_v4, &d.pprefix_v4, &mut st)?;
                remove_lpm(pprefix_v6, &c.pprefix_v6, &d.pprefix_v6, &mut st)?;
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
        let Some(want) = self.shadow.take() else {
            // Nothing applied yet: nothing to hold the kernel to.
            return Ok(0);
        };
        let kernel = self.read()?;
        let drift = drift(&kernel, &want);
        if drift == 0 {
            let nonempty = want.nonempty();
            self.shadow = Some(want);
            // The config slot can drift too (the sampling bit is not ours).
            let mut now = self.config()?;
            now.flags &= !abi::CONFIG_SAMPLE_EVENTS;
            if now != (Config { flags, nonempty }) {
                self.set_config(flags, nonempty)?;
                return Ok(1);
            }
            return Ok(0);
        }
        self.sync_owned(&kernel, want, flags)?;
        Ok(drift)
    }

    /// Make the maps equal `desired`, given that they hold `current`.
    /// Adds and changes go first, then the config, then removals.
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
        let EntryMaps {
            allow_v4,
            allow_v6,
            addr_v4,
            addr_v6,
            prefix_v4,
            prefix_v6,
            port_v4,
            port_v6,
            pprefix_v4,
            pprefix_v6,
            ..
        } = self;
        // The LPM tries (per-element syscalls) and the hash maps (batch)
        // are written on two threads: different maps, and the kernel work
        // of each is CPU-bound. Removals start only once every add landed.
        let (hash_up, lpm_up) = both(
            || -> Result<SyncStats> {
                let mut st = SyncStats::default();
                upsert_hash(
                    addr_v4,
                    &c.addr_v4,
                    &d.addr_v4,
                    abi::MAP_ADDR_V4,
                    b,
                    &mut st,
                )?;
                upsert_hash(
                    addr_v6,
                    &c.addr_v6,
                    &d.addr_v6,
                    abi::MAP_ADDR_V6,
                    b,
                    &mut st,
                )?;
                upsert_hash(
                    port_v4,
                    &c.port_v4,
                    &d.port_v4,
                    abi::MAP_PORT_V4,
                    b,
                    &mut st,
                )?;
                upsert_hash(
                    port_v6,
                    &c.port_v6,
                    &d.port_v6,
                    abi::MAP_PORT_V6,
                    b,
                    &mut st,
                )?;
                Ok(st)
            },
            || -> Result<SyncStats> {
                let mut st = SyncStats::default();
                upsert_lpm(
                    allow_v4,
                    &c.allow_v4,
                    &d.allow_v4,
                    abi::MAP_ALLOW_V4,
                    &mut st,
                )?;
                upsert_lpm(
                    allow_v6,
                    &c.allow_v6,
                    &d.allow_v6,
                    abi::MAP_ALLOW_V6,
                    &mut st,
                )?;
                upsert_lpm(
                    prefix_v4,
                    &c.prefix_v4,
                    &d.prefix_v4,
                    abi::MAP_PREFIX_V4,
                    &mut st,
                )?;
                upsert_lpm(
                    prefix_v6,
                    &c.prefix_v6,
                    &d.prefix_v6,
                    abi::MAP_PREFIX_V6,
                    &mut st,
                )?;
                upsert_lpm(
                    pprefix_v4,
                    &c.pprefix_v4,
                    &d.pprefix_v4,
                    abi::MAP_PPREFIX_V4,
                    &mut st,
                )?;
                upsert_lpm(
                    pprefix_v6,
                    &c.pprefix_v6,
                    &d.pprefix_v6,
                    abi::MAP_PPREFIX_V6,
                    &mut st,
                )?;
                Ok(st)
            },
        );
        let mut st = merge_stats(hash_up?, lpm_up?);
        let (hash_rm, lpm_rm) = both(
            || -> Result<SyncStats> {
                let mut st = SyncStats::default();
                remove_hash(addr_v4, &c.addr_v4, &d.addr_v4, b, &mut st)?;
                remove_hash(addr_v6, &c.addr_v6, &d.addr_v6, b, &mut st)?;
                remove_hash(port_v4, &c.port_v4, &d.port_v4, b, &mut st)?;
                remove_hash(port_v6, &c.port_v6, &d.port_v6, b, &mut st)?;
                Ok(st)
            },
            || -> Result<SyncStats> {
                let mut st = SyncStats::default();
                remove_lpm(allow_v4, &c.allow_v4, &d.allow_v4, &mut st)?;
                remove_lpm(allow_v6, &c.allow_v6, &d.allow_v6, &mut st)?;
                remove_lpm(prefix_v4, &c.prefix_v4, &d.prefix_v4, &mut st)?;
                remove_lpm(prefix_v6, &c.prefix_v6, &d.prefix_v6, &mut st)?;
                remove_lpm(pprefix_v4, &c.pprefix_v4, &d.pprefix_v4, &mut st)?;
                remove_lpm(pprefix_v6, &c.pprefix_v6, &d.pprefix_v6, &mut st)?;
                Ok(st)
            },
        );
        st = merge_stats(st, hash_rm?);
        st = merge_stats(st, lpm_rm?);
        self.set_config(flags, final_mask)?;
        Ok(st)
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
            match crate::batch::lookup_all_percpu::<abi::EntryStat>(fd, ncpus) {
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
                Err(e) if crate::batch::unsupported(&e) => {}
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
            let p = crate::batch::update_percpu(fd, &ids, &zeros, ncpus);
            start = p.done;
            match p.error {
                None => return Ok(()),
                Some(e) if crate::batch::unsupported(&e) => {}
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
    m: &mut BpfHash<MapData, K, EntryValue>,
    cur: &KeyMap<K>,
    want: &KeyMap<K>,
    name: &'static str,
    batch: bool,
    st: &mut SyncStats,
) -> Result<()> {
    let fd = if batch {
        Some(
            IterableMap::map(m)
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| Error::Pin {
                    op: format!("duplicating the fd of {name}"),
                    source,
                })?,
        )
    } else {
        None
    };
    let mut batch_ok = batch;
    let cap = HASH_CHUNK.min(want.len());
    let (mut keys, mut vals) = (Vec::with_capacity(cap), Vec::with_capacity(cap));
    let (mut changed, mut written, mut refused) = (0, 0, 0);
    let mut flush = |m: &mut BpfHash<MapData, K, EntryValue>,
                     keys: &mut Vec<K>,
                     vals: &mut Vec<EntryValue>|
     -> Result<()> {
        let fd = fd.as_ref().filter(|_| batch_ok).map(|f| f.as_fd());
        let (r, batch_works) = write_hash_chunk(m, fd, keys, vals, name)?;
        batch_ok &= batch_works;
        refused += r;
        written += keys.len();
        keys.clear();
        vals.clear();
        Ok(())
    };
    for (k, v) in want {
        match cur.get(k) {
            Some(old) if old == v => continue,
            Some(_) => changed += 1,
            None => {}
        }
        keys.push(*k);
        vals.push(*v);
        if keys.len() == HASH_CHUNK {
            flush(m, &mut keys, &mut vals)?;
        }
    }
    if !keys.is_empty() {
        flush(m, &mut keys, &mut vals)?;
    }
    // Refusals are new keys (updates of existing keys always fit).
    st.changed += changed;
    st.added += written - changed - refused;
    note_refused(name, refused, st);
    Ok(())
}

/// Write one chunk: batch when `fd` is given, per-element for the rest.
/// Returns the refusals (map full) and whether batch syscalls work.
fn write_hash_chunk<K: Pod + Eq + Hash>(
    m: &mut BpfHash<MapData, K, EntryValue>,
    fd: Option<std::os::fd::BorrowedFd<'_>>,
    keys: &[K],
    vals: &[EntryValue],
    name: &'static str,
) -> Result<(usize, bool)> {
    let mut refused = 0;
    let mut start = 0;
    let mut batch_works = fd.is_some();
    if let Some(fd) = fd {
        while start < keys.len() {
            let p = crate::batch::update(fd, &keys[start..], &vals[start..]);
            start += p.done;
            match p.error {
                None => break,
                Some(e) if crate::batch::unsupported(&e) && p.done == 0 => {
                    batch_works = false;
                    break;
                }
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
    Ok((refused, batch_works))
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

/// A hash map's fd, for work on it from two threads (both only write
/// through the fd; the kernel serialises per bucket).
fn hash_fd<K: Pod>(m: &BpfHash<MapData, K, EntryValue>) -> std::os::fd::BorrowedFd<'_> {
    IterableMap::map(m).fd().as_fd()
}

/// Queue the writes of `w` in [`JOB_KEYS`] chunks.
fn write_jobs<'a, K: Pod + Sync>(
    jobs: &mut Vec<Job<'a>>,
    map: usize,
    fd: std::os::fd::BorrowedFd<'a>,
    w: &'a HashWrites<K>,
    name: &'static str,
    batch: bool,
) {
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

/// Write `keys[i] -> vals[i]` (batch when `batch` and supported); returns
/// how many were refused because the map is full.
fn write_by_fd<K: Pod>(
    fd: std::os::fd::BorrowedFd<'_>,
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
        let p = crate::batch::update(fd, &keys[start..], &vals[start..]);
        start += p.done;
        match p.error {
            None => return Ok(refused),
            Some(e) if crate::batch::unsupported(&e) && p.done == 0 => break,
            // The element at `start` did not fit; skip it.
            Some(e) if is_full_io(&e) => {
                refused += 1;
                start += 1;
            }
            Some(e) => return Err(err(e)),
        }
    }
    for (k, v) in keys[start..].iter().zip(&vals[start..]) {
        match crate::batch::update_one(fd, k, v) {
            Ok(()) => {}
            Err(e) if is_full_io(&e) => refused += 1,
            Err(e) => return Err(err(e)),
        }
    }
    Ok(refused)
}

/// Delete `keys` (batch when `batch` and supported); keys already gone are
/// fine. Returns how many were removed.
fn delete_by_fd<K: Pod>(fd: std::os::fd::BorrowedFd<'_>, keys: &[K], batch: bool) -> Result<usize> {
    let err = |source| Error::Pin {
        op: "removing entries".into(),
        source,
    };
    let (mut start, mut removed) = (0, 0);
    while batch && start < keys.len() {
        let p = crate::batch::delete(fd, &keys[start..]);
        start += p.done;
        removed += p.done;
        match p.error {
            None => return Ok(removed),
            Some(e) if crate::batch::unsupported(&e) && p.done == 0 => break,
            // Already gone (someone else removed it): fine.
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => start += 1,
            Some(e) => return Err(err(e)),
        }
    }
    for k in &keys[start..] {
        match crate::batch::delete_one(fd, k) {
            Ok(()) => removed += 1,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(removed)
}

fn remove_hash<K: Pod + Eq + Hash>(
    m: &mut BpfHash<MapData, K, EntryValue>,
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
    delete_hash_keys(m, &keys, batch, st)
}

/// Delete `keys` (batch when `batch` and supported); keys already gone are
/// fine.
fn delete_hash_keys<K: Pod + Eq + Hash>(
    m: &mut BpfHash<MapData, K, EntryValue>,
    keys: &[K],
    batch: bool,
    st: &mut SyncStats,
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
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

/// The key-level changes from one entry set to another: every key added
/// (with its action), removed, or whose action changed. What
/// [`EntryMaps::apply_changes`] applies.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SetChanges(Vec<(Slot, Change)>);

impl SetChanges {
    /// The changes from `prev` to `new`: one merge pass over both, with no
    /// copy of either.
    ///
    /// Both must be normalised: nets without host bits, entries sorted by
    /// key with one entry per key, the allowlist sorted and unique, as
    /// [`crate::sync::merge`] makes them (`EntryMaps::apply` normalises its
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
    use rand::{Rng, SeedableRng};

    /// The one-sweep [`flatten`] gives every node what the per-node
    /// definition ([`flat_value`]) does, on random nested tries with ties.
    #[test]
    fn flatten_sweep_equals_per_node_definition() {
        let seed: u64 = rand::random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        for round in 0..50 {
            let mut trie: BTreeMap<(u32, [u8; 4]), EntryValue> = BTreeMap::new();
            for id in 0..rng.random_range(1..300) {
                let len = [0u32, 1, 4, 8, 9, 16, 20, 24, 31, 32][rng.random_range(0..10)];
                let addr = [
                    10,
                    rng.random_range(0..4),
                    rng.random_range(0..4),
                    rng.random(),
                ];
                let action = if rng.random_bool(0.5) {
                    Action::Drop
                } else {
                    Action::Monitor
                };
                trie.insert((len, addr.masked(len)), value(action, id));
            }
            let lens = lengths_or_empty(&trie);
            let want: BTreeMap<_, _> = trie
                .iter()
                .map(|(&(l, k), &v)| ((l, k), flat_value(&trie, &lens, None, 0, l, k, v)))
                .collect();
            let mut got = trie.clone();
            flatten(&mut got);
            assert_eq!(got, want, "round {round} (seed {seed})");
        }
    }

    /// Lengths found by seeking equal those of a walk over every key.
    #[test]
    fn lengths_by_seek() {
        let mut trie: BTreeMap<(u32, PortPrefixV4), EntryValue> = BTreeMap::new();
        assert!(lengths_or_empty(&trie).is_empty());
        for (l, a) in [(40u32, 1u8), (40, 2), (33, 0), (64, 9), (32, 0)] {
            let k = PortPrefixV4 {
                proto: 6,
                side: 0,
                port: [0, 80],
                addr: [a, 0, 0, 0],
            };
            trie.insert((l, k.masked(l)), value(Action::Drop, 0));
        }
        assert_eq!(lengths_or_empty(&trie), vec![64, 40, 33, 32]);
    }

    /// The probe filter never hides a node: covered nodes and flattened
    /// values are the same with and without it while nodes come and go,
    /// and for address tries it stays exact (a bit per non-empty bucket).
    #[test]
    fn len_filter_never_hides_a_node() {
        let seed: u64 = rand::random();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        const LENS: [u32; 14] = [0, 4, 8, 12, 15, 16, 17, 19, 20, 21, 24, 28, 31, 32];
        // Few distinct /16s: buckets are shared.
        let key = |rng: &mut rand::rngs::StdRng| {
            let l = LENS[rng.random_range(0..LENS.len())];
            let a: [u8; 4] = [
                10,
                rng.random_range(0..3),
                rng.random(),
                rng.random_range(0..4),
            ];
            (l, a.masked(l))
        };
        let bits = |f: &LenFilter, l: usize| -> Vec<u64> {
            match f.by_len.get(l) {
                Some(Some(b)) => b.to_vec(),
                _ => Vec::new(),
            }
        };
        let mut trie: BTreeMap<(u32, [u8; 4]), EntryValue> = BTreeMap::new();
        let mut f = LenFilter::default();
        for round in 0..6000u32 {
            let (l, k) = key(&mut rng);
            if rng.random_bool(0.5) {
                if trie.insert((l, k), value(Action::Drop, round)).is_none() {
                    f.add(l, &k);
                }
            } else if trie.remove(&(l, k)).is_some() {
                f.remove(&trie, l, &k);
            }
            if round % 300 != 0 {
                continue;
            }
            let fresh = LenFilter::build(&trie);
            for l in 0..=32 {
                let (a, b) = (bits(&f, l), bits(&fresh, l));
                let zero = |v: &Vec<u64>| v.iter().all(|&w| w == 0);
                assert!(
                    a == b || (zero(&a) && zero(&b)),
                    "/{l}: kept filter differs from a fresh one, round {round} (seed {seed})"
                );
            }
            let lens = lengths_or_empty(&trie);
            for (l, k) in (0..300)
                .map(|_| key(&mut rng))
                .chain(trie.keys().copied().take(50))
            {
                let a: Vec<_> = covered(&trie, &lens, None, l, k).collect();
                let b: Vec<_> = covered(&trie, &lens, Some(&f), l, k).collect();
                assert_eq!(a, b, "covered by /{l} {k:?}, round {round} (seed {seed})");
                let own = value(Action::Monitor, u32::MAX);
                assert_eq!(
                    flat_value(&trie, &lens, None, 0, l, k, own),
                    flat_value(&trie, &lens, Some(&f), 0, l, k, own),
                    "flat value of /{l} {k:?}, round {round} (seed {seed})"
                );
            }
        }
        // Port prefixes: buckets start at the address, after the fixed bits,
        // and a bit once set stays (their buckets mix ports).
        let fixed = PORT_PREFIX_FIXED_BITS;
        let p = PortPrefixV4 {
            proto: 6,
            side: 0,
            port: [0, 80],
            addr: [192, 0, 2, 0],
        };
        let other = PortPrefixV4 {
            addr: [198, 51, 100, 0],
            ..p
        };
        let mut t: BTreeMap<(u32, PortPrefixV4), EntryValue> = BTreeMap::new();
        let mut f = LenFilter::default();
        f.add(fixed + 24, &p);
        assert!(f.may_hold(fixed + 24, &p));
        assert!(!f.may_hold(fixed + 24, &other));
        assert!(f.may_cover(fixed + 24, fixed + 16, &p));
        assert!(!f.may_cover(fixed + 24, fixed + 16, &other));
        // Shorter than the bucket: a range of buckets is looked at, or,
        // when too long to scan, nothing is excluded.
        let ten = PortPrefixV4 {
            addr: [10, 0, 0, 0],
            ..p
        };
        assert!(f.may_cover(fixed + 24, fixed + 12, &p));
        assert!(!f.may_cover(fixed + 24, fixed + 12, &ten));
        assert!(f.may_cover(fixed + 24, fixed + 1, &ten));
        f.remove(&t, fixed + 24, &p);
        assert!(f.may_hold(fixed + 24, &p));
        t.clear();
    }

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
