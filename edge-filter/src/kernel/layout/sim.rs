//! The eBPF lookup (`edge-filter-ebpf/src/v2.rs`) in plain Rust, one
//! [`Reader`] call per load the program makes, in the program's order.
//! Over [`Tables`] it is the datapath's verdict; over a [`Reader`] that
//! lets every load see a later state of a plan than the one before, it
//! shows what a packet classified during an update can see.

use std::net::IpAddr;

use edge_filter_common::{
    NO_ENTRY, REASON_DROP_BASE, REASON_MONITOR_BASE, REASON_PASS_ALLOWLIST, REASON_PASS_NO_MATCH,
    Reason, SIDE_DST, SIDE_SRC,
    v2::{
        CODE_ALLOW, ConfigV2, DIR_BLOCK, DIR_LINE_MASK, Line, META_INDIRECT, META_PAYLOAD,
        META_PORT_DST, META_PORT_SRC, META_SPILL, PORT_EMPTY, PORT_KEY_SHIFT, PORT_TREE,
        PORT_TREE_DEPTH, SEED2_XOR, SLOTS4, SLOTS6, SUM_P, SUM_X, Slot4, V2_SHORT6, code_rank,
        dir_depth, hash32, hash128, meta_code, port_entry_rank, port_key, summary_block6,
        summary_pos, v6_words,
    },
};

use super::tables::{Tables, Write};

/// The loads of the datapath. Every method is one load (a line stands for
/// the loads of its words: lines only change while unreachable).
pub trait Reader {
    /// The geometry words of the config (constant for the tables' life).
    fn geometry(&self) -> ConfigV2;
    /// `V2_CONFIG.flags`.
    fn flags(&mut self) -> u32;
    /// `V2_CONFIG.generation`.
    fn generation(&mut self) -> u32;
    /// `V2_SUM4[word]`.
    fn sum4(&mut self, word: u32) -> Option<u64>;
    /// `V2_EXACT4[bucket].slots[slot]` as one word.
    fn slot4(&mut self, bucket: u32, slot: u32) -> Option<u64>;
    /// `V2_DIR4[index]`.
    fn dir4(&mut self, index: u32) -> Option<u32>;
    /// `V2_HEAP[line]`.
    fn line(&mut self, line: u32) -> Option<Line>;
    /// `V2_SUM6[word]`.
    fn sum6(&mut self, word: u32) -> Option<u64>;
    /// `V2_EXACT6[bucket].metas[slot]`.
    fn meta6(&mut self, bucket: u32, slot: u32) -> Option<u32>;
    /// `V2_EXACT6[bucket].addrs[slot]`.
    fn addr6(&mut self, bucket: u32, slot: u32) -> Option<[u8; 16]>;
    /// `V2_EXACT6[bucket].hdr`.
    fn hdr6(&mut self, bucket: u32) -> Option<u32>;
    /// The value of the longest net of trie `generation` containing `addr`.
    fn trie(&mut self, v6: bool, generation: u32, addr: u128) -> Option<u64>;
}

fn lens_of(t: &std::collections::BTreeMap<(u128, u8), u64>) -> Vec<u8> {
    let mut l: Vec<u8> = t.keys().map(|k| k.1).collect();
    l.sort_unstable_by(|a, b| b.cmp(a));
    l.dedup();
    l
}

impl Reader for &Tables {
    fn geometry(&self) -> ConfigV2 {
        self.config
    }
    fn flags(&mut self) -> u32 {
        self.config.flags
    }
    fn generation(&mut self) -> u32 {
        self.config.generation
    }
    fn sum4(&mut self, word: u32) -> Option<u64> {
        self.sum4.get(word as usize).copied()
    }
    fn slot4(&mut self, bucket: u32, slot: u32) -> Option<u64> {
        self.exact4
            .get(bucket as usize)
            .map(|b| b.slots[slot as usize].word())
    }
    fn dir4(&mut self, index: u32) -> Option<u32> {
        self.dir4.get(index as usize).copied()
    }
    fn line(&mut self, line: u32) -> Option<Line> {
        self.heap.get(line as usize).copied()
    }
    fn sum6(&mut self, word: u32) -> Option<u64> {
        self.sum6.get(word as usize).copied()
    }
    fn meta6(&mut self, bucket: u32, slot: u32) -> Option<u32> {
        self.exact6
            .get(bucket as usize)
            .map(|b| b.metas[slot as usize])
    }
    fn addr6(&mut self, bucket: u32, slot: u32) -> Option<[u8; 16]> {
        self.exact6
            .get(bucket as usize)
            .map(|b| b.addrs[slot as usize])
    }
    fn hdr6(&mut self, bucket: u32) -> Option<u32> {
        self.exact6.get(bucket as usize).map(|b| b.hdr)
    }
    fn trie(&mut self, v6: bool, generation: u32, addr: u128) -> Option<u64> {
        let t = &self.trie[v6 as usize][generation as usize & 1];
        let width = if v6 { 128 } else { 32 };
        Tables::trie_lookup(t, &lens_of(t), addr, width)
    }
}

/// The datapath's verdict on an IP packet: its reason and deciding id
/// ([`NO_ENTRY`] when no entry decided).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SimVerdict {
    /// `REASON_*`.
    pub reason: Reason,
    /// The deciding entry or allowlist net.
    pub id: u32,
}

const NO_MATCH: SimVerdict = SimVerdict {
    reason: REASON_PASS_NO_MATCH,
    id: NO_ENTRY,
};

/// Classify a source (`ports`: protocol, source port, destination port
/// when the packet has them); `trie4` takes IPv4 prefixes from the folded
/// tries (the `edge_filter_v2_trie` program) instead of the directory.
pub fn lookup(
    r: &mut impl Reader,
    src: IpAddr,
    ports: Option<(u8, u16, u16)>,
    trie4: bool,
) -> SimVerdict {
    match src {
        IpAddr::V4(a) => lookup4(r, u32::from(a), ports, trie4),
        IpAddr::V6(a) => lookup6(r, a.octets(), ports),
    }
}

fn lookup4(
    r: &mut impl Reader,
    addr: u32,
    ports: Option<(u8, u16, u16)>,
    trie: bool,
) -> SimVerdict {
    let c = r.geometry();
    let (w, sh) = summary_pos(addr >> (c.shift4 & 31));
    let bits = r.sum4(w).map_or(SUM_X | SUM_P, |x| (x >> sh) & 3);
    let mut m = 0u32;
    let mut found = false;
    if bits & SUM_X != 0 {
        let find = |r: &mut dyn FnMut(u32) -> Option<u64>| -> Option<(Option<u32>, bool)> {
            let mut hit = None;
            let mut spill = false;
            for i in 0..SLOTS4 as u32 {
                let s = Slot4::from_word(r(i)?);
                if i == SLOTS4 as u32 - 1 {
                    spill = s.meta & META_SPILL != 0;
                }
                let live = s.meta & !META_SPILL;
                if s.addr == addr && live != 0 {
                    hit = Some(live);
                }
            }
            Some((hit, spill))
        };
        let b1 = hash32(addr, c.seed4) & c.mask4;
        if let Some((hit, spill)) = find(&mut |i| r.slot4(b1, i)) {
            if let Some(x) = hit {
                (m, found) = (x, true);
            } else if spill {
                let b2 = hash32(addr, c.seed4 ^ SEED2_XOR) & c.mask4;
                if let Some((Some(x), _)) = find(&mut |i| r.slot4(b2, i)) {
                    (m, found) = (x, true);
                }
            }
        }
    }
    if !found && bits & SUM_P != 0 {
        m = if trie {
            let g = r.generation();
            r.trie(false, g, addr as u128).map_or(0, |v| v as u32)
        } else {
            dir4(r, addr)
        };
    }
    decide(r, m, ports, 32)
}

fn dir4(r: &mut impl Reader, a: u32) -> u32 {
    let Some(w) = r.dir4(a >> 16) else {
        return 0;
    };
    if w & DIR_BLOCK == 0 {
        return w;
    }
    let key = a & 0xffff;
    let mut line = w & DIR_LINE_MASK;
    for _ in 0..dir_depth(w) {
        let Some(l) = r.line(line) else {
            return 0;
        };
        line = pick(&l, key, 48) as u32;
    }
    r.line(line).map_or(0, |l| pick(&l, key, 48) as u32)
}

/// The last entry whose key is <= `key` (else the first).
fn pick(l: &Line, key: u32, shift: u32) -> u64 {
    let mut chosen = l[0];
    for &w in &l[1..] {
        if ((w >> shift) & 0xffff_ffff) as u32 <= key {
            chosen = w;
        }
    }
    chosen
}

fn lookup6(r: &mut impl Reader, src: [u8; 16], ports: Option<(u8, u16, u16)>) -> SimVerdict {
    let c = r.geometry();
    let w = v6_words(&src);
    let (word, sh) = summary_pos(summary_block6(w[0], c.seed6, c.shift6 & 31));
    let mut bits = r.sum6(word).map_or(SUM_X | SUM_P, |x| (x >> sh) & 3);
    if r.flags() & V2_SHORT6 != 0 {
        bits |= SUM_P;
    }
    let mut m = 0u32;
    let mut found = false;
    if bits & SUM_X != 0 {
        let find = |r: &mut dyn Reader6, b: u32| -> Option<Option<u32>> {
            let mut hit = None;
            for i in 0..SLOTS6 as u32 {
                let meta = r.meta(b, i)?;
                let a = r.addr(b, i)?;
                if meta != 0 && a == src {
                    hit = Some(meta);
                }
            }
            Some(hit)
        };
        let b1 = hash128(w, c.seed6) & c.mask6;
        let mut r6 = Six(r);
        if let Some(hit) = find(&mut r6, b1) {
            if let Some(x) = hit {
                (m, found) = (x, true);
            } else if r6.0.hdr6(b1).is_some_and(|h| h & META_SPILL != 0) {
                let b2 = hash128(w, c.seed6 ^ SEED2_XOR) & c.mask6;
                if let Some(Some(x)) = find(&mut r6, b2) {
                    (m, found) = (x, true);
                }
            }
        }
    }
    if !found && bits & SUM_P != 0 {
        let g = r.generation();
        m = r
            .trie(true, g, u128::from_be_bytes(src))
            .map_or(0, |v| v as u32);
    }
    decide(r, m, ports, 128)
}

/// The IPv6 slot loads, object-safe for the closure above.
trait Reader6 {
    fn meta(&mut self, b: u32, s: u32) -> Option<u32>;
    fn addr(&mut self, b: u32, s: u32) -> Option<[u8; 16]>;
}

struct Six<'a, R: Reader>(&'a mut R);

impl<R: Reader> Reader6 for Six<'_, R> {
    fn meta(&mut self, b: u32, s: u32) -> Option<u32> {
        self.0.meta6(b, s)
    }
    fn addr(&mut self, b: u32, s: u32) -> Option<[u8; 16]> {
        self.0.addr6(b, s)
    }
}

fn decide(r: &mut impl Reader, m: u32, ports: Option<(u8, u16, u16)>, full: u32) -> SimVerdict {
    let code = meta_code(m);
    if code == CODE_ALLOW {
        return SimVerdict {
            reason: REASON_PASS_ALLOWLIST,
            id: m & META_PAYLOAD,
        };
    }
    let mut rank = code_rank(code);
    let mut id = m & META_PAYLOAD;
    if m & META_INDIRECT != 0 {
        let line = m & META_PAYLOAD;
        let Some(l) = r.line(line) else {
            return NO_MATCH;
        };
        id = l[0] as u32;
        if let Some((proto, sport, dport)) = ports {
            for (flag, side, port) in [
                (META_PORT_SRC, SIDE_SRC, sport),
                (META_PORT_DST, SIDE_DST, dport),
            ] {
                if m & flag == 0 {
                    continue;
                }
                let e = port_find(r, line, port_key(proto, side, port));
                if e == PORT_EMPTY {
                    continue;
                }
                let rk = port_entry_rank(e, full);
                if rk > rank {
                    rank = rk;
                    id = e as u32 & META_PAYLOAD;
                }
            }
        }
    }
    if rank == 0 {
        return NO_MATCH;
    }
    let base = if rank >> 10 == 2 {
        REASON_DROP_BASE
    } else {
        REASON_MONITOR_BASE
    };
    SimVerdict {
        reason: base + ((rank >> 8) & 3),
        id,
    }
}

fn port_find(r: &mut impl Reader, head: u32, key: u32) -> u64 {
    let Some(l) = r.line(head) else {
        return PORT_EMPTY;
    };
    let hdr = l[0];
    let e = if hdr & PORT_TREE == 0 {
        l[1..]
            .iter()
            .copied()
            .rfind(|&x| (x >> PORT_KEY_SHIFT) as u32 == key)
            .unwrap_or(PORT_EMPTY)
    } else {
        let mut line = (hdr >> 36) as u32;
        for _ in 0..PORT_TREE_DEPTH {
            let Some(n) = r.line(line) else {
                return PORT_EMPTY;
            };
            line = pick(&n, key, PORT_KEY_SHIFT) as u32;
        }
        match r.line(line) {
            Some(n) => pick(&n, key, PORT_KEY_SHIFT),
            None => PORT_EMPTY,
        }
    };
    if (e >> PORT_KEY_SHIFT) as u32 == key {
        e
    } else {
        PORT_EMPTY
    }
}

/// A location of the tables a plan's write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loc {
    Flags,
    Gen,
    Sum4(u32),
    Slot4(u32, u32),
    Dir4(u32),
    Line(u32),
    Sum6(u32),
    Meta6(u32, u32),
    Addr6(u32, u32),
    Hdr6(u32),
    Trie(bool, u32),
}

fn touches(w: &Write, l: Loc) -> bool {
    match (*w, l) {
        (Write::Flags(_), Loc::Flags) | (Write::Generation(_), Loc::Gen) => true,
        (Write::Sum4 { word, .. }, Loc::Sum4(x)) => word == x,
        (Write::Slot4 { bucket, slot, .. }, Loc::Slot4(b, s)) => bucket == b && slot == s,
        (Write::Dir4 { index, .. }, Loc::Dir4(i)) => index == i,
        (Write::Line { line, .. }, Loc::Line(x)) => line == x,
        (Write::Sum6 { word, .. }, Loc::Sum6(x)) => word == x,
        (Write::Meta6 { bucket, slot, .. }, Loc::Meta6(b, s)) => bucket == b && slot == s,
        (Write::Addr6 { bucket, slot, .. }, Loc::Addr6(b, s)) => bucket == b && slot == s,
        (Write::Hdr6 { bucket, .. }, Loc::Hdr6(b)) => bucket == b,
        (Write::Trie { v6, generation, .. }, Loc::Trie(x, g)) => v6 == x && generation & 1 == g,
        _ => false,
    }
}

/// A reader during one window of a plan (the stores between two grace
/// periods): each load sees state `k` (the base with the plan's first
/// `k` stores applied), never earlier than the load before it, at most
/// `hi`. Which state each load sees is a choice; [`outcomes`] tries them
/// all.
pub struct Interleave<'a> {
    base: &'a Tables,
    writes: &'a [Write],
    hi: usize,
    cur: usize,
    choices: Vec<usize>,
    taken: Vec<(usize, usize)>,
}

impl Interleave<'_> {
    /// Choose the state of a load of `loc`: the current one, or the state
    /// just after a later store to it (only those give new values).
    fn at(&mut self, loc: Loc) -> usize {
        let mut cands = vec![self.cur];
        for k in self.cur..self.hi {
            if touches(&self.writes[k], loc) {
                cands.push(k + 1);
            }
        }
        let i = self.taken.len();
        let c = self
            .choices
            .get(i)
            .copied()
            .unwrap_or(0)
            .min(cands.len() - 1);
        self.taken.push((c, cands.len()));
        self.cur = cands[c];
        self.cur
    }

    /// The last store to `loc` before state `k`, if any.
    fn last(&self, loc: Loc, k: usize) -> Option<&Write> {
        self.writes[..k].iter().rev().find(|w| touches(w, loc))
    }
}

impl Reader for Interleave<'_> {
    fn geometry(&self) -> ConfigV2 {
        self.base.config
    }
    fn flags(&mut self) -> u32 {
        let k = self.at(Loc::Flags);
        match self.last(Loc::Flags, k) {
            Some(Write::Flags(f)) => *f,
            _ => self.base.config.flags,
        }
    }
    fn generation(&mut self) -> u32 {
        let k = self.at(Loc::Gen);
        match self.last(Loc::Gen, k) {
            Some(Write::Generation(g)) => *g,
            _ => self.base.config.generation,
        }
    }
    fn sum4(&mut self, word: u32) -> Option<u64> {
        let k = self.at(Loc::Sum4(word));
        match self.last(Loc::Sum4(word), k) {
            Some(Write::Sum4 { value, .. }) => Some(*value),
            _ => self.base.sum4.get(word as usize).copied(),
        }
    }
    fn slot4(&mut self, bucket: u32, slot: u32) -> Option<u64> {
        let k = self.at(Loc::Slot4(bucket, slot));
        match self.last(Loc::Slot4(bucket, slot), k) {
            Some(Write::Slot4 { value, .. }) => Some(*value),
            _ => {
                let mut b = self.base;
                b.slot4(bucket, slot)
            }
        }
    }
    fn dir4(&mut self, index: u32) -> Option<u32> {
        let k = self.at(Loc::Dir4(index));
        match self.last(Loc::Dir4(index), k) {
            Some(Write::Dir4 { value, .. }) => Some(*value),
            _ => self.base.dir4.get(index as usize).copied(),
        }
    }
    fn line(&mut self, line: u32) -> Option<Line> {
        let k = self.at(Loc::Line(line));
        match self.last(Loc::Line(line), k) {
            Some(Write::Line { value, .. }) => Some(*value),
            _ => self.base.heap.get(line as usize).copied(),
        }
    }
    fn sum6(&mut self, word: u32) -> Option<u64> {
        let k = self.at(Loc::Sum6(word));
        match self.last(Loc::Sum6(word), k) {
            Some(Write::Sum6 { value, .. }) => Some(*value),
            _ => self.base.sum6.get(word as usize).copied(),
        }
    }
    fn meta6(&mut self, bucket: u32, slot: u32) -> Option<u32> {
        let k = self.at(Loc::Meta6(bucket, slot));
        match self.last(Loc::Meta6(bucket, slot), k) {
            Some(Write::Meta6 { meta, .. }) => Some(*meta),
            _ => {
                let mut b = self.base;
                b.meta6(bucket, slot)
            }
        }
    }
    fn addr6(&mut self, bucket: u32, slot: u32) -> Option<[u8; 16]> {
        let k = self.at(Loc::Addr6(bucket, slot));
        match self.last(Loc::Addr6(bucket, slot), k) {
            Some(Write::Addr6 { addr, .. }) => Some(*addr),
            _ => {
                let mut b = self.base;
                b.addr6(bucket, slot)
            }
        }
    }
    fn hdr6(&mut self, bucket: u32) -> Option<u32> {
        let k = self.at(Loc::Hdr6(bucket));
        match self.last(Loc::Hdr6(bucket), k) {
            Some(Write::Hdr6 { value, .. }) => Some(*value),
            _ => {
                let mut b = self.base;
                b.hdr6(bucket)
            }
        }
    }
    fn trie(&mut self, v6: bool, generation: u32, addr: u128) -> Option<u64> {
        let g = generation & 1;
        let k = self.at(Loc::Trie(v6, g));
        let mut t = self.base.trie[v6 as usize][g as usize].clone();
        for w in &self.writes[..k] {
            if let Write::Trie {
                v6: x,
                generation: wg,
                net,
                value,
            } = *w
                && x == v6
                && wg & 1 == g
            {
                match value {
                    Some(v) => {
                        t.insert(net, v);
                    }
                    None => {
                        t.remove(&net);
                    }
                }
            }
        }
        Tables::trie_lookup(&t, &lens_of(&t), addr, if v6 { 128 } else { 32 })
    }
}

/// Every verdict `f` can reach when each of its loads sees any state of
/// `writes` from `lo` to `hi` no earlier than the load before (a reader
/// running inside one window between grace periods), by trying every
/// choice (depth-first, by re-running `f`).
pub fn outcomes<V>(
    base: &Tables,
    writes: &[Write],
    lo: usize,
    hi: usize,
    mut f: impl FnMut(&mut Interleave<'_>) -> V,
) -> Vec<V> {
    let mut out = Vec::new();
    let mut choices: Vec<usize> = Vec::new();
    loop {
        let mut r = Interleave {
            base,
            writes,
            hi,
            cur: lo,
            choices: choices.clone(),
            taken: Vec::new(),
        };
        out.push(f(&mut r));
        let mut next: Vec<(usize, usize)> = r.taken;
        loop {
            match next.pop() {
                None => return out,
                Some((c, n)) if c + 1 < n => {
                    next.push((c + 1, n));
                    break;
                }
                Some(_) => {}
            }
        }
        choices = next.into_iter().map(|(c, _)| c).collect();
    }
}
