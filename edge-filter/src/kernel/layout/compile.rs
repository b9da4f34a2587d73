//! The compiler: an entry set (and its ids) to tables, and from one set to
//! the next as a [`Plan`] of ordered stores and grace periods.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use edge_filter_common::{PROTO_TCP, SIDE_DST};
use ipnet::{IpNet, Ipv6Net};

use edge_filter_common::v2::{
    BTREE_FANOUT, CAT_ALLOW, CAT_DROP, CAT_DST, CAT_PORT, CAT_TCP, CAT_USED, CAT_V6, CODE_ALLOW,
    CODE_NONE, DIR4_ENTRIES, Line, MAX_IDS, META_INDIRECT, META_SPILL, PORT_EMPTY, PORT_INLINE,
    PORT_KEY_SHIFT, PORT_LIST_MAX, PORT_TREE_DEPTH, SLOTS4, SUM_P, SUM_X, SUMMARY_MAX_BITS, Slot4,
    V2_SHORT6, btree_entry, btree_port_inner, bucket_pair4, bucket_pair6, catalog_word, dir_block,
    meta, port_key, port_list_header, summary_block6, summary_pos, v6_words,
};
use rustc_hash::{FxHashMap, FxHashSet};

use super::alloc::{Heap, Placement, Run, Slots};
use super::ids::{exact_addr4, exact_key4};
use super::image::Backings;
use super::model::{Decision, Family, Net, Ranker, Scope, mask};
use super::records::{Exact, Records};
use super::tables::{Counts, Geometry, Plan, Step, Tables, Write, key_of};
use super::{IdKey, Ids, LayoutError, Result};
use crate::entry::{Action, EntryKey, EntrySet, PortMatch, Proto, Side};
use crate::radix;

/// What a key maps to in a set: an allowlist net's id, or an entry's
/// action (drop or monitor) and id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyValue {
    /// An allowlist net ([`IdKey::Allow`]).
    Allow(u32),
    /// An entry ([`IdKey::Entry`]).
    Entry {
        /// Drop (else monitor).
        drop: bool,
        /// Its id.
        id: u32,
    },
}

type Val = KeyValue;

impl KeyValue {
    /// The id.
    pub fn id(self) -> u32 {
        match self {
            Val::Allow(id) | Val::Entry { id, .. } => id,
        }
    }
}

/// A normalised set: one value per key (duplicates merged, drop wins).
type Spec = FxHashMap<IdKey, Val>;

fn spec_of(set: &EntrySet, ids: &Ids) -> Result<Spec> {
    let mut s = Spec::default();
    let id_of = |k: &IdKey| -> Result<u32> {
        let id = *ids.get(k).ok_or(LayoutError::MissingId(*k))?;
        if id >= MAX_IDS {
            return Err(LayoutError::IdTooLarge {
                key: *k,
                id,
                max: MAX_IDS - 1,
            });
        }
        Ok(id)
    };
    for n in &set.allow {
        let k = IdKey::Allow(n.trunc());
        let id = id_of(&k)?;
        s.insert(k, Val::Allow(id));
    }
    for e in &set.entries {
        let k = IdKey::Entry(EntryKey {
            net: e.net.trunc(),
            port: e.port,
        });
        let drop = e.action == Action::Drop;
        match s.get_mut(&k) {
            Some(Val::Entry { drop: d, .. }) => *d |= drop,
            _ => {
                let id = id_of(&k)?;
                s.insert(k, Val::Entry { drop, id });
            }
        }
    }
    let mut seen: FxHashMap<u32, IdKey> = FxHashMap::default();
    for (k, v) in &s {
        if let Some(other) = seen.insert(v.id(), *k) {
            return Err(LayoutError::DuplicateId {
                id: v.id(),
                a: other,
                b: *k,
            });
        }
    }
    Ok(s)
}

/// `(key, delta)` pairs sorted by key, the deltas of each key summed.
fn summed<K: Copy + Ord>(mut v: Vec<(K, i64)>) -> Vec<(K, i64)> {
    v.sort_by_key(|&(k, _)| k);
    let mut out: Vec<(K, i64)> = Vec::with_capacity(v.len());
    for (k, d) in v {
        match out.last_mut() {
            Some((l, s)) if *l == k => *s += d,
            _ => out.push((k, d)),
        }
    }
    out
}

/// Family index (0 = IPv4, 1 = IPv6), net and port key of a key.
fn parts(k: &IdKey) -> (usize, Net, Option<u32>) {
    let (net, port) = match k {
        IdKey::Allow(n) => (*n, None),
        IdKey::Entry(e) => (
            e.net,
            e.port
                .map(|p| port_key(p.proto.number(), p.side.abi(), p.port)),
        ),
    };
    let (f, addr) = match net.network() {
        IpAddr::V4(a) => (0, u32::from(a) as u128),
        IpAddr::V6(a) => (1, u128::from(a)),
    };
    (
        f,
        Net {
            addr,
            len: net.prefix_len(),
        },
        port,
    )
}

/// The counts a set needs (for [`Geometry::for_counts`]).
pub fn counts(set: &EntrySet, ids: &Ids) -> Result<Counts> {
    let spec = spec_of(set, ids)?;
    Ok(counts_of(&spec))
}

fn counts_of(spec: &Spec) -> Counts {
    let mut c = Counts::default();
    let mut rec: [FxHashSet<u128>; 2] = Default::default();
    let mut nets: [FxHashSet<Net>; 2] = Default::default();
    for (k, v) in spec {
        let (f, net, port) = parts(k);
        let width = if f == 0 { 32 } else { 128 };
        c.ids = c.ids.max(v.id() as u64 + 1);
        if f == 1 {
            c.ids6 += 1;
        }
        if port.is_some() {
            c.ported += 1;
        }
        match v {
            Val::Entry { .. } if net.len == width => {
                rec[f].insert(net.addr);
            }
            _ => {
                nets[f].insert(net);
            }
        }
    }
    c.records4 = rec[0].len() as u64;
    c.records6 = rec[1].len() as u64;
    c.nets4 = nets[0].len() as u64;
    c.nets6 = nets[1].len() as u64;
    c
}

/// The id of key `k` in `ids`, if there is one the datapath can carry.
fn id_in(ids: &Ids, k: &IdKey) -> Result<u32> {
    let id = *ids.get(k).ok_or(LayoutError::MissingId(*k))?;
    if id >= MAX_IDS {
        return Err(LayoutError::IdTooLarge {
            key: *k,
            id,
            max: MAX_IDS - 1,
        });
    }
    Ok(id)
}

/// The key of id `id` in `ids` other than `k` (for [`LayoutError::DuplicateId`]).
fn other_key(ids: &Ids, id: u32, k: &IdKey) -> IdKey {
    ids.iter()
        .find(|(o, i)| *i == id && o != k)
        .map_or(*k, |(o, _)| o)
}

/// The first id error a pass over the set in its order (allowlist, then
/// entries; each key once) meets: the error a build reports, whatever
/// order it looks keys up in.
fn first_input_error(set: &EntrySet, ids: &Ids) -> Option<LayoutError> {
    let mut keys: FxHashSet<IdKey> = FxHashSet::default();
    let mut seen: FxHashSet<u32> = FxHashSet::default();
    let all = set
        .allow
        .iter()
        .map(|n| IdKey::Allow(n.trunc()))
        .chain(set.entries.iter().map(|e| {
            IdKey::Entry(EntryKey {
                net: e.net.trunc(),
                port: e.port,
            })
        }));
    for k in all {
        if !keys.insert(k) {
            continue;
        }
        let id = match id_in(ids, &k) {
            Ok(id) => id,
            Err(e) => return Some(e),
        };
        if !seen.insert(id) {
            return Some(LayoutError::DuplicateId {
                id,
                a: other_key(ids, id, &k),
                b: k,
            });
        }
    }
    None
}

/// The ids of the exact portless entries of IPv4 addresses `ex4`
/// (`addr << 1 | drop`, sorted by address, each once). For many keys,
/// one pass over `ids` (its table read in memory order) and a merge of
/// sorted runs instead of a lookup (a random access into a large table)
/// per key.
fn exact_ids4(ids: &Ids, ex4: &[u64]) -> Result<Vec<u32>> {
    let found = exact_ids4_of(ids, ex4.iter().map(|&x| (x >> 1) as u32));
    ex4.iter()
        .zip(found)
        .map(|(&x, id)| {
            let k = || exact_key4((x >> 1) as u32);
            let id = id.ok_or_else(|| LayoutError::MissingId(k()))?;
            if id >= MAX_IDS {
                return Err(LayoutError::IdTooLarge {
                    key: k(),
                    id,
                    max: MAX_IDS - 1,
                });
            }
            Ok(id)
        })
        .collect()
}

/// The ids in `ids` of the exact portless keys of IPv4 addresses `addrs`
/// (ascending, each once).
fn exact_ids4_of(ids: &Ids, addrs: impl ExactSizeIterator<Item = u32>) -> Vec<Option<u32>> {
    if addrs.len() < ids.len() / 4 {
        return addrs.map(|a| ids.get_exact4(a)).collect();
    }
    // `addr << 32 | id` of every such key of `ids`, by address.
    let mut pairs: Vec<u64> = Vec::with_capacity(addrs.len());
    for (a, id) in ids.exact4() {
        pairs.push(((a as u64) << 32) | id as u64);
    }
    radix::sort_by_bits(&mut pairs, 32, 64);
    let mut out = Vec::with_capacity(addrs.len());
    let mut j = 0;
    for a in addrs {
        while j < pairs.len() && ((pairs[j] >> 32) as u32) < a {
            j += 1;
        }
        out.push((j < pairs.len() && (pairs[j] >> 32) as u32 == a).then(|| pairs[j] as u32));
    }
    out
}

/// A fresh build's catalog entries other than exact portless ones: (id,
/// key, value) of every key as first seen, then the keys whose value a
/// duplicate changed (drop wins).
type BuildCatalog = Vec<(u32, IdKey, Val)>;

/// The model of a fresh build, straight from the set: duplicates merged
/// (drop wins), the B-trees of records and nets built at once. Exact
/// portless entries (most of a big set) are collected, sorted by address
/// and merged there, and go into the records in address order: no hash
/// map of them, and their ids are looked up in address order.
fn model_of(set: &EntrySet, ids: &Ids) -> Result<([Family; 2], Counts, BuildCatalog)> {
    let mut fams = [Family::new(32), Family::new(128)];
    let mut seen = vec![0u64; (MAX_IDS as usize).div_ceil(64)];
    let mut mark = |id: u32, k: &IdKey| -> Result<()> {
        let (w, b) = ((id / 64) as usize, id % 64);
        if seen[w] & (1 << b) != 0 {
            return Err(LayoutError::DuplicateId {
                id,
                a: other_key(ids, id, k),
                b: *k,
            });
        }
        seen[w] |= 1 << b;
        Ok(())
    };
    for f in &mut fams {
        f.begin_bulk();
    }
    let mut cnt = Counts::default();
    let mut cat: BuildCatalog = Vec::with_capacity(set.allow.len());
    let mut merged: BuildCatalog = Vec::new();
    for n in &set.allow {
        let k = IdKey::Allow(n.trunc());
        let (f, net, _) = parts(&k);
        if fams[f].allow.contains_key(&net) {
            continue;
        }
        let id = id_in(ids, &k)?;
        mark(id, &k)?;
        cnt.ids = cnt.ids.max(id as u64 + 1);
        cnt.ids6 += f as u64;
        fams[f].set_allow(net, Some(id));
        cat.push((id, k, Val::Allow(id)));
    }
    // Exact portless entries: IPv4 as `addr << 1 | drop`, IPv6 as
    // (addr, drop).
    let mut ex4: Vec<u64> = Vec::with_capacity(set.entries.len());
    let mut ex6: Vec<(u128, bool)> = Vec::new();
    for e in &set.entries {
        let drop = e.action == Action::Drop;
        if e.port.is_none() {
            match e.net {
                IpNet::V4(n) if n.prefix_len() == 32 => {
                    ex4.push(((u32::from(n.addr()) as u64) << 1) | drop as u64);
                    continue;
                }
                IpNet::V6(n) if n.prefix_len() == 128 => {
                    ex6.push((u128::from(n.addr()), drop));
                    continue;
                }
                _ => {}
            }
        }
        let k = IdKey::Entry(EntryKey {
            net: e.net.trunc(),
            port: e.port,
        });
        let (f, net, port) = parts(&k);
        let fam = &mut fams[f];
        match fam.entry(net, port) {
            Some((d, id)) => {
                if drop && !d {
                    fam.set_entry(net, port, Some((true, id)));
                    merged.push((id, k, Val::Entry { drop, id }));
                }
            }
            None => {
                let id = id_in(ids, &k)?;
                mark(id, &k)?;
                cnt.ids = cnt.ids.max(id as u64 + 1);
                cnt.ids6 += f as u64;
                cnt.ported += port.is_some() as u64;
                fam.set_entry(net, port, Some((drop, id)));
                cat.push((id, k, Val::Entry { drop, id }));
            }
        }
    }
    radix::sort_by_bits(&mut ex4, 0, 33);
    // One per address, drop merged: `addr << 1 | drop`.
    let mut w = 0;
    for i in 0..ex4.len() {
        let x = ex4[i];
        if w > 0 && ex4[w - 1] >> 1 == x >> 1 {
            ex4[w - 1] |= x & 1;
        } else {
            ex4[w] = x;
            w += 1;
        }
    }
    ex4.truncate(w);
    let ids4 = exact_ids4(ids, &ex4)?;
    fams[0].reserve_exact(ex4.len());
    for (&x, &id) in ex4.iter().zip(&ids4) {
        let a = (x >> 1) as u32;
        mark(id, &exact_key4(a))?;
        cnt.ids = cnt.ids.max(id as u64 + 1);
        fams[0].bulk_exact(a as u128, (x & 1 != 0, id));
    }
    drop(ex4);
    ex6.sort_unstable();
    fams[1].reserve_exact(ex6.len());
    let mut i = 0;
    while i < ex6.len() {
        let a = ex6[i].0;
        let mut drop = false;
        while i < ex6.len() && ex6[i].0 == a {
            drop |= ex6[i].1;
            i += 1;
        }
        let k = IdKey::Entry(EntryKey {
            net: IpNet::V6(Ipv6Net::from(Ipv6Addr::from(a))),
            port: None,
        });
        let id = id_in(ids, &k)?;
        mark(id, &k)?;
        cnt.ids = cnt.ids.max(id as u64 + 1);
        cnt.ids6 += 1;
        fams[1].bulk_exact(a, (drop, id));
    }
    for f in &mut fams {
        f.end_bulk();
    }
    cnt.records4 = fams[0].records.len() as u64;
    cnt.records6 = fams[1].records.len() as u64;
    cnt.nets4 = fams[0].nets.len() as u64;
    cnt.nets6 = fams[1].nets.len() as u64;
    cat.extend(merged);
    Ok((fams, cnt, cat))
}

/// What an update touches, found from its key changes (or, for a fresh
/// build, everything).
#[derive(Default)]
struct Touched {
    /// Addresses whose record may change.
    recs: [Vec<u128>; 2],
    /// Ranges of changed nets (their `/16`s, trie nodes and the records
    /// inside them).
    regions: [Vec<(u128, u128)>; 2],
    /// Nets of the prefix structure that came or went, each with whether
    /// it was present before the update. One update may take a net out
    /// and put it back (a key removed, another added at the same net), so
    /// the first entry of a net holds its presence before, and the model
    /// its presence after.
    nets: [Vec<(Net, bool)>; 2],
    /// Ids whose catalog word changes, with their new key.
    cat: Vec<(u32, Option<(IdKey, Val)>)>,
}

/// The meta of a decision without a port list (allow, or no ports).
fn direct_meta(d: &Decision) -> u32 {
    if d.code == CODE_NONE {
        0
    } else {
        meta(d.code, d.id, 0)
    }
}

/// The `IpNet` of a model net of family `f`.
fn ipnet(f: usize, n: Net) -> IpNet {
    let a = if f == 0 {
        IpAddr::V4(Ipv4Addr::from(n.addr as u32))
    } else {
        IpAddr::V6(Ipv6Addr::from(n.addr))
    };
    IpNet::new(a, n.len).expect("a model net has a valid length")
}

/// The port match of a port key (`port_key`'s inverse).
fn port_match(key: u32) -> PortMatch {
    PortMatch {
        proto: if (key >> 17) as u8 == PROTO_TCP {
            Proto::Tcp
        } else {
            Proto::Udp
        },
        side: if (key >> 16) & 1 == SIDE_DST as u32 {
            Side::Dst
        } else {
            Side::Src
        },
        port: key as u16,
    }
}

/// A catalog word and, for IPv6, its address slot and address.
type CatalogEntry = (u64, Option<(u32, [u8; 16])>);

/// The state of one record.
#[derive(Clone, Debug)]
struct Rec {
    runs: Vec<Run>,
    decision: Decision,
}

/// The state of one folded trie node.
#[derive(Clone, Debug)]
struct Node {
    decision: Decision,
    runs: Vec<Run>,
}

/// Which phase of a plan a store belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Unreachable memory: new lines, IPv6 slot addresses, inactive trie.
    Stage,
    /// Records: inserts, changes, spill bits.
    Publish,
    /// The prefix structure: directory words, the trie generation.
    Switch,
    /// Record removals, summary bits and flags cleared.
    Remove,
    /// After the last grace period: the now inactive trie generation.
    Post,
}

/// Stores being collected for a plan, each also applied to the image.
struct Phases {
    record: bool,
    /// Relocations: complete steps that run before everything else.
    prefix: Vec<Step>,
    stage: Vec<Write>,
    publish: Vec<Write>,
    switch: Vec<Write>,
    remove: Vec<Write>,
    post: Vec<Write>,
    staged_addr6: bool,
}

impl Phases {
    fn new(record: bool) -> Phases {
        Phases {
            record,
            prefix: Vec::new(),
            stage: Vec::new(),
            publish: Vec::new(),
            switch: Vec::new(),
            remove: Vec::new(),
            post: Vec::new(),
            staged_addr6: false,
        }
    }

    fn push(&mut self, t: &mut Tables, p: Phase, w: Write) {
        t.apply(&w);
        if !self.record {
            return;
        }
        if matches!(w, Write::Addr6 { .. }) {
            self.staged_addr6 = true;
        }
        match p {
            Phase::Stage => self.stage.push(w),
            Phase::Publish => self.publish.push(w),
            Phase::Switch => self.switch.push(w),
            Phase::Remove => self.remove.push(w),
            Phase::Post => self.post.push(w),
        }
    }
}

/// Turns entry sets into v2 tables and updates into plans; keeps the image
/// of what the kernel holds once every plan so far has been applied.
#[derive(Clone, Debug)]
pub struct Compiler {
    geo: Geometry,
    tables: Tables,
    fam: [Family; 2],
    place4: Placement<u32>,
    place6: Placement<u128>,
    heap: Heap,
    /// Records with a port list (the others are their slot's meta).
    rec: [FxHashMap<u128, Rec>; 2],
    ranges4: Vec<Option<Vec<(u16, Decision)>>>,
    blocks4: Vec<Vec<Run>>,
    nodes: [BTreeMap<Net, Node>; 2],
    x6: FxHashMap<u32, u32>,
    p6: FxHashMap<u32, u32>,
    cat6: Slots,
    cat6_of: FxHashMap<u32, u32>,
    /// Spill bits new records' placements set, written after their slots.
    planned_flips: [FxHashMap<u128, u32>; 2],
    /// IPv6 keys (catalog addresses in use).
    keys6: u64,
    /// Summary words an update changed (word, value before), and whether
    /// to note them.
    sum_dirty: [Vec<(u32, u64)>; 2],
    track_sums: bool,
    poisoned: bool,
    /// Tests only: let the exact tables run past load 1/2 (to spill).
    lax: bool,
}

/// Widths of the two families.
const WIDTH: [u8; 2] = [32, 128];

impl Compiler {
    /// Compile `set` with `ids` into fresh tables of geometry `geo` (no
    /// plan: the tables are written whole, before the program uses them).
    pub fn build(set: &EntrySet, ids: &Ids, geo: Geometry) -> Result<Compiler> {
        Self::build_with(set, ids, |_| geo, false)
    }

    /// [`Compiler::build`] with the geometry chosen from the set's counts
    /// (e.g. `|c| Geometry::for_counts(c, headroom, seed)`): one pass over
    /// the set instead of [`counts`] and then the build.
    pub fn build_for(
        set: &EntrySet,
        ids: &Ids,
        geometry: impl FnOnce(&Counts) -> Geometry,
    ) -> Result<Compiler> {
        Self::build_with(set, ids, geometry, false)
    }

    /// [`Compiler::build`] whose exact tables may run past load 1/2, so
    /// tests see keys spill to their second bucket.
    #[cfg(test)]
    pub(crate) fn build_lax(set: &EntrySet, ids: &Ids, geo: Geometry) -> Result<Compiler> {
        Self::build_with(set, ids, |_| geo, true)
    }

    fn build_with(
        set: &EntrySet,
        ids: &Ids,
        geometry: impl FnOnce(&Counts) -> Geometry,
        lax: bool,
    ) -> Result<Compiler> {
        // Input errors (ids) are reported as a pass over the set in its
        // order finds them first.
        let (fams, cnt, cat) =
            model_of(set, ids).map_err(|e| first_input_error(set, ids).unwrap_or(e))?;
        let mut c = Compiler::empty(geometry(&cnt));
        c.lax = lax;
        c.fam = fams;
        c.check(&cnt)?;
        c.keys6 = cnt.ids6;
        let mut t = Touched::default();
        #[allow(clippy::needless_range_loop)] // f indexes four parallel arrays
        for f in 0..2 {
            t.recs[f] = c.fam[f].records.iter().map(|(a, _)| a).collect();
            t.nets[f] = c.fam[f].nets.keys().map(|&n| (n, false)).collect();
            t.regions[f] = t.nets[f]
                .iter()
                .map(|(n, _)| (n.addr, n.last(WIDTH[f])))
                .collect();
        }
        for (id, k, v) in cat {
            let (word, addr6) = c.catalog_entry(id, &k, v)?;
            c.tables.catalog[id as usize] = word;
            if let Some((i, a)) = addr6 {
                c.tables.catalog6[i as usize] = a;
            }
        }
        // The exact entries' catalog words, in address order (in id order
        // too for ids handed out to a fresh set).
        let recs4 = std::mem::replace(&mut c.fam[0].records, Records::new(32));
        for (a, e) in recs4.iter() {
            if let Some((drop, id)) = e.plain {
                let flags = if drop { CAT_USED | CAT_DROP } else { CAT_USED };
                c.tables.catalog[id as usize] = catalog_word(flags, 32, 0, a as u32);
            }
        }
        c.fam[0].records = recs4;
        let exact6: Vec<(u128, (bool, u32))> = c.fam[1]
            .records
            .iter()
            .filter_map(|(a, e)| e.plain.map(|v| (a, v)))
            .collect();
        for (a, (drop, id)) in exact6 {
            let k = IdKey::Entry(EntryKey {
                net: IpNet::V6(Ipv6Net::from(Ipv6Addr::from(a))),
                port: None,
            });
            let (word, addr6) = c.catalog_entry(id, &k, Val::Entry { drop, id })?;
            c.tables.catalog[id as usize] = word;
            if let Some((i, a)) = addr6 {
                c.tables.catalog6[i as usize] = a;
            }
        }
        let r = c.apply_touched(t, false);
        if r.is_err() {
            c.poisoned = true;
        }
        r?;
        Ok(c)
    }

    /// Every key of the model with its value.
    fn keys(&self) -> impl Iterator<Item = (IdKey, Val)> + '_ {
        self.keys_but(false)
    }

    /// [`Compiler::keys`], without the exact portless IPv4 ones if
    /// `no_exact4`.
    fn keys_but(&self, no_exact4: bool) -> impl Iterator<Item = (IdKey, Val)> + '_ {
        (0..2).flat_map(move |f| {
            let fam = &self.fam[f];
            let allow = fam
                .allow
                .iter()
                .map(move |(n, &id)| (IdKey::Allow(ipnet(f, *n)), Val::Allow(id)));
            let plain = fam.plain.iter().map(move |(n, &(drop, id))| {
                (
                    IdKey::Entry(EntryKey {
                        net: ipnet(f, *n),
                        port: None,
                    }),
                    Val::Entry { drop, id },
                )
            });
            let skip = if f == 0 && no_exact4 { 0 } else { usize::MAX };
            let exact = fam.records.iter().take(skip).filter_map(move |(a, e)| {
                e.plain.map(|(drop, id)| {
                    (
                        IdKey::Entry(EntryKey {
                            net: ipnet(
                                f,
                                Net {
                                    addr: a,
                                    len: WIDTH[f],
                                },
                            ),
                            port: None,
                        }),
                        Val::Entry { drop, id },
                    )
                })
            });
            let ported = fam.ported.iter().flat_map(move |(n, m)| {
                m.iter().map(move |(&key, &(drop, id))| {
                    (
                        IdKey::Entry(EntryKey {
                            net: ipnet(f, *n),
                            port: Some(port_match(key)),
                        }),
                        Val::Entry { drop, id },
                    )
                })
            });
            allow.chain(plain).chain(exact).chain(ported)
        })
    }

    /// The value of `k` in the model.
    fn value(&self, k: &IdKey) -> Option<Val> {
        let (f, net, port) = parts(k);
        match k {
            IdKey::Allow(_) => self.fam[f].allow.get(&net).map(|&id| Val::Allow(id)),
            IdKey::Entry(_) => self.fam[f]
                .entry(net, port)
                .map(|(drop, id)| Val::Entry { drop, id }),
        }
    }

    fn empty(geo: Geometry) -> Compiler {
        Compiler {
            geo,
            tables: Tables::new(&geo),
            fam: [Family::new(32), Family::new(128)],
            place4: Placement::new(geo.buckets4, SLOTS4 as u32),
            place6: Placement::new(geo.buckets6, 3),
            heap: Heap::new(geo.heap_lines),
            rec: Default::default(),
            ranges4: vec![None; DIR4_ENTRIES as usize],
            blocks4: vec![Vec::new(); DIR4_ENTRIES as usize],
            nodes: Default::default(),
            x6: FxHashMap::default(),
            p6: FxHashMap::default(),
            cat6: Slots::new(geo.catalog6),
            cat6_of: FxHashMap::default(),
            planned_flips: Default::default(),
            keys6: 0,
            sum_dirty: Default::default(),
            track_sums: false,
            poisoned: false,
            lax: false,
        }
    }

    /// The tables as they are once every plan so far has been applied.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Read the kernel's maps, which hold this compiler's tables, instead
    /// of its own copy of them (see [`Tables::rebase`]): from then on each
    /// plan must be applied and then [`Compiler::settle`]d.
    pub fn rebase(&mut self, maps: &Backings) -> Result<()> {
        Ok(self.tables.rebase(maps)?)
    }

    /// The last plan has been applied to the maps: check they hold what it
    /// stored and forget the stores (a no-op for a compiler with its own
    /// copy). On an error the compiler no longer matches the maps.
    pub fn settle(&mut self) -> Result<()> {
        let r = self.tables.settle();
        if r.is_err() {
            self.poisoned = true;
        }
        Ok(r?)
    }

    /// The geometry.
    pub fn geometry(&self) -> &Geometry {
        &self.geo
    }

    /// Heap lines in use.
    pub fn heap_used(&self) -> u64 {
        self.heap.used
    }

    /// Shrink the heap of a fresh build to `headroom` times the lines it
    /// has handed out (a power of two, at least 1024): build with a
    /// generous heap, then fit it, since how many lines a set needs is
    /// known only once it is compiled. Lines keep their indexes.
    pub fn fit_heap(&mut self, headroom: f64) {
        let high = self.heap.high_water() as f64;
        let cap = ((high * headroom.max(1.0)).ceil() as u64)
            .max(1024)
            .next_power_of_two()
            .min(self.geo.heap_lines as u64) as u32;
        if cap as u64 >= self.heap.high_water() as u64 {
            self.geo.heap_lines = cap;
            self.heap.set_cap(cap);
            self.tables.heap.truncate(cap as usize);
        }
    }

    /// Records per family.
    pub fn records(&self) -> [usize; 2] {
        [self.place4.len(), self.place6.len()]
    }

    /// The plan that takes the tables to `set` with `ids`. The caller
    /// must apply all of it (stores in order, a grace period at every
    /// [`Step::Grace`]) before the next update. On an error the compiler
    /// and the tables are unchanged for capacity and id errors (checked
    /// first); a rare mid-way failure (both buckets of a key full, heap
    /// fragmentation) leaves the compiler poisoned: build the next tier.
    pub fn update(&mut self, set: &EntrySet, ids: &Ids) -> Result<Plan> {
        if self.poisoned {
            return Err(LayoutError::Poisoned);
        }
        let new = spec_of(set, ids)?;
        let mut changes = Vec::new();
        // Exact portless IPv4 keys (`addr << 32 | drop << 31 | id`) are
        // compared with the records in address order, not looked up one
        // by one.
        let mut ex4: Vec<u64> = Vec::new();
        for (k, v) in &new {
            if let (Some(a), Val::Entry { drop, id }) = (exact_addr4(k), v) {
                ex4.push(((a as u64) << 32) | ((*drop as u64) << 31) | *id as u64);
                continue;
            }
            match self.value(k) {
                Some(old) if old == *v => {}
                old => changes.push((*k, old, Some(*v))),
            }
        }
        radix::sort_by_bits(&mut ex4, 32, 64);
        let mut old4 = self.fam[0]
            .records
            .iter()
            .filter_map(|(a, e)| {
                e.plain
                    .map(|(drop, id)| (a as u32, Val::Entry { drop, id }))
            })
            .peekable();
        for x in ex4 {
            let a = (x >> 32) as u32;
            let v = Val::Entry {
                drop: (x >> 31) & 1 != 0,
                id: x as u32 & 0x7fff_ffff,
            };
            while let Some(&(b, o)) = old4.peek()
                && b < a
            {
                changes.push((exact_key4(b), Some(o), None));
                old4.next();
            }
            let old = old4.next_if(|&(b, _)| b == a).map(|(_, o)| o);
            if old != Some(v) {
                changes.push((exact_key4(a), old, Some(v)));
            }
        }
        for (b, o) in old4 {
            changes.push((exact_key4(b), Some(o), None));
        }
        for (k, v) in self.keys_but(true) {
            if !new.contains_key(&k) {
                changes.push((k, Some(v), None));
            }
        }
        changes.sort_by_key(|c| c.0);
        self.check_changes(&changes)?;
        self.apply(changes, true)
    }

    /// [`Compiler::update`] from key changes instead of a whole set: each
    /// key gets its value (`None` removes it), so the work is in
    /// proportion to the changes (the agent's `SetChanges`, with the ids
    /// of new keys). Keys are normalised here; a key listed twice takes
    /// its last value. Errors as for [`Compiler::update`]; an id already
    /// held by another key that stays is a [`LayoutError::DuplicateId`].
    pub fn update_changes(&mut self, changes: &[(IdKey, Option<KeyValue>)]) -> Result<Plan> {
        if self.poisoned {
            return Err(LayoutError::Poisoned);
        }
        let mut list: Vec<(IdKey, Option<Val>)> = changes
            .iter()
            .map(|(k, v)| {
                let k = match k {
                    IdKey::Allow(n) => IdKey::Allow(n.trunc()),
                    IdKey::Entry(e) => IdKey::Entry(EntryKey {
                        net: e.net.trunc(),
                        port: e.port,
                    }),
                };
                (k, *v)
            })
            .collect();
        // The last value of each key.
        list.reverse();
        list.sort_by_key(|c| c.0);
        list.dedup_by_key(|c| c.0);
        let mut out = Vec::with_capacity(list.len());
        for (k, v) in list {
            if let Some(v) = v {
                match (k, v) {
                    (IdKey::Allow(_), Val::Allow(_)) | (IdKey::Entry(_), Val::Entry { .. }) => {}
                    _ => return Err(LayoutError::Decode(format!("{k:?} cannot take {v:?}"))),
                }
                if v.id() >= MAX_IDS {
                    return Err(LayoutError::IdTooLarge {
                        key: k,
                        id: v.id(),
                        max: MAX_IDS - 1,
                    });
                }
            }
            let old = self.value(&k);
            if old != v {
                out.push((k, old, v));
            }
        }
        // Ids: a new one must be free once the removals are done.
        let freed: FxHashSet<u32> = out
            .iter()
            .filter_map(|(_, o, n)| {
                o.filter(|o| n.is_none_or(|n| n.id() != o.id()))
                    .map(|o| o.id())
            })
            .collect();
        let mut taken: FxHashMap<u32, IdKey> = FxHashMap::default();
        for (k, o, n) in &out {
            let Some(n) = n else { continue };
            if o.is_some_and(|o| o.id() == n.id()) {
                continue;
            }
            let id = n.id();
            let held = (id as usize) < self.tables.catalog.len()
                && self.tables.catalog[id as usize] != 0
                && !freed.contains(&id);
            if let Some(a) = taken.insert(id, *k) {
                return Err(LayoutError::DuplicateId { id, a, b: *k });
            }
            if held {
                let a = self
                    .keys()
                    .find(|(_, v)| v.id() == id)
                    .map_or(*k, |(a, _)| a);
                return Err(LayoutError::DuplicateId { id, a, b: *k });
            }
        }
        self.check_changes(&out)?;
        self.apply(out, true)
    }

    /// Refuse changes that take the set past the tier, before touching
    /// anything: the counts after the changes, from the model's reference
    /// counts of the records and nets they touch.
    fn check_changes(&self, changes: &[(IdKey, Option<Val>, Option<Val>)]) -> Result<()> {
        // Deltas per record address and per net, summed after a sort: the
        // model's B-trees are then read in key order (neighbouring keys
        // share the upper nodes in cache), where a hash map's order made
        // each lookup a walk of cold nodes (a third of `update_changes`
        // at 1M).
        let mut rec: [Vec<(u128, i64)>; 2] = Default::default();
        let mut nets: [Vec<(Net, i64)>; 2] = Default::default();
        let mut c = Counts {
            records4: self.fam[0].records.len() as u64,
            records6: self.fam[1].records.len() as u64,
            nets4: self.fam[0].nets.len() as u64,
            nets6: self.fam[1].nets.len() as u64,
            ids6: self.keys6,
            ..Counts::default()
        };
        let mut ids6 = self.keys6 as i64;
        for (k, o, n) in changes {
            let (f, net, _) = parts(k);
            if let Some(n) = n {
                c.ids = c.ids.max(n.id() as u64 + 1);
            }
            let d = match (o, n) {
                (None, Some(_)) => 1,
                (Some(_), None) => -1,
                _ => 0,
            };
            if d == 0 {
                continue;
            }
            if f == 1 {
                ids6 += d;
            }
            if matches!(k, IdKey::Entry(_)) && net.len == WIDTH[f] {
                rec[f].push((net.addr, d));
            } else {
                nets[f].push((net, d));
            }
        }
        c.ids6 = ids6.max(0) as u64;
        for f in 0..2 {
            let rec = summed(std::mem::take(&mut rec[f]));
            let nets = summed(std::mem::take(&mut nets[f]));
            let (mut up, mut down) = (0u64, 0u64);
            for (a, d) in &rec {
                let before = self.fam[f].records.get(*a).map_or(0, |e| e.refs) as i64;
                match (before > 0, before + d > 0) {
                    (false, true) => up += 1,
                    (true, false) => down += 1,
                    _ => {}
                }
            }
            let r = if f == 0 {
                &mut c.records4
            } else {
                &mut c.records6
            };
            *r = *r + up - down;
            let (mut up, mut down) = (0u64, 0u64);
            for (n, d) in &nets {
                let before = self.fam[f].nets.get(n).copied().unwrap_or(0) as i64;
                match (before > 0, before + d > 0) {
                    (false, true) => up += 1,
                    (true, false) => down += 1,
                    _ => {}
                }
            }
            let r = if f == 0 { &mut c.nets4 } else { &mut c.nets6 };
            *r = *r + up - down;
        }
        self.check(&c)
    }

    /// Refuse a set the tier cannot hold, before touching anything.
    fn check(&self, c: &Counts) -> Result<()> {
        let g = &self.geo;
        let checks = [
            ("IPv4 exact records", c.records4, g.capacity4()),
            ("IPv6 exact records", c.records6, g.capacity6()),
            ("entry ids", c.ids, g.ids as u64),
            ("IPv6 catalog addresses", c.ids6, g.catalog6 as u64),
            ("IPv6 trie nodes", c.nets6, g.trie_nodes6 as u64),
            (
                "IPv4 trie nodes",
                if g.trie4 { c.nets4 } else { 0 },
                g.trie_nodes4 as u64,
            ),
        ];
        for (what, need, have) in checks {
            if self.lax && what.contains("exact") {
                continue;
            }
            if need > have {
                return Err(LayoutError::Capacity { what, need, have });
            }
        }
        Ok(())
    }

    fn apply(
        &mut self,
        changes: Vec<(IdKey, Option<Val>, Option<Val>)>,
        record: bool,
    ) -> Result<Plan> {
        let r = self.apply_inner(changes, record);
        if r.is_err() {
            self.poisoned = true;
        }
        for f in &mut self.fam {
            f.compact();
        }
        r
    }

    fn apply_inner(
        &mut self,
        changes: Vec<(IdKey, Option<Val>, Option<Val>)>,
        record: bool,
    ) -> Result<Plan> {
        let mut t = Touched::default();
        // 1. The model.
        for (key, old, new) in &changes {
            let (f, net, port) = parts(key);
            let fam = &mut self.fam[f];
            let had_net = fam.nets.contains_key(&net);
            match key {
                IdKey::Allow(_) => fam.set_allow(net, new.map(|v| v.id())),
                IdKey::Entry(_) => fam.set_entry(
                    net,
                    port,
                    new.map(|v| match v {
                        Val::Entry { drop, id } => (drop, id),
                        Val::Allow(id) => (false, id),
                    }),
                ),
            }
            if had_net != fam.nets.contains_key(&net) {
                t.nets[f].push((net, had_net));
            }
            if matches!(key, IdKey::Entry(_)) && net.len == WIDTH[f] {
                t.recs[f].push(net.addr);
            } else {
                t.regions[f].push((net.addr, net.last(WIDTH[f])));
            }
            if f == 1 {
                self.keys6 = self.keys6 + new.is_some() as u64 - old.is_some() as u64;
            }
            if let Some(o) = old {
                t.cat.push((o.id(), None));
            }
            if let Some(n) = new {
                t.cat.push((n.id(), Some((*key, *n))));
            }
        }
        for f in 0..2 {
            for &(lo, hi) in &t.regions[f] {
                t.recs[f].extend(self.fam[f].records_within(lo, hi));
            }
        }
        self.apply_touched(t, record)
    }

    /// Everything after the model: records, the prefix structures,
    /// summaries, catalog, and the plan.
    fn apply_touched(&mut self, mut t: Touched, record: bool) -> Result<Plan> {
        let mut ph = Phases::new(record);
        // Summary words changed by this update, with their old values.
        self.sum_dirty = [Vec::new(), Vec::new()];
        self.track_sums = record;
        let old_flags = self.tables.config.flags;
        for f in 0..2 {
            t.recs[f].sort_unstable();
            t.recs[f].dedup();
            // Stable: the first entry of each net is kept.
            t.nets[f].sort_by_key(|&(n, _)| n);
            t.nets[f].dedup_by_key(|&mut (n, _)| n);
        }
        // One catalog change per id: the new key if there is one.
        t.cat.sort_unstable_by_key(|(id, new)| (*id, new.is_none()));
        t.cat.dedup_by_key(|(id, _)| *id);
        let Touched {
            recs,
            regions,
            nets: nets_changed,
            cat,
        } = t;

        // 2. Records. First place every new record, before anything is
        // written: a key whose two buckets are full makes room by moving
        // a key this update does not touch (its record, as readers see it
        // now, is copied ahead of the plan).
        // A fresh build places its IPv4 records in bulk, after the ranges.
        let bulk4 = !record && self.place4.len() == 0;
        // Whether each touched address has a record in the new set.
        let present: [Vec<bool>; 2] = [0, 1].map(|f| {
            if !record {
                vec![true; recs[f].len()]
            } else {
                recs[f].iter().map(|&a| self.fam[f].has_record(a)).collect()
            }
        });
        for (f, rs) in recs.iter().enumerate() {
            if f == 0 && bulk4 {
                continue;
            }
            for (&a, &p) in rs.iter().zip(&present[f]) {
                if p && self.position(f, a).is_none() {
                    self.place_new(f, a, rs, &mut ph)?;
                }
            }
        }

        // 3. IPv4 /16 directory (records are decided from its ranges).
        let mut his: Vec<u32> = Vec::new();
        for &(lo, hi) in &regions[0] {
            his.extend((lo >> 16) as u32..=(hi >> 16) as u32);
        }
        his.sort_unstable();
        his.dedup();
        for h in his {
            self.rebuild16(h, &mut ph)?;
        }

        // Then record inserts and changes (their stores see the spill bits
        // as they were), removals last.
        for (f, rs) in recs.iter().enumerate() {
            if f == 0 && bulk4 {
                self.build_records4(rs, &mut ph)?;
                continue;
            }
            for (&a, &p) in rs.iter().zip(&present[f]) {
                if p {
                    self.upsert_record(f, a, &mut ph)?;
                }
            }
            for (&a, &p) in rs.iter().zip(&present[f]) {
                if !p {
                    self.remove_record(f, a, &mut ph);
                }
            }
        }

        // 4. Folded tries.
        let gen_ = self.tables.config.generation & 1;
        let mut trie_changed = false;
        for (f, rs) in regions.iter().enumerate() {
            if f == 0 && !self.geo.trie4 {
                continue;
            }
            let mut nets: BTreeSet<Net> = BTreeSet::new();
            for &(lo, hi) in rs {
                nets.extend(self.fam[f].nets_within(lo, hi));
                nets.extend(
                    self.nodes[f]
                        .range(Net { addr: lo, len: 0 }..=Net { addr: hi, len: 128 })
                        .map(|(n, _)| *n),
                );
            }
            for n in nets {
                let new = self.fam[f].nets.contains_key(&n).then(|| {
                    self.fam[f].decide(
                        n.addr,
                        Scope {
                            max_len: n.len,
                            exact: false,
                        },
                    )
                });
                let old = self.nodes[f].get(&n);
                if old.map(|o| &o.decision) == new.as_ref() {
                    continue;
                }
                if let Some(o) = self.nodes[f].remove(&n) {
                    for r in o.runs {
                        self.heap.free(r);
                    }
                }
                let value = match new {
                    Some(d) => {
                        let (m, runs) = self.encode(f, &d, &mut ph)?;
                        self.nodes[f].insert(n, Node { decision: d, runs });
                        Some(m as u64)
                    }
                    None => None,
                };
                trie_changed = true;
                let v6 = f == 1;
                if record {
                    let w = |g| Write::Trie {
                        v6,
                        generation: g,
                        net: key_of(n),
                        value,
                    };
                    ph.push(&mut self.tables, Phase::Stage, w(gen_ ^ 1));
                    ph.push(&mut self.tables, Phase::Post, w(gen_));
                } else {
                    for g in 0..2 {
                        let w = Write::Trie {
                            v6,
                            generation: g,
                            net: key_of(n),
                            value,
                        };
                        ph.push(&mut self.tables, Phase::Stage, w);
                    }
                }
            }
        }
        if record && trie_changed {
            let g = self.tables.config.generation ^ 1;
            ph.push(&mut self.tables, Phase::Switch, Write::Generation(g));
        }

        // 5. IPv6 summary P bits and the short-prefix flag.
        for &(n, was) in &nets_changed[1] {
            let present = self.fam[1].nets.contains_key(&n);
            if n.len < 32 || present == was {
                continue;
            }
            let block = self.block6(n.addr);
            let c = self.p6.entry(block).or_insert(0);
            let before = *c;
            if present {
                *c += 1;
            } else {
                *c -= 1;
            }
            let after = *c;
            if after == 0 {
                self.p6.remove(&block);
            }
            if (before == 0) != (after == 0) {
                self.set_bit6(block, SUM_P, after > 0);
            }
        }
        let short = self.fam[1].shortest_net().is_some_and(|l| l < 32);
        let flags = if short {
            old_flags | V2_SHORT6
        } else {
            old_flags & !V2_SHORT6
        };

        // 6. Catalog.
        for (id, new) in cat {
            let (word, addr6) = match new {
                Some((k, v)) => self.catalog_entry(id, &k, v)?,
                None => {
                    if let Some(i) = self.cat6_of.remove(&id) {
                        self.cat6.free(i);
                    }
                    (0, None)
                }
            };
            if let Some((i, a)) = addr6
                && self.tables.catalog6[i as usize] != a
            {
                ph.push(
                    &mut self.tables,
                    Phase::Stage,
                    Write::Catalog6 { index: i, addr: a },
                );
            }
            if self.tables.catalog[id as usize] != word {
                let p = if word == 0 {
                    Phase::Remove
                } else {
                    Phase::Publish
                };
                ph.push(&mut self.tables, p, Write::Catalog { id, value: word });
            }
        }

        // 7. Summary words and flags: the union first, the final value after
        // the removals.
        self.track_sums = false;
        for (v, dirty) in std::mem::take(&mut self.sum_dirty).into_iter().enumerate() {
            let mut dirty = dirty;
            // The first old value of each word.
            dirty.sort_by_key(|&(w, _)| w);
            dirty.dedup_by_key(|&mut (w, _)| w);
            for (w, old) in dirty {
                let new = if v == 0 {
                    self.tables.sum4[w as usize]
                } else {
                    self.tables.sum6[w as usize]
                };
                if old != new {
                    self.summary_writes(&mut ph, v == 0, w, old, new);
                }
            }
        }
        if flags != old_flags {
            if flags | old_flags != old_flags {
                ph.push(
                    &mut self.tables,
                    Phase::Stage,
                    Write::Flags(flags | old_flags),
                );
            }
            if flags != flags | old_flags {
                ph.push(&mut self.tables, Phase::Remove, Write::Flags(flags));
            }
        }

        // 8. The plan.
        let trailing = self.heap.holding() || self.place6.holding() || !ph.post.is_empty();
        let mut steps = std::mem::take(&mut ph.prefix);
        let any_before_switch = !ph.stage.is_empty() || !ph.publish.is_empty();
        if !ph.stage.is_empty() {
            steps.push(Step::Writes(std::mem::take(&mut ph.stage)));
        }
        if ph.staged_addr6 {
            steps.push(Step::Grace);
        }
        let published = !ph.publish.is_empty();
        if published {
            steps.push(Step::Writes(std::mem::take(&mut ph.publish)));
        }
        let switched = !ph.switch.is_empty();
        if switched {
            if published {
                steps.push(Step::Grace);
            }
            steps.push(Step::Writes(std::mem::take(&mut ph.switch)));
        }
        if !ph.remove.is_empty() {
            if switched {
                steps.push(Step::Grace);
            }
            steps.push(Step::Writes(std::mem::take(&mut ph.remove)));
        }
        if record && trailing {
            steps.push(Step::Grace);
            if !ph.post.is_empty() {
                steps.push(Step::Writes(std::mem::take(&mut ph.post)));
            }
        }
        let _ = any_before_switch;
        self.heap.release();
        self.place4.release();
        self.place6.release();
        self.cat6.release();
        Ok(Plan { steps })
    }

    /// The stores of a changed summary word: `old | new` before anything
    /// reads the new state, `new` with the removals.
    fn summary_writes(&mut self, ph: &mut Phases, v4: bool, word: u32, old: u64, new: u64) {
        let mk = |value| {
            if v4 {
                Write::Sum4 { word, value }
            } else {
                Write::Sum6 { word, value }
            }
        };
        if !ph.record {
            return;
        }
        if old | new != old {
            ph.stage.push(mk(old | new));
        }
        if new != old | new {
            ph.remove.push(mk(new));
        }
    }

    fn block4(&self, a: u128) -> u32 {
        (a as u32) >> (32 - self.geo.sum4_bits)
    }

    fn block6(&self, a: u128) -> u32 {
        summary_block6((a >> 96) as u32, self.geo.seed6, 32 - self.geo.sum6_bits)
    }

    fn set_bit4(&mut self, block: u32, bit: u64, on: bool) {
        self.set_bit(0, block, bit, on);
    }

    fn set_bit6(&mut self, block: u32, bit: u64, on: bool) {
        self.set_bit(1, block, bit, on);
    }

    fn set_bit(&mut self, v: usize, block: u32, bit: u64, on: bool) {
        let (w, sh) = summary_pos(block);
        let x = if v == 0 {
            &mut self.tables.sum4[w as usize]
        } else {
            &mut self.tables.sum6[w as usize]
        };
        let before = *x;
        if on {
            *x |= bit << sh;
        } else {
            *x &= !(bit << sh);
        }
        if self.track_sums && *x != before {
            self.sum_dirty[v].push((w, before));
        }
    }

    /// Count an IPv6 record in or out of its (hashed) summary block.
    fn count_x6(&mut self, a: u128, delta: i32) {
        let block = self.block6(a);
        let c = self.x6.entry(block).or_insert(0);
        let before = *c;
        *c = (*c as i32 + delta) as u32;
        let after = *c;
        if after == 0 {
            self.x6.remove(&block);
        }
        if (before == 0) != (after == 0) {
            self.set_bit6(block, SUM_X, after > 0);
        }
    }

    /// The meta of a decision, writing its port list (staged) if it has one.
    fn encode(&mut self, f: usize, d: &Decision, ph: &mut Phases) -> Result<(u32, Vec<Run>)> {
        let _ = f;
        if d.code == CODE_ALLOW {
            return Ok((meta(CODE_ALLOW, d.id, 0), Vec::new()));
        }
        if d.ports.is_empty() {
            return Ok((
                if d.code == CODE_NONE {
                    0
                } else {
                    meta(d.code, d.id, 0)
                },
                Vec::new(),
            ));
        }
        let (line, runs) = self.write_list(d.id, &d.ports, ph)?;
        Ok((meta(d.code, line, META_INDIRECT | d.port_flags()), runs))
    }

    fn alloc_line(&mut self) -> Result<u32> {
        self.heap
            .alloc(1)
            .ok_or(LayoutError::Full { what: "the heap" })
    }

    /// A port list: inline in its header line, or a fixed-depth B-tree.
    fn write_list(&mut self, id: u32, ports: &[u64], ph: &mut Phases) -> Result<(u32, Vec<Run>)> {
        if ports.len() > PORT_LIST_MAX {
            return Err(LayoutError::PortList {
                count: ports.len(),
                max: PORT_LIST_MAX,
            });
        }
        let mut runs = Vec::new();
        let head = self.alloc_line()?;
        runs.push((head, 1));
        let mut hl: Line = [PORT_EMPTY; 8];
        if ports.len() <= PORT_INLINE {
            hl[0] = port_list_header(id, None);
            hl[1..=ports.len()].copy_from_slice(ports);
        } else {
            // Leaves, then exactly PORT_TREE_DEPTH inner levels.
            let mut level: Vec<(u32, u32)> = Vec::new();
            for chunk in ports.chunks(BTREE_FANOUT) {
                let l = self.alloc_line()?;
                runs.push((l, 1));
                let mut v: Line = [*chunk.last().expect("non-empty"); 8];
                v[..chunk.len()].copy_from_slice(chunk);
                ph.push(
                    &mut self.tables,
                    Phase::Stage,
                    Write::Line { line: l, value: v },
                );
                level.push(((chunk[0] >> PORT_KEY_SHIFT) as u32, l));
            }
            for _ in 0..PORT_TREE_DEPTH {
                let mut next = Vec::new();
                for chunk in level.chunks(BTREE_FANOUT) {
                    let l = self.alloc_line()?;
                    runs.push((l, 1));
                    let words: Vec<u64> =
                        chunk.iter().map(|&(k, c)| btree_port_inner(k, c)).collect();
                    let mut v: Line = [*words.last().expect("non-empty"); 8];
                    v[..words.len()].copy_from_slice(&words);
                    ph.push(
                        &mut self.tables,
                        Phase::Stage,
                        Write::Line { line: l, value: v },
                    );
                    next.push((chunk[0].0, l));
                }
                level = next;
            }
            debug_assert_eq!(level.len(), 1);
            hl[0] = port_list_header(id, Some(level[0].1));
        }
        ph.push(
            &mut self.tables,
            Phase::Stage,
            Write::Line {
                line: head,
                value: hl,
            },
        );
        Ok((head, runs))
    }

    /// The two buckets of a record key.
    fn pair(&self, f: usize, a: u128) -> (u32, u32) {
        if f == 0 {
            bucket_pair4(a as u32, self.geo.seed4, self.geo.buckets4 - 1)
        } else {
            bucket_pair6(
                v6_words(&a.to_be_bytes()),
                self.geo.seed6,
                self.geo.buckets6 - 1,
            )
        }
    }

    /// (bucket, slot) of the record of `a`, if it is placed.
    fn position(&self, f: usize, a: u128) -> Option<(u32, u32)> {
        let (b1, b2) = self.pair(f, a);
        if f == 0 {
            self.place4.get(&(a as u32), b1, b2)
        } else {
            self.place6.get(&a, b1, b2)
        }
    }

    /// The meta a record at `(bucket, slot)` holds now (0: none yet).
    fn slot_meta(&self, f: usize, (bucket, slot): (u32, u32)) -> u32 {
        if f == 0 {
            self.tables.exact4[bucket as usize].slots[slot as usize].meta & !META_SPILL
        } else {
            self.tables.exact6[bucket as usize].metas[slot as usize]
        }
    }

    /// The decision of the `/16` range holding IPv4 address `a`.
    fn range_at(&self, a: u32) -> Option<&Decision> {
        let r = self.ranges4[(a >> 16) as usize].as_ref()?;
        let low = a as u16;
        let i = r.partition_point(|(s, _)| *s <= low);
        Some(&r[i.checked_sub(1)?].1)
    }

    /// A fresh build's IPv4 records (`recs`, sorted, every one a record,
    /// none placed): decided in address order (the `/16` ranges are read
    /// in order), then placed and written in bucket order.
    fn build_records4(&mut self, recs: &[u128], ph: &mut Phases) -> Result<()> {
        let mut items: Vec<(u32, u32)> = Vec::with_capacity(recs.len());
        let none = Decision::none();
        // The records' exact entries, read in address order with them.
        let records = std::mem::replace(&mut self.fam[0].records, Records::new(32));
        let r = self.decide_records4(recs, &records, &none, &mut items, ph);
        self.fam[0].records = records;
        r?;
        self.place_records4(items, ph)
    }

    /// The decisions of a fresh build's IPv4 records (`recs`, every one
    /// a key of `records`, both in address order) into `items`.
    fn decide_records4(
        &mut self,
        recs: &[u128],
        records: &Records,
        none: &Decision,
        items: &mut Vec<(u32, u32)>,
        ph: &mut Phases,
    ) -> Result<()> {
        let mut it = records.iter();
        for &a in recs {
            let exact = loop {
                match it.next() {
                    Some((b, e)) if b == a => break *e,
                    Some(_) => continue,
                    None => break Exact::default(),
                }
            };
            let range = self.range_at(a as u32).unwrap_or(none);
            let d = self.fam[0].decide_record_with(a, range, &exact);
            let (m, runs) = self.encode(0, &d, ph)?;
            debug_assert!(m != 0, "a record always decides something");
            if !runs.is_empty() {
                self.rec[0].insert(a, Rec { runs, decision: d });
            }
            self.set_bit4(self.block4(a), SUM_X, true);
            items.push((a as u32, m));
        }
        Ok(())
    }

    /// Place and write a fresh build's IPv4 records (address, meta) in
    /// bucket order.
    fn place_records4(&mut self, items: Vec<(u32, u32)>, ph: &mut Phases) -> Result<()> {
        let (seed, mask) = (self.geo.seed4, self.geo.buckets4 - 1);
        // Counting sort by first bucket.
        let nb = self.geo.buckets4 as usize;
        let mut start = vec![0u32; nb + 1];
        let b1s: Vec<u32> = items
            .iter()
            .map(|&(k, _)| bucket_pair4(k, seed, mask).0)
            .collect();
        for &b in &b1s {
            start[b as usize + 1] += 1;
        }
        for i in 0..nb {
            start[i + 1] += start[i];
        }
        let mut order = vec![(0u32, 0u32); items.len()];
        for (&b, &it) in b1s.iter().zip(&items) {
            let p = &mut start[b as usize];
            order[*p as usize] = it;
            *p += 1;
        }
        drop(items);
        drop(b1s);
        let none_touched: [u128; 0] = [];
        for (key, m) in order {
            let (b1, b2) = bucket_pair4(key, seed, mask);
            let p = match self.place4.insert(key, b1, b2) {
                Some(p) => p,
                None => {
                    self.relocate4(b1, b2, &none_touched, ph)?;
                    self.place4.insert(key, b1, b2).ok_or(LayoutError::Full {
                        what: "a pair of IPv4 buckets",
                    })?
                }
            };
            self.tables.exact4[p.bucket as usize].slots[p.slot as usize] =
                Slot4 { addr: key, meta: m };
        }
        // Spill bits, once every key is in place.
        for b in 0..self.geo.buckets4 {
            let s = &mut self.tables.exact4[b as usize].slots[SLOTS4 - 1];
            if self.place4.spilled(b) {
                s.meta |= META_SPILL;
            } else {
                s.meta &= !META_SPILL;
            }
        }
        Ok(())
    }

    /// Insert or change the record of `a`.
    fn upsert_record(&mut self, f: usize, a: u128, ph: &mut Phases) -> Result<()> {
        let d = if f == 0 {
            // The compiled range (prefixes, allowlist, prefix+port) and
            // the address's own entries.
            let none = Decision::none();
            let range = self.range_at(a as u32).unwrap_or(&none);
            self.fam[0].decide_record(a, range)
        } else {
            self.fam[f].decide(
                a,
                Scope {
                    max_len: WIDTH[f],
                    exact: true,
                },
            )
        };
        let pos = self.position(f, a).ok_or(LayoutError::Full {
            what: "a pair of exact buckets",
        })?;
        let cur = self.slot_meta(f, pos);
        let direct = d.code == CODE_ALLOW || d.ports.is_empty();
        match self.rec[f].get(&a) {
            Some(r) if r.decision == d => return Ok(()),
            None if cur != 0 && direct && cur == direct_meta(&d) => return Ok(()),
            _ => {}
        }
        let (m, runs) = self.encode(f, &d, ph)?;
        debug_assert!(m != 0, "a record always decides something");
        if let Some(o) = self.rec[f].remove(&a) {
            for r in &o.runs {
                self.heap.free(*r);
            }
        }
        let new = cur == 0;
        // New records were placed by `place_new` before anything was
        // written; `flip` is the spill bit their placement sets.
        let flip = self.planned_flips[f].remove(&a);
        let (bucket, slot) = pos;
        if f == 0 {
            let key = a as u32;
            self.write_slot4(
                bucket,
                slot,
                Slot4 { addr: key, meta: m },
                Phase::Publish,
                ph,
            );
            if let Some(b) = flip {
                self.write_spill4(b, Phase::Publish, ph);
            }
            if new {
                self.set_bit4(self.block4(a), SUM_X, true);
            }
        } else {
            let bytes = a.to_be_bytes();
            if new && self.tables.exact6[bucket as usize].addrs[slot as usize] != bytes {
                ph.push(
                    &mut self.tables,
                    Phase::Stage,
                    Write::Addr6 {
                        bucket,
                        slot,
                        addr: bytes,
                    },
                );
            }
            ph.push(
                &mut self.tables,
                Phase::Publish,
                Write::Meta6 {
                    bucket,
                    slot,
                    meta: m,
                },
            );
            if let Some(b) = flip {
                ph.push(
                    &mut self.tables,
                    Phase::Publish,
                    Write::Hdr6 {
                        bucket: b,
                        value: META_SPILL,
                    },
                );
            }
            if new {
                self.count_x6(a, 1);
            }
        }
        if !runs.is_empty() {
            self.rec[f].insert(a, Rec { runs, decision: d });
        }
        Ok(())
    }

    /// Remove the record of `a`.
    fn remove_record(&mut self, f: usize, a: u128, ph: &mut Phases) {
        let (b1, b2) = self.pair(f, a);
        if f == 0 {
            let key = a as u32;
            let Some(p) = self.place4.remove(&key, b1, b2) else {
                return;
            };
            self.write_slot4(
                p.bucket,
                p.slot,
                Slot4 { addr: key, meta: 0 },
                Phase::Remove,
                ph,
            );
            if let Some(b) = p.spill_flip {
                self.write_spill4(b, Phase::Remove, ph);
            }
            // The block keeps its bit while the model has a record in it
            // (placed by the end of this update).
            let block = self.block4(a);
            let shift = 32 - self.geo.sum4_bits;
            let lo = ((block as u64) << shift) as u128;
            let hi = lo + (1u128 << shift) - 1;
            let any = self.fam[0].records_within(lo, hi).next().is_some();
            self.set_bit4(block, SUM_X, any);
        } else {
            let Some(p) = self.place6.remove(&a, b1, b2) else {
                return;
            };
            ph.push(
                &mut self.tables,
                Phase::Remove,
                Write::Meta6 {
                    bucket: p.bucket,
                    slot: p.slot,
                    meta: 0,
                },
            );
            if let Some(b) = p.spill_flip {
                ph.push(
                    &mut self.tables,
                    Phase::Remove,
                    Write::Hdr6 {
                        bucket: b,
                        value: 0,
                    },
                );
            }
            self.count_x6(a, -1);
        }
        if let Some(old) = self.rec[f].remove(&a) {
            for r in &old.runs {
                self.heap.free(*r);
            }
        }
    }

    /// Place a new record's key; relocate an untouched key if need be.
    fn place_new(&mut self, f: usize, a: u128, touched: &[u128], ph: &mut Phases) -> Result<()> {
        let flip = if f == 0 {
            let key = a as u32;
            let (b1, b2) = bucket_pair4(key, self.geo.seed4, self.geo.buckets4 - 1);
            let p = match self.place4.insert(key, b1, b2) {
                Some(p) => p,
                None => {
                    self.relocate4(b1, b2, touched, ph)?;
                    self.place4.insert(key, b1, b2).ok_or(LayoutError::Full {
                        what: "a pair of IPv4 buckets",
                    })?
                }
            };
            p.spill_flip
        } else {
            let (b1, b2) = bucket_pair6(
                v6_words(&a.to_be_bytes()),
                self.geo.seed6,
                self.geo.buckets6 - 1,
            );
            let p = match self.place6.insert(a, b1, b2) {
                Some(p) => p,
                None => {
                    self.relocate6(b1, b2, touched, ph)?;
                    self.place6.insert(a, b1, b2).ok_or(LayoutError::Full {
                        what: "a pair of IPv6 buckets",
                    })?
                }
            };
            p.spill_flip
        };
        if let Some(b) = flip {
            self.planned_flips[f].insert(a, b);
        }
        Ok(())
    }

    /// Both buckets of a new IPv4 key are full: move one of their keys to
    /// its other bucket. Steps before the plan: the copy, the spill bit,
    /// the old slot cleared, a grace period (the key is found at every
    /// point; its verdict does not change).
    fn relocate4(&mut self, b1: u32, b2: u32, touched: &[u128], ph: &mut Phases) -> Result<()> {
        match self.move4(b1, b2, touched, ph) {
            Err(LayoutError::Full { .. }) => {
                // No occupant's other bucket has room: make room there
                // first (a cuckoo path of two moves, each a complete
                // relocation of its own).
                let (seed, mask, record) = (self.geo.seed4, self.geo.buckets4 - 1, ph.record);
                let alts = self.place4.alternates(
                    b1,
                    b2,
                    |k| bucket_pair4(*k, seed, mask),
                    |k| !record || touched.binary_search(&(*k as u128)).is_err(),
                );
                for a in alts {
                    if self.move4(a, a, touched, ph).is_ok() {
                        return self.move4(b1, b2, touched, ph);
                    }
                }
                Err(LayoutError::Full {
                    what: "a pair of IPv4 buckets",
                })
            }
            r => r,
        }
    }

    /// One move of [`Compiler::relocate4`].
    fn move4(&mut self, b1: u32, b2: u32, touched: &[u128], ph: &mut Phases) -> Result<()> {
        let record = ph.record;
        let (seed, mask) = (self.geo.seed4, self.geo.buckets4 - 1);
        let mv = self
            .place4
            .relocate_for(
                b1,
                b2,
                |k| bucket_pair4(*k, seed, mask),
                // A fresh build has no readers: any key may move.
                |k| !record || touched.binary_search(&(*k as u128)).is_err(),
            )
            .ok_or(LayoutError::Full {
                what: "a pair of IPv4 buckets",
            })?;
        let rec = self.tables.exact4[mv.from.0 as usize].slots[mv.from.1 as usize];
        let meta = rec.meta & !META_SPILL;
        let mut w = Vec::new();
        let slot = |c: &mut Self, w: &mut Vec<Write>, bucket: u32, slot: u32, mut s: Slot4| {
            if slot as usize == SLOTS4 - 1 && c.place4.spilled(bucket) {
                s.meta |= META_SPILL;
            }
            let x = Write::Slot4 {
                bucket,
                slot,
                value: s.word(),
            };
            c.tables.apply(&x);
            w.push(x);
        };
        slot(self, &mut w, mv.to.0, mv.to.1, Slot4 { addr: mv.key, meta });
        // The allocator counts spills this update has planned but not yet
        // published, so its `spill_set` can be None while the first
        // bucket's bit is still clear in the tables: a reader would then
        // never look in the second bucket for the moved key. The tables
        // decide.
        let unpublished = (!mv.to_first
            && self.tables.exact4[mv.from.0 as usize].slots[SLOTS4 - 1].meta & META_SPILL == 0)
            .then_some(mv.from.0);
        if let Some(b) = mv.spill_set.or(unpublished) {
            let s7 = self.tables.exact4[b as usize].slots[SLOTS4 - 1];
            slot(self, &mut w, b, (SLOTS4 - 1) as u32, s7);
        }
        if mv.to_first && ph.record {
            // Back to its first bucket: the copy lands a grace period
            // before the old slot is cleared.
            ph.prefix.push(Step::Writes(std::mem::take(&mut w)));
            ph.prefix.push(Step::Grace);
        }
        slot(
            self,
            &mut w,
            mv.from.0,
            mv.from.1,
            Slot4 {
                addr: mv.key,
                meta: 0,
            },
        );
        if let Some(b) = mv.spill_clear {
            let s7 = self.tables.exact4[b as usize].slots[SLOTS4 - 1];
            slot(
                self,
                &mut w,
                b,
                (SLOTS4 - 1) as u32,
                Slot4 {
                    meta: s7.meta & !META_SPILL,
                    ..s7
                },
            );
        }
        if ph.record {
            ph.prefix.push(Step::Writes(w));
            ph.prefix.push(Step::Grace);
        }
        Ok(())
    }

    /// [`Compiler::relocate4`] for IPv6: the address is staged and a grace
    /// period passes before the meta is published, and another after the
    /// old slot is cleared (it is about to take a new address).
    fn relocate6(&mut self, b1: u32, b2: u32, touched: &[u128], ph: &mut Phases) -> Result<()> {
        match self.move6(b1, b2, touched, ph) {
            Err(LayoutError::Full { .. }) => {
                // As in `relocate4`: a path of two moves. Three slots a
                // bucket fill during a large transition (freed slots are
                // held until the plan is applied, new keys cannot move).
                let (seed, mask, record) = (self.geo.seed6, self.geo.buckets6 - 1, ph.record);
                let alts = self.place6.alternates(
                    b1,
                    b2,
                    |k| bucket_pair6(v6_words(&k.to_be_bytes()), seed, mask),
                    |k| !record || touched.binary_search(k).is_err(),
                );
                for a in alts {
                    if self.move6(a, a, touched, ph).is_ok() {
                        return self.move6(b1, b2, touched, ph);
                    }
                }
                Err(LayoutError::Full {
                    what: "a pair of IPv6 buckets",
                })
            }
            r => r,
        }
    }

    /// One move of [`Compiler::relocate6`].
    fn move6(&mut self, b1: u32, b2: u32, touched: &[u128], ph: &mut Phases) -> Result<()> {
        let record = ph.record;
        let (seed, mask) = (self.geo.seed6, self.geo.buckets6 - 1);
        let mv = self
            .place6
            .relocate_for(
                b1,
                b2,
                |k| bucket_pair6(v6_words(&k.to_be_bytes()), seed, mask),
                |k| !record || touched.binary_search(k).is_err(),
            )
            .ok_or(LayoutError::Full {
                what: "a pair of IPv6 buckets",
            })?;
        let (fb, fs) = mv.from;
        let (tb, ts) = mv.to;
        let meta = self.tables.exact6[fb as usize].metas[fs as usize];
        let addr = mv.key.to_be_bytes();
        let mut stage = Vec::new();
        if self.tables.exact6[tb as usize].addrs[ts as usize] != addr {
            stage.push(Write::Addr6 {
                bucket: tb,
                slot: ts,
                addr,
            });
        }
        let mut publish = vec![Write::Meta6 {
            bucket: tb,
            slot: ts,
            meta,
        }];
        // As in `relocate4`: the tables, not the allocator's count (which
        // includes spills planned but not yet published), say whether the
        // first bucket's spill bit must be set for a reader to find the key.
        let unpublished =
            (!mv.to_first && self.tables.exact6[fb as usize].hdr & META_SPILL == 0).then_some(fb);
        if let Some(b) = mv.spill_set.or(unpublished) {
            publish.push(Write::Hdr6 {
                bucket: b,
                value: META_SPILL,
            });
        }
        let mut clear = vec![Write::Meta6 {
            bucket: fb,
            slot: fs,
            meta: 0,
        }];
        if let Some(b) = mv.spill_clear {
            clear.push(Write::Hdr6 {
                bucket: b,
                value: 0,
            });
        }
        for x in stage.iter().chain(&publish).chain(&clear) {
            self.tables.apply(x);
        }
        if ph.record {
            if !stage.is_empty() {
                ph.prefix.push(Step::Writes(stage));
                ph.prefix.push(Step::Grace);
            }
            if mv.to_first {
                // Back to its first bucket: see `relocate4`.
                ph.prefix.push(Step::Writes(publish));
                ph.prefix.push(Step::Grace);
                ph.prefix.push(Step::Writes(clear));
            } else {
                publish.extend(clear);
                ph.prefix.push(Step::Writes(publish));
            }
            ph.prefix.push(Step::Grace);
        }
        Ok(())
    }

    /// Store a slot; slot 7 carries the bucket's spill bit as it stands.
    fn write_slot4(&mut self, bucket: u32, slot: u32, mut s: Slot4, p: Phase, ph: &mut Phases) {
        if slot as usize == SLOTS4 - 1 && self.place4.spilled(bucket) {
            s.meta |= META_SPILL;
        }
        ph.push(
            &mut self.tables,
            p,
            Write::Slot4 {
                bucket,
                slot,
                value: s.word(),
            },
        );
    }

    /// Store slot 7 of `bucket` with its spill bit as it now stands.
    fn write_spill4(&mut self, bucket: u32, p: Phase, ph: &mut Phases) {
        let mut s = self.tables.exact4[bucket as usize].slots[SLOTS4 - 1];
        s.meta &= !META_SPILL;
        self.write_slot4(bucket, (SLOTS4 - 1) as u32, s, p, ph);
    }

    /// The ranges of `/16` number `h`: a boundary at every start and end
    /// of a longer net inside it, adjacent equal decisions merged. Each
    /// range is ranked over the nets containing it: those covering the
    /// whole `/16` (one lookup per present length) and those inside it.
    fn ranges16(&self, h: u32) -> Vec<(u16, Decision)> {
        let fam = &self.fam[0];
        let lo = (h as u128) << 16;
        let hi = lo | 0xffff;
        // Exact entries are not part of a range: a /32 net is an
        // allowlist net here.
        let info = |n: Net| {
            let (a, p, q) = fam.net_info(n);
            if n.len == 32 {
                (a, None, None)
            } else {
                (a, p, q)
            }
        };
        let mut cover = Vec::new();
        for len in 0..=16u8 {
            if !fam.has_len(len) {
                continue;
            }
            let n = Net {
                addr: mask(lo, len, 32),
                len,
            };
            if fam.nets.contains_key(&n) {
                cover.push((len, info(n)));
            }
        }
        let inside: Vec<(Net, u32, _)> = fam
            .nets_within(lo, hi)
            .filter(|n| n.len > 16)
            .map(|n| (n, (n.last(32) & 0xffff) as u32, info(n)))
            .collect();
        let mut bounds: Vec<u32> = vec![0];
        for (n, end, _) in &inside {
            bounds.push((n.addr & 0xffff) as u32);
            if *end < 0xffff {
                bounds.push(end + 1);
            }
        }
        bounds.sort_unstable();
        bounds.dedup();
        let mut out: Vec<(u16, Decision)> = Vec::new();
        for b in bounds {
            let mut r = Ranker::new(32);
            for (len, i) in &cover {
                r.net(*len, *i);
            }
            for (n, end, i) in &inside {
                if (n.addr & 0xffff) as u32 <= b && b <= *end {
                    r.net(n.len, *i);
                }
            }
            let d = r.finish();
            if out.last().is_some_and(|(_, x)| *x == d) {
                continue;
            }
            out.push((b as u16, d));
        }
        out
    }

    /// Recompute `/16` number `h`: its directory word (a new B-tree staged,
    /// the word switched) and the summary P bits of its blocks.
    fn rebuild16(&mut self, h: u32, ph: &mut Phases) -> Result<()> {
        let ranges = self.ranges16(h);
        let same = match &self.ranges4[h as usize] {
            Some(old) => *old == ranges,
            None => ranges.len() == 1 && ranges[0].1.is_none(),
        };
        if same {
            return Ok(());
        }
        // New B-tree (or direct word), staged.
        let mut runs: Vec<Run> = Vec::new();
        let word = if ranges.len() == 1 {
            // Uniform: the decision word itself (its port list, if any,
            // pointed to directly).
            let (m, r) = self.encode(0, &ranges[0].1, ph)?;
            runs.extend(r);
            m
        } else {
            let mut entries = Vec::with_capacity(ranges.len());
            for (start, d) in &ranges {
                let (m, r) = self.encode(0, d, ph)?;
                runs.extend(r);
                entries.push(btree_entry(*start, m));
            }
            let mut level: Vec<(u16, u32)> = Vec::new();
            for chunk in entries.chunks(BTREE_FANOUT) {
                let l = self.alloc_line()?;
                runs.push((l, 1));
                let mut v: Line = [*chunk.last().expect("non-empty"); 8];
                v[..chunk.len()].copy_from_slice(chunk);
                ph.push(
                    &mut self.tables,
                    Phase::Stage,
                    Write::Line { line: l, value: v },
                );
                level.push(((chunk[0] >> 48) as u16, l));
            }
            let mut depth = 0;
            while level.len() > 1 {
                let mut next = Vec::new();
                for chunk in level.chunks(BTREE_FANOUT) {
                    let l = self.alloc_line()?;
                    runs.push((l, 1));
                    let words: Vec<u64> = chunk.iter().map(|&(s, c)| btree_entry(s, c)).collect();
                    let mut v: Line = [*words.last().expect("non-empty"); 8];
                    v[..words.len()].copy_from_slice(&words);
                    ph.push(
                        &mut self.tables,
                        Phase::Stage,
                        Write::Line { line: l, value: v },
                    );
                    next.push((chunk[0].0, l));
                }
                level = next;
                depth += 1;
            }
            dir_block(level[0].1, depth)
        };
        for r in std::mem::replace(&mut self.blocks4[h as usize], runs) {
            self.heap.free(r);
        }
        if self.tables.dir4[h as usize] != word {
            ph.push(
                &mut self.tables,
                Phase::Switch,
                Write::Dir4 {
                    index: h,
                    value: word,
                },
            );
        }
        // Summary P bits of the blocks inside this /16: cleared, then set
        // over every range that decides something.
        // Word by word (up to 256 blocks in a /16, 32 a word).
        let bits = self.geo.sum4_bits;
        let per = 1u32 << (bits - 16);
        let shift = 32 - bits;
        let first = h << (bits - 16);
        let mut on = [false; 1 << (SUMMARY_MAX_BITS - 16)];
        for (k, (s, d)) in ranges.iter().enumerate() {
            if d.is_none() {
                continue;
            }
            let end = ranges.get(k + 1).map_or(0xffff, |(n, _)| *n as u32 - 1);
            for i in (*s as u32 >> shift)..=(end >> shift) {
                on[i as usize] = true;
            }
        }
        let mut i = 0;
        while i < per {
            let (w, _) = summary_pos(first | i);
            let (mut mask, mut value) = (0u64, 0u64);
            while i < per && summary_pos(first | i).0 == w {
                let sh = summary_pos(first | i).1;
                mask |= SUM_P << sh;
                if on[i as usize] {
                    value |= SUM_P << sh;
                }
                i += 1;
            }
            let x = &mut self.tables.sum4[w as usize];
            let before = *x;
            *x = (before & !mask) | value;
            if self.track_sums && *x != before {
                self.sum_dirty[0].push((w, before));
            }
        }
        self.ranges4[h as usize] = Some(ranges);
        Ok(())
    }

    /// The catalog word of a key (and its IPv6 address slot).
    fn catalog_entry(&mut self, id: u32, k: &IdKey, v: Val) -> Result<CatalogEntry> {
        let (f, net, _) = parts(k);
        let mut flags = CAT_USED;
        let (port, proto_tcp, dst) = match k {
            IdKey::Entry(EntryKey { port: Some(p), .. }) => {
                flags |= CAT_PORT;
                (p.port, p.proto == Proto::Tcp, p.side == Side::Dst)
            }
            _ => (0, false, false),
        };
        if proto_tcp {
            flags |= CAT_TCP;
        }
        if dst {
            flags |= CAT_DST;
        }
        match v {
            Val::Allow(_) => flags |= CAT_ALLOW,
            Val::Entry { drop: true, .. } => flags |= CAT_DROP,
            Val::Entry { .. } => {}
        }
        if f == 0 {
            if let Some(i) = self.cat6_of.remove(&id) {
                self.cat6.free(i);
            }
            return Ok((catalog_word(flags, net.len, port, net.addr as u32), None));
        }
        flags |= CAT_V6;
        let i = match self.cat6_of.get(&id) {
            Some(&i) => i,
            None => {
                let i = self.cat6.alloc().ok_or(LayoutError::Full {
                    what: "the IPv6 catalog",
                })?;
                self.cat6_of.insert(id, i);
                i
            }
        };
        Ok((
            catalog_word(flags, net.len, port, i),
            Some((i, net.addr.to_be_bytes())),
        ))
    }
}

/// Ids for `set`: `previous` ids kept, new keys get the lowest free ids
/// (what the agent's sync does today; a freed id is reused only by a
/// later set, never by the one that freed it).
pub fn assign_ids(set: &EntrySet, previous: &Ids) -> Ids {
    // Exact portless IPv4 keys (most of a big set) as addresses, sorted
    // by a radix sort, the others as keys; merged in key order below.
    let mut v4x: Vec<u64> = Vec::with_capacity(set.entries.len());
    let mut keys: Vec<IdKey> = Vec::with_capacity(set.allow.len());
    keys.extend(set.allow.iter().map(|n| IdKey::Allow(n.trunc())));
    for e in &set.entries {
        match (e.net, e.port) {
            (IpNet::V4(n), None) if n.prefix_len() == 32 => v4x.push(u32::from(n.addr()) as u64),
            _ => keys.push(IdKey::Entry(EntryKey {
                net: e.net.trunc(),
                port: e.port,
            })),
        }
    }
    keys.sort_unstable();
    keys.dedup();
    radix::sort_by_bits(&mut v4x, 0, 32);
    v4x.dedup();
    // Previous ids of the exact IPv4 keys, by a merge when there are many.
    let prev4: Vec<Option<u32>> = if previous.is_empty() {
        Vec::new()
    } else {
        exact_ids4_of(previous, v4x.iter().map(|&a| a as u32))
    };
    let top = previous
        .values()
        .copied()
        .max()
        .map_or(0, |m| m as usize + 1);
    let mut used = vec![0u64; top.div_ceil(64)];
    for &id in previous.values() {
        used[id as usize / 64] |= 1 << (id % 64);
    }
    let is_used = |id: u32| {
        used.get(id as usize / 64)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    };
    // Keys in order, each with its previous id, or the next free one.
    let mut all: Vec<(IdKey, u32)> = Vec::with_capacity(keys.len() + v4x.len());
    let (mut i, mut j) = (0, 0);
    let mut next = 0u32;
    let mut next_key = || -> Option<(IdKey, Option<u32>)> {
        let x = v4x.get(i).map(|&a| exact_key4(a as u32));
        let y = keys.get(j);
        let take_x = match (&x, y) {
            (Some(x), Some(y)) => x < y,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => return None,
        };
        if take_x {
            let p = prev4.get(i).copied().flatten();
            i += 1;
            x.map(|k| (k, p))
        } else {
            j += 1;
            y.map(|&k| (k, previous.get(&k).copied()))
        }
    };
    while let Some((k, p)) = next_key() {
        let id = p.unwrap_or_else(|| {
            while is_used(next) {
                next += 1;
            }
            next += 1;
            next - 1
        });
        all.push((k, id));
    }
    ids_of(all)
}

/// `Ids` of distinct keys (see [`Ids::of_distinct`]).
fn ids_of(all: Vec<(IdKey, u32)>) -> Ids {
    Ids::of_distinct(all, radix::sort_by_bits)
}
