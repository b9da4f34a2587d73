//! The logical model: an entry set indexed per family, and the flattened
//! decision of an address (a record), a range (the prefix structure) or a
//! folded trie node, exactly as `docs/semantics.md` ranks matches.

use std::collections::BTreeMap;

use edge_filter_common::{
    NO_ENTRY,
    v2::{
        CODE_ALLOW, CODE_DROP_ADDR, CODE_DROP_PREFIX, CODE_MON_ADDR, CODE_MON_PREFIX, CODE_NONE,
        Code, META_PORT_DST, META_PORT_SRC, PORT_KEY_SHIFT, PortEntry, code_rank, port_entry,
        port_entry_rank,
    },
};
use rustc_hash::FxHashMap;

use super::records::{Exact, Records};

/// A normalised net of one family: `addr` has no host bits; IPv4
/// addresses are `u32::from_be_bytes` values widened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct Net {
    pub addr: u128,
    pub len: u8,
}

/// `a` with all but its first `len` of `width` bits cleared.
pub(crate) fn mask(a: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        0
    } else {
        let shift = (width - len) as u32;
        (a >> shift) << shift
    }
}

impl Net {
    /// The last address of the net.
    pub fn last(&self, width: u8) -> u128 {
        let host = (width - self.len) as u32;
        let ones = if host >= 128 {
            u128::MAX
        } else {
            (1u128 << host) - 1
        };
        let ones = if width == 32 {
            ones & 0xffff_ffff
        } else {
            ones
        };
        self.addr | ones
    }
}

/// The flattened decision of an address, range or trie node: the code of
/// the portless head of the ranking, its entry id ([`NO_ENTRY`] for
/// [`CODE_NONE`]) and the port entries that may outrank it (the best per
/// (protocol, side, port), sorted by key).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    /// A `CODE_*` of `edge_filter_common::v2`.
    pub code: Code,
    /// The deciding entry (or allowlist net) of the portless decision.
    pub id: u32,
    /// Port entries that may outrank the portless decision.
    pub ports: Vec<PortEntry>,
}

impl Decision {
    /// No entry matches, with or without ports.
    pub fn none() -> Decision {
        Decision {
            code: CODE_NONE,
            id: NO_ENTRY,
            ports: Vec::new(),
        }
    }

    /// Whether nothing matches whatever the ports.
    pub fn is_none(&self) -> bool {
        self.code == CODE_NONE && self.ports.is_empty()
    }

    /// `META_PORT_SRC` / `META_PORT_DST` for the sides the ports use.
    pub fn port_flags(&self) -> u32 {
        let mut f = 0;
        for e in &self.ports {
            f |= if (e >> 55) & 1 == 0 {
                META_PORT_SRC
            } else {
                META_PORT_DST
            };
        }
        f
    }
}

/// Which part of the set an evaluation sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Scope {
    /// Nets longer than this are ignored (a trie node sees its ancestors).
    pub max_len: u8,
    /// Whether full-length entries (exact addresses, address+port) count:
    /// records see them, ranges and trie nodes do not (an address with
    /// such entries always has a record).
    pub exact: bool,
}

/// What a present length list is for.
#[derive(Clone, Copy)]
enum Kind {
    Allow,
    Plain,
    Ported,
}

/// One family's entries.
#[derive(Clone, Debug)]
pub(crate) struct Family {
    /// 32 or 128.
    pub width: u8,
    /// Allowlist nets and their ids.
    pub allow: FxHashMap<Net, u32>,
    /// Entries without ports shorter than the full length: (drop?, id)
    /// (full-length ones are in [`Family::records`]).
    pub plain: FxHashMap<Net, (bool, u32)>,
    /// Entries with ports: port key -> (drop?, id).
    pub ported: FxHashMap<Net, BTreeMap<u32, (bool, u32)>>,
    /// Nets of the prefix structure (allow of any length, plain and
    /// ported shorter than `width`), with the number of kinds using each.
    pub nets: BTreeMap<Net, u32>,
    /// Addresses with exact entries (plain or ported full-length), with
    /// their count and portless entry: these have records.
    pub records: Records,
    /// Records added one at a time since the B-tree was last built whole
    /// ([`Family::compact`]).
    inserted: usize,
    counts: [[u32; 129]; 3],
    lens: [Vec<u8>; 3],
    /// A fresh build: record references (with the portless exact entry,
    /// if that is what the reference is) and net references are collected
    /// here and turned into the B-trees at once ([`Family::end_bulk`]).
    bulk: Option<(BulkRecs, Vec<Net>)>,
}

/// Record references of a bulk load: address, and the portless exact
/// entry for its reference (`None`: an address+port entry's).
type BulkRecs = Vec<(u128, Option<(bool, u32)>)>;

/// The entries of one net: allowlist id, portless entry, port entries.
pub(crate) type NetInfo<'a> = (
    Option<u32>,
    Option<(bool, u32)>,
    Option<&'a BTreeMap<u32, (bool, u32)>>,
);

/// The ranking of `docs/semantics.md` over the entries of the nets that
/// contain an address, fed one net (or one flattened decision) at a time.
pub(crate) struct Ranker {
    width: u8,
    allow: Option<(u8, u32)>,
    best: Option<(u32, Code, u32)>,
    /// The best port entry per key, sorted by key.
    ports: Vec<PortEntry>,
}

impl Ranker {
    pub fn new(width: u8) -> Ranker {
        Ranker {
            width,
            allow: None,
            best: None,
            ports: Vec::new(),
        }
    }

    fn plain(&mut self, rank: u32, code: Code, id: u32) {
        if self.best.is_none_or(|(r, _, _)| rank > r) {
            self.best = Some((rank, code, id));
        }
    }

    fn port(&mut self, e: PortEntry) {
        let key = (e >> PORT_KEY_SHIFT) as u32;
        let w = self.width as u32;
        match self
            .ports
            .binary_search_by_key(&key, |&x| (x >> PORT_KEY_SHIFT) as u32)
        {
            Ok(i) => {
                if port_entry_rank(e, w) > port_entry_rank(self.ports[i], w) {
                    self.ports[i] = e;
                }
            }
            Err(i) => self.ports.insert(i, e),
        }
    }

    /// The entries of net `(len)` (one of the nets containing the address).
    pub fn net(&mut self, len: u8, info: NetInfo<'_>) {
        let (allow, plain, ported) = info;
        if let Some(id) = allow
            && self.allow.is_none_or(|(l, _)| len > l)
        {
            self.allow = Some((len, id));
        }
        if let Some((drop, id)) = plain {
            let code = match (drop, len == self.width) {
                (true, true) => CODE_DROP_ADDR,
                (true, false) => CODE_DROP_PREFIX,
                (false, true) => CODE_MON_ADDR,
                (false, false) => CODE_MON_PREFIX,
            };
            self.plain((code_rank(code) << 8) | len as u32, code, id);
        }
        if let Some(m) = ported {
            for (&key, &(drop, id)) in m {
                self.port(port_entry(key, drop, len, id));
            }
        }
    }

    /// A flattened decision of nets containing the address (a range's):
    /// its head and port entries compete as the entries they came from
    /// (codes of different kinds never tie; port entries carry their
    /// length).
    pub fn decision(&mut self, d: &Decision) {
        match d.code {
            CODE_NONE => {}
            CODE_ALLOW => {
                if self.allow.is_none() {
                    self.allow = Some((0, d.id));
                }
            }
            c => self.plain(code_rank(c) << 8, c, d.id),
        }
        for &e in &d.ports {
            self.port(e);
        }
    }

    pub fn finish(self) -> Decision {
        if let Some((_, id)) = self.allow {
            return Decision {
                code: CODE_ALLOW,
                id,
                ports: Vec::new(),
            };
        }
        let (code, id) = self
            .best
            .map_or((CODE_NONE, NO_ENTRY), |(_, c, id)| (c, id));
        let floor = code_rank(code);
        let w = self.width as u32;
        let mut ports = self.ports;
        ports.retain(|&e| port_entry_rank(e, w) > floor);
        Decision { code, id, ports }
    }
}

impl Family {
    pub fn new(width: u8) -> Family {
        Family {
            width,
            allow: FxHashMap::default(),
            plain: FxHashMap::default(),
            ported: FxHashMap::default(),
            nets: BTreeMap::new(),
            records: Records::new(width),
            inserted: 0,
            counts: [[0; 129]; 3],
            lens: [Vec::new(), Vec::new(), Vec::new()],
            bulk: None,
        }
    }

    /// Rebuild the records' B-tree whole once records added one at a time
    /// reach a 64th of it. A B-tree built from sorted records has full
    /// nodes; an insert into a full leaf splits it, so a 1% change of a
    /// 1M-record tree added 3.8 MB of half-empty nodes, and a long run of
    /// changes drifts towards the ~70% fill of random inserts (+40% of
    /// the tree). The rebuild is one pass over the sorted records.
    pub fn compact(&mut self) {
        if self.inserted >= (self.records.len() / 64).max(4096) {
            self.records.rebuild();
            self.inserted = 0;
        }
    }

    /// The record of `addr`, made empty if there is none (an insert, which
    /// [`Family::compact`] counts).
    fn record_mut(&mut self, addr: u128) -> &mut Exact {
        let (e, made) = self.records.get_or_insert(addr);
        self.inserted += made as usize;
        e
    }

    /// Start a bulk load (the family is empty): references are collected
    /// and sorted into the B-trees by [`Family::end_bulk`].
    pub fn begin_bulk(&mut self) {
        debug_assert!(self.records.is_empty() && self.nets.is_empty());
        self.bulk = Some((Vec::new(), Vec::new()));
    }

    /// End a bulk load.
    pub fn end_bulk(&mut self) {
        let Some((mut recs, mut nets)) = self.bulk.take() else {
            return;
        };
        // Stable: the exact entries of a build come first, in order.
        if !recs.is_sorted_by_key(|r| r.0) {
            recs.sort_by_key(|r| r.0);
        }
        nets.sort_unstable();
        fn runs<T: Copy + PartialEq>(v: &[T]) -> Vec<(T, u32)> {
            let mut out: Vec<(T, u32)> = Vec::with_capacity(v.len());
            for &x in v {
                match out.last_mut() {
                    Some((y, c)) if *y == x => *c += 1,
                    _ => out.push((x, 1)),
                }
            }
            out
        }
        let mut exact: Vec<(u128, Exact)> = Vec::with_capacity(recs.len());
        for (a, plain) in recs {
            match exact.last_mut() {
                Some((b, e)) if *b == a => {
                    e.refs += 1;
                    if plain.is_some() {
                        e.plain = plain;
                    }
                }
                _ => exact.push((a, Exact { refs: 1, plain })),
            }
        }
        self.records = Records::from_sorted(self.width, exact);
        self.nets = runs(&nets).into_iter().collect();
    }

    /// A bulk load's portless exact entry at `addr` (each address once;
    /// the caller merged duplicates).
    pub fn bulk_exact(&mut self, addr: u128, val: (bool, u32)) {
        let (recs, _) = self.bulk.as_mut().expect("a bulk load");
        recs.push((addr, Some(val)));
        let w = self.width;
        self.count(Kind::Plain, w, 1);
    }

    /// Reserve room for `n` more record references of a bulk load.
    pub fn reserve_exact(&mut self, n: usize) {
        if let Some((recs, _)) = &mut self.bulk {
            recs.reserve(n);
        }
    }

    /// The portless entry of `net`.
    fn plain_of(&self, net: Net) -> Option<(bool, u32)> {
        if net.len == self.width {
            self.records.get(net.addr).and_then(|e| e.plain)
        } else {
            self.plain.get(&net).copied()
        }
    }

    /// The entries of `net`.
    pub fn net_info(&self, net: Net) -> NetInfo<'_> {
        (
            self.allow.get(&net).copied(),
            self.plain_of(net),
            self.ported.get(&net),
        )
    }

    /// The value of entry `(net, port)`.
    pub fn entry(&self, net: Net, port: Option<u32>) -> Option<(bool, u32)> {
        match port {
            None => self.plain_of(net),
            Some(k) => self.ported.get(&net).and_then(|m| m.get(&k)).copied(),
        }
    }

    /// Whether nets of length `len` exist in the prefix structure.
    pub fn has_len(&self, len: u8) -> bool {
        self.counts[Kind::Allow as usize][len as usize] > 0
            || (len < self.width
                && (self.counts[Kind::Plain as usize][len as usize] > 0
                    || self.counts[Kind::Ported as usize][len as usize] > 0))
    }

    /// Whether `a` has exact or address+port entries (a record).
    pub fn has_record(&self, a: u128) -> bool {
        self.records.contains(a)
    }

    /// The record decision of `a` from the flattened decision of the nets
    /// shorter than the full length containing it (its range) and its own
    /// entries: equal to `decide(a, exact)`.
    pub fn decide_record(&self, a: u128, range: &Decision) -> Decision {
        let exact = self.records.get(a).copied().unwrap_or_default();
        self.decide_record_with(a, range, &exact)
    }

    /// [`Family::decide_record`] with the address's exact entries in hand
    /// (no lookup of the portless one; address+port ones only if any).
    pub fn decide_record_with(&self, a: u128, range: &Decision, exact: &Exact) -> Decision {
        let w = self.width;
        let net = Net { addr: a, len: w };
        let allow = if self.counts[Kind::Allow as usize][w as usize] > 0 {
            self.allow.get(&net).copied()
        } else {
            None
        };
        let ported = if exact.ported() {
            self.ported.get(&net)
        } else {
            None
        };
        let mut r = Ranker::new(w);
        r.decision(range);
        r.net(w, (allow, exact.plain, ported));
        r.finish()
    }

    fn count(&mut self, kind: Kind, len: u8, delta: i32) {
        let k = kind as usize;
        let c = &mut self.counts[k][len as usize];
        let was = *c;
        *c = (*c as i32 + delta) as u32;
        if (was == 0) != (*c == 0) {
            self.lens[k] = (0..=self.width)
                .rev()
                .filter(|&l| self.counts[k][l as usize] > 0)
                .collect();
        }
    }

    fn net_ref(&mut self, net: Net, delta: i32) {
        if let Some((_, nets)) = &mut self.bulk {
            debug_assert!(delta == 1);
            nets.push(net);
            return;
        }
        let c = self.nets.entry(net).or_insert(0);
        *c = (*c as i32 + delta) as u32;
        if *c == 0 {
            self.nets.remove(&net);
        }
    }

    fn record_ref(&mut self, addr: u128, delta: i32, plain: Option<(bool, u32)>) {
        if let Some((recs, _)) = &mut self.bulk {
            debug_assert!(delta == 1);
            recs.push((addr, plain));
            return;
        }
        if delta > 0 {
            self.record_mut(addr).refs += delta as u32;
        } else {
            // One walk to update and, at the last reference, remove.
            self.records.update(addr, |e| {
                e.refs = e.refs.saturating_sub(delta.unsigned_abs());
                e.refs == 0
            });
        }
    }

    /// Add or remove an allowlist net.
    pub fn set_allow(&mut self, net: Net, id: Option<u32>) {
        let had = match id {
            Some(id) => self.allow.insert(net, id).is_some(),
            None => self.allow.remove(&net).is_some(),
        };
        match (had, id.is_some()) {
            (false, true) => {
                self.count(Kind::Allow, net.len, 1);
                self.net_ref(net, 1);
            }
            (true, false) => {
                self.count(Kind::Allow, net.len, -1);
                self.net_ref(net, -1);
            }
            _ => {}
        }
    }

    /// Add, change or remove an entry (`port` = its port key).
    pub fn set_entry(&mut self, net: Net, port: Option<u32>, val: Option<(bool, u32)>) {
        let full = net.len == self.width;
        let (had, has) = match port {
            None if full && self.bulk.is_some() => {
                // A bulk load's exact entries come once each.
                debug_assert!(val.is_some());
                (false, val.is_some())
            }
            None if full => {
                // One walk of the records' B-tree for the entry and its
                // reference (each is a walk of cold nodes at 1M records).
                let delta = match val {
                    Some(v) => {
                        let e = self.record_mut(net.addr);
                        if e.plain.replace(v).is_some() {
                            return;
                        }
                        e.refs += 1;
                        1
                    }
                    None => {
                        let mut had = false;
                        self.records.update(net.addr, |e| {
                            had = e.plain.take().is_some();
                            e.refs -= had as u32;
                            e.refs == 0
                        });
                        if !had {
                            return;
                        }
                        -1
                    }
                };
                self.count(Kind::Plain, net.len, delta);
                return;
            }
            None => {
                let had = match val {
                    Some(v) => self.plain.insert(net, v).is_some(),
                    None => self.plain.remove(&net).is_some(),
                };
                (had, val.is_some())
            }
            Some(key) => {
                let had = match val {
                    Some(v) => self.ported.entry(net).or_default().insert(key, v).is_some(),
                    None => {
                        let m = self.ported.get_mut(&net);
                        let had = m.as_ref().is_some_and(|m| m.contains_key(&key));
                        if let Some(m) = m {
                            m.remove(&key);
                            if m.is_empty() {
                                self.ported.remove(&net);
                            }
                        }
                        had
                    }
                };
                (had, val.is_some())
            }
        };
        let kind = if port.is_some() {
            Kind::Ported
        } else {
            Kind::Plain
        };
        let delta = match (had, has) {
            (false, true) => 1,
            (true, false) => -1,
            _ => return,
        };
        self.count(kind, net.len, delta);
        if full {
            let plain = if port.is_none() { val } else { None };
            self.record_ref(net.addr, delta, plain);
        } else {
            self.net_ref(net, delta);
        }
    }

    /// The flattened decision for address `s` under `scope`.
    pub fn decide(&self, s: u128, scope: Scope) -> Decision {
        let w = self.width;
        let sees = |len: u8| len <= scope.max_len && (scope.exact || len < w);
        for &len in &self.lens[Kind::Allow as usize] {
            if len > scope.max_len {
                continue;
            }
            if let Some(&id) = self.allow.get(&Net {
                addr: mask(s, len, w),
                len,
            }) {
                return Decision {
                    code: CODE_ALLOW,
                    id,
                    ports: Vec::new(),
                };
            }
        }
        // Portless head: drop before monitor, then address before prefix,
        // then the longer prefix (lengths run longest first).
        let mut best: Option<(u32, Code, u32)> = None;
        for &len in &self.lens[Kind::Plain as usize] {
            if !sees(len) {
                continue;
            }
            if let Some((drop, id)) = self.plain_of(Net {
                addr: mask(s, len, w),
                len,
            }) {
                let code = match (drop, len == w) {
                    (true, true) => CODE_DROP_ADDR,
                    (true, false) => CODE_DROP_PREFIX,
                    (false, true) => CODE_MON_ADDR,
                    (false, false) => CODE_MON_PREFIX,
                };
                let rank = (code_rank(code) << 8) | len as u32;
                if best.is_none_or(|(r, _, _)| rank > r) {
                    best = Some((rank, code, id));
                }
            }
        }
        let (code, id) = best.map_or((CODE_NONE, NO_ENTRY), |(_, c, id)| (c, id));
        // The best port entry per key.
        let mut per_key: BTreeMap<u32, PortEntry> = BTreeMap::new();
        for &len in &self.lens[Kind::Ported as usize] {
            if !sees(len) {
                continue;
            }
            if let Some(m) = self.ported.get(&Net {
                addr: mask(s, len, w),
                len,
            }) {
                for (&key, &(drop, id)) in m {
                    let e = port_entry(key, drop, len, id);
                    match per_key.get(&key) {
                        Some(&old)
                            if port_entry_rank(old, w as u32) >= port_entry_rank(e, w as u32) => {}
                        _ => {
                            per_key.insert(key, e);
                        }
                    }
                }
            }
        }
        // Only entries that can outrank the portless head.
        let floor = code_rank(code);
        let ports = per_key
            .into_values()
            .filter(|&e| port_entry_rank(e, w as u32) > floor)
            .collect();
        Decision { code, id, ports }
    }

    /// Nets of the prefix structure inside `[lo, hi]`.
    pub fn nets_within(&self, lo: u128, hi: u128) -> impl Iterator<Item = Net> + '_ {
        self.nets
            .range(Net { addr: lo, len: 0 }..=Net { addr: hi, len: 128 })
            .map(|(n, _)| *n)
    }

    /// Record addresses inside `[lo, hi]`.
    pub fn records_within(&self, lo: u128, hi: u128) -> impl Iterator<Item = u128> + '_ {
        self.records.range(lo, hi).map(|(a, _)| a)
    }

    /// Whether the family has no nets shorter than `len`.
    pub fn shortest_net(&self) -> Option<u8> {
        (0..=self.width).find(|&l| {
            self.counts[Kind::Allow as usize][l as usize] > 0
                || (l < self.width
                    && (self.counts[Kind::Plain as usize][l as usize] > 0
                        || self.counts[Kind::Ported as usize][l as usize] > 0))
        })
    }
}

/// The side bit of a port key (bit 16), as placed in a [`PortEntry`].
pub(crate) const fn side_of(e: PortEntry) -> u64 {
    (e >> 55) & 1
}

const _: () = {
    // port_key puts the side at bit 16 and entries shift keys by 39.
    assert!(
        side_of(port_entry(
            edge_filter_common::v2::port_key(6, 1, 80),
            false,
            0,
            0
        )) == 1
    );
    assert!(
        side_of(port_entry(
            edge_filter_common::v2::port_key(6, 0, 80),
            false,
            0,
            0
        )) == 0
    );
    let _ = (
        CODE_MON_ADDR,
        CODE_MON_PREFIX,
        CODE_DROP_ADDR,
        CODE_DROP_PREFIX,
    );
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_rebuilds_the_records_once_inserts_reach_a_64th() {
        let mut f = Family::new(32);
        let net = |a: u32| Net {
            addr: a as u128,
            len: 32,
        };
        // Scattered addresses, one insert at a time (not a bulk load).
        let addrs: Vec<u32> = (0..5000u32)
            .map(|i| i.wrapping_mul(2_654_435_761))
            .collect();
        for (id, &a) in addrs.iter().enumerate() {
            f.set_entry(net(a), None, Some((true, id as u32)));
        }
        let before: Vec<(u128, Option<(bool, u32)>)> =
            f.records.iter().map(|(a, e)| (a, e.plain)).collect();
        assert_eq!(f.inserted, 5000);
        f.compact();
        assert_eq!(f.inserted, 0, "5000 inserts (>= 4096) rebuild the tree");
        let after: Vec<(u128, Option<(bool, u32)>)> =
            f.records.iter().map(|(a, e)| (a, e.plain)).collect();
        assert_eq!(before, after, "the rebuild changed the records");
        // A change of a record already there is not an insert.
        f.set_entry(net(addrs[0]), None, Some((false, 1)));
        assert_eq!(f.inserted, 0);
        // Below the threshold nothing happens.
        f.set_entry(net(7), None, Some((true, 9)));
        f.compact();
        assert_eq!(f.inserted, 1);
    }
}
